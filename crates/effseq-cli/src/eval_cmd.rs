//! `effseq eval`: score a checkpoint on its task's evaluation set.

use std::path::PathBuf;

use clap::Args;
use effseq::checkpoint;
use effseq::tasks::{Evaluation, Task};
use serde::Serialize;

use crate::failure::{exit, CliError};
use crate::format::{describe_eval, sequences_noun, task_fields, task_label, TaskFields};

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
    #[serde(flatten)]
    task_fields: TaskFields,
    step: u64,
    eval_metric: f32,
    /// Every field of the evaluation (metric, metric_name, loss, sequences, and recall_loss or forecast).
    #[serde(flatten)]
    eval: &'a Evaluation,
}

/// Runs `effseq eval`.
pub fn run(args: &EvalArgs, json: bool) -> Result<(), CliError> {
    let (config, mut network, state) = checkpoint::load_model(&args.checkpoint)?;
    let task = Task::new(&config.task, config.train.seed)?;
    let eval = task.evaluate(&mut network)?;
    let summary = format!(
        "{} on {} after {} steps: {} on {} {}",
        config.model.kind.name(),
        task_label(&config.task),
        state.step,
        describe_eval(&eval),
        eval.sequences,
        sequences_noun(config.task.kind)
    );
    if json {
        eprintln!("{summary}");
        let line = EvalJson {
            checkpoint: args.checkpoint.display().to_string(),
            model: config.model.kind.name(),
            task: config.task.kind.name(),
            seq_len: config.task.seq_len,
            task_fields: task_fields(&config.task),
            step: state.step,
            eval_metric: eval.metric,
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
