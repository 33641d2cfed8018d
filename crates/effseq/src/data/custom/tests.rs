//! Tests of the custom-data readers: every layout and format, the error messages (file, line, column), and
//! proptest fuzzing of every reader on arbitrary and near-valid input (no panic, errors are `Error::Data`).

use super::*;
use proptest::prelude::*;

fn bytes(name: &str, text: &[u8]) -> Input {
    Input::Bytes { name: PathBuf::from(name), bytes: Arc::from(text) }
}

fn read(name: &str, text: &str, options: &ReadOptions) -> Result<(Vec<RawSequence>, Option<CsvColumns>)> {
    let format = DataFormat::from_path(Path::new(name)).unwrap();
    read_all(&bytes(name, text.as_bytes()), format, options)
}

fn training() -> ReadOptions {
    ReadOptions { labels_required: true, ..Default::default() }
}

fn err_text(r: Result<impl std::fmt::Debug>) -> String {
    let e = r.expect_err("expected an error");
    assert!(matches!(e, Error::Data { .. }), "{e:?}");
    e.to_string()
}

#[test]
fn wide_csv_with_and_without_header_and_variable_lengths() {
    // UCR style: label first, no header; a shorter sequence ends in empty fields.
    let (seqs, cols) = read("ucr.csv", "1,0.5,0.25,1.5\n2,3,4,\n", &training()).unwrap();
    let cols = cols.unwrap();
    assert_eq!((cols.layout, cols.header, cols.y[0].0), (CsvLayout::Wide, false, 0));
    assert_eq!((seqs[0].len, seqs[1].len), (3, 2));
    assert_eq!(seqs[0].x, vec![0.5, 0.25, 1.5]);
    assert_eq!(seqs[1].label, Some(Label::Once(vec![LabelValue::Int(2)])));
    assert_eq!((seqs[0].line, seqs[1].line, seqs[1].index), (Some(1), Some(2), 1));
    // A header with a label column named 'class' anywhere.
    let (seqs, cols) = read("h.csv", "t0,t1,class\n1,2,cat\n3,4,dog\n", &training()).unwrap();
    assert_eq!(cols.unwrap().y, vec![(2, "class".to_string())]);
    assert_eq!(seqs[1].x, vec![3.0, 4.0]);
    assert_eq!(seqs[1].label, Some(Label::Once(vec![LabelValue::Text("dog".into())])));
}

#[test]
fn long_csv_groups_rows_by_id() {
    let text = "id,time,a,b,label\ns1,0,1,2,x\ns1,1,3,4,x\ns2,0,5,6,y\n";
    let (seqs, cols) = read("long.csv", text, &training()).unwrap();
    let cols = cols.unwrap();
    assert_eq!(cols.layout, CsvLayout::Long);
    assert_eq!(cols.x.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), ["a", "b"], "the id, time and label columns are not features");
    assert_eq!((seqs.len(), seqs[0].len, seqs[0].features, seqs[0].id.as_deref()), (2, 2, 2, Some("s1")));
    assert_eq!(seqs[0].x, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(seqs[1].line, Some(4));
    let err = err_text(read("long.csv", "id,a,label\ns1,1,x\ns2,2,y\ns1,3,x\n", &training()));
    assert!(err.contains("long.csv:4") && err.contains("'s1' continues"), "{err}");
}

#[test]
fn series_csv_yields_one_row_per_step_with_its_targets() {
    let options = ReadOptions { series: true, y_columns: vec!["temp".into()], labels_required: true, ..Default::default() };
    let (rows, cols) = read("s.csv", "date,temp,wind\n2012-01-01,1.5,3\n2012-01-02,2.5,4\n", &options).unwrap();
    let cols = cols.unwrap();
    assert_eq!(cols.layout, CsvLayout::Series);
    assert_eq!(cols.x.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), ["temp", "wind"], "the target is a feature too; the date is not");
    assert_eq!(rows[1].x, vec![2.5, 4.0]);
    assert_eq!(rows[1].label, Some(Label::PerStep(vec![vec![LabelValue::Real(2.5)]])));
}

