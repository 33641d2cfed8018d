//! The data files shipped in the repository's `data/` folder: each parses with the expected counts and ranges,
//! and damaged copies of them fail with an `Error::Data` naming the file (and the line, for text).

use std::path::{Path, PathBuf};

use effseq::data::idx::{read_idx, IMAGES_MAGIC, LABELS_MAGIC};
use effseq::data::labelled::{load_digits, load_mnist, CLASSES};
use effseq::data::series::{load_series, TimeAxis};
use effseq::data::{self, data_path, read_bytes};
use effseq::Error;

/// A copy of the shipped `file` in `dir`, transformed by `edit`.
fn damaged_copy(dir: &Path, file: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> PathBuf {
    let bytes = std::fs::read(data_path(file)).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, edit(bytes)).unwrap();
    path
}

#[test]
fn digits_has_1797_images_of_64_pixels_in_0_to_16() {
    let digits = load_digits(&data_path(data::DIGITS_FILE)).unwrap();
    assert_eq!((digits.len(), digits.steps, digits.max_value), (1797, 64, 16));
    assert_eq!(digits.pixels.iter().max(), Some(&16));
    assert!(digits.labels.iter().all(|&l| usize::from(l) < CLASSES));
    assert!(digits.class_counts().iter().all(|&n| n > 150), "{:?}", digits.class_counts());
    assert_eq!(digits.labels[..3], [0, 1, 2], "the file starts 0, 1, 2");
}

#[test]
fn mnist_has_10000_images_of_784_pixels_and_valid_idx_headers() {
    let images = read_idx(&data_path(data::MNIST_IMAGES_FILE), IMAGES_MAGIC).unwrap();
    assert_eq!(images.dims, vec![10_000, 28, 28]);
    let labels = read_idx(&data_path(data::MNIST_LABELS_FILE), LABELS_MAGIC).unwrap();
    assert_eq!(labels.dims, vec![10_000]);
    let mnist = load_mnist(&data_path(data::MNIST_IMAGES_FILE), &data_path(data::MNIST_LABELS_FILE)).unwrap();
    assert_eq!((mnist.len(), mnist.steps), (10_000, 784));
    let counts = mnist.class_counts();
    assert!(counts.iter().all(|&n| (800..1200).contains(&n)), "{counts:?}");
    assert_eq!(mnist.pixels.iter().max(), Some(&255));
    // Stored grouped by class, hence the shuffle before the split.
    assert!(mnist.labels.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn series_lengths_and_the_co2_gaps() {
    use effseq::data::series::SeriesSpec;
    let spec = |time: &str, axis, values: &[&str]| SeriesSpec { time_column: time.into(), axis, value_columns: values.iter().map(|v| v.to_string()).collect() };
    let sunspots = load_series(&data_path(data::SUNSPOTS_FILE), &spec("YEAR", TimeAxis::Year, &["SUNACTIVITY"])).unwrap();
    assert_eq!((sunspots.len(), sunspots.times[0].as_str(), sunspots.gaps.interpolated), (309, "1700", 0));
    let co2 = load_series(&data_path(data::CO2_FILE), &spec("date", TimeAxis::CompactDate { days: 7 }, &["co2"])).unwrap();
    assert_eq!(co2.len(), 2284, "no row is dropped: the weekly axis stays regular");
    assert_eq!((co2.gaps.interpolated, co2.gaps.trimmed_start, co2.gaps.trimmed_end), (59, 0, 0));
    assert_eq!(co2.interpolated.iter().filter(|&&m| m).count(), 59);
    assert!(co2.values.iter().all(|v| (300.0..400.0).contains(v)));
    let seattle =
        load_series(&data_path(data::SEATTLE_FILE), &spec("date", TimeAxis::IsoDate { days: 1 }, &["precipitation", "temp_max", "temp_min", "wind"])).unwrap();
    assert_eq!((seattle.len(), seattle.dim(), seattle.gaps.interpolated), (1461, 4, 0));
}

#[test]
fn damaged_copies_of_the_shipped_files_are_data_errors() {
    let dir = tempfile::tempdir().unwrap();

    let truncated = damaged_copy(dir.path(), data::DIGITS_FILE, |b| b[..b.len() - 100].to_vec());
    let err = load_digits(&truncated).unwrap_err();
    assert!(matches!(&err, Error::Data { path, .. } if path == &truncated), "{err:?}");
    assert!(err.to_string().contains("digits.csv.gz"), "{err}");

    // The images file given as labels: wrong magic.
    let err = load_mnist(&data_path(data::MNIST_IMAGES_FILE), &data_path(data::MNIST_IMAGES_FILE)).unwrap_err();
    assert!(err.to_string().contains("expected 2049"), "{err}");

    // A bad number on line 5 of the sunspots file.
    let bad = damaged_copy(dir.path(), data::SUNSPOTS_FILE, |b| String::from_utf8(b).unwrap().replacen("1703,23", "1703,2x3", 1).into_bytes());
    let spec = effseq::data::series::SeriesSpec { time_column: "YEAR".into(), axis: TimeAxis::Year, value_columns: vec!["SUNACTIVITY".into()] };
    let err = load_series(&bad, &spec).unwrap_err();
    assert!(matches!(&err, Error::Data { line: Some(5), .. }), "{err:?}");

    // A dropped row of the CO2 file would shift the time axis: refused with the line after the hole.
    let dropped = damaged_copy(dir.path(), data::CO2_FILE, |b| String::from_utf8(b).unwrap().replacen("19580405,317.3\n", "", 1).into_bytes());
    let spec = effseq::data::series::SeriesSpec { time_column: "date".into(), axis: TimeAxis::CompactDate { days: 7 }, value_columns: vec!["co2".into()] };
    let err = load_series(&dropped, &spec).unwrap_err();
    assert!(matches!(&err, Error::Data { line: Some(3), .. }), "{err:?}");

    assert!(matches!(read_bytes(&dir.path().join("absent.csv")), Err(Error::Data { .. })));
}
