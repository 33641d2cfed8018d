//! Multi-head self-attention with a pluggable mechanism: the projections, the head split and merge and the
//! streaming state live here; each mechanism's file holds only its maths (fast-transformers'
//! `AttentionLayer` / inner-attention split):
//!
//! - [`softmax`]: exact `softmax(Q K^T / sqrt(Dh)) V` in tiles with a running max and sum (FlashAttention), O(T)
//!   memory; streaming through a key/value cache whose cost grows with the context.
//! - [`linear`]: `phi(Q) (phi(K)^T V)` with the normaliser (Katharopoulos et al. 2020, eq. 4-6), causal through a
//!   fused prefix kernel; streaming with a fixed-size state `(S, z)`.
//! - [`favor`]: the Performer's FAVOR+ random features (Choromanski et al. 2020), fed to the same linear kernels.
//!
//! Parameter names follow PyTorch's `nn.MultiheadAttention` (`in_proj_weight (3D, D)`, `in_proj_bias (3D)`,
//! `out_proj.weight`, `out_proj.bias`), so a `nn.TransformerEncoderLayer` state dict loads by name. The
//! Performer's random projection is a buffer named `projection_matrix (M, Dh)` as in performer-pytorch: saved in
//! checkpoints, never trained.
//!
//! Layouts: activations enter and leave as `(B, T, D)`; the mechanisms work head-major, `(B, H, T, Dh)`, so that
//! every `(b, h)` is one contiguous problem.

pub mod favor;
pub mod linear;
pub mod lsh;
pub mod softmax;

use crate::error::{check_len, Error, Result};
use crate::layers::Linear;
use crate::param::{Module, Param};
use crate::rng::{fill_uniform, rng_for, streams, Rng};
pub use favor::FeatureKernel;

/// Added to the linear-attention normaliser `phi(q) . z` (fast-transformers' `eps`).
pub const LINEAR_EPS: f32 = 1e-6;

/// Which attention an [`MultiHeadAttention`] computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mechanism {
    /// Exact softmax attention, tiled.
    Softmax,
    /// Linear attention with the `elu(x) + 1` feature map.
    Linear,
    /// FAVOR+ with `features` random features per head of the given kernel.
    Performer { features: usize, kernel: FeatureKernel },
}

/// Shape and behaviour of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// Model width D (input and output).
    pub d_model: usize,
    /// Heads H; `d_model` must divide by it.
    pub heads: usize,
    /// Whether a position attends only to itself and the past.
    pub causal: bool,
}

impl AttentionConfig {
    /// Head width Dh = D / H.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// Width of the feature map: Dh for linear attention, M for the Performer, 0 for softmax.
    pub fn feature_dim(&self) -> usize {
        match self.mechanism {
            Mechanism::Softmax => 0,
            Mechanism::Linear => self.head_dim(),
            Mechanism::Performer { features, .. } => features,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.d_model == 0 || !self.d_model.is_multiple_of(self.heads) {
            return Err(Error::config(format!("attention width {} must be a positive multiple of the head count {}", self.d_model, self.heads)));
        }
        if let Mechanism::Performer { features: 0, .. } = self.mechanism {
            return Err(Error::config("a Performer needs at least one random feature"));
        }
        Ok(())
    }
}

/// What the backward pass needs from the forward pass.
#[derive(Clone, Debug)]
struct AttentionCache {
    /// B, T of the forward pass.
    b: usize,
    t: usize,
    /// Valid keys per sequence, `(B)`, when the batch is padded.
    lengths: Option<Vec<usize>>,
    /// Projected queries, keys and values, each `(B, H, T, Dh)`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output before the merge, `(B, H, T, Dh)`.
    out: Vec<f32>,
    /// Mechanism-specific saved values.
    saved: Saved,
}

/// What [`mechanism_backward`] needs from [`mechanism_forward`] besides the inputs and the output.
#[derive(Clone, Debug)]
pub enum Saved {
    /// Softmax: log-sum-exp of every query row, `(B, H, T)`.
    Softmax { lse: Vec<f32> },
    /// Linear and Performer: the feature maps `(B, H, T, F)`, the causal key decay `(B, H, T)` (Performer's running
    /// stabiliser), and the normaliser `(B, H, T)`.
    Features { fq: Vec<f32>, fk: Vec<f32>, decay: Option<Vec<f32>>, den: Vec<f32> },
}

/// Multi-head self-attention `y = out_proj(merge(attn(split(x W_q), split(x W_k), split(x W_v))))`.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    cfg: AttentionConfig,
    /// `in_proj_weight (3D, D)` rows `[W_q; W_k; W_v]`, `in_proj_bias (3D)`.
    in_proj: Linear,
    /// `out_proj.weight (D, D)`, `out_proj.bias (D)`.
    out_proj: Linear,
    /// Performer only: `projection_matrix (M, Dh)`, shared by all heads (performer-pytorch), a buffer.
    projection: Option<Param>,
    cache: Option<AttentionCache>,
}

