"""effseq's CPU kernels as ``torch.autograd.Function``s: swap a model's attention or selective scan for effseq's and
train it with torch's optimizers (also under ``torch.nn.parallel.DistributedDataParallel`` on CPU, gloo).

Importing this module imports torch (``import effseq`` alone never does). Every function takes float32 CPU tensors
(a non-contiguous one is made contiguous first), hands their memory to the kernel without a copy, and returns tensors
that share the kernel's output buffers. Gradients flow to every floating input except the FAVOR+ projection and the
LSH rotations, which are constants (buffers). The backward cannot itself be differentiated (``once_differentiable``).

========================================  =======================================================================
effseq.torch                              replaces
========================================  =======================================================================
``softmax_attention``,                    ``torch.nn.functional.scaled_dot_product_attention`` (self-attention,
``scaled_dot_product_attention``          optional causal mask, right padding by ``lengths``)
``linear_attention``                      causal / non-causal linear attention with elu(x) + 1 features
                                          (fast-transformers' ``CausalLinearAttention``, performer-pytorch's
                                          ``causal_linear_attention_noncuda``)
``favor_attention``                       performer-pytorch's ``FastAttention`` (FAVOR+; causal keys use a running
                                          max, so no output depends on a later key)
``lsh_attention``                         reformer-pytorch's ``LSHAttention`` (shared QK, ``allow_duplicate_attention
                                          = False``)
``selective_scan_fn``                     ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` /
                                          ``selective_scan_ref`` (same signature, real A, variable B and C);
                                          ``selective_scan`` is the same in effseq's time-major layout
========================================  =======================================================================
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _effseq as _k
from .errors import DTypeError, ShapeError

Lengths = Optional[Union[Sequence[int], torch.Tensor]]

__all__ = [
    "softmax_attention",
    "scaled_dot_product_attention",
    "linear_attention",
    "favor_attention",
    "favor_projection",
    "lsh_attention",
    "selective_scan",
    "selective_scan_fn",
]


def _array(tensor: torch.Tensor, name: str):
    """The tensor's memory as a NumPy array (made contiguous first if it is not), after the checks effseq's kernels
    need that NumPy cannot see (type, device)."""
    if not isinstance(tensor, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise DTypeError(f"{name} is on {tensor.device}: effseq's kernels run on the CPU; move it with {name}.cpu()")
    if tensor.dtype != torch.float32:
        raise DTypeError(f"{name} must be float32, got {tensor.dtype}: effseq's kernels compute in float32; convert it with {name}.float()")
    return tensor.detach().contiguous().resolve_conj().resolve_neg().numpy()


def _lengths(lengths: Lengths):
    if lengths is None:
        return None
    if isinstance(lengths, torch.Tensor):
        return [int(n) for n in lengths.reshape(-1).tolist()]
    return [int(n) for n in lengths]


class _Op:
    """One kernel: names of its tensor inputs, a forward on arrays returning (outputs, context), a backward returning
    one gradient array (or None) per input; ``differentiable`` says which outputs carry gradients."""

    names: Tuple[str, ...] = ()
    differentiable: Tuple[bool, ...] = (True,)

    def forward(self, arrays, need_grad):
        raise NotImplementedError

    def backward(self, context, grad):
        raise NotImplementedError


class _KernelFunction(torch.autograd.Function):
    """Runs an :class:`_Op`. The inputs and outputs are also saved with ``save_for_backward``, so that an in-place
    change to one of them before the backward raises torch's usual error instead of corrupting the gradients
    (effseq's context reads the same memory)."""

    @staticmethod
    def forward(ctx, op: _Op, *inputs):
        need_grad = any(ctx.needs_input_grad[1:])
        outputs, context = op.forward([_array(x, name) for x, name in zip(inputs, op.names)], need_grad)
        outputs = tuple(torch.from_numpy(o) for o in outputs)
        ctx.op, ctx.context = op, context
        if need_grad:
            ctx.save_for_backward(*inputs, *outputs)
        constant = [o for o, d in zip(outputs, op.differentiable) if not d]
        if constant:
            ctx.mark_non_differentiable(*constant)
        return outputs[0] if len(outputs) == 1 else outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        ctx.saved_tensors  # noqa: B018  (raises if an input or output was modified in place since the forward)
        grads_in = ctx.op.backward(ctx.context, _array(grads[0], "gradient"))
        return (None,) + tuple(None if g is None else torch.from_numpy(g) for g in grads_in)


class _Attention(_Op):
    names = ("q", "k", "v")

    def __init__(self, forward, backward, **options):
        self._forward, self._backward, self.options = forward, backward, options

    def forward(self, arrays, need_grad):
        out, context = self._forward(*arrays, **self.options, need_grad=need_grad)
        return (out,), context

    def backward(self, context, grad):
        return self._backward(context, grad)


class _Favor(_Attention):
    names = ("q", "k", "v", "projection")

    def backward(self, context, grad):
        return (*self._backward(context, grad), None)


class _Lsh(_Attention):
    def __init__(self, with_rotations: bool, **options):
        super().__init__(_k.lsh_attention_forward, _k.lsh_attention_backward, **options)
        self.names = ("qk", "v", "rotations") if with_rotations else ("qk", "v")

    def forward(self, arrays, need_grad):
        qk, v, *rotations = arrays
        out, context = _k.lsh_attention_forward(qk, v, rotations=rotations[0] if rotations else None, **self.options, need_grad=need_grad)
        return (out,), context

    def backward(self, context, grad):
        dqk, dv = _k.lsh_attention_backward(context, grad)
        return (dqk, dv) + (None,) * (len(self.names) - 2)


class _Scan(_Op):
    names = ("u", "delta", "A", "B", "C", "D")
    differentiable = (True, False)  # y, last_state

    def forward(self, arrays, need_grad):
        y, last_state, context = _k.selective_scan_forward(*arrays, need_grad=need_grad)
        return (y, last_state), context

    def backward(self, context, grad):
        return _k.selective_scan_backward(context, grad)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, lengths: Lengths = None) -> torch.Tensor:
    """Exact attention ``softmax(q kᵀ / sqrt(Dh)) v`` in tiles (no T×T matrix), forward and backward.

    q, k, v: float32 (B, H, T, Dh). causal: query i sees keys j <= i. lengths: (B) valid keys per sequence (right
    padding; later keys are masked for every query). Returns (B, H, T, Dh)."""
    op = _Attention(_k.softmax_attention_forward, _k.softmax_attention_backward, causal=causal, lengths=_lengths(lengths))
    return _KernelFunction.apply(op, q, k, v)


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """A drop-in for ``torch.nn.functional.scaled_dot_product_attention`` on what effseq's kernel computes:
    self-attention shapes (query, key and value all (N, H, L, E) or (N, L, E)), no attn_mask (use ``is_causal``, or
    :func:`softmax_attention` with ``lengths`` for right padding), no dropout, the default scale 1/sqrt(E). Anything
    else raises NotImplementedError rather than computing something different."""
    if attn_mask is not None:
        raise NotImplementedError("effseq's attention takes no attn_mask: use is_causal=True, or effseq.torch.softmax_attention(..., lengths=...) for right padding")
    if dropout_p != 0.0:
        raise NotImplementedError("effseq's attention has no attention dropout: pass dropout_p=0.0")
    if enable_gqa:
        raise NotImplementedError("effseq's attention has no grouped-query attention: repeat the key and value heads first")
    e = query.shape[-1]
    if scale is not None and not math.isclose(scale, 1.0 / math.sqrt(e), rel_tol=1e-6):
        raise NotImplementedError(f"effseq's attention uses the default scale 1/sqrt(E) = {1.0 / math.sqrt(e):.6g}, got scale={scale}: scale the query instead")
    if query.dim() == 3:
        out = softmax_attention(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), causal=is_causal)
        return out.squeeze(1)
    if query.dim() != 4:
        raise ShapeError(f"effseq's attention takes (N, H, L, E) or (N, L, E) tensors, got query of shape {tuple(query.shape)}")
    return softmax_attention(query, key, value, causal=is_causal)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, lengths: Lengths = None) -> torch.Tensor:
    """Linear attention (Katharopoulos et al. 2020) with the feature map φ = elu(x) + 1:
    ``out_i = Σ_j φ(q_i)·φ(k_j) v_j / (Σ_j φ(q_i)·φ(k_j) + 1e-6)`` over ``j <= i`` (causal: a fused prefix sweep,
    memory O(T)) or over the valid keys.

    q, k, v: float32 (B, H, T, Dh); lengths: (B) valid keys per sequence (non-causal). Returns (B, H, T, Dh)."""
    op = _Attention(_k.linear_attention_forward, _k.linear_attention_backward, causal=causal, lengths=_lengths(lengths))
    return _KernelFunction.apply(op, q, k, v)


