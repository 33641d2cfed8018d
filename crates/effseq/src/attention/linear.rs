//! Linear attention (Katharopoulos, Vyas, Pappas & Fleuret 2020, "Transformers are RNNs: Fast Autoregressive
//! Transformers with Linear Attention"): the kernels behind the Linear Transformer and, fed with FAVOR+ features
//! ([`super::favor`]), the Performer.
//!
//! With a positive feature map φ (eq. 7: `φ(x) = elu(x) + 1`, [`elu_feature_map`]) the attention of query `i`
//! is (eq. 4-6)
//!
//! `out_i = Σ_j (φ(q_i)·φ(k_j)) v_j / Σ_j φ(q_i)·φ(k_j) = (S^T φ(q_i)) / (z·φ(q_i))`,
//! `S = Σ_j φ(k_j) v_jᵀ (F×E)`, `z = Σ_j φ(k_j) (F)`.
//!
//! Every kernel here takes the already feature-mapped queries `fq = φ(q)` and keys `fk = φ(k)`, head-major:
//! `fq, fk (BH, T, F)`, `v (BH, T, E)`, `BH = B·H`, every `(b, h)` independent (parallel over BH with rayon).
//! The denominator carries an `eps`: `den_i = z_i·fq_i + eps`.
//!
//! * **Causal** (eq. 8-9, Algorithm 1): `S_i = decay_i S_{i-1} + fk_i v_iᵀ`, `z_i = decay_i z_{i-1} + fk_i`,
//!   `out_i = S_iᵀ fq_i / den_i`. `decay (BH, T)` in `[0, 1]` (`None` = 1, plain linear attention) lets the
//!   Performer rescale the state when its causal key stabiliser (a running max) grows; it is a constant for
//!   differentiation. The kernel is fused: the forward pass keeps only the running `F×E` state of each
//!   `(b, h)` (one rank-1 update and one mat-vec per step, in a single pass over the state held in L1; two steps
//!   per pass, so each state element is loaded and stored once per two steps) and stores `out` and `den`; the
//!   backward pass runs a forward sweep for `dfq` and reverse sweeps for `dfk` and `dv` (Algorithm 1), so memory
//!   is `O(T·(F+E))`, never `O(T·F·E)`. The normaliser is handled as an extra value column of ones: with
//!   `v'_j = [v_j, 1]` and `S' = [S, z]`, `[num_i, den_i − eps] = S'_iᵀ fq_i`, and the upstream gradient of that
//!   extended row is `g'_i = [dout_i / den_i, −(dout_i·out_i) / den_i]`. Then `dfq_i = S'_i g'_i`, and with the
//!   reverse state `R'_j = fq_j g'_jᵀ + decay_{j+1} R'_{j+1}`: `dfk_j = R'_j v'_j`, `dv_j = (R'_jᵀ fk_j)[..E]`.
//!   `R'` is swept twice, once stored transposed for `dfk` and once as is for `dv`, so that both products are
//!   sums of state rows (no horizontal sums); the ones column is an `O(T·F)` pass of its own.
//!   A chunked form (within a chunk of C steps `out = mask(fq fkᵀ) v + fq S` by GEMM, then `S += fkᵀ v`) was
//!   measured against this per-step sweep and was 2.3× slower at its best chunk (C = 32; F = E = 64, BH = 4,
//!   T = 4096 and BH = 32, T = 1024, one thread; the ignored test `timing_of_causal_kernels`), so the sweep is
//!   what runs.
//! * **Bidirectional** (eq. 5): `S = Σ_{j < len_b} fk_j v_jᵀ`, `z = Σ_{j < len_b} fk_j`, for every query;
//!   padded keys (`j ≥ len_b`) contribute nothing and get zero gradients. Plain GEMMs.
//! * **RNN mode** (eq. 18-20): [`LinearState`] and [`causal_step`], one token at a time with the same
//!   arithmetic as [`causal_forward`] (bitwise the same rows).

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::linalg::{matmul, Trans};
use crate::math::exp;

/// Columns of the state kept in registers per pass of the step kernels (two AVX-512 / four AVX2 registers).
const BLOCK: usize = 32;

/// `elu(x) + 1` elementwise (eq. 7): `x + 1` for `x > 0`, `e^x` otherwise — positive, so usable as a
/// linear-attention feature map. `out` has the length of `x`.
pub fn elu_feature_map(x: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("elu_feature_map out", &[x.len()], out.len())?;
    for (o, &xv) in out.iter_mut().zip(x) {
        *o = if xv > 0.0 { xv + 1.0 } else { exp(xv) };
    }
    Ok(())
}

/// Backward of [`elu_feature_map`]: `dx = dout · (1 if x > 0 else e^x)`; `dx` is OVERWRITTEN.
pub fn elu_feature_map_backward(x: &[f32], dout: &[f32], dx: &mut [f32]) -> Result<()> {
    check_len("elu_feature_map_backward dout", &[x.len()], dout.len())?;
    check_len("elu_feature_map_backward dx", &[x.len()], dx.len())?;
    for ((d, &xv), &g) in dx.iter_mut().zip(x).zip(dout) {
        *d = if xv > 0.0 { g } else { g * exp(xv) };
    }
    Ok(())
}

/// Causal linear attention, forward: `out (BH, T, E)` and the denominators `den (BH, T)` (needed by
/// [`causal_backward`]) from `fq, fk (BH, T, F)`, `v (BH, T, E)` and the optional state decay `(BH, T)`.
#[allow(clippy::too_many_arguments)]
pub fn causal_forward(
    fq: &[f32],
    fk: &[f32],
    v: &[f32],
    decay: Option<&[f32]>,
    bh: usize,
    t: usize,
    f: usize,
    e: usize,
    eps: f32,
    out: &mut [f32],
    den: &mut [f32],
) -> Result<()> {
    check_inputs("causal_forward", fq, fk, v, bh, t, f, e)?;
    check_decay("causal_forward decay (BH, T)", decay, bh * t)?;
    check_eps(eps)?;
    check_len("causal_forward out (BH, T, E)", &[bh, t, e], out.len())?;
    check_len("causal_forward den (BH, T)", &[bh, t], den.len())?;
    if t == 0 {
        return Ok(());
    }
    out.par_chunks_mut(t * e).zip(den.par_chunks_mut(t)).enumerate().for_each(|(unit, (out, den))| {
        let fq = &fq[unit * t * f..(unit + 1) * t * f]; // (T, F)
        let fk = &fk[unit * t * f..(unit + 1) * t * f]; // (T, F)
        let v = &v[unit * t * e..(unit + 1) * t * e]; // (T, E)
        let decay = decay.map(|d| &d[unit * t..(unit + 1) * t]); // (T)
                                                                 // Per block of steps: the normaliser column (O(T·F)), then the F×E state in one fused sweep, then the
                                                                 // division; the block's inputs are still in cache for the second pass.
        let mut z = vec![0.0f32; f]; // (F) running normaliser
        let mut s = vec![0.0f32; f * e]; // (F, E) running state
        for r in time_blocks(t, Direction::Forward) {
            for i in r.clone() {
                let (q, k) = (&fq[i * f..(i + 1) * f], &fk[i * f..(i + 1) * f]);
                den[i] = match decay {
                    Some(d) => normaliser_step::<true>(&mut z, k, q, d[i], eps),
                    None => normaliser_step::<false>(&mut z, k, q, 1.0, eps),
                };
            }
            let (fk_r, v_r, fq_r) = (&fk[r.start * f..r.end * f], &v[r.start * e..r.end * e], &fq[r.start * f..r.end * f]);
            let out_r = &mut out[r.start * e..r.end * e];
            match decay {
                Some(d) => sweep::<true>(&mut s, f, e, fk_r, v_r, fq_r, &d[r.clone()], Direction::Forward, out_r),
                None => sweep::<false>(&mut s, f, e, fk_r, v_r, fq_r, &[], Direction::Forward, out_r),
            }
            for (out_i, &den_i) in out_r.chunks_exact_mut(e).zip(&den[r]) {
                let inv = 1.0 / den_i;
                out_i.iter_mut().for_each(|o| *o *= inv);
            }
        }
    });
    Ok(())
}

