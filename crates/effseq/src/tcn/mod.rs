//! Temporal Convolutional Network (Bai, Kolter & Koltun 2018, "An Empirical Evaluation of Generic
//! Convolutional and Recurrent Networks for Sequence Modeling"), the structure of locuslab's `TemporalConvNet`
//! with PyTorch-compatible parameter names.
//!
//! Level `i` (dilation `d = 2^i`) is one residual block (the paper's Fig. 1b):
//!
//! `h1 = Dropout(ReLU(WN-Conv_d(x)))`, `h2 = Dropout(ReLU(WN-Conv_d(h1)))`, `y = ReLU(h2 + skip(x))`,
//!
//! where `WN-Conv_d` is a weight-normalised dilated causal convolution (see `conv.rs`) and `skip` is the
//! identity, or a 1×1 convolution (`downsample`) when the block changes the channel count. Every level adds
//! `2·(K−1)·2^i` steps of history, so the receptive field of `L` levels is `1 + 2·(K−1)·(2^L − 1)`.
//!
//! The parallel [`Tcn::forward`] runs each convolution as K large GEMMs over all `B·T` rows of a left-padded
//! channels-last buffer (`conv.rs`); the pointwise passes (bias, ReLU, dropout, residual) are split over
//! sequences on the rayon pool. [`Tcn::step`] streams one time step at a time: per convolution a ring buffer
//! of its last `(K−1)·d` inputs ([`TcnState`]), so a step costs `O(L·K·C²)` per sequence whatever the history.
//!
//! Parameters (`network.{i}.conv1.bias`, `.weight_g` (C_out, 1, 1), `.weight_v` (C_out, C_in, K), the same for
//! `conv2`, and `network.{i}.downsample.weight` (C_out, C_in, 1) / `.bias` where present) are listed in the order
//! of the PyTorch module's `named_parameters()`, so its `state_dict` loads by name.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::param::{Module, Param};
use crate::rng::{rng_for, streams, Rng};

mod conv;

use conv::{Downsample, Geometry, WeightNormConv, PARALLEL_MIN};

/// Most levels a [`TcnConfig`] may have (dilation `2^(L−1)` must stay a sensible number of steps).
pub const MAX_LEVELS: usize = 24;

/// Shape of a temporal convolutional network.
#[derive(Clone, Debug, PartialEq)]
pub struct TcnConfig {
    /// Input features per step, D.
    pub input: usize,
    /// Output channels of each level (residual block); the number of levels L is its length.
    pub channels: Vec<usize>,
    /// Kernel size K of every convolution (K = 1 is allowed: a per-step network with residuals).
    pub kernel_size: usize,
    /// Dropout after each of the two ReLUs inside every block (locuslab's `dropout`), in [0, 1).
    pub dropout: f32,
}

impl TcnConfig {
    /// Number of levels L.
    pub fn levels(&self) -> usize {
        self.channels.len()
    }

    /// Dilation of level `i`, `2^i`.
    pub fn dilation(&self, level: usize) -> usize {
        1 << level
    }

    /// Time steps one output sees, `1 + 2·(K−1)·(2^L − 1)`: every level holds two convolutions of reach
    /// `(K−1)·2^i`. (Saturates instead of overflowing for configurations that [`Tcn::new`] rejects.)
    pub fn receptive_field(&self) -> usize {
        let span = 1usize.checked_shl(self.levels() as u32).map_or(usize::MAX, |p| p - 1);
        self.kernel_size.saturating_sub(1).saturating_mul(2).saturating_mul(span).saturating_add(1)
    }

    /// Channels of the output at each step, the last level's (D when there are no levels).
    pub fn output_dim(&self) -> usize {
        self.channels.last().copied().unwrap_or(self.input)
    }

    /// Input channels of level `i`.
    fn level_input(&self, level: usize) -> usize {
        if level == 0 {
            self.input
        } else {
            self.channels[level - 1]
        }
    }

