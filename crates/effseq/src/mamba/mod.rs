//! Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces") as a sequence
//! backbone: the structure of `mamba_ssm`'s `MixerModel` built from `Mamba` blocks, with PyTorch-compatible
//! parameter names.
//!
//! ## The network
//! An optional input projection `encoder` (a `Linear` D → d_model with bias, present when D ≠ d_model), then L
//! residual layers `h ← h + Mixer(RMSNorm(h))` and a final `norm_f` RMSNorm. RMSNorm is
//! `y = x / sqrt(mean(x²) + ε) ⊙ w` with ε = 1e-5 ([`RmsNorm`]).
//!
//! The mixer of layer `i` (`layers.{i}.mixer`, the paper's Fig. 3 and Algorithm 2), with `E = expand · d_model`
//! inner channels (`d_inner`), state size `N`, convolution width `K` and `R = dt_rank`:
//!
//! 1. `[x | z] = in_proj(h)` (d_model → 2E, no bias);
//! 2. `u = SiLU(conv1d(x))`, a causal depthwise convolution of width K (left padding K − 1, with bias);
//! 3. `[δ_in | B | C] = x_proj(u)` (E → R + 2N, no bias), `Δ = softplus(dt_proj(δ_in))` (R → E, with bias);
//! 4. `y = SelectiveScan(u, Δ, A, B, C, D)` with `A = −exp(A_log)` (see [`scan`]: `h_t = exp(Δ_t A) h_{t−1} +
//!    Δ_t B_t u_t`, `y_t = C_t · h_t + D u_t`, eq. 2 with the discretisation of eq. 4);
//! 5. `out = out_proj(y ⊙ SiLU(z))` (E → d_model, no bias).
//!
//! Initialisation as `mamba_ssm`: every `Linear` as PyTorch's default, U(±1/√fan_in), then as its `_init_weights`
//! (`rescale_prenorm_residual`) the encoder bias zero and `out_proj.weight` divided by √L; the `Conv1d` default
//! U(±1/√K) for the depthwise filters and bias; `dt_proj.weight ~ U(±R^{−1/2})` and `dt_proj.bias =
//! softplus^{−1}(dt)` with `dt` log-uniform in [1e-3, 1e-1] (floored at 1e-4); the S4D-real `A_log[d, n] = ln(n + 1)`;
//! `D = 1`; RMSNorm weights 1.
//!
//! ## Computation and memory
//! [`Mamba::forward`] runs every projection as one GEMM over all `B·T` rows, the convolution and the pointwise
//! functions in parallel over row blocks, and the selective scan with the fused chunked kernel of [`scan`], which
//! never materialises the `(B, T, E, N)` states. For the backward it keeps, per layer and per token,
//! `d_model + 1 + 2E + R + 2N` floats (the layer input and its RMSNorm scale, `[x | z]`, `δ_in`, `B`, `C`) and
//! `E·N/64` floats of scan boundary states; the convolution output, `Δ` and the scan output are recomputed in
//! the backward (cheap next to the GEMMs). Training memory is therefore
//! `4·B·T·(D + d_model + 1 + L·(d_model + 1 + 2E + R + 2N + E·N/64))` bytes plus transient buffers of one layer
//! (about `9·B·T·E` floats at the peak of its backward); e.g. 1457 floats = 5.8 kB per token and layer for
//! d_model = 256, E = 512, N = 16, R = 16 (PyTorch's `selective_scan_ref` alone materialises `2·E·N` = 16384 floats per
//! token for `deltaA` and `deltaB_u`).
//!
//! [`Mamba::infer`] keeps nothing and walks the sequence in tiles of about 8192 rows through all layers, carrying
//! each layer's convolution tail and scan state from tile to tile, so its memory beyond input and output is
//! bounded whatever T. [`Mamba::step`] streams one token at a time in `O(L·E·(d_model + N))` per sequence: per
//! layer a ring buffer of the last `K − 1` convolution inputs and the `(B, E, N)` scan state ([`MambaState`]).
//!
//! Parameters are listed in the order of the equivalent PyTorch module's `named_parameters()` (a module's own
//! parameters before its submodules'): `encoder.weight`, `encoder.bias`, then per layer `layers.{i}.mixer.A_log`
//! (E, N), `.D` (E), `.in_proj.weight` (2E, d_model), `.conv1d.weight` (E, 1, K), `.conv1d.bias` (E),
//! `.x_proj.weight` (R + 2N, E), `.dt_proj.weight` (E, R), `.dt_proj.bias` (E), `.out_proj.weight` (d_model, E),
//! `layers.{i}.norm.weight` (d_model), and last `norm_f.weight` (d_model).

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::layers::Linear;
use crate::linalg::{matmul, packed_matmul_acc, PackedPanels, Trans};
use crate::math::{exp, sigmoid};
use crate::param::{Module, Param};
use crate::rng::{fill_uniform, rng_for, streams, Rng};

pub mod scan;

use scan::{scan_backward, scan_forward, ScanDims, ScanInputs};

/// ε of every RMSNorm (`mamba_ssm`'s default).
pub const RMS_EPS: f32 = 1e-5;

/// Rows per work item of the parallel pointwise passes; also the fixed blocks of their partial sums, so that
/// reductions do not depend on the thread count.
const ROW_BLOCK: usize = 64;

/// Rows (`B × tile length`) of one tile of [`Mamba::infer`].
const INFER_TILE_ROWS: usize = 8192;

/// Shape of a Mamba network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MambaConfig {
    /// Input features per step, D.
    pub input: usize,
    /// Width of the residual stream, d_model.
    pub d_model: usize,
    /// Number of residual layers L.
    pub layers: usize,
    /// State size N per channel (16 in the paper).
    pub d_state: usize,
    /// Expansion factor E / d_model of the mixer (2 in the paper).
    pub expand: usize,
    /// Width K of the causal depthwise convolution (4 in the paper).
    pub d_conv: usize,
    /// Rank R of the Δ projection; `None` means ⌈d_model / 16⌉ (the paper's "auto").
    pub dt_rank: Option<usize>,
}

impl MambaConfig {
    /// A configuration with the paper's defaults: N = 16, expand 2, K = 4, R = ⌈d_model / 16⌉.
    pub fn with_defaults(input: usize, d_model: usize, layers: usize) -> MambaConfig {
        MambaConfig { input, d_model, layers, d_state: 16, expand: 2, d_conv: 4, dt_rank: None }
    }

    /// Inner channels E = expand · d_model.
    pub fn d_inner(&self) -> usize {
        self.expand * self.d_model
    }

    /// Rank R of the Δ projection.
    pub fn dt_rank(&self) -> usize {
        self.dt_rank.unwrap_or(self.d_model.div_ceil(16))
    }

    /// Width of the output at each step, d_model.
    pub fn output_dim(&self) -> usize {
        self.d_model
    }

    fn validate(&self) -> Result<()> {
        let sizes = [
            ("input", self.input),
            ("d_model", self.d_model),
            ("layers", self.layers),
            ("d_state", self.d_state),
            ("expand", self.expand),
            ("d_conv", self.d_conv),
            ("dt_rank", self.dt_rank()),
        ];
        match sizes.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(Error::config(format!("mamba: {name} must be at least 1, got 0 in {self:?}"))),
            None => Ok(()),
        }
    }

    fn dims(&self) -> Dims {
        Dims { dm: self.d_model, di: self.d_inner(), n: self.d_state, r: self.dt_rank(), k: self.d_conv }
    }
}

