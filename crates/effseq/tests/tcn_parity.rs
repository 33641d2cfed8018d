//! Parity of [`effseq::tcn::Tcn`] with locuslab's PyTorch `TemporalConvNet`, against golden fixtures, and the
//! streaming step's allocation-freedom.
//!
//! The fixtures in `tests/fixtures/tcn_*.safetensors` are written by `tests/fixtures/make_tcn_fixtures.py`
//! (torch is needed only to regenerate them, never to run these tests). Each holds the network's parameters under
//! their PyTorch names (`network.{i}.conv1.weight_g`, ...), a channels-last input `x` (B, T, D), the loss weights
//! `R` (B, T, C_last) of L = sum(output * R), and PyTorch's `output` (B, T, C_last), `grad.x` (B, T, D) and
//! `grad.<param>` for every parameter. The reference values were computed in float64 from the stored float32
//! parameters and inputs, so they are the exact answer rounded to float32.
//!
//! Tolerance: an element passes when |got - want| <= 1e-5 * max(1, |want|) (absolute below 1, relative above),
//! as for the RNN fixtures.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use effseq::bench::alloc::{thread_calls, CountingAllocator};
use effseq::tcn::{Tcn, TcnConfig};
use effseq::Module;
use safetensors::{Dtype, SafeTensors};

/// Counts allocations, for `step_does_not_allocate`; forwards everything to the system allocator.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Every fixture the parity tests run on; `every_fixture_file_is_tested` keeps this list complete.
const FIXTURES: &[&str] = &["tcn_k3_2level_downsample.safetensors", "tcn_k2_3level.safetensors", "tcn_k1_2level.safetensors"];

/// The `magic` metadata value of a TCN fixture (`FIXTURE_MAGIC` in make_tcn_fixtures.py).
const FIXTURE_MAGIC: &str = "effseq-tcn-fixture";
/// The fixture layout these tests understand (`FIXTURE_VERSION` in make_tcn_fixtures.py).
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

/// A fixture file read into memory: its bytes and its string metadata.
struct Fixture {
    /// File name, for messages.
    name: String,
    /// The whole safetensors file.
    bytes: Vec<u8>,
    /// The safetensors `__metadata__` map (magic, version, sizes, torch version, ...).
    meta: HashMap<String, String>,
}

impl Fixture {
    /// Reads `tests/fixtures/<name>` and checks its magic and version.
    fn load(name: &str) -> Fixture {
        let path = fixtures_dir().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e} (regenerate with make_tcn_fixtures.py)", path.display()));
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

    /// Parses a count.
    fn count(&self, key: &str, value: &str) -> usize {
        value.parse().unwrap_or_else(|e| panic!("{}: metadata {key}='{value}' is not a count: {e}", self.name))
    }

    /// A metadata value parsed as a count.
    fn meta_usize(&self, key: &str) -> usize {
        self.count(key, self.meta_str(key))
    }

    /// The TCN configuration the fixture was made with (no dropout).
    fn config(&self) -> TcnConfig {
        TcnConfig {
            input: self.meta_usize("input"),
            channels: self.meta_str("channels").split(',').map(|c| self.count("channels", c)).collect(),
            kernel_size: self.meta_usize("kernel_size"),
            dropout: 0.0,
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

/// A `Tcn` built from the fixture's config with every parameter loaded from the fixture by name.
fn tcn_from_fixture(fixture: &Fixture) -> Tcn {
    let mut tcn = Tcn::new(&fixture.config(), 0).unwrap_or_else(|e| panic!("{}: Tcn::new: {e}", fixture.name));
    for param in tcn.params_mut() {
        let tensor = fixture.tensor(&param.name);
        param.load(&tensor.shape, &tensor.values).unwrap_or_else(|e| panic!("{}: loading '{}': {e}", fixture.name, param.name));
    }
    tcn
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
        let text: String = self.lines.iter().map(|(name, line)| format!("\n  {name:36} {line}")).collect();
        println!("{}:{text}", self.fixture);
        assert!(self.failed == 0, "{}: {} tensor(s) differ from PyTorch by more than {RTOL:e} * max(1, |want|):{text}", self.fixture, self.failed);
    }
}

#[test]
fn every_fixture_file_is_tested() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tcn_") && name.ends_with(".safetensors"))
        .collect();
    let listed: BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, listed, "fixture files on disk and FIXTURES differ");
}

#[test]
fn parameter_set_and_receptive_field_match_pytorch() {
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let cfg = fixture.config();
        assert_eq!(cfg.receptive_field(), fixture.meta_usize("receptive_field"), "{name}: receptive field");
        let tcn = Tcn::new(&cfg, 0).unwrap_or_else(|e| panic!("{name}: Tcn::new: {e}"));

        let ours: BTreeMap<&str, &[usize]> = tcn.params().into_iter().map(|p| (p.name.as_str(), &p.shape[..])).collect();
        let torch_names = fixture.param_names();
        let theirs: BTreeMap<&str, Vec<usize>> = torch_names.iter().map(|n| (n.as_str(), fixture.tensor(n).shape)).collect();

        let missing: Vec<&str> = theirs.keys().filter(|n| !ours.contains_key(*n)).copied().collect();
        let extra: Vec<&str> = ours.keys().filter(|n| !theirs.contains_key(*n)).copied().collect();
        assert!(missing.is_empty() && extra.is_empty(), "{name}: missing parameters {missing:?}, extra {extra:?}");
        for (param, shape) in &theirs {
            assert_eq!(ours[param], shape.as_slice(), "{name}: shape of '{param}'");
        }

        // Same order as PyTorch's named_parameters(), so optimizer state and checkpoints line up.
        let our_order: Vec<&str> = tcn.params().into_iter().map(|p| p.name.as_str()).collect();
        assert_eq!(our_order, torch_names, "{name}: parameter order differs from PyTorch");

        let numel: usize = theirs.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(tcn.num_params(), numel, "{name}: number of parameters");
    }
}

