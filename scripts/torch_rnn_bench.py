#!/usr/bin/env python3
"""PyTorch side of effseq's side-by-side RNN benchmark: torch.nn.LSTM and torch.nn.GRU on the CPU.

For each model (one layer by default, batch_first=True, input D, hidden H, batch B, length T) it times, after
warm-up, `--repeats` runs of

* `forward`           the whole sequence under torch.no_grad();
* `forward+backward`  loss = output.sum(), then backward with respect to the parameters and the input;

and prints the median and minimum milliseconds per run. `--step` also times one streaming step at batch 1
(`model(x_t, state)` for a single time step under no_grad, median and minimum microseconds), for comparison with
effseq's streaming `step`. The peak resident set size of the process (resource.getrusage) is printed at the end,
and `--json FILE` writes every figure.

torch is only needed for this script and the test-fixture generator, never by effseq; see scripts/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import torch

MODELS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lstm,gru", help="comma-separated subset of: lstm, gru (default both)")
    p.add_argument("--input", type=int, default=256, help="input features D (default 256)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size H (default 256)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers L (default 1)")
    p.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    p.add_argument("--time", type=int, default=1024, help="sequence length T (default 1024)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per mode (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--step", action="store_true", help="also time one streaming step at B=1")
    p.add_argument("--step-repeats", type=int, default=2000, help="timed single steps for --step (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for parameters and inputs (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = p.parse_args()
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    for flag in ("input", "hidden", "layers", "batch", "time", "repeats", "threads", "step_repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
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


def bench_sequence(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median and minimum milliseconds of `forward` and `forward+backward` over a (B, T, D) batch."""
    x = torch.randn(args.batch, args.time, args.input)  # (B, T, D)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    x_grad = x.clone().requires_grad_(True)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        x_grad.grad = None
        output, _ = model(x_grad)  # (B, T, H)
        output.sum().backward()

    figures = {}
    for mode, run in (("forward", forward), ("forward+backward", forward_backward)):
        seconds = time_runs(run, args.warmup, args.repeats)
        figures[mode] = {"median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds)}
    return figures


def bench_step(model: torch.nn.Module, kind: str, args: argparse.Namespace) -> dict[str, float]:
    """Median and minimum microseconds of one streaming step `model(x_t, state)` at B=1 under no_grad."""
    x_t = torch.randn(1, 1, args.input)  # (B=1, T=1, D)
    h = torch.zeros(args.layers, 1, args.hidden)  # (L, B=1, H)
    state = (h, torch.zeros_like(h)) if kind == "lstm" else h
    holder = {"state": state}

    def step() -> None:
        _, holder["state"] = model(x_t, holder["state"])

    with torch.no_grad():
        seconds = time_runs(step, max(args.warmup, 100), args.step_repeats)
    return {"median_us": 1e6 * statistics.median(seconds), "min_us": 1e6 * min(seconds)}


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main() -> None:
    """Runs every selected model and mode, prints a table and optionally writes JSON."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}; "
        f"L={args.layers} D={args.input} H={args.hidden} B={args.batch} T={args.time}, "
        f"{args.warmup} warm-up + {args.repeats} timed runs"
    )
    print(f"{'model':6} {'mode':18} {'median':>12} {'min':>12}")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in args.models:
        model = MODELS[kind](args.input, args.hidden, num_layers=args.layers, batch_first=True)
        results[kind] = bench_sequence(model, args)
        for mode, f in results[kind].items():
            print(f"{kind:6} {mode:18} {f['median_ms']:9.2f} ms {f['min_ms']:9.2f} ms")
        if args.step:
            f = results[kind]["step_b1"] = bench_step(model, kind, args)
            print(f"{kind:6} {'step (B=1)':18} {f['median_us']:9.1f} us {f['min_us']:9.1f} us")

    rss = peak_rss_mib()
    print(f"peak RSS {rss:.1f} MiB")
    if args.json:
        report = {
            "framework": "pytorch",
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "config": {
                "layers": args.layers,
                "input": args.input,
                "hidden": args.hidden,
                "batch": args.batch,
                "time": args.time,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "step_repeats": args.step_repeats if args.step else None,
                "batch_first": True,
            },
            "results": results,
            "peak_rss_mib": rss,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
