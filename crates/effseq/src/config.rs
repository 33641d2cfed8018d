//! Run configuration: one serde definition serves the CLI, the `config.toml` of a checkpoint and the
//! library. Every field has a documented default, so a config file may name only what it changes.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Steps of a `digits` sequence: the 8x8 image read one pixel per step.
pub const DIGITS_SEQ_LEN: usize = 64;
/// Steps of an `smnist` sequence: the 28x28 image read one pixel per step.
pub const SMNIST_SEQ_LEN: usize = 28 * 28;
/// Tokens to reproduce in the selective-copy task (K = 16, the paper's setup).
pub const SELECTIVE_COPY_TOKENS: usize = 16;
/// ListOps' published upper length bound (exclusive), Long Range Arena.
pub const LISTOPS_PUBLISHED_MAX_LEN: usize = 2000;

/// Which shipped series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeriesKind {
    /// Yearly mean sunspot numbers 1700-2008, univariate.
    Sunspots,
    /// Weekly Mauna Loa CO2 1958-2001, univariate, with missing values.
    Co2,
    /// Daily Seattle weather 2012-2015: four numeric features, target the maximum temperature.
    Seattle,
}

impl SeriesKind {
    /// All series, in the order the CLI lists them.
    pub const ALL: &'static [SeriesKind] = &[SeriesKind::Sunspots, SeriesKind::Co2, SeriesKind::Seattle];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            SeriesKind::Sunspots => "sunspots",
            SeriesKind::Co2 => "co2",
            SeriesKind::Seattle => "seattle",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == s.to_ascii_lowercase()).ok_or_else(|| Error::Unknown {
            kind: "series",
            name: s.to_string(),
            choices: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Which sequence architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch's `nn.LSTM`.
    Lstm,
    /// Gated recurrent unit (Cho et al. 2014), PyTorch's `nn.GRU`.
    Gru,
    /// Temporal convolutional network (Bai, Kolter & Koltun 2018), the locuslab `TemporalConvNet`.
    Tcn,
    /// Pre-norm Transformer with exact softmax attention (Vaswani et al. 2017), computed in tiles
    /// (FlashAttention): the quadratic baseline.
    Transformer,
    /// Linear Transformer (Katharopoulos et al. 2020): attention with the elu(x)+1 feature map, an RNN in causal mode.
    Linear,
    /// Performer (Choromanski et al. 2020): FAVOR+ positive orthogonal random features.
    Performer,
    /// Mamba (Gu & Dao 2023): the selective state-space model, `mamba_ssm`'s `MixerModel`.
    Mamba,
    /// Reformer (Kitaev et al. 2020): LSH attention in reversible residual layers with a chunked feed-forward.
    Reformer,
}

impl ModelKind {
    /// All kinds, in the order the CLI lists them.
    pub const ALL: &'static [ModelKind] = &[
        ModelKind::Lstm,
        ModelKind::Gru,
        ModelKind::Tcn,
        ModelKind::Transformer,
        ModelKind::Linear,
        ModelKind::Performer,
        ModelKind::Reformer,
        ModelKind::Mamba,
    ];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Lstm => "lstm",
            ModelKind::Gru => "gru",
            ModelKind::Tcn => "tcn",
            ModelKind::Transformer => "transformer",
            ModelKind::Linear => "linear",
            ModelKind::Performer => "performer",
            ModelKind::Mamba => "mamba",
            ModelKind::Reformer => "reformer",
        }
    }

    /// Whether this is a recurrent (LSTM/GRU) model.
    pub fn is_recurrent(self) -> bool {
        matches!(self, ModelKind::Lstm | ModelKind::Gru)
    }

    /// Whether this is a Transformer of the attention family (softmax, linear, Performer, Reformer).
    pub fn is_attention(self) -> bool {
        matches!(self, ModelKind::Transformer | ModelKind::Linear | ModelKind::Performer | ModelKind::Reformer)
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
    /// Sequential UCI 8x8 digits, one pixel per step (T = 64), classified from the last step: accuracy.
    Digits,
    /// Sequential MNIST, one pixel per step (T = 784), optionally permuted (P-MNIST; Le et al. 2015): accuracy.
    Smnist,
    /// Forecasting a real series (sunspots, CO2, Seattle weather) from a window of past steps: MSE and MAE on the
    /// original scale, next to the naive and seasonal-naive baselines.
    Forecast,
    /// Character-level language modelling on *Moby-Dick*: next-character prediction at every step, bits per
    /// character on the test part.
    Charlm,
    /// ListOps from the Long Range Arena (Tay et al. 2020): the value of a nested MAX/MIN/MED/SM expression, 10
    /// classes, sequences of `seq_len / 4 .. seq_len` tokens (published: 500-2000), padded per batch.
    Listops,
    /// Selective copying (Gu & Dao 2023, sec. 4.1.1): 16 tokens scattered at random among `seq_len` noise
    /// positions, to be reproduced in order after a separator: accuracy over the answers.
    #[serde(rename = "selective-copy")]
    SelectiveCopy,
    /// The Reformer paper's duplication task (Kitaev et al. 2020, sec. 5): `0 w 0 w` with 127 symbols, the second
    /// copy predicted token by token: accuracy over it.
    Duplicate,
    /// The user's own sequences from CSV, JSON Lines or NumPy files ([`CustomConfig`]): classification,
    /// regression, per-step labelling or forecasting.
    Custom,
}

