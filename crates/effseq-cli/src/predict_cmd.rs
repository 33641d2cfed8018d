//! `effseq predict`: run a custom-task checkpoint over new data and write its predictions.
//!
//! The input is read incrementally ([`effseq::data::custom::SequenceReader`]) and predicted in batches, and every
//! batch's predictions are written before the next is read, so memory stays bounded whatever the file's size. The
//! output (CSV or JSON Lines, by the extension of `--out`; JSON Lines on stdout without it) is written to a
//! temporary name and renamed when complete, so a failure never leaves half a file under the real name.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use effseq::checkpoint;
use effseq::config::{CustomConfig, CustomKind, DataFormat, TaskKind};
use effseq::data::custom::{Input, Label, RawSequence, SequenceReader};
use effseq::model::Network;
use effseq::tasks::custom::{check_inputs, destandardise, encode_inputs, read_options};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::failure::{exit, CliError};

/// Arguments of `effseq predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint directory of a custom-task run (`effseq train --data ...`).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// The new data, in a format and layout the checkpoint reads (labels may be absent; when present, the accuracy
    /// or error is reported).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Where to write the predictions: .csv, or .jsonl / .json (JSON Lines) [default: JSON Lines on stdout].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The input's format, csv, jsonl, npy or npz [default: from the extension].
    #[arg(long, value_name = "FORMAT", value_parser = |s: &str| DataFormat::parse(s).map_err(|e| e.to_string()))]
    pub format: Option<DataFormat>,
    /// Sequences (forecast: windows) predicted at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub batch: usize,
}

/// How predictions are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFormat {
    Csv,
    Jsonl,
}

/// The last line of `effseq predict --json`.
#[derive(Serialize)]
struct PredictJson {
    checkpoint: String,
    data: String,
    out: Option<String>,
    kind: &'static str,
    predictions: usize,
    /// Accuracy (classes) or MSE on the original scale (values) where the data had labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    metric: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metric_name: Option<&'static str>,
    wall_time_s: f64,
}

/// Runs `effseq predict`.
pub fn run(args: &PredictArgs, json: bool) -> Result<(), CliError> {
    if args.batch == 0 {
        return Err(CliError::usage("--batch must be at least 1"));
    }
    let (config, mut network, _) = checkpoint::load_model(&args.checkpoint)?;
    let cfg = match (&config.task.custom, config.task.kind) {
        (Some(c), TaskKind::Custom) => c.clone(),
        _ => {
            return Err(CliError::usage(format!(
                "{} is a checkpoint of the {} task: predict reads new data for a custom-task checkpoint",
                args.checkpoint.display(),
                config.task.kind.name()
            ))
            .with_hint("`effseq eval --checkpoint DIR` scores a built-in task"));
        }
    };
    let kind = cfg.kind.unwrap_or(CustomKind::Classification);
    let format = args.format.or(cfg.format).or_else(|| DataFormat::from_path(&args.data)).ok_or_else(|| {
        CliError::usage(format!("cannot tell the format of {} from its extension", args.data.display()))
            .with_hint("name it .csv, .tsv, .jsonl, .npy or .npz, or pass --format")
    })?;
    let out_format = match &args.out {
        None => OutFormat::Jsonl,
        Some(p) => match p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).as_deref() {
            Some("csv") => OutFormat::Csv,
            Some("jsonl" | "json" | "ndjson") => OutFormat::Jsonl,
            _ => return Err(CliError::usage(format!("--out {}: name the file .csv or .jsonl", p.display()))),
        },
    };
    let started = Instant::now();
    let input = Input::File(args.data.clone());
    let reader = SequenceReader::open(&input, format, &read_options(&cfg, false))?;
    let bar = progress_bar(reader.position().1, json);
    let tmp = args.out.as_ref().map(|p| tmp_name(p));
    let sink: Box<dyn Write> = match &tmp {
        Some(path) => Box::new(File::create(path).map_err(|e| CliError::from(effseq::Error::io(path, e)))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer =
        Writer { out: BufWriter::new(sink), format: out_format, cfg: &cfg, horizon: config.task.horizon, header_done: false, scored: 0, hits: 0, sq: 0.0 };
    let result = if kind == CustomKind::Forecast {
        predict_series(reader, &mut network, &cfg, config.task.seq_len, args.batch, &mut writer, &bar)
    } else {
        predict_sequences(reader, &mut network, &cfg, args.batch, &mut writer, &bar)
    };
    let finished = result.and_then(|n| writer.out.flush().map(|_| n).map_err(|e| effseq::Error::io(tmp.clone().unwrap_or_else(|| "stdout".into()), e)));
    bar.finish_and_clear();
    let score = writer.score();
    drop(writer);
    let predictions = match finished {
        Ok(n) => n,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e.into());
        }
    };
    if let (Some(t), Some(out)) = (&tmp, &args.out) {
        std::fs::rename(t, out).map_err(|e| CliError::from(effseq::Error::io(out, e)))?;
    }
    let wall = started.elapsed().as_secs_f64();
    let where_to = args.out.as_ref().map_or("stdout".to_string(), |p| p.display().to_string());
    let noun = if kind == CustomKind::Forecast { "windows" } else { "sequences" };
    let scored =
        score.map(|(name, value, n)| format!("; {name} {value:.5} over the {n} labelled {}", if kind.per_step() { "steps" } else { noun })).unwrap_or_default();
    eprintln!("predicted {predictions} {noun} of {} in {wall:.2} s ({:.0}/s) -> {where_to}{scored}", args.data.display(), predictions as f64 / wall.max(1e-9));
    if json {
        let line = PredictJson {
            checkpoint: args.checkpoint.display().to_string(),
            data: args.data.display().to_string(),
            out: args.out.as_ref().map(|p| p.display().to_string()),
            kind: kind.name(),
            predictions,
            metric: score.map(|s| s.1),
            metric_name: score.map(|s| s.0),
            wall_time_s: wall,
        };
        let text = serde_json::to_string(&line).map_err(|e| CliError { message: format!("cannot write JSON: {e}"), hint: None, code: exit::OTHER })?;
        println!("{text}");
    }
    Ok(())
}