#[test]
fn csv_errors_name_file_line_and_column() {
    let err = err_text(read("bad.csv", "y,a,b\n1,2,3\n1,x,3\n", &training()));
    assert!(err.contains("bad.csv:3") && err.contains("column 2 ('a')") && err.contains("'x' is not a number"), "{err}");
    let err = err_text(read("bad.csv", "y,a,b\n1,2,3\n1,NaN,3\n", &training()));
    assert!(err.contains("bad.csv:3") && err.contains("column 2") && err.contains("not a finite number"), "{err}");
    let err = err_text(read("bad.csv", "y,a,b\n1,2,inf\n", &training()));
    assert!(err.contains("bad.csv:2") && err.contains("column 3"), "{err}");
    let err = err_text(read("ragged.csv", "y,a,b\n1,2,3\n1,2\n", &training()));
    assert!(err.contains("ragged.csv:3") && err.contains("expected 3"), "{err}");
    let err = err_text(read("gap.csv", "1,2,,4\n", &training()));
    assert!(err.contains("gap.csv:1") && err.contains("column 3"), "{err}");
    let err = err_text(read("empty.csv", "", &training()));
    assert!(err.contains("empty.csv") && err.contains("empty"), "{err}");
    let err = err_text(read("header-only.csv", "y,a,b\n", &training()));
    assert!(err.contains("no sequences"), "{err}");
    let err = err_text(read("cols.csv", "y,a\n1,2\n", &ReadOptions { x_columns: vec!["nope".into()], ..training() }));
    assert!(err.contains("no feature column 'nope'") && err.contains("y, a"), "{err}");
    let err = err_text(read("lab.csv", "y,a\n,2\n", &training()));
    assert!(err.contains("lab.csv:2") && err.contains("empty label"), "{err}");
    let err = err_text(read("feat.csv", "id,a,b,y\n1,2,3,4\n", &ReadOptions { features: Some(3), ..training() }));
    assert!(err.contains("2 feature columns") && err.contains("reads 3"), "{err}");
}

#[test]
fn jsonl_shapes_labels_and_errors() {
    let text = "{\"x\": [1, 2, 3], \"y\": \"a\", \"id\": 7}\n\n{\"x\": [[1, 2], [3, 4]], \"y\": [0, 1]}\n";
    let err = err_text(read("j.jsonl", text, &training()));
    assert!(err.contains("j.jsonl:3") && err.contains("2 features per step") && err.contains("earlier sequences have 1"), "{err}");
    let (seqs, _) = read("j.jsonl", "{\"x\": [[1, 2], [3, 4]], \"y\": [0, 1], \"id\": 7}\n{\"x\": [[5, 6]], \"y\": 2.5}\n", &training()).unwrap();
    assert_eq!((seqs[0].len, seqs[0].features, seqs[0].id.as_deref()), (2, 2, Some("7")));
    assert_eq!(seqs[0].label, Some(Label::List(vec![LabelValue::Int(0), LabelValue::Int(1)])));
    assert_eq!(seqs[1].label, Some(Label::Once(vec![LabelValue::Real(2.5)])));
    let err = err_text(read("j.jsonl", "{\"x\": [[1, 2], [3]], \"y\": 1}\n", &training()));
    assert!(err.contains("j.jsonl:1") && err.contains("x[1] has 1 features"), "{err}");
    let err = err_text(read("j.jsonl", "{\"x\": [1, \"a\"], \"y\": 1}\n", &training()));
    assert!(err.contains("x[1]: expected a number"), "{err}");
    let err = err_text(read("j.jsonl", "{\"x\": [1, 2], \"y\": 1}\n{\"x\": [1, 2], \"y\": 1\n", &training()));
    assert!(err.contains("j.jsonl:2") && err.contains("not valid JSON") && err.contains("column"), "{err}");
    let err = err_text(read("j.jsonl", "{\"x\": [1e39], \"y\": 1}\n", &training()));
    assert!(err.contains("does not fit a 32-bit float"), "{err}");
    let err = err_text(read("j.jsonl", "{\"x\": [1, 2]}\n", &training()));
    assert!(err.contains("no field \"y\""), "{err}");
    assert!(read("j.jsonl", "{\"x\": [1, 2]}\n", &ReadOptions::default()).is_ok(), "labels are optional for predictions");
}

