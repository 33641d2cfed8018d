//! Sequential UCI digits: the 1,797 8x8 handwritten digits of the UCI "Optical Recognition of Handwritten
//! Digits" set (Alpaydin & Kaynak 1998; the copy scikit-learn ships as `load_digits`), read one pixel per step.
//!
//! Each image is a sequence of T = 64 steps of one feature, the pixel value (0..=16) scaled to `[0, 1]`, in
//! row-major order. The model classifies the digit from its last step (10 classes); the loss is the
//! cross-entropy and the metric the accuracy on a fixed test split of 20% (359 images), drawn with the constant
//! [`SPLIT_SEED`](crate::data::labelled::SPLIT_SEED) so it does not change with the training seed. Training
//! batches walk seeded epoch permutations of the other 1,438 images, keyed by `(seed, step)`.
//!
//! Trivial baseline: answering the most frequent training class, about 1/10 accuracy (the classes are balanced).

use std::path::Path;

use crate::data::labelled::{load_digits, Labelled, PixelClassification, CLASSES};
use crate::data::{as_data_error, data_path, Split, DIGITS_FILE};
use crate::error::{check_len, Result};
use crate::layers::loss::CrossEntropyOut;
use crate::tasks::{Batch, InputKind, Readout, TaskIo};

/// Pixels per image, the sequence length T.
pub const SEQ_LEN: usize = crate::config::DIGITS_SEQ_LEN;
/// Percentage of the images held out for testing.
pub const TEST_PERCENT: usize = 20;

/// The sequential-digits classification task.
#[derive(Clone, Debug)]
pub struct Digits {
    /// Split, sampler and batches.
    inner: PixelClassification,
}

impl Digits {
    /// The task on the shipped `digits.csv.gz` (found through [`crate::data::data_dir`]), with training stream
    /// `seed`.
    pub fn new(seed: u64) -> Result<Self> {
        Self::from_file(&data_path(DIGITS_FILE), seed)
    }

    /// The task on a digits CSV at `path` (64 pixels in `0..=16` and a label a line, optionally gzipped).
    pub fn from_file(path: &Path, seed: u64) -> Result<Self> {
        Self::from_labelled(load_digits(path)?, seed).map_err(|e| as_data_error(e, path))
    }

    /// The task on images already loaded; [`TEST_PERCENT`] of them (at least one) form the test split.
    pub fn from_labelled(data: Labelled, seed: u64) -> Result<Self> {
        let test = (data.len() * TEST_PERCENT / 100).max(1);
        Ok(Digits { inner: PixelClassification::new(data, test, None, seed)? })
    }

    /// What the model reads and emits: 1 dense feature per step, 10 class logits from the last step.
    pub fn io() -> TaskIo {
        TaskIo { input: InputKind::Dense { dim: 1 }, output_dim: CLASSES, readout: Readout::LastStep }
    }

    /// Name of the metric.
    pub fn metric_name() -> &'static str {
        "accuracy"
    }

    /// Whether a larger metric is better.
    pub fn higher_is_better() -> bool {
        true
    }

    /// T, the steps per sequence (64 for the shipped file).
    pub fn seq_len(&self) -> usize {
        self.inner.seq_len()
    }

    /// Number of test images, the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.inner.eval_size()
    }

    /// Number of training images.
    pub fn train_size(&self) -> usize {
        self.inner.split_indices(Split::Train).len()
    }

    /// The seed of the training stream.
    pub fn seed(&self) -> u64 {
        self.inner.seed()
    }

    /// Split, images and batch building.
    pub fn classification(&self) -> &PixelClassification {
        &self.inner
    }

    /// The training batch of `step`: the same for every run with this seed, so a resumed run sees the same data.
    /// Inputs `(B, 64, 1)`, class targets `(B)`.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        self.inner.train_batch(step, batch)
    }

    /// Test images `start..start + count` (clipped to [`Digits::eval_size`]) as one batch.
    pub fn eval_batch(&self, start: usize, count: usize) -> Batch {
        self.inner.eval_batch(start, count)
    }

    /// Cross-entropy of `logits (B, C)` on `batch` and its gradient.
    pub fn loss(&self, logits: &[f32], batch: &Batch) -> Result<(f32, Vec<f32>)> {
        let out = self.score(logits, batch)?;
        Ok((out.loss, out.dlogits))
    }

    /// Cross-entropy of `logits (B, C)` on `batch` with the number of counted and correct predictions, from which
    /// the accuracy is `correct / counted`.
    pub fn score(&self, logits: &[f32], batch: &Batch) -> Result<CrossEntropyOut> {
        check_len("digits logits", &[batch.batch, CLASSES], logits.len())?;
        self.inner.score(logits, batch)
    }

    /// One line on the score of the trivial strategy, to judge a result against.
    pub fn baseline_note(&self) -> String {
        format!(
            "baseline: always answering the most frequent training class gives test accuracy {:.3} (chance 0.100); {} training and {} test images",
            self.inner.majority_baseline(),
            self.train_size(),
            self.eval_size()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::tasks::{Inputs, Targets};

    #[test]
    fn shipped_file_split_and_batches() {
        let task = Digits::new(0).unwrap();
        assert_eq!((task.train_size(), task.eval_size(), task.seq_len()), (1438, 359, SEQ_LEN));
        let counts = task.classification().data().class_counts();
        assert_eq!(counts.iter().sum::<usize>(), 1797);
        assert!(counts.iter().all(|&n| (170..=190).contains(&n)), "the classes are balanced: {counts:?}");
        let batch = task.train_batch(0, 16);
        assert_eq!((batch.batch, batch.seq_len), (16, 64));
        let (Inputs::Dense(x), Targets::Classes(y)) = (&batch.inputs, &batch.targets) else { panic!("dense inputs, class targets") };
        assert_eq!(x.len(), 16 * 64);
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)) && x.contains(&1.0));
        assert!(y.iter().all(|c| (0..10).contains(c)));
        assert_eq!(task.train_batch(5, 16), Digits::new(0).unwrap().train_batch(5, 16));
        assert_ne!(task.train_batch(5, 16), Digits::new(1).unwrap().train_batch(5, 16));
        let baseline = task.classification().majority_baseline();
        assert!((0.05..0.15).contains(&baseline), "majority baseline {baseline}");
        assert!(task.baseline_note().contains("1438 training"));
    }

    #[test]
    fn loss_checks_the_logit_shape() {
        let task = Digits::new(0).unwrap();
        let batch = task.eval_batch(0, 4);
        assert!(matches!(task.loss(&[0.0; 39], &batch), Err(Error::Shape { .. })));
        let (loss, grad) = task.loss(&[0.0; 40], &batch).unwrap();
        assert!((loss - 10f32.ln()).abs() < 1e-5 && grad.len() == 40);
        assert_eq!(Digits::io(), TaskIo { input: InputKind::Dense { dim: 1 }, output_dim: 10, readout: Readout::LastStep });
    }
}
