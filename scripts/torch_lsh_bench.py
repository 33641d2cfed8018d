#!/usr/bin/env python3
"""PyTorch side of effseq's Reformer LSH attention timing (`cargo run --release --example lsh_layer`).

One reformer-pytorch `LSHSelfAttention(dim=D, heads=H, bucket_size=64, n_hashes=4, causal=True)` layer on
(B, T, D) (D = 256, H = 4 by default; `allow_duplicate_attention=False`, as effseq's layer always counts duplicate
attention once). After warm-up it times `--repeats` runs of `forward` (under no_grad, eval mode) and `train`
(forward+backward: loss = out.sum(), gradients of the parameters and the input) and prints median and minimum
milliseconds per configuration. Each configuration runs in a fresh subprocess so that the peak RSS beside it is that
configuration's own. reformer-pytorch needs T to be a multiple of 2 * bucket_size. The time guard (`--budget`,
`--max-rss-gib`; scripts/bench_timing.py) cuts long configurations short and skips longer ones estimated over it;
`--json FILE` writes records in the shape of `effseq bench --json-file`.
torch is only needed for this script and the fixture generators; see scripts/README.md.

    ~/torchenv/bin/python scripts/torch_lsh_bench.py --batch 1,8 --seq-lens 1024,4096 --threads 2 --budget 15
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import warnings

from bench_timing import HEADER, isolated_grid, peak_rss_bytes, record, time_runs, write_report

warnings.filterwarnings("ignore")


def one(mode: str, b: int, t: int, a: argparse.Namespace) -> dict:
    """Times one configuration in this process; returns its record."""
    import torch
    from reformer_pytorch import LSHSelfAttention

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    causal = not a.bidirectional
    layer = LSHSelfAttention(a.dim, heads=a.heads, bucket_size=a.bucket_size, n_hashes=a.n_hashes, causal=causal, allow_duplicate_attention=False)
    layer.train(mode == "train")
    x = torch.randn(b, t, a.dim, requires_grad=(mode == "train"))

    def run() -> None:
        if mode == "train":
            layer(x).sum().backward()
        else:
            with torch.no_grad():
                layer(x)

    timing = time_runs(run, a.warmup, a.repeats, a.budget)
    return record("reformer-pytorch", mode, b, t, timing, dim=a.dim, heads=a.heads, bucket_size=a.bucket_size, n_hashes=a.n_hashes,
                  causal=causal, threads=torch.get_num_threads(), peak_rss_bytes=peak_rss_bytes())


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
    p.add_argument("--budget", type=float, help="seconds one configuration may take (see bench_timing.py; default none)")
    p.add_argument("--max-rss-gib", type=float, default=8.0, help="skip configurations estimated above this peak RSS (default 8)")
    p.add_argument("--timeout", type=float, help="seconds before a configuration's process is killed (default 3 x budget + 60, or 600)")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        mode, b, t = a.one.split(":")
        print(json.dumps(one(mode, int(b), int(t), a)))
        return
    a.timeout = a.timeout or (3 * a.budget + 60 if a.budget else 600)
    flags = ["--dim", str(a.dim), "--heads", str(a.heads), "--bucket-size", str(a.bucket_size), "--n-hashes", str(a.n_hashes)]
    flags += ["--repeats", str(a.repeats), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    flags += ["--bidirectional"] if a.bidirectional else []
    flags += ["--budget", str(a.budget)] if a.budget else []

    def command(_model: str, mode: str, b: int, t: int) -> list[str]:
        return [sys.executable, __file__, "--one", f"{mode}:{b}:{t}", *flags]

    kinds = [("reformer-pytorch", mode, b) for mode in a.modes.split(",") for b in map(int, a.batch.split(","))]
    print(HEADER)
    records = isolated_grid(kinds, list(map(int, a.seq_lens.split(","))), command, a.budget, a.max_rss_gib * 2**30, a.timeout)
    if a.json:
        import torch

        settings = {k: getattr(a, k) for k in ("dim", "heads", "bucket_size", "n_hashes", "repeats", "warmup", "bidirectional", "budget", "max_rss_gib", "timeout")}
        versions = {"reformer-pytorch": importlib.metadata.version("reformer-pytorch")}
        write_report(a.json, torch.__version__, a.threads, settings, records, versions=versions)


if __name__ == "__main__":
    main()