/// An `.npy` file's bytes: the magic, version 1.0, a header for `descr` and `shape`, then the data.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An `.npz` archive of the given arrays, stored or deflated.
fn npz(arrays: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    for (name, data) in arrays {
        zip.start_file(format!("{name}.npy"), zip::write::FileOptions::default().compression_method(method)).unwrap();
        std::io::Write::write_all(&mut zip, data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[test]
fn npz_stored_and_deflated_with_lengths_and_per_step_labels() {
    let x = npy("<f4", &[2, 3, 2], &f32s(&[1., 2., 3., 4., 5., 6., 7., 8., 0., 0., 0., 0.]));
    let y = npy("<i8", &[2], &[3i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let lengths = npy("<i4", &[2], &[3i32, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    for deflate in [false, true] {
        let archive = npz(&[("x", x.clone()), ("y", y.clone()), ("lengths", lengths.clone())], deflate);
        let (seqs, _) = read_all(&bytes("d.npz", &archive), DataFormat::Npz, &training()).unwrap();
        assert_eq!((seqs[0].len, seqs[1].len, seqs[1].features), (3, 1, 2));
        assert_eq!(seqs[1].x, vec![7.0, 8.0]);
        assert_eq!(seqs[0].label, Some(Label::Once(vec![LabelValue::Int(3)])));
    }
    // y (N, T): one label per step, cut to each length.
    let y = npy("|u1", &[2, 3], &[1, 2, 3, 4, 5, 6]);
    let archive = npz(&[("x", x.clone()), ("y", y), ("lengths", lengths)], true);
    let (seqs, _) = read_all(&bytes("d.npz", &archive), DataFormat::Npz, &training()).unwrap();
    assert_eq!(seqs[1].label, Some(Label::PerStep(vec![vec![LabelValue::Int(4)]])));
    // Errors: NaN (by element index), no y for training, a shape that does not fit.
    let nan = npz(&[("x", npy("<f4", &[1, 2], &f32s(&[1.0, f32::NAN]))), ("y", npy("<f8", &[1], &1.5f64.to_le_bytes()))], false);
    let err = err_text(read_all(&bytes("n.npz", &nan), DataFormat::Npz, &training()));
    assert!(err.contains("n.npz") && err.contains("x[0, 1]") && err.contains("NaN"), "{err}");
    let err = err_text(read_all(&bytes("x.npy", &npy("<f4", &[1, 2], &f32s(&[1.0, 2.0]))), DataFormat::Npy, &training()));
    assert!(err.contains("no labels"), "{err}");
    let bad = npz(&[("x", npy("<f4", &[1, 2], &f32s(&[1.0, 2.0]))), ("y", npy("<f4", &[3], &f32s(&[1.0, 2.0, 3.0])))], false);
    assert!(err_text(read_all(&bytes("b.npz", &bad), DataFormat::Npz, &training())).contains("does not fit"));
    let truncated = npy("<f4", &[2, 2], &f32s(&[1.0, 2.0, 3.0]));
    let err = err_text(read_all(&bytes("t.npy", &truncated), DataFormat::Npy, &ReadOptions::default()));
    assert!(err.contains("truncated"), "{err}");
    // A header may claim any shape: one far larger than the file is an error before anything is allocated.
    let huge = npy("<f8", &[1 << 20, 1 << 20, 1 << 10], &f32s(&[1.0]));
    let err = err_text(read_all(&bytes("huge.npy", &huge), DataFormat::Npy, &ReadOptions::default()));
    assert!(err.contains("claims shape") && err.contains("truncated or corrupt"), "{err}");
    // .npy alone: inputs for predictions.
    let (seqs, _) = read_all(
        &bytes("p.npy", &npy("<f8", &[1, 2], &[1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())),
        DataFormat::Npy,
        &ReadOptions::default(),
    )
    .unwrap();
    assert_eq!((seqs[0].x.clone(), seqs[0].label.clone()), (vec![1.0, 2.0], None));
}

#[test]
fn gzip_text_is_read_through() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, b"{\"x\": [1, 2], \"y\": 0}\n{\"x\": [3], \"y\": 1}\n").unwrap();
    let (seqs, _) = read_all(&bytes("z.jsonl.gz", &enc.finish().unwrap()), DataFormat::Jsonl, &training()).unwrap();
    assert_eq!(seqs.len(), 2);
}

#[test]
fn the_reader_is_incremental() {
    // A reader over a large file has read only a small part of it after its first sequences: predictions stream.
    let row = "1,".to_string() + &vec!["0.5"; 100].join(",") + "\n";
    let text = row.repeat(20_000); // about 8 MB
    let mut reader = SequenceReader::open(&bytes("big.csv", text.as_bytes()), DataFormat::Csv, &ReadOptions::default()).unwrap();
    for _ in 0..10 {
        reader.next().unwrap().unwrap();
    }
    let (done, total) = reader.position();
    assert!(done < total / 50, "read {done} of {total} bytes for 10 rows");
    assert_eq!(reader.count() + 10, 20_000);
}

/// Runs one reader over arbitrary bytes to the end: it may fail, but only with an `Error::Data`, and never panics.
fn read_everything(name: &str, format: DataFormat, data: &[u8], options: &ReadOptions) -> std::result::Result<(), TestCaseError> {
    match SequenceReader::open(&bytes(name, data), format, options) {
        Ok(reader) => {
            for item in reader {
                match item {
                    Ok(seq) => prop_assert!(seq.len >= 1 && seq.x.len() == seq.len * seq.features && seq.x.iter().all(|v| v.is_finite())),
                    Err(e) => prop_assert!(matches!(e, Error::Data { .. }), "{e:?}"),
                }
            }
        }
        Err(e) => prop_assert!(matches!(e, Error::Data { .. }), "{e:?}"),
    }
    Ok(())
}

/// Near-valid CSV: numbers, labels, empty fields, NaN, quotes and ragged rows.
fn csv_text() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just(String::new()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("\"a,b\"".to_string()),
        Just("\"".to_string()),
        "[a-z]{1,3}",
        (-1000i32..1000).prop_map(|v| v.to_string()),
        (-1e3f64..1e3).prop_map(|v| format!("{v:.3}")),
    ];
    prop::collection::vec(prop::collection::vec(field, 1..6).prop_map(|r| r.join(",")), 0..8).prop_map(|rows| rows.join("\n"))
}

/// Near-valid JSON Lines.
fn jsonl_text() -> impl Strategy<Value = String> {
    let step = prop_oneof![
        (-100i32..100).prop_map(|v| v.to_string()),
        prop::collection::vec(-100i32..100, 0..3).prop_map(|v| format!("{v:?}")),
        Just("\"s\"".to_string()),
        Just("null".to_string()),
        Just("1e400".to_string()),
    ];
    let label = prop_oneof![
        Just("0".to_string()),
        Just("2.5".to_string()),
        Just("\"cat\"".to_string()),
        Just("[0, 1]".to_string()),
        Just("[[1], [2]]".to_string()),
        Just("null".to_string())
    ];
    let line = (prop::collection::vec(step, 0..4), label, any::<bool>()).prop_map(|(steps, y, broken)| {
        let text = format!("{{\"x\": [{}], \"y\": {y}}}", steps.join(", "));
        if broken {
            text[..text.len() / 2].to_string()
        } else {
            text
        }
    });
    prop::collection::vec(line, 0..6).prop_map(|l| l.join("\n"))
}

/// Number of cases of each fuzz property (the report quotes them: 4 properties).
const FUZZ_CASES: u32 = 2500;

proptest! {
    #![proptest_config(ProptestConfig { cases: FUZZ_CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_csv_reader(text in csv_text(), header in prop::option::of(any::<bool>()), long in any::<bool>(), series in any::<bool>()) {
        let options = ReadOptions {
            header,
            id_column: long.then(|| "1".to_string()),
            series,
            labels_required: !series,
            ..Default::default()
        };
        read_everything("fuzz.csv", DataFormat::Csv, text.as_bytes(), &options)?;
    }

    #[test]
    fn fuzz_jsonl_reader(text in jsonl_text(), required in any::<bool>()) {
        read_everything("fuzz.jsonl", DataFormat::Jsonl, text.as_bytes(), &ReadOptions { labels_required: required, ..Default::default() })?;
    }

    #[test]
    fn fuzz_numpy_readers(data in prop::collection::vec(any::<u8>(), 0..300), shape in prop::collection::vec(prop_oneof![0usize..4, Just(usize::MAX / 3), Just(1 << 40)], 1..4), cut in 0usize..200, deflate in any::<bool>()) {
        // Arbitrary bytes, and valid headers with arbitrary (often truncated) data, as .npy and inside .npz.
        read_everything("fuzz.npy", DataFormat::Npy, &data, &ReadOptions::default())?;
        let mut file = npy("<f4", &shape, &data);
        file.truncate(file.len().saturating_sub(cut % 8));
        read_everything("fuzz.npy", DataFormat::Npy, &file, &ReadOptions::default())?;
        let archive = npz(&[("x", file), ("y", npy("<i8", &shape[..1], &data))], deflate);
        read_everything("fuzz.npz", DataFormat::Npz, &archive, &ReadOptions { labels_required: true, ..Default::default() })?;
        read_everything("fuzz.npz", DataFormat::Npz, &archive[..archive.len().saturating_sub(cut)], &ReadOptions::default())?;
    }

    #[test]
    fn fuzz_every_reader_on_raw_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        for (name, format) in [("r.csv", DataFormat::Csv), ("r.tsv", DataFormat::Csv), ("r.jsonl", DataFormat::Jsonl), ("r.npz", DataFormat::Npz), ("r.csv.gz", DataFormat::Csv)] {
            read_everything(name, format, &data, &ReadOptions::default())?;
        }
    }
}
