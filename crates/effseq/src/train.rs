//! The training loop: seeded data, forward, loss, backward, gradient clipping and an optimizer step per
//! iteration, with periodic evaluation and checkpoints.
//!
//! Every random stream is keyed by the step (`rng_for(seed, streams::TRAIN_DATA + step)` for the batch,
//! `rng_for(seed, streams::DROPOUT + step)` for the dropout masks) and the checkpoint holds the optimizer state,
//! so a run resumed from a checkpoint computes the same losses, bit for bit, as one that was never interrupted
//! (as long as the config, and so the learning-rate schedule, is the same).
//!
//! The loop reports to a [`Progress`] so that a front end can draw a progress bar without the library
//! depending on one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::{self, Loaded, TrainState};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::optim::{clip_grad_norm, learning_rate, Optimizer};
use crate::param::{first_non_finite, Module};
use crate::rng::{rng_for, streams};
use crate::tasks::{Evaluation, Task};

/// The summary's training loss is the mean over this many last steps.
pub const RECENT_LOSSES: usize = 20;

/// What happened in one training step, for a [`Progress`].
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Steps completed, this one included (1-based).
    pub step: u64,
    /// The step the run ends at.
    pub total_steps: u64,
    /// Training loss of this step's batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate of this step's update.
    pub lr: f32,
    /// Steps per second since this run (or resumption) started.
    pub steps_per_s: f64,
    /// Seconds since this run (or resumption) started.
    pub elapsed_s: f64,
}

/// Receives the events of a training run. Every method has an empty default.
pub trait Progress {
    /// The run is about to execute steps `start_step..total_steps`.
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {}
    /// A step finished.
    fn on_step(&mut self, _report: &StepReport) {}
    /// The model was evaluated after `step` completed steps.
    fn on_eval(&mut self, _step: u64, _eval: &Evaluation) {}
    /// A checkpoint of `step` completed steps was written to `dir`.
    fn on_checkpoint(&mut self, _step: u64, _dir: &Path) {}
    /// Asked after every step (after [`Progress::on_step`]): `true` ends [`Trainer::run_to`] there, early, with
    /// its final evaluation and checkpoint as at a normal end. Default: never (a time budget or an interruption
    /// of `effseq compare` uses it).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// Asked before every step and once the steps are done: `true` (Ctrl-C, SIGTERM) ends [`Trainer::run_to`] at
    /// once, without the final evaluation: the checkpoint of the steps completed so far is written and the run
    /// returns [`Error::Interrupted`]. Default: never.
    fn interrupted(&mut self) -> bool {
        false
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {}

/// The outcome of [`Trainer::run`].
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Model name (`lstm`, `gru`).
    pub model: &'static str,
    /// Task name (`adding`, `copy`).
    pub task: &'static str,
    /// Steps completed in total (across resumptions).
    pub steps: u64,
    /// Steps executed by this run.
    pub steps_this_run: u64,
    /// Mean training loss of the last [`RECENT_LOSSES`] steps (NaN before the first step).
    pub train_loss: f32,
    /// The final evaluation.
    pub eval: Evaluation,
    /// The best evaluation metric of the run (across resumptions).
    pub best_metric: Option<f32>,
    /// Steps per second of this run, evaluations and checkpoints included.
    pub steps_per_s: f64,
    /// Seconds this run took.
    pub wall_time_s: f64,
    /// Trainable scalars of the model.
    pub params: usize,
    /// Where the final checkpoint was written, if anywhere.
    pub checkpoint: Option<PathBuf>,
}

/// Owns a run: config, task, network, optimizer and progress.
#[derive(Debug)]
pub struct Trainer {
    /// The run configuration (what checkpoints store).
    config: RunConfig,
    /// Data, loss and metric.
    task: Task,
    /// The model.
    network: Network,
    /// The optimizer and its state.
    optimizer: Optimizer,
    /// Completed steps, metrics, recent losses.
    state: TrainState,
    /// The recent losses as a ring, oldest first (mirrors `state.recent_losses`).
    recent: VecDeque<f32>,
    /// Where checkpoints go; `None` writes none.
    checkpoint_dir: Option<PathBuf>,
    /// The step of the last checkpoint this trainer wrote (an interruption right after it writes no second copy).
    saved_step: Option<u64>,
}

impl Trainer {
    /// A fresh run of `config`: the network initialised from `config.train.seed`, step 0.
    /// The custom task reads its training data here and stores what it inferred in the config (see
    /// [`Task::prepare`]); a TCN without levels then gets enough for its longest sequence.
    pub fn new(mut config: RunConfig) -> Result<Trainer> {
        config.validate()?;
        let task = Task::prepare(&mut config.task, config.train.seed)?;
        if config.task.kind == crate::config::TaskKind::Custom {
            config.model.resolve_for_sequence(task.steps_per_sequence());
        }
        config.model.resolve_for_task(config.task.kind);
        let network = Network::new(&config.model, task.io(), config.train.seed)?;
        let optimizer = Optimizer::new(&config.train, &network.params());
        let state = TrainState { seed: config.train.seed, metric_name: Some(task.metric_name().to_string()), ..TrainState::default() };
        Ok(Trainer { config, task, network, optimizer, state, recent: VecDeque::new(), checkpoint_dir: None, saved_step: None })
    }

