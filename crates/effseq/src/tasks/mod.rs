//! Tasks: seeded data, the loss and the metric. Each task says what its model must read and emit
//! ([`TaskIo`]); the [`crate::model::Network`] builds its input layer and head from that.

use crate::config::{TaskConfig, TaskKind};
use crate::error::{check_len, Error, Result};
use crate::layers::loss;
use crate::model::Network;
use crate::rng::{rng_for, streams, Rng};

pub mod adding;
pub mod copy;

/// What the model reads at each time step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// `dim` real features per step.
    Dense { dim: usize },
    /// One token id in `0..vocab` per step (the model embeds it).
    Tokens { vocab: usize },
}

/// Where the model's predictions are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// One prediction per sequence, from the last time step: output `(B, out_dim)`.
    LastStep,
    /// One prediction per time step: output `(B, T, out_dim)`.
    EveryStep,
}

/// The model-facing shape of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskIo {
    /// Input per step.
    pub input: InputKind,
    /// Width of each prediction (regression targets or class logits).
    pub output_dim: usize,
    /// Where predictions are read.
    pub readout: Readout,
}

/// A batch's inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// `(B, T, D)` features.
    Dense(Vec<f32>),
    /// `(B, T)` token ids.
    Tokens(Vec<u32>),
}

/// A batch's targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Regression targets, `(B, out_dim)` (LastStep) or `(B, T, out_dim)` (EveryStep).
    Values(Vec<f32>),
    /// Class ids, `(B)` (LastStep) or `(B, T)` (EveryStep); [`IGNORE`] marks a position without a target.
    Classes(Vec<i32>),
}

/// Class target that is skipped by the loss and the metric (PyTorch's `ignore_index`).
pub const IGNORE: i32 = -100;

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
}

/// Sequences per evaluation batch are capped so that one batch holds about this many time steps (`B * T`),
/// which bounds the activation memory of an evaluation forward pass on long sequences.
pub const EVAL_STEPS_PER_BATCH: usize = 32_768;
/// Upper bound on the sequences of one evaluation batch.
pub const EVAL_MAX_BATCH: usize = 256;

/// A generated task: the training stream, the fixed evaluation set, the loss and the metric.
#[derive(Clone, Debug)]
pub enum Task {
    /// The adding problem, [`adding`].
    Adding(adding::Adding),
    /// The copy-memory task, [`copy`].
    Copy(copy::Copy),
}

/// The result of evaluating a model on a task's evaluation set.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// The training loss (MSE or cross-entropy over every step) on the evaluation set.
    pub loss: f32,
    /// The task metric: MSE for adding, accuracy over the 10 recall steps for copy.
    pub metric: f32,
    /// Name of `metric`.
    pub metric_name: &'static str,
    /// Whether a larger `metric` is better.
    pub higher_is_better: bool,
    /// Number of evaluated sequences.
    pub sequences: usize,
    /// Copy only: the cross-entropy over the 10 recall steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall_loss: Option<f32>,
}

impl Task {
    /// The model-facing shape of a task kind (needs no data).
    pub fn io_of(kind: TaskKind) -> TaskIo {
        match kind {
            TaskKind::Adding => adding::Adding::io(),
            TaskKind::Copy => copy::Copy::io(),
        }
    }

    /// The task of `cfg`, whose every random stream derives from `seed`.
    pub fn new(cfg: &TaskConfig, seed: u64) -> Result<Task> {
        Ok(match cfg.kind {
            TaskKind::Adding => Task::Adding(adding::Adding::new(cfg.seq_len, cfg.eval_size, seed)?),
            TaskKind::Copy => Task::Copy(copy::Copy::new(cfg.seq_len, cfg.eval_size, seed)?),
        })
    }

    /// Which task.
    pub fn kind(&self) -> TaskKind {
        match self {
            Task::Adding(_) => TaskKind::Adding,
            Task::Copy(_) => TaskKind::Copy,
        }
    }

    /// What the model reads and emits.
    pub fn io(&self) -> TaskIo {
        Task::io_of(self.kind())
    }