impl TaskKind {
    /// All kinds, in the order the CLI lists them.
    pub const ALL: &'static [TaskKind] = &[
        TaskKind::Adding,
        TaskKind::Copy,
        TaskKind::Digits,
        TaskKind::Smnist,
        TaskKind::Forecast,
        TaskKind::Charlm,
        TaskKind::Listops,
        TaskKind::SelectiveCopy,
        TaskKind::Duplicate,
        TaskKind::Custom,
    ];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Adding => "adding",
            TaskKind::Copy => "copy",
            TaskKind::Digits => "digits",
            TaskKind::Smnist => "smnist",
            TaskKind::Forecast => "forecast",
            TaskKind::Charlm => "charlm",
            TaskKind::Listops => "listops",
            TaskKind::SelectiveCopy => "selective-copy",
            TaskKind::Duplicate => "duplicate",
            TaskKind::Custom => "custom",
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

    /// Whether the task reads a data set shipped in `data/` (digits, smnist, forecast) rather than generating its
    /// sequences from the seed (adding, copy). Real-data tasks evaluate on a fixed test split, so
    /// [`TaskConfig::eval_size`] does not apply to them.
    pub fn is_real_data(self) -> bool {
        matches!(self, TaskKind::Digits | TaskKind::Smnist | TaskKind::Forecast | TaskKind::Charlm | TaskKind::Custom)
    }

    /// Whether the task's targets are per-step causal predictions: a target at (some or all) steps that the model
    /// must produce from the inputs up to that step only, as in next-token prediction (charlm, duplicate) and the
    /// recall steps of copy and selective copy. A bidirectional model reads the whole sequence at every step, so on
    /// such a task it sees the answer; [`RunConfig::validate`] refuses the pair. Tasks with one prediction per
    /// sequence (adding, digits, smnist, forecast, listops) may read it in both directions.
    pub fn has_causal_targets(self) -> bool {
        match self {
            TaskKind::Copy | TaskKind::Charlm | TaskKind::SelectiveCopy | TaskKind::Duplicate => true,
            TaskKind::Adding | TaskKind::Digits | TaskKind::Smnist | TaskKind::Forecast | TaskKind::Listops => false,
            // Tagging labels describe their own step and a forecast's targets lie after its whole window
            // ([`CustomKind::targets_are_later_inputs`]): a bidirectional model is legitimate on custom data.
            TaskKind::Custom => false,
        }
    }

    /// The sequence length fixed by the task's data: 64 pixels for digits, 784 for smnist; `None` when
    /// [`TaskConfig::seq_len`] is free.
    pub fn fixed_seq_len(self) -> Option<usize> {
        match self {
            TaskKind::Digits => Some(DIGITS_SEQ_LEN),
            TaskKind::Smnist => Some(SMNIST_SEQ_LEN),
            TaskKind::Adding
            | TaskKind::Copy
            | TaskKind::Forecast
            | TaskKind::Charlm
            | TaskKind::Listops
            | TaskKind::SelectiveCopy
            | TaskKind::Duplicate
            | TaskKind::Custom => None,
        }
    }
}

/// The sequence model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture.
    pub kind: ModelKind,
    /// Width of the backbone: hidden size H of each recurrent layer (per direction), or the channels of every
    /// TCN level. Default 128.
    pub hidden: usize,
    /// Number of stacked recurrent layers (LSTM/GRU; a TCN's depth is `levels`). Default 1.
    pub layers: usize,
    /// LSTM/GRU: run a second, time-reversed direction in every layer and concatenate (output width 2H).
    /// Attention models: attend in both directions (no causal mask; no streaming `step`). Default false.
    pub bidirectional: bool,
    /// Dropout probability on the outputs of every layer but the last (as `nn.LSTM`'s `dropout`). Default 0.
    pub dropout: f32,
    /// Whether the recurrent layers have the bias vectors `bias_ih`, `bias_hh`. Default true.
    pub bias: bool,
    /// Width of the token embedding for token-input tasks. Default: equal to `hidden`.
    pub embed_dim: Option<usize>,
    /// TCN: kernel size K of every dilated causal convolution. Default 3.
    pub kernel_size: usize,
    /// TCN: number of residual levels L (dilation 2^i at level i). Default: the fewest levels whose receptive
    /// field `1 + 2 (K - 1) (2^L - 1)` covers the task's sequence length, resolved when a run starts
    /// ([`ModelConfig::resolve_for_sequence`]) and stored in the checkpoint's config.
    pub levels: Option<usize>,
    /// Attention models: number of heads (`hidden` must divide by it). Default 4.
    pub heads: usize,
    /// Attention models: width of the feed-forward layer. Default: 4 x `hidden`.
    pub d_ff: Option<usize>,
    /// Attention models: position encoding added to the input. Default sinusoidal.
    pub positional: Positional,
    /// Attention models with learned positions: the longest sequence they accept. Default 4096.
    pub max_len: usize,
    /// Performer: number of random features m per head. Default: `Dh ln Dh` (performer-pytorch), Dh = hidden / heads.
    pub features: Option<usize>,
    /// Performer: the kernel its random features estimate. Default: picked from the task when the run starts
    /// ([`ModelConfig::resolve_for_task`]): relu for charlm, softmax (FAVOR+) for every other task. On charlm the
    /// softmax kernel's query and key weights grow far beyond the exact Transformer's after a few hundred steps at
    /// the default learning rate and the loss climbs back; the ReLU kernel trains steadily there (README, charlm).
    pub feature_kernel: Option<FeatureKernelKind>,
    /// Performer: draw new random features every this many training steps (0 = never). The features in use are
    /// stored in the checkpoint, so evaluation uses exactly them. Default 1000 (performer-pytorch).
    pub redraw_every: u64,
    /// Token tasks with an every-step readout: the output head reuses the token embedding's matrix (Press & Wolf
    /// 2017). Default false.
    pub tie_embeddings: bool,
    /// One-prediction-per-sequence tasks: how the sequence is pooled (the last valid step, or the mean of the
    /// valid steps); padding-aware. Default last.
    pub pooling: Pooling,
    /// Mamba: state size N of every channel's selective SSM. Default 16 (the paper).
    pub d_state: usize,
    /// Mamba: expansion factor of the mixer's inner width, `d_inner = expand x hidden`. Default 2.
    pub expand: usize,
    /// Mamba: width of the causal depthwise convolution. Default 4.
    pub d_conv: usize,
    /// Reformer: positions per LSH bucket, also the attention chunk length. Default: picked from the task's sequence
    /// length T when the run starts ([`ModelConfig::resolve_for_sequence`]): the paper's 64, or T when the sequence
    /// is shorter (it then fits one bucket, and LSH attention is exact full attention computed in one round).
    pub bucket_size: Option<usize>,
    /// Reformer: hash rounds of LSH attention during training (evaluation may override it). Default 4.
    pub n_hashes: usize,
    /// Reformer: the feed-forward layer runs over the sequence in this many row chunks. Default 8.
    pub ff_chunks: usize,
    /// Reformer: reversible residual layers (recompute layer inputs in the backward) instead of stored
    /// activations. Default true.
    pub reversible: bool,
}

