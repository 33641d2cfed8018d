//! Memory estimates of a run, from its config alone, before anything large is allocated: the CLI refuses a run
//! whose estimate exceeds the memory available (Linux `MemAvailable`) or `--max-memory-gib`, instead of letting
//! the allocator abort it half-way.
//!
//! An estimate adds up, in bytes and with checked arithmetic (a size that overflows 64 bits is an error, not a
//! wrap-around):
//! - **parameters**: every weight (the parameter count is computed from the config, exactly: the tests compare it
//!   with the built network), and for training its gradient and the optimizer's state (AdamW 2, SGD with momentum
//!   1 slot per weight), plus the transient copies a checkpoint save makes (3 of the largest tensor group);
//! - **activations**: what the forward keeps for the backward and the backward's temporaries, per token of the
//!   batch (`B x T`), by architecture: the model formulas below count the `(T, width)` planes each layer keeps;
//!   evaluation keeps only one layer's planes at a time, over an evaluation batch ([`crate::tasks::EVAL_STEPS_PER_BATCH`]);
//!   streaming keeps the state (a softmax Transformer's key/value cache grows with the context);
//! - **data**: what the task holds in memory (the shipped data sets, ListOps' generated training set);
//! - **runtime**: the process itself (code, thread stacks, allocator), a measured constant.
//!
//! Measured against the peak RSS (`VmHWM`) of `effseq train` on eight small configs with 26-475 MiB of peak RSS
//! (2026-12-04), the estimate errs on the high side by 1.17-1.96x: LSTM 1.44, Transformer 1.25, GRU (2 layers)
//! 1.37, Mamba 1.31, TCN 1.36, Performer 1.65, Reformer 1.96, Linear (2 blocks) 1.17. The CLI test
//! `the_memory_estimate_tracks_the_peak_rss` (crates/effseq-cli/tests/cli.rs) re-measures four of them and checks
//! the ratio stays within [0.9, 2.5].

use crate::config::{ModelConfig, ModelKind, OptimizerKind, Positional, RunConfig, TaskKind};
use crate::error::{Error, Result};
use crate::model::{InputKind, Readout, TaskIo};
use crate::tasks::{listops, EVAL_MAX_BATCH, EVAL_STEPS_PER_BATCH};

/// Bytes of one f32.
const F32: u64 = 4;
/// The process itself before any model or data: code, rayon's thread stacks, the allocator (measured: `effseq
/// info` of a small config peaks at about 12 MiB of RSS).
pub const RUNTIME_BYTES: u64 = 16 << 20;

/// The memory a run is estimated to need, in bytes, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEstimate {
    /// Weights, and for training their gradients, the optimizer state and a checkpoint save's copies.
    pub parameters: u64,
    /// Activations of one batch (training: forward and backward; evaluation: forward; streaming: the state).
    pub activations: u64,
    /// The task's data held in memory.
    pub data: u64,
    /// The process itself ([`RUNTIME_BYTES`]).
    pub runtime: u64,
    /// The sum.
    pub total: u64,
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (weights {}, activations {}, data {}, runtime {})",
            human(self.total),
            human(self.parameters),
            human(self.activations),
            human(self.data),
            human(self.runtime)
        )
    }
}

/// `1.23 GiB`, `45.6 MiB`.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// Checked arithmetic on byte counts: an overflow names what was being sized.
#[derive(Clone, Copy, Debug)]
struct Sizer {
    what: &'static str,
}

impl Sizer {
    fn overflow(&self) -> Error {
        Error::config(format!("the {} of this run overflow 64-bit sizes: far beyond any machine's memory; lower the sizes in the config", self.what))
    }

    /// The product of `factors`.
    fn mul(&self, factors: &[u64]) -> Result<u64> {
        factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f)).ok_or_else(|| self.overflow())
    }

    /// The sum of `terms`.
    fn add(&self, terms: &[u64]) -> Result<u64> {
        terms.iter().try_fold(0u64, |acc, &t| acc.checked_add(t)).ok_or_else(|| self.overflow())
    }
}