    /// Name of the task metric: `mse` (adding) or `accuracy` (copy, over the 10 recall steps).
    pub fn metric_name(&self) -> &'static str {
        match self {
            Task::Adding(_) => "mse",
            Task::Copy(_) => "accuracy",
        }
    }

    /// Whether a larger metric is better.
    pub fn higher_is_better(&self) -> bool {
        matches!(self, Task::Copy(_))
    }

    /// One line on the score of the trivial strategy, to judge a result against.
    pub fn baseline_note(&self) -> String {
        match self {
            Task::Adding(_) => format!("baseline: always predicting 1.0 gives mse {:.3}", adding::BASELINE_MSE),
            Task::Copy(c) => format!(
                "baseline: the memoryless strategy gives cross-entropy {:.4} (10 ln 8 / {}) and accuracy {:.3}",
                c.baseline_cross_entropy(),
                c.total_len(),
                1.0 / f64::from(copy::DIGIT_CHOICES)
            ),
        }
    }

    /// Steps per sequence as the model sees them (adding: T; copy: T + 20).
    pub fn steps_per_sequence(&self) -> usize {
        match self {
            Task::Adding(a) => a.seq_len(),
            Task::Copy(c) => c.total_len(),
        }
    }

    /// The training batch of `step` (from `rng_for(seed, streams::TRAIN_DATA + step)`, so a resumed run sees
    /// exactly the data of an uninterrupted one).
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        match self {
            Task::Adding(a) => a.train_batch(step, batch),
            Task::Copy(c) => c.train_batch(step, batch),
        }
    }

    /// Number of sequences in the evaluation set.
    pub fn eval_size(&self) -> usize {
        match self {
            Task::Adding(a) => a.eval_size(),
            Task::Copy(c) => c.eval_size(),
        }
    }

    /// The fixed evaluation set: `eval_size` sequences drawn from `rng_for(seed, streams::EVAL_DATA)`, in batches
    /// of at most [`EVAL_MAX_BATCH`] sequences and about [`EVAL_STEPS_PER_BATCH`] steps. Generated on the fly, so
    /// holding a task costs no memory; every call yields the same batches.
    pub fn eval_set(&self) -> EvalSet<'_> {
        let per_batch = (EVAL_STEPS_PER_BATCH / self.steps_per_sequence()).clamp(1, EVAL_MAX_BATCH);
        let seed = match self {
            Task::Adding(a) => a.seed(),
            Task::Copy(c) => c.seed(),
        };
        EvalSet { task: self, rng: rng_for(seed, streams::EVAL_DATA), remaining: self.eval_size(), per_batch }
    }

    /// Runs `network` over the evaluation set (forward only, dropout off) and scores it.
    pub fn evaluate(&self, network: &mut Network) -> Result<Evaluation> {
        let mut acc = EvalAccumulator::default();
        for batch in self.eval_set() {
            let outputs = network.predict(&batch.inputs, batch.batch, batch.seq_len)?;
            acc.add(self, &outputs, &batch)?;
        }
        Ok(acc.finish(self))
    }

    /// `count` sequences drawn from `rng`.
    pub fn generate(&self, rng: &mut Rng, count: usize) -> Batch {
        match self {
            Task::Adding(a) => a.generate(rng, count),
            Task::Copy(c) => c.generate(rng, count),
        }
    }

    /// The training loss of `outputs` on `batch` and its gradient d(loss)/d(outputs).
    ///
    /// `outputs`: `(B, 1)` predictions (adding, MSE) or `(B, T + 20, V)` logits (copy, cross-entropy averaged
    /// over every step).
    pub fn loss(&self, outputs: &[f32], batch: &Batch) -> Result<(f32, Vec<f32>)> {
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

/// The evaluation batches of a task, see [`Task::eval_set`].
#[derive(Clone, Debug)]
pub struct EvalSet<'a> {
    /// The generator.
    task: &'a Task,
    /// The evaluation stream; sequences are drawn one after the other, so batching does not change the data.
    rng: Rng,
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
        Some(self.task.generate(&mut self.rng, n))
    }
}

/// Sums over an evaluation set, turned into an [`Evaluation`] at the end.
#[derive(Clone, Debug, Default)]
pub struct EvalAccumulator {
    /// Sum of the per-batch loss times the number of terms it averages.
    loss_sum: f64,
    /// Number of loss terms (adding: sequences; copy: counted steps).
    loss_terms: usize,
    /// Copy: sum of the recall-window cross-entropy times its counted steps.
    recall_loss_sum: f64,
    /// Copy: counted recall steps.
    recall_terms: usize,
    /// Copy: correctly predicted recall steps.
    recall_correct: usize,
    /// Sequences seen.
    sequences: usize,
}

impl EvalAccumulator {
    /// Adds the model's `outputs` on `batch` (shapes as in [`Task::loss`]).
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
                self.recall_terms += recall.counted;
                self.recall_correct += recall.correct;
            }
        }
        Ok(())
    }

    /// The evaluation over everything added so far.
    pub fn finish(&self, task: &Task) -> Evaluation {
        let mean = |sum: f64, n: usize| if n == 0 { f32::NAN } else { (sum / n as f64) as f32 };
        let loss = mean(self.loss_sum, self.loss_terms);
        let (metric, recall_loss) = match task {
            Task::Adding(_) => (loss, None),
            Task::Copy(_) => (mean(self.recall_correct as f64, self.recall_terms), Some(mean(self.recall_loss_sum, self.recall_terms))),
        };
        Evaluation { loss, metric, metric_name: task.metric_name(), higher_is_better: task.higher_is_better(), sequences: self.sequences, recall_loss }
    }
}

#[cfg(test)]
mod task_tests {
    use super::*;

    fn cfg(kind: TaskKind, seq_len: usize, eval_size: usize) -> TaskConfig {
        TaskConfig { kind, seq_len, eval_size }
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
        let eval = acc.finish(&task);
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
        let eval = acc.finish(&task);
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
        let eval = acc.finish(&task);
        assert_eq!(eval.metric, 1.0);
        assert!(eval.loss < 1e-6 && eval.recall_loss.unwrap() < 1e-6);
    }

    #[test]
    fn loss_rejects_outputs_of_the_wrong_size() {
        let task = Task::new(&cfg(TaskKind::Adding, 10, 4), 0).unwrap();
        let batch = task.train_batch(0, 4);
        assert!(matches!(task.loss(&[0.0; 3], &batch), Err(Error::Shape { .. })));
    }
}
