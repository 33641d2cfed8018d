//! One Reformer LSH self-attention layer (`toqk`, `tov`, LSH attention, `to_out`) timed the way
//! `scripts/torch_lsh_bench.py` times reformer-pytorch's `LSHSelfAttention`: median and minimum of `--repeats`
//! runs after one warm-up, forward (inference) and forward+backward (`dy = 1`), D = 256, H = 4, bucket 64,
//! 4 hash rounds, causal, with the peak extra heap of each configuration (counting allocator).
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release --example lsh_layer -- --batch 1,8 --seq-lens 1024,4096 --repeats 3
//! ```

use std::time::Instant;

use effseq::attention::lsh::{LshConfig, LshSelfAttention};
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
    let batches: Vec<usize> = list(&args, "--batch", "1,8").iter().map(|s| s.parse().expect("--batch")).collect();
    let seq_lens: Vec<usize> = list(&args, "--seq-lens", "1024,4096").iter().map(|s| s.parse().expect("--seq-lens")).collect();
    let modes = list(&args, "--modes", "forward,train");
    let repeats: usize = list(&args, "--repeats", "5")[0].parse().expect("--repeats");
    let n_hashes: usize = list(&args, "--n-hashes", "4")[0].parse().expect("--n-hashes");
    let cfg = LshConfig { n_hashes, ..LshConfig::new(256, 4, !args.iter().any(|a| a == "--bidirectional")) };
    let d = cfg.d_model;
    let mut attn = LshSelfAttention::new(cfg, "", &mut rng_for(0, 1)).expect("layer");
    println!("{:<8} {:>3} {:>6} {:>11} {:>10} {:>14}", "mode", "B", "T", "median ms", "min ms", "peak heap MiB");
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
                    let y = attn.forward(&x, b, t, None, rep as u64, None, train).expect("forward");
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
                println!("{mode:<8} {b:>3} {t:>6} {:>11.2} {:>10.2} {:>14.0}", times[times.len() / 2], times[0], peak);
            }
        }
    }
}
