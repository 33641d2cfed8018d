//! Parity of [`effseq::rnn::Rnn`] with PyTorch's `nn.LSTM` / `nn.GRU`, against golden fixtures.
//!
//! The fixtures in `tests/fixtures/rnn_*.safetensors` are written by `tests/fixtures/make_rnn_fixtures.py`
//! (torch is needed only to regenerate them, never to run these tests). Each holds one module's parameters
//! under their PyTorch names, a batch-first input `x` (B, T, D), the loss weights `R` (B, T, dirs*H) of
//! L = sum(output * R), and PyTorch's `output` (B, T, dirs*H), `h_n` / `c_n` (L*dirs, B, H), `grad.x`
//! (B, T, D) and `grad.<param>` for every parameter. The reference values were computed in float64 from the
//! stored float32 parameters and inputs, so they are the exact answer rounded to float32.
//!
//! Tolerance: an element passes when |got - want| <= 1e-5 * max(1, |want|) (absolute below 1, relative
//! above). PyTorch's own float32 CPU kernels stay within 6e-7 of the fixtures by that measure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use effseq::config::ModelKind;
use effseq::rnn::{Rnn, RnnConfig};
use effseq::Module;
use safetensors::{Dtype, SafeTensors};

/// Every fixture the parity tests run on; `every_fixture_file_is_tested` keeps this list complete.
const FIXTURES: &[&str] = &[
    "rnn_lstm_1layer.safetensors",
    "rnn_lstm_2layer_bidir.safetensors",
    "rnn_lstm_2layer_nobias.safetensors",
    "rnn_gru_1layer.safetensors",
    "rnn_gru_2layer_bidir.safetensors",
    "rnn_gru_1layer_nobias.safetensors",
];

/// The `magic` metadata value of an RNN fixture (`FIXTURE_MAGIC` in make_rnn_fixtures.py).
const FIXTURE_MAGIC: &str = "effseq-rnn-fixture";
/// The fixture layout these tests understand (`FIXTURE_VERSION` in make_rnn_fixtures.py).
const FIXTURE_VERSION: &str = "1";

/// Relative tolerance: |got - want| <= RTOL * max(1, |want|).
const RTOL: f32 = 1e-5;

/// Directory holding the fixtures and the script that writes them.
fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// One float32 tensor read from a fixture: row-major `values` of `shape`.
struct Tensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// A fixture file read into memory: its bytes, its string metadata and the RNN configuration they describe.
struct Fixture {
    /// File name, for messages.
    name: String,
    /// The whole safetensors file.
    bytes: Vec<u8>,
    /// The safetensors `__metadata__` map (magic, version, kind, sizes, torch version, ...).
    meta: HashMap<String, String>,
}

impl Fixture {
    /// Reads `tests/fixtures/<name>` and checks its magic and version.
    fn load(name: &str) -> Fixture {
        let path = fixtures_dir().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e} (regenerate with make_rnn_fixtures.py)", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{name}: not a safetensors file: {e:?}"));
        let meta = header.metadata().clone().unwrap_or_else(|| panic!("{name}: no __metadata__ in the header"));
        let fixture = Fixture { name: name.to_string(), bytes, meta };
        assert_eq!(fixture.meta_str("magic"), FIXTURE_MAGIC, "{name}: wrong magic");
        assert_eq!(fixture.meta_str("version"), FIXTURE_VERSION, "{name}: unsupported fixture version");
        fixture
    }

    /// A metadata value that must be present.
    fn meta_str(&self, key: &str) -> &str {
        self.meta.get(key).unwrap_or_else(|| panic!("{}: metadata key '{key}' missing", self.name))
    }

    /// A metadata value parsed as a count.
    fn meta_usize(&self, key: &str) -> usize {
        let value = self.meta_str(key);
        value.parse().unwrap_or_else(|e| panic!("{}: metadata {key}='{value}' is not a count: {e}", self.name))
    }

    /// A metadata value that is `"true"` or `"false"`.
    fn meta_bool(&self, key: &str) -> bool {
        match self.meta_str(key) {
            "true" => true,
            "false" => false,
            other => panic!("{}: metadata {key}='{other}' is not true/false", self.name),
        }
    }

    /// The RNN configuration the fixture was made with (no dropout).
    fn config(&self) -> RnnConfig {
        let kind = ModelKind::parse(self.meta_str("kind")).unwrap_or_else(|e| panic!("{}: metadata kind: {e}", self.name));
        RnnConfig {
            kind,
            input: self.meta_usize("input"),
            hidden: self.meta_usize("hidden"),
            layers: self.meta_usize("layers"),
            bidirectional: self.meta_bool("bidirectional"),
            dropout: 0.0,
            bias: self.meta_bool("bias"),
        }
    }

    /// Batch size B and sequence length T of `x`.
    fn batch_and_time(&self) -> (usize, usize) {
        (self.meta_usize("batch"), self.meta_usize("time"))
    }

    /// PyTorch's parameter names, in PyTorch's order (`named_parameters()`).
    fn param_names(&self) -> Vec<String> {
        self.meta_str("params").split(',').map(str::to_string).collect()
    }

    /// Whether the fixture holds a tensor called `name`.
    fn has(&self, name: &str) -> bool {
        self.tensors().names().iter().any(|n| *n == name)
    }

    /// The parsed safetensors view of the file.
    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}: corrupt safetensors: {e:?}", self.name))
    }

    /// The float32 tensor `name`, decoded from little-endian bytes.
    fn tensor(&self, name: &str) -> Tensor {
        let tensors = self.tensors();
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{}: no tensor '{name}': {e:?}", self.name));
        assert_eq!(view.dtype(), Dtype::F32, "{}: tensor '{name}' is not F32", self.name);
        let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let shape = view.shape().to_vec();
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{}: tensor '{name}' size", self.name);
        Tensor { shape, values }
    }
}

