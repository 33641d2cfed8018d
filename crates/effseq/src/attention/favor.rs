//! FAVOR+ random features (Choromanski et al. 2020, "Rethinking Attention with Performers"), as
//! performer-pytorch computes them, feeding the linear-attention kernels of [`super::linear`].
//!
//! With `x' = x Dh^(-1/4)` (so that `q'.k' = q.k / sqrt(Dh)`) and `m` random rows `w_f`, the positive random
//! features of the softmax kernel (Lemma 1, eq. 7 with h(x) = exp(-|x|^2/2)) are
//!
//! ```text
//! phi(x)_f = m^(-1/2) (exp(w_f . x' - |x'|^2 / 2 - c) + floor),   E[phi(q) . phi(k)] ~ exp(q.k / sqrt(Dh)) (times exp(-c_q - c_k))
//! ```
//!
//! where `c` is a stabiliser that cancels in the attention normalisation as long as it is shared by everything it
//! must be shared by: for a query, a per-row constant (it cancels between numerator and denominator); for keys the
//! same constant for every key a query sees. Bidirectional: one constant per (b, h) over all valid keys. Causal:
//! performer-pytorch takes the max over the WHOLE sequence, which lets a future key change past outputs. Here the
//! keys use a running max `c_j = max_{j' <= j} s_j'`, and the linear kernel rescales its prefix state by
//! `decay_j = exp(c_{j-1} - c_j)` when the max grows, so that at query i every key is measured against the same
//! `c_i`: exactly the global-stabiliser result (up to the floor), with no look at the future. The stabilisers are
//! constants for differentiation (performer-pytorch detaches them too).
//!
//! **Where the floor sits.** performer-pytorch's stabiliser is `max_f w_f . x'` alone, so the largest feature of a
//! row is `exp(-|x'|^2/2)`: with `|x'|^2 = 16` (a query of norm 8 at Dh = 16) that is 3e-4, and its eps = 1e-4 floor
//! is then as large as the features themselves; across a sequence most features collapse onto the constant floor and
//! attention turns uniform (the Performer then sat at the "predict the mean" baseline of the adding task). effseq
//! takes the stabiliser over the whole exponent, `s = max_f (w_f . x' - |x'|^2/2)`, so the largest query feature is
//! exactly 1 and the largest key feature of a sequence (of the prefix, causal) is 1, and adds a floor of
//! [`SOFTMAX_FEATURE_FLOOR`] = 1e-6 relative to that. The floor only keeps the normaliser away from zero when every
//! feature of a row underflows. With floor 0 both placements give the same attention (each differs from the other
//! by a stabiliser that cancels), which is how the parity fixtures check this map against performer-pytorch's
//! `softmax_kernel(eps=0)`.
//!
//! The projection rows are orthogonal random features (sec. 2.4): `Dh x Dh` Gaussian blocks orthogonalised (here by
//! modified Gram-Schmidt in f64, performer-pytorch uses QR), each row rescaled by the norm of an independent Gaussian
//! vector (chi-distributed), as `gaussian_orthogonal_random_matrix(scaling=0)`. The "generalized" ReLU kernel of
//! performer-pytorch, `relu(w . x') + 0.001`, needs no stabiliser.
//!
//! Layouts: inputs `(N, Dh)` rows (N = BH * T or BH), projection `(M, Dh)`, features `(N, M)`.

use crate::error::{check_len, Error, Result};
use crate::linalg::{matmul, Trans};
use crate::rng::{fill_normal, Rng};

/// Added to every softmax-kernel feature, relative to the largest feature of the row (query) or of the keys seen
/// (which are 1): keeps the normaliser positive when every feature of a row underflows, and is otherwise
/// negligible. (performer-pytorch adds 1e-4 after a stabiliser that leaves the largest feature at exp(-|x'|^2/2).)
pub const SOFTMAX_FEATURE_FLOOR: f32 = 1e-6;
/// Added to every ReLU-kernel feature (performer-pytorch's `kernel_epsilon`).
pub const RELU_FEATURE_EPS: f32 = 1e-3;

