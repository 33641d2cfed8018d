//! Parity of effseq's Transformer backbone ([`effseq::transformer::Transformer`]) with PyTorch, for softmax,
//! linear and FAVOR+ attention, causal and bidirectional, against golden fixtures.
//!
//! The fixtures `tests/fixtures/attention_*.safetensors` are written by `tests/fixtures/make_attention_fixtures.py`:
//! PyTorch's `nn.TransformerEncoder` of pre-norm GELU `nn.TransformerEncoderLayer`s with a final LayerNorm, the
//! softmax case through `nn.MultiheadAttention` itself, the linear case with a plain cumulative-sum linear attention
//! and the Performer with performer-pytorch's own feature maps (`softmax_kernel` with eps = 0, where its
//! stabiliser placement and effseq's give the same attention) and a fixed projection matrix, plus two cases of
//! effseq's default feature floor (1e-6 after a stabiliser over the whole exponent) written out in torch (see the
//! script's docstring). Each holds the parameters under PyTorch's names, the input `x (B, T, D)` (sinusoidal positions are
//! added on both sides), the loss weights `R` of L = sum(output * R), and PyTorch's `output`, `grad.x` and
//! `grad.<param>`, computed in float64 from the float32 values.
//!
//! Tolerance: |got - want| <= 1e-5 * max(1, |want|) for outputs; gradients of a two-layer stack accumulate more
//! f32 rounding, so they are held to 2e-5 (reported per tensor).

use std::collections::BTreeSet;

use effseq::attention::{FeatureKernel, Mechanism};
use effseq::config::Positional;
use effseq::transformer::{Transformer, TransformerConfig};
use effseq::Module;

mod common;

use common::*;

const FIXTURES: &[&str] = &[
    "attention_softmax_causal.safetensors",
    "attention_softmax_bidirectional.safetensors",
    "attention_linear_causal.safetensors",
    "attention_linear_bidirectional.safetensors",
    "attention_performer_causal.safetensors",
    "attention_performer_bidirectional.safetensors",
    "attention_performer_relu_causal.safetensors",
    "attention_performer_floor_causal.safetensors",
    "attention_performer_floor_bidirectional.safetensors",
];

const FIXTURE_MAGIC: &str = "effseq-attention-fixture";
const FIXTURE_VERSION: &str = "2";

fn load_fixture(name: &str) -> Fixture {
    Fixture::load(name, FIXTURE_MAGIC, FIXTURE_VERSION, "make_attention_fixtures.py")
}

/// The Transformer a fixture describes, with every parameter and buffer loaded by name.
fn transformer_from_fixture(fixture: &Fixture) -> Transformer {
    let d = fixture.meta_usize("d_model");
    let mechanism = match fixture.meta_str("mechanism") {
        "softmax" => Mechanism::Softmax,
        "linear" => Mechanism::Linear,
        "performer" => Mechanism::Performer {
            features: fixture.meta_usize("features"),
            kernel: if fixture.meta_str("kernel") == "relu" {
                FeatureKernel::Relu
            } else {
                let floor = fixture.meta_str("feature_floor");
                FeatureKernel::Softmax { floor: floor.parse().unwrap_or_else(|e| panic!("{}: feature_floor {floor}: {e}", fixture.name)) }
            },
        },
        other => panic!("{}: unknown mechanism {other}", fixture.name),
    };
    let cfg = TransformerConfig {
        input: d,
        d_model: d,
        layers: fixture.meta_usize("layers"),
        heads: fixture.meta_usize("heads"),
        d_ff: fixture.meta_usize("d_ff"),
        dropout: 0.0,
        mechanism,
        causal: fixture.meta_bool("causal"),
        positional: Positional::Sinusoidal,
        max_len: 0,
        redraw_every: 0,
    };
    let mut model = Transformer::with_prefix(&cfg, 0, "").unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
    load_params(&mut model, fixture);
    for buffer in model.buffers_mut() {
        let t = fixture.tensor(&buffer.name);
        buffer.load(&t.shape, &t.values).unwrap();
    }
    model
}

#[test]
fn every_fixture_file_is_tested() {
    let listed: BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(fixture_files("attention_"), listed);
}

#[test]
fn parameter_names_and_shapes_match_pytorch() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let model = transformer_from_fixture(&fixture);
        let ours: BTreeSet<String> = model.params().iter().map(|p| p.name.clone()).collect();
        let theirs: BTreeSet<String> = fixture.param_names().into_iter().collect();
        assert_eq!(ours, theirs, "{name}: parameter names");
        for p in model.params() {
            assert_eq!(p.shape, fixture.tensor(&p.name).shape, "{name}: shape of {}", p.name);
        }
    }
}

#[test]
fn forward_and_gradients_match_pytorch() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        let mut model = transformer_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let x = fixture.tensor("x").values;
        let r = fixture.tensor("R").values;
        let y = model.run(&x, b, t, None, None, true).unwrap();
        let mut report = Report::new(&fixture);
        report.check(&fixture, "output", &y);
        let inferred = model.clone().run(&x, b, t, None, None, false).unwrap();
        assert_eq!(inferred, y, "{name}: inference differs from the training forward");
        model.zero_grad();
        let dx = model.backward(&r).unwrap();
        report.check(&fixture, "grad.x", &dx);
        for p in model.params() {
            report.check(&fixture, &format!("grad.{}", p.name), &p.grad);
        }
        report.finish();
    }
}

#[test]
fn streaming_steps_reproduce_pytorch_outputs() {
    for &name in FIXTURES {
        let fixture = load_fixture(name);
        if !fixture.meta_bool("causal") {
            continue;
        }
        let model = transformer_from_fixture(&fixture);
        let (b, t) = fixture.batch_and_time();
        let d = fixture.meta_usize("d_model");
        let x = fixture.tensor("x").values;
        let want = fixture.tensor("output").values;
        let mut state = model.zero_state(b);
        let mut y_t = vec![0.0f32; b * d];
        for ti in 0..t {
            let x_t: Vec<f32> = (0..b).flat_map(|bi| x[(bi * t + ti) * d..(bi * t + ti + 1) * d].to_vec()).collect();
            model.step(&x_t, &mut state, &mut y_t).unwrap();
            for bi in 0..b {
                for k in 0..d {
                    let (got, w) = (y_t[bi * d + k], want[(bi * t + ti) * d + k]);
                    assert!((got - w).abs() <= 2e-5 * w.abs().max(1.0), "{name}: step {ti}, sequence {bi}, feature {k}: {got} vs {w}");
                }
            }
        }
    }
}
