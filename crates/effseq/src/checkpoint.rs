//! Checkpoints: a directory that holds everything needed to evaluate a model or to resume its training
//! exactly.
//!
//! A run's checkpoint directory holds one *version* directory per save and a pointer file naming the current one:
//!
//! | path | content |
//! |------|---------|
//! | `current` | one line: the name of the version directory that holds the current checkpoint, e.g. `step-500` |
//! | `step-500/model.safetensors` | every parameter of the [`Network`] by its PyTorch name, f32 |
//! | `step-500/optimizer.safetensors` | the optimizer's state tensors ([`Optimizer::state_tensors`]) |
//! | `step-500/config.toml` | the [`RunConfig`] |
//! | `step-500/state.json` | step, optimizer steps, seed, eval metrics, effseq version, and the size and CRC32 of every other file |
//!
//! A save writes the new version into a fresh directory (every file fsynced, then the directory), and only then
//! switches to it by replacing `current` atomically (write `current.tmp`, fsync, rename, fsync the run
//! directory); the previous version is removed after the switch. A crash or `kill -9` at any moment therefore
//! leaves either the previous checkpoint or the new one current, complete and loadable; an interrupted save leaves
//! only an unreferenced version directory, which the next save removes. Each version directory is itself a
//! checkpoint in the single-directory layout of earlier effseq versions (the four files side by side), which
//! [`load`] still reads: a directory without `current` but with `state.json` is loaded as it is.
//!
//! Loading follows `current`, verifies sizes and checksums before parsing, then every tensor's presence and shape
//! against the model the config describes and that every weight is finite, so truncated, corrupt, mismatched or
//! diverged checkpoints fail with an [`Error::Checkpoint`] that names the file and the problem. A reader racing a
//! save (evaluating a run while it trains) retries once the pointer has moved on.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::optim::Optimizer;
use crate::param::{first_non_finite, Module, Param};
use crate::tasks::Task;

/// The model weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The run configuration.
pub const CONFIG_FILE: &str = "config.toml";
/// Progress, metrics and the checksums of the other files; written last.
pub const STATE_FILE: &str = "state.json";
/// Layout version of `state.json`; a checkpoint from a newer layout is refused.
pub const FORMAT_VERSION: u32 = 1;
/// The pointer file of a run's checkpoint directory: the name of the current version directory.
pub const CURRENT_FILE: &str = "current";
/// Version directories are named `step-N` (`step-N.K` when one of that step already exists).
const VERSION_PREFIX: &str = "step-";
/// How often [`load`] re-reads the pointer when a save switched versions under it.
const LOAD_ATTEMPTS: usize = 3;

/// Named tensors as stored in a safetensors file: name, shape (outermost first), row-major values.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;
/// Tensors read from a safetensors file, by name: shape and row-major values.
pub type TensorMap = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Where a training run stands, saved in `state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Training steps completed (the next step to run).
    pub step: u64,
    /// Optimizer updates taken (equal to `step` unless a run skipped updates).
    pub optimizer_steps: u64,
    /// The run's seed (also in `config.toml`; kept here for a quick look).
    pub seed: u64,
    /// Name of the task metric of `best_metric` and `last_metric`.
    pub metric_name: Option<String>,
    /// The best evaluation metric so far.
    pub best_metric: Option<f32>,
    /// The latest evaluation metric.
    pub last_metric: Option<f32>,
    /// The training losses of the last steps (at most [`crate::train::RECENT_LOSSES`]), oldest first, so that a
    /// resumed run reports the same running mean as an uninterrupted one.
    #[serde(default)]
    pub recent_losses: Vec<f32>,
}

/// Size and checksum of one checkpoint file, as recorded in `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileSum {
    /// Length in bytes.
    bytes: u64,
    /// CRC-32 (IEEE) of the content, 8 lowercase hex digits.
    crc32: String,
}

impl FileSum {
    fn of(bytes: &[u8]) -> Self {
        FileSum { bytes: bytes.len() as u64, crc32: format!("{:08x}", crc32(bytes)) }
    }
}

/// The content of `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StateFile {
    /// [`FORMAT_VERSION`] of the writer.
    format: u32,
    /// Version of the effseq that wrote the checkpoint.
    effseq_version: String,
    /// Training progress.
    #[serde(flatten)]
    state: TrainState,
    /// Size and checksum of every other file, by file name.
    files: BTreeMap<String, FileSum>,
}

/// Everything a checkpoint restores.
#[derive(Debug)]
pub struct Loaded {
    /// The run configuration from `config.toml`.
    pub config: RunConfig,
    /// The network with its saved weights.
    pub network: Network,
    /// The optimizer with its saved state and step count.
    pub optimizer: Optimizer,
    /// Training progress.
    pub state: TrainState,
}