/// The kernel the random features estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FeatureKernel {
    /// Positive random features of the softmax kernel (FAVOR+), `floor` added to every feature relative to the
    /// largest (see the module docs; [`FeatureKernel::SOFTMAX`] uses [`SOFTMAX_FEATURE_FLOOR`]).
    Softmax { floor: f32 },
    /// `relu(w . x') + 0.001`.
    Relu,
}

impl FeatureKernel {
    /// The softmax kernel with the default floor.
    pub const SOFTMAX: FeatureKernel = FeatureKernel::Softmax { floor: SOFTMAX_FEATURE_FLOOR };
}

/// performer-pytorch's default feature count `int(Dh ln Dh)` (at least 1).
pub fn default_features(dh: usize) -> usize {
    ((dh as f64) * (dh as f64).ln()).max(1.0) as usize
}

/// `(m, dh)` orthogonal random features: blocks of `dh` orthonormal rows (the last block truncated), every row then
/// scaled by the norm of an independent standard Gaussian `dh`-vector.
pub fn orthogonal_gaussian(m: usize, dh: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * dh); // (M, Dh)
    let mut gauss = vec![0.0f32; dh * dh]; // (Dh, Dh) one unstructured block
    while out.len() < m * dh {
        fill_normal(rng, &mut gauss, 1.0);
        // Modified Gram-Schmidt on the rows, in f64.
        let mut rows: Vec<Vec<f64>> = gauss.chunks_exact(dh).map(|r| r.iter().map(|&v| f64::from(v)).collect()).collect();
        for i in 0..dh {
            for j in 0..i {
                let (done, rest) = rows.split_at_mut(i);
                let dot: f64 = rest[0].iter().zip(&done[j]).map(|(a, b)| a * b).sum();
                rest[0].iter_mut().zip(&done[j]).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = rows[i].iter().map(|a| a * a).sum::<f64>().sqrt();
            rows[i].iter_mut().for_each(|a| *a /= norm);
        }
        let take = (m - out.len() / dh).min(dh);
        for row in rows.iter().take(take) {
            out.extend(row.iter().map(|&v| v as f32));
        }
    }
    let mut norms = vec![0.0f32; m * dh]; // (M, Dh) Gaussian rows whose norms rescale the features
    fill_normal(rng, &mut norms, 1.0);
    for (row, g) in out.chunks_exact_mut(dh).zip(norms.chunks_exact(dh)) {
        let scale = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v *= scale);
    }
    out
}

fn check(x: &[f32], n: usize, dh: usize, proj: &[f32], m: usize, kernel: FeatureKernel, out: &[f32]) -> Result<()> {
    check_len("feature-map input (N, Dh)", &[n, dh], x.len())?;
    check_len("random projection (M, Dh)", &[m, dh], proj.len())?;
    check_len("features (N, M)", &[n, m], out.len())?;
    if m == 0 || dh == 0 {
        return Err(Error::Invalid("random features need M >= 1 and Dh >= 1".into()));
    }
    if let FeatureKernel::Softmax { floor } = kernel {
        if !(floor.is_finite() && floor >= 0.0) {
            return Err(Error::Invalid(format!("the softmax feature floor must be finite and >= 0, got {floor}")));
        }
    }
    Ok(())
}

/// `a (N, M) = x' W^T` with `x' = x Dh^(-1/4)`, and `diag (N) = |x'|^2 / 2`.
fn projections(x: &[f32], n: usize, dh: usize, proj: &[f32], m: usize, a: &mut [f32]) -> Vec<f32> {
    let norm = (dh as f32).powf(-0.25);
    matmul(n, m, dh, norm, x, Trans::N, proj, Trans::T, 0.0, a);
    x.chunks_exact(dh).map(|r| r.iter().map(|v| v * v).sum::<f32>() * norm * norm / 2.0).collect()
}