/// `FILE.tmp` next to `out`.
fn tmp_name(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    out.with_file_name(name)
}

/// A bar over the input's bytes on stderr, drawn only on a terminal (and not with `--json`).
fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:24}] {bytes}/{total_bytes}  {msg}  ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Sequence-level and tagging predictions: batches of sequences in file order.
fn predict_sequences(
    mut reader: SequenceReader,
    network: &mut Network,
    cfg: &CustomConfig,
    batch: usize,
    writer: &mut Writer<'_>,
    bar: &ProgressBar,
) -> effseq::Result<usize> {
    let path = reader.path().to_path_buf();
    let mut pending: Vec<RawSequence> = Vec::with_capacity(batch);
    let (mut done, mut finished) = (0, false);
    while !finished {
        match reader.next() {
            Some(seq) => {
                let seq = seq?;
                check_inputs(cfg, &seq, &path)?;
                pending.push(seq);
            }
            None => finished = true,
        }
        // Batches of `batch` sequences, or fewer long ones: about 32k steps per batch bounds the memory.
        let longest = pending.iter().map(|s| s.len).max().unwrap_or(0);
        let full = pending.len() >= batch || longest * pending.len() >= effseq::tasks::EVAL_STEPS_PER_BATCH;
        if !pending.is_empty() && (full || finished) {
            let (inputs, t, lengths) = encode_inputs(cfg, &pending);
            let outputs = network.predict_padded(&inputs, pending.len(), t, lengths.as_deref())?;
            writer.sequences(&pending, &outputs, t)?;
            done += pending.len();
            pending.clear();
            bar.set_position(reader.position().0);
            bar.set_message(format!("{done} sequences"));
        }
    }
    Ok(done)
}

/// Forecasts: every window of `window` consecutive rows of the series, from the first complete one to the last
/// (which forecasts past the end of the file). Only the last `window` rows are kept.
fn predict_series(
    mut reader: SequenceReader,
    network: &mut Network,
    cfg: &CustomConfig,
    window: usize,
    batch: usize,
    writer: &mut Writer<'_>,
    bar: &ProgressBar,
) -> effseq::Result<usize> {
    let path = reader.path().to_path_buf();
    let d = cfg.features;
    let mut recent: std::collections::VecDeque<f32> = std::collections::VecDeque::with_capacity(window * d); // (window, D)
    let (mut windows, mut starts) = (Vec::with_capacity(batch), Vec::with_capacity(batch));
    let (mut rows, mut done, mut finished) = (0usize, 0usize, false);
    while !finished {
        match reader.next() {
            Some(row) => {
                let row = row?;
                check_inputs(cfg, &row, &path)?;
                if recent.len() == window * d {
                    recent.drain(..d);
                }
                recent.extend(row.x.iter().copied());
                rows += 1;
                if recent.len() == window * d {
                    windows.push(RawSequence {
                        id: None,
                        x: recent.iter().copied().collect(),
                        len: window,
                        features: d,
                        label: None,
                        line: row.line,
                        index: done + windows.len(),
                    });
                    starts.push(rows);
                }
            }
            None => finished = true,
        }
        if !windows.is_empty() && (windows.len() == batch || finished) {
            let (inputs, t, _) = encode_inputs(cfg, &windows);
            let outputs = network.predict_padded(&inputs, windows.len(), t, None)?;
            writer.forecasts(&starts, &outputs)?;
            done += windows.len();
            windows.clear();
            starts.clear();
            bar.set_position(reader.position().0);
            bar.set_message(format!("{done} windows"));
        }
    }
    if done == 0 {
        return Err(effseq::Error::Data { path, line: None, msg: format!("the series has {rows} rows, fewer than the model's window of {window}") });
    }
    Ok(done)
}