/// An `Rnn` built from the fixture's config with every parameter loaded from the fixture by name.
fn rnn_from_fixture(fixture: &Fixture) -> Rnn {
    let mut rnn = Rnn::new(&fixture.config(), 0).unwrap_or_else(|e| panic!("{}: Rnn::new: {e}", fixture.name));
    for param in rnn.params_mut() {
        let tensor = fixture.tensor(&param.name);
        param.load(&tensor.shape, &tensor.values).unwrap_or_else(|e| panic!("{}: loading '{}': {e}", fixture.name, param.name));
    }
    rnn
}

/// The worst element of one comparison.
struct Worst {
    /// max over elements of |got - want| / max(1, |want|).
    error: f32,
    /// Flat index of that element.
    index: usize,
    got: f32,
    want: f32,
}

/// Compares `got` with the fixture tensor `want`; returns the worst element, or a message if the lengths differ.
fn worst_error(got: &[f32], want: &Tensor) -> Result<Worst, String> {
    if got.len() != want.values.len() {
        return Err(format!("length {} but the fixture's shape {:?} has {}", got.len(), want.shape, want.values.len()));
    }
    let mut worst = Worst { error: 0.0, index: 0, got: 0.0, want: 0.0 };
    for (index, (&g, &w)) in got.iter().zip(&want.values).enumerate() {
        let error = (g - w).abs() / w.abs().max(1.0);
        // A NaN difference counts as the worst possible error.
        if error.is_nan() || error > worst.error {
            worst = Worst { error, index, got: g, want: w };
            if error.is_nan() {
                break;
            }
        }
    }
    Ok(worst)
}

/// Collects per-tensor comparisons of one fixture and panics with all of them if any tensor is out of tolerance.
struct Report {
    fixture: String,
    /// One line per compared tensor, `(tensor name, line)`.
    lines: Vec<(String, String)>,
    failed: usize,
}

impl Report {
    /// An empty report for `fixture`.
    fn new(fixture: &Fixture) -> Report {
        Report { fixture: fixture.name.clone(), lines: Vec::new(), failed: 0 }
    }

    /// Compares our `got` with the fixture's tensor `name` and records the worst error.
    fn check(&mut self, fixture: &Fixture, name: &str, got: &[f32]) {
        let want = fixture.tensor(name);
        let (ok, line) = match worst_error(got, &want) {
            Ok(w) => (w.error <= RTOL, format!("worst error {:.3e} at flat index {} of {:?} (got {}, want {})", w.error, w.index, want.shape, w.got, w.want)),
            Err(msg) => (false, msg),
        };
        if !ok {
            self.failed += 1;
        }
        self.lines.push((name.to_string(), format!("{} {line}", if ok { "ok  " } else { "FAIL" })));
    }

    /// Prints every line (visible with `--nocapture`) and panics if any tensor failed.
    fn finish(self) {
        let text: String = self.lines.iter().map(|(name, line)| format!("\n  {name:28} {line}")).collect();
        println!("{}:{text}", self.fixture);
        assert!(self.failed == 0, "{}: {} tensor(s) differ from PyTorch by more than {RTOL:e} * max(1, |want|):{text}", self.fixture, self.failed);
    }
}

#[test]
fn every_fixture_file_is_tested() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("rnn_") && name.ends_with(".safetensors"))
        .collect();
    let listed: BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, listed, "fixture files on disk and FIXTURES differ");
}

