//! The copy-memory task (Bai, Kolter & Koltun 2018, sec. 4.1; after Arjovsky et al. 2016).
//!
//! A sequence of `T + 20` tokens: 10 digits drawn from `1..=8`, then `T - 1` blanks (0), the delimiter 9, and 10
//! more blanks during which the model must repeat the 10 digits. As in the TCN paper the model is trained with
//! cross-entropy at every step: the target is the blank 0 for the first `T + 10` steps and the 10 digits for the
//! last 10. The reported metric is the accuracy on the last 10 steps (the recall); the cross-entropy over those
//! 10 steps is reported beside it.
//!
//! Trivial baseline (the memoryless strategy): predict blanks perfectly, then a uniform guess over the 8 digits:
//! cross-entropy `10 ln 8 / (T + 20)` over all steps, recall accuracy 1/8.

use rand::Rng as _;

use crate::error::{Error, Result};
use crate::rng::{rng_for, streams, Rng};
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo};

/// Number of digits to remember (and to recall).
pub const DIGITS: usize = 10;
/// The blank token.
pub const BLANK: u32 = 0;
/// The delimiter token that asks for the recall.
pub const DELIMITER: u32 = 9;
/// Vocabulary size V: blank, the digits 1..=8 and the delimiter.
pub const VOCAB: usize = 10;
/// Number of distinct digits (1..=8), so a blind guess is right with probability 1/8.
pub const DIGIT_CHOICES: u32 = 8;

/// A seeded generator of copy-memory batches.
#[derive(Clone, Debug)]
pub struct Copy {
    /// T, the blank gap; sequences have `T + 20` steps.
    gap: usize,
    /// Number of sequences in the evaluation set.
    eval_size: usize,
    /// Seed of the training and evaluation streams.
    seed: u64,
}

impl Copy {
    /// A generator with a gap of `gap` (T, at least 1) blanks and delimiter between the digits and the recall,
    /// with an evaluation set of `eval_size` (at least 1) sequences.
    pub fn new(gap: usize, eval_size: usize, seed: u64) -> Result<Self> {
        if gap == 0 {
            return Err(Error::config("task.seq_len must be at least 1 for the copy task"));
        }
        if eval_size == 0 {
            return Err(Error::config("task.eval_size must be at least 1"));
        }
        Ok(Copy { gap, eval_size, seed })
    }

