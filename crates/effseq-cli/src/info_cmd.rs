//! `effseq info`: the resolved config and the parameters, per tensor, of a config file or a checkpoint.

use std::path::PathBuf;

use clap::Args;
use effseq::checkpoint::{self, TrainState};
use effseq::config::RunConfig;
use effseq::model::Network;
use effseq::tasks::Task;
use effseq::Module;

use crate::failure::{exit, CliError};
use crate::format::{grouped, param_json, param_table};

/// Arguments of `effseq info`: exactly one of `--config` and `--checkpoint`.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct InfoArgs {
    /// A run config file (TOML, or JSON by its .json extension).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A checkpoint directory written by `effseq train`.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
}

/// Runs `effseq info`.
pub fn run(args: &InfoArgs, json: bool) -> Result<(), CliError> {
    let (config, network, state): (RunConfig, Network, Option<TrainState>) = match (&args.config, &args.checkpoint) {
        (Some(path), _) => {
            let mut config = RunConfig::from_file(path).map_err(|e| match e {
                effseq::Error::Io { source, .. } => CliError::usage(format!("cannot read config file {}: {source}", path.display())),
                other => other.into(),
            })?;
            // As `train` would: the custom task reads its training data to resolve its inputs and outputs, and a TCN
            // without `levels` gets enough to cover the task's sequence.
            if config.task.kind == effseq::config::TaskKind::Custom {
                Task::prepare(&mut config.task, config.train.seed)?;
            }
            let steps = config.task.steps_per_sequence();
            config.model.resolve_for_run(config.task.kind, steps);
            let network = Network::new(&config.model, Task::io_of(&config.task)?, config.train.seed)?;
            (config, network, None)
        }
        (None, Some(dir)) => {
            let (config, network, state) = checkpoint::load_model(dir)?;
            (config, network, Some(state))
        }
        (None, None) => return Err(CliError::usage("give --config FILE or --checkpoint DIR")),
    };
    if json {
        let value = serde_json::json!({
            "config": config,
            "params": param_json(&network),
            "total_params": network.num_params(),
            "receptive_field": config.model.receptive_field(),
            "state": state,
        });
        let text = serde_json::to_string(&value).map_err(|e| CliError { message: format!("cannot write JSON: {e}"), hint: None, code: exit::OTHER })?;
        println!("{text}");
        return Ok(());
    }
    println!("# resolved config\n{}", config.to_toml().trim_end());
    let steps = config.task.steps_per_sequence();
    match config.model.receptive_field() {
        Some(rf) if rf < steps => println!("\n# receptive field: {rf} steps, SHORTER than the task's {steps}-step sequence: the model cannot see its start"),
        Some(rf) => println!("\n# receptive field: {rf} steps (the task's sequences have {steps})"),
        None => println!("\n# receptive field: unbounded (recurrent); the task's sequences have {steps} steps"),
    }
    if let Some(state) = &state {
        let metric = match (&state.metric_name, state.last_metric, state.best_metric) {
            (Some(name), Some(last), Some(best)) => format!(", eval {name} {last:.5} (best {best:.5})"),
            _ => String::new(),
        };
        let files =
            args.checkpoint.as_deref().and_then(|dir| checkpoint::resolve(dir).ok()).map(|d| format!(" (files in {})", d.display())).unwrap_or_default();
        println!("\n# checkpoint: step {} of {}{metric}{files}", state.step, config.train.steps);
    }
    println!("\n# parameters ({} in total)\n{}", grouped(network.num_params()), param_table(&network).trim_end());
    Ok(())
}
