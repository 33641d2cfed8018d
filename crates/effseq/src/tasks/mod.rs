//! Tasks: seeded data, the loss and the metric. Each task says what its model must read and emit
//! ([`TaskIo`]); the [`crate::model::Network`] builds its input layer and head from that.

use crate::config::{TaskConfig, TaskKind};
use crate::error::{check_len, Error, Result};
use crate::layers::loss;
use crate::model::Network;
use crate::rng::{rng_for, streams, Rng};

pub mod adding;
pub mod charlm;
pub mod copy;
pub mod custom;
pub mod digits;
pub mod duplicate;
pub mod forecast;
pub mod listops;
pub mod selective_copy;
pub mod smnist;

pub use crate::layers::loss::IGNORE;
pub use crate::model::{InputKind, Inputs, Readout, TaskIo};

/// A batch's targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Regression targets, `(B, out_dim)` (LastStep) or `(B, T, out_dim)` (EveryStep).
    Values(Vec<f32>),
    /// Class ids, `(B)` (LastStep) or `(B, T)` (EveryStep); [`IGNORE`] marks a position without a target.
    Classes(Vec<i32>),
}

/// A batch of `batch` sequences of `seq_len` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// B.
    pub batch: usize,
    /// T.
    pub seq_len: usize,
    /// Inputs.
    pub inputs: Inputs,
    /// Targets.
    pub targets: Targets,
    /// Valid steps of each sequence when the batch is right-padded to `seq_len` (ListOps), `(B)`; `None` when every
    /// sequence fills all `seq_len` steps.
    pub lengths: Option<Vec<usize>>,
}

/// Sequences per evaluation batch are capped so that one batch holds about this many time steps (`B * T`),
/// which bounds the activation memory of an evaluation forward pass on long sequences.
pub const EVAL_STEPS_PER_BATCH: usize = 32_768;
/// Upper bound on the sequences of one evaluation batch.
pub const EVAL_MAX_BATCH: usize = 256;

/// A task: the training stream, the fixed evaluation set, the loss and the metric.
///
/// Adding and copy generate their sequences from the seed; digits, smnist and forecast read the data sets shipped
/// in `data/` ([`crate::data`]) and evaluate on a fixed test split.
#[derive(Clone, Debug)]
pub enum Task {
    /// The adding problem, [`adding`].
    Adding(adding::Adding),
    /// The copy-memory task, [`copy`].
    Copy(copy::Copy),
    /// Sequential UCI digits, [`digits`].
    Digits(digits::Digits),
    /// Sequential or permuted MNIST, [`smnist`].
    Smnist(smnist::Smnist),
    /// Forecasting a real series, [`forecast`].
    Forecast(forecast::Forecast),
    /// Character-level language modelling, [`charlm`].
    Charlm(charlm::CharLm),
    /// Long Range Arena ListOps, [`listops`].
    Listops(listops::ListOps),
    /// Selective copying, [`selective_copy`].
    SelectiveCopy(selective_copy::SelectiveCopy),
    /// The Reformer duplication task, [`duplicate`].
    Duplicate(duplicate::Duplicate),
    /// The user's own data, [`custom`] (boxed: it holds its splits).
    Custom(Box<custom::Custom>),
}

/// The result of evaluating a model on a task's evaluation set.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// The training loss on the evaluation set: MSE (adding; forecast, on the normalised scale) or cross-entropy
    /// (copy over every step; digits and smnist over the sequences).
    pub loss: f32,
    /// The task metric: MSE for adding, accuracy over the 10 recall steps for copy, test accuracy for digits and
    /// smnist, test MSE on the original scale for forecast.
    pub metric: f32,
    /// Name of `metric`.
    pub metric_name: &'static str,
    /// Whether a larger `metric` is better.
    pub higher_is_better: bool,
    /// Number of evaluated sequences (forecast: test windows).
    pub sequences: usize,
    /// Copy only: the cross-entropy over the 10 recall steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall_loss: Option<f32>,
    /// Forecast only: MSE and MAE of the model on the original scale next to those of the naive (last value) and
    /// seasonal-naive baselines on the same test windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<forecast::ForecastMetrics>,
    /// Custom real-valued targets: the mean absolute error on the original scale (the metric is the MSE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f32>,
}

impl Task {
    /// The model-facing shape of the task `cfg` describes, without generating any data (forecast: the input
    /// features of the series and `horizon` times its targets; charlm: the alphabet of its text, which is read).
    pub fn io_of(cfg: &TaskConfig) -> Result<TaskIo> {
        Ok(match cfg.kind {
            TaskKind::Adding => adding::Adding::io(),
            TaskKind::Copy => copy::Copy::io(),
            TaskKind::Digits => digits::Digits::io(),
            TaskKind::Smnist => smnist::Smnist::io(),
            TaskKind::Forecast => forecast::Forecast::io_for(cfg.series, cfg.horizon),
            TaskKind::Charlm => charlm::CharLm::new(cfg.seq_len, 0)?.io(),
            TaskKind::Listops => listops::ListOps::io(),
            TaskKind::SelectiveCopy => selective_copy::SelectiveCopy::io(),
            TaskKind::Duplicate => duplicate::Duplicate::io_for(duplicate::DEFAULT_VOCAB),
            TaskKind::Custom => match &cfg.custom {
                Some(c) if c.is_resolved() => custom::io_of(c, cfg.horizon),
                _ => return Err(Error::config("the custom task's inputs and outputs are known once its training data was read (Task::prepare)")),
            },
        })
    }

