//! The duplication task of the Reformer paper (Kitaev, Kaiser & Levskaya 2020, sec. 5, "Synthetic task"; trax's
//! `sequence_copy_inputs`).
//!
//! A sequence of `T` tokens (T even) has the form `0 w 0 w`: `w` is `T/2 - 1` symbols drawn uniformly from
//! `1..=V-1`, and 0 separates the two copies (the paper: V = 128 symbols, T = 1024, so `w` has 511 symbols). A
//! causal language model reads all `T` tokens and predicts the next token at every step. As in trax, only the
//! predictions of the second copy count: the model's output at position `i` (having read `0 w 0 w[..j]`) is
//! trained to give `w[j]`, for the `T/2 - 1` positions from the second 0 to the one before the last token; every
//! other position's target is [`IGNORE`] (the first copy is random and cannot be predicted). The metric is the
//! accuracy of those next-token predictions; the cross-entropy over them is the loss.
//!
//! Trivial baseline (a model that cannot look back `T/2` positions): a uniform guess among the `V - 1` symbols,
//! cross-entropy `ln(V - 1)` and accuracy `1/(V - 1)`. Reading back half the sequence solves the task exactly.

use rand::Rng as _;

use crate::error::{check_len, Error, Result};
use crate::layers::loss::{self, CrossEntropyOut};
use crate::rng::{rng_for, streams, Rng};
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo, IGNORE};

/// The paper's vocabulary: the separator 0 and the symbols 1..=127.
pub const DEFAULT_VOCAB: usize = 128;
/// The separator before each copy.
pub const SEPARATOR: u32 = 0;

/// A seeded generator of duplication batches.
#[derive(Clone, Debug)]
pub struct Duplicate {
    /// T: tokens per sequence, `2 (|w| + 1)`.
    seq_len: usize,
    /// V: the separator and `V - 1` symbols.
    vocab: usize,
    /// Number of sequences in the evaluation set.
    eval_size: usize,
    /// Seed of the training and evaluation streams.
    seed: u64,
}

impl Duplicate {
    /// The task with the paper's vocabulary of 128 ([`DEFAULT_VOCAB`]): sequences of `seq_len` tokens (even, at least
    /// 4) and an evaluation set of `eval_size` (at least 1) sequences.
    pub fn new(seq_len: usize, eval_size: usize, seed: u64) -> Result<Self> {
        Self::with_vocab(seq_len, DEFAULT_VOCAB, eval_size, seed)
    }

    /// [`Duplicate::new`] with a vocabulary of `vocab` tokens (at least 2: the separator and one symbol).
    pub fn with_vocab(seq_len: usize, vocab: usize, eval_size: usize, seed: u64) -> Result<Self> {
        if seq_len < 4 || !seq_len.is_multiple_of(2) {
            return Err(Error::config(format!("task.seq_len must be even and at least 4 for the duplication task (0 w 0 w), got {seq_len}")));
        }
        if vocab < 2 || vocab > u32::MAX as usize {
            return Err(Error::config(format!("the duplication task needs a vocabulary of at least 2 tokens (the separator and a symbol), got {vocab}")));
        }
        if eval_size == 0 {
            return Err(Error::config("task.eval_size must be at least 1"));
        }
        Ok(Duplicate { seq_len, vocab, eval_size, seed })
    }

