//! Criterion benchmarks of the fused LSTM/GRU kernels: one layer, D = H = 256, B = 8, T = 1024 forward and
//! forward+backward (the shape of the PyTorch comparison in the README), and one streaming step at B = 1; and a
//! bidirectional LSTM side by side without lengths, with lengths that are all T (the unpadded path) and with
//! lengths T/2..T (reversed valid prefixes), to measure what padded batches cost.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use effseq::config::ModelKind;
use effseq::rnn::{Rnn, RnnConfig};

fn rnn_kernels(c: &mut Criterion) {
    let (b, t, d) = (8usize, 1024usize, 256usize);
    let x: Vec<f32> = (0..b * t * d).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect(); // (B, T, D)
    let dy = vec![1.0f32; b * t * d]; // (B, T, H)
    for kind in [ModelKind::Lstm, ModelKind::Gru] {
        let cfg = RnnConfig { kind, input: d, hidden: d, layers: 1, bidirectional: false, dropout: 0.0, bias: true };
        let mut rnn = Rnn::new(&cfg, 0).unwrap();
        let mut g = c.benchmark_group(format!("{}_b{b}_t{t}_d{d}", kind.name()));
        g.sample_size(10);
        g.throughput(Throughput::Elements((b * t) as u64));
        g.bench_function("forward", |bench| bench.iter(|| rnn.infer(&x, b, t).unwrap()));
        g.bench_function("forward_backward", |bench| {
            bench.iter(|| {
                rnn.forward(&x, b, t, None).unwrap();
                rnn.backward(&dy).unwrap()
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("{}_step_b1_d{d}", kind.name()));
        let mut state = rnn.zero_state(1);
        let x_t = vec![0.1f32; d];
        let mut y_t = vec![0.0f32; d];
        g.throughput(Throughput::Elements(1));
        g.bench_function("step", |bench| bench.iter(|| rnn.step(&x_t, &mut state, &mut y_t).unwrap()));
        g.finish();
    }
}

fn padded_bidirectional(c: &mut Criterion) {
    let (b, t, d) = (8usize, 1024usize, 256usize);
    let x: Vec<f32> = (0..b * t * d).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect(); // (B, T, D)
    let dy = vec![1.0f32; b * t * 2 * d]; // (B, T, 2H)
    let cfg = RnnConfig { kind: ModelKind::Lstm, input: d, hidden: d, layers: 1, bidirectional: true, dropout: 0.0, bias: true };
    let mut rnn = Rnn::new(&cfg, 0).unwrap();
    let full = vec![t; b];
    let padded: Vec<usize> = (0..b).map(|i| t / 2 + i * t / (2 * b)).collect();
    let mut g = c.benchmark_group(format!("lstm_bidirectional_b{b}_t{t}_d{d}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements((b * t) as u64));
    for (name, lengths) in [("no_lengths", None), ("full_lengths", Some(&full)), ("padded_lengths", Some(&padded))] {
        let lengths = lengths.map(|l| l.as_slice());
        g.bench_function(format!("forward_{name}"), |bench| bench.iter(|| rnn.infer_padded(&x, b, t, lengths).unwrap()));
        g.bench_function(format!("forward_backward_{name}"), |bench| {
            bench.iter(|| {
                rnn.forward_padded(&x, b, t, lengths, None).unwrap();
                rnn.backward(&dy).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, rnn_kernels, padded_bidirectional);
criterion_main!(benches);