/// Streaming state of one attention layer.
#[derive(Clone, Debug)]
pub enum AttentionState {
    /// Softmax: every past key and value, `(B, H, cap, Dh)` each, the first `len` positions filled. Grows by
    /// doubling when full: the cost of a step grows with the context, as softmax attention's must.
    KvCache { k: Vec<f32>, v: Vec<f32>, len: usize, cap: usize },
    /// Linear and Performer: the fixed-size state `(S, z)` of every `(b, h)` and, for the Performer, the running key
    /// stabiliser `(B, H)`.
    Recurrent { state: linear::LinearState, running_max: Vec<f32> },
}

/// Scratch buffers of a streaming step, sized once so that [`MultiHeadAttention::step`] does not allocate (except
/// when a KV cache doubles).
#[derive(Clone, Debug)]
pub struct StepScratch {
    /// `(B, 3D)` projected q, k, v of the current token.
    qkv: Vec<f32>,
    /// `(B, H, Dh)` each.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// `(B, H, F)` feature maps (linear, Performer).
    fq: Vec<f32>,
    fk: Vec<f32>,
    /// `(B, H)` Performer key decay of this step.
    decay: Vec<f32>,
    /// `(B, H, Dh)` attention output, then `(B, D)` merged.
    out: Vec<f32>,
    merged: Vec<f32>,
}

/// Initial KV-cache capacity per sequence.
const KV_INITIAL_CAPACITY: usize = 256;

impl MultiHeadAttention {
    /// A layer whose parameters are named `{prefix}in_proj_weight`, ..., initialised as `nn.MultiheadAttention`
    /// (Xavier-uniform `in_proj_weight`, zero biases, `out_proj.weight` as `nn.Linear`). A Performer draws its
    /// features from `(seed, layer, draw 0)`.
    pub fn new(cfg: AttentionConfig, prefix: &str, rng: &mut Rng, seed: u64, layer: usize) -> Result<MultiHeadAttention> {
        cfg.validate()?;
        let d = cfg.d_model;
        let mut in_proj = Linear::new(&format!("{prefix}in_proj"), d, 3 * d, true, rng);
        let xavier = (6.0 / (d as f32 + 3.0 * d as f32)).sqrt();
        fill_uniform(rng, &mut in_proj.weight.value, xavier);
        in_proj.weight.name = format!("{prefix}in_proj_weight");
        if let Some(bias) = &mut in_proj.bias {
            bias.value.iter_mut().for_each(|v| *v = 0.0);
            bias.name = format!("{prefix}in_proj_bias");
        }
        let mut out_proj = Linear::new(&format!("{prefix}out_proj"), d, d, true, rng);
        if let Some(bias) = &mut out_proj.bias {
            bias.value.iter_mut().for_each(|v| *v = 0.0);
        }
        let projection = match cfg.mechanism {
            Mechanism::Performer { features, .. } => Some(Param::zeros(format!("{prefix}projection_matrix"), &[features, cfg.head_dim()])),
            _ => None,
        };
        let mut layer_attn = MultiHeadAttention { cfg, in_proj, out_proj, projection, cache: None };
        layer_attn.redraw_features(seed, layer, 0);
        Ok(layer_attn)
    }

