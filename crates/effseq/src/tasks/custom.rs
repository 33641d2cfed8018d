//! The user's own data (`--task custom`): sequence classification, sequence regression, per-step labelling
//! (tagging) and forecasting, from CSV, JSON Lines or NumPy files ([`crate::data::custom`]).
//!
//! When a run starts, [`Custom::prepare`] reads the training file and fills in what the
//! [`CustomConfig`] leaves open: the kind (from the labels), the columns, the features per step, the classes (sorted:
//! integers numerically, names alphabetically), the vocabulary of token inputs, and the mean and standard deviation
//! of every input feature and real-valued target over the training split. All of it is stored in the checkpoint's
//! `config.toml`, so evaluation and `effseq predict` read new data exactly as training did, without the training
//! file. Validation data is `valid`, or a seeded `valid_fraction` of the training sequences (forecast: the last
//! windows of the series); `test`, when given, is scored at the end.
//!
//! Sequences of different lengths are batched right-padded with their lengths, so every model reads exactly its
//! valid steps ([`crate::model::Network::forward_padded`]). Regression targets are learned on the standardised scale
//! and reported (MSE, MAE) on the original one.

use std::path::Path;

use crate::config::{CsvLayout, CustomConfig, CustomKind, DataFormat, TaskConfig};
use crate::data::custom::{read_all, CsvColumns, Input, Label, LabelValue, RawSequence, ReadOptions};
use crate::data::{data_error, shuffled_split, EpochSampler};
use crate::error::{check_len, Error, Result};
use crate::layers::loss;
use crate::rng::streams;
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo, IGNORE};

/// Stream tag of the seeded train/validation split.
pub const SPLIT_STREAM: u64 = 9 << 40;

/// Encoded sequences of one split.
#[derive(Clone, Debug, Default)]
struct Sequences {
    /// Every step of every sequence, `(sum of lengths, D)`: standardised features, or token ids.
    x: Vec<f32>,
    /// First step of each sequence in `x`, `(N)`.
    starts: Vec<usize>,
    /// Steps of each sequence, `(N)`.
    lens: Vec<usize>,
    /// Class ids: `(N)`, or `(sum of lengths)` for tagging.
    classes: Vec<i32>,
    /// Standardised values: `(N, K')`, or `(sum of lengths, K)` for tagging.
    values: Vec<f32>,
}

impl Sequences {
    fn len(&self) -> usize {
        self.lens.len()
    }
}

/// The custom task: the encoded splits and the resolved config.
#[derive(Clone, Debug)]
pub struct Custom {
    /// The resolved config (what the checkpoint stores).
    cfg: CustomConfig,
    /// Forecast: the window; otherwise the longest training sequence.
    seq_len: usize,
    /// Forecast: future steps per window.
    horizon: usize,
    seed: u64,
    train: Sequences,
    valid: Sequences,
    test: Option<Sequences>,
    sampler: EpochSampler,
    /// Forecast: for each target, the input feature it is (for the last-value baseline).
    target_features: Option<Vec<usize>>,
}

/// The reading options of a resolved or user config.
pub fn read_options(cfg: &CustomConfig, labels_required: bool) -> ReadOptions {
    ReadOptions {
        layout: cfg.layout,
        header: cfg.header,
        x_columns: cfg.x_columns.clone(),
        y_columns: cfg.y_columns.clone(),
        id_column: cfg.id_column.clone(),
        series: cfg.kind == Some(CustomKind::Forecast),
        labels_required,
        features: cfg.is_resolved().then_some(cfg.features),
    }
}

fn read_file(cfg: &CustomConfig, path: &Path) -> Result<(Vec<RawSequence>, Option<CsvColumns>)> {
    let format = cfg.format_of(path)?;
    read_all(&Input::File(path.to_path_buf()), format, &read_options(cfg, true))
}

/// Where a sequence came from, for messages: `file:line` or `file, sequence i`.
fn at(seq: &RawSequence) -> (Option<usize>, String) {
    (seq.line, if seq.line.is_some() { String::new() } else { format!("sequence {}: ", seq.index) })
}

