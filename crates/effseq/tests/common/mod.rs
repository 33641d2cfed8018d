//! Shared helpers of the PyTorch parity tests: reading the safetensors fixtures written by the scripts in
//! `tests/fixtures/`, loading their parameters by name, and comparing tensors with a per-tensor report.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use effseq::Module;
use safetensors::{Dtype, SafeTensors};

/// Relative tolerance: |got - want| <= RTOL * max(1, |want|).
pub const RTOL: f32 = 1e-5;

/// Directory holding the fixtures and the script that writes them.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// One float32 tensor read from a fixture: row-major `values` of `shape`.
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A fixture file read into memory: its bytes and its string metadata.
pub struct Fixture {
    /// File name, for messages.
    pub name: String,
    /// The whole safetensors file.
    pub bytes: Vec<u8>,
    /// The safetensors `__metadata__` map (magic, version, kind, sizes, torch version, ...).
    pub meta: HashMap<String, String>,
}

impl Fixture {
    /// Reads `tests/fixtures/<name>` and checks its `magic` and `version`; `script` is named if it is missing.
    pub fn load(name: &str, magic: &str, version: &str, script: &str) -> Fixture {
        let path = fixtures_dir().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e} (regenerate with {script})", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{name}: not a safetensors file: {e:?}"));
        let meta = header.metadata().clone().unwrap_or_else(|| panic!("{name}: no __metadata__ in the header"));
        let fixture = Fixture { name: name.to_string(), bytes, meta };
        assert_eq!(fixture.meta_str("magic"), magic, "{name}: wrong magic");
        assert_eq!(fixture.meta_str("version"), version, "{name}: unsupported fixture version");
        fixture
    }

    /// A metadata value that must be present.
    pub fn meta_str(&self, key: &str) -> &str {
        self.meta.get(key).unwrap_or_else(|| panic!("{}: metadata key '{key}' missing", self.name))
    }

    /// A metadata value parsed as a count.
    pub fn meta_usize(&self, key: &str) -> usize {
        self.count(key, self.meta_str(key))
    }

    /// `value` (from the metadata entry `key`) parsed as a count.
    pub fn count(&self, key: &str, value: &str) -> usize {
        value.parse().unwrap_or_else(|e| panic!("{}: metadata {key}='{value}' is not a count: {e}", self.name))
    }

    /// A metadata value that is `"true"` or `"false"`.
    pub fn meta_bool(&self, key: &str) -> bool {
        match self.meta_str(key) {
            "true" => true,
            "false" => false,
            other => panic!("{}: metadata {key}='{other}' is not true/false", self.name),
        }
    }

    /// Batch size B and sequence length T of `x`.
    pub fn batch_and_time(&self) -> (usize, usize) {
        (self.meta_usize("batch"), self.meta_usize("time"))
    }

    /// PyTorch's parameter names, in PyTorch's order (`named_parameters()`).
    pub fn param_names(&self) -> Vec<String> {
        self.meta_str("params").split(',').map(str::to_string).collect()
    }

    /// Whether the fixture holds a tensor called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors().names().iter().any(|n| *n == name)
    }

    /// The parsed safetensors view of the file.
    pub fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}: corrupt safetensors: {e:?}", self.name))
    }

    /// The float32 tensor `name`, decoded from little-endian bytes.
    pub fn tensor(&self, name: &str) -> Tensor {
        let tensors = self.tensors();
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{}: no tensor '{name}': {e:?}", self.name));
        assert_eq!(view.dtype(), Dtype::F32, "{}: tensor '{name}' is not F32", self.name);
        let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let shape = view.shape().to_vec();
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{}: tensor '{name}' size", self.name);
        Tensor { shape, values }
    }
}

/// The worst element of one comparison.
pub struct Worst {
    /// max over elements of |got - want| / max(1, |want|).
    pub error: f32,
    /// Flat index of that element.
    pub index: usize,
    pub got: f32,
    pub want: f32,
}

/// Compares `got` with the fixture tensor `want`; returns the worst element, or a message if the lengths differ.
pub fn worst_error(got: &[f32], want: &Tensor) -> Result<Worst, String> {
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
pub struct Report {
    pub fixture: String,
    /// One line per compared tensor, `(tensor name, line)`.
    pub lines: Vec<(String, String)>,
    pub failed: usize,
}

impl Report {
    /// An empty report for `fixture`.
    pub fn new(fixture: &Fixture) -> Report {
        Report { fixture: fixture.name.clone(), lines: Vec::new(), failed: 0 }
    }

    /// Compares our `got` with the fixture's tensor `name` and records the worst error.
    pub fn check(&mut self, fixture: &Fixture, name: &str, got: &[f32]) {
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
    pub fn finish(self) {
        let text: String = self.lines.iter().map(|(name, line)| format!("\n  {name:36} {line}")).collect();
        println!("{}:{text}", self.fixture);
        assert!(self.failed == 0, "{}: {} tensor(s) differ from PyTorch by more than {RTOL:e} * max(1, |want|):{text}", self.fixture, self.failed);
    }
}

/// The fixture files in `tests/fixtures` whose names start with `prefix` and end in `.safetensors`.
pub fn fixture_files(prefix: &str) -> BTreeSet<String> {
    std::fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix) && name.ends_with(".safetensors"))
        .collect()
}

/// Loads every parameter of `module` from the fixture tensor of the same name.
pub fn load_params(module: &mut dyn Module, fixture: &Fixture) {
    for param in module.params_mut() {
        let tensor = fixture.tensor(&param.name);
        param.load(&tensor.shape, &tensor.values).unwrap_or_else(|e| panic!("{}: loading '{}': {e}", fixture.name, param.name));
    }
}
