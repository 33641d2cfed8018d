//! Fused multi-layer LSTM and GRU with PyTorch's parameter layout, gate order and names.
//!
//! Per layer and direction the cell has one `(G*H, D)` input weight and one `(G*H, H)` recurrent weight
//! (PyTorch's `weight_ih_l{k}`, `weight_hh_l{k}`, gate order LSTM `i, f, g, o`, GRU `r, z, n`):
//!
//! * the input projection of *all* time steps is one GEMM, hoisted out of the time loop;
//! * each time step is one small product `h_{t-1} W_hh^T` against a packed `(H, G*H)` copy of the
//!   recurrent weight (split across threads by columns), followed by one pass over the gates;
//! * backward through time (BPTT) walks the steps in reverse, keeping only the `(B, H)` recurrent
//!   gradients, stores the pre-activation gate gradients `(T, B, G*H)`, and computes every weight gradient
//!   and the input gradient afterwards as three large GEMMs.
//!
//! LSTM (Hochreiter & Schmidhuber 1997, PyTorch's formulation):
//! `i = σ(W_ii x + b_ii + W_hi h + b_hi)`, `f = σ(..)`, `g = tanh(..)`, `o = σ(..)`,
//! `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`.
//!
//! GRU (Cho et al. 2014, PyTorch's formulation, where `r` gates the *projected* state):
//! `r = σ(W_ir x + b_ir + W_hr h + b_hr)`, `z = σ(..)`, `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`,
//! `h' = (1 − z) ⊙ n + z ⊙ h`.

use rayon::prelude::*;

use crate::config::ModelKind;
use crate::error::{check_len, Error, Result};
use crate::linalg::{matmul, packed_matmul_acc, packed_panels_acc, PackedPanels, Trans, PANEL};
use crate::math::{sigmoid, sigmoid_inplace, tanh, tanh_inplace};
use crate::param::{Module, Param};
use crate::rng::{fill_uniform, rng_for, streams, Rng};

/// The recurrent cell types (the subset of [`ModelKind`] this module implements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lstm,
    Gru,
}

/// Shape of a recurrent stack.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    /// LSTM or GRU.
    pub kind: ModelKind,
    /// Input features per step, D.
    pub input: usize,
    /// Hidden units per direction, H.
    pub hidden: usize,
    /// Stacked layers, L.
    pub layers: usize,
    /// Whether every layer also runs a time-reversed direction (output width 2H).
    pub bidirectional: bool,
    /// Dropout on the outputs of every layer except the last (PyTorch's `dropout` argument).
    pub dropout: f32,
    /// Whether the cells have `bias_ih` and `bias_hh`.
    pub bias: bool,
}

impl RnnConfig {
    /// Number of gates G.
    pub fn gates(&self) -> usize {
        match self.kind {
            ModelKind::Gru => 3,
            _ => 4,
        }
    }

    fn cell_kind(&self) -> Result<Kind> {
        match self.kind {
            ModelKind::Lstm => Ok(Kind::Lstm),
            ModelKind::Gru => Ok(Kind::Gru),
            #[allow(unreachable_patterns)]
            other => Err(Error::config(format!("{} is not a recurrent model", other.name()))),
        }
    }

    /// Number of directions (1 or 2).
    pub fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Width of the output at each step, `directions * H`.
    pub fn output_dim(&self) -> usize {
        self.directions() * self.hidden
    }