impl Custom {
    /// Reads the files of `task.custom`, fills in every open field of it (and `task.seq_len`) from the training
    /// data, and returns the task. A config that is already resolved (a checkpoint's) is kept as it is and checked
    /// against the data instead.
    pub fn prepare(task: &mut TaskConfig, seed: u64) -> Result<Custom> {
        let mut cfg = task.custom.clone().ok_or_else(|| Error::config("the custom task needs a [task.custom] section (--data FILE)"))?;
        let resolved = cfg.is_resolved();
        let (train_raw, columns) = read_file(&cfg, &cfg.data.clone())?;
        if !resolved {
            resolve(&mut cfg, &train_raw, columns.as_ref())?;
        }
        let kind = cfg.kind.expect("resolved");
        let horizon = task.horizon;
        let (train, valid, target_features, seq_len) = if kind == CustomKind::Forecast {
            let window = task.seq_len;
            let series = encode_series(&cfg, &train_raw, &cfg.data)?;
            let needed = window + horizon + 1;
            if series.steps < needed {
                return Err(data_error(
                    &cfg.data,
                    None,
                    format!(
                        "the series has {} steps; a window of {window} and a horizon of {horizon} need at least {needed} (--seq-len sets the window)",
                        series.steps
                    ),
                ));
            }
            let starts: Vec<usize> = (0..=series.steps - window - horizon).collect();
            let (train_starts, valid_starts) = match &cfg.valid {
                Some(_) => (starts, Vec::new()),
                None => {
                    let n_valid = ((starts.len() as f32 * cfg.valid_fraction).round() as usize).clamp(1, starts.len() - 1);
                    let cut = starts.len() - n_valid;
                    (starts[..cut].to_vec(), starts[cut..].to_vec())
                }
            };
            let valid = match &cfg.valid {
                Some(path) => {
                    let (raw, _) = read_file(&cfg, path)?;
                    let s = encode_series(&cfg, &raw, path)?;
                    if s.steps < window + horizon {
                        return Err(data_error(
                            path,
                            None,
                            format!("the validation series has {} steps, fewer than the window plus horizon ({})", s.steps, window + horizon),
                        ));
                    }
                    s.windows(&(0..=s.steps - window - horizon).collect::<Vec<_>>(), window, horizon)
                }
                None => series.windows(&valid_starts, window, horizon),
            };
            let target_features = columns.as_ref().map_or_else(
                || (cfg.targets == cfg.features).then(|| (0..cfg.features).collect()),
                |c| c.y.iter().map(|y| c.x.iter().position(|x| x.0 == y.0)).collect::<Option<Vec<_>>>(),
            );
            (series.windows(&train_starts, window, horizon), valid, target_features, window)
        } else {
            let all = encode(&cfg, &train_raw, &cfg.data)?;
            let (train, valid) = match &cfg.valid {
                Some(path) => (all, encode(&cfg, &read_file(&cfg, path)?.0, path)?),
                None => {
                    let n = all.len();
                    if n < 2 {
                        return Err(data_error(&cfg.data, None, "one sequence cannot be split into training and validation data: give --valid FILE"));
                    }
                    let n_valid = ((n as f32 * cfg.valid_fraction).round() as usize).clamp(1, n - 1);
                    let (train_idx, valid_idx) = shuffled_split(n, n_valid, seed, SPLIT_STREAM)?;
                    (subset(&cfg, &all, &train_idx), subset(&cfg, &all, &valid_idx))
                }
            };
            let longest = train.lens.iter().copied().max().unwrap_or(1);
            (train, valid, None, longest)
        };
        if !resolved {
            fill_statistics(&mut cfg, &train);
        }
        let mut custom = Custom { cfg, seq_len, horizon, seed, train, valid, test: None, sampler: EpochSampler::new(1, seed, 0)?, target_features };
        custom.train = custom.standardise(custom.train.clone());
        custom.valid = custom.standardise(custom.valid.clone());
        if let Some(path) = custom.cfg.test.clone() {
            let test = if kind == CustomKind::Forecast {
                let s = encode_series(&custom.cfg, &read_file(&custom.cfg, &path)?.0, &path)?;
                if s.steps < seq_len + horizon {
                    return Err(data_error(
                        &path,
                        None,
                        format!("the test series has {} steps, fewer than the window plus horizon ({})", s.steps, seq_len + horizon),
                    ));
                }
                s.windows(&(0..=s.steps - seq_len - horizon).collect::<Vec<_>>(), seq_len, horizon)
            } else {
                encode(&custom.cfg, &read_file(&custom.cfg, &path)?.0, &path)?
            };
            custom.test = Some(custom.standardise(test));
        }
        if custom.train.len() == 0 || custom.valid.len() == 0 {
            return Err(data_error(&custom.cfg.data, None, "no training or no validation sequences"));
        }
        custom.sampler = EpochSampler::new(custom.train.len(), seed, streams::TRAIN_DATA)?;
        task.custom = Some(custom.cfg.clone());
        task.seq_len = seq_len;
        Ok(custom)
    }

