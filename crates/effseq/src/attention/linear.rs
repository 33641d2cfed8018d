//! Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with
//! Linear Attention"): with a feature map phi, attention becomes
//!
//! ```text
//! out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),   S_i = sum_{j in K(i)} phi(k_j) v_j^T  (F x E),   z_i = sum phi(k_j)
//! ```
//!
//! (eq. 4-6), with K(i) = every valid key (bidirectional) or j <= i (causal, eq. 8-9). The causal form is an RNN
//! (eq. 18-20): S_i = decay_i S_{i-1} + phi(k_i) v_i^T. `decay` is 1 for the Linear Transformer; the Performer's
//! causal stabiliser ([`super::favor`]) uses it to rescale the state when its running maximum grows.
//!
//! The causal kernel is fused (Algorithm 1): the forward sweep keeps one `(F, E + 1)` state per (b, h) — the
//! normaliser z rides along as an extra value column of ones — and writes O(T (E + 1)); the backward recomputes
//! the states in a forward sweep for dq and runs a reverse sweep of the adjoint state for dk and dv, so memory is
//! O(T (F + E)) and never O(T F E). Every (b, h) is independent: rayon runs them in parallel.
//!
//! Layout: head-major, `fq, fk (BH, T, F)`, `v, out (BH, T, E)`, `den (BH, T)`.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::linalg::{matmul, Trans};

/// `elu(x) + 1` (eq. 7), the Linear Transformer's feature map: positive, smooth, `x + 1` for x > 0.
pub fn elu_feature_map(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = if v > 0.0 { v + 1.0 } else { crate::math::exp(v) };
    }
}

/// Backward of [`elu_feature_map`]: `dx = dout * (1 if x > 0 else exp(x))`, OVERWRITING `dx`.
pub fn elu_feature_map_backward(x: &[f32], dout: &[f32], dx: &mut [f32]) {
    for ((d, &g), &v) in dx.iter_mut().zip(dout).zip(x) {
        *d = if v > 0.0 { g } else { g * crate::math::exp(v) };
    }
}

fn check_shapes(fq: &[f32], fk: &[f32], v: &[f32], bh: usize, t: usize, f: usize, e: usize) -> Result<()> {
    check_len("linear attention query features (BH, T, F)", &[bh, t, f], fq.len())?;
    check_len("linear attention key features (BH, T, F)", &[bh, t, f], fk.len())?;
    check_len("linear attention values (BH, T, E)", &[bh, t, e], v.len())
}

/// `acc (F, E) += a (F) b^T (E)`.
#[inline]
fn rank1(acc: &mut [f32], a: &[f32], b: &[f32]) {
    let e = b.len();
    for (row, &ai) in acc.chunks_exact_mut(e).zip(a) {
        for (s, &bj) in row.iter_mut().zip(b) {
            *s += ai * bj;
        }
    }
}

/// `out (E) = s^T (E, F) a (F)` for `s (F, E)`.
#[inline]
fn project(s: &[f32], a: &[f32], out: &mut [f32]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    for (row, &ai) in s.chunks_exact(out.len()).zip(a) {
        for (o, &sj) in out.iter_mut().zip(row) {
            *o += ai * sj;
        }
    }
}

/// Steps per chunk of the causal kernels: inside a chunk the prefix sums are a masked `C x C` product, across
/// chunks the `(F, E + 1)` state carries the past (the chunked form of eq. 8-9), so every product is a GEMM.
const CHUNK: usize = 64;

/// Smallest log-decay used: a decay below exp(-80) (the Performer's stabiliser jumping by more than 80) is treated
/// as exp(-80), which already wipes the state out in f32.
const MIN_LOG_DECAY: f32 = -80.0;

/// Per-chunk scratch of the causal kernels (sizes for a full chunk of C steps).
struct ChunkScratch {
    /// `(C, C)` masked, decay-weighted `Fq Fk^T`.
    a: Vec<f32>,
    /// `(C, C)` masked, decay-weighted `G' V'^T` (backward).
    ag: Vec<f32>,
    /// `(C, E + 1)` values with the column of ones, `[v | 1]`.
    vp: Vec<f32>,
    /// `(C, E + 1)` numerators (forward) or augmented output gradients `G' = [g | h]` (backward).
    g: Vec<f32>,
    /// `(C, E + 1)` scaled copies.
    scaled_e: Vec<f32>,
    /// `(C, F)` scaled copies.
    scaled_f: Vec<f32>,
    /// `(C, E + 1)` dV' (backward).
    dvp: Vec<f32>,
    /// `(C)` log-decay prefix `lambda_i` inside the chunk.
    lambda: Vec<f32>,
}