/// Writes a checkpoint of a run into `dir` (created if needed) as a new version, then makes it the current one;
/// the previous checkpoint stays current until the new one is complete on disk (see the module doc).
///
/// Only a good checkpoint is written: a NaN or infinite weight, buffer or optimizer state is an
/// [`Error::NonFinite`] naming the first such tensor, and nothing is changed on disk.
pub fn save(dir: &Path, config: &RunConfig, network: &Network, optimizer: &Optimizer, state: &TrainState) -> Result<()> {
    if network.config != config.model {
        return Err(Error::Invalid("checkpoint::save: the network was not built from config.model".into()));
    }
    if let Some(bad) = first_non_finite(network.params().into_iter().chain(network.buffers()).map(|p| (p.name.as_str(), p.value.as_slice()))) {
        return Err(Error::NonFinite { step: state.step, what: format!("weight {bad}; no checkpoint was written") });
    }
    // A validated config always serialises (every integer fits TOML's signed 64 bits).
    config.validate()?;
    let config_text = config.to_toml().into_bytes();
    let created = !dir.exists();
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if created {
        sync_parent(dir)?;
    }
    let version = free_version_name(dir, state.step);
    let files_dir = dir.join(&version);
    fs::create_dir(&files_dir).map_err(|e| Error::io(&files_dir, e))?;
    let written = write_version(&files_dir, config_text, network, optimizer, state);
    if let Err(e) = written {
        // Nothing refers to the half-written version; remove it now rather than at the next save.
        let _ = fs::remove_dir_all(&files_dir);
        return Err(e);
    }
    sync_dir(dir)?;

    // The switch: one atomic rename of the pointer.
    let pointer = dir.join(CURRENT_FILE);
    write_synced(&tmp_path(&pointer), format!("{version}\n").as_bytes())?;
    rename(&tmp_path(&pointer), &pointer)?;
    sync_dir(dir)?;
    remove_stale_versions(dir, &version);
    Ok(())
}

/// Writes the four files of a checkpoint into the fresh directory `files_dir`, each fsynced, `state.json` last, then
/// fsyncs the directory. One file's bytes at a time are held in memory.
fn write_version(files_dir: &Path, config_text: Vec<u8>, network: &Network, optimizer: &Optimizer, state: &TrainState) -> Result<()> {
    // A fresh directory: the files go to their final names; nothing refers to them until `current` does.
    let write = |name: &str, bytes: &[u8]| -> Result<(String, FileSum)> {
        write_synced(&files_dir.join(name), bytes)?;
        Ok((name.to_string(), FileSum::of(bytes)))
    };
    let model_path = files_dir.join(MODEL_FILE);
    let model = write(MODEL_FILE, &serialize_tensors(&module_tensors(network), &model_path)?)?;
    let optim_tensors = optimizer.state_tensors();
    if let Some(bad) = first_non_finite(optim_tensors.iter().map(|(name, _, values)| (name.as_str(), values.as_slice()))) {
        return Err(Error::NonFinite { step: state.step, what: format!("optimizer state {bad}; no checkpoint was written") });
    }
    let optim = write(OPTIMIZER_FILE, &serialize_tensors(&optim_tensors, &files_dir.join(OPTIMIZER_FILE))?)?;
    drop(optim_tensors);
    let config = write(CONFIG_FILE, &config_text)?;
    let state_file = StateFile {
        format: FORMAT_VERSION,
        effseq_version: env!("CARGO_PKG_VERSION").to_string(),
        state: state.clone(),
        files: [model, optim, config].into_iter().collect(),
    };
    write_state(files_dir, &state_file)?;
    sync_dir(files_dir)
}

/// Loads a checkpoint written by [`save`]: config, network, optimizer and progress, after verifying every file.
pub fn load(dir: &Path) -> Result<Loaded> {
    with_current(dir, |files_dir| {
        let (config, network, state_file) = load_verified_model(files_dir)?;
        let optim_path = files_dir.join(OPTIMIZER_FILE);
        let optim_bytes = read_verified(files_dir, &state_file, OPTIMIZER_FILE)?;
        let tensors = parse_tensors(&optim_bytes, &optim_path)?;
        if let Some(bad) = first_non_finite(tensors.iter().map(|(name, (_, values))| (name.as_str(), values.as_slice()))) {
            return Err(checkpoint_error(&optim_path, format!("optimizer state {bad}: the checkpoint is not usable (saved from a diverged run?)")));
        }
        let mut optimizer = Optimizer::new(&config.train, &network.params());
        optimizer.load_state_tensors(&tensors).map_err(|e| match e {
            Error::Checkpoint { .. } => e,
            other => Error::Checkpoint { path: optim_path.clone(), msg: other.to_string() },
        })?;
        optimizer.set_steps_taken(state_file.state.optimizer_steps);
        Ok(Loaded { config, network, optimizer, state: state_file.state })
    })
}

