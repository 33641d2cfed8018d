//! The fused dilated causal 1-D convolution of the TCN, forward and backward, on GEMMs without im2col.
//!
//! A causal convolution with kernel size K and dilation d (van den Oord et al. 2016, WaveNet; Bai et al. 2018,
//! Sec. 3.2) computes, per sequence,
//!
//! `z[t, o] = b[o] + Σ_{k<K} Σ_c w[o, c, k] · x[t − (K−1−k)·d, c]`,  with `x[t < 0] = 0`,
//!
//! which is exactly PyTorch's `Conv1d(padding=(K−1)·d, dilation=d)` followed by locuslab's `Chomp1d` (drop the
//! last `(K−1)·d` outputs) — but without the chomp's failure at K = 1, where `x[:, :, :-0]` is empty.
//!
//! **Layout.** Activations live channels-last in a left-padded buffer ([`Geometry`]): each sequence is
//! `P + T` rows of `C` channels, the first `P ≥ (K−1)·d` rows zero. Seen as one `(B·(P+T), C)` matrix, the
//! input row that tap `k` reads for output row `r` is row `r − (K−1−k)·d`: a tap is a *row offset*. So one
//! convolution is K GEMMs, each over all `B·(P+T) − P` rows at once (rows that land in the padding of the
//! next sequence are computed and discarded — `(B−1)·P` rows, a few percent at the usual T), straight from
//! the activation buffer, with no im2col copy. The backward pass is the same trick transposed: per tap one
//! GEMM for the weight gradient (`dW_k += dZᵀ · X_k`) and one for the input gradient (`dX_k += dZ · W_k`).
//!
//! **Weight normalisation** (Salimans & Kingma 2016, Eq. 2; PyTorch's `torch.nn.utils.weight_norm` with
//! `dim = 0`): `w[o] = g[o] · v[o] / ‖v[o]‖`, the norm over `(C_in, K)`. It is applied once per forward pass
//! into a tap-major copy `(K, C_out, C_in)` — the layout the per-tap GEMMs read — and its backward runs once
//! per backward pass on the accumulated `dw`.

use rayon::prelude::*;

use crate::linalg::{matmul, packed_matmul_acc, PackedPanels, Trans};
use crate::param::Param;
use crate::rng::{fill_normal, fill_uniform, Rng};

/// Elements of a pointwise pass above which it is split over sequences on the rayon pool.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// Shape of a left-padded, channels-last activation buffer `(B, P + T, C)`: sequence `b`, time `t` lives in
/// row `b·(P+T) + P + t`; the `P` rows in front of every sequence are the causal zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// B.
    pub batch: usize,
    /// T.
    pub time: usize,
    /// P, zero rows in front of every sequence.
    pub pad: usize,
}

impl Geometry {
    /// Rows per sequence, `P + T`.
    pub fn span(&self) -> usize {
        self.pad + self.time
    }

    /// Rows of the whole buffer, `B·(P+T)`.
    pub fn rows(&self) -> usize {
        self.batch * self.span()
    }

    /// Row of sequence `b` at time `t`.
    pub fn row(&self, b: usize, t: usize) -> usize {
        b * self.span() + self.pad + t
    }

    /// Rows covered by each per-tap GEMM: `[P, B·(P+T))`.
    pub fn gemm_rows(&self) -> usize {
        self.rows().saturating_sub(self.pad)
    }
}