/// Writes predictions as CSV or JSON Lines and scores them against the labels the input has.
struct Writer<'a> {
    out: BufWriter<Box<dyn Write>>,
    format: OutFormat,
    cfg: &'a CustomConfig,
    horizon: usize,
    header_done: bool,
    /// Labelled predictions (classes: counted, values: values) and, of them, the right classes or squared errors.
    scored: usize,
    hits: usize,
    sq: f64,
}

/// A CSV field, quoted when it needs to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Softmax of one row of logits.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

impl Writer<'_> {
    fn io(&mut self, text: String) -> effseq::Result<()> {
        self.out.write_all(text.as_bytes()).map_err(|e| effseq::Error::io("the predictions file", e))
    }

    /// Names of the real-valued targets.
    fn target_names(&self) -> Vec<String> {
        if self.cfg.target_names.len() == self.cfg.targets {
            self.cfg.target_names.clone()
        } else {
            (1..=self.cfg.targets).map(|k| format!("y{k}")).collect()
        }
    }

    fn header(&mut self, columns: &[String]) -> effseq::Result<()> {
        if self.format == OutFormat::Csv && !self.header_done {
            let line = columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
            self.io(format!("{line}\n"))?;
        }
        self.header_done = true;
        Ok(())
    }

    /// The predictions of a batch of sequences: `outputs` `(B, C)`, or `(B, T, C)` for tagging.
    fn sequences(&mut self, seqs: &[RawSequence], outputs: &[f32], t: usize) -> effseq::Result<()> {
        let cfg = self.cfg;
        let classes = !cfg.classes.is_empty();
        let per_step = cfg.kind.is_some_and(CustomKind::per_step);
        let c = if classes { cfg.classes.len() } else { cfg.targets };
        let probs: Vec<String> = cfg.classes.iter().map(|k| format!("p_{k}")).collect();
        let base = if per_step { vec!["index".to_string(), "id".into(), "step".into()] } else { vec!["index".to_string(), "id".into()] };
        let columns: Vec<String> =
            if classes { base.into_iter().chain(["label".to_string()]).chain(probs).collect() } else { base.into_iter().chain(self.target_names()).collect() };
        self.header(&columns)?;
        for (row, seq) in seqs.iter().enumerate() {
            let id = seq.id.clone().unwrap_or_default();
            let steps = if per_step { seq.len } else { 1 };
            let labels: Vec<Option<Vec<String>>> = (0..steps).map(|s| step_label(seq, s, per_step)).collect();
            let mut json_steps = Vec::new();
            for (s, label) in labels.iter().enumerate() {
                let o = if per_step { &outputs[(row * t + s) * c..(row * t + s + 1) * c] } else { &outputs[row * c..(row + 1) * c] };
                let step_col = if per_step { format!(",{s}") } else { String::new() };
                if classes {
                    let p = softmax(o);
                    let k = argmax(&p);
                    if let Some(truth) = label.as_ref().and_then(|l| l.first()) {
                        self.scored += 1;
                        self.hits += usize::from(*truth == cfg.classes[k]);
                    }
                    match self.format {
                        OutFormat::Csv => {
                            let ps: Vec<String> = p.iter().map(|v| format!("{v:.6}")).collect();
                            self.io(format!("{},{}{step_col},{},{}\n", seq.index, csv_field(&id), csv_field(&cfg.classes[k]), ps.join(",")))?;
                        }
                        OutFormat::Jsonl => {
                            let ps: Vec<String> = cfg.classes.iter().zip(&p).map(|(name, v)| format!("{}:{v:.6}", json_str(name))).collect();
                            json_steps.push(format!("{{\"label\":{},\"class\":{k},\"probabilities\":{{{}}}}}", json_str(&cfg.classes[k]), ps.join(",")));
                        }
                    }
                } else {
                    let values: Vec<f32> = o.iter().enumerate().map(|(j, &v)| destandardise(v, &cfg.y_mean, &cfg.y_std, j)).collect();
                    if let Some(truth) = label {
                        for (v, w) in values.iter().zip(truth) {
                            if let Ok(w) = w.parse::<f64>() {
                                self.scored += 1;
                                self.sq += (f64::from(*v) - w).powi(2);
                            }
                        }
                    }
                    let texts: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
                    match self.format {
                        OutFormat::Csv => self.io(format!("{},{}{step_col},{}\n", seq.index, csv_field(&id), texts.join(",")))?,
                        OutFormat::Jsonl => json_steps.push(if texts.len() == 1 { texts[0].clone() } else { format!("[{}]", texts.join(",")) }),
                    }
                }
            }
            if self.format == OutFormat::Jsonl {
                let id_field = seq.id.as_ref().map(|i| format!(",\"id\":{}", json_str(i))).unwrap_or_default();
                let body = if per_step {
                    format!("\"steps\":[{}]", json_steps.join(","))
                } else if classes {
                    json_steps[0][1..json_steps[0].len() - 1].to_string() // the step's fields without its braces
                } else {
                    format!("\"prediction\":{}", json_steps[0])
                };
                self.io(format!("{{\"index\":{}{id_field},{body}}}\n", seq.index))?;
            }
        }
        Ok(())
    }

    /// Forecasts: `outputs` `(B, horizon * K)`; `starts` the 0-based row each forecast begins at.
    fn forecasts(&mut self, starts: &[usize], outputs: &[f32]) -> effseq::Result<()> {
        let (k, h) = (self.cfg.targets, self.horizon);
        let names = self.target_names();
        let columns: Vec<String> = std::iter::once("step".to_string()).chain((1..=h).flat_map(|s| names.iter().map(move |n| format!("{n}+{s}")))).collect();
        self.header(&columns)?;
        for (w, &start) in starts.iter().enumerate() {
            let values: Vec<f32> =
                outputs[w * h * k..(w + 1) * h * k].iter().enumerate().map(|(i, &v)| destandardise(v, &self.cfg.y_mean, &self.cfg.y_std, i % k)).collect();
            match self.format {
                OutFormat::Csv => {
                    let texts: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                    self.io(format!("{start},{}\n", texts.join(",")))?;
                }
                OutFormat::Jsonl => {
                    let per_target: Vec<String> = names
                        .iter()
                        .enumerate()
                        .map(|(j, n)| format!("{}:[{}]", json_str(n), (0..h).map(|s| values[s * k + j].to_string()).collect::<Vec<_>>().join(",")))
                        .collect();
                    self.io(format!("{{\"step\":{start},\"forecast\":{{{}}}}}\n", per_target.join(",")))?;
                }
            }
        }
        Ok(())
    }

    /// `(metric, value, labelled predictions)` where the input had labels.
    fn score(&self) -> Option<(&'static str, f64, usize)> {
        if self.scored == 0 {
            return None;
        }
        Some(if self.cfg.classes.is_empty() {
            ("mse", self.sq / self.scored as f64, self.scored)
        } else {
            ("accuracy", self.hits as f64 / self.scored as f64, self.scored)
        })
    }
}

/// The label of step `s` (or of the sequence) as text, when the input has one.
fn step_label(seq: &RawSequence, s: usize, per_step: bool) -> Option<Vec<String>> {
    let text = |v: &effseq::data::custom::LabelValue| v.class_name();
    match (&seq.label, per_step) {
        (None, _) => None,
        (Some(Label::Once(v)), false) => Some(v.iter().map(text).collect()),
        (Some(Label::List(v)), false) => Some(v.iter().map(text).collect()),
        (Some(Label::PerStep(rows)), false) => rows.first().map(|r| r.iter().map(text).collect()),
        (Some(Label::PerStep(rows)), true) => rows.get(s).map(|r| r.iter().map(text).collect()),
        (Some(Label::List(v)), true) => v.get(s).map(|x| vec![text(x)]),
        (Some(Label::Once(_)), true) => None,
    }
}