/// Loads only what evaluation needs (config, network, progress); the optimizer file is neither read nor required.
pub fn load_model(dir: &Path) -> Result<(RunConfig, Network, TrainState)> {
    with_current(dir, |files_dir| {
        let (config, network, state_file) = load_verified_model(files_dir)?;
        Ok((config, network, state_file.state))
    })
}

/// Loads only the run configuration and the progress of the checkpoint in `dir`, verified by their checksums,
/// without building the network (e.g. to estimate a run's memory before allocating it).
pub fn load_config(dir: &Path) -> Result<(RunConfig, TrainState)> {
    with_current(dir, |files_dir| {
        let state_file = read_state(files_dir)?;
        let config = read_config(files_dir, &state_file)?;
        Ok((config, state_file.state))
    })
}

/// Whether `dir` holds a checkpoint: a `current` pointer, or a `state.json` of the single-directory layout.
pub fn exists(dir: &Path) -> bool {
    dir.join(CURRENT_FILE).is_file() || dir.join(STATE_FILE).is_file()
}

/// The directory that holds the files of the current checkpoint in `dir`: the version named by `current`, or
/// `dir` itself for the single-directory layout. A missing directory, or a pointer that is malformed or names a
/// missing version, is an [`Error::Checkpoint`].
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        let msg = if dir.exists() { "is not a directory" } else { "directory does not exist" };
        return Err(checkpoint_error(dir, msg));
    }
    let pointer = dir.join(CURRENT_FILE);
    let bytes = match fs::read(&pointer) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dir.to_path_buf()),
        Err(e) => return Err(Error::io(&pointer, e)),
    };
    let name = std::str::from_utf8(&bytes).map(str::trim).unwrap_or_default();
    if !is_version_name(name) {
        return Err(checkpoint_error(
            &pointer,
            format!("corrupt: expected the name of a version directory such as step-500, found {:?}", String::from_utf8_lossy(&bytes)),
        ));
    }
    let files_dir = dir.join(name);
    if !files_dir.is_dir() {
        return Err(checkpoint_error(&pointer, format!("names the version {name}, which is missing from {}", dir.display())));
    }
    Ok(files_dir)
}

/// Runs `load` on the current version of `dir`; when it fails because a concurrent save switched versions (and
/// removed the one being read), tries again on the new one.
fn with_current<T>(dir: &Path, mut load: impl FnMut(&Path) -> Result<T>) -> Result<T> {
    let mut files_dir = resolve(dir)?;
    let mut attempt = 1;
    loop {
        match load(&files_dir) {
            Err(e) if attempt < LOAD_ATTEMPTS => match resolve(dir) {
                Ok(now) if now != files_dir => files_dir = now,
                _ => return Err(e),
            },
            other => return other,
        }
        attempt += 1;
    }
}

/// Whether `name` is a version directory name that [`save`] writes: `step-N` or `step-N.K`.
fn is_version_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(VERSION_PREFIX) else { return false };
    let (step, copy) = rest.split_once('.').unwrap_or((rest, "1"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    digits(step) && digits(copy)
}

/// `step-N`, or `step-N.K` with the smallest K >= 2 not yet taken (a second save of the same step).
fn free_version_name(dir: &Path, step: u64) -> String {
    let base = format!("{VERSION_PREFIX}{step}");
    if !dir.join(&base).exists() {
        return base;
    }
    (2u64..).map(|k| format!("{base}.{k}")).find(|name| !dir.join(name).exists()).expect("some copy number is free")
}

/// After a switch to `keep`: removes every other version directory (earlier checkpoints, interrupted saves) and
/// the files of a single-directory checkpoint that `dir` held before. Best effort: a file that cannot be removed
/// is only wasted space, never a wrong checkpoint, since `current` decides.
fn remove_stale_versions(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name != keep && is_version_name(name) && entry.path().is_dir() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    // The single-directory layout: state.json first, so that no half-removed checkpoint looks complete.
    if dir.join(STATE_FILE).is_file() {
        for name in [STATE_FILE, MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
            let _ = fs::remove_file(dir.join(name));
        }
    }
    for name in [STATE_FILE, MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
        let _ = fs::remove_file(tmp_path(&dir.join(name)));
    }
}

/// Writes every parameter of `module` (by name, f32) to a safetensors file at `path`, atomically.
pub fn save_module_safetensors(path: &Path, module: &dyn Module) -> Result<()> {
    let bytes = serialize_tensors(&module_tensors(module), path)?;
    write_synced(&tmp_path(path), &bytes)?;
    rename(&tmp_path(path), path)?;
    sync_parent(path)
}

/// Loads every parameter of `module` from a safetensors file (e.g. a `state_dict` of `torch.nn.LSTM` saved
/// with `safetensors.torch.save_file`). Every parameter must be present as f32 with its shape, and the file
/// must hold nothing else.
pub fn load_module_safetensors(path: &Path, module: &mut dyn Module) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| missing_or_io(path, e))?;
    let tensors = parse_tensors(&bytes, path)?;
    load_module_tensors(module, tensors, path, "the model")
}

