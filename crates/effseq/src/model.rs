//! A complete network for a task: an optional token embedding, a sequence backbone and a linear head,
//! built from a [`ModelConfig`] and the task's [`TaskIo`].
//!
//! Parameter names follow a PyTorch module with the fields `embedding` (`nn.Embedding`), `rnn`
//! (`nn.LSTM`/`nn.GRU`) and `head` (`nn.Linear`): `embedding.weight`, `rnn.weight_ih_l0`, ...,
//! `head.weight`, `head.bias`, so a `state_dict` saved with safetensors loads by name.

use crate::attention::{FeatureKernel, Mechanism};
use crate::config::{FeatureKernelKind, ModelConfig, ModelKind, Pooling};
use crate::error::{check_len, Error, Result};
use crate::layers::{Embedding, Linear};
use crate::linalg::{matmul, Trans};
use crate::mamba::{Mamba, MambaConfig, MambaState};
use crate::param::{Module, Param};
use crate::reformer::{Reformer, ReformerConfig};
use crate::rng::{rng_for, streams, Rng};
use crate::rnn::{Rnn, RnnConfig, RnnState};
use crate::tcn::{Tcn, TcnConfig, TcnState};
use crate::transformer::{Transformer, TransformerConfig, TransformerState};

/// What the model reads at each time step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// `dim` real features per step.
    Dense { dim: usize },
    /// One token id in `0..vocab` per step (the model embeds it).
    Tokens { vocab: usize },
}

/// Where the model's predictions are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// One prediction per sequence, from the last time step: output `(B, out_dim)`.
    LastStep,
    /// One prediction per time step: output `(B, T, out_dim)`.
    EveryStep,
}

/// The model-facing shape of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskIo {
    /// Input per step.
    pub input: InputKind,
    /// Width of each prediction (regression targets or class logits).
    pub output_dim: usize,
    /// Where predictions are read.
    pub readout: Readout,
}

/// A batch's inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// `(B, T, D)` features.
    Dense(Vec<f32>),
    /// `(B, T)` token ids.
    Tokens(Vec<u32>),
}

/// The sequence model inside a [`Network`]; one variant per architecture family.
#[derive(Clone, Debug)]
pub enum Backbone {
    /// LSTM or GRU stack.
    Rnn(Rnn),
    /// Temporal convolutional network.
    Tcn(Tcn),
    /// Transformer with softmax, linear or FAVOR+ attention (boxed: its configuration and encoders make it far larger
    /// than the other variants).
    Transformer(Box<Transformer>),
    /// Mamba stack (selective state spaces), boxed for the same reason.
    Mamba(Box<Mamba>),
    /// Reformer: reversible layers with LSH attention.
    Reformer(Box<ReformerBackbone>),
}

/// A [`Reformer`] with the training step that keys its dropout masks and hash rotations.
#[derive(Clone, Debug)]
pub struct ReformerBackbone {
    /// The stack.
    pub reformer: Reformer,
    /// The current training step (set by [`Backbone::begin_train_step`]); evaluation hashes with step 0, so every
    /// evaluation of the same weights uses the same buckets.
    step: u64,
    /// The last training forward over a padded batch of unequal lengths, run one length group at a time.
    padded: Option<PaddedRun>,
}

/// A padded batch run by [`ReformerBackbone`] as groups of equal-length sequences, kept for the backward.
#[derive(Clone, Debug)]
struct PaddedRun {
    /// B, T.
    b: usize,
    t: usize,
    /// The padded input `(B, T, D)`.
    x: Vec<f32>,
    /// `(length, rows)` of every group, shortest first.
    groups: Vec<(usize, Vec<usize>)>,
    /// Whether dropout was on.
    dropout: bool,
}

impl ReformerBackbone {
    /// LSH attention sizes its buckets from the sequence length and its sorted chunks look back across hash rounds,
    /// so a sequence padded to a longer T would be hashed differently than alone. A batch of unequal `lengths` is
    /// therefore run as groups of equal length, each at its own length: every sequence gets exactly the output (and
    /// gradients) it gets alone, and the padded steps of the output are zero.
    fn run(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, dropout: bool, train: bool) -> Result<Vec<f32>> {
        self.padded = None;
        let step = if train { self.step } else { 0 };
        let Some(groups) = length_groups(lengths, t) else {
            return self.reformer.run_with_dropout(x, b, t, None, step, train, dropout);
        };
        let (d, o) = (self.reformer.config().input, self.reformer.config().d_model);
        check_len("reformer input (B, T, D)", &[b, t, d], x.len())?;
        let mut y = vec![0.0f32; b * t * o]; // (B, T, O), zero at the padded steps
        for (len, rows) in &groups {
            let xg = gather_prefixes(x, t, d, rows, *len); // (n, len, D)
            let yg = self.reformer.run_with_dropout(&xg, rows.len(), *len, None, step, train, dropout)?; // (n, len, O)
            scatter_prefixes(&yg, &mut y, t, o, rows, *len);
        }
        if train {
            // The last group's forward state is the live one; the backward recomputes the others.
            self.padded = Some(PaddedRun { b, t, x: x.to_vec(), groups, dropout });
        }
        Ok(y)
    }

    fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let Some(run) = self.padded.take() else {
            return self.reformer.backward(dy);
        };
        let (d, o) = (self.reformer.config().input, self.reformer.config().d_model);
        check_len("reformer output gradient (B, T, O)", &[run.b, run.t, o], dy.len())?;
        let mut dx = vec![0.0f32; run.x.len()]; // (B, T, D), zero at the padded steps
        for (i, (len, rows)) in run.groups.iter().enumerate().rev() {
            if i + 1 < run.groups.len() {
                let xg = gather_prefixes(&run.x, run.t, d, rows, *len);
                self.reformer.run_with_dropout(&xg, rows.len(), *len, None, self.step, true, run.dropout)?;
            }
            let dxg = self.reformer.backward(&gather_prefixes(dy, run.t, o, rows, *len))?; // (n, len, D)
            scatter_prefixes(&dxg, &mut dx, run.t, d, rows, *len);
        }
        Ok(dx)
    }
}

/// The rows of a padded batch grouped by valid length, shortest first: `None` without lengths or when every
/// sequence fills all `t` steps.
fn length_groups(lengths: Option<&[usize]>, t: usize) -> Option<Vec<(usize, Vec<usize>)>> {
    let lengths = lengths.filter(|l| l.iter().any(|&n| n != t))?;
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for (row, &n) in lengths.iter().enumerate() {
        groups.entry(n).or_default().push(row);
    }
    Some(groups.into_iter().collect())
}

