//! Matrix products. Every GEMM in effseq goes through [`matmul`], which picks a backend per shape.
//!
//! Backends (both well-kept crates): `matrixmultiply` (BLIS-style, own thread pool, AVX-512/AVX2 kernels
//! chosen at run time) and `gemm` (rayon-parallel). Measured on this project's 2-core machine with
//! `cargo bench -p effseq --bench matmul` (GFLOP/s, 2 threads, one sitting): square 1024³ 90 vs 71;
//! skinny 64×1024×4096 66 vs 69; the LSTM input projection 8192×1024×256 179 vs 144; its weight gradient
//! 1024×256×8192 153 vs 135; its input gradient 8192×256×1024 137 vs 131. `matrixmultiply` wins or ties
//! every shape the models produce, so [`Backend::Auto`] uses it; `gemm` stays selectable for comparison.
//!
//! The per-step recurrent products (a handful of rows) use [`packed_matmul_acc`] instead, which keeps the
//! weight packed once rather than re-packing it at every time step as a general GEMM must.

use std::sync::atomic::{AtomicU8, Ordering};

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Use the matrix as stored (row-major).
    N,
    /// Use its transpose.
    T,
}

/// Which library computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Choose per shape (the default).
    Auto,
    /// The `matrixmultiply` crate.
    MatrixMultiply,
    /// The `gemm` crate.
    Gemm,
}

static BACKEND: AtomicU8 = AtomicU8::new(0);

/// Forces a backend for every following product (used by the benchmarks).
pub fn set_backend(b: Backend) {
    BACKEND.store(
        match b {
            Backend::Auto => 0,
            Backend::MatrixMultiply => 1,
            Backend::Gemm => 2,
        },
        Ordering::Relaxed,
    );
}

fn backend() -> Backend {
    match BACKEND.load(Ordering::Relaxed) {
        1 => Backend::MatrixMultiply,
        2 => Backend::Gemm,
        _ => Backend::Auto,
    }
}

/// `c (m, n) = alpha * op(a) * op(b) + beta * c`, all row-major and contiguous.
///
/// `a` is stored `(m, k)` when `ta == N` and `(k, m)` when `ta == T`; likewise `b` is `(k, n)` or `(n, k)`.
/// With `beta == 0` the old contents of `c` are ignored (NaNs included).
#[allow(clippy::too_many_arguments)]
pub fn matmul(m: usize, n: usize, k: usize, alpha: f32, a: &[f32], ta: Trans, b: &[f32], tb: Trans, beta: f32, c: &mut [f32]) {
    assert!(a.len() >= m * k, "matmul: a has {} elements, needs {}", a.len(), m * k);
    assert!(b.len() >= k * n, "matmul: b has {} elements, needs {}", b.len(), k * n);
    assert!(c.len() >= m * n, "matmul: c has {} elements, needs {}", c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        scale(&mut c[..m * n], beta);
        return;
    }
    if m <= SMALL_ROWS {
        small_rows(m, n, k, alpha, a, ta, b, tb, beta, c);
        return;
    }
    // (row stride, column stride) of op(a) and op(b).
    let (rsa, csa) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (rsb, csb) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    let use_gemm = match backend() {
        Backend::Gemm => true,
        Backend::MatrixMultiply => false,
        // See the module docs: matrixmultiply is ahead on every measured shape.
        Backend::Auto => false,
    };
    if use_gemm {
        let par = if m * n * k >= 64 * 64 * 64 && rayon::current_num_threads() > 1 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        // SAFETY: the strides describe in-bounds row-major matrices (lengths asserted above), and `c`
        // does not alias `a` or `b` (it is a distinct &mut).
        unsafe {
            gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, beta != 0.0, a.as_ptr(), csa, rsa, b.as_ptr(), csb, rsb, beta, alpha, false, false, false, par);
        }
    } else {
        if beta == 0.0 {
            // matrixmultiply computes beta * c even for beta == 0 (NaN * 0 = NaN); clear first.
            c[..m * n].iter_mut().for_each(|v| *v = 0.0);
        }
        // SAFETY: as above.
        unsafe {
            matrixmultiply::sgemm(m, k, n, alpha, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1);
        }
    }
}

fn scale(c: &mut [f32], beta: f32) {
    if beta == 0.0 {
        c.iter_mut().for_each(|v| *v = 0.0);
    } else {
        c.iter_mut().for_each(|v| *v *= beta);
    }
}

/// Products with at most this many rows (one streaming step of a small batch) bypass the GEMM libraries: their
/// packing and thread hand-off cost far more than the arithmetic (measured: one Transformer step at B = 1, D = 256
/// took 1-10 ms through matrixmultiply, which spread the 1-row products over its thread pool).
const SMALL_ROWS: usize = 4;