    /// [`Task::new`], except that the custom task may start from an unresolved config: it reads its training data
    /// and fills in `cfg.custom` and `cfg.seq_len` (what a checkpoint must store). Every other task is [`Task::new`].
    pub fn prepare(cfg: &mut TaskConfig, seed: u64) -> Result<Task> {
        if cfg.kind == TaskKind::Custom {
            cfg.validate()?;
            return Ok(Task::Custom(Box::new(custom::Custom::prepare(cfg, seed)?)));
        }
        Task::new(cfg, seed)
    }

    /// The task of `cfg`, whose every random stream derives from `seed`. The real-data tasks load their files
    /// from [`crate::data::data_dir`]: a missing or malformed file is an [`Error::Data`] naming it.
    pub fn new(cfg: &TaskConfig, seed: u64) -> Result<Task> {
        cfg.validate()?;
        let task = match cfg.kind {
            TaskKind::Adding => Task::Adding(adding::Adding::new(cfg.seq_len, cfg.eval_size, seed)?),
            TaskKind::Copy => Task::Copy(copy::Copy::new(cfg.seq_len, cfg.eval_size, seed)?),
            TaskKind::Digits => Task::Digits(digits::Digits::new(seed)?),
            TaskKind::Smnist => Task::Smnist(smnist::Smnist::new(cfg.permute_seed, seed)?),
            TaskKind::Forecast => Task::Forecast(forecast::Forecast::new(cfg.series, cfg.seq_len, cfg.horizon, seed)?),
            TaskKind::Charlm => Task::Charlm(charlm::CharLm::new(cfg.seq_len, seed)?),
            TaskKind::Listops => Task::Listops(listops::ListOps::new(cfg.seq_len, listops::PUBLISHED_TRAIN_SIZE, cfg.eval_size, seed)?),
            TaskKind::SelectiveCopy => Task::SelectiveCopy(selective_copy::SelectiveCopy::new(cfg.seq_len, cfg.eval_size, seed)?),
            TaskKind::Duplicate => Task::Duplicate(duplicate::Duplicate::new(cfg.seq_len, cfg.eval_size, seed)?),
            TaskKind::Custom => Task::Custom(Box::new(custom::Custom::new(cfg, seed)?)),
        };
        if let (Some(fixed), Some(found)) = (cfg.kind.fixed_seq_len(), task.fixed_data_seq_len()) {
            if fixed != found {
                let file = if cfg.kind == TaskKind::Digits { crate::data::DIGITS_FILE } else { crate::data::MNIST_IMAGES_FILE };
                let msg = format!("the {} data has {found} pixels per image, the task expects {fixed}", cfg.kind.name());
                return Err(crate::data::data_error(&crate::data::data_path(file), None, msg));
            }
        }
        Ok(task)
    }

    /// Which task.
    pub fn kind(&self) -> TaskKind {
        match self {
            Task::Adding(_) => TaskKind::Adding,
            Task::Copy(_) => TaskKind::Copy,
            Task::Digits(_) => TaskKind::Digits,
            Task::Smnist(_) => TaskKind::Smnist,
            Task::Forecast(_) => TaskKind::Forecast,
            Task::Charlm(_) => TaskKind::Charlm,
            Task::Listops(_) => TaskKind::Listops,
            Task::SelectiveCopy(_) => TaskKind::SelectiveCopy,
            Task::Duplicate(_) => TaskKind::Duplicate,
            Task::Custom(_) => TaskKind::Custom,
        }
    }

    /// What the model reads and emits.
    pub fn io(&self) -> TaskIo {
        match self {
            Task::Adding(_) => adding::Adding::io(),
            Task::Copy(_) => copy::Copy::io(),
            Task::Digits(_) => digits::Digits::io(),
            Task::Smnist(_) => smnist::Smnist::io(),
            Task::Forecast(f) => f.io(),
            Task::Charlm(c) => c.io(),
            Task::Listops(_) => listops::ListOps::io(),
            Task::SelectiveCopy(_) => selective_copy::SelectiveCopy::io(),
            Task::Duplicate(d) => d.io(),
            Task::Custom(c) => c.io(),
        }
    }

