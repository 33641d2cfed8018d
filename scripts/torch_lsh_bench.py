#!/usr/bin/env python3
"""PyTorch side of effseq's Reformer LSH attention timing (`cargo run --release --example lsh_layer`).

One reformer-pytorch `LSHSelfAttention(dim=D, heads=H, bucket_size=64, n_hashes=4, causal=True)` layer on
(B, T, D) (D = 256, H = 4 by default; `allow_duplicate_attention=False`, as effseq's layer always counts duplicate
attention once). After warm-up it times `--repeats` runs of `forward` (under no_grad, eval mode) and
`forward+backward` (loss = out.sum(), gradients of the parameters and the input) and prints median and minimum
milliseconds per configuration. Each configuration runs in a fresh subprocess so that the peak RSS beside it is
that configuration's own. reformer-pytorch needs T to be a multiple of 2 * bucket_size.
torch is only needed for this script and the fixture generators; see scripts/README.md.

    /work/torchenv/bin/python scripts/torch_lsh_bench.py --batch 1,8 --seq-lens 1024,4096 --threads 2
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


def one(b: int, t: int, d: int, h: int, bucket: int, n_hashes: int, mode: str, repeats: int, warmup: int, threads: int, causal: bool) -> dict:
    import torch
    from reformer_pytorch import LSHSelfAttention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = LSHSelfAttention(d, heads=h, bucket_size=bucket, n_hashes=n_hashes, causal=causal, allow_duplicate_attention=False)
    layer.train(mode == "train")
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
    return {"model": "reformer-lsh", "mode": mode, "batch": b, "seq_len": t, "dim": d, "heads": h, "bucket_size": bucket,
            "n_hashes": n_hashes, "causal": causal, "threads": threads,
            "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "peak_rss_bytes": rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--seq-lens", default="1024,4096")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration before it is reported as skipped")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        mode, b, t = a.one.split(":")
        row = one(int(b), int(t), a.dim, a.heads, a.bucket_size, a.n_hashes, mode, a.repeats, a.warmup, a.threads, not a.bidirectional)
        print(json.dumps(row))
        return
    rows = []
    print(f"{'mode':<8} {'B':>3} {'T':>6} {'median ms':>11} {'min ms':>10} {'peak RSS MiB':>13}")
    for mode in a.modes.split(","):
        for b in map(int, a.batch.split(",")):
            for t in map(int, a.seq_lens.split(",")):
                cmd = [sys.executable, __file__, "--one", f"{mode}:{b}:{t}", "--dim", str(a.dim), "--heads", str(a.heads),
                       "--bucket-size", str(a.bucket_size), "--n-hashes", str(a.n_hashes), "--repeats", str(a.repeats),
                       "--warmup", str(a.warmup), "--threads", str(a.threads)]
                if a.bidirectional:
                    cmd.append("--bidirectional")
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                    row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr.strip().splitlines()[-1:]}
                except subprocess.TimeoutExpired:
                    row = {"error": f"over {a.timeout:.0f} s"}
                row.update({"mode": mode, "batch": b, "seq_len": t})
                rows.append(row)
                if "error" in row:
                    print(f"{mode:<8} {b:>3} {t:>6} skipped: {row['error']}", flush=True)
                else:
                    print(f"{mode:<8} {b:>3} {t:>6} {row['median_ms']:>11.2f} {row['min_ms']:>10.2f} {row['peak_rss_bytes'] / 2**20:>13.0f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