/// `out (B, P+T, C_out) = Σ_k X_k · W_kᵀ` on the rows `[P, B·(P+T))`, where `X_k` is `x (B, P+T, C_in)` shifted
/// up by `(K−1−k)·d` rows and `w_taps (K, C_out, C_in)` holds `W_k = w[:, :, k]`. No bias. Rows of `out` in the
/// padding of sequences `1..B` receive values that belong to no output; the caller overwrites them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_forward(x: &[f32], geom: Geometry, c_in: usize, w_taps: &[f32], c_out: usize, kernel: usize, dilation: usize, out: &mut [f32]) {
    debug_assert!(geom.pad >= (kernel - 1) * dilation, "padding {} is shorter than the kernel's reach", geom.pad);
    let m = geom.gemm_rows();
    if m == 0 {
        return;
    }
    for tap in 0..kernel {
        let shift = (kernel - 1 - tap) * dilation;
        let x_tap = &x[(geom.pad - shift) * c_in..]; // (m, C_in) rows r − shift
        let w_tap = &w_taps[tap * c_out * c_in..(tap + 1) * c_out * c_in]; // (C_out, C_in)
        let beta = if tap == 0 { 0.0 } else { 1.0 };
        matmul(m, c_out, c_in, 1.0, x_tap, Trans::N, w_tap, Trans::T, beta, &mut out[geom.pad * c_out..]);
    }
}

/// Backward of [`conv_forward`] plus its bias. `dz (B, P+T, C_out)` is the gradient with respect to the
/// pre-activation and MUST be zero in every padding row. ACCUMULATES `dw_taps (K, C_out, C_in) += dZᵀ·X_k`,
/// `db (C_out) += Σ_rows dz` and `dx (B, P+T, C_in) += dZ·W_k` (shifted); rows of `dx` in the padding receive
/// gradients of the zero padding, which the caller ignores.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_backward(
    dz: &[f32],
    x: &[f32],
    geom: Geometry,
    c_in: usize,
    w_taps: &[f32],
    c_out: usize,
    kernel: usize,
    dilation: usize,
    dw_taps: &mut [f32],
    db: &mut [f32],
    dx: &mut [f32],
) {
    let m = geom.gemm_rows();
    if m == 0 {
        return;
    }
    let dz_rows = &dz[geom.pad * c_out..]; // (m, C_out)
    for tap in 0..kernel {
        let shift = (kernel - 1 - tap) * dilation;
        let start = (geom.pad - shift) * c_in;
        let w_tap = &w_taps[tap * c_out * c_in..(tap + 1) * c_out * c_in]; // (C_out, C_in)
                                                                           // dW_k (C_out, C_in) += dZᵀ (C_out, m) · X_k (m, C_in)
        matmul(c_out, c_in, m, 1.0, dz_rows, Trans::T, &x[start..], Trans::N, 1.0, &mut dw_taps[tap * c_out * c_in..(tap + 1) * c_out * c_in]);
        // dX_k (m, C_in) += dZ (m, C_out) · W_k (C_out, C_in)
        matmul(m, c_in, c_out, 1.0, dz_rows, Trans::N, w_tap, Trans::N, 1.0, &mut dx[start..]);
    }
    column_sums_acc(dz, geom, c_out, db);
}

/// `out (C) += Σ over every row of m (B, P+T, C)`, per sequence in parallel, accumulated in f64.
pub(crate) fn column_sums_acc(m: &[f32], geom: Geometry, c: usize, out: &mut [f32]) {
    let span = geom.span() * c;
    if span == 0 || geom.batch == 0 {
        return;
    }
    let per_sequence = |seq: &[f32]| {
        let mut s = vec![0.0f64; c];
        for row in seq.chunks_exact(c) {
            s.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64);
        }
        s
    };
    let add = |mut a: Vec<f64>, b: Vec<f64>| {
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
        a
    };
    let sums = if m.len() >= PARALLEL_MIN && geom.batch > 1 {
        m.par_chunks(span).map(per_sequence).reduce(|| vec![0.0f64; c], add)
    } else {
        m.chunks(span).map(per_sequence).fold(vec![0.0f64; c], add)
    };
    out.iter_mut().zip(&sums).for_each(|(o, s)| *o += *s as f32);
}