/// Position encoding of the attention models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positional {
    /// Fixed sines and cosines (Vaswani et al. 2017, sec. 3.5): any length, no parameters.
    Sinusoidal,
    /// A learned `(max_len, hidden)` table, `pos_embedding.weight`.
    Learned,
}

/// The kernel a Performer's random features estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKernelKind {
    /// Positive random features for the softmax kernel (FAVOR+, Choromanski et al. 2020, Lemma 1).
    Softmax,
    /// The "generalized" kernel relu(w.x) + 0.001 of performer-pytorch.
    Relu,
}

/// How a one-prediction-per-sequence readout pools the backbone's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The output at the last valid (non-padding) step.
    Last,
    /// The mean of the outputs over the valid steps.
    Mean,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::Lstm,
            hidden: 128,
            layers: 1,
            bidirectional: false,
            dropout: 0.0,
            bias: true,
            embed_dim: None,
            kernel_size: 3,
            levels: None,
            heads: 4,
            d_ff: None,
            positional: Positional::Sinusoidal,
            max_len: 4096,
            features: None,
            feature_kernel: None,
            redraw_every: 1000,
            tie_embeddings: false,
            pooling: Pooling::Last,
            d_state: 16,
            expand: 2,
            d_conv: 4,
            bucket_size: None,
            n_hashes: 4,
            ff_chunks: 8,
            reversible: true,
        }
    }
}

/// Reformer bucket size (the paper's and reformer-pytorch's 64) for sequences longer than it.
pub const DEFAULT_BUCKET_SIZE: usize = 64;

/// TCN levels used when neither the config nor a task length says otherwise.
pub const DEFAULT_TCN_LEVELS: usize = 8;

/// Receptive field of a TCN with `levels` levels of two convolutions of kernel `k` and dilation 2^i:
/// `1 + 2 (k - 1) (2^levels - 1)` (Bai et al. 2018, sec. 3.2), saturating.
pub fn tcn_receptive_field(kernel_size: usize, levels: usize) -> usize {
    let span = 1usize.checked_shl(levels as u32).map(|p| p - 1).unwrap_or(usize::MAX);
    span.saturating_mul(2 * kernel_size.saturating_sub(1)).saturating_add(1)
}

impl ModelConfig {
    /// Width of the backbone's output at every time step.
    pub fn output_dim(&self) -> usize {
        if self.kind.is_recurrent() && self.bidirectional {
            2 * self.hidden
        } else {
            self.hidden
        }
    }