/// Query features `out (N, M)` of `x (N, Dh)`: per-row stabiliser (softmax kernel) or ReLU.
#[allow(clippy::too_many_arguments)]
pub fn query_features(x: &[f32], n: usize, dh: usize, proj: &[f32], m: usize, kernel: FeatureKernel, out: &mut [f32]) -> Result<()> {
    check(x, n, dh, proj, m, kernel, out)?;
    let diag = projections(x, n, dh, proj, m, out);
    let ratio = (m as f32).powf(-0.5);
    for (row, d) in out.chunks_exact_mut(m).zip(diag) {
        match kernel {
            FeatureKernel::Softmax { floor } => {
                // The per-row stabiliser max_f (a_f - d) = max_f a_f - d: the largest feature is exactly 1.
                let c = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) - d;
                row.iter_mut().for_each(|a| *a = ratio * (crate::math::exp(*a - d - c) + floor));
            }
            FeatureKernel::Relu => row.iter_mut().for_each(|a| *a = a.max(0.0) + RELU_FEATURE_EPS),
        }
    }
    Ok(())
}

/// Key features `out (BH, T, M)` for causal attention with the running-max stabiliser, and the state decay
/// `decay (BH, T)` = `exp(c_{j-1} - c_j)` (1 at j = 0, and always 1 for the ReLU kernel) for
/// [`super::linear::causal_forward`].
#[allow(clippy::too_many_arguments)]
pub fn key_features_causal(
    x: &[f32],
    bh: usize,
    t: usize,
    dh: usize,
    proj: &[f32],
    m: usize,
    kernel: FeatureKernel,
    out: &mut [f32],
    decay: &mut [f32],
) -> Result<()> {
    check(x, bh * t, dh, proj, m, kernel, out)?;
    check_len("key decay (BH, T)", &[bh, t], decay.len())?;
    let diag = projections(x, bh * t, dh, proj, m, out);
    let ratio = (m as f32).powf(-0.5);
    for u in 0..bh {
        let mut running = f32::NEG_INFINITY;
        for j in 0..t {
            let row_idx = u * t + j;
            let row = &mut out[row_idx * m..(row_idx + 1) * m];
            match kernel {
                FeatureKernel::Softmax { floor } => {
                    let d = diag[row_idx];
                    let c = running.max(row.iter().copied().fold(f32::NEG_INFINITY, f32::max) - d);
                    decay[row_idx] = if j == 0 { 1.0 } else { crate::math::exp(running - c) };
                    running = c;
                    row.iter_mut().for_each(|a| *a = ratio * (crate::math::exp(*a - d - c) + floor));
                }
                FeatureKernel::Relu => {
                    decay[row_idx] = 1.0;
                    row.iter_mut().for_each(|a| *a = a.max(0.0) + RELU_FEATURE_EPS);
                }
            }
        }
    }
    Ok(())
}

/// Key features `out (BH, T, M)` for bidirectional attention: one stabiliser per (b, h), the max over its valid
/// keys (the first `lengths[b]`, or all T), as performer-pytorch's `softmax_kernel(is_query=False)`.
#[allow(clippy::too_many_arguments)]
pub fn key_features_global(
    x: &[f32],
    b: usize,
    h: usize,
    t: usize,
    dh: usize,
    lengths: Option<&[usize]>,
    proj: &[f32],
    m: usize,
    kernel: FeatureKernel,
    out: &mut [f32],
) -> Result<()> {
    let bh = b * h;
    check(x, bh * t, dh, proj, m, kernel, out)?;
    if let Some(l) = lengths {
        check_len("sequence lengths (B)", &[b], l.len())?;
        if let Some(&bad) = l.iter().find(|&&n| n > t) {
            return Err(Error::Invalid(format!("a sequence length {bad} exceeds T = {t}")));
        }
    }
    let diag = projections(x, bh * t, dh, proj, m, out);
    let ratio = (m as f32).powf(-0.5);
    for u in 0..bh {
        let block = &mut out[u * t * m..(u + 1) * t * m];
        match kernel {
            FeatureKernel::Softmax { floor } => {
                let valid = lengths.map_or(t, |l| l[u / h]);
                let diag_u = &diag[u * t..(u + 1) * t];
                let c = block[..valid * m]
                    .chunks_exact(m)
                    .zip(diag_u)
                    .map(|(row, &d)| row.iter().copied().fold(f32::NEG_INFINITY, f32::max) - d)
                    .fold(f32::NEG_INFINITY, f32::max);
                let c = if c.is_finite() { c } else { 0.0 };
                for (row, &d) in block.chunks_exact_mut(m).zip(diag_u) {
                    row.iter_mut().for_each(|a| *a = ratio * (crate::math::exp(*a - d - c) + floor));
                }
            }
            FeatureKernel::Relu => block.iter_mut().for_each(|a| *a = a.max(0.0) + RELU_FEATURE_EPS),
        }
    }
    Ok(())
}

