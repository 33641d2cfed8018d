//! The selective-copying task (Gu & Dao 2023, "Mamba", sec. 4.1.1 and Table 1; after the copying task of Arjovsky et al.
//! 2016 with randomised spacing).
//!
//! A sequence of `L + 1 + K` tokens (L = `seq_len`, K = [`TOKENS`] = 16, as in the paper's setup): a content region of
//! L positions in which K data tokens drawn uniformly from the [`SYMBOLS`] = 8 symbols `1..=8` sit at K distinct
//! random positions (in increasing order) and every other position is the noise token 0; then the separator 9; then
//! K blank query positions (token 0) during which the model must output the K data tokens in their order of
//! appearance. Unlike the plain copy task ([`crate::tasks::copy`]) the spacing varies, so a model cannot solve it
//! with a fixed time shift: it must select the tokens by content.
//!
//! The model reads one token per step and emits V = 10 logits at every step; the targets are [`IGNORE`] everywhere
//! but the K answer positions, so the training loss is the cross-entropy over the answers. The metric is the
//! accuracy over the answer positions ([`SelectiveCopy::score`]).
//!
//! Trivial baseline: a uniform guess over the 8 symbols, cross-entropy `ln 8` and accuracy 1/8.

use rand::seq::index::sample;
use rand::Rng as _;

use crate::error::{check_len, Error, Result};
use crate::layers::loss::{cross_entropy, CrossEntropyOut};
use crate::rng::{rng_for, streams, Rng};
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo, IGNORE};

/// Number of data tokens to remember (and to output), K.
pub const TOKENS: usize = crate::config::SELECTIVE_COPY_TOKENS;
/// Number of distinct data symbols (`1..=SYMBOLS`), so a blind guess is right with probability 1/8.
pub const SYMBOLS: u32 = 8;
/// The noise token of the content region, also the blank input of the query positions.
pub const NOISE: u32 = 0;
/// The separator between the content region and the answers.
pub const SEPARATOR: u32 = 9;
/// Vocabulary size V: noise, the symbols 1..=8 and the separator.
pub const VOCAB: usize = 10;

/// A seeded generator of selective-copying batches.
#[derive(Clone, Debug)]
pub struct SelectiveCopy {
    /// L, the length of the content region (at least K).
    seq_len: usize,
    /// Number of sequences in the evaluation set.
    eval_size: usize,
    /// Seed of the training and evaluation streams.
    seed: u64,
}

impl SelectiveCopy {
    /// A generator with a content region of `seq_len` positions (at least [`TOKENS`]) and an evaluation set of
    /// `eval_size` (at least 1) sequences.
    pub fn new(seq_len: usize, eval_size: usize, seed: u64) -> Result<Self> {
        if seq_len < TOKENS {
            return Err(Error::config(format!(
                "task.seq_len must be at least {TOKENS} for the selective-copy task (the content region holds {TOKENS} tokens), got {seq_len}"
            )));
        }
        if eval_size == 0 {
            return Err(Error::config("task.eval_size must be at least 1"));
        }
        Ok(SelectiveCopy { seq_len, eval_size, seed })
    }

