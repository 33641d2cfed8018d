//! The building blocks shared by every model: affine maps, embeddings, normalisation, activations,
//! dropout and the losses.
//!
//! Conventions (the same as the recurrent kernels):
//! - `forward(&mut self, ..)` computes the output and caches what `backward` needs;
//! - `backward(&mut self, dy)` **adds** (`+=`) the parameter gradients into [`crate::Param::grad`] and
//!   returns the gradient with respect to the input (a fresh buffer);
//! - `apply(&self, .., out)` is the allocation-free inference path (no cache), used by streaming.
//!
//! Parameter names and initialisations are PyTorch's, so checkpoints map one-to-one onto `state_dict`s.

pub mod activation;
pub mod dropout;
pub mod embedding;
pub mod layernorm;
pub mod linear;
pub mod loss;

pub use activation::{
    erf, gelu_erf_backward, gelu_erf_forward, gelu_tanh_backward, gelu_tanh_forward, relu_backward, relu_forward, sigmoid_backward, sigmoid_forward,
    silu_backward, silu_forward, tanh_backward, tanh_forward, Activation,
};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use layernorm::LayerNorm;
pub use linear::Linear;
pub use loss::{cross_entropy, mse, CrossEntropyOut};