impl ChunkScratch {
    fn new(f: usize, e1: usize) -> ChunkScratch {
        ChunkScratch {
            a: vec![0.0; CHUNK * CHUNK],
            ag: vec![0.0; CHUNK * CHUNK],
            vp: vec![0.0; CHUNK * e1],
            g: vec![0.0; CHUNK * e1],
            scaled_e: vec![0.0; CHUNK * e1],
            scaled_f: vec![0.0; CHUNK * f],
            dvp: vec![0.0; CHUNK * e1],
            lambda: vec![0.0; CHUNK],
        }
    }

    /// Fills `lambda_i = sum_{l=c0..i} ln decay_l` for the chunk's `n` rows starting at global row `row0`.
    fn set_lambda(&mut self, decay: Option<&[f32]>, row0: usize, n: usize) {
        let mut acc = 0.0f32;
        for i in 0..n {
            if let Some(d) = decay {
                acc += d[row0 + i].ln().max(MIN_LOG_DECAY);
            }
            self.lambda[i] = acc;
        }
    }

    /// Copies `v (n, E)` into `vp (n, E + 1)` with a last column of ones.
    fn set_values(&mut self, v: &[f32], n: usize, e: usize) {
        for (dst, src) in self.vp.chunks_exact_mut(e + 1).zip(v.chunks_exact(e)).take(n) {
            dst[..e].copy_from_slice(src);
            dst[e] = 1.0;
        }
    }
}

/// `m (n, n)`: zero above the diagonal, `m_ij *= exp(lambda_i - lambda_j)` on and below it.
fn mask_and_weight(m: &mut [f32], n: usize, lambda: &[f32], decayed: bool) {
    for i in 0..n {
        let row = &mut m[i * n..(i + 1) * n];
        row[i + 1..].iter_mut().for_each(|x| *x = 0.0);
        if decayed {
            for (j, x) in row[..=i].iter_mut().enumerate() {
                *x *= crate::math::exp(lambda[i] - lambda[j]);
            }
        }
    }
}

/// `dst (n, w)` = `src (n, w)` with row i scaled by `weight(i)`.
fn scale_rows(dst: &mut [f32], src: &[f32], n: usize, w: usize, weight: impl Fn(usize) -> f32) {
    for (i, (d, s)) in dst.chunks_exact_mut(w).zip(src.chunks_exact(w)).take(n).enumerate() {
        let a = weight(i);
        d.iter_mut().zip(s).for_each(|(x, &y)| *x = a * y);
    }
}

/// Causal linear attention (eq. 8-9) with optional per-step state decay, fused and chunked. Writes `out (BH, T, E)`
/// and the normaliser `den (BH, T)` = phi(q_i)^T z_i (without eps), both needed by [`causal_backward`].
///
/// Per chunk of C rows with log-decay prefix `lambda` (the state before the chunk is `S' (F, E + 1)`, values
/// augmented with ones): `Num' = (M . Fq Fk^T) V' + diag(e^lambda) Fq S'`, `M_ij = e^(lambda_i - lambda_j) [j <= i]`,
/// then `S' <- e^(lambda_last) S' + Fk^T diag(e^(lambda_last - lambda)) V'`.
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
    check_shapes(fq, fk, v, bh, t, f, e)?;
    check_len("linear attention output (BH, T, E)", &[bh, t, e], out.len())?;
    check_len("linear attention normaliser (BH, T)", &[bh, t], den.len())?;
    if let Some(d) = decay {
        check_len("linear attention decay (BH, T)", &[bh, t], d.len())?;
    }
    if t == 0 || bh == 0 {
        return Ok(());
    }
    let e1 = e + 1;
    out.par_chunks_mut(t * e).zip(den.par_chunks_mut(t)).enumerate().for_each(|(u, (out_u, den_u))| {
        let mut s = vec![0.0f32; f * e1]; // (F, E + 1) state S' = [S | z]
        let mut c = ChunkScratch::new(f, e1);
        for c0 in (0..t).step_by(CHUNK) {
            let n = CHUNK.min(t - c0);
            let row0 = u * t + c0;
            let (fq_c, fk_c) = (&fq[row0 * f..(row0 + n) * f], &fk[row0 * f..(row0 + n) * f]);
            c.set_lambda(decay, row0, n);
            c.set_values(&v[row0 * e..(row0 + n) * e], n, e);
            let a = &mut c.a[..n * n];
            matmul(n, n, f, 1.0, fq_c, Trans::N, fk_c, Trans::T, 0.0, a);
            mask_and_weight(a, n, &c.lambda, decay.is_some());
            let num = &mut c.g[..n * e1];
            matmul(n, e1, n, 1.0, a, Trans::N, &c.vp[..n * e1], Trans::N, 0.0, num);
            if c0 > 0 {
                let lambda = &c.lambda;
                scale_rows(&mut c.scaled_f, fq_c, n, f, |i| crate::math::exp(lambda[i]));
                matmul(n, e1, f, 1.0, &c.scaled_f[..n * f], Trans::N, &s, Trans::N, 1.0, num);
            }
            for i in 0..n {
                let row = &num[i * e1..(i + 1) * e1];
                den_u[c0 + i] = row[e];
                let inv = 1.0 / (row[e] + eps);
                out_u[(c0 + i) * e..(c0 + i + 1) * e].iter_mut().zip(&row[..e]).for_each(|(o, &x)| *o = x * inv);
            }
            // Carry the state past the chunk.
            let last = c.lambda[n - 1];
            if decay.is_some() {
                let g = crate::math::exp(last);
                s.iter_mut().for_each(|x| *x *= g);
            }
            let lambda = &c.lambda;
            scale_rows(&mut c.scaled_e, &c.vp, n, e1, |j| crate::math::exp(last - lambda[j]));
            matmul(f, e1, n, 1.0, fk_c, Trans::T, &c.scaled_e[..n * e1], Trans::N, 1.0, &mut s);
        }
    });
    Ok(())
}

