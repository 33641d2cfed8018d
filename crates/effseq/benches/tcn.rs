//! Criterion benchmarks of the TCN: 4 levels of 256 channels, kernel 3 (receptive field 61), input D = 256,
//! B = 8, T = 1024 forward (inference) and forward+backward — the shape of `scripts/torch_tcn_bench.py` — and one
//! streaming step at B = 1.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use effseq::tcn::{Tcn, TcnConfig};

fn tcn_kernels(c: &mut Criterion) {
    let (b, t, d, levels, k) = (8usize, 1024usize, 256usize, 4usize, 3usize);
    let cfg = TcnConfig { input: d, channels: vec![d; levels], kernel_size: k, dropout: 0.0 };
    let x: Vec<f32> = (0..b * t * d).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect(); // (B, T, D)
    let dy = vec![1.0f32; b * t * d]; // (B, T, C_last)
    let mut tcn = Tcn::new(&cfg, 0).unwrap();

    let mut g = c.benchmark_group(format!("tcn_l{levels}_k{k}_b{b}_t{t}_c{d}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements((b * t) as u64));
    g.bench_function("forward", |bench| bench.iter(|| tcn.infer(&x, b, t).unwrap()));
    g.bench_function("forward_backward", |bench| {
        bench.iter(|| {
            tcn.forward(&x, b, t, None).unwrap();
            tcn.backward(&dy).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("tcn_l{levels}_k{k}_step_b1_c{d}"));
    let mut state = tcn.zero_state(1);
    let x_t = vec![0.1f32; d]; // (B = 1, D)
    let mut y_t = vec![0.0f32; d]; // (B = 1, C_last)
    g.throughput(Throughput::Elements(1));
    g.bench_function("step", |bench| bench.iter(|| tcn.step(&x_t, &mut state, &mut y_t).unwrap()));
    g.finish();
}

criterion_group!(benches, tcn_kernels);
criterion_main!(benches);
