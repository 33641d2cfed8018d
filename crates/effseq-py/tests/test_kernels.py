"""effseq.kernels on NumPy arrays, without torch: outputs against NumPy references, every backward against central
differences of its own forward, the contexts, the zero-copy outputs, and the GIL released while a kernel runs."""

import time

import numpy as np
import pytest

import effseq
import effseq.kernels as K
from conftest import iterations_while, randn

# The directional derivative of L = sum(out * w) along d ~ N(0, 1) (every element moves) by central differences of
# the float32 forward with step H (per element), accumulated in float64, must match <grad, d> within REL_TOL of the
# larger of the two plus the float32 rounding of the two losses, 4 eps32 sum|out * w| / (2 H); the truncation error
# is O(H^2). LSH, whose hashes are steps, takes a smaller step and checks that no bucket moved. (The ReLU feature map
# has kinks everywhere: its gradients are checked against torch autograd in test_torch.py.)
H = 2e-3
H_KINKED = 2e-4
REL_TOL = 1e-2


def softmax_reference(q, k, v, causal, lengths=None):
    """Exact attention in float64 NumPy (the explicit T x T form) and its log-sum-exp."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])  # (B, H, T, T)
    t = q.shape[2]
    mask = np.zeros(s.shape, dtype=bool)
    if causal:
        mask |= np.triu(np.ones((t, t), dtype=bool), 1)
    if lengths is not None:
        for b, n in enumerate(lengths):
            mask[b, :, :, n:] = True
    s = np.where(mask, -np.inf, s)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    lse = (m + np.log(p.sum(axis=-1, keepdims=True)))[..., 0]
    return (p / p.sum(axis=-1, keepdims=True)) @ v, lse


def test_softmax_forward_matches_the_explicit_form(rng):
    q, k, v = (randn(rng, 2, 3, 37, 8) for _ in range(3))
    for causal in (False, True):
        for lengths in (None, [37, 20]):
            out, ctx = K.softmax_attention_forward(q, k, v, causal=causal, lengths=lengths)
            ref, lse = softmax_reference(q, k, v, causal, lengths)
            assert out.dtype == np.float32 and out.shape == q.shape and out.flags.c_contiguous
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ctx.saved_arrays()["lse"], lse, rtol=1e-5, atol=1e-5)


def test_linear_attention_forward_matches_the_masked_sum(rng):
    q, k, v = (randn(rng, 2, 2, 21, 6) for _ in range(3))
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0))).astype(np.float64)  # noqa: E731
    for causal in (False, True):
        out, ctx = K.linear_attention_forward(q, k, v, causal=causal)
        a = phi(q) @ phi(k).transpose(0, 1, 3, 2)
        if causal:
            a = np.tril(a)
        ref = a @ v.astype(np.float64) / (a.sum(axis=-1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
        assert set(ctx.saved_arrays()) == {"fq", "fk", "den"}


def scan_reference(u, delta, A, B, C, D, state=None):
    """The recurrence of the scan, step by step in float64 NumPy."""
    b, t, dc = u.shape
    h = np.zeros((b, dc, A.shape[1])) if state is None else state.astype(np.float64)
    y = np.zeros((b, t, dc))
    for i in range(t):
        h = np.exp(delta[:, i, :, None] * A) * h + (delta[:, i] * u[:, i])[:, :, None] * B[:, i, None, :]
        y[:, i] = (h * C[:, i, None, :]).sum(-1) + D * u[:, i]
    return y, h


def scan_inputs(rng, b=2, t=150, dc=20, n=5):
    u = randn(rng, b, t, dc)
    delta = (0.05 + 0.5 * rng.random((b, t, dc))).astype(np.float32)
    A = (-np.exp(rng.standard_normal((dc, n)) * 0.5)).astype(np.float32)
    B, C = randn(rng, b, t, n), randn(rng, b, t, n)
    D = randn(rng, dc)
    return [u, delta, A, B, C, D]


def test_selective_scan_matches_the_recurrence_and_chains_through_its_state(rng):
    inputs = scan_inputs(rng)
    y, last, ctx = K.selective_scan_forward(*inputs)
    ref_y, ref_h = scan_reference(*inputs)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(last, ref_h, rtol=1e-4, atol=1e-4)
    # Two halves, the second starting from the first's final state, give the whole scan.
    split = 70
    first = [x[:, :split].copy() if x.ndim == 3 else x for x in inputs]
    second = [x[:, split:].copy() if x.ndim == 3 else x for x in inputs]
    y1, h1, none = K.selective_scan_forward(*first, need_grad=False)
    assert none is None
    y2, h2, _ = K.selective_scan_forward(*second, initial_state=h1, need_grad=False)
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=1), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h2, last, rtol=1e-5, atol=1e-5)


def _loss(out, w):
    return float((out.astype(np.float64) * w).sum())


def _lsh_options():
    return dict(rotations=K.lsh_rotations(7, 2, 8, 4), bucket_size=8, causal=True)


# name: (forward(inputs) -> (out, ctx), backward(ctx, w) -> grads, make inputs, indices of differentiable inputs)
CASES = {
    "softmax": (
        lambda x, g=True: K.softmax_attention_forward(*x, causal=True, lengths=[19, 11], need_grad=g),
        K.softmax_attention_backward,
        lambda rng: [randn(rng, 2, 2, 19, 8) for _ in range(3)],
        (0, 1, 2),
    ),
    "linear_causal": (
        lambda x, g=True: K.linear_attention_forward(*x, causal=True, need_grad=g),
        K.linear_attention_backward,
        lambda rng: [randn(rng, 2, 2, 19, 8) for _ in range(3)],
        (0, 1, 2),
    ),
    "linear_bidirectional": (
        lambda x, g=True: K.linear_attention_forward(*x, causal=False, lengths=[19, 12], need_grad=g),
        K.linear_attention_backward,
        lambda rng: [randn(rng, 2, 2, 19, 8) for _ in range(3)],
        (0, 1, 2),
    ),
    "favor_causal": (
        lambda x, g=True: K.favor_attention_forward(*x, causal=True, need_grad=g),
        K.favor_attention_backward,
        lambda rng: [randn(rng, 2, 2, 19, 8, scale=0.5) for _ in range(3)] + [K.favor_projection(8, 12, seed=3)],
        (0, 1, 2),
    ),
    "favor_bidirectional": (
        lambda x, g=True: K.favor_attention_forward(*x, causal=False, lengths=[19, 14], need_grad=g),
        K.favor_attention_backward,
        lambda rng: [randn(rng, 2, 2, 19, 8, scale=0.5) for _ in range(3)] + [K.favor_projection(8, 12, seed=3)],
        (0, 1, 2),
    ),
    "lsh": (
        lambda x, g=True: K.lsh_attention_forward(*x, **_lsh_options(), need_grad=g),
        K.lsh_attention_backward,
        lambda rng: [randn(rng, 2, 2, 30, 8) for _ in range(2)],
        (0, 1),
    ),
    "selective_scan": (
        lambda x, g=True: (lambda y, last, ctx: (y, ctx))(*K.selective_scan_forward(*x, need_grad=g)),
        K.selective_scan_backward,
        lambda rng: scan_inputs(rng, b=2, t=70, dc=18, n=4),
        (0, 1, 2, 3, 4, 5),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_matches_central_differences(name, rng):
    forward, backward, make, differentiable = CASES[name]
    inputs = make(rng)
    out, ctx = forward(inputs)
    w = rng.standard_normal(out.shape)
    grads = backward(ctx, w.astype(np.float32))
    assert len(grads) == len(differentiable)
    for index, grad in zip(differentiable, grads):
        assert grad.shape == inputs[index].shape and grad.dtype == np.float32
        d = rng.standard_normal(inputs[index].shape).astype(np.float32)

        def at(step):
            moved = list(inputs)
            moved[index] = (inputs[index] + step * d).astype(np.float32)
            result, moved_ctx = forward(moved, name == "lsh")
            if name == "lsh":  # the finite difference is only meaningful if the buckets did not move
                np.testing.assert_array_equal(moved_ctx.saved_arrays()["order"], ctx.saved_arrays()["order"])
            return _loss(result, w)

        h = H_KINKED if name == "lsh" else H
        numeric = (at(h) - at(-h)) / (2 * h)
        analytic = float((grad.astype(np.float64) * d).sum())
        rounding = 4 * np.finfo(np.float32).eps * float(np.abs(out * w).sum()) / (2 * h)
        allowed = REL_TOL * max(abs(numeric), abs(analytic)) + rounding
        assert abs(numeric - analytic) <= allowed, f"{name} input {index}: numeric {numeric:.6g} vs backward {analytic:.6g} (allowed {allowed:.3g})"


def test_a_context_belongs_to_its_kernel_and_serves_several_backwards(rng):
    q, k, v = (randn(rng, 1, 2, 9, 4) for _ in range(3))
    out, ctx = K.linear_attention_forward(q, k, v)
    assert ctx.kernel == "linear_attention" and "linear_attention" in repr(ctx)
    first = K.linear_attention_backward(ctx, np.ones_like(out))
    second = K.linear_attention_backward(ctx, np.ones_like(out))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(effseq.InvalidArgumentError, match="linear_attention_backward"):
        K.softmax_attention_backward(ctx, np.ones_like(out))
    out, none = K.softmax_attention_forward(q, k, v, need_grad=False)
    assert none is None


def test_outputs_are_fresh_numpy_arrays_and_contexts_read_the_arrays_themselves(rng):
    q, k, v = (randn(rng, 1, 1, 5, 4) for _ in range(3))
    out, ctx = K.softmax_attention_forward(q, k, v)
    assert isinstance(out, np.ndarray) and out.flags.writeable and out.flags.c_contiguous and out.dtype == np.float32
    assert not any(np.shares_memory(out, x) for x in (q, k, v))
    grads = K.softmax_attention_backward(ctx, np.ones_like(out))
    # No copies are kept: the backward reads q, k, v and out themselves (so they must not change in between;
    # effseq.torch enforces that with torch's version counters).
    q += 1.0
    moved = K.softmax_attention_backward(ctx, np.ones_like(out))
    assert not np.allclose(moved[0], grads[0])


def test_seeded_draws_are_reproducible(rng):
    p = K.favor_projection(16, seed=5)
    assert p.shape == (int(16 * np.log(16)), 16)
    np.testing.assert_array_equal(p, K.favor_projection(16, seed=5))
    assert not np.array_equal(p, K.favor_projection(16, seed=6))
    # Rows come in orthogonal blocks of Dh.
    block = p[:16] / np.linalg.norm(p[:16], axis=1, keepdims=True)
    np.testing.assert_allclose(block @ block.T, np.eye(16), atol=1e-5)
    assert K.lsh_default_buckets(100, 16) == 8
    qk, v = randn(rng, 1, 2, 40, 8), randn(rng, 1, 2, 40, 8)
    by_seed, _ = K.lsh_attention_forward(qk, v, seed=9, n_hashes=3, bucket_size=8)
    by_rotations, _ = K.lsh_attention_forward(qk, v, rotations=K.lsh_rotations(9, 3, 8, K.lsh_default_buckets(40, 8)), bucket_size=8)
    np.testing.assert_array_equal(by_seed, by_rotations)


def test_favor_features_are_positive_and_causal_keys_never_look_ahead(rng):
    x = randn(rng, 1, 2, 12, 8)
    p = K.favor_projection(8, 10, seed=1)
    fq, none = K.favor_features(x, p, role="query")
    assert none is None and fq.shape == (1, 2, 12, 10) and (fq > 0).all()
    fk, decay = K.favor_features(x, p, role="key_causal")
    assert decay.shape == (1, 2, 12) and ((decay > 0) & (decay <= 1)).all()
    later = x.copy()
    later[:, :, 7:] *= 5.0  # larger later keys raise the running max only from step 7 on
    fk_later, _ = K.favor_features(later, p, role="key_causal")
    np.testing.assert_array_equal(fk_later[:, :, :7], fk[:, :, :7])
    fk_global, _ = K.favor_features(later, p, role="key_bidirectional")
    assert not np.allclose(fk_global[:, :, :7], fk[:, :, :7])


def test_the_gil_is_released_while_a_kernel_runs(rng):
    # A kernel that takes a noticeable time, run in a thread; the main thread counts Python loop iterations
    # meanwhile. With the GIL held for the kernel's duration the count would stall.
    q, k, v = (randn(rng, 4, 4, 1024, 32) for _ in range(3))
    K.softmax_attention_forward(*(np.ascontiguousarray(x[:, :, :64]) for x in (q, k, v)))  # start the thread pool

    def work():
        start = time.perf_counter()
        for _ in range(3):
            K.softmax_attention_forward(q, k, v, causal=False, need_grad=False)
        return time.perf_counter() - start

    counted, seconds = iterations_while(work)
    # Any count in the thousands shows the main thread ran during the kernels; held, it would only get the
    # moments between calls.
    assert counted > 1000, f"the main thread ran {counted} iterations in {seconds:.2f} s of kernel time"
