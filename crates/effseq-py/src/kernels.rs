//! The kernels on NumPy arrays: softmax (tiled), linear and FAVOR+ attention, LSH attention and the selective scan,
//! each a forward that returns its output and a [`KernelContext`], and a backward that takes the context and the
//! output gradient. Inputs are read in place (float32, C-contiguous), outputs are handed to NumPy without a copy, and
//! the library runs without the GIL.
//!
//! Layouts are effseq's (and `torch.nn.functional.scaled_dot_product_attention`'s): attention works head-major,
//! `q, k, v (B, H, T, Dh)`; the scan works time-major, `u, delta (B, T, Dc)` (effseq.torch offers `mamba_ssm`'s
//! channel-major signature on top).

use effseq::attention::lsh::{self, LshOptions};
use effseq::attention::{self, favor, AttentionConfig, FeatureKernel, Mechanism, Saved};
use effseq::mamba::scan::{self, ScanDims, ScanInputs};
use effseq::rng::{rng_for, streams};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{f32_in, f32_in_opt, f32_out, fmt_shape, lengths_arg, nonempty, u32_out, F32In};
use crate::{detached, error, ErrorKind};

/// What a kernel's backward needs from its forward: the inputs and the output (the arrays themselves, not copies: do
/// not modify them in place before the backward) and the values the forward saved. Returned by every `*_forward`, consumed by the
/// matching `*_backward` (any number of times).
#[pyclass(module = "effseq", name = "KernelContext", frozen)]
pub struct KernelContext {
    /// The kernel that made it: `softmax_attention`, `linear_attention`, `favor_attention`, `lsh_attention` or
    /// `selective_scan`.
    kernel: &'static str,
    saved: SavedState,
}

enum SavedState {
    /// Softmax, linear and FAVOR+ attention (effseq's `attention::mechanism_forward`).
    Attention {
        cfg: AttentionConfig,
        b: usize,
        t: usize,
        lengths: Option<Vec<usize>>,
        /// `q, k, v, out (B, H, T, Dh)` and the Performer's `projection (M, Dh)`.
        q: Py<PyAny>,
        k: Py<PyAny>,
        v: Py<PyAny>,
        out: Py<PyAny>,
        projection: Option<Py<PyAny>>,
        saved: Saved,
    },
    /// LSH attention.
    Lsh {
        /// (B, H, T, Dh).
        shape: [usize; 4],
        lengths: Option<Vec<usize>>,
        opts: LshOptions,
        /// (R, Dh, n_buckets/2).
        rotations: Vec<f32>,
        /// (B, H, R, T_p) sorted order, (B, H, R, T_p) log-sum-exps, (B, H, R, T_p, Dh) per-round outputs.
        order: Vec<u32>,
        lse: Vec<f32>,
        round_out: Vec<f32>,
        qk: Py<PyAny>,
        v: Py<PyAny>,
    },
    /// The selective scan.
    Scan {
        dims: ScanDims,
        /// (B, ⌈T/64⌉, Dc, N) the state at the start of every chunk.
        boundaries: Vec<f32>,
        /// u, delta, A, B, C, D.
        inputs: [Py<PyAny>; 6],
    },
}