    /// The task of an already resolved config (a checkpoint's), reading its files again.
    pub fn new(task: &TaskConfig, seed: u64) -> Result<Custom> {
        if !task.custom.as_ref().is_some_and(CustomConfig::is_resolved) {
            return Err(Error::config("the custom task's config is not resolved yet: start the run with Task::prepare (effseq train does)"));
        }
        let mut copy = task.clone();
        Custom::prepare(&mut copy, seed)
    }

    /// The resolved config.
    pub fn config(&self) -> &CustomConfig {
        &self.cfg
    }

    /// What the model reads and emits.
    pub fn io(&self) -> TaskIo {
        io_of(&self.cfg, self.horizon)
    }

    fn kind(&self) -> CustomKind {
        self.cfg.kind.expect("resolved")
    }

    /// Whether the targets are classes.
    fn classes(&self) -> bool {
        !self.cfg.classes.is_empty()
    }

    /// Name of the metric: accuracy (classes) or mse (original scale).
    pub fn metric_name(&self) -> &'static str {
        if self.classes() {
            "accuracy"
        } else {
            "mse"
        }
    }

    /// Whether a larger metric is better.
    pub fn higher_is_better(&self) -> bool {
        self.classes()
    }

    /// Forecast: the window; otherwise the longest training sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Sequences (forecast: windows) per split: training, validation, test.
    pub fn sizes(&self) -> (usize, usize, Option<usize>) {
        (self.train.len(), self.valid.len(), self.test.as_ref().map(Sequences::len))
    }

    /// Shortest and longest sequence of every split.
    pub fn length_range(&self) -> (usize, usize) {
        let all = || self.train.lens.iter().chain(&self.valid.lens).chain(self.test.iter().flat_map(|t| &t.lens)).copied();
        (all().min().unwrap_or(0), all().max().unwrap_or(0))
    }

    /// The validation sequences, the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.valid.len()
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The trivial baselines on the validation set: the majority class, or the training mean (and, for a forecast
    /// whose targets are inputs, the last value of the window).
    pub fn baseline_note(&self) -> String {
        let v = &self.valid;
        if self.classes() {
            let c = self.cfg.classes.len();
            let mut counts = vec![0usize; c];
            self.train.classes.iter().filter(|&&y| y >= 0).for_each(|&y| counts[y as usize] += 1);
            let majority = (0..c).max_by_key(|&k| (counts[k], std::cmp::Reverse(k))).unwrap_or(0);
            let scored = v.classes.iter().filter(|&&y| y >= 0).count().max(1);
            let hits = v.classes.iter().filter(|&&y| y == majority as i32).count();
            return format!(
                "baseline: always answering the most frequent training class '{}' scores accuracy {:.3}",
                self.cfg.classes[majority],
                hits as f64 / scored as f64
            );
        }
        // The training mean is 0 on the standardised scale.
        let (mse, _) = self.original_errors(&vec![0.0; v.values.len()], &v.values);
        let mut note = format!("baseline: predicting the training mean scores mse {}", crate::tasks::custom::short(mse));
        if let (CustomKind::Forecast, Some(map)) = (self.kind(), &self.target_features) {
            let naive = self.naive_forecast(v, map);
            let (mse, _) = self.original_errors(&naive, &v.values);
            note.push_str(&format!(", repeating the window's last value mse {}", short(mse)));
        }
        note
    }

    /// Forecast: the last value of each window for every target and future step, standardised like the targets.
    fn naive_forecast(&self, set: &Sequences, map: &[usize]) -> Vec<f32> {
        let (d, k) = (self.cfg.features, self.cfg.targets);
        let mut out = Vec::with_capacity(set.values.len());
        for (&start, &len) in set.starts.iter().zip(&set.lens) {
            let last = &set.x[(start + len - 1) * d..(start + len) * d];
            for _ in 0..self.horizon {
                for (j, &f) in map.iter().enumerate().take(k) {
                    let original = destandardise(last[f], &self.cfg.x_mean, &self.cfg.x_std, f);
                    out.push(standardise(original, &self.cfg.y_mean, &self.cfg.y_std, j));
                }
            }
        }
        out
    }

    /// The training batch of `step`: seeded epoch permutations, keyed by `(seed, step)`.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let idx = self.sampler.indices(step, batch);
        self.batch_of(&self.train, &idx)
    }

    /// Validation sequences `start..start + count` as one padded batch.
    pub fn eval_batch(&self, start: usize, count: usize) -> Batch {
        let end = (start + count).min(self.valid.len());
        self.batch_of(&self.valid, &(start..end).collect::<Vec<_>>())
    }

    /// The test sequences in padded batches of at most `per_batch`; `None` without a test file.
    pub fn test_batches(&self, per_batch: usize) -> Option<Vec<Batch>> {
        let test = self.test.as_ref()?;
        let idx: Vec<usize> = (0..test.len()).collect();
        Some(idx.chunks(per_batch.max(1)).map(|c| self.batch_of(test, c)).collect())
    }

    /// The sequences `idx` of `set`, right-padded to the longest.
    fn batch_of(&self, set: &Sequences, idx: &[usize]) -> Batch {
        let (d, b) = (self.cfg.features, idx.len());
        let t = idx.iter().map(|&i| set.lens[i]).max().unwrap_or(1);
        let lens: Vec<usize> = idx.iter().map(|&i| set.lens[i]).collect();
        let mut x = vec![0.0f32; b * t * d]; // (B, T, D)
        for (row, &i) in idx.iter().enumerate() {
            let (s, n) = (set.starts[i], set.lens[i]);
            x[row * t * d..(row * t + n) * d].copy_from_slice(&set.x[s * d..(s + n) * d]);
        }
        let inputs = if self.cfg.tokens { Inputs::Tokens(x.iter().map(|&v| v as u32).collect()) } else { Inputs::Dense(x) };
        let per_step = self.kind().per_step();
        let targets = if self.classes() {
            if per_step {
                let mut y = vec![IGNORE; b * t]; // (B, T), IGNORE at the padding
                for (row, &i) in idx.iter().enumerate() {
                    let (s, n) = (set.starts[i], set.lens[i]);
                    y[row * t..row * t + n].copy_from_slice(&set.classes[s..s + n]);
                }
                Targets::Classes(y)
            } else {
                Targets::Classes(idx.iter().map(|&i| set.classes[i]).collect())
            }
        } else {
            let k = self.io().output_dim;
            if per_step {
                let mut y = vec![0.0f32; b * t * k]; // (B, T, K), zero at the padding (masked by the loss)
                for (row, &i) in idx.iter().enumerate() {
                    let (s, n) = (set.starts[i], set.lens[i]);
                    y[row * t * k..(row * t + n) * k].copy_from_slice(&set.values[s * k..(s + n) * k]);
                }
                Targets::Values(y)
            } else {
                Targets::Values(idx.iter().flat_map(|&i| set.values[i * k..(i + 1) * k].iter().copied()).collect())
            }
        };
        let lengths = lens.iter().any(|&n| n != t).then_some(lens);
        Batch { batch: b, seq_len: t, inputs, targets, lengths }
    }

    /// The loss and its gradient; real-valued tagging averages over the valid steps only.
    pub fn loss(&self, outputs: &[f32], batch: &Batch) -> Result<(f32, Vec<f32>)> {
        let io = self.io();
        let rows = if io.readout == Readout::EveryStep { batch.batch * batch.seq_len } else { batch.batch };
        check_len("custom task outputs", &[rows, io.output_dim], outputs.len())?;
        match &batch.targets {
            Targets::Classes(y) => {
                let out = loss::cross_entropy(outputs, y, io.output_dim)?;
                Ok((out.loss, out.dlogits))
            }
            Targets::Values(y) => match (&batch.lengths, io.readout) {
                (Some(lens), Readout::EveryStep) => masked_mse(outputs, y, lens, batch.seq_len, io.output_dim),
                _ => loss::mse(outputs, y),
            },
        }
    }

    /// Scores a batch: `(loss on the training scale, counted, correct, squared error sum, absolute error sum,
    /// values)` with the errors on the original scale.
    pub fn score(&self, outputs: &[f32], batch: &Batch) -> Result<Score> {
        let (loss, _) = self.loss(outputs, batch)?;
        let io = self.io();
        match &batch.targets {
            Targets::Classes(y) => {
                let ce = loss::cross_entropy(outputs, y, io.output_dim)?;
                Ok(Score { loss, terms: ce.counted, correct: ce.correct, sq: 0.0, abs: 0.0 })
            }
            Targets::Values(y) => {
                let (pred, want, terms) = match (&batch.lengths, io.readout) {
                    (Some(lens), Readout::EveryStep) => {
                        let k = io.output_dim;
                        let keep = |v: &[f32]| -> Vec<f32> {
                            lens.iter().enumerate().flat_map(|(row, &n)| v[row * batch.seq_len * k..(row * batch.seq_len + n) * k].to_vec()).collect()
                        };
                        let (p, w) = (keep(outputs), keep(y));
                        let n = p.len();
                        (p, w, n)
                    }
                    _ => (outputs.to_vec(), y.clone(), y.len()),
                };
                let (sq, abs) = self.error_sums(&pred, &want);
                Ok(Score { loss, terms, correct: 0, sq, abs })
            }
        }
    }

    /// Sums of squared and absolute errors on the original scale of standardised predictions and targets.
    fn error_sums(&self, pred: &[f32], want: &[f32]) -> (f64, f64) {
        let k = self.cfg.targets.max(1);
        let (mut sq, mut abs) = (0.0f64, 0.0f64);
        for (i, (&p, &w)) in pred.iter().zip(want).enumerate() {
            let j = i % k;
            let diff = f64::from(destandardise(p, &self.cfg.y_mean, &self.cfg.y_std, j)) - f64::from(destandardise(w, &self.cfg.y_mean, &self.cfg.y_std, j));
            sq += diff * diff;
            abs += diff.abs();
        }
        (sq, abs)
    }

    /// MSE and MAE on the original scale.
    fn original_errors(&self, pred: &[f32], want: &[f32]) -> (f64, f64) {
        let (sq, abs) = self.error_sums(pred, want);
        let n = want.len().max(1) as f64;
        (sq / n, abs / n)
    }

    /// Standardises inputs and real-valued targets with the config's statistics (tokens stay ids).
    fn standardise(&self, mut set: Sequences) -> Sequences {
        let d = self.cfg.features;
        if !self.cfg.tokens && !self.cfg.x_mean.is_empty() {
            for (i, v) in set.x.iter_mut().enumerate() {
                *v = standardise(*v, &self.cfg.x_mean, &self.cfg.x_std, i % d);
            }
        }
        if !self.cfg.y_mean.is_empty() {
            let k = self.cfg.targets;
            for (i, v) in set.values.iter_mut().enumerate() {
                *v = standardise(*v, &self.cfg.y_mean, &self.cfg.y_std, i % k);
            }
        }
        set
    }
}

