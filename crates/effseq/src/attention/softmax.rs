//! Exact softmax attention `softmax(Q K^T / sqrt(Dh)) V`, computed in tiles with a running maximum and sum so
//! that the `T x T` score matrix never exists: the memory-efficient / FlashAttention formulation (Rabe & Staats
//! 2021; Dao et al. 2022, Algorithm 1 for the forward pass; Dao 2023, FlashAttention-2, Algorithm 2 for the
//! backward pass).
//!
//! Forward, per query tile `Q_i` and key tile `K_j` (`BR x BC` scores, computed by GEMM):
//!
//! ```text
//! S = Q_i K_j^T / sqrt(Dh) (masked);  m' = max(m, rowmax S);  P = exp(S - m');
//! l = l exp(m - m') + rowsum P;       O = O exp(m - m') + P V_j;        finally O /= l,  lse = m + ln l
//! ```
//!
//! Backward recomputes `P = exp(S - lse)` tile by tile from the saved log-sum-exp:
//! `dV_j += P^T dO_i`, `dP = dO_i V_j^T`, `dS = P * (dP - D_i)` with `D_i = rowsum(dO_i * O_i)`,
//! `dQ_i += dS K_j / sqrt(Dh)`, `dK_j += dS^T Q_i / sqrt(Dh)`.
//!
//! Memory: the inputs and outputs (O(B H T Dh)) plus `lse (B, H, T)` and a few `BR x BC` tiles per thread — O(T),
//! never O(T^2). Causal tiles entirely above the diagonal and key tiles entirely in the padding are skipped, so a
//! causal pass does about half the work of a bidirectional one. Every (b, h) is independent: rayon runs them in
//! parallel.
//!
//! Layout: head-major, `q, k, v, out (B, H, T, Dh)`, `lse (B, H, T)`.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::linalg::{matmul, Trans};

/// Query rows per tile.
const BR: usize = 64;
/// Key columns per tile.
const BC: usize = 64;

/// Valid keys of every sequence: `lengths[b]` or T, checked.
fn valid_keys(b: usize, t: usize, lengths: Option<&[usize]>) -> Result<Vec<usize>> {
    match lengths {
        None => Ok(vec![t; b]),
        Some(l) => {
            check_len("sequence lengths (B)", &[b], l.len())?;
            if let Some(&bad) = l.iter().find(|&&n| n > t) {
                return Err(Error::Invalid(format!("a sequence length {bad} exceeds T = {t}")));
            }
            Ok(l.to_vec())
        }
    }
}

/// Key tiles `[j0, j1)` that query tile `[i0, i1)` sees: up to the valid keys and, causal, up to `i1`.
fn key_end(i1: usize, valid: usize, causal: bool) -> usize {
    if causal {
        i1.min(valid)
    } else {
        valid
    }
}