    /// The configuration.
    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }

    /// Performer: replaces the random features by draw number `draw` of `(seed, layer)`, orthogonal Gaussian
    /// blocks (performer-pytorch's `gaussian_orthogonal_random_matrix`). A no-op for the other mechanisms.
    pub fn redraw_features(&mut self, seed: u64, layer: usize, draw: u64) {
        if let (Some(p), Mechanism::Performer { features, .. }) = (&mut self.projection, self.cfg.mechanism) {
            let mut rng = rng_for(seed, streams::FEATURES + draw * 4096 + layer as u64);
            p.value = favor::orthogonal_gaussian(features, self.cfg.head_dim(), &mut rng);
        }
    }

    /// The non-trained buffers (the Performer's projection), saved in checkpoints.
    pub fn buffers(&self) -> Vec<&Param> {
        self.projection.iter().collect()
    }

    /// Mutable [`MultiHeadAttention::buffers`].
    pub fn buffers_mut(&mut self) -> Vec<&mut Param> {
        self.projection.iter_mut().collect()
    }

    /// Self-attention over `x (B*T, D)` → `(B*T, D)`. `lengths (B)`: valid steps per sequence (right padding), whose
    /// padded keys are masked. `train` keeps what [`MultiHeadAttention::backward`] needs.
    pub fn forward(&mut self, x: &[f32], b: usize, t: usize, lengths: Option<&[usize]>, train: bool) -> Result<Vec<f32>> {
        self.cache = None;
        let d = self.cfg.d_model;
        check_len("attention input (B, T, D)", &[b, t, d], x.len())?;
        if let Some(l) = lengths {
            check_len("sequence lengths (B)", &[b], l.len())?;
            if let Some(bad) = l.iter().position(|&n| n > t) {
                return Err(Error::Invalid(format!("sequence {bad} has length {} > T = {t}", l[bad])));
            }
        }
        let qkv = if train { self.in_proj.forward(x, b * t)? } else { self.apply_in_proj(x, b * t)? }; // (B, T, 3D)
        let (h, dh) = (self.cfg.heads, self.cfg.head_dim());
        let mut q = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        let mut k = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        let mut v = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        split_heads(&qkv, b, t, h, dh, [&mut q, &mut k, &mut v]);
        drop(qkv);
        let mut out = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        let projection = self.projection.as_ref().map(|p| p.value.as_slice());
        let saved = mechanism_forward(&self.cfg, projection, &q, &k, &v, b, t, lengths, &mut out)?;
        let mut merged = vec![0.0f32; b * t * d]; // (B, T, D)
        merge_heads(&out, b, t, h, dh, &mut merged);
        let y = if train {
            self.out_proj.forward(&merged, b * t)?
        } else {
            let mut y = vec![0.0f32; b * t * d]; // (B, T, D)
            self.out_proj.apply(&merged, b * t, &mut y)?;
            y
        };
        if train {
            self.cache = Some(AttentionCache { b, t, lengths: lengths.map(<[usize]>::to_vec), q, k, v, out, saved });
        }
        Ok(y)
    }

    fn apply_in_proj(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut qkv = vec![0.0f32; n * 3 * self.cfg.d_model]; // (N, 3D)
        self.in_proj.apply(x, n, &mut qkv)?;
        Ok(qkv)
    }

    /// Backward from `dy (B*T, D)` → `dx (B*T, D)`, accumulating the projections' gradients.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let cache = self.cache.take().ok_or_else(|| Error::Invalid("attention backward called without a training forward".into()))?;
        let AttentionCache { b, t, lengths, q, k, v, out, saved } = cache;
        let (h, dh, d) = (self.cfg.heads, self.cfg.head_dim(), self.cfg.d_model);
        let dmerged = self.out_proj.backward(dy)?; // (B, T, D)
        let mut dout = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        split_one(&dmerged, b, t, h, dh, &mut dout);
        drop(dmerged);
        let mut dq = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        let mut dk = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        let mut dv = vec![0.0f32; b * t * d]; // (B, H, T, Dh)
        let projection = self.projection.as_ref().map(|p| p.value.as_slice());
        mechanism_backward(&self.cfg, projection, &q, &k, &v, b, t, lengths.as_deref(), &out, &saved, &dout, &mut dq, &mut dk, &mut dv)?;
        let mut dqkv = vec![0.0f32; b * t * 3 * d]; // (B, T, 3D)
        merge_three(&dq, &dk, &dv, b, t, h, dh, &mut dqkv);
        self.in_proj.backward(&dqkv)
    }

    /// A zero streaming state for `b` sequences.
    pub fn zero_state(&self, b: usize) -> (AttentionState, StepScratch) {
        let (h, dh, d, f) = (self.cfg.heads, self.cfg.head_dim(), self.cfg.d_model, self.cfg.feature_dim());
        let bh = b * h;
        let state = match self.cfg.mechanism {
            Mechanism::Softmax => {
                let cap = KV_INITIAL_CAPACITY;
                AttentionState::KvCache { k: vec![0.0; bh * cap * dh], v: vec![0.0; bh * cap * dh], len: 0, cap }
            }
            _ => AttentionState::Recurrent { state: linear::LinearState::new(bh, f, dh), running_max: vec![f32::NEG_INFINITY; bh] },
        };
        let scratch = StepScratch {
            qkv: vec![0.0; b * 3 * d],
            q: vec![0.0; b * d],
            k: vec![0.0; b * d],
            v: vec![0.0; b * d],
            fq: vec![0.0; bh * f],
            fk: vec![0.0; bh * f],
            decay: vec![0.0; bh],
            out: vec![0.0; b * d],
            merged: vec![0.0; b * d],
        };
        (state, scratch)
    }

    /// One causal streaming step: `x_t (B, D)` → `y_t (B, D)`. Softmax appends to its KV cache (cost O(context));
    /// linear and Performer update their fixed-size state (cost independent of the context).
    pub fn step(&self, x_t: &[f32], state: &mut AttentionState, scratch: &mut StepScratch, y_t: &mut [f32]) -> Result<()> {
        if !self.cfg.causal {
            return Err(Error::Invalid("streaming needs causal attention; this model attends in both directions".into()));
        }
        let (h, dh, d) = (self.cfg.heads, self.cfg.head_dim(), self.cfg.d_model);
        let b = scratch.q.len() / d;
        let bh = b * h;
        check_len("attention step input (B, D)", &[b, d], x_t.len())?;
        self.in_proj.apply(x_t, b, &mut scratch.qkv)?;
        // One step: (B, 3D) → (B, H, 1, Dh) each, i.e. (B, H, Dh).
        split_heads(&scratch.qkv, b, 1, h, dh, [&mut scratch.q, &mut scratch.k, &mut scratch.v]);
        match (state, self.cfg.mechanism) {
            (AttentionState::KvCache { k, v, len, cap }, Mechanism::Softmax) => {
                if *len == *cap {
                    grow_cache(k, bh, *cap, 2 * *cap, dh);
                    grow_cache(v, bh, *cap, 2 * *cap, dh);
                    *cap *= 2;
                }
                for u in 0..bh {
                    let dst = (u * *cap + *len) * dh;
                    k[dst..dst + dh].copy_from_slice(&scratch.k[u * dh..(u + 1) * dh]);
                    v[dst..dst + dh].copy_from_slice(&scratch.v[u * dh..(u + 1) * dh]);
                }
                *len += 1;
                softmax::decode_step(&scratch.q, k, v, b, h, *cap, *len, dh, &mut scratch.out)?;
            }
            (AttentionState::Recurrent { state, .. }, Mechanism::Linear) => {
                linear::elu_feature_map(&scratch.q, &mut scratch.fq)?;
                linear::elu_feature_map(&scratch.k, &mut scratch.fk)?;
                linear::causal_step(state, &scratch.fq, &scratch.fk, &scratch.v, None, LINEAR_EPS, &mut scratch.out)?;
            }
            (AttentionState::Recurrent { state, running_max }, Mechanism::Performer { features, kernel }) => {
                let proj = &self.projection.as_ref().expect("a Performer has a projection").value;
                favor::query_features(&scratch.q, bh, dh, proj, features, kernel, &mut scratch.fq)?;
                favor::key_features_step(&scratch.k, bh, dh, proj, features, kernel, running_max, &mut scratch.fk, &mut scratch.decay)?;
                linear::causal_step(state, &scratch.fq, &scratch.fk, &scratch.v, Some(&scratch.decay), 0.0, &mut scratch.out)?;
            }
            _ => return Err(Error::Invalid("streaming state belongs to a different attention mechanism".into())),
        }
        merge_heads(&scratch.out, b, 1, h, dh, &mut scratch.merged);
        self.out_proj.apply(&scratch.merged, b, y_t)
    }
}

