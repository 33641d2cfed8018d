//! `effseq compare`: train several models on one task with matched parameter counts and the same budget, then
//! print one table (and optionally write it as Markdown, JSON and a chart of the test metric against time).
//!
//! Every model's config is built exactly as `effseq train` builds it ([`TrainArgs::fresh_config`]); the widths
//! are then matched to one parameter count ([`effseq::compare::match_width`]). Each model trains in a fresh
//! worker process of this binary (the hidden subcommand `compare-worker`), so that the peak memory of one model
//! (the worker's peak RSS, Linux `VmHWM`, and its allocator's peak heap) is not mixed with another's. The parent
//! hands the worker its config as one JSON line on stdin and reads its events as JSON lines on stdout (steps,
//! evaluations, the result); a `stop` line on stdin, or stdin closing, stops it after the current step, with a
//! final evaluation. Ctrl-C stops the current model that way, reports it as interrupted with what it reached,
//! lists the remaining models as not run and still prints and writes what finished; a second Ctrl-C ends at
//! once.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use effseq::bench;
use effseq::compare::{self, Budget, BudgetObserver, CurvePoint, EvalSchedule, StopReason};
use effseq::config::{ModelKind, RunConfig, TaskKind};
use effseq::tasks::forecast::SeriesKind;
use effseq::tasks::{Evaluation, Task};
use effseq::train::{StepReport, Trainer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::failure::{exit, CliError};
use crate::format::{grouped, task_fields, task_label, TaskFields};
use crate::plot::{write_compare_plot, CompareChart, CurveLine};
use crate::signals;
use crate::train_cmd::{parse_series, parse_task, TrainArgs};

/// Training steps configured when only a time budget is given: no cap in practice, and a cosine schedule so long
/// that the learning rate stays at its peak after the warmup.
const UNCAPPED_STEPS: u64 = 1_000_000_000;
/// Time budget per model when neither `--budget-secs` nor `--steps` is given.
const DEFAULT_BUDGET_SECS: f64 = 60.0;
/// How peak memory is measured, as the output says it.
const MEMORY_METHOD: &str =
    "each model trains in a fresh worker process; peak RSS = its VmHWM (/proc/self/status), peak heap = its counting allocator's high-water mark";

/// Arguments of `effseq compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Task: adding, copy, digits, smnist, forecast, charlm, listops, selective-copy or duplicate [default: adding].
    #[arg(long, value_parser = parse_task)]
    pub task: Option<TaskKind>,
    /// Models, comma-separated, or `all` (every model `effseq train --model` accepts).
    #[arg(long, default_value = "all")]
    pub models: String,
    /// Budget per model: seconds spent in training steps (evaluations are not counted) [default: 60 s, unless
    /// --steps is given].
    #[arg(long, value_name = "S")]
    pub budget_secs: Option<f64>,
    /// Budget per model in training steps (the cosine learning-rate schedule spans them); with --budget-secs, a
    /// cap on the steps and the schedule's length [without it, a time budget keeps the peak rate after warmup].
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Match every model's width to this parameter count [default: the count of the first model at --hidden].
    #[arg(long, value_name = "N", conflicts_with = "hidden")]
    pub params: Option<usize>,
    /// Width of the first model (hidden size, TCN channels or attention width D); the others get the width whose
    /// parameter count is nearest its count [default: 128].
    #[arg(long, alias = "dim", value_name = "W")]
    pub hidden: Option<usize>,
    /// Stacked recurrent layers, or Transformer blocks [default: 1].
    #[arg(long, value_name = "L")]
    pub layers: Option<usize>,
    /// Attention models: heads (matched widths stay multiples of it) [default: 4].
    #[arg(long, value_name = "H")]
    pub heads: Option<usize>,
    /// Sequence length T, as for `effseq train` [default: the task's].
    #[arg(long, value_name = "T")]
    pub seq_len: Option<usize>,
    /// Forecast: the series, sunspots, co2 or seattle [default: sunspots].
    #[arg(long, value_name = "NAME", value_parser = parse_series)]
    pub series: Option<SeriesKind>,
    /// Forecast: steps predicted from each window [default: 1].
    #[arg(long, value_name = "N")]
    pub horizon: Option<usize>,
    /// Smnist: the seed of a fixed pixel permutation (permuted MNIST) [default: row-major].
    #[arg(long, value_name = "SEED")]
    pub permute: Option<u64>,
    /// Sequences per batch [default: 32].
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// Peak learning rate [default: 0.005].
    #[arg(long, value_name = "X")]
    pub lr: Option<f32>,
    /// Learning-rate warmup steps [default: 100].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Seed of initialisation, data and dropout, the same for every model [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Sequences in the generated evaluation set of adding, copy and listops [default: 1000].
    #[arg(long, value_name = "N")]
    pub eval_size: Option<usize>,
    /// Evaluate every N steps [default: --evals points spread evenly over the budget].
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Evaluations spread evenly over the budget (of seconds or steps), besides the one at step 0.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub evals: u64,
    /// Run config file (TOML, or .json) for everything else; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write the table as Markdown (with the command line and date above it) to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write every field and the evaluation curves as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// Draw the test metric against training time, one line per model: FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// Arguments of the hidden `effseq compare-worker`: none; the spec comes on stdin.
#[derive(Args, Debug)]
pub struct WorkerArgs {}

/// What one worker trains: its config, the budget and the evaluation schedule.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerSpec {
    config: RunConfig,
    budget: Budget,
    schedule: EvalSchedule,
}