/// Reads every tensor of a safetensors file at `path`; all must be f32.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = fs::read(path).map_err(|e| missing_or_io(path, e))?;
    parse_tensors(&bytes, path)
}

/// CRC-32 (IEEE 802.3, reflected, the checksum of zip and PNG) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc = CRC32_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The byte-at-a-time lookup table of the reflected polynomial 0xEDB88320.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn checkpoint_error(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.into(), msg: msg.into() }
}

/// A missing file is a checkpoint problem; any other I/O failure stays an I/O error.
fn missing_or_io(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        checkpoint_error(path, "file is missing")
    } else {
        Error::io(path, e)
    }
}

/// `config.toml` of the checkpoint files in `dir`, verified against `state.json` and validated.
fn read_config(dir: &Path, state_file: &StateFile) -> Result<RunConfig> {
    let config_path = dir.join(CONFIG_FILE);
    let config_bytes = read_verified(dir, state_file, CONFIG_FILE)?;
    let text = String::from_utf8(config_bytes).map_err(|_| checkpoint_error(&config_path, "is not UTF-8 text"))?;
    let config: RunConfig = toml::from_str(&text).map_err(|e| checkpoint_error(&config_path, format!("invalid config: {e}")))?;
    config.validate().map_err(|e| checkpoint_error(&config_path, e.to_string()))?;
    Ok(config)
}

/// `state.json`, then config and model verified against it, the network built from the config and loaded; every
/// weight must be finite.
fn load_verified_model(dir: &Path) -> Result<(RunConfig, Network, StateFile)> {
    let state_file = read_state(dir)?;
    let config = read_config(dir, &state_file)?;
    let config_path = dir.join(CONFIG_FILE);
    let model_path = dir.join(MODEL_FILE);
    let model_bytes = read_verified(dir, &state_file, MODEL_FILE)?;
    let tensors = parse_tensors(&model_bytes, &model_path)?;
    let io = Task::io_of(&config.task)?;
    // The model file bounds the size of the network to build: an edited config.toml cannot make the loader
    // allocate far more than the weights it has (a small mismatch is left to the shape checks, which name the tensor).
    let (params, buffers) = crate::memory::parameter_count(&config.model, io).map_err(|e| checkpoint_error(&config_path, e.to_string()))?;
    if params.saturating_add(buffers).saturating_mul(4) > (model_bytes.len() as u64).saturating_mul(2).saturating_add(16 << 20) {
        return Err(checkpoint_error(
            &model_path,
            format!("holds {} bytes, too few for the {} parameters of the model that config.toml describes", model_bytes.len(), params.saturating_add(buffers)),
        ));
    }
    let mut network = Network::new(&config.model, io, config.train.seed).map_err(|e| checkpoint_error(&config_path, e.to_string()))?;
    load_module_tensors(&mut network, tensors, &model_path, "the model described by config.toml")?;
    let weights = network.params().into_iter().chain(network.buffers()).map(|p| (p.name.as_str(), p.value.as_slice()));
    if let Some(bad) = first_non_finite(weights) {
        return Err(checkpoint_error(&model_path, format!("weight {bad}: the model cannot be evaluated (saved from a diverged run?)")));
    }
    Ok((config, network, state_file))
}