#[pymethods]
impl KernelContext {
    /// The kernel whose forward made this context.
    #[getter]
    fn kernel(&self) -> &'static str {
        self.kernel
    }

    /// Copies of the values the forward saved, by name: softmax `lse (B, H, T)`; linear and FAVOR+ the feature maps
    /// `fq, fk (B, H, T, F)`, the normaliser `den (B, H, T)` and, causal FAVOR+ only, the stabiliser's state decay
    /// `decay (B, H, T)`; LSH `rotations`, the sorted `order`, `lse` and `round_out`; the scan its chunk-boundary
    /// states `boundaries (B, chunks, Dc, N)`.
    fn saved_arrays<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        match &self.saved {
            SavedState::Attention { cfg, b, t, saved, .. } => {
                let (bh, t) = (b * cfg.heads, *t);
                match saved {
                    Saved::Softmax { lse } => dict.set_item("lse", f32_out(py, lse.clone(), &[*b, cfg.heads, t])?)?,
                    Saved::Features { fq, fk, decay, den } => {
                        let f = fq.len() / (bh * t).max(1);
                        dict.set_item("fq", f32_out(py, fq.clone(), &[*b, cfg.heads, t, f])?)?;
                        dict.set_item("fk", f32_out(py, fk.clone(), &[*b, cfg.heads, t, f])?)?;
                        dict.set_item("den", f32_out(py, den.clone(), &[*b, cfg.heads, t])?)?;
                        if let Some(decay) = decay {
                            dict.set_item("decay", f32_out(py, decay.clone(), &[*b, cfg.heads, t])?)?;
                        }
                    }
                }
            }
            SavedState::Lsh { shape: [b, h, t, dh], opts, rotations, order, lse, round_out, .. } => {
                let (r, tp) = (opts.n_hashes, opts.padded_len(*t));
                dict.set_item("rotations", f32_out(py, rotations.clone(), &[r, *dh, opts.n_buckets / 2])?)?;
                dict.set_item("order", u32_out(py, order.clone(), &[*b, *h, r, tp])?)?;
                dict.set_item("lse", f32_out(py, lse.clone(), &[*b, *h, r, tp])?)?;
                dict.set_item("round_out", f32_out(py, round_out.clone(), &[*b, *h, r, tp, *dh])?)?;
            }
            SavedState::Scan { dims, boundaries, .. } => {
                dict.set_item("boundaries", f32_out(py, boundaries.clone(), &[dims.batch, dims.chunks(), dims.channels, dims.state])?)?;
            }
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        format!("<effseq.KernelContext of {}>", self.kernel)
    }
}

/// Errors unless `ctx` was made by `kernel`'s forward.
fn expect_kernel(py: Python<'_>, ctx: &KernelContext, kernel: &str) -> PyResult<()> {
    if ctx.kernel == kernel {
        Ok(())
    } else {
        Err(error(
            py,
            ErrorKind::InvalidArgument,
            format!("this context comes from {}_forward, not {kernel}_forward: pass it to {}_backward", ctx.kernel, ctx.kernel),
        ))
    }
}

/// Reads `q, k, v (B, H, T, Dh)`, all the same shape; returns them and the shape.
fn qkv<'py>(q: &Bound<'py, PyAny>, k: &Bound<'py, PyAny>, v: &Bound<'py, PyAny>) -> PyResult<(F32In<'py>, F32In<'py>, F32In<'py>, [usize; 4])> {
    let py = q.py();
    let q = f32_in(q, "q", true)?;
    let shape = q.expect_ndim(py, 4, "(B, H, T, Dh)")?;
    nonempty(py, "q", &shape, "(B, H, T, Dh)")?;
    let k = f32_in(k, "k", true)?;
    k.expect_shape(py, &shape, "(B, H, T, Dh) like q")?;
    let v = f32_in(v, "v", true)?;
    v.expect_shape(py, &shape, "(B, H, T, Dh) like q")?;
    Ok((q, k, v, [shape[0], shape[1], shape[2], shape[3]]))
}

/// A NumPy array (or other Python object) handed back to Python.
type Array<'py> = Bound<'py, PyAny>;
/// A forward's output and its context (None when the forward was asked not to keep one).
type Forward<'py> = (Array<'py>, Option<Py<KernelContext>>);
/// The gradients of q, k and v.
type Grads3<'py> = (Array<'py>, Array<'py>, Array<'py>);

/// Softmax, linear or FAVOR+ attention through effseq's `attention::mechanism_forward` (exactly what its layers run).
#[allow(clippy::too_many_arguments)]
fn attention_forward<'py>(
    kernel: &'static str,
    mechanism: Mechanism,
    q: F32In<'py>,
    k: F32In<'py>,
    v: F32In<'py>,
    shape: [usize; 4],
    projection: Option<F32In<'py>>,
    causal: bool,
    lengths: Option<&Bound<'py, PyAny>>,
    need_grad: bool,
) -> PyResult<Forward<'py>> {
    let py = q.py();
    let [b, h, t, dh] = shape;
    let lengths = lengths_arg(py, lengths, b, t, 0)?;
    let cfg = AttentionConfig { mechanism, d_model: h * dh, heads: h, causal };
    let mut out = vec![0.0f32; b * h * t * dh]; // (B, H, T, Dh)
    let (qs, ks, vs, proj) = (q.data(), k.data(), v.data(), projection.as_ref().map(F32In::data));
    let saved = detached(py, || attention::mechanism_forward(&cfg, proj, qs, ks, vs, b, t, lengths.as_deref(), &mut out))?;
    let out = f32_out(py, out, &shape)?;
    let ctx = if need_grad {
        let saved = SavedState::Attention {
            cfg,
            b,
            t,
            lengths,
            q: q.object(),
            k: k.object(),
            v: v.object(),
            out: out.clone().unbind(),
            projection: projection.as_ref().map(F32In::object),
            saved,
        };
        Some(Py::new(py, KernelContext { kernel, saved })?)
    } else {
        None
    };
    Ok((out, ctx))
}