/// A weight-normalised dilated causal convolution, locuslab's `weight_norm(nn.Conv1d(C_in, C_out, K,
/// dilation=d, padding=(K−1)·d))` + `Chomp1d`, with the parameter names of its `state_dict`.
#[derive(Clone, Debug)]
pub(crate) struct WeightNormConv {
    /// `{name}.weight_g`: (C_out, 1, 1), the norm of each output channel's filter.
    pub weight_g: Param,
    /// `{name}.weight_v`: (C_out, C_in, K), the filter direction.
    pub weight_v: Param,
    /// `{name}.bias`: (C_out).
    pub bias: Param,
    /// C_in.
    pub c_in: usize,
    /// C_out.
    pub c_out: usize,
    /// K.
    pub kernel: usize,
    /// d.
    pub dilation: usize,
    /// Effective weight `w = g·v/‖v‖`, tap-major for the per-tap GEMMs: (K, C_out, C_in).
    w_taps: Vec<f32>,
    /// `‖v[o]‖` over (C_in, K): (C_out).
    norms: Vec<f32>,
    /// Gradient with respect to `w`, tap-major, filled by one backward pass: (K, C_out, C_in).
    dw_taps: Vec<f32>,
    /// `w` as a `(K·C_in, C_out)` matrix, row `k·C_in + c` = `w[:, c, k]`, packed for the streaming step.
    packed: PackedPanels,
}

impl WeightNormConv {
    /// A convolution named `{name}.weight_g` / `.weight_v` / `.bias`, initialised as locuslab's `TemporalBlock`
    /// really is: `v` and the bias as PyTorch's `Conv1d` default, U(−1/√(C_in·K), 1/√(C_in·K)), and `g = ‖v‖` (as
    /// `weight_norm` sets it, so `w = v` at init). Draws `v`, then the bias. (locuslab's `init_weights` writes
    /// N(0, 0.01²) into `conv1.weight.data`, but `weight_norm` recomputes `weight` from `weight_g` and `weight_v`
    /// before every forward, so that draw never reaches the model; filters that small would shrink every level's
    /// signal about tenfold and the network would stay at the trivial baseline of the adding and copy tasks.)
    pub fn new(name: &str, c_in: usize, c_out: usize, kernel: usize, dilation: usize, rng: &mut Rng) -> WeightNormConv {
        let bound = 1.0 / ((c_in * kernel) as f32).sqrt();
        let mut weight_v = Param::zeros(format!("{name}.weight_v"), &[c_out, c_in, kernel]);
        fill_uniform(rng, &mut weight_v.value, bound);
        let mut bias = Param::zeros(format!("{name}.bias"), &[c_out]);
        fill_uniform(rng, &mut bias.value, bound);
        let mut conv = WeightNormConv {
            weight_g: Param::zeros(format!("{name}.weight_g"), &[c_out, 1, 1]),
            weight_v,
            bias,
            c_in,
            c_out,
            kernel,
            dilation,
            w_taps: vec![0.0; kernel * c_out * c_in],
            norms: vec![0.0; c_out],
            dw_taps: vec![0.0; kernel * c_out * c_in],
            packed: PackedPanels::default(),
        };
        conv.normalise();
        conv.weight_g.value.copy_from_slice(&conv.norms);
        conv.normalise();
        conv
    }

    /// The causal reach of the filter, `(K−1)·d` past inputs.
    pub fn reach(&self) -> usize {
        (self.kernel - 1) * self.dilation
    }

    /// Weight normalisation forward: `norms[o] = ‖v[o]‖`, `w_taps[k][o][c] = g[o]·v[o][c][k] / norms[o]`.
    /// A zero filter (`‖v‖ = 0`) gives `w = 0` instead of PyTorch's NaN.
    pub fn normalise(&mut self) {
        let (c_in, c_out, k) = (self.c_in, self.c_out, self.kernel);
        for o in 0..c_out {
            let v = &self.weight_v.value[o * c_in * k..(o + 1) * c_in * k]; // (C_in, K)
            let norm = v.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
            self.norms[o] = norm as f32;
            let scale = if norm > 0.0 { (self.weight_g.value[o] as f64 / norm) as f32 } else { 0.0 };
            for c in 0..c_in {
                for tap in 0..k {
                    self.w_taps[(tap * c_out + o) * c_in + c] = scale * v[c * k + tap];
                }
            }
        }
    }