#[test]
fn forward_matches_pytorch() {
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let mut tcn = tcn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)

        let output = tcn.forward(&x.values, b, t, None).unwrap_or_else(|e| panic!("{name}: forward: {e}")); // (B, T, C_last)
        let inferred = tcn.infer(&x.values, b, t).unwrap_or_else(|e| panic!("{name}: infer: {e}")); // (B, T, C_last)

        let mut report = Report::new(&fixture);
        report.check(&fixture, "output", &output);
        report.finish();
        assert_eq!(output, inferred, "{name}: infer() differs from forward()");
    }
}

#[test]
fn backward_matches_pytorch() {
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let mut tcn = tcn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)
        let loss_weights = fixture.tensor("R"); // (B, T, C_last) = dL/doutput

        tcn.zero_grad();
        tcn.forward(&x.values, b, t, None).unwrap_or_else(|e| panic!("{name}: forward: {e}"));
        let dx = tcn.backward(&loss_weights.values).unwrap_or_else(|e| panic!("{name}: backward: {e}")); // (B, T, D)

        let mut report = Report::new(&fixture);
        report.check(&fixture, "grad.x", &dx);
        for param in tcn.params() {
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
        let mut tcn = tcn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)
        let loss_weights = fixture.tensor("R"); // (B, T, C_last)

        let mut dx = Vec::new(); // (B, T, D)
        for _pass in 0..2 {
            tcn.forward(&x.values, b, t, None).unwrap_or_else(|e| panic!("{name}: forward: {e}"));
            dx = tcn.backward(&loss_weights.values).unwrap_or_else(|e| panic!("{name}: backward: {e}"));
        }

        let mut report = Report::new(&fixture);
        report.check(&fixture, "grad.x", &dx);
        for param in tcn.params() {
            let halved: Vec<f32> = param.grad.iter().map(|g| 0.5 * g).collect();
            report.check(&fixture, &format!("grad.{}", param.name), &halved);
        }
        report.finish();
    }
}

#[test]
fn streaming_step_matches_pytorch() {
    // Step by step from the zero state, the network reproduces PyTorch's output at every time step.
    for &name in FIXTURES {
        let fixture = Fixture::load(name);
        let cfg = fixture.config();
        let mut tcn = tcn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let (d, c) = (cfg.input, cfg.output_dim());
        let x = fixture.tensor("x"); // (B, T, D)

        let mut state = tcn.zero_state(b);
        let mut x_t = vec![0.0f32; b * d]; // (B, D)
        let mut y_t = vec![0.0f32; b * c]; // (B, C_last)
        let mut output = vec![0.0f32; b * t * c]; // (B, T, C_last), reassembled from the steps
        for step in 0..t {
            for bi in 0..b {
                let src = (bi * t + step) * d;
                x_t[bi * d..(bi + 1) * d].copy_from_slice(&x.values[src..src + d]);
            }
            tcn.step(&x_t, &mut state, &mut y_t).unwrap_or_else(|e| panic!("{name}: step {step}: {e}"));
            for bi in 0..b {
                let dst = (bi * t + step) * c;
                output[dst..dst + c].copy_from_slice(&y_t[bi * c..(bi + 1) * c]);
            }
        }

        let mut report = Report::new(&fixture);
        report.check(&fixture, "output", &output);
        report.finish();
    }
}

#[test]
fn step_does_not_allocate() {
    // The benchmark's shape (C = 256, K = 3, 4 levels) at B = 1, and a small network with a downsample at B = 4.
    let cases = [
        (TcnConfig { input: 256, channels: vec![256; 4], kernel_size: 3, dropout: 0.0 }, 1),
        (TcnConfig { input: 3, channels: vec![8, 8, 5], kernel_size: 2, dropout: 0.1 }, 4),
    ];
    for (cfg, b) in cases {
        let mut tcn = Tcn::new(&cfg, 0).expect("valid config");
        let mut state = tcn.zero_state(b);
        let x = vec![0.5f32; b * cfg.input]; // (B, D)
        let mut y = vec![0.0f32; b * cfg.output_dim()]; // (B, C_last)
        tcn.step(&x, &mut state, &mut y).expect("step"); // the first step may pack weights
        let before = thread_calls();
        for _ in 0..3 * cfg.receptive_field() {
            tcn.step(&x, &mut state, &mut y).expect("step");
        }
        // Counted on this thread: the harness's own threads allocate at their leisure.
        assert_eq!(thread_calls() - before, 0, "{cfg:?} B={b}: step allocated");
    }
}
