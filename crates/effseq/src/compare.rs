//! Comparing models at an equal budget (`effseq compare`): widths matched to a parameter count, and training
//! that stops at a step or training-time budget, with evaluations along the way for a metric-against-time curve.
//!
//! ## Matching parameter counts
//! The parameter count `P(W)` of a [`Network`] is a polynomial in its width `W` (hidden size H of an LSTM/GRU,
//! channels of every TCN level, model width D of an attention model with its feed-forward width 4D and, on token
//! tasks, an embedding of width W) with non-negative coefficients, so it grows strictly with `W`. The width whose
//! count is nearest a target `P*` is therefore found by doubling `W` until `P(W) >= P*` and bisecting the last
//! interval for the smallest such `W`; the answer is that width or the one step below it, whichever count is
//! nearer (ties to the smaller). Each probe builds the network and counts its scalars, so the count is exactly
//! what training will use; attention widths stay multiples of the head count ([`width_step`]).
//!
//! ## Budgets
//! [`train_within`] drives [`Trainer::run_to`] and ends it through [`Progress::should_stop`]: after a number of
//! steps ([`Budget::Steps`]) or once the time spent in training steps reaches a number of seconds
//! ([`Budget::Seconds`]; the evaluations are timed apart and not charged, so how often a model is evaluated does
//! not change what it reaches). It evaluates at step 0, at the points of an [`EvalSchedule`] and at the end, and
//! returns the curve of the test metric against training time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::param::Module;
use crate::tasks::{Evaluation, TaskIo};
use crate::train::{Progress, StepReport, Trainer};

/// The largest parameter count [`match_width`] aims at: the probes build networks of up to about four times the
/// target (a doubled width), so a bigger target could exhaust memory before training starts.
pub const MAX_MATCHED_PARAMS: usize = 50_000_000;

/// Trainable scalars of the network that `model` describes for a task of shape `io`.
pub fn param_count(model: &ModelConfig, io: TaskIo) -> Result<usize> {
    Ok(Network::new(model, io, 0)?.num_params())
}

/// The granularity of a model's width: the head count for the attention models (the width must divide into
/// heads), 1 otherwise.
pub fn width_step(model: &ModelConfig) -> usize {
    if model.kind.is_attention() {
        model.heads.max(1)
    } else {
        1
    }
}

/// A width and the parameter count it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WidthMatch {
    /// The width (`model.hidden`).
    pub width: usize,
    /// Trainable scalars of the network at that width.
    pub params: usize,
}

/// The width, a multiple of [`width_step`], whose network has the parameter count nearest `target` (ties to the
/// smaller width); every other field of `model` is kept. See the module doc for the search.
pub fn match_width(model: &ModelConfig, io: TaskIo, target: usize) -> Result<WidthMatch> {
    if target == 0 || target > MAX_MATCHED_PARAMS {
        return Err(Error::Invalid(format!("a parameter target must be between 1 and {MAX_MATCHED_PARAMS}, got {target}")));
    }
    let step = width_step(model);
    let count = |units: usize| -> Result<usize> {
        let mut cfg = model.clone();
        cfg.hidden = units * step;
        param_count(&cfg, io)
    };
    // Widths are `units * step`; find the smallest `units` whose count reaches the target.
    let (mut below, mut above) = (0usize, 1usize); // count(below) < target (or below = 0), count(above) unknown
    let mut above_count = count(above)?;
    while above_count < target {
        below = above;
        above *= 2;
        above_count = count(above)?;
    }
    while above - below > 1 {
        let mid = below + (above - below) / 2;
        let mid_count = count(mid)?;
        if mid_count >= target {
            above = mid;
            above_count = mid_count;
        } else {
            below = mid;
        }
    }
    let best = WidthMatch { width: above * step, params: above_count };
    if below == 0 {
        return Ok(best);
    }
    let lower = WidthMatch { width: below * step, params: count(below)? };
    Ok(if target - lower.params <= best.params - target { lower } else { best })
}

/// How much training each model gets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// This many optimizer steps.
    Steps(u64),
    /// This many seconds spent in training steps (evaluations not counted).
    Seconds(f64),
}

/// When [`train_within`] evaluates, besides at step 0 and at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSchedule {
    /// Every this many steps.
    EverySteps(u64),
    /// This many evenly spaced points over the budget (of steps or of seconds), the last one at its end.
    Points(u64),
}

/// One evaluation of the test metric during a budgeted run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Steps done when evaluated.
    pub step: u64,
    /// Seconds spent in training steps until then.
    pub train_time_s: f64,
    /// Seconds since the run started, evaluations included.
    pub wall_time_s: f64,
    /// The task's metric on its evaluation set.
    pub metric: f32,
    /// The loss on the evaluation set.
    pub loss: f32,
}

