//! Time-series forecasting on the real series shipped in `data/`: from a window of `window` past steps, predict
//! the next `horizon` values of the target feature(s).
//!
//! | series | file | step | inputs (D) | target | season |
//! |--------|------|------|------------|--------|--------|
//! | `sunspots` | `sunspots.csv`, 1700-2008 | year | sunspot number | sunspot number | 11 years |
//! | `co2` | `co2.csv`, Mauna Loa 1958-2001 | week | CO2 (ppm) | CO2 | 52 weeks |
//! | `seattle` | `seattle-weather.csv`, 2012-2015 | day | precipitation, temp_max, temp_min, wind | temp_max (°C) | 365 days |
//!
//! Seattle reads all four numeric columns and predicts the daily maximum temperature only: a smooth, strongly
//! seasonal target whose errors are read in °C, while precipitation (mostly zeros with bursts) would dominate a
//! joint MSE. The categorical `weather` column is not used.
//!
//! ## Protocol
//! - **Gaps**: the weekly CO2 series has 59 missing values in 22 interior gaps. They are filled by linear
//!   interpolation between the neighbouring observations and counted ([`Forecast::gaps`]); rows are never dropped,
//!   so the time axis stays regular (the loader rejects a file whose dates skip a period).
//! - **Split**: chronological, the first 70% of the steps for training, the next 15% for validation, the last 15%
//!   for testing. A window belongs to the split that holds its *predicted* steps; its inputs may reach back into
//!   the previous split (they are the past, known at prediction time).
//! - **Normalisation**: each feature is standardised with the mean and (population) standard deviation of the
//!   training steps only; a constant feature keeps a scale of 1. Inputs and targets of every split use those
//!   statistics, so nothing about the validation or test steps leaks into training.
//! - **Model**: inputs `(B, window, D)`, read out at the last step, `output_dim = horizon * K` (K targets),
//!   predictions laid out `(B, horizon, K)`, trained with the MSE on the normalised scale.
//! - **Metrics**: MSE and MAE on the *original* scale of the test windows, next to two baselines computed on the
//!   same windows: the naive last value (`ŷ[t+h] = y[t-1]`) and the seasonal naive
//!   (`ŷ[t+h] = y[t+h-m(⌊h/m⌋+1)]`, season m, h counted from 0; Hyndman & Athanasopoulos, "Forecasting:
//!   Principles and Practice", sec. 5.2). A model is useful when it beats both ([`ForecastMetrics`]).

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::data::series::{load_series, GapReport, Series, SeriesSpec, TimeAxis};
use crate::data::{data_path, EpochSampler, Split, CO2_FILE, SEATTLE_FILE, SUNSPOTS_FILE};
use crate::error::{check_len, Error, Result};
use crate::layers::loss;
use crate::rng::streams;
use crate::tasks::{Batch, InputKind, Inputs, Readout, Targets, TaskIo};

/// Percent of the time steps in the training split.
pub const TRAIN_PERCENT: usize = 70;
/// Percent of the time steps in the validation split (the test split gets the rest, 15%).
pub const VALIDATION_PERCENT: usize = 15;

pub use crate::config::SeriesKind;