/// Gradients of [`causal_forward`] (Algorithm 1, chunked): `dfq, dfk (BH, T, F)`, `dv (BH, T, E)`, OVERWRITTEN.
/// With `g_i = dout_i / (den_i + eps)` and `h_i = -(dout_i . out_i) / (den_i + eps)` (the gradients of numerator and
/// normaliser) stacked as `G' = [g | h]`: a forward sweep recomputes the state `S'` and gives
/// `dFq = (M . G' V'^T) Fk + diag(e^lambda) G' S'^T`; a reverse sweep carries the adjoint state `R' (F, E + 1)` and
/// gives `dFk = (M . G' V'^T)^T Fq + diag(e^(lambda_last - lambda)) V' R'^T`, `dV' = (M . Fq Fk^T)^T G' +
/// diag(e^(lambda_last - lambda)) Fk R'`. Memory O(T (F + E)) plus one `(F, E + 1)` state per (b, h).
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
    eps: f32,
    dfq: &mut [f32],
    dfk: &mut [f32],
    dv: &mut [f32],
) -> Result<()> {
    check_shapes(fq, fk, v, bh, t, f, e)?;
    for (what, buf, n) in [("output", out, e), ("output gradient", dout, e), ("normaliser", den, 1)] {
        check_len(&format!("linear attention {what}"), &[bh, t, n], buf.len())?;
    }
    check_len("dfq (BH, T, F)", &[bh, t, f], dfq.len())?;
    check_len("dfk (BH, T, F)", &[bh, t, f], dfk.len())?;
    check_len("dv (BH, T, E)", &[bh, t, e], dv.len())?;
    if let Some(d) = decay {
        check_len("linear attention decay (BH, T)", &[bh, t], d.len())?;
    }
    if t == 0 || bh == 0 {
        return Ok(());
    }
    let e1 = e + 1;
    let unit = |u: usize, dfq_u: &mut [f32], dfk_u: &mut [f32], dv_u: &mut [f32]| {
        let mut c = ChunkScratch::new(f, e1);
        // G' rows of the chunk: [dout / (den + eps), -(dout . out) / (den + eps)].
        let fill_g = |g: &mut [f32], row0: usize, n: usize| {
            for i in 0..n {
                let row = row0 + i;
                let inv = 1.0 / (den[row] + eps);
                let dst = &mut g[i * e1..(i + 1) * e1];
                let mut dot = 0.0f32;
                for ((x, &d), &o) in dst[..e].iter_mut().zip(&dout[row * e..(row + 1) * e]).zip(&out[row * e..(row + 1) * e]) {
                    *x = d * inv;
                    dot += d * o;
                }
                dst[e] = -dot * inv;
            }
        };
        // Forward sweep: dFq.
        let mut s = vec![0.0f32; f * e1]; // (F, E + 1) state S'
        for c0 in (0..t).step_by(CHUNK) {
            let n = CHUNK.min(t - c0);
            let row0 = u * t + c0;
            let fk_c = &fk[row0 * f..(row0 + n) * f];
            c.set_lambda(decay, row0, n);
            c.set_values(&v[row0 * e..(row0 + n) * e], n, e);
            fill_g(&mut c.g, row0, n);
            let ag = &mut c.ag[..n * n];
            matmul(n, n, e1, 1.0, &c.g[..n * e1], Trans::N, &c.vp[..n * e1], Trans::T, 0.0, ag);
            mask_and_weight(ag, n, &c.lambda, decay.is_some());
            let dq = &mut dfq_u[c0 * f..(c0 + n) * f];
            matmul(n, f, n, 1.0, ag, Trans::N, fk_c, Trans::N, 0.0, dq);
            if c0 > 0 {
                let lambda = &c.lambda;
                scale_rows(&mut c.scaled_e, &c.g, n, e1, |i| crate::math::exp(lambda[i]));
                matmul(n, f, e1, 1.0, &c.scaled_e[..n * e1], Trans::N, &s, Trans::T, 1.0, dq);
            }
            let last = c.lambda[n - 1];
            if decay.is_some() {
                let g = crate::math::exp(last);
                s.iter_mut().for_each(|x| *x *= g);
            }
            let lambda = &c.lambda;
            scale_rows(&mut c.scaled_e, &c.vp, n, e1, |j| crate::math::exp(last - lambda[j]));
            matmul(f, e1, n, 1.0, fk_c, Trans::T, &c.scaled_e[..n * e1], Trans::N, 1.0, &mut s);
        }
        // Reverse sweep: dFk and dV with the adjoint state R' (the later chunks, expressed at this chunk's end).
        let r = &mut s; // (F, E + 1) adjoint state R'
        r.iter_mut().for_each(|x| *x = 0.0);
        let chunks: Vec<usize> = (0..t).step_by(CHUNK).collect();
        for (k, &c0) in chunks.iter().enumerate().rev() {
            let n = CHUNK.min(t - c0);
            let row0 = u * t + c0;
            let (fq_c, fk_c) = (&fq[row0 * f..(row0 + n) * f], &fk[row0 * f..(row0 + n) * f]);
            c.set_lambda(decay, row0, n);
            c.set_values(&v[row0 * e..(row0 + n) * e], n, e);
            fill_g(&mut c.g, row0, n);
            let (a, ag) = (&mut c.a[..n * n], &mut c.ag[..n * n]);
            matmul(n, n, f, 1.0, fq_c, Trans::N, fk_c, Trans::T, 0.0, a);
            mask_and_weight(a, n, &c.lambda, decay.is_some());
            matmul(n, n, e1, 1.0, &c.g[..n * e1], Trans::N, &c.vp[..n * e1], Trans::T, 0.0, ag);
            mask_and_weight(ag, n, &c.lambda, decay.is_some());
            let last = c.lambda[n - 1];
            let dk = &mut dfk_u[c0 * f..(c0 + n) * f];
            matmul(n, f, n, 1.0, ag, Trans::T, fq_c, Trans::N, 0.0, dk);
            let dvp = &mut c.dvp[..n * e1];
            matmul(n, e1, n, 1.0, a, Trans::T, &c.g[..n * e1], Trans::N, 0.0, dvp);
            if k + 1 < chunks.len() {
                let lambda = &c.lambda;
                scale_rows(&mut c.scaled_e, &c.vp, n, e1, |j| crate::math::exp(last - lambda[j]));
                matmul(n, f, e1, 1.0, &c.scaled_e[..n * e1], Trans::N, r, Trans::T, 1.0, dk);
                scale_rows(&mut c.scaled_f, fk_c, n, f, |j| crate::math::exp(last - lambda[j]));
                matmul(n, e1, f, 1.0, &c.scaled_f[..n * f], Trans::N, r, Trans::N, 1.0, dvp);
            }
            for i in 0..n {
                dv_u[(c0 + i) * e..(c0 + i + 1) * e].copy_from_slice(&dvp[i * e1..i * e1 + e]);
            }
            // R' <- e^(lambda_last) R' + Fq^T diag(e^lambda) G', now expressed at the previous chunk's end.
            if decay.is_some() {
                let g = crate::math::exp(last);
                r.iter_mut().for_each(|x| *x *= g);
            }
            let lambda = &c.lambda;
            scale_rows(&mut c.scaled_e, &c.g, n, e1, |i| crate::math::exp(lambda[i]));
            matmul(f, e1, n, 1.0, fq_c, Trans::T, &c.scaled_e[..n * e1], Trans::N, 1.0, r);
        }
    };
    dfq.par_chunks_mut(t * f).zip(dfk.par_chunks_mut(t * f)).zip(dv.par_chunks_mut(t * e)).enumerate().for_each(|(u, ((a, b), c))| unit(u, a, b, c));
    Ok(())
}