/// Reads and parses `state.json`, with a clear message for a directory that is missing or not a checkpoint.
fn read_state(dir: &Path) -> Result<StateFile> {
    if !dir.is_dir() {
        let msg = if dir.exists() { "is not a directory" } else { "directory does not exist" };
        return Err(checkpoint_error(dir, msg));
    }
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| checkpoint_error(&path, "corrupt: not UTF-8 text"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(checkpoint_error(&path, "file is missing: the directory is not an effseq checkpoint, or its first save was interrupted"));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let state: StateFile = serde_json::from_str(&text).map_err(|e| checkpoint_error(&path, format!("corrupt or truncated: {e}")))?;
    if state.format > FORMAT_VERSION {
        return Err(checkpoint_error(
            &path,
            format!(
                "format {} was written by effseq {}; this effseq {} reads format {FORMAT_VERSION} or older",
                state.format,
                state.effseq_version,
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    Ok(state)
}

/// Reads `name` and checks its size and CRC-32 against `state.json`.
fn read_verified(dir: &Path, state: &StateFile, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let expected = state.files.get(name).ok_or_else(|| checkpoint_error(dir.join(STATE_FILE), format!("records no checksum for {name}")))?;
    let bytes = fs::read(&path).map_err(|e| missing_or_io(&path, e))?;
    let got = FileSum::of(&bytes);
    if got.bytes < expected.bytes {
        return Err(checkpoint_error(&path, format!("truncated (or modified): {} bytes, but state.json records {} bytes", got.bytes, expected.bytes)));
    }
    if got != *expected {
        return Err(checkpoint_error(
            &path,
            format!(
                "corrupt or modified: {} bytes with CRC32 {}, but state.json records {} bytes with CRC32 {}",
                got.bytes, got.crc32, expected.bytes, expected.crc32
            ),
        ));
    }
    Ok(bytes)
}

/// `(name, shape, values)` of every parameter of `module`, in its order, then of every buffer.
fn module_tensors(module: &dyn Module) -> NamedTensors {
    module.params().into_iter().chain(module.buffers()).map(|p| (p.name.clone(), p.shape.clone(), p.value.clone())).collect()
}

/// The safetensors bytes of f32 tensors; `path` only names the destination in errors.
fn serialize_tensors(tensors: &[(String, Vec<usize>, Vec<f32>)], path: &Path) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), data).map_err(|e| checkpoint_error(path, format!("tensor '{name}': {e}")))?;
        views.push((name.as_str(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, &Some(metadata)).map_err(|e| checkpoint_error(path, format!("cannot serialise: {e}")))
}

/// Parses safetensors `bytes` (read from `path`) into f32 tensors by name.
fn parse_tensors(bytes: &[u8], path: &Path) -> Result<TensorMap> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| checkpoint_error(path, describe_safetensors_error(&e)))?;
    let mut out = HashMap::with_capacity(file.len());
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(checkpoint_error(path, format!("tensor '{name}' has dtype {:?}; effseq reads F32 only", view.dtype())));
        }
        let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

fn describe_safetensors_error(e: &SafeTensorError) -> String {
    let detail = match e {
        SafeTensorError::HeaderTooSmall => "the file is shorter than a safetensors header".to_string(),
        SafeTensorError::InvalidHeaderLength => "the header length points past the end of the file".to_string(),
        SafeTensorError::MetadataIncompleteBuffer => "the tensor data does not fill the file as the header says".to_string(),
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderStart | SafeTensorError::InvalidHeaderDeserialization => {
            "the header is not valid safetensors JSON".to_string()
        }
        other => format!("{other:?}"),
    };
    format!("not a valid safetensors file, truncated or corrupt ({detail})")
}

/// Copies `tensors` into the parameters and buffers of `module`: every one present with its shape, nothing extra.
fn load_module_tensors(module: &mut dyn Module, mut tensors: TensorMap, path: &Path, expecting: &str) -> Result<()> {
    let mut load = |param: &mut Param| -> Result<()> {
        let Some((shape, values)) = tensors.remove(&param.name) else {
            return Err(checkpoint_error(path, format!("tensor '{}' is missing ({expecting} has it with shape {:?})", param.name, param.shape)));
        };
        if shape != param.shape {
            return Err(checkpoint_error(path, format!("tensor '{}' has shape {shape:?}, but {expecting} expects {:?}", param.name, param.shape)));
        }
        param.load(&shape, &values)
    };
    for param in module.params_mut() {
        load(param)?;
    }
    for buffer in module.buffers_mut() {
        load(buffer)?;
    }
    if !tensors.is_empty() {
        let mut extra: Vec<&str> = tensors.keys().map(String::as_str).collect();
        extra.sort_unstable();
        return Err(checkpoint_error(path, format!("unexpected tensor(s) {} that {expecting} does not have", extra.join(", "))));
    }
    Ok(())
}

fn write_state(dir: &Path, state: &StateFile) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| checkpoint_error(&path, format!("cannot serialise: {e}")))?;
    write_synced(&tmp_path(&path), text.as_bytes())?;
    rename(&tmp_path(&path), &path)?;
    sync_parent(&path)
}

/// `path` with `.tmp` appended to its file name.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Creates (or truncates) `path`, writes `bytes` and flushes them to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io(to, e))
}

