//! A complete network for a task: an optional token embedding, a sequence backbone and a linear head,
//! built from a [`ModelConfig`] and the task's [`TaskIo`].
//!
//! Parameter names follow a PyTorch module with the fields `embedding` (`nn.Embedding`), `rnn`
//! (`nn.LSTM`/`nn.GRU`) and `head` (`nn.Linear`): `embedding.weight`, `rnn.weight_ih_l0`, ...,
//! `head.weight`, `head.bias`, so a `state_dict` saved with safetensors loads by name.

use crate::config::{ModelConfig, ModelKind};
use crate::error::{check_len, Error, Result};
use crate::layers::{Embedding, Linear};
use crate::param::{Module, Param};
use crate::rng::{rng_for, streams, Rng};
use crate::rnn::{Rnn, RnnConfig, RnnState};
use crate::tasks::{InputKind, Inputs, Readout, TaskIo};
use crate::tcn::{Tcn, TcnConfig, TcnState};

/// The sequence model inside a [`Network`]; one variant per architecture family.
#[derive(Clone, Debug)]
pub enum Backbone {
    /// LSTM or GRU stack.
    Rnn(Rnn),
    /// Temporal convolutional network.
    Tcn(Tcn),
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
        })
    }

    /// Training forward over `x (B, T, D)` → `(B, T, O)`, keeping what backward needs.
    pub fn forward(&mut self, x: &[f32], b: usize, t: usize, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        match self {
            Backbone::Rnn(r) => r.forward(x, b, t, dropout),
            Backbone::Tcn(m) => m.forward(x, b, t, dropout),
        }
    }

    /// Inference forward over `x (B, T, D)` → `(B, T, O)`, keeping nothing for backward.
    pub fn infer(&mut self, x: &[f32], b: usize, t: usize) -> Result<Vec<f32>> {
        match self {
            Backbone::Rnn(r) => r.infer(x, b, t),
            Backbone::Tcn(m) => m.infer(x, b, t),
        }
    }

    /// Backward from `dy (B, T, O)` → `dx (B, T, D)`, accumulating parameter gradients.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        match self {
            Backbone::Rnn(r) => r.backward(dy),
            Backbone::Tcn(m) => m.backward(dy),
        }
    }

    /// A zero streaming state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> BackboneState {
        match self {
            Backbone::Rnn(r) => BackboneState::Rnn(r.zero_state(b)),
            Backbone::Tcn(m) => BackboneState::Tcn(m.zero_state(b)),
        }
    }

    /// One streaming step `x_t (B, D)` → `y_t (B, O)`.
    pub fn step(&mut self, x_t: &[f32], state: &mut BackboneState, y_t: &mut [f32]) -> Result<()> {
        match (self, state) {
            (Backbone::Rnn(r), BackboneState::Rnn(s)) => r.step(x_t, s, y_t),
            (Backbone::Tcn(m), BackboneState::Tcn(s)) => m.step(x_t, s, y_t),
            _ => Err(Error::Invalid("streaming state belongs to a different architecture".into())),
        }
    }

    fn params(&self) -> Vec<&Param> {
        match self {
            Backbone::Rnn(r) => r.params(),
            Backbone::Tcn(m) => m.params(),
        }
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        match self {
            Backbone::Rnn(r) => r.params_mut(),
            Backbone::Tcn(m) => m.params_mut(),
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
}

/// One step's input for [`Network::step`].
#[derive(Clone, Copy, Debug)]
pub enum StepInput<'a> {
    /// `(B, D)` features.
    Dense(&'a [f32]),
    /// `(B)` token ids.
    Tokens(&'a [u32]),
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
    head: Linear,
    /// (B, T) of the last forward pass.
    shape: Option<(usize, usize)>,
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
        let head = Linear::new("head", cfg.output_dim(), io.output_dim, true, &mut rng);
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

    /// Predictions for a batch: `(B, C)` for [`Readout::LastStep`], `(B, T, C)` for [`Readout::EveryStep`].
    /// `dropout: Some(rng)` is training mode. Keeps what [`Network::backward`] needs.
    pub fn forward(&mut self, inputs: &Inputs, b: usize, t: usize, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.run(inputs, b, t, dropout, true)
    }

    /// Predictions as [`Network::forward`] in evaluation mode, keeping nothing for backward (less memory).
    pub fn predict(&mut self, inputs: &Inputs, b: usize, t: usize) -> Result<Vec<f32>> {
        self.run(inputs, b, t, None, false)
    }

    fn run(&mut self, inputs: &Inputs, b: usize, t: usize, dropout: Option<&mut Rng>, train: bool) -> Result<Vec<f32>> {
        self.shape = None;
        if b == 0 || t == 0 {
            return Err(Error::Invalid(format!("empty batch: B = {b}, T = {t}")));
        }
        let embedded;
        let x: &[f32] = match (inputs, &mut self.embedding) {
            (Inputs::Dense(x), None) => {
                check_len("dense input (B, T, D)", &[b, t, self.input_dim()], x.len())?;
                x
            }
            (Inputs::Tokens(ids), Some(emb)) => {
                check_len("token input (B, T)", &[b, t], ids.len())?;
                embedded = emb.forward(ids)?;
                &embedded
            }
            (Inputs::Dense(_), Some(_)) => return Err(Error::Invalid("this network reads token ids, got dense features".into())),
            (Inputs::Tokens(_), None) => return Err(Error::Invalid("this network reads dense features, got token ids".into())),
        };
        let y = if train { self.backbone.forward(x, b, t, dropout)? } else { self.backbone.infer(x, b, t)? }; // (B, T, O)
        let o = self.backbone_dim();
        if train {
            self.shape = Some((b, t));
        }
        match self.io.readout {
            Readout::EveryStep => self.head.forward(&y, b * t),
            Readout::LastStep => {
                let last: Vec<f32> = (0..b).flat_map(|bi| y[(bi * t + t - 1) * o..(bi * t + t) * o].iter().copied()).collect(); // (B, O)
                self.head.forward(&last, b)
            }
        }
    }

    /// Backward from `doutputs` (the shape [`Network::forward`] returned); ACCUMULATES every parameter gradient.
    pub fn backward(&mut self, doutputs: &[f32]) -> Result<()> {
        let (b, t) = self.shape.take().ok_or_else(|| Error::Invalid("network backward called without a (training) forward pass".into()))?;
        let o = self.backbone_dim();
        let dh = self.head.backward(doutputs)?;
        let dy = match self.io.readout {
            Readout::EveryStep => dh,
            Readout::LastStep => {
                let mut dy = vec![0.0; b * t * o]; // (B, T, O): only the last step has a gradient
                for bi in 0..b {
                    dy[(bi * t + t - 1) * o..(bi * t + t) * o].copy_from_slice(&dh[bi * o..(bi + 1) * o]);
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
        self.head.apply(&state.y_buf, b, out)
    }
}

impl Module for Backbone {
    fn params(&self) -> Vec<&Param> {
        Backbone::params(self)
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        Backbone::params_mut(self)
    }
}

impl Module for Network {
    fn params(&self) -> Vec<&Param> {
        let mut v: Vec<&Param> = Vec::new();
        if let Some(e) = &self.embedding {
            v.extend(e.params());
        }
        v.extend(self.backbone.params());
        v.extend(self.head.params());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = Vec::new();
        if let Some(e) = &mut self.embedding {
            v.extend(e.params_mut());
        }
        v.extend(self.backbone.params_mut());
        v.extend(self.head.params_mut());
        v
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
        for kind in [ModelKind::Lstm, ModelKind::Gru, ModelKind::Tcn] {
            let layers = if kind == ModelKind::Tcn { 1 } else { 2 };
            let cfg = ModelConfig { kind, hidden: 6, layers, levels: Some(2), ..Default::default() };
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
    fn wrong_inputs_are_errors() {
        let cfg = ModelConfig { hidden: 4, ..Default::default() };
        let mut net = Network::new(&cfg, io_dense(), 0).unwrap();
        assert!(net.forward(&Inputs::Tokens(vec![0; 6]), 2, 3, None).is_err());
        assert!(net.forward(&Inputs::Dense(vec![0.0; 5]), 2, 3, None).is_err());
        assert!(net.backward(&[0.0; 2]).is_err());
    }
}