def favor_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    projection: torch.Tensor,
    *,
    causal: bool = True,
    kernel: str = "softmax",
    lengths: Lengths = None,
) -> torch.Tensor:
    """FAVOR+ attention (Choromanski et al. 2020), as performer-pytorch's ``FastAttention``: positive random features
    of the softmax kernel (``kernel="relu"``: its generalized ReLU kernel) fed to linear attention. In causal mode the
    keys' stabiliser is a running maximum (performer-pytorch takes the maximum over the whole sequence, so later keys
    change earlier outputs), and the prefix state is rescaled as it grows.

    q, k, v: float32 (B, H, T, Dh); projection: float32 (M, Dh) random features shared by the heads, e.g.
    :func:`favor_projection` or performer-pytorch's ``projection_matrix`` buffer; it gets no gradient. Returns
    (B, H, T, Dh)."""
    op = _Favor(_k.favor_attention_forward, _k.favor_attention_backward, causal=causal, kernel=kernel, lengths=_lengths(lengths))
    return _KernelFunction.apply(op, q, k, v, projection)


def favor_projection(head_dim: int, features: Optional[int] = None, seed: int = 0) -> torch.Tensor:
    """A FAVOR+ projection (features, head_dim): orthogonal Gaussian blocks with chi-distributed row norms, the one
    effseq's Performer layer 0 draws with train.seed = ``seed``. features: default int(Dh ln Dh)."""
    return torch.from_numpy(_k.favor_projection(head_dim, features=features, seed=seed))