/// `c = alpha op(a) op(b) + beta c` for a few rows: each output row is a sum of rows of `op(b)` (b not transposed)
/// or a set of dot products (b transposed), both contiguous and vectorisable.
#[allow(clippy::too_many_arguments)]
fn small_rows(m: usize, n: usize, k: usize, alpha: f32, a: &[f32], ta: Trans, b: &[f32], tb: Trans, beta: f32, c: &mut [f32]) {
    let a_at = |i: usize, p: usize| match ta {
        Trans::N => a[i * k + p],
        Trans::T => a[p * m + i],
    };
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        if beta == 0.0 {
            row.iter_mut().for_each(|v| *v = 0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|v| *v *= beta);
        }
        match tb {
            Trans::N => {
                for p in 0..k {
                    let s = alpha * a_at(i, p);
                    if s != 0.0 {
                        row.iter_mut().zip(&b[p * n..(p + 1) * n]).for_each(|(v, &w)| *v += s * w);
                    }
                }
            }
            Trans::T => {
                let a_row: Vec<f32>;
                let a_i: &[f32] = match ta {
                    Trans::N => &a[i * k..(i + 1) * k],
                    Trans::T => {
                        a_row = (0..k).map(|p| a[p * m + i]).collect();
                        &a_row
                    }
                };
                for (j, v) in row.iter_mut().enumerate() {
                    let b_j = &b[j * k..(j + 1) * k];
                    // Eight partial sums so the reduction vectorises.
                    let mut acc = [0.0f32; 8];
                    let chunks = k / 8;
                    for q in 0..chunks {
                        for l in 0..8 {
                            acc[l] += a_i[q * 8 + l] * b_j[q * 8 + l];
                        }
                    }
                    let mut sum: f32 = acc.iter().sum();
                    for p in chunks * 8..k {
                        sum += a_i[p] * b_j[p];
                    }
                    *v += alpha * sum;
                }
            }
        }
    }
}

/// Naive triple loop in f64, the oracle for tests.
#[allow(clippy::too_many_arguments)]
pub fn matmul_reference(m: usize, n: usize, k: usize, alpha: f32, a: &[f32], ta: Trans, b: &[f32], tb: Trans, beta: f32, c: &mut [f32]) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = if ta == Trans::N { a[i * k + p] } else { a[p * m + i] };
                let bv = if tb == Trans::N { b[p * n + j] } else { b[j * k + p] };
                s += av as f64 * bv as f64;
            }
            let old = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * n + j] as f64 };
            c[i * n + j] = (alpha as f64 * s + old) as f32;
        }
    }
}

/// Columns per panel of a [`PackedPanels`] matrix: two AVX registers.
pub const PANEL: usize = 16;

/// A `(K, N)` matrix stored as column panels for the small-row products of recurrent steps: panel `p`
/// holds columns `16p .. 16p+16` of every row, contiguously — `data[(p * K + k) * 16 + l] = W[k, 16p + l]`
/// — so the kernel streams each panel front to back (16 KiB for K = 256: it stays in L1 while the rows of
/// a batch reuse it). N is padded to a multiple of 16 with zeros.
#[derive(Clone, Debug, Default)]
pub struct PackedPanels {
    k: usize,
    n: usize,
    /// (ceil(N/16), K, 16)
    data: Vec<f32>,
}

impl PackedPanels {
    /// Packs `w (K, N)` (row-major).
    pub fn from_rows(w: &[f32], k: usize, n: usize) -> Self {
        let mut p = PackedPanels::default();
        p.set_rows(w, k, n);
        p
    }

    /// Packs the transpose of `w (N, K)` (row-major), i.e. the `(K, N)` matrix `w^T`.
    pub fn from_transposed(w: &[f32], n: usize, k: usize) -> Self {
        let mut p = PackedPanels::default();
        p.set_transposed(w, n, k);
        p
    }

    /// Re-packs from `w (K, N)` (row-major), reusing the buffer (weights change at every optimizer step).
    pub fn set_rows(&mut self, w: &[f32], k: usize, n: usize) {
        self.fill(k, n, |kk, j| w[kk * n + j]);
    }

    /// Re-packs from the transpose of `w (N, K)` (row-major), reusing the buffer.
    pub fn set_transposed(&mut self, w: &[f32], n: usize, k: usize) {
        self.fill(k, n, |kk, j| w[j * k + kk]);
    }

    /// Sets the packed `(K, N)` matrix to `value(k, n)`, padding the last panel with zeros.
    fn fill(&mut self, k: usize, n: usize, value: impl Fn(usize, usize) -> f32) {
        self.k = k;
        self.n = n;
        self.data.clear();
        self.data.resize(n.div_ceil(PANEL) * k * PANEL, 0.0);
        for j in 0..n {
            for kk in 0..k {
                self.data[((j / PANEL) * k + kk) * PANEL + j % PANEL] = value(kk, j);
            }
        }
    }