    /// Continues the run of a loaded checkpoint. To train further than the original `train.steps`, raise
    /// `loaded.config.train.steps` first (this changes the learning-rate schedule from then on).
    pub fn resume(loaded: Loaded) -> Result<Trainer> {
        let Loaded { config, network, optimizer, state } = loaded;
        config.validate()?;
        let task = Task::new(&config.task, config.train.seed)?;
        let recent = state.recent_losses.iter().copied().collect();
        Ok(Trainer { config, task, network, optimizer, state, recent, checkpoint_dir: None, saved_step: None })
    }

    /// Writes periodic and final checkpoints to `dir` (replacing the checkpoint there each time).
    pub fn with_checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// The run configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The task.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The network, mutably (e.g. to evaluate it).
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    /// Progress so far.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Trains up to `config.train.steps`, then evaluates and writes the final checkpoint.
    pub fn run(&mut self, progress: &mut dyn Progress) -> Result<Summary> {
        self.run_to(self.config.train.steps, progress)
    }

    /// Trains up to `end` completed steps (at most `config.train.steps`; the schedule stays that of the full
    /// run), then evaluates and writes a checkpoint, so that a later [`Trainer::resume`] continues exactly.
    ///
    /// A NaN or infinite loss or gradient norm stops the run with [`Error::NonFinite`] before the update, and a
    /// weight that the update made NaN or infinite stops it right after; either way without writing a checkpoint,
    /// so the last good one on disk is kept (a checkpoint is only written with a finite loss and finite weights).
    /// When [`Progress::should_stop`] says so the run ends after that step instead of at `end` (the summary counts
    /// the steps done); when [`Progress::interrupted`] says so it writes the checkpoint of the steps done and
    /// returns [`Error::Interrupted`].
    pub fn run_to(&mut self, end: u64, progress: &mut dyn Progress) -> Result<Summary> {
        let train = self.config.train.clone();
        if end > train.steps {
            return Err(Error::Invalid(format!("cannot train to step {end}: the run is configured for {} steps", train.steps)));
        }
        let start = self.state.step.min(end);
        progress.on_start(start, end);
        let started = Instant::now();
        let mut reached = start;
        for step in start..end {
            if progress.interrupted() {
                return Err(self.interrupt(progress));
            }
            let (loss, grad_norm, lr) = self.train_step(step)?;
            self.state.step = step + 1;
            self.state.optimizer_steps = self.optimizer.steps_taken();
            if self.recent.len() == RECENT_LOSSES {
                self.recent.pop_front();
            }
            self.recent.push_back(loss);
            let elapsed_s = started.elapsed().as_secs_f64();
            let done = step + 1;
            progress.on_step(&StepReport {
                step: done,
                total_steps: end,
                loss,
                grad_norm,
                lr,
                steps_per_s: (done - start) as f64 / elapsed_s.max(1e-9),
                elapsed_s,
            });
            reached = done;
            if done < end && progress.should_stop() {
                break;
            }
            if done < end {
                if train.eval_every > 0 && done % train.eval_every == 0 {
                    self.evaluate(progress)?;
                }
                if train.checkpoint_every > 0 && done % train.checkpoint_every == 0 {
                    self.save_checkpoint(progress)?;
                }
            }
        }
        if progress.interrupted() {
            return Err(self.interrupt(progress));
        }
        let eval = self.evaluate(progress)?;
        let checkpoint = self.save_checkpoint(progress)?;
        let wall_time_s = started.elapsed().as_secs_f64();
        let steps_this_run = reached - start;
        Ok(Summary {
            model: self.config.model.kind.name(),
            task: self.config.task.kind.name(),
            steps: self.state.step,
            steps_this_run,
            train_loss: self.mean_recent_loss(),
            eval,
            best_metric: self.state.best_metric,
            steps_per_s: steps_this_run as f64 / wall_time_s.max(1e-9),
            wall_time_s,
            params: self.network.num_params(),
            checkpoint,
        })
    }

