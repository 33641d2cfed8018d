//! `effseq eval`: score a checkpoint on its task's evaluation set.

use std::path::PathBuf;

use clap::Args;
use effseq::checkpoint;
use effseq::memory;
use effseq::tasks::{Evaluation, Task};
use serde::Serialize;

use crate::failure::{exit, CliError};
use crate::format::{describe_eval, sequences_noun, task_fields, task_label, TaskFields};
use crate::preflight;

/// Arguments of `effseq eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory written by `effseq train`.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Reformer: evaluate with this many LSH hash rounds instead of the number it was trained with.
    #[arg(long, value_name = "K")]
    pub n_hashes: Option<usize>,
    /// Refuse to start when the evaluation's estimated memory exceeds this many GiB (it is always refused above
    /// the memory available).
    #[arg(long, value_name = "G")]
    pub max_memory_gib: Option<f64>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    n_hashes: Option<usize>,
    eval_metric: f32,
    /// Custom task with a test file: the metric on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    test_metric: Option<f32>,
    /// Every field of the evaluation (metric, metric_name, loss, sequences, and recall_loss or forecast).
    #[serde(flatten)]
    eval: &'a Evaluation,
}

/// Runs `effseq eval`.
pub fn run(args: &EvalArgs, json: bool) -> Result<(), CliError> {
    let (mut sized, _) = checkpoint::load_config(&args.checkpoint)?;
    // The evaluation's own hash rounds size its LSH buffers.
    if let Some(k) = args.n_hashes {
        sized.model.n_hashes = k;
    }
    let estimate = memory::estimate_eval(&sized, Task::io_of(&sized.task)?)?;
    preflight::check_memory("evaluating this checkpoint", &estimate, args.max_memory_gib, "evaluate on a machine with more memory")?;
    let (config, mut network, state) = checkpoint::load_model(&args.checkpoint)?;
    if args.n_hashes.is_some() {
        network.set_eval_hash_rounds(args.n_hashes)?;
    }
    let task = Task::new(&config.task, config.train.seed)?;
    let eval = task.evaluate(&mut network)?;
    if !(eval.loss.is_finite() && eval.metric.is_finite()) {
        // The weights are finite (the load checks them), but the outputs overflow: a run on the edge of divergence.
        return Err(CliError {
            message: format!(
                "checkpoint {}: the evaluation loss is {} and the {} is {}, although every weight is finite: the model's outputs overflow",
                args.checkpoint.display(),
                eval.loss,
                eval.metric_name,
                eval.metric
            ),
            hint: Some("the run was diverging when this checkpoint was written; resume an earlier one, or train again with a lower --lr".into()),
            code: exit::DATA,
        });
    }
    let test = task.evaluate_test(&mut network)?;
    let hashes = args.n_hashes.map(|k| format!(" with {k} hash round{}", if k == 1 { "" } else { "s" })).unwrap_or_default();
    let summary = format!(
        "{}{hashes} on {} after {} steps: {} on {} {}",
        config.model.kind.name(),
        task_label(&config.task),
        state.step,
        describe_eval(&eval),
        eval.sequences,
        sequences_noun(config.task.kind)
    );
    let summary = match &test {
        Some(t) => format!("{summary}\ntest: {} on {} test sequences", describe_eval(t).replacen("eval ", "", 1), t.sequences),
        None => summary,
    };
    if json {
        eprintln!("{summary}");
        let line = EvalJson {
            checkpoint: args.checkpoint.display().to_string(),
            model: config.model.kind.name(),
            task: config.task.kind.name(),
            seq_len: config.task.seq_len,
            task_fields: task_fields(&config.task),
            step: state.step,
            n_hashes: args.n_hashes,
            eval_metric: eval.metric,
            test_metric: test.as_ref().map(|t| t.metric),
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
