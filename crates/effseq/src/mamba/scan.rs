//! The fused selective scan of Mamba (Gu & Dao 2023, sec. 3.3 and Algorithm 2), forward and backward, on the CPU.
//!
//! For every sequence `b` and channel `d` (of `Dc` channels) the scan runs an `N`-dimensional linear recurrence
//! with input-dependent ("selective") parameters, discretised as in `mamba_ssm` (zero-order hold for `A`, the
//! simplified Euler rule `B̄ = Δ B` for `B`, the paper's eq. 4):
//!
//! `h_t[n] = exp(Δ_t[d] A[d, n]) h_{t−1}[n] + Δ_t[d] B_t[n] u_t[d]`,   `y_t[d] = Σ_n C_t[n] h_t[n] + D[d] u_t[d]`,
//!
//! from `h_{−1}` (zero for a fresh sequence), with `u, Δ: (B, T, Dc)`, `A: (Dc, N)`, `B_t, C_t: (B, T, N)` (shared by
//! all channels) and `D: (Dc)`. This is `mamba_ssm`'s `selective_scan_ref` without the gate, which the caller
//! applies.
//!
//! ## Forward
//! The whole state sequence `(B, T, Dc, N)` is never materialised: each task holds the `(channels, N)` state of
//! one sequence and a group of channels and walks time; with `boundaries` it also stores the state at the start
//! of every chunk of [`CHUNK`] steps, `(B, ⌈T/CHUNK⌉, Dc, N)`. Memory of a training forward beyond its inputs
//! and `y`: `4·B·⌈T/64⌉·Dc·N` bytes (a quarter of one `(B, T, Dc)` buffer for N = 16); inference stores nothing.
//!
//! ## Backward
//! With `g_t = ∂L/∂h_t` (the total adjoint of the state), the reverse recurrence is
//! `g_t = exp(Δ_{t+1} A) ⊙ g_{t+1} + C_t ∂L/∂y_t`, and, writing `ā_t = exp(Δ_t A)`,
//!
//! * `∂L/∂C_t[n] = Σ_d ∂L/∂y_t[d] h_t[d, n]`, `∂L/∂B_t[n] = Σ_d g_t[d, n] Δ_t[d] u_t[d]`,
//! * `∂L/∂Δ_t[d] = Σ_n g_t[n] (B_t[n] u_t[d] + ā_t[n] A[d, n] h_{t−1}[n])`,
//! * `∂L/∂u_t[d] = Σ_n g_t[n] Δ_t[d] B_t[n] + D[d] ∂L/∂y_t[d]`, `∂L/∂D[d] = Σ_t ∂L/∂y_t[d] u_t[d]`,
//! * `∂L/∂A[d, n] = Σ_t g_t[n] ā_t[n] Δ_t[d] h_{t−1}[n]`.
//!
//! The backward walks the chunks in reverse; inside a chunk it recomputes `h_t` and `ā_t` from the chunk's
//! boundary state (into a per-task buffer of `CHUNK·N` lanes), then runs the adjoint recurrence backwards. It
//! costs one more pass of exponentials than the forward and no memory proportional to `T·N`.
//!
//! ## Parallelism and vectorisation
//! Tasks are (sequence, group of channels) pairs on the rayon pool; the number of groups depends on `B` and `Dc`
//! only, so results do not depend on the thread count. Within a task the innermost loops run over [`LANES`] = 16
//! adjacent channels held in one aligned vector value, which the compiler turns into SIMD code; the loop over the
//! state index `n` runs inside it. So the sums over `n` in `y`, `∂L/∂Δ` and `∂L/∂u` are plain vector adds (no
//! horizontal reduction per step), and only `∂L/∂B` and `∂L/∂C` (sums over channels) are reduced across lanes, once
//! per chunk. Channels past `Dc` in the last block are zero-padded lanes. Each chunk's rows of `u`, `Δ` (and `dy`)
//! are first staged into contiguous per-task buffers and the outputs written back after the chunk: the strided
//! loads then overlap instead of each one stalling the recurrence (2–3× faster than loading inside it).

