//! The per-time-step work of the recurrent loops, split by hidden units across a small team of threads.
//!
//! A time step of an RNN is too short (tens of microseconds at B = 8, H = 256) for a fork and join per step:
//! waking a sleeping pool thread costs about as much as the step. Instead the whole time loop runs on a team
//! of OS threads (the caller plus `n - 1` scoped threads) that meet at a spinning barrier once per step.
//! Thread `k` owns the hidden units `units(k)`: it computes the recurrent product only for the gate columns
//! of its units and then their pointwise update, so all writes of a step are disjoint between threads and
//! one barrier per step (h_t complete) suffices. Backward needs the full `dG_t` row for `dh_{t-1}`, so it
//! meets once per step between the pointwise pass and the product.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::linalg::{packed_panels_acc, PackedPanels, PANEL};

/// A sense-counting barrier that spins (then yields) instead of sleeping: the wait between two time steps
/// is a few microseconds.
pub(super) struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    pub(super) fn new(n: usize) -> Self {
        SpinBarrier { n, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0) }
    }

    /// Blocks until all `n` threads have called `wait` for this generation. Every write made before `wait` by
    /// any thread is visible to every thread after it (release/acquire through `arrived` and `generation`).
    pub(super) fn wait(&self) {
        if self.n == 1 {
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            let mut spins = 0u32;
            while self.generation.load(Ordering::Acquire) == gen {
                if spins < 1 << 14 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    // Another process has the other core: give it back instead of burning a time slice.
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Runs `body(k)` for `k in 0..n`, `k = 0` on the calling thread, the others on scoped threads.
pub(super) fn run_team(n: usize, body: impl Fn(usize) + Sync) {
    if n == 1 {
        body(0);
        return;
    }
    std::thread::scope(|s| {
        let body = &body;
        for k in 1..n {
            s.spawn(move || body(k));
        }
        body(0);
    });
}

/// How many threads the time loop of one direction should use: 2 when the per-step product is large enough
/// to amortise a barrier (about 0.25 M multiply-adds), the pool has two threads to give, H splits on panel
/// boundaries, and the caller is not already running both directions of a bidirectional layer in parallel.
pub(super) fn team_size(b: usize, h: usize, gh: usize, directions: usize) -> usize {
    let threads = rayon::current_num_threads();
    if directions == 1 && threads >= 2 && h.is_multiple_of(2 * PANEL) && b * gh * h >= 1 << 18 {
        2
    } else {
        1
    }
}

/// The hidden units owned by thread `k` of `n`: contiguous, aligned to the panel width.
pub(super) fn units(k: usize, n: usize, h: usize) -> std::ops::Range<usize> {
    if n == 1 {
        return 0..h;
    }
    let per = (h / PANEL).div_ceil(n) * PANEL;
    (k * per).min(h)..((k + 1) * per).min(h)
}

/// A raw pointer shared by the team; each thread dereferences only the elements of its own units.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut f32);
// SAFETY: see the module docs: threads write disjoint index sets and meet at a barrier before reading
// what another thread wrote.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    pub(super) fn null() -> Self {
        Shared(std::ptr::null_mut())
    }

    /// # Safety
    /// `[off, off + len)` must be in bounds and written by no other thread until the next barrier.
    pub(super) unsafe fn slice_mut<'a>(self, off: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }

    /// # Safety
    /// `[off, off + len)` must be in bounds and written by no thread until the next barrier.
    pub(super) unsafe fn slice<'a>(self, off: usize, len: usize) -> &'a [f32] {
        std::slice::from_raw_parts(self.0.add(off), len)
    }
}

/// `out[:, g*H + u] += x (B, K) · w[:, g*H + u]` for every gate `g` and unit `u` in `units`, with `w` packed in
/// panels of (K, G*H). With the whole range (`units == 0..H`) one call covers every panel, so H need not be a
/// multiple of the panel width.
///
/// # Safety
/// `out (B, ldo)` must be valid, and its gate columns of `units` written by no other thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gate_columns_acc(
    b: usize,
    x: &[f32],
    ldx: usize,
    w: &PackedPanels,
    gates: usize,
    h: usize,
    units: std::ops::Range<usize>,
    out: Shared,
    ldo: usize,
) {
    if units.start == 0 && units.end == h {
        packed_panels_acc(b, x, ldx, w, 0..w.cols().div_ceil(PANEL), out.0, ldo);
    } else {
        for g in 0..gates {
            let (c0, c1) = (g * h + units.start, g * h + units.end);
            packed_panels_acc(b, x, ldx, w, c0 / PANEL..c1.div_ceil(PANEL), out.0, ldo);
        }
    }
}