impl SeriesKind {
    /// The file in the data directory.
    pub fn file(self) -> &'static str {
        match self {
            SeriesKind::Sunspots => SUNSPOTS_FILE,
            SeriesKind::Co2 => CO2_FILE,
            SeriesKind::Seattle => SEATTLE_FILE,
        }
    }

    /// The columns of the file that make the series.
    pub fn spec(self) -> SeriesSpec {
        let (time, axis, values): (&str, TimeAxis, &[&str]) = match self {
            SeriesKind::Sunspots => ("YEAR", TimeAxis::Year, &["SUNACTIVITY"]),
            SeriesKind::Co2 => ("date", TimeAxis::CompactDate { days: 7 }, &["co2"]),
            SeriesKind::Seattle => ("date", TimeAxis::IsoDate { days: 1 }, &["precipitation", "temp_max", "temp_min", "wind"]),
        };
        SeriesSpec { time_column: time.into(), axis, value_columns: values.iter().map(|v| v.to_string()).collect() }
    }

    /// Indices (into the spec's value columns) of the predicted features.
    pub fn targets(self) -> &'static [usize] {
        match self {
            SeriesKind::Sunspots | SeriesKind::Co2 => &[0],
            SeriesKind::Seattle => &[1],
        }
    }

    /// D, the input features per step.
    pub fn input_dim(self) -> usize {
        match self {
            SeriesKind::Sunspots | SeriesKind::Co2 => 1,
            SeriesKind::Seattle => 4,
        }
    }

    /// The season m of the seasonal-naive baseline, in steps: the 11-year solar cycle, 52 weeks, 365 days.
    pub fn season(self) -> usize {
        match self {
            SeriesKind::Sunspots => 11,
            SeriesKind::Co2 => 52,
            SeriesKind::Seattle => 365,
        }
    }
}

/// Scores of a forecast on the windows of one split, all on the original scale of the series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ForecastMetrics {
    /// Mean squared error of the given predictions.
    pub mse: f64,
    /// Mean absolute error of the given predictions.
    pub mae: f64,
    /// MSE of the naive last-value forecast on the same windows.
    pub naive_mse: f64,
    /// MAE of the naive last-value forecast.
    pub naive_mae: f64,
    /// MSE of the seasonal-naive forecast on the same windows.
    pub seasonal_mse: f64,
    /// MAE of the seasonal-naive forecast.
    pub seasonal_mae: f64,
    /// Number of windows scored.
    pub windows: usize,
}

/// The forecasting task: windows of a normalised series, the chronological split, the loss and the metrics.
#[derive(Clone, Debug)]
pub struct Forecast {
    /// Name of the series, for messages.
    name: String,
    /// The series on its original scale (gaps filled), shared between clones.
    series: Arc<Series>,
    /// `(T, D)` the series standardised with the training statistics.
    normalised: Arc<Vec<f32>>,
    /// `(D)` training mean of each feature.
    mean: Vec<f32>,
    /// `(D)` training standard deviation of each feature (1 for a constant one).
    std: Vec<f32>,
    /// Indices of the K target features.
    targets: Vec<usize>,
    /// Input steps per window, the sequence length T of the model.
    window: usize,
    /// Predicted steps per window.
    horizon: usize,
    /// Season m of the seasonal-naive baseline.
    season: usize,
    /// First step of the validation split (= number of training steps).
    validation_start: usize,
    /// First step of the test split.
    test_start: usize,
    /// Draws the training windows.
    sampler: EpochSampler,
    /// Seed of the training stream.
    seed: u64,
}

impl Forecast {
    /// The task on a shipped series (found through [`crate::data::data_dir`]): windows of `window` steps
    /// predicting the next `horizon`, training stream `seed`.
    pub fn new(kind: SeriesKind, window: usize, horizon: usize, seed: u64) -> Result<Self> {
        Self::from_file(kind, &data_path(kind.file()), window, horizon, seed)
    }

    /// The task on the series `kind` read from `path` (same columns as the shipped file).
    pub fn from_file(kind: SeriesKind, path: &Path, window: usize, horizon: usize, seed: u64) -> Result<Self> {
        let series = load_series(path, &kind.spec())?;
        Self::from_series(kind.name(), series, kind.targets().to_vec(), kind.season(), window, horizon, seed)
    }