/// The sizes every kernel needs, in short.
#[derive(Clone, Copy, Debug)]
struct Dims {
    /// d_model.
    dm: usize,
    /// E = d_inner.
    di: usize,
    /// N = d_state.
    n: usize,
    /// R = dt_rank.
    r: usize,
    /// K = d_conv.
    k: usize,
}

impl Dims {
    /// Width of the x_proj output, R + 2N.
    fn proj(&self) -> usize {
        self.r + 2 * self.n
    }
}

/// Root-mean-square layer normalisation (Zhang & Sennrich 2019), `mamba_ssm`'s `RMSNorm`:
/// `y = x · rstd ⊙ w` with `rstd = 1 / sqrt(mean(x²) + ε)` over the last axis.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// `{prefix}.weight`, (D), initialised to ones.
    pub weight: Param,
    /// ε, [`RMS_EPS`].
    pub eps: f32,
}

impl RmsNorm {
    /// A normalisation of rows of width `dim`, named `{prefix}.weight`.
    pub fn new(prefix: &str, dim: usize) -> RmsNorm {
        RmsNorm { weight: Param::new(format!("{prefix}.weight"), &[dim], vec![1.0; dim]), eps: RMS_EPS }
    }

    /// Row width D.
    pub fn dim(&self) -> usize {
        self.weight.shape[0]
    }

    /// `y (N, D)` for `x (N, D)`; writes each row's `rstd (N)`.
    pub fn forward(&self, x: &[f32], y: &mut [f32], rstd: &mut [f32]) -> Result<()> {
        let d = self.dim();
        check_len("rmsnorm input (N, D)", &[rstd.len(), d], x.len())?;
        check_len("rmsnorm output (N, D)", &[rstd.len(), d], y.len())?;
        if d == 0 {
            return Ok(());
        }
        y.par_chunks_mut(ROW_BLOCK * d).zip(rstd.par_chunks_mut(ROW_BLOCK)).enumerate().for_each(|(blk, (ys, rs))| {
            let xs = &x[blk * ROW_BLOCK * d..];
            for (i, (yr, r)) in ys.chunks_exact_mut(d).zip(rs.iter_mut()).enumerate() {
                *r = rms_row(&xs[i * d..(i + 1) * d], &self.weight.value, self.eps, yr);
            }
        });
        Ok(())
    }

    /// `y (N, D)` for `x (N, D)` with the `rstd (N)` a previous [`RmsNorm::forward`] computed.
    pub fn apply_with_rstd(&self, x: &[f32], rstd: &[f32], y: &mut [f32]) -> Result<()> {
        let d = self.dim();
        check_len("rmsnorm input (N, D)", &[rstd.len(), d], x.len())?;
        check_len("rmsnorm output (N, D)", &[rstd.len(), d], y.len())?;
        if d == 0 {
            return Ok(());
        }
        y.par_chunks_mut(ROW_BLOCK * d).enumerate().for_each(|(blk, ys)| {
            for (i, yr) in ys.chunks_exact_mut(d).enumerate() {
                let row = blk * ROW_BLOCK + i;
                let (xr, r) = (&x[row * d..(row + 1) * d], rstd[row]);
                yr.iter_mut().zip(xr.iter().zip(&self.weight.value)).for_each(|(o, (&v, &w))| *o = v * r * w);
            }
        });
        Ok(())
    }

    /// Backward of [`RmsNorm::forward`] at `x (N, D)` with its `rstd (N)`: ADDS
    /// `∂L/∂x = rstd · (w ⊙ dy − x̂ · mean(dy ⊙ w ⊙ x̂))` (with `x̂ = x · rstd`) into `dx (N, D)` and
    /// `Σ_rows dy ⊙ x̂` into the weight gradient.
    pub fn backward(&mut self, x: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
        let d = self.dim();
        for (what, len) in [("input", x.len()), ("output gradient", dy.len()), ("input gradient", dx.len())] {
            check_len(&format!("rmsnorm {what} (N, D)"), &[rstd.len(), d], len)?;
        }
        if d == 0 {
            return Ok(());
        }
        let w = &self.weight.value;
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(ROW_BLOCK * d)
            .enumerate()
            .map(|(blk, dxs)| {
                let mut dw = vec![0.0f32; d]; // (D) this block's weight gradient
                for (i, dxr) in dxs.chunks_exact_mut(d).enumerate() {
                    let row = blk * ROW_BLOCK + i;
                    let (xr, dyr, r) = (&x[row * d..(row + 1) * d], &dy[row * d..(row + 1) * d], rstd[row]);
                    let mut dot = 0.0f32; // Σ dy ⊙ w ⊙ x̂
                    for j in 0..d {
                        let xhat = xr[j] * r;
                        dot += dyr[j] * w[j] * xhat;
                        dw[j] += dyr[j] * xhat;
                    }
                    let mean = dot / d as f32;
                    for j in 0..d {
                        dxr[j] += r * (dyr[j] * w[j] - xr[j] * r * mean);
                    }
                }
                dw
            })
            .collect();
        add_partials(&parts, &mut self.weight.grad);
        Ok(())
    }
}

/// Normalises one row into `y` and returns its rstd.
#[inline]
fn rms_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) -> f32 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let rstd = 1.0 / (mean_sq + eps).sqrt();
    y.iter_mut().zip(x.iter().zip(w)).for_each(|(o, (&v, &wv))| *o = v * rstd * wv);
    rstd
}

/// `out += Σ parts`, in the order of `parts` (deterministic whatever the thread count).
fn add_partials(parts: &[Vec<f32>], out: &mut [f32]) {
    for part in parts {
        out.iter_mut().zip(part).for_each(|(o, p)| *o += p);
    }
}

/// `out += Σ_rows m` for `m (rows, width)`, in fixed row blocks.
fn add_column_sums(m: &[f32], width: usize, out: &mut [f32]) {
    if width == 0 {
        return;
    }
    let parts: Vec<Vec<f32>> = m
        .par_chunks(ROW_BLOCK * width)
        .map(|rows| {
            let mut s = vec![0.0f32; width]; // (width)
            rows.chunks_exact(width).for_each(|r| s.iter_mut().zip(r).for_each(|(a, b)| *a += b));
            s
        })
        .collect();
    add_partials(&parts, out);
}

/// `x · sigmoid(x)`.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d SiLU / dx = `s (1 + x (1 − s))` with `s = sigmoid(x)`.
#[inline(always)]
fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// `ln(1 + e^x)` as PyTorch's `F.softplus` (x itself above the threshold 20), branch-free so that loops over it
/// vectorise (the libm `ln_1p` behind [`crate::math::softplus`] does not). Uses
/// `softplus(x) = max(x, 0) + ln(1 + e^{−|x|})`; relative error about 1e-7.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    let tail = ln_1p_unit(exp(-x.abs()));
    if x > 20.0 {
        x
    } else {
        x.max(0.0) + tail
    }
}