/// Causal linear attention, backward (Algorithm 1): from the forward inputs, its `out (BH, T, E)` and
/// `den (BH, T)`, and `dout (BH, T, E)`, writes `dfq, dfk (BH, T, F)` and `dv (BH, T, E)` (OVERWRITTEN).
/// The decay gets no gradient. Extra memory per `(b, h)` in flight: `O(T·E + F·E)` (`dout / den` and one state).
#[allow(clippy::too_many_arguments)]
pub fn causal_backward(
    fq: &[f32],
    fk: &[f32],
    v: &[f32],
    decay: Option<&[f32]>,
    out: &[f32],
    den: &[f32],
    dout: &[f32],
    bh: usize,
    t: usize,
    f: usize,
    e: usize,
    dfq: &mut [f32],
    dfk: &mut [f32],
    dv: &mut [f32],
) -> Result<()> {
    check_inputs("causal_backward", fq, fk, v, bh, t, f, e)?;
    check_decay("causal_backward decay (BH, T)", decay, bh * t)?;
    check_backward_buffers("causal_backward", out, den, dout, dfq, dfk, dv, bh, t, f, e)?;
    if t == 0 {
        return Ok(());
    }
    dfq.par_chunks_mut(t * f).zip(dfk.par_chunks_mut(t * f)).zip(dv.par_chunks_mut(t * e)).enumerate().for_each(|(unit, ((dfq, dfk), dv))| {
        let tf = unit * t * f..(unit + 1) * t * f;
        let te = unit * t * e..(unit + 1) * t * e;
        let unit_in = UnitInputs { fq: &fq[tf.clone()], fk: &fk[tf], v: &v[te.clone()], t, f, e };
        let (out, dout, den) = (&out[te.clone()], &dout[te], &den[unit * t..(unit + 1) * t]);
        // g'_i = [g_i, gd_i], the gradient of the extended numerator row [num_i, den_i - eps].
        let mut g = vec![0.0f32; t * e]; // (T, E) dout_i / den_i
        let mut gd = vec![0.0f32; t]; // (T) -(dout_i . out_i) / den_i
        for i in 0..t {
            let inv = 1.0 / den[i];
            let dout_i = &dout[i * e..(i + 1) * e];
            g[i * e..(i + 1) * e].iter_mut().zip(dout_i).for_each(|(gv, &d)| *gv = d * inv);
            gd[i] = -dot(dout_i, &out[i * e..(i + 1) * e]) * inv;
        }
        match decay {
            Some(d) => causal_backward_unit::<true>(&unit_in, &d[unit * t..(unit + 1) * t], &g, &gd, dfq, dfk, dv),
            None => causal_backward_unit::<false>(&unit_in, &[], &g, &gd, dfq, dfk, dv),
        }
    });
    Ok(())
}

/// Bidirectional linear attention, forward: every query attends to the first `lengths[b]` keys of its
/// sequence (all `T` when `lengths` is `None`). `BH = B·H`, heads of one sequence adjacent. Writes
/// `out (BH, T, E)` and `den (BH, T)`.
#[allow(clippy::too_many_arguments)]
pub fn bidirectional_forward(
    fq: &[f32],
    fk: &[f32],
    v: &[f32],
    b: usize,
    h: usize,
    lengths: Option<&[usize]>,
    t: usize,
    f: usize,
    e: usize,
    eps: f32,
    out: &mut [f32],
    den: &mut [f32],
) -> Result<()> {
    let bh = b * h;
    check_inputs("bidirectional_forward", fq, fk, v, bh, t, f, e)?;
    check_lengths(lengths, b, t)?;
    check_eps(eps)?;
    check_len("bidirectional_forward out (BH, T, E)", &[bh, t, e], out.len())?;
    check_len("bidirectional_forward den (BH, T)", &[bh, t], den.len())?;
    if t == 0 {
        return Ok(());
    }
    out.par_chunks_mut(t * e).zip(den.par_chunks_mut(t)).enumerate().for_each(|(unit, (out, den))| {
        let len = lengths.map_or(t, |l| l[unit / h]);
        let fq = &fq[unit * t * f..(unit + 1) * t * f]; // (T, F)
        let fk = &fk[unit * t * f..(unit + 1) * t * f]; // (T, F)
        let v = &v[unit * t * e..(unit + 1) * t * e]; // (T, E)
        let mut s = vec![0.0f32; f * e]; // (F, E) = fk[..len]ᵀ v[..len]
        matmul(f, e, len, 1.0, fk, Trans::T, v, Trans::N, 0.0, &mut s);
        let z = column_sums(&fk[..len * f], f); // (F)
        matmul(t, e, f, 1.0, fq, Trans::N, &s, Trans::N, 0.0, out);
        for i in 0..t {
            den[i] = dot(&fq[i * f..(i + 1) * f], &z) + eps;
            let inv = 1.0 / den[i];
            out[i * e..(i + 1) * e].iter_mut().for_each(|o| *o *= inv);
        }
    });
    Ok(())
}

/// Bidirectional linear attention, backward: from the forward inputs, `out`, `den` and `dout (BH, T, E)`,
/// writes `dfq, dfk (BH, T, F)` and `dv (BH, T, E)` (OVERWRITTEN); padded keys get zero gradients.
#[allow(clippy::too_many_arguments)]
pub fn bidirectional_backward(
    fq: &[f32],
    fk: &[f32],
    v: &[f32],
    b: usize,
    h: usize,
    lengths: Option<&[usize]>,
    out: &[f32],
    den: &[f32],
    dout: &[f32],
    t: usize,
    f: usize,
    e: usize,
    dfq: &mut [f32],
    dfk: &mut [f32],
    dv: &mut [f32],
) -> Result<()> {
    let bh = b * h;
    check_inputs("bidirectional_backward", fq, fk, v, bh, t, f, e)?;
    check_lengths(lengths, b, t)?;
    check_backward_buffers("bidirectional_backward", out, den, dout, dfq, dfk, dv, bh, t, f, e)?;
    if t == 0 {
        return Ok(());
    }
    dfq.par_chunks_mut(t * f).zip(dfk.par_chunks_mut(t * f)).zip(dv.par_chunks_mut(t * e)).enumerate().for_each(|(unit, ((dfq, dfk), dv))| {
        let len = lengths.map_or(t, |l| l[unit / h]);
        let fq = &fq[unit * t * f..(unit + 1) * t * f]; // (T, F)
        let fk = &fk[unit * t * f..(unit + 1) * t * f]; // (T, F)
        let v = &v[unit * t * e..(unit + 1) * t * e]; // (T, E)
        let out = &out[unit * t * e..(unit + 1) * t * e]; // (T, E)
        let dout = &dout[unit * t * e..(unit + 1) * t * e]; // (T, E)
        let den = &den[unit * t..(unit + 1) * t]; // (T)

        // Upstream gradient of the extended numerator row [num_i, den_i - eps]: g'_i = [g_i, gd_i].
        let mut g = vec![0.0f32; t * e]; // (T, E) dout_i / den_i
        let mut gd = vec![0.0f32; t]; // (T) -(dout_i . out_i) / den_i
        for i in 0..t {
            let inv = 1.0 / den[i];
            gd[i] = -dot(&dout[i * e..(i + 1) * e], &out[i * e..(i + 1) * e]) * inv;
            g[i * e..(i + 1) * e].iter_mut().zip(&dout[i * e..(i + 1) * e]).for_each(|(gv, &d)| *gv = d * inv);
        }

        // dfq_i = S g_i + z gd_i.
        let mut s = vec![0.0f32; f * e]; // (F, E)
        matmul(f, e, len, 1.0, fk, Trans::T, v, Trans::N, 0.0, &mut s);
        let z = column_sums(&fk[..len * f], f); // (F)
        matmul(t, f, e, 1.0, &g, Trans::N, &s, Trans::T, 0.0, dfq);
        for i in 0..t {
            dfq[i * f..(i + 1) * f].iter_mut().zip(&z).for_each(|(d, &zf)| *d = gd[i].mul_add(zf, *d));
        }

        // R = Σ_i fq_i g_iᵀ (F, E) and rho = Σ_i fq_i gd_i (F): dfk_j = R v_j + rho, dv_j = Rᵀ fk_j for valid keys.
        let mut r = vec![0.0f32; f * e]; // (F, E)
        matmul(f, e, t, 1.0, fq, Trans::T, &g, Trans::N, 0.0, &mut r);
        let mut rho = vec![0.0f32; f]; // (F)
        for i in 0..t {
            rho.iter_mut().zip(&fq[i * f..(i + 1) * f]).for_each(|(p, &q)| *p = gd[i].mul_add(q, *p));
        }
        matmul(len, f, e, 1.0, v, Trans::N, &r, Trans::T, 0.0, dfk);
        for j in 0..len {
            dfk[j * f..(j + 1) * f].iter_mut().zip(&rho).for_each(|(d, &p)| *d += p);
        }
        matmul(len, e, f, 1.0, fk, Trans::N, &r, Trans::N, 0.0, dv);
        dfk[len * f..].iter_mut().for_each(|d| *d = 0.0);
        dv[len * e..].iter_mut().for_each(|d| *d = 0.0);
    });
    Ok(())
}

/// The fixed-size state of causal linear attention in RNN mode (eq. 18-20), for every `(b, h)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearState {
    /// `(BH, F, E)`: `S = Σ_j (decay products) fk_j v_jᵀ`.
    pub s: Vec<f32>,
    /// `(BH, F)`: `z = Σ_j (decay products) fk_j`.
    pub z: Vec<f32>,
    /// BH.
    pub bh: usize,
    /// F, the feature width.
    pub f: usize,
    /// E, the value width.
    pub e: usize,
}