/// `usize` as `u64` (lossless on every supported platform).
fn n(x: usize) -> u64 {
    x as u64
}

/// Trainable parameters and saved buffers (a Performer's random features) of the network that `model` describes
/// for a task of shape `io`, computed from the config (no allocation): `(parameters, buffers)` in scalars.
pub fn parameter_count(model: &ModelConfig, io: TaskIo) -> Result<(u64, u64)> {
    let s = Sizer { what: "parameter counts" };
    let h = n(model.hidden);
    let (embedding, d_in) = match io.input {
        InputKind::Dense { dim } => (0, n(dim)),
        InputKind::Tokens { vocab } => {
            let e = n(model.embed_dim.unwrap_or(model.hidden));
            (s.mul(&[n(vocab), e])?, e)
        }
    };
    let out = n(io.output_dim);
    let o = n(model.output_dim());
    let head = if model.tie_embeddings { out } else { s.add(&[s.mul(&[o, out])?, out])? };
    let linear = |i: u64, o: u64, bias: bool| -> Result<u64> { s.add(&[s.mul(&[i, o])?, if bias { o } else { 0 }]) };
    let layers = n(model.layers);
    let positions = if model.positional == Positional::Learned { s.mul(&[n(model.max_len), h])? } else { 0 };
    let encoder = if d_in != h { linear(d_in, h, true)? } else { 0 };
    let mut buffers = 0;
    let backbone = match model.kind {
        ModelKind::Lstm | ModelKind::Gru => {
            let g = if model.kind == ModelKind::Lstm { 4 } else { 3 };
            let dirs = if model.bidirectional { 2 } else { 1 };
            let gh = s.mul(&[g, h])?;
            let per_cell = |input: u64| -> Result<u64> { s.add(&[s.mul(&[gh, input])?, s.mul(&[gh, h])?, if model.bias { s.mul(&[2, gh])? } else { 0 }]) };
            let first = s.mul(&[dirs, per_cell(d_in)?])?;
            let rest = s.mul(&[dirs, per_cell(s.mul(&[dirs, h])?)?, layers.saturating_sub(1)])?;
            s.add(&[first, rest])?
        }
        ModelKind::Tcn => {
            let k = n(model.kernel_size);
            let conv = |c_in: u64| -> Result<u64> { s.add(&[s.mul(&[h, c_in, k])?, h, h]) };
            let level = |c_in: u64| -> Result<u64> { s.add(&[conv(c_in)?, conv(h)?, if c_in != h { linear(c_in, h, true)? } else { 0 }]) };
            let levels = n(model.tcn_levels());
            s.add(&[level(d_in)?, s.mul(&[level(h)?, levels.saturating_sub(1)])?])?
        }
        ModelKind::Transformer | ModelKind::Linear | ModelKind::Performer => {
            let f = n(model.ff_dim());
            let block = s.add(&[s.mul(&[4, h])?, linear(h, s.mul(&[3, h])?, true)?, linear(h, h, true)?, linear(h, f, true)?, linear(f, h, true)?])?;
            if model.kind == ModelKind::Performer {
                buffers = s.mul(&[layers, n(model.feature_count()), n(model.head_dim())])?;
            }
            s.add(&[encoder, positions, s.mul(&[layers, block])?, s.mul(&[2, h])?])?
        }
        ModelKind::Reformer => {
            let f = n(model.ff_dim());
            let layer = s.add(&[s.mul(&[4, h])?, linear(h, h, false)?, linear(h, h, false)?, linear(h, h, true)?, linear(h, f, true)?, linear(f, h, true)?])?;
            s.add(&[encoder, positions, s.mul(&[layers, layer])?, s.mul(&[2, h])?])?
        }
        ModelKind::Mamba => {
            let di = s.mul(&[n(model.expand), h])?;
            let (state, r, k) = (n(model.d_state), n(model.hidden.div_ceil(16)), n(model.d_conv));
            let mixer = s.add(&[
                linear(h, s.mul(&[2, di])?, false)?,
                s.mul(&[di, k])?,
                di,
                linear(di, s.add(&[r, s.mul(&[2, state])?])?, false)?,
                linear(r, di, true)?,
                s.mul(&[di, state])?,
                di,
                linear(di, h, false)?,
            ])?;
            s.add(&[encoder, s.mul(&[layers, s.add(&[mixer, h])?])?, h])?
        }
    };
    Ok((s.add(&[embedding, backbone, head])?, buffers))
}