    /// Attention models: the width of one head, `hidden / heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Attention models: the feed-forward width in effect.
    pub fn ff_dim(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.hidden)
    }

    /// Performer: the random features per head in effect (`Dh ln Dh` by default, at least 1).
    pub fn feature_count(&self) -> usize {
        self.features.unwrap_or_else(|| crate::attention::favor::default_features(self.head_dim()))
    }

    /// Performer: the feature kernel in effect (softmax until resolved for a task, see [`Self::resolve_for_task`]).
    pub fn performer_kernel(&self) -> FeatureKernelKind {
        self.feature_kernel.unwrap_or(FeatureKernelKind::Softmax)
    }

    /// Fills the defaults that depend on the task: a Performer without `feature_kernel` gets the ReLU kernel on
    /// charlm and the softmax kernel elsewhere (see [`ModelConfig::feature_kernel`]). Returns a sentence per value
    /// it chose, for a run's header.
    pub fn resolve_for_task(&mut self, task: TaskKind) -> Vec<String> {
        let mut chosen = Vec::new();
        if self.kind == ModelKind::Performer && self.feature_kernel.is_none() {
            let kernel = if task == TaskKind::Charlm { FeatureKernelKind::Relu } else { FeatureKernelKind::Softmax };
            self.feature_kernel = Some(kernel);
            chosen.push(match kernel {
                FeatureKernelKind::Relu => {
                    "feature_kernel relu for charlm: the softmax kernel's query and key norms run away on text at this learning rate (README, charlm)"
                        .to_string()
                }
                FeatureKernelKind::Softmax => "feature_kernel softmax (FAVOR+)".to_string(),
            });
        }
        chosen
    }

    /// Fills every default that depends on the run: [`Self::resolve_for_sequence`] for the task's sequence length
    /// `t`, then [`Self::resolve_for_task`]. Returns their sentences, for a run's header.
    pub fn resolve_for_run(&mut self, task: TaskKind, t: usize) -> Vec<String> {
        let mut chosen = self.resolve_for_sequence(t);
        chosen.extend(self.resolve_for_task(task));
        chosen
    }

    /// Reformer: the LSH bucket size in effect ([`DEFAULT_BUCKET_SIZE`] until resolved for a sequence length).
    pub fn lsh_bucket_size(&self) -> usize {
        self.bucket_size.unwrap_or(DEFAULT_BUCKET_SIZE)
    }

    /// TCN levels in effect ([`DEFAULT_TCN_LEVELS`] until resolved for a sequence length).
    pub fn tcn_levels(&self) -> usize {
        self.levels.unwrap_or(DEFAULT_TCN_LEVELS)
    }

    /// Receptive field of the model in time steps: `None` for recurrent models (unbounded).
    pub fn receptive_field(&self) -> Option<usize> {
        (self.kind == ModelKind::Tcn).then(|| tcn_receptive_field(self.kernel_size, self.tcn_levels()))
    }

    /// Fills the defaults that depend on the task's sequence length `t`: a TCN without `levels` gets the fewest
    /// levels whose receptive field covers `t` (kernel 1 cannot grow: one level then); a Reformer without
    /// `bucket_size` gets [`DEFAULT_BUCKET_SIZE`], or `t` when the sequence is shorter. Returns a sentence per
    /// value it chose, for a run's header.
    pub fn resolve_for_sequence(&mut self, t: usize) -> Vec<String> {
        let mut chosen = Vec::new();
        if self.kind == ModelKind::Reformer && self.bucket_size.is_none() {
            let bucket = t.clamp(1, DEFAULT_BUCKET_SIZE);
            self.bucket_size = Some(bucket);
            chosen.push(if bucket < DEFAULT_BUCKET_SIZE || t == DEFAULT_BUCKET_SIZE {
                format!("bucket_size {bucket} from T = {t}: the sequence fits one LSH bucket, so attention is exact and computed in one round")
            } else {
                format!("bucket_size {bucket} (the paper's; T = {t})")
            });
        }
        if self.kind == ModelKind::Tcn && self.levels.is_none() {
            let mut levels = 1;
            while self.kernel_size > 1 && tcn_receptive_field(self.kernel_size, levels) < t && levels < crate::tcn::MAX_LEVELS {
                levels += 1;
            }
            self.levels = Some(levels);
            chosen.push(format!("levels {levels}: the fewest whose receptive field ({}) covers T = {t}", tcn_receptive_field(self.kernel_size, levels)));
        }
        chosen
    }

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("embed_dim", self.embed_dim.unwrap_or(0)),
            ("kernel_size", self.kernel_size),
            ("levels", self.levels.unwrap_or(0)),
            ("heads", self.heads),
            ("d_ff", self.d_ff.unwrap_or(0)),
            ("max_len", self.max_len),
            ("features", self.features.unwrap_or(0)),
            ("d_state", self.d_state),
            ("expand", self.expand),
            ("d_conv", self.d_conv),
            ("bucket_size", self.bucket_size.unwrap_or(0)),
            ("n_hashes", self.n_hashes),
            ("ff_chunks", self.ff_chunks),
        ];
        for (name, value) in sizes {
            check_toml_int("model", name, value as u64)?;
        }
        check_toml_int("model", "redraw_every", self.redraw_every)?;
        if self.hidden == 0 {
            return Err(Error::config("model.hidden must be at least 1"));
        }
        if self.kind == ModelKind::Tcn {
            if self.bidirectional {
                return Err(Error::config("model.bidirectional does not apply to a TCN (its convolutions are causal)"));
            }
            if self.layers != 1 {
                return Err(Error::config("model.layers applies to LSTM/GRU; set a TCN's depth with model.levels"));
            }
            if self.kernel_size == 0 {
                return Err(Error::config("model.kernel_size must be at least 1"));
            }
            if matches!(self.levels, Some(l) if l == 0 || l > crate::tcn::MAX_LEVELS) {
                return Err(Error::config(format!("model.levels must be between 1 and {}", crate::tcn::MAX_LEVELS)));
            }
        }
        if self.layers == 0 {
            return Err(Error::config("model.layers must be at least 1"));
        }
        if self.kind.is_attention() {
            if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
                return Err(Error::config(format!("model.hidden ({}) must be a positive multiple of model.heads ({})", self.hidden, self.heads)));
            }
            if self.d_ff == Some(0) {
                return Err(Error::config("model.d_ff must be at least 1"));
            }
            if self.positional == Positional::Learned && self.max_len == 0 {
                return Err(Error::config("model.max_len must be at least 1 with learned positions"));
            }
            if self.features == Some(0) {
                return Err(Error::config("model.features must be at least 1"));
            }
        }
        if self.kind == ModelKind::Reformer {
            for (name, value) in [("bucket_size", self.lsh_bucket_size()), ("n_hashes", self.n_hashes), ("ff_chunks", self.ff_chunks)] {
                if value == 0 {
                    return Err(Error::config(format!("model.{name} must be at least 1")));
                }
            }
        }
        if self.kind == ModelKind::Mamba {
            if self.bidirectional {
                return Err(Error::config("model.bidirectional does not apply to mamba (its scan and convolution are causal)"));
            }
            if self.dropout != 0.0 {
                return Err(Error::config("model.dropout does not apply to mamba (mamba_ssm has no dropout); set it to 0"));
            }
            for (name, value) in [("d_state", self.d_state), ("expand", self.expand), ("d_conv", self.d_conv)] {
                if value == 0 {
                    return Err(Error::config(format!("model.{name} must be at least 1")));
                }
            }
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
///
/// In a config file every field is optional. An omitted `seq_len` takes the default of the task (and, for
/// forecast, of the series): see [`TaskConfig::default_seq_len`]. `config.toml` records `seq_len` and `eval_size`
/// always, `series` and `horizon` for forecast only and `permute_seed` when set, so a checkpoint rebuilds the
/// exact task (the same P-MNIST permutation, the same forecast windows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "TaskConfigFile", into = "TaskConfigFile")]
pub struct TaskConfig {
    /// Which task. Default adding.
    pub kind: TaskKind,
    /// Sequence length T. Adding: number of steps; copy: the blank gap (total length T + 20); forecast: the window
    /// of past steps the model reads; digits and smnist: fixed by the data (64, 784) and any other value is
    /// rejected. Default: [`TaskConfig::default_seq_len`] (50 for adding and copy; forecast 24 for sunspots, 104
    /// for co2, 60 for seattle).
    pub seq_len: usize,
    /// Number of held-out evaluation sequences, generated once from the seed (adding, copy). The real-data tasks
    /// evaluate on their fixed test split and ignore it. Default 1000.
    pub eval_size: usize,
    /// Forecast only: which shipped series. Default sunspots; another value with another task is rejected.
    pub series: SeriesKind,
    /// Forecast only: steps predicted per window. Default 1; another value with another task is rejected.
    pub horizon: usize,
    /// Smnist only: seed of the fixed pixel permutation of P-MNIST; `None` (default) reads the pixels in
    /// row-major order. Setting it with another task is rejected.
    pub permute_seed: Option<u64>,
    /// Custom only: the user's data files and how to read them, with what was inferred from the training data
    /// (`[task.custom]` in a config file). Required with the custom task, rejected with any other.
    pub custom: Option<CustomConfig>,
}

/// What a custom data set asks of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustomKind {
    /// One class per sequence (read from the last valid step, or pooled): accuracy.
    Classification,
    /// One or more real values per sequence: MSE and MAE on the original scale.
    Regression,
    /// One label (a class, or real values) per time step, aligned with the inputs: per-step accuracy or MSE. The
    /// label of step t describes step t, not a later input, so a bidirectional model is legitimate here.
    Tagging,
    /// Windows of `seq_len` steps cut from one long series, each predicting the next `horizon` values of the target
    /// columns: MSE and MAE on the original scale.
    Forecast,
}