/// The mechanism's maths on head-major `q, k, v (B, H, T, Dh)`, writing `out (B, H, T, Dh)`; returns what
/// [`mechanism_backward`] needs. `cfg` gives the mechanism, the heads and causality (`cfg.d_model = H·Dh`);
/// `projection (M, Dh)`: the Performer's random features, ignored by the other mechanisms. `lengths (B)`: valid keys
/// per sequence (right padding). Shared by [`MultiHeadAttention`] and the Python bindings (`crates/effseq-py`), so
/// that both compute exactly the same attention.
#[allow(clippy::too_many_arguments)]
pub fn mechanism_forward(
    cfg: &AttentionConfig,
    projection: Option<&[f32]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    t: usize,
    lengths: Option<&[usize]>,
    out: &mut [f32],
) -> Result<Saved> {
    cfg.validate()?;
    let (h, dh, causal) = (cfg.heads, cfg.head_dim(), cfg.causal);
    let bh = b * h;
    match cfg.mechanism {
        Mechanism::Softmax => {
            let mut lse = vec![0.0f32; bh * t]; // (B, H, T)
            softmax::forward(q, k, v, b, h, t, dh, causal, lengths, out, &mut lse)?;
            Ok(Saved::Softmax { lse })
        }
        Mechanism::Linear | Mechanism::Performer { .. } => {
            let f = cfg.feature_dim();
            let mut fq = vec![0.0f32; bh * t * f]; // (B, H, T, F)
            let mut fk = vec![0.0f32; bh * t * f]; // (B, H, T, F)
            let mut decay = None;
            let eps = match cfg.mechanism {
                Mechanism::Performer { kernel, .. } => {
                    let proj = performer_projection(projection)?;
                    favor::query_features(q, bh * t, dh, proj, f, kernel, &mut fq)?;
                    if causal {
                        let mut dec = vec![0.0f32; bh * t]; // (B, H, T)
                        favor::key_features_causal(k, bh, t, dh, proj, f, kernel, &mut fk, &mut dec)?;
                        decay = Some(dec);
                    } else {
                        favor::key_features_global(k, b, h, t, dh, lengths, proj, f, kernel, &mut fk)?;
                    }
                    // The features carry performer-pytorch's eps, which keeps the normaliser positive.
                    0.0
                }
                _ => {
                    linear::elu_feature_map(q, &mut fq)?;
                    linear::elu_feature_map(k, &mut fk)?;
                    LINEAR_EPS
                }
            };
            let mut den = vec![0.0f32; bh * t]; // (B, H, T)
            if causal {
                linear::causal_forward(&fq, &fk, v, decay.as_deref(), bh, t, f, dh, eps, out, &mut den)?;
            } else {
                linear::bidirectional_forward(&fq, &fk, v, b, h, lengths, t, f, dh, eps, out, &mut den)?;
            }
            Ok(Saved::Features { fq, fk, decay, den })
        }
    }
}