/// The number of valid keys of every (b, h): `lengths[b]` (right padding) or T.
fn valid_keys(b: usize, h: usize, t: usize, lengths: Option<&[usize]>) -> Result<Vec<usize>> {
    match lengths {
        None => Ok(vec![t; b * h]),
        Some(l) => {
            check_len("sequence lengths (B)", &[b], l.len())?;
            if let Some(&bad) = l.iter().find(|&&n| n > t) {
                return Err(Error::Invalid(format!("a sequence length {bad} exceeds T = {t}")));
            }
            Ok((0..b * h).map(|u| l[u / h]).collect())
        }
    }
}

/// Bidirectional linear attention (eq. 6): every query attends to the first `lengths[b]` keys of its sequence
/// (a padded key contributes nothing). Writes `out (BH, T, E)` and `den (BH, T)` (without eps).
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
    check_shapes(fq, fk, v, bh, t, f, e)?;
    check_len("linear attention output (BH, T, E)", &[bh, t, e], out.len())?;
    check_len("linear attention normaliser (BH, T)", &[bh, t], den.len())?;
    let valid = valid_keys(b, h, t, lengths)?;
    if t == 0 || bh == 0 {
        return Ok(());
    }
    out.par_chunks_mut(t * e).zip(den.par_chunks_mut(t)).enumerate().for_each(|(u, (out_u, den_u))| {
        let mut s = vec![0.0f32; f * e]; // (F, E) = sum_j fk_j v_j^T over valid keys
        let mut z = vec![0.0f32; f]; // (F)
        for j in 0..valid[u] {
            let row = u * t + j;
            rank1(&mut s, &fk[row * f..(row + 1) * f], &v[row * e..(row + 1) * e]);
            z.iter_mut().zip(&fk[row * f..(row + 1) * f]).for_each(|(a, &b)| *a += b);
        }
        for i in 0..t {
            let q_i = &fq[(u * t + i) * f..(u * t + i + 1) * f];
            let o = &mut out_u[i * e..(i + 1) * e];
            project(&s, q_i, o);
            let d_i: f32 = q_i.iter().zip(&z).map(|(a, b)| a * b).sum();
            den_u[i] = d_i;
            let inv = 1.0 / (d_i + eps);
            o.iter_mut().for_each(|x| *x *= inv);
        }
    });
    Ok(())
}