/// Backward of [`attention_forward`]: `(dq, dk, dv)`, each `(B, H, T, Dh)`, from `dout (B, H, T, Dh)`.
fn attention_backward<'py>(py: Python<'py>, ctx: &KernelContext, kernel: &str, dout: &Bound<'py, PyAny>) -> PyResult<Grads3<'py>> {
    expect_kernel(py, ctx, kernel)?;
    let SavedState::Attention { cfg, b, t, lengths, q, k, v, out, projection, saved } = &ctx.saved else {
        unreachable!("the attention kernels make attention contexts")
    };
    let (b, t, dh) = (*b, *t, cfg.head_dim());
    let shape = [b, cfg.heads, t, dh];
    let dout = f32_in(dout, "dout", true)?;
    dout.expect_shape(py, &shape, "(B, H, T, Dh) like the forward's output")?;
    let (q, k, v, out) =
        (f32_in(q.bind(py), "q", false)?, f32_in(k.bind(py), "k", false)?, f32_in(v.bind(py), "v", false)?, f32_in(out.bind(py), "out", false)?);
    let projection = f32_in_opt(projection.as_ref().map(|p| p.bind(py)), "projection", false)?;
    let n = b * cfg.heads * t * dh;
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]); // (B, H, T, Dh) each
    let (qs, ks, vs, os, ds, proj) = (q.data(), k.data(), v.data(), out.data(), dout.data(), projection.as_ref().map(F32In::data));
    detached(py, || attention::mechanism_backward(cfg, proj, qs, ks, vs, b, t, lengths.as_deref(), os, saved, ds, &mut dq, &mut dk, &mut dv))?;
    Ok((f32_out(py, dq, &shape)?, f32_out(py, dk, &shape)?, f32_out(py, dv, &shape)?))
}

/// Exact softmax attention `softmax(q kᵀ / sqrt(Dh)) v`, computed in tiles (FlashAttention: no T×T matrix).
///
/// q, k, v: float32 (B, H, T, Dh). causal: query i sees keys j <= i. lengths: optional (B) valid keys per sequence
/// (right padding; later keys are masked). Returns (out (B, H, T, Dh), ctx); ctx is None when need_grad is False.
#[pyfunction]
#[pyo3(signature = (q, k, v, *, causal = false, lengths = None, need_grad = true))]
fn softmax_attention_forward<'py>(
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    causal: bool,
    lengths: Option<&Bound<'py, PyAny>>,
    need_grad: bool,
) -> PyResult<Forward<'py>> {
    let (q, k, v, shape) = qkv(q, k, v)?;
    attention_forward("softmax_attention", Mechanism::Softmax, q, k, v, shape, None, causal, lengths, need_grad)
}

/// Gradients (dq, dk, dv) of softmax_attention_forward's output, from dout (B, H, T, Dh).
#[pyfunction]
fn softmax_attention_backward<'py>(py: Python<'py>, ctx: &KernelContext, dout: &Bound<'py, PyAny>) -> PyResult<Grads3<'py>> {
    attention_backward(py, ctx, "softmax_attention", dout)
}

/// Linear attention (Katharopoulos et al. 2020) with the feature map elu(x) + 1:
/// out_i = Σ_j φ(q_i)·φ(k_j) v_j / (Σ_j φ(q_i)·φ(k_j) + 1e-6), over j <= i when causal (a fused prefix sweep,
/// O(T) memory) or over the valid keys otherwise.
///
/// q, k, v: float32 (B, H, T, Dh). Returns (out (B, H, T, Dh), ctx).
#[pyfunction]
#[pyo3(signature = (q, k, v, *, causal = true, lengths = None, need_grad = true))]
fn linear_attention_forward<'py>(
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    causal: bool,
    lengths: Option<&Bound<'py, PyAny>>,
    need_grad: bool,
) -> PyResult<Forward<'py>> {
    let (q, k, v, shape) = qkv(q, k, v)?;
    attention_forward("linear_attention", Mechanism::Linear, q, k, v, shape, None, causal, lengths, need_grad)
}

