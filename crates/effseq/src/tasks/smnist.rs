//! Sequential MNIST and permuted MNIST (Le, Jaitly & Hinton 2015, "A Simple Way to Initialize Recurrent Networks
//! of Rectified Linear Units", sec. 4.1; the pixel-by-pixel benchmark of Bai, Kolter & Koltun 2018, sec. 4.2) on
//! the 10,000 MNIST digits shipped in `data/`.
//!
//! Each 28x28 image is a sequence of T = 784 steps of one feature, the pixel value divided by 255, in
//! row-major order, or, for P-MNIST, in the order of one fixed random permutation drawn from `permute_seed`
//! (the same permutation for every image, for training and testing, and in every run with that seed). The model
//! classifies the digit from its last step (10 classes); the loss is the cross-entropy and the metric the
//! accuracy on a fixed test split of 2,000 images. The file stores the digits grouped by class, so the split
//! shuffles first, with the constant [`SPLIT_SEED`](crate::data::labelled::SPLIT_SEED): the test set does not
//! change with the training seed. Training batches walk seeded epoch permutations of the other 8,000 images.
//!
//! Trivial baseline: answering the most frequent training class, about 1/10 accuracy.

use std::path::Path;

use crate::data::labelled::{load_mnist, Labelled, PixelClassification, CLASSES};
use crate::data::{as_data_error, data_path, Split, MNIST_IMAGES_FILE, MNIST_LABELS_FILE};
use crate::error::{check_len, Result};
use crate::layers::loss::CrossEntropyOut;
use crate::tasks::{Batch, InputKind, Readout, TaskIo};

/// Pixels per 28x28 image, the sequence length T.
pub const SEQ_LEN: usize = crate::config::SMNIST_SEQ_LEN;
/// Percentage of the images held out for testing (2,000 of the 10,000 shipped).
pub const TEST_PERCENT: usize = 20;

/// The sequential (or permuted) MNIST classification task.
#[derive(Clone, Debug)]
pub struct Smnist {
    /// Split, sampler, permutation and batches.
    inner: PixelClassification,
    /// Seed of the pixel permutation; `None` for the plain row-major order.
    permute_seed: Option<u64>,
}

impl Smnist {
    /// The task on the shipped MNIST files (found through [`crate::data::data_dir`]); `permute_seed` selects
    /// P-MNIST with the permutation drawn from that seed, `seed` is the training stream.
    pub fn new(permute_seed: Option<u64>, seed: u64) -> Result<Self> {
        Self::from_files(&data_path(MNIST_IMAGES_FILE), &data_path(MNIST_LABELS_FILE), permute_seed, seed)
    }

    /// The task on IDX files (images magic 2051, labels magic 2049, optionally gzipped).
    pub fn from_files(images: &Path, labels: &Path, permute_seed: Option<u64>, seed: u64) -> Result<Self> {
        Self::from_labelled(load_mnist(images, labels)?, permute_seed, seed).map_err(|e| as_data_error(e, images))
    }

    /// The task on images already loaded; [`TEST_PERCENT`] of them (at least one) form the test split.
    pub fn from_labelled(data: Labelled, permute_seed: Option<u64>, seed: u64) -> Result<Self> {
        let test = (data.len() * TEST_PERCENT / 100).max(1);
        let permutation = permute_seed.map(|p| PixelClassification::permutation_from_seed(data.steps, p));
        Ok(Smnist { inner: PixelClassification::new(data, test, permutation, seed)?, permute_seed })
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

    /// The permutation seed (P-MNIST), `None` for plain sequential MNIST. Store it with the task config: the
    /// permutation is recomputed from it.
    pub fn permute_seed(&self) -> Option<u64> {
        self.permute_seed
    }

    /// The pixel order of P-MNIST (step `t` reads pixel `permutation[t]`), `None` for the row-major order.
    pub fn permutation(&self) -> Option<&[usize]> {
        self.inner.permutation()
    }

    /// T, the steps per sequence (784 for the shipped files).
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
    /// Inputs `(B, 784, 1)`, class targets `(B)`.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        self.inner.train_batch(step, batch)
    }

    /// Test images `start..start + count` (clipped to [`Smnist::eval_size`]) as one batch.
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
        check_len("smnist logits", &[batch.batch, CLASSES], logits.len())?;
        self.inner.score(logits, batch)
    }

    /// One line on the score of the trivial strategy, to judge a result against.
    pub fn baseline_note(&self) -> String {
        let order = match self.permute_seed {
            Some(p) => format!("pixels permuted with seed {p}"),
            None => "pixels in row-major order".to_string(),
        };
        format!(
            "baseline: always answering the most frequent training class gives test accuracy {:.3} (chance 0.100); {} training and {} test images, {order}",
            self.inner.majority_baseline(),
            self.train_size(),
            self.eval_size()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{Inputs, Targets};

    #[test]
    fn shipped_files_split_and_batches() {
        let task = Smnist::new(None, 0).unwrap();
        assert_eq!((task.train_size(), task.eval_size(), task.seq_len()), (8000, 2000, SEQ_LEN));
        assert_eq!(task.classification().data().class_counts().iter().sum::<usize>(), 10_000);
        // The file is grouped by class; the shuffled test split holds every class in about its share.
        let data = task.classification().data();
        let mut test_counts = [0usize; CLASSES];
        for &i in task.classification().split_indices(Split::Test) {
            test_counts[usize::from(data.labels[i])] += 1;
        }
        assert!(test_counts.iter().all(|&n| (120..=290).contains(&n)), "test classes {test_counts:?}");
        let batch = task.train_batch(3, 8);
        let (Inputs::Dense(x), Targets::Classes(y)) = (&batch.inputs, &batch.targets) else { panic!("dense inputs, class targets") };
        assert_eq!((x.len(), y.len()), (8 * 784, 8));
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(task.permutation().is_none() && task.baseline_note().contains("row-major"));
    }

    #[test]
    fn permuted_mnist_applies_one_stored_permutation() {
        let plain = Smnist::new(None, 0).unwrap();
        let permuted = Smnist::new(Some(42), 0).unwrap();
        assert_eq!(permuted.permute_seed(), Some(42));
        let perm = permuted.permutation().unwrap().to_vec();
        assert_eq!(perm, Smnist::new(Some(42), 7).unwrap().permutation().unwrap(), "the permutation depends on permute_seed only");
        assert_ne!(perm, Smnist::new(Some(43), 0).unwrap().permutation().unwrap());
        // Same images (the training stream does not depend on the permutation), pixels reordered.
        let (a, b) = (plain.eval_batch(10, 3), permuted.eval_batch(10, 3));
        assert_eq!(a.targets, b.targets);
        let (Inputs::Dense(xa), Inputs::Dense(xb)) = (&a.inputs, &b.inputs) else { unreachable!() };
        for (seq_a, seq_b) in xa.chunks_exact(784).zip(xb.chunks_exact(784)) {
            assert!((0..784).all(|t| seq_b[t] == seq_a[perm[t]]));
        }
        assert_ne!(xa, xb);
        assert_eq!(plain.train_batch(2, 4).targets, permuted.train_batch(2, 4).targets);
    }
}