impl CustomKind {
    /// All kinds, in the order the CLI lists them.
    pub const ALL: &'static [CustomKind] = &[CustomKind::Classification, CustomKind::Regression, CustomKind::Tagging, CustomKind::Forecast];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            CustomKind::Classification => "classification",
            CustomKind::Regression => "regression",
            CustomKind::Tagging => "tagging",
            CustomKind::Forecast => "forecast",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == s.to_ascii_lowercase()).ok_or_else(|| Error::Unknown {
            kind: "custom task kind",
            name: s.to_string(),
            choices: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// Whether there is a prediction at every time step (tagging) rather than one per sequence or window.
    pub fn per_step(self) -> bool {
        self == CustomKind::Tagging
    }

    /// Whether a per-step target is a *later* input (next-token prediction), which a model that reads the future
    /// (bidirectional) could copy instead of predicting. Never for a custom task: tagging labels describe their
    /// own step, and a forecast window's targets lie after the whole window.
    pub fn targets_are_later_inputs(self) -> bool {
        false
    }
}

/// The file format of custom data, from the file's extension unless given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Comma-separated text (`.csv`, `.csv.gz`; `.tsv` is tab-separated).
    Csv,
    /// One JSON object per line (`.jsonl`, `.ndjson`): `{"x": [[...], ...], "y": ..., "id": ...}`.
    Jsonl,
    /// A NumPy array (`.npy`): the inputs only (predictions), or one long series (forecast).
    Npy,
    /// A NumPy archive (`.npz`) with the arrays `x`, `y` and optionally `lengths`.
    Npz,
}

impl DataFormat {
    /// All formats.
    pub const ALL: &'static [DataFormat] = &[DataFormat::Csv, DataFormat::Jsonl, DataFormat::Npy, DataFormat::Npz];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Csv => "csv",
            DataFormat::Jsonl => "jsonl",
            DataFormat::Npy => "npy",
            DataFormat::Npz => "npz",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == s.to_ascii_lowercase()).ok_or_else(|| Error::Unknown {
            kind: "data format",
            name: s.to_string(),
            choices: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The format a file name's extension says (`.gz` looked through), if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let ext = name.rsplit_once('.')?.1;
        match ext {
            "csv" | "tsv" | "txt" => Some(DataFormat::Csv),
            "jsonl" | "ndjson" | "json" => Some(DataFormat::Jsonl),
            "npy" => Some(DataFormat::Npy),
            "npz" => Some(DataFormat::Npz),
            _ => None,
        }
    }
}

/// How the rows of a CSV file make sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CsvLayout {
    /// One sequence per row: the label column(s), then one column per time step (one feature per step; trailing
    /// empty fields make a shorter sequence), as the UCR archive ships its data sets.
    Wide,
    /// One time step per row, the rows of a sequence together and marked by the id column; the feature columns
    /// hold the step's features, the label column a per-sequence (constant) or per-step label.
    Long,
    /// One long series, one time step per row (forecast).
    Series,
}

impl CsvLayout {
    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            CsvLayout::Wide => "wide",
            CsvLayout::Long => "long",
            CsvLayout::Series => "series",
        }
    }
}

