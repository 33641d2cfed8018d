//! Character-level language modelling on *Moby-Dick* (public domain; `data/moby-dick.txt.gz`, see
//! `data/SOURCES.md`).
//!
//! The vocabulary is the text's distinct characters in code-point order (the text's own alphabet, so the file
//! alone determines it and a checkpoint needs nothing else). The characters are split contiguously: the first 90%
//! train, the next 5% validate, the last 5% test. A training sequence is a window of `T + 1` characters at a
//! uniformly random offset of the training part (seeded by the step); the model reads the first `T` and predicts
//! the next character at every step. The test part is cut into consecutive non-overlapping windows of `T + 1`
//! characters (each window starts without context, the usual convention), and the metric is the mean
//! cross-entropy over every predicted test character in bits: **bits per character** (bpc).
//!
//! Reference points: a uniform guess over the alphabet costs `log2 V` bpc; the unigram (character frequency)
//! model is about 4.4 bpc on English text, and good character models reach 1.2-1.5 bpc.

use std::sync::Arc;

use rand::Rng as _;

use crate::data::{data_error, data_path, read_text};
use crate::error::{check_len, Error, Result};
use crate::layers::loss;
use crate::rng::{rng_for, streams};
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo};

/// The text file, inside the data folder.
pub const TEXT_FILE: &str = "moby-dick.txt.gz";

/// Fractions of the characters in the training and validation parts (the rest is the test part).
const TRAIN_FRACTION: f64 = 0.90;
const VALID_FRACTION: f64 = 0.05;

/// The text as token ids, shared by clones of the task.
#[derive(Debug)]
struct Corpus {
    /// The alphabet in code-point order; id = index.
    alphabet: Vec<char>,
    /// Token ids of the three contiguous parts.
    train: Vec<u32>,
    valid: Vec<u32>,
    test: Vec<u32>,
}

/// The charlm task: windows of `T` characters of *Moby-Dick* with their next characters.
#[derive(Clone, Debug)]
pub struct CharLm {
    corpus: Arc<Corpus>,
    /// T, characters read per sequence.
    seq_len: usize,
    /// Seed of the training windows.
    seed: u64,
}

impl CharLm {
    /// Loads the text from the data folder; windows of `seq_len` characters.
    pub fn new(seq_len: usize, seed: u64) -> Result<CharLm> {
        let path = data_path(TEXT_FILE);
        let text = read_text(&path)?;
        Self::from_text(&text, seq_len, seed).map_err(|e| match e {
            Error::Config { msg, .. } if msg.contains("characters") => data_error(&path, None, msg),
            other => other,
        })
    }

    /// The task over `text` (tests use small texts).
    pub fn from_text(text: &str, seq_len: usize, seed: u64) -> Result<CharLm> {
        if seq_len == 0 {
            return Err(Error::config("task.seq_len must be at least 1 for charlm"));
        }
        let mut alphabet: Vec<char> = text.chars().collect();
        alphabet.sort_unstable();
        alphabet.dedup();
        let ids: Vec<u32> = text.chars().map(|c| alphabet.binary_search(&c).expect("the alphabet holds every character") as u32).collect();
        let n = ids.len();
        let train_end = (n as f64 * TRAIN_FRACTION) as usize;
        let valid_end = (n as f64 * (TRAIN_FRACTION + VALID_FRACTION)) as usize;
        let (train, valid, test) = (ids[..train_end].to_vec(), ids[train_end..valid_end].to_vec(), ids[valid_end..].to_vec());
        let shortest = train.len().min(test.len());
        if shortest < seq_len + 1 {
            return Err(Error::config(format!(
                "the text has {n} characters: its test part ({} characters) or training part ({}) is shorter than one window of task.seq_len + 1 = {} characters",
                test.len(),
                train.len(),
                seq_len + 1
            )));
        }
        Ok(CharLm { corpus: Arc::new(Corpus { alphabet, train, valid, test }), seq_len, seed })
    }

    /// What the model reads and emits: one character id per step, next-character logits at every step.
    pub fn io(&self) -> TaskIo {
        Self::io_for(self.vocab())
    }

    /// [`CharLm::io`] for an alphabet of `vocab` characters.
    pub fn io_for(vocab: usize) -> TaskIo {
        TaskIo { input: InputKind::Tokens { vocab }, output_dim: vocab, readout: Readout::EveryStep }
    }

    /// The vocabulary size V.
    pub fn vocab(&self) -> usize {
        self.corpus.alphabet.len()
    }

    /// T.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The seed of the training windows.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Characters in the (training, validation, test) parts.
    pub fn split_sizes(&self) -> (usize, usize, usize) {
        (self.corpus.train.len(), self.corpus.valid.len(), self.corpus.test.len())
    }

    /// Test windows of `T + 1` characters: the evaluation set.
    pub fn eval_size(&self) -> usize {
        (self.corpus.test.len() - 1) / self.seq_len
    }