use std::marker::PhantomData;

use rayon::prelude::*;

use crate::error::{check_len, Result};
use crate::math::exp;

/// Time steps per chunk: the granularity of the stored boundary states and of the backward's recomputation.
pub const CHUNK: usize = 64;

/// Channels processed together in the innermost (vectorised) loops.
pub const LANES: usize = 16;

/// Aim for about this many (sequence, channel group) tasks per scan: enough to balance a many-core pool, few
/// enough that the per-group partial sums of the backward stay small.
const TASKS_TARGET: usize = 32;

/// One vector of [`LANES`] channels. Every operation is one lane-wise loop over a 64-byte aligned value, a form
/// the compiler reliably turns into SIMD instructions (fused loops over many arrays it sometimes left scalar).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
struct Lanes([f32; LANES]);

// Indexed loops over the fixed-size arrays are the form the vectoriser handles best here.
#[allow(clippy::needless_range_loop)]
impl Lanes {
    const ZERO: Lanes = Lanes([0.0; LANES]);

    #[inline(always)]
    fn splat(v: f32) -> Lanes {
        Lanes([v; LANES])
    }

    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Lanes {
        let mut out = [0.0; LANES];
        for j in 0..LANES {
            out[j] = f(self.0[j]);
        }
        Lanes(out)
    }

    #[inline(always)]
    fn zip(self, other: Lanes, f: impl Fn(f32, f32) -> f32) -> Lanes {
        let mut out = [0.0; LANES];
        for j in 0..LANES {
            out[j] = f(self.0[j], other.0[j]);
        }
        Lanes(out)
    }

    /// `self · b + c`, lane-wise.
    #[inline(always)]
    fn mul_add(self, b: Lanes, c: Lanes) -> Lanes {
        let mut out = [0.0; LANES];
        for j in 0..LANES {
            out[j] = fma(self.0[j], b.0[j], c.0[j]);
        }
        Lanes(out)
    }

    /// Sum of the lanes.
    #[inline(always)]
    fn sum(self) -> f32 {
        self.0.iter().sum()
    }
}

impl std::ops::Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(self, o: Lanes) -> Lanes {
        self.zip(o, |a, b| a + b)
    }
}

impl std::ops::Mul for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn mul(self, o: Lanes) -> Lanes {
        self.zip(o, |a, b| a * b)
    }
}

/// Sizes of one selective scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanDims {
    /// B, sequences.
    pub batch: usize,
    /// T, time steps.
    pub time: usize,
    /// Dc, channels (Mamba's `d_inner`).
    pub channels: usize,
    /// N, state size per channel (Mamba's `d_state`).
    pub state: usize,
}

impl ScanDims {
    /// Number of chunks `⌈T / CHUNK⌉`.
    pub fn chunks(&self) -> usize {
        self.time.div_ceil(CHUNK)
    }

    /// Length of the boundary-state buffer, `B · ⌈T / CHUNK⌉ · Dc · N`.
    pub fn boundary_len(&self) -> usize {
        self.batch * self.chunks() * self.channels * self.state
    }

    /// Blocks of [`LANES`] channels, `⌈Dc / LANES⌉`.
    fn blocks(&self) -> usize {
        self.channels.div_ceil(LANES)
    }

    /// Blocks per task and number of channel groups: about [`TASKS_TARGET`] tasks in all.
    fn grouping(&self) -> (usize, usize) {
        let blocks = self.blocks().max(1);
        let wanted = TASKS_TARGET.div_ceil(self.batch.max(1)).clamp(1, blocks);
        let per_group = blocks.div_ceil(wanted);
        (per_group, blocks.div_ceil(per_group))
    }

