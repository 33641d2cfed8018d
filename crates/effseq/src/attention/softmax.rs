//! Exact softmax attention, tiled so that memory stays `O(T·Dh)` per head (FlashAttention).
//!
//! For one (batch, head) with queries `Q`, keys `K`, values `V`, each `(T, Dh)`, and `s = 1/sqrt(Dh)`:
//!
//! `S = s·Q·Kᵀ`, `P = softmax_rows(S + M)`, `O = P·V`,
//!
//! where the mask `M` is 0 where query `i` may see key `j` and `−∞` elsewhere: causal attention hides
//! `j > i`, and right padding hides the keys `j ≥ len_b` of sequence `b` from every query. A query that sees
//! no key at all gets `O_i = 0` and `LSE_i = −∞`.
//!
//! **Forward** (Dao et al. 2022, "FlashAttention", Algorithm 1; Rabe & Staats 2021, "Self-attention does not
//! need O(n²) memory"): a tile of queries streams over the key tiles it can see, keeping for each row a
//! running maximum `m`, a running sum `l` and an unnormalised output `Õ`:
//!
//! `m' = max(m, rowmax(S_ij))`, `P̃_ij = exp(S_ij − m')`, `l' = e^{m−m'}·l + rowsum(P̃_ij)`,
//! `Õ' = e^{m−m'}·Õ + P̃_ij·V_j`,
//!
//! and finishes with `O_i = Õ/l` and `LSE_i = m + ln l`, which the backward keeps instead of `P`. Key tiles
//! that are entirely masked (after the query tile in causal mode, or past `len_b`) are never visited; the
//! diagonal tile is masked element by element.
//!
//! **Backward** (Dao 2023, "FlashAttention-2", Algorithm 2): with `D_i = rowsum(dO_i ∘ O_i)`, each key tile
//! `j` loops over the query tiles `i` that see it, recomputing the probabilities from the stored `LSE`:
//!
//! `P_ij = exp(S_ij − LSE_i)`, `dV_j += P_ijᵀ·dO_i`, `dP_ij = dO_i·V_jᵀ`, `dS_ij = P_ij ∘ (dP_ij − D_i)`,
//! `dQ_i += s·dS_ij·K_j`, `dK_j += s·dS_ijᵀ·Q_i`.
//!
//! Score tiles hold at most [`QUERY_TILE`] × [`KEY_TILE`] entries (a thread holds one in the forward, two in
//! the backward); besides them a head needs `O(T·Dh)`: its inputs and outputs, a tile-wise transposed copy of
//! its keys (and, in the backward, values) so that `Q·Kᵀ` and `dO·Vᵀ` read contiguous rows, and `D`. The
//! products on tiles use a register-blocked kernel that reads its operands in place (`tile_matmul`): at
//! these sizes the packing of a general GEMM (`crate::linalg::matmul`) took 27% of the forward's time. The
//! forward is parallel over (head, query tile); the backward over heads, and when there are fewer heads than
//! threads also over runs of key tiles, each with its own `dQ` accumulator that is summed at the end.
//!
//! [`decode_step`] is the streaming form: one new query per head against a key/value cache, with the same
//! online softmax over chunks of [`KEY_TILE`] cached keys, `O(len·Dh)` time and no allocation.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::math::exp;

/// Query rows per tile. Measured in CPU time on 2 threads: at B·H = 32, T = 1024 and B·H = 4, T = 4096 the
/// shapes 128 × 256, 64 × 256, 128 × 128 and 64 × 128 (queries × keys) were within 3% of each other and
/// 64 × 64 about 5% slower; at T = 16384, 128 query rows took 8–13% less time than 64 (each query tile
/// streams all of a head's keys and values, which no longer fit in cache). A 128 × 256 score tile is 128 KiB,
/// in L2 with its operand tiles.
pub const QUERY_TILE: usize = 128;

/// Key rows per tile (see [`QUERY_TILE`]); also the chunk of cached keys of a decode step.
pub const KEY_TILE: usize = 256;

/// Accumulator lanes of the reductions below: one AVX-512 register (two AVX2 ones), so that the loops
/// vectorise without reassociating floating-point sums.
const LANES: usize = 16;

/// Below this many multiply-adds (`B·H·len·Dh`) a decode step stays on the calling thread.
const DECODE_PARALLEL_MIN: usize = 1 << 16;

/// Exact (optionally causal, optionally right-padded) softmax attention, forward.
///
/// `q`, `k`, `v`, `out`: `(B, H, T, Dh)`; `lse`: `(B, H, T)`, the log-sum-exp of each query's scaled scores
/// (kept for [`backward`]). The scale is `1/sqrt(Dh)`. `causal`: query `i` sees keys `j ≤ i`. `lengths`:
/// `Some((B))`, the number of valid keys of each sequence; keys at positions `≥ lengths[b]` are masked for
/// every query of sequence `b`. A query with no visible key gets `out = 0` and `lse = −∞`.
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
    check_inputs(q, k, v, b, h, t, dh, lengths)?;
    check_len("attention out (B, H, T, Dh)", &[b, h, t, dh], out.len())?;
    check_len("attention lse (B, H, T)", &[b, h, t], lse.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let scale = 1.0 / (dh as f32).sqrt();
    let head = t * dh;
    out.par_chunks_mut(head).zip(lse.par_chunks_mut(t)).enumerate().for_each(|(bh, (out_h, lse_h))| {
        let keys = valid_keys(lengths, bh / h, t);
        let span = bh * head..(bh + 1) * head;
        let (q_h, k_h, v_h) = (&q[span.clone()], &k[span.clone()], &v[span]); // (T, Dh) each
        let k_tiles = transpose_key_tiles(&k_h[..keys * dh], dh); // (key tiles, Dh, KEY_TILE)
        out_h.par_chunks_mut(QUERY_TILE * dh).zip(lse_h.par_chunks_mut(QUERY_TILE)).enumerate().for_each(|(tile, (out_tile, lse_tile))| {
            let first_query = tile * QUERY_TILE;
            let rows = lse_tile.len();
            let q_tile = &q_h[first_query * dh..(first_query + rows) * dh]; // (rows, Dh)
            forward_query_tile(q_tile, &k_tiles, v_h, dh, first_query, keys, causal, scale, out_tile, lse_tile);
        });
    });
    Ok(())
}