    /// Token ids of `text`; a character outside the alphabet is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.corpus
                    .alphabet
                    .binary_search(&c)
                    .map(|i| i as u32)
                    .map_err(|_| Error::Invalid(format!("the character {c:?} is not in the charlm alphabet")))
            })
            .collect()
    }

    /// The text of token ids (ids outside the alphabet become U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.corpus.alphabet.get(i as usize).copied().unwrap_or('\u{FFFD}')).collect()
    }

    /// The batch of windows starting at `starts` in `part`.
    fn windows(&self, part: &[u32], starts: impl Iterator<Item = usize>) -> Batch {
        let t = self.seq_len;
        let mut inputs = Vec::new(); // (B, T)
        let mut targets = Vec::new(); // (B, T)
        let mut b = 0;
        for s in starts {
            inputs.extend_from_slice(&part[s..s + t]);
            targets.extend(part[s + 1..s + t + 1].iter().map(|&i| i as i32));
            b += 1;
        }
        Batch { batch: b, seq_len: t, inputs: Inputs::Tokens(inputs), targets: Targets::Classes(targets), lengths: None }
    }

    /// The training batch of `step`: `batch` windows at offsets drawn from `rng_for(seed, TRAIN_DATA + step)`.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let mut rng = rng_for(self.seed, streams::TRAIN_DATA.wrapping_add(step));
        let last_start = self.corpus.train.len() - self.seq_len - 1;
        let starts: Vec<usize> = (0..batch).map(|_| rng.random_range(0..=last_start)).collect();
        self.windows(&self.corpus.train, starts.into_iter())
    }

    /// Test windows `start..start + count` (clipped to [`CharLm::eval_size`]) as one batch.
    pub fn eval_batch(&self, start: usize, count: usize) -> Batch {
        let end = (start + count).min(self.eval_size());
        self.windows(&self.corpus.test, (start..end).map(|w| w * self.seq_len))
    }

    /// Cross-entropy (nats, mean over the predicted characters) of `logits (B, T, V)` on `batch`, with the count.
    pub fn score(&self, logits: &[f32], batch: &Batch) -> Result<loss::CrossEntropyOut> {
        let Targets::Classes(targets) = &batch.targets else {
            return Err(Error::Invalid("charlm batches carry class targets".into()));
        };
        check_len("charlm logits (B, T, V)", &[batch.batch, batch.seq_len, self.vocab()], logits.len())?;
        loss::cross_entropy(logits, targets, self.vocab())
    }

    /// One line on the trivial strategies to judge a result against.
    pub fn baseline_note(&self) -> String {
        let test = &self.corpus.test;
        // Unigram model fitted on the training part (add-one smoothing), scored on the test part.
        let mut counts = vec![1.0f64; self.vocab()];
        for &i in &self.corpus.train {
            counts[i as usize] += 1.0;
        }
        let total: f64 = counts.iter().sum();
        let unigram_bits = test.iter().map(|&i| -(counts[i as usize] / total).log2()).sum::<f64>() / test.len() as f64;
        format!(
            "baseline: uniform over the {} characters {:.3} bpc, unigram frequencies {unigram_bits:.3} bpc; {} test windows of {} characters",
            self.vocab(),
            (self.vocab() as f64).log2(),
            self.eval_size(),
            self.seq_len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_text() -> String {
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse. ".repeat(40)
    }

    #[test]
    fn windows_predict_the_next_character() {
        let task = CharLm::from_text(&sample_text(), 16, 3).unwrap();
        let batch = task.train_batch(5, 4);
        let (Inputs::Tokens(x), Targets::Classes(y)) = (&batch.inputs, &batch.targets) else { unreachable!() };
        assert_eq!((x.len(), y.len()), (64, 64));
        for b in 0..4 {
            for t in 0..15 {
                assert_eq!(x[b * 16 + t + 1] as i32, y[b * 16 + t], "target t is input t + 1");
            }
        }
        assert_eq!(batch, task.train_batch(5, 4), "a function of the step");
        assert_ne!(batch, task.train_batch(6, 4));
        assert_eq!(task.decode(&task.encode("Call me").unwrap()), "Call me");
        assert!(task.encode("Zürich").is_err());
    }

    #[test]
    fn test_windows_cover_the_test_part_without_overlap() {
        let task = CharLm::from_text(&sample_text(), 10, 0).unwrap();
        let (_, _, test) = task.split_sizes();
        assert_eq!(task.eval_size(), (test - 1) / 10);
        let all = task.eval_batch(0, usize::MAX);
        assert_eq!(all.batch, task.eval_size());
        let Inputs::Tokens(x) = &all.inputs else { unreachable!() };
        assert_eq!(&x[..], &task.corpus.test[..all.batch * 10]);
        // Uniform logits cost exactly log V nats per character.
        let logits = vec![0.0f32; all.batch * 10 * task.vocab()];
        let ce = task.score(&logits, &all).unwrap();
        assert!((ce.loss - (task.vocab() as f32).ln()).abs() < 1e-5);
        assert!(CharLm::from_text("too short", 50, 0).is_err());
    }

    #[test]
    fn moby_dick_loads_with_its_alphabet() {
        let task = CharLm::new(256, 0).unwrap();
        let (train, valid, test) = task.split_sizes();
        assert!(train > 1_000_000 && valid > 50_000 && test > 50_000, "{train} {valid} {test}");
        assert!((60..200).contains(&task.vocab()), "alphabet of {} characters", task.vocab());
        assert!(task.baseline_note().contains("bpc"));
    }
}