    fn check(&self, inputs: &ScanInputs) -> Result<()> {
        let (b, t, dc, n) = (self.batch, self.time, self.channels, self.state);
        check_len("scan input u (B, T, Dc)", &[b, t, dc], inputs.u.len())?;
        check_len("scan step sizes delta (B, T, Dc)", &[b, t, dc], inputs.delta.len())?;
        check_len("scan state matrix A (Dc, N)", &[dc, n], inputs.a.len())?;
        check_len("scan input matrix B (B, T, N)", &[b, t, n], inputs.b.len())?;
        check_len("scan output matrix C (B, T, N)", &[b, t, n], inputs.c.len())?;
        check_len("scan skip D (Dc)", &[dc], inputs.d.len())
    }
}

/// The inputs of a selective scan, borrowed (shapes in [`ScanDims`] terms).
#[derive(Clone, Copy, Debug)]
pub struct ScanInputs<'a> {
    /// Input `u`: (B, T, Dc).
    pub u: &'a [f32],
    /// Step sizes `Δ` (after the softplus): (B, T, Dc).
    pub delta: &'a [f32],
    /// State matrix `A` (negative for a stable scan): (Dc, N).
    pub a: &'a [f32],
    /// Input matrices `B_t`: (B, T, N).
    pub b: &'a [f32],
    /// Output matrices `C_t`: (B, T, N).
    pub c: &'a [f32],
    /// Skip weights `D`: (Dc).
    pub d: &'a [f32],
}

/// Gradients of a loss with respect to every input of [`scan_forward`], from [`scan_backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScanGrads {
    /// ∂L/∂u: (B, T, Dc).
    pub du: Vec<f32>,
    /// ∂L/∂Δ: (B, T, Dc).
    pub ddelta: Vec<f32>,
    /// ∂L/∂A: (Dc, N).
    pub da: Vec<f32>,
    /// ∂L/∂B: (B, T, N).
    pub db: Vec<f32>,
    /// ∂L/∂C: (B, T, N).
    pub dc: Vec<f32>,
    /// ∂L/∂D: (Dc).
    pub dd: Vec<f32>,
}

/// A buffer that parallel tasks write at disjoint positions (each task owns one sequence and one channel range).
struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Disjoint` only hands out slices through `slice`, whose callers guarantee that no two tasks touch the
// same element; the pointer is valid for `len` elements for the lifetime `'a` of the borrowed buffer.
unsafe impl Send for Disjoint<'_> {}
unsafe impl Sync for Disjoint<'_> {}

impl<'a> Disjoint<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        Disjoint { ptr: buf.as_mut_ptr(), len: buf.len(), _buf: PhantomData }
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// No other live slice from this buffer may overlap `start..start + len`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "Disjoint::slice out of range");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// Channel range of block `blk`: first channel and width (at most [`LANES`]).
fn block_span(dims: &ScanDims, blk: usize) -> (usize, usize) {
    let c0 = blk * LANES;
    (c0, LANES.min(dims.channels - c0))
}

/// The first `w` lanes from `src`, the rest zero.
#[inline(always)]
fn load_lanes(src: &[f32], w: usize) -> Lanes {
    let mut v = Lanes::ZERO;
    if w == LANES {
        // A fixed-length copy is a vector load; a variable-length one is a call to memcpy.
        v.0.copy_from_slice(&src[..LANES]);
    } else {
        v.0[..w].copy_from_slice(&src[..w]);
    }
    v
}

/// Writes the first `w` lanes of `v` to `dst`.
#[inline(always)]
fn store_lanes(v: &Lanes, w: usize, dst: &mut [f32]) {
    if w == LANES {
        dst[..LANES].copy_from_slice(&v.0);
    } else {
        dst[..w].copy_from_slice(&v.0[..w]);
    }
}

