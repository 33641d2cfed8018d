//! `effseq.Model`: a complete network (embedding, backbone, head) built from the same config as the CLI, with a
//! training forward and backward, inference, streaming steps with a `State`, an optimizer step, and checkpoints.

use std::collections::HashMap;
use std::path::PathBuf;

use effseq::checkpoint::{self, TrainState};
use effseq::config::RunConfig;
use effseq::model::{InputKind, Inputs, Network, NetworkState, Readout, StepInput, TaskIo};
use effseq::optim::{clip_grad_norm, learning_rate, Optimizer};
use effseq::param::Module;
use effseq::rng::{rng_for, streams};
use effseq::tasks::Task;
use numpy::{PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{f32_in, f32_out, fmt_shape, lengths_arg, type_name};
use crate::config::{run_config, to_python};
use crate::{detached, error, ErrorKind};

/// A sequence model: the network `effseq train` builds for a config (`model` section; the input and output come from
/// the `task` section, or from input_dim / vocab, output_dim and readout given here).
///
/// Model(config=None, *, input_dim=None, vocab=None, output_dim=None, readout="every", seed=None)
///
/// config: a dict ({"model": {...}, "task": {...}, "train": {...}}), the text of a TOML or JSON config, or a
/// pathlib.Path to one. seed: initialisation seed (default: train.seed). Inputs are float32 (B, T, D) features or
/// integer (B, T) token ids; outputs are (B, C) for a one-prediction-per-sequence readout ("last") or (B, T, C)
/// ("every").
#[pyclass(module = "effseq", name = "Model")]
pub struct Model {
    config: RunConfig,
    network: Network,
    /// Whether the input and output come from `config.task` (then `save` writes a checkpoint `effseq eval` reads).
    task_io: bool,
    optimizer: Optimizer,
    state: TrainState,
    /// Training forwards so far: keys the dropout masks.
    forwards: u64,
    /// Output shape of the last training forward, for backward's message.
    last_output: Option<Vec<usize>>,
}

/// The streaming state of a Model for a batch of sequences (Model.zero_state(batch)); Model.step advances it.
#[pyclass(module = "effseq", name = "State")]
pub struct State {
    inner: NetworkState,
    /// Steps taken from the zero state.
    steps: u64,
}

#[pymethods]
impl State {
    /// Sequences in the batch.
    #[getter]
    fn batch(&self) -> usize {
        self.inner.batch
    }

    /// Steps taken since the zero state.
    #[getter]
    fn steps(&self) -> u64 {
        self.steps
    }

    /// An independent copy (to branch a stream, e.g. for beam search).
    fn copy(&self) -> State {
        State { inner: self.inner.clone(), steps: self.steps }
    }

    fn __copy__(&self) -> State {
        self.copy()
    }

    fn __repr__(&self) -> String {
        format!("<effseq.State batch={} steps={}>", self.inner.batch, self.steps)
    }
}

/// The task I/O given by keyword arguments, if any.
fn explicit_io(py: Python<'_>, input_dim: Option<usize>, vocab: Option<usize>, output_dim: Option<usize>, readout: Option<&str>) -> PyResult<Option<TaskIo>> {
    if input_dim.is_none() && vocab.is_none() && output_dim.is_none() && readout.is_none() {
        return Ok(None);
    }
    let input = match (input_dim, vocab) {
        (Some(dim), None) => InputKind::Dense { dim },
        (None, Some(vocab)) => InputKind::Tokens { vocab },
        _ => return Err(error(py, ErrorKind::Config, "give exactly one of input_dim (float features per step) and vocab (token ids)")),
    };
    let output_dim = output_dim.ok_or_else(|| error(py, ErrorKind::Config, "output_dim (the width of each prediction) is required with input_dim or vocab"))?;
    let readout = match readout.unwrap_or("every") {
        "every" => Readout::EveryStep,
        "last" => Readout::LastStep,
        other => return Err(error(py, ErrorKind::Config, format!("unknown readout '{other}' (expected one of: every, last)"))),
    };
    Ok(Some(TaskIo { input, output_dim, readout }))
}

impl Model {
    fn from_parts(config: RunConfig, network: Network, task_io: bool, optimizer: Optimizer, state: TrainState) -> Model {
        Model { config, network, task_io, optimizer, state, forwards: 0, last_output: None }
    }

    /// The batch's inputs: float32 `(B, T, D)` features or integer `(B, T)` ids, as the network reads them.
    fn inputs(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<(Inputs, usize, usize)> {
        match self.network.io.input {
            InputKind::Dense { dim } => {
                let x = f32_in(obj, "inputs", true)?;
                let shape = x.expect_ndim(py, 3, "(B, T, D)")?;
                x.expect_shape(py, &[shape[0], shape[1], dim], &format!("(B, T, D) with D = {dim} features"))?;
                Ok((Inputs::Dense(x.data().to_vec()), shape[0], shape[1]))
            }
            InputKind::Tokens { vocab } => {
                let (ids, shape) = token_ids(py, obj, "inputs", vocab)?;
                if shape.len() != 2 {
                    return Err(error(py, ErrorKind::Shape, format!("inputs must be token ids of shape (B, T), got {}", fmt_shape(&shape))));
                }
                Ok((Inputs::Tokens(ids), shape[0], shape[1]))
            }
        }
    }

    /// The output shape of a batch.
    fn output_shape(&self, b: usize, t: usize) -> Vec<usize> {
        match self.network.io.readout {
            Readout::LastStep => vec![b, self.network.io.output_dim],
            Readout::EveryStep => vec![b, t, self.network.io.output_dim],
        }
    }
}

/// Integer token ids in `0..vocab`, any integer dtype; returns them and the array's shape.
fn token_ids(py: Python<'_>, obj: &Bound<'_, PyAny>, name: &str, vocab: usize) -> PyResult<(Vec<u32>, Vec<usize>)> {
    let untyped = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| error(py, ErrorKind::DType, format!("{name} must be a NumPy array of integer token ids, got {}", type_name(obj))))?;
    let kind = untyped.dtype().kind();
    if kind != b'i' && kind != b'u' {
        return Err(error(
            py,
            ErrorKind::DType,
            format!("{name} must hold integer token ids (this model embeds a vocabulary of {vocab}), got dtype {}", untyped.dtype()),
        ));
    }
    let ids = py.import("numpy")?.call_method1("ascontiguousarray", (obj, "int64"))?;
    let ids = ids.cast::<PyArrayDyn<i64>>()?.readonly();
    let shape = ids.shape().to_vec();
    let values = ids.as_slice()?;
    if let Some(i) = values.iter().position(|&id| id < 0 || id as u64 >= vocab as u64) {
        return Err(error(py, ErrorKind::InvalidArgument, format!("{name} holds token id {} at flat index {i}, outside the vocabulary 0..{vocab}", values[i])));
    }
    Ok((values.iter().map(|&id| id as u32).collect(), shape))
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (config = None, *, input_dim = None, vocab = None, output_dim = None, readout = None, seed = None))]
    fn new(
        py: Python<'_>,
        config: Option<&Bound<'_, PyAny>>,
        input_dim: Option<usize>,
        vocab: Option<usize>,
        output_dim: Option<usize>,
        readout: Option<&str>,
        seed: Option<u64>,
    ) -> PyResult<Model> {
        let mut config = run_config(py, config)?;
        if let Some(seed) = seed {
            config.train.seed = seed;
        }
        let explicit = explicit_io(py, input_dim, vocab, output_dim, readout)?;
        let task_io = explicit.is_none();
        let cfg = config.clone();
        let (network, optimizer) = detached(py, move || {
            let io = match explicit {
                Some(io) => io,
                None => Task::io_of(&cfg.task)?,
            };
            let network = Network::new(&cfg.model, io, cfg.train.seed)?;
            let optimizer = Optimizer::new(&cfg.train, &network.params());
            Ok((network, optimizer))
        })?;
        let state = TrainState { seed: config.train.seed, ..TrainState::default() };
        Ok(Model::from_parts(config, network, task_io, optimizer, state))
    }

    /// Loads a checkpoint directory written by `effseq train` or Model.save: weights, optimizer state and progress,
    /// after verifying every file's size and checksum.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
        let loaded = detached(py, move || checkpoint::load(&path))?;
        Ok(Model::from_parts(loaded.config, loaded.network, true, loaded.optimizer, loaded.state))
    }

    /// Writes a checkpoint directory (weights as PyTorch-named safetensors, optimizer state, config.toml, state.json)
    /// that Model.load and `effseq eval --checkpoint` read. Each file is written to a temporary name and renamed.
    /// Only for models whose input and output come from the config's task; save_weights works for any model.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        if !self.task_io {
            return Err(error(
                py,
                ErrorKind::Checkpoint,
                "this model's input and output were given by keyword (input_dim / vocab / output_dim), which a checkpoint's config cannot describe: use save_weights(path) and load_weights(path)",
            ));
        }
        detached(py, || checkpoint::save(&path, &self.config, &self.network, &self.optimizer, &self.state))
    }

    /// Writes every parameter to a safetensors file by its PyTorch name (atomically: a temporary file, renamed).
    fn save_weights(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        detached(py, || checkpoint::save_module_safetensors(&path, &self.network))
    }

    /// Reads every parameter from a safetensors file (e.g. a PyTorch state_dict saved with safetensors.torch):
    /// all must be present as float32 with their shapes, and nothing else.
    fn load_weights(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let network = &mut self.network;
        detached(py, move || checkpoint::load_module_safetensors(&path, network))
    }

    /// Training forward: predictions for a batch, keeping what backward needs. inputs: float32 (B, T, D) or
    /// integer (B, T); lengths: optional (B) valid steps of right-padded sequences. Dropout is on.
    #[pyo3(signature = (inputs, lengths = None))]
    fn forward<'py>(&mut self, py: Python<'py>, inputs: &Bound<'py, PyAny>, lengths: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let (inputs, b, t) = self.inputs(py, inputs)?;
        let lengths = lengths_arg(py, lengths, b, t, 1)?;
        let (seed, call, step) = (self.config.train.seed, self.forwards, self.state.step);
        self.last_output = None;
        let network = &mut self.network;
        let y = detached(py, move || {
            network.begin_train_step(step);
            let mut dropout = rng_for(seed, streams::DROPOUT.wrapping_add(call));
            network.forward_padded(&inputs, b, t, lengths.as_deref(), Some(&mut dropout))
        })?;
        self.forwards += 1;
        let shape = self.output_shape(b, t);
        self.last_output = Some(shape.clone());
        f32_out(py, y, &shape)
    }

    /// Backward from the gradient of the loss with respect to the last forward's outputs (same shape): ACCUMULATES
    /// every parameter's gradient (call zero_grad first).
    fn backward(&mut self, py: Python<'_>, doutputs: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(shape) = self.last_output.take() else {
            return Err(error(
                py,
                ErrorKind::InvalidArgument,
                "backward needs a training forward first (Model.forward; infer keeps nothing for backward, and an infer in between discards it)",
            ));
        };
        let d = f32_in(doutputs, "doutputs", true)?;
        if let Err(e) = d.expect_shape(py, &shape, "like the last forward's outputs") {
            self.last_output = Some(shape);
            return Err(e);
        }
        let (data, network) = (d.data(), &mut self.network);
        detached(py, move || network.backward(data))
    }

    /// Inference: predictions for a batch, keeping nothing for backward (less memory); dropout off.
    #[pyo3(signature = (inputs, lengths = None))]
    fn infer<'py>(&mut self, py: Python<'py>, inputs: &Bound<'py, PyAny>, lengths: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let (inputs, b, t) = self.inputs(py, inputs)?;
        let lengths = lengths_arg(py, lengths, b, t, 1)?;
        self.last_output = None; // the network's inference pass drops what a backward would need
        let network = &mut self.network;
        let y = detached(py, move || network.predict_padded(&inputs, b, t, lengths.as_deref()))?;
        f32_out(py, y, &self.output_shape(b, t))
    }

    /// A zero streaming state for `batch` sequences.
    fn zero_state(&self, py: Python<'_>, batch: usize) -> PyResult<State> {
        if batch == 0 {
            return Err(error(py, ErrorKind::InvalidArgument, "a streaming state needs a batch of at least 1"));
        }
        Ok(State { inner: self.network.zero_state(batch), steps: 0 })
    }

    /// One streaming step: reads one input per sequence (float32 (B, D), or integer (B,) token ids), advances
    /// `state` in place and returns the prediction after it, (B, C). Equal to the every-step forward's outputs at that
    /// position (causal models only: a bidirectional model cannot stream).
    fn step<'py>(&mut self, py: Python<'py>, x: &Bound<'py, PyAny>, mut state: PyRefMut<'_, State>) -> PyResult<Bound<'py, PyAny>> {
        let b = state.inner.batch;
        let c = self.network.io.output_dim;
        let mut out = vec![0.0f32; b * c]; // (B, C)
        let network = &mut self.network;
        match network.io.input {
            InputKind::Dense { dim } => {
                let x = f32_in(x, "x", true)?;
                x.expect_shape(py, &[b, dim], &format!("(B, D) with the state's batch B = {b} and D = {dim}"))?;
                let (data, inner, out) = (x.data(), &mut state.inner, &mut out);
                detached(py, move || network.step(StepInput::Dense(data), inner, out))?;
            }
            InputKind::Tokens { vocab } => {
                let (ids, shape) = token_ids(py, x, "x", vocab)?;
                if shape != [b] {
                    return Err(error(py, ErrorKind::Shape, format!("x must be token ids of shape (B,) = ({b},), got {}", fmt_shape(&shape))));
                }
                let (inner, out) = (&mut state.inner, &mut out);
                detached(py, move || network.step(StepInput::Tokens(&ids), inner, out))?;
            }
        }
        state.steps += 1;
        f32_out(py, out, &[b, c])
    }

    /// Sets every parameter's gradient to zero.
    fn zero_grad(&mut self) {
        self.network.zero_grad();
    }

    /// One update of the config's optimizer (train.optimizer: AdamW or SGD) from the accumulated gradients, after
    /// clipping their global norm to train.clip_norm. lr: default the config's schedule (warmup, cosine) at this
    /// step. Returns {"step", "lr", "grad_norm"} (the norm before clipping); a NaN or infinite norm raises
    /// DivergedError and leaves the parameters unchanged.
    #[pyo3(signature = (lr = None))]
    fn optimizer_step<'py>(&mut self, py: Python<'py>, lr: Option<f32>) -> PyResult<Bound<'py, PyDict>> {
        let lr = lr.unwrap_or_else(|| learning_rate(&self.config.train, self.state.step));
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(error(py, ErrorKind::InvalidArgument, format!("lr must be a finite number >= 0, got {lr}")));
        }
        let (clip, step) = (self.config.train.clip_norm, self.state.step);
        let (network, optimizer) = (&mut self.network, &mut self.optimizer);
        let grad_norm = detached(py, move || {
            let mut params = network.params_mut();
            let norm = clip_grad_norm(&mut params, clip);
            if !norm.is_finite() {
                return Err(effseq::Error::NonFinite { step, what: format!("the gradient norm is {norm}") });
            }
            optimizer.step(&mut params, lr)?;
            Ok(norm)
        })?;
        self.state.step += 1;
        self.state.optimizer_steps = self.optimizer.steps_taken();
        let info = PyDict::new(py);
        info.set_item("step", self.state.step)?;
        info.set_item("lr", lr)?;
        info.set_item("grad_norm", grad_norm)?;
        Ok(info)
    }

    /// Evaluates the model on its task's evaluation set (the config's task): {"loss", "metric", "metric_name", ...}.
    fn evaluate<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if !self.task_io {
            return Err(error(py, ErrorKind::Config, "evaluate needs a model built for its config's task (no input_dim / vocab / output_dim)"));
        }
        let (task_cfg, seed, network) = (&self.config.task, self.config.train.seed, &mut self.network);
        let eval = detached(py, move || Task::new(task_cfg, seed)?.evaluate(network))?;
        to_python(py, &eval)
    }

    /// Every parameter and buffer (e.g. a Performer's projection_matrix) by its PyTorch name: copies, float32.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for p in self.network.params().into_iter().chain(self.network.buffers()) {
            dict.set_item(&p.name, f32_out(py, p.value.clone(), &p.shape)?)?;
        }
        Ok(dict)
    }

    /// Copies tensors into the parameters and buffers by name. strict: every one must be given and nothing else.
    #[pyo3(signature = (state_dict, strict = true))]
    fn load_state_dict(&mut self, py: Python<'_>, state_dict: &Bound<'_, PyDict>, strict: bool) -> PyResult<()> {
        let mut given: HashMap<String, Bound<'_, PyAny>> = HashMap::new();
        for (key, value) in state_dict.iter() {
            let name: String = key.extract().map_err(|_| error(py, ErrorKind::DType, format!("state_dict keys must be strings, got {}", type_name(&key))))?;
            given.insert(name, value);
        }
        let mut known = Vec::new();
        let mut missing = Vec::new();
        let mut checked = Vec::new();
        for p in self.network.params().into_iter().chain(self.network.buffers()) {
            known.push(p.name.clone());
            match given.get(&p.name) {
                Some(value) => {
                    let array = f32_in(value, "state_dict value", true).map_err(|e| error(py, ErrorKind::DType, format!("'{}': {}", p.name, e.value(py))))?;
                    if array.shape() != p.shape.as_slice() {
                        return Err(error(
                            py,
                            ErrorKind::Shape,
                            format!("'{}' must have shape {}, got {}", p.name, fmt_shape(&p.shape), fmt_shape(array.shape())),
                        ));
                    }
                    checked.push((p.name.clone(), array.data().to_vec()));
                }
                None => missing.push(p.name.clone()),
            }
        }
        let unexpected: Vec<&String> = given.keys().filter(|k| !known.contains(k)).collect();
        if strict && (!missing.is_empty() || !unexpected.is_empty()) {
            return Err(error(py, ErrorKind::Shape, format!("state_dict does not match the model: missing {missing:?}, unexpected {unexpected:?}")));
        }
        let mut values: HashMap<String, Vec<f32>> = checked.into_iter().collect();
        for p in self.network.params_mut() {
            if let Some(v) = values.remove(&p.name) {
                p.value = v;
            }
        }
        for p in self.network.buffers_mut() {
            if let Some(v) = values.remove(&p.name) {
                p.value = v;
            }
        }
        Ok(())
    }

    /// The accumulated gradient of every parameter by name: copies, float32.
    fn gradients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for p in self.network.params() {
            dict.set_item(&p.name, f32_out(py, p.grad.clone(), &p.shape)?)?;
        }
        Ok(dict)
    }

    /// The complete run config (every default filled in), as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.config)
    }

    /// Trainable scalars.
    #[getter]
    fn num_params(&self) -> usize {
        self.network.num_params()
    }

    /// Optimizer steps taken (from a checkpoint's progress, plus optimizer_step calls).
    #[getter]
    fn steps(&self) -> u64 {
        self.state.step
    }

    /// What the model reads: {"kind": "dense", "dim": D} or {"kind": "tokens", "vocab": V}.
    #[getter]
    fn input<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        match self.network.io.input {
            InputKind::Dense { dim } => {
                d.set_item("kind", "dense")?;
                d.set_item("dim", dim)?;
            }
            InputKind::Tokens { vocab } => {
                d.set_item("kind", "tokens")?;
                d.set_item("vocab", vocab)?;
            }
        }
        Ok(d)
    }

    /// Width C of each prediction.
    #[getter]
    fn output_dim(&self) -> usize {
        self.network.io.output_dim
    }

    /// "last" (one prediction per sequence, (B, C)) or "every" (one per step, (B, T, C)).
    #[getter]
    fn readout(&self) -> &'static str {
        match self.network.io.readout {
            Readout::LastStep => "last",
            Readout::EveryStep => "every",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<effseq.Model {} hidden={} layers={} params={}>",
            self.config.model.kind.name(),
            self.config.model.hidden,
            self.config.model.layers,
            self.network.num_params()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<State>()?;
    crate::config::register(m)
}