/// Gradients of [`bidirectional_forward`], OVERWRITTEN: `dfq_i = S g_i + z h_i`; with `G = sum_i fq_i g_i^T` and
/// `c = sum_i h_i fq_i`, a valid key gets `dfk_j = G v_j + c`, `dv_j = G^T fk_j`; a padded key gets zeros.
#[allow(clippy::too_many_arguments)]
pub fn bidirectional_backward(
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
    out: &[f32],
    den: &[f32],
    dout: &[f32],
    dfq: &mut [f32],
    dfk: &mut [f32],
    dv: &mut [f32],
) -> Result<()> {
    let bh = b * h;
    check_shapes(fq, fk, v, bh, t, f, e)?;
    check_len("dfq (BH, T, F)", &[bh, t, f], dfq.len())?;
    check_len("dfk (BH, T, F)", &[bh, t, f], dfk.len())?;
    check_len("dv (BH, T, E)", &[bh, t, e], dv.len())?;
    check_len("linear attention output gradient (BH, T, E)", &[bh, t, e], dout.len())?;
    let valid = valid_keys(b, h, t, lengths)?;
    if t == 0 || bh == 0 {
        return Ok(());
    }
    dfq.par_chunks_mut(t * f).zip(dfk.par_chunks_mut(t * f)).zip(dv.par_chunks_mut(t * e)).enumerate().for_each(|(u, ((dfq_u, dfk_u), dv_u))| {
        let mut s = vec![0.0f32; f * e]; // (F, E) S
        let mut z = vec![0.0f32; f]; // (F) z
        for j in 0..valid[u] {
            let row = u * t + j;
            rank1(&mut s, &fk[row * f..(row + 1) * f], &v[row * e..(row + 1) * e]);
            z.iter_mut().zip(&fk[row * f..(row + 1) * f]).for_each(|(a, &b)| *a += b);
        }
        let mut big_g = vec![0.0f32; f * e]; // (F, E) G
        let mut c = vec![0.0f32; f]; // (F) c
        let mut g = vec![0.0f32; e]; // (E)
        for i in 0..t {
            let row = u * t + i;
            let inv = 1.0 / (den[row] + eps);
            let mut dot = 0.0f32;
            for ((gj, &d), &o) in g.iter_mut().zip(&dout[row * e..(row + 1) * e]).zip(&out[row * e..(row + 1) * e]) {
                *gj = d * inv;
                dot += d * o;
            }
            let hh = -dot * inv;
            let q_i = &fq[row * f..(row + 1) * f];
            for ((dq, srow), &zf) in dfq_u[i * f..(i + 1) * f].iter_mut().zip(s.chunks_exact(e)).zip(&z) {
                *dq = srow.iter().zip(&g).map(|(a, b)| a * b).sum::<f32>() + zf * hh;
            }
            rank1(&mut big_g, q_i, &g);
            c.iter_mut().zip(q_i).for_each(|(a, &b)| *a += b * hh);
        }
        dfk_u.iter_mut().for_each(|x| *x = 0.0);
        dv_u.iter_mut().for_each(|x| *x = 0.0);
        for j in 0..valid[u] {
            let row = u * t + j;
            let (k_j, v_j) = (&fk[row * f..(row + 1) * f], &v[row * e..(row + 1) * e]);
            for ((dk, grow), &cf) in dfk_u[j * f..(j + 1) * f].iter_mut().zip(big_g.chunks_exact(e)).zip(&c) {
                *dk = grow.iter().zip(v_j).map(|(a, b)| a * b).sum::<f32>() + cf;
            }
            project(&big_g, k_j, &mut dv_u[j * e..(j + 1) * e]);
        }
    });
    Ok(())
}