/// A batch's contribution to an evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// The training loss of the batch.
    pub loss: f32,
    /// Counted predictions (classes) or predicted values.
    pub terms: usize,
    /// Correct class predictions.
    pub correct: usize,
    /// Sum of squared errors on the original scale.
    pub sq: f64,
    /// Sum of absolute errors on the original scale.
    pub abs: f64,
}

/// Four significant digits, for baselines.
pub fn short(x: f64) -> String {
    if x != 0.0 && (x.abs() >= 1e5 || x.abs() < 1e-3) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn standardise(v: f32, mean: &[f32], std: &[f32], j: usize) -> f32 {
    if mean.is_empty() {
        v
    } else {
        (v - mean[j]) / std[j]
    }
}

/// The original value of a standardised one.
pub fn destandardise(v: f32, mean: &[f32], std: &[f32], j: usize) -> f32 {
    if mean.is_empty() {
        v
    } else {
        v * std[j] + mean[j]
    }
}

/// Mean squared error over the valid steps of `(B, T, K)` outputs; zero gradient on the padded steps.
fn masked_mse(pred: &[f32], target: &[f32], lens: &[usize], t: usize, k: usize) -> Result<(f32, Vec<f32>)> {
    check_len("tagging targets (B, T, K)", &[lens.len(), t, k], target.len())?;
    let n: usize = lens.iter().map(|&l| l * k).sum();
    let mut grad = vec![0.0f32; pred.len()];
    let mut sum = 0.0f64;
    for (row, &len) in lens.iter().enumerate() {
        for i in row * t * k..(row * t + len) * k {
            let diff = f64::from(pred[i]) - f64::from(target[i]);
            sum += diff * diff;
            grad[i] = (2.0 * diff / n as f64) as f32;
        }
    }
    Ok(((sum / n.max(1) as f64) as f32, grad))
}

/// The model-facing shape of a resolved custom config.
pub fn io_of(cfg: &CustomConfig, horizon: usize) -> TaskIo {
    let kind = cfg.kind.unwrap_or(CustomKind::Classification);
    let input = if cfg.tokens { InputKind::Tokens { vocab: cfg.vocab.unwrap_or(1) } } else { InputKind::Dense { dim: cfg.features } };
    let output_dim = if !cfg.classes.is_empty() {
        cfg.classes.len()
    } else if kind == CustomKind::Forecast {
        cfg.targets * horizon
    } else {
        cfg.targets
    };
    TaskIo { input, output_dim, readout: if kind.per_step() { Readout::EveryStep } else { Readout::LastStep } }
}

/// Infers what the config leaves open from the training sequences (see the module docs).
fn resolve(cfg: &mut CustomConfig, raw: &[RawSequence], columns: Option<&CsvColumns>) -> Result<()> {
    let first = raw.first().ok_or_else(|| data_error(&cfg.data, None, "no sequences"))?;
    if let Some(c) = columns {
        cfg.layout = Some(c.layout);
        cfg.header = Some(c.header);
        cfg.x_columns = c.x.iter().map(|x| x.1.clone()).collect();
        cfg.y_columns = c.y.iter().map(|y| y.1.clone()).collect();
        cfg.id_column = c.id.as_ref().map(|id| id.1.clone());
        if c.header {
            cfg.feature_names = if c.layout == CsvLayout::Wide { Vec::new() } else { cfg.x_columns.clone() };
            cfg.target_names = cfg.y_columns.clone();
        }
    }
    cfg.features = first.features;
    let labels: Vec<&Label> = raw.iter().filter_map(|s| s.label.as_ref()).collect();
    let forecast = cfg.kind == Some(CustomKind::Forecast);
    let kind = match cfg.kind {
        Some(k) => k,
        None => {
            // A label per step that changes within a sequence, or a list as long as its sequence: tagging.
            let changes = raw.iter().any(|s| matches!(&s.label, Some(Label::PerStep(rows)) if rows.windows(2).any(|w| w[0] != w[1])));
            let lists_as_long = raw.iter().all(|s| matches!(&s.label, Some(Label::List(v)) if v.len() == s.len)) && raw.iter().any(|s| s.len > 1);
            let per_step = changes || lists_as_long;
            let real = labels.iter().any(|l| label_values(l).any(|v| matches!(v, LabelValue::Real(_))));
            let text = labels.iter().any(|l| label_values(l).any(|v| matches!(v, LabelValue::Text(_))));
            match (per_step, real && !text) {
                (true, _) => CustomKind::Tagging,
                (false, true) => CustomKind::Regression,
                (false, false) => CustomKind::Classification,
            }
        }
    };
    cfg.kind = Some(kind);
    let classes = matches!(kind, CustomKind::Classification)
        || (kind == CustomKind::Tagging && !labels.iter().any(|l| label_values(l).any(|v| matches!(v, LabelValue::Real(_)))));
    if cfg.tokens {
        let max = raw.iter().flat_map(|s| s.x.iter()).fold(0.0f32, |m, &v| m.max(v));
        cfg.vocab = Some(cfg.vocab.unwrap_or(max as usize + 1));
    }
    if classes {
        let mut ints: Vec<i64> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for v in labels.iter().flat_map(|l| label_values(l)) {
            match v {
                LabelValue::Int(i) => ints.push(*i),
                LabelValue::Text(s) => names.push(s.clone()),
                LabelValue::Real(r) => {
                    return Err(data_error(
                        &cfg.data,
                        None,
                        format!("class labels must be integers or names, found {r} (use --kind regression for real-valued targets)"),
                    ));
                }
            }
        }
        ints.sort_unstable();
        ints.dedup();
        names.sort();
        names.dedup();
        cfg.classes = ints.iter().map(i64::to_string).chain(names).collect();
        cfg.targets = 0;
        if cfg.classes.len() < 2 {
            return Err(data_error(&cfg.data, None, format!("classification needs at least 2 classes, the training labels have {}", cfg.classes.len())));
        }
    } else {
        cfg.classes.clear();
        cfg.targets = match labels.first() {
            Some(Label::Once(v)) => v.len(),
            Some(Label::List(v)) if kind == CustomKind::Tagging => {
                let _ = v;
                1
            }
            Some(Label::List(v)) => v.len(),
            Some(Label::PerStep(rows)) => rows.first().map_or(0, Vec::len),
            None if forecast => cfg.features,
            None => 0,
        };
        if cfg.targets == 0 {
            return Err(data_error(&cfg.data, None, "no labels to learn"));
        }
    }
    Ok(())
}

fn label_values(l: &Label) -> Box<dyn Iterator<Item = &LabelValue> + '_> {
    match l {
        Label::Once(v) | Label::List(v) => Box::new(v.iter()),
        Label::PerStep(rows) => Box::new(rows.iter().flatten()),
    }
}

