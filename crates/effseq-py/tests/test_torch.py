"""effseq.torch: every autograd function against the PyTorch implementation it replaces, forward and gradients of
every input, then trained inside a torch model with a torch optimizer.

effseq's kernels compute in float32 (no float64 version exists, so torch.autograd.gradcheck does not apply); the
references run in float64 on the same float32 values, and effseq must agree within

    |effseq - reference| <= RTOL |reference| + ATOL max|reference|        (elementwise, outputs and gradients)

with RTOL = 1e-4 and ATOL = 2e-5: float32 rounding through a few hundred accumulated terms, nothing more.
"""

import numpy as np
import pytest

import effseq
import effseq.kernels as K
from conftest import FIXTURES

RTOL = 1e-4
ATOL = 2e-5


@pytest.fixture(scope="module")
def et(torch):
    import effseq.torch as et

    return et


@pytest.fixture(scope="module")
def ref(torch):
    import references

    return references


def assert_close(torch, actual, expected, what):
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL * max(scale, 1e-12), msg=lambda m: f"{what}: {m}")


def compare(torch, effseq_fn, reference_fn, inputs, differentiable, what):
    """Runs both on the same values (effseq in float32, the reference in float64), L = sum(out * w), and compares the
    output and the gradient of every differentiable input."""
    gen = torch.Generator().manual_seed(99)
    ours = [x.clone().requires_grad_(i in differentiable) for i, x in enumerate(inputs)]
    theirs = [x.double().requires_grad_(i in differentiable) for i, x in enumerate(inputs)]
    out = effseq_fn(*ours)
    expected = reference_fn(*theirs)
    assert out.dtype == torch.float32
    assert_close(torch, out, expected, f"{what} output")
    w = torch.randn(out.shape, generator=gen)
    (out * w).sum().backward()
    (expected * w.double()).sum().backward()
    for i in differentiable:
        assert ours[i].grad is not None, f"{what}: no gradient for input {i}"
        assert_close(torch, ours[i].grad, theirs[i].grad, f"{what} gradient of input {i}")


def qkv(torch, b=2, h=3, t=23, dh=8, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(b, h, t, dh, generator=gen) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [None, [23, 9]])
def test_softmax_attention_matches_scaled_dot_product_attention(torch, et, ref, causal, lengths):
    compare(
        torch,
        lambda q, k, v: et.softmax_attention(q, k, v, causal=causal, lengths=lengths),
        lambda q, k, v: ref.softmax_attention(q, k, v, causal, lengths),
        qkv(torch),
        (0, 1, 2),
        f"softmax causal={causal} lengths={lengths}",
    )


def test_the_sdpa_drop_in(torch, et):
    import torch.nn.functional as F

    for shape in [(2, 3, 17, 8), (4, 17, 8)]:
        q, k, v = (torch.randn(*shape) for _ in range(3))
        for causal in (False, True):
            compare(torch, lambda *a: et.scaled_dot_product_attention(*a, is_causal=causal), lambda *a: F.scaled_dot_product_attention(*a, is_causal=causal), [q, k, v], (0, 1, 2), f"sdpa {shape}")
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(NotImplementedError, match="attn_mask"):
        et.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="dropout"):
        et.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match="scale"):
        et.scaled_dot_product_attention(q, q, q, scale=1.0)
    et.scaled_dot_product_attention(q, q, q, scale=0.5)  # the default for E = 4


@pytest.mark.parametrize("causal, lengths", [(True, None), (False, None), (False, [23, 11])])
def test_linear_attention_matches_the_masked_sum(torch, et, ref, causal, lengths):
    compare(
        torch,
        lambda q, k, v: et.linear_attention(q, k, v, causal=causal, lengths=lengths),
        lambda q, k, v: ref.linear_attention(q, k, v, causal, lengths),
        qkv(torch),
        (0, 1, 2),
        f"linear causal={causal} lengths={lengths}",
    )


def test_the_two_causal_linear_references_agree(torch, ref):
    q, k, v = (x.double() for x in qkv(torch))
    assert_close(torch, ref.causal_linear_attention_cumsum(q, k, v), ref.linear_attention(q, k, v, True), "masked sum vs cumsum")