impl LinearState {
    /// The empty state (nothing attended yet) of `bh` units with `f` features and `e` value columns.
    pub fn new(bh: usize, f: usize, e: usize) -> Self {
        LinearState { s: vec![0.0; bh * f * e], z: vec![0.0; bh * f], bh, f, e }
    }

    /// Forgets everything attended so far.
    pub fn reset(&mut self) {
        self.s.iter_mut().for_each(|x| *x = 0.0);
        self.z.iter_mut().for_each(|x| *x = 0.0);
    }
}

/// One step of causal linear attention in RNN mode: folds `fk_t (BH, F)`, `v_t (BH, E)` into `state` (after
/// scaling it by `decay_t (BH)`, if given) and writes `out_t (BH, E)` for the query `fq_t (BH, F)`. A sequence
/// of steps from [`LinearState::new`] reproduces the rows of [`causal_forward`] exactly. Allocates no buffers.
#[allow(clippy::too_many_arguments)]
pub fn causal_step(state: &mut LinearState, fq_t: &[f32], fk_t: &[f32], v_t: &[f32], decay_t: Option<&[f32]>, eps: f32, out_t: &mut [f32]) -> Result<()> {
    let (bh, f, e) = (state.bh, state.f, state.e);
    check_len("causal_step state.s (BH, F, E)", &[bh, f, e], state.s.len())?;
    check_len("causal_step state.z (BH, F)", &[bh, f], state.z.len())?;
    check_len("causal_step fq_t (BH, F)", &[bh, f], fq_t.len())?;
    check_len("causal_step fk_t (BH, F)", &[bh, f], fk_t.len())?;
    check_len("causal_step v_t (BH, E)", &[bh, e], v_t.len())?;
    check_len("causal_step out_t (BH, E)", &[bh, e], out_t.len())?;
    check_decay("causal_step decay_t (BH)", decay_t, bh)?;
    check_eps(eps)?;
    check_widths("causal_step", f, e)?;
    let one_unit = |unit: usize, (s, (z, out)): (&mut [f32], (&mut [f32], &mut [f32]))| {
        let (q, k, v) = (&fq_t[unit * f..(unit + 1) * f], &fk_t[unit * f..(unit + 1) * f], &v_t[unit * e..(unit + 1) * e]);
        match decay_t {
            Some(d) => forward_step::<true>(s, z, q, k, v, d[unit], eps, out),
            None => forward_step::<false>(s, z, q, k, v, 1.0, eps, out),
        };
    };
    // A step is a few microseconds: fork only when every thread gets a sizeable share.
    if bh * f * e >= 1 << 16 {
        state.s.par_chunks_mut(f * e).zip(state.z.par_chunks_mut(f).zip(out_t.par_chunks_mut(e))).enumerate().for_each(|(u, x)| one_unit(u, x));
    } else {
        state.s.chunks_mut(f * e).zip(state.z.chunks_mut(f).zip(out_t.chunks_mut(e))).enumerate().for_each(|(u, x)| one_unit(u, x));
    }
    Ok(())
}

// ---- kernels of one (b, h) -------------------------------------------------------------------------------------

/// One causal step of one `(b, h)`: `z (F) = d z + k`, `s (F, E) = d s + k vᵀ`, `out (E) = sᵀ q / den`;
/// returns `den = z·q + eps`. Without `DECAY` the state is not scaled (d = 1). The same arithmetic as one step
/// of [`causal_forward`].
#[allow(clippy::too_many_arguments)]
#[inline]
fn forward_step<const DECAY: bool>(s: &mut [f32], z: &mut [f32], q: &[f32], k: &[f32], v: &[f32], d: f32, eps: f32, out: &mut [f32]) -> f32 {
    let den = normaliser_step::<DECAY>(z, k, q, d, eps);
    update_accumulate::<DECAY>(s, v.len(), k, v, q, d, out);
    let inv = 1.0 / den;
    out.iter_mut().for_each(|o| *o *= inv);
    den
}

/// `z = d z + k`; returns `z·q + eps`.
#[inline]
fn normaliser_step<const DECAY: bool>(z: &mut [f32], k: &[f32], q: &[f32], d: f32, eps: f32) -> f32 {
    for (zf, &kf) in z.iter_mut().zip(k) {
        *zf = if DECAY { d.mul_add(*zf, kf) } else { *zf + kf };
    }
    dot(q, z) + eps
}

/// The inputs of one `(b, h)` for [`causal_backward_unit`]: `fq, fk (T, F)`, `v (T, E)`.
struct UnitInputs<'a> {
    fq: &'a [f32],
    fk: &'a [f32],
    v: &'a [f32],
    t: usize,
    f: usize,
    e: usize,
}

/// Backward of one `(b, h)` (Algorithm 1 with the normaliser as a value column of ones, see the module doc),
/// given `g'_i = [g_i, gd_i]`, `g (T, E)`, `gd (T)`. Three sweeps, each a rank-1 update and a mat-vec per step
/// over an `F×E` state held in L1, arranged so that none needs horizontal sums; the ones column is an O(T·F)
/// pass of its own:
/// 1. forward, state `Sᵀ (E, F)`: `dfq_i = S_i g_i + z_i gd_i`;
/// 2. reverse, state `Rᵀ (E, F)` with `R_j = fq_j g_jᵀ + decay_{j+1} R_{j+1}`: `dfk_j = R_j v_j + rho_j`
///    (`rho_j = fq_j gd_j + decay_{j+1} rho_{j+1}`, the ones column of `R'`);
/// 3. reverse, state `R (F, E)`: `dv_j = R_jᵀ fk_j`.
#[allow(clippy::too_many_arguments)]
fn causal_backward_unit<const DECAY: bool>(x: &UnitInputs<'_>, decay: &[f32], g: &[f32], gd: &[f32], dfq: &mut [f32], dfk: &mut [f32], dv: &mut [f32]) {
    let (t, f, e) = (x.t, x.f, x.e);
    let mut state = vec![0.0f32; e * f]; // (E, F) Sᵀ, then Rᵀ; (F, E) R

    // The elements of the steps `r` of a (T, width) buffer.
    let rows = |r: &std::ops::Range<usize>, width: usize| r.start * width..r.end * width;

    // 1. Forward sweep, recomputing the state of the forward pass (transposed); then the z column.
    let mut z = vec![0.0f32; f]; // (F) running normaliser
    for r in time_blocks(t, Direction::Forward) {
        let decay_r = if DECAY { &decay[r.clone()] } else { &[][..] };
        sweep::<DECAY>(&mut state, e, f, &x.v[rows(&r, e)], &x.fk[rows(&r, f)], &g[rows(&r, e)], decay_r, Direction::Forward, &mut dfq[rows(&r, f)]);
        for i in r {
            let d = if DECAY { decay[i] } else { 1.0 };
            for (zf, &kf) in z.iter_mut().zip(&x.fk[i * f..(i + 1) * f]) {
                *zf = if DECAY { d.mul_add(*zf, kf) } else { *zf + kf };
            }
            dfq[i * f..(i + 1) * f].iter_mut().zip(&z).for_each(|(o, &zf)| *o = gd[i].mul_add(zf, *o));
        }
    }

    // The reverse sweeps scale the state by decay_{j+1} before folding in step j (R is zero at j = T-1).
    let next_decay: Vec<f32> = if DECAY { (0..t).map(|j| if j + 1 < t { decay[j + 1] } else { 1.0 }).collect() } else { Vec::new() }; // (T)

    // 2. Reverse sweep for dfk, then the ones column rho.
    state.iter_mut().for_each(|s| *s = 0.0);
    let mut rho = vec![0.0f32; f]; // (F) running ones column of R'
    for r in time_blocks(t, Direction::Reverse) {
        let decay_r = if DECAY { &next_decay[r.clone()] } else { &[][..] };
        sweep::<DECAY>(&mut state, e, f, &g[rows(&r, e)], &x.fq[rows(&r, f)], &x.v[rows(&r, e)], decay_r, Direction::Reverse, &mut dfk[rows(&r, f)]);
        for j in r.rev() {
            let d_next = if DECAY { next_decay[j] } else { 1.0 };
            for (p, &qf) in rho.iter_mut().zip(&x.fq[j * f..(j + 1) * f]) {
                *p = if DECAY { gd[j].mul_add(qf, d_next * *p) } else { gd[j].mul_add(qf, *p) };
            }
            dfk[j * f..(j + 1) * f].iter_mut().zip(&rho).for_each(|(o, &p)| *o += p);
        }
    }

    // 3. Reverse sweep for dv.
    state.iter_mut().for_each(|s| *s = 0.0);
    for r in time_blocks(t, Direction::Reverse) {
        let decay_r = if DECAY { &next_decay[r.clone()] } else { &[][..] };
        sweep::<DECAY>(&mut state, f, e, &x.fq[rows(&r, f)], &g[rows(&r, e)], &x.fk[rows(&r, f)], decay_r, Direction::Reverse, &mut dv[rows(&r, e)]);
    }
}

