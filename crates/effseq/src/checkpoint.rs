//! Checkpoints: a directory that holds everything needed to evaluate a model or to resume its training
//! exactly.
//!
//! | file | content |
//! |------|---------|
//! | `model.safetensors` | every parameter of the [`Network`] by its PyTorch name, f32 |
//! | `optimizer.safetensors` | the optimizer's state tensors ([`Optimizer::state_tensors`]) |
//! | `config.toml` | the [`RunConfig`] |
//! | `state.json` | step, optimizer steps, seed, eval metrics, effseq version, and the size and CRC32 of every other file |
//!
//! Every file is written atomically (`name.tmp`, fsync, rename) and `state.json` last, so a crash while the data
//! files are written leaves the previous checkpoint intact; a crash in the short window between the renames is
//! reported on load as a checksum mismatch naming the file. Loading verifies sizes and checksums before parsing,
//! then every tensor's presence and shape against the model the config describes, so truncated, corrupt or
//! mismatched checkpoints fail with an [`Error::Checkpoint`] that names the file and the problem.

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
use crate::param::{Module, Param};
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

/// Writes a checkpoint of a run into `dir` (created if needed), replacing the checkpoint already there.
pub fn save(dir: &Path, config: &RunConfig, network: &Network, optimizer: &Optimizer, state: &TrainState) -> Result<()> {
    if network.config != config.model {
        return Err(Error::Invalid("checkpoint::save: the network was not built from config.model".into()));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let model = serialize_tensors(&module_tensors(network), &dir.join(MODEL_FILE))?;
    let optim = serialize_tensors(&optimizer.state_tensors(), &dir.join(OPTIMIZER_FILE))?;
    let config_text = config.to_toml().into_bytes();
    let files: [(&str, &[u8]); 3] = [(MODEL_FILE, &model), (OPTIMIZER_FILE, &optim), (CONFIG_FILE, &config_text)];

    // The slow part first: every data file into its .tmp, so a crash here leaves the old checkpoint untouched.
    for (name, bytes) in files {
        write_synced(&tmp_path(&dir.join(name)), bytes)?;
    }
    for (name, _) in files {
        rename(&tmp_path(&dir.join(name)), &dir.join(name))?;
    }
    let state_file = StateFile {
        format: FORMAT_VERSION,
        effseq_version: env!("CARGO_PKG_VERSION").to_string(),
        state: state.clone(),
        files: files.iter().map(|&(name, bytes)| (name.to_string(), FileSum::of(bytes))).collect(),
    };
    write_state(dir, &state_file)
}

/// Loads a checkpoint written by [`save`]: config, network, optimizer and progress, after verifying every file.
pub fn load(dir: &Path) -> Result<Loaded> {
    let (config, network, state_file) = load_verified_model(dir)?;
    let optim_path = dir.join(OPTIMIZER_FILE);
    let optim_bytes = read_verified(dir, &state_file, OPTIMIZER_FILE)?;
    let tensors = parse_tensors(&optim_bytes, &optim_path)?;
    let mut optimizer = Optimizer::new(&config.train, &network.params());
    optimizer.load_state_tensors(&tensors).map_err(|e| match e {
        Error::Checkpoint { .. } => e,
        other => Error::Checkpoint { path: optim_path.clone(), msg: other.to_string() },
    })?;
    optimizer.set_steps_taken(state_file.state.optimizer_steps);
    Ok(Loaded { config, network, optimizer, state: state_file.state })
}

/// Loads only what evaluation needs (config, network, progress); the optimizer file is neither read nor required.
pub fn load_model(dir: &Path) -> Result<(RunConfig, Network, TrainState)> {
    let (config, network, state_file) = load_verified_model(dir)?;
    Ok((config, network, state_file.state))
}

/// Whether `dir` holds a checkpoint (its `state.json` exists).
pub fn exists(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
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

/// `state.json`, then config and model verified against it, the network built from the config and loaded.
fn load_verified_model(dir: &Path) -> Result<(RunConfig, Network, StateFile)> {
    let state_file = read_state(dir)?;
    let config_path = dir.join(CONFIG_FILE);
    let config_bytes = read_verified(dir, &state_file, CONFIG_FILE)?;
    let text = String::from_utf8(config_bytes).map_err(|_| checkpoint_error(&config_path, "is not UTF-8 text"))?;
    let config: RunConfig = toml::from_str(&text).map_err(|e| checkpoint_error(&config_path, format!("invalid config: {e}")))?;
    config.validate().map_err(|e| checkpoint_error(&config_path, e.to_string()))?;

    let model_path = dir.join(MODEL_FILE);
    let model_bytes = read_verified(dir, &state_file, MODEL_FILE)?;
    let tensors = parse_tensors(&model_bytes, &model_path)?;
    let io = Task::io_of(&config.task)?;
    let mut network = Network::new(&config.model, io, config.train.seed).map_err(|e| checkpoint_error(&config_path, e.to_string()))?;
    load_module_tensors(&mut network, tensors, &model_path, "the model described by config.toml")?;
    Ok((config, network, state_file))
}

/// Reads and parses `state.json`, with a clear message for a directory that is missing or not a checkpoint.
fn read_state(dir: &Path) -> Result<StateFile> {
    if !dir.is_dir() {
        let msg = if dir.exists() { "is not a directory" } else { "directory does not exist" };
        return Err(checkpoint_error(dir, msg));
    }
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
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
    #[cfg(unix)]
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let dir = fs::File::open(parent).map_err(|e| Error::io(parent, e))?;
        dir.sync_all().map_err(|e| Error::io(parent, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
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
        let mut state = read_state(dir).unwrap();
        for (name, sum) in state.files.iter_mut() {
            *sum = FileSum::of(&fs::read(dir.join(name)).unwrap());
        }
        write_state(dir, &state).unwrap();
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
            let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            assert!(names.iter().all(|n| !n.ends_with(".tmp")), "no temporary file left: {names:?}");
            let (config, net2, state2) = load_model(dir.path()).unwrap();
            assert_eq!((config, state2), (cfg, state));
            assert_eq!(net2.num_params(), network.num_params());
        }
    }

    #[test]
    fn saving_again_replaces_the_checkpoint() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, network, optimizer, mut state) = saved(&cfg);
        state.step = 9;
        save(dir.path(), &cfg, &network, &optimizer, &state).unwrap();
        assert_eq!(load(dir.path()).unwrap().state.step, 9);
    }

    #[test]
    fn missing_directory_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        expect_checkpoint_error(load(&dir.path().join("nope")), "nope", "does not exist");
        expect_checkpoint_error(load(dir.path()), STATE_FILE, "missing");
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        for file in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
            let (dir, ..) = saved(&cfg);
            fs::remove_file(dir.path().join(file)).unwrap();
            expect_checkpoint_error(load(dir.path()), file, "missing");
        }
        // Evaluation does not need the optimizer state.
        let (dir, ..) = saved(&cfg);
        fs::remove_file(dir.path().join(OPTIMIZER_FILE)).unwrap();
        assert!(load_model(dir.path()).is_ok());
    }

    #[test]
    fn truncated_and_corrupt_files_are_detected_by_the_checksum() {
        let cfg = tiny_config(ModelKind::Gru, TaskKind::Adding, 4);
        for file in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
            let (dir, ..) = saved(&cfg);
            let path = dir.path().join(file);
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
        fs::write(dir.path().join(STATE_FILE), "{\"format\": 1, \"ste").unwrap();
        expect_checkpoint_error(load(dir.path()), STATE_FILE, "corrupt or truncated");
    }

    #[test]
    fn truncated_safetensors_behind_a_matching_checksum() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&cfg);
        let path = dir.path().join(MODEL_FILE);
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
        let path = dir.path().join(MODEL_FILE);
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
        fs::write(dir.path().join(CONFIG_FILE), large.to_toml()).unwrap();
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), MODEL_FILE, "expects [24, 2]");
    }

    #[test]
    fn edited_config_is_reported_by_its_checksum_then_by_its_content() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&cfg);
        let path = dir.path().join(CONFIG_FILE);
        fs::write(&path, "[model]\nhiden = 3\n").unwrap();
        expect_checkpoint_error(load(dir.path()), CONFIG_FILE, "state.json records");
        reseal(dir.path());
        expect_checkpoint_error(load(dir.path()), CONFIG_FILE, "hiden");
    }

    #[test]
    fn newer_format_is_refused() {
        let cfg = tiny_config(ModelKind::Lstm, TaskKind::Adding, 4);
        let (dir, ..) = saved(&cfg);
        let mut state = read_state(dir.path()).unwrap();
        state.format = FORMAT_VERSION + 1;
        write_state(dir.path(), &state).unwrap();
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