/// The first `len` steps of the given rows of `src (B, T, W)`: `(rows, len, W)`.
fn gather_prefixes(src: &[f32], t: usize, w: usize, rows: &[usize], len: usize) -> Vec<f32> {
    rows.iter().flat_map(|&r| src[r * t * w..(r * t + len) * w].iter().copied()).collect()
}

/// Writes `src (rows, len, W)` into the first `len` steps of the given rows of `dst (B, T, W)`.
fn scatter_prefixes(src: &[f32], dst: &mut [f32], t: usize, w: usize, rows: &[usize], len: usize) {
    for (i, &r) in rows.iter().enumerate() {
        dst[r * t * w..(r * t + len) * w].copy_from_slice(&src[i * len * w..(i + 1) * len * w]);
    }
}

/// Zeroes the steps `p >= lengths[b]` of `buf (B, T, W)`.
fn zero_padded(buf: &mut [f32], t: usize, w: usize, lengths: &[usize]) {
    for (seq, &n) in buf.chunks_exact_mut(t * w).zip(lengths) {
        seq[n.min(t) * w..].fill(0.0);
    }
}

/// The Reformer stack of a run: LSH attention in every layer.
fn build_reformer(cfg: &ReformerConfig, seed: u64) -> Result<Reformer> {
    Reformer::with_lsh(cfg, seed, "reformer.")
}

/// Streaming state of a Reformer: LSH attention has no incremental form, so a step re-runs the causal prefix; the
/// state is the inputs seen so far, `(B)` sequences of `(t, D)` each.
#[derive(Clone, Debug)]
pub struct ReformerState {
    /// Width D of one input step.
    dim: usize,
    /// `(B)` histories of `(t, D)` inputs.
    history: Vec<Vec<f32>>,
}

impl Backbone {
    /// The backbone that `cfg` describes, reading `d_in` features per step, initialised from `seed`. Parameter
    /// names carry the PyTorch module prefix (`rnn.` or `tcn.`).
    pub fn new(cfg: &ModelConfig, d_in: usize, seed: u64) -> Result<Backbone> {
        cfg.validate()?;
        Ok(match cfg.kind {
            ModelKind::Lstm | ModelKind::Gru => {
                let rc = RnnConfig {
                    kind: cfg.kind,
                    input: d_in,
                    hidden: cfg.hidden,
                    layers: cfg.layers,
                    bidirectional: cfg.bidirectional,
                    dropout: cfg.dropout,
                    bias: cfg.bias,
                };
                Backbone::Rnn(Rnn::with_prefix(&rc, seed, "rnn.")?)
            }
            ModelKind::Tcn => {
                let tc = TcnConfig { input: d_in, channels: vec![cfg.hidden; cfg.tcn_levels()], kernel_size: cfg.kernel_size, dropout: cfg.dropout };
                // The locuslab `TCN` module holds its `TemporalConvNet` in a field `tcn`.
                Backbone::Tcn(Tcn::with_prefix(&tc, seed, "tcn.")?)
            }
            ModelKind::Transformer | ModelKind::Linear | ModelKind::Performer => {
                let mechanism = match cfg.kind {
                    ModelKind::Transformer => Mechanism::Softmax,
                    ModelKind::Linear => Mechanism::Linear,
                    _ => Mechanism::Performer {
                        features: cfg.feature_count(),
                        kernel: match cfg.performer_kernel() {
                            FeatureKernelKind::Softmax => FeatureKernel::SOFTMAX,
                            FeatureKernelKind::Relu => FeatureKernel::Relu,
                        },
                    },
                };
                let tc = TransformerConfig {
                    input: d_in,
                    d_model: cfg.hidden,
                    layers: cfg.layers,
                    heads: cfg.heads,
                    d_ff: cfg.ff_dim(),
                    dropout: cfg.dropout,
                    mechanism,
                    causal: !cfg.bidirectional,
                    positional: cfg.positional,
                    max_len: cfg.max_len,
                    redraw_every: cfg.redraw_every,
                };
                Backbone::Transformer(Box::new(Transformer::with_prefix(&tc, seed, "transformer.")?))
            }
            ModelKind::Mamba => {
                let mc =
                    MambaConfig { d_state: cfg.d_state, expand: cfg.expand, d_conv: cfg.d_conv, ..MambaConfig::with_defaults(d_in, cfg.hidden, cfg.layers) };
                // `mamba_ssm`'s `MixerModel` held in a field `backbone`, as its `MambaLMHeadModel` does.
                Backbone::Mamba(Box::new(Mamba::with_prefix(&mc, seed, "backbone.")?))
            }
            ModelKind::Reformer => {
                let rc = ReformerConfig {
                    input: d_in,
                    d_model: cfg.hidden,
                    layers: cfg.layers,
                    heads: cfg.heads,
                    d_ff: cfg.ff_dim(),
                    dropout: cfg.dropout,
                    causal: !cfg.bidirectional,
                    positional: cfg.positional,
                    max_len: cfg.max_len,
                    bucket_size: cfg.lsh_bucket_size(),
                    n_hashes: cfg.n_hashes,
                    ff_chunks: cfg.ff_chunks,
                    reversible: cfg.reversible,
                };
                Backbone::Reformer(Box::new(ReformerBackbone { reformer: build_reformer(&rc, seed)?, step: 0, padded: None }))
            }
        })
    }

    /// Training forward over `x (B, T, D)` → `(B, T, O)`, keeping what backward needs.
    pub fn forward(&mut self, x: &[f32], b: usize, t: usize, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.forward_padded(x, b, t, None, dropout)
    }

    /// [`Backbone::forward`] over right-padded sequences with `lengths (B)` valid steps, so that the outputs of the
    /// valid steps are exactly those of each sequence alone: the reverse direction of a bidirectional RNN starts at
    /// each sequence's last valid step (as `pack_padded_sequence`), attention masks the padded keys, the Reformer
    /// runs each length at its own ([`ReformerBackbone`]); the causal TCN and Mamba need nothing, as no valid step
    /// sees a later one. The outputs at padded steps are unspecified ([`Network`] ignores them), and the gradient
    /// given to [`Backbone::backward`] must be zero there.
    pub fn forward_padded(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        match self {
            Backbone::Rnn(r) => r.forward_padded(x, b, t, lengths, dropout),
            Backbone::Tcn(m) => m.forward(x, b, t, dropout),
            Backbone::Transformer(m) => m.run(x, b, t, lengths, dropout, true),
            Backbone::Mamba(m) => m.forward(x, b, t, dropout),
            Backbone::Reformer(m) => m.run(x, b, t, lengths, dropout.is_some(), true),
        }
    }

