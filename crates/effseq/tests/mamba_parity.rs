//! Parity of [`effseq::mamba::Mamba`] with a plain-PyTorch copy of `mamba_ssm`'s Mamba stack (slow path, scan =
//! `selective_scan_ref`), against golden fixtures, and the streaming step's allocation-freedom.
//!
//! The fixtures `tests/fixtures/mamba_*.safetensors` are written by `tests/fixtures/make_mamba_fixtures.py` (torch is
//! needed only to regenerate them). Each holds the parameters under their PyTorch names, the input `x` (B, T, D), the
//! loss weights `R` (B, T, d_model) of L = sum(output * R), and PyTorch's `output`, `grad.x` and `grad.<param>` for
//! every parameter, computed in float64 from the stored float32 values.
//!
//! Tolerance: an element passes when |got − want| <= 1e-4 · max(1, |want|). The worst error of every tensor is
//! printed (run with `--nocapture`).

use std::collections::{BTreeMap, BTreeSet};

use effseq::bench::alloc::{thread_calls, CountingAllocator};
use effseq::mamba::{Mamba, MambaConfig};
use effseq::Module;

/// Counts allocations, for `step_does_not_allocate`; forwards everything to the system allocator.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Every fixture the parity tests run on; `every_fixture_file_is_tested` keeps this list complete.
const FIXTURES: &[&str] = &["mamba_1layer_encoder.safetensors", "mamba_2layer.safetensors"];

/// The `magic` metadata value of a Mamba fixture (`FIXTURE_MAGIC` in make_mamba_fixtures.py).
const FIXTURE_MAGIC: &str = "effseq-mamba-fixture";
/// The fixture layout these tests understand (`FIXTURE_VERSION` in make_mamba_fixtures.py).
const FIXTURE_VERSION: &str = "1";
/// |got − want| <= TOLERANCE · max(1, |want|).
const TOLERANCE: f32 = 1e-4;

mod common;

use common::*;

fn load_fixture(name: &str) -> Fixture {
    Fixture::load(name, FIXTURE_MAGIC, FIXTURE_VERSION, "make_mamba_fixtures.py")
}

/// The configuration a fixture was made with.
fn mamba_config(fixture: &Fixture) -> MambaConfig {
    MambaConfig {
        input: fixture.meta_usize("input"),
        d_model: fixture.meta_usize("d_model"),
        layers: fixture.meta_usize("layers"),
        d_state: fixture.meta_usize("d_state"),
        expand: fixture.meta_usize("expand"),
        d_conv: fixture.meta_usize("d_conv"),
        dt_rank: Some(fixture.meta_usize("dt_rank")),
    }
}

/// A `Mamba` built from the fixture's config with every parameter loaded from the fixture by name.
fn mamba_from_fixture(fixture: &Fixture) -> Mamba {
    let mut net = Mamba::new(&mamba_config(fixture), 0).unwrap_or_else(|e| panic!("{}: Mamba::new: {e}", fixture.name));
    load_params(&mut net, fixture);
    net
}

/// Per-tensor comparisons of one fixture at [`TOLERANCE`]; panics listing every tensor if any is out of tolerance.
struct Comparison {
    fixture: String,
    lines: Vec<String>,
    failed: usize,
}

impl Comparison {
    fn new(fixture: &Fixture) -> Comparison {
        Comparison { fixture: fixture.name.clone(), lines: Vec::new(), failed: 0 }
    }

    fn check(&mut self, fixture: &Fixture, name: &str, got: &[f32]) {
        let want = fixture.tensor(name);
        let (ok, line) = match worst_error(got, &want) {
            Ok(w) => (w.error <= TOLERANCE, format!("max error {:.2e} at [{}] of {:?} (got {}, want {})", w.error, w.index, want.shape, w.got, w.want)),
            Err(msg) => (false, msg),
        };
        if !ok {
            self.failed += 1;
        }
        self.lines.push(format!("{} {name:38} {line}", if ok { "ok  " } else { "FAIL" }));
    }

    fn finish(self) {
        let text: String = self.lines.iter().map(|l| format!("\n  {l}")).collect();
        println!("{}:{text}", self.fixture);
        assert!(self.failed == 0, "{}: {} tensor(s) differ from PyTorch by more than {TOLERANCE:e} * max(1, |want|):{text}", self.fixture, self.failed);
    }
}

#[test]
fn every_fixture_file_is_tested() {
    let listed: BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(fixture_files("mamba_"), listed, "fixture files on disk and FIXTURES differ");
}