/// The custom task's files and reading options (what the user says) and what a run infers from the training data
/// when it starts (what the checkpoint must remember to read new data the same way: the features, the classes,
/// the normalisation statistics). Written to `config.toml` as `[task.custom]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustomConfig {
    /// The training data (and, without `valid`, the source of the seeded validation split).
    pub data: PathBuf,
    /// Validation data; default: a seeded `valid_fraction` of `data` (forecast: the last windows).
    pub valid: Option<PathBuf>,
    /// Test data, scored once at the end of training and by `effseq eval`.
    pub test: Option<PathBuf>,
    /// Fraction of `data` held out for validation when `valid` is not given. Default 0.2.
    pub valid_fraction: f32,
    /// The file format; default: from the extension.
    pub format: Option<DataFormat>,
    /// What to predict; default: inferred from the labels (strings and integers: classification; other numbers:
    /// regression; a label per step: tagging). Forecast must be asked for.
    pub kind: Option<CustomKind>,
    /// CSV: how rows make sequences; default: long with an id column, series for a forecast, wide otherwise.
    pub layout: Option<CsvLayout>,
    /// CSV: whether the first line names the columns; default: detected (a field of text above a number).
    pub header: Option<bool>,
    /// CSV: the feature columns (by name, or 1-based number without a header); default: every column that is not
    /// the id, the label or the time column.
    pub x_columns: Vec<String>,
    /// CSV: the label column(s) (forecast: the target columns); default: a column named label, y, target or class,
    /// else the first column (wide) or the last one (long); forecast: every feature column.
    pub y_columns: Vec<String>,
    /// CSV (long layout): the column that names the sequence of each row; default: a column named id,
    /// sequence_id, series_id or sequence.
    pub id_column: Option<String>,
    /// The inputs are integer token ids `0..vocab` (embedded) rather than real-valued features.
    pub tokens: bool,
    /// Token inputs: the vocabulary size; default: the largest id in the training data plus one.
    pub vocab: Option<usize>,
    /// Standardise each input feature (and each regression target) with the training split's mean and standard
    /// deviation. Default true.
    pub normalize: bool,
    /// Resolved: input features per step D (1 for tokens); 0 until the training data was read.
    pub features: usize,
    /// Resolved: names of the feature columns (CSV with a header).
    pub feature_names: Vec<String>,
    /// Resolved: the class labels in id order (classification, class tagging); empty for real-valued targets.
    pub classes: Vec<String>,
    /// Resolved: real values per prediction (regression; value tagging: per step; forecast: per future step).
    pub targets: usize,
    /// Resolved: names of the target columns (CSV with a header).
    pub target_names: Vec<String>,
    /// Resolved: per-feature mean and standard deviation of the training inputs (empty without normalisation).
    pub x_mean: Vec<f32>,
    /// See `x_mean`.
    pub x_std: Vec<f32>,
    /// Resolved: per-target mean and standard deviation of the training targets (real-valued targets).
    pub y_mean: Vec<f32>,
    /// See `y_mean`.
    pub y_std: Vec<f32>,
}

impl Default for CustomConfig {
    fn default() -> Self {
        CustomConfig {
            data: PathBuf::new(),
            valid: None,
            test: None,
            valid_fraction: 0.2,
            format: None,
            kind: None,
            layout: None,
            header: None,
            x_columns: Vec::new(),
            y_columns: Vec::new(),
            id_column: None,
            tokens: false,
            vocab: None,
            normalize: true,
            features: 0,
            feature_names: Vec::new(),
            classes: Vec::new(),
            targets: 0,
            target_names: Vec::new(),
            x_mean: Vec::new(),
            x_std: Vec::new(),
            y_mean: Vec::new(),
            y_std: Vec::new(),
        }
    }
}

impl CustomConfig {
    /// Whether the fields inferred from the training data are filled in (a run started, or a checkpoint).
    pub fn is_resolved(&self) -> bool {
        self.kind.is_some() && self.features > 0 && (self.targets > 0 || !self.classes.is_empty())
    }

    /// The format of `path`: `format` if set, else from the extension.
    pub fn format_of(&self, path: &Path) -> Result<DataFormat> {
        self.format.or_else(|| DataFormat::from_path(path)).ok_or_else(|| {
            Error::config(format!("cannot tell the format of {} from its extension: name it .csv, .tsv, .jsonl, .npy or .npz, or set --format", path.display()))
        })
    }

    /// Checks the ranges of the fields and that the resolved ones agree with each other.
    pub fn validate(&self) -> Result<()> {
        if self.data.as_os_str().is_empty() {
            return Err(Error::config("the custom task needs a training file: --data FILE (task.custom.data)"));
        }
        if !(self.valid_fraction > 0.0 && self.valid_fraction < 1.0) {
            return Err(Error::config(format!("task.custom.valid_fraction must be in (0, 1), got {}", self.valid_fraction)));
        }
        if self.vocab == Some(0) {
            return Err(Error::config("task.custom.vocab must be at least 1"));
        }
        if self.vocab.is_some() && !self.tokens {
            return Err(Error::config("task.custom.vocab applies to token inputs (--tokens) only"));
        }
        if self.tokens && self.kind == Some(CustomKind::Forecast) {
            return Err(Error::config("a forecast reads real-valued series, not tokens"));
        }
        if self.is_resolved() {
            let (d, k) = (self.features, self.targets);
            if self.tokens && d != 1 {
                return Err(Error::config(format!("task.custom: token inputs have one id per step, but features = {d}")));
            }
            for (name, stats, want) in [("x_mean", &self.x_mean, d), ("x_std", &self.x_std, d), ("y_mean", &self.y_mean, k), ("y_std", &self.y_std, k)] {
                if !stats.is_empty() && stats.len() != want {
                    return Err(Error::config(format!("task.custom.{name} has {} values for {want}", stats.len())));
                }
                if stats.iter().any(|v| !v.is_finite()) || (name.ends_with("std") && stats.iter().any(|&v| v <= 0.0)) {
                    return Err(Error::config(format!("task.custom.{name} holds a value that is not a finite number (standard deviations: positive)")));
                }
            }
            if !self.classes.is_empty() && self.targets != 0 {
                return Err(Error::config("task.custom has both classes and real-valued targets"));
            }
        }
        Ok(())
    }
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig::new(TaskKind::Adding)
    }
}

impl TaskConfig {
    /// Default generated-sequence length of adding and copy.
    pub const DEFAULT_SEQ_LEN: usize = 50;
    /// Default number of generated evaluation sequences.
    pub const DEFAULT_EVAL_SIZE: usize = 1000;

    /// The defaults of a task kind: its default sequence length, series sunspots, horizon 1, no permutation.
    pub fn new(kind: TaskKind) -> TaskConfig {
        let series = SeriesKind::Sunspots;
        TaskConfig {
            kind,
            seq_len: Self::default_seq_len(kind, series),
            eval_size: Self::DEFAULT_EVAL_SIZE,
            series,
            horizon: 1,
            permute_seed: None,
            custom: (kind == TaskKind::Custom).then(CustomConfig::default),
        }
    }