/// Backward of every feature map above, the stabilisers and the projection held constant: `dx (N, Dh)`,
/// OVERWRITTEN, from `dfeats (N, M)`, the input `x` and the features `feats` it produced. Softmax kernel:
/// `d phi_f / d x' = (phi_f - m^(-1/2) eps) (w_f - x')`; ReLU: `w_f [w_f . x' > 0]`; then `dx = dx' Dh^(-1/4)`.
#[allow(clippy::too_many_arguments)]
pub fn features_backward(
    x: &[f32],
    n: usize,
    dh: usize,
    proj: &[f32],
    m: usize,
    kernel: FeatureKernel,
    feats: &[f32],
    dfeats: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    check(x, n, dh, proj, m, kernel, feats)?;
    check_len("feature gradient (N, M)", &[n, m], dfeats.len())?;
    check_len("input gradient (N, Dh)", &[n, dh], dx.len())?;
    let norm = (dh as f32).powf(-0.25);
    let ratio = (m as f32).powf(-0.5);
    let mut g = vec![0.0f32; n * m]; // (N, M) d loss / d (w_f . x')
    for ((gv, &phi), &dphi) in g.iter_mut().zip(feats).zip(dfeats) {
        *gv = match kernel {
            FeatureKernel::Softmax { floor } => dphi * (phi - ratio * floor),
            FeatureKernel::Relu => {
                if phi > RELU_FEATURE_EPS {
                    dphi
                } else {
                    0.0
                }
            }
        };
    }
    // dx' (N, Dh) = g (N, M) W (M, Dh), scaled by Dh^(-1/4) into dx.
    matmul(n, dh, m, norm, &g, Trans::N, proj, Trans::N, 0.0, dx);
    if let FeatureKernel::Softmax { .. } = kernel {
        // The -|x'|^2/2 term: dx' -= x' sum_f g_f, i.e. dx -= x Dh^(-1/2) sum_f g_f.
        for ((dxr, xr), gr) in dx.chunks_exact_mut(dh).zip(x.chunks_exact(dh)).zip(g.chunks_exact(m)) {
            let s: f32 = gr.iter().sum::<f32>() * norm * norm;
            dxr.iter_mut().zip(xr).for_each(|(d, &xv)| *d -= s * xv);
        }
    }
    Ok(())
}

