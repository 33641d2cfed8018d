"""effseq's CPU kernels on NumPy arrays: forward and backward of softmax (tiled, FlashAttention-style), linear,
FAVOR+ and LSH attention and Mamba's selective scan.

Every ``*_forward`` takes float32, C-contiguous arrays, reads them in place (no copy), runs without the GIL and
returns new arrays (handed to NumPy without a copy) plus a :class:`KernelContext` that the matching ``*_backward``
takes with the output gradient. The context keeps references to the inputs and the output, not copies: do not
modify them in place before the backward (``effseq.torch`` enforces this through torch's version counters).
``need_grad=False`` returns no context and keeps nothing.

Attention layouts are head-major, ``(B, H, T, Dh)``, like ``torch.nn.functional.scaled_dot_product_attention``; the
scan is time-major, ``u, delta (B, T, Dc)``, ``B, C (B, T, N)``. Bad input raises an :mod:`effseq.errors` exception
(``DTypeError`` is a ``TypeError``; ``ShapeError`` and ``InvalidArgumentError`` are ``ValueError``s).

>>> import numpy as np, effseq.kernels as K
>>> q = k = v = np.random.default_rng(0).standard_normal((1, 2, 8, 4), dtype=np.float32)
>>> out, ctx = K.linear_attention_forward(q, k, v, causal=True)
>>> dq, dk, dv = K.linear_attention_backward(ctx, np.ones_like(out))
"""

from ._effseq import (
    KernelContext,
    favor_attention_backward,
    favor_attention_forward,
    favor_features,
    favor_projection,
    linear_attention_backward,
    linear_attention_forward,
    lsh_attention_backward,
    lsh_attention_forward,
    lsh_default_buckets,
    lsh_rotations,
    selective_scan_backward,
    selective_scan_forward,
    softmax_attention_backward,
    softmax_attention_forward,
)

__all__ = [
    "KernelContext",
    "favor_attention_backward",
    "favor_attention_forward",
    "favor_features",
    "favor_projection",
    "linear_attention_backward",
    "linear_attention_forward",
    "lsh_attention_backward",
    "lsh_attention_forward",
    "lsh_default_buckets",
    "lsh_rotations",
    "selective_scan_backward",
    "selective_scan_forward",
    "softmax_attention_backward",
    "softmax_attention_forward",
]