/// Gradients (dq, dk, dv) of linear_attention_forward's output, from dout (B, H, T, Dh).
#[pyfunction]
fn linear_attention_backward<'py>(py: Python<'py>, ctx: &KernelContext, dout: &Bound<'py, PyAny>) -> PyResult<Grads3<'py>> {
    attention_backward(py, ctx, "linear_attention", dout)
}

/// FAVOR+ attention (the Performer, Choromanski et al. 2020): positive random features of the softmax kernel (or
/// performer-pytorch's ReLU kernel) fed to linear attention. Causal keys use a running-max stabiliser that never
/// looks at later keys.
///
/// q, k, v: float32 (B, H, T, Dh); projection: float32 (M, Dh), the random features (see favor_projection), shared
/// by all heads and held constant (no gradient). kernel: "softmax" or "relu". Returns (out (B, H, T, Dh), ctx).
#[pyfunction]
#[pyo3(signature = (q, k, v, projection, *, causal = true, kernel = "softmax", lengths = None, need_grad = true))]
#[allow(clippy::too_many_arguments)]
fn favor_attention_forward<'py>(
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    projection: &Bound<'py, PyAny>,
    causal: bool,
    kernel: &str,
    lengths: Option<&Bound<'py, PyAny>>,
    need_grad: bool,
) -> PyResult<Forward<'py>> {
    let py = q.py();
    let kernel = feature_kernel(py, kernel)?;
    let (q, k, v, shape) = qkv(q, k, v)?;
    let projection = f32_in(projection, "projection", true)?;
    let m = projection.expect_ndim(py, 2, "(M, Dh)")?[0];
    projection.expect_shape(py, &[m, shape[3]], "(M, Dh) with Dh the head width of q")?;
    nonempty(py, "projection", projection.shape(), "(M, Dh)")?;
    attention_forward("favor_attention", Mechanism::Performer { features: m, kernel }, q, k, v, shape, Some(projection), causal, lengths, need_grad)
}

/// Gradients (dq, dk, dv) of favor_attention_forward's output, from dout (B, H, T, Dh); the projection gets none.
#[pyfunction]
fn favor_attention_backward<'py>(py: Python<'py>, ctx: &KernelContext, dout: &Bound<'py, PyAny>) -> PyResult<Grads3<'py>> {
    attention_backward(py, ctx, "favor_attention", dout)
}

/// The FAVOR+ feature map alone, the entry points favor_attention_forward uses: `role` "query" (each row its own
/// stabiliser), "key_causal" (a running maximum over the positions so far; also returns the state decay
/// exp(c_{j-1} - c_j), (B, H, T)) or "key_bidirectional" (one stabiliser per sequence and head over its valid keys).
///
/// x: float32 (B, H, T, Dh); projection: float32 (M, Dh). Returns (features (B, H, T, M), decay or None).
#[pyfunction]
#[pyo3(signature = (x, projection, *, role, kernel = "softmax", lengths = None))]
fn favor_features<'py>(
    x: &Bound<'py, PyAny>,
    projection: &Bound<'py, PyAny>,
    role: &str,
    kernel: &str,
    lengths: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Array<'py>, Option<Array<'py>>)> {
    let py = x.py();
    let kernel = feature_kernel(py, kernel)?;
    let x = f32_in(x, "x", true)?;
    let shape = x.expect_ndim(py, 4, "(B, H, T, Dh)")?;
    nonempty(py, "x", &shape, "(B, H, T, Dh)")?;
    let [b, h, t, dh] = [shape[0], shape[1], shape[2], shape[3]];
    let projection = f32_in(projection, "projection", true)?;
    let m = projection.expect_ndim(py, 2, "(M, Dh)")?[0];
    projection.expect_shape(py, &[m, dh], "(M, Dh) with Dh the head width of x")?;
    nonempty(py, "projection", projection.shape(), "(M, Dh)")?;
    let lengths = lengths_arg(py, lengths, b, t, 0)?;
    let (xs, proj) = (x.data(), projection.data());
    let mut features = vec![0.0f32; b * h * t * m]; // (B, H, T, M)
    let decay = match role {
        "query" => {
            detached(py, || favor::query_features(xs, b * h * t, dh, proj, m, kernel, &mut features))?;
            None
        }
        "key_causal" => {
            let mut decay = vec![0.0f32; b * h * t]; // (B, H, T)
            detached(py, || favor::key_features_causal(xs, b * h, t, dh, proj, m, kernel, &mut features, &mut decay))?;
            Some(decay)
        }
        "key_bidirectional" => {
            detached(py, || favor::key_features_global(xs, b, h, t, dh, lengths.as_deref(), proj, m, kernel, &mut features))?;
            None
        }
        other => return Err(error(py, ErrorKind::Config, format!("unknown role '{other}' (expected one of: query, key_causal, key_bidirectional)"))),
    };
    let features = f32_out(py, features, &[b, h, t, m])?;
    let decay = decay.map(|d| f32_out(py, d, &[b, h, t])).transpose()?;
    Ok((features, decay))
}