    /// The task on any regular series: `targets` are the indices of the predicted features, `season` the period
    /// of the seasonal-naive baseline. Too short a series for the window, horizon and season is an
    /// [`Error::Config`] giving the numbers.
    pub fn from_series(name: &str, series: Series, targets: Vec<usize>, season: usize, window: usize, horizon: usize, seed: u64) -> Result<Self> {
        if window == 0 || horizon == 0 || season == 0 {
            return Err(Error::config(format!("forecast window, horizon and season must be at least 1, got {window}, {horizon} and {season}")));
        }
        let dim = series.dim();
        if targets.is_empty() || targets.iter().any(|&k| k >= dim) {
            return Err(Error::config(format!("forecast targets {targets:?} must be feature indices below {dim}")));
        }
        check_len("series values", &[series.len(), dim], series.values.len())?;
        let len = series.len();
        let validation_start = len * TRAIN_PERCENT / 100;
        let test_start = len * (TRAIN_PERCENT + VALIDATION_PERCENT) / 100;
        let train_windows = (validation_start + 1).saturating_sub(window + horizon);
        if train_windows == 0 {
            return Err(Error::config(format!(
                "series {name} has {len} steps, of which {validation_start} ({TRAIN_PERCENT}%) train: a window of {window} plus a horizon of {horizon} \
                 needs at least {} training steps",
                window + horizon
            )));
        }
        for (split, start, end) in [("validation", validation_start, test_start), ("test", test_start, len)] {
            if end - start < horizon {
                return Err(Error::config(format!(
                    "series {name} has {len} steps: its {split} split holds {} steps, fewer than the horizon of {horizon}",
                    end - start
                )));
            }
        }
        if validation_start < season {
            return Err(Error::config(format!(
                "series {name} has {len} steps: the seasonal-naive baseline (season {season}) needs {season} steps of history before the first \
                 validation window, there are {validation_start}"
            )));
        }
        let (mean, std) = train_statistics(&series.values, dim, validation_start);
        let normalised: Vec<f32> = series.values.chunks_exact(dim).flat_map(|row| row.iter().zip(&mean).zip(&std).map(|((v, m), s)| (v - m) / s)).collect();
        let sampler = EpochSampler::new(train_windows, seed, streams::TRAIN_DATA)?;
        Ok(Forecast {
            name: name.to_string(),
            series: Arc::new(series),
            normalised: Arc::new(normalised),
            mean,
            std,
            targets,
            window,
            horizon,
            season,
            validation_start,
            test_start,
            sampler,
            seed,
        })
    }

    /// What a model for `kind` with `horizon` reads and emits (needs no data): D dense features per step,
    /// `horizon * K` values from the last step.
    pub fn io_for(kind: SeriesKind, horizon: usize) -> TaskIo {
        TaskIo { input: InputKind::Dense { dim: kind.input_dim() }, output_dim: horizon * kind.targets().len(), readout: Readout::LastStep }
    }

    /// What the model reads and emits.
    pub fn io(&self) -> TaskIo {
        TaskIo { input: InputKind::Dense { dim: self.series.dim() }, output_dim: self.output_dim(), readout: Readout::LastStep }
    }