/// `a · b + c`, fused when the target has FMA (then one instruction, and one rounding), else two operations.
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(target_feature = "fma") {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Copies the channels of `blocks` of `rows` of `src (B·T, Dc)` into `dst[(blk − first) · CHUNK + k]` (k-th row).
/// Staging a chunk in contiguous lanes first lets the strided loads of a row overlap, instead of each one waiting
/// inside the recurrence.
fn gather_chunk(dims: &ScanDims, src: &[f32], rows: std::ops::Range<usize>, blocks: std::ops::Range<usize>, dst: &mut [Lanes]) {
    let dc = dims.channels;
    for (k, row) in rows.enumerate() {
        for (i, blk) in blocks.clone().enumerate() {
            let (c0, w) = block_span(dims, blk);
            dst[i * CHUNK + k] = load_lanes(&src[row * dc + c0..], w);
        }
    }
}

/// The inverse of [`gather_chunk`], into a buffer shared with other tasks.
fn scatter_chunk(dims: &ScanDims, src: &[Lanes], rows: std::ops::Range<usize>, blocks: std::ops::Range<usize>, dst: &Disjoint) {
    let dc = dims.channels;
    for (k, row) in rows.enumerate() {
        for (i, blk) in blocks.clone().enumerate() {
            let (c0, w) = block_span(dims, blk);
            // SAFETY: row `row`, channels c0..c0+w belong to the calling task.
            store_lanes(&src[i * CHUNK + k], w, unsafe { dst.slice(row * dc + c0, w) });
        }
    }
}

/// Per block, `A` transposed to lanes: `(blocks, N)` vectors with `out[blk·N + n][j] = A[blk·LANES + j, n]`, and
/// the skip weights `D` as `(blocks)` vectors; padding lanes are zero.
fn lane_params(dims: &ScanDims, inputs: &ScanInputs, blocks: std::ops::Range<usize>) -> (Vec<Lanes>, Vec<Lanes>) {
    let n = dims.state;
    let mut a = vec![Lanes::ZERO; blocks.len() * n]; // (blocks, N) lanes
    let mut d = vec![Lanes::ZERO; blocks.len()]; // (blocks) lanes
    for (i, blk) in blocks.enumerate() {
        let (c0, w) = block_span(dims, blk);
        for j in 0..w {
            for s in 0..n {
                a[i * n + s].0[j] = inputs.a[(c0 + j) * n + s];
            }
            d[i].0[j] = inputs.d[c0 + j];
        }
    }
    (a, d)
}

/// Copies the states of channels `c0..c0+w` from a `(channels, N)` layout into `(N)` lane vectors.
fn gather_state(src: &[f32], n: usize, w: usize, dst: &mut [Lanes]) {
    for (s, lane) in dst.iter_mut().enumerate().take(n) {
        *lane = Lanes::ZERO;
        for j in 0..w {
            lane.0[j] = src[j * n + s];
        }
    }
}

/// The inverse of [`gather_state`].
fn scatter_state(src: &[Lanes], n: usize, w: usize, dst: &mut [f32]) {
    for (s, lane) in src.iter().enumerate().take(n) {
        for j in 0..w {
            dst[j * n + s] = lane.0[j];
        }
    }
}

/// Runs the selective scan over `(B, T)` from the states in `state (B, Dc, N)`, writes `y (B, T, Dc)` and leaves
/// the final states in `state`. With `boundaries (B, ⌈T/CHUNK⌉, Dc, N)` it also stores the state at the start of
/// every chunk, which [`scan_backward`] needs.
pub fn scan_forward(dims: &ScanDims, inputs: &ScanInputs, state: &mut [f32], y: &mut [f32], boundaries: Option<&mut [f32]>) -> Result<()> {
    dims.check(inputs)?;
    let (b, t, dc, n) = (dims.batch, dims.time, dims.channels, dims.state);
    check_len("scan state (B, Dc, N)", &[b, dc, n], state.len())?;
    check_len("scan output y (B, T, Dc)", &[b, t, dc], y.len())?;
    if let Some(bd) = &boundaries {
        check_len("scan boundary states (B, chunks, Dc, N)", &[b, dims.chunks(), dc, n], bd.len())?;
    }
    if b == 0 || t == 0 || dc == 0 {
        return Ok(());
    }
    let (per_group, groups) = dims.grouping();
    let y = Disjoint::new(y);
    let boundaries = boundaries.map(Disjoint::new);
    let state = Disjoint::new(state);
    (0..b * groups).into_par_iter().for_each(|task| {
        let (bi, g) = (task / groups, task % groups);
        let blocks = g * per_group..((g + 1) * per_group).min(dims.blocks());
        forward_task(dims, inputs, bi, blocks, &state, &y, boundaries.as_ref());
    });
    Ok(())
}

/// The forward scan of sequence `bi` over the channels of `blocks`.
fn forward_task(
    dims: &ScanDims,
    inputs: &ScanInputs,
    bi: usize,
    blocks: std::ops::Range<usize>,
    state: &Disjoint,
    y: &Disjoint,
    boundaries: Option<&Disjoint>,
) {
    let (t, dc, n) = (dims.time, dims.channels, dims.state);
    let (a, d_skip) = lane_params(dims, inputs, blocks.clone());
    let nb = blocks.len();
    let channel_lo = blocks.start * LANES;
    let channel_hi = (blocks.end * LANES).min(dc);
    // SAFETY: this task alone owns channels channel_lo..channel_hi of sequence bi in every buffer it writes.
    let task_state = unsafe { state.slice((bi * dc + channel_lo) * n, (channel_hi - channel_lo) * n) }; // (channels, N)
    let mut h = vec![Lanes::ZERO; nb * n]; // (blocks, N) lanes: the running state
    for (i, blk) in blocks.clone().enumerate() {
        let (c0, w) = block_span(dims, blk);
        gather_state(&task_state[(c0 - channel_lo) * n..], n, w, &mut h[i * n..(i + 1) * n]);
    }
    let mut delta_chunk = vec![Lanes::ZERO; nb * CHUNK]; // (blocks, CHUNK) lanes: Δ of the chunk
    let mut u_chunk = vec![Lanes::ZERO; nb * CHUNK]; // (blocks, CHUNK) lanes: u of the chunk
    let mut y_chunk = vec![Lanes::ZERO; nb * CHUNK]; // (blocks, CHUNK) lanes: y of the chunk
    for chunk in 0..dims.chunks() {
        let rows = bi * t + chunk * CHUNK..bi * t + ((chunk + 1) * CHUNK).min(t);
        gather_chunk(dims, inputs.delta, rows.clone(), blocks.clone(), &mut delta_chunk);
        gather_chunk(dims, inputs.u, rows.clone(), blocks.clone(), &mut u_chunk);
        for (i, blk) in blocks.clone().enumerate() {
            let (c0, w) = block_span(dims, blk);
            let hb = &mut h[i * n..(i + 1) * n];
            if let Some(bd) = boundaries {
                // SAFETY: as above; (bi, chunk, c0..c0+w) is this task's.
                let dst = unsafe { bd.slice(((bi * dims.chunks() + chunk) * dc + c0) * n, w * n) };
                scatter_state(hb, n, w, dst);
            }
            let ab = &a[i * n..(i + 1) * n];
            for (k, row) in rows.clone().enumerate() {
                let (delta, u) = (delta_chunk[i * CHUNK + k], u_chunk[i * CHUNK + k]);
                let du = delta * u; // Δ u
                let mut out = d_skip[i] * u; // y
                let (b_row, c_row) = (&inputs.b[row * n..(row + 1) * n], &inputs.c[row * n..(row + 1) * n]);
                for s in 0..n {
                    let decay = (delta * ab[s]).map(exp);
                    hb[s] = decay.mul_add(hb[s], du * Lanes::splat(b_row[s]));
                    out = Lanes::splat(c_row[s]).mul_add(hb[s], out);
                }
                y_chunk[i * CHUNK + k] = out;
            }
        }
        scatter_chunk(dims, &y_chunk, rows, blocks.clone(), y);
    }
    for (i, blk) in blocks.enumerate() {
        let (c0, w) = block_span(dims, blk);
        scatter_state(&h[i * n..(i + 1) * n], n, w, &mut task_state[(c0 - channel_lo) * n..]);
    }
}

/// Gradients of the scan from `dy = ∂L/∂y (B, T, Dc)`, given the inputs and the `boundaries` stored by
/// [`scan_forward`] (which must have started from the zero state or from the state the first boundary holds).
/// With `y_out: Some(buf)` it also writes the recomputed output `y (B, T, Dc)` into `buf`, which saves the caller
/// from keeping it.
pub fn scan_backward(dims: &ScanDims, inputs: &ScanInputs, boundaries: &[f32], dy: &[f32], y_out: Option<&mut [f32]>) -> Result<ScanGrads> {
    dims.check(inputs)?;
    let (b, t, dc, n) = (dims.batch, dims.time, dims.channels, dims.state);
    check_len("scan boundary states (B, chunks, Dc, N)", &[b, dims.chunks(), dc, n], boundaries.len())?;
    check_len("scan output gradient dy (B, T, Dc)", &[b, t, dc], dy.len())?;
    if let Some(y) = &y_out {
        check_len("scan recomputed output y (B, T, Dc)", &[b, t, dc], y.len())?;
    }
    let mut grads = ScanGrads {
        du: vec![0.0; b * t * dc],
        ddelta: vec![0.0; b * t * dc],
        da: vec![0.0; dc * n],
        db: vec![0.0; b * t * n],
        dc: vec![0.0; b * t * n],
        dd: vec![0.0; dc],
    };
    if b == 0 || t == 0 || dc == 0 {
        return Ok(grads);
    }
    let (per_group, groups) = dims.grouping();
    let group_channels = per_group * LANES;
    // Per (group, sequence) partial sums: dB and dC over the group's channels (G, B, T, N), dA and dD over time
    // (G, B, group channels, N) and (G, B, group channels). Summed over groups (and sequences) in a fixed order.
    let mut db_parts = vec![0.0; groups * b * t * n];
    let mut dc_parts = vec![0.0; groups * b * t * n];
    let mut da_parts = vec![0.0; groups * b * group_channels * n];
    let mut dd_parts = vec![0.0; groups * b * group_channels];
    {
        let du = Disjoint::new(&mut grads.du);
        let ddelta = Disjoint::new(&mut grads.ddelta);
        let y_out = y_out.map(Disjoint::new);
        db_parts
            .par_chunks_mut(t * n)
            .zip(dc_parts.par_chunks_mut(t * n))
            .zip(da_parts.par_chunks_mut(group_channels * n).zip(dd_parts.par_chunks_mut(group_channels)))
            .enumerate()
            .for_each(|(task, ((db, dcp), (da, dd)))| {
                let (g, bi) = (task / b, task % b);
                let blocks = g * per_group..((g + 1) * per_group).min(dims.blocks());
                let outs = TaskGrads { du: &du, ddelta: &ddelta, y: y_out.as_ref(), db, dc: dcp, da, dd };
                backward_task(dims, inputs, boundaries, dy, bi, blocks, outs);
            });
    }
    if groups == 1 {
        grads.db = db_parts;
        grads.dc = dc_parts;
    } else {
        sum_groups(&db_parts, groups, &mut grads.db);
        sum_groups(&dc_parts, groups, &mut grads.dc);
    }
    for g in 0..groups {
        for bi in 0..b {
            let part = (g * b + bi) * group_channels;
            let c_lo = g * group_channels;
            let c_hi = (c_lo + group_channels).min(dc);
            for c in c_lo..c_hi {
                grads.dd[c] += dd_parts[part + c - c_lo];
                for s in 0..n {
                    grads.da[c * n + s] += da_parts[(part + c - c_lo) * n + s];
                }
            }
        }
    }
    Ok(grads)
}

/// `out = Σ_g parts[g]` for `parts (G, len)`, in parallel over `out` and in group order.
fn sum_groups(parts: &[f32], groups: usize, out: &mut [f32]) {
    let len = out.len();
    out.par_chunks_mut(4096).enumerate().for_each(|(i, o)| {
        let start = i * 4096;
        for g in 0..groups {
            let p = &parts[g * len + start..g * len + start + o.len()];
            o.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
    });
}

/// Where one backward task writes.
struct TaskGrads<'a, 'b> {
    /// ∂L/∂u (B, T, Dc), this task's channels.
    du: &'b Disjoint<'a>,
    /// ∂L/∂Δ (B, T, Dc), this task's channels.
    ddelta: &'b Disjoint<'a>,
    /// Recomputed y (B, T, Dc), this task's channels, when wanted.
    y: Option<&'b Disjoint<'a>>,
    /// This task's partial ∂L/∂B: (T, N).
    db: &'b mut [f32],
    /// This task's partial ∂L/∂C: (T, N).
    dc: &'b mut [f32],
    /// This task's ∂L/∂A: (group channels, N).
    da: &'b mut [f32],
    /// This task's ∂L/∂D: (group channels).
    dd: &'b mut [f32],
}

/// The backward scan of sequence `bi` over the channels of `blocks`.
fn backward_task(dims: &ScanDims, inputs: &ScanInputs, boundaries: &[f32], dy: &[f32], bi: usize, blocks: std::ops::Range<usize>, out: TaskGrads) {
    let (t, dc, n) = (dims.time, dims.channels, dims.state);
    let (a, d_skip) = lane_params(dims, inputs, blocks.clone());
    let nb = blocks.len();
    let mut adjoint = vec![Lanes::ZERO; nb * n]; // (blocks, N): ā_{t+1} ⊙ g_{t+1} for the step after the current one
    let mut da = vec![Lanes::ZERO; nb * n]; // (blocks, N): ∂L/∂A
    let mut dd = vec![Lanes::ZERO; nb]; // (blocks): ∂L/∂D
    let mut h0 = vec![Lanes::ZERO; n]; // (N): the state before the chunk's first step
    let mut hs = vec![Lanes::ZERO; CHUNK * n]; // (CHUNK, N): h_t inside the chunk
    let mut decay = vec![Lanes::ZERO; CHUNK * n]; // (CHUNK, N): ā_t = exp(Δ_t A) inside the chunk
    let mut db_lanes = vec![Lanes::ZERO; CHUNK * n]; // (CHUNK, N): ∂L/∂B per lane, summed over the group's blocks
    let mut dc_lanes = vec![Lanes::ZERO; CHUNK * n]; // (CHUNK, N): ∂L/∂C per lane, likewise
                                                     // (blocks, CHUNK) lanes each: the chunk's Δ, u, ∂L/∂y, and its ∂L/∂Δ, ∂L/∂u and recomputed y.
    let [mut delta_chunk, mut u_chunk, mut dy_chunk, mut ddelta_chunk, mut du_chunk, mut y_chunk] = std::array::from_fn(|_| vec![Lanes::ZERO; nb * CHUNK]);
    for chunk in (0..dims.chunks()).rev() {
        let rows = bi * t + chunk * CHUNK..bi * t + ((chunk + 1) * CHUNK).min(t);
        let len = rows.len();
        gather_chunk(dims, inputs.delta, rows.clone(), blocks.clone(), &mut delta_chunk);
        gather_chunk(dims, inputs.u, rows.clone(), blocks.clone(), &mut u_chunk);
        gather_chunk(dims, dy, rows.clone(), blocks.clone(), &mut dy_chunk);
        db_lanes[..len * n].iter_mut().for_each(|v| *v = Lanes::ZERO);
        dc_lanes[..len * n].iter_mut().for_each(|v| *v = Lanes::ZERO);
        for (i, blk) in blocks.clone().enumerate() {
            let (c0, w) = block_span(dims, blk);
            let ab = &a[i * n..(i + 1) * n];
            gather_state(&boundaries[((bi * dims.chunks() + chunk) * dc + c0) * n..], n, w, &mut h0);
            // Recompute ā_t and h_t over the chunk (and y_t).
            for (k, row) in rows.clone().enumerate() {
                let (delta, u) = (delta_chunk[i * CHUNK + k], u_chunk[i * CHUNK + k]);
                let du = delta * u; // Δ u
                let mut y = d_skip[i] * u;
                let (b_row, c_row) = (&inputs.b[row * n..(row + 1) * n], &inputs.c[row * n..(row + 1) * n]);
                for s in 0..n {
                    let prev = if k == 0 { h0[s] } else { hs[(k - 1) * n + s] };
                    let dk = (delta * ab[s]).map(exp);
                    let hn = dk.mul_add(prev, du * Lanes::splat(b_row[s]));
                    decay[k * n + s] = dk;
                    hs[k * n + s] = hn;
                    y = Lanes::splat(c_row[s]).mul_add(hn, y);
                }
                y_chunk[i * CHUNK + k] = y;
            }
            // The adjoint recurrence, backwards through the chunk.
            let adj = &mut adjoint[i * n..(i + 1) * n];
            let da_b = &mut da[i * n..(i + 1) * n];
            for (k, row) in rows.clone().enumerate().rev() {
                let (delta, u, g_y) = (delta_chunk[i * CHUNK + k], u_chunk[i * CHUNK + k], dy_chunk[i * CHUNK + k]);
                let mut d_u = d_skip[i] * g_y;
                let mut d_delta = Lanes::ZERO;
                dd[i] = g_y.mul_add(u, dd[i]);
                let du = delta * u; // Δ u
                let (b_row, c_row) = (&inputs.b[row * n..(row + 1) * n], &inputs.c[row * n..(row + 1) * n]);
                for s in 0..n {
                    let (bs, cs, a_s) = (Lanes::splat(b_row[s]), Lanes::splat(c_row[s]), ab[s]);
                    let (hk, dk) = (hs[k * n + s], decay[k * n + s]);
                    let hp = if k == 0 { h0[s] } else { hs[(k - 1) * n + s] };
                    let g = cs.mul_add(g_y, adj[s]); // g_t = ā_{t+1} g_{t+1} + C_t ∂L/∂y_t
                    let ga = g * dk * hp; // ∂L/∂(Δ A) through ā_t: g_t ā_t h_{t−1}
                    let gb = g * bs;
                    dc_lanes[k * n + s] = g_y.mul_add(hk, dc_lanes[k * n + s]);
                    db_lanes[k * n + s] = g.mul_add(du, db_lanes[k * n + s]);
                    d_delta = gb.mul_add(u, ga.mul_add(a_s, d_delta));
                    d_u = gb.mul_add(delta, d_u);
                    da_b[s] = ga.mul_add(delta, da_b[s]);
                    adj[s] = g * dk; // ā_t g_t, the carry into step t − 1
                }
                ddelta_chunk[i * CHUNK + k] = d_delta;
                du_chunk[i * CHUNK + k] = d_u;
            }
        }
        scatter_chunk(dims, &ddelta_chunk, rows.clone(), blocks.clone(), out.ddelta);
        scatter_chunk(dims, &du_chunk, rows.clone(), blocks.clone(), out.du);
        if let Some(y_out) = out.y {
            scatter_chunk(dims, &y_chunk, rows.clone(), blocks.clone(), y_out);
        }
        // ∂L/∂B, ∂L/∂C of the chunk: reduce the lanes.
        let t0 = rows.start - bi * t;
        for k in 0..len {
            for s in 0..n {
                out.db[(t0 + k) * n + s] = db_lanes[k * n + s].sum();
                out.dc[(t0 + k) * n + s] = dc_lanes[k * n + s].sum();
            }
        }
    }
    let channel_lo = blocks.start * LANES;
    for (i, blk) in blocks.enumerate() {
        let (c0, w) = block_span(dims, blk);
        for j in 0..w {
            let c = c0 - channel_lo + j;
            out.dd[c] = dd[i].0[j];
            for s in 0..n {
                out.da[c * n + s] = da[i * n + s].0[j];
            }
        }
    }
}
