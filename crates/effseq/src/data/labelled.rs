//! Labelled pixel sequences (the UCI digits and MNIST) and the sequence-classification task built on them: a
//! seeded train/test split that is the same for every training seed, epoch-wise training batches keyed by
//! `(seed, step)`, an optional fixed pixel permutation, the cross-entropy loss and the accuracy.

use std::path::Path;
use std::sync::Arc;

use rand::seq::SliceRandom;

use crate::data::csv::read_csv_columns;
use crate::data::idx::{read_idx, IMAGES_MAGIC, LABELS_MAGIC};
use crate::data::{data_error, shuffled_split, EpochSampler, Split};
use crate::error::{Error, Result};
use crate::layers::loss::{self, CrossEntropyOut};
use crate::rng::{rng_for, streams};
use crate::tasks::{Batch, Inputs, Targets};

/// Number of classes C of both digit data sets (0..=9).
pub const CLASSES: usize = 10;

/// Largest pixel value of the UCI digits (4x4 blocks of a 32x32 bitmap, counting set bits).
pub const DIGITS_MAX_PIXEL: u8 = 16;

/// Seed of the train/test split of every labelled data set: a constant, so the test set does not change with the
/// training seed and runs with different seeds are comparable.
pub const SPLIT_SEED: u64 = 0;
/// Stream tag of the train/test shuffle (distinct from the tags of [`crate::rng::streams`]).
pub const SPLIT_STREAM: u64 = 6 << 40;
/// Stream tag of the pixel permutation drawn from a permutation seed.
pub const PERMUTATION_STREAM: u64 = 7 << 40;

/// Images read as sequences of pixels, with a class label each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    /// `(N, T)` raw pixel values in `0..=max_value`, row-major within an image.
    pub pixels: Vec<u8>,
    /// `(N)` class labels in `0..CLASSES`.
    pub labels: Vec<u8>,
    /// T, the pixels per image.
    pub steps: usize,
    /// The value that scales to 1.0 (16 for the UCI digits, 255 for MNIST).
    pub max_value: u8,
}

impl Labelled {
    /// Checks the shapes and ranges: `pixels` holds `labels.len() * steps` values in `0..=max_value`, labels are
    /// below [`CLASSES`] and there is at least one image. `path` names the source in errors.
    pub fn new(pixels: Vec<u8>, labels: Vec<u8>, steps: usize, max_value: u8, path: &Path) -> Result<Self> {
        if labels.is_empty() || steps == 0 || max_value == 0 {
            return Err(data_error(path, None, format!("no images: {} labels of {steps} pixels with maximum {max_value}", labels.len())));
        }
        if pixels.len() != labels.len() * steps {
            return Err(data_error(path, None, format!("{} pixels for {} images of {steps} pixels", pixels.len(), labels.len())));
        }
        if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= CLASSES) {
            return Err(data_error(path, None, format!("label {label} of image {i} is not a class in 0..{CLASSES}")));
        }
        if let Some(p) = pixels.iter().position(|&v| v > max_value) {
            return Err(data_error(path, None, format!("pixel {} of image {} is {}, above the maximum {max_value}", p % steps, p / steps, pixels[p])));
        }
        Ok(Labelled { pixels, labels, steps, max_value })
    }

    /// Number of images N.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Always false: [`Labelled::new`] refuses an empty set.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images per class.
    pub fn class_counts(&self) -> [usize; CLASSES] {
        let mut counts = [0; CLASSES];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }
}

