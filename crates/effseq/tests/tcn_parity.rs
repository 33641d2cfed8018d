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

use std::collections::{BTreeMap, BTreeSet};

use effseq::bench::alloc::{thread_calls, CountingAllocator};
use effseq::tcn::{Tcn, TcnConfig};
use effseq::Module;

/// Counts allocations, for `step_does_not_allocate`; forwards everything to the system allocator.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Every fixture the parity tests run on; `every_fixture_file_is_tested` keeps this list complete.
const FIXTURES: &[&str] = &["tcn_k3_2level_downsample.safetensors", "tcn_k2_3level.safetensors", "tcn_k1_2level.safetensors"];

/// The `magic` metadata value of a TCN fixture (`FIXTURE_MAGIC` in make_tcn_fixtures.py).
const FIXTURE_MAGIC: &str = "effseq-tcn-fixture";
/// The fixture layout these tests understand (`FIXTURE_VERSION` in make_tcn_fixtures.py).
const FIXTURE_VERSION: &str = "1";

mod common;

use common::*;

/// The TCN configuration a fixture was made with (no dropout).
fn tcn_config(fixture: &Fixture) -> TcnConfig {
    TcnConfig {
        input: fixture.meta_usize("input"),
        channels: fixture.meta_str("channels").split(',').map(|c| fixture.count("channels", c)).collect(),
        kernel_size: fixture.meta_usize("kernel_size"),
        dropout: 0.0,
    }
}

/// Reads a TCN fixture.
fn load_fixture(name: &str) -> Fixture {
    Fixture::load(name, FIXTURE_MAGIC, FIXTURE_VERSION, "make_tcn_fixtures.py")
}

/// A `Tcn` built from the fixture's config with every parameter loaded from the fixture by name.
fn tcn_from_fixture(fixture: &Fixture) -> Tcn {
    let mut tcn = Tcn::new(&tcn_config(fixture), 0).unwrap_or_else(|e| panic!("{}: Tcn::new: {e}", fixture.name));
    load_params(&mut tcn, fixture);
    tcn
}

#[test]
fn every_fixture_file_is_tested() {
    let on_disk = fixture_files("tcn_");
    let listed: BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, listed, "fixture files on disk and FIXTURES differ");
}

#[test]
fn parameter_set_and_receptive_field_match_pytorch() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let cfg = tcn_config(&fixture);
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
        let fixture = load_fixture(name);
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
        let fixture = load_fixture(name);
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
        let fixture = load_fixture(name);
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
        let fixture = load_fixture(name);
        let cfg = tcn_config(&fixture);
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