    /// Name of the task metric: `mse` (adding; forecast, on the original scale) or `accuracy` (copy, over the 10
    /// recall steps; digits and smnist).
    pub fn metric_name(&self) -> &'static str {
        match self {
            Task::Adding(_) => "mse",
            Task::Copy(_) => "accuracy",
            Task::Digits(_) => digits::Digits::metric_name(),
            Task::Smnist(_) => smnist::Smnist::metric_name(),
            Task::Forecast(_) => forecast::Forecast::metric_name(),
            Task::Charlm(_) => "bpc",
            Task::Listops(_) | Task::SelectiveCopy(_) | Task::Duplicate(_) => "accuracy",
            Task::Custom(c) => c.metric_name(),
        }
    }

    /// Whether a larger metric is better.
    pub fn higher_is_better(&self) -> bool {
        match self {
            Task::Adding(_) => false,
            Task::Copy(_) => true,
            Task::Digits(_) => digits::Digits::higher_is_better(),
            Task::Smnist(_) => smnist::Smnist::higher_is_better(),
            Task::Forecast(_) => forecast::Forecast::higher_is_better(),
            Task::Charlm(_) => false,
            Task::Listops(_) | Task::SelectiveCopy(_) | Task::Duplicate(_) => true,
            Task::Custom(c) => c.higher_is_better(),
        }
    }

    /// One line on the score of the trivial strategy (forecast: the naive and seasonal-naive baselines), to judge
    /// a result against.
    pub fn baseline_note(&self) -> String {
        match self {
            Task::Adding(_) => format!("baseline: always predicting 1.0 gives mse {:.3}", adding::BASELINE_MSE),
            Task::Copy(c) => format!(
                "baseline: the memoryless strategy gives cross-entropy {:.4} (10 ln 8 / {}) and accuracy {:.3}",
                c.baseline_cross_entropy(),
                c.total_len(),
                1.0 / f64::from(copy::DIGIT_CHOICES)
            ),
            Task::Digits(d) => d.baseline_note(),
            Task::Smnist(s) => s.baseline_note(),
            Task::Forecast(f) => f.baseline_note(),
            Task::Charlm(c) => c.baseline_note(),
            Task::Listops(l) => l.baseline_note(),
            Task::SelectiveCopy(c) => c.baseline_note(),
            Task::Duplicate(d) => d.baseline_note(),
            Task::Custom(c) => c.baseline_note(),
        }
    }

    /// Steps per sequence as the model sees them (adding: T; copy: T + 20; digits 64; smnist 784; forecast: the
    /// window).
    pub fn steps_per_sequence(&self) -> usize {
        match self {
            Task::Adding(a) => a.seq_len(),
            Task::Copy(c) => c.total_len(),
            Task::Digits(d) => d.seq_len(),
            Task::Smnist(s) => s.seq_len(),
            Task::Forecast(f) => f.seq_len(),
            Task::Charlm(c) => c.seq_len(),
            Task::Listops(l) => l.max_len(),
            Task::SelectiveCopy(c) => c.total_len(),
            Task::Duplicate(d) => d.seq_len(),
            Task::Custom(c) => c.seq_len(),
        }
    }

    /// The pixels per image of a classification data set as loaded; `None` for the other tasks.
    fn fixed_data_seq_len(&self) -> Option<usize> {
        match self {
            Task::Digits(d) => Some(d.seq_len()),
            Task::Smnist(s) => Some(s.seq_len()),
            Task::Adding(_)
            | Task::Copy(_)
            | Task::Forecast(_)
            | Task::Charlm(_)
            | Task::Listops(_)
            | Task::SelectiveCopy(_)
            | Task::Duplicate(_)
            | Task::Custom(_) => None,
        }
    }

    /// The training batch of `step`, a function of `(seed, step)` only, so a resumed run sees exactly the data of
    /// an uninterrupted one: adding and copy draw it from `rng_for(seed, streams::TRAIN_DATA + step)`, the
    /// real-data tasks take it from seeded epoch permutations of their training split
    /// ([`crate::data::EpochSampler`]).
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        match self {
            Task::Adding(a) => a.train_batch(step, batch),
            Task::Copy(c) => c.train_batch(step, batch),
            Task::Digits(d) => d.train_batch(step, batch),
            Task::Smnist(s) => s.train_batch(step, batch),
            Task::Forecast(f) => f.train_batch(step, batch),
            Task::Charlm(c) => c.train_batch(step, batch),
            Task::Listops(l) => l.train_batch(step, batch).batch,
            Task::SelectiveCopy(c) => c.train_batch(step, batch),
            Task::Duplicate(d) => d.train_batch(step, batch),
            Task::Custom(c) => c.train_batch(step, batch),
        }
    }

    /// Number of sequences in the evaluation set: `eval_size` for the generated tasks, the size of the fixed test
    /// split for the real-data tasks (359 digits, 2,000 MNIST images, the test windows of a series).
    pub fn eval_size(&self) -> usize {
        match self {
            Task::Adding(a) => a.eval_size(),
            Task::Copy(c) => c.eval_size(),
            Task::Digits(d) => d.eval_size(),
            Task::Smnist(s) => s.eval_size(),
            Task::Forecast(f) => f.eval_size(),
            Task::Charlm(c) => c.eval_size(),
            Task::Listops(l) => l.eval_size(),
            Task::SelectiveCopy(c) => c.eval_size(),
            Task::Duplicate(d) => d.eval_size(),
            Task::Custom(c) => c.eval_size(),
        }
    }

    /// The seed of the task's random streams.
    fn seed(&self) -> u64 {
        match self {
            Task::Adding(a) => a.seed(),
            Task::Copy(c) => c.seed(),
            Task::Digits(d) => d.seed(),
            Task::Smnist(s) => s.seed(),
            Task::Forecast(f) => f.seed(),
            Task::Charlm(c) => c.seed(),
            Task::Listops(l) => l.seed(),
            Task::SelectiveCopy(c) => c.seed(),
            Task::Duplicate(d) => d.seed(),
            Task::Custom(c) => c.seed(),
        }
    }

    /// The fixed evaluation set, in batches of at most [`EVAL_MAX_BATCH`] sequences and about
    /// [`EVAL_STEPS_PER_BATCH`] steps. Adding and copy draw `eval_size` sequences from
    /// `rng_for(seed, streams::EVAL_DATA)`, generated on the fly so that holding a task costs no memory; the
    /// real-data tasks page through their test split in order. Every call yields the same batches.
    pub fn eval_set(&self) -> EvalSet<'_> {
        let per_batch = (EVAL_STEPS_PER_BATCH / self.steps_per_sequence()).clamp(1, EVAL_MAX_BATCH);
        let source = match self {
            Task::Adding(_) | Task::Copy(_) | Task::SelectiveCopy(_) | Task::Duplicate(_) => {
                EvalSource::Generated(Box::new(rng_for(self.seed(), streams::EVAL_DATA)))
            }
            Task::Digits(_) | Task::Smnist(_) | Task::Forecast(_) | Task::Charlm(_) | Task::Listops(_) | Task::Custom(_) => EvalSource::Fixed { next: 0 },
        };
        EvalSet { task: self, source, remaining: self.eval_size(), per_batch }
    }

    /// The custom task with a test file: `network` scored on it (as [`Task::evaluate`] on the validation set);
    /// `None` for every other task.
    pub fn evaluate_test(&self, network: &mut Network) -> Result<Option<Evaluation>> {
        let Task::Custom(c) = self else { return Ok(None) };
        let per_batch = (EVAL_STEPS_PER_BATCH / self.steps_per_sequence().max(1)).clamp(1, EVAL_MAX_BATCH);
        let Some(batches) = c.test_batches(per_batch) else { return Ok(None) };
        let mut acc = EvalAccumulator::default();
        for batch in &batches {
            let outputs = network.predict_padded(&batch.inputs, batch.batch, batch.seq_len, batch.lengths.as_deref())?;
            acc.add(self, &outputs, batch)?;
        }
        acc.finish(self).map(Some)
    }

    /// Runs `network` over the evaluation set (forward only, dropout off) and scores it.
    pub fn evaluate(&self, network: &mut Network) -> Result<Evaluation> {
        let mut acc = EvalAccumulator::default();
        for batch in self.eval_set() {
            let outputs = network.predict_padded(&batch.inputs, batch.batch, batch.seq_len, batch.lengths.as_deref())?;
            acc.add(self, &outputs, &batch)?;
        }
        acc.finish(self)
    }

    /// `count` sequences drawn from `rng` (adding, copy); `None` for the real-data tasks, whose sequences come
    /// from their files ([`Task::train_batch`], [`Task::eval_batch`]).
    pub fn generate(&self, rng: &mut Rng, count: usize) -> Option<Batch> {
        match self {
            Task::Adding(a) => Some(a.generate(rng, count)),
            Task::Copy(c) => Some(c.generate(rng, count)),
            Task::SelectiveCopy(c) => Some(c.generate(rng, count)),
            Task::Duplicate(d) => Some(d.generate(rng, count)),
            Task::Digits(_) | Task::Smnist(_) | Task::Forecast(_) | Task::Charlm(_) | Task::Listops(_) | Task::Custom(_) => None,
        }
    }

    /// Test sequences `start..start + count` (clipped to [`Task::eval_size`]) of a real-data task as one batch;
    /// `None` for the generated tasks, whose evaluation set is drawn in order from a stream ([`Task::eval_set`]).
    pub fn eval_batch(&self, start: usize, count: usize) -> Option<Batch> {
        match self {
            Task::Adding(_) | Task::Copy(_) | Task::SelectiveCopy(_) | Task::Duplicate(_) => None,
            Task::Digits(d) => Some(d.eval_batch(start, count)),
            Task::Smnist(s) => Some(s.eval_batch(start, count)),
            Task::Forecast(f) => Some(f.eval_batch(start, count)),
            Task::Charlm(c) => Some(c.eval_batch(start, count)),
            Task::Listops(l) => Some(l.eval_batch(start, count).batch),
            Task::Custom(c) => Some(c.eval_batch(start, count)),
        }
    }

    /// The training loss of `outputs` on `batch` and its gradient d(loss)/d(outputs).
    ///
    /// `outputs`: `(B, 1)` predictions (adding, MSE), `(B, T + 20, V)` logits (copy, cross-entropy averaged
    /// over every step), `(B, C)` logits (digits, smnist, cross-entropy) or `(B, horizon * K)` predictions
    /// (forecast, MSE on the normalised scale).
    pub fn loss(&self, outputs: &[f32], batch: &Batch) -> Result<(f32, Vec<f32>)> {
        if let Task::Custom(c) = self {
            return c.loss(outputs, batch);
        }
        let io = self.io();
        let rows = match io.readout {
            Readout::LastStep => batch.batch,
            Readout::EveryStep => batch.batch * batch.seq_len,
        };
        check_len("task outputs", &[rows, io.output_dim], outputs.len())?;
        match &batch.targets {
            Targets::Values(y) => loss::mse(outputs, y),
            Targets::Classes(y) => {
                let out = loss::cross_entropy(outputs, y, io.output_dim)?;
                Ok((out.loss, out.dlogits))
            }
        }
    }
}