    /// Inference forward over `x (B, T, D)` → `(B, T, O)`, keeping nothing for backward.
    pub fn infer(&mut self, x: &[f32], b: usize, t: usize) -> Result<Vec<f32>> {
        self.infer_padded(x, b, t, None)
    }

    /// [`Backbone::infer`] over right-padded sequences, see [`Backbone::forward_padded`].
    pub fn infer_padded(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>) -> Result<Vec<f32>> {
        match self {
            Backbone::Rnn(r) => r.infer_padded(x, b, t, lengths),
            Backbone::Tcn(m) => m.infer(x, b, t),
            Backbone::Transformer(m) => m.run(x, b, t, lengths, None, false),
            Backbone::Mamba(m) => m.infer(x, b, t),
            Backbone::Reformer(m) => m.run(x, b, t, lengths, false, false),
        }
    }

    /// Backward from `dy (B, T, O)` → `dx (B, T, D)`, accumulating parameter gradients.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        match self {
            Backbone::Rnn(r) => r.backward(dy),
            Backbone::Tcn(m) => m.backward(dy),
            Backbone::Transformer(m) => m.backward(dy),
            Backbone::Mamba(m) => m.backward(dy),
            Backbone::Reformer(m) => m.backward(dy),
        }
    }

    /// Called before training step `step` (a Performer redraws its random features on schedule).
    pub fn begin_train_step(&mut self, step: u64) {
        match self {
            Backbone::Transformer(m) => m.begin_train_step(step),
            Backbone::Reformer(m) => m.step = step,
            _ => {}
        }
    }

    /// A zero streaming state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> BackboneState {
        match self {
            Backbone::Rnn(r) => BackboneState::Rnn(r.zero_state(b)),
            Backbone::Tcn(m) => BackboneState::Tcn(m.zero_state(b)),
            Backbone::Transformer(m) => BackboneState::Transformer(m.zero_state(b)),
            Backbone::Mamba(m) => BackboneState::Mamba(m.zero_state(b)),
            Backbone::Reformer(m) => BackboneState::Reformer(ReformerState { dim: m.reformer.config().input, history: vec![Vec::new(); b] }),
        }
    }

    /// One streaming step `x_t (B, D)` → `y_t (B, O)`.
    pub fn step(&mut self, x_t: &[f32], state: &mut BackboneState, y_t: &mut [f32]) -> Result<()> {
        match (self, state) {
            (Backbone::Rnn(r), BackboneState::Rnn(s)) => r.step(x_t, s, y_t),
            (Backbone::Tcn(m), BackboneState::Tcn(s)) => m.step(x_t, s, y_t),
            (Backbone::Transformer(m), BackboneState::Transformer(s)) => m.step(x_t, s, y_t),
            (Backbone::Mamba(m), BackboneState::Mamba(s)) => m.step(x_t, s, y_t),
            (Backbone::Reformer(m), BackboneState::Reformer(s)) => {
                // Re-run the whole causal prefix and keep its last output: O(t) per step (see ReformerState).
                let (b, d, o) = (s.history.len(), s.dim, m.reformer.config().d_model);
                check_len("reformer step input (B, D)", &[b, d], x_t.len())?;
                check_len("reformer step output (B, O)", &[b, o], y_t.len())?;
                for (h, row) in s.history.iter_mut().zip(x_t.chunks_exact(d)) {
                    h.extend_from_slice(row);
                }
                let t = s.history.first().map_or(0, |h| h.len() / d);
                let x: Vec<f32> = s.history.concat(); // (B, t, D)
                let y = m.run(&x, b, t, None, false, false)?; // (B, t, O)
                for (bi, out) in y_t.chunks_exact_mut(o).enumerate() {
                    out.copy_from_slice(&y[(bi * t + t - 1) * o..(bi * t + t) * o]);
                }
                Ok(())
            }
            _ => Err(Error::Invalid("streaming state belongs to a different architecture".into())),
        }
    }

    fn params(&self) -> Vec<&Param> {
        match self {
            Backbone::Rnn(r) => r.params(),
            Backbone::Tcn(m) => m.params(),
            Backbone::Transformer(m) => m.params(),
            Backbone::Mamba(m) => m.params(),
            Backbone::Reformer(m) => m.reformer.params(),
        }
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        match self {
            Backbone::Rnn(r) => r.params_mut(),
            Backbone::Tcn(m) => m.params_mut(),
            Backbone::Transformer(m) => m.params_mut(),
            Backbone::Mamba(m) => m.params_mut(),
            Backbone::Reformer(m) => m.reformer.params_mut(),
        }
    }

    fn buffers(&self) -> Vec<&Param> {
        match self {
            Backbone::Transformer(m) => m.buffers(),
            Backbone::Reformer(m) => m.reformer.buffers(),
            _ => Vec::new(),
        }
    }

    fn buffers_mut(&mut self) -> Vec<&mut Param> {
        match self {
            Backbone::Transformer(m) => m.buffers_mut(),
            Backbone::Reformer(m) => m.reformer.buffers_mut(),
            _ => Vec::new(),
        }
    }
}

/// Streaming state of a [`Network`]: the backbone's state plus preallocated buffers, so that
/// [`Network::step`] does not allocate.
#[derive(Clone, Debug)]
pub struct NetworkState {
    /// B.
    pub batch: usize,
    /// Backbone state.
    pub backbone: BackboneState,
    /// Embedded input of the current step: (B, D).
    x_buf: Vec<f32>,
    /// Backbone output of the current step: (B, O).
    y_buf: Vec<f32>,
}

/// Streaming state of a [`Backbone`].
#[derive(Clone, Debug)]
pub enum BackboneState {
    /// Hidden (and cell) states of an RNN stack.
    Rnn(RnnState),
    /// Ring buffers of a TCN's convolutions.
    Tcn(TcnState),
    /// Key/value caches or recurrent attention states of a Transformer.
    Transformer(TransformerState),
    /// Convolution ring buffers and scan states of a Mamba stack.
    Mamba(MambaState),
    /// The inputs a Reformer has seen.
    Reformer(ReformerState),
}