    /// The forecast of `series` predicting `horizon` steps, with the series' default window
    /// ([`TaskConfig::default_window`]).
    pub fn forecast(series: SeriesKind, horizon: usize) -> TaskConfig {
        TaskConfig { seq_len: Self::default_window(series), series, horizon, ..TaskConfig::new(TaskKind::Forecast) }
    }

    /// Time steps in one sequence of this task: copy adds its 20 digit and marker steps to the gap.
    pub fn steps_per_sequence(&self) -> usize {
        match self.kind {
            // Copy: 10 digits, the gap, the delimiter and 9 more blanks (see tasks::copy).
            TaskKind::Copy => self.seq_len + 20,
            // Selective copy: the content region, the separator and the 16 answers.
            TaskKind::SelectiveCopy => self.seq_len + 1 + SELECTIVE_COPY_TOKENS,
            kind => kind.fixed_seq_len().unwrap_or(self.seq_len),
        }
    }

    /// The default content region of selective copy (the paper uses 4096; 256 trains in minutes on a CPU).
    pub const DEFAULT_SELECTIVE_COPY_SEQ_LEN: usize = 256;

    /// The default length of the duplication task, the paper's 1024 tokens.
    pub const DEFAULT_DUPLICATE_SEQ_LEN: usize = 1024;

    /// The default context of charlm, in characters.
    pub const DEFAULT_CHARLM_SEQ_LEN: usize = 256;

    /// The default window of a custom forecast; the other custom kinds take the longest training sequence.
    pub const DEFAULT_CUSTOM_WINDOW: usize = 32;

    /// The sequence length a task takes when none is given: see [`TaskConfig::default_window`] for forecast, 256
    /// characters for charlm, the data's length for digits and smnist, 50 otherwise.
    pub fn default_seq_len(kind: TaskKind, series: SeriesKind) -> usize {
        match kind {
            TaskKind::Forecast => Self::default_window(series),
            TaskKind::Charlm => Self::DEFAULT_CHARLM_SEQ_LEN,
            TaskKind::Listops => LISTOPS_PUBLISHED_MAX_LEN,
            TaskKind::SelectiveCopy => Self::DEFAULT_SELECTIVE_COPY_SEQ_LEN,
            TaskKind::Duplicate => Self::DEFAULT_DUPLICATE_SEQ_LEN,
            TaskKind::Custom => Self::DEFAULT_CUSTOM_WINDOW,
            other => other.fixed_seq_len().unwrap_or(Self::DEFAULT_SEQ_LEN),
        }
    }

    /// The default forecast window of a series, about two seasons where that is affordable: 24 years of sunspots
    /// (two 11-year cycles), 104 weeks of CO2 (two years), 60 days of Seattle weather (a full year, 365 steps per
    /// sequence, would make training slow for little gain over the seasonal-naive baseline).
    pub fn default_window(series: SeriesKind) -> usize {
        match series {
            SeriesKind::Sunspots => 24,
            SeriesKind::Co2 => 104,
            SeriesKind::Seattle => 60,
        }
    }

    /// Whether this task's targets are per-step causal predictions that a bidirectional model must not see
    /// ([`TaskKind::has_causal_targets`]); a task whose labelling is configured answers from its config.
    pub fn has_causal_targets(&self) -> bool {
        self.kind.has_causal_targets()
    }

    /// Checks the ranges of every field and that the task-specific fields are used with their task only.
    pub fn validate(&self) -> Result<()> {
        let kind = self.kind.name();
        for (name, value) in [("seq_len", self.seq_len), ("eval_size", self.eval_size), ("horizon", self.horizon)] {
            check_toml_int("task", name, value as u64)?;
        }
        if self.seq_len == 0 {
            return Err(Error::config("task.seq_len must be at least 1"));
        }
        if let Some(fixed) = self.kind.fixed_seq_len() {
            if self.seq_len != fixed {
                return Err(Error::config(format!(
                    "task.seq_len is fixed at {fixed} by the {kind} data (one pixel per step), got {}: leave task.seq_len (--seq-len) unset",
                    self.seq_len
                )));
            }
        }
        if self.eval_size == 0 {
            return Err(Error::config("task.eval_size must be at least 1"));
        }
        if self.horizon == 0 {
            return Err(Error::config("task.horizon must be at least 1"));
        }
        let custom_forecast = self.custom.as_ref().is_some_and(|c| c.kind == Some(CustomKind::Forecast));
        match (&self.custom, self.kind) {
            (Some(c), TaskKind::Custom) => c.validate()?,
            (None, TaskKind::Custom) => {
                return Err(Error::config("the custom task needs a [task.custom] section with at least its training file (--data FILE)"))
            }
            (Some(_), _) => return Err(Error::config(format!("task.custom applies to the custom task only, not to {kind}"))),
            (None, _) => {}
        }
        if self.kind != TaskKind::Forecast {
            if self.horizon != 1 && !custom_forecast {
                return Err(Error::config(format!("task.horizon applies to the forecast task only (or a custom --kind forecast), not to {kind}")));
            }
            if self.series != SeriesKind::Sunspots {
                return Err(Error::config(format!("task.series applies to the forecast task only, not to {kind}")));
            }
        }
        if let Some(seed) = self.permute_seed {
            if self.kind != TaskKind::Smnist {
                return Err(Error::config(format!("task.permute_seed (P-MNIST) applies to the smnist task only, not to {kind}")));
            }
            if i64::try_from(seed).is_err() {
                return Err(Error::config(format!("task.permute_seed must be at most {} (config.toml stores signed 64-bit integers), got {seed}", i64::MAX)));
            }
        }
        Ok(())
    }
}

