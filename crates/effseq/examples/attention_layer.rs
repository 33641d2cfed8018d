//! One self-attention layer (input projection, attention, output projection) timed the way
//! `scripts/torch_attention_bench.py` times PyTorch's, for the side-by-side table in the README: median and minimum
//! of `--repeats` runs after one warm-up, forward (inference) and forward+backward (`train`), causal, with the peak
//! extra heap of each configuration (counting allocator). `--json FILE` also writes every run as records in the
//! shape of `effseq bench --json-file` (what `scripts/results.sh attention-torch` reads).
//!
//! ```sh
//! cargo run --release --example attention_layer -- --models softmax,linear,performer --batch 1,8 --seq-lens 1024,4096,16384
//! ```

mod common;

use common::{input, list, number, write_json, Timing};
use effseq::attention::{favor, AttentionConfig, FeatureKernel, Mechanism, MultiHeadAttention};
use effseq::bench::alloc::CountingAllocator;
use effseq::rng::rng_for;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let models = list(&args, "--models", "softmax,linear,performer");
    let batches: Vec<usize> = list(&args, "--batch", "1,8").iter().map(|s| s.parse().expect("--batch")).collect();
    let seq_lens: Vec<usize> = list(&args, "--seq-lens", "1024,4096,16384").iter().map(|s| s.parse().expect("--seq-lens")).collect();
    let modes = list(&args, "--modes", "forward,train");
    let repeats = number(&args, "--repeats", "5");
    let d = number(&args, "--dim", "256");
    let heads = number(&args, "--heads", "4");
    let causal = !args.iter().any(|a| a == "--bidirectional");
    println!("{:<10} {:<8} {:>3} {:>6} {:>11} {:>10} {:>14}", "model", "mode", "B", "T", "median ms", "min ms", "peak heap MiB");
    let mut records = Vec::new();
    for model in &models {
        let mechanism = match model.as_str() {
            "softmax" => Mechanism::Softmax,
            "linear" => Mechanism::Linear,
            "performer" => Mechanism::Performer { features: favor::default_features(d / heads), kernel: FeatureKernel::SOFTMAX },
            other => panic!("unknown model {other}"),
        };
        let cfg = AttentionConfig { mechanism, d_model: d, heads, causal };
        let mut attn = MultiHeadAttention::new(cfg, "", &mut rng_for(0, 1), 0, 0).expect("layer");
        for mode in &modes {
            let train = mode == "train";
            for &b in &batches {
                for &t in &seq_lens {
                    let x = input(b * t * d); // (B, T, D)
                    let dy = vec![1.0f32; b * t * d]; // (B, T, D)
                    let timing = Timing::measure(repeats, |_| {
                        let y = attn.forward(&x, b, t, None, train).expect("forward");
                        if train {
                            attn.backward(&dy).expect("backward");
                        }
                        std::hint::black_box(y);
                    });
                    println!("{model:<10} {mode:<8} {b:>3} {t:>6} {}", timing.columns());
                    records.push(timing.record(model, mode, b, t, d));
                }
            }
        }
    }
    let config = json!({ "dim": d, "heads": heads, "causal": causal, "repeats": repeats, "warmup": 1 });
    write_json(&args, config, records);
}