/// `ln(1 + y)` for `y ∈ [0, 1]`, branch-free: `ln z` for `z = 1 + y` by Cephes' `logf` polynomial on the mantissa
/// in `[√½, √2)`, plus the rounding error of `1 + y` divided by `z` (so tiny `y` keep their relative accuracy).
#[inline(always)]
fn ln_1p_unit(y: f32) -> f32 {
    const SQRT2: f32 = std::f32::consts::SQRT_2;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let z = 1.0 + y;
    let lost = y - (z - 1.0); // exact: z + lost = 1 + y
    let halve = z > SQRT2;
    let m = if halve { 0.5 * z } else { z };
    let e = if halve { 1.0f32 } else { 0.0 };
    let f = m - 1.0;
    let f2 = f * f;
    let mut p = 7.037_683_6e-2f32;
    p = p * f - 1.151_461e-1;
    p = p * f + 1.167_699_9e-1;
    p = p * f - 1.242_014_1e-1;
    p = p * f + 1.424_932_3e-1;
    p = p * f - 1.666_805_8e-1;
    p = p * f + 2.000_071_4e-1;
    p = p * f - 2.499_999_4e-1;
    p = p * f + 3.333_333e-1;
    let ln_m = f + (p * f * f2 - 0.5 * f2);
    e * LN2_HI + (ln_m + e * LN2_LO) + lost / z
}

/// `softplus^{−1}(v) = v + ln(−expm1(−v))`, in f64.
fn inverse_softplus(v: f64) -> f64 {
    v + (-(-v).exp_m1()).ln()
}

/// One layer's mixer, `mamba_ssm`'s `Mamba` block.
#[derive(Clone, Debug)]
struct Mixer {
    /// `in_proj`: d_model → 2E, no bias.
    in_proj: Linear,
    /// `conv1d.weight`: (E, 1, K).
    conv_weight: Param,
    /// `conv1d.bias`: (E).
    conv_bias: Param,
    /// `x_proj`: E → R + 2N, no bias.
    x_proj: Linear,
    /// `dt_proj`: R → E, with bias.
    dt_proj: Linear,
    /// `A_log`: (E, N); `A = −exp(A_log)`.
    a_log: Param,
    /// `D`: (E).
    d_skip: Param,
    /// `out_proj`: E → d_model, no bias.
    out_proj: Linear,
}

/// What a layer keeps from the forward for the backward (the rest is recomputed).
#[derive(Clone, Debug)]
struct LayerCache {
    /// The layer's input, the residual stream: (B·T, d_model).
    input: Vec<f32>,
    /// Its RMSNorm scales: (B·T).
    rstd: Vec<f32>,
    /// `[x | z]`, the output of `in_proj`: (B·T, 2E).
    xz: Vec<f32>,
    /// `δ_in`: (B·T, R).
    dt_in: Vec<f32>,
    /// `B`: (B·T, N).
    b_mat: Vec<f32>,
    /// `C`: (B·T, N).
    c_mat: Vec<f32>,
    /// The scan's chunk-boundary states: (B, ⌈T/64⌉, E, N).
    boundaries: Vec<f32>,
}

/// What the mixer hands back from a tile: the output and, in training, its part of [`LayerCache`].
struct MixerOut {
    /// (B·T, d_model).
    out: Vec<f32>,
    /// What the backward needs, when kept.
    kept: Option<MixerKept>,
}

/// The mixer's part of [`LayerCache`] (same fields).
struct MixerKept {
    xz: Vec<f32>,
    dt_in: Vec<f32>,
    b_mat: Vec<f32>,
    c_mat: Vec<f32>,
    boundaries: Vec<f32>,
}

/// A layer's history carried across the tiles of [`Mamba::infer`] (zero for a fresh sequence).
struct Carry {
    /// The last K − 1 convolution inputs, oldest first: (B, K − 1, E).
    tail: Vec<f32>,
    /// The scan state: (B, E, N).
    ssm: Vec<f32>,
}

impl Carry {
    fn zeros(b: usize, dims: Dims) -> Carry {
        Carry { tail: vec![0.0; b * (dims.k - 1) * dims.di], ssm: vec![0.0; b * dims.di * dims.n] }
    }
}

impl Mixer {
    /// Initialised as `mamba_ssm` (see the module doc), parameters drawn from `rng` in the order in_proj, conv1d
    /// weight and bias, x_proj, dt_proj weight, the dt samples, out_proj.
    fn new(prefix: &str, dims: Dims, layers: usize, rng: &mut Rng) -> Mixer {
        let Dims { dm, di, n, r, k } = dims;
        let in_proj = Linear::new(&format!("{prefix}.in_proj"), dm, 2 * di, false, rng);
        let bound = 1.0 / (k as f32).sqrt();
        let mut conv_weight = Param::zeros(format!("{prefix}.conv1d.weight"), &[di, 1, k]);
        fill_uniform(rng, &mut conv_weight.value, bound);
        let mut conv_bias = Param::zeros(format!("{prefix}.conv1d.bias"), &[di]);
        fill_uniform(rng, &mut conv_bias.value, bound);
        let x_proj = Linear::new(&format!("{prefix}.x_proj"), di, dims.proj(), false, rng);
        let mut dt_proj = Linear::new(&format!("{prefix}.dt_proj"), r, di, true, rng);
        fill_uniform(rng, &mut dt_proj.weight.value, (r as f32).powf(-0.5));
        if let Some(bias) = &mut dt_proj.bias {
            let (lo, hi) = (1e-3f64.ln(), 1e-1f64.ln());
            for v in bias.value.iter_mut() {
                let draw: f64 = rand::Rng::random(rng);
                let dt = (lo + draw * (hi - lo)).exp().max(1e-4);
                *v = inverse_softplus(dt) as f32;
            }
        }
        let a_log = Param::new(format!("{prefix}.A_log"), &[di, n], (0..di * n).map(|i| ((i % n + 1) as f32).ln()).collect());
        let d_skip = Param::new(format!("{prefix}.D"), &[di], vec![1.0; di]);
        let mut out_proj = Linear::new(&format!("{prefix}.out_proj"), di, dm, false, rng);
        let rescale = 1.0 / (layers as f32).sqrt();
        out_proj.weight.value.iter_mut().for_each(|w| *w *= rescale);
        Mixer { in_proj, conv_weight, conv_bias, x_proj, dt_proj, a_log, d_skip, out_proj }
    }

    /// `A = −exp(A_log)`: (E, N).
    fn a(&self) -> Vec<f32> {
        self.a_log.value.iter().map(|v| -v.exp()).collect()
    }

    /// The convolution filters transposed to (K, E), so that a tap's weights are contiguous over channels.
    fn conv_taps(&self, dims: Dims) -> Vec<f32> {
        let (di, k) = (dims.di, dims.k);
        let mut taps = vec![0.0; k * di]; // (K, E)
        for c in 0..di {
            for kk in 0..k {
                taps[kk * di + c] = self.conv_weight.value[c * k + kk];
            }
        }
        taps
    }