/// How a [`TaskConfig`] is written in a config file: every field optional, the defaults resolved per task.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskConfigFile {
    /// [`TaskConfig::kind`].
    #[serde(default = "default_task_kind")]
    kind: TaskKind,
    /// [`TaskConfig::seq_len`]; `None` takes [`TaskConfig::default_seq_len`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq_len: Option<usize>,
    /// [`TaskConfig::eval_size`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eval_size: Option<usize>,
    /// [`TaskConfig::series`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    series: Option<SeriesKind>,
    /// [`TaskConfig::horizon`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    horizon: Option<usize>,
    /// [`TaskConfig::permute_seed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permute_seed: Option<u64>,
    /// [`TaskConfig::custom`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    custom: Option<CustomConfig>,
}

/// The task of a config file that names none.
fn default_task_kind() -> TaskKind {
    TaskKind::Adding
}

impl From<TaskConfigFile> for TaskConfig {
    fn from(file: TaskConfigFile) -> Self {
        let defaults = TaskConfig::new(file.kind);
        let series = file.series.unwrap_or(defaults.series);
        TaskConfig {
            kind: file.kind,
            seq_len: file.seq_len.unwrap_or_else(|| TaskConfig::default_seq_len(file.kind, series)),
            eval_size: file.eval_size.unwrap_or(defaults.eval_size),
            series,
            horizon: file.horizon.unwrap_or(defaults.horizon),
            permute_seed: file.permute_seed,
            custom: file.custom.or(defaults.custom),
        }
    }
}

impl From<TaskConfig> for TaskConfigFile {
    fn from(cfg: TaskConfig) -> Self {
        let forecast = cfg.kind == TaskKind::Forecast;
        TaskConfigFile {
            kind: cfg.kind,
            seq_len: Some(cfg.seq_len),
            eval_size: Some(cfg.eval_size),
            // Written only where they mean something, so that an adding run's config.toml does not mention series.
            series: (forecast || cfg.series != SeriesKind::Sunspots).then_some(cfg.series),
            horizon: (forecast || cfg.horizon != 1).then_some(cfg.horizon),
            permute_seed: cfg.permute_seed,
            custom: cfg.custom,
        }
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
    /// Checks the ranges of every field: every count fits TOML's signed 64-bit integers, every float is finite and
    /// in its range.
    pub fn validate(&self) -> Result<()> {
        let counts = [
            ("steps", self.steps),
            ("batch", self.batch as u64),
            ("warmup_steps", self.warmup_steps),
            ("seed", self.seed),
            ("eval_every", self.eval_every),
            ("checkpoint_every", self.checkpoint_every),
        ];
        for (name, value) in counts {
            check_toml_int("train", name, value)?;
        }
        if self.batch == 0 {
            return Err(Error::config("train.batch must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(format!("train.lr must be a positive number, got {}", self.lr)));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config(format!("train.min_lr_ratio must be in [0, 1], got {}", self.min_lr_ratio)));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return Err(Error::config(format!("train.clip_norm must be a finite number >= 0 (0 disables clipping), got {}", self.clip_norm)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::config(format!("train.weight_decay must be a finite number >= 0, got {}", self.weight_decay)));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::config(format!("train.momentum must be in [0, 1), got {}", self.momentum)));
        }
        Ok(())
    }
}

/// An integer setting must fit TOML's signed 64-bit integers (`config.toml` stores every setting); larger values
/// are refused when the config is checked, never found out at the first checkpoint.
fn check_toml_int(section: &str, name: &str, value: u64) -> Result<()> {
    if value > i64::MAX as u64 {
        return Err(Error::config(format!("{section}.{name} must be at most {} (config files store signed 64-bit integers), got {value}", i64::MAX)));
    }
    Ok(())
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
    /// Checks every section, then the pairing of model and task: a bidirectional model on a task with per-step
    /// causal targets ([`TaskConfig::has_causal_targets`]) would see the answer, and is refused.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        self.task.validate()?;
        if self.model.bidirectional && self.task.has_causal_targets() {
            return Err(Error::config(format!(
                "model.bidirectional cannot be used with the {} task: its targets are per-step causal predictions (each step's output may \
                 depend only on the inputs up to it), and a bidirectional {} reads the whole sequence at every step, so it would see the answer; \
                 drop --bidirectional, or use a task with one prediction per sequence (adding, digits, smnist, forecast, listops)",
                self.task.kind.name(),
                self.model.kind.name()
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_performer_kernel_is_picked_from_the_task_unless_set() {
        let performer = ModelConfig { kind: ModelKind::Performer, ..ModelConfig::default() };
        let mut charlm = performer.clone();
        let said = charlm.resolve_for_task(TaskKind::Charlm);
        assert_eq!(charlm.feature_kernel, Some(FeatureKernelKind::Relu));
        assert!(said[0].contains("relu"), "{said:?}");
        let mut adding = performer.clone();
        adding.resolve_for_task(TaskKind::Adding);
        assert_eq!(adding.feature_kernel, Some(FeatureKernelKind::Softmax));
        // A kernel the user chose is kept, and nothing is said about it.
        let mut chosen = ModelConfig { feature_kernel: Some(FeatureKernelKind::Softmax), ..performer.clone() };
        assert!(chosen.resolve_for_task(TaskKind::Charlm).is_empty());
        assert_eq!(chosen.feature_kernel, Some(FeatureKernelKind::Softmax));
        // Other models are left alone.
        let mut lstm = ModelConfig::default();
        assert!(lstm.resolve_for_task(TaskKind::Charlm).is_empty());
        assert_eq!(lstm.feature_kernel, None);
        // A checkpoint's config written before the choice was automatic still reads.
        let old: ModelConfig =
            toml::from_str(&format!("{}\nfeature_kernel = \"softmax\"", toml::to_string(&ModelConfig { feature_kernel: None, ..performer }).unwrap())).unwrap();
        assert_eq!(old.performer_kernel(), FeatureKernelKind::Softmax);
    }
}