/// The feature kernel named `name`.
fn feature_kernel(py: Python<'_>, name: &str) -> PyResult<FeatureKernel> {
    match name {
        "softmax" => Ok(FeatureKernel::SOFTMAX),
        "relu" => Ok(FeatureKernel::Relu),
        other => Err(error(py, ErrorKind::Config, format!("unknown FAVOR+ kernel '{other}' (expected one of: softmax, relu)"))),
    }
}

/// The FAVOR+ random projection (M, Dh) of a Performer layer 0 trained with seed `seed` (before any redraw):
/// orthogonal Gaussian blocks with chi-distributed row norms, as performer-pytorch's
/// gaussian_orthogonal_random_matrix(scaling=0). features=None takes performer-pytorch's default int(Dh ln Dh).
#[pyfunction]
#[pyo3(signature = (head_dim, features = None, seed = 0))]
fn favor_projection<'py>(py: Python<'py>, head_dim: usize, features: Option<usize>, seed: u64) -> PyResult<Bound<'py, PyAny>> {
    if head_dim == 0 || features == Some(0) {
        return Err(error(py, ErrorKind::InvalidArgument, "favor_projection needs head_dim >= 1 and features >= 1"));
    }
    let m = features.unwrap_or_else(|| favor::default_features(head_dim));
    let projection = favor::orthogonal_gaussian(m, head_dim, &mut rng_for(seed, streams::FEATURES));
    f32_out(py, projection, &[m, head_dim])
}