/// Scales the scores `s (rows, cols)` of query rows `i0..` and keys `j0..` in place, setting masked entries to
/// -inf: keys at or past `valid`, and (causal) keys after the query.
fn mask_scores(s: &mut [f32], rows: usize, cols: usize, i0: usize, j0: usize, valid: usize, causal: bool) {
    let needs_mask = j0 + cols > valid || (causal && j0 + cols > i0 + 1);
    if !needs_mask {
        return;
    }
    for r in 0..rows {
        let limit = if causal { (i0 + r + 1).min(valid) } else { valid };
        let row = &mut s[r * cols..(r + 1) * cols];
        for (c, v) in row.iter_mut().enumerate() {
            if j0 + c >= limit {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

/// Tiled forward pass; see the module docs. A query with no visible key gets `out = 0`, `lse = -inf`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    h: usize,
    t: usize,
    dh: usize,
    causal: bool,
    lengths: Option<&[usize]>,
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    for (what, buf) in [("queries", q), ("keys", k), ("values", v)] {
        check_len(&format!("attention {what} (B, H, T, Dh)"), &[b, h, t, dh], buf.len())?;
    }
    check_len("attention output (B, H, T, Dh)", &[b, h, t, dh], out.len())?;
    check_len("attention log-sum-exp (B, H, T)", &[b, h, t], lse.len())?;
    let valid = valid_keys(b, t, lengths)?;
    if t == 0 || dh == 0 || b * h == 0 {
        return Ok(());
    }
    let scale = 1.0 / (dh as f32).sqrt();
    out.par_chunks_mut(t * dh).zip(lse.par_chunks_mut(t)).enumerate().for_each(|(u, (out_u, lse_u))| {
        let base = u * t * dh;
        let (q_u, k_u, v_u) = (&q[base..base + t * dh], &k[base..base + t * dh], &v[base..base + t * dh]);
        let valid = valid[u / h];
        let mut s = vec![0.0f32; BR * BC]; // (BR, BC) scores, then probabilities
        let mut m = [0.0f32; BR]; // running row maxima
        let mut l = [0.0f32; BR]; // running row sums
        for i0 in (0..t).step_by(BR) {
            let rows = BR.min(t - i0);
            let acc = &mut out_u[i0 * dh..(i0 + rows) * dh]; // (rows, Dh) unnormalised output
            acc.iter_mut().for_each(|x| *x = 0.0);
            m[..rows].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            l[..rows].iter_mut().for_each(|x| *x = 0.0);
            let end = key_end(i0 + rows, valid, causal);
            for j0 in (0..end).step_by(BC) {
                let cols = BC.min(end - j0);
                let s = &mut s[..rows * cols];
                // S (rows, cols) = Q_i (rows, Dh) K_j^T (Dh, cols) / sqrt(Dh).
                matmul(rows, cols, dh, scale, &q_u[i0 * dh..], Trans::N, &k_u[j0 * dh..(j0 + cols) * dh], Trans::T, 0.0, s);
                mask_scores(s, rows, cols, i0, j0, valid, causal);
                for r in 0..rows {
                    let row = &mut s[r * cols..(r + 1) * cols];
                    let tile_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let new_max = m[r].max(tile_max);
                    if new_max == f32::NEG_INFINITY {
                        row.iter_mut().for_each(|x| *x = 0.0);
                        continue;
                    }
                    let correction = crate::math::exp(m[r] - new_max);
                    let mut sum = 0.0f32;
                    for x in row.iter_mut() {
                        *x = crate::math::exp(*x - new_max);
                        sum += *x;
                    }
                    l[r] = l[r] * correction + sum;
                    m[r] = new_max;
                    if correction != 1.0 {
                        acc[r * dh..(r + 1) * dh].iter_mut().for_each(|x| *x *= correction);
                    }
                }
                // O_i (rows, Dh) += P (rows, cols) V_j (cols, Dh).
                matmul(rows, dh, cols, 1.0, s, Trans::N, &v_u[j0 * dh..(j0 + cols) * dh], Trans::N, 1.0, acc);
            }
            for r in 0..rows {
                if l[r] > 0.0 {
                    let inv = 1.0 / l[r];
                    acc[r * dh..(r + 1) * dh].iter_mut().for_each(|x| *x *= inv);
                    lse_u[i0 + r] = m[r] + l[r].ln();
                } else {
                    lse_u[i0 + r] = f32::NEG_INFINITY;
                }
            }
        }
    });
    Ok(())
}

/// Tiled backward pass (FlashAttention-2): `dq, dk, dv (B, H, T, Dh)`, OVERWRITTEN, from `dout (B, H, T, Dh)` and
/// the forward's `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    b: usize,
    h: usize,
    t: usize,
    dh: usize,
    causal: bool,
    lengths: Option<&[usize]>,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<()> {
    for (what, buf) in [("queries", q), ("keys", k), ("values", v), ("output", out), ("output gradient", dout)] {
        check_len(&format!("attention {what} (B, H, T, Dh)"), &[b, h, t, dh], buf.len())?;
    }
    check_len("attention log-sum-exp (B, H, T)", &[b, h, t], lse.len())?;
    for (what, buf) in [("dq", &*dq), ("dk", &*dk), ("dv", &*dv)] {
        check_len(&format!("attention {what} (B, H, T, Dh)"), &[b, h, t, dh], buf.len())?;
    }
    let valid = valid_keys(b, t, lengths)?;
    if t == 0 || dh == 0 || b * h == 0 {
        return Ok(());
    }
    let scale = 1.0 / (dh as f32).sqrt();
    let chunks = dq.par_chunks_mut(t * dh).zip(dk.par_chunks_mut(t * dh)).zip(dv.par_chunks_mut(t * dh));
    chunks.enumerate().for_each(|(u, ((dq_u, dk_u), dv_u))| {
        let base = u * t * dh;
        let span = base..base + t * dh;
        let (q_u, k_u, v_u, o_u, do_u) = (&q[span.clone()], &k[span.clone()], &v[span.clone()], &out[span.clone()], &dout[span]);
        let lse_u = &lse[u * t..(u + 1) * t];
        let valid = valid[u / h];
        // D (T) = rowsum(dO * O).
        let d_rows: Vec<f32> = do_u.chunks_exact(dh).zip(o_u.chunks_exact(dh)).map(|(a, o)| a.iter().zip(o).map(|(x, y)| x * y).sum()).collect();
        dq_u.iter_mut().chain(dk_u.iter_mut()).chain(dv_u.iter_mut()).for_each(|x| *x = 0.0);
        let mut p = vec![0.0f32; BR * BC]; // (BR, BC) probabilities
        let mut dp = vec![0.0f32; BR * BC]; // (BR, BC) dP, then dS
        for j0 in (0..valid).step_by(BC) {
            let cols = BC.min(valid - j0);
            let (k_j, v_j) = (&k_u[j0 * dh..(j0 + cols) * dh], &v_u[j0 * dh..(j0 + cols) * dh]);
            // Causal: only query tiles that reach key j0 see this key tile.
            let first_query = if causal { j0 - j0 % BR } else { 0 };
            for i0 in (first_query..t).step_by(BR) {
                let rows = BR.min(t - i0);
                let (p, dp) = (&mut p[..rows * cols], &mut dp[..rows * cols]);
                matmul(rows, cols, dh, scale, &q_u[i0 * dh..], Trans::N, k_j, Trans::T, 0.0, p);
                mask_scores(p, rows, cols, i0, j0, valid, causal);
                for r in 0..rows {
                    let l = lse_u[i0 + r];
                    let row = &mut p[r * cols..(r + 1) * cols];
                    if l == f32::NEG_INFINITY {
                        row.iter_mut().for_each(|x| *x = 0.0);
                    } else {
                        row.iter_mut().for_each(|x| *x = crate::math::exp(*x - l));
                    }
                }
                let do_i = &do_u[i0 * dh..(i0 + rows) * dh];
                // dV_j (cols, Dh) += P^T (cols, rows) dO_i (rows, Dh).
                matmul(cols, dh, rows, 1.0, p, Trans::T, do_i, Trans::N, 1.0, &mut dv_u[j0 * dh..(j0 + cols) * dh]);
                // dP (rows, cols) = dO_i (rows, Dh) V_j^T (Dh, cols).
                matmul(rows, cols, dh, 1.0, do_i, Trans::N, v_j, Trans::T, 0.0, dp);
                for r in 0..rows {
                    let d_r = d_rows[i0 + r];
                    for (ds, &pv) in dp[r * cols..(r + 1) * cols].iter_mut().zip(&p[r * cols..(r + 1) * cols]) {
                        *ds = pv * (*ds - d_r);
                    }
                }
                // dQ_i (rows, Dh) += dS K_j / sqrt(Dh);  dK_j (cols, Dh) += dS^T Q_i / sqrt(Dh).
                matmul(rows, dh, cols, scale, dp, Trans::N, k_j, Trans::N, 1.0, &mut dq_u[i0 * dh..(i0 + rows) * dh]);
                matmul(cols, dh, rows, scale, dp, Trans::T, &q_u[i0 * dh..(i0 + rows) * dh], Trans::N, 1.0, &mut dk_u[j0 * dh..(j0 + cols) * dh]);
            }
        }
    });
    Ok(())
}

/// One decoding step over a key/value cache: the query `q (B, H, Dh)` of the newest token attends to the first
/// `len` cached keys (the newest included) of `k_cache, v_cache (B, H, cap, Dh)`, writing `out (B, H, Dh)`. One pass
/// with a running maximum (no allocation); cost O(len Dh) per (b, h).
#[allow(clippy::too_many_arguments)]
pub fn decode_step(q: &[f32], k_cache: &[f32], v_cache: &[f32], b: usize, h: usize, cap: usize, len: usize, dh: usize, out: &mut [f32]) -> Result<()> {
    check_len("decode query (B, H, Dh)", &[b, h, dh], q.len())?;
    check_len("decode output (B, H, Dh)", &[b, h, dh], out.len())?;
    check_len("key cache (B, H, cap, Dh)", &[b, h, cap, dh], k_cache.len())?;
    check_len("value cache (B, H, cap, Dh)", &[b, h, cap, dh], v_cache.len())?;
    if len == 0 || len > cap {
        return Err(Error::Invalid(format!("decode over {len} cached tokens with capacity {cap}")));
    }
    let scale = 1.0 / (dh as f32).sqrt();
    for u in 0..b * h {
        let q_u = &q[u * dh..(u + 1) * dh];
        let o = &mut out[u * dh..(u + 1) * dh];
        o.iter_mut().for_each(|x| *x = 0.0);
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
        for j in 0..len {
            let row = (u * cap + j) * dh;
            let s = q_u.iter().zip(&k_cache[row..row + dh]).map(|(a, b)| a * b).sum::<f32>() * scale;
            if s > m {
                let c = crate::math::exp(m - s);
                l *= c;
                o.iter_mut().for_each(|x| *x *= c);
                m = s;
            }
            let p = crate::math::exp(s - m);
            l += p;
            o.iter_mut().zip(&v_cache[row..row + dh]).for_each(|(x, &vv)| *x += p * vv);
        }
        let inv = 1.0 / l;
        o.iter_mut().for_each(|x| *x *= inv);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{fill_uniform, rng_for};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = vec![0.0f32; n];
        fill_uniform(&mut rng_for(seed, 31), &mut x, 1.5);
        x
    }

    /// Full `T x T` attention in f64 with explicit masks: (out, lse), the oracle.
    #[allow(clippy::too_many_arguments)]
    fn naive(q: &[f32], k: &[f32], v: &[f32], b: usize, h: usize, t: usize, dh: usize, causal: bool, lengths: Option<&[usize]>) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0.0f64; b * h * t * dh];
        let mut lse = vec![f64::NEG_INFINITY; b * h * t];
        for u in 0..b * h {
            let valid = lengths.map_or(t, |l| l[u / h]);
            for i in 0..t {
                let keys: Vec<usize> = (0..t).filter(|&j| j < valid && (!causal || j <= i)).collect();
                if keys.is_empty() {
                    continue;
                }
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| (0..dh).map(|x| q[(u * t + i) * dh + x] as f64 * k[(u * t + j) * dh + x] as f64).sum::<f64>() / (dh as f64).sqrt())
                    .collect();
                let mx = s.iter().copied().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                lse[u * t + i] = mx + z.ln();
                for (n, &j) in keys.iter().enumerate() {
                    let p = (s[n] - mx).exp() / z;
                    for x in 0..dh {
                        out[(u * t + i) * dh + x] += p * v[(u * t + j) * dh + x] as f64;
                    }
                }
            }
        }
        (out, lse)
    }

    fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= tol * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn tiles_match_the_full_matrix() {
        for (t, dh) in [(1usize, 8usize), (7, 8), (65, 8), (200, 64), (130, 16)] {
            let (b, h) = (2, 2);
            let n = b * h * t * dh;
            let (q, k, v) = (random(n, t as u64), random(n, t as u64 + 1), random(n, t as u64 + 2));
            let lengths = [t, (t * 2).div_ceil(3)];
            for causal in [true, false] {
                for lens in [None, Some(&lengths[..])] {
                    let (mut out, mut lse) = (vec![0.0f32; n], vec![0.0f32; b * h * t]);
                    forward(&q, &k, &v, b, h, t, dh, causal, lens, &mut out, &mut lse).unwrap();
                    let (want, want_lse) = naive(&q, &k, &v, b, h, t, dh, causal, lens);
                    close(&out, &want, 2e-5, &format!("out t={t} causal={causal}"));
                    for (g, w) in lse.iter().zip(&want_lse) {
                        assert!(w.is_infinite() && g.is_infinite() || (*g as f64 - w).abs() < 2e-5 * w.abs().max(1.0));
                    }
                }
            }
        }
    }

    /// The backward against central differences (f64) of the naive forward, for every input.
    #[test]
    fn backward_matches_finite_differences() {
        let (b, h, t, dh) = (1, 2, 70, 4);
        let n = b * h * t * dh;
        let (q, k, v, r) = (random(n, 40), random(n, 41), random(n, 42), random(n, 43));
        let lengths = [61usize];
        for (causal, lens) in [(true, None), (false, Some(&lengths[..])), (true, Some(&lengths[..]))] {
            let (mut out, mut lse) = (vec![0.0f32; n], vec![0.0f32; b * h * t]);
            forward(&q, &k, &v, b, h, t, dh, causal, lens, &mut out, &mut lse).unwrap();
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            backward(&q, &k, &v, &out, &lse, &r, b, h, t, dh, causal, lens, &mut dq, &mut dk, &mut dv).unwrap();
            let loss =
                |q: &[f32], k: &[f32], v: &[f32]| -> f64 { naive(q, k, v, b, h, t, dh, causal, lens).0.iter().zip(&r).map(|(o, &w)| o * w as f64).sum() };
            for (which, analytic) in [(0usize, &dq), (1, &dk), (2, &dv)] {
                for idx in (0..n).step_by(7) {
                    let mut bufs = [q.clone(), k.clone(), v.clone()];
                    bufs[which][idx] += 1e-3;
                    let up = loss(&bufs[0], &bufs[1], &bufs[2]);
                    bufs[which][idx] -= 2e-3;
                    let numeric = (up - loss(&bufs[0], &bufs[1], &bufs[2])) / 2e-3;
                    let got = analytic[idx] as f64;
                    assert!((got - numeric).abs() < 1e-3 * numeric.abs().max(0.05), "causal={causal} input {which}[{idx}]: {got} vs {numeric}");
                    if numeric.abs() > 0.05 {
                        assert!((1.05 * got - numeric).abs() > 1e-3 * numeric.abs().max(0.05), "the check must be able to fail");
                    }
                }
            }
            // Keys in the padding get no gradient.
            if let Some(l) = lens {
                for u in 0..b * h {
                    assert!(dk[(u * t + l[0]) * dh..(u + 1) * t * dh].iter().all(|&g| g == 0.0));
                }
            }
        }
    }

    #[test]
    fn decoding_over_a_growing_cache_equals_the_causal_rows() {
        let (b, h, t, dh) = (2, 3, 20, 8);
        let n = b * h * t * dh;
        let (q, k, v) = (random(n, 50), random(n, 51), random(n, 52));
        let (mut out, mut lse) = (vec![0.0f32; n], vec![0.0f32; b * h * t]);
        forward(&q, &k, &v, b, h, t, dh, true, None, &mut out, &mut lse).unwrap();
        let cap = 32;
        let (mut kc, mut vc) = (vec![0.0f32; b * h * cap * dh], vec![0.0f32; b * h * cap * dh]);
        let mut o = vec![0.0f32; b * h * dh];
        for i in 0..t {
            for u in 0..b * h {
                kc[(u * cap + i) * dh..(u * cap + i + 1) * dh].copy_from_slice(&k[(u * t + i) * dh..(u * t + i + 1) * dh]);
                vc[(u * cap + i) * dh..(u * cap + i + 1) * dh].copy_from_slice(&v[(u * t + i) * dh..(u * t + i + 1) * dh]);
            }
            let q_i: Vec<f32> = (0..b * h).flat_map(|u| q[(u * t + i) * dh..(u * t + i + 1) * dh].to_vec()).collect();
            decode_step(&q_i, &kc, &vc, b, h, cap, i + 1, dh, &mut o).unwrap();
            for u in 0..b * h {
                for x in 0..dh {
                    let w = out[(u * t + i) * dh + x];
                    assert!((o[u * dh + x] - w).abs() < 1e-5 * w.abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_lengths_are_errors() {
        let (mut out, mut lse) = (vec![0.0f32; 8], vec![0.0f32; 2]);
        let x = vec![0.0f32; 8];
        assert!(forward(&x, &x, &x, 1, 1, 2, 4, true, None, &mut out, &mut lse).is_ok());
        assert!(forward(&x[..7], &x, &x, 1, 1, 2, 4, true, None, &mut out, &mut lse).is_err());
        assert!(forward(&x, &x, &x, 1, 1, 2, 4, true, Some(&[3]), &mut out, &mut lse).is_err());
        assert!(decode_step(&x[..4], &x, &x, 1, 1, 2, 3, 4, &mut out[..4]).is_err());
    }
}