    /// One optimisation step on the batch of `step`; returns `(loss, pre-clip gradient norm, learning rate)`.
    fn train_step(&mut self, step: u64) -> Result<(f32, f32, f32)> {
        let train = &self.config.train;
        let batch = self.task.train_batch(step, train.batch);
        self.network.zero_grad();
        self.network.begin_train_step(step);
        let mut dropout_rng = rng_for(train.seed, streams::DROPOUT.wrapping_add(step));
        let outputs = self.network.forward_padded(&batch.inputs, batch.batch, batch.seq_len, batch.lengths.as_deref(), Some(&mut dropout_rng))?;
        let (loss, doutputs) = self.task.loss(&outputs, &batch)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite { step, what: format!("the training loss is {loss}") });
        }
        self.network.backward(&doutputs)?;
        let mut params = self.network.params_mut();
        let grad_norm = clip_grad_norm(&mut params, train.clip_norm);
        if !grad_norm.is_finite() {
            let first = first_non_finite(params.iter().map(|p| (p.name.as_str(), p.grad.as_slice())));
            let which = first.map(|bad| format!("; first non-finite gradient: {bad}")).unwrap_or_default();
            return Err(Error::NonFinite { step, what: format!("the gradient norm is {grad_norm} (loss {loss}){which}") });
        }
        let lr = learning_rate(train, step);
        self.optimizer.step(&mut params, lr)?;
        // A finite gradient can still push a weight past f32's range (a huge learning rate): caught here, so that no
        // checkpoint of such weights is ever written.
        if let Some(bad) = first_non_finite(params.iter().map(|p| (p.name.as_str(), p.value.as_slice()))) {
            return Err(Error::NonFinite { step, what: format!("weight {bad} after the update (loss {loss}, gradient norm {grad_norm}, lr {lr})") });
        }
        Ok((loss, grad_norm, lr))
    }

    /// Ends an interrupted run: writes the checkpoint of the steps completed (if a directory is set) and returns the
    /// [`Error::Interrupted`] that says where, or the error that prevented the save.
    fn interrupt(&mut self, progress: &mut dyn Progress) -> Error {
        if self.saved_step == Some(self.state.step) {
            return Error::Interrupted { step: self.state.step, checkpoint: self.checkpoint_dir.clone() };
        }
        match self.save_checkpoint(progress) {
            Ok(checkpoint) => Error::Interrupted { step: self.state.step, checkpoint },
            Err(e) => e,
        }
    }

    /// Evaluates on the task's evaluation set and records the metric.
    pub fn evaluate(&mut self, progress: &mut dyn Progress) -> Result<Evaluation> {
        let eval = self.task.evaluate(&mut self.network)?;
        let better = |new: f32, old: f32| if eval.higher_is_better { new > old } else { new < old };
        if eval.metric.is_finite() {
            self.state.best_metric = Some(match self.state.best_metric {
                Some(best) if !better(eval.metric, best) => best,
                _ => eval.metric,
            });
        }
        self.state.last_metric = Some(eval.metric);
        progress.on_eval(self.state.step, &eval);
        Ok(eval)
    }

    /// The custom task with a test file: the model scored on it; `None` for every other task.
    pub fn evaluate_test(&mut self) -> Result<Option<Evaluation>> {
        self.task.evaluate_test(&mut self.network)
    }

    /// Mean of the recent training losses (NaN when none).
    fn mean_recent_loss(&self) -> f32 {
        if self.recent.is_empty() {
            return f32::NAN;
        }
        (self.recent.iter().map(|&l| f64::from(l)).sum::<f64>() / self.recent.len() as f64) as f32
    }

    /// A checkpoint counts as good only if its weights are finite (checked after every update and by
    /// [`checkpoint::save`]) and give a finite loss. The losses seen so far were computed with the weights before
    /// each update, so the weights to be saved are run forward (inference, no dropout, nothing kept) on the next
    /// training batch, a function of the step only: a run whose weights have grown so large that their outputs
    /// overflow stops here with [`Error::NonFinite`] and the previous checkpoint stays the current one.
    fn check_weights_give_a_finite_loss(&mut self) -> Result<()> {
        let step = self.state.step;
        let batch = self.task.train_batch(step, self.config.train.batch);
        let outputs = self.network.predict_padded(&batch.inputs, batch.batch, batch.seq_len, batch.lengths.as_deref())?;
        let (loss, _) = self.task.loss(&outputs, &batch)?;
        if loss.is_finite() {
            Ok(())
        } else {
            Err(Error::NonFinite { step, what: format!("the weights after step {step} give a loss of {loss} on the next batch, so they were not saved") })
        }
    }

    /// Writes the checkpoint of the current step, if a directory is set; returns it.
    fn save_checkpoint(&mut self, progress: &mut dyn Progress) -> Result<Option<PathBuf>> {
        let Some(dir) = self.checkpoint_dir.clone() else {
            return Ok(None);
        };
        self.state.recent_losses = self.recent.iter().copied().collect();
        self.check_weights_give_a_finite_loss()?;
        checkpoint::save(&dir, &self.config, &self.network, &self.optimizer, &self.state)?;
        self.saved_step = Some(self.state.step);
        progress.on_checkpoint(self.state.step, &dir);
        Ok(Some(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelKind, TaskKind};

    /// Records every step's loss.
    #[derive(Default)]
    struct Record {
        losses: Vec<f32>,
        evals: Vec<u64>,
        checkpoints: Vec<u64>,
        start: Option<(u64, u64)>,
    }

    impl Progress for Record {
        fn on_start(&mut self, start: u64, total: u64) {
            self.start = Some((start, total));
        }
        fn on_step(&mut self, r: &StepReport) {
            self.losses.push(r.loss);
        }
        fn on_eval(&mut self, step: u64, _: &Evaluation) {
            self.evals.push(step);
        }
        fn on_checkpoint(&mut self, step: u64, _: &Path) {
            self.checkpoints.push(step);
        }
    }

    fn tiny(kind: ModelKind, task: TaskKind, steps: u64) -> RunConfig {
        let mut cfg = RunConfig::default();
        cfg.model.kind = kind;
        cfg.model.hidden = 8;
        cfg.model.layers = 2;
        cfg.model.dropout = 0.25;
        cfg.task.kind = task;
        cfg.task.seq_len = 8;
        cfg.task.eval_size = 16;
        cfg.train.steps = steps;
        cfg.train.batch = 4;
        cfg.train.warmup_steps = 3;
        cfg.train.eval_every = 4;
        cfg.train.checkpoint_every = 5;
        cfg.train.seed = 11;
        cfg
    }

    #[test]
    fn resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
        // The Performer redraws its random features every 4 steps: draws 0, 1 before the checkpoint at step 6 and
        // draw 2 after it must be the same in both runs, and the checkpoint must restore the features in use.
        for (kind, task) in [
            (ModelKind::Lstm, TaskKind::Adding),
            (ModelKind::Gru, TaskKind::Copy),
            (ModelKind::Performer, TaskKind::Copy),
            (ModelKind::Transformer, TaskKind::Adding),
            (ModelKind::Mamba, TaskKind::SelectiveCopy),
        ] {
            let mut cfg = tiny(kind, task, 12);
            cfg.model.heads = 2;
            cfg.model.redraw_every = 4;
            if kind == ModelKind::Mamba {
                // Mamba has no dropout; selective copy needs room for its 16 tokens.
                cfg.model.dropout = 0.0;
                cfg.task.seq_len = 20;
            }
            let mut straight = Record::default();
            let full = Trainer::new(cfg.clone()).unwrap().run(&mut straight).unwrap();
            assert_eq!(straight.losses.len(), 12);

            let dir = tempfile::tempdir().unwrap();
            let mut first = Record::default();
            Trainer::new(cfg.clone()).unwrap().with_checkpoint_dir(dir.path()).run_to(6, &mut first).unwrap();
            let mut second = Record::default();
            let mut resumed = Trainer::resume(checkpoint::load(dir.path()).unwrap()).unwrap().with_checkpoint_dir(dir.path());
            let summary = resumed.run(&mut second).unwrap();
            assert_eq!(second.start, Some((6, 12)));

            let joined: Vec<u32> = first.losses.iter().chain(&second.losses).map(|l| l.to_bits()).collect();
            let expected: Vec<u32> = straight.losses.iter().map(|l| l.to_bits()).collect();
            assert_eq!(joined, expected, "{kind:?} on {task:?}: resumed losses differ");
            assert_eq!(summary.train_loss.to_bits(), full.train_loss.to_bits());
            assert_eq!(summary.eval.metric.to_bits(), full.eval.metric.to_bits());
            assert_eq!((summary.steps, summary.steps_this_run), (12, 6));
        }
    }

    #[test]
    fn periodic_evaluations_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Record::default();
        let summary = Trainer::new(tiny(ModelKind::Lstm, TaskKind::Adding, 10)).unwrap().with_checkpoint_dir(dir.path()).run(&mut rec).unwrap();
        assert_eq!(rec.evals, vec![4, 8, 10]);
        assert_eq!(rec.checkpoints, vec![5, 10]);
        assert_eq!(summary.checkpoint.as_deref(), Some(dir.path()));
        let loaded = checkpoint::load(dir.path()).unwrap();
        assert_eq!((loaded.state.step, loaded.state.optimizer_steps), (10, 10));
        assert_eq!(loaded.state.last_metric, Some(summary.eval.metric));
        assert_eq!(loaded.state.recent_losses.len(), 10);
        assert!(summary.train_loss.is_finite() && summary.params > 0);
    }

    #[test]
    fn divergence_stops_without_overwriting_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny(ModelKind::Gru, TaskKind::Adding, 10);
        Trainer::new(cfg.clone()).unwrap().with_checkpoint_dir(dir.path()).run_to(5, &mut Silent).unwrap();
        let model_file = || checkpoint::resolve(dir.path()).unwrap().join(checkpoint::MODEL_FILE);
        let saved = std::fs::read(model_file()).unwrap();

        let mut trainer = Trainer::resume(checkpoint::load(dir.path()).unwrap()).unwrap().with_checkpoint_dir(dir.path());
        trainer.network_mut().params_mut()[0].value[0] = f32::NAN;
        match trainer.run(&mut Silent) {
            Err(Error::NonFinite { step, what }) => assert_eq!((step, what.as_str()), (5, "the training loss is NaN")),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert_eq!(std::fs::read(model_file()).unwrap(), saved);
        assert_eq!(checkpoint::load(dir.path()).unwrap().state.step, 5);
    }

    #[test]
    fn weights_made_infinite_by_an_update_stop_the_run_before_any_checkpoint() {
        // SGD with an L2 term of 1e36 and the largest finite learning rate: the loss of step 0 is finite, the update
        // sends weights past f32's range.
        let mut cfg = tiny(ModelKind::Mamba, TaskKind::Adding, 10);
        cfg.model.dropout = 0.0;
        cfg.train.optimizer = crate::config::OptimizerKind::Sgd;
        cfg.train.lr = f32::MAX;
        cfg.train.weight_decay = 1e36;
        cfg.train.clip_norm = 0.0;
        cfg.train.checkpoint_every = 1;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let mut rec = Record::default();
        match Trainer::new(cfg).unwrap().with_checkpoint_dir(&out).run(&mut rec) {
            Err(Error::NonFinite { step: 0, what }) => {
                assert!(what.starts_with("weight '") && what.contains("after the update") && what.contains("loss "), "{what}");
            }
            other => panic!("expected NonFinite at step 0, got {other:?}"),
        }
        assert!(rec.losses.is_empty() && rec.checkpoints.is_empty(), "the step is not reported, nothing is saved");
        assert!(!checkpoint::exists(&out));
    }

    #[test]
    fn an_interrupted_run_saves_its_step_and_resumes_bit_for_bit() {
        let cfg = tiny(ModelKind::Gru, TaskKind::Copy, 12);
        let mut straight = Record::default();
        Trainer::new(cfg.clone()).unwrap().run(&mut straight).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut first = StopAfter { after: 7, record: Record::default(), interrupt: true };
        match Trainer::new(cfg).unwrap().with_checkpoint_dir(dir.path()).run(&mut first) {
            Err(Error::Interrupted { step: 7, checkpoint: Some(saved) }) => assert_eq!(saved, dir.path()),
            other => panic!("expected an interruption at step 7, got {other:?}"),
        }
        // The periodic checkpoint of step 5, then the interruption's of step 7; no final evaluation.
        assert_eq!((first.record.checkpoints.as_slice(), first.record.evals.as_slice()), (&[5, 7][..], &[4][..]));
        let loaded = checkpoint::load(dir.path()).unwrap();
        assert_eq!(loaded.state.step, 7);
        let mut second = Record::default();
        Trainer::resume(loaded).unwrap().run(&mut second).unwrap();
        let joined: Vec<u32> = first.record.losses.iter().chain(&second.losses).map(|l| l.to_bits()).collect();
        assert_eq!(joined, straight.losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn weights_whose_outputs_overflow_are_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::new(tiny(ModelKind::Lstm, TaskKind::Adding, 10)).unwrap().with_checkpoint_dir(dir.path());
        trainer.run_to(2, &mut Silent).unwrap();
        // Finite weights, but predictions of about 1e30 whose squared error overflows f32.
        for p in trainer.network_mut().params_mut().into_iter().filter(|p| p.name.starts_with("head.")) {
            p.value.iter_mut().for_each(|v| *v = 1e30);
        }
        match trainer.save_checkpoint(&mut Silent) {
            Err(Error::NonFinite { step: 2, what }) => assert!(what.contains("give a loss of inf on the next batch"), "{what}"),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert_eq!(checkpoint::load(dir.path()).unwrap().state.step, 2, "the checkpoint of step 2 written by run_to stays current");
    }

    /// Asks to stop (or, with `interrupt`, reports an interruption such as Ctrl-C) once `after` steps are done.
    struct StopAfter {
        after: u64,
        record: Record,
        interrupt: bool,
    }

    impl Progress for StopAfter {
        fn on_step(&mut self, r: &StepReport) {
            self.record.on_step(r);
        }
        fn on_eval(&mut self, step: u64, eval: &Evaluation) {
            self.record.on_eval(step, eval);
        }
        fn on_checkpoint(&mut self, step: u64, dir: &Path) {
            self.record.on_checkpoint(step, dir);
        }
        fn should_stop(&mut self) -> bool {
            !self.interrupt && self.record.losses.len() as u64 >= self.after
        }
        fn interrupted(&mut self) -> bool {
            self.interrupt && self.record.losses.len() as u64 >= self.after
        }
    }

    #[test]
    fn should_stop_ends_the_run_early_with_a_final_evaluation() {
        let mut progress = StopAfter { after: 3, record: Record::default(), interrupt: false };
        let summary = Trainer::new(tiny(ModelKind::Lstm, TaskKind::Adding, 10)).unwrap().run(&mut progress).unwrap();
        assert_eq!((summary.steps, summary.steps_this_run), (3, 3));
        assert_eq!(progress.record.losses.len(), 3);
        assert_eq!(progress.record.evals, vec![3], "the periodic evaluation at step 4 never came; the final one did");
    }

    #[test]
    fn cannot_run_past_the_configured_steps() {
        let mut trainer = Trainer::new(tiny(ModelKind::Lstm, TaskKind::Adding, 3)).unwrap();
        assert!(matches!(trainer.run_to(4, &mut Silent), Err(Error::Invalid(_))));
    }
}