/// LSH attention (the Reformer, Kitaev et al. 2020) with shared query-keys, as reformer-pytorch's LSHAttention:
/// angular hashing by random rotations, a sort by (bucket, position), attention within each chunk of bucket_size
/// sorted positions and the chunk before it, rounds combined by their log-sum-exps, a pair seen in several rounds
/// counted once (dedup). T need not divide by bucket_size.
///
/// qk, v: float32 (B, H, T, Dh). rotations: float32 (n_hashes, Dh, n_buckets/2), e.g. reformer-pytorch's; without
/// it they are drawn from `seed` (lsh_rotations). n_buckets defaults to T/bucket_size rounded up to even.
/// torch_dup_counts reproduces reformer-pytorch's duplicate counts exactly (see effseq's attention/lsh.rs).
/// Returns (out (B, H, T, Dh), ctx).
#[pyfunction]
#[pyo3(signature = (qk, v, *, rotations = None, seed = 0, n_hashes = None, bucket_size = 64, n_buckets = None, causal = false, lengths = None, dedup = true, torch_dup_counts = false, need_grad = true))]
#[allow(clippy::too_many_arguments)]
fn lsh_attention_forward<'py>(
    qk: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    rotations: Option<&Bound<'py, PyAny>>,
    seed: u64,
    n_hashes: Option<usize>,
    bucket_size: usize,
    n_buckets: Option<usize>,
    causal: bool,
    lengths: Option<&Bound<'py, PyAny>>,
    dedup: bool,
    torch_dup_counts: bool,
    need_grad: bool,
) -> PyResult<Forward<'py>> {
    let py = qk.py();
    let qk = f32_in(qk, "qk", true)?;
    let shape = qk.expect_ndim(py, 4, "(B, H, T, Dh)")?;
    nonempty(py, "qk", &shape, "(B, H, T, Dh)")?;
    let v = f32_in(v, "v", true)?;
    v.expect_shape(py, &shape, "(B, H, T, Dh) like qk")?;
    let [b, h, t, dh] = [shape[0], shape[1], shape[2], shape[3]];
    if bucket_size == 0 {
        return Err(error(py, ErrorKind::Config, "bucket_size must be at least 1"));
    }
    let rotations = f32_in_opt(rotations, "rotations", true)?;
    let (rotations, n_hashes, n_buckets) = match rotations {
        Some(r) => {
            let rs = r.expect_ndim(py, 3, "(n_hashes, Dh, n_buckets/2)")?;
            r.expect_shape(py, &[rs[0], dh, rs[2]], "(n_hashes, Dh, n_buckets/2) with Dh the head width of qk")?;
            let (from_r, buckets_from_r) = (rs[0], 2 * rs[2]);
            if n_hashes.is_some_and(|n| n != from_r) || n_buckets.is_some_and(|n| n != buckets_from_r) {
                return Err(error(
                    py,
                    ErrorKind::Shape,
                    format!(
                        "rotations of shape {} mean n_hashes = {from_r} and n_buckets = {buckets_from_r}; leave n_hashes and n_buckets unset",
                        fmt_shape(&rs)
                    ),
                ));
            }
            (r.data().to_vec(), from_r, buckets_from_r)
        }
        None => {
            let n_hashes = n_hashes.unwrap_or(4);
            let n_buckets = n_buckets.unwrap_or_else(|| lsh::auto_buckets(t, bucket_size));
            (lsh::draw_rotations(seed, n_hashes, dh, n_buckets), n_hashes, n_buckets)
        }
    };
    let opts = LshOptions { bucket_size, n_buckets, n_hashes, causal, dedup, torch_dup_counts };
    let lengths = lengths_arg(py, lengths, b, t, 0)?;
    let tp = opts.padded_len(t);
    let mut out = vec![0.0f32; b * h * t * dh]; // (B, H, T, Dh)
    let mut lse = vec![0.0f32; b * h * n_hashes * tp]; // (B, H, R, T_p)
    let mut round_out = vec![0.0f32; b * h * n_hashes * tp * dh]; // (B, H, R, T_p, Dh)
    let (qs, vs) = (qk.data(), v.data());
    let order = detached(py, || {
        opts.validate()?;
        let order = lsh::hash_sort(qs, b * h, t, dh, &rotations, &opts)?; // (B, H, R, T_p)
        lsh::forward(qs, vs, &order, b, h, t, dh, lengths.as_deref(), &opts, &mut out, &mut lse, &mut round_out)?;
        Ok(order)
    })?;
    let out = f32_out(py, out, &shape)?;
    let ctx = if need_grad {
        let saved = SavedState::Lsh { shape: [b, h, t, dh], lengths, opts, rotations, order, lse, round_out, qk: qk.object(), v: v.object() };
        Some(Py::new(py, KernelContext { kernel: "lsh_attention", saved })?)
    } else {
        None
    };
    Ok((out, ctx))
}

/// Gradients (dqk, dv) of lsh_attention_forward's output, from dout (B, H, T, Dh), with the forward's buckets.
#[pyfunction]
fn lsh_attention_backward<'py>(py: Python<'py>, ctx: &KernelContext, dout: &Bound<'py, PyAny>) -> PyResult<(Array<'py>, Array<'py>)> {
    expect_kernel(py, ctx, "lsh_attention")?;
    let SavedState::Lsh { shape, lengths, opts, order, lse, round_out, qk, v, .. } = &ctx.saved else {
        unreachable!("lsh_attention_forward makes LSH contexts")
    };
    let [b, h, t, dh] = *shape;
    let dout = f32_in(dout, "dout", true)?;
    dout.expect_shape(py, shape, "(B, H, T, Dh) like the forward's output")?;
    let (qk, v) = (f32_in(qk.bind(py), "qk", false)?, f32_in(v.bind(py), "v", false)?);
    let n = b * h * t * dh;
    let (mut dqk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n]); // (B, H, T, Dh) each
    let (qs, vs, ds) = (qk.data(), v.data(), dout.data());
    detached(py, || lsh::backward(qs, vs, order, lse, round_out, ds, b, h, t, dh, lengths.as_deref(), opts, &mut dqk, &mut dv))?;
    Ok((f32_out(py, dqk, shape)?, f32_out(py, dv, shape)?))
}

