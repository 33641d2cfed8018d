//! Readers of the user's own sequences (`--task custom`): CSV (one sequence per row, one step per row with an id
//! column, or one long series), JSON Lines and NumPy `.npy`/`.npz`.
//!
//! Every reader is an iterator of [`RawSequence`]s that reads its file incrementally (a CSV record, a JSON line or
//! one sequence's worth of array elements at a time), so `effseq predict` runs in bounded memory over a file larger
//! than RAM; training collects them. Gzip-compressed CSV and JSON Lines (`.gz`) are decompressed on the fly.
//!
//! Problems are [`Error::Data`] naming the file and the 1-based line (text formats), with the column (CSV: number
//! and name; JSON: the field, as `x[3][1]`) or the element index (NumPy) in the message: a field that is not a
//! number, NaN or infinite values, a row with the wrong number of fields, steps with different numbers of features,
//! an empty file, a missing column, a sequence id that comes back after another sequence.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{CsvLayout, DataFormat};
use crate::data::data_error;
use crate::error::{Error, Result};

/// One label value as read, before the task decides between classes and real values.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelValue {
    /// An integer (a class id, or a count).
    Int(i64),
    /// A number with a fraction or an exponent, finite.
    Real(f64),
    /// Anything else (a class name; JSON booleans as `true`/`false`).
    Text(String),
}

impl LabelValue {
    /// Parses a CSV field: an integer, a finite number, or text. NaN and infinities are errors (`None`).
    fn from_field(field: &str) -> Option<LabelValue> {
        if let Ok(i) = field.parse::<i64>() {
            return Some(LabelValue::Int(i));
        }
        match field.parse::<f64>() {
            Ok(v) if v.is_finite() => Some(LabelValue::Real(v)),
            Ok(_) => None,
            Err(_) => Some(LabelValue::Text(field.to_string())),
        }
    }

    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            LabelValue::Int(i) => Some(*i as f64),
            LabelValue::Real(v) => Some(*v),
            LabelValue::Text(_) => None,
        }
    }

    /// The value as a class name (integers and numbers as written in decimal).
    pub fn class_name(&self) -> String {
        match self {
            LabelValue::Int(i) => i.to_string(),
            LabelValue::Real(v) => v.to_string(),
            LabelValue::Text(s) => s.clone(),
        }
    }
}

/// The labels of one sequence as read; the task decides what they mean ([`crate::config::CustomKind`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Label {
    /// One record of K values for the whole sequence (CSV wide layout; a JSON scalar `y`; a 1-D NumPy `y`).
    Once(Vec<LabelValue>),
    /// A JSON list of scalars, or a row of a 2-D NumPy `y` whose width is not the time dimension: K values for the
    /// sequence, or one value per step when its length equals the sequence's.
    List(Vec<LabelValue>),
    /// One record of K values per step (CSV long and series layouts; a JSON list of lists; a NumPy `y` of shape
    /// `(N, T)` or `(N, T, K)`).
    PerStep(Vec<Vec<LabelValue>>),
}

/// One sequence as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSequence {
    /// The id column or JSON `id` field, if the file has one.
    pub id: Option<String>,
    /// The inputs, `(len, D)` row-major.
    pub x: Vec<f32>,
    /// Steps, at least 1.
    pub len: usize,
    /// Features per step D.
    pub features: usize,
    /// The labels, when the file has them.
    pub label: Option<Label>,
    /// 1-based line of the sequence's first row (text formats).
    pub line: Option<usize>,
    /// 0-based position of the sequence in the file.
    pub index: usize,
}

/// How to read a file: the options of [`crate::config::CustomConfig`] that concern reading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadOptions {
    /// CSV: how rows make sequences; `None`: long with an id column, `series` when `series` is set, wide otherwise.
    pub layout: Option<CsvLayout>,
    /// CSV: whether the first line names the columns; `None`: detected (a field of text above a number).
    pub header: Option<bool>,
    /// CSV: feature columns (names, or 1-based numbers); empty: every column that is not the id, a label or time.
    pub x_columns: Vec<String>,
    /// CSV: label (or forecast target) columns; empty: a column named label, y, target or class, else the first
    /// (wide) or last (long) column; a series without one predicts every feature column.
    pub y_columns: Vec<String>,
    /// CSV: the sequence id column of the long layout; `None`: a column named id, sequence_id, series_id or sequence.
    pub id_column: Option<String>,
    /// The data is one long series (forecast): CSV rows and NumPy `(T, D)` arrays are its steps.
    pub series: bool,
    /// Whether labels must be present (training) or may be absent (predictions).
    pub labels_required: bool,
    /// Features per step the data must have (a checkpoint's); `None`: whatever the first sequence has.
    pub features: Option<usize>,
}

/// Column names treated as a time axis (excluded from the default features of the long and series layouts).
const TIME_COLUMNS: &[&str] = &["time", "timestamp", "date", "datetime", "step", "t", "day", "week", "month", "year", "index"];
/// Column names taken as the label when none is named.
const LABEL_COLUMNS: &[&str] = &["label", "y", "target", "class"];
/// Column names taken as the sequence id when none is named.
const ID_COLUMNS: &[&str] = &["id", "sequence_id", "series_id", "sequence", "seq_id"];