/// Reads the UCI digits CSV (gunzipped when it ends in `.gz`): one image a line, 64 integer pixels in `0..=16`
/// then the label in `0..=9`, no header. A line with another number of fields, a field that is not an integer,
/// or a value out of range is an [`Error::Data`] with its line number.
pub fn load_digits(path: &Path) -> Result<Labelled> {
    const PIXELS: usize = 64;
    // Every line is held to 65 columns, so that a wrong first line is the one named.
    let csv = read_csv_columns(path, false, PIXELS + 1)?;
    let mut pixels = Vec::with_capacity(csv.rows.len() * PIXELS); // (N, 64)
    let mut labels = Vec::with_capacity(csv.rows.len()); // (N)
    for row in &csv.rows {
        for column in 0..PIXELS {
            let v: u8 = csv.parse(row, column, "an integer pixel in 0..=16")?;
            if v > DIGITS_MAX_PIXEL {
                return Err(data_error(path, Some(row.line), format!("column {}: pixel {v} is above {DIGITS_MAX_PIXEL}", column + 1)));
            }
            pixels.push(v);
        }
        let label: u8 = csv.parse(row, PIXELS, "an integer label in 0..=9")?;
        if usize::from(label) >= CLASSES {
            return Err(data_error(path, Some(row.line), format!("column {}: label {label} is not in 0..=9", PIXELS + 1)));
        }
        labels.push(label);
    }
    Labelled::new(pixels, labels, PIXELS, DIGITS_MAX_PIXEL, path)
}

/// Reads MNIST from an IDX image file (magic 2051, `(N, rows, cols)`) and an IDX label file (magic 2049, `(N)`),
/// each gunzipped when it ends in `.gz`. The counts must agree and every label must be in `0..=9`.
pub fn load_mnist(images_path: &Path, labels_path: &Path) -> Result<Labelled> {
    let images = read_idx(images_path, IMAGES_MAGIC)?;
    let labels = read_idx(labels_path, LABELS_MAGIC)?;
    let [n, rows, cols] = images.dims[..] else {
        return Err(data_error(images_path, None, format!("MNIST images need 3 dimensions (N, rows, cols), found {:?}", images.dims)));
    };
    if labels.dims != [n] {
        return Err(data_error(
            labels_path,
            None,
            format!("{} labels for the {n} images of {}", labels.dims.first().copied().unwrap_or(0), images_path.display()),
        ));
    }
    Labelled::new(images.data, labels.data, rows * cols, u8::MAX, labels_path)
}

/// A sequence-classification task over [`Labelled`] images: each image is read one pixel per step (scaled to
/// `[0, 1]`, optionally in a fixed permuted order) and classified from the last step.
///
/// The images are shuffled with [`SPLIT_SEED`] and split into a training and a test part; training batches come
/// from an [`EpochSampler`] keyed by the training seed, so a resumed run sees the same batches.
#[derive(Clone, Debug)]
pub struct PixelClassification {
    /// The images, shared between clones.
    data: Arc<Labelled>,
    /// Indices of the training images, in file order.
    train: Vec<usize>,
    /// Indices of the test images, in file order.
    test: Vec<usize>,
    /// Draws the training batches.
    sampler: EpochSampler,
    /// `(T)`: step `t` reads pixel `permutation[t]`; `None` reads the pixels in order.
    permutation: Option<Arc<Vec<usize>>>,
    /// Seed of the training stream.
    seed: u64,
}