/// Floats per token that the backbone keeps for its backward (training) or holds at once during a forward
/// (inference), summed over its layers; the counts follow each model's buffers (`(T, width)` planes).
fn backbone_floats_per_token(model: &ModelConfig, d_in: u64, train: bool) -> Result<u64> {
    let s = Sizer { what: "activation sizes" };
    let h = n(model.hidden);
    let layers = n(model.layers);
    let dirs = if model.bidirectional { 2 } else { 1 };
    let f = n(model.ff_dim());
    Ok(match model.kind {
        ModelKind::Lstm | ModelKind::Gru => {
            let g = if model.kind == ModelKind::Lstm { 4 } else { 3 };
            if train {
                // Per layer and direction: the hoisted input projection (gH), the gate activations (gH), h and c, the
                // layer output; the backward adds the gate gradients (gH) and dh, dc.
                s.mul(&[layers, dirs, s.add(&[s.mul(&[3, g, h])?, s.mul(&[5, h])?])?])?
            } else {
                // Inference: the input projection in chunks, one layer's output at a time.
                s.mul(&[2, dirs, s.add(&[h, d_in])?])?
            }
        }
        ModelKind::Tcn => {
            let levels = n(model.tcn_levels());
            // Per level: the padded input, two convolution outputs, their activations, dropout masks and the
            // residual; the backward's gradients of the same planes.
            let per_level = s.mul(&[if train { 5 } else { 3 }, h])?;
            s.add(&[s.mul(&[levels, per_level])?, d_in])?
        }
        ModelKind::Transformer | ModelKind::Linear | ModelKind::Performer | ModelKind::Reformer => {
            // Per block: two norms, q/k/v, the attention output, its projection, the residuals (about 12 planes of
            // width D) and the feed-forward's pre- and post-activation (2F); the mechanism's own features.
            let features = match model.kind {
                ModelKind::Performer => s.mul(&[4, n(model.heads), n(model.feature_count())])?,
                ModelKind::Linear => s.mul(&[4, h])?,
                ModelKind::Reformer => s.mul(&[n(model.n_hashes), s.add(&[s.mul(&[4, h])?, 16])?])?,
                _ => s.mul(&[2, n(model.heads)])?,
            };
            let block = if train {
                s.add(&[s.mul(&[14, h])?, s.mul(&[3, f])?, features])?
            } else {
                // Inference holds one block's planes at a time: input, norm, q/k/v, attention, projection, F twice.
                s.add(&[s.mul(&[8, h])?, s.mul(&[2, f])?, features / 2])?
            };
            let kept_blocks = match (train, model.kind) {
                // Reversible layers keep only the stack's two streams; one layer is recomputed at a time.
                (true, ModelKind::Reformer) if model.reversible => 1,
                (true, _) => layers,
                (false, _) => 1,
            };
            s.add(&[s.mul(&[kept_blocks, block])?, s.mul(&[4, h])?, d_in])?
        }
        ModelKind::Mamba => {
            let di = s.mul(&[n(model.expand), h])?;
            // Per layer: [x | z], the convolution output, delta, the scan's B and C and its chunk-boundary states, y,
            // and the norm; measured at about 15 d_inner floats per token in training (see bench.rs).
            let per_layer = if train { s.add(&[s.mul(&[15, di])?, s.mul(&[4, n(model.d_state)])?, s.mul(&[2, h])?])? } else { s.mul(&[4, di])? };
            s.add(&[s.mul(&[if train { layers } else { 1 }, per_layer])?, d_in])?
        }
    })
}