    /// The causal depthwise convolution of the `x` half of `xz (B·T, 2E)` with history `tail (B, K−1, E)`:
    /// `v[b, t, c] = bias[c] + Σ_k w[c, k] · x[b, t − (K−1) + k, c]`, written to `out (B·T, E)`, then SiLU'd in place
    /// when `activate`.
    fn conv(&self, dims: Dims, xz: &[f32], t: usize, tail: &[f32], activate: bool, out: &mut [f32]) {
        let (di, k) = (dims.di, dims.k);
        let taps = self.conv_taps(dims);
        let bias = &self.conv_bias.value;
        out.par_chunks_mut(ROW_BLOCK * di).enumerate().for_each(|(blk, rows)| {
            for (i, o) in rows.chunks_exact_mut(di).enumerate() {
                let row = blk * ROW_BLOCK + i;
                let (bi, ti) = (row / t, row % t);
                o.copy_from_slice(bias);
                for kk in 0..k {
                    // Source time ti + kk − (K−1): in this tile, or in the carried history.
                    let src = match (ti + kk).checked_sub(k - 1) {
                        Some(ts) => &xz[(bi * t + ts) * 2 * di..][..di],
                        None => &tail[(bi * (k - 1) + ti + kk) * di..][..di],
                    };
                    let w = &taps[kk * di..(kk + 1) * di];
                    o.iter_mut().zip(src.iter().zip(w)).for_each(|(v, (&x, &wv))| *v += wv * x);
                }
                if activate {
                    o.iter_mut().for_each(|v| *v = silu(*v));
                }
            }
        });
    }

    /// The history after this tile: the last K − 1 convolution inputs, from the tile or the old history.
    fn advance_tail(dims: Dims, xz: &[f32], b: usize, t: usize, tail: &mut [f32]) {
        let (di, km1) = (dims.di, dims.k - 1);
        if km1 == 0 {
            return;
        }
        let old = tail.to_vec(); // (B, K−1, E)
        for bi in 0..b {
            for j in 0..km1 {
                let dst = &mut tail[(bi * km1 + j) * di..][..di];
                match (t + j).checked_sub(km1) {
                    Some(ts) => dst.copy_from_slice(&xz[(bi * t + ts) * 2 * di..][..di]),
                    None => dst.copy_from_slice(&old[(bi * km1 + j + t) * di..][..di]),
                }
            }
        }
    }

    /// `x_proj(u)` split into `δ_in (M, R)`, `B (M, N)`, `C (M, N)`.
    fn project(&self, dims: Dims, u: &[f32], m: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (di, n, r, p) = (dims.di, dims.n, dims.r, dims.proj());
        let mut dbl = vec![0.0; m * p]; // (M, R + 2N)
        matmul(m, p, di, 1.0, u, Trans::N, &self.x_proj.weight.value, Trans::T, 0.0, &mut dbl);
        let (mut dt_in, mut b_mat, mut c_mat) = (vec![0.0; m * r], vec![0.0; m * n], vec![0.0; m * n]);
        for (i, row) in dbl.chunks_exact(p).enumerate() {
            dt_in[i * r..(i + 1) * r].copy_from_slice(&row[..r]);
            b_mat[i * n..(i + 1) * n].copy_from_slice(&row[r..r + n]);
            c_mat[i * n..(i + 1) * n].copy_from_slice(&row[r + n..]);
        }
        (dt_in, b_mat, c_mat)
    }

    /// `dt_proj(δ_in)` with its bias: the softplus argument, (M, E).
    fn dt_pre(&self, dims: Dims, dt_in: &[f32], m: usize) -> Vec<f32> {
        let di = dims.di;
        let mut pre = vec![0.0; m * di]; // (M, E)
        for row in pre.chunks_exact_mut(di) {
            row.copy_from_slice(&self.dt_proj.bias.as_ref().expect("dt_proj has a bias").value);
        }
        matmul(m, di, dims.r, 1.0, dt_in, Trans::N, &self.dt_proj.weight.value, Trans::T, 1.0, &mut pre);
        pre
    }

    /// The mixer over a tile `normed (B·T, d_model)` from the history in `carry`, which it advances. With `keep`
    /// (training, `carry` zero) it also returns what [`Mixer::backward`] needs.
    fn forward_tile(&self, dims: Dims, normed: &[f32], (b, t): (usize, usize), a: &[f32], carry: &mut Carry, keep: bool) -> Result<MixerOut> {
        let Dims { dm, di, n, .. } = dims;
        let m = b * t;
        let mut xz = vec![0.0; m * 2 * di]; // (M, 2E): [x | z]
        matmul(m, 2 * di, dm, 1.0, normed, Trans::N, &self.in_proj.weight.value, Trans::T, 0.0, &mut xz);
        let mut u = vec![0.0; m * di]; // (M, E) = SiLU(conv(x))
        self.conv(dims, &xz, t, &carry.tail, true, &mut u);
        Mixer::advance_tail(dims, &xz, b, t, &mut carry.tail);
        let (dt_in, b_mat, c_mat) = self.project(dims, &u, m);
        let mut delta = self.dt_pre(dims, &dt_in, m); // (M, E), softplus'd in place below
        delta.par_chunks_mut(ROW_BLOCK * di).for_each(|rows| rows.iter_mut().for_each(|v| *v = softplus(*v)));
        let sd = ScanDims { batch: b, time: t, channels: di, state: n };
        let mut boundaries = if keep { vec![0.0; sd.boundary_len()] } else { Vec::new() }; // (B, chunks, E, N)
        let mut y = vec![0.0; m * di]; // (M, E)
        let inputs = ScanInputs { u: &u, delta: &delta, a, b: &b_mat, c: &c_mat, d: &self.d_skip.value };
        scan_forward(&sd, &inputs, &mut carry.ssm, &mut y, keep.then_some(&mut boundaries[..]))?;
        drop((u, delta));
        // y ⊙ SiLU(z)
        y.par_chunks_mut(ROW_BLOCK * di).enumerate().for_each(|(blk, rows)| {
            for (i, yr) in rows.chunks_exact_mut(di).enumerate() {
                let z = &xz[((blk * ROW_BLOCK + i) * 2 + 1) * di..][..di];
                yr.iter_mut().zip(z).for_each(|(v, &zv)| *v *= silu(zv));
            }
        });
        let mut out = vec![0.0; m * dm]; // (M, d_model)
        matmul(m, dm, di, 1.0, &y, Trans::N, &self.out_proj.weight.value, Trans::T, 0.0, &mut out);
        Ok(MixerOut { out, kept: keep.then_some(MixerKept { xz, dt_in, b_mat, c_mat, boundaries }) })
    }

