//! The adding problem (Hochreiter & Schmidhuber 1997, experiment 4; the version of Bai, Kolter & Koltun 2018,
//! "An Empirical Evaluation of Generic Convolutional and Recurrent Networks for Sequence Modeling", sec. 4.1).
//!
//! Each sequence has `T` steps of two features: a value drawn from U(0, 1) and a marker that is 1.0 at exactly
//! two steps, one in the first half (`t < T/2`) and one in the second half, and 0 elsewhere. The target is the
//! sum of the two marked values, read from the model's last step; the loss and the metric are the MSE.
//!
//! Trivial baseline: always predicting 1.0 (the mean of the target) scores MSE = Var(U1 + U2) = 2/12 ≈ 0.167.

use rand::Rng as _;

use crate::error::{Error, Result};
use crate::rng::{rng_for, streams, Rng};
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo};

/// Features per step: the value and the marker.
pub const INPUT_DIM: usize = 2;

/// MSE of the constant prediction 1.0: the variance of the sum of two U(0, 1) values, 2/12.
pub const BASELINE_MSE: f32 = 2.0 / 12.0;

/// A seeded generator of adding-problem batches.
#[derive(Clone, Debug)]
pub struct Adding {
    /// T, the number of steps per sequence.
    seq_len: usize,
    /// Number of sequences in the evaluation set.
    eval_size: usize,
    /// Seed of the training and evaluation streams.
    seed: u64,
}

impl Adding {
    /// A generator for sequences of `seq_len` steps (at least 2, so that each half holds a marker), with an
    /// evaluation set of `eval_size` (at least 1) sequences.
    pub fn new(seq_len: usize, eval_size: usize, seed: u64) -> Result<Self> {
        if seq_len < 2 {
            return Err(Error::config(format!("task.seq_len must be at least 2 for the adding task (one marker in each half), got {seq_len}")));
        }
        if eval_size == 0 {
            return Err(Error::config("task.eval_size must be at least 1"));
        }
        Ok(Adding { seq_len, eval_size, seed })
    }

    /// T.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of sequences in the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.eval_size
    }

    /// The seed of the data streams.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What the model reads and emits: 2 dense features per step, one value from the last step.
    pub fn io() -> TaskIo {
        TaskIo { input: InputKind::Dense { dim: INPUT_DIM }, output_dim: 1, readout: Readout::LastStep }
    }

    /// The training batch of `step`: the same for every run with this seed, so a resumed run sees the same data.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let mut rng = rng_for(self.seed, streams::TRAIN_DATA.wrapping_add(step));
        self.generate(&mut rng, batch)
    }

    /// `count` sequences drawn from `rng`, as one batch: inputs `(B, T, 2)`, targets `(B, 1)`.
    pub fn generate(&self, rng: &mut Rng, count: usize) -> Batch {
        let t_len = self.seq_len;
        let first_half = t_len / 2;
        // (B, T, 2): [value, marker] per step.
        let mut inputs = vec![0.0f32; count * t_len * INPUT_DIM];
        // (B, 1): the sum of the two marked values.
        let mut targets = vec![0.0f32; count];
        for (seq, target) in inputs.chunks_exact_mut(t_len * INPUT_DIM).zip(targets.iter_mut()) {
            for step in seq.chunks_exact_mut(INPUT_DIM) {
                step[0] = rng.random::<f32>();
            }
            let first = rng.random_range(0..first_half);
            let second = rng.random_range(first_half..t_len);
            for t in [first, second] {
                seq[t * INPUT_DIM + 1] = 1.0;
                *target += seq[t * INPUT_DIM];
            }
        }
        Batch { batch: count, seq_len: t_len, inputs: Inputs::Dense(inputs), targets: Targets::Values(targets), lengths: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(batch: &Batch) -> (&[f32], &[f32]) {
        match (&batch.inputs, &batch.targets) {
            (Inputs::Dense(x), Targets::Values(y)) => (x, y),
            other => panic!("adding batches are dense with value targets, got {other:?}"),
        }
    }

    #[test]
    fn shapes_ranges_and_markers() {
        let task = Adding::new(50, 100, 7).unwrap();
        let batch = task.train_batch(3, 64);
        assert_eq!((batch.batch, batch.seq_len), (64, 50));
        let (x, y) = dense(&batch);
        assert_eq!(x.len(), 64 * 50 * 2);
        assert_eq!(y.len(), 64);
        for (b, seq) in x.chunks_exact(50 * 2).enumerate() {
            let marked: Vec<usize> = (0..50).filter(|&t| seq[t * 2 + 1] != 0.0).collect();
            assert_eq!(marked.len(), 2, "sequence {b} must have exactly two markers");
            assert!(marked[0] < 25 && marked[1] >= 25, "one marker per half, got {marked:?}");
            assert!((0..50).all(|t| seq[t * 2 + 1] == 0.0 || seq[t * 2 + 1] == 1.0));
            assert!((0..50).all(|t| (0.0..1.0).contains(&seq[t * 2])));
            let sum = seq[marked[0] * 2] + seq[marked[1] * 2];
            assert_eq!(y[b], sum);
        }
    }

    #[test]
    fn deterministic_per_seed_and_step() {
        let task = Adding::new(20, 100, 1).unwrap();
        assert_eq!(task.train_batch(5, 8), task.train_batch(5, 8));
        assert_ne!(task.train_batch(5, 8), task.train_batch(6, 8));
        let other_seed = Adding::new(20, 100, 2).unwrap();
        assert_ne!(task.train_batch(5, 8), other_seed.train_batch(5, 8));
    }

    #[test]
    fn shortest_sequences_still_have_one_marker_per_half() {
        assert!(Adding::new(1, 100, 0).is_err());
        let task = Adding::new(2, 100, 0).unwrap();
        let batch = task.train_batch(0, 16);
        let (x, _) = dense(&batch);
        assert!(x.chunks_exact(4).all(|seq| seq[1] == 1.0 && seq[3] == 1.0));
    }

    #[test]
    fn predicting_one_scores_the_baseline_mse() {
        let task = Adding::new(50, 100, 11).unwrap();
        let batch = task.train_batch(0, 20_000);
        let (_, y) = dense(&batch);
        let mse = y.iter().map(|&v| f64::from(v - 1.0).powi(2)).sum::<f64>() / y.len() as f64;
        assert!((mse - f64::from(BASELINE_MSE)).abs() < 0.005, "baseline MSE {mse}, expected about 0.167");
    }
}