/// Bytes the task's data takes in memory.
fn data_bytes(cfg: &RunConfig) -> Result<u64> {
    let s = Sizer { what: "data sizes" };
    Ok(match cfg.task.kind {
        // Generated batch by batch from the seed.
        TaskKind::Adding | TaskKind::Copy | TaskKind::SelectiveCopy | TaskKind::Duplicate => 0,
        // The shipped files, decompressed and parsed (measured sizes, with the parse buffers).
        TaskKind::Digits => 1 << 20,
        TaskKind::Smnist => 24 << 20,
        TaskKind::Forecast => 1 << 20,
        TaskKind::Charlm => 16 << 20,
        // The generated training and test sets: one byte per token (up to T each) and the example's bookkeeping.
        TaskKind::Listops => {
            let sequences = n(listops::PUBLISHED_TRAIN_SIZE) + n(cfg.task.eval_size);
            s.mul(&[sequences, s.add(&[n(cfg.task.seq_len), 48])?])?
        }
        // Every split is parsed into f32 values; a text file spends at least two bytes on a number and a NumPy file
        // four, so twice the files' sizes bounds the parsed data with its bookkeeping.
        TaskKind::Custom => match &cfg.task.custom {
            Some(c) => {
                let files = [Some(&c.data), c.valid.as_ref(), c.test.as_ref()];
                let bytes = files.into_iter().flatten().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).try_fold(0u64, |a, b| s.add(&[a, b]))?;
                s.mul(&[bytes, 2])?
            }
            None => 0,
        },
    })
}

/// Bytes of a batch's inputs, targets, embedded inputs, backbone outputs and logits (with their gradients when
/// training) for `b` sequences of `t` steps.
fn io_bytes(model: &ModelConfig, io: TaskIo, b: u64, t: u64, train: bool) -> Result<u64> {
    let s = Sizer { what: "activation sizes" };
    let tokens = s.mul(&[b, t])?;
    let (input, d_in) = match io.input {
        InputKind::Dense { dim } => (s.mul(&[tokens, n(dim)])?, n(dim)),
        InputKind::Tokens { .. } => {
            let e = n(model.embed_dim.unwrap_or(model.hidden));
            (s.add(&[tokens, s.mul(&[tokens, e])?])?, e)
        }
    };
    let rows = match io.readout {
        Readout::EveryStep => tokens,
        Readout::LastStep => b,
    };
    let copies = if train { 3 } else { 1 };
    // Logits (and their gradient and probabilities when training), the backbone output, the input gradient.
    let logits = s.mul(&[copies, rows, n(io.output_dim)])?;
    let outputs = s.mul(&[copies, tokens, n(model.output_dim())])?;
    let dx = if train { s.mul(&[tokens, d_in])? } else { 0 };
    s.mul(&[F32, s.add(&[input, logits, outputs, dx, s.mul(&[2, tokens])?])?])
}

/// The estimate for training `cfg` on a task of shape `io`: a training batch forward and backward, or an
/// evaluation batch, whichever is larger.
pub fn estimate_train(cfg: &RunConfig, io: TaskIo) -> Result<MemoryEstimate> {
    let s = Sizer { what: "memory sizes" };
    let (params, buffers) = parameter_count(&cfg.model, io)?;
    let slots = match cfg.train.optimizer {
        OptimizerKind::Adamw => 2,
        OptimizerKind::Sgd if cfg.train.momentum != 0.0 => 1,
        OptimizerKind::Sgd => 0,
    };
    // Weights and gradients, optimizer slots, and a save's transient copies (tensors, bytes, file) of the larger group.
    let parameters = s.mul(&[F32, s.add(&[s.mul(&[2 + slots, params])?, buffers, s.mul(&[3, params.max(1), slots.max(1)])?])?])?;
    let t = n(cfg.task.steps_per_sequence());
    let b = n(cfg.train.batch);
    let d_in = backbone_input(&cfg.model, io);
    let train_acts = s.add(&[s.mul(&[F32, b, t, backbone_floats_per_token(&cfg.model, d_in, true)?])?, io_bytes(&cfg.model, io, b, t, true)?])?;
    let activations = train_acts.max(eval_activations(cfg, io)?);
    finish(parameters, activations, data_bytes(cfg)?)
}

