"""Plain-PyTorch references that effseq's kernels are tested against, written out from the papers and the PyTorch
implementations they replace, and run in float64.

FAVOR+: performer-pytorch's ``softmax_kernel`` maths with effseq's stabilisers (the max of the whole exponent, and a
running max over the keys in causal mode, see effseq's attention/favor.rs). The feature floor (``eps``) is written in ONE place, :func:`favor_feature`:
when effseq's feature map changes (e.g. where the floor sits), adjust that function and the tests follow.
"""

import sys

import torch
import torch.nn.functional as F

from conftest import FIXTURES

#: effseq's softmax-feature floor (relative to the largest feature; performer-pytorch's `eps` is 1e-4 after its own
#: stabiliser) and performer-pytorch's `kernel_epsilon` of generalized_kernel.
FAVOR_SOFTMAX_EPS = 1e-6
FAVOR_RELU_EPS = 1e-3
#: fast-transformers' linear-attention eps, added to the normaliser.
LINEAR_EPS = 1e-6


def favor_projections(x, projection):
    """performer-pytorch's `data_dash = (Dh^-1/4 x) Wᵀ` (..., T, M) and `diag = |x|² Dh^-1/2 / 2` (..., T, 1)."""
    normalizer = x.shape[-1] ** -0.25
    dash = torch.einsum("...td,md->...tm", normalizer * x, projection)
    diag = (x**2).sum(dim=-1, keepdim=True) * normalizer**2 / 2.0
    return dash, diag


def favor_feature(dash, diag, c, m):
    """The positive random feature of the softmax kernel with stabiliser `c`: m^-1/2 (exp(dash - diag - c) + floor).
    effseq's stabiliser is the max of the whole exponent `dash - diag`, so the largest feature is 1 and the floor
    (1e-6) is relative to it (performer-pytorch takes the max of `dash` alone and adds 1e-4)."""
    return m**-0.5 * (torch.exp(dash - diag - c) + FAVOR_SOFTMAX_EPS)


def favor_query_features(q, projection, kernel="softmax"):
    """Queries: each row its own stabiliser, the max of its exponents (detached, as performer-pytorch)."""
    dash, diag = favor_projections(q, projection)
    if kernel == "relu":
        return F.relu(dash) + FAVOR_RELU_EPS
    return favor_feature(dash, diag, (dash - diag).amax(dim=-1, keepdim=True).detach(), projection.shape[0])


def favor_key_features(k, projection, causal, kernel="softmax", lengths=None):
    """Keys and their stabiliser c (..., T, 1): causal, the running max over positions j' <= j and the features;
    bidirectional, one max over every valid key and feature of the (batch, head) (performer-pytorch's
    `amax(dim=(-1, -2))`). The ReLU kernel has no stabiliser (c = None)."""
    dash, diag = favor_projections(k, projection)
    if kernel == "relu":
        return F.relu(dash) + FAVOR_RELU_EPS, None
    exponent = dash - diag
    if causal:
        c = torch.cummax(exponent.amax(dim=-1), dim=-1).values.detach().unsqueeze(-1)
    else:
        valid = [dash.shape[-2]] * dash.shape[0] if lengths is None else lengths
        c = torch.stack([exponent[b, :, :n].amax(dim=(-1, -2), keepdim=True) for b, n in enumerate(valid)]).detach()  # (B, H, 1, 1)
    return favor_feature(dash, diag, c, projection.shape[0]), c


def key_mask(scores, lengths):
    """Zero the scores of the padded keys j >= lengths[b] (for every query)."""
    if lengths is None:
        return scores
    t = scores.shape[-1]
    keep = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B, T)
    return scores * keep[:, None, None, :].to(scores.dtype)


def favor_attention(q, k, v, projection, causal, kernel="softmax", lengths=None):
    """FAVOR+ attention as effseq computes it, written as the full T x T matrix. Causal: at query i every key j <= i is
    measured against the query's own running max c_i, A_ij = exp(c_j - c_i) phi(q_i).phi(k_j) (this is what effseq's
    prefix-state rescaling computes); the normaliser has no eps (the features carry it)."""
    fq = favor_query_features(q, projection, kernel)
    fk, c = favor_key_features(k, projection, causal, kernel, lengths)
    a = fq @ fk.transpose(-1, -2)  # (B, H, T, T)
    if causal:
        if c is not None:
            a = a * torch.exp(c.transpose(-1, -2) - c)
        a = a.tril()
    else:
        a = key_mask(a, lengths)
    return a @ v / a.sum(dim=-1, keepdim=True)


def linear_attention(q, k, v, causal, lengths=None):
    """Linear attention with phi = elu + 1 by the explicit masked sum: A = phi(q) phi(k)ᵀ, lower-triangular when
    causal, out = A v / (rowsum(A) + eps)."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    a = fq @ fk.transpose(-1, -2)  # (B, H, T, T)
    a = a.tril() if causal else key_mask(a, lengths)
    return a @ v / (a.sum(dim=-1, keepdim=True) + LINEAR_EPS)


def causal_linear_attention_cumsum(q, k, v):
    """The same causal attention by cumulative sums of phi(k) vᵀ and phi(k) (eq. 9 of Katharopoulos et al.)."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    num = torch.einsum("bhtf,bhtfe->bhte", fq, torch.einsum("bhtf,bhte->bhtfe", fk, v).cumsum(dim=2))
    den = torch.einsum("bhtf,bhtf->bht", fq, fk.cumsum(dim=2)).unsqueeze(-1)
    return num / (den + LINEAR_EPS)


def softmax_attention(q, k, v, causal, lengths=None):
    """PyTorch's own scaled_dot_product_attention (its math path in float64), padded keys masked."""
    mask = None
    if lengths is not None:
        t = q.shape[-2]
        mask = (torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1))[:, None, None, :]  # (B, 1, 1, T)
        if causal:
            mask = mask & torch.ones(t, t, dtype=torch.bool).tril()
            causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def selective_scan_ref():
    """mamba_ssm's selective_scan_ref, the plain-PyTorch copy that effseq's Mamba fixtures are made with."""
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_mamba_fixtures import selective_scan_ref as ref
    finally:
        sys.path.remove(str(FIXTURES))
    return ref