/// Steps per block of the causal kernels: the block's inputs (a few hundred KiB) stay in L2 between the passes
/// over it. Even, so that the step pairs of [`sweep`] never straddle two blocks.
const TIME_BLOCK: usize = 256;

/// The blocks `[start, end)` of `0..t`, first to last or last to first.
fn time_blocks(t: usize, direction: Direction) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = t.div_ceil(TIME_BLOCK);
    (0..count).map(move |n| {
        let block = if direction == Direction::Forward { n } else { count - 1 - n };
        block * TIME_BLOCK..((block + 1) * TIME_BLOCK).min(t)
    })
}

/// Order of the steps of a [`sweep`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Reverse,
}

/// The recurrence of every causal kernel: for each step `s` in order, `state (R, C) = d_s·state + a_s b_sᵀ`,
/// then `out_s (C) = stateᵀ c_s`, with `a, c (T, R)`, `b, out (T, C)`, `decay (T)` (unused without `DECAY`).
/// Steps go two at a time through [`update_accumulate2`], so that each element of the state is loaded and stored
/// once per two steps; the arithmetic is exactly that of two single steps ([`update_accumulate`]).
#[allow(clippy::too_many_arguments)]
fn sweep<const DECAY: bool>(
    state: &mut [f32],
    rows: usize,
    cols: usize,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    decay: &[f32],
    direction: Direction,
    out: &mut [f32],
) {
    debug_assert!(rows > 0 && cols > 0, "checked by the public entry points");
    let t = out.len() / cols;
    let at = |width: usize, s: usize| s * width..(s + 1) * width;
    let d = |s: usize| if DECAY { decay[s] } else { 1.0 };
    let mut s = 0;
    while s + 1 < t {
        // The pair (first, second) in time order of the sweep.
        let (first, second) = match direction {
            Direction::Forward => (s, s + 1),
            Direction::Reverse => (t - 1 - s, t - 2 - s),
        };
        let (lo, hi) = (first.min(second), first.max(second));
        let (out_lo, out_hi) = out[lo * cols..(hi + 1) * cols].split_at_mut(cols);
        let (out_first, out_second) = if first < second { (out_lo, out_hi) } else { (out_hi, out_lo) };
        update_accumulate2::<DECAY>(
            state,
            cols,
            [&a[at(rows, first)], &a[at(rows, second)]],
            [&b[at(cols, first)], &b[at(cols, second)]],
            [&c[at(rows, first)], &c[at(rows, second)]],
            [d(first), d(second)],
            [out_first, out_second],
        );
        s += 2;
    }
    if s < t {
        let last = if direction == Direction::Forward { s } else { t - 1 - s };
        update_accumulate::<DECAY>(state, cols, &a[at(rows, last)], &b[at(cols, last)], &c[at(rows, last)], d(last), &mut out[at(cols, last)]);
    }
}

/// The fused step kernel: `state (R, C) = d·state + a bᵀ` (no scaling without `DECAY`), then
/// `out (C) = stateᵀ c` — one pass over the state, `BLOCK` columns at a time so that the column block of `b`
/// and of the accumulator stay in registers.
#[allow(clippy::too_many_arguments)]
#[inline]
fn update_accumulate<const DECAY: bool>(state: &mut [f32], cols: usize, a: &[f32], b: &[f32], c: &[f32], d: f32, out: &mut [f32]) {
    debug_assert!(state.len() == a.len() * cols && b.len() == cols && c.len() == a.len() && out.len() == cols);
    let mut c0 = 0;
    while c0 + BLOCK <= cols {
        update_block::<BLOCK, DECAY>(state, cols, c0, a, b, c, d, out);
        c0 += BLOCK;
    }
    while c0 + 8 <= cols {
        update_block::<8, DECAY>(state, cols, c0, a, b, c, d, out);
        c0 += 8;
    }
    while c0 < cols {
        update_block::<1, DECAY>(state, cols, c0, a, b, c, d, out);
        c0 += 1;
    }
}

/// Columns `c0 .. c0 + W` of [`update_accumulate`]. Rows are taken in pairs with two accumulators, so that
/// consecutive FMAs into the accumulator do not wait on each other's latency.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update_block<const W: usize, const DECAY: bool>(state: &mut [f32], cols: usize, c0: usize, a: &[f32], b: &[f32], c: &[f32], d: f32, out: &mut [f32]) {
    let b: &[f32; W] = b[c0..c0 + W].try_into().expect("block of b");
    let mut acc = [[0.0f32; W]; 2]; // (2, W) columns of stateᵀ c, even and odd rows
    let pairs = state.chunks_exact_mut(2 * cols).zip(a.chunks_exact(2).zip(c.chunks_exact(2)));
    for (rows, (a2, c2)) in pairs {
        let (row0, row1) = rows.split_at_mut(cols);
        fold_row::<W, DECAY>((&mut row0[c0..c0 + W]).try_into().expect("row block"), a2[0], b, c2[0], d, &mut acc[0]);
        fold_row::<W, DECAY>((&mut row1[c0..c0 + W]).try_into().expect("row block"), a2[1], b, c2[1], d, &mut acc[1]);
    }
    if a.len() % 2 == 1 {
        let last = a.len() - 1;
        let row = &mut state[last * cols + c0..last * cols + c0 + W];
        fold_row::<W, DECAY>(row.try_into().expect("row block"), a[last], b, c[last], d, &mut acc[0]);
    }
    for (o, (x, y)) in out[c0..c0 + W].iter_mut().zip(acc[0].iter().zip(&acc[1])) {
        *o = x + y;
    }
}

/// One row block of [`update_block`]: `row = d·row + a b`, `acc += c row`.
#[inline(always)]
fn fold_row<const W: usize, const DECAY: bool>(row: &mut [f32; W], a: f32, b: &[f32; W], c: f32, d: f32, acc: &mut [f32; W]) {
    for l in 0..W {
        let s = if DECAY { a.mul_add(b[l], d * row[l]) } else { a.mul_add(b[l], row[l]) };
        row[l] = s;
        acc[l] = c.mul_add(s, acc[l]);
    }
}

/// Two consecutive steps of [`update_accumulate`] in one pass over the state (steps `[first, second]`):
/// bitwise the same results, half the loads and stores of the state.
#[allow(clippy::too_many_arguments)]
#[inline]
fn update_accumulate2<const DECAY: bool>(state: &mut [f32], cols: usize, a: [&[f32]; 2], b: [&[f32]; 2], c: [&[f32]; 2], d: [f32; 2], out: [&mut [f32]; 2]) {
    let [out0, out1] = out;
    let mut c0 = 0;
    while c0 + BLOCK <= cols {
        update_block2::<BLOCK, DECAY>(state, cols, c0, a, b, c, d, [&mut *out0, &mut *out1]);
        c0 += BLOCK;
    }
    while c0 + 8 <= cols {
        update_block2::<8, DECAY>(state, cols, c0, a, b, c, d, [&mut *out0, &mut *out1]);
        c0 += 8;
    }
    while c0 < cols {
        update_block2::<1, DECAY>(state, cols, c0, a, b, c, d, [&mut *out0, &mut *out1]);
        c0 += 1;
    }
}

/// Columns `c0 .. c0 + W` of [`update_accumulate2`], with the even/odd-row accumulators of [`update_block`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update_block2<const W: usize, const DECAY: bool>(
    state: &mut [f32],
    cols: usize,
    c0: usize,
    a: [&[f32]; 2],
    b: [&[f32]; 2],
    c: [&[f32]; 2],
    d: [f32; 2],
    out: [&mut [f32]; 2],
) {
    let b0: &[f32; W] = b[0][c0..c0 + W].try_into().expect("block of b");
    let b1: &[f32; W] = b[1][c0..c0 + W].try_into().expect("block of b");
    // (W) accumulators per step and row parity, as separate locals so that they live in registers.
    let (mut acc0_even, mut acc0_odd, mut acc1_even, mut acc1_odd) = ([0.0f32; W], [0.0f32; W], [0.0f32; W], [0.0f32; W]);
    let rows = a[0].len();
    let pairs = state.chunks_exact_mut(2 * cols).take(rows / 2).enumerate();
    for (p, two_rows) in pairs {
        let (row0, row1) = two_rows.split_at_mut(cols);
        let r = 2 * p;
        fold_row2::<W, DECAY>(
            (&mut row0[c0..c0 + W]).try_into().expect("row block"),
            [a[0][r], a[1][r]],
            b0,
            b1,
            [c[0][r], c[1][r]],
            d,
            &mut acc0_even,
            &mut acc1_even,
        );
        let r = 2 * p + 1;
        fold_row2::<W, DECAY>(
            (&mut row1[c0..c0 + W]).try_into().expect("row block"),
            [a[0][r], a[1][r]],
            b0,
            b1,
            [c[0][r], c[1][r]],
            d,
            &mut acc0_odd,
            &mut acc1_odd,
        );
    }
    if rows % 2 == 1 {
        let r = rows - 1;
        let row = &mut state[r * cols + c0..r * cols + c0 + W];
        fold_row2::<W, DECAY>(row.try_into().expect("row block"), [a[0][r], a[1][r]], b0, b1, [c[0][r], c[1][r]], d, &mut acc0_even, &mut acc1_even);
    }
    let acc = [[acc0_even, acc0_odd], [acc1_even, acc1_odd]]; // (step, parity, W)
    let [out0, out1] = out;
    for (step, o) in [out0, out1].into_iter().enumerate() {
        for (ov, (x, y)) in o[c0..c0 + W].iter_mut().zip(acc[step][0].iter().zip(&acc[step][1])) {
            *ov = x + y;
        }
    }
}