    /// Backward of a training [`Mixer::forward_tile`] (zero history) over `(B, T)`: given its input `normed` and
    /// `dout (B·T, d_model)`, ACCUMULATES every parameter gradient and returns `∂L/∂normed (B·T, d_model)`.
    fn backward(&mut self, dims: Dims, b: usize, t: usize, normed: &[f32], cache: &LayerCache, dout: &[f32]) -> Result<Vec<f32>> {
        let Dims { dm, di, n, r, k } = dims;
        let (m, p) = (b * t, dims.proj());
        let a = self.a();
        // Recompute the convolution output v and u = SiLU(v), and Δ = softplus(pre).
        let mut v = vec![0.0; m * di]; // (M, E)
        self.conv(dims, &cache.xz, t, &vec![0.0; b * (k - 1) * di], false, &mut v);
        let mut u = vec![0.0; m * di]; // (M, E)
        u.par_chunks_mut(ROW_BLOCK * di).zip(v.par_chunks(ROW_BLOCK * di)).for_each(|(us, vs)| us.iter_mut().zip(vs).for_each(|(o, &x)| *o = silu(x)));
        let pre = self.dt_pre(dims, &cache.dt_in, m); // (M, E)
        let mut delta = vec![0.0; m * di]; // (M, E)
        delta
            .par_chunks_mut(ROW_BLOCK * di)
            .zip(pre.par_chunks(ROW_BLOCK * di))
            .for_each(|(ds, ps)| ds.iter_mut().zip(ps).for_each(|(o, &x)| *o = softplus(x)));
        // ∂L/∂(y ⊙ SiLU(z)) = dout · W_out, then ∂L/∂y = that ⊙ SiLU(z).
        let mut dgate = vec![0.0; m * di]; // (M, E)
        matmul(m, di, dm, 1.0, dout, Trans::N, &self.out_proj.weight.value, Trans::N, 0.0, &mut dgate);
        let mut dy = vec![0.0; m * di]; // (M, E)
        dy.par_chunks_mut(ROW_BLOCK * di).enumerate().for_each(|(blk, rows)| {
            for (i, o) in rows.chunks_exact_mut(di).enumerate() {
                let row = blk * ROW_BLOCK + i;
                let (z, g) = (&cache.xz[(row * 2 + 1) * di..][..di], &dgate[row * di..][..di]);
                o.iter_mut().zip(z.iter().zip(g)).for_each(|(o, (&zv, &gv))| *o = gv * silu(zv));
            }
        });
        let sd = ScanDims { batch: b, time: t, channels: di, state: n };
        let inputs = ScanInputs { u: &u, delta: &delta, a: &a, b: &cache.b_mat, c: &cache.c_mat, d: &self.d_skip.value };
        let mut y = vec![0.0; m * di]; // (M, E): the scan output, recomputed by the backward kernel
        let grads = scan_backward(&sd, &inputs, &cache.boundaries, &dy, Some(&mut y))?;
        drop((dy, delta));
        // The gate: dz (into dgate) and the gated output (into y), for out_proj's weight gradient.
        dgate.par_chunks_mut(ROW_BLOCK * di).zip(y.par_chunks_mut(ROW_BLOCK * di)).enumerate().for_each(|(blk, (gs, ys))| {
            for (i, (g, yr)) in gs.chunks_exact_mut(di).zip(ys.chunks_exact_mut(di)).enumerate() {
                let z = &cache.xz[((blk * ROW_BLOCK + i) * 2 + 1) * di..][..di];
                for c in 0..di {
                    g[c] *= yr[c] * silu_grad(z[c]);
                    yr[c] *= silu(z[c]);
                }
            }
        });
        let dz = dgate;
        matmul(dm, di, m, 1.0, dout, Trans::T, &y, Trans::N, 1.0, &mut self.out_proj.weight.grad);
        drop(y);
        let scan::ScanGrads { mut du, ddelta, da, db, dc, dd } = grads;
        // Softplus: ∂L/∂pre = ∂L/∂Δ ⊙ sigmoid(pre).
        let mut dpre = ddelta; // (M, E)
        dpre.par_chunks_mut(ROW_BLOCK * di).zip(pre.par_chunks(ROW_BLOCK * di)).for_each(|(ds, ps)| ds.iter_mut().zip(ps).for_each(|(d, &x)| *d *= sigmoid(x)));
        drop(pre);
        matmul(di, r, m, 1.0, &dpre, Trans::T, &cache.dt_in, Trans::N, 1.0, &mut self.dt_proj.weight.grad);
        add_column_sums(&dpre, di, &mut self.dt_proj.bias.as_mut().expect("dt_proj has a bias").grad);
        // ∂L/∂[δ_in | B | C]: (M, R + 2N).
        let mut ddbl = vec![0.0; m * p];
        for (i, row) in ddbl.chunks_exact_mut(p).enumerate() {
            row[r..r + n].copy_from_slice(&db[i * n..(i + 1) * n]);
            row[r + n..].copy_from_slice(&dc[i * n..(i + 1) * n]);
        }
        let mut ddt = vec![0.0; m * r]; // (M, R)
        matmul(m, r, di, 1.0, &dpre, Trans::N, &self.dt_proj.weight.value, Trans::N, 0.0, &mut ddt);
        drop(dpre);
        for (row, d) in ddbl.chunks_exact_mut(p).zip(ddt.chunks_exact(r)) {
            row[..r].copy_from_slice(d);
        }
        matmul(p, di, m, 1.0, &ddbl, Trans::T, &u, Trans::N, 1.0, &mut self.x_proj.weight.grad);
        matmul(m, di, p, 1.0, &ddbl, Trans::N, &self.x_proj.weight.value, Trans::N, 1.0, &mut du);
        drop((ddbl, u));
        // A = −exp(A_log): ∂L/∂A_log = ∂L/∂A ⊙ A.
        self.a_log.grad.iter_mut().zip(da.iter().zip(&a)).for_each(|(g, (&d, &av))| *g += d * av);
        self.d_skip.grad.iter_mut().zip(&dd).for_each(|(g, d)| *g += d);
        // SiLU after the convolution: ∂L/∂v = ∂L/∂u ⊙ SiLU'(v), in place.
        let mut dv = du;
        dv.par_chunks_mut(ROW_BLOCK * di).zip(v.par_chunks(ROW_BLOCK * di)).for_each(|(ds, vs)| ds.iter_mut().zip(vs).for_each(|(d, &x)| *d *= silu_grad(x)));
        drop(v);
        let dx = self.conv_backward(dims, &cache.xz, b, t, &dv); // (M, E)
        drop(dv);
        // in_proj: rows [0, E) of W_in made x, rows [E, 2E) made z.
        let (w_x, w_z) = self.in_proj.weight.value.split_at(di * dm);
        let mut dnormed = vec![0.0; m * dm]; // (M, d_model)
        matmul(m, dm, di, 1.0, &dx, Trans::N, w_x, Trans::N, 0.0, &mut dnormed);
        matmul(m, dm, di, 1.0, &dz, Trans::N, w_z, Trans::N, 1.0, &mut dnormed);
        let (g_x, g_z) = self.in_proj.weight.grad.split_at_mut(di * dm);
        matmul(di, dm, m, 1.0, &dx, Trans::T, normed, Trans::N, 1.0, g_x);
        matmul(di, dm, m, 1.0, &dz, Trans::T, normed, Trans::N, 1.0, g_z);
        Ok(dnormed)
    }