/// Where the batches of an [`EvalSet`] come from.
#[derive(Clone, Debug)]
enum EvalSource {
    /// Adding and copy: sequences are drawn one after the other from the evaluation stream, so batching does not
    /// change the data. Boxed: the ChaCha state is large next to the other variant.
    Generated(Box<Rng>),
    /// The real-data tasks: the test split in order; `next` is the first sequence of the next batch.
    Fixed { next: usize },
}

/// The evaluation batches of a task, see [`Task::eval_set`].
#[derive(Clone, Debug)]
pub struct EvalSet<'a> {
    /// The task.
    task: &'a Task,
    /// Where the sequences come from.
    source: EvalSource,
    /// Sequences still to yield.
    remaining: usize,
    /// Sequences per batch.
    per_batch: usize,
}

impl Iterator for EvalSet<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(self.per_batch);
        self.remaining -= n;
        match &mut self.source {
            EvalSource::Generated(rng) => self.task.generate(rng, n),
            EvalSource::Fixed { next } => {
                let start = *next;
                *next += n;
                self.task.eval_batch(start, n)
            }
        }
    }
}

/// Sums over an evaluation set, turned into an [`Evaluation`] at the end.
#[derive(Clone, Debug, Default)]
pub struct EvalAccumulator {
    /// Sum of the per-batch loss times the number of terms it averages.
    loss_sum: f64,
    /// Number of loss terms (adding: sequences; copy: counted steps; digits, smnist: sequences; forecast: predicted
    /// values).
    loss_terms: usize,
    /// Copy: sum of the recall-window cross-entropy times its counted steps.
    recall_loss_sum: f64,
    /// Predictions scored for accuracy (copy: recall steps; digits, smnist: sequences).
    scored: usize,
    /// Correct predictions among `scored`.
    correct: usize,
    /// Forecast: `(N, horizon, K)` the model's normalised outputs for the test windows seen so far, in order.
    forecast_outputs: Vec<f32>,
    /// Sequences seen.
    sequences: usize,
    /// Custom real-valued targets: sums of squared and absolute errors on the original scale.
    squared_error_sum: f64,
    absolute_error_sum: f64,
}