    /// Name of the metric: the test MSE on the original scale.
    pub fn metric_name() -> &'static str {
        "mse"
    }

    /// Whether a larger metric is better.
    pub fn higher_is_better() -> bool {
        false
    }

    /// Name of the series.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The series on its original scale, gaps filled.
    pub fn series(&self) -> &Series {
        &self.series
    }

    /// How missing values were handled.
    pub fn gaps(&self) -> GapReport {
        self.series.gaps
    }

    /// `(D)` training mean and standard deviation of each feature, used to normalise every split.
    pub fn normalisation(&self) -> (&[f32], &[f32]) {
        (&self.mean, &self.std)
    }

    /// `(T, D)` the whole series standardised with the training statistics.
    pub fn normalised(&self) -> &[f32] {
        &self.normalised
    }

    /// T of the model: input steps per window.
    pub fn seq_len(&self) -> usize {
        self.window
    }

    /// Predicted steps per window.
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// K, the predicted features.
    pub fn targets(&self) -> &[usize] {
        &self.targets
    }

    /// Width of one prediction: `horizon * K`.
    pub fn output_dim(&self) -> usize {
        self.horizon * self.targets.len()
    }

    /// Season m of the seasonal-naive baseline.
    pub fn season(&self) -> usize {
        self.season
    }

    /// The seed of the training stream.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The time steps of a split: `[start, end)`.
    pub fn split_steps(&self, split: Split) -> std::ops::Range<usize> {
        match split {
            Split::Train => 0..self.validation_start,
            Split::Validation => self.validation_start..self.test_start,
            Split::Test => self.test_start..self.series.len(),
        }
    }

    /// The forecast origins of a split: window `i` reads steps `origin - window..origin` and predicts
    /// `origin..origin + horizon`, all of which lie in the split.
    pub fn origins(&self, split: Split) -> std::ops::Range<usize> {
        let steps = self.split_steps(split);
        let first = if split == Split::Train { self.window } else { steps.start };
        first..steps.end + 1 - self.horizon
    }

    /// Number of windows of a split.
    pub fn split_len(&self, split: Split) -> usize {
        self.origins(split).len()
    }

    /// Number of test windows, the evaluation set.
    pub fn eval_size(&self) -> usize {
        self.split_len(Split::Test)
    }

    /// The windows with the given forecast origins as one batch: inputs `(B, window, D)` and targets
    /// `(B, horizon, K)`, both normalised with the training statistics.
    pub fn batch_at(&self, origins: &[usize]) -> Batch {
        let dim = self.series.dim();
        let k = self.targets.len();
        let mut inputs = Vec::with_capacity(origins.len() * self.window * dim); // (B, window, D)
        let mut targets = Vec::with_capacity(origins.len() * self.horizon * k); // (B, horizon, K)
        for &origin in origins {
            inputs.extend_from_slice(&self.normalised[(origin - self.window) * dim..origin * dim]);
            for t in origin..origin + self.horizon {
                targets.extend(self.targets.iter().map(|&f| self.normalised[t * dim + f]));
            }
        }
        Batch { batch: origins.len(), seq_len: self.window, inputs: Inputs::Dense(inputs), targets: Targets::Values(targets), lengths: None }
    }

    /// Windows `start..start + count` (clipped) of a split as one batch.
    pub fn split_batch(&self, split: Split, start: usize, count: usize) -> Batch {
        let origins = self.origins(split);
        let first = origins.start.saturating_add(start).min(origins.end);
        let last = first.saturating_add(count).min(origins.end);
        self.batch_at(&(first..last).collect::<Vec<_>>())
    }

    /// Test windows `start..start + count` (clipped to [`Forecast::eval_size`]) as one batch.
    pub fn eval_batch(&self, start: usize, count: usize) -> Batch {
        self.split_batch(Split::Test, start, count)
    }

    /// The training batch of `step`: windows from the epoch permutations of the training windows, the same for
    /// every run with this seed.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        let first = self.origins(Split::Train).start;
        let origins: Vec<usize> = self.sampler.indices(step, batch).into_iter().map(|i| first + i).collect();
        self.batch_at(&origins)
    }

    /// The training loss: MSE of `outputs (B, horizon * K)` against the normalised targets, and its gradient.
    pub fn loss(&self, outputs: &[f32], batch: &Batch) -> Result<(f32, Vec<f32>)> {
        check_len("forecast outputs", &[batch.batch, self.output_dim()], outputs.len())?;
        let Targets::Values(y) = &batch.targets else {
            return Err(Error::Invalid("forecast batches carry value targets".into()));
        };
        loss::mse(outputs, y)
    }

    /// Model outputs (normalised scale) mapped back to the original scale, in place: `v * std + mean` of each
    /// target feature. `outputs` is `(N, horizon, K)`.
    pub fn denormalise(&self, outputs: &mut [f32]) {
        let k = self.targets.len();
        for (i, v) in outputs.iter_mut().enumerate() {
            let feature = self.targets[i % k];
            *v = *v * self.std[feature] + self.mean[feature];
        }
    }

    /// The true values of a split's windows on the original scale, `(N, horizon, K)`.
    pub fn truth(&self, split: Split) -> Vec<f32> {
        self.forecast_with(split, |_, t, f| self.value(t, f))
    }

    /// The naive last-value forecast of a split's windows, `ŷ[t+h] = y[t-1]`, original scale, `(N, horizon, K)`.
    pub fn naive_predictions(&self, split: Split) -> Vec<f32> {
        self.forecast_with(split, |origin, _, f| self.value(origin - 1, f))
    }

    /// The seasonal-naive forecast of a split's windows, `ŷ[t+h] = y[t+h-m(⌊h/m⌋+1)]` (the same phase of the
    /// last season before the origin), original scale, `(N, horizon, K)`. Every validation and test origin has
    /// at least m steps of history ([`Forecast::from_series`] checks it); a training window whose origin lacks a
    /// season of history falls back to the last value, so no baseline ever reads a step at or after its origin.
    pub fn seasonal_predictions(&self, split: Split) -> Vec<f32> {
        let m = self.season;
        self.forecast_with(split, |origin, t, f| {
            let h = t - origin;
            let back = m * (h / m + 1);
            let source = if origin >= m { t - back } else { origin - 1 };
            self.value(source, f)
        })
    }

    /// Scores `outputs` (the model's normalised outputs for the windows of `split`, in order, `(N, horizon, K)`)
    /// on the original scale, next to the naive and seasonal-naive baselines.
    pub fn evaluate(&self, split: Split, outputs: &[f32]) -> Result<ForecastMetrics> {
        let mut predictions = outputs.to_vec();
        self.denormalise(&mut predictions);
        self.evaluate_original(split, &predictions)
    }

    /// [`Forecast::evaluate`] on the test windows: `{mse, mae, naive_mse, naive_mae, seasonal_mse, seasonal_mae}`.
    pub fn test_metrics(&self, outputs: &[f32]) -> Result<ForecastMetrics> {
        self.evaluate(Split::Test, outputs)
    }

    /// Scores `predictions` already on the original scale, `(N, horizon, K)` for the windows of `split` in order.
    pub fn evaluate_original(&self, split: Split, predictions: &[f32]) -> Result<ForecastMetrics> {
        let windows = self.split_len(split);
        check_len(&format!("{} predictions", split.name()), &[windows, self.horizon, self.targets.len()], predictions.len())?;
        let truth = self.truth(split);
        let (mse, mae) = errors(predictions, &truth);
        let (naive_mse, naive_mae) = errors(&self.naive_predictions(split), &truth);
        let (seasonal_mse, seasonal_mae) = errors(&self.seasonal_predictions(split), &truth);
        Ok(ForecastMetrics { mse, mae, naive_mse, naive_mae, seasonal_mse, seasonal_mae, windows })
    }

    /// One line on the baselines of the test windows, to judge a result against.
    pub fn baseline_note(&self) -> String {
        let truth = self.truth(Split::Test);
        let (naive_mse, naive_mae) = errors(&self.naive_predictions(Split::Test), &truth);
        let (seasonal_mse, seasonal_mae) = errors(&self.seasonal_predictions(Split::Test), &truth);
        format!(
            "baseline on the {} test windows of {} (original scale): last value mse {naive_mse:.4} mae {naive_mae:.4}; seasonal naive (season {}) \
             mse {seasonal_mse:.4} mae {seasonal_mae:.4}; {}",
            self.eval_size(),
            self.name,
            self.season,
            self.series.gaps.describe()
        )
    }

    /// Original-scale value of feature `f` at step `t`.
    fn value(&self, t: usize, f: usize) -> f32 {
        self.series.values[t * self.series.dim() + f]
    }

    /// `(N, horizon, K)` built from `at(origin, t, feature)` over the windows of `split`.
    fn forecast_with(&self, split: Split, at: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.split_len(split) * self.output_dim());
        for origin in self.origins(split) {
            for t in origin..origin + self.horizon {
                out.extend(self.targets.iter().map(|&f| at(origin, t, f)));
            }
        }
        out
    }
}