/// The outcome of one model's training, as the worker reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WorkerResult {
    /// Steps done.
    steps: u64,
    /// Training steps per second of training time.
    steps_per_s: f64,
    /// Seconds spent in training steps.
    train_time_s: f64,
    /// Seconds spent in evaluations.
    eval_time_s: f64,
    /// Seconds from start to end of training (evaluations included; building the task and model not).
    wall_time_s: f64,
    /// Mean training loss of the last 20 steps (`null` without a step).
    train_loss: Option<f32>,
    /// The final test metric.
    metric: Option<f32>,
    /// The final evaluation loss.
    eval_loss: Option<f32>,
    /// The task's metric.
    metric_name: String,
    /// Whether a larger metric is better.
    higher_is_better: bool,
    /// Why training ended.
    stopped_by: StopReason,
    /// Peak resident set size of the worker process (Linux only).
    peak_rss_bytes: Option<u64>,
    /// Peak live heap bytes of the worker process (counting allocator).
    peak_heap_bytes: Option<u64>,
}

/// One line of a worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum WorkerEvent {
    /// A training step finished (sent at most ten times a second).
    Step { step: u64, train_time_s: f64, loss: f32 },
    /// An evaluation finished.
    Point { point: CurvePoint, metric_name: String, higher_is_better: bool },
    /// Training ended.
    Done(WorkerResult),
    /// Training could not run or failed.
    Failed { message: String, hint: Option<String>, code: u8 },
}

/// Writes one event line to stdout; a closed pipe (the parent is gone) is ignored, the worker stops anyway.
fn emit(event: &WorkerEvent) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}

/// Raised when the worker must stop (a `stop` line or the end of stdin).
static WORKER_STOP: AtomicBool = AtomicBool::new(false);

/// Sends the worker's progress to the parent.
struct Emitter {
    last_sent: Option<Instant>,
}

impl BudgetObserver for Emitter {
    fn on_step(&mut self, report: &StepReport, train_time_s: f64) {
        if self.last_sent.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last_sent = Some(Instant::now());
        emit(&WorkerEvent::Step { step: report.step, train_time_s, loss: report.loss });
    }

    fn on_point(&mut self, point: &CurvePoint, eval: &Evaluation) {
        emit(&WorkerEvent::Point { point: *point, metric_name: eval.metric_name.to_string(), higher_is_better: eval.higher_is_better });
    }
}