@pytest.mark.parametrize("role", ["query", "key_causal", "key_bidirectional"])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_favor_features_match_the_reference_feature_map(torch, ref, role, kernel):
    # The feature map alone, through the same entry points the attention uses (effseq.kernels.favor_features).
    x = qkv(torch, scale=0.7)[0]
    projection = torch.from_numpy(K.favor_projection(8, 11, seed=4))
    ours, decay = K.favor_features(x.numpy(), projection.numpy(), role=role, kernel=kernel)
    x64, p64 = x.double(), projection.double()
    if role == "query":
        expected = ref.favor_query_features(x64, p64, kernel)
    else:
        expected, c = ref.favor_key_features(x64, p64, role == "key_causal", kernel)
        if decay is not None:
            # The state decay is exp(c_{j-1} - c_j) of the running max (1 at j = 0, and 1 throughout for ReLU).
            c = c[..., 0] if c is not None else torch.zeros(x.shape[:-1], dtype=torch.float64)
            want = torch.exp(torch.cat([c[..., :1], c[..., :-1]], dim=-1) - c)
            assert_close(torch, torch.from_numpy(decay), want, f"{role} {kernel} decay")
    assert_close(torch, torch.from_numpy(ours), expected, f"{role} {kernel} features")


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("causal, lengths", [(True, None), (False, None), (False, [23, 13])])
def test_favor_attention_matches_the_reference(torch, et, ref, kernel, causal, lengths):
    projection = et.favor_projection(8, 13, seed=1)
    projection.requires_grad_(True)  # a constant: it must get no gradient
    q, k, v = qkv(torch, scale=0.7)
    compare(
        torch,
        lambda q, k, v: et.favor_attention(q, k, v, projection, causal=causal, kernel=kernel, lengths=lengths),
        lambda q, k, v: ref.favor_attention(q, k, v, projection.detach().double(), causal, kernel, lengths),
        [q, k, v],
        (0, 1, 2),
        f"favor {kernel} causal={causal} lengths={lengths}",
    )
    assert projection.grad is None


def test_causal_favor_outputs_never_depend_on_later_keys(torch, et):
    q, k, v = qkv(torch, scale=0.7)
    projection = et.favor_projection(8, 13, seed=1)
    out = et.favor_attention(q, k, v, projection)
    k2 = k.clone()
    k2[:, :, 12:] *= 4.0  # later keys with a much larger maximum
    out2 = et.favor_attention(q, k2, v, projection)
    torch.testing.assert_close(out2[:, :, :12], out[:, :, :12], rtol=0, atol=0)