impl EvalAccumulator {
    /// Adds the model's `outputs` on `batch` (shapes as in [`Task::loss`]). Forecast batches must be added in the
    /// order of the test windows ([`Task::eval_set`] yields them so).
    pub fn add(&mut self, task: &Task, outputs: &[f32], batch: &Batch) -> Result<()> {
        self.sequences += batch.batch;
        match task {
            Task::Adding(_) => {
                let (mse, _) = task.loss(outputs, batch)?;
                self.loss_sum += f64::from(mse) * batch.batch as f64;
                self.loss_terms += batch.batch;
            }
            Task::Copy(c) => {
                let Targets::Classes(targets) = &batch.targets else {
                    return Err(Error::Invalid("copy batches carry class targets".into()));
                };
                check_len("copy logits", &[batch.batch, batch.seq_len, copy::VOCAB], outputs.len())?;
                let all = loss::cross_entropy(outputs, targets, copy::VOCAB)?;
                self.loss_sum += f64::from(all.loss) * all.counted as f64;
                self.loss_terms += all.counted;
                // The recall window: the last 10 steps of each sequence, contiguous in (B, T + 20, V).
                let total = c.total_len();
                let recall_start = total - copy::DIGITS;
                let mut recall_logits = Vec::with_capacity(batch.batch * copy::DIGITS * copy::VOCAB); // (B, 10, V)
                let mut recall_targets = Vec::with_capacity(batch.batch * copy::DIGITS); // (B, 10)
                for b in 0..batch.batch {
                    let rows = b * total + recall_start..(b + 1) * total;
                    recall_logits.extend_from_slice(&outputs[rows.start * copy::VOCAB..rows.end * copy::VOCAB]);
                    recall_targets.extend_from_slice(&targets[rows]);
                }
                let recall = loss::cross_entropy(&recall_logits, &recall_targets, copy::VOCAB)?;
                self.recall_loss_sum += f64::from(recall.loss) * recall.counted as f64;
                self.scored += recall.counted;
                self.correct += recall.correct;
            }
            Task::Digits(d) => self.add_classified(&d.score(outputs, batch)?),
            Task::Smnist(s) => self.add_classified(&s.score(outputs, batch)?),
            Task::Listops(l) => self.add_classified(&l.score(outputs, batch)?),
            Task::SelectiveCopy(c) => self.add_classified(&c.score(outputs, batch)?),
            Task::Duplicate(d) => self.add_classified(&d.score(outputs, batch)?),
            Task::Forecast(f) => {
                let (mse, _) = f.loss(outputs, batch)?;
                self.loss_sum += f64::from(mse) * outputs.len() as f64;
                self.loss_terms += outputs.len();
                self.forecast_outputs.extend_from_slice(outputs);
            }
            Task::Charlm(c) => {
                let ce = c.score(outputs, batch)?;
                self.loss_sum += f64::from(ce.loss) * ce.counted as f64;
                self.loss_terms += ce.counted;
            }
            Task::Custom(c) => {
                let score = c.score(outputs, batch)?;
                self.loss_sum += f64::from(score.loss) * score.terms as f64;
                self.loss_terms += score.terms;
                if c.higher_is_better() {
                    self.scored += score.terms;
                    self.correct += score.correct;
                } else {
                    self.squared_error_sum += score.sq;
                    self.absolute_error_sum += score.abs;
                    self.scored += score.terms;
                }
            }
        }
        Ok(())
    }