/// The fixed-size recurrent state of causal linear attention for every (b, h) (eq. 18-20).
#[derive(Clone, Debug)]
pub struct LinearState {
    /// `(BH, F, E)` S.
    pub s: Vec<f32>,
    /// `(BH, F)` z.
    pub z: Vec<f32>,
    /// BH, F, E.
    bh: usize,
    f: usize,
    e: usize,
}

impl LinearState {
    /// A zero state for `bh` (batch, head) pairs with `f` features and `e` value dimensions.
    pub fn new(bh: usize, f: usize, e: usize) -> LinearState {
        LinearState { s: vec![0.0; bh * f * e], z: vec![0.0; bh * f], bh, f, e }
    }
}

/// One RNN-mode step: folds key `fk_t (BH, F)` and value `v_t (BH, E)` into the state (after scaling it by
/// `decay_t (BH)`), then reads `out_t (BH, E)` for the query `fq_t (BH, F)`. Cost O(BH F E), independent of how many
/// tokens came before; no allocation.
pub fn causal_step(state: &mut LinearState, fq_t: &[f32], fk_t: &[f32], v_t: &[f32], decay_t: Option<&[f32]>, eps: f32, out_t: &mut [f32]) -> Result<()> {
    let (bh, f, e) = (state.bh, state.f, state.e);
    check_len("step query features (BH, F)", &[bh, f], fq_t.len())?;
    check_len("step key features (BH, F)", &[bh, f], fk_t.len())?;
    check_len("step values (BH, E)", &[bh, e], v_t.len())?;
    check_len("step output (BH, E)", &[bh, e], out_t.len())?;
    if let Some(d) = decay_t {
        check_len("step decay (BH)", &[bh], d.len())?;
    }
    for u in 0..bh {
        let s = &mut state.s[u * f * e..(u + 1) * f * e];
        let z = &mut state.z[u * f..(u + 1) * f];
        if let Some(d) = decay_t {
            s.iter_mut().for_each(|x| *x *= d[u]);
            z.iter_mut().for_each(|x| *x *= d[u]);
        }
        let (q, k) = (&fq_t[u * f..(u + 1) * f], &fk_t[u * f..(u + 1) * f]);
        rank1(s, k, &v_t[u * e..(u + 1) * e]);
        z.iter_mut().zip(k).for_each(|(a, &b)| *a += b);
        let o = &mut out_t[u * e..(u + 1) * e];
        project(s, q, o);
        let inv = 1.0 / (q.iter().zip(z.iter()).map(|(a, b)| a * b).sum::<f32>() + eps);
        o.iter_mut().for_each(|x| *x *= inv);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{fill_uniform, rng_for};

    /// Causal or bidirectional linear attention in f64 through the explicit masked (T x T) matrix
    /// `A_ij = fq_i . fk_j * prod_{l=j+1..i} decay_l` (j <= i), the oracle.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        fq: &[f32],
        fk: &[f32],
        v: &[f32],
        decay: Option<&[f32]>,
        bh: usize,
        t: usize,
        f: usize,
        e: usize,
        causal: bool,
        valid: &[usize],
        eps: f64,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; bh * t * e];
        // log_prefix[u * t + i] = sum_{l <= i} ln decay_l, so prod_{l=j+1..i} decay_l = exp(log_prefix_i - log_prefix_j).
        let mut log_prefix = vec![0.0f64; bh * t];
        if let Some(d) = decay {
            for u in 0..bh {
                let mut acc = 0.0f64;
                for i in 0..t {
                    acc += (d[u * t + i] as f64).ln();
                    log_prefix[u * t + i] = acc;
                }
            }
        }
        for u in 0..bh {
            for i in 0..t {
                let mut num = vec![0.0f64; e];
                let mut den = 0.0f64;
                let upto = if causal { i + 1 } else { valid[u] };
                for j in 0..upto {
                    let mut w: f64 = (0..f).map(|x| fq[(u * t + i) * f + x] as f64 * fk[(u * t + j) * f + x] as f64).sum();
                    if causal {
                        w *= (log_prefix[u * t + i] - log_prefix[u * t + j]).exp();
                    }
                    den += w;
                    for (y, n) in num.iter_mut().enumerate() {
                        *n += w * v[(u * t + j) * e + y] as f64;
                    }
                }
                for y in 0..e {
                    out[(u * t + i) * e + y] = num[y] / (den + eps);
                }
            }
        }
        out
    }

    fn positive(n: usize, seed: u64) -> Vec<f32> {
        let mut x = vec![0.0f32; n];
        fill_uniform(&mut rng_for(seed, 3), &mut x, 1.0);
        x.iter().map(|v| v + 1.1).collect()
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = vec![0.0f32; n];
        fill_uniform(&mut rng_for(seed, 4), &mut x, 1.0);
        x
    }

    #[test]
    fn fused_kernels_match_the_masked_formulation() {
        // T = 150 crosses two chunk boundaries and ends in a partial chunk.
        let (b, h, t, f, e) = (2, 2, 150, 5, 3);
        let bh = b * h;
        let (fq, fk, v) = (positive(bh * t * f, 1), positive(bh * t * f, 2), random(bh * t * e, 3));
        let decay: Vec<f32> = positive(bh * t, 4).iter().map(|x| (x / 2.2).min(1.0)).collect();
        for d in [None, Some(&decay[..])] {
            let (mut out, mut den) = (vec![0.0; bh * t * e], vec![0.0; bh * t]);
            causal_forward(&fq, &fk, &v, d, bh, t, f, e, 1e-6, &mut out, &mut den).unwrap();
            let want = naive(&fq, &fk, &v, d, bh, t, f, e, true, &vec![t; bh], 1e-6);
            for (a, w) in out.iter().zip(&want) {
                assert!((*a as f64 - w).abs() < 1e-5 * w.abs().max(1.0), "causal decay={}: {a} vs {w}", d.is_some());
            }
        }
        let lengths = [150usize, 97];
        let (mut out, mut den) = (vec![0.0; bh * t * e], vec![0.0; bh * t]);
        bidirectional_forward(&fq, &fk, &v, b, h, Some(&lengths), t, f, e, 1e-6, &mut out, &mut den).unwrap();
        let valid: Vec<usize> = (0..bh).map(|u| lengths[u / h]).collect();
        let want = naive(&fq, &fk, &v, None, bh, t, f, e, false, &valid, 1e-6);
        for (a, w) in out.iter().zip(&want) {
            assert!((*a as f64 - w).abs() < 1e-5 * w.abs().max(1.0), "bidirectional: {a} vs {w}");
        }
    }

    /// Central differences in f64 of L = sum(out * r) through the f64 oracle against the analytic gradients.
    #[test]
    fn backward_matches_finite_differences_of_the_oracle() {
        // T = 140: three chunks, the last one partial.
        let (b, h, t, f, e) = (1, 2, 140, 4, 3);
        let bh = b * h;
        let (fq, fk, v) = (positive(bh * t * f, 5), positive(bh * t * f, 6), random(bh * t * e, 7));
        let r = random(bh * t * e, 8);
        // Decays near 1 so that early keys still matter at the end of the sequence.
        let decay: Vec<f32> = positive(bh * t, 9).iter().map(|x| 0.97 + 0.03 * (x / 2.1).min(1.0)).collect();
        let lengths = [117usize];
        for (causal, d) in [(true, None), (true, Some(&decay[..])), (false, None)] {
            let valid = if causal { vec![t; bh] } else { vec![117; bh] };
            let (mut out, mut den) = (vec![0.0; bh * t * e], vec![0.0; bh * t]);
            let (mut dfq, mut dfk, mut dv) = (vec![0.0; fq.len()], vec![0.0; fk.len()], vec![0.0; v.len()]);
            if causal {
                causal_forward(&fq, &fk, &v, d, bh, t, f, e, 1e-6, &mut out, &mut den).unwrap();
                causal_backward(&fq, &fk, &v, d, &out, &den, &r, bh, t, f, e, 1e-6, &mut dfq, &mut dfk, &mut dv).unwrap();
            } else {
                bidirectional_forward(&fq, &fk, &v, b, h, Some(&lengths), t, f, e, 1e-6, &mut out, &mut den).unwrap();
                bidirectional_backward(&fq, &fk, &v, b, h, Some(&lengths), t, f, e, 1e-6, &out, &den, &r, &mut dfq, &mut dfk, &mut dv).unwrap();
            }
            let loss = |fq: &[f32], fk: &[f32], v: &[f32]| -> f64 {
                naive(fq, fk, v, d, bh, t, f, e, causal, &valid, 1e-6).iter().zip(&r).map(|(o, &w)| o * w as f64).sum()
            };
            let step = 1e-3f32;
            for (which, analytic) in [(0, &dfq), (1, &dfk), (2, &dv)] {
                for idx in (0..analytic.len()).step_by(11) {
                    let mut bufs = [fq.clone(), fk.clone(), v.clone()];
                    bufs[which][idx] += step;
                    let up = loss(&bufs[0], &bufs[1], &bufs[2]);
                    bufs[which][idx] -= 2.0 * step;
                    let down = loss(&bufs[0], &bufs[1], &bufs[2]);
                    let numeric = (up - down) / (2.0 * step as f64);
                    let got = analytic[idx] as f64;
                    assert!(
                        (got - numeric).abs() < 2e-3 * numeric.abs().max(0.1),
                        "causal={causal} decay={} input {which}[{idx}]: {got} vs {numeric}",
                        d.is_some()
                    );
                    // The check can fail: a 5% error on a clearly non-zero gradient is caught.
                    if numeric.abs() > 0.1 {
                        assert!((1.05 * got - numeric).abs() > 2e-3 * numeric.abs().max(0.1));
                    }
                }
            }
        }
    }

    #[test]
    fn rnn_mode_steps_equal_the_parallel_form() {
        let (bh, t, f, e) = (3, 75, 4, 5);
        let (fq, fk, v) = (positive(bh * t * f, 10), positive(bh * t * f, 11), random(bh * t * e, 12));
        let decay: Vec<f32> = positive(bh * t, 13).iter().map(|x| (x / 2.2).min(1.0)).collect();
        let (mut out, mut den) = (vec![0.0; bh * t * e], vec![0.0; bh * t]);
        causal_forward(&fq, &fk, &v, Some(&decay), bh, t, f, e, 1e-6, &mut out, &mut den).unwrap();
        let mut state = LinearState::new(bh, f, e);
        let mut o = vec![0.0f32; bh * e];
        for i in 0..t {
            let pick = |x: &[f32], w: usize| -> Vec<f32> { (0..bh).flat_map(|u| x[(u * t + i) * w..(u * t + i + 1) * w].to_vec()).collect() };
            let d: Vec<f32> = (0..bh).map(|u| decay[u * t + i]).collect();
            causal_step(&mut state, &pick(&fq, f), &pick(&fk, f), &pick(&v, e), Some(&d), 1e-6, &mut o).unwrap();
            for u in 0..bh {
                for y in 0..e {
                    let w = out[(u * t + i) * e + y];
                    assert!((o[u * e + y] - w).abs() < 1e-5 * w.abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn elu_feature_map_and_its_derivative() {
        let x = [-2.0f32, -0.5, 0.0, 0.3, 4.0];
        let mut y = [0.0f32; 5];
        elu_feature_map(&x, &mut y);
        for (a, &v) in y.iter().zip(&x) {
            let want = if v > 0.0 { v + 1.0 } else { v.exp() };
            assert!((a - want).abs() < 1e-6 && *a > 0.0);
        }
        let mut dx = [0.0f32; 5];
        elu_feature_map_backward(&x, &[1.0; 5], &mut dx);
        assert!((dx[0] - (-2.0f32).exp()).abs() < 1e-6 && dx[4] == 1.0);
    }

    #[test]
    fn bad_shapes_and_lengths_are_errors() {
        let (mut out, mut den) = (vec![0.0; 6], vec![0.0; 2]);
        assert!(causal_forward(&[0.0; 4], &[0.0; 4], &[0.0; 6], None, 1, 2, 2, 3, 1e-6, &mut out, &mut den).is_ok());
        assert!(causal_forward(&[0.0; 3], &[0.0; 4], &[0.0; 6], None, 1, 2, 2, 3, 1e-6, &mut out, &mut den).is_err());
        assert!(bidirectional_forward(&[0.0; 4], &[0.0; 4], &[0.0; 6], 1, 1, Some(&[3]), 2, 2, 3, 1e-6, &mut out, &mut den).is_err());
    }
}