/// Gradients of [`forward`]'s `out` with respect to `q`, `k` and `v`, given `dout = ∂L/∂out`.
///
/// `q`, `k`, `v`, `out`, `dout`, `dq`, `dk`, `dv`: `(B, H, T, Dh)`; `lse`: `(B, H, T)` as written by
/// [`forward`] with the same `causal` and `lengths`. The gradients are OVERWRITTEN, not accumulated. The
/// probabilities are recomputed tile by tile from `lse` (FlashAttention-2): no `T × T` buffer is formed.
/// Queries that see no key, and keys that no query sees, get zero gradients.
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
    check_inputs(q, k, v, b, h, t, dh, lengths)?;
    let shape = [b, h, t, dh];
    check_len("attention out (B, H, T, Dh)", &shape, out.len())?;
    check_len("attention lse (B, H, T)", &[b, h, t], lse.len())?;
    check_len("attention dout (B, H, T, Dh)", &shape, dout.len())?;
    check_len("attention dq (B, H, T, Dh)", &shape, dq.len())?;
    check_len("attention dk (B, H, T, Dh)", &shape, dk.len())?;
    check_len("attention dv (B, H, T, Dh)", &shape, dv.len())?;
    if dq.is_empty() {
        return Ok(());
    }
    let scale = 1.0 / (dh as f32).sqrt();
    let head = t * dh;
    // With fewer heads than threads, split each head's key tiles too (each run pays a (T, Dh) dQ partial).
    let heads = b * h;
    let threads = rayon::current_num_threads();
    let runs_per_head = if heads >= threads { 1 } else { threads.div_ceil(heads) };
    dq.par_chunks_mut(head).zip(dk.par_chunks_mut(head)).zip(dv.par_chunks_mut(head)).enumerate().for_each(|(bh, ((dq_h, dk_h), dv_h))| {
        let span = bh * head..(bh + 1) * head;
        let inputs = HeadInputs {
            q: &q[span.clone()],
            k: &k[span.clone()],
            v: &v[span.clone()],
            out: &out[span.clone()],
            dout: &dout[span],
            lse: &lse[bh * t..(bh + 1) * t],
            t,
            dh,
            keys: valid_keys(lengths, bh / h, t),
            causal,
            scale,
        };
        backward_head(&inputs, runs_per_head, dq_h, dk_h, dv_h);
    });
    Ok(())
}

