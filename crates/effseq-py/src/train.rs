//! `effseq.train(config)`: the CLI's training loop from Python. The loop runs without the GIL; every event is handed
//! to the progress callback with the GIL re-acquired, and pending signals (Ctrl-C) are checked after every step, so
//! an interrupted run stops cleanly after its final evaluation and checkpoint.

use std::path::{Path, PathBuf};

use effseq::checkpoint;
use effseq::tasks::Evaluation;
use effseq::train::{Progress, StepReport, Trainer};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::config::{run_config, to_python};
use crate::{detached, error, ErrorKind};

/// Forwards the training events to a Python callable.
struct CallbackProgress {
    callback: Option<Py<PyAny>>,
    /// The first exception the callback raised, or a pending KeyboardInterrupt: ends the run, then is raised.
    failure: Option<PyErr>,
    /// The callback returned True: end the run early.
    stop: bool,
}

impl CallbackProgress {
    /// Calls the callback with the dict `event` builds (after checking for signals), with the GIL held.
    fn emit(&mut self, event: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyDict>>) {
        if self.failure.is_some() {
            return;
        }
        Python::attach(|py| {
            let outcome = py.check_signals().and_then(|()| match &self.callback {
                Some(callback) => {
                    let returned = callback.call1(py, (event(py)?,))?;
                    returned.is_truthy(py)
                }
                None => Ok(false),
            });
            match outcome {
                Ok(stop) => self.stop |= stop,
                Err(e) => self.failure = Some(e),
            }
        });
    }
}

/// `{"event": name, ...}`.
fn event<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("event", name)?;
    Ok(d)
}

impl Progress for CallbackProgress {
    fn on_start(&mut self, start_step: u64, total_steps: u64) {
        self.emit(|py| {
            let d = event(py, "start")?;
            d.set_item("start_step", start_step)?;
            d.set_item("total_steps", total_steps)?;
            Ok(d)
        });
    }

    fn on_step(&mut self, r: &StepReport) {
        self.emit(|py| {
            let d = event(py, "step")?;
            d.set_item("step", r.step)?;
            d.set_item("total_steps", r.total_steps)?;
            d.set_item("loss", r.loss)?;
            d.set_item("grad_norm", r.grad_norm)?;
            d.set_item("lr", r.lr)?;
            d.set_item("steps_per_s", r.steps_per_s)?;
            d.set_item("elapsed_s", r.elapsed_s)?;
            Ok(d)
        });
    }

    fn on_eval(&mut self, step: u64, eval: &Evaluation) {
        self.emit(|py| {
            let d = to_python(py, eval)?.cast_into::<PyDict>()?;
            d.set_item("event", "eval")?;
            d.set_item("step", step)?;
            Ok(d)
        });
    }

    fn on_checkpoint(&mut self, step: u64, dir: &Path) {
        self.emit(|py| {
            let d = event(py, "checkpoint")?;
            d.set_item("step", step)?;
            d.set_item("dir", dir)?;
            Ok(d)
        });
    }

    fn should_stop(&mut self) -> bool {
        self.stop || self.failure.is_some()
    }
}

/// Trains a model as `effseq train` does and returns the summary as a dict (model, task, steps, train_loss, eval,
/// best_metric, steps_per_s, wall_time_s, params, checkpoint).
///
/// config: dict, TOML/JSON text or pathlib.Path (as for Model). checkpoint_dir: where periodic and final checkpoints
/// go (none written without it); a directory that already holds one is refused unless overwrite=True, or
/// resume=True, which continues that run exactly (then only train.steps, train.eval_every and
/// train.checkpoint_every may differ from its config). progress: a callable receiving one dict per event,
/// {"event": "start" | "step" | "eval" | "checkpoint", ...}; returning True ends the run early (with its final
/// evaluation and checkpoint), an exception it raises ends the run and is re-raised. Ctrl-C does the same.
#[pyfunction]
#[pyo3(signature = (config = None, *, checkpoint_dir = None, resume = false, overwrite = false, progress = None))]
fn train<'py>(
    py: Python<'py>,
    config: Option<&Bound<'py, PyAny>>,
    checkpoint_dir: Option<PathBuf>,
    resume: bool,
    overwrite: bool,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(p) = &progress {
        if !p.is_callable() {
            return Err(error(py, ErrorKind::DType, "progress must be a callable taking one dict per event"));
        }
    }
    let trainer = if resume {
        let dir = checkpoint_dir.clone().ok_or_else(|| error(py, ErrorKind::Config, "resume=True needs checkpoint_dir, the run to continue"))?;
        let mut loaded = detached(py, || checkpoint::load(&dir))?;
        if let Some(config) = config.filter(|c| !c.is_none()) {
            let wanted = run_config(py, Some(config))?;
            let mut kept = wanted.clone();
            kept.train.steps = loaded.config.train.steps;
            kept.train.eval_every = loaded.config.train.eval_every;
            kept.train.checkpoint_every = loaded.config.train.checkpoint_every;
            if kept != loaded.config {
                return Err(error(
                    py,
                    ErrorKind::Config,
                    format!(
                        "a resumed run keeps the config of its checkpoint {}: only train.steps, train.eval_every and train.checkpoint_every may change (start a new run in another directory to change anything else)",
                        dir.display()
                    ),
                ));
            }
            if wanted.train.steps < loaded.state.step {
                return Err(error(
                    py,
                    ErrorKind::Config,
                    format!("train.steps = {} is below the {} steps the checkpoint has already trained", wanted.train.steps, loaded.state.step),
                ));
            }
            loaded.config = wanted;
        }
        detached(py, move || Trainer::resume(loaded))?
    } else {
        let cfg = run_config(py, config)?;
        if let Some(dir) = &checkpoint_dir {
            if checkpoint::exists(dir) && !overwrite {
                return Err(error(
                    py,
                    ErrorKind::Checkpoint,
                    format!("{} already holds a checkpoint: continue it with resume=True, replace it with overwrite=True, or write elsewhere", dir.display()),
                ));
            }
        }
        detached(py, move || Trainer::new(cfg))?
    };
    let mut trainer = match checkpoint_dir {
        Some(dir) => trainer.with_checkpoint_dir(dir),
        None => trainer,
    };
    let mut progress = CallbackProgress { callback: progress.map(Bound::unbind), failure: None, stop: false };
    let result = detached(py, || trainer.run(&mut progress));
    if let Some(failure) = progress.failure {
        return Err(failure);
    }
    to_python(py, &result?)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train, m)?)
}
