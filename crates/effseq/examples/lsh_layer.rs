//! One Reformer LSH self-attention layer (`toqk`, `tov`, LSH attention, `to_out`) timed the way
//! `scripts/torch_lsh_bench.py` times reformer-pytorch's `LSHSelfAttention`: median and minimum of `--repeats`
//! runs after one warm-up, forward (inference) and forward+backward (`train`, `dy = 1`), D = 256, H = 4, bucket 64,
//! 4 hash rounds, causal, with the peak extra heap of each configuration (counting allocator). `--json FILE` also
//! writes every run as records in the shape of `effseq bench --json-file`, with the process's peak RSS (what
//! `scripts/results.sh lsh-torch` reads, one configuration per process).
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release --example lsh_layer -- --batch 1,8 --seq-lens 1024,4096 --repeats 3
//! ```

mod common;

use common::{input, list, number, write_json, Timing};
use effseq::attention::lsh::{LshConfig, LshSelfAttention};
use effseq::bench::alloc::CountingAllocator;
use effseq::rng::rng_for;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batches: Vec<usize> = list(&args, "--batch", "1,8").iter().map(|s| s.parse().expect("--batch")).collect();
    let seq_lens: Vec<usize> = list(&args, "--seq-lens", "1024,4096").iter().map(|s| s.parse().expect("--seq-lens")).collect();
    let modes = list(&args, "--modes", "forward,train");
    let repeats = number(&args, "--repeats", "5");
    let n_hashes = number(&args, "--n-hashes", "4");
    let base = LshConfig::new(number(&args, "--dim", "256"), number(&args, "--heads", "4"), !args.iter().any(|a| a == "--bidirectional"));
    let cfg = LshConfig { n_hashes, bucket_size: number(&args, "--bucket-size", &base.bucket_size.to_string()), ..base };
    let config = json!({ "dim": cfg.d_model, "heads": cfg.heads, "bucket_size": cfg.bucket_size, "n_hashes": cfg.n_hashes,
                         "causal": cfg.causal, "repeats": repeats, "warmup": 1 });
    let d = cfg.d_model;
    let mut attn = LshSelfAttention::new(cfg, "", &mut rng_for(0, 1)).expect("layer");
    println!("{:<8} {:>3} {:>6} {:>11} {:>10} {:>14}", "mode", "B", "T", "median ms", "min ms", "peak heap MiB");
    let mut records = Vec::new();
    for mode in &modes {
        let train = mode == "train";
        for &b in &batches {
            for &t in &seq_lens {
                let x = input(b * t * d); // (B, T, D)
                let dy = vec![1.0f32; b * t * d]; // (B, T, D)
                let timing = Timing::measure(repeats, |rep| {
                    let y = attn.forward(&x, b, t, None, rep as u64, None, train).expect("forward");
                    if train {
                        attn.backward(&dy).expect("backward");
                    }
                    std::hint::black_box(y);
                });
                println!("{mode:<8} {b:>3} {t:>6} {}", timing.columns());
                records.push(timing.record("lsh", mode, b, t, d));
            }
        }
    }
    write_json(&args, config, records);
}
