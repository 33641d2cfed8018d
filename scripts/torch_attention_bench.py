#!/usr/bin/env python3
"""PyTorch side of effseq's side-by-side attention-layer benchmark (`cargo bench --bench attention`).

One self-attention layer of width D with H heads (input projection, attention, output projection) on (B, T, D):

* `softmax`    q/k/v projection + torch.nn.functional.scaled_dot_product_attention (is_causal) + output projection
               (what nn.MultiheadAttention does; SDPA picks its fused flash / memory-efficient CPU kernel);
* `linear`     the same projections with elu+1 features and the causal prefix sums of performer-pytorch's
               `causal_linear_attention_noncuda` (chunked cumulative sums, chunk 128: the PyTorch formulation that
               fits in memory; fast-transformers' C++ causal_product does not build here, see scripts/README.md);
* `performer`  performer-pytorch's own `SelfAttention(dim=D, heads=H, causal=...)` (FAVOR+, Dh ln Dh features).

After warm-up it times `--repeats` runs of `forward` (under no_grad) and `forward+backward` (loss = out.sum(),
gradients of the parameters and the input) and prints median and minimum milliseconds per configuration. Each
configuration runs in a fresh subprocess so that the peak RSS reported beside it is that configuration's own.
torch is only needed for this script and the fixture generators; see scripts/README.md.

    ~/torchenv/bin/python scripts/torch_attention_bench.py --models softmax,linear,performer --batch 1,8 \
        --seq-lens 1024,4096,16384 --json torch_attention.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def one(model: str, b: int, t: int, d: int, h: int, mode: str, repeats: int, warmup: int, threads: int, causal: bool) -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
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
    times = []
    for rep in range(warmup + repeats):
        start = time.perf_counter()
        if mode == "train":
            layer(x).sum().backward()
        else:
            with torch.no_grad():
                layer(x)
        if rep >= warmup:
            times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": model, "mode": mode, "batch": b, "seq_len": t, "dim": d, "heads": h, "causal": causal,
            "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "peak_rss_bytes": rss}


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
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration before it is reported as skipped")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        model, mode, b, t = a.one.split(":")
        print(json.dumps(one(model, int(b), int(t), a.dim, a.heads, mode, a.repeats, a.warmup, a.threads, not a.bidirectional)))
        return
    rows = []
    print(f"{'model':<10} {'mode':<8} {'B':>3} {'T':>6} {'median ms':>11} {'min ms':>10} {'peak RSS MiB':>13}")
    for model in a.models.split(","):
        for mode in a.modes.split(","):
            for b in map(int, a.batch.split(",")):
                for t in map(int, a.seq_lens.split(",")):
                    cmd = [sys.executable, __file__, "--one", f"{model}:{mode}:{b}:{t}", "--dim", str(a.dim), "--heads", str(a.heads),
                           "--repeats", str(a.repeats), "--warmup", str(a.warmup), "--threads", str(a.threads)]
                    if a.bidirectional:
                        cmd.append("--bidirectional")
                    try:
                        out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                        row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr.strip().splitlines()[-1:]}
                    except subprocess.TimeoutExpired:
                        row = {"error": f"over {a.timeout:.0f} s"}
                    row.update({"model": model, "mode": mode, "batch": b, "seq_len": t})
                    rows.append(row)
                    if "error" in row:
                        print(f"{model:<10} {mode:<8} {b:>3} {t:>6} skipped: {row['error']}", flush=True)
                    else:
                        print(f"{model:<10} {mode:<8} {b:>3} {t:>6} {row['median_ms']:>11.2f} {row['min_ms']:>10.2f} {row['peak_rss_bytes'] / 2**20:>13.0f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