#[test]
fn parameter_set_matches_pytorch() {
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let rnn = Rnn::new(&fixture.config(), 0).unwrap_or_else(|e| panic!("{name}: Rnn::new: {e}"));

        let ours: BTreeMap<&str, &[usize]> = rnn.params().into_iter().map(|p| (p.name.as_str(), &p.shape[..])).collect();
        let torch_names = fixture.param_names();
        let theirs: BTreeMap<&str, Vec<usize>> = torch_names.iter().map(|n| (n.as_str(), fixture.tensor(n).shape)).collect();

        let missing: Vec<&str> = theirs.keys().filter(|n| !ours.contains_key(*n)).copied().collect();
        let extra: Vec<&str> = ours.keys().filter(|n| !theirs.contains_key(*n)).copied().collect();
        assert!(missing.is_empty() && extra.is_empty(), "{name}: missing parameters {missing:?}, extra {extra:?}");
        for (param, shape) in &theirs {
            assert_eq!(ours[param], shape.as_slice(), "{name}: shape of '{param}'");
        }

        // Same order as PyTorch's named_parameters(), so optimizer state and checkpoints line up.
        let our_order: Vec<&str> = rnn.params().into_iter().map(|p| p.name.as_str()).collect();
        assert_eq!(our_order, torch_names, "{name}: parameter order differs from PyTorch");

        let numel: usize = theirs.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(rnn.num_params(), numel, "{name}: number of parameters");
    }
}

#[test]
fn forward_matches_pytorch() {
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let mut rnn = rnn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)

        let output = rnn.forward(&x.values, b, t, None).unwrap_or_else(|e| panic!("{name}: forward: {e}")); // (B, T, dirs*H)
        let state = rnn.final_state().unwrap_or_else(|e| panic!("{name}: final_state: {e}"));
        assert_eq!(state.batch, b, "{name}: final_state().batch");

        let mut report = Report::new(&fixture);
        report.check(&fixture, "output", &output);
        report.check(&fixture, "h_n", &state.h); // (L*dirs, B, H)
        if fixture.has("c_n") {
            report.check(&fixture, "c_n", &state.c); // (L*dirs, B, H)
        } else {
            assert!(state.c.is_empty(), "{name}: a GRU has no cell state, got {} values", state.c.len());
        }
        report.finish();
    }
}

#[test]
fn backward_matches_pytorch() {
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let mut rnn = rnn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)
        let loss_weights = fixture.tensor("R"); // (B, T, dirs*H) = dL/doutput

        rnn.zero_grad();
        rnn.forward(&x.values, b, t, None).unwrap_or_else(|e| panic!("{name}: forward: {e}"));
        let dx = rnn.backward(&loss_weights.values).unwrap_or_else(|e| panic!("{name}: backward: {e}")); // (B, T, D)

        let mut report = Report::new(&fixture);
        report.check(&fixture, "grad.x", &dx);
        for param in rnn.params() {
            report.check(&fixture, &format!("grad.{}", param.name), &param.grad);
        }
        report.finish();
    }
}

#[test]
fn backward_accumulates_parameter_gradients() {
    // Two forward/backward passes without zero_grad leave twice PyTorch's gradient in every Param.grad,
    // and the second pass's dx does not depend on the first.
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let mut rnn = rnn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)
        let loss_weights = fixture.tensor("R"); // (B, T, dirs*H)

        let mut dx = Vec::new(); // (B, T, D)
        for _pass in 0..2 {
            rnn.forward(&x.values, b, t, None).unwrap_or_else(|e| panic!("{name}: forward: {e}"));
            dx = rnn.backward(&loss_weights.values).unwrap_or_else(|e| panic!("{name}: backward: {e}"));
        }

        let mut report = Report::new(&fixture);
        report.check(&fixture, "grad.x", &dx);
        for param in rnn.params() {
            let halved: Vec<f32> = param.grad.iter().map(|g| 0.5 * g).collect();
            report.check(&fixture, &format!("grad.{}", param.name), &halved);
        }
        report.finish();
    }
}

#[test]
fn streaming_step_matches_pytorch() {
    // Step by step from a zero state, the unidirectional stacks reproduce PyTorch's output at every time step
    // and its final states (a bidirectional stack cannot stream: its reverse direction reads the future).
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        if fixture.config().bidirectional {
            continue;
        }
        let mut rnn = rnn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let (d, h) = (fixture.config().input, fixture.config().hidden);
        let x = fixture.tensor("x"); // (B, T, D)

        let mut state = rnn.zero_state(b);
        let mut x_t = vec![0.0f32; b * d]; // (B, D)
        let mut y_t = vec![0.0f32; b * h]; // (B, H)
        let mut output = vec![0.0f32; b * t * h]; // (B, T, H), reassembled from the steps
        for step in 0..t {
            for bi in 0..b {
                let src = (bi * t + step) * d;
                x_t[bi * d..(bi + 1) * d].copy_from_slice(&x.values[src..src + d]);
            }
            rnn.step(&x_t, &mut state, &mut y_t).unwrap_or_else(|e| panic!("{name}: step {step}: {e}"));
            for bi in 0..b {
                let dst = (bi * t + step) * h;
                output[dst..dst + h].copy_from_slice(&y_t[bi * h..(bi + 1) * h]);
            }
        }

        let mut report = Report::new(&fixture);
        report.check(&fixture, "output", &output);
        report.check(&fixture, "h_n", &state.h); // (L, B, H)
        if fixture.has("c_n") {
            report.check(&fixture, "c_n", &state.c); // (L, B, H)
        }
        report.finish();
    }
}