/// One streaming decode step against a key/value cache.
///
/// For every (batch, head), the single new query `q` attends over the first `len` cached keys and values
/// (the caller has already appended the current key and value at position `len − 1`), which is row `len − 1`
/// of a causal [`forward`] over the whole prefix. `q`, `out`: `(B, H, Dh)`; `k_cache`, `v_cache`:
/// `(B, H, cap, Dh)` with `len ≤ cap`; positions `≥ len` are never read. `len = 0` gives `out = 0`.
/// Costs `O(len·Dh)` per head and does not allocate.
#[allow(clippy::too_many_arguments)]
pub fn decode_step(q: &[f32], k_cache: &[f32], v_cache: &[f32], b: usize, h: usize, cap: usize, len: usize, dh: usize, out: &mut [f32]) -> Result<()> {
    if dh == 0 {
        return Err(Error::Invalid("attention head width Dh must be at least 1".into()));
    }
    if len > cap {
        return Err(Error::Invalid(format!("attention decode: cache length {len} exceeds its capacity {cap}")));
    }
    check_len("attention decode q (B, H, Dh)", &[b, h, dh], q.len())?;
    check_len("attention decode k_cache (B, H, cap, Dh)", &[b, h, cap, dh], k_cache.len())?;
    check_len("attention decode v_cache (B, H, cap, Dh)", &[b, h, cap, dh], v_cache.len())?;
    check_len("attention decode out (B, H, Dh)", &[b, h, dh], out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let scale = 1.0 / (dh as f32).sqrt();
    let head_cache = cap * dh;
    let step = |(bh, out_h): (usize, &mut [f32])| {
        let cached = bh * head_cache..bh * head_cache + len * dh;
        decode_head(&q[bh * dh..(bh + 1) * dh], &k_cache[cached.clone()], &v_cache[cached], dh, scale, out_h);
    };
    if b * h * len * dh >= DECODE_PARALLEL_MIN {
        out.par_chunks_mut(dh).enumerate().for_each(step);
    } else {
        out.chunks_mut(dh).enumerate().for_each(step);
    }
    Ok(())
}

/// Shape checks shared by [`forward`] and [`backward`].
#[allow(clippy::too_many_arguments)]
fn check_inputs(q: &[f32], k: &[f32], v: &[f32], b: usize, h: usize, t: usize, dh: usize, lengths: Option<&[usize]>) -> Result<()> {
    if dh == 0 {
        return Err(Error::Invalid("attention head width Dh must be at least 1".into()));
    }
    let shape = [b, h, t, dh];
    check_len("attention q (B, H, T, Dh)", &shape, q.len())?;
    check_len("attention k (B, H, T, Dh)", &shape, k.len())?;
    check_len("attention v (B, H, T, Dh)", &shape, v.len())?;
    if let Some(lengths) = lengths {
        check_len("attention lengths (B)", &[b], lengths.len())?;
        if let Some((i, &n)) = lengths.iter().enumerate().find(|&(_, &n)| n > t) {
            return Err(Error::Invalid(format!("attention lengths[{i}] = {n} exceeds the sequence length T = {t}")));
        }
    }
    Ok(())
}

/// Keys visible to the queries of sequence `batch`: its length, or all `t` without padding.
fn valid_keys(lengths: Option<&[usize]>, batch: usize, t: usize) -> usize {
    lengths.map_or(t, |l| l[batch])
}

/// How many of the `cols` keys starting at `first_key` query `query` sees (the leading ones).
#[inline]
fn visible_in_tile(causal: bool, query: usize, first_key: usize, cols: usize) -> usize {
    if causal {
        (query + 1).saturating_sub(first_key).min(cols)
    } else {
        cols
    }
}

/// Forward of one query tile: online softmax over the key tiles it can see (Algorithm 1's inner loop).
/// `q_tile`, `out_tile`: `(rows, Dh)`; `lse_tile`: `(rows)`; `k_tiles`: the valid keys as laid out by
/// [`transpose_key_tiles`]; `v_h`: `(T, Dh)`; `keys` valid keys.
#[allow(clippy::too_many_arguments)]
fn forward_query_tile(
    q_tile: &[f32],
    k_tiles: &[f32],
    v_h: &[f32],
    dh: usize,
    first_query: usize,
    keys: usize,
    causal: bool,
    scale: f32,
    out_tile: &mut [f32],
    lse_tile: &mut [f32],
) {
    let rows = lse_tile.len();
    let mut scores = vec![0.0f32; rows * KEY_TILE]; // (rows, KEY_TILE) scores, then unnormalised probabilities
    let mut row_max = [f32::NEG_INFINITY; QUERY_TILE]; // (rows) running maximum m of each row
    let mut row_sum = [0.0f32; QUERY_TILE]; // (rows) running sum l of exp(S - m)
    out_tile.fill(0.0); // (rows, Dh) unnormalised output Õ

    // Causal: no key after the tile's last query; padding: none at or after `keys`.
    let key_end = if causal { keys.min(first_query + rows) } else { keys };
    for first_key in (0..key_end).step_by(KEY_TILE) {
        let cols = KEY_TILE.min(key_end - first_key);
        let s = &mut scores[..rows * cols]; // (rows, cols)
        let keys_tile = &k_tiles[first_key * dh..(first_key + KEY_TILE) * dh]; // (Dh, KEY_TILE) transposed keys
        tile_matmul(rows, cols, dh, scale, q_tile, dh, 1, keys_tile, KEY_TILE, false, s, cols);
        for (r, row) in s.chunks_exact_mut(cols).enumerate() {
            let visible = visible_in_tile(causal, first_query + r, first_key, cols);
            let (seen, hidden) = row.split_at_mut(visible);
            hidden.fill(0.0);
            if seen.is_empty() {
                continue;
            }
            let old_max = row_max[r];
            let new_max = old_max.max(max_of(seen));
            let tile_sum = exp_shifted_sum(seen, new_max);
            // Rescale what was accumulated under the old maximum (nothing yet when it was -inf).
            if old_max == f32::NEG_INFINITY {
                row_sum[r] = tile_sum;
            } else if new_max > old_max {
                let correction = exp(old_max - new_max);
                row_sum[r] = row_sum[r] * correction + tile_sum;
                out_tile[r * dh..(r + 1) * dh].iter_mut().for_each(|o| *o *= correction);
            } else {
                row_sum[r] += tile_sum;
            }
            row_max[r] = new_max;
        }
        let values_tile = &v_h[first_key * dh..(first_key + cols) * dh]; // (cols, Dh)
        tile_matmul(rows, dh, cols, 1.0, s, cols, 1, values_tile, dh, true, out_tile, dh);
    }
    for (r, (out_row, lse_r)) in out_tile.chunks_exact_mut(dh).zip(lse_tile.iter_mut()).enumerate() {
        if row_sum[r] > 0.0 {
            let inverse = 1.0 / row_sum[r];
            out_row.iter_mut().for_each(|o| *o *= inverse);
            *lse_r = row_max[r] + row_sum[r].ln();
        } else {
            // No visible key: the output stays 0.
            *lse_r = f32::NEG_INFINITY;
        }
    }
}

/// `x (rows, Dh)` transposed one key tile at a time: `(ceil(rows / KEY_TILE), Dh, KEY_TILE)`, zero padded, so
/// that a score tile reads each of its `Dh` rows of keys contiguously (a plain `(Dh, T)` transpose would put
/// them `T` floats apart, all in one cache set for large `T`).
fn transpose_key_tiles(x: &[f32], dh: usize) -> Vec<f32> {
    let rows = x.len() / dh;
    let mut tiles = vec![0.0f32; rows.div_ceil(KEY_TILE) * dh * KEY_TILE]; // (tiles, Dh, KEY_TILE)
    for (tile, block) in x.chunks(KEY_TILE * dh).zip(tiles.chunks_exact_mut(dh * KEY_TILE)) {
        for (c, row) in tile.chunks_exact(dh).enumerate() {
            for (d, &value) in row.iter().enumerate() {
                block[d * KEY_TILE + c] = value;
            }
        }
    }
    tiles
}

/// The read-only operands of one (batch, head) in the backward pass.
struct HeadInputs<'a> {
    /// (T, Dh) queries.
    q: &'a [f32],
    /// (T, Dh) keys.
    k: &'a [f32],
    /// (T, Dh) values.
    v: &'a [f32],
    /// (T, Dh) forward output O.
    out: &'a [f32],
    /// (T, Dh) output gradient dO.
    dout: &'a [f32],
    /// (T) log-sum-exp of each query's scaled scores.
    lse: &'a [f32],
    t: usize,
    dh: usize,
    /// Valid (unpadded) keys.
    keys: usize,
    causal: bool,
    scale: f32,
}

impl HeadInputs<'_> {
    /// First query tile start that sees key tile `first_key` (causal: the tile holding query `first_key`).
    fn first_query(&self, first_key: usize) -> usize {
        if self.causal {
            first_key / QUERY_TILE * QUERY_TILE
        } else {
            0
        }
    }
}

/// Per-head operands the backward derives once from [`HeadInputs`].
struct TransposedTiles {
    /// Valid keys, laid out by [`transpose_key_tiles`]: (key tiles, Dh, KEY_TILE).
    keys: Vec<f32>,
    /// Valid values, laid out the same way.
    values: Vec<f32>,
    /// (T) D_i = rowsum(dO_i ∘ O_i).
    delta: Vec<f32>,
}