    /// Number of sequences in the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.eval_size
    }

    /// The seed of the data streams.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// T, the configured gap.
    pub fn gap(&self) -> usize {
        self.gap
    }

    /// Steps per sequence: `T + 20`.
    pub fn total_len(&self) -> usize {
        self.gap + 2 * DIGITS
    }

    /// What the model reads and emits: one token of V = 10 per step, 10 class logits at every step.
    pub fn io() -> TaskIo {
        TaskIo { input: InputKind::Tokens { vocab: VOCAB }, output_dim: VOCAB, readout: Readout::EveryStep }
    }

    /// Cross-entropy of the memoryless strategy over all `T + 20` steps: `10 ln 8 / (T + 20)`.
    pub fn baseline_cross_entropy(&self) -> f32 {
        (DIGITS as f64 * f64::from(DIGIT_CHOICES).ln() / self.total_len() as f64) as f32
    }

    /// The training batch of `step`: the same for every run with this seed, so a resumed run sees the same data.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let mut rng = rng_for(self.seed, streams::TRAIN_DATA.wrapping_add(step));
        self.generate(&mut rng, batch)
    }

    /// `count` sequences drawn from `rng`, as one batch: tokens `(B, T + 20)`, class targets `(B, T + 20)`.
    pub fn generate(&self, rng: &mut Rng, count: usize) -> Batch {
        let total = self.total_len();
        let recall_start = total - DIGITS;
        // (B, T + 20) token ids.
        let mut tokens = vec![BLANK; count * total];
        // (B, T + 20) class ids: blank everywhere but the recall window.
        let mut targets = vec![BLANK as i32; count * total];
        for (seq, target) in tokens.chunks_exact_mut(total).zip(targets.chunks_exact_mut(total)) {
            for i in 0..DIGITS {
                let digit = rng.random_range(1..=DIGIT_CHOICES);
                seq[i] = digit;
                target[recall_start + i] = digit as i32;
            }
            seq[recall_start - 1] = DELIMITER;
        }
        Batch { batch: count, seq_len: total, inputs: Inputs::Tokens(tokens), targets: Targets::Classes(targets), lengths: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(batch: &Batch) -> (&[u32], &[i32]) {
        match (&batch.inputs, &batch.targets) {
            (Inputs::Tokens(x), Targets::Classes(y)) => (x, y),
            other => panic!("copy batches are tokens with class targets, got {other:?}"),
        }
    }

    #[test]
    fn layout_of_a_sequence() {
        let task = Copy::new(30, 100, 3).unwrap();
        let batch = task.train_batch(0, 16);
        assert_eq!((batch.batch, batch.seq_len), (16, 50));
        let (x, y) = tokens(&batch);
        assert_eq!((x.len(), y.len()), (16 * 50, 16 * 50));
        for (seq, target) in x.chunks_exact(50).zip(y.chunks_exact(50)) {
            assert!(seq[..10].iter().all(|&d| (1..=8).contains(&d)), "digits in 1..=8: {seq:?}");
            assert!(seq[10..39].iter().all(|&v| v == BLANK), "T - 1 = 29 blanks");
            assert_eq!(seq[39], DELIMITER);
            assert!(seq[40..].iter().all(|&v| v == BLANK), "10 blanks during the recall");
            assert!(target[..40].iter().all(|&v| v == 0), "blank targets before the recall");
            let recalled: Vec<u32> = target[40..].iter().map(|&v| v as u32).collect();
            assert_eq!(recalled, seq[..10].to_vec());
        }
    }

    #[test]
    fn gap_of_one_puts_the_delimiter_right_after_the_digits() {
        let task = Copy::new(1, 100, 0).unwrap();
        let batch = task.train_batch(0, 1);
        let (x, _) = tokens(&batch);
        assert_eq!(x.len(), 21);
        assert_eq!(x[10], DELIMITER);
        assert!(Copy::new(0, 100, 0).is_err());
    }

    #[test]
    fn deterministic_per_seed_and_step() {
        let task = Copy::new(10, 100, 1).unwrap();
        assert_eq!(task.train_batch(4, 8), task.train_batch(4, 8));
        assert_ne!(task.train_batch(4, 8), task.train_batch(5, 8));
        assert_ne!(task.train_batch(4, 8), Copy::new(10, 100, 2).unwrap().train_batch(4, 8));
    }

    #[test]
    fn digits_are_uniform_over_eight_values() {
        let task = Copy::new(5, 100, 9).unwrap();
        let batch = task.train_batch(0, 4000);
        let (x, _) = tokens(&batch);
        let mut counts = [0usize; VOCAB];
        for seq in x.chunks_exact(task.total_len()) {
            for &d in &seq[..DIGITS] {
                counts[d as usize] += 1;
            }
        }
        let expected = 4000.0 * DIGITS as f64 / 8.0;
        for (digit, &n) in counts.iter().enumerate().take(9).skip(1) {
            assert!((n as f64 - expected).abs() < 0.05 * expected, "digit {digit} drawn {n} times, expected about {expected}");
        }
        assert_eq!(counts[0] + counts[9], 0, "neither blank nor delimiter among the digits");
    }

    #[test]
    fn baseline_cross_entropy_formula() {
        let task = Copy::new(100, 100, 0).unwrap();
        assert!((task.baseline_cross_entropy() - 10.0 * 8f32.ln() / 120.0).abs() < 1e-6);
    }
}