/// Runs `effseq compare-worker`: reads its [`WorkerSpec`] line, trains, reports events on stdout.
pub fn run_worker(_args: &WorkerArgs) -> Result<(), CliError> {
    // Ctrl-C reaches the whole process group; the parent decides, and tells the worker through stdin.
    signals::ignore_interrupt();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| CliError {
        message: format!("cannot read the worker spec: {e}"),
        hint: None,
        code: exit::OTHER,
    })?;
    let spec: WorkerSpec = serde_json::from_str(&line)
        .map_err(|e| CliError::usage(format!("malformed worker spec: {e}")).with_hint("compare-worker is started by `effseq compare`"))?;
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        WORKER_STOP.store(true, Ordering::Relaxed);
    });
    let outcome = (|| -> Result<WorkerResult, CliError> {
        let mut trainer = Trainer::new(spec.config)?;
        let run = compare::train_within(&mut trainer, spec.budget, spec.schedule, &WORKER_STOP, &mut Emitter { last_sent: None })?;
        let finite = |x: f32| x.is_finite().then_some(x);
        Ok(WorkerResult {
            steps: run.steps,
            steps_per_s: run.steps_per_s(),
            train_time_s: run.train_time_s,
            eval_time_s: run.eval_time_s,
            wall_time_s: run.wall_time_s,
            train_loss: finite(run.train_loss),
            metric: finite(run.eval.metric),
            eval_loss: finite(run.eval.loss),
            metric_name: run.eval.metric_name.to_string(),
            higher_is_better: run.eval.higher_is_better,
            stopped_by: run.stopped_by,
            peak_rss_bytes: bench::process_peak_rss(),
            peak_heap_bytes: bench::alloc::installed().then(bench::alloc::peak),
        })
    })();
    match outcome {
        Ok(result) => {
            emit(&WorkerEvent::Done(result));
            Ok(())
        }
        Err(err) => {
            emit(&WorkerEvent::Failed { message: err.message.clone(), hint: err.hint.clone(), code: err.code });
            Err(err)
        }
    }
}

/// What happened to one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    /// Trained to its budget.
    Done,
    /// Stopped by Ctrl-C; its figures are what it reached.
    Interrupted,
    /// The worker failed (divergence, missing data, a crash).
    Failed,
    /// Not started (an earlier Ctrl-C).
    NotRun,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Interrupted => "interrupted",
            Status::Failed => "failed",
            Status::NotRun => "not run",
        }
    }
}

/// One model's row: its matched width and parameter count, and what its worker reported.
#[derive(Clone, Debug, Serialize)]
struct ModelReport {
    model: &'static str,
    width: usize,
    params: usize,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip)]
    error_code: u8,
    #[serde(flatten)]
    result: Option<WorkerResult>,
    curve: Vec<CurvePoint>,
}

/// The `--json` line and the `--json-file` contents.
#[derive(Serialize)]
struct CompareJson<'a> {
    command: &'static str,
    command_line: &'a str,
    date: &'a str,
    task: &'static str,
    seq_len: usize,
    #[serde(flatten)]
    task_fields: TaskFields,
    batch: usize,
    lr: f32,
    seed: u64,
    budget: Budget,
    /// The configured steps (the cap and the length of the learning-rate schedule).
    step_cap: u64,
    eval_schedule: EvalSchedule,
    target_params: usize,
    metric_name: &'a str,
    higher_is_better: bool,
    memory_method: &'static str,
    interrupted: bool,
    models: &'a [ModelReport],
    not_run: Vec<&'static str>,
}

/// The models a `--models` value names: `all`, or a comma-separated list without repeats.
fn parse_models(list: &str) -> Result<Vec<ModelKind>, CliError> {
    if list.trim() == "all" {
        return Ok(ModelKind::ALL.to_vec());
    }
    let mut models = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = ModelKind::parse(name)
            .map_err(|e| CliError::usage(format!("--models: {e}")).with_hint("name models as `effseq train --model` does, or use --models all"))?;
        if models.contains(&kind) {
            return Err(CliError::usage(format!("--models names {name} twice")));
        }
        models.push(kind);
    }
    if models.is_empty() {
        return Err(CliError::usage("--models needs at least one model (or all)"));
    }
    Ok(models)
}