/// What a CSV reader resolved about the file's columns (reported in the run header and stored in the checkpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvColumns {
    /// The layout in effect.
    pub layout: CsvLayout,
    /// Whether the first line was a header.
    pub header: bool,
    /// The feature columns: 0-based index and name (the 1-based number without a header).
    pub x: Vec<(usize, String)>,
    /// The label (target) columns present in the file.
    pub y: Vec<(usize, String)>,
    /// The id column (long layout).
    pub id: Option<(usize, String)>,
    /// Number of fields of every row (wide rows may end early in empty fields).
    pub width: usize,
}

/// A byte source that can be opened more than once: a file, or bytes in memory (tests, fuzzing).
#[derive(Clone, Debug)]
pub enum Input {
    /// A file on disk.
    File(PathBuf),
    /// Bytes in memory, with the name to report in errors.
    Bytes {
        /// The name errors give.
        name: PathBuf,
        /// The content.
        bytes: Arc<[u8]>,
    },
}

/// Readable and seekable, for the NumPy archive.
trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

impl Input {
    /// The file name errors give.
    pub fn path(&self) -> &Path {
        match self {
            Input::File(p) => p,
            Input::Bytes { name, .. } => name,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> Result<u64> {
        match self {
            Input::File(p) => std::fs::metadata(p).map(|m| m.len()).map_err(|e| open_error(p, &e)),
            Input::Bytes { bytes, .. } => Ok(bytes.len() as u64),
        }
    }

    /// Whether the input has no bytes.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    fn open(&self) -> Result<Box<dyn ReadSeek>> {
        match self {
            Input::File(p) => Ok(Box::new(File::open(p).map_err(|e| open_error(p, &e))?)),
            Input::Bytes { bytes, .. } => Ok(Box::new(std::io::Cursor::new(Arc::clone(bytes)))),
        }
    }

    fn gzipped(&self) -> bool {
        self.path().extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
    }
}

fn open_error(path: &Path, e: &std::io::Error) -> Error {
    data_error(path, None, format!("cannot open: {e}"))
}

/// Counts the bytes read through it into a shared counter (the progress of a streaming read).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A streaming reader of sequences from one file; see the module docs.
pub struct SequenceReader {
    path: PathBuf,
    kind: ReaderKind,
    /// Bytes of the file read so far (compressed bytes for `.gz`), for progress bars.
    progress: Arc<AtomicU64>,
    /// Size of the file in bytes.
    total: u64,
    /// Sequences yielded so far.
    yielded: usize,
    /// Set after an error: the reader yields nothing more.
    failed: bool,
}

enum ReaderKind {
    Csv(Box<CsvReader>),
    Jsonl(Box<JsonlReader>),
    Numpy(Box<NumpyReader>),
}

impl SequenceReader {
    /// Opens `input` in `format` with `options`. Reads the header (CSV: the first line and the columns; NumPy: the
    /// array headers), so that a missing column, a wrong shape or an empty file is reported here.
    pub fn open(input: &Input, format: DataFormat, options: &ReadOptions) -> Result<SequenceReader> {
        let path = input.path().to_path_buf();
        let progress = Arc::new(AtomicU64::new(0));
        let total = input.len()?;
        if total == 0 {
            return Err(data_error(&path, None, "the file is empty"));
        }
        let text_source = || -> Result<Box<dyn BufRead + Send>> {
            let raw = Counting { inner: input.open()?, count: Arc::clone(&progress) };
            Ok(if input.gzipped() { Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(raw))) } else { Box::new(BufReader::new(raw)) })
        };
        let kind = match format {
            DataFormat::Csv => {
                let tabs = path.to_string_lossy().to_ascii_lowercase().trim_end_matches(".gz").ends_with(".tsv");
                ReaderKind::Csv(Box::new(CsvReader::new(text_source()?, &path, if tabs { b'\t' } else { b',' }, options)?))
            }
            DataFormat::Jsonl => ReaderKind::Jsonl(Box::new(JsonlReader {
                lines: text_source()?,
                path: path.clone(),
                line: 0,
                options: options.clone(),
                features: options.features,
            })),
            DataFormat::Npy | DataFormat::Npz => ReaderKind::Numpy(Box::new(NumpyReader::new(input, format, options, Arc::clone(&progress))?)),
        };
        Ok(SequenceReader { path, kind, progress, total, yielded: 0, failed: false })
    }

    /// The resolved columns of a CSV file; `None` for the other formats.
    pub fn csv_columns(&self) -> Option<&CsvColumns> {
        match &self.kind {
            ReaderKind::Csv(r) => Some(&r.columns),
            _ => None,
        }
    }

    /// `(bytes read, file size)`: how far the reader is through the file.
    pub fn position(&self) -> (u64, u64) {
        (self.progress.load(Ordering::Relaxed).min(self.total), self.total)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of sequences the file holds, when its header says (NumPy); `None` for the text formats.
    pub fn count_hint(&self) -> Option<usize> {
        match &self.kind {
            ReaderKind::Numpy(r) => Some(r.n),
            _ => None,
        }
    }
}