/// One step's input for [`Network::step`].
#[derive(Clone, Copy, Debug)]
pub enum StepInput<'a> {
    /// `(B, D)` features.
    Dense(&'a [f32]),
    /// `(B)` token ids.
    Tokens(&'a [u32]),
}

/// The output layer: an `nn.Linear`, or one that reuses the token embedding's matrix (tied weights).
#[derive(Clone, Debug)]
enum Head {
    /// `head.weight (C, O)`, `head.bias (C)`.
    Linear(Linear),
    /// `logits = y E^T + head.bias`, with `E` the embedding `(V, D)`; `y (N, D)` is kept for backward.
    Tied { bias: Param, cache: Option<(Vec<f32>, usize)> },
}

/// Embedding + backbone + head.
#[derive(Clone, Debug)]
pub struct Network {
    /// The model section of the run config.
    pub config: ModelConfig,
    /// What the task feeds and reads.
    pub io: TaskIo,
    embedding: Option<Embedding>,
    backbone: Backbone,
    head: Head,
    /// (B, T) and the valid lengths of the last training forward pass.
    shape: Option<(usize, usize, Option<Vec<usize>>)>,
}

impl Network {
    /// Builds the network with every parameter initialised from `seed`.
    pub fn new(cfg: &ModelConfig, io: TaskIo, seed: u64) -> Result<Network> {
        cfg.validate()?;
        let mut rng = rng_for(seed, streams::INIT + 1);
        let (embedding, d_in) = match io.input {
            InputKind::Dense { dim } => (None, dim),
            InputKind::Tokens { vocab } => {
                let dim = cfg.embed_dim.unwrap_or(cfg.hidden);
                (Some(Embedding::new("embedding", vocab, dim, &mut rng)), dim)
            }
        };
        if d_in == 0 || io.output_dim == 0 {
            return Err(Error::config("the task's input and output widths must be at least 1"));
        }
        let backbone = Backbone::new(cfg, d_in, seed)?;
        let head = if cfg.tie_embeddings {
            let vocab_out = matches!(io.input, InputKind::Tokens { vocab } if vocab == io.output_dim);
            if !vocab_out || d_in != cfg.output_dim() {
                return Err(Error::config(
                    "model.tie_embeddings needs a token task whose outputs are its vocabulary and an embedding as wide as the backbone output",
                ));
            }
            Head::Tied { bias: Param::zeros("head.bias", &[io.output_dim]), cache: None }
        } else {
            Head::Linear(Linear::new("head", cfg.output_dim(), io.output_dim, true, &mut rng))
        };
        Ok(Network { config: cfg.clone(), io, embedding, backbone, head, shape: None })
    }

    /// Width of the backbone output O.
    fn backbone_dim(&self) -> usize {
        self.config.output_dim()
    }

    /// Width of the backbone input D.
    fn input_dim(&self) -> usize {
        match (&self.embedding, self.io.input) {
            (Some(e), _) => e.dim(),
            (None, InputKind::Dense { dim }) => dim,
            (None, InputKind::Tokens { .. }) => unreachable!("token inputs always have an embedding"),
        }
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Reformer: evaluate with `n_hashes` LSH rounds instead of the trained number (`None` restores it); an error for
    /// other models.
    pub fn set_eval_hash_rounds(&mut self, n_hashes: Option<usize>) -> Result<()> {
        match &mut self.backbone {
            Backbone::Reformer(m) => {
                if n_hashes == Some(0) {
                    return Err(Error::config("the number of hash rounds must be at least 1"));
                }
                m.reformer.set_n_hashes_override(n_hashes);
                Ok(())
            }
            _ => Err(Error::config(format!("hash rounds apply to the reformer only, not to {}", self.config.kind.name()))),
        }
    }

    /// Called by the trainer before training step `step` (a Performer redraws its features on schedule).
    pub fn begin_train_step(&mut self, step: u64) {
        self.backbone.begin_train_step(step);
    }

    /// Predictions for a batch: `(B, C)` for [`Readout::LastStep`], `(B, T, C)` for [`Readout::EveryStep`].
    /// `dropout: Some(rng)` is training mode. Keeps what [`Network::backward`] needs.
    pub fn forward(&mut self, inputs: &Inputs, b: usize, t: usize, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.run(inputs, b, t, None, dropout, true)
    }

    /// [`Network::forward`] over right-padded sequences with `lengths (B)` valid steps each: every sequence gets
    /// exactly the predictions and gradients it gets alone ([`Backbone::forward_padded`]); a [`Readout::LastStep`]
    /// head pools the valid steps only ([`Pooling`]); a [`Readout::EveryStep`] output is zero at the padded steps
    /// and [`Network::backward`] ignores their gradients.
    pub fn forward_padded(&mut self, inputs: &Inputs, b: usize, t: usize, lengths: Option<&[usize]>, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.run(inputs, b, t, lengths, dropout, true)
    }

    /// Predictions as [`Network::forward`] in evaluation mode, keeping nothing for backward (less memory).
    pub fn predict(&mut self, inputs: &Inputs, b: usize, t: usize) -> Result<Vec<f32>> {
        self.run(inputs, b, t, None, None, false)
    }

    /// [`Network::predict`] over right-padded sequences, see [`Network::forward_padded`].
    pub fn predict_padded(&mut self, inputs: &Inputs, b: usize, t: usize, lengths: Option<&[usize]>) -> Result<Vec<f32>> {
        self.run(inputs, b, t, lengths, None, false)
    }

    fn run(&mut self, inputs: &Inputs, b: usize, t: usize, lengths: Option<&[usize]>, dropout: Option<&mut Rng>, train: bool) -> Result<Vec<f32>> {
        self.shape = None;
        if b == 0 || t == 0 {
            return Err(Error::Invalid(format!("empty batch: B = {b}, T = {t}")));
        }
        if let Some(l) = lengths {
            check_len("sequence lengths (B)", &[b], l.len())?;
            if let Some(i) = l.iter().position(|&n| n == 0 || n > t) {
                return Err(Error::Invalid(format!("sequence {i} has length {}, outside 1..={t}", l[i])));
            }
        }
        let embedded;
        let x: &[f32] = match (inputs, &mut self.embedding) {
            (Inputs::Dense(x), None) => {
                check_len("dense input (B, T, D)", &[b, t, self.input_dim()], x.len())?;
                x
            }
            (Inputs::Tokens(ids), Some(emb)) => {
                check_len("token input (B, T)", &[b, t], ids.len())?;
                embedded = if train { emb.forward(ids)? } else { embed(emb, ids)? };
                &embedded
            }
            (Inputs::Dense(_), Some(_)) => return Err(Error::Invalid("this network reads token ids, got dense features".into())),
            (Inputs::Tokens(_), None) => return Err(Error::Invalid("this network reads dense features, got token ids".into())),
        };
        let mut y = if train { self.backbone.forward_padded(x, b, t, lengths, dropout)? } else { self.backbone.infer_padded(x, b, t, lengths)? }; // (B, T, O)
        let o = self.backbone_dim();
        if let Some(l) = lengths {
            // Padded steps carry no information: the head sees zeros there, whatever the backbone computed.
            zero_padded(&mut y, t, o, l);
        }
        if train {
            self.shape = Some((b, t, lengths.map(<[usize]>::to_vec)));
        }
        match self.io.readout {
            Readout::EveryStep => {
                let mut out = self.head_forward(&y, b * t, train)?; // (B, T, C)
                if let Some(l) = lengths {
                    // As `pad_packed_sequence`: zero at the padded steps, which are no predictions (and take no gradient).
                    zero_padded(&mut out, t, self.io.output_dim, l);
                }
                Ok(out)
            }
            Readout::LastStep => {
                let mut pooled = vec![0.0f32; b * o]; // (B, O)
                for (bi, row) in pooled.chunks_exact_mut(o).enumerate() {
                    let len = lengths.map_or(t, |l| l[bi]);
                    match self.config.pooling {
                        Pooling::Last => row.copy_from_slice(&y[(bi * t + len - 1) * o..(bi * t + len) * o]),
                        Pooling::Mean => {
                            for ti in 0..len {
                                row.iter_mut().zip(&y[(bi * t + ti) * o..(bi * t + ti + 1) * o]).for_each(|(s, &v)| *s += v);
                            }
                            row.iter_mut().for_each(|s| *s /= len as f32);
                        }
                    }
                }
                self.head_forward(&pooled, b, train)
            }
        }
    }

    /// The head over `y (N, O)` → `(N, C)`; caches `y` when training.
    fn head_forward(&mut self, y: &[f32], n: usize, train: bool) -> Result<Vec<f32>> {
        match &mut self.head {
            Head::Linear(lin) if train => lin.forward(y, n),
            Head::Linear(lin) => {
                let mut out = vec![0.0f32; n * lin.c_out()]; // (N, C)
                lin.apply(y, n, &mut out)?;
                Ok(out)
            }
            Head::Tied { bias, cache } => {
                let emb = self.embedding.as_ref().expect("a tied head has an embedding");
                let mut out = vec![0.0f32; n * bias.numel()]; // (N, V)
                tied_apply(emb, bias, y, n, &mut out)?;
                *cache = train.then(|| (y.to_vec(), n));
                Ok(out)
            }
        }
    }

    /// Backward from `doutputs` (the shape [`Network::forward`] returned); ACCUMULATES every parameter gradient.
    pub fn backward(&mut self, doutputs: &[f32]) -> Result<()> {
        let (b, t, lengths) = self.shape.take().ok_or_else(|| Error::Invalid("network backward called without a (training) forward pass".into()))?;
        let o = self.backbone_dim();
        let masked;
        let doutputs = match (&lengths, self.io.readout) {
            (Some(l), Readout::EveryStep) => {
                // Predictions at padded steps are not predictions: their gradients are ignored.
                let mut d = doutputs.to_vec();
                check_len("output gradient (B, T, C)", &[b, t, self.io.output_dim], d.len())?;
                zero_padded(&mut d, t, self.io.output_dim, l);
                masked = d;
                &masked[..]
            }
            _ => doutputs,
        };
        let dh = match &mut self.head {
            Head::Linear(lin) => lin.backward(doutputs)?,
            Head::Tied { bias, cache } => {
                let (y, n) = cache.take().ok_or_else(|| Error::Invalid("tied head backward without a training forward".into()))?;
                let v = bias.numel();
                check_len("output gradient (N, V)", &[n, v], doutputs.len())?;
                let emb = self.embedding.as_mut().expect("a tied head has an embedding");
                for row in doutputs.chunks_exact(v) {
                    bias.grad.iter_mut().zip(row).for_each(|(g, &d)| *g += d);
                }
                // dE (V, D) += dlogits^T (V, N) y (N, D); dy (N, D) = dlogits (N, V) E (V, D).
                matmul(v, o, n, 1.0, doutputs, Trans::T, &y, Trans::N, 1.0, &mut emb.weight.grad);
                let mut dy = vec![0.0f32; n * o]; // (N, D)
                matmul(n, o, v, 1.0, doutputs, Trans::N, &emb.weight.value, Trans::N, 0.0, &mut dy);
                dy
            }
        };
        let dy = match self.io.readout {
            Readout::EveryStep => dh,
            Readout::LastStep => {
                let mut dy = vec![0.0; b * t * o]; // (B, T, O): only the pooled steps have a gradient
                for bi in 0..b {
                    let len = lengths.as_ref().map_or(t, |l| l[bi]);
                    let g = &dh[bi * o..(bi + 1) * o];
                    match self.config.pooling {
                        Pooling::Last => dy[(bi * t + len - 1) * o..(bi * t + len) * o].copy_from_slice(g),
                        Pooling::Mean => {
                            for ti in 0..len {
                                dy[(bi * t + ti) * o..(bi * t + ti + 1) * o].iter_mut().zip(g).for_each(|(d, &v)| *d = v / len as f32);
                            }
                        }
                    }
                }
                dy
            }
        };
        let dx = self.backbone.backward(&dy)?;
        if let Some(emb) = &mut self.embedding {
            emb.backward(&dx)?;
        }
        Ok(())
    }

    /// A zero streaming state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> NetworkState {
        let backbone = self.backbone.zero_state(b);
        NetworkState { batch: b, backbone, x_buf: vec![0.0; b * self.input_dim()], y_buf: vec![0.0; b * self.backbone_dim()] }
    }

    /// One streaming step: the head's prediction `out (B, C)` after reading one more input per sequence.
    pub fn step(&mut self, input: StepInput<'_>, state: &mut NetworkState, out: &mut [f32]) -> Result<()> {
        let b = state.batch;
        check_len("step output (B, C)", &[b, self.io.output_dim], out.len())?;
        let x: &[f32] = match (input, &self.embedding) {
            (StepInput::Dense(x), None) => x,
            (StepInput::Tokens(ids), Some(emb)) => {
                check_len("step token input (B)", &[b], ids.len())?;
                emb.apply(ids, &mut state.x_buf)?;
                &state.x_buf
            }
            (StepInput::Dense(_), Some(_)) => return Err(Error::Invalid("this network reads token ids, got dense features".into())),
            (StepInput::Tokens(_), None) => return Err(Error::Invalid("this network reads dense features, got token ids".into())),
        };
        self.backbone.step(x, &mut state.backbone, &mut state.y_buf)?;
        match &self.head {
            Head::Linear(lin) => lin.apply(&state.y_buf, b, out),
            Head::Tied { bias, .. } => tied_apply(self.embedding.as_ref().expect("a tied head has an embedding"), bias, &state.y_buf, b, out),
        }
    }
}

/// Embedding lookup without caching (inference).
fn embed(emb: &Embedding, ids: &[u32]) -> Result<Vec<f32>> {
    let mut x = vec![0.0f32; ids.len() * emb.dim()]; // (B, T, D)
    emb.apply(ids, &mut x)?;
    Ok(x)
}

/// `out (N, V) = y (N, D) E^T + bias` with the embedding matrix `E (V, D)`.
fn tied_apply(emb: &Embedding, bias: &Param, y: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
    let (v, d) = (emb.vocab(), emb.dim());
    check_len("tied head input (N, D)", &[n, d], y.len())?;
    check_len("tied head output (N, V)", &[n, v], out.len())?;
    for row in out.chunks_exact_mut(v) {
        row.copy_from_slice(&bias.value);
    }
    matmul(n, v, d, 1.0, y, Trans::N, &emb.weight.value, Trans::T, 1.0, out);
    Ok(())
}

impl Module for Backbone {
    fn params(&self) -> Vec<&Param> {
        Backbone::params(self)
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        Backbone::params_mut(self)
    }

    fn buffers(&self) -> Vec<&Param> {
        Backbone::buffers(self)
    }

    fn buffers_mut(&mut self) -> Vec<&mut Param> {
        Backbone::buffers_mut(self)
    }
}

impl Module for Network {
    fn params(&self) -> Vec<&Param> {
        let mut v: Vec<&Param> = Vec::new();
        if let Some(e) = &self.embedding {
            v.extend(e.params());
        }
        v.extend(self.backbone.params());
        match &self.head {
            Head::Linear(lin) => v.extend(lin.params()),
            Head::Tied { bias, .. } => v.push(bias),
        }
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = Vec::new();
        if let Some(e) = &mut self.embedding {
            v.extend(e.params_mut());
        }
        v.extend(self.backbone.params_mut());
        match &mut self.head {
            Head::Linear(lin) => v.extend(lin.params_mut()),
            Head::Tied { bias, .. } => v.push(bias),
        }
        v
    }

    fn buffers(&self) -> Vec<&Param> {
        self.backbone.buffers()
    }

    fn buffers_mut(&mut self) -> Vec<&mut Param> {
        self.backbone.buffers_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_dense() -> TaskIo {
        TaskIo { input: InputKind::Dense { dim: 2 }, output_dim: 1, readout: Readout::LastStep }
    }

    fn io_tokens() -> TaskIo {
        TaskIo { input: InputKind::Tokens { vocab: 10 }, output_dim: 10, readout: Readout::EveryStep }
    }

    #[test]
    fn parameter_names_follow_the_pytorch_module_layout() {
        let cfg = ModelConfig { kind: ModelKind::Lstm, hidden: 4, layers: 2, ..Default::default() };
        let net = Network::new(&cfg, io_tokens(), 0).unwrap();
        let names: Vec<&str> = net.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "embedding.weight",
                "rnn.weight_ih_l0",
                "rnn.weight_hh_l0",
                "rnn.bias_ih_l0",
                "rnn.bias_hh_l0",
                "rnn.weight_ih_l1",
                "rnn.weight_hh_l1",
                "rnn.bias_ih_l1",
                "rnn.bias_hh_l1",
                "head.weight",
                "head.bias"
            ]
        );
    }

    #[test]
    fn streaming_equals_forward_for_both_readouts() {
        for kind in ModelKind::ALL.iter().copied() {
            let layers = if kind == ModelKind::Tcn { 1 } else { 2 };
            let cfg = ModelConfig { kind, hidden: 6, layers, levels: Some(2), heads: 2, features: Some(5), ..Default::default() };
            let (b, t) = (2, 5);
            // Token input, every-step readout.
            let mut net = Network::new(&cfg, io_tokens(), 1).unwrap();
            let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 10) as u32).collect();
            let y = net.forward(&Inputs::Tokens(ids.clone()), b, t, None).unwrap();
            let mut st = net.zero_state(b);
            let mut out = vec![0.0; b * 10];
            for ti in 0..t {
                let step_ids: Vec<u32> = (0..b).map(|bi| ids[bi * t + ti]).collect();
                net.step(StepInput::Tokens(&step_ids), &mut st, &mut out).unwrap();
                for bi in 0..b {
                    for c in 0..10 {
                        assert!((out[bi * 10 + c] - y[(bi * t + ti) * 10 + c]).abs() < 1e-5);
                    }
                }
            }
            // Dense input, last-step readout.
            let mut net = Network::new(&cfg, io_dense(), 2).unwrap();
            let x: Vec<f32> = (0..b * t * 2).map(|i| (i as f32 * 0.37).sin()).collect();
            let y = net.forward(&Inputs::Dense(x.clone()), b, t, None).unwrap();
            assert_eq!(y, net.predict(&Inputs::Dense(x.clone()), b, t).unwrap());
            let mut st = net.zero_state(b);
            let mut out = vec![0.0; b];
            for ti in 0..t {
                let xt: Vec<f32> = (0..b).flat_map(|bi| x[(bi * t + ti) * 2..(bi * t + ti + 1) * 2].to_vec()).collect();
                net.step(StepInput::Dense(&xt), &mut st, &mut out).unwrap();
            }
            for bi in 0..b {
                assert!((out[bi] - y[bi]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn network_gradients_match_finite_differences() {
        for (io, bidirectional) in [(io_dense(), false), (io_tokens(), true)] {
            let cfg = ModelConfig { kind: ModelKind::Gru, hidden: 3, layers: 1, bidirectional, ..Default::default() };
            let (b, t) = (2, 3);
            let mut net = Network::new(&cfg, io, 3).unwrap();
            let inputs = match io.input {
                InputKind::Dense { .. } => Inputs::Dense((0..b * t * 2).map(|i| (i as f32 * 0.61).cos()).collect()),
                InputKind::Tokens { .. } => Inputs::Tokens((0..b * t).map(|i| (i * 3 % 10) as u32).collect()),
            };
            let y = net.forward(&inputs, b, t, None).unwrap();
            // Scaled so that the small recurrent gradients of a 1-output head stand well above the tolerance.
            let r: Vec<f32> = crate::gradcheck::projection_weights(y.len(), 5).iter().map(|w| 20.0 * w).collect();
            net.zero_grad();
            net.backward(&r).unwrap();
            // Every parameter (embedding, both directions of the GRU, head) against central differences.
            let reports = crate::gradcheck::check_module_grads(
                &mut net,
                |n: &mut Network| crate::gradcheck::projection_loss(&n.forward(&inputs, b, t, None).unwrap(), &r),
                &crate::gradcheck::GradCheckOpts::default(),
            )
            .unwrap_or_else(|e| panic!("bidirectional={bidirectional}: {e}"));
            assert_eq!(reports.len(), net.params().len());
        }
    }

    #[test]
    fn attention_network_gradients_match_finite_differences() {
        use crate::config::{Pooling, Positional};
        // Causal LM with a tied head and learned positions; bidirectional classifiers with mean and last pooling.
        let lm = TaskIo { input: InputKind::Tokens { vocab: 7 }, output_dim: 7, readout: Readout::EveryStep };
        let cls = TaskIo { input: InputKind::Tokens { vocab: 7 }, output_dim: 3, readout: Readout::LastStep };
        for kind in [ModelKind::Transformer, ModelKind::Linear, ModelKind::Performer] {
            for (io, bidirectional, pooling, tie) in [(lm, false, Pooling::Last, true), (cls, true, Pooling::Mean, false), (cls, true, Pooling::Last, false)] {
                let cfg = ModelConfig {
                    kind,
                    hidden: 8,
                    heads: 2,
                    layers: 1,
                    d_ff: Some(16),
                    // Width 8 (heads of 4): at width 4 the smallest in_proj gradients (about 1e-2) sat at the f32
                    // noise floor of the finite differences (about 1e-3), and the Performer's failed by 5-40%.
                    features: Some(6),
                    bidirectional,
                    pooling,
                    tie_embeddings: tie,
                    positional: Positional::Learned,
                    max_len: 8,
                    ..Default::default()
                };
                let (b, t) = (2, 4);
                let mut net = Network::new(&cfg, io, 9).unwrap();
                let inputs = Inputs::Tokens((0..b * t).map(|i| (i * 3 % 7) as u32).collect());
                let lengths = [4usize, 3];
                let y = net.forward_padded(&inputs, b, t, Some(&lengths), None).unwrap();
                let r = crate::gradcheck::projection_weights(y.len(), 7);
                net.zero_grad();
                net.backward(&r).unwrap();
                crate::gradcheck::check_module_grads(
                    &mut net,
                    |n: &mut Network| crate::gradcheck::projection_loss(&n.forward_padded(&inputs, b, t, Some(&lengths), None).unwrap(), &r),
                    // A step of 3e-3 balances the truncation error of the curved LayerNorm and attention against the f32
                    // rounding of the loss: every case passes from 3e-3 to 1e-2, and 1e-3 is already rounding noise.
                    &crate::gradcheck::GradCheckOpts { eps: 3e-3, ..Default::default() },
                )
                .unwrap_or_else(|e| panic!("{kind:?} bidirectional={bidirectional} {pooling:?}: {e}"));
            }
        }
    }

    #[test]
    fn padding_does_not_change_a_bidirectional_classifier() {
        use crate::config::Pooling;
        let cls = TaskIo { input: InputKind::Tokens { vocab: 7 }, output_dim: 3, readout: Readout::LastStep };
        for kind in [ModelKind::Transformer, ModelKind::Linear, ModelKind::Performer] {
            for pooling in [Pooling::Mean, Pooling::Last] {
                let cfg = ModelConfig { kind, hidden: 8, heads: 2, layers: 2, bidirectional: true, pooling, ..Default::default() };
                let mut net = Network::new(&cfg, cls, 4).unwrap();
                let (b, t) = (2, 6);
                let mut ids: Vec<u32> = (0..b * t).map(|i| (i * 5 % 7) as u32).collect();
                let lengths = [6usize, 4];
                let before = net.predict_padded(&Inputs::Tokens(ids.clone()), b, t, Some(&lengths)).unwrap();
                // Change the padding of the second sequence: nothing may move.
                ids[t + 4] = 6;
                ids[t + 5] = 0;
                let after = net.predict_padded(&Inputs::Tokens(ids.clone()), b, t, Some(&lengths)).unwrap();
                for (x, y) in before.iter().zip(&after) {
                    assert!((x - y).abs() < 1e-6, "{kind:?} {pooling:?}: padding changed the output {x} -> {y}");
                }
                // The same sequence alone, unpadded, gives the same prediction.
                let alone = net.predict(&Inputs::Tokens(ids[t..t + 4].to_vec()), 1, 4).unwrap();
                for (x, y) in alone.iter().zip(&before[3..]) {
                    assert!((x - y).abs() < 1e-5, "{kind:?} {pooling:?}: padded {y} vs unpadded {x}");
                }
            }
        }
    }

    /// Every architecture in each direction it supports, small enough for quick tests; the Reformer's buckets (4)
    /// are smaller than the sequences, so that several chunks and the look-back are exercised.
    fn every_model_and_direction() -> Vec<ModelConfig> {
        let mut out = Vec::new();
        for kind in ModelKind::ALL.iter().copied() {
            for bidirectional in [false, true] {
                if bidirectional && matches!(kind, ModelKind::Tcn | ModelKind::Mamba) {
                    continue; // causal by construction (config validation refuses them)
                }
                let layers = if kind == ModelKind::Tcn { 1 } else { 2 };
                out.push(ModelConfig {
                    kind,
                    hidden: 8,
                    layers,
                    bidirectional,
                    levels: Some(2),
                    heads: 2,
                    features: Some(6),
                    bucket_size: Some(4),
                    n_hashes: 2,
                    ..Default::default()
                });
            }
        }
        out
    }

    /// A padded batch (garbage in the padding) against each sequence alone, at the backbone: the outputs of the
    /// valid steps, the input gradients (zero on the padded steps) and the parameter gradients (the batch's equal to
    /// the sum of the sequences' own), for every model, causal and bidirectional.
    #[test]
    fn padding_never_changes_a_backbone_output_or_gradient() {
        let (b, t, d) = (3, 9, 3);
        let lengths = [9usize, 4, 6];
        let x: Vec<f32> = (0..b * t * d).map(|i| (i as f32 * 0.73).sin() * 2.0).collect(); // (B, T, D)
        for cfg in every_model_and_direction() {
            let name = format!("{} bidirectional={}", cfg.kind.name(), cfg.bidirectional);
            let o = cfg.output_dim();
            let mut batched = Backbone::new(&cfg, d, 5).unwrap();
            let mut alone = batched.clone();
            let mut r = crate::gradcheck::projection_weights(b * t * o, 6); // dL/dy (B, T, O), zero on padded steps
            zero_padded(&mut r, t, o, &lengths);
            batched.params_mut().into_iter().for_each(|p| p.grad.fill(0.0));
            alone.params_mut().into_iter().for_each(|p| p.grad.fill(0.0));
            let y = batched.forward_padded(&x, b, t, Some(&lengths), None).unwrap();
            let y_infer = batched.clone().infer_padded(&x, b, t, Some(&lengths)).unwrap();
            let dx = batched.backward(&r).unwrap();
            for (bi, &n) in lengths.iter().enumerate() {
                let xa = x[bi * t * d..(bi * t + n) * d].to_vec();
                let ya = alone.forward(&xa, 1, n, None).unwrap(); // (1, n, O)
                let dxa = alone.backward(&r[bi * t * o..(bi * t + n) * o]).unwrap();
                for p in 0..n {
                    for j in 0..o {
                        let (got, inf, want) = (y[(bi * t + p) * o + j], y_infer[(bi * t + p) * o + j], ya[p * o + j]);
                        assert!((got - want).abs() < 1e-5 && (inf - want).abs() < 1e-5, "{name}: seq {bi} step {p}: {got} / {inf} vs alone {want}");
                    }
                }
                for p in 0..t {
                    for j in 0..d {
                        let got = dx[(bi * t + p) * d + j];
                        let want = if p < n { dxa[p * d + j] } else { 0.0 };
                        assert!((got - want).abs() < 1e-5, "{name}: seq {bi} step {p}: dx {got} vs alone {want}");
                    }
                }
            }
            for (pb, pa) in batched.params().iter().zip(alone.params()) {
                for (g, w) in pb.grad.iter().zip(&pa.grad) {
                    assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{name} {}: batched {g} vs sum alone {w}", pb.name);
                }
            }
        }
    }

    /// The same at the network: pooled predictions (last and mean) of a padded batch equal each sequence's alone,
    /// and an every-step network ignores whatever gradient arrives for its padded steps.
    #[test]
    fn padding_never_changes_a_prediction_or_a_parameter_gradient() {
        let (b, t, d) = (3, 7, 2);
        let lengths = [7usize, 2, 5];
        let x: Vec<f32> = (0..b * t * d).map(|i| (i as f32 * 0.41).cos() * 3.0).collect(); // (B, T, D)
        let alone_x = |bi: usize, n: usize| Inputs::Dense(x[bi * t * d..(bi * t + n) * d].to_vec());
        for base in every_model_and_direction() {
            let name = format!("{} bidirectional={}", base.kind.name(), base.bidirectional);
            for pooling in [Pooling::Last, Pooling::Mean] {
                let cfg = ModelConfig { pooling, ..base.clone() };
                let io = TaskIo { input: InputKind::Dense { dim: d }, output_dim: 3, readout: Readout::LastStep };
                let mut net = Network::new(&cfg, io, 8).unwrap();
                let batched = net.predict_padded(&Inputs::Dense(x.clone()), b, t, Some(&lengths)).unwrap(); // (B, 3)
                for (bi, &n) in lengths.iter().enumerate() {
                    let alone = net.predict(&alone_x(bi, n), 1, n).unwrap();
                    for (got, want) in batched[bi * 3..(bi + 1) * 3].iter().zip(&alone) {
                        assert!((got - want).abs() < 1e-5, "{name} {pooling:?}: seq {bi}: {got} vs alone {want}");
                    }
                }
            }
            let io = TaskIo { input: InputKind::Dense { dim: d }, output_dim: 2, readout: Readout::EveryStep };
            let mut batched = Network::new(&base, io, 9).unwrap();
            let mut alone = batched.clone();
            let r = crate::gradcheck::projection_weights(b * t * 2, 10); // nonzero on the padded steps too
            batched.zero_grad();
            alone.zero_grad();
            batched.forward_padded(&Inputs::Dense(x.clone()), b, t, Some(&lengths), None).unwrap();
            batched.backward(&r).unwrap();
            for (bi, &n) in lengths.iter().enumerate() {
                alone.forward(&alone_x(bi, n), 1, n, None).unwrap();
                alone.backward(&r[bi * t * 2..(bi * t + n) * 2]).unwrap();
            }
            for (pb, pa) in batched.params().iter().zip(alone.params()) {
                for (g, w) in pb.grad.iter().zip(&pa.grad) {
                    assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{name} {}: batched {g} vs sum alone {w}", pb.name);
                }
            }
        }
    }

    #[test]
    fn wrong_inputs_are_errors() {
        let cfg = ModelConfig { hidden: 4, ..Default::default() };
        let mut net = Network::new(&cfg, io_dense(), 0).unwrap();
        assert!(net.forward(&Inputs::Tokens(vec![0; 6]), 2, 3, None).is_err());
        assert!(net.forward(&Inputs::Dense(vec![0.0; 5]), 2, 3, None).is_err());
        assert!(net.backward(&[0.0; 2]).is_err());
    }
}