/// The class id of a label, or an error naming where it is.
fn class_id(cfg: &CustomConfig, v: &LabelValue, path: &Path, seq: &RawSequence) -> Result<i32> {
    let name = v.class_name();
    match cfg.classes.iter().position(|c| *c == name) {
        Some(i) => Ok(i as i32),
        None => {
            let (line, prefix) = at(seq);
            let shown: Vec<&str> = cfg.classes.iter().take(20).map(String::as_str).collect();
            Err(data_error(
                path,
                line,
                format!(
                    "{prefix}label '{name}' is not one of the {} classes the model knows ({}{})",
                    cfg.classes.len(),
                    shown.join(", "),
                    if cfg.classes.len() > 20 { ", ..." } else { "" }
                ),
            ))
        }
    }
}

fn real(v: &LabelValue, path: &Path, seq: &RawSequence) -> Result<f32> {
    v.as_f64().map(|f| f as f32).filter(|f| f.is_finite()).ok_or_else(|| {
        let (line, prefix) = at(seq);
        data_error(path, line, format!("{prefix}label '{}' is not a number, but this task predicts real values", v.class_name()))
    })
}

/// Checks the inputs of `seq` against the config (features, token ids) and appends them to `x`.
pub fn check_inputs(cfg: &CustomConfig, seq: &RawSequence, path: &Path) -> Result<()> {
    let (line, prefix) = at(seq);
    if seq.features != cfg.features {
        return Err(data_error(path, line, format!("{prefix}{} features per step, the model reads {}", seq.features, cfg.features)));
    }
    if cfg.tokens {
        let vocab = cfg.vocab.unwrap_or(0);
        if let Some((t, &v)) = seq.x.iter().enumerate().find(|&(_, &v)| v < 0.0 || v.fract() != 0.0 || v as usize >= vocab) {
            return Err(data_error(path, line, format!("{prefix}step {}: token {v} is not an integer id in 0..{vocab}", t + 1)));
        }
    }
    Ok(())
}