    fn validate(&self) -> Result<()> {
        self.cell_kind()?;
        if self.input == 0 || self.hidden == 0 || self.layers == 0 {
            return Err(Error::config(format!("rnn: input ({}), hidden ({}) and layers ({}) must all be at least 1", self.input, self.hidden, self.layers)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(format!("rnn: dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }
}

/// The weights of one direction of one layer.
#[derive(Clone, Debug)]
struct Cell {
    /// `weight_ih_l{k}`: (G*H, D_in).
    w_ih: Param,
    /// `weight_hh_l{k}`: (G*H, H).
    w_hh: Param,
    /// `bias_ih_l{k}`: (G*H).
    b_ih: Option<Param>,
    /// `bias_hh_l{k}`: (G*H).
    b_hh: Option<Param>,
    /// `w_ih^T` packed for single-step products: (D_in, G*H).
    w_ih_t: PackedPanels,
    /// `w_hh^T` packed for the recurrent product of the forward pass: (H, G*H).
    w_hh_t: PackedPanels,
    /// `w_hh` packed for the recurrent product of the backward pass: (G*H, H).
    w_hh_p: PackedPanels,
}

impl Cell {
    fn pack(&mut self) {
        let (gh, d_in) = (self.w_ih.shape[0], self.w_ih.shape[1]);
        let h = self.w_hh.shape[1];
        self.w_ih_t.set_transposed(&self.w_ih.value, gh, d_in);
        self.w_hh_t.set_transposed(&self.w_hh.value, gh, h);
        self.w_hh_p.set_rows(&self.w_hh.value, gh, h);
    }

    /// Bias added to the input projection: `b_ih` (+ `b_hh` for LSTM, where the two are simply summed).
    fn input_bias(&self, kind: Kind, out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        if let Some(b) = &self.b_ih {
            out.iter_mut().zip(&b.value).for_each(|(o, v)| *o += v);
        }
        if kind == Kind::Lstm {
            if let Some(b) = &self.b_hh {
                out.iter_mut().zip(&b.value).for_each(|(o, v)| *o += v);
            }
        }
    }
}

/// What the backward pass of one direction needs from its forward pass.
#[derive(Clone, Debug, Default)]
struct DirCache {
    /// Activated gates: (T, B, G*H), LSTM `[i f g o]`, GRU `[r z n]`.
    gates: Vec<f32>,
    /// LSTM cell states c_t: (T, B, H). Empty for GRU.
    c: Vec<f32>,
    /// GRU recurrent candidate term `W_hn h_{t-1} + b_hn`: (T, B, H). Empty for LSTM.
    hn: Vec<f32>,
    /// Hidden states h_t at their time index (also for the reverse direction): (T, B, H).
    h: Vec<f32>,
    /// Initial states: (B, H) each (`c0` empty for GRU).
    h0: Vec<f32>,
    c0: Vec<f32>,
    /// LSTM cell state after the last step of this direction: (B, H); empty for GRU.
    c_last: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
struct LayerCache {
    /// This layer's input, time-major: (T, B, D_l).
    input: Vec<f32>,
    /// Padded batches of a bidirectional layer: the input with each sequence's valid prefix reversed, which the
    /// reverse direction reads front to back: (T, B, D_l). Empty otherwise.
    input_rev: Vec<f32>,
    /// One per direction.
    dirs: Vec<DirCache>,
    /// Dropout mask applied to this layer's output (0 or 1/(1-p)): (T, B, dirs*H); empty when none.
    mask: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    b: usize,
    t: usize,
    /// Valid steps of each sequence `(B)` of a right-padded batch; `None` when every sequence fills all T steps.
    lengths: Option<Vec<usize>>,
    /// False after [`Rnn::infer`]: only the outputs were kept, backward is impossible.
    trainable: bool,
    layers: Vec<LayerCache>,
}

/// Recurrent state between streaming steps, and the final state after a forward pass.
#[derive(Clone, Debug)]
pub struct RnnState {
    /// B.
    pub batch: usize,
    /// Hidden states, as PyTorch's `h_n`: (L*dirs, B, H).
    pub h: Vec<f32>,
    /// LSTM cell states, as PyTorch's `c_n`: (L*dirs, B, H); empty for GRU.
    pub c: Vec<f32>,
    /// Step scratch: gate pre-activations (B, G*H).
    gates: Vec<f32>,
    /// Step scratch: GRU recurrent projection (B, G*H).
    hw: Vec<f32>,
}

/// A multi-layer, optionally bidirectional LSTM or GRU.
#[derive(Clone, Debug)]
pub struct Rnn {
    cfg: RnnConfig,
    kind: Kind,
    /// Cells in PyTorch order: layer-major, forward direction before reverse. Index `l * dirs + d`.
    cells: Vec<Cell>,
    /// Whether `params_mut` was called since the packed copies were made.
    packed_stale: bool,
    cache: Option<Cache>,
}

impl Rnn {
    /// A stack with PyTorch's initialisation, U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, drawn from
    /// `seed`. Parameters are named exactly as in `torch.nn.LSTM`/`torch.nn.GRU` (`weight_ih_l0`, ...).
    pub fn new(cfg: &RnnConfig, seed: u64) -> Result<Rnn> {
        Rnn::with_prefix(cfg, seed, "")
    }

    /// As [`Rnn::new`], with every parameter name prefixed (e.g. `"rnn."` for a field `rnn` of a larger module).
    pub fn with_prefix(cfg: &RnnConfig, seed: u64, prefix: &str) -> Result<Rnn> {
        cfg.validate()?;
        let (g, h) = (cfg.gates(), cfg.hidden);
        let bound = 1.0 / (h as f32).sqrt();
        let mut rng = rng_for(seed, streams::INIT);
        let mut cells = Vec::new();
        for l in 0..cfg.layers {
            let d_in = if l == 0 { cfg.input } else { cfg.output_dim() };
            for d in 0..cfg.directions() {
                let suffix = format!("_l{l}{}", if d == 1 { "_reverse" } else { "" });
                let mut make = |name: &str, shape: &[usize]| {
                    let mut p = Param::zeros(format!("{prefix}{name}{suffix}"), shape);
                    fill_uniform(&mut rng, &mut p.value, bound);
                    p
                };
                let w_ih = make("weight_ih", &[g * h, d_in]);
                let w_hh = make("weight_hh", &[g * h, h]);
                let (b_ih, b_hh) = if cfg.bias { (Some(make("bias_ih", &[g * h])), Some(make("bias_hh", &[g * h]))) } else { (None, None) };
                let mut cell = Cell { w_ih, w_hh, b_ih, b_hh, w_ih_t: Default::default(), w_hh_t: Default::default(), w_hh_p: Default::default() };
                cell.pack();
                cells.push(cell);
            }
        }
        Ok(Rnn { cfg: cfg.clone(), kind: cfg.cell_kind()?, cells, packed_stale: false, cache: None })
    }

    /// The configuration.
    pub fn config(&self) -> &RnnConfig {
        &self.cfg
    }

    fn repack_if_stale(&mut self) {
        if self.packed_stale {
            self.cells.iter_mut().for_each(Cell::pack);
            self.packed_stale = false;
        }
    }

    /// A zero state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> RnnState {
        let n = self.cfg.layers * self.cfg.directions() * b * self.cfg.hidden;
        let gh = self.cfg.gates() * self.cfg.hidden;
        RnnState {
            batch: b,
            h: vec![0.0; n],
            c: if self.kind == Kind::Lstm { vec![0.0; n] } else { Vec::new() },
            gates: vec![0.0; b * gh],
            hw: vec![0.0; b * gh],
        }
    }

    /// Runs the whole sequence `x (B, T, D)` from a zero state; returns `(B, T, dirs*H)`.
    /// `dropout: Some(rng)` means training mode (dropout between layers drawn from `rng`).
    /// Keeps what [`Rnn::backward`] needs.
    pub fn forward(&mut self, x: &[f32], b: usize, t: usize, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.forward_from(x, b, t, None, dropout)
    }

    /// As [`Rnn::forward`], starting from `init` (e.g. the state a previous chunk ended in).
    pub fn forward_from(&mut self, x: &[f32], b: usize, t: usize, init: Option<&RnnState>, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.run(x, b, t, None, init, dropout, true)
    }

    /// [`Rnn::forward`] over right-padded sequences with `lengths (B)` valid steps each (PyTorch's
    /// `pack_padded_sequence`): the reverse direction of a bidirectional layer starts at each sequence's last valid
    /// step, the outputs at padded steps are zero (as `pad_packed_sequence` writes them), their gradients are
    /// ignored by [`Rnn::backward`], and [`Rnn::final_state`] holds every sequence's state after its last valid
    /// step. Padded steps therefore never change an output or a gradient of a valid step.
    pub fn forward_padded(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.run(x, b, t, lengths, None, dropout, true)
    }

    /// Inference over the whole sequence `x (B, T, D)` → `(B, T, dirs*H)`: no dropout, and nothing is kept for
    /// backward, so memory does not grow with T beyond the input and output (the input projection runs in
    /// chunks of time steps). [`Rnn::final_state`] still works afterwards.
    pub fn infer(&mut self, x: &[f32], b: usize, t: usize) -> Result<Vec<f32>> {
        self.run(x, b, t, None, None, None, false)
    }

    /// As [`Rnn::infer`], starting from `init`.
    pub fn infer_from(&mut self, x: &[f32], b: usize, t: usize, init: Option<&RnnState>) -> Result<Vec<f32>> {
        self.run(x, b, t, None, init, None, false)
    }

    /// [`Rnn::infer`] over right-padded sequences, see [`Rnn::forward_padded`].
    pub fn infer_padded(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>) -> Result<Vec<f32>> {
        self.run(x, b, t, lengths, None, None, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        x: &[f32],
        b: usize,
        t: usize,
        lengths: Option<&[usize]>,
        init: Option<&RnnState>,
        mut dropout: Option<&mut Rng>,
        keep: bool,
    ) -> Result<Vec<f32>> {
        self.cache = None;
        check_len("rnn input (B, T, D)", &[b, t, self.cfg.input], x.len())?;
        if let Some(s) = init {
            self.check_state(s, b)?;
        }
        let lengths = check_lengths(lengths, b, t)?;
        self.repack_if_stale();
        let (h, dirs, kind) = (self.cfg.hidden, self.cfg.directions(), self.kind);
        let out_dim = self.cfg.output_dim();
        // (T, B, D) time-major input of layer 0.
        let mut input = vec![0.0; x.len()];
        bt_to_tb(x, b, t, self.cfg.input, &mut input);
        let mut layers = Vec::with_capacity(self.cfg.layers);
        for l in 0..self.cfg.layers {
            let d_in = if l == 0 { self.cfg.input } else { out_dim };
            let initial = |d: usize| -> (Vec<f32>, Vec<f32>) {
                let idx = l * dirs + d;
                match init {
                    Some(s) => (
                        s.h[idx * b * h..(idx + 1) * b * h].to_vec(),
                        if kind == Kind::Lstm { s.c[idx * b * h..(idx + 1) * b * h].to_vec() } else { Vec::new() },
                    ),
                    None => (vec![0.0; b * h], if kind == Kind::Lstm { vec![0.0; b * h] } else { Vec::new() }),
                }
            };
            let cells = &self.cells[l * dirs..(l + 1) * dirs];
            // Padded batches: the reverse direction reads each sequence's valid prefix reversed, front to back, so it
            // starts at the true last step; the padding stays behind the valid steps in both directions.
            let input_rev = match (dirs, lengths) {
                (2, Some(lens)) => reverse_valid_prefixes(&input, b, t, d_in, lens),
                _ => Vec::new(),
            };
            // LSTM cell states of every step are kept when the final state must be read at each sequence's length.
            let keep_cells = keep || lengths.is_some();
            let dir_caches: Vec<DirCache> = if dirs == 2 {
                let (i0, i1) = (initial(0), initial(1));
                let (inp, rev) = (&input, &input_rev);
                let (f, r) = rayon::join(
                    || run_direction(kind, &cells[0], inp, b, t, d_in, i0, false, keep, keep_cells, 2),
                    || match lengths {
                        Some(_) => run_direction(kind, &cells[1], rev, b, t, d_in, i1, false, keep, keep_cells, 2),
                        None => run_direction(kind, &cells[1], inp, b, t, d_in, i1, true, keep, keep_cells, 2),
                    },
                );
                vec![f, r]
            } else {
                vec![run_direction(kind, &cells[0], &input, b, t, d_in, initial(0), false, keep, keep_cells, 1)]
            };
            // (T, B, dirs*H) layer output.
            let mut output = if dirs == 1 {
                dir_caches[0].h.clone()
            } else {
                let mut o = vec![0.0; t * b * out_dim];
                for (d, dc) in dir_caches.iter().enumerate() {
                    for (row, src) in o.chunks_exact_mut(out_dim).zip(dc.h.chunks_exact(h)) {
                        row[d * h..(d + 1) * h].copy_from_slice(src);
                    }
                }
                if let (Some(lens), Some(rev)) = (lengths, dir_caches.get(1)) {
                    // The reverse direction's outputs back at their time index: position p of a sequence of length n
                    // was read at step n - 1 - p.
                    for (bi, &n) in lens.iter().enumerate() {
                        for p in 0..n {
                            let (dst, src) = ((p * b + bi) * out_dim + h, ((n - 1 - p) * b + bi) * h);
                            o[dst..dst + h].copy_from_slice(&rev.h[src..src + h]);
                        }
                    }
                }
                o
            };
            if let Some(lens) = lengths {
                zero_padded_steps(&mut output, b, out_dim, lens);
            }
            let mut mask = Vec::new();
            if l + 1 < self.cfg.layers && self.cfg.dropout > 0.0 {
                if let Some(rng) = dropout.as_deref_mut() {
                    mask = dropout_mask(rng, output.len(), self.cfg.dropout);
                    output.iter_mut().zip(&mask).for_each(|(o, m)| *o *= m);
                }
            }
            let layer_input = std::mem::replace(&mut input, output);
            layers.push(LayerCache {
                input: if keep { layer_input } else { Vec::new() },
                input_rev: if keep { input_rev } else { Vec::new() },
                dirs: dir_caches,
                mask,
            });
        }
        self.cache = Some(Cache { b, t, lengths: lengths.map(<[usize]>::to_vec), trainable: keep, layers });
        let mut y = vec![0.0; input.len()];
        tb_to_bt(&input, b, t, out_dim, &mut y);
        Ok(y)
    }

    fn check_state(&self, s: &RnnState, b: usize) -> Result<()> {
        let n = self.cfg.layers * self.cfg.directions() * b * self.cfg.hidden;
        let c = if self.kind == Kind::Lstm { n } else { 0 };
        if s.batch != b || s.h.len() != n || s.c.len() != c {
            return Err(Error::Invalid(format!("rnn state is for batch {} with {} hidden values, the input needs batch {b} with {n}", s.batch, s.h.len())));
        }
        Ok(())
    }

    /// The states after the last [`Rnn::forward`] (PyTorch's `h_n`, `c_n`): (L*dirs, B, H).
    pub fn final_state(&self) -> Result<RnnState> {
        let cache = self.cache.as_ref().ok_or_else(|| Error::Invalid("final_state called before forward".into()))?;
        let (b, t, h, dirs) = (cache.b, cache.t, self.cfg.hidden, self.cfg.directions());
        let mut s = self.zero_state(b);
        for (l, lc) in cache.layers.iter().enumerate() {
            for (d, dc) in lc.dirs.iter().enumerate() {
                let idx = l * dirs + d;
                let dst = idx * b * h..(idx + 1) * b * h;
                if let Some(lens) = &cache.lengths {
                    // Padded batch: both directions ran front to back (the reverse one over the reversed valid
                    // prefixes), so each sequence's state is the one after its step n - 1; the cell states of every
                    // step were kept for this.
                    for (bi, &n) in lens.iter().enumerate() {
                        let (row, src) = (dst.start + bi * h, ((n - 1) * b + bi) * h);
                        s.h[row..row + h].copy_from_slice(&dc.h[src..src + h]);
                        if !s.c.is_empty() {
                            s.c[row..row + h].copy_from_slice(&dc.c[src..src + h]);
                        }
                    }
                    continue;
                }
                // The forward direction ends at t = T-1, the reverse one at t = 0.
                let last = if d == 0 { t.saturating_sub(1) } else { 0 };
                let h_last = if t == 0 { &dc.h0[..] } else { &dc.h[last * b * h..(last + 1) * b * h] };
                s.h[dst.clone()].copy_from_slice(h_last);
                if !s.c.is_empty() {
                    s.c[dst].copy_from_slice(&dc.c_last);
                }
            }
        }
        Ok(s)
    }

    /// Backward through time. `dy (B, T, dirs*H)` is the gradient of the loss with respect to the output of
    /// the last [`Rnn::forward`]; returns `dx (B, T, D)` and ACCUMULATES every parameter gradient.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let cache = self.cache.take().ok_or_else(|| Error::Invalid("rnn backward called without a forward pass".into()))?;
        if !cache.trainable {
            self.cache = Some(cache);
            return Err(Error::Invalid("rnn backward after infer(): run forward() to keep what backward needs".into()));
        }
        let (b, t) = (cache.b, cache.t);
        let (h, dirs, kind, out_dim) = (self.cfg.hidden, self.cfg.directions(), self.kind, self.cfg.output_dim());
        if let Err(e) = check_len("rnn output gradient (B, T, dirs*H)", &[b, t, out_dim], dy.len()) {
            self.cache = Some(cache);
            return Err(e);
        }
        // (T, B, dirs*H) gradient w.r.t. the current layer's output.
        let mut dout = vec![0.0; dy.len()];
        bt_to_tb(dy, b, t, out_dim, &mut dout);
        let lengths = cache.lengths.as_deref();
        for l in (0..self.cfg.layers).rev() {
            let lc = &cache.layers[l];
            if !lc.mask.is_empty() {
                dout.iter_mut().zip(&lc.mask).for_each(|(g, m)| *g *= m);
            }
            if let Some(lens) = lengths {
                // The padded outputs were set to zero: nothing flows back from them.
                zero_padded_steps(&mut dout, b, out_dim, lens);
            }
            let d_in = if l == 0 { self.cfg.input } else { out_dim };
            // Split the output gradient per direction: (T, B, H) each.
            let mut per_dir: Vec<Vec<f32>> = (0..dirs)
                .map(|d| {
                    if dirs == 1 {
                        std::mem::take(&mut dout)
                    } else {
                        dout.chunks_exact(out_dim).flat_map(|row| row[d * h..(d + 1) * h].iter().copied()).collect()
                    }
                })
                .collect();
            if let (Some(lens), 2) = (lengths, dirs) {
                // The reverse direction ran over the reversed valid prefixes: its gradient in that order too.
                per_dir[1] = reverse_valid_prefixes(&per_dir[1], b, t, h, lens);
            }
            let cells = &mut self.cells[l * dirs..(l + 1) * dirs];
            let mut dx = vec![0.0; t * b * d_in];
            if dirs == 2 {
                let (c0, c1) = cells.split_at_mut(1);
                let mut dx1 = vec![0.0; t * b * d_in];
                // Padded batches: the reverse direction ran front to back over `input_rev`.
                let (rev_input, reverse) = if lengths.is_some() { (&lc.input_rev, false) } else { (&lc.input, true) };
                rayon::join(
                    || backward_direction(kind, &mut c0[0], &lc.input, &lc.dirs[0], &per_dir[0], b, t, d_in, false, 2, &mut dx),
                    || backward_direction(kind, &mut c1[0], rev_input, &lc.dirs[1], &per_dir[1], b, t, d_in, reverse, 2, &mut dx1),
                );
                if let Some(lens) = lengths {
                    dx1 = reverse_valid_prefixes(&dx1, b, t, d_in, lens);
                }
                dx.iter_mut().zip(&dx1).for_each(|(a, v)| *a += v);
            } else {
                backward_direction(kind, &mut cells[0], &lc.input, &lc.dirs[0], &per_dir[0], b, t, d_in, false, 1, &mut dx);
            }
            dout = dx;
        }
        let mut dx = vec![0.0; dout.len()];
        tb_to_bt(&dout, b, t, self.cfg.input, &mut dx);
        Ok(dx)
    }

    /// One streaming step: `x_t (B, D)` → `y_t (B, H)`, updating `state` in place. Allocation-free.
    /// Bidirectional stacks cannot stream (the reverse direction needs the future) and return an error.
    pub fn step(&mut self, x_t: &[f32], state: &mut RnnState, y_t: &mut [f32]) -> Result<()> {
        if self.cfg.bidirectional {
            return Err(Error::Invalid("a bidirectional RNN cannot run step by step: its reverse direction reads the future".into()));
        }
        let b = state.batch;
        self.check_state(state, b)?;
        check_len("rnn step input (B, D)", &[b, self.cfg.input], x_t.len())?;
        check_len("rnn step output (B, H)", &[b, self.cfg.hidden], y_t.len())?;
        self.repack_if_stale();
        let (h, g, kind) = (self.cfg.hidden, self.cfg.gates(), self.kind);
        let gh = g * h;
        for (l, cell) in self.cells.iter().enumerate() {
            let (h_below, h_rest) = state.h.split_at_mut(l * b * h);
            let h_l = &mut h_rest[..b * h];
            // Layer input: x_t for layer 0, else the new hidden state of the layer below (B, D_l).
            let (inp, d_in): (&[f32], usize) = if l == 0 { (x_t, self.cfg.input) } else { (&h_below[(l - 1) * b * h..], h) };
            let gates = &mut state.gates;
            for row in gates.chunks_exact_mut(gh) {
                cell.input_bias(kind, row);
            }
            packed_matmul_acc(b, inp, d_in, &cell.w_ih_t, gates, gh);
            match kind {
                Kind::Lstm => {
                    packed_matmul_acc(b, h_l, h, &cell.w_hh_t, gates, gh);
                    let c_l = &mut state.c[l * b * h..(l + 1) * b * h];
                    for bi in 0..b {
                        let row = &mut gates[bi * gh..(bi + 1) * gh];
                        let (i, rest) = row.split_at_mut(h);
                        let (f, rest) = rest.split_at_mut(h);
                        let (g, o) = rest.split_at_mut(h);
                        lstm_pointwise(i, f, g, o, None, &mut c_l[bi * h..(bi + 1) * h], &mut h_l[bi * h..(bi + 1) * h]);
                    }
                }
                Kind::Gru => {
                    let hw = &mut state.hw;
                    for row in hw.chunks_exact_mut(gh) {
                        match &cell.b_hh {
                            Some(bias) => row.copy_from_slice(&bias.value),
                            None => row.iter_mut().for_each(|v| *v = 0.0),
                        }
                    }
                    packed_matmul_acc(b, h_l, h, &cell.w_hh_t, hw, gh);
                    for bi in 0..b {
                        let hrow = &mut h_l[bi * h..(bi + 1) * h];
                        let (r, rest) = gates[bi * gh..(bi + 1) * gh].split_at_mut(h);
                        let (z, n) = rest.split_at_mut(h);
                        let hw_row = &hw[bi * gh..(bi + 1) * gh];
                        gru_pointwise(r, z, n, &hw_row[..h], &hw_row[h..2 * h], &hw_row[2 * h..], None, hrow);
                    }
                }
            }
        }
        let last = (self.cfg.layers - 1) * b * h;
        y_t.copy_from_slice(&state.h[last..last + b * h]);
        Ok(())
    }
}

impl Module for Rnn {
    fn params(&self) -> Vec<&Param> {
        let mut v = Vec::new();
        for c in &self.cells {
            v.push(&c.w_ih);
            v.push(&c.w_hh);
            if let (Some(bi), Some(bh)) = (&c.b_ih, &c.b_hh) {
                v.push(bi);
                v.push(bh);
            }
        }
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        // The caller may change the values: re-pack before the next use.
        self.packed_stale = true;
        let mut v = Vec::new();
        for c in &mut self.cells {
            v.push(&mut c.w_ih);
            v.push(&mut c.w_hh);
            if let (Some(bi), Some(bh)) = (&mut c.b_ih, &mut c.b_hh) {
                v.push(bi);
                v.push(bh);
            }
        }
        v
    }
}

/// LSTM pointwise update of one sequence's units (Hochreiter & Schmidhuber 1997, PyTorch's formulation):
/// `i, f, g, o` hold the pre-activations on entry and the activated gates on exit;
/// `c_t = f ⊙ c_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`. Separate passes over contiguous slices so that each
/// one vectorises.
#[inline]
/// `c_prev: None` means `c` holds c_{t-1} on entry (the streaming step updates it in place).
fn lstm_pointwise(i: &mut [f32], f: &mut [f32], g: &mut [f32], o: &mut [f32], c_prev: Option<&[f32]>, c: &mut [f32], h_out: &mut [f32]) {
    sigmoid_inplace(i);
    sigmoid_inplace(f);
    tanh_inplace(g);
    sigmoid_inplace(o);
    match c_prev {
        Some(cp) => {
            for j in 0..c.len() {
                c[j] = f[j] * cp[j] + i[j] * g[j];
            }
        }
        None => {
            for j in 0..c.len() {
                c[j] = f[j] * c[j] + i[j] * g[j];
            }
        }
    }
    for j in 0..c.len() {
        h_out[j] = o[j] * tanh(c[j]);
    }
}

/// GRU pointwise update of one sequence's units (Cho et al. 2014, PyTorch's formulation): `r, z, n` hold
/// the input projections (with `b_ih`) on entry and the activated gates on exit; `hr, hz, hn` are the parts of
/// `W_hh h_{t-1} + b_hh`; `h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}` with `n = tanh(x_n + r ⊙ hn)`.
#[allow(clippy::too_many_arguments)]
#[inline]
/// `h_prev: None` means `h_out` holds h_{t-1} on entry (the streaming step updates it in place).
fn gru_pointwise(r: &mut [f32], z: &mut [f32], n: &mut [f32], hr: &[f32], hz: &[f32], hn: &[f32], h_prev: Option<&[f32]>, h_out: &mut [f32]) {
    for j in 0..r.len() {
        r[j] = sigmoid(r[j] + hr[j]);
        z[j] = sigmoid(z[j] + hz[j]);
    }
    for j in 0..r.len() {
        n[j] = tanh(n[j] + r[j] * hn[j]);
    }
    match h_prev {
        Some(hp) => {
            for j in 0..r.len() {
                h_out[j] = (1.0 - z[j]) * n[j] + z[j] * hp[j];
            }
        }
        None => {
            for j in 0..r.len() {
                h_out[j] = (1.0 - z[j]) * n[j] + z[j] * h_out[j];
            }
        }
    }
}

/// Time steps per input-projection GEMM in inference mode: large enough for an efficient GEMM, small
/// enough that the `(chunk, B, G*H)` gate buffer stays in cache and memory does not grow with T.
const INFER_CHUNK: usize = 256;

/// Forward over the whole sequence for one direction. `input (T, B, D_in)`.
///
/// With `keep` (training) the gates of every step, the cell states (LSTM) and the recurrent candidate
/// term (GRU) are kept for backward, and the input projection is one GEMM over all T*B rows. Without it
/// (inference) only the outputs are kept, and the projection runs in chunks of [`INFER_CHUNK`] steps.
/// `keep_cells` (implied by `keep`) keeps the LSTM cell state of every step, `(T, B, H)`, also in inference.
#[allow(clippy::too_many_arguments)]
fn run_direction(
    kind: Kind,
    cell: &Cell,
    input: &[f32],
    b: usize,
    t: usize,
    d_in: usize,
    init: (Vec<f32>, Vec<f32>),
    reverse: bool,
    keep: bool,
    keep_cells: bool,
    directions: usize,
) -> DirCache {
    let h = cell.w_hh.shape[1];
    let gh = cell.w_hh.shape[0];
    let g_count = gh / h;
    let (h0, c0) = init;
    let step = b * h;
    let chunk = if keep { t.max(1) } else { INFER_CHUNK.min(t.max(1)) };
    let mut bias = vec![0.0; gh];
    cell.input_bias(kind, &mut bias);
    let mut gates = vec![0.0; chunk * b * gh]; // (chunk, B, G*H): input projections, then activated gates
    let mut hs = vec![0.0; t * step]; // (T, B, H)
    let lstm = kind == Kind::Lstm;
    let keep_cells = keep || keep_cells;
    let mut cs = if lstm && keep_cells { vec![0.0; t * step] } else { Vec::new() }; // (T, B, H)
                                                                                    // Otherwise two (B, H) cell states: the state after global step s lives in block (s + 1) % 2.
    let mut c_pp = if lstm && !keep_cells { [c0.clone(), c0.clone()].concat() } else { Vec::new() }; // (2, B, H)
    let mut hn = if kind == Kind::Gru && keep { vec![0.0; t * step] } else { Vec::new() }; // (T, B, H)
    let mut hw = vec![0.0; b * gh]; // (B, G*H) GRU recurrent projection
    let n = team::team_size(b, h, gh, directions);
    let mut done = 0; // steps done, in processing order
    for ci in 0..t.div_ceil(chunk) {
        // Time range [t0, t1) of this chunk; the reverse direction walks the chunks from the end.
        let (t0, t1) = if reverse {
            let t1 = t - ci * chunk;
            (t1.saturating_sub(chunk), t1)
        } else {
            (ci * chunk, ((ci + 1) * chunk).min(t))
        };
        // gates (rows, G*H) = input[t0..t1] · W_ih^T + bias: the hoisted input projection as one GEMM.
        let rows = (t1 - t0) * b;
        for row in gates[..rows * gh].chunks_exact_mut(gh) {
            row.copy_from_slice(&bias);
        }
        matmul(rows, gh, d_in, 1.0, &input[t0 * b * d_in..t1 * b * d_in], Trans::N, &cell.w_ih.value, Trans::T, 1.0, &mut gates[..rows * gh]);
        let (gp, hp, cp, ppp, hnp, hwp) = (
            team::Shared(gates.as_mut_ptr()),
            team::Shared(hs.as_mut_ptr()),
            if keep_cells && lstm { team::Shared(cs.as_mut_ptr()) } else { team::Shared::null() },
            if !keep_cells && lstm { team::Shared(c_pp.as_mut_ptr()) } else { team::Shared::null() },
            if keep && !lstm { team::Shared(hn.as_mut_ptr()) } else { team::Shared::null() },
            team::Shared(hw.as_mut_ptr()),
        );
        let (h0, c0) = (&h0, &c0);
        // One phase per time step, one chunk of hidden units per thread.
        team::run_phases(n, t1 - t0, n, |kk, k| {
            let u = team::units(k, n, h);
            let w = u.len();
            {
                let s = done + kk;
                let tt = if reverse { t1 - 1 - kk } else { t0 + kk };
                let prev = if s == 0 {
                    None
                } else if reverse {
                    Some(tt + 1)
                } else {
                    Some(tt - 1)
                };
                // SAFETY (every block below): thread k writes only the columns of its units `u` (gate columns
                // g*H + u of `gates`/`hw`, columns u of the (B, H) blocks), and reads other threads' h_{t-1}
                // only after the barrier that ended the previous step.
                unsafe {
                    let h_prev: &[f32] = match prev {
                        Some(p) => hp.slice(p * step, step),
                        None => h0,
                    };
                    let g_off = (tt - t0) * b * gh;
                    match kind {
                        Kind::Lstm => {
                            team::gate_columns_acc(b, h_prev, h, &cell.w_hh_t, g_count, h, u.clone(), team::Shared(gp.0.add(g_off)), gh);
                            for bi in 0..b {
                                let row = g_off + bi * gh;
                                let (c_prev, c_cur): (&[f32], &mut [f32]) = if keep_cells {
                                    let c_prev = match prev {
                                        Some(p) => cp.slice(p * step + bi * h + u.start, w),
                                        None => &c0[bi * h + u.start..bi * h + u.end],
                                    };
                                    (c_prev, cp.slice_mut(tt * step + bi * h + u.start, w))
                                } else {
                                    (ppp.slice((s % 2) * step + bi * h + u.start, w), ppp.slice_mut(((s + 1) % 2) * step + bi * h + u.start, w))
                                };
                                lstm_pointwise(
                                    gp.slice_mut(row + u.start, w),
                                    gp.slice_mut(row + h + u.start, w),
                                    gp.slice_mut(row + 2 * h + u.start, w),
                                    gp.slice_mut(row + 3 * h + u.start, w),
                                    Some(c_prev),
                                    c_cur,
                                    hp.slice_mut(tt * step + bi * h + u.start, w),
                                );
                            }
                        }
                        Kind::Gru => {
                            for bi in 0..b {
                                for g in 0..g_count {
                                    let dst = hwp.slice_mut(bi * gh + g * h + u.start, w);
                                    match &cell.b_hh {
                                        Some(bias) => dst.copy_from_slice(&bias.value[g * h + u.start..g * h + u.end]),
                                        None => dst.iter_mut().for_each(|v| *v = 0.0),
                                    }
                                }
                            }
                            team::gate_columns_acc(b, h_prev, h, &cell.w_hh_t, g_count, h, u.clone(), hwp, gh);
                            for bi in 0..b {
                                let row = g_off + bi * gh;
                                let hw_row = bi * gh;
                                if keep {
                                    hnp.slice_mut(tt * step + bi * h + u.start, w).copy_from_slice(hwp.slice(hw_row + 2 * h + u.start, w));
                                }
                                gru_pointwise(
                                    gp.slice_mut(row + u.start, w),
                                    gp.slice_mut(row + h + u.start, w),
                                    gp.slice_mut(row + 2 * h + u.start, w),
                                    hwp.slice(hw_row + u.start, w),
                                    hwp.slice(hw_row + h + u.start, w),
                                    hwp.slice(hw_row + 2 * h + u.start, w),
                                    Some(&h_prev[bi * h + u.start..bi * h + u.end]),
                                    hp.slice_mut(tt * step + bi * h + u.start, w),
                                );
                            }
                        }
                    }
                }
            }
        });
        done += t1 - t0;
    }
    // Cell state after the last processed step.
    let c_last = match (lstm, keep_cells) {
        (false, _) => Vec::new(),
        (true, false) => c_pp[(t % 2) * step..(t % 2 + 1) * step].to_vec(),
        (true, true) if t == 0 => c0.clone(),
        (true, true) => {
            let last = if reverse { 0 } else { t - 1 };
            cs[last * step..(last + 1) * step].to_vec()
        }
    };
    DirCache { gates: if keep { gates } else { Vec::new() }, c: cs, hn, h: hs, h0, c0, c_last }
}

/// BPTT for one direction. `input (T, B, D_in)`, `dh_out (T, B, H)` the gradient w.r.t. this direction's
/// outputs; ADDS the input gradient into `dx (T, B, D_in)` and accumulates the cell's parameter gradients.
#[allow(clippy::too_many_arguments)]
fn backward_direction(
    kind: Kind,
    cell: &mut Cell,
    input: &[f32],
    cache: &DirCache,
    dh_out: &[f32],
    b: usize,
    t: usize,
    d_in: usize,
    reverse: bool,
    directions: usize,
    dx: &mut [f32],
) {
    let h = cell.w_hh.shape[1];
    let gh = cell.w_hh.shape[0];
    let step = b * h;
    // Pre-activation gradients. dxw: w.r.t. the input projection (T, B, G*H); dhw: w.r.t. the recurrent
    // projection (T, B, G*H) — identical for LSTM, different in the n gate for GRU.
    let mut dxw = vec![0.0; t * b * gh];
    let mut dhw = if kind == Kind::Gru { vec![0.0; t * b * gh] } else { Vec::new() };
    // (B, H) gradients flowing to h_{t-1} (two buffers, swapped every step) and to c_{t-1} (LSTM).
    let mut dh_pp = vec![0.0; 2 * step];
    let mut dc = vec![0.0; if kind == Kind::Lstm { step } else { 0 }];
    let n = team::team_size(b, h, gh, directions);
    let (dxp, dhwp, dhp, dcp) = (
        team::Shared(dxw.as_mut_ptr()),
        if kind == Kind::Gru { team::Shared(dhw.as_mut_ptr()) } else { team::Shared(dxw.as_mut_ptr()) },
        team::Shared(dh_pp.as_mut_ptr()),
        team::Shared(dc.as_mut_ptr()),
    );
    let w_hh_p = &cell.w_hh_p;
    // Two phases per time step (the pointwise pass, then the product), one chunk of hidden units per thread.
    team::run_phases(n, 2 * t, n, |phase, k| {
        let u = team::units(k, n, h);
        let q = phase / 2; // steps processed before this one
        let s = t - 1 - q;
        let (cur, nxt) = if q % 2 == 0 { (0, step) } else { (step, 0) }; // offsets of dh and dh_next in dh_pp
        {
            let tt = if reverse { t - 1 - s } else { s };
            let prev = if s == 0 {
                None
            } else if reverse {
                Some(tt + 1)
            } else {
                Some(tt - 1)
            };
            let g_t = &cache.gates[tt * b * gh..(tt + 1) * b * gh];
            let dy_t = &dh_out[tt * step..(tt + 1) * step];
            let row0 = tt * b * gh;
            // Phase 1, this chunk's units: pre-activation gate gradients (and the direct part of dh_{t-1}).
            // SAFETY (this block and phase 2): a chunk writes only its units' columns (gate columns g*H + u of
            // dxw/dhw, columns u of dh_pp and dc); phase 2 reads other chunks' gate columns only after all
            // chunks of phase 1 finished (run_phases).
            if phase % 2 == 0 {
                unsafe {
                    match kind {
                        Kind::Lstm => {
                            let c_t = &cache.c[tt * step..(tt + 1) * step];
                            let c_prev = match prev {
                                Some(p) => &cache.c[p * step..(p + 1) * step],
                                None => &cache.c0[..],
                            };
                            let w = u.len();
                            for bi in 0..b {
                                let gr = &g_t[bi * gh..(bi + 1) * gh];
                                let r = row0 + bi * gh + u.start;
                                let (dgi, dgf, dgg, dgo) =
                                    (dxp.slice_mut(r, w), dxp.slice_mut(r + h, w), dxp.slice_mut(r + 2 * h, w), dxp.slice_mut(r + 3 * h, w));
                                let dh = dhp.slice(cur + bi * h + u.start, w);
                                let dc = dcp.slice_mut(bi * h + u.start, w);
                                dhp.slice_mut(nxt + bi * h + u.start, w).iter_mut().for_each(|v| *v = 0.0);
                                for jj in 0..w {
                                    let (j, kk) = (u.start + jj, bi * h + u.start + jj);
                                    let (i, f, g, o) = (gr[j], gr[h + j], gr[2 * h + j], gr[3 * h + j]);
                                    let dh_total = dy_t[kk] + dh[jj];
                                    let tc = tanh(c_t[kk]);
                                    let dct = dc[jj] + dh_total * o * (1.0 - tc * tc);
                                    dgi[jj] = dct * g * i * (1.0 - i);
                                    dgf[jj] = dct * c_prev[kk] * f * (1.0 - f);
                                    dgg[jj] = dct * i * (1.0 - g * g);
                                    dgo[jj] = dh_total * tc * o * (1.0 - o);
                                    dc[jj] = dct * f;
                                }
                            }
                        }
                        Kind::Gru => {
                            let hn_t = &cache.hn[tt * step..(tt + 1) * step];
                            let h_prev = match prev {
                                Some(p) => &cache.h[p * step..(p + 1) * step],
                                None => &cache.h0[..],
                            };
                            let w = u.len();
                            for bi in 0..b {
                                let gr = &g_t[bi * gh..(bi + 1) * gh];
                                let r = row0 + bi * gh + u.start;
                                let (dxr, dxz, dxn) = (dxp.slice_mut(r, w), dxp.slice_mut(r + h, w), dxp.slice_mut(r + 2 * h, w));
                                let (dhr, dhz, dhn) = (dhwp.slice_mut(r, w), dhwp.slice_mut(r + h, w), dhwp.slice_mut(r + 2 * h, w));
                                let dh = dhp.slice(cur + bi * h + u.start, w);
                                let dh_next = dhp.slice_mut(nxt + bi * h + u.start, w);
                                for jj in 0..w {
                                    let (j, kk) = (u.start + jj, bi * h + u.start + jj);
                                    let (r, z, nn) = (gr[j], gr[h + j], gr[2 * h + j]);
                                    let dh_total = dy_t[kk] + dh[jj];
                                    let dn = dh_total * (1.0 - z);
                                    let dz = dh_total * (h_prev[kk] - nn);
                                    let dan = dn * (1.0 - nn * nn);
                                    let dar = dan * hn_t[kk] * r * (1.0 - r);
                                    let daz = dz * z * (1.0 - z);
                                    dxr[jj] = dar;
                                    dxz[jj] = daz;
                                    dxn[jj] = dan;
                                    dhr[jj] = dar;
                                    dhz[jj] = daz;
                                    dhn[jj] = dan * r;
                                    dh_next[jj] = dh_total * z;
                                }
                            }
                        }
                    }
                }
            } else {
                // Phase 2, this chunk's units: dh_{t-1}[:, u] += dG_t (B, G*H) · W_hh[:, u].
                unsafe {
                    let dg_t = dhwp.slice(row0, b * gh);
                    let panels = if u.start == 0 && u.end == h { 0..h.div_ceil(PANEL) } else { u.start / PANEL..u.end.div_ceil(PANEL) };
                    packed_panels_acc(b, dg_t, gh, w_hh_p, panels, dhp.0.add(nxt), h);
                }
            }
        }
    });
    // h_{t-1} for every t at its time index: (T, B, H).
    let mut h_prev_all = vec![0.0; t * step];
    for tt in 0..t {
        let src = if reverse { (tt + 1 < t).then_some(tt + 1) } else { tt.checked_sub(1) };
        let dst = &mut h_prev_all[tt * step..(tt + 1) * step];
        match src {
            Some(p) => dst.copy_from_slice(&cache.h[p * step..(p + 1) * step]),
            None => dst.copy_from_slice(&cache.h0),
        }
    }
    let dhw_all: &[f32] = if kind == Kind::Gru { &dhw } else { &dxw };
    let n = t * b;
    // dW_ih (G*H, D_in) += dxw^T (G*H, T*B) · input (T*B, D_in)
    matmul(gh, d_in, n, 1.0, &dxw, Trans::T, input, Trans::N, 1.0, &mut cell.w_ih.grad);
    // dW_hh (G*H, H) += dhw^T (G*H, T*B) · h_prev (T*B, H)
    matmul(gh, h, n, 1.0, dhw_all, Trans::T, &h_prev_all, Trans::N, 1.0, &mut cell.w_hh.grad);
    // dx (T*B, D_in) += dxw (T*B, G*H) · W_ih (G*H, D_in)
    matmul(n, d_in, gh, 1.0, &dxw, Trans::N, &cell.w_ih.value, Trans::N, 1.0, dx);
    if let Some(bias) = &mut cell.b_ih {
        column_sums_acc(&dxw, gh, &mut bias.grad);
    }
    if let Some(bias) = &mut cell.b_hh {
        column_sums_acc(dhw_all, gh, &mut bias.grad);
    }
}

/// `out (C) += sum over rows of m (N, C)`, accumulated in f64 for long sequences.
fn column_sums_acc(m: &[f32], c: usize, out: &mut [f32]) {
    let sums = m
        .par_chunks(c * 256)
        .map(|block| {
            let mut s = vec![0.0f64; c];
            for row in block.chunks_exact(c) {
                s.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64);
            }
            s
        })
        .reduce(
            || vec![0.0f64; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    out.iter_mut().zip(&sums).for_each(|(o, s)| *o += *s as f32);
}

/// Inverted-dropout mask: 0 with probability p, else 1/(1-p).
fn dropout_mask(rng: &mut Rng, n: usize, p: f32) -> Vec<f32> {
    use rand::Rng as _;
    let keep = 1.0 / (1.0 - p);
    (0..n).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect()
}

/// `lengths` as the valid steps of a batch of `b` sequences of `t` steps: `None` when absent or when every
/// sequence fills all `t` steps (the unpadded fast path); an error for a wrong count or a length outside `1..=t`.
fn check_lengths(lengths: Option<&[usize]>, b: usize, t: usize) -> Result<Option<&[usize]>> {
    let Some(lens) = lengths else { return Ok(None) };
    check_len("rnn sequence lengths (B)", &[b], lens.len())?;
    if let Some((i, &n)) = lens.iter().enumerate().find(|&(_, &n)| n == 0 || n > t) {
        return Err(Error::Invalid(format!("rnn: sequence {i} has length {n}, outside 1..={t}")));
    }
    Ok(lens.iter().any(|&n| n != t).then_some(lens))
}

/// A time-major `(T, B, D)` buffer with every sequence's valid prefix reversed in time (position `p < n` takes
/// position `n - 1 - p`, the padded steps stay where they are). Its own inverse.
fn reverse_valid_prefixes(src: &[f32], b: usize, t: usize, d: usize, lengths: &[usize]) -> Vec<f32> {
    let mut out = src.to_vec(); // (T, B, D)
    for (bi, &n) in lengths.iter().enumerate() {
        for p in 0..n.min(t) {
            let (dst, from) = ((p * b + bi) * d, ((n - 1 - p) * b + bi) * d);
            out[dst..dst + d].copy_from_slice(&src[from..from + d]);
        }
    }
    out
}

/// Zeroes the padded steps `p >= lengths[b]` of a time-major `(T, B, D)` buffer.
fn zero_padded_steps(buf: &mut [f32], b: usize, d: usize, lengths: &[usize]) {
    for (ti, step) in buf.chunks_exact_mut(b * d).enumerate() {
        for (bi, &n) in lengths.iter().enumerate() {
            if ti >= n {
                step[bi * d..(bi + 1) * d].fill(0.0);
            }
        }
    }
}

/// `(B, T, D)` → `(T, B, D)`.
pub fn bt_to_tb(src: &[f32], b: usize, t: usize, d: usize, dst: &mut [f32]) {
    for bi in 0..b {
        for ti in 0..t {
            dst[(ti * b + bi) * d..(ti * b + bi + 1) * d].copy_from_slice(&src[(bi * t + ti) * d..(bi * t + ti + 1) * d]);
        }
    }
}

/// `(T, B, D)` → `(B, T, D)`.
pub fn tb_to_bt(src: &[f32], b: usize, t: usize, d: usize, dst: &mut [f32]) {
    for ti in 0..t {
        for bi in 0..b {
            dst[(bi * t + ti) * d..(bi * t + ti + 1) * d].copy_from_slice(&src[(ti * b + bi) * d..(ti * b + bi + 1) * d]);
        }
    }
}

mod team;

#[cfg(test)]
mod tests;