/// The LSH rotations (n_hashes, head_dim, n_buckets/2) that lsh_attention_forward draws from `seed`.
#[pyfunction]
fn lsh_rotations<'py>(py: Python<'py>, seed: u64, n_hashes: usize, head_dim: usize, n_buckets: usize) -> PyResult<Bound<'py, PyAny>> {
    if n_hashes == 0 || head_dim == 0 || n_buckets < 2 || !n_buckets.is_multiple_of(2) {
        return Err(error(py, ErrorKind::InvalidArgument, "lsh_rotations needs n_hashes >= 1, head_dim >= 1 and an even n_buckets >= 2"));
    }
    f32_out(py, lsh::draw_rotations(seed, n_hashes, head_dim, n_buckets), &[n_hashes, head_dim, n_buckets / 2])
}

/// The default LSH bucket count for length t: ceil(t / bucket_size) rounded up to even, at least 2.
#[pyfunction]
fn lsh_default_buckets(t: usize, bucket_size: usize) -> usize {
    lsh::auto_buckets(t, bucket_size)
}

/// Mamba's selective scan (Gu & Dao 2023, Algorithm 2), fused and chunked: for every sequence and channel d,
/// h_t = exp(Δ_t[d] A[d]) ⊙ h_{t-1} + Δ_t[d] B_t u_t[d], y_t[d] = C_t · h_t + D[d] u_t[d]
/// (mamba_ssm's selective_scan_ref without the gate and the softplus, which the caller applies).
///
/// u, delta: float32 (B, T, Dc); A: (Dc, N); B, C: (B, T, N); D: (Dc); initial_state: optional (B, Dc, N) (no
/// gradient is returned for it). Returns (y (B, T, Dc), last_state (B, Dc, N), ctx). Only the state at every 64th
/// step is kept for the backward, which recomputes the rest.
#[pyfunction]
#[pyo3(signature = (u, delta, A, B, C, D, *, initial_state = None, need_grad = true))]
#[allow(non_snake_case, clippy::too_many_arguments)]
fn selective_scan_forward<'py>(
    u: &Bound<'py, PyAny>,
    delta: &Bound<'py, PyAny>,
    A: &Bound<'py, PyAny>,
    B: &Bound<'py, PyAny>,
    C: &Bound<'py, PyAny>,
    D: &Bound<'py, PyAny>,
    initial_state: Option<&Bound<'py, PyAny>>,
    need_grad: bool,
) -> PyResult<(Array<'py>, Array<'py>, Option<Py<KernelContext>>)> {
    let py = u.py();
    let inputs = scan_inputs(u, delta, A, B, C, D)?;
    let dims = inputs.dims;
    let (b, t, dc, n) = (dims.batch, dims.time, dims.channels, dims.state);
    let mut state = match f32_in_opt(initial_state, "initial_state", true)? {
        Some(s) => {
            s.expect_shape(py, &[b, dc, n], "(B, Dc, N)")?;
            s.data().to_vec()
        }
        None => vec![0.0f32; b * dc * n], // (B, Dc, N)
    };
    let mut y = vec![0.0f32; b * t * dc]; // (B, T, Dc)
    let mut boundaries = if need_grad { vec![0.0f32; dims.boundary_len()] } else { Vec::new() }; // (B, chunks, Dc, N)
    let borrowed = inputs.borrowed();
    detached(py, || scan::scan_forward(&dims, &borrowed, &mut state, &mut y, need_grad.then_some(&mut boundaries[..])))?;
    let y = f32_out(py, y, &[b, t, dc])?;
    let last = f32_out(py, state, &[b, dc, n])?;
    let ctx = if need_grad {
        let saved = SavedState::Scan { dims, boundaries, inputs: inputs.objects() };
        Some(Py::new(py, KernelContext { kernel: "selective_scan", saved })?)
    } else {
        None
    };
    Ok((y, last, ctx))
}