impl Iterator for SequenceReader {
    type Item = Result<RawSequence>;

    fn next(&mut self) -> Option<Result<RawSequence>> {
        if self.failed {
            return None;
        }
        let item = match &mut self.kind {
            ReaderKind::Csv(r) => r.next_sequence(),
            ReaderKind::Jsonl(r) => r.next_sequence(),
            ReaderKind::Numpy(r) => r.next_sequence(),
        };
        match item {
            Ok(Some(mut seq)) => {
                seq.index = self.yielded;
                self.yielded += 1;
                Some(Ok(seq))
            }
            Ok(None) => {
                if self.yielded == 0 {
                    self.failed = true;
                    return Some(Err(data_error(&self.path, None, "no sequences: the file holds no data rows")));
                }
                None
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// A finite f32 from a text field, or an error naming the line and column.
fn parse_value(field: &str, path: &Path, line: usize, column: &(usize, String)) -> Result<f32> {
    let at = || format!("column {} ('{}')", column.0 + 1, column.1);
    match field.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(data_error(path, Some(line), format!("{}: {v} is not a finite number (NaN and infinities are not data)", at()))),
        Err(_) if field.is_empty() => Err(data_error(path, Some(line), format!("{}: empty field where a number is needed", at()))),
        Err(_) => Err(data_error(path, Some(line), format!("{}: '{field}' is not a number", at()))),
    }
}

/// A label field, or an error naming the line and column (NaN, infinities and empty fields are not labels).
fn parse_label(field: &str, path: &Path, line: usize, column: &(usize, String)) -> Result<LabelValue> {
    if field.is_empty() {
        return Err(data_error(path, Some(line), format!("column {} ('{}'): empty label", column.0 + 1, column.1)));
    }
    LabelValue::from_field(field)
        .ok_or_else(|| data_error(path, Some(line), format!("column {} ('{}'): label '{field}' is not a finite number", column.0 + 1, column.1)))
}

// ----------------------------------------------------------------------------------------------------------------
// CSV

struct CsvReader {
    records: csv::Reader<Box<dyn BufRead + Send>>,
    path: PathBuf,
    columns: CsvColumns,
    labels_required: bool,
    /// Records read ahead with their lines: the first two lines (header detection), or the row that started the
    /// next sequence of the long layout.
    pending: std::collections::VecDeque<(csv::StringRecord, usize)>,
    /// Long layout: ids of the sequences already yielded (a returning id is an error).
    seen: HashSet<String>,
}

/// Finds a column by name (case-insensitive with a header) or 1-based number.
fn find_column(spec: &str, names: &[String], what: &str, path: &Path) -> Result<(usize, String)> {
    if let Some(i) = names.iter().position(|n| n == spec).or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(spec))) {
        return Ok((i, names[i].clone()));
    }
    match spec.parse::<usize>() {
        Ok(n) if (1..=names.len()).contains(&n) => Ok((n - 1, names[n - 1].clone())),
        _ => Err(Error::Data {
            path: path.to_path_buf(),
            line: Some(1),
            msg: format!("no {what} column '{spec}': the columns are {} (names, or numbers 1..={})", names.join(", "), names.len()),
        }),
    }
}

fn find_named(names: &[String], candidates: &[&str]) -> Option<(usize, String)> {
    candidates.iter().find_map(|c| names.iter().position(|n| n.eq_ignore_ascii_case(c)).map(|i| (i, names[i].clone())))
}

impl CsvReader {
    fn new(source: Box<dyn BufRead + Send>, path: &Path, delimiter: u8, options: &ReadOptions) -> Result<CsvReader> {
        let mut records =
            csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).comment(Some(b'#')).delimiter(delimiter).from_reader(source);
        let mut first = csv::StringRecord::new();
        let got = records.read_record(&mut first).map_err(|e| csv_error(path, &e))?;
        if !got {
            return Err(data_error(path, None, "no rows: the file is empty (or only comments)"));
        }
        let first_line = first.position().map_or(1, |p| p.line() as usize);
        let mut second = csv::StringRecord::new();
        let has_second = records.read_record(&mut second).map_err(|e| csv_error(path, &e))?;
        let second_line = second.position().map_or(first_line + 1, |p| p.line() as usize);
        // A header names a column that holds numbers below it; a lone first line is a header if it holds text.
        let is_number = |f: &str| f.parse::<f64>().is_ok();
        let header = options.header.unwrap_or_else(|| {
            if has_second && second.len() == first.len() {
                first.iter().zip(second.iter()).any(|(a, b)| !a.is_empty() && !is_number(a) && is_number(b))
            } else {
                first.iter().any(|f| !f.is_empty() && !is_number(f))
            }
        });
        let width = first.len();
        let names: Vec<String> = if header { first.iter().map(str::to_string).collect() } else { (1..=width).map(|i| i.to_string()).collect() };
        if header {
            let mut seen = HashSet::new();
            if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(data_error(path, Some(first_line), format!("the header names column '{dup}' twice")));
            }
        }
        let id = match &options.id_column {
            Some(spec) => Some(find_column(spec, &names, "id", path)?),
            None if header && options.layout != Some(CsvLayout::Wide) && !options.series => find_named(&names, ID_COLUMNS),
            None => None,
        };
        let layout = options.layout.unwrap_or(if id.is_some() {
            CsvLayout::Long
        } else if options.series {
            CsvLayout::Series
        } else {
            CsvLayout::Wide
        });
        if layout == CsvLayout::Long && id.is_none() {
            return Err(data_error(path, Some(first_line), "the long layout needs an id column naming each row's sequence: --id-column NAME"));
        }
        let mut y = Vec::new();
        for spec in &options.y_columns {
            match find_column(spec, &names, "label", path) {
                Ok(c) => y.push(c),
                // Predictions: the label columns may be absent.
                Err(_) if !options.labels_required && header => {}
                Err(e) => return Err(e),
            }
        }
        if options.y_columns.is_empty() {
            let named = if header { find_named(&names, LABEL_COLUMNS) } else { None };
            match (named, layout) {
                (Some(c), _) => y.push(c),
                (None, CsvLayout::Wide) => y.push((0, names[0].clone())),
                (None, CsvLayout::Long) => y.push((width - 1, names[width - 1].clone())),
                (None, CsvLayout::Series) => {} // every feature column is a target
            }
        }
        let time = if header && layout != CsvLayout::Wide { find_named(&names, TIME_COLUMNS) } else { None };
        let x: Vec<(usize, String)> = if options.x_columns.is_empty() {
            (0..width)
                .filter(|&i| id.as_ref().is_none_or(|c| c.0 != i) && time.as_ref().is_none_or(|c| c.0 != i))
                // A series' targets are features too (its past values predict its future).
                .filter(|&i| layout == CsvLayout::Series || !y.iter().any(|c| c.0 == i))
                .map(|i| (i, names[i].clone()))
                .collect()
        } else {
            options.x_columns.iter().map(|spec| find_column(spec, &names, "feature", path)).collect::<Result<_>>()?
        };
        if x.is_empty() {
            return Err(data_error(path, Some(first_line), format!("no feature columns left (columns: {}); name them with --x-columns", names.join(", "))));
        }
        if let Some(clash) = x.iter().find(|c| y.contains(c) && layout != CsvLayout::Series || id.as_ref() == Some(c)) {
            return Err(data_error(path, Some(first_line), format!("column '{}' cannot be both a feature and the label or id", clash.1)));
        }
        if layout == CsvLayout::Series && options.y_columns.is_empty() {
            y = x.clone();
        }
        if let (CsvLayout::Wide, Some(d)) = (layout, options.features) {
            if d != 1 {
                return Err(data_error(path, Some(first_line), format!("a wide CSV has one feature per step, the model reads {d}")));
            }
        }
        if let (CsvLayout::Long | CsvLayout::Series, Some(d)) = (layout, options.features) {
            if d != x.len() {
                return Err(data_error(
                    path,
                    Some(first_line),
                    format!(
                        "{} feature columns ({}), but the model reads {d} features per step",
                        x.len(),
                        x.iter().map(|c| c.1.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        let columns = CsvColumns { layout, header, x, y, id, width };
        let mut pending = std::collections::VecDeque::new();
        if !header {
            pending.push_back((first, first_line));
        }
        if has_second {
            pending.push_back((second, second_line));
        }
        Ok(CsvReader { records, path: path.to_path_buf(), columns, labels_required: options.labels_required, pending, seen: HashSet::new() })
    }

    /// The next record with its 1-based line, checked to have the header's width.
    fn next_record(&mut self) -> Result<Option<(csv::StringRecord, usize)>> {
        loop {
            let (record, line) = match self.pending.pop_front() {
                Some(r) => r,
                None => {
                    let mut record = csv::StringRecord::new();
                    if !self.records.read_record(&mut record).map_err(|e| csv_error(&self.path, &e))? {
                        return Ok(None);
                    }
                    let line = record.position().map_or(0, |p| p.line() as usize);
                    (record, line)
                }
            };
            if record.len() == self.columns.width {
                return Ok(Some((record, line)));
            }
            if !(record.len() == 1 && record.get(0) == Some("")) {
                return Err(data_error(
                    &self.path,
                    Some(line),
                    format!("expected {} comma-separated fields (as the first line), found {}", self.columns.width, record.len()),
                ));
            }
            // A blank line: skip it.
        }
    }

    fn labels_of(&self, record: &csv::StringRecord, line: usize) -> Result<Option<Vec<LabelValue>>> {
        if self.columns.y.is_empty() || (!self.labels_required && self.columns.y.iter().all(|c| record[c.0].is_empty())) {
            return Ok(None);
        }
        self.columns.y.iter().map(|c| parse_label(&record[c.0], &self.path, line, c)).collect::<Result<Vec<_>>>().map(Some)
    }

    fn step_of(&self, record: &csv::StringRecord, line: usize, x: &mut Vec<f32>) -> Result<()> {
        for c in &self.columns.x {
            x.push(parse_value(&record[c.0], &self.path, line, c)?);
        }
        Ok(())
    }

    fn next_sequence(&mut self) -> Result<Option<RawSequence>> {
        let Some((record, line)) = self.next_record()? else { return Ok(None) };
        match self.columns.layout {
            CsvLayout::Wide => {
                // The steps are the feature columns in order; trailing empty fields end a shorter sequence.
                let mut x = Vec::with_capacity(self.columns.x.len());
                let mut ended: Option<&(usize, String)> = None;
                for c in &self.columns.x {
                    let field = &record[c.0];
                    match (field.is_empty(), ended) {
                        (true, None) => ended = Some(c),
                        (true, Some(_)) => {}
                        (false, Some(gap)) => {
                            return Err(data_error(
                                &self.path,
                                Some(line),
                                format!(
                                    "column {} ('{}') is empty but column {} after it is not: a sequence may only end early in trailing empty fields",
                                    gap.0 + 1,
                                    gap.1,
                                    c.0 + 1
                                ),
                            ));
                        }
                        (false, None) => x.push(parse_value(field, &self.path, line, c)?),
                    }
                }
                if x.is_empty() {
                    return Err(data_error(&self.path, Some(line), "the row has no steps (every feature field is empty)"));
                }
                let label = self.labels_of(&record, line)?.map(Label::Once);
                Ok(Some(RawSequence { id: None, len: x.len(), x, features: 1, label, line: Some(line), index: 0 }))
            }
            CsvLayout::Series => {
                let mut x = Vec::with_capacity(self.columns.x.len());
                self.step_of(&record, line, &mut x)?;
                let label = self.labels_of(&record, line)?.map(|v| Label::PerStep(vec![v]));
                Ok(Some(RawSequence { id: None, x, len: 1, features: self.columns.x.len(), label, line: Some(line), index: 0 }))
            }
            CsvLayout::Long => {
                let id_col = self.columns.id.clone().expect("the long layout has an id column");
                let id = record[id_col.0].to_string();
                if id.is_empty() {
                    return Err(data_error(&self.path, Some(line), format!("column {} ('{}'): empty sequence id", id_col.0 + 1, id_col.1)));
                }
                if !self.seen.insert(id.clone()) {
                    return Err(data_error(
                        &self.path,
                        Some(line),
                        format!("sequence '{id}' continues after other sequences: the rows of one sequence must be together (sort the file by {})", id_col.1),
                    ));
                }
                let (mut x, mut labels) = (Vec::new(), Vec::new());
                let mut next = Some((record, line));
                let mut len = 0;
                while let Some((record, row_line)) = next {
                    if record[id_col.0] != *id {
                        self.pending.push_front((record, row_line));
                        break;
                    }
                    self.step_of(&record, row_line, &mut x)?;
                    labels.push(self.labels_of(&record, row_line)?);
                    len += 1;
                    next = self.next_record()?;
                }
                let label = if labels.iter().all(Option::is_some) {
                    Some(Label::PerStep(labels.into_iter().flatten().collect()))
                } else if labels.iter().all(Option::is_none) {
                    None
                } else {
                    return Err(data_error(&self.path, Some(line), format!("sequence '{id}' has labels on some rows and not on others")));
                };
                Ok(Some(RawSequence { id: Some(id), x, len, features: self.columns.x.len(), label, line: Some(line), index: 0 }))
            }
        }
    }
}

fn csv_error(path: &Path, e: &csv::Error) -> Error {
    let line = e.position().map(|p| p.line() as usize);
    let msg = match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not valid UTF-8 text", err.field() + 1),
        csv::ErrorKind::Io(io) => format!("cannot read: {io}"),
        _ => e.to_string(),
    };
    data_error(path, line, msg)
}

// ----------------------------------------------------------------------------------------------------------------
// JSON Lines

struct JsonlReader {
    lines: Box<dyn BufRead + Send>,
    path: PathBuf,
    /// 1-based number of the last line read.
    line: usize,
    options: ReadOptions,
    /// Features per step of the sequences so far (all must agree).
    features: Option<usize>,
}

impl JsonlReader {
    fn err(&self, msg: impl Into<String>) -> Error {
        data_error(&self.path, Some(self.line), msg)
    }

    fn next_sequence(&mut self) -> Result<Option<RawSequence>> {
        let mut text = String::new();
        loop {
            text.clear();
            let n = self.lines.read_line(&mut text).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => data_error(&self.path, Some(self.line + 1), "not valid UTF-8 text"),
                _ => data_error(&self.path, Some(self.line + 1), format!("cannot read: {e}")),
            })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if !text.trim().is_empty() {
                break;
            }
        }
        let value: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| self.err(format!("column {}: not valid JSON: {e}", e.column())))?;
        let serde_json::Value::Object(mut object) = value else {
            return Err(self.err("expected a JSON object {\"x\": [...], \"y\": ...}"));
        };
        let x = object.remove("x").ok_or_else(|| self.err("no field \"x\" (the sequence: a list of steps)"))?;
        let serde_json::Value::Array(steps) = x else {
            return Err(self.err("field \"x\" must be a list of steps (numbers, or lists of numbers)"));
        };
        if steps.is_empty() {
            return Err(self.err("field \"x\" is an empty list: a sequence needs at least one step"));
        }
        let mut values = Vec::new();
        let mut width = None;
        for (t, step) in steps.iter().enumerate() {
            let before = values.len();
            match step {
                serde_json::Value::Array(features) => {
                    for (j, v) in features.iter().enumerate() {
                        values.push(self.number(v, &format!("x[{t}][{j}]"))?);
                    }
                }
                v => values.push(self.number(v, &format!("x[{t}]"))?),
            }
            let w = values.len() - before;
            match width {
                None => width = Some(w),
                Some(d) if d != w => return Err(self.err(format!("x[{t}] has {w} features, x[0] has {d}: every step needs the same number"))),
                Some(_) => {}
            }
        }
        let d = width.unwrap_or(0);
        if d == 0 {
            return Err(self.err("x[0] has no features"));
        }
        match self.features {
            Some(want) if want != d => {
                let whose = if self.options.features.is_some() { "the model reads" } else { "the earlier sequences have" };
                return Err(self.err(format!("x has {d} features per step, {whose} {want}")));
            }
            _ => self.features = Some(d),
        }
        let label = match object.remove("y") {
            None | Some(serde_json::Value::Null) => {
                if self.options.labels_required {
                    return Err(self.err("no field \"y\" (the label)"));
                }
                None
            }
            Some(serde_json::Value::Array(items)) => {
                if items.iter().all(|v| v.is_array()) && !items.is_empty() {
                    let rows = items
                        .iter()
                        .enumerate()
                        .map(|(t, row)| {
                            row.as_array().into_iter().flatten().enumerate().map(|(k, v)| self.label(v, &format!("y[{t}][{k}]"))).collect::<Result<Vec<_>>>()
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Some(Label::PerStep(rows))
                } else {
                    Some(Label::List(items.iter().enumerate().map(|(k, v)| self.label(v, &format!("y[{k}]"))).collect::<Result<_>>()?))
                }
            }
            Some(v) => Some(Label::Once(vec![self.label(&v, "y")?])),
        };
        let id = match object.remove("id") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        };
        Ok(Some(RawSequence { id, x: values, len: steps.len(), features: d, label, line: Some(self.line), index: 0 }))
    }

    fn number(&self, v: &serde_json::Value, at: &str) -> Result<f32> {
        match v.as_f64() {
            Some(f) if (f as f32).is_finite() => Ok(f as f32),
            Some(f) => Err(self.err(format!("{at}: {f} does not fit a 32-bit float"))),
            None => Err(self.err(format!("{at}: expected a number, found {v}"))),
        }
    }

    fn label(&self, v: &serde_json::Value, at: &str) -> Result<LabelValue> {
        match v {
            serde_json::Value::Number(n) => Ok(match n.as_i64() {
                Some(i) => LabelValue::Int(i),
                None => LabelValue::Real(n.as_f64().filter(|f| f.is_finite()).ok_or_else(|| self.err(format!("{at}: {n} is not a finite number")))?),
            }),
            serde_json::Value::String(s) if !s.is_empty() => Ok(LabelValue::Text(s.clone())),
            serde_json::Value::Bool(b) => Ok(LabelValue::Text(b.to_string())),
            other => Err(self.err(format!("{at}: expected a label (a number or a non-empty string), found {other}"))),
        }
    }
}

// ----------------------------------------------------------------------------------------------------------------
// NumPy

/// Elements of one NumPy array as f64, streamed.
type Elements = Box<dyn Iterator<Item = std::io::Result<f64>> + Send>;

/// One array of an `.npy` file or `.npz` archive, positioned at its first element.
struct Array {
    name: String,
    shape: Vec<usize>,
    /// Whether the dtype is an integer (or boolean) type.
    integer: bool,
    elements: Elements,
    /// Elements read so far.
    read: u64,
}

impl Array {
    /// Opens the array stored in `input` (the whole `.npy` file, or the archive entry `name` of an `.npz`).
    fn open(input: &Input, format: DataFormat, name: &str, progress: Option<Arc<AtomicU64>>) -> Result<Option<Array>> {
        let path = input.path();
        // Bytes the array's header and data can occupy: the file, or the archive entry's uncompressed size.
        let mut available = input.len()?;
        let raw: Box<dyn Read + Send> = match format {
            DataFormat::Npz => {
                let mut archive = zip::ZipArchive::new(input.open()?).map_err(|e| data_error(path, None, format!("not a valid .npz (zip) archive: {e}")))?;
                let entry = match archive.by_name(&format!("{name}.npy")) {
                    Ok(entry) => entry,
                    Err(zip::result::ZipError::FileNotFound) => return Ok(None),
                    Err(e) => return Err(data_error(path, None, format!("array '{name}': {e}"))),
                };
                let (start, size, method) = (entry.data_start(), entry.compressed_size(), entry.compression());
                available = entry.size();
                drop(entry);
                // Reopen the file at the entry's data, so the stream owns its reader (no borrow of the archive).
                let mut file = input.open()?;
                file.seek(SeekFrom::Start(start)).map_err(|e| data_error(path, None, format!("array '{name}': {e}")))?;
                let body = file.take(size);
                match method {
                    zip::CompressionMethod::Stored => Box::new(body),
                    zip::CompressionMethod::Deflated => Box::new(flate2::read::DeflateDecoder::new(body)),
                    other => {
                        return Err(data_error(path, None, format!("array '{name}' is compressed with {other:?}; numpy writes stored or deflated entries")))
                    }
                }
            }
            _ => Box::new(input.open()?),
        };
        let raw: Box<dyn Read + Send> = match progress {
            Some(count) => Box::new(Counting { inner: raw, count }),
            None => raw,
        };
        let file = npyz::NpyFile::new(BufReader::new(raw)).map_err(|e| data_error(path, None, format!("array '{name}': not a valid .npy header: {e}")))?;
        if file.order() == npyz::Order::Fortran {
            return Err(data_error(path, None, format!("array '{name}' is in Fortran order; save it in C order (np.ascontiguousarray)")));
        }
        let shape: Vec<usize> = file.shape().iter().map(|&s| usize::try_from(s).unwrap_or(usize::MAX)).collect();
        let dtype = file.dtype();
        // A header may claim any shape: check it against the bytes there are before reading (or allocating) anything.
        let item = dtype.num_bytes().unwrap_or(1) as u64;
        let need = shape.iter().try_fold(item, |n, &s| n.checked_mul(s as u64));
        if need.is_none_or(|n| n > available) {
            return Err(data_error(
                path,
                None,
                format!("array '{name}' claims shape {shape:?} of {}-byte elements, more data than the {available} bytes it has (truncated or corrupt)", item),
            ));
        }
        let type_char = match &dtype {
            npyz::DType::Plain(ts) => Some(ts.type_char()),
            _ => None,
        };
        let integer = matches!(type_char, Some(npyz::TypeChar::Int | npyz::TypeChar::Uint | npyz::TypeChar::Bool));
        let elements = numeric_elements(file)
            .map_err(|_| data_error(path, None, format!("array '{name}' has dtype {}; effseq reads integer, boolean and float arrays", dtype.descr())))?;
        Ok(Some(Array { name: name.to_string(), shape, integer, elements, read: 0 }))
    }

    /// The next `n` elements.
    fn take(&mut self, n: usize, path: &Path) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match self.elements.next() {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) => return Err(data_error(path, None, format!("array '{}' is truncated after {} elements: {e}", self.name, self.read))),
                None => return Err(data_error(path, None, format!("array '{}' is truncated after {} elements", self.name, self.read))),
            }
            self.read += 1;
        }
        Ok(out)
    }
}