    /// Packs the current `w` for [`WeightNormConv::step`] (allocates; call after [`WeightNormConv::normalise`]).
    pub fn pack(&mut self) {
        let (c_in, c_out, k) = (self.c_in, self.c_out, self.kernel);
        // (C_out, K·C_in): row o is [w[o, :, 0], w[o, :, 1], ...]; its transpose is the step's weight.
        let mut rows = vec![0.0f32; c_out * k * c_in];
        for tap in 0..k {
            for o in 0..c_out {
                rows[o * k * c_in + tap * c_in..o * k * c_in + (tap + 1) * c_in]
                    .copy_from_slice(&self.w_taps[(tap * c_out + o) * c_in..(tap * c_out + o + 1) * c_in]);
            }
        }
        self.packed = PackedPanels::from_transposed(&rows, c_out, k * c_in);
    }

    /// `out (B, P+T, C_out) = conv(x (B, P+T, C_in))` without the bias on the rows `[P, B·(P+T))`.
    pub fn forward(&self, x: &[f32], geom: Geometry, out: &mut [f32]) {
        conv_forward(x, geom, self.c_in, &self.w_taps, self.c_out, self.kernel, self.dilation, out);
    }

    /// Backward from `dz (B, P+T, C_out)` (zero in the padding rows) for the input `x (B, P+T, C_in)` of the
    /// last forward: ACCUMULATES `dx (B, P+T, C_in)` and the gradients of `bias`, `weight_g` and `weight_v`.
    pub fn backward(&mut self, dz: &[f32], x: &[f32], geom: Geometry, dx: &mut [f32]) {
        self.dw_taps.iter_mut().for_each(|v| *v = 0.0);
        conv_backward(dz, x, geom, self.c_in, &self.w_taps, self.c_out, self.kernel, self.dilation, &mut self.dw_taps, &mut self.bias.grad, dx);
        self.weight_norm_backward();
    }

    /// Weight normalisation backward (PyTorch's `_weight_norm_interface_backward`, dim 0), from `dw_taps`:
    /// `dg[o] = ⟨dw[o], v[o]⟩ / ‖v[o]‖` and `dv[o] = (g[o]/‖v[o]‖) · (dw[o] − v[o] · dg[o]/‖v[o]‖)`, accumulated.
    fn weight_norm_backward(&mut self) {
        let (c_in, c_out, k) = (self.c_in, self.c_out, self.kernel);
        for o in 0..c_out {
            let norm = self.norms[o] as f64;
            if norm == 0.0 {
                continue;
            }
            let v = &self.weight_v.value[o * c_in * k..(o + 1) * c_in * k]; // (C_in, K)
            let dw = |c: usize, tap: usize| self.dw_taps[(tap * c_out + o) * c_in + c] as f64;
            let mut dot = 0.0f64;
            for c in 0..c_in {
                for tap in 0..k {
                    dot += dw(c, tap) * v[c * k + tap] as f64;
                }
            }
            let dg = dot / norm;
            self.weight_g.grad[o] += dg as f32;
            let g_over_norm = self.weight_g.value[o] as f64 / norm;
            let dv = &mut self.weight_v.grad[o * c_in * k..(o + 1) * c_in * k];
            for c in 0..c_in {
                for tap in 0..k {
                    dv[c * k + tap] += (g_over_norm * (dw(c, tap) - v[c * k + tap] as f64 * dg / norm)) as f32;
                }
            }
        }
    }