/// Encodes sequences with labels (not standardised yet).
fn encode(cfg: &CustomConfig, raw: &[RawSequence], path: &Path) -> Result<Sequences> {
    let kind = cfg.kind.expect("resolved");
    let mut set = Sequences::default();
    for seq in raw {
        check_inputs(cfg, seq, path)?;
        let (line, prefix) = at(seq);
        let label = seq.label.as_ref().ok_or_else(|| data_error(path, line, format!("{prefix}no label")))?;
        set.starts.push(set.x.len() / cfg.features);
        set.lens.push(seq.len);
        set.x.extend_from_slice(&seq.x);
        if kind.per_step() {
            let steps: Vec<Vec<LabelValue>> = match label {
                Label::PerStep(rows) => rows.clone(),
                Label::List(v) => v.iter().map(|x| vec![x.clone()]).collect(),
                Label::Once(_) => return Err(data_error(path, line, format!("{prefix}tagging needs a label for every step, found one for the sequence"))),
            };
            if steps.len() != seq.len {
                return Err(data_error(path, line, format!("{prefix}{} labels for {} steps", steps.len(), seq.len)));
            }
            for row in &steps {
                if !cfg.classes.is_empty() {
                    set.classes.push(class_id(cfg, &row[0], path, seq)?);
                } else {
                    for v in row {
                        set.values.push(real(v, path, seq)?);
                    }
                }
            }
        } else {
            let record: Vec<LabelValue> = match label {
                Label::Once(v) | Label::List(v) => v.clone(),
                Label::PerStep(rows) => {
                    // One step per row: the label must not change within the sequence.
                    if let Some(t) = rows.iter().position(|r| *r != rows[0]) {
                        return Err(data_error(
                            path,
                            line,
                            format!(
                                "{prefix}the label changes at step {} of sequence '{}': per-step labels need --kind tagging",
                                t + 1,
                                seq.id.clone().unwrap_or_default()
                            ),
                        ));
                    }
                    rows[0].clone()
                }
            };
            if !cfg.classes.is_empty() {
                if record.len() != 1 {
                    return Err(data_error(path, line, format!("{prefix}{} label values, a class needs one", record.len())));
                }
                set.classes.push(class_id(cfg, &record[0], path, seq)?);
            } else {
                if record.len() != cfg.targets {
                    return Err(data_error(path, line, format!("{prefix}{} target values, the model predicts {}", record.len(), cfg.targets)));
                }
                for v in &record {
                    set.values.push(real(v, path, seq)?);
                }
            }
        }
    }
    Ok(set)
}

