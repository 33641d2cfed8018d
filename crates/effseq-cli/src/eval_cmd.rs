//! `effseq eval`: score a checkpoint on its task's evaluation set.

use std::path::PathBuf;

use clap::Args;
use effseq::checkpoint;
use effseq::tasks::{Evaluation, Task};
use serde::Serialize;

use crate::failure::{exit, CliError};
use crate::format::describe_eval;

/// Arguments of `effseq eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory written by `effseq train`.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
}

/// The last line of `effseq eval --json`.
#[derive(Serialize)]
struct EvalJson<'a> {
    checkpoint: String,
    model: &'a str,
    task: &'a str,
    seq_len: usize,
    step: u64,
    eval_metric: f32,
    metric_name: &'a str,
    #[serde(flatten)]
    eval: &'a Evaluation,
}

/// Runs `effseq eval`.
pub fn run(args: &EvalArgs, json: bool) -> Result<(), CliError> {
    let (config, mut network, state) = checkpoint::load_model(&args.checkpoint)?;
    let task = Task::new(&config.task, config.train.seed)?;
    let eval = task.evaluate(&mut network)?;
    let summary = format!(
        "{} on {} (T = {}) after {} steps: {} on {} sequences",
        config.model.kind.name(),
        config.task.kind.name(),
        config.task.seq_len,
        state.step,
        describe_eval(&eval),
        eval.sequences
    );
    if json {
        eprintln!("{summary}");
        let line = EvalJson {
            checkpoint: args.checkpoint.display().to_string(),
            model: config.model.kind.name(),
            task: config.task.kind.name(),
            seq_len: config.task.seq_len,
            step: state.step,
            eval_metric: eval.metric,
            metric_name: eval.metric_name,
            eval: &eval,
        };
        let text = serde_json::to_string(&line).map_err(|e| CliError { message: format!("cannot write JSON: {e}"), hint: None, code: exit::OTHER })?;
        println!("{text}");
    } else {
        println!("{summary}");
        println!("({})", task.baseline_note());
    }
    Ok(())
}