    /// One streaming step: `out (B, C_out) = b + Σ_k x_{t−(K−1−k)·d} · W_kᵀ` for the current input
    /// `x_t (B, C_in)`, reading the past inputs from `ring ((K−1)·d, B, C_in)` — slot `s mod R` holds the input
    /// of step `s` — and then storing `x_t` in slot `step mod R`. `gather (≥ B·K·C_in)` is scratch. Allocation-free
    /// (uses the weights of the last [`WeightNormConv::pack`]).
    pub fn step(&self, x_t: &[f32], ring: &mut [f32], step: u64, gather: &mut [f32], out: &mut [f32]) {
        let (c_in, c_out, k, reach) = (self.c_in, self.c_out, self.kernel, self.reach());
        let b = x_t.len() / c_in;
        let now = if reach > 0 { (step % reach as u64) as usize } else { 0 };
        let width = k * c_in;
        for bi in 0..b {
            for tap in 0..k {
                let shift = (k - 1 - tap) * self.dilation;
                let src = if shift == 0 {
                    &x_t[bi * c_in..(bi + 1) * c_in]
                } else {
                    let slot = (now + reach - shift) % reach;
                    &ring[(slot * b + bi) * c_in..(slot * b + bi + 1) * c_in]
                };
                gather[bi * width + tap * c_in..bi * width + (tap + 1) * c_in].copy_from_slice(src);
            }
        }
        for row in out.chunks_exact_mut(c_out) {
            row.copy_from_slice(&self.bias.value);
        }
        packed_matmul_acc(b, gather, width, &self.packed, out, c_out);
        if reach > 0 {
            ring[now * b * c_in..(now + 1) * b * c_in].copy_from_slice(x_t);
        }
    }
}

/// The 1×1 convolution on the skip path when the channel count changes, locuslab's `downsample =
/// nn.Conv1d(C_in, C_out, 1)` (not weight-normalised).
#[derive(Clone, Debug)]
pub(crate) struct Downsample {
    /// `{name}.weight`: (C_out, C_in, 1) — as a matrix (C_out, C_in), which is also its tap-major layout.
    pub weight: Param,
    /// `{name}.bias`: (C_out).
    pub bias: Param,
    /// C_in.
    pub c_in: usize,
    /// C_out.
    pub c_out: usize,
    /// `weightᵀ (C_in, C_out)` packed for the streaming step.
    packed: PackedPanels,
}

impl Downsample {
    /// A 1×1 convolution named `{name}.weight` / `.bias`: weight ~ N(0, 0.01²) (locuslab's `init_weights`),
    /// bias as PyTorch's `Conv1d` default, U(−1/√C_in, 1/√C_in). Draws the weight, then the bias.
    pub fn new(name: &str, c_in: usize, c_out: usize, rng: &mut Rng) -> Downsample {
        let mut weight = Param::zeros(format!("{name}.weight"), &[c_out, c_in, 1]);
        fill_normal(rng, &mut weight.value, 0.01);
        let mut bias = Param::zeros(format!("{name}.bias"), &[c_out]);
        fill_uniform(rng, &mut bias.value, 1.0 / (c_in as f32).sqrt());
        Downsample { weight, bias, c_in, c_out, packed: PackedPanels::default() }
    }

    /// Packs the weight for [`Downsample::step`] (allocates).
    pub fn pack(&mut self) {
        self.packed = PackedPanels::from_transposed(&self.weight.value, self.c_out, self.c_in);
    }

    /// `out (B, P+T, C_out) = x (B, P+T, C_in) · Wᵀ` on the rows `[P, B·(P+T))`, without the bias.
    pub fn forward(&self, x: &[f32], geom: Geometry, out: &mut [f32]) {
        conv_forward(x, geom, self.c_in, &self.weight.value, self.c_out, 1, 1, out);
    }

    /// Backward from `dz (B, P+T, C_out)` (zero in the padding rows): ACCUMULATES `dx (B, P+T, C_in)` and the
    /// weight and bias gradients.
    pub fn backward(&mut self, dz: &[f32], x: &[f32], geom: Geometry, dx: &mut [f32]) {
        conv_backward(dz, x, geom, self.c_in, &self.weight.value, self.c_out, 1, 1, &mut self.weight.grad, &mut self.bias.grad, dx);
    }

    /// `out (B, C_out) = b + x_t (B, C_in) · Wᵀ` for one step (uses the weights of the last [`Downsample::pack`]).
    pub fn step(&self, x_t: &[f32], out: &mut [f32]) {
        for row in out.chunks_exact_mut(self.c_out) {
            row.copy_from_slice(&self.bias.value);
        }
        packed_matmul_acc(x_t.len() / self.c_in, x_t, self.c_in, &self.packed, out, self.c_out);
    }
}
