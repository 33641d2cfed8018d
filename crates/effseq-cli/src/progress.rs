//! The training progress display: an indicatif bar on stderr (step, smoothed loss, steps/s, ETA) and one
//! line per evaluation.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use effseq::tasks::Evaluation;
use effseq::train::{Progress, StepReport, RECENT_LOSSES};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::format::describe_eval;

/// Shows a training run. Evaluation lines go to stdout, or to stderr with `--json` (stdout then carries
/// JSON only); the bar is drawn only when stderr is a terminal and `--json` is off.
pub struct TrainProgress {
    /// The bar: hidden until the run starts, and for good when not drawn.
    bar: ProgressBar,
    /// Whether to draw the bar (stderr is a terminal and stdout is not reserved for JSON).
    draw: bool,
    /// Whether stdout is reserved for JSON.
    json: bool,
    /// The last training losses, for the smoothed value shown.
    recent: VecDeque<f32>,
    /// The step the run ends at.
    total: u64,
}

impl TrainProgress {
    /// A display for a run; `json` moves the human-readable lines to stderr and hides the bar.
    pub fn new(json: bool) -> Self {
        TrainProgress {
            bar: ProgressBar::hidden(),
            draw: !json && std::io::stderr().is_terminal(),
            json,
            recent: VecDeque::with_capacity(RECENT_LOSSES),
            total: 0,
        }
    }

    /// The drawn bar, from `start` of `total` steps.
    fn visible_bar(start: u64, total: u64) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}  {rate}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} steps/s", state.per_sec());
            })
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_position(start);
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    }

    /// Prints one human-readable line without tearing the bar.
    pub fn line(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            self.bar.suspend(|| println!("{text}"));
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Mean of the recent losses.
    fn smoothed_loss(&self) -> f32 {
        self.recent.iter().sum::<f32>() / self.recent.len().max(1) as f32
    }
}

impl Progress for TrainProgress {
    fn on_start(&mut self, start_step: u64, total_steps: u64) {
        self.total = total_steps;
        if self.draw {
            self.bar = Self::visible_bar(start_step, total_steps);
        }
    }

    fn on_step(&mut self, report: &StepReport) {
        if self.recent.len() == RECENT_LOSSES {
            self.recent.pop_front();
        }
        self.recent.push_back(report.loss);
        self.bar.set_position(report.step);
        self.bar.set_message(format!("loss {:.5}", self.smoothed_loss()));
    }

    fn on_eval(&mut self, step: u64, eval: &Evaluation) {
        let width = self.total.to_string().len();
        let train = if self.recent.is_empty() { String::new() } else { format!("  train loss {:.5}", self.smoothed_loss()) };
        self.line(&format!("step {step:>width$}/{}  {}{train}", self.total, describe_eval(eval)));
    }

    fn on_checkpoint(&mut self, step: u64, dir: &Path) {
        self.bar.set_message(format!("loss {:.5}  (checkpoint at step {step} in {})", self.smoothed_loss(), dir.display()));
    }

    fn interrupted(&mut self) -> bool {
        crate::signals::interrupted()
    }
}
