#!/usr/bin/env python3
"""PyTorch side of effseq's side-by-side attention-layer benchmark (`cargo bench --bench attention`).

One self-attention layer of width D with H heads (input projection, attention, output projection) on (B, T, D):

* `softmax`    q/k/v projection + torch.nn.functional.scaled_dot_product_attention (is_causal) + output projection
               (what nn.MultiheadAttention does; SDPA picks its fused flash / memory-efficient CPU kernel);
* `linear`     the same projections with elu+1 features and the causal prefix sums of performer-pytorch's
               `causal_linear_attention_noncuda` (chunked cumulative sums, chunk 128: the PyTorch formulation that
               fits in memory; fast-transformers' C++ causal_product does not build here, see scripts/README.md);
* `performer`  performer-pytorch's own `SelfAttention(dim=D, heads=H, causal=...)` (FAVOR+, Dh ln Dh features).

After warm-up it times `--repeats` runs of `forward` (under no_grad) and `train` (forward+backward: loss = out.sum(),
gradients of the parameters and the input) and prints median and minimum milliseconds per configuration. Each
configuration runs in a fresh subprocess so that the peak RSS reported beside it is that configuration's own. The
time guard (`--budget`, `--max-rss-gib`; scripts/bench_timing.py) cuts long configurations short and skips longer
ones estimated over it; `--json FILE` writes records in the shape of `effseq bench --json-file`.
torch is only needed for this script and the fixture generators; see scripts/README.md.

    ~/torchenv/bin/python scripts/torch_attention_bench.py --models softmax,linear,performer --batch 1,8 \
        --seq-lens 1024,4096 --budget 15 --json torch_attention.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import warnings

from bench_timing import HEADER, isolated_grid, peak_rss_bytes, record, time_runs, write_report

warnings.filterwarnings("ignore")


def one(model: str, mode: str, b: int, t: int, a: argparse.Namespace) -> dict:
    """Times one configuration in this process; returns its record."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, h, causal = a.dim, a.heads, not a.bidirectional
    dh = d // h
    if model == "performer":
        from performer_pytorch import SelfAttention

        layer = SelfAttention(dim=d, heads=h, causal=causal, dim_head=dh)
    else:
        from performer_pytorch.performer_pytorch import causal_linear_attention_noncuda, linear_attention

        class Layer(nn.Module):
            def __init__(self):
                super().__init__()
                self.in_proj = nn.Linear(d, 3 * d)
                self.out_proj = nn.Linear(d, d)

            def forward(self, x):
                q, k, v = self.in_proj(x).chunk(3, dim=-1)
                q, k, v = (z.reshape(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
                if model == "softmax":
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                else:
                    q, k = F.elu(q) + 1, F.elu(k) + 1
                    o = causal_linear_attention_noncuda(q, k, v) if causal else linear_attention(q, k, v)
                return self.out_proj(o.transpose(1, 2).reshape(b, t, d))

        layer = Layer()
    x = torch.randn(b, t, d, requires_grad=(mode == "train"))

    def run() -> None:
        if mode == "train":
            layer(x).sum().backward()
        else:
            with torch.no_grad():
                layer(x)

    timing = time_runs(run, a.warmup, a.repeats, a.budget)
    return record(model, mode, b, t, timing, dim=d, heads=h, causal=causal, threads=torch.get_num_threads(), peak_rss_bytes=peak_rss_bytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="softmax,linear,performer")
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--seq-lens", default="1024,4096,16384")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--budget", type=float, help="seconds one configuration may take (see bench_timing.py; default none)")
    p.add_argument("--max-rss-gib", type=float, default=8.0, help="skip configurations estimated above this peak RSS (default 8)")
    p.add_argument("--timeout", type=float, help="seconds before a configuration's process is killed (default 3 x budget + 60, or 600)")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        model, mode, b, t = a.one.split(":")
        print(json.dumps(one(model, mode, int(b), int(t), a)))
        return
    a.timeout = a.timeout or (3 * a.budget + 60 if a.budget else 600)
    flags = ["--dim", str(a.dim), "--heads", str(a.heads), "--repeats", str(a.repeats), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    flags += ["--bidirectional"] if a.bidirectional else []
    flags += ["--budget", str(a.budget)] if a.budget else []

    def command(model: str, mode: str, b: int, t: int) -> list[str]:
        return [sys.executable, __file__, "--one", f"{model}:{mode}:{b}:{t}", *flags]

    kinds = [(model, mode, b) for model in a.models.split(",") for mode in a.modes.split(",") for b in map(int, a.batch.split(","))]
    print(HEADER)
    records = isolated_grid(kinds, list(map(int, a.seq_lens.split(","))), command, a.budget, a.max_rss_gib * 2**30, a.timeout)
    if a.json:
        import torch

        settings = {k: getattr(a, k) for k in ("dim", "heads", "repeats", "warmup", "bidirectional", "budget", "max_rss_gib", "timeout")}
        versions = {"performer-pytorch": importlib.metadata.version("performer-pytorch")}
        write_report(a.json, torch.__version__, a.threads, settings, records, versions=versions)


if __name__ == "__main__":
    main()