/// The estimate for evaluating a checkpoint of `cfg`: the weights and one evaluation batch.
pub fn estimate_eval(cfg: &RunConfig, io: TaskIo) -> Result<MemoryEstimate> {
    let s = Sizer { what: "memory sizes" };
    let (params, buffers) = parameter_count(&cfg.model, io)?;
    finish(s.mul(&[F32, s.add(&[params, buffers])?])?, eval_activations(cfg, io)?, data_bytes(cfg)?)
}

/// The estimate for streaming `context` tokens through a checkpoint of `cfg` one at a time (`effseq generate`):
/// the weights, the state, and the generated token ids.
pub fn estimate_stream(cfg: &RunConfig, io: TaskIo, context: u64) -> Result<MemoryEstimate> {
    let s = Sizer { what: "memory sizes" };
    let (params, buffers) = parameter_count(&cfg.model, io)?;
    let h = n(cfg.model.hidden);
    let layers = n(cfg.model.layers);
    let state_floats = match cfg.model.kind {
        // The key/value cache of every block grows with the context.
        ModelKind::Transformer => s.mul(&[2, layers, h, context])?,
        // The Reformer re-runs the causal prefix: its inputs and one forward over them.
        ModelKind::Reformer => s.mul(&[context, s.add(&[h, backbone_floats_per_token(&cfg.model, h, false)?])?])?,
        // Fixed-size states.
        _ => s.mul(&[64, layers, s.add(&[h, n(cfg.model.d_state), n(cfg.model.feature_count())])?, n(cfg.model.heads.max(1))])?,
    };
    let activations = s.add(&[s.mul(&[F32, state_floats])?, s.mul(&[8, context])?])?;
    finish(s.mul(&[F32, s.add(&[params, buffers])?])?, activations, data_bytes(cfg)?)
}

/// Width of the backbone's input D: the dense features, or the embedding.
fn backbone_input(model: &ModelConfig, io: TaskIo) -> u64 {
    match io.input {
        InputKind::Dense { dim } => n(dim),
        InputKind::Tokens { .. } => n(model.embed_dim.unwrap_or(model.hidden)),
    }
}

/// Activations of the largest evaluation batch: `EVAL_STEPS_PER_BATCH / T` sequences (at least 1, at most
/// [`EVAL_MAX_BATCH`]), forward only.
fn eval_activations(cfg: &RunConfig, io: TaskIo) -> Result<u64> {
    let s = Sizer { what: "memory sizes" };
    let steps = cfg.task.steps_per_sequence();
    let t = n(steps);
    let mut per_batch = (EVAL_STEPS_PER_BATCH / steps.max(1)).clamp(1, EVAL_MAX_BATCH);
    if !cfg.task.kind.is_real_data() {
        // A generated evaluation set has `eval_size` sequences (a real data set's test split is larger than a batch).
        per_batch = per_batch.min(cfg.task.eval_size.max(1));
    }
    let b = n(per_batch);
    let d_in = backbone_input(&cfg.model, io);
    s.add(&[s.mul(&[F32, b, t, backbone_floats_per_token(&cfg.model, d_in, false)?])?, io_bytes(&cfg.model, io, b, t, false)?])
}

fn finish(parameters: u64, activations: u64, data: u64) -> Result<MemoryEstimate> {
    let total = Sizer { what: "memory sizes" }.add(&[parameters, activations, data, RUNTIME_BYTES])?;
    Ok(MemoryEstimate { parameters, activations, data, runtime: RUNTIME_BYTES, total })
}