impl CompareArgs {
    /// The budget and the configured steps (cap and schedule length).
    fn budget(&self) -> Result<(Budget, u64), CliError> {
        if self.steps == Some(0) {
            return Err(CliError::usage("--steps must be at least 1"));
        }
        match (self.budget_secs, self.steps) {
            (Some(s), _) if !(s.is_finite() && s > 0.0) => Err(CliError::usage(format!("--budget-secs must be a positive number of seconds, got {s}"))),
            (Some(s), cap) => Ok((Budget::Seconds(s), cap.unwrap_or(UNCAPPED_STEPS))),
            (None, Some(n)) => Ok((Budget::Steps(n), n)),
            (None, None) => Ok((Budget::Seconds(DEFAULT_BUDGET_SECS), UNCAPPED_STEPS)),
        }
    }

    /// The evaluation schedule.
    fn schedule(&self) -> Result<EvalSchedule, CliError> {
        match self.eval_every {
            Some(0) => Err(CliError::usage("--eval-every must be at least 1 (or leave it out for --evals points)")),
            Some(n) => Ok(EvalSchedule::EverySteps(n)),
            None if self.evals == 0 => Err(CliError::usage("--evals must be at least 1")),
            None => Ok(EvalSchedule::Points(self.evals)),
        }
    }

    /// The run config of `kind`, built as `effseq train` builds it from the same flags.
    fn config_for(&self, kind: ModelKind, steps: u64) -> Result<RunConfig, CliError> {
        TrainArgs {
            model: Some(kind),
            task: self.task,
            seq_len: self.seq_len,
            series: self.series,
            horizon: self.horizon,
            permute: self.permute,
            steps: Some(steps),
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            warmup: self.warmup,
            eval_size: self.eval_size,
            // train_within evaluates on its own schedule; nothing is checkpointed.
            eval_every: Some(0),
            checkpoint_every: Some(0),
            config: self.config.clone(),
            ..TrainArgs::default()
        }
        .fresh_config()
        .map_err(|e| CliError { message: format!("{}: {}", kind.name(), e.message), ..e })
    }
}

/// Prints human-readable lines: to stdout, or to stderr when stdout carries the JSON line; never through a
/// drawn progress bar.
struct Say {
    json: bool,
    bars: Option<MultiProgress>,
}

impl Say {
    fn line(&self, text: &str) {
        let print = || if self.json { eprintln!("{text}") } else { println!("{text}") };
        match &self.bars {
            Some(bars) => bars.suspend(print),
            None => print(),
        }
    }
}