/// Backward of [`mechanism_forward`] with the same `cfg`, `projection`, inputs and `lengths`, its `out` and `saved`:
/// writes `dq, dk, dv (B, H, T, Dh)` (OVERWRITTEN) from `dout (B, H, T, Dh)`. The projection gets no gradient.
#[allow(clippy::too_many_arguments)]
pub fn mechanism_backward(
    cfg: &AttentionConfig,
    projection: Option<&[f32]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    t: usize,
    lengths: Option<&[usize]>,
    out: &[f32],
    saved: &Saved,
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<()> {
    cfg.validate()?;
    let (h, dh, causal) = (cfg.heads, cfg.head_dim(), cfg.causal);
    let bh = b * h;
    match (saved, cfg.mechanism) {
        (Saved::Softmax { lse }, Mechanism::Softmax) => softmax::backward(q, k, v, out, lse, dout, b, h, t, dh, causal, lengths, dq, dk, dv),
        (Saved::Features { fq, fk, decay, den }, Mechanism::Linear | Mechanism::Performer { .. }) => {
            let f = cfg.feature_dim();
            let mut dfq = vec![0.0f32; bh * t * f]; // (B, H, T, F)
            let mut dfk = vec![0.0f32; bh * t * f]; // (B, H, T, F)
            if causal {
                linear::causal_backward(fq, fk, v, decay.as_deref(), out, den, dout, bh, t, f, dh, &mut dfq, &mut dfk, dv)?;
            } else {
                linear::bidirectional_backward(fq, fk, v, b, h, lengths, out, den, dout, t, f, dh, &mut dfq, &mut dfk, dv)?;
            }
            match cfg.mechanism {
                Mechanism::Performer { kernel, .. } => {
                    let proj = performer_projection(projection)?;
                    favor::features_backward(q, bh * t, dh, proj, f, kernel, fq, &dfq, dq)?;
                    favor::features_backward(k, bh * t, dh, proj, f, kernel, fk, &dfk, dk)
                }
                _ => {
                    linear::elu_feature_map_backward(q, &dfq, dq)?;
                    linear::elu_feature_map_backward(k, &dfk, dk)
                }
            }
        }
        _ => Err(Error::Invalid("attention backward: the saved values belong to a different mechanism".into())),
    }
}

fn performer_projection(projection: Option<&[f32]>) -> Result<&[f32]> {
    projection.ok_or_else(|| Error::Invalid("a Performer needs its random projection (M, Dh)".into()))
}

/// Copies a KV cache `(BH, old_cap, Dh)` into `(BH, new_cap, Dh)`, keeping each `(b, h)` row block in place.
fn grow_cache(cache: &mut Vec<f32>, bh: usize, old_cap: usize, new_cap: usize, dh: usize) {
    let mut grown = vec![0.0f32; bh * new_cap * dh]; // (BH, new_cap, Dh)
    for u in 0..bh {
        grown[u * new_cap * dh..(u * new_cap + old_cap) * dh].copy_from_slice(&cache[u * old_cap * dh..(u + 1) * old_cap * dh]);
    }
    *cache = grown;
}

/// Splits `qkv (B, T, 3D)` into head-major `q, k, v (B, H, T, Dh)`.
fn split_heads(qkv: &[f32], b: usize, t: usize, h: usize, dh: usize, [q, k, v]: [&mut [f32]; 3]) {
    let d = h * dh;
    for bi in 0..b {
        for ti in 0..t {
            let row = &qkv[(bi * t + ti) * 3 * d..(bi * t + ti + 1) * 3 * d];
            for hi in 0..h {
                let dst = ((bi * h + hi) * t + ti) * dh;
                q[dst..dst + dh].copy_from_slice(&row[hi * dh..(hi + 1) * dh]);
                k[dst..dst + dh].copy_from_slice(&row[d + hi * dh..d + (hi + 1) * dh]);
                v[dst..dst + dh].copy_from_slice(&row[2 * d + hi * dh..2 * d + (hi + 1) * dh]);
            }
        }
    }
}

/// Splits `x (B, T, D)` into head-major `(B, H, T, Dh)`.
fn split_one(x: &[f32], b: usize, t: usize, h: usize, dh: usize, out: &mut [f32]) {
    permute_heads(x, b, t, h, dh, out, true);
}

/// Merges head-major `x (B, H, T, Dh)` into `(B, T, D)`.
fn merge_heads(x: &[f32], b: usize, t: usize, h: usize, dh: usize, out: &mut [f32]) {
    permute_heads(x, b, t, h, dh, out, false);
}

/// Copies every `Dh` block between the `(B, T, D)` and head-major `(B, H, T, Dh)` layouts, in the direction
/// `to_heads`.
fn permute_heads(x: &[f32], b: usize, t: usize, h: usize, dh: usize, out: &mut [f32], to_heads: bool) {
    let d = h * dh;
    for bi in 0..b {
        for ti in 0..t {
            for hi in 0..h {
                let head_major = ((bi * h + hi) * t + ti) * dh;
                let time_major = (bi * t + ti) * d + hi * dh;
                let (src, dst) = if to_heads { (time_major, head_major) } else { (head_major, time_major) };
                out[dst..dst + dh].copy_from_slice(&x[src..src + dh]);
            }
        }
    }
}

/// Merges head-major `dq, dk, dv (B, H, T, Dh)` into `(B, T, 3D)`, the layout of the fused input projection.
#[allow(clippy::too_many_arguments)]
fn merge_three(dq: &[f32], dk: &[f32], dv: &[f32], b: usize, t: usize, h: usize, dh: usize, out: &mut [f32]) {
    let d = h * dh;
    for bi in 0..b {
        for ti in 0..t {
            let row = &mut out[(bi * t + ti) * 3 * d..(bi * t + ti + 1) * 3 * d];
            for hi in 0..h {
                let src = ((bi * h + hi) * t + ti) * dh;
                row[hi * dh..(hi + 1) * dh].copy_from_slice(&dq[src..src + dh]);
                row[d + hi * dh..d + (hi + 1) * dh].copy_from_slice(&dk[src..src + dh]);
                row[2 * d + hi * dh..2 * d + (hi + 1) * dh].copy_from_slice(&dv[src..src + dh]);
            }
        }
    }
}

impl Module for MultiHeadAttention {
    fn params(&self) -> Vec<&Param> {
        let mut v = self.in_proj.params();
        v.extend(self.out_proj.params());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.in_proj.params_mut();
        v.extend(self.out_proj.params_mut());
        v
    }
}
