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

use std::collections::{BTreeMap, BTreeSet};

use effseq::config::ModelKind;
use effseq::rnn::{Rnn, RnnConfig};
use effseq::Module;

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

mod common;

use common::*;

/// The RNN configuration a fixture was made with (no dropout).
fn rnn_config(fixture: &Fixture) -> RnnConfig {
    let kind = ModelKind::parse(fixture.meta_str("kind")).unwrap_or_else(|e| panic!("{}: metadata kind: {e}", fixture.name));
    RnnConfig {
        kind,
        input: fixture.meta_usize("input"),
        hidden: fixture.meta_usize("hidden"),
        layers: fixture.meta_usize("layers"),
        bidirectional: fixture.meta_bool("bidirectional"),
        dropout: 0.0,
        bias: fixture.meta_bool("bias"),
    }
}

/// Reads an RNN fixture.
fn load_fixture(name: &str) -> Fixture {
    Fixture::load(name, FIXTURE_MAGIC, FIXTURE_VERSION, "make_rnn_fixtures.py")
}

/// An `Rnn` built from the fixture's config with every parameter loaded from the fixture by name.
fn rnn_from_fixture(fixture: &Fixture) -> Rnn {
    let mut rnn = Rnn::new(&rnn_config(fixture), 0).unwrap_or_else(|e| panic!("{}: Rnn::new: {e}", fixture.name));
    load_params(&mut rnn, fixture);
    rnn
}

#[test]
fn every_fixture_file_is_tested() {
    let on_disk = fixture_files("rnn_");
    let listed: BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, listed, "fixture files on disk and FIXTURES differ");
}

#[test]
fn parameter_set_matches_pytorch() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let rnn = Rnn::new(&rnn_config(&fixture), 0).unwrap_or_else(|e| panic!("{name}: Rnn::new: {e}"));

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
        let fixture = load_fixture(name);
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
        let fixture = load_fixture(name);
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
        let fixture = load_fixture(name);
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
        let fixture = load_fixture(name);
        if rnn_config(&fixture).bidirectional {
            continue;
        }
        let mut rnn = rnn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let (d, h) = (rnn_config(&fixture).input, rnn_config(&fixture).hidden);
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

/// Padded-batch fixtures of `make_packed_rnn_fixtures.py`: `pack_padded_sequence` through the module, then
/// `pad_packed_sequence`; the same layout as the fixtures above plus `lengths (B)`.
const PACKED_FIXTURES: &[&str] = &[
    "packed_rnn_lstm_1layer_bidir.safetensors",
    "packed_rnn_lstm_2layer_bidir.safetensors",
    "packed_rnn_gru_1layer_bidir.safetensors",
    "packed_rnn_gru_2layer_bidir_nobias.safetensors",
    "packed_rnn_lstm_2layer.safetensors",
];

#[test]
fn every_packed_fixture_file_is_tested() {
    let listed: BTreeSet<String> = PACKED_FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(fixture_files("packed_rnn_"), listed, "fixture files on disk and PACKED_FIXTURES differ");
}

#[test]
fn padded_batch_matches_pack_padded_sequence() {
    // Outputs (zero at the padded steps), final states at each sequence's length, the input gradient and every
    // parameter gradient, in training mode; inference gives the same outputs and states.
    for &name in PACKED_FIXTURES {
        let fixture = Fixture::load(name, "effseq-packed-rnn-fixture", "1", "make_packed_rnn_fixtures.py");
        let mut rnn = rnn_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x"); // (B, T, D)
        let lengths: Vec<usize> = fixture.tensor("lengths").values.iter().map(|&n| n as usize).collect(); // (B)
        let loss_weights = fixture.tensor("R"); // (B, T, dirs*H)

        rnn.zero_grad();
        let output = rnn.forward_padded(&x.values, b, t, Some(&lengths), None).unwrap_or_else(|e| panic!("{name}: forward_padded: {e}"));
        let state = rnn.final_state().unwrap_or_else(|e| panic!("{name}: final_state: {e}"));
        let dx = rnn.backward(&loss_weights.values).unwrap_or_else(|e| panic!("{name}: backward: {e}"));
        let inferred = rnn.infer_padded(&x.values, b, t, Some(&lengths)).unwrap_or_else(|e| panic!("{name}: infer_padded: {e}"));
        let inferred_state = rnn.final_state().unwrap_or_else(|e| panic!("{name}: final_state after infer: {e}"));

        let mut report = Report::new(&fixture);
        report.check(&fixture, "output", &output);
        report.check(&fixture, "output", &inferred);
        report.check(&fixture, "h_n", &state.h);
        report.check(&fixture, "h_n", &inferred_state.h);
        if fixture.has("c_n") {
            report.check(&fixture, "c_n", &state.c);
            report.check(&fixture, "c_n", &inferred_state.c);
        }
        report.check(&fixture, "grad.x", &dx);
        for param in rnn.params() {
            report.check(&fixture, &format!("grad.{}", param.name), &param.grad);
        }
        report.finish();
    }
}