#[test]
fn parameter_set_order_and_shapes_match_pytorch() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let net = Mamba::new(&mamba_config(&fixture), 0).unwrap();
        let ours: BTreeMap<&str, &[usize]> = net.params().into_iter().map(|p| (p.name.as_str(), &p.shape[..])).collect();
        let torch_names = fixture.param_names();
        let theirs: BTreeMap<&str, Vec<usize>> = torch_names.iter().map(|n| (n.as_str(), fixture.tensor(n).shape)).collect();
        let missing: Vec<&str> = theirs.keys().filter(|n| !ours.contains_key(*n)).copied().collect();
        let extra: Vec<&str> = ours.keys().filter(|n| !theirs.contains_key(*n)).copied().collect();
        assert!(missing.is_empty() && extra.is_empty(), "{name}: missing parameters {missing:?}, extra {extra:?}");
        for (param, shape) in &theirs {
            assert_eq!(ours[param], shape.as_slice(), "{name}: shape of '{param}'");
        }
        let our_order: Vec<&str> = net.params().into_iter().map(|p| p.name.as_str()).collect();
        assert_eq!(our_order, torch_names, "{name}: parameter order differs from PyTorch");
    }
}

#[test]
fn forward_and_infer_match_pytorch() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let mut net = mamba_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)
        let output = net.forward(&x.values, b, t, None).unwrap(); // (B, T, d_model)
        let inferred = net.infer(&x.values, b, t).unwrap(); // (B, T, d_model)
        let mut cmp = Comparison::new(&fixture);
        cmp.check(&fixture, "output", &output);
        cmp.finish();
        assert_eq!(output, inferred, "{name}: infer() differs from forward()");
    }
}

#[test]
fn backward_matches_pytorch_and_accumulates() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let mut net = mamba_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)
        let loss_weights = fixture.tensor("R"); // (B, T, d_model) = dL/doutput
        net.zero_grad();
        net.forward(&x.values, b, t, None).unwrap();
        let dx = net.backward(&loss_weights.values).unwrap(); // (B, T, D)
        let mut cmp = Comparison::new(&fixture);
        cmp.check(&fixture, "grad.x", &dx);
        for param in net.params() {
            cmp.check(&fixture, &format!("grad.{}", param.name), &param.grad);
        }
        cmp.finish();

        // A second pass without zero_grad doubles every parameter gradient.
        net.forward(&x.values, b, t, None).unwrap();
        net.backward(&loss_weights.values).unwrap();
        let mut cmp = Comparison::new(&fixture);
        for param in net.params() {
            let halved: Vec<f32> = param.grad.iter().map(|g| 0.5 * g).collect();
            cmp.check(&fixture, &format!("grad.{}", param.name), &halved);
        }
        cmp.finish();
    }
}

#[test]
fn streaming_step_matches_pytorch() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let cfg = mamba_config(&fixture);
        let mut net = mamba_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let (d, c) = (cfg.input, cfg.d_model);
        let x = fixture.tensor("x"); // (B, T, D)
        let mut state = net.zero_state(b);
        let mut x_t = vec![0.0f32; b * d]; // (B, D)
        let mut y_t = vec![0.0f32; b * c]; // (B, d_model)
        let mut output = vec![0.0f32; b * t * c]; // (B, T, d_model), reassembled from the steps
        for step in 0..t {
            for bi in 0..b {
                x_t[bi * d..(bi + 1) * d].copy_from_slice(&x.values[(bi * t + step) * d..(bi * t + step + 1) * d]);
            }
            net.step(&x_t, &mut state, &mut y_t).unwrap();
            for bi in 0..b {
                output[(bi * t + step) * c..(bi * t + step + 1) * c].copy_from_slice(&y_t[bi * c..(bi + 1) * c]);
            }
        }
        let mut cmp = Comparison::new(&fixture);
        cmp.check(&fixture, "output", &output);
        cmp.finish();
    }
}

#[test]
fn step_does_not_allocate() {
    // The benchmark's shape (d_model 256, one layer) at B = 1, and a small two-layer network with an encoder at B = 4.
    let cases =
        [(MambaConfig::with_defaults(256, 256, 1), 1), (MambaConfig { input: 3, d_model: 8, layers: 2, d_state: 4, expand: 2, d_conv: 3, dt_rank: None }, 4)];
    for (cfg, b) in cases {
        let mut net = Mamba::new(&cfg, 0).expect("valid config");
        let mut state = net.zero_state(b);
        let x = vec![0.5f32; b * cfg.input]; // (B, D)
        let mut y = vec![0.0f32; b * cfg.d_model]; // (B, d_model)
        net.step(&x, &mut state, &mut y).expect("step"); // the first step packs the weights
        let before = thread_calls();
        for _ in 0..20 {
            net.step(&x, &mut state, &mut y).expect("step");
        }
        assert_eq!(thread_calls() - before, 0, "{cfg:?} B={b}: step allocated");
    }
}