/// Backward of one (batch, head): writes `dq`, `dk`, `dv` (each `(T, Dh)`), splitting the key tiles into at
/// most `runs` contiguous runs of about equal work on the rayon pool.
fn backward_head(x: &HeadInputs, runs: usize, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let (t, dh) = (x.t, x.dh);
    let t_tiles = TransposedTiles {
        keys: transpose_key_tiles(&x.k[..x.keys * dh], dh),
        values: transpose_key_tiles(&x.v[..x.keys * dh], dh),
        delta: x.dout.chunks_exact(dh).zip(x.out.chunks_exact(dh)).map(|(g, o)| dot(g, o)).collect(),
    };
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    let key_tiles = x.keys.div_ceil(KEY_TILE);
    let runs = runs.min(key_tiles);
    if runs <= 1 {
        backward_key_tiles(x, &t_tiles, 0, &mut dk[..x.keys * dh], &mut dv[..x.keys * dh], dq);
        return;
    }
    // Contiguous runs of key tiles with about equal numbers of (query, key) tile pairs.
    let work = |tile: usize| t - x.first_query(tile * KEY_TILE);
    let total: usize = (0..key_tiles).map(work).sum();
    let mut bounds = vec![0usize]; // run boundaries, in key tiles
    let mut done = 0;
    for tile in 0..key_tiles {
        done += work(tile);
        if done * runs >= total * bounds.len() && tile + 1 < key_tiles && bounds.len() < runs {
            bounds.push(tile + 1);
        }
    }
    bounds.push(key_tiles);
    let mut pieces = Vec::with_capacity(runs); // (first key, dK rows, dV rows) of each run
    let (mut dk_rest, mut dv_rest) = (&mut dk[..x.keys * dh], &mut dv[..x.keys * dh]);
    for pair in bounds.windows(2) {
        let rows = (pair[1] * KEY_TILE).min(x.keys) - pair[0] * KEY_TILE;
        let (dk_run, dk_tail) = std::mem::take(&mut dk_rest).split_at_mut(rows * dh);
        let (dv_run, dv_tail) = std::mem::take(&mut dv_rest).split_at_mut(rows * dh);
        pieces.push((pair[0] * KEY_TILE, dk_run, dv_run));
        (dk_rest, dv_rest) = (dk_tail, dv_tail);
    }
    let partials: Vec<Vec<f32>> = pieces
        .into_par_iter()
        .map(|(first_key, dk_run, dv_run)| {
            let mut dq_run = vec![0.0f32; t * dh]; // (T, Dh) this run's share of dQ
            backward_key_tiles(x, &t_tiles, first_key, dk_run, dv_run, &mut dq_run);
            dq_run
        })
        .collect();
    for partial in &partials {
        dq.iter_mut().zip(partial).for_each(|(g, p)| *g += p);
    }
}

/// FlashAttention-2 backward for the consecutive key tiles starting at `first_key` whose gradients are
/// `dk_run`, `dv_run` (`(keys in the run, Dh)`, accumulated); adds their contribution to `dq` `(T, Dh)`.
fn backward_key_tiles(x: &HeadInputs, t_tiles: &TransposedTiles, first_key: usize, dk_run: &mut [f32], dv_run: &mut [f32], dq: &mut [f32]) {
    let (t, dh, scale) = (x.t, x.dh, x.scale);
    let mut probs = vec![0.0f32; QUERY_TILE * KEY_TILE]; // (rows, cols) P_ij
    let mut grads = vec![0.0f32; QUERY_TILE * KEY_TILE]; // (rows, cols) dP_ij, then dS_ij
    for (tile, (dk_tile, dv_tile)) in dk_run.chunks_mut(KEY_TILE * dh).zip(dv_run.chunks_mut(KEY_TILE * dh)).enumerate() {
        let tile_key = first_key + tile * KEY_TILE;
        let tile_cols = dk_tile.len() / dh;
        let kt_tile = &t_tiles.keys[tile_key * dh..(tile_key + KEY_TILE) * dh]; // (Dh, KEY_TILE)
        let vt_tile = &t_tiles.values[tile_key * dh..(tile_key + KEY_TILE) * dh]; // (Dh, KEY_TILE)
        for first_query in (x.first_query(tile_key)..t).step_by(QUERY_TILE) {
            let rows = QUERY_TILE.min(t - first_query);
            let span = first_query * dh..(first_query + rows) * dh;
            let (q_tile, dout_tile) = (&x.q[span.clone()], &x.dout[span.clone()]); // (rows, Dh) each

            // Causal: the keys after this query tile's last query are masked for all of it; leave them out.
            let cols = if x.causal { tile_cols.min(first_query + rows - tile_key) } else { tile_cols };
            let key_rows = tile_key * dh..(tile_key + cols) * dh;
            let k_tile = &x.k[key_rows]; // (cols, Dh)
            let (dk_seen, dv_seen) = (&mut dk_tile[..cols * dh], &mut dv_tile[..cols * dh]); // (cols, Dh) each
            let p = &mut probs[..rows * cols];
            tile_matmul(rows, cols, dh, scale, q_tile, dh, 1, kt_tile, KEY_TILE, false, p, cols);
            for (r, row) in p.chunks_exact_mut(cols).enumerate() {
                let lse = x.lse[first_query + r];
                let visible = if lse == f32::NEG_INFINITY { 0 } else { visible_in_tile(x.causal, first_query + r, tile_key, cols) };
                let (seen, hidden) = row.split_at_mut(visible);
                for s in seen.iter_mut() {
                    *s = exp(*s - lse);
                }
                hidden.fill(0.0);
            }
            // dV_j += P_ij^T dO_i (P read transposed in place).
            tile_matmul(cols, dh, rows, 1.0, p, 1, cols, dout_tile, dh, true, dv_seen, dh);
            let ds = &mut grads[..rows * cols];
            tile_matmul(rows, cols, dh, 1.0, dout_tile, dh, 1, vt_tile, KEY_TILE, false, ds, cols);
            for ((ds_row, p_row), &d) in ds.chunks_exact_mut(cols).zip(p.chunks_exact(cols)).zip(&t_tiles.delta[first_query..first_query + rows]) {
                for (g, &pv) in ds_row.iter_mut().zip(p_row) {
                    *g = pv * (*g - d);
                }
            }
            tile_matmul(rows, dh, cols, scale, ds, cols, 1, k_tile, dh, true, &mut dq[span], dh);
            tile_matmul(cols, dh, rows, scale, ds, 1, cols, q_tile, dh, true, dk_seen, dh);
        }
    }
}

