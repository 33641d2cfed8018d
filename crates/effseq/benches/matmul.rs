//! Matrix-product backends on the shapes effseq's models produce, to choose per shape (see `linalg.rs`).
//! Prints GFLOP/s so the fraction of the machine's peak (about 78 GFLOP/s f32 per Zen3 core) is visible.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use effseq::linalg::{matmul, packed_matmul_acc, set_backend, Backend, PackedPanels, Trans};

fn data(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect()
}

fn gemm_shapes(c: &mut Criterion) {
    // (name, m, n, k, ta, tb): the LSTM's hoisted input projection (T*B, 4H, D) and its backward products.
    let shapes = [
        ("square_1024", 1024, 1024, 1024, Trans::N, Trans::N),
        ("skinny_64x1024x4096", 64, 1024, 4096, Trans::N, Trans::N),
        ("lstm_input_proj_8192x1024x256", 8192, 1024, 256, Trans::N, Trans::T),
        ("lstm_dw_1024x256x8192", 1024, 256, 8192, Trans::T, Trans::N),
        ("lstm_dx_8192x256x1024", 8192, 256, 1024, Trans::N, Trans::N),
    ];
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    for (name, m, n, k, ta, tb) in shapes {
        let a = data(m * k);
        let b = data(k * n);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64)); // FLOPs: read "elem/s" as FLOP/s
        for (bname, backend) in [("matrixmultiply", Backend::MatrixMultiply), ("gemm", Backend::Gemm)] {
            g.bench_with_input(BenchmarkId::new(bname, name), &(), |bench, _| {
                set_backend(backend);
                bench.iter(|| matmul(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut out));
                set_backend(Backend::Auto);
            });
        }
    }
    g.finish();

    // The recurrent product of one RNN step: (B, H) x (H, 4H).
    let mut g = c.benchmark_group("recurrent_step");
    for (rows, k, n) in [(1usize, 256usize, 1024usize), (8, 256, 1024)] {
        let x = data(rows * k);
        let w = data(k * n);
        let mut out = vec![0.0f32; rows * n];
        g.throughput(Throughput::Elements((2 * rows * n * k) as u64));
        let packed = PackedPanels::from_rows(&w, k, n);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        g.bench_with_input(BenchmarkId::new("packed_1thread", format!("{rows}x{n}x{k}")), &(), |bench, _| {
            one.install(|| bench.iter(|| packed_matmul_acc(rows, &x, k, &packed, &mut out, n)))
        });
        g.bench_with_input(BenchmarkId::new("packed_pool", format!("{rows}x{n}x{k}")), &(), |bench, _| {
            bench.iter(|| packed_matmul_acc(rows, &x, k, &packed, &mut out, n))
        });
        g.bench_with_input(BenchmarkId::new("matrixmultiply", format!("{rows}x{n}x{k}")), &(), |bench, _| {
            set_backend(Backend::MatrixMultiply);
            bench.iter(|| matmul(rows, n, k, 1.0, &x, Trans::N, &w, Trans::N, 1.0, &mut out));
            set_backend(Backend::Auto);
        });
    }
    g.finish();
}

criterion_group!(benches, gemm_shapes);
criterion_main!(benches);