def lsh_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    *,
    rotations: Optional[torch.Tensor] = None,
    seed: int = 0,
    n_hashes: Optional[int] = None,
    bucket_size: int = 64,
    n_buckets: Optional[int] = None,
    causal: bool = False,
    lengths: Lengths = None,
    dedup: bool = True,
    torch_dup_counts: bool = False,
) -> torch.Tensor:
    """LSH attention with shared query-keys (Kitaev et al. 2020), as reformer-pytorch's ``LSHAttention`` with
    ``allow_duplicate_attention=False``: hash by random rotations, sort, attend within each chunk of ``bucket_size``
    and the chunk before it, combine the rounds. Any T (padded internally).

    qk, v: float32 (B, H, T, Dh). rotations: (n_hashes, Dh, n_buckets/2) float32 (reformer-pytorch's
    ``torch.randn(1, Dh, n_hashes, n_buckets/2)[0].permute(1, 0, 2)``); without it drawn from ``seed`` (n_hashes
    default 4). ``torch_dup_counts=True`` counts duplicates exactly as reformer-pytorch (see effseq's lsh.rs).
    Returns (B, H, T, Dh)."""
    options = dict(seed=seed, n_hashes=n_hashes, bucket_size=bucket_size, n_buckets=n_buckets, causal=causal, lengths=_lengths(lengths), dedup=dedup, torch_dup_counts=torch_dup_counts)
    if rotations is None:
        return _KernelFunction.apply(_Lsh(False, **options), qk, v)
    return _KernelFunction.apply(_Lsh(True, **options), qk, v, rotations)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    *,
    return_last_state: bool = False,
):
    """Mamba's selective scan in effseq's time-major layout (no copies): u, delta (B, T, Dc) (delta after its softplus),
    A (Dc, N), B, C (B, T, N), D (Dc). Returns y (B, T, Dc), and the final state (B, Dc, N) (no gradient) with
    ``return_last_state``."""
    y, last_state = _KernelFunction.apply(_Scan(), u, delta, A, B, C, D)
    return (y, last_state) if return_last_state else y


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """``mamba_ssm``'s ``selective_scan_fn`` (and ``selective_scan_ref``) signature on effseq's fused CPU scan:
    u, delta, z (batch, D, L); A (D, N) real; B, C (batch, N, L) or (batch, 1, N, L); D, delta_bias (D).
    Computes ``delta = softplus(delta + delta_bias)`` (as asked), the scan, ``+ D u`` and the gate ``* silu(z)``;
    returns out (batch, D, L), and the final state (batch, D, N) with ``return_last_state``. The transposes into
    effseq's time-major layout are copies of u, delta, B and C (the scan itself does ~N times more work)."""
    if A.dim() != 2:
        raise ShapeError(f"A must be real of shape (D, N), got {tuple(A.shape)} (complex or shared-across-batch A is not supported)")
    B, C = (m.squeeze(1) if m.dim() == 4 and m.shape[1] == 1 else m for m in (B, C))
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    if D is None:
        D = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
    y, last_state = selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D, return_last_state=True)
    out = y.transpose(1, 2)  # (batch, D, L)
    if z is not None:
        out = out * F.silu(z)
    return (out, last_state) if return_last_state else out
