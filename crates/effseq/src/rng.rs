//! Seeded, reproducible randomness. Every random stream is derived from `(seed, stream)` so that a
//! resumed run draws exactly what an uninterrupted one would (no RNG state needs to be saved).

use rand::{Rng as _, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// The generator used everywhere: ChaCha8, fast and identical on every platform.
pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator for `stream` under `seed` (e.g. stream = training step, or a fixed tag for initialisation).
pub fn rng_for(seed: u64, stream: u64) -> Rng {
    let mut r = Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// Fixed stream tags, so that the streams of different purposes never overlap.
pub mod streams {
    /// Parameter initialisation.
    pub const INIT: u64 = 1 << 40;
    /// The evaluation set of a generated task.
    pub const EVAL_DATA: u64 = 2 << 40;
    /// Training batches: `TRAIN_DATA + step`.
    pub const TRAIN_DATA: u64 = 3 << 40;
    /// Dropout masks: `DROPOUT + step`.
    pub const DROPOUT: u64 = 4 << 40;
    /// Test-set data.
    pub const TEST_DATA: u64 = 5 << 40;
    /// Performer random features: `FEATURES + draw * 4096 + layer`, the `draw`-th redraw of a layer's features.
    pub const FEATURES: u64 = 6 << 40;
}

/// Fills `out` with U(-bound, bound).
pub fn fill_uniform(rng: &mut Rng, out: &mut [f32], bound: f32) {
    for v in out.iter_mut() {
        *v = rng.random_range(-bound..=bound);
    }
}

/// Fills `out` with N(0, std^2).
pub fn fill_normal(rng: &mut Rng, out: &mut [f32], std: f32) {
    for v in out.iter_mut() {
        let z: f32 = StandardNormal.sample(rng);
        *v = z * std;
    }
}
