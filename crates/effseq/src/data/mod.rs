//! The real data sets shipped in the repository's `data/` folder and their loaders.
//!
//! Nothing is downloaded at run time: every file is a copy kept in the repository, whose provenance and licence
//! `data/SOURCES.md` records.
//!
//! ## Where the files are found
//! [`data_dir`] is the folder named by the environment variable `EFFSEQ_DATA` when it is set (and not empty),
//! else `<workspace root>/data`, located at compile time from this crate's manifest directory
//! (`crates/effseq/../../data`). A binary copied away from its checkout therefore needs `EFFSEQ_DATA`.
//!
//! ## Formats
//! - [`csv`]: comma-separated text with 1-based line numbers kept for error messages, optionally gzip-compressed.
//! - [`idx`]: the IDX binary format of MNIST (magic 2051 for images, 2049 for labels), optionally gzip-compressed.
//! - [`labelled`]: labelled pixel sequences (UCI digits, MNIST) and the seeded train/test split of a classifier.
//! - [`series`]: time series in CSV with a regular time axis, explicit gap filling and a chronological split.
//! - [`custom`]: the user's own sequences (`--task custom`) from CSV, JSON Lines and NumPy files, read incrementally.
//!
//! Every malformed or missing file is an [`Error::Data`] naming the file and, for text, the 1-based line.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;

use crate::error::{Error, Result};
use crate::rng::rng_for;

pub mod csv;
pub mod custom;
pub mod idx;
pub mod labelled;
pub mod series;

/// The environment variable that overrides the data directory.
pub const DATA_ENV: &str = "EFFSEQ_DATA";

/// The UCI 8x8 optical digits: 1,797 rows of 64 pixels in `0..=16` and a label.
pub const DIGITS_FILE: &str = "digits.csv.gz";
/// 10,000 MNIST training images, IDX (magic 2051), 28x28 `u8`, grouped by class.
pub const MNIST_IMAGES_FILE: &str = "mnist-10k-images-idx3-ubyte.gz";
/// The labels of [`MNIST_IMAGES_FILE`], IDX (magic 2049).
pub const MNIST_LABELS_FILE: &str = "mnist-10k-labels-idx1-ubyte.gz";
/// Yearly mean sunspot numbers 1700-2008 (`YEAR,SUNACTIVITY`).
pub const SUNSPOTS_FILE: &str = "sunspots.csv";
/// Weekly Mauna Loa CO2 1958-2001 (`date,co2`, dates `YYYYMMDD`, some values missing).
pub const CO2_FILE: &str = "co2.csv";
/// Daily Seattle weather 2012-2015 (`date,precipitation,temp_max,temp_min,wind,weather`).
pub const SEATTLE_FILE: &str = "seattle-weather.csv";

/// The data directory: `$EFFSEQ_DATA` if set and not empty, else `<workspace root>/data` (see the module docs).
pub fn data_dir() -> PathBuf {
    data_dir_from(std::env::var_os(DATA_ENV))
}

/// [`data_dir`] for a given value of `EFFSEQ_DATA` (`None` when unset), so the rule can be tested without touching
/// the process environment.
pub fn data_dir_from(env_value: Option<std::ffi::OsString>) -> PathBuf {
    match env_value {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("data"),
    }
}

/// `file` inside [`data_dir`].
pub fn data_path(file: &str) -> PathBuf {
    data_dir().join(file)
}

/// An [`Error::Data`] on `path` at the 1-based `line` (when known).
pub fn data_error(path: &Path, line: Option<usize>, msg: impl Into<String>) -> Error {
    Error::Data { path: path.to_path_buf(), line, msg: msg.into() }
}

/// A problem found in the contents of the data file `path` (too few examples for a split, an unexpected image
/// size): reported as an [`Error::Data`] naming the file, not as a config error, whatever layer found it.
pub fn as_data_error(err: Error, path: &Path) -> Error {
    match err {
        Error::Config { msg, .. } | Error::Invalid(msg) => data_error(path, None, msg),
        other => other,
    }
}

/// The bytes of `path`, gunzipped when its name ends in `.gz`.
///
/// A missing file, an unreadable one, a `.gz` file without the gzip magic and a truncated or corrupt gzip
/// stream are all [`Error::Data`] naming the file.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            format!("cannot open: {e} (data files are looked up in ${DATA_ENV} if set, else in the repository's data/ folder)")
        } else {
            format!("cannot read: {e}")
        };
        data_error(path, None, hint)
    })?;
    if path.extension().is_none_or(|ext| ext != "gz") {
        return Ok(raw);
    }
    if raw.len() < 2 || raw[..2] != [0x1f, 0x8b] {
        return Err(data_error(path, None, "not a gzip file (the name ends in .gz but the gzip magic bytes 1f 8b are missing)"));
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| data_error(path, None, format!("truncated or corrupt gzip stream after {} decompressed bytes: {e}", out.len())))?;
    Ok(out)
}

/// The text of `path` (gunzipped when its name ends in `.gz`), which must be UTF-8.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        data_error(path, Some(line), "not valid UTF-8 text")
    })
}

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The examples the model is trained on.
    Train,
    /// Held out for model selection (the forecasting series only).
    Validation,
    /// Held out for the final score.
    Test,
}