    /// Number of sequences in the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.eval_size
    }

    /// The seed of the data streams.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// T, tokens per sequence (the steps the model reads).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// V.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// `|w| = T/2 - 1`: symbols per copy, and scored predictions per sequence.
    pub fn copy_len(&self) -> usize {
        self.seq_len / 2 - 1
    }

    /// Position of the second separator, `T/2`: the first position whose prediction is scored.
    pub fn second_separator(&self) -> usize {
        self.seq_len / 2
    }

    /// What the model reads and emits: one token of V per step, V next-token logits at every step.
    pub fn io(&self) -> TaskIo {
        Self::io_for(self.vocab)
    }

    /// [`Duplicate::io`] for a vocabulary of `vocab` tokens.
    pub fn io_for(vocab: usize) -> TaskIo {
        TaskIo { input: InputKind::Tokens { vocab }, output_dim: vocab, readout: Readout::EveryStep }
    }

    /// Name of the metric.
    pub fn metric_name() -> &'static str {
        "accuracy"
    }

    /// Whether a larger metric is better.
    pub fn higher_is_better() -> bool {
        true
    }

    /// Cross-entropy of a uniform guess among the `V - 1` symbols: `ln(V - 1)`.
    pub fn baseline_cross_entropy(&self) -> f32 {
        ((self.vocab - 1) as f64).ln() as f32
    }

    /// Accuracy of a blind guess among the `V - 1` symbols: `1/(V - 1)`.
    pub fn baseline_accuracy(&self) -> f32 {
        (1.0 / (self.vocab - 1) as f64) as f32
    }

    /// One line on the setting and the score of the trivial strategy, to judge a result against.
    pub fn baseline_note(&self) -> String {
        format!(
            "baseline: a uniform guess among the {} symbols gives cross-entropy {:.4} (ln {}) and accuracy {:.4} on the second copy; \
             sequences 0 w 0 w of {} tokens, |w| = {} (paper: V = 128, 1024 tokens)",
            self.vocab - 1,
            self.baseline_cross_entropy(),
            self.vocab - 1,
            self.baseline_accuracy(),
            self.seq_len,
            self.copy_len()
        )
    }

    /// The training batch of `step`, drawn from `rng_for(seed, streams::TRAIN_DATA + step)`: the same for every run
    /// with this seed, so a resumed run sees the same data.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let mut rng = rng_for(self.seed, streams::TRAIN_DATA.wrapping_add(step));
        self.generate(&mut rng, batch)
    }

    /// The evaluation set: `eval_size` sequences drawn one after the other from `rng_for(seed, streams::EVAL_DATA)`
    /// (as the copy task's), in batches of at most `per_batch` (at least 1) sequences. Every call yields the same
    /// sequences, whatever the batch size.
    pub fn eval_set(&self, per_batch: usize) -> impl Iterator<Item = Batch> + '_ {
        let mut rng = rng_for(self.seed, streams::EVAL_DATA);
        let per_batch = per_batch.max(1);
        let mut remaining = self.eval_size;
        std::iter::from_fn(move || {
            (remaining > 0).then(|| {
                let n = remaining.min(per_batch);
                remaining -= n;
                self.generate(&mut rng, n)
            })
        })
    }

    /// `count` sequences drawn from `rng`, as one batch: tokens `(B, T)`, next-token targets `(B, T)` on the second
    /// copy and [`IGNORE`] elsewhere.
    pub fn generate(&self, rng: &mut Rng, count: usize) -> Batch {
        let (total, half) = (self.seq_len, self.seq_len / 2);
        let top = (self.vocab - 1) as u32;
        let mut tokens = vec![SEPARATOR; count * total]; // (B, T) token ids
        let mut targets = vec![IGNORE; count * total]; // (B, T) class ids
        for (seq, target) in tokens.chunks_exact_mut(total).zip(targets.chunks_exact_mut(total)) {
            for j in 0..half - 1 {
                let symbol = rng.random_range(1..=top);
                seq[1 + j] = symbol;
                seq[half + 1 + j] = symbol;
                // The output at the position before w[j]'s second occurrence predicts it.
                target[half + j] = symbol as i32;
            }
        }
        Batch { batch: count, seq_len: total, inputs: Inputs::Tokens(tokens), targets: Targets::Classes(targets), lengths: None }
    }

    /// Cross-entropy, counted and correct predictions of `logits (B, T, V)` on the scored positions of `batch`
    /// (the `T/2 - 1` predictions of the second copy per sequence); `correct / counted` is the metric.
    pub fn score(&self, logits: &[f32], batch: &Batch) -> Result<CrossEntropyOut> {
        let (total, v) = (self.seq_len, self.vocab);
        check_len("duplicate logits (B, T, V)", &[batch.batch, batch.seq_len, v], logits.len())?;
        if batch.seq_len != total {
            return Err(Error::Invalid(format!("duplicate batch has {} steps per sequence, the task {total}", batch.seq_len)));
        }
        let Targets::Classes(targets) = &batch.targets else {
            return Err(Error::Invalid("duplicate batches carry class targets".into()));
        };
        let (start, len) = (self.second_separator(), self.copy_len());
        let mut window_logits = Vec::with_capacity(batch.batch * len * v); // (B, |w|, V)
        let mut window_targets = Vec::with_capacity(batch.batch * len); // (B, |w|)
        for b in 0..batch.batch {
            let rows = b * total + start..b * total + start + len;
            window_logits.extend_from_slice(&logits[rows.start * v..rows.end * v]);
            window_targets.extend_from_slice(&targets[rows]);
        }
        loss::cross_entropy(&window_logits, &window_targets, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(batch: &Batch) -> (&[u32], &[i32]) {
        match (&batch.inputs, &batch.targets) {
            (Inputs::Tokens(x), Targets::Classes(y)) => (x, y),
            other => panic!("duplicate batches are tokens with class targets, got {other:?}"),
        }
    }

    #[test]
    fn layout_of_a_sequence() {
        let task = Duplicate::new(24, 10, 3).unwrap();
        assert_eq!((task.copy_len(), task.second_separator(), task.vocab()), (11, 12, 128));
        let batch = task.train_batch(0, 8);
        assert_eq!((batch.batch, batch.seq_len), (8, 24));
        let (x, y) = parts(&batch);
        for (seq, target) in x.chunks_exact(24).zip(y.chunks_exact(24)) {
            assert_eq!((seq[0], seq[12]), (SEPARATOR, SEPARATOR));
            assert!(seq[1..12].iter().all(|&s| (1..=127).contains(&s)), "symbols in 1..=V-1: {seq:?}");
            assert_eq!(seq[1..12], seq[13..24], "the second copy repeats w");
            // Target at position i is the token at i + 1, on the 11 positions 12..=22 only.
            assert!(target[..12].iter().chain(&target[23..]).all(|&t| t == IGNORE));
            for i in 12..23 {
                assert_eq!(target[i], seq[i + 1] as i32);
            }
        }
        assert!(Duplicate::new(23, 10, 0).is_err(), "odd length");
        assert!(Duplicate::new(2, 10, 0).is_err(), "empty w");
        assert!(Duplicate::with_vocab(8, 1, 10, 0).is_err());
        assert!(Duplicate::new(8, 0, 0).is_err());
    }

    #[test]
    fn deterministic_per_seed_and_step() {
        let task = Duplicate::with_vocab(16, 5, 100, 1).unwrap();
        assert_eq!(task.train_batch(4, 8), task.train_batch(4, 8));
        assert_ne!(task.train_batch(4, 8), task.train_batch(5, 8));
        assert_ne!(task.train_batch(4, 8), Duplicate::with_vocab(16, 5, 100, 2).unwrap().train_batch(4, 8));
        // The evaluation set does not depend on the batch size and differs from the training stream.
        let small: Vec<Batch> = task.eval_set(7).collect();
        assert_eq!(small.iter().map(|b| b.batch).sum::<usize>(), 100);
        let whole = task.eval_set(1000).next().unwrap();
        let (Inputs::Tokens(a), Inputs::Tokens(b)) = (&whole.inputs, &small[0].inputs) else { unreachable!() };
        assert_eq!(&a[..b.len()], &b[..]);
        assert_ne!(whole.inputs, task.train_batch(0, 100).inputs);
    }

    #[test]
    fn symbols_are_uniform_over_the_vocabulary() {
        let task = Duplicate::with_vocab(42, 6, 10, 9).unwrap();
        let batch = task.train_batch(0, 2000);
        let (x, _) = parts(&batch);
        let mut counts = [0usize; 6];
        for seq in x.chunks_exact(42) {
            for &s in &seq[1..21] {
                counts[s as usize] += 1;
            }
        }
        let expected = 2000.0 * 20.0 / 5.0;
        assert_eq!(counts[0], 0, "the separator is never a symbol");
        for (symbol, &n) in counts.iter().enumerate().skip(1) {
            assert!((n as f64 - expected).abs() < 0.05 * expected, "symbol {symbol} drawn {n} times, expected about {expected}");
        }
    }

    /// Logits `(B, T, V)` with `value(target)` at every scored position's target and 0 elsewhere.
    fn logits_for(task: &Duplicate, batch: &Batch, fill: impl Fn(usize, i32) -> f32) -> Vec<f32> {
        let (_, y) = parts(batch);
        let v = task.vocab();
        let mut logits = vec![0.0f32; y.len() * v];
        for (row, &target) in logits.chunks_exact_mut(v).zip(y) {
            for (class, l) in row.iter_mut().enumerate() {
                *l = fill(class, target);
            }
        }
        logits
    }

    #[test]
    fn perfect_logits_score_one_and_uniform_logits_score_chance() {
        let task = Duplicate::with_vocab(64, 9, 10, 4).unwrap();
        let batch = task.train_batch(0, 500);
        let perfect = task.score(&logits_for(&task, &batch, |c, t| if c as i32 == t { 20.0 } else { 0.0 }), &batch).unwrap();
        assert_eq!((perfect.counted, perfect.correct), (500 * 31, 500 * 31));
        assert!(perfect.loss < 1e-6);
        // Uniform over the 8 symbols (the separator excluded): cross-entropy ln 8; the first-index tie break
        // answers symbol 1, right for about 1/8 of the uniform targets.
        let uniform = task.score(&logits_for(&task, &batch, |c, _| if c == 0 { -1e9 } else { 0.0 }), &batch).unwrap();
        assert!((uniform.loss - task.baseline_cross_entropy()).abs() < 1e-5, "{} vs ln 8", uniform.loss);
        let accuracy = uniform.correct as f64 / uniform.counted as f64;
        assert!((accuracy - 1.0 / 8.0).abs() < 0.01, "accuracy {accuracy}");
        assert!((task.baseline_accuracy() - 0.125).abs() < 1e-7);
        // Uniform over all V tokens costs ln V.
        let flat = task.score(&vec![0.0; 500 * 64 * 9], &batch).unwrap();
        assert!((flat.loss - 9f32.ln()).abs() < 1e-5);
        assert!(task.score(&[0.0; 5], &batch).is_err());
        assert!(task.baseline_note().contains("0.1250"));
    }
}