/// The elements of `file` as f64, whatever its numeric dtype.
fn numeric_elements<R: Read + Send + 'static>(file: npyz::NpyFile<R>) -> std::result::Result<Elements, ()> {
    macro_rules! try_types {
        ($file:expr, $($t:ty),*) => {{
            let file = $file;
            $(
                let file = match file.try_data::<$t>() {
                    Ok(reader) => return Ok(Box::new(reader.map(|v| v.map(|v| v as f64)))),
                    Err(file) => file,
                };
            )*
            match file.try_data::<bool>() {
                Ok(reader) => return Ok(Box::new(reader.map(|v| v.map(|v| if v { 1.0 } else { 0.0 })))),
                Err(_) => Err(()),
            }
        }};
    }
    try_types!(file, f64, f32, i64, i32, i16, i8, u64, u32, u16, u8)
}

struct NumpyReader {
    path: PathBuf,
    x: Array,
    y: Option<Array>,
    lengths: Option<Vec<usize>>,
    /// Sequences N (a series: its steps).
    n: usize,
    /// Steps per (padded) sequence T (a series: 1 per step).
    t: usize,
    /// Features per step D.
    d: usize,
    /// Values per label record K, and whether `y` has a time axis.
    y_width: usize,
    y_per_step: bool,
    next: usize,
}