/// Memory available to a new allocation now: Linux `MemAvailable` (free memory plus reclaimable caches); `None`
/// where it cannot be read.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FeatureKernelKind, TaskConfig};
    use crate::model::Network;
    use crate::param::Module;
    use crate::tasks::Task;

    /// The parameter count from the config equals that of the built network, for every model and input kind.
    #[test]
    fn parameter_count_matches_the_built_network() {
        let tasks = [TaskKind::Adding, TaskKind::Copy, TaskKind::Charlm, TaskKind::Forecast, TaskKind::Digits];
        let mut checked = 0;
        for &kind in ModelKind::ALL {
            for &task in &tasks {
                for (hidden, layers, bidirectional, variant) in [(8, 1, false, 0), (12, 2, true, 1), (16, 3, false, 2)] {
                    let mut model = ModelConfig { kind, hidden, layers, bidirectional, heads: 2, ..ModelConfig::default() };
                    if kind == ModelKind::Tcn {
                        model.layers = 1;
                        model.bidirectional = false;
                        model.levels = Some(layers + 1);
                        model.kernel_size = 2 + variant;
                    }
                    if kind == ModelKind::Mamba {
                        model.bidirectional = false;
                        model.expand = 1 + variant;
                        model.d_state = 4 * (variant + 1);
                    }
                    if variant == 1 {
                        model.positional = Positional::Learned;
                        model.max_len = 40;
                        model.bias = false;
                        model.d_ff = Some(10);
                        model.feature_kernel = Some(FeatureKernelKind::Relu);
                    }
                    if variant == 2 {
                        model.embed_dim = Some(6);
                        model.features = Some(5);
                    }
                    let cfg = RunConfig { model, task: TaskConfig::new(task), ..RunConfig::default() };
                    if cfg.validate().is_err() {
                        continue;
                    }
                    let io = Task::io_of(&cfg.task).unwrap();
                    let Ok(network) = Network::new(&cfg.model, io, 0) else { continue };
                    let buffers: usize = network.buffers().iter().map(|p| p.numel()).sum();
                    assert_eq!(parameter_count(&cfg.model, io).unwrap(), (network.num_params() as u64, buffers as u64), "{:?} on {task:?}", cfg.model);
                    checked += 1;
                }
            }
        }
        assert!(checked > 60, "only {checked} configurations were checked");
    }

    #[test]
    fn sizes_that_overflow_are_errors_not_wrap_arounds() {
        let mut cfg = RunConfig::default();
        cfg.model.kind = ModelKind::Transformer;
        cfg.model.positional = Positional::Learned;
        cfg.model.max_len = i64::MAX as usize;
        let io = Task::io_of(&cfg.task).unwrap();
        let err = estimate_train(&cfg, io).unwrap_err();
        assert!(err.to_string().contains("overflow 64-bit sizes"), "{err}");
        let mut cfg = RunConfig::default();
        cfg.task.seq_len = 1 << 40;
        cfg.train.batch = 1 << 30;
        assert!(estimate_train(&cfg, io).is_err());
        assert!(estimate_stream(&RunConfig::default(), io, u64::MAX).is_err());
    }

    #[test]
    fn estimates_grow_with_the_batch_the_length_and_the_context() {
        let mut cfg = RunConfig::default();
        cfg.model.kind = ModelKind::Transformer;
        cfg.task.eval_size = 8; // the training batch, not an evaluation batch, sets the activations
        let io = Task::io_of(&cfg.task).unwrap();
        let base = estimate_train(&cfg, io).unwrap();
        assert_eq!(base.total, base.parameters + base.activations + base.data + base.runtime);
        cfg.train.batch *= 8;
        let larger = estimate_train(&cfg, io).unwrap();
        assert!(larger.activations > 4 * base.activations && larger.parameters == base.parameters);
        assert!(estimate_stream(&cfg, io, 1 << 20).unwrap().total > estimate_stream(&cfg, io, 1 << 10).unwrap().total);
        assert!(estimate_eval(&cfg, io).unwrap().parameters < base.parameters, "evaluation holds no gradients or optimizer state");
        assert!(base.to_string().contains("MiB (weights "), "{base}");
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12345678 kB\n";
        assert_eq!(parse_mem_available(text), Some(12_345_678 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert!(available_bytes().is_none_or(|b| b > 0));
    }
}
