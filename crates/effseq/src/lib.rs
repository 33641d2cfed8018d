//! # effseq — efficient sequence models on the CPU
//!
//! LSTM and GRU today (TCN, the attention family, Reformer and Mamba follow), each with an explicit forward
//! and backward pass over contiguous `f32` buffers (llm.c style), a parallel `forward` over a whole
//! sequence and a streaming `step` with a typed state, PyTorch-compatible parameter names and safetensors
//! checkpoints.
//!
//! ## Dimension vocabulary
//! Used in every doc comment and shape comment of the crate:
//!
//! | name | meaning |
//! |------|---------|
//! | `B`  | batch size (sequences per batch) |
//! | `T`  | sequence length (time steps) |
//! | `D`  | input features per step (or embedding width) |
//! | `H`  | hidden size of a recurrent layer, per direction |
//! | `G`  | number of gates: 4 for LSTM (i, f, g, o), 3 for GRU (r, z, n) |
//! | `V`  | vocabulary size of token inputs |
//! | `C`  | number of classes / output width of a head |
//! | `L`  | number of stacked layers |
//!
//! Buffers are row-major; `(B, T, D)` means `x[(b * T + t) * D + d]`. The recurrent kernels work
//! time-major, `(T, B, ·)`, so that one time step is one contiguous block.
//!
//! ## Example
//! ```
//! use effseq::config::{ModelConfig, ModelKind};
//! use effseq::rnn::{Rnn, RnnConfig};
//!
//! // A one-layer LSTM reading 3 features with 8 hidden units.
//! let cfg = RnnConfig { kind: ModelKind::Lstm, input: 3, hidden: 8, layers: 1, bidirectional: false, dropout: 0.0, bias: true };
//! let mut lstm = Rnn::new(&cfg, 0).unwrap();
//! let (b, t) = (2, 5);
//! let x = vec![0.1f32; b * t * 3]; // (B, T, D)
//! let y = lstm.forward(&x, b, t, None).unwrap(); // (B, T, H)
//! assert_eq!(y.len(), b * t * 8);
//!
//! // Streaming: one step at a time from a zero state gives the same outputs.
//! let mut state = lstm.zero_state(b);
//! let mut y_t = vec![0.0f32; b * 8];
//! for step in 0..t {
//!     let x_t: Vec<f32> = (0..b).flat_map(|i| x[(i * t + step) * 3..(i * t + step + 1) * 3].to_vec()).collect();
//!     lstm.step(&x_t, &mut state, &mut y_t).unwrap();
//! }
//! assert!((y_t[0] - y[(t - 1) * 8]).abs() < 1e-5);
//! ```

pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod error;
pub mod gradcheck;
pub mod layers;
pub mod linalg;
pub mod mamba;
pub mod math;
pub mod memory;
pub mod model;
pub mod optim;
pub mod param;
pub mod reformer;
pub mod rng;
pub mod rnn;
pub mod tasks;
pub mod tcn;
pub mod train;
pub mod transformer;

pub use error::{Error, Result};
pub use param::{Module, Param};