    fn validate(&self) -> Result<()> {
        if self.input == 0 || self.kernel_size == 0 {
            return Err(Error::config(format!("tcn: input ({}) and kernel_size ({}) must be at least 1", self.input, self.kernel_size)));
        }
        if self.channels.is_empty() || self.channels.contains(&0) {
            return Err(Error::config(format!("tcn: channels must list at least one level, each with at least 1 channel, got {:?}", self.channels)));
        }
        if self.levels() > MAX_LEVELS {
            return Err(Error::config(format!("tcn: at most {MAX_LEVELS} levels, got {}", self.levels())));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(format!("tcn: dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }
}

/// One level: locuslab's `TemporalBlock`.
#[derive(Clone, Debug)]
struct Block {
    /// `network.{i}.conv1`: C_in → C_out, dilation 2^i.
    conv1: WeightNormConv,
    /// `network.{i}.conv2`: C_out → C_out, dilation 2^i.
    conv2: WeightNormConv,
    /// `network.{i}.downsample`, present when C_in ≠ C_out.
    downsample: Option<Downsample>,
}

impl Block {
    /// Causal padding P = (K−1)·2^i of this level's buffers (both convolutions have the same reach).
    fn pad(&self) -> usize {
        self.conv1.reach()
    }

    fn c_in(&self) -> usize {
        self.conv1.c_in
    }

    fn c_out(&self) -> usize {
        self.conv1.c_out
    }
}

/// What the backward pass of one level needs from the forward pass.
#[derive(Clone, Debug, Default)]
struct BlockCache {
    /// The level's input, left-padded with P = (K−1)·2^i zero rows: (B, P+T, C_in).
    input: Vec<f32>,
    /// `h1 = Dropout(ReLU(conv1 + b1))`, zero in the padding: (B, P+T, C_out).
    h1: Vec<f32>,
    /// `h2 = Dropout(ReLU(conv2 + b2))`, zero in the padding: (B, P+T, C_out).
    h2: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    b: usize,
    t: usize,
    /// The factor of the kept elements of the dropout masks, 1/(1−p), or 1 without dropout. A ReLU output
    /// `h` after dropout is positive exactly where both the ReLU and the mask let the gradient through,
    /// with the factor `dropout_scale`, so the masks need not be stored.
    dropout_scale: f32,
    /// One per level.
    blocks: Vec<BlockCache>,
    /// The network's output: (B, T, C_last).
    output: Vec<f32>,
}

/// Streaming state: for every convolution a ring buffer of its last `(K−1)·d` inputs, and the scratch of
/// [`Tcn::step`] (so that a step does not allocate).
#[derive(Clone, Debug)]
pub struct TcnState {
    /// B.
    pub batch: usize,
    /// Time steps consumed since the zero state.
    pub steps: u64,
    /// Per convolution (`conv1`, `conv2` of level 0, then of level 1, ...): `((K−1)·2^i, B, C_in of that conv)`;
    /// slot `s mod (K−1)·2^i` holds the input of step `s`. Zero-filled before the first step = causal padding.
    rings: Vec<Vec<f32>>,
    /// Gathered taps of one convolution: (B, K·C_max).
    gather: Vec<f32>,
    /// Input of the current level: (B, C_max).
    level_in: Vec<f32>,
    /// Output of the current level: (B, C_max).
    level_out: Vec<f32>,
    /// `h1` of the current level: (B, C_max).
    h1: Vec<f32>,
    /// `h2` of the current level: (B, C_max).
    h2: Vec<f32>,
}

impl TcnState {
    /// Returns to the zero state (empty history) without reallocating.
    pub fn reset(&mut self) {
        self.steps = 0;
        self.rings.iter_mut().for_each(|r| r.iter_mut().for_each(|v| *v = 0.0));
    }
}

/// A temporal convolutional network: L residual blocks of dilated causal convolutions.
#[derive(Clone, Debug)]
pub struct Tcn {
    cfg: TcnConfig,
    blocks: Vec<Block>,
    /// Whether `params_mut` was called since the step's normalised, packed weights were made.
    packed_stale: bool,
    cache: Option<Cache>,
}

impl Tcn {
    /// A network initialised as locuslab's `TemporalConvNet` really is, drawn from `seed`: in every convolution
    /// `weight_v` as PyTorch's `Conv1d` default, U(−1/√fan_in, 1/√fan_in) with fan_in = C_in·K, and
    /// `weight_g = ‖weight_v‖` (so the effective filter is `weight_v`), each `downsample.weight ~ N(0, 0.01²)`, and
    /// every bias as `Conv1d`'s default. Parameters are named as its `state_dict` (`network.0.conv1.weight_g`, ...).
    ///
    /// (locuslab's `init_weights` writes N(0, 0.01²) into `conv.weight.data`, which `weight_norm` recomputes
    /// from `weight_g`/`weight_v` at the next forward, so in PyTorch that draw is lost and `v` keeps `Conv1d`'s
    /// default. effseq once took the N(0, 0.01²) "intent" literally; that TCN never left the trivial baseline of
    /// the adding and copy tasks. The downsample is not weight-normalised, so its N(0, 0.01²) is real.)
    pub fn new(cfg: &TcnConfig, seed: u64) -> Result<Tcn> {
        Tcn::with_prefix(cfg, seed, "")
    }

    /// As [`Tcn::new`], with every parameter name prefixed (e.g. `"tcn."` for a field `tcn` of a larger module).
    pub fn with_prefix(cfg: &TcnConfig, seed: u64, prefix: &str) -> Result<Tcn> {
        cfg.validate()?;
        let mut rng = rng_for(seed, streams::INIT);
        let k = cfg.kernel_size;
        let blocks = (0..cfg.levels())
            .map(|i| {
                let (c_in, c_out, d) = (cfg.level_input(i), cfg.channels[i], cfg.dilation(i));
                let name = format!("{prefix}network.{i}");
                let conv1 = WeightNormConv::new(&format!("{name}.conv1"), c_in, c_out, k, d, &mut rng);
                let conv2 = WeightNormConv::new(&format!("{name}.conv2"), c_out, c_out, k, d, &mut rng);
                let downsample = (c_in != c_out).then(|| Downsample::new(&format!("{name}.downsample"), c_in, c_out, &mut rng));
                Block { conv1, conv2, downsample }
            })
            .collect();
        let mut tcn = Tcn { cfg: cfg.clone(), blocks, packed_stale: true, cache: None };
        tcn.refresh_weights();
        Ok(tcn)
    }

    /// The configuration.
    pub fn config(&self) -> &TcnConfig {
        &self.cfg
    }

    /// Recomputes the weight-normalised filters and the step's packed copies.
    fn refresh_weights(&mut self) {
        for block in &mut self.blocks {
            for conv in [&mut block.conv1, &mut block.conv2] {
                conv.normalise();
                conv.pack();
            }
            if let Some(ds) = &mut block.downsample {
                ds.pack();
            }
        }
        self.packed_stale = false;
    }

    /// Widest activation of one step, max(D, channels).
    fn widest(&self) -> usize {
        self.cfg.channels.iter().copied().fold(self.cfg.input, usize::max)
    }

    /// A zero state (empty history) for `b` sequences.
    pub fn zero_state(&self, b: usize) -> TcnState {
        let c_max = self.widest();
        let rings = self.blocks.iter().flat_map(|bl| [&bl.conv1, &bl.conv2]).map(|conv| vec![0.0; ring_len(conv, b)]).collect();
        TcnState {
            batch: b,
            steps: 0,
            rings,
            gather: vec![0.0; b * self.cfg.kernel_size * c_max],
            level_in: vec![0.0; b * c_max],
            level_out: vec![0.0; b * c_max],
            h1: vec![0.0; b * c_max],
            h2: vec![0.0; b * c_max],
        }
    }

    /// Runs the whole sequence `x (B, T, D)` from an empty history; returns `(B, T, C_last)`.
    /// `dropout: Some(rng)` means training mode (the masks are drawn from `rng`, level by level, `h1` before
    /// `h2`, element by element in `(B, T, C)` order). Keeps what [`Tcn::backward`] needs.
    pub fn forward(&mut self, x: &[f32], b: usize, t: usize, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        self.run(x, b, t, dropout, true)
    }

    /// Inference over the whole sequence `x (B, T, D)` → `(B, T, C_last)`: no dropout, and each level's buffers
    /// are freed as soon as the next level has read them; backward is impossible afterwards.
    pub fn infer(&mut self, x: &[f32], b: usize, t: usize) -> Result<Vec<f32>> {
        self.run(x, b, t, None, false)
    }

    fn run(&mut self, x: &[f32], b: usize, t: usize, mut dropout: Option<&mut Rng>, keep: bool) -> Result<Vec<f32>> {
        self.cache = None;
        check_len("tcn input (B, T, D)", &[b, t, self.cfg.input], x.len())?;
        // The parameters may have changed since the last call (optimizer step, gradient check): the weight
        // norm runs once per forward, O(parameters), negligible next to the convolutions. (The step's packed
        // copies are only rebuilt when `params_mut` marked them stale.)
        for block in &mut self.blocks {
            block.conv1.normalise();
            block.conv2.normalise();
        }
        let p = if dropout.is_some() { self.cfg.dropout } else { 0.0 };
        let dropout_scale = if p > 0.0 { 1.0 / (1.0 - p) } else { 1.0 };
        let levels = self.blocks.len();
        let geom0 = Geometry { batch: b, time: t, pad: self.blocks[0].pad() };
        // (B, P_0+T, D): the input with the first level's causal padding.
        let mut input = vec![0.0; geom0.rows() * self.cfg.input];
        repad(x, Geometry { pad: 0, ..geom0 }, geom0, self.cfg.input, &mut input);
        let mut blocks = Vec::with_capacity(if keep { levels } else { 0 });
        for i in 0..levels {
            let block = &self.blocks[i];
            let (c_out, geom) = (block.c_out(), Geometry { batch: b, time: t, pad: block.pad() });
            let next = Geometry { pad: self.blocks.get(i + 1).map_or(0, Block::pad), ..geom };
            let mut h1 = vec![0.0; geom.rows() * c_out]; // (B, P+T, C_out)
            block.conv1.forward(&input, geom, &mut h1);
            bias_relu_dropout(&mut h1, geom, c_out, &block.conv1.bias.value, p, dropout.as_deref_mut());
            let mut h2 = vec![0.0; geom.rows() * c_out]; // (B, P+T, C_out)
            block.conv2.forward(&h1, geom, &mut h2);
            bias_relu_dropout(&mut h2, geom, c_out, &block.conv2.bias.value, p, dropout.as_deref_mut());
            // (B, P_next+T, C_out): ReLU(h2 + skip), padded for the next level.
            let mut output = vec![0.0; next.rows() * c_out];
            match &block.downsample {
                Some(ds) => {
                    let mut skip = vec![0.0; geom.rows() * c_out]; // (B, P+T, C_out)
                    ds.forward(&input, geom, &mut skip);
                    residual_relu(&h2, &skip, Some(&ds.bias.value), geom, next, c_out, &mut output);
                }
                None => residual_relu(&h2, &input, None, geom, next, c_out, &mut output),
            }
            let level_input = std::mem::replace(&mut input, output);
            if keep {
                blocks.push(BlockCache { input: level_input, h1, h2 });
            }
        }
        // After the last level `input` has padding 0: it is the (B, T, C_last) output.
        if keep {
            self.cache = Some(Cache { b, t, dropout_scale, blocks, output: input.clone() });
        }
        Ok(input)
    }

    /// Backward pass. `dy (B, T, C_last)` is the gradient of the loss with respect to the output of the last
    /// [`Tcn::forward`]; returns `dx (B, T, D)` and ACCUMULATES every parameter gradient.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let cache = self.cache.take().ok_or_else(|| Error::Invalid("tcn backward called without a forward pass (or after infer())".into()))?;
        let (b, t) = (cache.b, cache.t);
        if let Err(e) = check_len("tcn output gradient (B, T, C_last)", &[b, t, self.cfg.output_dim()], dy.len()) {
            self.cache = Some(cache);
            return Err(e);
        }
        let scale = cache.dropout_scale;
        // Gradient with respect to the current level's output, padded as the next level's input.
        let mut d_output = dy.to_vec();
        for i in (0..self.blocks.len()).rev() {
            let bc = &cache.blocks[i];
            let (c_in, c_out) = (self.blocks[i].c_in(), self.blocks[i].c_out());
            let geom = Geometry { batch: b, time: t, pad: self.blocks[i].pad() };
            let (next, output) = match cache.blocks.get(i + 1) {
                Some(above) => (Geometry { pad: self.blocks[i + 1].pad(), ..geom }, &above.input),
                None => (Geometry { pad: 0, ..geom }, &cache.output),
            };
            let block = &mut self.blocks[i];
            // du = d_output ⊙ [output > 0], the gradient of h2 + skip: (B, P+T, C_out), zero in the padding.
            let mut du = vec![0.0; geom.rows() * c_out];
            relu_backward_repad(&d_output, output, next, geom, c_out, &mut du);
            // (B, P+T, C_in): gradient of this level's input, padding rows are ignored.
            let mut dx = match &mut block.downsample {
                Some(ds) => {
                    let mut dx = vec![0.0; geom.rows() * c_in];
                    ds.backward(&du, &bc.input, geom, &mut dx);
                    dx
                }
                None => du.clone(),
            };
            // dz2 = du ⊙ dropout/ReLU mask of h2, in place.
            mask_by_positive(&mut du, &bc.h2, geom, c_out, scale);
            let mut dh1 = vec![0.0; geom.rows() * c_out]; // (B, P+T, C_out)
            block.conv2.backward(&du, &bc.h1, geom, &mut dh1);
            mask_by_positive(&mut dh1, &bc.h1, geom, c_out, scale);
            block.conv1.backward(&dh1, &bc.input, geom, &mut dx);
            d_output = dx;
        }
        let geom0 = Geometry { batch: b, time: t, pad: self.blocks[0].pad() };
        let mut dx = vec![0.0; b * t * self.cfg.input];
        repad(&d_output, geom0, Geometry { pad: 0, ..geom0 }, self.cfg.input, &mut dx);
        Ok(dx)
    }

    /// One streaming step: `x_t (B, D)` → `y_t (B, C_last)`, the output at the next time step of the sequences
    /// whose history `state` holds. Allocation-free, except for re-packing the weights on the first step after
    /// `params_mut` (which may have changed them).
    pub fn step(&mut self, x_t: &[f32], state: &mut TcnState, y_t: &mut [f32]) -> Result<()> {
        let b = state.batch;
        let rings_fit = state.rings.len() == 2 * self.blocks.len()
            && state.rings.iter().zip(self.blocks.iter().flat_map(|bl| [&bl.conv1, &bl.conv2])).all(|(r, conv)| r.len() == ring_len(conv, b));
        if !rings_fit || state.h1.len() != b * self.widest() {
            return Err(Error::Invalid(format!("tcn state is for batch {b} of another network: build it with zero_state")));
        }
        check_len("tcn step input (B, D)", &[b, self.cfg.input], x_t.len())?;
        check_len("tcn step output (B, C_last)", &[b, self.cfg.output_dim()], y_t.len())?;
        if self.packed_stale {
            self.refresh_weights();
        }
        let TcnState { steps, rings, gather, level_in, level_out, h1, h2, .. } = state;
        level_in[..x_t.len()].copy_from_slice(x_t);
        for (i, block) in self.blocks.iter().enumerate() {
            let (c_in, c_out) = (block.c_in(), block.c_out());
            let (ring1, ring2) = rings[2 * i..2 * i + 2].split_at_mut(1);
            let x = &level_in[..b * c_in]; // (B, C_in)
            let h1 = &mut h1[..b * c_out]; // (B, C_out)
            block.conv1.step(x, &mut ring1[0], *steps, gather, h1);
            relu_inplace(h1);
            let h2 = &mut h2[..b * c_out]; // (B, C_out)
            block.conv2.step(h1, &mut ring2[0], *steps, gather, h2);
            relu_inplace(h2);
            let out = &mut level_out[..b * c_out]; // (B, C_out)
            match &block.downsample {
                Some(ds) => ds.step(x, out),
                None => out.copy_from_slice(x),
            }
            out.iter_mut().zip(h2.iter()).for_each(|(o, h)| *o = (*o + h).max(0.0));
            std::mem::swap(level_in, level_out);
        }
        y_t.copy_from_slice(&level_in[..y_t.len()]);
        *steps += 1;
        Ok(())
    }
}

impl Module for Tcn {
    fn params(&self) -> Vec<&Param> {
        let mut v = Vec::new();
        for block in &self.blocks {
            for conv in [&block.conv1, &block.conv2] {
                v.extend([&conv.bias, &conv.weight_g, &conv.weight_v]);
            }
            if let Some(ds) = &block.downsample {
                v.extend([&ds.weight, &ds.bias]);
            }
        }
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        // The caller may change the values: re-normalise and re-pack before the next step.
        self.packed_stale = true;
        let mut v = Vec::new();
        for block in &mut self.blocks {
            for conv in [&mut block.conv1, &mut block.conv2] {
                v.extend([&mut conv.bias, &mut conv.weight_g, &mut conv.weight_v]);
            }
            if let Some(ds) = &mut block.downsample {
                v.extend([&mut ds.weight, &mut ds.bias]);
            }
        }
        v
    }
}

/// Length of the ring buffer of `conv` for `b` sequences, `(K−1)·d · B · C_in`.
fn ring_len(conv: &WeightNormConv, b: usize) -> usize {
    conv.reach() * b * conv.c_in
}

/// Copies the rows of `src` (geometry `from`, C channels) into `dst` (geometry `to`, same B and T), time step
/// by time step; padding rows of `dst` are left as they are.
fn repad(src: &[f32], from: Geometry, to: Geometry, c: usize, dst: &mut [f32]) {
    for bi in 0..from.batch {
        let (s, d) = (from.row(bi, 0) * c, to.row(bi, 0) * c);
        dst[d..d + from.time * c].copy_from_slice(&src[s..s + from.time * c]);
    }
}

/// Runs `f(sequence index, a sequence's rows of buf)` for every sequence of a `(B, P+T, C)` buffer, in parallel
/// when the buffer is large enough for that to pay.
fn for_each_sequence<F>(buf: &mut [f32], geom: Geometry, c: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let span = geom.span() * c;
    if span == 0 {
        return;
    }
    if buf.len() >= PARALLEL_MIN && geom.batch > 1 {
        buf.par_chunks_mut(span).enumerate().for_each(|(bi, seq)| f(bi, seq));
    } else {
        buf.chunks_mut(span).enumerate().for_each(|(bi, seq)| f(bi, seq));
    }
}

/// In place on `z (B, P+T, C)`: `z = Dropout_p(ReLU(z + bias))` on the time rows, and zero on the padding
/// rows. With `rng` and `p > 0` one uniform draw per element decides its fate (in `(B, T, C)` order, serially);
/// kept elements are scaled by 1/(1−p).
fn bias_relu_dropout(z: &mut [f32], geom: Geometry, c: usize, bias: &[f32], p: f32, rng: Option<&mut Rng>) {
    match rng {
        Some(rng) if p > 0.0 => {
            use rand::Rng as _;
            let keep = 1.0 / (1.0 - p);
            for seq in z.chunks_mut(geom.span() * c) {
                let (pad, rows) = seq.split_at_mut(geom.pad * c);
                pad.iter_mut().for_each(|v| *v = 0.0);
                for row in rows.chunks_exact_mut(c) {
                    for (v, b) in row.iter_mut().zip(bias) {
                        let draw: f32 = rng.random();
                        *v = if draw < p { 0.0 } else { (*v + b).max(0.0) * keep };
                    }
                }
            }
        }
        _ => for_each_sequence(z, geom, c, |_, seq| {
            let (pad, rows) = seq.split_at_mut(geom.pad * c);
            pad.iter_mut().for_each(|v| *v = 0.0);
            for row in rows.chunks_exact_mut(c) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v = (*v + b).max(0.0));
            }
        }),
    }
}

/// `out (B, P_next+T, C) = ReLU(h2 + skip (+ skip_bias))` on the time rows, with `h2` and `skip` in geometry
/// `geom` (B, P+T, C) and `out` in geometry `next`; the padding rows of `out` are left as they are (zero).
fn residual_relu(h2: &[f32], skip: &[f32], skip_bias: Option<&[f32]>, geom: Geometry, next: Geometry, c: usize, out: &mut [f32]) {
    let n = geom.time * c;
    for_each_sequence(out, next, c, |bi, seq| {
        let src = geom.row(bi, 0) * c;
        let (h, s) = (&h2[src..src + n], &skip[src..src + n]);
        let dst = &mut seq[next.pad * c..];
        match skip_bias {
            Some(bias) => {
                for (o, (hr, sr)) in dst.chunks_exact_mut(c).zip(h.chunks_exact(c).zip(s.chunks_exact(c))) {
                    for j in 0..c {
                        o[j] = (hr[j] + sr[j] + bias[j]).max(0.0);
                    }
                }
            }
            None => dst.iter_mut().zip(h.iter().zip(s)).for_each(|(o, (hv, sv))| *o = (hv + sv).max(0.0)),
        }
    });
}

/// `du (B, P+T, C) = d_out ⊙ [out > 0]` on the time rows, zero on the padding rows, with `d_out` and `out` in
/// geometry `from` (the next level's padding) and `du` in geometry `to`.
fn relu_backward_repad(d_out: &[f32], out: &[f32], from: Geometry, to: Geometry, c: usize, du: &mut [f32]) {
    let n = from.time * c;
    for_each_sequence(du, to, c, |bi, seq| {
        let src = from.row(bi, 0) * c;
        let (pad, rows) = seq.split_at_mut(to.pad * c);
        pad.iter_mut().for_each(|v| *v = 0.0);
        rows.iter_mut().zip(d_out[src..src + n].iter().zip(&out[src..src + n])).for_each(|(g, (d, o))| *g = if *o > 0.0 { *d } else { 0.0 });
    });
}

/// In place on `g (B, P+T, C)`: `g = g · scale` where `h > 0`, else 0, on the time rows, and zero on the
/// padding rows — the backward of `h = Dropout(ReLU(z))` given `h` (see [`Cache::dropout_scale`]).
fn mask_by_positive(g: &mut [f32], h: &[f32], geom: Geometry, c: usize, scale: f32) {
    let span = geom.span() * c;
    for_each_sequence(g, geom, c, |bi, seq| {
        let (pad, rows) = seq.split_at_mut(geom.pad * c);
        pad.iter_mut().for_each(|v| *v = 0.0);
        let hs = &h[bi * span + geom.pad * c..(bi + 1) * span];
        rows.iter_mut().zip(hs).for_each(|(v, hv)| *v = if *hv > 0.0 { *v * scale } else { 0.0 });
    });
}

/// `v = max(v, 0)` in place.
fn relu_inplace(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.max(0.0));
}

#[cfg(test)]
mod tests;
