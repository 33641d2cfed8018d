//! Run configuration: one serde definition serves the CLI, the `config.toml` of a checkpoint and the
//! library. Every field has a documented default, so a config file may name only what it changes.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{Error, Result};

/// Which sequence architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch's `nn.LSTM`.
    Lstm,
    /// Gated recurrent unit (Cho et al. 2014), PyTorch's `nn.GRU`.
    Gru,
}

impl ModelKind {
    /// All kinds, in the order the CLI lists them.
    pub const ALL: &'static [ModelKind] = &[ModelKind::Lstm, ModelKind::Gru];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Lstm => "lstm",
            ModelKind::Gru => "gru",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == s.to_ascii_lowercase()).ok_or_else(|| Error::Unknown {
            kind: "model",
            name: s.to_string(),
            choices: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Which task (data set and metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// The adding problem (Hochreiter & Schmidhuber 1997; Bai et al. 2018 sec. 4.1): regression, MSE.
    Adding,
    /// The copy-memory task (Bai et al. 2018 sec. 4.1): recall 10 digits after T blanks.
    Copy,
}

impl TaskKind {
    /// All kinds, in the order the CLI lists them.
    pub const ALL: &'static [TaskKind] = &[TaskKind::Adding, TaskKind::Copy];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Adding => "adding",
            TaskKind::Copy => "copy",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == s.to_ascii_lowercase()).ok_or_else(|| Error::Unknown {
            kind: "task",
            name: s.to_string(),
            choices: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// The sequence model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture.
    pub kind: ModelKind,
    /// Hidden size H of each recurrent layer (per direction). Default 128.
    pub hidden: usize,
    /// Number of stacked layers. Default 1.
    pub layers: usize,
    /// Run a second, time-reversed direction in every layer and concatenate (output width 2H). Default false.
    pub bidirectional: bool,
    /// Dropout probability on the outputs of every layer but the last (as `nn.LSTM`'s `dropout`). Default 0.
    pub dropout: f32,
    /// Whether the recurrent layers have the bias vectors `bias_ih`, `bias_hh`. Default true.
    pub bias: bool,
    /// Width of the token embedding for token-input tasks. Default: equal to `hidden`.
    pub embed_dim: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { kind: ModelKind::Lstm, hidden: 128, layers: 1, bidirectional: false, dropout: 0.0, bias: true, embed_dim: None }
    }
}

impl ModelConfig {
    /// Width of the backbone's output at every time step.
    pub fn output_dim(&self) -> usize {
        self.hidden * if self.bidirectional { 2 } else { 1 }
    }

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 {
            return Err(Error::config("model.hidden must be at least 1"));
        }
        if self.layers == 0 {
            return Err(Error::config("model.layers must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(format!("model.dropout must be in [0, 1), got {}", self.dropout)));
        }
        if self.embed_dim == Some(0) {
            return Err(Error::config("model.embed_dim must be at least 1"));
        }
        Ok(())
    }
}

/// The task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// Which task.
    pub kind: TaskKind,
    /// Sequence length T (adding: number of steps; copy: the blank gap, total length T + 20). Default 50.
    pub seq_len: usize,
    /// Number of held-out evaluation sequences, generated once from the seed. Default 1000.
    pub eval_size: usize,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig { kind: TaskKind::Adding, seq_len: 50, eval_size: 1000 }
    }
}

/// Which optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.
    Adamw,
    /// SGD with (heavy-ball) momentum, PyTorch's formulation.
    Sgd,
}

/// Optimisation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of optimizer steps. Default 2000.
    pub steps: u64,
    /// Sequences per batch. Default 32.
    pub batch: usize,
    /// Peak learning rate. Default 5e-3 (on adding, T = 50, the default LSTM reaches MSE 8e-4 with it and 3e-2 with 2e-3).
    pub lr: f32,
    /// Optimizer. Default AdamW.
    pub optimizer: OptimizerKind,
    /// Decoupled weight decay (AdamW) or L2 (SGD). Default 0.
    pub weight_decay: f32,
    /// SGD momentum. Default 0.9.
    pub momentum: f32,
    /// Linear warmup steps before the cosine decay. Default 100.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` at the end of the cosine. Default 0.1.
    pub min_lr_ratio: f32,
    /// Global gradient-norm clipping threshold (0 disables). Default 1.0.
    pub clip_norm: f32,
    /// Seed of every random stream (initialisation, data, dropout). Default 0.
    pub seed: u64,
    /// Evaluate every this many steps (0: only at the end). Default 250.
    pub eval_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end). Default 500.
    pub checkpoint_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 2000,
            batch: 32,
            lr: 5e-3,
            optimizer: OptimizerKind::Adamw,
            weight_decay: 0.0,
            momentum: 0.9,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            clip_norm: 1.0,
            seed: 0,
            eval_every: 250,
            checkpoint_every: 500,
        }
    }
}

impl TrainConfig {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::config("train.batch must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(format!("train.lr must be a positive number, got {}", self.lr)));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config("train.min_lr_ratio must be in [0, 1]"));
        }
        if self.clip_norm < 0.0 || !self.clip_norm.is_finite() {
            return Err(Error::config("train.clip_norm must be >= 0"));
        }
        Ok(())
    }
}

/// Everything a run needs; stored as `config.toml` in every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The model.
    pub model: ModelConfig,
    /// The task.
    pub task: TaskConfig,
    /// Optimisation.
    pub train: TrainConfig,
}

impl RunConfig {
    /// Checks every section.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        if self.task.seq_len == 0 {
            return Err(Error::config("task.seq_len must be at least 1"));
        }
        if self.task.eval_size == 0 {
            return Err(Error::config("task.eval_size must be at least 1"));
        }
        Ok(())
    }

    /// Reads and validates a TOML (or, by extension `.json`, JSON) config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: RunConfig = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| Error::Config { path: Some(path.into()), msg: format!("line {}, column {}: {e}", e.line(), e.column()) })?
        } else {
            toml::from_str(&text).map_err(|e| Error::Config { path: Some(path.into()), msg: e.to_string() })?
        };
        cfg.validate().map_err(|e| match e {
            Error::Config { path: None, msg } => Error::Config { path: Some(path.into()), msg },
            other => other,
        })?;
        Ok(cfg)
    }

    /// The TOML text of this config.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("RunConfig always serialises")
    }
}
