//! `effseq train`: build a run config from defaults, a config file and flags (in increasing precedence), or
//! resume a checkpoint, then train with a progress bar, periodic evaluation and checkpoints.

use std::path::{Path, PathBuf};

use clap::Args;
use effseq::checkpoint;
use effseq::config::{CsvLayout, CustomKind, DataFormat, FeatureKernelKind, ModelKind, Pooling, Positional, RunConfig, TaskConfig, TaskKind};
use effseq::memory::{self, MemoryEstimate};
use effseq::tasks::forecast::{ForecastMetrics, SeriesKind};
use effseq::tasks::Task;
use effseq::train::{Summary, Trainer};
use effseq::Module;
use serde::Serialize;

use crate::failure::CliError;
use crate::format::{describe_custom, describe_eval, describe_model, describe_task, describe_train, grouped, task_fields, TaskFields};
use crate::preflight;
use crate::progress::TrainProgress;
use crate::signals;

/// Arguments of `effseq train`. Every flag overrides the config file, which overrides the defaults. `effseq
/// compare` builds one (from `Default`, every flag unset) per model to share [`TrainArgs::fresh_config`].
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// Model architecture: lstm, gru, tcn, transformer (softmax attention), linear (Linear Transformer),
    /// performer, reformer (LSH attention, reversible layers) or mamba [default: lstm].
    #[arg(long, value_parser = parse_model)]
    pub model: Option<ModelKind>,
    /// Task: adding, copy, digits, smnist, forecast, charlm, listops, selective-copy, duplicate, or custom (your own
    /// data, --data FILE) [default: adding; custom with --data].
    #[arg(long, value_parser = parse_task)]
    pub task: Option<TaskKind>,
    /// Custom task: the training data, CSV (.csv, .tsv, optionally .gz), JSON Lines (.jsonl) or NumPy (.npz with
    /// arrays x, y and optionally lengths; .npy for a forecast series); implies --task custom.
    #[arg(long, value_name = "FILE", help_heading = "Your own data (--task custom)")]
    pub data: Option<PathBuf>,
    /// Custom task: validation data [default: a seeded --valid-fraction of --data; forecast: its last windows].
    #[arg(long, value_name = "FILE", help_heading = "Your own data (--task custom)")]
    pub valid: Option<PathBuf>,
    /// Custom task: test data, scored once at the end.
    #[arg(long, value_name = "FILE", help_heading = "Your own data (--task custom)")]
    pub test: Option<PathBuf>,
    /// Custom task: share of --data held out for validation without --valid [default: 0.2].
    #[arg(long, value_name = "X", help_heading = "Your own data (--task custom)")]
    pub valid_fraction: Option<f32>,
    /// Custom task: classification, regression, tagging (a label per step) or forecast (windows of one series)
    /// [default: inferred from the labels; forecast must be asked for].
    #[arg(long, value_name = "KIND", value_parser = parse_custom_kind, help_heading = "Your own data (--task custom)")]
    pub kind: Option<CustomKind>,
    /// Custom task: file format csv, jsonl, npy or npz [default: from the extension].
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, help_heading = "Your own data (--task custom)")]
    pub format: Option<DataFormat>,
    /// Custom task, CSV: wide (a sequence per row), long (a step per row, rows grouped by --id-column) or series
    /// (one long series, forecast) [default: long with an id column, series for a forecast, wide otherwise].
    #[arg(long, value_name = "LAYOUT", value_parser = parse_layout, help_heading = "Your own data (--task custom)")]
    pub layout: Option<CsvLayout>,
    /// Custom task, CSV: the feature columns, by name or 1-based number [default: every column but the id, label and
    /// time columns].
    #[arg(long, value_name = "A,B,..", value_delimiter = ',', help_heading = "Your own data (--task custom)")]
    pub x_columns: Vec<String>,
    /// Custom task, CSV: the label column(s); forecast: the target column(s) [default: a column named label, y,
    /// target or class, else the first (wide) or last (long) column; forecast: every feature].
    #[arg(long = "y-column", value_name = "A,B,..", value_delimiter = ',', help_heading = "Your own data (--task custom)")]
    pub y_columns: Vec<String>,
    /// Custom task, CSV long layout: the column naming each row's sequence [default: id, sequence_id, series_id or
    /// sequence].
    #[arg(long, value_name = "COLUMN", help_heading = "Your own data (--task custom)")]
    pub id_column: Option<String>,
    /// Custom task, CSV: the first line is data, not column names [default: detected].
    #[arg(long, help_heading = "Your own data (--task custom)")]
    pub no_header: bool,
    /// Custom task: the inputs are integer token ids (embedded), not real-valued features.
    #[arg(long, help_heading = "Your own data (--task custom)")]
    pub tokens: bool,
    /// Custom task, token inputs: the vocabulary size [default: the largest training id + 1].
    #[arg(long, value_name = "V", help_heading = "Your own data (--task custom)")]
    pub vocab: Option<usize>,
    /// Custom task: do not standardise the inputs and regression targets with the training statistics.
    #[arg(long, help_heading = "Your own data (--task custom)")]
    pub no_normalize: bool,
    /// Sequence length T (adding: steps; copy: the blank gap, sequences have T + 20 steps; forecast: the window of
    /// past steps; digits and smnist: fixed at 64 and 784; charlm: characters of context; listops: the longest
    /// expression; selective-copy: the content region, sequences have T + 17 steps; duplicate: the whole `0 w 0 w`)
    /// [default: 50; forecast: 24 sunspots, 104 co2, 60 seattle; charlm: 256; listops: 2000; selective-copy: 256;
    /// duplicate: 1024].
    #[arg(long, value_name = "T")]
    pub seq_len: Option<usize>,
    /// Forecast: the series, sunspots, co2 or seattle [default: sunspots].
    #[arg(long, value_name = "NAME", value_parser = parse_series)]
    pub series: Option<SeriesKind>,
    /// Forecast: steps predicted from each window [default: 1].
    #[arg(long, value_name = "N")]
    pub horizon: Option<usize>,
    /// Smnist: read the pixels in the fixed random order drawn from this seed (permuted MNIST) [default: row-major].
    #[arg(long, value_name = "SEED")]
    pub permute: Option<u64>,
    /// Training steps [default: 2000].
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Sequences per batch [default: 32].
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// Peak learning rate [default: 0.005].
    #[arg(long, value_name = "X")]
    pub lr: Option<f32>,
    /// Seed of initialisation, data and dropout [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Width: hidden size H per layer and direction (LSTM/GRU), channels per level (TCN), or model width D
    /// (attention models, mamba) [default: 128].
    #[arg(long, value_name = "H")]
    pub hidden: Option<usize>,
    /// Stacked recurrent layers, Transformer blocks or Mamba layers [default: 1].
    #[arg(long, value_name = "L")]
    pub layers: Option<usize>,
    /// Add a time-reversed direction to every layer (LSTM/GRU); attend in both directions (attention models,
    /// for classification; no streaming).
    #[arg(long)]
    pub bidirectional: bool,
    /// Attention models: heads [default: 4].
    #[arg(long, value_name = "H")]
    pub heads: Option<usize>,
    /// Attention models: feed-forward width [default: 4 x --hidden].
    #[arg(long, value_name = "N")]
    pub d_ff: Option<usize>,
    /// Attention models: position encoding, sinusoidal or learned [default: sinusoidal].
    #[arg(long, value_name = "KIND", value_parser = parse_positional)]
    pub positional: Option<Positional>,
    /// Attention models with learned positions: the longest sequence [default: 4096].
    #[arg(long, value_name = "T")]
    pub max_len: Option<usize>,
    /// Performer: random features per head [default: Dh ln Dh].
    #[arg(long, value_name = "M")]
    pub features: Option<usize>,
    /// Performer: kernel of the random features, softmax (FAVOR+) or relu [default: relu for charlm, softmax otherwise].
    #[arg(long, value_name = "KIND", value_parser = parse_feature_kernel)]
    pub feature_kernel: Option<FeatureKernelKind>,
    /// Performer: redraw the random features every N training steps, 0 for never [default: 1000].
    #[arg(long, value_name = "N")]
    pub redraw_every: Option<u64>,
    /// Token tasks: the output head reuses the embedding matrix.
    #[arg(long)]
    pub tie_embeddings: bool,
    /// One-prediction-per-sequence tasks: pool the last valid step or the mean of the valid steps [default: last].
    #[arg(long, value_name = "KIND", value_parser = parse_pooling)]
    pub pooling: Option<Pooling>,
    /// Mamba: state size N of each channel's selective SSM [default: 16].
    #[arg(long, value_name = "N")]
    pub d_state: Option<usize>,
    /// Mamba: inner width as a multiple of --hidden [default: 2].
    #[arg(long, value_name = "E")]
    pub expand: Option<usize>,
    /// Mamba: width of the causal depthwise convolution [default: 4].
    #[arg(long, value_name = "K")]
    pub d_conv: Option<usize>,
    /// Reformer: positions per LSH bucket (and attention chunk) [default: 64, or T when the sequence is shorter].
    #[arg(long, value_name = "N")]
    pub bucket_size: Option<usize>,
    /// Reformer: LSH hash rounds [default: 4].
    #[arg(long, value_name = "K")]
    pub n_hashes: Option<usize>,
    /// Reformer: run the feed-forward layer in this many row chunks [default: 8].
    #[arg(long, value_name = "N")]
    pub ff_chunks: Option<usize>,
    /// Reformer: store every layer's activations instead of recomputing them from the reversible outputs.
    #[arg(long)]
    pub no_reversible: bool,
    /// Learning-rate warmup steps [default: 100].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// TCN: kernel size of every dilated causal convolution [default: 3].
    #[arg(long, value_name = "K")]
    pub kernel_size: Option<usize>,
    /// TCN: residual levels, dilation 2^i at level i [default: the fewest whose receptive field covers the sequence].
    #[arg(long, value_name = "L")]
    pub levels: Option<usize>,
    /// Dropout between stacked layers, in [0, 1) [default: 0].
    #[arg(long, value_name = "P")]
    pub dropout: Option<f32>,
    /// Sequences in the generated evaluation set of adding and copy (the real-data tasks use their test split)
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    pub eval_size: Option<usize>,
    /// Evaluate every N steps, 0 for only at the end [default: 250].
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Write a checkpoint every N steps, 0 for only at the end [default: 500].
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Run config file (TOML, or JSON by its .json extension); flags override it.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Checkpoint directory [default: runs/MODEL-TASK, or the --resume directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run of this checkpoint exactly where it stopped (--steps may extend it).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Replace a checkpoint already in the output directory instead of refusing to start.
    #[arg(long)]
    pub overwrite: bool,
    /// Refuse to start when the run's estimated memory exceeds this many GiB (it is always refused above the
    /// memory available).
    #[arg(long, value_name = "G")]
    pub max_memory_gib: Option<f64>,
}