    /// Number of sequences in the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.eval_size
    }

    /// The seed of the data streams.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// L, the configured length of the content region.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Steps per sequence: `L + 1 + K`.
    pub fn total_len(&self) -> usize {
        self.seq_len + 1 + TOKENS
    }

    /// First answer position, `L + 1`; the answers are the last K steps.
    pub fn answer_start(&self) -> usize {
        self.seq_len + 1
    }

    /// What the model reads and emits: one token of V = 10 per step, 10 class logits at every step.
    pub fn io() -> TaskIo {
        TaskIo { input: InputKind::Tokens { vocab: VOCAB }, output_dim: VOCAB, readout: Readout::EveryStep }
    }

    /// Cross-entropy of a uniform guess over the symbols at the answer positions: `ln 8`.
    pub fn baseline_cross_entropy() -> f32 {
        f64::from(SYMBOLS).ln() as f32
    }

    /// One line on the trivial strategy, to judge a result against.
    pub fn baseline_note(&self) -> String {
        format!(
            "baseline: guessing uniformly among the {SYMBOLS} symbols gives cross-entropy {:.4} (ln {SYMBOLS}) and accuracy {:.3} over the {TOKENS} answers",
            Self::baseline_cross_entropy(),
            1.0 / f64::from(SYMBOLS)
        )
    }

    /// The training batch of `step`: the same for every run with this seed, so a resumed run sees the same data.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let mut rng = rng_for(self.seed, streams::TRAIN_DATA.wrapping_add(step));
        self.generate(&mut rng, batch)
    }

    /// `count` sequences drawn from `rng`, as one batch: tokens `(B, L + 1 + K)` and class targets `(B, L + 1 + K)`,
    /// [`IGNORE`] but on the answers.
    pub fn generate(&self, rng: &mut Rng, count: usize) -> Batch {
        let (total, answers) = (self.total_len(), self.answer_start());
        let mut tokens = vec![NOISE; count * total]; // (B, L + 1 + K) token ids
        let mut targets = vec![IGNORE; count * total]; // (B, L + 1 + K) class ids
        for (seq, target) in tokens.chunks_exact_mut(total).zip(targets.chunks_exact_mut(total)) {
            let mut positions = sample(rng, self.seq_len, TOKENS).into_vec();
            positions.sort_unstable();
            for (i, &pos) in positions.iter().enumerate() {
                let symbol = rng.random_range(1..=SYMBOLS);
                seq[pos] = symbol;
                target[answers + i] = symbol as i32;
            }
            seq[self.seq_len] = SEPARATOR;
        }
        Batch { batch: count, seq_len: total, inputs: Inputs::Tokens(tokens), targets: Targets::Classes(targets), lengths: None }
    }

    /// The cross-entropy and the accuracy over the answer positions of `logits (B, L + 1 + K, V)` on `batch`
    /// (`counted` = B·K answers, `correct` = those whose argmax is the target), for the evaluation metric.
    pub fn score(&self, logits: &[f32], batch: &Batch) -> Result<CrossEntropyOut> {
        let Targets::Classes(targets) = &batch.targets else {
            return Err(Error::Invalid("selective-copy batches carry class targets".into()));
        };
        check_len("selective-copy logits", &[batch.batch, batch.seq_len, VOCAB], logits.len())?;
        // Every position but the answers is IGNORE, so the plain cross-entropy is the answers' alone.
        cross_entropy(logits, targets, VOCAB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(batch: &Batch) -> (&[u32], &[i32]) {
        match (&batch.inputs, &batch.targets) {
            (Inputs::Tokens(x), Targets::Classes(y)) => (x, y),
            other => panic!("selective-copy batches are tokens with class targets, got {other:?}"),
        }
    }

    #[test]
    fn layout_of_a_sequence() {
        let task = SelectiveCopy::new(40, 100, 3).unwrap();
        let batch = task.train_batch(0, 32);
        assert_eq!((batch.batch, batch.seq_len, task.total_len()), (32, 57, 57));
        let (x, y) = parts(&batch);
        assert_eq!((x.len(), y.len()), (32 * 57, 32 * 57));
        for (seq, target) in x.chunks_exact(57).zip(y.chunks_exact(57)) {
            let content = &seq[..40];
            let data: Vec<u32> = content.iter().copied().filter(|&v| v != NOISE).collect();
            assert_eq!(data.len(), TOKENS, "exactly K data tokens in the content region: {seq:?}");
            assert!(data.iter().all(|&v| (1..=SYMBOLS).contains(&v)));
            assert_eq!(seq[40], SEPARATOR);
            assert!(seq[41..].iter().all(|&v| v == NOISE), "blank queries");
            assert!(target[..41].iter().all(|&v| v == IGNORE), "no target before the answers");
            let answers: Vec<u32> = target[41..].iter().map(|&v| v as u32).collect();
            assert_eq!(answers, data, "the answers are the data tokens in order");
        }
    }

    #[test]
    fn positions_vary_and_the_region_may_be_full() {
        let task = SelectiveCopy::new(64, 100, 5).unwrap();
        let batch = task.train_batch(0, 200);
        let (x, _) = parts(&batch);
        let first_positions: std::collections::BTreeSet<usize> =
            x.chunks_exact(task.total_len()).map(|s| s.iter().position(|&v| v != NOISE).unwrap()).collect();
        assert!(first_positions.len() > 10, "the spacing is random: {first_positions:?}");
        // Every content position is used by some sequence.
        let used = (0..64).filter(|&p| x.chunks_exact(task.total_len()).any(|s| s[p] != NOISE)).count();
        assert_eq!(used, 64);
        // L = K: the whole region is data.
        let full = SelectiveCopy::new(TOKENS, 1, 0).unwrap().train_batch(0, 3);
        assert!(parts(&full).0.chunks_exact(2 * TOKENS + 1).all(|s| s[..TOKENS].iter().all(|&v| v != NOISE)));
        assert!(SelectiveCopy::new(TOKENS - 1, 1, 0).is_err() && SelectiveCopy::new(20, 0, 0).is_err());
    }

    #[test]
    fn deterministic_per_seed_and_step_and_streams_differ() {
        let task = SelectiveCopy::new(30, 100, 1).unwrap();
        assert_eq!(task.train_batch(4, 8), task.train_batch(4, 8));
        assert_ne!(task.train_batch(4, 8), task.train_batch(5, 8));
        assert_ne!(task.train_batch(4, 8), SelectiveCopy::new(30, 100, 2).unwrap().train_batch(4, 8));
        let eval = task.generate(&mut rng_for(1, streams::EVAL_DATA), 8);
        assert_eq!(eval, task.generate(&mut rng_for(1, streams::EVAL_DATA), 8));
        assert!((0..50).all(|step| task.train_batch(step, 8) != eval), "the evaluation set is not a training batch");
    }

    #[test]
    fn symbols_are_uniform() {
        let task = SelectiveCopy::new(20, 100, 9).unwrap();
        let batch = task.train_batch(0, 2000);
        let mut counts = [0usize; VOCAB];
        for &v in parts(&batch).1.iter().filter(|&&v| v != IGNORE) {
            counts[v as usize] += 1;
        }
        let expected = 2000.0 * TOKENS as f64 / 8.0;
        for (symbol, &n) in counts.iter().enumerate().take(9).skip(1) {
            assert!((n as f64 - expected).abs() < 0.05 * expected, "symbol {symbol} drawn {n} times, expected about {expected}");
        }
        assert_eq!(counts[0] + counts[9], 0);
    }

    #[test]
    fn score_counts_the_answers_only() {
        let task = SelectiveCopy::new(20, 100, 2).unwrap();
        let batch = task.train_batch(0, 4);
        let (_, y) = parts(&batch);
        // Logits that are right on every answer and on half of them wrong; the other positions are garbage.
        let mut logits = vec![0.0f32; y.len() * VOCAB];
        for (i, &target) in y.iter().enumerate() {
            let class = if target == IGNORE {
                3
            } else if i % 2 == 0 {
                target as usize
            } else {
                (target as usize % 8) + 1
            };
            logits[i * VOCAB + class] = 5.0;
        }
        let scored = task.score(&logits, &batch).unwrap();
        assert_eq!(scored.counted, 4 * TOKENS);
        assert_eq!(scored.correct, 4 * TOKENS / 2);
        assert!(task.score(&logits[1..], &batch).is_err());
        let uniform = task.score(&vec![0.0; y.len() * VOCAB], &batch).unwrap();
        assert!((uniform.loss - (VOCAB as f32).ln()).abs() < 1e-5);
        assert!((SelectiveCopy::baseline_cross_entropy() - 8f32.ln()).abs() < 1e-6);
        assert!(task.baseline_note().contains("0.125"));
    }
}