/// One decode step for one head: `out_h (Dh)` = softmax(s·K q) V over `keys`, `values` `(len, Dh)`,
/// online over chunks of [`KEY_TILE`] scores held on the stack.
fn decode_head(q_h: &[f32], keys: &[f32], values: &[f32], dh: usize, scale: f32, out_h: &mut [f32]) {
    out_h.fill(0.0); // (Dh) unnormalised output
    let mut scores = [0.0f32; KEY_TILE]; // (chunk) scaled scores, then exp(score - max)
    let (mut running_max, mut running_sum) = (f32::NEG_INFINITY, 0.0f32);
    for (k_chunk, v_chunk) in keys.chunks(KEY_TILE * dh).zip(values.chunks(KEY_TILE * dh)) {
        let cols = k_chunk.len() / dh;
        let s = &mut scores[..cols];
        for (score, key) in s.iter_mut().zip(k_chunk.chunks_exact(dh)) {
            *score = scale * dot(q_h, key);
        }
        let new_max = running_max.max(max_of(s));
        if running_max != f32::NEG_INFINITY && new_max > running_max {
            let correction = exp(running_max - new_max);
            running_sum *= correction;
            out_h.iter_mut().for_each(|o| *o *= correction);
        }
        running_max = new_max;
        running_sum += exp_shifted_sum(s, new_max);
        for (&weight, value) in s.iter().zip(v_chunk.chunks_exact(dh)) {
            out_h.iter_mut().zip(value).for_each(|(o, &x)| *o += weight * x);
        }
    }
    if running_sum > 0.0 {
        let inverse = 1.0 / running_sum;
        out_h.iter_mut().for_each(|o| *o *= inverse);
    }
}

/// Rows of the register block of [`tile_matmul`].
const BLOCK_ROWS: usize = 8;

/// `c (m, n) = alpha·A·B (+ c when accumulate)` for the small products of the tiles, without the packing a
/// general GEMM does (see the module docs). `A (m, k)` has element `(r, p)` at `a[r·rsa + p·csa]` (any
/// strides: the transposed probability tiles are read in place); `B (k, n)` is row-major with row stride
/// `ldb`; `C` is row-major with row stride `ldc`. Register blocks of [`BLOCK_ROWS`] rows × 32/16/8/1 columns
/// accumulate over the whole `k` with fused multiply-adds (16 AVX-512 accumulators for the 8 × 32 block).
#[allow(clippy::too_many_arguments)]
pub(crate) fn tile_matmul(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    ldb: usize,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "tile_matmul: A out of bounds");
    assert!((k - 1) * ldb + n <= b.len(), "tile_matmul: B out of bounds");
    assert!((m - 1) * ldc + n <= c.len() && n <= ldc, "tile_matmul: C out of bounds");
    let op = Operands { k, alpha, a, rsa, csa, b, ldb, accumulate };
    let mut col = 0;
    while col + 32 <= n {
        op.column_panel::<32>(m, col, c, ldc);
        col += 32;
    }
    if col + 16 <= n {
        op.column_panel::<16>(m, col, c, ldc);
        col += 16;
    }
    if col + 8 <= n {
        op.column_panel::<8>(m, col, c, ldc);
        col += 8;
    }
    while col < n {
        op.column_panel::<1>(m, col, c, ldc);
        col += 1;
    }
}

/// The fixed operands of one [`tile_matmul`], bounds already checked.
struct Operands<'a> {
    k: usize,
    alpha: f32,
    a: &'a [f32],
    rsa: usize,
    csa: usize,
    b: &'a [f32],
    ldb: usize,
    accumulate: bool,
}

impl Operands<'_> {
    /// Columns `col .. col + NR` of every row of `C`.
    #[inline(always)]
    fn column_panel<const NR: usize>(&self, m: usize, col: usize, c: &mut [f32], ldc: usize) {
        let mut row = 0;
        while row + BLOCK_ROWS <= m {
            self.block::<BLOCK_ROWS, NR>(row, col, c, ldc);
            row += BLOCK_ROWS;
        }
        if row + 4 <= m {
            self.block::<4, NR>(row, col, c, ldc);
            row += 4;
        }
        while row < m {
            self.block::<1, NR>(row, col, c, ldc);
            row += 1;
        }
    }

    /// The `(MR, NR)` block of `C` at (`row`, `col`), accumulated in registers over the whole `k`.
    #[inline(always)]
    fn block<const MR: usize, const NR: usize>(&self, row: usize, col: usize, c: &mut [f32], ldc: usize) {
        let mut acc = [[0.0f32; NR]; MR]; // (MR, NR) block of A·B
        for p in 0..self.k {
            // SAFETY: `tile_matmul` asserted that every (r, p) of A and every (p, j) of B inside the product
            // is in bounds, and this block lies inside it.
            let b_row = unsafe { &*(self.b.as_ptr().add(p * self.ldb + col) as *const [f32; NR]) };
            for (r, acc_row) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let a_rp = unsafe { *self.a.get_unchecked((row + r) * self.rsa + p * self.csa) };
                for (acc_v, &b_v) in acc_row.iter_mut().zip(b_row) {
                    *acc_v = fused_multiply_add(a_rp, b_v, *acc_v);
                }
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            let c_row = &mut c[(row + r) * ldc + col..(row + r) * ldc + col + NR];
            if self.accumulate {
                c_row.iter_mut().zip(acc_row).for_each(|(cv, &av)| *cv += self.alpha * av);
            } else {
                c_row.iter_mut().zip(acc_row).for_each(|(cv, &av)| *cv = self.alpha * av);
            }
        }
    }
}

/// `a·b + c`: one FMA instruction where the target has it (the workspace builds with `target-cpu=native`),
/// else a multiply and an add — `f32::mul_add` would call libm's software `fmaf` there.
#[inline(always)]
fn fused_multiply_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// Largest element (`−∞` for an empty slice), over [`LANES`] independent lanes.
#[inline]
fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Replaces every `x` by `exp(x − shift)` and returns their sum (over [`LANES`] independent partial sums).
#[inline]
fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in lanes.iter_mut().zip(chunk) {
            *x = exp(*x - shift);
            *s += *x;
        }
    }
    let mut tail = 0.0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        tail += *x;
    }
    tail + lanes.iter().sum::<f32>()
}