impl PixelClassification {
    /// The task over `data` with `test_count` test images (at least 1, fewer than N), the pixel order
    /// `permutation` (a permutation of `0..T`, or `None`) and the training seed `seed`.
    pub fn new(data: Labelled, test_count: usize, permutation: Option<Vec<usize>>, seed: u64) -> Result<Self> {
        if let Some(perm) = &permutation {
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..data.steps).collect::<Vec<_>>() {
                return Err(Error::Invalid(format!("the pixel order must be a permutation of 0..{}", data.steps)));
            }
        }
        let (train, test) = shuffled_split(data.len(), test_count, SPLIT_SEED, SPLIT_STREAM)?;
        let sampler = EpochSampler::new(train.len(), seed, streams::TRAIN_DATA)?;
        Ok(PixelClassification { data: Arc::new(data), train, test, sampler, permutation: permutation.map(Arc::new), seed })
    }

    /// The permutation of `0..steps` drawn from `permute_seed` (Fisher-Yates with `rng_for(permute_seed,
    /// PERMUTATION_STREAM)`): the same on every platform and in every run with that seed.
    pub fn permutation_from_seed(steps: usize, permute_seed: u64) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..steps).collect();
        perm.shuffle(&mut rng_for(permute_seed, PERMUTATION_STREAM));
        perm
    }

    /// The images.
    pub fn data(&self) -> &Labelled {
        &self.data
    }

    /// T, the steps per sequence (pixels per image).
    pub fn seq_len(&self) -> usize {
        self.data.steps
    }

    /// The pixel order, when permuted: step `t` reads pixel `permutation[t]`.
    pub fn permutation(&self) -> Option<&[usize]> {
        self.permutation.as_deref().map(Vec::as_slice)
    }

    /// Seed of the training stream.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The image indices (into [`PixelClassification::data`]) of a split, in file order; the classification tasks
    /// have no validation split (an empty slice).
    pub fn split_indices(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &[],
            Split::Test => &self.test,
        }
    }

    /// Number of test images, the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.test.len()
    }

    /// The training batch of `step`: `batch` images from the epoch permutations of the training part.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let images: Vec<usize> = self.sampler.indices(step, batch).into_iter().map(|i| self.train[i]).collect();
        self.batch_of(&images)
    }

    /// Test images `start..start + count` (clipped to the test set) as one batch.
    pub fn eval_batch(&self, start: usize, count: usize) -> Batch {
        let start = start.min(self.test.len());
        let end = start.saturating_add(count).min(self.test.len());
        self.batch_of(&self.test[start..end])
    }

    /// The images `images` (indices into the data) as a batch: inputs `(B, T, 1)` in `[0, 1]`, class targets `(B)`.
    pub fn batch_of(&self, images: &[usize]) -> Batch {
        let steps = self.data.steps;
        let scale = 1.0 / f32::from(self.data.max_value);
        let mut inputs = Vec::with_capacity(images.len() * steps); // (B, T, 1)
        let mut targets = Vec::with_capacity(images.len()); // (B)
        for &image in images {
            let pixels = &self.data.pixels[image * steps..(image + 1) * steps];
            match &self.permutation {
                Some(perm) => inputs.extend(perm.iter().map(|&p| f32::from(pixels[p]) * scale)),
                None => inputs.extend(pixels.iter().map(|&v| f32::from(v) * scale)),
            }
            targets.push(i32::from(self.data.labels[image]));
        }
        Batch { batch: images.len(), seq_len: steps, inputs: Inputs::Dense(inputs), targets: Targets::Classes(targets), lengths: None }
    }

    /// Cross-entropy of `logits (B, C)` on `batch`, with its gradient, and the number of correct argmax predictions.
    pub fn score(&self, logits: &[f32], batch: &Batch) -> Result<CrossEntropyOut> {
        let Targets::Classes(targets) = &batch.targets else {
            return Err(Error::Invalid("classification batches carry class targets".into()));
        };
        loss::cross_entropy(logits, targets, CLASSES)
    }

    /// The accuracy on the test set of always answering the most frequent training class.
    pub fn majority_baseline(&self) -> f64 {
        let mut counts = [0usize; CLASSES];
        for &i in &self.train {
            counts[usize::from(self.data.labels[i])] += 1;
        }
        // The first most frequent class, as an argmax with ties to the lowest index.
        let majority = (0..CLASSES).fold(0, |best, c| if counts[c] > counts[best] { c } else { best });
        let hits = self.test.iter().filter(|&&i| usize::from(self.data.labels[i]) == majority).count();
        hits as f64 / self.test.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// 50 images of 4 pixels: image i has label i % 10 and pixels (i % 17, 0, 16, i % 5).
    fn tiny() -> Labelled {
        let labels: Vec<u8> = (0..50).map(|i| (i % 10) as u8).collect();
        let pixels: Vec<u8> = (0..50).flat_map(|i| [(i % 17) as u8, 0, 16, (i % 5) as u8]).collect();
        Labelled::new(pixels, labels, 4, 16, Path::new("tiny")).unwrap()
    }

    #[test]
    fn labelled_checks_ranges() {
        let p = Path::new("x");
        assert!(Labelled::new(vec![0; 4], vec![0, 1], 2, 16, p).is_ok());
        assert!(Labelled::new(vec![0; 3], vec![0, 1], 2, 16, p).is_err());
        assert!(Labelled::new(vec![0; 4], vec![0, 10], 2, 16, p).unwrap_err().to_string().contains("label 10"));
        assert!(Labelled::new(vec![0, 17, 0, 0], vec![0, 1], 2, 16, p).unwrap_err().to_string().contains("above the maximum"));
        assert!(Labelled::new(vec![], vec![], 2, 16, p).is_err());
    }

    #[test]
    fn batches_scale_pixels_and_carry_labels() {
        let task = PixelClassification::new(tiny(), 10, None, 0).unwrap();
        assert_eq!((task.split_indices(Split::Train).len(), task.eval_size(), task.seq_len()), (40, 10, 4));
        let batch = task.batch_of(&[3, 16]);
        assert_eq!((batch.batch, batch.seq_len), (2, 4));
        assert_eq!(batch.inputs, Inputs::Dense(vec![3.0 / 16.0, 0.0, 1.0, 3.0 / 16.0, 1.0, 0.0, 1.0, 1.0 / 16.0]));
        assert_eq!(batch.targets, Targets::Classes(vec![3, 6]));
        let eval: Vec<Batch> = (0..10).step_by(4).map(|s| task.eval_batch(s, 4)).collect();
        assert_eq!(eval.iter().map(|b| b.batch).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(task.eval_batch(10, 4).batch, 0);
    }

    #[test]
    fn permutation_reorders_the_steps() {
        let perm = vec![2, 0, 3, 1];
        let task = PixelClassification::new(tiny(), 10, Some(perm), 0).unwrap();
        let batch = task.batch_of(&[3]);
        assert_eq!(batch.inputs, Inputs::Dense(vec![1.0, 3.0 / 16.0, 3.0 / 16.0, 0.0]));
        assert!(PixelClassification::new(tiny(), 10, Some(vec![0, 0, 1, 2]), 0).is_err());
        let drawn = PixelClassification::permutation_from_seed(784, 5);
        assert_eq!(drawn, PixelClassification::permutation_from_seed(784, 5));
        assert_ne!(drawn, PixelClassification::permutation_from_seed(784, 6));
        assert_ne!(drawn, (0..784).collect::<Vec<_>>());
    }

    #[test]
    fn training_batches_are_deterministic_and_from_the_training_part() {
        let task = PixelClassification::new(tiny(), 10, None, 3).unwrap();
        assert_eq!(task.train_batch(7, 8), task.train_batch(7, 8));
        assert_ne!(task.train_batch(7, 8), task.train_batch(8, 8));
        assert_ne!(task.train_batch(7, 8), PixelClassification::new(tiny(), 10, None, 4).unwrap().train_batch(7, 8));
        // The split does not depend on the training seed.
        assert_eq!(task.split_indices(Split::Test), PixelClassification::new(tiny(), 10, None, 4).unwrap().split_indices(Split::Test));
        // Five batches of 8 are one epoch over the 40 training images: each exactly once, none from the test part.
        let train: Vec<usize> = task.split_indices(Split::Train).to_vec();
        let mut firsts: Vec<u32> = Vec::new();
        for step in 0..5 {
            let Inputs::Dense(x) = task.train_batch(step, 8).inputs else { unreachable!() };
            firsts.extend(x.chunks_exact(4).map(|px| (px[0] * 16.0).round() as u32 * 100 + (px[3] * 16.0).round() as u32));
        }
        let mut expected: Vec<u32> = train.iter().map(|&i| (i % 17) as u32 * 100 + (i % 5) as u32).collect();
        firsts.sort_unstable();
        expected.sort_unstable();
        assert_eq!(firsts, expected);
    }

    #[test]
    fn score_and_majority_baseline() {
        let task = PixelClassification::new(tiny(), 10, None, 0).unwrap();
        let batch = task.eval_batch(0, 10);
        let Targets::Classes(y) = &batch.targets else { unreachable!() };
        let mut logits = vec![0.0f32; 10 * CLASSES];
        for (row, &c) in logits.chunks_exact_mut(CLASSES).zip(y) {
            row[c as usize] = 10.0;
        }
        let out = task.score(&logits, &batch).unwrap();
        assert_eq!((out.correct, out.counted), (10, 10));
        let baseline = task.majority_baseline();
        assert!((0.0..=1.0).contains(&baseline));
    }

    #[test]
    fn digits_csv_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let good_row = |label: u8| format!("{},{label}\n", vec!["3"; 64].join(","));
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
            path
        };
        let ok = write("ok.csv", &format!("{}{}", good_row(1), good_row(9)));
        let data = load_digits(&ok).unwrap();
        assert_eq!((data.len(), data.steps, data.labels.clone()), (2, 64, vec![1, 9]));

        let bad_number = write("bad_number.csv", &format!("{}{}{}", good_row(1), good_row(2), good_row(3).replacen('3', "x", 1)));
        let err = load_digits(&bad_number).unwrap_err();
        assert!(matches!(&err, Error::Data { line: Some(3), path, .. } if path == &bad_number), "{err:?}");
        assert!(err.to_string().contains("'x'"), "{err}");

        let short_row = write("short.csv", &format!("{}1,2,3\n", good_row(1)));
        assert!(matches!(load_digits(&short_row), Err(Error::Data { line: Some(2), .. })));
        let bad_label = write("label.csv", &format!("{}{}", good_row(1), good_row(12)));
        assert!(matches!(load_digits(&bad_label), Err(Error::Data { line: Some(2), .. })));
        let bad_pixel = write("pixel.csv", &good_row(1).replacen('3', "17", 1));
        assert!(matches!(load_digits(&bad_pixel), Err(Error::Data { line: Some(1), .. })));
        let narrow = write("narrow.csv", "1,2,3\n");
        assert!(load_digits(&narrow).unwrap_err().to_string().contains("expected 65 comma-separated columns"));
        // A short first line is the one named, not the good second line.
        let short_first = write("short_first.csv", &format!("1,2,3\n{}", good_row(1)));
        assert!(matches!(load_digits(&short_first), Err(Error::Data { line: Some(1), .. })));
        // Too few images for a train/test split is a problem of the file (exit 3), not of the config.
        let one = write("one.csv", &good_row(4));
        let err = crate::tasks::digits::Digits::from_file(&one, 0).unwrap_err();
        assert!(matches!(&err, Error::Data { path, .. } if path == &one), "{err:?}");
    }

    #[test]
    fn mnist_counts_must_agree() {
        use crate::data::idx::encode_idx;
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images.idx");
        let labels = dir.path().join("labels.idx");
        std::fs::write(&images, encode_idx(IMAGES_MAGIC, &[3, 2, 2], &[0, 255, 7, 9, 1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
        std::fs::write(&labels, encode_idx(LABELS_MAGIC, &[3], &[4, 0, 9])).unwrap();
        let data = load_mnist(&images, &labels).unwrap();
        assert_eq!((data.len(), data.steps, data.max_value), (3, 4, 255));
        std::fs::write(&labels, encode_idx(LABELS_MAGIC, &[2], &[4, 0])).unwrap();
        assert!(load_mnist(&images, &labels).unwrap_err().to_string().contains("2 labels for the 3 images"));
        std::fs::write(&labels, encode_idx(LABELS_MAGIC, &[3], &[4, 0, 10])).unwrap();
        assert!(load_mnist(&images, &labels).unwrap_err().to_string().contains("label 10"));
        // Swapped files: the magic numbers catch it.
        assert!(load_mnist(&labels, &images).unwrap_err().to_string().contains("magic number"));
    }
}