impl NumpyReader {
    fn new(input: &Input, format: DataFormat, options: &ReadOptions, progress: Arc<AtomicU64>) -> Result<NumpyReader> {
        let path = input.path().to_path_buf();
        let x = Array::open(input, format, "x", Some(progress))?
            .ok_or_else(|| data_error(&path, None, "the archive has no array 'x' (save it with np.savez(file, x=..., y=...))"))?;
        let (n, t, d) = match (x.shape.as_slice(), options.series) {
            ([steps], true) => (*steps, 1, 1),
            ([steps, d], true) => (*steps, 1, *d),
            ([n, t], false) => (*n, *t, 1),
            ([n, t, d], false) => (*n, *t, *d),
            (shape, series) => {
                let want = if series { "(T,) or (T, D) for a series" } else { "(N, T) or (N, T, D)" };
                return Err(data_error(&path, None, format!("array 'x' has shape {shape:?}, expected {want}")));
            }
        };
        if n == 0 || t == 0 || d == 0 {
            return Err(data_error(&path, None, format!("array 'x' of shape {:?} holds no data", x.shape)));
        }
        if let Some(want) = options.features.filter(|&f| f != d) {
            return Err(data_error(&path, None, format!("array 'x' has {d} features per step, the model reads {want}")));
        }
        let y = match format {
            DataFormat::Npz => Array::open(input, format, "y", None)?,
            _ => None,
        };
        if y.is_none() && options.labels_required && !options.series {
            return Err(data_error(&path, None, "no labels: training needs an .npz archive with the arrays 'x' and 'y'"));
        }
        let (y_width, y_per_step) = match y.as_ref().map(|a| a.shape.as_slice()) {
            None => (0, false),
            Some([m]) if *m == n => (1, false),
            Some([m, k]) if *m == n && options.series => (*k, false),
            Some([m, k]) if *m == n => (*k, *k == t),
            Some([m, tt, k]) if *m == n && *tt == t => (*k, true),
            Some(shape) => return Err(data_error(&path, None, format!("array 'y' has shape {shape:?}, which does not fit 'x' of shape {:?}", x.shape))),
        };
        let lengths = match format {
            DataFormat::Npz => match Array::open(input, format, "lengths", None)? {
                Some(mut a) => {
                    if a.shape != [n] || options.series {
                        return Err(data_error(&path, None, format!("array 'lengths' has shape {:?}, expected ({n},)", a.shape)));
                    }
                    let values = a.take(n, &path)?;
                    let lens = values
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            if v.fract() == 0.0 && v >= 1.0 && v <= t as f64 {
                                Ok(v as usize)
                            } else {
                                Err(data_error(&path, None, format!("lengths[{i}] = {v} is not a whole number of steps in 1..={t}")))
                            }
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Some(lens)
                }
                None => None,
            },
            _ => None,
        };
        Ok(NumpyReader { path, x, y, lengths, n, t, d, y_width, y_per_step, next: 0 })
    }