/// Dot product, over [`LANES`] independent partial sums.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (mut a_chunks, mut b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((s, &xv), &yv) in lanes.iter_mut().zip(x).zip(y) {
            *s += xv * yv;
        }
    }
    a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum::<f32>() + lanes.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_param_grads, projection_loss, projection_weights, GradCheckOpts};
    use crate::rng::{fill_normal, rng_for};

    /// Everything the naive reference computes, in f64.
    struct Reference {
        /// (B, H, T, Dh)
        out: Vec<f64>,
        /// (B, H, T)
        lse: Vec<f64>,
        /// (B, H, T, Dh) each
        dq: Vec<f64>,
        dk: Vec<f64>,
        dv: Vec<f64>,
    }

    /// Whether query `i` of a sequence with `len` valid keys sees key `j`.
    fn visible(causal: bool, len: usize, i: usize, j: usize) -> bool {
        j < len && (!causal || j <= i)
    }

    /// Full T × T attention in f64 with explicit masks: the test oracle for forward and backward.
    #[allow(clippy::too_many_arguments)]
    fn naive(q: &[f32], k: &[f32], v: &[f32], dout: &[f32], b: usize, h: usize, t: usize, dh: usize, causal: bool, lengths: Option<&[usize]>) -> Reference {
        let n = b * h * t * dh;
        let mut r = Reference { out: vec![0.0; n], lse: vec![0.0; b * h * t], dq: vec![0.0; n], dk: vec![0.0; n], dv: vec![0.0; n] };
        let scale = 1.0 / (dh as f64).sqrt();
        let at = |buf: &[f32], bh: usize, i: usize, d: usize| buf[(bh * t + i) * dh + d] as f64;
        for bh in 0..b * h {
            let len = lengths.map_or(t, |l| l[bh / h]);
            let mut p = vec![0.0f64; t * t]; // (T, T) probabilities, 0 where masked
            for i in 0..t {
                let scores: Vec<f64> = (0..t).map(|j| scale * (0..dh).map(|d| at(q, bh, i, d) * at(k, bh, j, d)).sum::<f64>()).collect();
                let max = (0..t).filter(|&j| visible(causal, len, i, j)).map(|j| scores[j]).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..t).filter(|&j| visible(causal, len, i, j)).map(|j| (scores[j] - max).exp()).sum();
                r.lse[bh * t + i] = if sum > 0.0 { max + sum.ln() } else { f64::NEG_INFINITY };
                for j in (0..t).filter(|&j| visible(causal, len, i, j)) {
                    p[i * t + j] = (scores[j] - max).exp() / sum;
                }
                for d in 0..dh {
                    r.out[(bh * t + i) * dh + d] = (0..t).map(|j| p[i * t + j] * at(v, bh, j, d)).sum();
                }
            }
            for i in 0..t {
                let dp: Vec<f64> = (0..t).map(|j| (0..dh).map(|d| at(dout, bh, i, d) * at(v, bh, j, d)).sum()).collect();
                let delta: f64 = (0..t).map(|j| p[i * t + j] * dp[j]).sum();
                for j in 0..t {
                    let ds = p[i * t + j] * (dp[j] - delta);
                    for d in 0..dh {
                        r.dq[(bh * t + i) * dh + d] += scale * ds * at(k, bh, j, d);
                        r.dk[(bh * t + j) * dh + d] += scale * ds * at(q, bh, i, d);
                        r.dv[(bh * t + j) * dh + d] += p[i * t + j] * at(dout, bh, i, d);
                    }
                }
            }
        }
        r
    }

    /// Normal samples with standard deviation `std` from stream `stream`.
    fn normal(n: usize, stream: u64, std: f32) -> Vec<f32> {
        let mut x = vec![0.0f32; n];
        fill_normal(&mut rng_for(7, stream), &mut x, std);
        x
    }

    /// Every element within `rtol · (|want| + max |want|) + 1e-6`: relative to the tensor's scale, so that
    /// values near zero (sums with cancellation) are judged against the size of their terms; the floor covers
    /// tensors that are zero in exact arithmetic (dQ at T = 1) but f32 rounding noise here.
    fn assert_close(name: &str, got: &[f32], want: &[f64], rtol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(err <= rtol * (w.abs() + scale) + 1e-6, "{name}[{i}]: {g} vs {w} (tensor scale {scale})");
        }
    }

    /// Runs the tiled forward and backward on random inputs and compares everything with [`naive`].
    fn compare_with_naive(b: usize, h: usize, t: usize, dh: usize, causal: bool, lengths: Option<&[usize]>, sharpness: f32) {
        let n = b * h * t * dh;
        let case = format!("B={b} H={h} T={t} Dh={dh} causal={causal} lengths={lengths:?} sharpness={sharpness}");
        let (q, k, v, dout) = (normal(n, 1, sharpness), normal(n, 2, 1.0), normal(n, 3, 1.0), normal(n, 4, 1.0));
        let want = naive(&q, &k, &v, &dout, b, h, t, dh, causal, lengths);
        let mut out = vec![f32::NAN; n]; // (B, H, T, Dh)
        let mut lse = vec![f32::NAN; b * h * t]; // (B, H, T)
        forward(&q, &k, &v, b, h, t, dh, causal, lengths, &mut out, &mut lse).unwrap();
        assert_close(&format!("out {case}"), &out, &want.out, 1e-5);
        for (i, (&got, &w)) in lse.iter().zip(&want.lse).enumerate() {
            if w == f64::NEG_INFINITY {
                assert_eq!(got, f32::NEG_INFINITY, "lse[{i}] {case}");
            } else {
                assert!((got as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "lse[{i}] {case}: {got} vs {w}");
            }
        }
        // Gradients are overwritten: start from garbage.
        let (mut dq, mut dk, mut dv) = (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
        backward(&q, &k, &v, &out, &lse, &dout, b, h, t, dh, causal, lengths, &mut dq, &mut dk, &mut dv).unwrap();
        assert_close(&format!("dq {case}"), &dq, &want.dq, 1e-5);
        assert_close(&format!("dk {case}"), &dk, &want.dk, 1e-5);
        assert_close(&format!("dv {case}"), &dv, &want.dv, 1e-5);
    }

    #[test]
    fn tiled_matches_naive_forward_and_backward() {
        // Partial query and key tiles, and more than one key tile.
        for t in [1, 7, 65, 200, KEY_TILE + QUERY_TILE / 2 + 13] {
            for dh in [8, 64] {
                for causal in [false, true] {
                    // Batch 2 without padding; batch 3 with a full, a half and an empty sequence.
                    compare_with_naive(2, 2, t, dh, causal, None, 1.0);
                    compare_with_naive(3, 2, t, dh, causal, Some(&[t, t / 2 + 1, 0]), 1.0);
                }
            }
        }
    }

    #[test]
    fn tiled_matches_naive_with_peaked_scores() {
        // Scores of a few tens: the running maximum moves between tiles and the rescaling matters.
        for causal in [false, true] {
            compare_with_naive(1, 2, KEY_TILE + 100, 64, causal, None, 6.0);
            compare_with_naive(2, 1, 150, 8, causal, Some(&[150, 97]), 6.0);
        }
    }

    #[test]
    fn backward_split_over_key_tiles_matches_naive() {
        // One head and three threads: the key tiles are split into runs with separate dQ partials.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            for causal in [false, true] {
                compare_with_naive(1, 1, 3 * KEY_TILE, 64, causal, None, 1.0);
                compare_with_naive(1, 1, 2 * KEY_TILE + 37, 8, causal, Some(&[2 * KEY_TILE + 20]), 1.0);
                compare_with_naive(1, 2, 4 * KEY_TILE + 1, 8, causal, Some(&[3 * KEY_TILE + 1]), 1.0);
            }
        });
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        one.install(|| compare_with_naive(2, 2, KEY_TILE + 65, 8, true, Some(&[KEY_TILE + 65, 40]), 1.0));
    }

    /// Loss = fixed random projection of the tiled forward's output.
    #[allow(clippy::too_many_arguments)]
    fn projected_loss(q: &[f32], k: &[f32], v: &[f32], b: usize, h: usize, t: usize, dh: usize, causal: bool, lengths: Option<&[usize]>, w: &[f32]) -> f64 {
        let mut out = vec![0.0f32; q.len()];
        let mut lse = vec![0.0f32; b * h * t];
        forward(q, k, v, b, h, t, dh, causal, lengths, &mut out, &mut lse).unwrap();
        projection_loss(&out, w)
    }

    #[test]
    fn backward_matches_finite_differences_and_a_wrong_gradient_fails() {
        let (b, h, t, dh) = (1, 2, 5, 3);
        let n = b * h * t * dh;
        let lengths: &[usize] = &[4];
        for causal in [false, true] {
            let (mut q, mut k, mut v) = (normal(n, 11, 1.0), normal(n, 12, 1.0), normal(n, 13, 1.0));
            let w = projection_weights(n, 5); // (B, H, T, Dh) = dL/dout
            let mut out = vec![0.0f32; n];
            let mut lse = vec![0.0f32; b * h * t];
            forward(&q, &k, &v, b, h, t, dh, causal, Some(lengths), &mut out, &mut lse).unwrap();
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            backward(&q, &k, &v, &out, &lse, &w, b, h, t, dh, causal, Some(lengths), &mut dq, &mut dk, &mut dv).unwrap();
            let opts = GradCheckOpts::default();
            let (q0, k0, v0) = (q.clone(), k.clone(), v.clone());
            let loss_q = |x: &[f32]| projected_loss(x, &k0, &v0, b, h, t, dh, causal, Some(lengths), &w);
            let loss_k = |x: &[f32]| projected_loss(&q0, x, &v0, b, h, t, dh, causal, Some(lengths), &w);
            let loss_v = |x: &[f32]| projected_loss(&q0, &k0, x, b, h, t, dh, causal, Some(lengths), &w);
            check_param_grads("q", &mut q, &dq, loss_q, &opts).unwrap();
            check_param_grads("k", &mut k, &dk, loss_k, &opts).unwrap();
            check_param_grads("v", &mut v, &dv, loss_v, &opts).unwrap();
            // The check has the power to reject a gradient that is 5% off.
            let scaled = |g: &[f32]| g.iter().map(|x| x * 1.05).collect::<Vec<f32>>();
            assert!(check_param_grads("q", &mut q, &scaled(&dq), loss_q, &opts).is_err(), "causal={causal}: dq * 1.05 passed");
            assert!(check_param_grads("k", &mut k, &scaled(&dk), loss_k, &opts).is_err(), "causal={causal}: dk * 1.05 passed");
            assert!(check_param_grads("v", &mut v, &scaled(&dv), loss_v, &opts).is_err(), "causal={causal}: dv * 1.05 passed");
        }
    }

    #[test]
    fn decode_over_a_growing_cache_equals_causal_forward_rows() {
        for dh in [8, 64] {
            let (b, h, t) = (2, 3, KEY_TILE + 9);
            let cap = t + 5;
            let n = b * h * t * dh;
            let (q, k, v) = (normal(n, 21, 2.0), normal(n, 22, 1.0), normal(n, 23, 1.0)); // (B, H, T, Dh)
            let mut out = vec![0.0f32; n];
            let mut lse = vec![0.0f32; b * h * t];
            forward(&q, &k, &v, b, h, t, dh, true, None, &mut out, &mut lse).unwrap();
            // Unwritten cache slots are NaN: reading one would poison the output.
            let mut k_cache = vec![f32::NAN; b * h * cap * dh]; // (B, H, cap, Dh)
            let mut v_cache = vec![f32::NAN; b * h * cap * dh]; // (B, H, cap, Dh)
            let mut q_step = vec![0.0f32; b * h * dh]; // (B, H, Dh)
            let mut out_step = vec![f32::NAN; b * h * dh]; // (B, H, Dh)
            for step in 0..t {
                for bh in 0..b * h {
                    let row = (bh * t + step) * dh..(bh * t + step + 1) * dh;
                    let slot = (bh * cap + step) * dh..(bh * cap + step + 1) * dh;
                    k_cache[slot.clone()].copy_from_slice(&k[row.clone()]);
                    v_cache[slot].copy_from_slice(&v[row.clone()]);
                    q_step[bh * dh..(bh + 1) * dh].copy_from_slice(&q[row]);
                }
                decode_step(&q_step, &k_cache, &v_cache, b, h, cap, step + 1, dh, &mut out_step).unwrap();
                for bh in 0..b * h {
                    for d in 0..dh {
                        let (got, want) = (out_step[bh * dh + d], out[(bh * t + step) * dh + d]);
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "Dh={dh} step {step} head {bh} [{d}]: {got} vs {want}");
                    }
                }
            }
            decode_step(&q_step, &k_cache, &v_cache, b, h, cap, 0, dh, &mut out_step).unwrap();
            assert!(out_step.iter().all(|&x| x == 0.0), "an empty cache gives zeros");
        }
    }

    #[test]
    fn bad_shapes_and_lengths_are_errors() {
        let (b, h, t, dh) = (2, 2, 5, 4);
        let n = b * h * t * dh;
        let x = vec![0.1f32; n];
        let (mut out, mut lse) = (vec![0.0f32; n], vec![0.0f32; b * h * t]);
        let shape_err = |r: Result<()>| matches!(r, Err(Error::Shape { .. }));
        let invalid = |r: Result<()>| matches!(r, Err(Error::Invalid(_)));
        assert!(shape_err(forward(&x[1..], &x, &x, b, h, t, dh, false, None, &mut out, &mut lse)));
        assert!(shape_err(forward(&x, &x, &x[..n - 4], b, h, t, dh, false, None, &mut out, &mut lse)));
        assert!(shape_err(forward(&x, &x, &x, b, h, t, dh, false, None, &mut out[1..], &mut lse)));
        assert!(shape_err(forward(&x, &x, &x, b, h, t, dh, false, None, &mut out, &mut lse[1..])));
        assert!(shape_err(forward(&x, &x, &x, b, h, t, dh, false, Some(&[5]), &mut out, &mut lse)));
        assert!(invalid(forward(&x, &x, &x, b, h, t, dh, true, Some(&[5, 6]), &mut out, &mut lse)));
        assert!(invalid(forward(&[], &[], &[], b, h, t, 0, false, None, &mut [], &mut lse)));
        forward(&x, &x, &x, b, h, t, dh, true, Some(&[5, 0]), &mut out, &mut lse).unwrap();
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        assert!(shape_err(backward(&x, &x, &x, &out, &lse, &x, b, h, t, dh, true, None, &mut dq[1..], &mut dk, &mut dv)));
        assert!(shape_err(backward(&x, &x, &x, &out, &lse[1..], &x, b, h, t, dh, true, None, &mut dq, &mut dk, &mut dv)));
        assert!(shape_err(backward(&x, &x, &x, &out, &lse, &x[1..], b, h, t, dh, true, None, &mut dq, &mut dk, &mut dv)));
        assert!(invalid(backward(&x, &x, &x, &out, &lse, &x, b, h, t, dh, true, Some(&[6, 1]), &mut dq, &mut dk, &mut dv)));
        backward(&x, &x, &x, &out, &lse, &x, b, h, t, dh, true, Some(&[5, 0]), &mut dq, &mut dk, &mut dv).unwrap();
        let cap = 6;
        let (q1, cache, mut out1) = (vec![0.1f32; b * h * dh], vec![0.1f32; b * h * cap * dh], vec![0.0f32; b * h * dh]);
        assert!(invalid(decode_step(&q1, &cache, &cache, b, h, cap, cap + 1, dh, &mut out1)));
        assert!(shape_err(decode_step(&q1, &cache[1..], &cache, b, h, cap, 3, dh, &mut out1)));
        assert!(shape_err(decode_step(&q1, &cache, &cache, b, h, cap, 3, dh, &mut out1[1..])));
        assert!(shape_err(decode_step(&q1[1..], &cache, &cache, b, h, cap, 3, dh, &mut out1)));
        assert!(invalid(decode_step(&[], &[], &[], b, h, cap, 3, 0, &mut [])));
        decode_step(&q1, &cache, &cache, b, h, cap, cap, dh, &mut out1).unwrap();
        // Empty problems are fine.
        forward(&[], &[], &[], 0, h, t, dh, true, Some(&[]), &mut [], &mut []).unwrap();
        forward(&[], &[], &[], b, h, 0, dh, false, Some(&[0, 0]), &mut [], &mut []).unwrap();
    }

    /// Timing against `scripts/torch_sdpa_bench.py`: `EFFSEQ_SDPA_CONFIGS=1:1024,8:4096 cargo test --release
    /// -p effseq --lib attention::softmax::tests::timing -- --ignored --nocapture` (H=4, Dh=64; median of
    /// `EFFSEQ_SDPA_REPEATS` runs after one warm-up; `EFFSEQ_SDPA_MASKS=causal` or `full` for one mask only,
    /// `EFFSEQ_SDPA_FORWARD_ONLY=1` to skip the backward).
    #[test]
    #[ignore]
    fn timing() {
        let configs = std::env::var("EFFSEQ_SDPA_CONFIGS").unwrap_or_else(|_| "1:1024,8:1024".into());
        let repeats: usize = std::env::var("EFFSEQ_SDPA_REPEATS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
        let (h, dh) = (4, 64);
        println!("{} rayon threads; H={h} Dh={dh}", rayon::current_num_threads());
        for config in configs.split(',') {
            let (b, t) = config.split_once(':').map(|(b, t)| (b.parse::<usize>().unwrap(), t.parse::<usize>().unwrap())).unwrap();
            let n = b * h * t * dh;
            let (q, k, v, dout) = (normal(n, 1, 1.0), normal(n, 2, 1.0), normal(n, 3, 1.0), normal(n, 4, 1.0));
            let (mut out, mut lse) = (vec![0.0f32; n], vec![0.0f32; b * h * t]);
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            let masks = std::env::var("EFFSEQ_SDPA_MASKS").unwrap_or_else(|_| "causal,full".into());
            for causal in masks.split(',').map(|m| m == "causal") {
                let median = |run: &mut dyn FnMut()| {
                    run();
                    let mut ms: Vec<f64> = (0..repeats)
                        .map(|_| {
                            let start = std::time::Instant::now();
                            run();
                            start.elapsed().as_secs_f64() * 1e3
                        })
                        .collect();
                    ms.sort_by(f64::total_cmp);
                    ms[ms.len() / 2]
                };
                let fwd = median(&mut || forward(&q, &k, &v, b, h, t, dh, causal, None, &mut out, &mut lse).unwrap());
                let backward_too = std::env::var("EFFSEQ_SDPA_FORWARD_ONLY").is_err();
                let both = if !backward_too {
                    f64::NAN
                } else {
                    median(&mut || {
                        forward(&q, &k, &v, b, h, t, dh, causal, None, &mut out, &mut lse).unwrap();
                        backward(&q, &k, &v, &out, &lse, &dout, b, h, t, dh, causal, None, &mut dq, &mut dk, &mut dv).unwrap();
                    })
                };
                let flops = if causal { 2.0 } else { 4.0 } * (b * h * t * t * dh) as f64;
                let mask = if causal { "causal" } else { "full" };
                println!("B={b} T={t} {mask:6} forward {fwd:9.2} ms ({:6.1} GFLOP/s)  forward+backward {both:9.2} ms", flops / fwd / 1e6);
            }
        }
    }
}