    /// Backward of the convolution (zero history) from `dv (B·T, E)`: ACCUMULATES the filter and bias gradients and
    /// returns `∂L/∂x (B·T, E)`, `∂L/∂x[b, τ, c] = Σ_k w[c, k] · dv[b, τ + (K−1) − k, c]`.
    fn conv_backward(&mut self, dims: Dims, xz: &[f32], b: usize, t: usize, dv: &[f32]) -> Vec<f32> {
        let (di, k) = (dims.di, dims.k);
        let taps = self.conv_taps(dims);
        let mut dx = vec![0.0; b * t * di]; // (M, E)
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(ROW_BLOCK * di)
            .enumerate()
            .map(|(blk, rows)| {
                let mut part = vec![0.0f32; (k + 1) * di]; // (K, E) filter gradient, transposed, then (E) bias gradient
                for (i, dxr) in rows.chunks_exact_mut(di).enumerate() {
                    let row = blk * ROW_BLOCK + i;
                    let (bi, ti) = (row / t, row % t);
                    let dvr = &dv[row * di..][..di];
                    part[k * di..].iter_mut().zip(dvr).for_each(|(g, d)| *g += d);
                    for kk in 0..k {
                        // This output saw the input at ti + kk − (K−1) through tap kk.
                        if let Some(ts) = (ti + kk).checked_sub(k - 1) {
                            let x = &xz[(bi * t + ts) * 2 * di..][..di];
                            part[kk * di..(kk + 1) * di].iter_mut().zip(dvr.iter().zip(x)).for_each(|(g, (&d, &xv))| *g += d * xv);
                        }
                        // This input reached the output at ti + (K−1) − kk through tap kk.
                        let to = ti + k - 1 - kk;
                        if to < t {
                            let dvo = &dv[(bi * t + to) * di..][..di];
                            let w = &taps[kk * di..(kk + 1) * di];
                            dxr.iter_mut().zip(dvo.iter().zip(w)).for_each(|(g, (&d, &wv))| *g += wv * d);
                        }
                    }
                }
                part
            })
            .collect();
        let mut total = vec![0.0f32; (k + 1) * di]; // (K + 1, E)
        add_partials(&parts, &mut total);
        for c in 0..di {
            for kk in 0..k {
                self.conv_weight.grad[c * k + kk] += total[kk * di + c];
            }
        }
        self.conv_bias.grad.iter_mut().zip(&total[k * di..]).for_each(|(g, d)| *g += d);
        dx
    }
}

/// One residual layer: `h ← h + mixer(norm(h))`.
#[derive(Clone, Debug)]
struct Layer {
    /// `layers.{i}.mixer`.
    mixer: Mixer,
    /// `layers.{i}.norm`.
    norm: RmsNorm,
}

/// What [`Mamba::backward`] needs from [`Mamba::forward`].
#[derive(Clone, Debug)]
struct Cache {
    b: usize,
    t: usize,
    /// The network input when there is an encoder (for its weight gradient): (B, T, D).
    input: Option<Vec<f32>>,
    /// One per layer.
    layers: Vec<LayerCache>,
    /// The input of `norm_f`: (B·T, d_model).
    last: Vec<f32>,
    /// Its RMSNorm scales: (B·T).
    last_rstd: Vec<f32>,
}

/// The weights of [`Mamba::step`], packed for few-row products.
#[derive(Clone, Debug)]
struct StepWeights {
    /// `encoder`, (D → d_model).
    encoder: Option<PackedPanels>,
    /// Per layer.
    layers: Vec<LayerStepWeights>,
}

/// One layer's packed weights.
#[derive(Clone, Debug)]
struct LayerStepWeights {
    in_proj: PackedPanels,
    x_proj: PackedPanels,
    dt_proj: PackedPanels,
    out_proj: PackedPanels,
    /// `A = −exp(A_log)`: (E, N).
    a: Vec<f32>,
}

/// Streaming state: per layer the last K − 1 convolution inputs and the scan state, plus the scratch of
/// [`Mamba::step`] (so that a step does not allocate).
#[derive(Clone, Debug)]
pub struct MambaState {
    /// B.
    pub batch: usize,
    /// Time steps consumed since the zero state.
    pub steps: u64,
    /// Per layer: (K − 1, B, E); slot `s mod (K − 1)` holds the convolution input of step `s`. Zero-filled before
    /// the first step = causal padding.
    conv: Vec<Vec<f32>>,
    /// Per layer: the scan state (B, E, N).
    ssm: Vec<Vec<f32>>,
    /// Residual stream: (B, d_model).
    h: Vec<f32>,
    /// Normalised residual stream: (B, d_model).
    normed: Vec<f32>,
    /// `[x | z]`: (B, 2E).
    xz: Vec<f32>,
    /// SiLU(conv): (B, E).
    u: Vec<f32>,
    /// `[δ_in | B | C]`: (B, R + 2N).
    dbl: Vec<f32>,
    /// Δ: (B, E).
    delta: Vec<f32>,
    /// Gated scan output: (B, E).
    y: Vec<f32>,
    /// Mixer output: (B, d_model).
    out: Vec<f32>,
}

impl MambaState {
    /// Returns to the zero state (empty history) without reallocating.
    pub fn reset(&mut self) {
        self.steps = 0;
        self.conv.iter_mut().chain(self.ssm.iter_mut()).for_each(|v| v.iter_mut().for_each(|x| *x = 0.0));
    }
}

/// A Mamba network: optional encoder, L residual Mamba layers and a final RMSNorm.
#[derive(Clone, Debug)]
pub struct Mamba {
    cfg: MambaConfig,
    /// `encoder`, D → d_model with bias, when D ≠ d_model.
    encoder: Option<Linear>,
    layers: Vec<Layer>,
    /// `norm_f`.
    norm_f: RmsNorm,
    /// Packed weights of the step, rebuilt when `params_mut` may have changed the parameters.
    step_weights: Option<StepWeights>,
    cache: Option<Cache>,
}

impl Mamba {
    /// A network initialised as `mamba_ssm` (see the module doc) from `seed`, parameters named as the PyTorch module.
    pub fn new(cfg: &MambaConfig, seed: u64) -> Result<Mamba> {
        Mamba::with_prefix(cfg, seed, "")
    }

    /// As [`Mamba::new`], with every parameter name prefixed (e.g. `"mamba."` gives `mamba.layers.0.mixer.in_proj.weight`).
    pub fn with_prefix(cfg: &MambaConfig, seed: u64, prefix: &str) -> Result<Mamba> {
        cfg.validate()?;
        let dims = cfg.dims();
        let mut rng = rng_for(seed, streams::INIT);
        let encoder = (cfg.input != cfg.d_model).then(|| {
            let mut enc = Linear::new(&format!("{prefix}encoder"), cfg.input, cfg.d_model, true, &mut rng);
            enc.bias.iter_mut().for_each(|b| b.value.iter_mut().for_each(|v| *v = 0.0));
            enc
        });
        let layers = (0..cfg.layers)
            .map(|i| Layer {
                mixer: Mixer::new(&format!("{prefix}layers.{i}.mixer"), dims, cfg.layers, &mut rng),
                norm: RmsNorm::new(&format!("{prefix}layers.{i}.norm"), cfg.d_model),
            })
            .collect();
        let norm_f = RmsNorm::new(&format!("{prefix}norm_f"), cfg.d_model);
        Ok(Mamba { cfg: cfg.clone(), encoder, layers, norm_f, step_weights: None, cache: None })
    }

    /// The configuration.
    pub fn config(&self) -> &MambaConfig {
        &self.cfg
    }

    /// A zero state (empty history) for `b` sequences.
    pub fn zero_state(&self, b: usize) -> MambaState {
        let Dims { dm, di, n, k, .. } = self.cfg.dims();
        let layers = self.layers.len();
        MambaState {
            batch: b,
            steps: 0,
            conv: vec![vec![0.0; (k - 1) * b * di]; layers],
            ssm: vec![vec![0.0; b * di * n]; layers],
            h: vec![0.0; b * dm],
            normed: vec![0.0; b * dm],
            xz: vec![0.0; b * 2 * di],
            u: vec![0.0; b * di],
            dbl: vec![0.0; b * self.cfg.dims().proj()],
            delta: vec![0.0; b * di],
            y: vec![0.0; b * di],
            out: vec![0.0; b * dm],
        }
    }