    /// K.
    pub fn rows(&self) -> usize {
        self.k
    }

    /// N.
    pub fn cols(&self) -> usize {
        self.n
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

/// `out (rows, N) += x (rows, K) · w (K, N)` for a handful of rows (a batch), with `w` packed in panels.
/// `x` has row stride `ldx`, `out` row stride `ldo`. The panels are split across the rayon pool when the
/// product is large enough to pay for the fork; every thread writes a disjoint set of columns.
pub fn packed_matmul_acc(rows: usize, x: &[f32], ldx: usize, w: &PackedPanels, out: &mut [f32], ldo: usize) {
    let (k, n) = (w.k, w.n);
    assert!(rows == 0 || x.len() >= (rows - 1) * ldx + k, "packed_matmul_acc: x too short");
    assert!(rows == 0 || out.len() >= (rows - 1) * ldo + n, "packed_matmul_acc: out too short");
    if rows == 0 || n == 0 {
        return;
    }
    let panels = w.panels();
    let threads = rayon::current_num_threads();
    // Below ~0.5 M multiply-adds one core finishes before a second one would have started.
    if threads < 2 || rows * k * n < (1 << 19) || panels < 2 {
        // SAFETY: bounds asserted above; `out` is exclusively borrowed.
        unsafe { packed_panels_acc(rows, x, ldx, w, 0..panels, out.as_mut_ptr(), ldo) };
        return;
    }
    let per = panels.div_ceil(threads);
    let out_ptr = SendPtr(out.as_mut_ptr());
    rayon::scope(|s| {
        for p0 in (0..panels).step_by(per) {
            let p1 = (p0 + per).min(panels);
            let out_ptr = &out_ptr;
            s.spawn(move |_| {
                // SAFETY: bounds asserted above; the panel ranges of different tasks cover disjoint
                // columns of `out`, which outlives the scope.
                unsafe { packed_panels_acc(rows, x, ldx, w, p0..p1, out_ptr.0, ldo) }
            });
        }
    });
}

/// A raw pointer that may cross threads; users guarantee that threads touch disjoint elements.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used for writes to disjoint index sets inside scoped threads (see the call sites).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// # Safety
/// `out` must be valid for writes at `r * ldo + j` for every `r < rows` and every column `j < w.n` of the
/// given panels, with no concurrent access to those elements; `x` must hold `rows` rows of `w.k` values.
pub(crate) unsafe fn packed_panels_acc(rows: usize, x: &[f32], ldx: usize, w: &PackedPanels, panels: std::ops::Range<usize>, out: *mut f32, ldo: usize) {
    let k = w.k;
    for p in panels {
        let panel = &w.data[p * k * PANEL..(p + 1) * k * PANEL]; // (K, 16)
        let c0 = p * PANEL;
        let width = PANEL.min(w.n - c0);
        let mut r = 0;
        while r < rows {
            let nr = (rows - r).min(4);
            let mut acc = [[0.0f32; PANEL]; 4];
            panel_kernel(nr, k, &x[r * ldx..], ldx, panel, &mut acc);
            for (q, a) in acc.iter().enumerate().take(nr) {
                let o = std::slice::from_raw_parts_mut(out.add((r + q) * ldo + c0), width);
                for (ov, av) in o.iter_mut().zip(a) {
                    *ov += av;
                }
            }
            r += nr;
        }
    }
}

/// `acc[q] = sum_k x[q * ldx + k] * panel[k]` for `q < nr <= 4`: the register-blocked micro-kernel
/// (4 rows × 16 columns = 8 AVX accumulators; per k: 2 panel loads, 4 broadcasts, 8 FMAs).
#[inline]
fn panel_kernel(nr: usize, k: usize, x: &[f32], ldx: usize, panel: &[f32], acc: &mut [[f32; PANEL]; 4]) {
    assert!((1..=4).contains(&nr) && x.len() >= (nr - 1) * ldx + k && panel.len() >= k * PANEL);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: the assert above bounds every read; the target features are enabled at compile time.
        unsafe { panel_kernel_avx2(nr, k, x.as_ptr(), ldx, panel.as_ptr(), acc) };
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    {
        for (q, a) in acc.iter_mut().enumerate().take(nr) {
            for kk in 0..k {
                let xv = x[q * ldx + kk];
                for l in 0..PANEL {
                    a[l] += xv * panel[kk * PANEL + l];
                }
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline]
unsafe fn panel_kernel_avx2(nr: usize, k: usize, x: *const f32, ldx: usize, panel: *const f32, acc: &mut [[f32; PANEL]; 4]) {
    use std::arch::x86_64::*;
    let mut c = [_mm256_setzero_ps(); 8];
    // Rows beyond `nr` read row 0 again (valid memory) and are discarded by the caller.
    let rp = [x, x.add(if nr > 1 { ldx } else { 0 }), x.add(if nr > 2 { 2 * ldx } else { 0 }), x.add(if nr > 3 { 3 * ldx } else { 0 })];
    for kk in 0..k {
        let w0 = _mm256_loadu_ps(panel.add(kk * PANEL));
        let w1 = _mm256_loadu_ps(panel.add(kk * PANEL + 8));
        let a0 = _mm256_broadcast_ss(&*rp[0].add(kk));
        c[0] = _mm256_fmadd_ps(a0, w0, c[0]);
        c[1] = _mm256_fmadd_ps(a0, w1, c[1]);
        let a1 = _mm256_broadcast_ss(&*rp[1].add(kk));
        c[2] = _mm256_fmadd_ps(a1, w0, c[2]);
        c[3] = _mm256_fmadd_ps(a1, w1, c[3]);
        let a2 = _mm256_broadcast_ss(&*rp[2].add(kk));
        c[4] = _mm256_fmadd_ps(a2, w0, c[4]);
        c[5] = _mm256_fmadd_ps(a2, w1, c[5]);
        let a3 = _mm256_broadcast_ss(&*rp[3].add(kk));
        c[6] = _mm256_fmadd_ps(a3, w0, c[6]);
        c[7] = _mm256_fmadd_ps(a3, w1, c[7]);
    }
    for q in 0..4 {
        _mm256_storeu_ps(acc[q].as_mut_ptr(), c[2 * q]);
        _mm256_storeu_ps(acc[q].as_mut_ptr().add(8), c[2 * q + 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transposes `src (rows, cols)` into `dst (cols, rows)`.
    fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
        assert_eq!(src.len(), rows * cols);
        assert_eq!(dst.len(), rows * cols);
        const BLK: usize = 32;
        for i0 in (0..rows).step_by(BLK) {
            for j0 in (0..cols).step_by(BLK) {
                for i in i0..(i0 + BLK).min(rows) {
                    for j in j0..(j0 + BLK).min(cols) {
                        dst[j * rows + i] = src[i * cols + j];
                    }
                }
            }
        }
    }

    fn check(m: usize, n: usize, k: usize, ta: Trans, tb: Trans, backend: Backend) {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
        let mut c: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32).collect();
        let mut want = c.clone();
        set_backend(backend);
        matmul(m, n, k, 0.5, &a, ta, &b, tb, 2.0, &mut c);
        set_backend(Backend::Auto);
        matmul_reference(m, n, k, 0.5, &a, ta, &b, tb, 2.0, &mut want);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y} ({m}x{n}x{k} {ta:?}{tb:?} {backend:?})");
        }
    }

    #[test]
    fn matmul_matches_reference_for_all_transposes_and_backends() {
        for backend in [Backend::MatrixMultiply, Backend::Gemm] {
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    check(7, 5, 3, ta, tb, backend);
                    check(33, 70, 65, ta, tb, backend);
                    // The few-row path (streaming steps): k not a multiple of 8, one and four rows.
                    check(1, 70, 65, ta, tb, backend);
                    check(4, 9, 19, ta, tb, backend);
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_output() {
        let a = vec![1.0f32; 4];
        let b = vec![1.0f32; 4];
        for backend in [Backend::MatrixMultiply, Backend::Gemm] {
            let mut c = vec![f32::NAN; 4];
            set_backend(backend);
            matmul(2, 2, 2, 1.0, &a, Trans::N, &b, Trans::N, 0.0, &mut c);
            set_backend(Backend::Auto);
            assert_eq!(c, vec![2.0; 4]);
        }
    }

    #[test]
    fn packed_matmul_matches_reference_serial_and_parallel() {
        for (rows, k, n) in [(1, 37, 53), (3, 37, 53), (4, 37, 16), (9, 37, 53), (5, 300, 530)] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 3 % 17) as f32 - 8.0) * 0.05).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 7 % 19) as f32 - 9.0) * 0.05).collect(); // (K, N)
            let mut wt = vec![0.0; k * n]; // (N, K)
            transpose(&w, k, n, &mut wt);
            let mut want = vec![1.0f32; rows * n];
            matmul_reference(rows, n, k, 1.0, &x, Trans::N, &w, Trans::N, 1.0, &mut want);
            for packed in [PackedPanels::from_rows(&w, k, n), PackedPanels::from_transposed(&wt, n, k)] {
                for threads in [1, 2] {
                    let mut out = vec![1.0f32; rows * n];
                    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                        packed_matmul_acc(rows, &x, k, &packed, &mut out, n);
                    });
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "{rows}x{k}x{n} threads {threads}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