fn parse_model(s: &str) -> Result<ModelKind, String> {
    ModelKind::parse(s).map_err(|e| e.to_string())
}

fn parse_positional(s: &str) -> Result<Positional, String> {
    match s {
        "sinusoidal" => Ok(Positional::Sinusoidal),
        "learned" => Ok(Positional::Learned),
        _ => Err(format!("unknown position encoding '{s}' (expected sinusoidal or learned)")),
    }
}

fn parse_feature_kernel(s: &str) -> Result<FeatureKernelKind, String> {
    match s {
        "softmax" => Ok(FeatureKernelKind::Softmax),
        "relu" => Ok(FeatureKernelKind::Relu),
        _ => Err(format!("unknown feature kernel '{s}' (expected softmax or relu)")),
    }
}

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    match s {
        "last" => Ok(Pooling::Last),
        "mean" => Ok(Pooling::Mean),
        _ => Err(format!("unknown pooling '{s}' (expected last or mean)")),
    }
}

fn parse_custom_kind(s: &str) -> Result<CustomKind, String> {
    CustomKind::parse(s).map_err(|e| e.to_string())
}

fn parse_format(s: &str) -> Result<DataFormat, String> {
    DataFormat::parse(s).map_err(|e| e.to_string())
}

fn parse_layout(s: &str) -> Result<CsvLayout, String> {
    match s {
        "wide" => Ok(CsvLayout::Wide),
        "long" => Ok(CsvLayout::Long),
        "series" => Ok(CsvLayout::Series),
        _ => Err(format!("unknown CSV layout '{s}' (expected wide, long or series)")),
    }
}