    /// The residual stream at the input of layer 0 for `x (M, D)`: `encoder(x)` or `x` itself. (M, d_model).
    fn embed(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        match &self.encoder {
            Some(enc) => {
                let mut h = vec![0.0; m * self.cfg.d_model];
                enc.apply(x, m, &mut h)?;
                Ok(h)
            }
            None => Ok(x.to_vec()),
        }
    }

    fn check_input(&self, x: &[f32], b: usize, t: usize) -> Result<()> {
        check_len("mamba input (B, T, D)", &[b, t, self.cfg.input], x.len())?;
        if b == 0 || t == 0 {
            return Err(Error::Invalid(format!("mamba: empty batch (B = {b}, T = {t})")));
        }
        Ok(())
    }

    /// Runs the whole sequence `x (B, T, D)` from an empty history; returns `(B, T, d_model)` and keeps what
    /// [`Mamba::backward`] needs (see the module doc for how much). Mamba has no dropout: `dropout` is accepted
    /// for the common backbone interface and unused.
    pub fn forward(&mut self, x: &[f32], b: usize, t: usize, dropout: Option<&mut Rng>) -> Result<Vec<f32>> {
        let _ = dropout;
        self.cache = None;
        self.check_input(x, b, t)?;
        let dims = self.cfg.dims();
        let m = b * t;
        let mut h = self.embed(x, m)?; // (M, d_model)
        let mut caches = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let mut normed = vec![0.0; m * dims.dm]; // (M, d_model)
            let mut rstd = vec![0.0; m]; // (M)
            layer.norm.forward(&h, &mut normed, &mut rstd)?;
            let mut carry = Carry::zeros(b, dims);
            let MixerOut { mut out, kept } = layer.mixer.forward_tile(dims, &normed, (b, t), &layer.mixer.a(), &mut carry, true)?;
            out.iter_mut().zip(&h).for_each(|(o, x)| *o += x);
            let MixerKept { xz, dt_in, b_mat, c_mat, boundaries } = kept.expect("a training forward keeps its cache");
            caches.push(LayerCache { input: std::mem::replace(&mut h, out), rstd, xz, dt_in, b_mat, c_mat, boundaries });
        }
        let mut y = vec![0.0; m * dims.dm]; // (M, d_model)
        let mut last_rstd = vec![0.0; m];
        self.norm_f.forward(&h, &mut y, &mut last_rstd)?;
        let input = self.encoder.is_some().then(|| x.to_vec());
        self.cache = Some(Cache { b, t, input, layers: caches, last: h, last_rstd });
        Ok(y)
    }

    /// Inference over the whole sequence `x (B, T, D)` → `(B, T, d_model)`, keeping nothing: the sequence is
    /// processed in tiles of time steps through all layers (see the module doc); backward is impossible afterwards.
    pub fn infer(&mut self, x: &[f32], b: usize, t: usize) -> Result<Vec<f32>> {
        self.infer_tiled(x, b, t, (INFER_TILE_ROWS / b.max(1)).max(1))
    }

    /// [`Mamba::infer`] with tiles of `tile` time steps.
    fn infer_tiled(&mut self, x: &[f32], b: usize, t: usize, tile: usize) -> Result<Vec<f32>> {
        self.cache = None;
        self.check_input(x, b, t)?;
        let dims = self.cfg.dims();
        let d_in = self.cfg.input;
        let a: Vec<Vec<f32>> = self.layers.iter().map(|l| l.mixer.a()).collect();
        let mut carries: Vec<Carry> = self.layers.iter().map(|_| Carry::zeros(b, dims)).collect();
        let mut y = vec![0.0; b * t * dims.dm]; // (B, T, d_model)
        let mut t0 = 0;
        while t0 < t {
            let tl = tile.min(t - t0);
            let m = b * tl;
            let mut xt = vec![0.0; m * d_in]; // (B, tile, D)
            for bi in 0..b {
                xt[bi * tl * d_in..(bi + 1) * tl * d_in].copy_from_slice(&x[(bi * t + t0) * d_in..(bi * t + t0 + tl) * d_in]);
            }
            let mut h = self.embed(&xt, m)?; // (B·tile, d_model)
            let mut normed = vec![0.0; m * dims.dm]; // (B·tile, d_model)
            let mut rstd = vec![0.0; m];
            for ((layer, carry), a) in self.layers.iter().zip(&mut carries).zip(&a) {
                layer.norm.forward(&h, &mut normed, &mut rstd)?;
                let mixed = layer.mixer.forward_tile(dims, &normed, (b, tl), a, carry, false)?;
                h.iter_mut().zip(&mixed.out).for_each(|(v, o)| *v += o);
            }
            self.norm_f.forward(&h, &mut normed, &mut rstd)?;
            for bi in 0..b {
                y[(bi * t + t0) * dims.dm..(bi * t + t0 + tl) * dims.dm].copy_from_slice(&normed[bi * tl * dims.dm..(bi + 1) * tl * dims.dm]);
            }
            t0 += tl;
        }
        Ok(y)
    }

    /// Backward pass. `dy (B, T, d_model)` is the gradient of the loss with respect to the output of the last
    /// [`Mamba::forward`]; returns `dx (B, T, D)` and ACCUMULATES every parameter gradient.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let mut cache = self.cache.take().ok_or_else(|| Error::Invalid("mamba backward called without a forward pass (or after infer())".into()))?;
        let (b, t) = (cache.b, cache.t);
        if let Err(e) = check_len("mamba output gradient (B, T, d_model)", &[b, t, self.cfg.d_model], dy.len()) {
            self.cache = Some(cache);
            return Err(e);
        }
        let dims = self.cfg.dims();
        let m = b * t;
        let mut dh = vec![0.0; m * dims.dm]; // (M, d_model): ∂L/∂(residual stream)
        self.norm_f.backward(&cache.last, &cache.last_rstd, dy, &mut dh)?;
        for layer in self.layers.iter_mut().rev() {
            // Popping frees each layer's cache as soon as it is used.
            let lc = cache.layers.pop().expect("one cache per layer");
            let mut normed = vec![0.0; m * dims.dm]; // (M, d_model)
            layer.norm.apply_with_rstd(&lc.input, &lc.rstd, &mut normed)?;
            let dnormed = layer.mixer.backward(dims, b, t, &normed, &lc, &dh)?;
            layer.norm.backward(&lc.input, &lc.rstd, &dnormed, &mut dh)?;
        }
        match (&mut self.encoder, &cache.input) {
            (Some(enc), Some(x)) => {
                let d_in = self.cfg.input;
                matmul(dims.dm, d_in, m, 1.0, &dh, Trans::T, x, Trans::N, 1.0, &mut enc.weight.grad);
                if let Some(bias) = &mut enc.bias {
                    add_column_sums(&dh, dims.dm, &mut bias.grad);
                }
                let mut dx = vec![0.0; m * d_in]; // (B, T, D)
                matmul(m, d_in, dims.dm, 1.0, &dh, Trans::N, &enc.weight.value, Trans::N, 0.0, &mut dx);
                Ok(dx)
            }
            _ => Ok(dh),
        }
    }

    /// Packs the weights for [`Mamba::step`].
    fn pack_step_weights(&self) -> StepWeights {
        let Dims { dm, di, r, .. } = self.cfg.dims();
        let p = self.cfg.dims().proj();
        StepWeights {
            encoder: self.encoder.as_ref().map(|e| PackedPanels::from_transposed(&e.weight.value, dm, self.cfg.input)),
            layers: self
                .layers
                .iter()
                .map(|l| LayerStepWeights {
                    in_proj: PackedPanels::from_transposed(&l.mixer.in_proj.weight.value, 2 * di, dm),
                    x_proj: PackedPanels::from_transposed(&l.mixer.x_proj.weight.value, p, di),
                    dt_proj: PackedPanels::from_transposed(&l.mixer.dt_proj.weight.value, di, r),
                    out_proj: PackedPanels::from_transposed(&l.mixer.out_proj.weight.value, dm, di),
                    a: l.mixer.a(),
                })
                .collect(),
        }
    }

    /// One streaming step: `x_t (B, D)` → `y_t (B, d_model)`, the output at the next time step of the sequences
    /// whose history `state` holds. Constant cost per token; allocation-free, except for packing the weights on
    /// the first step after construction or `params_mut` (which may have changed them).
    pub fn step(&mut self, x_t: &[f32], state: &mut MambaState, y_t: &mut [f32]) -> Result<()> {
        let Dims { dm, di, n, r, k } = self.cfg.dims();
        let p = self.cfg.dims().proj();
        let b = state.batch;
        let fits = state.conv.len() == self.layers.len()
            && state.ssm.len() == self.layers.len()
            && state.conv.iter().all(|c| c.len() == (k - 1) * b * di)
            && state.ssm.iter().all(|s| s.len() == b * di * n)
            && state.xz.len() == b * 2 * di
            && state.dbl.len() == b * p
            && state.h.len() == b * dm;
        if !fits {
            return Err(Error::Invalid(format!("mamba state is for batch {b} of another network: build it with zero_state")));
        }
        check_len("mamba step input (B, D)", &[b, self.cfg.input], x_t.len())?;
        check_len("mamba step output (B, d_model)", &[b, dm], y_t.len())?;
        if self.step_weights.is_none() {
            self.step_weights = Some(self.pack_step_weights());
        }
        let weights = self.step_weights.as_ref().expect("packed above");
        let MambaState { steps, conv, ssm, h, normed, xz, u, dbl, delta, y, out, .. } = state;
        match (&weights.encoder, &self.encoder) {
            (Some(packed), Some(enc)) => {
                for row in h.chunks_exact_mut(dm) {
                    row.copy_from_slice(&enc.bias.as_ref().expect("the encoder has a bias").value);
                }
                packed_matmul_acc(b, x_t, self.cfg.input, packed, h, dm);
            }
            _ => h.copy_from_slice(x_t),
        }
        let km1 = k - 1;
        // Ring slot of the oldest input (K − 1 steps ago), which this step's input replaces.
        let oldest = if km1 > 0 { (*steps % km1 as u64) as usize } else { 0 };
        for (li, (layer, lw)) in self.layers.iter().zip(&weights.layers).enumerate() {
            let mixer = &layer.mixer;
            for (hr, nr) in h.chunks_exact(dm).zip(normed.chunks_exact_mut(dm)) {
                rms_row(hr, &layer.norm.weight.value, layer.norm.eps, nr);
            }
            xz.iter_mut().for_each(|v| *v = 0.0);
            packed_matmul_acc(b, normed, dm, &lw.in_proj, xz, 2 * di);
            // Convolution over [ring (oldest first) | this input], then SiLU.
            let ring = &mut conv[li];
            for bi in 0..b {
                let x = &xz[bi * 2 * di..bi * 2 * di + di];
                let ur = &mut u[bi * di..(bi + 1) * di];
                for c in 0..di {
                    let w = &mixer.conv_weight.value[c * k..(c + 1) * k];
                    let mut v = mixer.conv_bias.value[c] + w[km1] * x[c];
                    for (kk, &wk) in w[..km1].iter().enumerate() {
                        v += wk * ring[(((oldest + kk) % km1) * b + bi) * di + c];
                    }
                    ur[c] = silu(v);
                }
                if km1 > 0 {
                    ring[(oldest * b + bi) * di..(oldest * b + bi + 1) * di].copy_from_slice(x);
                }
            }
            dbl.iter_mut().for_each(|v| *v = 0.0);
            packed_matmul_acc(b, u, di, &lw.x_proj, dbl, p);
            for row in delta.chunks_exact_mut(di) {
                row.copy_from_slice(&mixer.dt_proj.bias.as_ref().expect("dt_proj has a bias").value);
            }
            packed_matmul_acc(b, dbl, p, &lw.dt_proj, delta, di);
            delta.iter_mut().for_each(|v| *v = softplus(*v));
            // The scan step, and the gate.
            let st = &mut ssm[li];
            for bi in 0..b {
                let (b_row, c_row) = (&dbl[bi * p + r..bi * p + r + n], &dbl[bi * p + r + n..(bi + 1) * p]);
                for c in 0..di {
                    let (dl, uc) = (delta[bi * di + c], u[bi * di + c]);
                    let (hs, a) = (&mut st[(bi * di + c) * n..(bi * di + c + 1) * n], &lw.a[c * n..(c + 1) * n]);
                    let mut acc = 0.0f32;
                    for s in 0..n {
                        hs[s] = exp(dl * a[s]) * hs[s] + dl * b_row[s] * uc;
                        acc += c_row[s] * hs[s];
                    }
                    let z = xz[bi * 2 * di + di + c];
                    y[bi * di + c] = (acc + mixer.d_skip.value[c] * uc) * silu(z);
                }
            }
            out.iter_mut().for_each(|v| *v = 0.0);
            packed_matmul_acc(b, y, di, &lw.out_proj, out, dm);
            h.iter_mut().zip(out.iter()).for_each(|(v, o)| *v += o);
        }
        for (hr, yr) in h.chunks_exact(dm).zip(y_t.chunks_exact_mut(dm)) {
            rms_row(hr, &self.norm_f.weight.value, self.norm_f.eps, yr);
        }
        *steps += 1;
        Ok(())
    }
}