/// `(D)` mean and population standard deviation of each feature over the first `rows` rows of `(T, D)` values,
/// accumulated in f64; a standard deviation of 0 becomes 1 so that a constant feature maps to 0.
fn train_statistics(values: &[f32], dim: usize, rows: usize) -> (Vec<f32>, Vec<f32>) {
    let train = &values[..rows * dim];
    let mut mean = vec![0.0f64; dim];
    for row in train.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut var = vec![0.0f64; dim];
    for row in train.chunks_exact(dim) {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(v) - m).powi(2);
        }
    }
    let std = var.iter().map(|s| (s / rows as f64).sqrt()).map(|s| if s > 0.0 { s as f32 } else { 1.0 }).collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

/// MSE and MAE of `pred` against `truth` (same length), accumulated in f64.
fn errors(pred: &[f32], truth: &[f32]) -> (f64, f64) {
    let n = pred.len().max(1) as f64;
    let (sq, abs) = pred.iter().zip(truth).fold((0.0f64, 0.0f64), |(sq, abs), (&p, &y)| {
        let d = f64::from(p) - f64::from(y);
        (sq + d * d, abs + d.abs())
    });
    (sq / n, abs / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A univariate series with the given values and no gaps.
    fn series(values: &[f32]) -> Series {
        Series {
            names: vec!["y".into()],
            values: values.to_vec(),
            interpolated: vec![false; values.len()],
            times: (0..values.len()).map(|t| t.to_string()).collect(),
            gaps: GapReport::default(),
        }
    }

    #[test]
    fn splits_windows_and_batches() {
        // 20 steps: train 0..14, validation 14..17, test 17..20.
        let values: Vec<f32> = (0..20).map(|t| t as f32).collect();
        let task = Forecast::from_series("ramp", series(&values), vec![0], 2, 3, 1, 0).unwrap();
        assert_eq!((task.split_steps(Split::Train), task.split_steps(Split::Validation), task.split_steps(Split::Test)), (0..14, 14..17, 17..20));
        assert_eq!((task.origins(Split::Train), task.origins(Split::Validation), task.origins(Split::Test)), (3..14, 14..17, 17..20));
        assert_eq!(task.eval_size(), 3);
        let (mean, std) = task.normalisation();
        let batch = task.eval_batch(1, 5);
        assert_eq!((batch.batch, batch.seq_len), (2, 3));
        let norm = |v: f32| (v - mean[0]) / std[0];
        assert_eq!(batch.inputs, Inputs::Dense([15.0, 16.0, 17.0, 16.0, 17.0, 18.0].map(norm).to_vec()));
        assert_eq!(batch.targets, Targets::Values([18.0, 19.0].map(norm).to_vec()));
        assert_eq!(task.io(), TaskIo { input: InputKind::Dense { dim: 1 }, output_dim: 1, readout: Readout::LastStep });
    }

    #[test]
    fn normalisation_uses_training_statistics_only() {
        // Training steps 0..14 alternate 1 and 3 (mean 2, std 1); the later steps are huge.
        let mut values: Vec<f32> = (0..14).map(|t| if t % 2 == 0 { 1.0 } else { 3.0 }).collect();
        values.extend([1000.0; 6]);
        let task = Forecast::from_series("s", series(&values), vec![0], 2, 2, 1, 0).unwrap();
        assert_eq!(task.normalisation(), (&[2.0f32][..], &[1.0f32][..]));
        assert_eq!(task.normalised()[0], -1.0);
        assert_eq!(task.normalised()[19], 998.0);
        // A constant training feature keeps scale 1.
        let flat = Forecast::from_series("flat", series(&[5.0; 20]), vec![0], 2, 2, 1, 0).unwrap();
        assert_eq!(flat.normalisation(), (&[5.0f32][..], &[1.0f32][..]));
    }

    #[test]
    fn baselines_on_a_tiny_series() {
        // 20 steps, season 4, horizon 2: test origins 17 and 18 predict (17, 18) and (18, 19).
        let values: Vec<f32> = (0..20).map(|t| (t * t) as f32).collect();
        let task = Forecast::from_series("sq", series(&values), vec![0], 4, 3, 2, 0).unwrap();
        assert_eq!(task.origins(Split::Test), 17..19);
        let y = |t: usize| (t * t) as f32;
        assert_eq!(task.truth(Split::Test), vec![y(17), y(18), y(18), y(19)]);
        assert_eq!(task.naive_predictions(Split::Test), vec![y(16), y(16), y(17), y(17)]);
        assert_eq!(task.seasonal_predictions(Split::Test), vec![y(13), y(14), y(14), y(15)]);
        // Perfect predictions score 0; the baselines are scored on the same windows.
        let m = task.evaluate_original(Split::Test, &task.truth(Split::Test)).unwrap();
        assert_eq!((m.mse, m.mae, m.windows), (0.0, 0.0, 2));
        let naive_diffs = [289.0 - 256.0, 324.0 - 256.0, 324.0 - 289.0, 361.0 - 289.0];
        let seasonal_diffs = [289.0 - 169.0, 324.0 - 196.0, 324.0 - 196.0, 361.0 - 225.0];
        let mse = |d: &[f64]| d.iter().map(|x| x * x).sum::<f64>() / 4.0;
        let mae = |d: &[f64]| d.iter().sum::<f64>() / 4.0;
        assert_eq!((m.naive_mse, m.naive_mae), (mse(&naive_diffs), mae(&naive_diffs)));
        assert_eq!((m.seasonal_mse, m.seasonal_mae), (mse(&seasonal_diffs), mae(&seasonal_diffs)));
        // Normalised outputs are mapped back before scoring: the normalised truth scores 0.
        let Targets::Values(norm) = task.eval_batch(0, 2).targets else { unreachable!() };
        let back = task.test_metrics(&norm).unwrap();
        assert!(back.mse < 1e-6 && back.mae < 1e-3, "{back:?}");
        assert_eq!(back.naive_mse, m.naive_mse);
        assert!(matches!(task.test_metrics(&norm[..3]), Err(Error::Shape { .. })));
    }

    #[test]
    fn seasonal_naive_beyond_one_season_repeats_the_last_season() {
        // Season 2, horizon 3: ŷ[t] = y[t-2], ŷ[t+1] = y[t-1], ŷ[t+2] = y[t-2].
        let values: Vec<f32> = (0..40).map(|t| t as f32).collect();
        let task = Forecast::from_series("r", series(&values), vec![0], 2, 4, 3, 0).unwrap();
        let first = task.origins(Split::Test).start;
        let seasonal = task.seasonal_predictions(Split::Test);
        let f = first as f32;
        assert_eq!(&seasonal[..3], &[f - 2.0, f - 1.0, f - 2.0]);
    }

    #[test]
    fn multivariate_inputs_single_target() {
        // Two features; the target is feature 1 = 10 * t.
        let values: Vec<f32> = (0..30).flat_map(|t| [t as f32, 10.0 * t as f32]).collect();
        let s = Series {
            names: vec!["a".into(), "b".into()],
            values,
            interpolated: vec![false; 60],
            times: (0..30).map(|t| t.to_string()).collect(),
            gaps: GapReport::default(),
        };
        let task = Forecast::from_series("two", s, vec![1], 3, 4, 2, 0).unwrap();
        assert_eq!(task.io(), TaskIo { input: InputKind::Dense { dim: 2 }, output_dim: 2, readout: Readout::LastStep });
        let batch = task.eval_batch(0, 1);
        let (Inputs::Dense(x), Targets::Values(y)) = (&batch.inputs, &batch.targets) else { unreachable!() };
        assert_eq!((x.len(), y.len()), (4 * 2, 2));
        let mut back = y.clone();
        task.denormalise(&mut back);
        let origin = task.origins(Split::Test).start as f32;
        assert!((back[0] - 10.0 * origin).abs() < 1e-3 && (back[1] - 10.0 * (origin + 1.0)).abs() < 1e-3, "{back:?}");
    }

    #[test]
    fn training_batches_are_deterministic_and_stay_in_the_training_split() {
        let values: Vec<f32> = (0..100).map(|t| (t as f32 * 0.3).sin()).collect();
        let task = Forecast::from_series("sin", series(&values), vec![0], 10, 5, 2, 9).unwrap();
        assert_eq!(task.train_batch(4, 16), task.train_batch(4, 16));
        assert_ne!(task.train_batch(4, 16), task.train_batch(5, 16));
        let windows = task.split_len(Split::Train);
        assert_eq!(windows, 70 - 5 - 2 + 1);
        // One epoch covers every training window once: the targets are then the whole set of training targets.
        let batch = task.train_batch(0, windows);
        let Targets::Values(y) = &batch.targets else { unreachable!() };
        let mut got: Vec<f32> = y.chunks_exact(2).map(|w| w[0]).collect();
        let mut want: Vec<f32> = task.origins(Split::Train).map(|t| task.normalised()[t]).collect();
        got.sort_by(f32::total_cmp);
        want.sort_by(f32::total_cmp);
        assert_eq!(got, want);
    }

    #[test]
    fn too_short_series_are_config_errors_with_the_numbers() {
        let values: Vec<f32> = (0..20).map(|t| t as f32).collect();
        let err = Forecast::from_series("short", series(&values), vec![0], 2, 14, 1, 0).unwrap_err();
        assert!(matches!(err, Error::Config { .. }));
        assert!(err.to_string().contains("20 steps") && err.to_string().contains("window of 14"), "{err}");
        let err = Forecast::from_series("short", series(&values), vec![0], 2, 3, 4, 0).unwrap_err();
        assert!(err.to_string().contains("fewer than the horizon of 4"), "{err}");
        let err = Forecast::from_series("short", series(&values), vec![0], 15, 3, 1, 0).unwrap_err();
        assert!(err.to_string().contains("season 15"), "{err}");
        assert!(Forecast::from_series("short", series(&values), vec![1], 2, 3, 1, 0).is_err());
        assert!(Forecast::from_series("short", series(&values), vec![0], 2, 0, 1, 0).is_err());
        assert!(matches!(Forecast::new(SeriesKind::Sunspots, 300, 1, 0), Err(Error::Config { .. })));
    }

    #[test]
    fn shipped_series_have_enough_history_and_report_gaps() {
        for &kind in SeriesKind::ALL {
            let task = Forecast::new(kind, 24, 1, 0).unwrap();
            assert_eq!(task.io(), Forecast::io_for(kind, 1));
            assert!(task.origins(Split::Test).start >= kind.season(), "{}: test windows need a season of history", kind.name());
            let m = task.test_metrics(&vec![0.0; task.eval_size()]).unwrap();
            assert!(m.naive_mse.is_finite() && m.seasonal_mse.is_finite() && m.windows == task.eval_size());
            assert_eq!(SeriesKind::parse(kind.name()).unwrap(), kind);
        }
        let co2 = Forecast::new(SeriesKind::Co2, 52, 4, 0).unwrap();
        assert_eq!((co2.series().len(), co2.gaps().interpolated, co2.gaps().gaps, co2.gaps().longest_gap), (2284, 59, 22, 18));
        assert!(co2.baseline_note().contains("59 missing values"), "{}", co2.baseline_note());
        let seattle = Forecast::new(SeriesKind::Seattle, 30, 7, 0).unwrap();
        assert_eq!((seattle.series().len(), seattle.series().dim(), seattle.output_dim()), (1461, 4, 7));
        assert!(SeriesKind::parse("nope").is_err());
    }
}