def load_fixture(name):
    from safetensors import safe_open

    with safe_open(str(FIXTURES / name), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("case", ["causal_r2", "bidirectional_r2", "causal_r1", "causal_r3_b8"])
def test_lsh_attention_matches_reformer_pytorch(torch, et, case):
    # reformer-pytorch's LSHSelfAttention (allow_duplicate_attention=False, fixed rotations), in float64, stored in the
    # fixtures effseq's Rust parity test uses; rebuilt here around effseq.torch.lsh_attention.
    import torch.nn.functional as F

    tensors, meta = load_fixture(f"lsh_{case}.safetensors")
    b, t, d, h = (int(meta[k]) for k in ("batch", "time", "d_model", "heads"))
    params = {name: tensors[name].clone().requires_grad_(True) for name in meta["params"].split(",")}
    x = tensors["x"].clone().requires_grad_(True)

    def heads(z):
        return z.reshape(b, t, h, d // h).transpose(1, 2)  # (B, H, T, Dh)

    qk, v = heads(F.linear(x, params["toqk.weight"])), heads(F.linear(x, params["tov.weight"]))
    out = et.lsh_attention(qk, v, rotations=tensors["rotations"], bucket_size=int(meta["bucket_size"]), causal=meta["causal"] == "true", torch_dup_counts=True)
    y = F.linear(out.transpose(1, 2).reshape(b, t, d), params["to_out.weight"], params["to_out.bias"])
    assert_close(torch, y, tensors["output"], f"lsh {case} output")
    (y * tensors["W"]).sum().backward()
    assert_close(torch, x.grad, tensors["grad.x"], f"lsh {case} grad x")
    for name, p in params.items():
        assert_close(torch, p.grad, tensors[f"grad.{name}"], f"lsh {case} grad {name}")


@pytest.mark.parametrize("gated", [False, True])
def test_selective_scan_fn_matches_selective_scan_ref(torch, et, ref, gated):
    selective_scan_ref = ref.selective_scan_ref()
    gen = torch.Generator().manual_seed(5)
    batch, dim, n, length = 2, 20, 6, 150  # crosses the kernel's 64-step chunks
    u = torch.randn(batch, dim, length, generator=gen)
    delta = 0.5 * torch.randn(batch, dim, length, generator=gen)
    A = -torch.exp(0.5 * torch.randn(dim, n, generator=gen))
    B, C = torch.randn(batch, n, length, generator=gen), torch.randn(batch, n, length, generator=gen)
    D, bias = torch.randn(dim, generator=gen), 0.3 * torch.randn(dim, generator=gen)
    z = torch.randn(batch, dim, length, generator=gen)
    inputs = [u, delta, A, B, C, D, bias] + ([z] if gated else [])

    def run(fn):
        return lambda u, delta, A, B, C, D, bias, *z: fn(u, delta, A, B, C, D=D, z=z[0] if z else None, delta_bias=bias, delta_softplus=True)

    compare(torch, run(et.selective_scan_fn), run(selective_scan_ref), inputs, tuple(range(len(inputs))), f"selective_scan gated={gated}")


def test_selective_scan_layouts_and_last_state(torch, et, ref):
    selective_scan_ref = ref.selective_scan_ref()
    gen = torch.Generator().manual_seed(6)
    u, delta = torch.randn(1, 4, 30, generator=gen), torch.rand(1, 4, 30, generator=gen)
    A, B, C = -torch.rand(4, 3, generator=gen) - 0.1, torch.randn(1, 3, 30, generator=gen), torch.randn(1, 3, 30, generator=gen)
    out, last = et.selective_scan_fn(u, delta, A, B.unsqueeze(1), C.unsqueeze(1), return_last_state=True)
    assert_close(torch, out, selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double()), "grouped B, C")
    # The final state continues the scan: run the second half from it with the NumPy kernel.
    half = et.selective_scan_fn(u[..., :15], delta[..., :15], A, B[..., :15], C[..., :15], return_last_state=True)[1]
    second, _, _ = K.selective_scan_forward(
        *(np.ascontiguousarray(x[..., 15:].transpose(1, 2).numpy()) for x in (u, delta)),
        A.numpy(),
        *(np.ascontiguousarray(x[..., 15:].transpose(1, 2).numpy()) for x in (B, C)),
        np.zeros(4, dtype=np.float32),
        initial_state=half.numpy(),
    )
    assert_close(torch, torch.from_numpy(second).transpose(1, 2), out[..., 15:], "scan continued from its last state")
    assert not last.requires_grad


def test_tensors_effseq_cannot_take(torch, et):
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(effseq.DTypeError, match="q must be float32, got torch.float64"):
        et.linear_attention(q.double(), q, q)
    with pytest.raises(TypeError, match="v must be a torch.Tensor, got ndarray"):
        et.linear_attention(q, q, q.numpy())
    with pytest.raises(effseq.DTypeError, match="for torch tensors use effseq.torch"):
        K.linear_attention_forward(q, q, q)
    nan = q.clone()
    nan[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"q contains NaN at index \(0, 0, 1, 1\)"):
        et.softmax_attention(nan, q, q)


def test_non_contiguous_inputs_and_no_grad(torch, et, ref):
    q, k, v = (x.transpose(2, 3).contiguous().transpose(2, 3) for x in qkv(torch))  # same values, transposed strides
    assert not q.is_contiguous()
    compare(torch, lambda q, k, v: et.linear_attention(q, k, v), lambda q, k, v: ref.linear_attention(q, k, v, True), [q, k, v], (0, 1, 2), "non-contiguous")
    with torch.no_grad():
        out = et.softmax_attention(q, k, v)
    assert not out.requires_grad
    expanded = torch.randn(1, 1, 5, 4).expand(2, 3, 5, 4)  # stride-0 batch, as a gradient of sum() is
    et.softmax_attention(expanded, expanded, expanded.clone().requires_grad_(True)).sum().backward()


def test_in_place_changes_before_backward_are_caught(torch, et):
    q, k, v = (x.requires_grad_(True) for x in qkv(torch))
    out = et.linear_attention(q * 1.0, k, v)
    out.add_(1.0)  # the output the backward needs changed
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


class AttentionLM:
    """A one-layer causal attention language model in plain torch whose attention is effseq's."""

    @staticmethod
    def build(torch, et, mechanism, vocab=12, d=16, heads=2):
        nn = torch.nn

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(vocab, d)
                self.qkv = nn.Linear(d, 3 * d)
                self.out = nn.Linear(d, d)
                self.head = nn.Linear(d, vocab)
                self.register_buffer("projection", et.favor_projection(d // heads, 16, seed=0))

            def forward(self, ids):
                b, t = ids.shape
                x = self.embed(ids)
                q, k, v = (z.reshape(b, t, heads, d // heads).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
                if mechanism == "softmax":
                    a = et.softmax_attention(q, k, v, causal=True)
                elif mechanism == "linear":
                    a = et.linear_attention(q, k, v, causal=True)
                elif mechanism == "favor":
                    a = et.favor_attention(q, k, v, self.projection, causal=True)
                else:
                    a = et.lsh_attention(q, v, bucket_size=4, n_hashes=2, causal=True, seed=3)
                return self.head(x + self.out(a.transpose(1, 2).reshape(b, t, d)))

        return Model()


@pytest.mark.parametrize("mechanism", ["softmax", "linear", "favor", "lsh"])
def test_a_torch_model_trains_with_effseq_attention_and_a_torch_optimizer(torch, et, mechanism):
    torch.manual_seed(0)
    model = AttentionLM.build(torch, et, mechanism)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    gen = torch.Generator().manual_seed(1)
    # Sequences that repeat their first half: the second half is predictable only by attending back.
    first = torch.randint(0, 12, (32, 8), generator=gen)
    ids = torch.cat([first, first], dim=1)
    losses = []
    for _ in range(40):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 12), ids[:, 9:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert losses[-1] < 0.6 * losses[0], f"{mechanism}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