impl Split {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// A seeded random train/test split of `n` examples: the indices `0..n` shuffled by `rng_for(seed, stream)`, the
/// first `n - test_count` (sorted) for training and the last `test_count` (sorted) for testing. Sorting keeps each
/// part in file order, so the split only decides membership.
pub fn shuffled_split(n: usize, test_count: usize, seed: u64, stream: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if test_count == 0 || test_count >= n {
        return Err(Error::config(format!("a train/test split of {n} examples needs 1..{n} test examples, got {test_count}")));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng_for(seed, stream));
    let mut test = order.split_off(n - test_count);
    order.sort_unstable();
    test.sort_unstable();
    Ok((order, test))
}

/// Epoch-wise sampling without replacement, keyed by `(seed, step)` alone so that a resumed run draws exactly the
/// batches of an uninterrupted one.
///
/// Training example number `p = step * batch + i` (for `i` in `0..batch`) is position `p % len` of the permutation
/// of epoch `p / len`, which is `0..len` shuffled by `rng_for(seed, stream + epoch)`. Every epoch visits each
/// example once; a batch that straddles two epochs takes the end of one and the start of the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochSampler {
    /// Number of examples in the training set.
    len: usize,
    /// Seed of the permutations.
    seed: u64,
    /// First stream; epoch `e` uses `stream + e`.
    stream: u64,
}

impl EpochSampler {
    /// A sampler over `len` (at least 1) examples.
    pub fn new(len: usize, seed: u64, stream: u64) -> Result<Self> {
        if len == 0 {
            return Err(Error::config("cannot sample training batches from an empty training set"));
        }
        Ok(EpochSampler { len, seed, stream })
    }

    /// Number of examples per epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a sampler has at least one example.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The permutation of `epoch`.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        order.shuffle(&mut rng_for(self.seed, self.stream.wrapping_add(epoch)));
        order
    }

    /// The `batch` example indices (in `0..len`) of training step `step`.
    pub fn indices(&self, step: u64, batch: usize) -> Vec<usize> {
        let len = self.len as u64;
        let first = step.wrapping_mul(batch as u64);
        let mut out = Vec::with_capacity(batch);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for i in 0..batch as u64 {
            let position = first.wrapping_add(i);
            let epoch = position / len;
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                cached = Some((epoch, self.permutation(epoch)));
            }
            if let Some((_, order)) = &cached {
                out.push(order[(position % len) as usize]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn data_dir_honours_the_environment_variable() {
        assert_eq!(data_dir_from(Some("/tmp/my-data".into())), PathBuf::from("/tmp/my-data"));
        let default = data_dir_from(None);
        assert_eq!(default, data_dir_from(Some("".into())), "an empty EFFSEQ_DATA means unset");
        assert!(default.ends_with("data"));
        assert!(default.join(DIGITS_FILE).is_file(), "the repository ships {}", default.join(DIGITS_FILE).display());
    }

    #[test]
    fn missing_file_is_a_data_error_naming_it() {
        let path = Path::new("/nonexistent/effseq/nothing.csv");
        let err = read_bytes(path).unwrap_err();
        assert!(matches!(&err, Error::Data { path: p, line: None, .. } if p == path), "{err:?}");
        assert!(err.to_string().contains("nothing.csv") && err.to_string().contains(DATA_ENV), "{err}");
    }

    #[test]
    fn gzip_round_trip_truncation_and_bad_magic() {
        let dir = tempfile::tempdir().unwrap();
        let text = "1,2,3\n4,5,6\n".repeat(200);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let good = dir.path().join("good.csv.gz");
        std::fs::write(&good, &gz).unwrap();
        assert_eq!(read_text(&good).unwrap(), text);

        let truncated = dir.path().join("truncated.csv.gz");
        std::fs::write(&truncated, &gz[..gz.len() / 2]).unwrap();
        let err = read_bytes(&truncated).unwrap_err();
        assert!(matches!(&err, Error::Data { path, .. } if path == &truncated), "{err:?}");
        assert!(err.to_string().contains("truncated or corrupt gzip"), "{err}");

        let plain = dir.path().join("plain.csv.gz");
        std::fs::write(&plain, text.as_bytes()).unwrap();
        assert!(read_bytes(&plain).unwrap_err().to_string().contains("not a gzip file"));
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.csv");
        std::fs::write(&path, b"a,b\n1,2\n3,\xe9\n").unwrap();
        assert!(matches!(read_text(&path), Err(Error::Data { line: Some(3), .. })));
    }

    #[test]
    fn shuffled_split_is_a_seeded_partition() {
        let (train, test) = shuffled_split(100, 20, 7, 0).unwrap();
        assert_eq!((train.len(), test.len()), (80, 20));
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]) && test.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(shuffled_split(100, 20, 7, 0).unwrap(), (train.clone(), test.clone()));
        assert_ne!(shuffled_split(100, 20, 8, 0).unwrap().1, test);
        assert_ne!(test, (80..100).collect::<Vec<_>>(), "the test part is not simply the end of the file");
        assert!(shuffled_split(10, 0, 0, 0).is_err() && shuffled_split(10, 10, 0, 0).is_err());
    }

    #[test]
    fn epoch_sampler_visits_every_example_once_per_epoch() {
        let sampler = EpochSampler::new(10, 3, 0).unwrap();
        // Batches of 4 over 10 examples: steps 0..5 cover exactly two epochs (20 draws), straddling at step 2.
        let draws: Vec<usize> = (0..5).flat_map(|step| sampler.indices(step, 4)).collect();
        for epoch in draws.chunks_exact(10) {
            let mut seen = epoch.to_vec();
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        assert_eq!(&draws[..10], &sampler.permutation(0)[..]);
        assert_eq!(&draws[10..], &sampler.permutation(1)[..]);
        assert_ne!(sampler.permutation(0), sampler.permutation(1));
        assert_eq!(sampler.indices(3, 4), EpochSampler::new(10, 3, 0).unwrap().indices(3, 4), "depends on (seed, step) only");
        assert_ne!(sampler.permutation(0), EpochSampler::new(10, 4, 0).unwrap().permutation(0));
        assert!(EpochSampler::new(0, 0, 0).is_err());
    }
}
