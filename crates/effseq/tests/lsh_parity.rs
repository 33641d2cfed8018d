//! Parity of [`effseq::attention::lsh::LshSelfAttention`] with reformer-pytorch's `LSHSelfAttention`
//! (`allow_duplicate_attention=False`), against golden fixtures.
//!
//! The fixtures `tests/fixtures/lsh_*.safetensors` are written by `tests/fixtures/make_lsh_fixtures.py`, which
//! runs reformer-pytorch with FIXED rotations (its per-forward `torch.randn` replaced by a stored tensor) and
//! lists the conventions matched. Each holds the four parameters under their PyTorch names, the input `x`
//! (B, T, D), the `rotations` (R, Dh, n_buckets/2), reformer-pytorch's `buckets` (B·H, R, T), the loss weights
//! `W` of L = sum(output · W), and PyTorch's `output`, `grad.x` and `grad.<param>`, computed in float64 from the
//! stored float32 values.
//!
//! Tolerance: |got − want| <= 1e-5 · max(1, |want|), as for the other fixtures.

mod common;

use common::*;
use effseq::attention::lsh::{hash_buckets, LshConfig, LshSelfAttention};
use effseq::rng::rng_for;
use effseq::Module;

const FIXTURES: &[&str] = &["lsh_causal_r2.safetensors", "lsh_bidirectional_r2.safetensors", "lsh_causal_r1.safetensors", "lsh_causal_r3_b8.safetensors"];
const FIXTURE_MAGIC: &str = "effseq-lsh-fixture";
const FIXTURE_VERSION: &str = "1";

#[test]
fn every_fixture_file_is_tested() {
    let listed: std::collections::BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(fixture_files("lsh_"), listed);
}

/// The layer of a fixture, parameters loaded by name.
fn layer_from_fixture(fixture: &Fixture) -> LshSelfAttention {
    let cfg = LshConfig {
        d_model: fixture.meta_usize("d_model"),
        heads: fixture.meta_usize("heads"),
        bucket_size: fixture.meta_usize("bucket_size"),
        n_hashes: fixture.meta_usize("n_hashes"),
        n_buckets: None,
        causal: fixture.meta_bool("causal"),
        // The fixtures include look-back pairs across hash rounds, which reformer-pytorch counts 0 times.
        torch_dup_counts: true,
    };
    let mut layer = LshSelfAttention::new(cfg, "", &mut rng_for(0, 0)).unwrap();
    load_params(&mut layer, fixture);
    layer
}

#[test]
fn buckets_outputs_and_gradients_match_reformer_pytorch() {
    for name in FIXTURES {
        let fixture = Fixture::load(name, FIXTURE_MAGIC, FIXTURE_VERSION, "make_lsh_fixtures.py");
        let (b, t) = fixture.batch_and_time();
        let mut layer = layer_from_fixture(&fixture);
        let cfg = *layer.config();
        let (d, h, dh, rounds) = (cfg.d_model, cfg.heads, cfg.head_dim(), cfg.n_hashes);
        let opts = cfg.options(t, rounds);
        assert_eq!(opts.n_buckets, fixture.meta_usize("n_buckets"), "{name}: automatic bucket count");
        let x = fixture.tensor("x").values;
        let rotations = fixture.tensor("rotations").values;

        // Buckets first: the hash of the projected qk, split into heads (B, H, T, Dh).
        let w_qk = fixture.tensor("toqk.weight").values;
        let mut qk = vec![0.0f32; b * h * t * dh];
        for bi in 0..b {
            for ti in 0..t {
                for o in 0..d {
                    let value: f32 = (0..d).map(|i| x[(bi * t + ti) * d + i] * w_qk[o * d + i]).sum();
                    qk[((bi * h + o / dh) * t + ti) * dh + o % dh] = value;
                }
            }
        }
        let buckets = hash_buckets(&qk, b * h, t, dh, &rotations, &opts).unwrap();
        let want: Vec<u32> = fixture.tensor("buckets").values.iter().map(|&v| v as u32).collect();
        assert_eq!(buckets, want, "{name}: buckets differ from reformer-pytorch's");

        layer.zero_grad();
        let y = layer.forward_with_rotations(&x, b, t, None, &rotations, rounds, true).unwrap();
        let dx = layer.backward(&fixture.tensor("W").values).unwrap();
        let mut report = Report::new(&fixture);
        report.check(&fixture, "output", &y);
        report.check(&fixture, "grad.x", &dx);
        for p in layer.params() {
            report.check(&fixture, &format!("grad.{}", p.name), &p.grad);
        }
        report.finish();
    }
}
