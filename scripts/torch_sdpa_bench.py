#!/usr/bin/env python3
"""PyTorch side of effseq's softmax-attention benchmark: `torch.nn.functional.scaled_dot_product_attention` on the CPU.

For every configuration (B, H, T, Dh) and mask (`is_causal=True` and `False`) it times

* `forward`           SDPA on (B, H, T, Dh) query, key and value under torch.no_grad();
* `forward+backward`  loss = (output * dout).sum() with a fixed random dout, then backward to q, k and v;

and prints the median and minimum milliseconds per run after warm-up, with the forward GFLOP/s
(causal forward FLOPs = 2 B H T^2 Dh, bidirectional = 4 B H T^2 Dh, as effseq counts them).
The defaults are the effseq attention benchmark's shapes: H=4, Dh=64, B in {1, 8}, T in {1024, 4096},
and T=16384 at B=1; `--configs B:T,B:T,...` picks others. Large configurations get fewer repeats
(`--budget-gflop`) so the whole run stays short. `--json FILE` writes every figure.
torch is only needed for this script and the test-fixture generators, never by effseq; see scripts/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="1:1024,8:1024,1:4096,8:4096,1:16384", help="comma-separated B:T pairs")
    p.add_argument("--heads", type=int, default=4, help="heads H (default 4)")
    p.add_argument("--head-dim", type=int, default=64, help="head width Dh (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per mode at most (default 5)")
    p.add_argument("--min-repeats", type=int, default=2, help="timed runs per mode at least (default 2)")
    p.add_argument("--budget-gflop", type=float, default=200.0, help="cap on timed forward GFLOP per mode (default 200)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--modes", default="forward,forward+backward", help="comma-separated subset of forward,forward+backward")
    p.add_argument("--masks", default="causal,full", help="comma-separated subset of causal,full")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = p.parse_args()
    try:
        args.configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    except ValueError:
        p.error("--configs must look like 1:1024,8:4096")
    for flag in ("heads", "head_dim", "repeats", "min_repeats", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def time_runs(run: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `run`, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def forward_flops(b: int, h: int, t: int, dh: int, causal: bool) -> float:
    """2 B H T^2 Dh for causal, 4 B H T^2 Dh for bidirectional (two products of T x T x Dh)."""
    return (2.0 if causal else 4.0) * b * h * t * t * dh


def main() -> None:
    """Times every configuration, mask and mode; prints a table and optionally writes JSON."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    h, dh = args.heads, args.head_dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}; H={h} Dh={dh}")
    print(f"{'B':>3} {'T':>6} {'mask':6} {'mode':17} {'median':>12} {'min':>12} {'fwd GFLOP/s':>12} runs")
    results = []
    for b, t in args.configs:
        q, k, v = (torch.randn(b, h, t, dh) for _ in range(3))  # (B, H, T, Dh)
        dout = torch.randn(b, h, t, dh)  # (B, H, T, Dh)
        for mask in args.masks.split(","):
            causal = mask == "causal"
            flops = forward_flops(b, h, t, dh, causal)
            repeats = int(max(args.min_repeats, min(args.repeats, args.budget_gflop * 1e9 // flops)))

            def forward() -> None:
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))

            def forward_backward() -> None:
                for x in (qg, kg, vg):
                    x.grad = None
                out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                (out * dout).sum().backward()

            for mode in args.modes.split(","):
                run = forward if mode == "forward" else forward_backward
                seconds = time_runs(run, args.warmup, repeats)
                median = statistics.median(seconds)
                row = {"batch": b, "heads": h, "time": t, "head_dim": dh, "mask": mask, "mode": mode, "median_ms": 1e3 * median, "min_ms": 1e3 * min(seconds), "repeats": repeats}
                row["forward_gflops_per_s"] = flops / median / 1e9 if mode == "forward" else None
                results.append(row)
                gf = f"{row['forward_gflops_per_s']:12.1f}" if mode == "forward" else f"{'':12}"
                print(f"{b:3} {t:6} {mask:6} {mode:17} {row['median_ms']:9.2f} ms {row['min_ms']:9.2f} ms {gf} {repeats}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"framework": "pytorch", "torch_version": torch.__version__, "threads": torch.get_num_threads(), "results": results}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