/// Gradients (du, ddelta, dA, dB, dC, dD) of selective_scan_forward's y, from dy (B, T, Dc).
#[pyfunction]
fn selective_scan_backward<'py>(
    py: Python<'py>,
    ctx: &KernelContext,
    dy: &Bound<'py, PyAny>,
) -> PyResult<(Array<'py>, Array<'py>, Array<'py>, Array<'py>, Array<'py>, Array<'py>)> {
    expect_kernel(py, ctx, "selective_scan")?;
    let SavedState::Scan { dims, boundaries, inputs } = &ctx.saved else { unreachable!("selective_scan_forward makes scan contexts") };
    let [u, delta, a, b, c, d] = inputs;
    let inputs = scan_inputs(u.bind(py), delta.bind(py), a.bind(py), b.bind(py), c.bind(py), d.bind(py))?;
    let (bt, t, dc, n) = (dims.batch, dims.time, dims.channels, dims.state);
    let dy = f32_in(dy, "dy", true)?;
    dy.expect_shape(py, &[bt, t, dc], "(B, T, Dc) like y")?;
    let borrowed = inputs.borrowed();
    let dys = dy.data();
    let grads = detached(py, || scan::scan_backward(dims, &borrowed, boundaries, dys, None))?;
    Ok((
        f32_out(py, grads.du, &[bt, t, dc])?,
        f32_out(py, grads.ddelta, &[bt, t, dc])?,
        f32_out(py, grads.da, &[dc, n])?,
        f32_out(py, grads.db, &[bt, t, n])?,
        f32_out(py, grads.dc, &[bt, t, n])?,
        f32_out(py, grads.dd, &[dc])?,
    ))
}

/// The six checked inputs of a scan and its sizes.
struct ScanArrays<'py> {
    dims: ScanDims,
    arrays: [F32In<'py>; 6],
}

impl<'py> ScanArrays<'py> {
    fn borrowed(&self) -> ScanInputs<'_> {
        let [u, delta, a, b, c, d] = &self.arrays;
        ScanInputs { u: u.data(), delta: delta.data(), a: a.data(), b: b.data(), c: c.data(), d: d.data() }
    }

    fn objects(&self) -> [Py<PyAny>; 6] {
        self.arrays.each_ref().map(F32In::object)
    }
}

#[allow(non_snake_case)]
fn scan_inputs<'py>(
    u: &Bound<'py, PyAny>,
    delta: &Bound<'py, PyAny>,
    A: &Bound<'py, PyAny>,
    B: &Bound<'py, PyAny>,
    C: &Bound<'py, PyAny>,
    D: &Bound<'py, PyAny>,
) -> PyResult<ScanArrays<'py>> {
    let py = u.py();
    let u = f32_in(u, "u", true)?;
    let us = u.expect_ndim(py, 3, "(B, T, Dc)")?;
    nonempty(py, "u", &us, "(B, T, Dc)")?;
    let (b, t, dc) = (us[0], us[1], us[2]);
    let delta = f32_in(delta, "delta", true)?;
    delta.expect_shape(py, &us, "(B, T, Dc) like u")?;
    let a = f32_in(A, "A", true)?;
    let n = a.expect_ndim(py, 2, "(Dc, N)")?[1];
    a.expect_shape(py, &[dc, n], "(Dc, N) with Dc the channels of u")?;
    nonempty(py, "A", &[dc, n], "(Dc, N)")?;
    let bm = f32_in(B, "B", true)?;
    bm.expect_shape(py, &[b, t, n], "(B, T, N)")?;
    let cm = f32_in(C, "C", true)?;
    cm.expect_shape(py, &[b, t, n], "(B, T, N)")?;
    let d = f32_in(D, "D", true)?;
    d.expect_shape(py, &[dc], "(Dc,)")?;
    Ok(ScanArrays { dims: ScanDims { batch: b, time: t, channels: dc, state: n }, arrays: [u, delta, a, bm, cm, d] })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KernelContext>()?;
    m.add_function(wrap_pyfunction!(softmax_attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_attention_backward, m)?)?;
    m.add_function(wrap_pyfunction!(linear_attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(linear_attention_backward, m)?)?;
    m.add_function(wrap_pyfunction!(favor_attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(favor_attention_backward, m)?)?;
    m.add_function(wrap_pyfunction!(favor_projection, m)?)?;
    m.add_function(wrap_pyfunction!(favor_features, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_attention_backward, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_rotations, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_default_buckets, m)?)?;
    m.add_function(wrap_pyfunction!(selective_scan_forward, m)?)?;
    m.add_function(wrap_pyfunction!(selective_scan_backward, m)?)?;
    Ok(())
}