/// Flushes the directory entry of `path` (the renames), where the platform allows opening a directory.
fn sync_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// Flushes the entries of directory `dir` (files created or renamed in it) to the disk, where the platform allows
/// opening a directory.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let handle = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        handle.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelKind, TaskKind};
    use crate::param::Param;

    fn tiny_config(kind: ModelKind, task: TaskKind, hidden: usize) -> RunConfig {
        let mut cfg = RunConfig::default();
        cfg.model.kind = kind;
        cfg.model.hidden = hidden;
        cfg.task.kind = task;
        cfg.task.seq_len = 6;
        cfg.task.eval_size = 8;
        cfg.train.seed = 3;
        cfg
    }

    /// A checkpoint of a freshly built network with one optimizer step taken, in a new temporary directory.
    fn saved(cfg: &RunConfig) -> (tempfile::TempDir, Network, Optimizer, TrainState) {
        let dir = tempfile::tempdir().unwrap();
        let mut network = Network::new(&cfg.model, Task::io_of(&cfg.task).unwrap(), cfg.train.seed).unwrap();
        let mut optimizer = Optimizer::new(&cfg.train, &network.params());
        for p in network.params_mut() {
            p.grad.iter_mut().enumerate().for_each(|(i, g)| *g = (i as f32 * 0.37).sin());
        }
        optimizer.step(&mut network.params_mut(), 1e-2).unwrap();
        let state = TrainState {
            step: 1,
            optimizer_steps: optimizer.steps_taken(),
            seed: cfg.train.seed,
            metric_name: Some("mse".into()),
            best_metric: Some(0.25),
            last_metric: Some(0.3),
            recent_losses: vec![0.5, 0.25],
        };
        save(dir.path(), cfg, &network, &optimizer, &state).unwrap();
        (dir, network, optimizer, state)
    }

    fn expect_checkpoint_error(result: Result<Loaded>, file: &str, needle: &str) {
        match result {
            Err(Error::Checkpoint { path, msg }) => {
                assert!(path.ends_with(file), "error should name {file}, named {}: {msg}", path.display());
                assert!(msg.contains(needle), "message '{msg}' should mention '{needle}'");
            }
            Err(other) => panic!("expected a checkpoint error about {file}, got {other}"),
            Ok(_) => panic!("expected a checkpoint error about {file}, the load succeeded"),
        }
    }

    /// Rewrites `state.json` so that its checksums match the files as they are now (to reach the checks
    /// behind the checksum).
    fn reseal(dir: &Path) {
        let dir = files(dir);
        let mut state = read_state(&dir).unwrap();
        for (name, sum) in state.files.iter_mut() {
            *sum = FileSum::of(&fs::read(dir.join(name)).unwrap());
        }
        write_state(&dir, &state).unwrap();
    }

    /// The directory of the current checkpoint's files.
    fn files(dir: &Path) -> PathBuf {
        resolve(dir).unwrap()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip_restores_weights_optimizer_and_state() {
        for (kind, task) in [(ModelKind::Lstm, TaskKind::Adding), (ModelKind::Gru, TaskKind::Copy)] {
            let cfg = tiny_config(kind, task, 5);
            let (dir, network, optimizer, state) = saved(&cfg);
            let loaded = load(dir.path()).unwrap();
            assert_eq!(loaded.config, cfg);
            assert_eq!(loaded.state, state);
            for (a, b) in network.params().iter().zip(loaded.network.params()) {
                assert_eq!((&a.name, &a.shape, &a.value), (&b.name, &b.shape, &b.value));
            }
            assert_eq!(loaded.optimizer.steps_taken(), optimizer.steps_taken());
            assert_eq!(loaded.optimizer.state_tensors(), optimizer.state_tensors());
            assert_eq!(names_in(dir.path()), ["current", "step-1"], "the pointer and one version, no temporary file");
            assert_eq!(names_in(&files(dir.path())), [CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]);
            let (config, net2, state2) = load_model(dir.path()).unwrap();
            assert_eq!((config, state2), (cfg, state));
            assert_eq!(net2.num_params(), network.num_params());
        }
    }

    /// The sorted names in a directory.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn saving_again_switches_to_a_new_version_and_removes_the_old_one() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, network, optimizer, mut state) = saved(&cfg);
        state.step = 9;
        save(dir.path(), &cfg, &network, &optimizer, &state).unwrap();
        assert_eq!(load(dir.path()).unwrap().state.step, 9);
        assert_eq!(names_in(dir.path()), ["current", "step-9"]);
        // A second save of the same step gets a version of its own (the current one is never written into).
        save(dir.path(), &cfg, &network, &optimizer, &state).unwrap();
        assert_eq!(names_in(dir.path()), ["current", "step-9.2"]);
        assert_eq!(fs::read_to_string(dir.path().join(CURRENT_FILE)).unwrap(), "step-9.2\n");
    }

    #[test]
    fn an_interrupted_save_leaves_the_previous_checkpoint_current_and_is_cleaned_up_by_the_next() {
        let cfg = tiny_config(ModelKind::Gru, TaskKind::Adding, 4);
        let (dir, network, optimizer, mut state) = saved(&cfg);
        // What a kill -9 in the middle of the save of step 2 leaves: its version directory, half written, and a
        // half-written pointer beside the real one.
        fs::create_dir(dir.path().join("step-2")).unwrap();
        fs::write(dir.path().join("step-2").join(MODEL_FILE), b"partial").unwrap();
        fs::write(dir.path().join("current.tmp"), b"step-").unwrap();
        assert_eq!(load(dir.path()).unwrap().state.step, 1, "the previous checkpoint is still the current one");
        state.step = 2;
        save(dir.path(), &cfg, &network, &optimizer, &state).unwrap();
        assert_eq!(names_in(dir.path()), ["current", "step-2.2"]);
        assert_eq!(load(dir.path()).unwrap().state.step, 2);
    }

    #[test]
    fn the_single_directory_layout_still_loads_and_the_next_save_replaces_it() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (versioned, network, optimizer, mut state) = saved(&cfg);
        // A checkpoint as effseq wrote it before versioned saves: the four files side by side.
        let flat = tempfile::tempdir().unwrap();
        for name in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, STATE_FILE] {
            fs::copy(files(versioned.path()).join(name), flat.path().join(name)).unwrap();
        }
        assert!(exists(flat.path()));
        assert_eq!(resolve(flat.path()).unwrap(), flat.path());
        let loaded = load(flat.path()).unwrap();
        assert_eq!((loaded.config, loaded.state.clone()), (cfg.clone(), state.clone()));
        state.step = 3;
        save(flat.path(), &cfg, &network, &optimizer, &state).unwrap();
        assert_eq!(names_in(flat.path()), ["current", "step-3"], "the old files are removed after the switch");
        assert_eq!(load(flat.path()).unwrap().state.step, 3);
    }

    #[test]
    fn a_broken_pointer_is_a_checkpoint_error() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&cfg);
        let pointer = dir.path().join(CURRENT_FILE);
        for text in ["", "../elsewhere", "/etc", "step-1/../..", "model.safetensors", "step-x"] {
            fs::write(&pointer, text).unwrap();
            expect_checkpoint_error(load(dir.path()), CURRENT_FILE, "corrupt");
        }
        fs::write(&pointer, "step-7\n").unwrap();
        expect_checkpoint_error(load(dir.path()), CURRENT_FILE, "names the version step-7, which is missing");
        // No pointer and no state.json, but a version directory: the first save never completed.
        fs::remove_file(&pointer).unwrap();
        expect_checkpoint_error(load(dir.path()), STATE_FILE, "first save was interrupted");
        assert!(!exists(dir.path()));
    }

    #[test]
    fn a_reader_that_races_a_save_follows_the_pointer_to_the_new_version() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, network, optimizer, mut state) = saved(&cfg);
        let calls = std::cell::Cell::new(0);
        let step = with_current(dir.path(), |files_dir| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                // A save switches versions (and removes the one being read) in the middle of this read.
                state.step = 2;
                save(dir.path(), &cfg, &network, &optimizer, &state).unwrap();
            }
            read_state(files_dir).map(|s| s.state.step)
        })
        .unwrap();
        assert_eq!((step, calls.get()), (2, 2));
    }

    #[test]
    fn non_finite_weights_are_never_saved_and_refused_on_load() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, mut network, optimizer, mut state) = saved(&cfg);
        network.params_mut()[1].value[3] = f32::INFINITY;
        state.step = 2;
        match save(dir.path(), &cfg, &network, &optimizer, &state) {
            Err(Error::NonFinite { step: 2, what }) => assert!(what.contains("'rnn.weight_hh_l0' is inf at element 3"), "{what}"),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert_eq!(names_in(dir.path()), ["current", "step-1"], "nothing changed on disk");
        // A checkpoint with a NaN weight (written by an older effseq) is refused with the tensor named.
        let path = files(dir.path()).join(MODEL_FILE);
        network.params_mut()[1].value[3] = f32::NAN;
        fs::write(&path, serialize_tensors(&module_tensors(&network), &path).unwrap()).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "'rnn.weight_hh_l0' is NaN at element 3");
        assert!(matches!(load_model(dir.path()), Err(Error::Checkpoint { .. })));
    }

    #[test]
    fn missing_directory_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        expect_checkpoint_error(load(&dir.path().join("nope")), "nope", "does not exist");
        expect_checkpoint_error(load(dir.path()), STATE_FILE, "missing");
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        for file in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
            let (dir, ..) = saved(&cfg);
            fs::remove_file(files(dir.path()).join(file)).unwrap();
            expect_checkpoint_error(load(dir.path()), file, "missing");
        }
        // Evaluation does not need the optimizer state.
        let (dir, ..) = saved(&cfg);
        fs::remove_file(files(dir.path()).join(OPTIMIZER_FILE)).unwrap();
        assert!(load_model(dir.path()).is_ok());
    }

    #[test]
    fn truncated_and_corrupt_files_are_detected_by_the_checksum() {
        let cfg = tiny_config(ModelKind::Gru, TaskKind::Adding, 4);
        for file in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
            let (dir, ..) = saved(&cfg);
            let path = files(dir.path()).join(file);
            let bytes = fs::read(&path).unwrap();
            fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            expect_checkpoint_error(load(dir.path()), file, "truncated");

            let mut flipped = bytes.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 0x10;
            fs::write(&path, &flipped).unwrap();
            expect_checkpoint_error(load(dir.path()), file, "CRC32");
        }
        let (dir, ..) = saved(&cfg);
        fs::write(files(dir.path()).join(STATE_FILE), "{\"format\": 1, \"ste").unwrap();
        expect_checkpoint_error(load(dir.path()), STATE_FILE, "corrupt or truncated");
    }

    #[test]
    fn truncated_safetensors_behind_a_matching_checksum() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&cfg);
        let path = files(dir.path()).join(MODEL_FILE);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "not a valid safetensors file");
        fs::write(&path, &bytes[..4]).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "not a valid safetensors file");
    }

    #[test]
    fn missing_extra_and_misshapen_tensors() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, network, ..) = saved(&cfg);
        let path = files(dir.path()).join(MODEL_FILE);
        let all = module_tensors(&network);

        let without_head: NamedTensors = all.iter().filter(|t| t.0 != "head.bias").cloned().collect();
        fs::write(&path, serialize_tensors(&without_head, &path).unwrap()).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "'head.bias' is missing");

        let mut with_extra = all.clone();
        with_extra.push(("rnn.weight_ih_l1".into(), vec![2], vec![0.0; 2]));
        fs::write(&path, serialize_tensors(&with_extra, &path).unwrap()).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "unexpected tensor(s) rnn.weight_ih_l1");

        // The same tensors with head.bias stored as f64.
        let raw: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = all
            .iter()
            .map(|(name, shape, values)| match name.as_str() {
                "head.bias" => (name.as_str(), Dtype::F64, shape.clone(), values.iter().flat_map(|&v| f64::from(v).to_le_bytes()).collect()),
                _ => (name.as_str(), Dtype::F32, shape.clone(), values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            })
            .collect();
        let views: Vec<_> = raw.iter().map(|(name, dtype, shape, data)| (*name, TensorView::new(*dtype, shape.clone(), data).unwrap())).collect();
        fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "dtype F64");
    }

    #[test]
    fn shapes_that_do_not_match_the_config() {
        // Weights of a hidden-4 model under a config that says hidden 6.
        let small = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&small);
        let large = tiny_config(ModelKind::Lstm, TaskKind::Adding, 6);
        fs::write(files(dir.path()).join(CONFIG_FILE), large.to_toml()).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "expects [24, 2]");
    }

    #[test]
    fn edited_config_is_reported_by_its_checksum_then_by_its_content() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&cfg);
        let path = files(dir.path()).join(CONFIG_FILE);
        fs::write(&path, "[model]\nhiden = 3\n").unwrap();
        expect_checkpoint_error(load(dir.path()), CONFIG_FILE, "state.json records");
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), CONFIG_FILE, "hiden");
    }

    #[test]
    fn newer_format_is_refused() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&cfg);
        let mut state = read_state(&files(dir.path())).unwrap();
        state.format = FORMAT_VERSION + 1;
        write_state(&files(dir.path()), &state).unwrap();
        expect_checkpoint_error(load(dir.path()), STATE_FILE, "reads format");
    }

    #[test]
    fn module_safetensors_round_trip_and_errors() {
        struct Two(Vec<Param>);
        impl Module for Two {
            fn params(&self) -> Vec<&Param> {
                self.0.iter().collect()
            }
            fn params_mut(&mut self) -> Vec<&mut Param> {
                self.0.iter_mut().collect()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let source = Two(vec![Param::new("a", &[2, 3], (0..6).map(|i| i as f32 * 0.5).collect()), Param::new("b", &[1], vec![-1.0])]);
        save_module_safetensors(&path, &source).unwrap();
        let mut target = Two(vec![Param::zeros("a", &[2, 3]), Param::zeros("b", &[1])]);
        load_module_safetensors(&path, &mut target).unwrap();
        assert_eq!(target.0[0].value, source.0[0].value);
        assert_eq!(target.0[1].value, vec![-1.0]);
        assert_eq!(read_safetensors(&path).unwrap()["a"].0, vec![2, 3]);

        let mut wrong_shape = Two(vec![Param::zeros("a", &[3, 2]), Param::zeros("b", &[1])]);
        assert!(matches!(load_module_safetensors(&path, &mut wrong_shape), Err(Error::Checkpoint { msg, .. }) if msg.contains("[2, 3]")));
        let mut missing = Two(vec![Param::zeros("a", &[2, 3]), Param::zeros("b", &[1]), Param::zeros("c", &[1])]);
        assert!(matches!(load_module_safetensors(&path, &mut missing), Err(Error::Checkpoint { msg, .. }) if msg.contains("'c' is missing")));
        let nowhere = dir.path().join("nowhere.safetensors");
        assert!(matches!(load_module_safetensors(&nowhere, &mut target), Err(Error::Checkpoint { msg, .. }) if msg.contains("missing")));
    }
}