/// Runs `effseq compare`.
pub fn run(args: &CompareArgs, json: bool) -> Result<(), CliError> {
    let models = parse_models(&args.models)?;
    let (budget, step_cap) = args.budget()?;
    let schedule = args.schedule()?;
    if let Some(path) = &args.plot {
        crate::plot::check_plot_path(path)?;
    }
    for (flag, path) in [("--markdown", &args.markdown), ("--json-file", &args.json_file), ("--plot", &args.plot)] {
        if let Some(path) = path {
            crate::preflight::check_output_file(flag, path)?;
        }
    }
    let mut configs = models.iter().map(|&kind| args.config_for(kind, step_cap)).collect::<Result<Vec<_>, _>>()?;
    let first = configs[0].clone();
    // The task, once: its data must load before any worker starts, and it names the metric.
    let task = Task::new(&first.task, first.train.seed)?;
    let io = task.io();
    let target = match args.params {
        Some(n) => n,
        None => compare::param_count(&first.model, io)?,
    };
    let mut reports = Vec::with_capacity(configs.len());
    for (i, cfg) in configs.iter_mut().enumerate() {
        let matched = if i == 0 && args.params.is_none() {
            compare::WidthMatch { width: cfg.model.hidden, params: target }
        } else {
            compare::match_width(&cfg.model, io, target).map_err(|e| CliError::usage(format!("{}: {e}", cfg.model.kind.name())))?
        };
        cfg.model.hidden = matched.width;
        reports.push(ModelReport {
            model: cfg.model.kind.name(),
            width: matched.width,
            params: matched.params,
            status: Status::NotRun,
            error: None,
            error_code: 0,
            result: None,
            curve: Vec::new(),
        });
    }

    // From here on Ctrl-C stops the comparison cleanly (before any worker starts, it ends it with nothing run).
    signals::catch();
    let draw = !json && std::io::stderr().is_terminal();
    let bars = draw.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
    let say = Say { json, bars: bars.clone() };
    let command_line = command_line();
    let date = utc_now();
    let metric_name = task.metric_name().to_string();
    let direction = if task.higher_is_better() { "higher" } else { "lower" };
    say.line(&format!(
        "effseq {}: comparing {} on {}",
        env!("CARGO_PKG_VERSION"),
        models.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
        task_label(&first.task)
    ));
    say.line(&format!(
        "  budget  {} per model; batch {}, lr {}, seed {}",
        describe_budget(budget, step_cap),
        first.train.batch,
        first.train.lr,
        first.train.seed
    ));
    let basis = if args.params.is_some() { "--params".to_string() } else { format!("{} at width {}", reports[0].model, reports[0].width) };
    say.line(&format!(
        "  params  matched to {} ({basis}): {}",
        grouped(target),
        reports.iter().map(|r| format!("{} width {} -> {}", r.model, r.width, grouped(r.params))).collect::<Vec<_>>().join(", ")
    ));
    say.line(&format!("  metric  test {metric_name} ({direction} is better), evaluated {}", describe_schedule(schedule)));
    say.line(&format!("  memory  {MEMORY_METHOD}"));
    drop(task);

    let overall = bars.as_ref().map(|b| {
        let bar = b.add(ProgressBar::new(configs.len() as u64));
        bar.set_style(
            ProgressStyle::with_template("models {pos}/{len} [{bar:20}] {elapsed_precise}  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    for (i, cfg) in configs.iter().enumerate() {
        if signals::interrupted() {
            break;
        }
        if let Some(bar) = &overall {
            bar.set_message(format!("training {}", cfg.model.kind.name()));
        }
        let spec = WorkerSpec { config: cfg.clone(), budget, schedule };
        run_model(&spec, &mut reports[i], bars.as_ref());
        say.line(&describe_outcome(&reports[i]));
        if let Some(bar) = &overall {
            bar.inc(1);
        }
    }
    if let Some(bar) = &overall {
        bar.finish_and_clear();
    }
    signals::set_worker(0);
    let interrupted = signals::interrupted();

    let table = format_table(&reports, &metric_name, direction);
    say.line("");
    say.line(table.trim_end());
    let failed: Vec<&ModelReport> = reports.iter().filter(|r| r.status == Status::Failed).collect();
    for r in &failed {
        say.line(&format!("{} failed: {}", r.model, r.error.as_deref().unwrap_or("unknown error")));
    }
    let not_run: Vec<&'static str> = reports.iter().filter(|r| r.status == Status::NotRun).map(|r| r.model).collect();
    if !not_run.is_empty() {
        say.line(&format!("not run (interrupted): {}", not_run.join(", ")));
    }

    let summary = CompareJson {
        command: "compare",
        command_line: &command_line,
        date: &date,
        task: first.task.kind.name(),
        seq_len: first.task.seq_len,
        task_fields: task_fields(&first.task),
        batch: first.train.batch,
        lr: first.train.lr,
        seed: first.train.seed,
        budget,
        step_cap,
        eval_schedule: schedule,
        target_params: target,
        metric_name: &metric_name,
        higher_is_better: direction == "higher",
        memory_method: MEMORY_METHOD,
        interrupted,
        models: &reports,
        not_run: not_run.clone(),
    };
    let json_error = |e: serde_json::Error| CliError { message: format!("cannot write JSON: {e}"), hint: None, code: exit::OTHER };
    if let Some(path) = &args.markdown {
        let note = format!("Budget: {} per model. Memory: {MEMORY_METHOD}.", describe_budget(budget, step_cap));
        let text = format!("`{command_line}` ({date})\n\n{}\n{note}\n", format_markdown(&reports, &metric_name, direction));
        write_atomic(path, text.as_bytes())?;
        say.line(&format!("wrote {}", path.display()));
    }
    if let Some(path) = &args.json_file {
        write_atomic(path, serde_json::to_string_pretty(&summary).map_err(json_error)?.as_bytes())?;
        say.line(&format!("wrote {}", path.display()));
    }
    if let Some(path) = &args.plot {
        let chart = compare_chart(&reports, &first, &metric_name, direction == "higher", budget, step_cap, target);
        match write_compare_plot(&chart, path) {
            Ok(()) => say.line(&format!("wrote {}", path.display())),
            Err(effseq::Error::Invalid(msg)) => say.line(&format!("no plot: {msg}")),
            Err(e) => return Err(e.into()),
        }
    }
    if json {
        println!("{}", serde_json::to_string(&summary).map_err(json_error)?);
    }
    if interrupted {
        let reached = reports.iter().filter(|r| r.status == Status::Interrupted).map(|r| r.model).collect::<Vec<_>>().join(", ");
        let mut message = format!("interrupted by {}", signals::name());
        if !reached.is_empty() {
            message += &format!(": {reached} stopped early");
        }
        if !not_run.is_empty() {
            message += &format!("; not run: {}", not_run.join(", "));
        }
        return Err(CliError { message, hint: None, code: signals::exit_code() });
    }
    if let Some(first_failure) = failed.first() {
        return Err(CliError {
            message: format!("{} of {} models failed: {}", failed.len(), reports.len(), failed.iter().map(|r| r.model).collect::<Vec<_>>().join(", ")),
            hint: None,
            code: first_failure.error_code,
        });
    }
    Ok(())
}

/// Trains one model in a worker process and fills its report.
fn run_model(spec: &WorkerSpec, report: &mut ModelReport, bars: Option<&MultiProgress>) {
    let fail = |report: &mut ModelReport, message: String, code: u8| {
        report.status = Status::Failed;
        report.error = Some(message);
        report.error_code = code;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(report, format!("cannot find the effseq binary to start a worker: {e}"), exit::OTHER),
    };
    let spawned = Command::new(exe).arg("compare-worker").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return fail(report, format!("cannot start a worker process: {e}"), exit::OTHER),
    };
    signals::set_worker(child.id());
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return fail(report, "the worker's pipes could not be opened".into(), exit::OTHER);
    };
    let sent = serde_json::to_string(spec).map_err(std::io::Error::other).and_then(|line| writeln!(stdin, "{line}").and_then(|()| stdin.flush()));
    if let Err(e) = sent {
        let _ = child.kill();
        let _ = child.wait();
        return fail(report, format!("cannot send the worker its config: {e}"), exit::OTHER);
    }
    let finished = Arc::new(AtomicBool::new(false));
    let stopper = std::thread::spawn({
        let finished = Arc::clone(&finished);
        move || forward_interrupt(stdin, &finished)
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });

    let bar = bars.map(|b| model_bar(b, report.model, spec.budget));
    let mut outcome: Option<WorkerEvent> = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<WorkerEvent>(&line) {
            Ok(WorkerEvent::Step { step, train_time_s, loss }) => {
                if let Some(bar) = &bar {
                    show_step(bar, spec.budget, step, train_time_s, loss);
                }
            }
            Ok(WorkerEvent::Point { point, .. }) => report.curve.push(point),
            Ok(event @ (WorkerEvent::Done(_) | WorkerEvent::Failed { .. })) => outcome = Some(event),
            // Anything else on the worker's stdout is not part of the protocol.
            Err(_) => {}
        }
    }
    finished.store(true, Ordering::SeqCst);
    let status = child.wait();
    signals::set_worker(0);
    let _ = stopper.join();
    let stderr_text = errors.join().unwrap_or_default();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match outcome {
        Some(WorkerEvent::Done(result)) => {
            report.status = if result.stopped_by == StopReason::Interrupted { Status::Interrupted } else { Status::Done };
            report.result = Some(result);
        }
        Some(WorkerEvent::Failed { message, code, .. }) => fail(report, message, code),
        _ => {
            let how = match status {
                Ok(s) => format!("the worker exited ({s}) without a result"),
                Err(e) => format!("the worker could not be waited for: {e}"),
            };
            let last = stderr_text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| format!(": {l}")).unwrap_or_default();
            fail(report, format!("{how}{last}"), exit::OTHER);
        }
    }
}