impl Module for Mamba {
    fn params(&self) -> Vec<&Param> {
        let mut v: Vec<&Param> = Vec::new();
        if let Some(enc) = &self.encoder {
            v.extend(enc.params());
        }
        for layer in &self.layers {
            let m = &layer.mixer;
            v.extend([&m.a_log, &m.d_skip, &m.in_proj.weight, &m.conv_weight, &m.conv_bias, &m.x_proj.weight, &m.dt_proj.weight]);
            v.extend(m.dt_proj.bias.as_ref());
            v.extend([&m.out_proj.weight, &layer.norm.weight]);
        }
        v.push(&self.norm_f.weight);
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        // The caller may change the values: re-pack before the next step.
        self.step_weights = None;
        let mut v: Vec<&mut Param> = Vec::new();
        if let Some(enc) = &mut self.encoder {
            v.extend(enc.params_mut());
        }
        for layer in &mut self.layers {
            let m = &mut layer.mixer;
            v.extend([&mut m.a_log, &mut m.d_skip, &mut m.in_proj.weight, &mut m.conv_weight, &mut m.conv_bias, &mut m.x_proj.weight, &mut m.dt_proj.weight]);
            v.extend(m.dt_proj.bias.as_mut());
            v.extend([&mut m.out_proj.weight, &mut layer.norm.weight]);
        }
        v.push(&mut self.norm_f.weight);
        v
    }
}

#[cfg(test)]
mod tests;