    /// Adds the cross-entropy and the correct predictions of a sequence-classification batch.
    fn add_classified(&mut self, scored: &loss::CrossEntropyOut) {
        self.loss_sum += f64::from(scored.loss) * scored.counted as f64;
        self.loss_terms += scored.counted;
        self.scored += scored.counted;
        self.correct += scored.correct;
    }

    /// The evaluation over everything added so far. For forecast this must be every test window (the baselines
    /// are computed over all of them): fewer is an [`Error::Shape`].
    pub fn finish(&self, task: &Task) -> Result<Evaluation> {
        let mean = |sum: f64, n: usize| if n == 0 { f32::NAN } else { (sum / n as f64) as f32 };
        let loss = mean(self.loss_sum, self.loss_terms);
        let accuracy = mean(self.correct as f64, self.scored);
        let (metric, recall_loss, forecast) = match task {
            Task::Adding(_) => (loss, None, None),
            Task::Copy(_) => (accuracy, Some(mean(self.recall_loss_sum, self.scored)), None),
            Task::Digits(_) | Task::Smnist(_) | Task::Listops(_) | Task::SelectiveCopy(_) | Task::Duplicate(_) => (accuracy, None, None),
            // Bits per character: the mean cross-entropy in nats over ln 2.
            Task::Charlm(_) => ((f64::from(loss) / std::f64::consts::LN_2) as f32, None, None),
            Task::Forecast(f) => {
                let metrics = f.test_metrics(&self.forecast_outputs)?;
                (metrics.mse as f32, None, Some(metrics))
            }
            Task::Custom(c) if c.higher_is_better() => (accuracy, None, None),
            Task::Custom(_) => (mean(self.squared_error_sum, self.scored), None, None),
        };
        let mae = match task {
            Task::Custom(c) if !c.higher_is_better() => Some(mean(self.absolute_error_sum, self.scored)),
            _ => None,
        };
        Ok(Evaluation {
            loss,
            metric,
            metric_name: task.metric_name(),
            higher_is_better: task.higher_is_better(),
            sequences: self.sequences,
            recall_loss,
            forecast,
            mae,
        })
    }
}

#[cfg(test)]
mod task_tests {
    use super::*;
    use crate::data;

    fn cfg(kind: TaskKind, seq_len: usize, eval_size: usize) -> TaskConfig {
        TaskConfig { seq_len, eval_size, ..TaskConfig::new(kind) }
    }

    #[test]
    fn eval_set_has_eval_size_sequences_and_does_not_depend_on_the_training_stream() {
        let task = Task::new(&cfg(TaskKind::Adding, 40, 1000), 5).unwrap();
        let eval: Vec<Batch> = task.eval_set().collect();
        assert_eq!(eval.iter().map(|b| b.batch).sum::<usize>(), 1000);
        assert!(eval.iter().all(|b| b.batch <= EVAL_MAX_BATCH && b.seq_len == 40));
        let again = Task::new(&cfg(TaskKind::Adding, 40, 1000), 5).unwrap();
        assert_eq!(eval, again.eval_set().collect::<Vec<_>>());
        assert_ne!(eval[0], task.train_batch(0, eval[0].batch));
        // Batching does not change the data: one big batch holds the same sequences.
        let Task::Adding(gen) = &task else { unreachable!() };
        let whole = gen.generate(&mut rng_for(5, streams::EVAL_DATA), 1000);
        let (Inputs::Dense(whole_x), Inputs::Dense(first_x)) = (&whole.inputs, &eval[0].inputs) else { unreachable!() };
        assert_eq!(&whole_x[..first_x.len()], &first_x[..]);
        // Long copy sequences get smaller evaluation batches.
        let long = Task::new(&cfg(TaskKind::Copy, 1000, 100), 5).unwrap();
        assert!(long.eval_set().all(|b| b.batch * b.seq_len <= EVAL_STEPS_PER_BATCH));
        assert_eq!(long.eval_set().map(|b| b.batch).sum::<usize>(), 100);
    }