/// Streaming key features of one step `x_t (BH, Dh)` → `out (BH, M)`, carrying the running stabiliser
/// `running_max (BH)` (start at `f32::NEG_INFINITY`) and writing the state decay `decay (BH)` of this step for
/// [`super::linear::causal_step`]; identical, row for row, to [`key_features_causal`].
#[allow(clippy::too_many_arguments)]
pub fn key_features_step(
    x_t: &[f32],
    bh: usize,
    dh: usize,
    proj: &[f32],
    m: usize,
    kernel: FeatureKernel,
    running_max: &mut [f32],
    out: &mut [f32],
    decay: &mut [f32],
) -> Result<()> {
    check(x_t, bh, dh, proj, m, kernel, out)?;
    check_len("running key maximum (BH)", &[bh], running_max.len())?;
    check_len("key decay (BH)", &[bh], decay.len())?;
    let norm = (dh as f32).powf(-0.25);
    matmul(bh, m, dh, norm, x_t, Trans::N, proj, Trans::T, 0.0, out);
    let ratio = (m as f32).powf(-0.5);
    for u in 0..bh {
        let row = &mut out[u * m..(u + 1) * m];
        match kernel {
            FeatureKernel::Softmax { floor } => {
                let d = x_t[u * dh..(u + 1) * dh].iter().map(|v| v * v).sum::<f32>() * norm * norm / 2.0;
                let before = running_max[u];
                let c = before.max(row.iter().copied().fold(f32::NEG_INFINITY, f32::max) - d);
                decay[u] = if before == f32::NEG_INFINITY { 1.0 } else { crate::math::exp(before - c) };
                running_max[u] = c;
                row.iter_mut().for_each(|a| *a = ratio * (crate::math::exp(*a - d - c) + floor));
            }
            FeatureKernel::Relu => {
                decay[u] = 1.0;
                row.iter_mut().for_each(|a| *a = a.max(0.0) + RELU_FEATURE_EPS);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::linear;
    use super::*;
    use crate::rng::{fill_uniform, rng_for};

    fn random(n: usize, seed: u64, bound: f32) -> Vec<f32> {
        let mut x = vec![0.0f32; n];
        fill_uniform(&mut rng_for(seed, 21), &mut x, bound);
        x
    }

    #[test]
    fn orthogonal_blocks_with_chi_norms() {
        let (m, dh) = (20, 8);
        let w = orthogonal_gaussian(m, dh, &mut rng_for(1, 2));
        assert_eq!(w.len(), m * dh);
        let rows: Vec<&[f32]> = w.chunks_exact(dh).collect();
        let norms: Vec<f32> = rows.iter().map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt()).collect();
        for block in 0..m.div_ceil(dh) {
            for i in block * dh..((block + 1) * dh).min(m) {
                for j in block * dh..i {
                    let cos: f32 = rows[i].iter().zip(rows[j]).map(|(a, b)| a * b).sum::<f32>() / (norms[i] * norms[j]);
                    assert!(cos.abs() < 1e-5, "rows {i} and {j} of one block are not orthogonal: {cos}");
                }
            }
        }
        let spread = norms.iter().copied().fold(0.0f32, f32::max) - norms.iter().copied().fold(f32::MAX, f32::min);
        assert!(spread > 0.1, "norms should vary (chi-distributed): {norms:?}");
        assert_eq!(default_features(64), 266);
    }

    /// Exact softmax attention `softmax(q k^T / sqrt(Dh)) v` in f64 (causal or not), (T, Dh) each.
    fn exact(q: &[f32], k: &[f32], v: &[f32], t: usize, dh: usize, causal: bool) -> Vec<f64> {
        let mut out = vec![0.0f64; t * dh];
        for i in 0..t {
            let upto = if causal { i + 1 } else { t };
            let s: Vec<f64> = (0..upto).map(|j| (0..dh).map(|x| q[i * dh + x] as f64 * k[j * dh + x] as f64).sum::<f64>() / (dh as f64).sqrt()).collect();
            let mx = s.iter().copied().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for (j, sj) in s.iter().enumerate() {
                let p = (sj - mx).exp() / z;
                for x in 0..dh {
                    out[i * dh + x] += p * v[j * dh + x] as f64;
                }
            }
        }
        out
    }

    /// FAVOR+ attention of one head, causal (running stabiliser + decayed prefix kernel) or bidirectional.
    #[allow(clippy::too_many_arguments)]
    fn favor(q: &[f32], k: &[f32], v: &[f32], t: usize, dh: usize, m: usize, causal: bool, seed: u64) -> Vec<f32> {
        let proj = orthogonal_gaussian(m, dh, &mut rng_for(seed, 5));
        let (mut fq, mut fk) = (vec![0.0f32; t * m], vec![0.0f32; t * m]);
        query_features(q, t, dh, &proj, m, FeatureKernel::SOFTMAX, &mut fq).unwrap();
        let (mut out, mut den) = (vec![0.0f32; t * dh], vec![0.0f32; t]);
        if causal {
            let mut decay = vec![0.0f32; t];
            key_features_causal(k, 1, t, dh, &proj, m, FeatureKernel::SOFTMAX, &mut fk, &mut decay).unwrap();
            linear::causal_forward(&fq, &fk, v, Some(&decay), 1, t, m, dh, 0.0, &mut out, &mut den).unwrap();
        } else {
            key_features_global(k, 1, 1, t, dh, None, &proj, m, FeatureKernel::SOFTMAX, &mut fk).unwrap();
            linear::bidirectional_forward(&fq, &fk, v, 1, 1, None, t, m, dh, 0.0, &mut out, &mut den).unwrap();
        }
        out
    }

    #[test]
    fn favor_estimate_converges_to_softmax_attention() {
        // Error of the FAVOR+ estimate (mean |.| over outputs, averaged over 4 projection draws) against exact
        // softmax attention, as m grows 16 -> 4096: it must fall at every step and by at least 8x overall (the
        // Monte-Carlo rate 1/sqrt(m) predicts 16x; orthogonal features do at least as well).
        let (t, dh) = (12, 16);
        let (q, k, v) = (random(t * dh, 1, 1.0), random(t * dh, 2, 1.0), random(t * dh, 3, 1.0));
        for causal in [false, true] {
            let want = exact(&q, &k, &v, t, dh, causal);
            let errors: Vec<f64> = [16usize, 64, 256, 1024, 4096]
                .iter()
                .map(|&m| {
                    (0..4u64)
                        .map(|s| favor(&q, &k, &v, t, dh, m, causal, s).iter().zip(&want).map(|(a, w)| (*a as f64 - w).abs()).sum::<f64>() / want.len() as f64)
                        .sum::<f64>()
                        / 4.0
                })
                .collect();
            for w in errors.windows(2) {
                assert!(w[1] < w[0], "causal={causal}: error did not fall with m: {errors:?}");
            }
            assert!(errors[0] / errors[4] > 8.0, "causal={causal}: error fell only {:.1}x from m=16 to 4096: {errors:?}", errors[0] / errors[4]);
        }
    }

    #[test]
    fn causal_features_never_look_at_the_future() {
        let (t, dh, m) = (10, 8, 24);
        let (q, mut k, mut v) = (random(t * dh, 4, 2.0), random(t * dh, 5, 2.0), random(t * dh, 6, 1.0));
        let before = favor(&q, &k, &v, t, dh, m, true, 9);
        // A huge key at the last position would dominate a whole-sequence stabiliser.
        k[(t - 1) * dh..].iter_mut().for_each(|x| *x = 6.0);
        v[(t - 1) * dh..].iter_mut().for_each(|x| *x = -3.0);
        let after = favor(&q, &k, &v, t, dh, m, true, 9);
        assert_eq!(before[..(t - 1) * dh], after[..(t - 1) * dh], "outputs before the changed position moved");
    }

    #[test]
    fn streaming_key_features_equal_the_parallel_ones() {
        let (bh, t, dh, m) = (2, 7, 4, 9);
        let x = random(bh * t * dh, 7, 3.0);
        let proj = orthogonal_gaussian(m, dh, &mut rng_for(3, 3));
        for kernel in [FeatureKernel::SOFTMAX, FeatureKernel::Relu] {
            let (mut all, mut decay) = (vec![0.0f32; bh * t * m], vec![0.0f32; bh * t]);
            key_features_causal(&x, bh, t, dh, &proj, m, kernel, &mut all, &mut decay).unwrap();
            let mut running = vec![f32::NEG_INFINITY; bh];
            let (mut row, mut d) = (vec![0.0f32; bh * m], vec![0.0f32; bh]);
            for j in 0..t {
                let x_t: Vec<f32> = (0..bh).flat_map(|u| x[(u * t + j) * dh..(u * t + j + 1) * dh].to_vec()).collect();
                key_features_step(&x_t, bh, dh, &proj, m, kernel, &mut running, &mut row, &mut d).unwrap();
                for u in 0..bh {
                    // The step's one-row product and the batched GEMM round differently in the last bits.
                    assert!((d[u] - decay[u * t + j]).abs() <= 1e-5 * decay[u * t + j].max(1e-3));
                    for f in 0..m {
                        assert!((row[u * m + f] - all[(u * t + j) * m + f]).abs() <= 1e-4 * all[(u * t + j) * m + f].abs().max(1e-3));
                    }
                }
            }
        }
    }

    #[test]
    fn feature_backward_matches_finite_differences() {
        let (n, dh, m) = (5, 4, 7);
        let x = random(n * dh, 8, 1.5);
        let proj = orthogonal_gaussian(m, dh, &mut rng_for(4, 4));
        let r = random(n * m, 9, 1.0);
        for kernel in [FeatureKernel::SOFTMAX, FeatureKernel::Relu] {
            // The stabiliser is a constant for differentiation: evaluate the perturbed features with the
            // unperturbed per-row maxima by using the causal key map on single-row sequences with a fixed c.
            let feats_with = |x: &[f32], c: &[f32]| -> Vec<f64> {
                let norm = (dh as f64).powf(-0.25);
                let ratio = (m as f64).powf(-0.5);
                let mut out = vec![0.0f64; n * m];
                for i in 0..n {
                    let d: f64 = (0..dh).map(|y| (x[i * dh + y] as f64 * norm).powi(2)).sum::<f64>() / 2.0;
                    for f in 0..m {
                        let a: f64 = (0..dh).map(|y| x[i * dh + y] as f64 * norm * proj[f * dh + y] as f64).sum();
                        out[i * m + f] = match kernel {
                            FeatureKernel::Softmax { floor } => ratio * ((a - d - c[i] as f64).exp() + floor as f64),
                            FeatureKernel::Relu => a.max(0.0) + RELU_FEATURE_EPS as f64,
                        };
                    }
                }
                out
            };
            let mut feats = vec![0.0f32; n * m];
            query_features(&x, n, dh, &proj, m, kernel, &mut feats).unwrap();
            // The per-row stabilisers the query map used: max_f (a_f - |x'|^2/2).
            let mut a = vec![0.0f32; n * m];
            matmul(n, m, dh, (dh as f32).powf(-0.25), &x, Trans::N, &proj, Trans::T, 0.0, &mut a);
            let c: Vec<f32> = a
                .chunks_exact(m)
                .zip(x.chunks_exact(dh))
                .map(|(r, xr)| r.iter().copied().fold(f32::NEG_INFINITY, f32::max) - xr.iter().map(|v| v * v).sum::<f32>() / (dh as f32).sqrt() / 2.0)
                .collect();
            let oracle = feats_with(&x, &c);
            for (got, want) in feats.iter().zip(&oracle) {
                assert!((*got as f64 - want).abs() < 1e-5 * want.abs().max(1e-3));
            }
            let mut dx = vec![0.0f32; n * dh];
            features_backward(&x, n, dh, &proj, m, kernel, &feats, &r, &mut dx).unwrap();
            let loss = |x: &[f32]| -> f64 { feats_with(x, &c).iter().zip(&r).map(|(f, &w)| f * w as f64).sum() };
            for idx in 0..n * dh {
                let mut xp = x.clone();
                xp[idx] += 1e-3;
                let up = loss(&xp);
                xp[idx] -= 2e-3;
                let numeric = (up - loss(&xp)) / 2e-3;
                let got = dx[idx] as f64;
                assert!((got - numeric).abs() < 1e-3 * numeric.abs().max(0.05), "{kernel:?} dx[{idx}]: {got} vs {numeric}");
                if numeric.abs() > 0.05 {
                    assert!((1.05 * got - numeric).abs() > 1e-3 * numeric.abs().max(0.05), "the check must be able to fail");
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let proj = vec![0.0f32; 6];
        let mut out = vec![0.0f32; 6];
        assert!(query_features(&[0.0; 4], 2, 2, &proj, 3, FeatureKernel::SOFTMAX, &mut out).is_ok());
        assert!(query_features(&[0.0; 3], 2, 2, &proj, 3, FeatureKernel::SOFTMAX, &mut out).is_err());
        assert!(key_features_global(&[0.0; 4], 1, 1, 2, 2, Some(&[3]), &proj, 3, FeatureKernel::SOFTMAX, &mut out).is_err());
    }
}