/// One long series: `(steps, D)` inputs and `(steps, K)` targets.
struct Series {
    x: Vec<f32>,
    y: Vec<f32>,
    steps: usize,
    d: usize,
    k: usize,
}

impl Series {
    /// The windows starting at `starts`: `window` input steps and the next `horizon` target rows.
    fn windows(&self, starts: &[usize], window: usize, horizon: usize) -> Sequences {
        let mut set = Sequences::default();
        for &s in starts {
            set.starts.push(set.x.len() / self.d);
            set.lens.push(window);
            set.x.extend_from_slice(&self.x[s * self.d..(s + window) * self.d]);
            set.values.extend_from_slice(&self.y[(s + window) * self.k..(s + window + horizon) * self.k]);
        }
        set
    }
}

/// The rows of a series file (each a one-step [`RawSequence`]) as one series.
fn encode_series(cfg: &CustomConfig, raw: &[RawSequence], path: &Path) -> Result<Series> {
    let (d, k) = (cfg.features, cfg.targets);
    let mut s = Series { x: Vec::with_capacity(raw.len() * d), y: Vec::with_capacity(raw.len() * k), steps: 0, d, k };
    for row in raw {
        check_inputs(cfg, row, path)?;
        s.x.extend_from_slice(&row.x);
        match &row.label {
            Some(Label::PerStep(rows)) if rows.len() == 1 && rows[0].len() == k => {
                for v in &rows[0] {
                    s.y.push(real(v, path, row)?);
                }
            }
            None if k == d => s.y.extend_from_slice(&row.x),
            _ => {
                let (line, prefix) = at(row);
                return Err(data_error(path, line, format!("{prefix}expected {k} target values on every row of the series")));
            }
        }
        s.steps += row.len;
    }
    Ok(s)
}