/// One row block of [`update_block2`]: two steps of [`fold_row`] with the row kept in registers in between.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fold_row2<const W: usize, const DECAY: bool>(
    row: &mut [f32; W],
    a: [f32; 2],
    b0: &[f32; W],
    b1: &[f32; W],
    c: [f32; 2],
    d: [f32; 2],
    acc0: &mut [f32; W],
    acc1: &mut [f32; W],
) {
    for l in 0..W {
        let s0 = if DECAY { a[0].mul_add(b0[l], d[0] * row[l]) } else { a[0].mul_add(b0[l], row[l]) };
        acc0[l] = c[0].mul_add(s0, acc0[l]);
        let s1 = if DECAY { a[1].mul_add(b1[l], d[1] * s0) } else { a[1].mul_add(b1[l], s0) };
        acc1[l] = c[1].mul_add(s1, acc1[l]);
        row[l] = s1;
    }
}

/// Sum of a fixed-size array by pairwise halving (vectorises into shuffles and adds).
#[inline(always)]
fn tree_sum<const W: usize>(mut x: [f32; W]) -> f32 {
    let mut half = W / 2;
    let mut width = W;
    while half > 0 {
        for l in 0..half {
            x[l] += x[l + half];
        }
        if width % 2 == 1 {
            x[0] += x[width - 1];
        }
        width = half;
        half /= 2;
    }
    x[0]
}

/// `a · b` with 16 independent partial sums (vectorises; a plain fold would be one serial chain).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] = x[l].mul_add(y[l], lanes[l]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    tree_sum(lanes) + tail
}

/// Column sums of `x (N, F)`.
fn column_sums(x: &[f32], f: usize) -> Vec<f32> {
    let mut z = vec![0.0f32; f]; // (F)
    for row in x.chunks_exact(f) {
        z.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
    }
    z
}

// ---- argument checks -------------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn check_inputs(op: &str, fq: &[f32], fk: &[f32], v: &[f32], bh: usize, t: usize, f: usize, e: usize) -> Result<()> {
    check_widths(op, f, e)?;
    check_len(&format!("{op} fq (BH, T, F)"), &[bh, t, f], fq.len())?;
    check_len(&format!("{op} fk (BH, T, F)"), &[bh, t, f], fk.len())?;
    check_len(&format!("{op} v (BH, T, E)"), &[bh, t, e], v.len())
}

#[allow(clippy::too_many_arguments)]
fn check_backward_buffers(
    op: &str,
    out: &[f32],
    den: &[f32],
    dout: &[f32],
    dfq: &[f32],
    dfk: &[f32],
    dv: &[f32],
    bh: usize,
    t: usize,
    f: usize,
    e: usize,
) -> Result<()> {
    check_len(&format!("{op} out (BH, T, E)"), &[bh, t, e], out.len())?;
    check_len(&format!("{op} den (BH, T)"), &[bh, t], den.len())?;
    check_len(&format!("{op} dout (BH, T, E)"), &[bh, t, e], dout.len())?;
    check_len(&format!("{op} dfq (BH, T, F)"), &[bh, t, f], dfq.len())?;
    check_len(&format!("{op} dfk (BH, T, F)"), &[bh, t, f], dfk.len())?;
    check_len(&format!("{op} dv (BH, T, E)"), &[bh, t, e], dv.len())
}

/// The feature width F and value width E must be positive.
fn check_widths(op: &str, f: usize, e: usize) -> Result<()> {
    if f == 0 || e == 0 {
        Err(Error::Invalid(format!("{op}: the feature width F = {f} and value width E = {e} must be positive")))
    } else {
        Ok(())
    }
}

/// The decay must have `n` entries, each in `[0, 1]` (NaN rejected).
fn check_decay(what: &str, decay: Option<&[f32]>, n: usize) -> Result<()> {
    let Some(decay) = decay else { return Ok(()) };
    check_len(what, &[n], decay.len())?;
    match decay.iter().position(|d| !(0.0..=1.0).contains(d)) {
        Some(i) => Err(Error::Invalid(format!("{what}: decay[{i}] = {} is outside [0, 1]", decay[i]))),
        None => Ok(()),
    }
}

/// `B` lengths, each at most `T`.
fn check_lengths(lengths: Option<&[usize]>, b: usize, t: usize) -> Result<()> {
    let Some(lengths) = lengths else { return Ok(()) };
    check_len("lengths (B)", &[b], lengths.len())?;
    match lengths.iter().position(|&l| l > t) {
        Some(i) => Err(Error::Invalid(format!("lengths[{i}] = {} exceeds the sequence length T = {t}", lengths[i]))),
        None => Ok(()),
    }
}