/// Why a budgeted run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The step budget (or the trainer's configured steps) was reached.
    Steps,
    /// The time budget was spent.
    Time,
    /// The stop flag was raised (Ctrl-C).
    Interrupted,
}

/// The outcome of [`train_within`].
#[derive(Clone, Debug)]
pub struct BudgetRun {
    /// Steps done in total.
    pub steps: u64,
    /// Seconds spent in training steps.
    pub train_time_s: f64,
    /// Seconds spent in evaluations.
    pub eval_time_s: f64,
    /// Seconds from start to end.
    pub wall_time_s: f64,
    /// Mean training loss of the last steps ([`crate::train::RECENT_LOSSES`]; NaN without any step).
    pub train_loss: f32,
    /// The final evaluation.
    pub eval: Evaluation,
    /// Every evaluation, the first at step 0 and the last the final one.
    pub curve: Vec<CurvePoint>,
    /// Why the run ended.
    pub stopped_by: StopReason,
}

impl BudgetRun {
    /// Training steps per second of training time.
    pub fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.train_time_s.max(1e-9)
    }
}

/// Receives the events of [`train_within`]. Every method has an empty default.
pub trait BudgetObserver {
    /// A step finished, after `train_time_s` seconds of training.
    fn on_step(&mut self, _report: &StepReport, _train_time_s: f64) {}
    /// An evaluation finished.
    fn on_point(&mut self, _point: &CurvePoint, _eval: &Evaluation) {}
}

/// An observer that ignores everything.
impl BudgetObserver for () {}

/// The [`Progress`] that [`train_within`] hands to the trainer: keeps the clocks, records the curve and decides
/// when to stop.
struct Meter<'a> {
    observer: &'a mut dyn BudgetObserver,
    stop: &'a AtomicBool,
    started: Instant,
    /// When the current stretch of training (or evaluation) began.
    mark: Instant,
    train_time_s: f64,
    eval_time_s: f64,
    /// Stop once the training time reaches this (the end of a time budget, or the next evaluation point).
    time_limit: Option<f64>,
    interrupted: bool,
    curve: Vec<CurvePoint>,
    last_eval: Option<Evaluation>,
}

impl Progress for Meter<'_> {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {
        self.mark = Instant::now();
    }

    fn on_step(&mut self, report: &StepReport) {
        let now = Instant::now();
        self.train_time_s += now.duration_since(self.mark).as_secs_f64();
        self.mark = now;
        self.observer.on_step(report, self.train_time_s);
    }

    fn on_eval(&mut self, step: u64, eval: &Evaluation) {
        let now = Instant::now();
        self.eval_time_s += now.duration_since(self.mark).as_secs_f64();
        self.mark = now;
        let point = CurvePoint {
            step,
            train_time_s: self.train_time_s,
            wall_time_s: now.duration_since(self.started).as_secs_f64(),
            metric: eval.metric,
            loss: eval.loss,
        };
        self.curve.push(point);
        self.observer.on_point(&point, eval);
        self.last_eval = Some(eval.clone());
    }

    fn should_stop(&mut self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            self.interrupted = true;
            return true;
        }
        self.time_limit.is_some_and(|limit| self.train_time_s >= limit)
    }
}

