//! Memory of one training step (forward + backward) of the Reformer stack, reversible or with stored activations,
//! at a given depth and sequence length: width `--dim` (256), 4 heads, d_ff = 4 x width, causal LSH attention with
//! buckets of 64 and `--n-hashes` rounds (2), or exact softmax attention with `--attention softmax`, batch 1.
//!
//! Prints the bytes the stack keeps for its backward ([`Reformer::saved_activation_bytes`]), the live heap those
//! buffers occupy after the forward (counting allocator), the peak heap of the step above the model's own
//! allocation, and the process peak RSS (`VmHWM`). One configuration per process, so that peak RSS means
//! something; `--sweep` runs every configuration of `--layers-list` in both modes, each in a child process.
//!
//! ```sh
//! cargo run --release --example reversible_memory -- --seq-len 1024 --layers 6 --mode reversible
//! cargo run --release --example reversible_memory -- --seq-len 1024 --sweep --layers-list 2,6,12
//! cargo run --release --example reversible_memory -- --seq-len 4096 --sweep --attention softmax --dim 128
//! ```

use std::process::Command;
use std::time::Instant;

use effseq::bench::alloc::{self, CountingAllocator};
use effseq::bench::process_peak_rss;
use effseq::config::Positional;
use effseq::reformer::{Reformer, ReformerConfig};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn arg<'a>(args: &'a [String], flag: &str, default: &'a str) -> &'a str {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map_or(default, String::as_str)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t: usize = arg(&args, "--seq-len", "1024").parse().expect("--seq-len");
    let ff_chunks: usize = arg(&args, "--ff-chunks", "8").parse().expect("--ff-chunks");
    let d: usize = arg(&args, "--dim", "256").parse().expect("--dim");
    let n_hashes: usize = arg(&args, "--n-hashes", "2").parse().expect("--n-hashes");
    let attention = arg(&args, "--attention", "lsh");
    if attention != "lsh" && attention != "softmax" {
        panic!("--attention must be lsh or softmax, got {attention}");
    }
    if args.iter().any(|a| a == "--sweep") {
        println!(
            "{:>6} {:>6} {:>10} {:>10} {:>12} {:>12} {:>14} {:>12} {:>8}",
            "T", "layers", "mode", "saved MiB", "kept MiB", "heap peak MiB", "model MiB", "VmHWM MiB", "step s"
        );
        let me = std::env::current_exe().expect("own path");
        for layers in arg(&args, "--layers-list", "2,6,12").split(',') {
            for mode in ["reversible", "plain"] {
                let out = Command::new(&me)
                    .args(["--seq-len", &t.to_string(), "--layers", layers, "--mode", mode, "--ff-chunks", &ff_chunks.to_string()])
                    .args(["--dim", &d.to_string(), "--n-hashes", &n_hashes.to_string(), "--attention", attention])
                    .output()
                    .expect("child run");
                print!("{}", String::from_utf8_lossy(&out.stdout));
                if !out.status.success() {
                    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
        return;
    }
    let layers: usize = arg(&args, "--layers", "6").parse().expect("--layers");
    let reversible = match arg(&args, "--mode", "reversible") {
        "reversible" => true,
        "plain" => false,
        other => panic!("--mode must be reversible or plain, got {other}"),
    };
    let b = 1usize;
    let cfg = ReformerConfig {
        input: d,
        d_model: d,
        layers,
        heads: 4,
        d_ff: 4 * d,
        dropout: 0.1,
        causal: true,
        positional: Positional::Sinusoidal,
        max_len: t,
        bucket_size: 64,
        n_hashes,
        ff_chunks,
        reversible,
    };
    let before_model = alloc::current();
    let mut model = if attention == "lsh" { Reformer::with_lsh(&cfg, 0, "") } else { Reformer::with_prefix(&cfg, 0, "") }.expect("model");
    let model_bytes = alloc::current() - before_model;
    let x: Vec<f32> = (0..b * t * d).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect(); // (B, T, D)
    let base = alloc::reset_peak();
    let start = Instant::now();
    let y = model.run(&x, b, t, None, 0, true).expect("forward"); // (B, T, D)
    let kept = alloc::current() - base - (y.len() * 4) as u64;
    let saved = model.saved_activation_bytes() as u64;
    let dx = model.backward(&y).expect("backward");
    let seconds = start.elapsed().as_secs_f64();
    let peak = alloc::peak() - base;
    std::hint::black_box(dx);
    let rss = process_peak_rss().unwrap_or(0);
    println!(
        "{:>6} {:>6} {:>10} {:>10.2} {:>12.2} {:>12.2} {:>14.2} {:>12.1} {:>8.2}",
        t,
        layers,
        if reversible { "reversible" } else { "plain" },
        mib(saved),
        mib(kept),
        mib(peak),
        mib(model_bytes),
        mib(rss),
        seconds
    );
}
