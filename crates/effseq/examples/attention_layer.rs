//! One self-attention layer (input projection, attention, output projection) timed the way
//! `scripts/torch_attention_bench.py` times PyTorch's, for the side-by-side table in the README: median and minimum
//! of `--repeats` runs after one warm-up, forward (inference) and forward+backward, causal, with the peak extra heap
//! of each configuration (counting allocator).
//!
//! ```sh
//! cargo run --release --example attention_layer -- --models softmax,linear,performer --batch 1,8 --seq-lens 1024,4096,16384
//! ```

use std::time::Instant;

use effseq::attention::{favor, AttentionConfig, FeatureKernel, Mechanism, MultiHeadAttention};
use effseq::bench::alloc::{self, CountingAllocator};
use effseq::rng::rng_for;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn list(args: &[String], flag: &str, default: &str) -> Vec<String> {
    let value = args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map_or(default, |s| s.as_str());
    value.split(',').map(str::to_string).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let models = list(&args, "--models", "softmax,linear,performer");
    let batches: Vec<usize> = list(&args, "--batch", "1,8").iter().map(|s| s.parse().expect("--batch")).collect();
    let seq_lens: Vec<usize> = list(&args, "--seq-lens", "1024,4096,16384").iter().map(|s| s.parse().expect("--seq-lens")).collect();
    let modes = list(&args, "--modes", "forward,train");
    let repeats: usize = list(&args, "--repeats", "5")[0].parse().expect("--repeats");
    let (d, heads) = (256usize, 4usize);
    println!("{:<10} {:<8} {:>3} {:>6} {:>11} {:>10} {:>14}", "model", "mode", "B", "T", "median ms", "min ms", "peak heap MiB");
    for model in &models {
        let mechanism = match model.as_str() {
            "softmax" => Mechanism::Softmax,
            "linear" => Mechanism::Linear,
            "performer" => Mechanism::Performer { features: favor::default_features(d / heads), kernel: FeatureKernel::SOFTMAX },
            other => panic!("unknown model {other}"),
        };
        let cfg = AttentionConfig { mechanism, d_model: d, heads, causal: !args.iter().any(|a| a == "--bidirectional") };
        let mut attn = MultiHeadAttention::new(cfg, "", &mut rng_for(0, 1), 0, 0).expect("layer");
        for mode in &modes {
            let train = mode == "train";
            for &b in &batches {
                for &t in &seq_lens {
                    let x: Vec<f32> = (0..b * t * d).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect(); // (B, T, D)
                    let dy = vec![1.0f32; b * t * d]; // (B, T, D)
                    let base = alloc::reset_peak();
                    let mut times = Vec::new();
                    for rep in 0..=repeats {
                        let start = Instant::now();
                        let y = attn.forward(&x, b, t, None, train).expect("forward");
                        if train {
                            attn.backward(&dy).expect("backward");
                        }
                        std::hint::black_box(y);
                        if rep > 0 {
                            times.push(start.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    let peak = (alloc::peak() - base) as f64 / (1u64 << 20) as f64;
                    times.sort_by(f64::total_cmp);
                    println!("{model:<10} {mode:<8} {b:>3} {t:>6} {:>11.2} {:>10.2} {:>14.0}", times[times.len() / 2], times[0], peak);
                }
            }
        }
    }
}
