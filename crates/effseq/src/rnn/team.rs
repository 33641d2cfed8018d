//! The per-time-step work of the recurrent loops, split by hidden units across a small team of threads.
//!
//! A time step of an RNN is too short (tens of microseconds at B = 8, H = 256) for a fork and join per step:
//! waking a sleeping pool thread costs about as much as the step. Instead the whole time loop runs on a team
//! of OS threads (the caller plus `n - 1` scoped threads) that share the steps' work through two counters
//! ([`run_phases`]). Each step is split into chunks of hidden units: a chunk computes the recurrent product
//! only for the gate columns of its units and then their pointwise update, so all writes of a step are
//! disjoint between chunks, and a step may start once every chunk of the previous one is done (h_{t-1}
//! complete). Backward needs the full `dG_t` row for `dh_{t-1}`, so each of its steps is two phases: the
//! pointwise pass, then the product.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::linalg::{packed_panels_acc, PackedPanels, PANEL};

/// Runs `work(phase, chunk)` for every `phase in 0..phases` and `chunk in 0..chunks`, on `n` threads (the
/// caller and `n - 1` scoped threads), where no chunk of a phase starts before every chunk of the previous
/// phase has finished. Chunks are claimed from a shared counter rather than assigned: a thread that the OS
/// has descheduled simply claims nothing, and the others do its share, so a busy machine slows the loop down
/// gracefully instead of stalling every step on the absent thread.
pub(super) fn run_phases(n: usize, phases: usize, chunks: usize, work: impl Fn(usize, usize) + Sync) {
    if n == 1 {
        for p in 0..phases {
            for c in 0..chunks {
                work(p, c);
            }
        }
        return;
    }
    let total = phases * chunks;
    let next = AtomicUsize::new(0); // next chunk to claim, in (phase, chunk) order
    let done = AtomicUsize::new(0); // chunks finished
    let wait_for_phase = |p: usize| {
        let mut spins = 0u32;
        // Acquire: everything the finished chunks wrote is visible after this.
        while done.load(Ordering::Acquire) < p * chunks {
            if spins < 1 << 12 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    };
    let worker = || loop {
        // Wait until the phase of the next chunk is open, then claim a chunk (usually that one).
        let peek = next.load(Ordering::Relaxed);
        if peek >= total {
            break;
        }
        wait_for_phase(peek / chunks);
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        wait_for_phase(i / chunks);
        work(i / chunks, i % chunks);
        done.fetch_add(1, Ordering::Release);
    };
    std::thread::scope(|s| {
        for _ in 1..n {
            s.spawn(worker);
        }
        worker();
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