    #[test]
    fn bad_configs_are_config_errors() {
        assert!(matches!(Task::new(&cfg(TaskKind::Adding, 1, 10), 0), Err(Error::Config { .. })));
        assert!(matches!(Task::new(&cfg(TaskKind::Copy, 0, 10), 0), Err(Error::Config { .. })));
        assert!(matches!(Task::new(&cfg(TaskKind::Copy, 5, 0), 0), Err(Error::Config { .. })));
    }

    #[test]
    fn adding_baseline_on_the_eval_set() {
        let task = Task::new(&cfg(TaskKind::Adding, 50, 5000), 3).unwrap();
        let mut acc = EvalAccumulator::default();
        for batch in task.eval_set() {
            let batch = &batch;
            acc.add(&task, &vec![1.0; batch.batch], batch).unwrap();
        }
        let eval = acc.finish(&task).unwrap();
        assert_eq!((eval.metric_name, eval.higher_is_better, eval.sequences), ("mse", false, 5000));
        assert!((eval.metric - adding::BASELINE_MSE).abs() < 0.01, "predicting 1.0: mse {}", eval.metric);
        assert_eq!(eval.loss, eval.metric);
    }

    /// Logits of the memoryless copy strategy: certain of the blank before the recall, uniform over 1..=8 in it.
    fn memoryless_logits(total: usize, batch: usize) -> Vec<f32> {
        let mut logits = vec![0.0f32; batch * total * copy::VOCAB]; // (B, T + 20, V)
        for b in 0..batch {
            for t in 0..total {
                let row = &mut logits[(b * total + t) * copy::VOCAB..][..copy::VOCAB];
                if t < total - copy::DIGITS {
                    row.fill(-1e4);
                    row[0] = 0.0;
                } else {
                    row.fill(-1e4);
                    row[1..=8].fill(0.0);
                }
            }
        }
        logits
    }

    #[test]
    fn copy_baseline_on_the_eval_set() {
        let task = Task::new(&cfg(TaskKind::Copy, 30, 2000), 4).unwrap();
        let Task::Copy(c) = &task else { unreachable!() };
        let mut acc = EvalAccumulator::default();
        for batch in task.eval_set() {
            let batch = &batch;
            let logits = memoryless_logits(c.total_len(), batch.batch);
            acc.add(&task, &logits, batch).unwrap();
            let (loss, grad) = task.loss(&logits, batch).unwrap();
            assert!((loss - c.baseline_cross_entropy()).abs() < 1e-4, "training loss {loss}");
            assert_eq!(grad.len(), logits.len());
        }
        let eval = acc.finish(&task).unwrap();
        assert_eq!((eval.metric_name, eval.higher_is_better), ("accuracy", true));
        assert!((eval.loss - c.baseline_cross_entropy()).abs() < 1e-4, "loss {} vs 10 ln 8 / 50", eval.loss);
        assert!((eval.recall_loss.unwrap() - 8f32.ln()).abs() < 1e-4);
        // Ties go to the lowest class index, so the uniform guess always says 1: right 1/8 of the time.
        assert!((eval.metric - 0.125).abs() < 0.02, "accuracy {}", eval.metric);
    }

    #[test]
    fn copy_accuracy_of_a_perfect_model_is_one() {
        let task = Task::new(&cfg(TaskKind::Copy, 5, 50), 4).unwrap();
        let mut acc = EvalAccumulator::default();
        for batch in task.eval_set() {
            let batch = &batch;
            let Targets::Classes(y) = &batch.targets else { unreachable!() };
            let mut logits = vec![0.0f32; y.len() * copy::VOCAB];
            for (row, &class) in logits.chunks_exact_mut(copy::VOCAB).zip(y) {
                row[class as usize] = 20.0;
            }
            acc.add(&task, &logits, batch).unwrap();
        }
        let eval = acc.finish(&task).unwrap();
        assert_eq!(eval.metric, 1.0);
        assert!(eval.loss < 1e-6 && eval.recall_loss.unwrap() < 1e-6);
    }

    #[test]
    fn io_of_the_config_matches_the_loaded_task() {
        let forecast = TaskConfig::forecast(forecast::SeriesKind::Seattle, 3);
        assert_eq!(forecast.seq_len, 60);
        for cfg in [TaskConfig::new(TaskKind::Adding), TaskConfig::new(TaskKind::Copy), TaskConfig::new(TaskKind::Digits), forecast] {
            let task = Task::new(&cfg, 0).unwrap();
            assert_eq!(Task::io_of(&cfg).unwrap(), task.io(), "{:?}", cfg.kind);
            assert_eq!(task.kind(), cfg.kind);
        }
        let seattle = Task::io_of(&TaskConfig::forecast(forecast::SeriesKind::Seattle, 3)).unwrap();
        assert_eq!(seattle, TaskIo { input: InputKind::Dense { dim: 4 }, output_dim: 3, readout: Readout::LastStep });
        assert_eq!(Task::io_of(&TaskConfig::new(TaskKind::Smnist)).unwrap(), smnist::Smnist::io());
    }