/// The sequences `idx` of `set`.
fn subset(cfg: &CustomConfig, set: &Sequences, idx: &[usize]) -> Sequences {
    let d = cfg.features;
    let per_step = cfg.kind.is_some_and(CustomKind::per_step);
    let k = if cfg.classes.is_empty() { cfg.targets } else { 1 };
    let mut out = Sequences::default();
    for &i in idx {
        let (s, n) = (set.starts[i], set.lens[i]);
        out.starts.push(out.x.len() / d);
        out.lens.push(n);
        out.x.extend_from_slice(&set.x[s * d..(s + n) * d]);
        let (from, to) = if per_step { (s, s + n) } else { (i, i + 1) };
        if cfg.classes.is_empty() {
            out.values.extend_from_slice(&set.values[from * k..to * k]);
        } else {
            out.classes.extend_from_slice(&set.classes[from..to]);
        }
    }
    out
}

/// Mean and standard deviation of every input feature over the training steps and of every real target.
fn fill_statistics(cfg: &mut CustomConfig, train: &Sequences) {
    let stats = |values: &[f32], width: usize| -> (Vec<f32>, Vec<f32>) {
        let mut sum = vec![0.0f64; width];
        let mut sq = vec![0.0f64; width];
        let n = (values.len() / width.max(1)).max(1) as f64;
        for (i, &v) in values.iter().enumerate() {
            sum[i % width] += f64::from(v);
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        for (i, &v) in values.iter().enumerate() {
            let diff = f64::from(v) - mean[i % width];
            sq[i % width] += diff * diff;
        }
        // A constant feature keeps its scale (standard deviation 1) instead of dividing by zero.
        let std = sq.iter().map(|s| (s / n).sqrt()).map(|s| if s > 1e-6 { s as f32 } else { 1.0 }).collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    };
    if cfg.normalize && !cfg.tokens {
        (cfg.x_mean, cfg.x_std) = stats(&train.x, cfg.features);
    } else {
        (cfg.x_mean, cfg.x_std) = (Vec::new(), Vec::new());
    }
    if cfg.normalize && cfg.classes.is_empty() {
        (cfg.y_mean, cfg.y_std) = stats(&train.values, cfg.targets);
    } else {
        (cfg.y_mean, cfg.y_std) = (Vec::new(), Vec::new());
    }
}

/// Inputs of new sequences for the network, standardised as in training: `(inputs, T, lengths)`.
pub fn encode_inputs(cfg: &CustomConfig, seqs: &[RawSequence]) -> (Inputs, usize, Option<Vec<usize>>) {
    let (d, b) = (cfg.features, seqs.len());
    let t = seqs.iter().map(|s| s.len).max().unwrap_or(1);
    let mut x = vec![0.0f32; b * t * d]; // (B, T, D)
    for (row, s) in seqs.iter().enumerate() {
        for (i, &v) in s.x.iter().enumerate() {
            x[row * t * d + i] = if cfg.tokens { v } else { standardise(v, &cfg.x_mean, &cfg.x_std, i % d) };
        }
    }
    let lens: Vec<usize> = seqs.iter().map(|s| s.len).collect();
    let inputs = if cfg.tokens { Inputs::Tokens(x.iter().map(|&v| v as u32).collect()) } else { Inputs::Dense(x) };
    (inputs, t, lens.iter().any(|&n| n != t).then_some(lens))
}

/// The data format of a file for a resolved config.
pub fn format_of(cfg: &CustomConfig, path: &Path) -> Result<DataFormat> {
    cfg.format_of(path)
}

#[cfg(test)]
mod tests;