/// Trains `trainer` (from wherever it stands) within `budget`, evaluating at step 0, on `schedule` and at the end;
/// raising `stop` (e.g. from a Ctrl-C handler) ends the run after the current step, with a final evaluation.
///
/// A step budget above the trainer's `train.steps` is cut to it, as is a time budget that would run past it: set
/// `train.steps` to the step budget (its learning-rate schedule is then that of the run) or, for a time budget,
/// to a cap.
pub fn train_within(trainer: &mut Trainer, budget: Budget, schedule: EvalSchedule, stop: &AtomicBool, observer: &mut dyn BudgetObserver) -> Result<BudgetRun> {
    let configured = trainer.config().train.steps;
    let end_step = match budget {
        Budget::Steps(n) => n.min(configured),
        Budget::Seconds(s) if s.is_finite() && s > 0.0 => configured,
        Budget::Seconds(s) => return Err(Error::Invalid(format!("a time budget must be a positive number of seconds, got {s}"))),
    };
    // Step interval, or time interval, between evaluations (0: none but the first and the last).
    let (step_every, time_every) = match (schedule, budget) {
        (EvalSchedule::EverySteps(k), _) => (k, None),
        (EvalSchedule::Points(k), Budget::Steps(n)) => (n.min(configured).div_ceil(k.max(1)), None),
        (EvalSchedule::Points(k), Budget::Seconds(s)) => (0, Some(s / k.max(1) as f64)),
    };
    let now = Instant::now();
    let mut meter = Meter {
        observer,
        stop,
        started: now,
        mark: now,
        train_time_s: 0.0,
        eval_time_s: 0.0,
        time_limit: None,
        interrupted: false,
        curve: Vec::new(),
        last_eval: None,
    };
    trainer.evaluate(&mut meter)?;
    let mut train_loss = f32::NAN;
    let stopped_by = loop {
        let done = trainer.state().step;
        if meter.stop.load(Ordering::Relaxed) || meter.interrupted {
            break StopReason::Interrupted;
        }
        if matches!(budget, Budget::Seconds(s) if meter.train_time_s >= s) {
            break StopReason::Time;
        }
        if done >= end_step {
            break StopReason::Steps;
        }
        let slice_end = done.checked_div(step_every).map_or(end_step, |slices| ((slices + 1) * step_every).min(end_step));
        meter.time_limit = match (budget, time_every) {
            (Budget::Seconds(s), Some(every)) => Some((((meter.train_time_s / every).floor() + 1.0) * every).min(s)),
            (Budget::Seconds(s), None) => Some(s),
            (Budget::Steps(_), _) => None,
        };
        meter.mark = Instant::now();
        train_loss = trainer.run_to(slice_end, &mut meter)?.train_loss;
    };
    let eval = meter.last_eval.take().ok_or_else(|| Error::Invalid("no evaluation was recorded".into()))?;
    Ok(BudgetRun {
        steps: trainer.state().step,
        train_time_s: meter.train_time_s,
        eval_time_s: meter.eval_time_s,
        wall_time_s: meter.started.elapsed().as_secs_f64(),
        train_loss,
        eval,
        curve: meter.curve,
        stopped_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelKind, RunConfig, TaskConfig, TaskKind};
    use crate::tasks::Task;

    fn io(kind: TaskKind) -> TaskIo {
        Task::io_of(&TaskConfig::new(kind)).unwrap()
    }

    fn model(kind: ModelKind, hidden: usize) -> ModelConfig {
        let mut m = ModelConfig { kind, hidden, ..ModelConfig::default() };
        m.resolve_for_sequence(50);
        m
    }

    /// The nearest count by brute force over every width `step, 2 step, ..` up to `max_units * step`.
    fn nearest_by_scan(m: &ModelConfig, io: TaskIo, target: usize, max_units: usize) -> WidthMatch {
        let step = width_step(m);
        (1..=max_units)
            .map(|u| {
                let mut c = m.clone();
                c.hidden = u * step;
                WidthMatch { width: u * step, params: param_count(&c, io).unwrap() }
            })
            .min_by_key(|w| (w.params.abs_diff(target), w.width))
            .unwrap()
    }

    #[test]
    fn matched_width_has_the_nearest_parameter_count() {
        // Targets: the count of a 64-wide LSTM, and a few odd numbers between the counts of two widths.
        let adding = io(TaskKind::Adding);
        let target = param_count(&model(ModelKind::Lstm, 64), adding).unwrap();
        for &kind in ModelKind::ALL {
            let m = model(kind, 8);
            for t in [target, target / 3 + 17, 1234] {
                let found = match_width(&m, adding, t).unwrap();
                let scan = nearest_by_scan(&m, adding, t, 160 / width_step(&m));
                assert_eq!(found, scan, "{kind:?} aiming at {t} parameters");
                assert_eq!(found.width % width_step(&m), 0);
            }
        }
        // A count that a width gives exactly is found exactly; token inputs (copy) as well.
        let copy = io(TaskKind::Copy);
        let gru = model(ModelKind::Gru, 37);
        let exact = param_count(&gru, copy).unwrap();
        assert_eq!(match_width(&model(ModelKind::Gru, 5), copy, exact).unwrap(), WidthMatch { width: 37, params: exact });
        // The same model matches itself; a tiny target gives the smallest width.
        let lstm = model(ModelKind::Lstm, 64);
        assert_eq!(match_width(&lstm, adding, target).unwrap().width, 64);
        assert_eq!(match_width(&lstm, adding, 1).unwrap().width, 1);
    }

    #[test]
    fn attention_widths_stay_multiples_of_the_heads() {
        let mut m = model(ModelKind::Transformer, 16);
        m.heads = 6;
        let found = match_width(&m, io(TaskKind::Adding), 50_000).unwrap();
        assert_eq!(found.width % 6, 0);
        assert_eq!(found, nearest_by_scan(&m, io(TaskKind::Adding), 50_000, 30));
    }

    #[test]
    fn unreasonable_targets_are_refused() {
        let m = model(ModelKind::Lstm, 8);
        assert!(matches!(match_width(&m, io(TaskKind::Adding), 0), Err(Error::Invalid(_))));
        assert!(matches!(match_width(&m, io(TaskKind::Adding), MAX_MATCHED_PARAMS + 1), Err(Error::Invalid(_))));
    }

    fn tiny_trainer(steps: u64) -> Trainer {
        let mut cfg = RunConfig::default();
        cfg.model.hidden = 8;
        cfg.task.seq_len = 10;
        cfg.task.eval_size = 16;
        cfg.train.steps = steps;
        cfg.train.batch = 4;
        cfg.train.warmup_steps = 2;
        cfg.train.eval_every = 0;
        cfg.train.checkpoint_every = 0;
        Trainer::new(cfg).unwrap()
    }

    /// Counts the steps and records the points it is shown.
    #[derive(Default)]
    struct Seen {
        steps: u64,
        points: Vec<u64>,
    }

    impl BudgetObserver for Seen {
        fn on_step(&mut self, _: &StepReport, _: f64) {
            self.steps += 1;
        }
        fn on_point(&mut self, point: &CurvePoint, _: &Evaluation) {
            self.points.push(point.step);
        }
    }

    #[test]
    fn step_budget_evaluates_on_schedule() {
        let mut trainer = tiny_trainer(10);
        let mut seen = Seen::default();
        let run = train_within(&mut trainer, Budget::Steps(10), EvalSchedule::Points(4), &AtomicBool::new(false), &mut seen).unwrap();
        assert_eq!((run.steps, run.stopped_by, seen.steps), (10, StopReason::Steps, 10));
        let steps: Vec<u64> = run.curve.iter().map(|p| p.step).collect();
        assert_eq!(steps, vec![0, 3, 6, 9, 10]);
        assert_eq!(seen.points, steps);
        assert!(run.curve.windows(2).all(|w| w[0].train_time_s <= w[1].train_time_s && w[0].wall_time_s <= w[1].wall_time_s));
        assert_eq!(run.eval.metric, run.curve[4].metric);
        assert!(run.train_loss.is_finite() && run.train_time_s > 0.0 && run.eval_time_s > 0.0);
        assert!(run.wall_time_s >= run.train_time_s + run.eval_time_s * 0.99);

        // Every-N-steps schedule; a step budget beyond the configured steps is cut to them.
        let run = train_within(&mut tiny_trainer(7), Budget::Steps(100), EvalSchedule::EverySteps(5), &AtomicBool::new(false), &mut ()).unwrap();
        assert_eq!(run.curve.iter().map(|p| p.step).collect::<Vec<_>>(), vec![0, 5, 7]);
    }

    #[test]
    fn time_budget_stops_once_the_training_time_is_spent() {
        let mut trainer = tiny_trainer(1_000_000);
        let budget = 0.3;
        let run = train_within(&mut trainer, Budget::Seconds(budget), EvalSchedule::Points(3), &AtomicBool::new(false), &mut ()).unwrap();
        assert_eq!(run.stopped_by, StopReason::Time);
        // It stops after the step that crosses the budget: over it by at most one step's time.
        let step_s = run.train_time_s / run.steps as f64;
        assert!(run.train_time_s >= budget && run.train_time_s < budget + 5.0 * step_s + 0.25, "{} s for a {budget} s budget", run.train_time_s);
        // Step 0, three points at 0.1 s, 0.2 s and 0.3 s of training; the last is the end.
        assert_eq!(run.curve.len(), 4, "{:?}", run.curve);
        for (point, at) in run.curve[1..].iter().zip([0.1, 0.2, 0.3]) {
            assert!(point.train_time_s >= at && point.train_time_s < at + 0.25, "{point:?} for the point at {at} s");
        }
        assert_eq!(run.curve.last().unwrap().step, run.steps);
        assert!(matches!(
            train_within(&mut tiny_trainer(5), Budget::Seconds(0.0), EvalSchedule::Points(1), &AtomicBool::new(false), &mut ()),
            Err(Error::Invalid(_))
        ));
    }

    /// Raises the stop flag after a number of steps.
    struct StopAt<'a> {
        flag: &'a AtomicBool,
        at: u64,
    }

    impl BudgetObserver for StopAt<'_> {
        fn on_step(&mut self, report: &StepReport, _: f64) {
            if report.step == self.at {
                self.flag.store(true, Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn raising_the_stop_flag_ends_the_run_with_a_final_evaluation() {
        let flag = AtomicBool::new(false);
        let run = train_within(&mut tiny_trainer(50), Budget::Steps(50), EvalSchedule::Points(2), &flag, &mut StopAt { flag: &flag, at: 7 }).unwrap();
        assert_eq!((run.steps, run.stopped_by), (7, StopReason::Interrupted));
        assert_eq!(run.curve.iter().map(|p| p.step).collect::<Vec<_>>(), vec![0, 7]);
    }
}