fn check_eps(eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!("linear attention eps must be finite and >= 0, got {eps}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_param_grads, projection_loss, projection_weights, GradCheckOpts};
    use crate::rng::{fill_uniform, rng_for};

    /// `n` values drawn from U(lo, hi) under `seed`.
    pub(crate) fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut rng = rng_for(seed, 7);
        let mut x = vec![0.0f32; n];
        fill_uniform(&mut rng, &mut x, 1.0);
        x.iter().map(|&u| lo + (u + 1.0) * 0.5 * (hi - lo)).collect()
    }

    /// Which keys query `i` of unit `u` sees, and with what weight: the oracle's explicit attention mask.
    enum Mask<'a> {
        /// `j <= i`, weight `Π_{k=j+1..=i} decay[k]` (1 without decay).
        Causal(Option<&'a [f32]>),
        /// `j < lengths[u / h]` (every key without lengths), weight 1.
        Bidirectional { h: usize, lengths: Option<&'a [usize]> },
    }

    /// The naive oracle's outputs and gradients, in f64.
    struct Naive {
        out: Vec<f64>,
        den: Vec<f64>,
        dfq: Vec<f64>,
        dfk: Vec<f64>,
        dv: Vec<f64>,
    }

    /// Linear attention through the explicit `(T, T)` matrix `A_ij = (fq_i·fk_j) W_ij` (W the mask weights), in
    /// f64: `out = A v / (A 1 + eps)`; and its backward for upstream `dout`, derived on that quadratic form.
    #[allow(clippy::too_many_arguments)]
    fn naive(fq: &[f32], fk: &[f32], v: &[f32], mask: &Mask, bh: usize, t: usize, f: usize, e: usize, eps: f32, dout: &[f32]) -> Naive {
        let mut r =
            Naive { out: vec![0.0; bh * t * e], den: vec![0.0; bh * t], dfq: vec![0.0; bh * t * f], dfk: vec![0.0; bh * t * f], dv: vec![0.0; bh * t * e] };
        for u in 0..bh {
            let weight = |i: usize, j: usize| -> f64 {
                match mask {
                    Mask::Causal(decay) => {
                        if j > i {
                            0.0
                        } else {
                            decay.map_or(1.0, |d| (j + 1..=i).map(|k| d[u * t + k] as f64).product())
                        }
                    }
                    Mask::Bidirectional { h, lengths } => {
                        if j < lengths.map_or(t, |l| l[u / h]) {
                            1.0
                        } else {
                            0.0
                        }
                    }
                }
            };
            let q = |i: usize, c: usize| fq[(u * t + i) * f + c] as f64;
            let k = |j: usize, c: usize| fk[(u * t + j) * f + c] as f64;
            let val = |j: usize, c: usize| v[(u * t + j) * e + c] as f64;
            let w: Vec<f64> = (0..t * t).map(|ij| weight(ij / t, ij % t)).collect(); // (T, T)
            let a: Vec<f64> = (0..t * t).map(|ij| w[ij] * (0..f).map(|c| q(ij / t, c) * k(ij % t, c)).sum::<f64>()).collect(); // (T, T)
            for i in 0..t {
                let den = a[i * t..(i + 1) * t].iter().sum::<f64>() + eps as f64;
                r.den[u * t + i] = den;
                for c in 0..e {
                    r.out[(u * t + i) * e + c] = (0..t).map(|j| a[i * t + j] * val(j, c)).sum::<f64>() / den;
                }
            }
            // out_i = num_i / den_i: dA_ij = (dout_i·v_j) / den_i − (dout_i·out_i) / den_i.
            let go = |i: usize, c: usize| dout[(u * t + i) * e + c] as f64;
            let mut da = vec![0.0f64; t * t]; // (T, T)
            for i in 0..t {
                let den = r.den[u * t + i];
                let gd: f64 = -(0..e).map(|c| go(i, c) * r.out[(u * t + i) * e + c]).sum::<f64>() / den;
                for j in 0..t {
                    da[i * t + j] = (0..e).map(|c| go(i, c) * val(j, c)).sum::<f64>() / den + gd;
                }
            }
            for i in 0..t {
                for j in 0..t {
                    let dw = da[i * t + j] * w[i * t + j];
                    for c in 0..f {
                        r.dfq[(u * t + i) * f + c] += dw * k(j, c);
                        r.dfk[(u * t + j) * f + c] += dw * q(i, c);
                    }
                    for c in 0..e {
                        r.dv[(u * t + j) * e + c] += a[i * t + j] * go(i, c) / r.den[u * t + i];
                    }
                }
            }
        }
        r
    }

    /// Asserts `|got − want| <= tol · max(1, max |want|)` elementwise.
    fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(1.0f64, |m, w| m.max(w.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w} (scale {scale})");
        }
    }

    /// `(fq (BH, T, F), fk (BH, T, F), v (BH, T, E), decay (BH, T), dout (BH, T, E))` of a test problem.
    type Problem = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

    /// Positive features, signed values, a decay in [0.3, 1] with exact 0s and 1s sprinkled in, and an upstream
    /// gradient, for `bh` units of length `t`.
    fn problem(bh: usize, t: usize, f: usize, e: usize, seed: u64) -> Problem {
        let fq = uniform(bh * t * f, seed, 0.05, 1.2); // (BH, T, F)
        let fk = uniform(bh * t * f, seed + 1, 0.05, 1.2); // (BH, T, F)
        let v = uniform(bh * t * e, seed + 2, -1.0, 1.0); // (BH, T, E)
        let mut decay = uniform(bh * t, seed + 3, 0.3, 1.0); // (BH, T)
        for (i, d) in decay.iter_mut().enumerate() {
            if i % 11 == 5 {
                *d = 1.0;
            } else if i % 17 == 9 {
                *d = 0.0;
            }
        }
        let dout = uniform(bh * t * e, seed + 4, -1.0, 1.0); // (BH, T, E)
        (fq, fk, v, decay, dout)
    }

    #[test]
    fn causal_fused_kernel_matches_naive_outputs_and_gradients() {
        // F and E exercise the 32-wide, 8-wide and single-column blocks; T is a multiple of nothing in particular,
        // odd (a single step after the step pairs) and, at 601, spans three time blocks.
        for (bh, t, f, e) in [(3, 37, 5, 7), (2, 45, 40, 70), (2, 33, 64, 64), (1, 601, 3, 9)] {
            let (fq, fk, v, decay, dout) = problem(bh, t, f, e, 10 + t as u64);
            for with_decay in [false, true] {
                let decay = with_decay.then_some(&decay[..]);
                let eps = 1e-3;
                let want = naive(&fq, &fk, &v, &Mask::Causal(decay), bh, t, f, e, eps, &dout);
                let mut out = vec![0.0f32; bh * t * e]; // (BH, T, E)
                let mut den = vec![0.0f32; bh * t]; // (BH, T)
                causal_forward(&fq, &fk, &v, decay, bh, t, f, e, eps, &mut out, &mut den).unwrap();
                let tag = format!("bh {bh} t {t} f {f} e {e} decay {with_decay}");
                assert_close(&format!("out ({tag})"), &out, &want.out, 2e-5);
                assert_close(&format!("den ({tag})"), &den, &want.den, 2e-5);
                let (mut dfq, mut dfk, mut dv) = (vec![f32::NAN; bh * t * f], vec![f32::NAN; bh * t * f], vec![f32::NAN; bh * t * e]);
                causal_backward(&fq, &fk, &v, decay, &out, &den, &dout, bh, t, f, e, &mut dfq, &mut dfk, &mut dv).unwrap();
                assert_close(&format!("dfq ({tag})"), &dfq, &want.dfq, 2e-5);
                assert_close(&format!("dfk ({tag})"), &dfk, &want.dfk, 2e-5);
                assert_close(&format!("dv ({tag})"), &dv, &want.dv, 2e-5);
            }
        }
    }

    #[test]
    fn bidirectional_matches_naive_with_lengths() {
        let (b, h, t, f, e) = (3, 2, 23, 6, 9);
        let (fq, fk, v, _, dout) = problem(b * h, t, f, e, 40);
        for lengths in [None, Some(&[23usize, 7, 1][..])] {
            let eps = 1e-3;
            let want = naive(&fq, &fk, &v, &Mask::Bidirectional { h, lengths }, b * h, t, f, e, eps, &dout);
            let mut out = vec![0.0f32; b * h * t * e]; // (BH, T, E)
            let mut den = vec![0.0f32; b * h * t]; // (BH, T)
            bidirectional_forward(&fq, &fk, &v, b, h, lengths, t, f, e, eps, &mut out, &mut den).unwrap();
            assert_close("bidirectional out", &out, &want.out, 2e-5);
            assert_close("bidirectional den", &den, &want.den, 2e-5);
            let (mut dfq, mut dfk, mut dv) = (vec![f32::NAN; b * h * t * f], vec![f32::NAN; b * h * t * f], vec![f32::NAN; b * h * t * e]);
            bidirectional_backward(&fq, &fk, &v, b, h, lengths, &out, &den, &dout, t, f, e, &mut dfq, &mut dfk, &mut dv).unwrap();
            assert_close("bidirectional dfq", &dfq, &want.dfq, 2e-5);
            assert_close("bidirectional dfk", &dfk, &want.dfk, 2e-5);
            assert_close("bidirectional dv", &dv, &want.dv, 2e-5);
        }
    }

    #[test]
    fn padded_keys_change_nothing_and_get_no_gradient() {
        let (b, h, t, f, e) = (2, 2, 12, 5, 4);
        let lengths = [12usize, 5];
        let (fq, fk, v, _, dout) = problem(b * h, t, f, e, 50);
        let run = |fk: &[f32], v: &[f32]| {
            let mut out = vec![0.0f32; b * h * t * e]; // (BH, T, E)
            let mut den = vec![0.0f32; b * h * t]; // (BH, T)
            bidirectional_forward(&fq, fk, v, b, h, Some(&lengths), t, f, e, 1e-3, &mut out, &mut den).unwrap();
            let (mut dfq, mut dfk, mut dv) = (vec![0.0f32; b * h * t * f], vec![0.0f32; b * h * t * f], vec![0.0f32; b * h * t * e]);
            bidirectional_backward(&fq, fk, v, b, h, Some(&lengths), &out, &den, &dout, t, f, e, &mut dfq, &mut dfk, &mut dv).unwrap();
            (out, dfq, dfk, dv)
        };
        let (out, dfq, dfk, dv) = run(&fk, &v);
        // Perturb every padded key and value of sequence 1 (both heads).
        let (mut fk2, mut v2) = (fk.clone(), v.clone());
        for unit in 2..4 {
            for j in lengths[1]..t {
                fk2[(unit * t + j) * f..(unit * t + j + 1) * f].iter_mut().for_each(|x| *x += 3.0);
                v2[(unit * t + j) * e..(unit * t + j + 1) * e].iter_mut().for_each(|x| *x -= 5.0);
            }
        }
        let (out2, dfq2, dfk2, dv2) = run(&fk2, &v2);
        assert_eq!(out, out2, "a padded key changed an output");
        assert_eq!(dfq, dfq2, "a padded key changed dfq");
        for unit in 2..4 {
            for j in lengths[1]..t {
                assert!(dfk[(unit * t + j) * f..(unit * t + j + 1) * f].iter().all(|&g| g == 0.0), "padded dfk");
                assert!(dv[(unit * t + j) * e..(unit * t + j + 1) * e].iter().all(|&g| g == 0.0), "padded dv");
            }
        }
        assert_eq!(dfk, dfk2);
        assert_eq!(dv, dv2);
        // The unpadded sequence 0 does get gradients everywhere.
        assert!(dfk[..2 * t * f].iter().all(|&g| g != 0.0));
    }

    /// Which of the three inputs a finite-difference check perturbs.
    #[derive(Clone, Copy, Debug)]
    enum Input {
        Fq,
        Fk,
        V,
    }

    /// Finite-difference check of `backward` against `forward` for each input: the loss is a fixed random
    /// projection of the output. `scale` multiplies the analytic gradient (1 for the real check; 1.05 must fail).
    fn fd_check<Fwd, Bwd>(shape: (usize, usize, usize, usize), forward: Fwd, backward: Bwd, scale: f32) -> std::result::Result<(), String>
    where
        Fwd: Fn(&[f32], &[f32], &[f32]) -> Vec<f32>,
        Bwd: Fn(&[f32], &[f32], &[f32], &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>),
    {
        let (bh, t, f, e) = shape;
        let (fq, fk, v, _, _) = problem(bh, t, f, e, 60);
        let proj = projection_weights(bh * t * e, 61); // (BH, T, E) loss weights = dL/dout
        let (dfq, dfk, dv) = backward(&fq, &fk, &v, &proj);
        for input in [Input::Fq, Input::Fk, Input::V] {
            let (mut values, grad) = match input {
                Input::Fq => (fq.clone(), dfq.clone()),
                Input::Fk => (fk.clone(), dfk.clone()),
                Input::V => (v.clone(), dv.clone()),
            };
            let grad: Vec<f32> = grad.iter().map(|g| g * scale).collect();
            let loss = |x: &[f32]| {
                let out = match input {
                    Input::Fq => forward(x, &fk, &v),
                    Input::Fk => forward(&fq, x, &v),
                    Input::V => forward(&fq, &fk, x),
                };
                projection_loss(&out, &proj)
            };
            check_param_grads(&format!("{input:?}"), &mut values, &grad, loss, &GradCheckOpts::default())?;
        }
        Ok(())
    }

    fn causal_fd(decay: bool, scale: f32) -> std::result::Result<(), String> {
        let (bh, t, f, e) = (2, 9, 4, 3);
        let (_, _, _, decay_values, _) = problem(bh, t, f, e, 60);
        let decay = decay.then_some(&decay_values[..]);
        let forward = |fq: &[f32], fk: &[f32], v: &[f32]| {
            let mut out = vec![0.0f32; bh * t * e]; // (BH, T, E)
            let mut den = vec![0.0f32; bh * t]; // (BH, T)
            causal_forward(fq, fk, v, decay, bh, t, f, e, 1e-3, &mut out, &mut den).unwrap();
            (out, den)
        };
        let backward = |fq: &[f32], fk: &[f32], v: &[f32], dout: &[f32]| {
            let (out, den) = forward(fq, fk, v);
            let (mut dfq, mut dfk, mut dv) = (vec![0.0f32; bh * t * f], vec![0.0f32; bh * t * f], vec![0.0f32; bh * t * e]);
            causal_backward(fq, fk, v, decay, &out, &den, dout, bh, t, f, e, &mut dfq, &mut dfk, &mut dv).unwrap();
            (dfq, dfk, dv)
        };
        fd_check((bh, t, f, e), |a, b, c| forward(a, b, c).0, backward, scale)
    }

    #[test]
    fn causal_backward_passes_finite_differences() {
        causal_fd(false, 1.0).unwrap();
        causal_fd(true, 1.0).unwrap();
    }

    #[test]
    fn finite_difference_check_catches_a_gradient_off_by_five_percent() {
        assert!(causal_fd(true, 1.05).is_err());
        assert!(bidirectional_fd(1.05).is_err());
    }

    fn bidirectional_fd(scale: f32) -> std::result::Result<(), String> {
        let (b, h, t, f, e) = (2, 1, 8, 4, 3);
        let lengths = [8usize, 5];
        let forward = |fq: &[f32], fk: &[f32], v: &[f32]| {
            let mut out = vec![0.0f32; b * h * t * e]; // (BH, T, E)
            let mut den = vec![0.0f32; b * h * t]; // (BH, T)
            bidirectional_forward(fq, fk, v, b, h, Some(&lengths), t, f, e, 1e-3, &mut out, &mut den).unwrap();
            (out, den)
        };
        let backward = |fq: &[f32], fk: &[f32], v: &[f32], dout: &[f32]| {
            let (out, den) = forward(fq, fk, v);
            let (mut dfq, mut dfk, mut dv) = (vec![0.0f32; b * h * t * f], vec![0.0f32; b * h * t * f], vec![0.0f32; b * h * t * e]);
            bidirectional_backward(fq, fk, v, b, h, Some(&lengths), &out, &den, dout, t, f, e, &mut dfq, &mut dfk, &mut dv).unwrap();
            (dfq, dfk, dv)
        };
        fd_check((b * h, t, f, e), |a, b, c| forward(a, b, c).0, backward, scale)
    }

    #[test]
    fn bidirectional_backward_passes_finite_differences() {
        bidirectional_fd(1.0).unwrap();
    }

    #[test]
    fn elu_feature_map_backward_passes_finite_differences() {
        // Both branches, away from the kink at 0.
        let mut x = uniform(64, 70, -3.0, 3.0);
        x.iter_mut().filter(|v| v.abs() < 0.05).for_each(|v| *v = 0.5);
        let mut y = vec![0.0f32; 64];
        elu_feature_map(&x, &mut y).unwrap();
        for (&xv, &yv) in x.iter().zip(&y) {
            let want = if xv > 0.0 { xv as f64 + 1.0 } else { (xv as f64).exp() };
            assert!((yv as f64 - want).abs() < 1e-6 * want.max(1.0), "elu+1({xv}) = {yv}, want {want}");
        }
        let proj = projection_weights(64, 71);
        let mut dx = vec![f32::NAN; 64];
        elu_feature_map_backward(&x, &proj, &mut dx).unwrap();
        let loss = |x: &[f32]| {
            let mut y = vec![0.0f32; x.len()];
            elu_feature_map(x, &mut y).unwrap();
            projection_loss(&y, &proj)
        };
        check_param_grads("elu x", &mut x.clone(), &dx, loss, &GradCheckOpts::default()).unwrap();
        let wrong: Vec<f32> = dx.iter().map(|g| g * 1.05).collect();
        assert!(check_param_grads("elu x (scaled)", &mut x.clone(), &wrong, loss, &GradCheckOpts::default()).is_err());
    }

    #[test]
    fn causal_step_reproduces_causal_forward_rows() {
        let (bh, t, f, e) = (3, 301, 40, 37);
        let (fq, fk, v, decay, _) = problem(bh, t, f, e, 80);
        for with_decay in [false, true] {
            let decay = with_decay.then_some(&decay[..]);
            let mut out = vec![0.0f32; bh * t * e]; // (BH, T, E)
            let mut den = vec![0.0f32; bh * t]; // (BH, T)
            causal_forward(&fq, &fk, &v, decay, bh, t, f, e, 1e-3, &mut out, &mut den).unwrap();
            let mut state = LinearState::new(bh, f, e);
            let (mut q_t, mut k_t, mut v_t, mut d_t) = (vec![0.0f32; bh * f], vec![0.0f32; bh * f], vec![0.0f32; bh * e], vec![0.0f32; bh]);
            let mut out_t = vec![0.0f32; bh * e]; // (BH, E)
            for i in 0..t {
                for u in 0..bh {
                    q_t[u * f..(u + 1) * f].copy_from_slice(&fq[(u * t + i) * f..(u * t + i + 1) * f]);
                    k_t[u * f..(u + 1) * f].copy_from_slice(&fk[(u * t + i) * f..(u * t + i + 1) * f]);
                    v_t[u * e..(u + 1) * e].copy_from_slice(&v[(u * t + i) * e..(u * t + i + 1) * e]);
                    d_t[u] = decay.map_or(1.0, |d| d[u * t + i]);
                }
                causal_step(&mut state, &q_t, &k_t, &v_t, decay.map(|_| &d_t[..]), 1e-3, &mut out_t).unwrap();
                for u in 0..bh {
                    assert_eq!(&out_t[u * e..(u + 1) * e], &out[(u * t + i) * e..(u * t + i + 1) * e], "step {i} unit {u} decay {with_decay}");
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let (bh, t, f, e) = (2, 4, 3, 2);
        let (fq, fk, v, decay, dout) = problem(bh, t, f, e, 90);
        let mut out = vec![0.0f32; bh * t * e];
        let mut den = vec![0.0f32; bh * t];
        assert!(causal_forward(&fq[1..], &fk, &v, None, bh, t, f, e, 1e-3, &mut out, &mut den).is_err());
        assert!(causal_forward(&fq, &fk, &v, Some(&decay[1..]), bh, t, f, e, 1e-3, &mut out, &mut den).is_err());
        let mut bad = decay.clone();
        bad[3] = 1.5;
        assert!(causal_forward(&fq, &fk, &v, Some(&bad), bh, t, f, e, 1e-3, &mut out, &mut den).is_err());
        bad[3] = f32::NAN;
        assert!(causal_forward(&fq, &fk, &v, Some(&bad), bh, t, f, e, 1e-3, &mut out, &mut den).is_err());
        assert!(causal_forward(&fq, &fk, &v, None, bh, t, f, e, -1.0, &mut out, &mut den).is_err());
        assert!(bidirectional_forward(&fq, &fk, &v, 2, 1, Some(&[4, 5]), t, f, e, 1e-3, &mut out, &mut den).is_err());
        assert!(bidirectional_forward(&fq, &fk, &v, 2, 1, Some(&[4]), t, f, e, 1e-3, &mut out, &mut den).is_err());
        let (mut dfq, mut dfk, mut dv) = (vec![0.0f32; bh * t * f], vec![0.0f32; bh * t * f], vec![0.0f32; bh * t * e]);
        assert!(causal_backward(&fq, &fk, &v, None, &out, &den, &dout[1..], bh, t, f, e, &mut dfq, &mut dfk, &mut dv).is_err());
        let mut state = LinearState::new(bh, f, e);
        let mut out_t = vec![0.0f32; bh * e];
        assert!(causal_step(&mut state, &fq[..bh * f], &fk[..bh * f], &v[..bh * e - 1], None, 1e-3, &mut out_t).is_err());
        assert!(elu_feature_map(&fq, &mut out).is_err());
        assert!(causal_forward(&[], &[], &v, None, bh, t, 0, e, 1e-3, &mut out, &mut den).is_err());
        assert!(bidirectional_forward(&fq, &fk, &[], 2, 1, None, t, f, 0, 1e-3, &mut [], &mut den).is_err());
        assert!(causal_step(&mut LinearState::new(bh, f, 0), &fq[..bh * f], &fk[..bh * f], &[], None, 1e-3, &mut []).is_err());
    }

    /// The chunked alternative to the per-step sweep (no decay), kept as the comparison of
    /// `timing_of_causal_kernels`: within a chunk of `c` steps, `out = mask(Q Kᵀ) V + Q S`, then
    /// `S += Kᵀ V`, all by GEMM.
    #[allow(clippy::too_many_arguments)]
    fn chunked_causal_forward(fq: &[f32], fk: &[f32], v: &[f32], t: usize, f: usize, e: usize, eps: f32, c: usize, out: &mut [f32], den: &mut [f32]) {
        out.par_chunks_mut(t * e).zip(den.par_chunks_mut(t)).enumerate().for_each(|(unit, (out, den))| {
            let fq = &fq[unit * t * f..(unit + 1) * t * f]; // (T, F)
            let fk = &fk[unit * t * f..(unit + 1) * t * f]; // (T, F)
            let v = &v[unit * t * e..(unit + 1) * t * e]; // (T, E)
            let mut s = vec![0.0f32; f * e]; // (F, E) state before the chunk
            let mut z = vec![0.0f32; f]; // (F)
            let mut a = vec![0.0f32; c * c]; // (C, C) masked scores
            for c0 in (0..t).step_by(c) {
                let l = c.min(t - c0);
                let (q, k, vc) = (&fq[c0 * f..(c0 + l) * f], &fk[c0 * f..(c0 + l) * f], &v[c0 * e..(c0 + l) * e]);
                matmul(l, l, f, 1.0, q, Trans::N, k, Trans::T, 0.0, &mut a);
                for i in 0..l {
                    a[i * l + i + 1..(i + 1) * l].iter_mut().for_each(|x| *x = 0.0);
                }
                let o = &mut out[c0 * e..(c0 + l) * e];
                matmul(l, e, l, 1.0, &a, Trans::N, vc, Trans::N, 0.0, o);
                matmul(l, e, f, 1.0, q, Trans::N, &s, Trans::N, 1.0, o);
                for i in 0..l {
                    let d = a[i * l..(i + 1) * l].iter().sum::<f32>() + dot(&q[i * f..(i + 1) * f], &z) + eps;
                    den[c0 + i] = d;
                    o[i * e..(i + 1) * e].iter_mut().for_each(|x| *x /= d);
                }
                matmul(f, e, l, 1.0, k, Trans::T, vc, Trans::N, 1.0, &mut s);
                z.iter_mut().zip(column_sums(k, f)).for_each(|(zv, kv)| *zv += kv);
            }
        });
    }

    /// CPU time of the whole process so far, in seconds (the sum over its threads of
    /// `/proc/self/task/*/schedstat`), so that timings on a shared machine count only our own cycles.
    fn process_cpu_seconds() -> f64 {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
            .filter_map(|line| line.split_whitespace().next()?.parse::<f64>().ok())
            .sum::<f64>()
            * 1e-9
    }

    /// Median wall and CPU seconds of `repeats` runs after one warm-up.
    fn median_seconds(repeats: usize, mut run: impl FnMut()) -> (f64, f64) {
        run();
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..repeats {
            let (start, cpu0) = (std::time::Instant::now(), process_cpu_seconds());
            run();
            wall.push(start.elapsed().as_secs_f64());
            cpu.push(process_cpu_seconds() - cpu0);
        }
        wall.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        (wall[repeats / 2], cpu[repeats / 2])
    }

    /// Timings of the causal kernels at F = E = 64, wall and process CPU milliseconds (median), run with
    /// `cargo test --release -p effseq --lib timing_of_causal_kernels -- --ignored --nocapture`. Shapes from
    /// `EFFSEQ_LINEAR_BENCH="BH,T;BH,T"` (default 4,1024;4,4096), modes from `EFFSEQ_LINEAR_MODES` (default
    /// `forward,decay,train,chunked`), repeats from `EFFSEQ_LINEAR_REPEATS` (default 3). Also checks that the
    /// chunked form agrees with the sweep.
    #[test]
    #[ignore = "timing; run explicitly"]
    fn timing_of_causal_kernels() {
        let spec = std::env::var("EFFSEQ_LINEAR_BENCH").unwrap_or_else(|_| "4,1024;4,4096".into());
        let modes = std::env::var("EFFSEQ_LINEAR_MODES").unwrap_or_else(|_| "forward,decay,train,chunked".into());
        let repeats: usize = std::env::var("EFFSEQ_LINEAR_REPEATS").map_or(3, |r| r.parse().expect("repeats"));
        let (f, e) = (64, 64);
        for shape in spec.split(';') {
            let dims: Vec<usize> = shape.split(',').map(|x| x.trim().parse().expect("BH,T")).collect();
            let (bh, t) = (dims[0], dims[1]);
            let (fq, fk, v, decay, dout) = problem(bh, t, f, e, 5);
            let mut out = vec![0.0f32; bh * t * e]; // (BH, T, E)
            let mut den = vec![0.0f32; bh * t]; // (BH, T)
            let (mut dfq, mut dfk, mut dv) = (vec![0.0f32; bh * t * f], vec![0.0f32; bh * t * f], vec![0.0f32; bh * t * e]);
            let mut line = format!("BH {bh:3} T {t:6} F {f} E {e}:");
            let mut report = |name: &str, (wall, cpu): (f64, f64)| line += &format!(" {name} {:.2} ms (cpu {:.2} ms);", wall * 1e3, cpu * 1e3);
            for mode in modes.split(',') {
                match mode {
                    "forward" => {
                        report("forward", median_seconds(repeats, || causal_forward(&fq, &fk, &v, None, bh, t, f, e, 1e-6, &mut out, &mut den).unwrap()))
                    }
                    "decay" => report(
                        "forward+decay",
                        median_seconds(repeats, || causal_forward(&fq, &fk, &v, Some(&decay), bh, t, f, e, 1e-6, &mut out, &mut den).unwrap()),
                    ),
                    "train" => report(
                        "forward+backward",
                        median_seconds(repeats, || {
                            causal_forward(&fq, &fk, &v, None, bh, t, f, e, 1e-6, &mut out, &mut den).unwrap();
                            causal_backward(&fq, &fk, &v, None, &out, &den, &dout, bh, t, f, e, &mut dfq, &mut dfk, &mut dv).unwrap();
                        }),
                    ),
                    "chunked" => {
                        causal_forward(&fq, &fk, &v, None, bh, t, f, e, 1e-6, &mut out, &mut den).unwrap();
                        for c in [32, 64, 128] {
                            let (mut out_c, mut den_c) = (vec![0.0f32; bh * t * e], vec![0.0f32; bh * t]);
                            report(
                                &format!("chunked C={c} forward"),
                                median_seconds(repeats, || chunked_causal_forward(&fq, &fk, &v, t, f, e, 1e-6, c, &mut out_c, &mut den_c)),
                            );
                            let worst = out.iter().zip(&out_c).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                            assert!(worst < 1e-3, "chunked form disagrees by {worst}");
                        }
                    }
                    other => panic!("unknown mode {other}"),
                }
            }
            println!("{line}");
        }
    }
}