    fn next_sequence(&mut self) -> Result<Option<RawSequence>> {
        if self.next >= self.n {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        let (t, d) = (self.t, self.d);
        let values = self.x.take(t * d, &self.path)?;
        let len = self.lengths.as_ref().map_or(t, |l| l[i]);
        let mut x = Vec::with_capacity(len * d);
        for (k, &v) in values[..len * d].iter().enumerate() {
            let f = v as f32;
            if !f.is_finite() {
                let at = if self.x.shape.len() == 3 { format!("x[{i}, {}, {}]", k / d, k % d) } else { format!("x[{i}, {k}]") };
                return Err(data_error(
                    &self.path,
                    None,
                    format!("{at} = {v} is not a finite 32-bit number (NaN and infinities are not data; mark shorter sequences with an array 'lengths')"),
                ));
            }
            x.push(f);
        }
        let label = match &mut self.y {
            None => None,
            Some(y) => {
                let per_seq = if self.y_per_step && y.shape.len() == 3 { t * self.y_width } else { self.y_width };
                let raw = y.take(per_seq, &self.path)?;
                let integer = y.integer;
                let to_label = |k: usize, v: f64| -> Result<LabelValue> {
                    if !v.is_finite() {
                        return Err(data_error(&self.path, None, format!("y[{i}] element {k} = {v} is not a finite number")));
                    }
                    Ok(if integer { LabelValue::Int(v as i64) } else { LabelValue::Real(v) })
                };
                if self.y_per_step {
                    let k = if y.shape.len() == 3 { self.y_width } else { 1 };
                    let rows = raw[..len * k]
                        .chunks(k)
                        .enumerate()
                        .map(|(s, row)| row.iter().enumerate().map(|(j, &v)| to_label(s * k + j, v)).collect::<Result<Vec<_>>>())
                        .collect::<Result<Vec<_>>>()?;
                    Some(Label::PerStep(rows))
                } else if y.shape.len() == 1 {
                    Some(Label::Once(vec![to_label(0, raw[0])?]))
                } else {
                    Some(Label::List(raw.iter().enumerate().map(|(k, &v)| to_label(k, v)).collect::<Result<_>>()?))
                }
            }
        };
        // A series yields its steps one by one (like CSV rows), each step's targets as a per-step label.
        let label = match (label, t) {
            (Some(Label::List(v)), 1) => Some(Label::PerStep(vec![v])),
            (Some(Label::Once(v)), 1) => Some(Label::PerStep(vec![v])),
            (other, _) => other,
        };
        Ok(Some(RawSequence { id: None, x, len, features: d, label, line: None, index: i }))
    }
}

/// Reads every sequence of `input` (training and validation files).
pub fn read_all(input: &Input, format: DataFormat, options: &ReadOptions) -> Result<(Vec<RawSequence>, Option<CsvColumns>)> {
    let mut reader = SequenceReader::open(input, format, options)?;
    let mut out = Vec::new();
    for seq in reader.by_ref() {
        out.push(seq?);
    }
    Ok((out, reader.csv_columns().cloned()))
}

#[cfg(test)]
mod tests;