pub(crate) fn parse_task(s: &str) -> Result<TaskKind, String> {
    TaskKind::parse(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_series(s: &str) -> Result<SeriesKind, String> {
    SeriesKind::parse(s).map_err(|e| e.to_string())
}

/// The last line of `effseq train --json`.
#[derive(Serialize)]
struct TrainJson<'a> {
    model: &'a str,
    task: &'a str,
    seq_len: usize,
    #[serde(flatten)]
    task_fields: TaskFields,
    steps: u64,
    steps_this_run: u64,
    train_loss: f32,
    eval_metric: f32,
    metric_name: &'a str,
    eval_loss: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    recall_loss: Option<f32>,
    /// Forecast: the model's and the baselines' MSE and MAE on the original scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    forecast: Option<ForecastMetrics>,
    best_metric: Option<f32>,
    /// Custom task with a test file: the metric on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    test_metric: Option<f32>,
    steps_per_s: f64,
    wall_time_s: f64,
    params: usize,
    checkpoint: Option<String>,
    /// The memory estimated before the run started ([`effseq::memory::estimate_train`]).
    memory_estimate_bytes: u64,
    /// The process's peak resident set (Linux `VmHWM`), to compare with the estimate.
    peak_rss_bytes: Option<u64>,
}

impl TrainArgs {
    /// Writes every given flag into `cfg`.
    fn apply(&self, cfg: &mut RunConfig) {
        let (m, t, tr) = (&mut cfg.model, &mut cfg.task, &mut cfg.train);
        set(&mut m.kind, self.model);
        set(&mut m.hidden, self.hidden);
        set(&mut m.layers, self.layers);
        set(&mut m.dropout, self.dropout);
        m.bidirectional |= self.bidirectional;
        set(&mut m.heads, self.heads);
        if self.d_ff.is_some() {
            m.d_ff = self.d_ff;
        }
        set(&mut m.positional, self.positional);
        set(&mut m.max_len, self.max_len);
        if self.features.is_some() {
            m.features = self.features;
        }
        if self.feature_kernel.is_some() {
            m.feature_kernel = self.feature_kernel;
        }
        set(&mut m.redraw_every, self.redraw_every);
        m.tie_embeddings |= self.tie_embeddings;
        set(&mut m.pooling, self.pooling);
        set(&mut m.d_state, self.d_state);
        set(&mut m.expand, self.expand);
        set(&mut m.d_conv, self.d_conv);
        if self.bucket_size.is_some() {
            m.bucket_size = self.bucket_size;
        }
        set(&mut m.n_hashes, self.n_hashes);
        set(&mut m.ff_chunks, self.ff_chunks);
        if self.no_reversible {
            m.reversible = false;
        }
        set(&mut m.kernel_size, self.kernel_size);
        if self.levels.is_some() {
            m.levels = self.levels;
        }
        let before = t.clone();
        set(&mut t.kind, self.task);
        if self.data.is_some() && self.task.is_none() {
            t.kind = TaskKind::Custom;
        }
        if self.any_custom_flag() || t.kind == TaskKind::Custom {
            let c = t.custom.get_or_insert_with(Default::default);
            set(&mut c.data, self.data.clone());
            c.valid = self.valid.clone().or(c.valid.take());
            c.test = self.test.clone().or(c.test.take());
            set(&mut c.valid_fraction, self.valid_fraction);
            c.kind = self.kind.or(c.kind);
            c.format = self.format.or(c.format);
            c.layout = self.layout.or(c.layout);
            if !self.x_columns.is_empty() {
                c.x_columns = self.x_columns.clone();
            }
            if !self.y_columns.is_empty() {
                c.y_columns = self.y_columns.clone();
            }
            c.id_column = self.id_column.clone().or(c.id_column.take());
            if self.no_header {
                c.header = Some(false);
            }
            c.tokens |= self.tokens;
            c.vocab = self.vocab.or(c.vocab);
            if self.no_normalize {
                c.normalize = false;
            }
        }
        set(&mut t.series, self.series);
        set(&mut t.horizon, self.horizon);
        if self.permute.is_some() {
            t.permute_seed = self.permute;
        }
        match self.seq_len {
            Some(seq_len) => t.seq_len = seq_len,
            // A flag that switches to a task (or series) where T means something else takes that task's default.
            None if !same_seq_len_meaning(&before, t) => t.seq_len = TaskConfig::default_seq_len(t.kind, t.series),
            None => {}
        }
        set(&mut t.eval_size, self.eval_size);
        set(&mut tr.steps, self.steps);
        set(&mut tr.batch, self.batch);
        set(&mut tr.lr, self.lr);
        set(&mut tr.warmup_steps, self.warmup);
        set(&mut tr.seed, self.seed);
        set(&mut tr.eval_every, self.eval_every);
        set(&mut tr.checkpoint_every, self.checkpoint_every);
    }

    /// Whether any flag of the custom task was given.
    fn any_custom_flag(&self) -> bool {
        self.data.is_some()
            || self.valid.is_some()
            || self.test.is_some()
            || self.valid_fraction.is_some()
            || self.kind.is_some()
            || self.format.is_some()
            || self.layout.is_some()
            || !self.x_columns.is_empty()
            || !self.y_columns.is_empty()
            || self.id_column.is_some()
            || self.no_header
            || self.tokens
            || self.vocab.is_some()
            || self.no_normalize
    }

    /// The fresh run's config: defaults, then the config file, then the flags.
    pub(crate) fn fresh_config(&self) -> Result<RunConfig, CliError> {
        self.fresh_config_and_choices().map(|(cfg, _)| cfg)
    }

    /// [`TrainArgs::fresh_config`] and a sentence for every default it picked from the sequence length.
    fn fresh_config_and_choices(&self) -> Result<(RunConfig, Vec<String>), CliError> {
        let mut cfg = match &self.config {
            Some(path) => RunConfig::from_file(path).map_err(|e| match e {
                effseq::Error::Io { source, .. } => {
                    CliError::usage(format!("cannot read config file {}: {source}", path.display())).with_hint("--config takes a TOML (or .json) run config")
                }
                other => other.into(),
            })?,
            None => RunConfig::default(),
        };
        self.apply(&mut cfg);
        if cfg.task.kind != TaskKind::Custom && self.any_custom_flag() {
            return Err(CliError::usage(format!("--data and the other flags of your own data need --task custom, not --task {}", cfg.task.kind.name())));
        }
        if cfg.task.kind == TaskKind::Custom {
            let forecast = cfg.task.custom.as_ref().is_some_and(|c| c.kind == Some(CustomKind::Forecast));
            if self.seq_len.is_some() && !forecast {
                return Err(CliError::usage(
                    "--seq-len with --task custom is the window of a forecast (--kind forecast); other kinds read each sequence whole",
                ));
            }
            // The custom task's lengths are known once its data was read: the trainer resolves the model then.
            cfg.validate()?;
            return Ok((cfg, Vec::new()));
        }
        cfg.validate()?;
        let steps = cfg.task.steps_per_sequence();
        let chosen = cfg.model.resolve_for_run(cfg.task.kind, steps);
        Ok((cfg, chosen))
    }

    /// A resumed run keeps its checkpoint's config; only --steps, --eval-every and --checkpoint-every may change.
    fn resumed_config(&self, saved: &RunConfig, done: u64, dir: &Path) -> Result<RunConfig, CliError> {
        let mut wanted = saved.clone();
        self.apply(&mut wanted);
        let mut kept = wanted.clone();
        kept.train.steps = saved.train.steps;
        kept.train.eval_every = saved.train.eval_every;
        kept.train.checkpoint_every = saved.train.checkpoint_every;
        if kept != *saved {
            return Err(CliError::usage(format!(
                "a resumed run keeps the config of its checkpoint {}; these flags would change it: {}",
                dir.display(),
                changed_fields(saved, &kept)
            ))
            .with_hint("only --steps, --eval-every and --checkpoint-every may be given with --resume; start a new run (--out DIR) to change anything else"));
        }
        if wanted.train.steps < done {
            return Err(CliError::usage(format!(
                "--steps {} is below the {done} steps the checkpoint {} has already trained",
                wanted.train.steps,
                dir.display()
            )));
        }
        wanted.validate()?;
        Ok(wanted)
    }
}

/// Whether `seq_len` means the same thing in two task configs: adding and copy share the generated length, a
/// real-data task's T belongs to it (forecast: to its series).
fn same_seq_len_meaning(a: &TaskConfig, b: &TaskConfig) -> bool {
    // Adding and copy share the meaning (and default) of T; listops and selective copy have their own defaults.
    let default = |t: &TaskConfig| TaskConfig::default_seq_len(t.kind, t.series);
    let generated = |t: &TaskConfig| !t.kind.is_real_data();
    (generated(a) && generated(b) && default(a) == default(b)) || (a.kind == b.kind && (a.kind != TaskKind::Forecast || a.series == b.series))
}

/// The default checkpoint directory of a fresh run: `runs/MODEL-TASK` (forecast: `runs/MODEL-forecast-SERIES`).
fn default_out(cfg: &RunConfig) -> PathBuf {
    let series = match (&cfg.task.custom, cfg.task.kind) {
        (_, TaskKind::Forecast) => format!("-{}", cfg.task.series.name()),
        (Some(c), TaskKind::Custom) => {
            c.data.file_name().map(|n| format!("-{}", n.to_string_lossy().split('.').next().unwrap_or_default())).unwrap_or_default()
        }
        _ => String::new(),
    };
    PathBuf::from("runs").join(format!("{}-{}{series}", cfg.model.kind.name(), cfg.task.kind.name()))
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// `section.field (saved -> wanted)` for every field that differs between two configs.
fn changed_fields(saved: &RunConfig, wanted: &RunConfig) -> String {
    // Through JSON text, so that f32 fields print as written (0.002, not 0.0020000000949949026).
    let flat = |cfg: &RunConfig| -> Vec<(String, String)> {
        let value: serde_json::Value = serde_json::to_string(cfg).and_then(|text| serde_json::from_str(&text)).unwrap_or_default();
        let mut out = Vec::new();
        if let serde_json::Value::Object(sections) = value {
            for (section, fields) in sections {
                if let serde_json::Value::Object(fields) = fields {
                    out.extend(fields.into_iter().map(|(k, v)| (format!("{section}.{k}"), v.to_string())));
                }
            }
        }
        out
    };
    let before = flat(saved);
    let after = flat(wanted);
    let changes: Vec<String> = after
        .iter()
        .filter_map(|(key, new)| {
            let old = before.iter().find(|(k, _)| k == key).map_or("unset", |(_, v)| v.as_str());
            (old != new).then(|| format!("{key} ({old} -> {new})"))
        })
        .collect();
    changes.join(", ")
}

/// Runs `effseq train`.
///
/// Before any work: the config is checked, `--out` must be writable, and the run's estimated memory must fit
/// ([`preflight::check_memory`]); the checkpoint directory is then locked for the whole run, so that a second run on
/// it stops with a clear error. Ctrl-C or SIGTERM writes the checkpoint of the step reached and exits (130 or 143).
pub fn run(args: &TrainArgs, json: bool) -> Result<(), CliError> {
    let mut progress = TrainProgress::new(json);
    let mut chosen = Vec::new();
    let mut given_custom = None;
    let (trainer, out, resumed_at, estimate, _lock) = match &args.resume {
        Some(dir) => {
            // The config first (small, checksummed): flags, output and memory are checked before the weights load.
            let (saved, state) = checkpoint::load_config(dir)?;
            let config = args.resumed_config(&saved, state.step, dir)?;
            let out = args.out.clone().unwrap_or_else(|| dir.clone());
            preflight::check_output_dir("--out", &out)?;
            let estimate = estimate_memory(&config, args.max_memory_gib)?;
            if out != *dir {
                refuse_to_replace(&out, args.overwrite)?;
            }
            let lock = preflight::lock_run_dir(&out)?;
            // Loaded under the lock: no other run can advance the checkpoint in between.
            let mut loaded = checkpoint::load(dir)?;
            loaded.config = args.resumed_config(&loaded.config, loaded.state.step, dir)?;
            let step = loaded.state.step;
            (Trainer::resume(loaded)?, out, Some((dir.clone(), step)), estimate, lock)
        }
        None => {
            let (cfg, picked) = args.fresh_config_and_choices()?;
            chosen = picked;
            let out = args.out.clone().unwrap_or_else(|| default_out(&cfg));
            preflight::check_output_dir("--out", &out)?;
            refuse_to_replace(&out, args.overwrite)?;
            given_custom = cfg.task.custom.clone();
            // A custom task's shapes are known once its data was read, so its estimate follows Trainer::new.
            let early = if cfg.task.kind == TaskKind::Custom { None } else { Some(estimate_memory(&cfg, args.max_memory_gib)?) };
            let trainer = Trainer::new(cfg)?;
            let estimate = match early {
                Some(estimate) => estimate,
                None => estimate_memory(trainer.config(), args.max_memory_gib)?,
            };
            // The directory is created and locked once the data has loaded (a run that cannot start leaves nothing).
            let lock = preflight::lock_run_dir(&out)?;
            refuse_to_replace(&out, args.overwrite)?;
            (trainer, out, None, estimate, lock)
        }
    };
    let mut trainer = trainer.with_checkpoint_dir(&out);
    print_header(&progress, &trainer, &out, resumed_at.as_ref(), &chosen, given_custom.as_ref());
    progress.line(&format!("  memory {estimate} (estimated before starting)"));
    if args.eval_size.is_some() && trainer.config().task.kind.is_real_data() {
        progress.line(&format!(
            "note: --eval-size does not apply to {}: it is evaluated on its fixed test split ({} sequences)",
            trainer.config().task.kind.name(),
            trainer.task().eval_size()
        ));
    }

    // From here on Ctrl-C and SIGTERM stop the run after the current step, with a checkpoint of it.
    signals::catch();
    let result = trainer.run(&mut progress);
    progress.finish();
    let summary = match result {
        Err(effseq::Error::Interrupted { step, checkpoint }) => return Err(interrupted(step, trainer.config().train.steps, checkpoint.as_deref())),
        other => other?,
    };
    let test = trainer.evaluate_test()?;
    if let Some(eval) = &test {
        progress.line(&format!(
            "test: {} on {} test {}",
            describe_eval(eval).replacen("eval ", "", 1),
            eval.sequences,
            if trainer.config().task.custom.as_ref().is_some_and(|c| c.kind == Some(CustomKind::Forecast)) { "windows" } else { "sequences" }
        ));
    }
    print_summary(&progress, &summary, trainer.config(), estimate.total, json, test.map(|e| e.metric))
}

/// The run's memory estimate, refused when it exceeds `--max-memory-gib` or the memory available.
fn estimate_memory(cfg: &RunConfig, max_memory_gib: Option<f64>) -> Result<MemoryEstimate, CliError> {
    let estimate = memory::estimate_train(cfg, Task::io_of(&cfg.task)?)?;
    preflight::check_memory("this training run", &estimate, max_memory_gib, "lower --batch, --seq-len, --hidden or --layers")?;
    Ok(estimate)
}

/// The message and exit status of a run stopped by Ctrl-C or SIGTERM.
fn interrupted(step: u64, total: u64, checkpoint: Option<&Path>) -> CliError {
    let saved = checkpoint.map_or_else(|| "no checkpoint directory, nothing saved".to_string(), |dir| format!("checkpoint saved in {}", dir.display()));
    let error =
        CliError { message: format!("interrupted by {} after step {step} of {total}: {saved}", signals::name()), hint: None, code: signals::exit_code() };
    match checkpoint {
        Some(dir) => error.with_hint(format!("continue it with `effseq train --resume {}`", dir.display())),
        None => error,
    }
}

/// A fresh run must not silently replace an earlier run's checkpoint.
fn refuse_to_replace(out: &Path, overwrite: bool) -> Result<(), CliError> {
    if checkpoint::exists(out) && !overwrite {
        return Err(CliError::usage(format!("{} already holds a checkpoint", out.display()))
            .with_hint(format!("continue it with --resume {0}, replace it with --overwrite, or write elsewhere with --out DIR", out.display())));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_header(
    progress: &TrainProgress,
    trainer: &Trainer,
    out: &Path,
    resumed_at: Option<&(PathBuf, u64)>,
    chosen: &[String],
    given: Option<&effseq::config::CustomConfig>,
) {
    let cfg = trainer.config();
    let task: &Task = trainer.task();
    progress.line(&format!("effseq {}: training {} on {}", env!("CARGO_PKG_VERSION"), cfg.model.kind.name(), cfg.task.kind.name()));
    progress.line(&format!("  model  {}: {} parameters", describe_model(&cfg.model), grouped(trainer.network().num_params())));
    for choice in chosen {
        progress.line(&format!("  auto   {choice}"));
    }
    progress.line(&format!("  task   {} ({})", describe_task(cfg), task.baseline_note()));
    if let Task::Custom(custom) = task {
        progress.line(&format!("  data   {}", describe_custom(custom, given)));
    }
    if let Some(rf) = cfg.model.receptive_field().filter(|&rf| rf < task.steps_per_sequence()) {
        progress.line(&format!(
            "  warning: the receptive field ({rf} steps) is shorter than the sequence ({} steps): the model cannot see its start; raise --levels or --kernel-size",
            task.steps_per_sequence()
        ));
    }
    progress.line(&format!("  train  {}", describe_train(&cfg.train)));
    let every = |n: u64, what: &str| if n == 0 { format!("{what} at the end") } else { format!("{what} every {n} steps") };
    progress.line(&format!("  out    {} ({}, {})", out.display(), every(cfg.train.checkpoint_every, "checkpoint"), every(cfg.train.eval_every, "eval")));
    if let Some((dir, step)) = resumed_at {
        progress.line(&format!("  resuming {} at step {step} of {}", dir.display(), cfg.train.steps));
    }
}

fn print_summary(progress: &TrainProgress, s: &Summary, cfg: &RunConfig, memory_estimate: u64, json: bool, test_metric: Option<f32>) -> Result<(), CliError> {
    let best = s.best_metric.map(|b| format!(", best {b:.5}")).unwrap_or_default();
    let checkpoint = s.checkpoint.as_ref().map(|p| format!("; checkpoint {}", p.display())).unwrap_or_default();
    progress.line(&format!(
        "done: {} steps ({} this run) in {:.1} s, {:.1} steps/s; train loss {:.5}; {}{best}{checkpoint}",
        s.steps,
        s.steps_this_run,
        s.wall_time_s,
        s.steps_per_s,
        s.train_loss,
        describe_eval(&s.eval)
    ));
    if json {
        let line = TrainJson {
            model: s.model,
            task: s.task,
            seq_len: cfg.task.seq_len,
            task_fields: task_fields(&cfg.task),
            steps: s.steps,
            steps_this_run: s.steps_this_run,
            train_loss: s.train_loss,
            eval_metric: s.eval.metric,
            metric_name: s.eval.metric_name,
            eval_loss: s.eval.loss,
            recall_loss: s.eval.recall_loss,
            forecast: s.eval.forecast,
            best_metric: s.best_metric,
            test_metric,
            steps_per_s: s.steps_per_s,
            wall_time_s: s.wall_time_s,
            params: s.params,
            checkpoint: s.checkpoint.as_ref().map(|p| p.display().to_string()),
            memory_estimate_bytes: memory_estimate,
            peak_rss_bytes: effseq::bench::process_peak_rss(),
        };
        println!(
            "{}",
            serde_json::to_string(&line).map_err(|e| CliError { message: format!("cannot write JSON: {e}"), hint: None, code: crate::failure::exit::OTHER })?
        );
    }
    Ok(())
}