/// Holds the worker's stdin: sends `stop` once Ctrl-C is pressed, and closes it when the worker has finished.
fn forward_interrupt(mut stdin: ChildStdin, finished: &AtomicBool) {
    while !finished.load(Ordering::SeqCst) {
        if signals::interrupted() {
            // The worker may already be gone: a broken pipe is fine.
            let _ = writeln!(stdin, "stop").and_then(|()| stdin.flush());
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bar of one model: seconds of training (time budget) or steps.
fn model_bar(bars: &MultiProgress, model: &str, budget: Budget) -> ProgressBar {
    let len = match budget {
        Budget::Seconds(s) => (s * 1000.0).ceil() as u64,
        Budget::Steps(n) => n,
    };
    let bar = bars.add(ProgressBar::new(len));
    bar.set_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    bar.set_prefix(model.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Moves a model's bar to a step report.
fn show_step(bar: &ProgressBar, budget: Budget, step: u64, train_time_s: f64, loss: f32) {
    match budget {
        Budget::Seconds(s) => {
            bar.set_position((train_time_s * 1000.0) as u64);
            bar.set_message(format!("{train_time_s:.1}/{s} s, step {step}, loss {loss:.5}"));
        }
        Budget::Steps(n) => {
            bar.set_position(step);
            bar.set_message(format!("step {step}/{n}, {train_time_s:.1} s, loss {loss:.5}"));
        }
    }
}

/// One line on a finished model.
fn describe_outcome(r: &ModelReport) -> String {
    match (&r.result, r.status) {
        (Some(x), status) => {
            let how = if status == Status::Interrupted { " (interrupted)" } else { "" };
            format!(
                "{}{how}: {} steps in {:.1} s of training ({:.1} steps/s), train loss {}, test {} {}, peak RSS {}",
                r.model,
                x.steps,
                x.train_time_s,
                x.steps_per_s,
                opt(x.train_loss, 5),
                x.metric_name,
                opt(x.metric, 5),
                mib(x.peak_rss_bytes)
            )
        }
        (None, _) => format!("{}: {}: {}", r.model, r.status.name(), r.error.as_deref().unwrap_or("")),
    }
}

/// `x` with `decimals` decimals, or `-`.
fn opt(x: Option<f32>, decimals: usize) -> String {
    x.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}

/// Bytes in MiB with one decimal, or `-`.
fn mib(bytes: Option<u64>) -> String {
    bytes.map(|b| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)).unwrap_or_else(|| "-".into())
}

/// The cells of the table: a header row, then one row per model.
fn table_rows(reports: &[ModelReport], metric_name: &str, direction: &str) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "model".to_string(),
        "width".into(),
        "params".into(),
        "steps".into(),
        "steps/s".into(),
        "train loss".into(),
        format!("test {metric_name} ({direction} is better)"),
        "peak RSS".into(),
        "peak heap".into(),
        "status".into(),
    ]];
    for r in reports {
        let mut row = vec![r.model.to_string(), r.width.to_string(), grouped(r.params)];
        match &r.result {
            Some(x) => row.extend([
                x.steps.to_string(),
                format!("{:.1}", x.steps_per_s),
                opt(x.train_loss, 5),
                opt(x.metric, 5),
                mib(x.peak_rss_bytes),
                mib(x.peak_heap_bytes),
            ]),
            None => row.extend(std::iter::repeat_n("-".to_string(), 6)),
        }
        row.push(r.status.name().to_string());
        rows.push(row);
    }
    rows
}

/// The aligned text table (numbers right-aligned).
fn format_table(reports: &[ModelReport], metric_name: &str, direction: &str) -> String {
    let rows = table_rows(reports, metric_name, direction);
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| if c == 0 || c + 1 == columns { format!("{cell:<w$}", w = widths[c]) } else { format!("{cell:>w$}", w = widths[c]) })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// The table as Markdown.
fn format_markdown(reports: &[ModelReport], metric_name: &str, direction: &str) -> String {
    let rows = table_rows(reports, metric_name, direction);
    let columns = rows[0].len();
    let mut out = format!("| {} |\n", rows[0].join(" | "));
    let align: Vec<&str> = (0..columns).map(|c| if c == 0 || c + 1 == columns { "---" } else { "---:" }).collect();
    out += &format!("|{}|\n", align.join("|"));
    for row in &rows[1..] {
        out += &format!("| {} |\n", row.join(" | "));
    }
    out
}

/// The chart of the test metric against training time.
fn compare_chart(reports: &[ModelReport], cfg: &RunConfig, metric: &str, higher_is_better: bool, budget: Budget, step_cap: u64, target: usize) -> CompareChart {
    let lines = reports
        .iter()
        .filter(|r| !r.curve.is_empty())
        .map(|r| CurveLine {
            model: format!("{} ({} params)", r.model, grouped(r.params)),
            points: r.curve.iter().map(|p| (p.train_time_s, f64::from(p.metric))).collect(),
        })
        .collect();
    CompareChart {
        title: format!("effseq compare: test {metric} against training time, {}", task_label(&cfg.task)),
        metric: metric.to_string(),
        higher_is_better,
        lines,
        note: vec![
            format!("Budget: {} per model.", describe_budget(budget, step_cap)),
            format!("Parameters matched to about {}; batch {}, lr {}, seed {}.", grouped(target), cfg.train.batch, cfg.train.lr, cfg.train.seed),
            "One point per evaluation on the test set, the first at step 0; time counts training steps only.".to_string(),
        ],
    }
}

/// E.g. `60 s of training (no step cap)`, `60 s of training (at most 5000 steps)`, `500 steps`.
fn describe_budget(budget: Budget, step_cap: u64) -> String {
    match budget {
        Budget::Seconds(s) if step_cap >= UNCAPPED_STEPS => format!("{s} s of training (no step cap; constant learning rate after warmup)"),
        Budget::Seconds(s) => format!("{s} s of training (at most {step_cap} steps)"),
        Budget::Steps(n) => format!("{n} steps"),
    }
}

/// E.g. `at step 0 and 10 times over the budget`.
fn describe_schedule(schedule: EvalSchedule) -> String {
    match schedule {
        EvalSchedule::EverySteps(n) => format!("at step 0, every {n} steps and at the end"),
        EvalSchedule::Points(k) => format!("at step 0 and {k} times evenly over the budget"),
    }
}

/// The command line as typed (arguments with spaces or shell characters quoted), `effseq` for the program.
fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c)) {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::iter::once("effseq".to_string()).chain(std::env::args().skip(1).map(quote)).collect::<Vec<_>>().join(" ")
}

/// The current UTC date and time, `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs)
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time (the civil-from-days conversion of H. Hinnant's date algorithms).
fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // day of the era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of the era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| effseq::Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| effseq::Error::io(path, e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_798_476_245), "2026-12-28 16:44:05 UTC");
    }

    #[test]
    fn model_lists() {
        assert_eq!(parse_models("all").unwrap(), ModelKind::ALL.to_vec());
        assert_eq!(parse_models("gru, lstm").unwrap(), vec![ModelKind::Gru, ModelKind::Lstm]);
        assert_eq!(parse_models("lstm,nope").unwrap_err().code, exit::USAGE);
        assert!(parse_models("lstm,lstm").unwrap_err().message.contains("twice"));
        assert!(parse_models(",").is_err());
    }
}