    #[test]
    fn digits_eval_set_pages_through_the_test_split() {
        let task = Task::new(&TaskConfig::new(TaskKind::Digits), 9).unwrap();
        let Task::Digits(d) = &task else { unreachable!() };
        let eval: Vec<Batch> = task.eval_set().collect();
        assert_eq!(eval.iter().map(|b| b.batch).collect::<Vec<_>>(), vec![256, 103], "359 test images in batches of at most 256");
        assert_eq!(eval[1], d.eval_batch(256, 103));
        assert_eq!(eval, Task::new(&TaskConfig::new(TaskKind::Digits), 1).unwrap().eval_set().collect::<Vec<_>>(), "the test split ignores the seed");
        assert!(task.generate(&mut rng_for(0, 0), 2).is_none() && Task::new(&cfg(TaskKind::Adding, 5, 5), 0).unwrap().eval_batch(0, 2).is_none());

        // Perfect logits score 1; uniform logits score the first class's share and a loss of ln 10.
        let (mut perfect, mut uniform) = (EvalAccumulator::default(), EvalAccumulator::default());
        for batch in &eval {
            let Targets::Classes(y) = &batch.targets else { unreachable!() };
            let mut logits = vec![0.0f32; y.len() * 10]; // (B, C)
            uniform.add(&task, &logits, batch).unwrap();
            for (row, &class) in logits.chunks_exact_mut(10).zip(y) {
                row[class as usize] = 30.0;
            }
            perfect.add(&task, &logits, batch).unwrap();
        }
        let (perfect, uniform) = (perfect.finish(&task).unwrap(), uniform.finish(&task).unwrap());
        assert_eq!((perfect.metric, perfect.metric_name, perfect.higher_is_better, perfect.sequences), (1.0, "accuracy", true, 359));
        assert!(perfect.loss < 1e-6 && perfect.recall_loss.is_none() && perfect.forecast.is_none());
        assert!((uniform.loss - 10f32.ln()).abs() < 1e-5 && uniform.metric < 0.2, "{uniform:?}");
    }

    #[test]
    fn forecast_evaluation_reports_the_baselines() {
        let mut config = TaskConfig::new(TaskKind::Forecast);
        config.horizon = 2;
        let task = Task::new(&config, 0).unwrap();
        let Task::Forecast(f) = &task else { unreachable!() };
        assert_eq!(task.steps_per_sequence(), TaskConfig::default_window(forecast::SeriesKind::Sunspots));
        // Feeding the naive forecast (normalised) as the model's outputs reproduces the naive scores.
        let (mean, std) = f.normalisation();
        let (mean, std) = (mean[0], std[0]);
        let naive: Vec<f32> = f.naive_predictions(data::Split::Test).iter().map(|v| (v - mean) / std).collect();
        let mut acc = EvalAccumulator::default();
        let mut seen = 0;
        for batch in task.eval_set() {
            let outputs = &naive[seen * 2..(seen + batch.batch) * 2]; // (B, horizon)
            seen += batch.batch;
            acc.add(&task, outputs, &batch).unwrap();
        }
        let eval = acc.finish(&task).unwrap();
        let m = eval.forecast.unwrap();
        assert_eq!((eval.metric_name, eval.higher_is_better, eval.sequences, m.windows), ("mse", false, f.eval_size(), f.eval_size()));
        assert!((m.mse - m.naive_mse).abs() < 1e-3 * m.naive_mse && (m.mae - m.naive_mae).abs() < 1e-3 * m.naive_mae, "{m:?}");
        assert_eq!(eval.metric, m.mse as f32);
        assert!(m.seasonal_mse > 0.0 && m.seasonal_mae > 0.0 && eval.loss > 0.0);
        // Every test window must be scored: a partial evaluation is refused.
        let mut partial = EvalAccumulator::default();
        let first = task.eval_set().next().unwrap();
        partial.add(&task, &vec![0.0; first.batch * 2], &first).unwrap();
        if first.batch < f.eval_size() {
            assert!(matches!(partial.finish(&task), Err(Error::Shape { .. })));
        }
    }

    #[test]
    fn real_data_configs_are_checked() {
        let digits = TaskConfig { seq_len: 50, ..TaskConfig::new(TaskKind::Digits) };
        let err = Task::new(&digits, 0).unwrap_err();
        assert!(matches!(err, Error::Config { .. }) && err.to_string().contains("fixed at 64"), "{err}");
        let window = TaskConfig { seq_len: 400, ..TaskConfig::new(TaskKind::Forecast) };
        assert!(matches!(Task::new(&window, 0), Err(Error::Config { .. })));
        let horizon = TaskConfig { horizon: 0, ..TaskConfig::new(TaskKind::Forecast) };
        assert!(Task::new(&horizon, 0).unwrap_err().to_string().contains("task.horizon"));
        let permuted_adding = TaskConfig { permute_seed: Some(1), ..TaskConfig::new(TaskKind::Adding) };
        assert!(Task::new(&permuted_adding, 0).unwrap_err().to_string().contains("smnist task only"));
    }

    #[test]
    fn loss_rejects_outputs_of_the_wrong_size() {
        let task = Task::new(&cfg(TaskKind::Adding, 10, 4), 0).unwrap();
        let batch = task.train_batch(0, 4);
        assert!(matches!(task.loss(&[0.0; 3], &batch), Err(Error::Shape { .. })));
    }
}
