//! Criterion benchmarks of one self-attention layer (input projection, attention, output projection), D = 256,
//! H = 4 (Dh = 64), causal, for softmax (tiled), linear (elu+1, fused prefix kernel) and FAVOR+ (Performer, Dh ln Dh
//! = 266 features): forward (inference) and forward+backward at B = 1 and 8 over T = 1024 .. 16384 (65536 for the
//! linear two at B = 1) — the shapes of `scripts/torch_attention_bench.py` — and one streaming step at B = 1 after a
//! context of 4096 tokens. Names read `MECH/MODE/bB_tT`; run a subset with a filter, e.g.
//! `cargo bench --bench attention -- linear/forward`.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use effseq::attention::{favor, AttentionConfig, FeatureKernel, Mechanism, MultiHeadAttention};
use effseq::rng::rng_for;

const D: usize = 256;
const HEADS: usize = 4;

fn mechanisms() -> [(&'static str, Mechanism); 3] {
    let features = favor::default_features(D / HEADS);
    [("softmax", Mechanism::Softmax), ("linear", Mechanism::Linear), ("performer", Mechanism::Performer { features, kernel: FeatureKernel::SOFTMAX })]
}

fn layer(mechanism: Mechanism) -> MultiHeadAttention {
    let cfg = AttentionConfig { mechanism, d_model: D, heads: HEADS, causal: true };
    MultiHeadAttention::new(cfg, "", &mut rng_for(0, 1), 0, 0).unwrap()
}

fn attention_layer(c: &mut Criterion) {
    for (name, mechanism) in mechanisms() {
        let mut attn = layer(mechanism);
        for (mode, train) in [("forward", false), ("forward_backward", true)] {
            let mut g = c.benchmark_group(format!("{name}/{mode}"));
            g.sample_size(10);
            for b in [1usize, 8] {
                for t in [1024usize, 4096, 16384, 65536] {
                    // Softmax at 65536 is quadratic (minutes per run); B = 8 at 65536 needs > 10 GB of activations.
                    if t == 65536 && (name == "softmax" || b == 8) {
                        continue;
                    }
                    let x: Vec<f32> = (0..b * t * D).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect(); // (B, T, D)
                    let dy = vec![1.0f32; b * t * D]; // (B, T, D)
                    g.throughput(Throughput::Elements((b * t) as u64));
                    g.bench_function(BenchmarkId::from_parameter(format!("b{b}_t{t}")), |bench| {
                        bench.iter(|| {
                            let y = attn.forward(&x, b, t, None, train).unwrap();
                            if train {
                                attn.backward(&dy).unwrap();
                            }
                            y
                        })
                    });
                }
            }
            g.finish();
        }
        // One decoding step after 4096 tokens of context.
        let mut g = c.benchmark_group(format!("{name}/step"));
        let (mut state, mut scratch) = attn.zero_state(1); // state: (S, z) or the KV cache
        let x_t = vec![0.1f32; D]; // (B = 1, D)
        let mut y_t = vec![0.0f32; D]; // (B = 1, D)
        for _ in 0..4096 {
            attn.step(&x_t, &mut state, &mut scratch, &mut y_t).unwrap();
        }
        g.throughput(Throughput::Elements(1));
        // Every timed step starts from a copy of the 4096-token state (the copy is not timed), so a KV cache does not
        // keep growing over the iterations.
        g.bench_function("b1_context4096", |bench| {
            bench.iter_batched(|| state.clone(), |mut s| attn.step(&x_t, &mut s, &mut scratch, &mut y_t).unwrap(), BatchSize::LargeInput)
        });
        g.finish();
    }
}

criterion_group!(benches, attention_layer);
criterion_main!(benches);
