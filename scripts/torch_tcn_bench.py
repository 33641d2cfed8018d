#!/usr/bin/env python3
"""PyTorch side of effseq's side-by-side TCN benchmark: locuslab's TemporalConvNet (and pytorch-tcn) on the CPU.

The network is locuslab's `TemporalConvNet` (Bai, Kolter & Koltun 2018; copied from
crates/effseq/tests/fixtures/make_tcn_fixtures.py, which carries the locuslab code with its Chomp1d fix) with
`--levels` levels of `--channels` channels, kernel `--kernel`, input D, batch B, length T, dropout 0. Inputs are
batch-first, channels-last (B, T, D) as in effseq, transposed to the module's (B, D, T) inside the timed region.
After warm-up it times `--repeats` runs of

* `forward`           the whole sequence under torch.no_grad();
* `forward+backward`  loss = output.sum(), then backward with respect to the parameters and the input;

and prints the median and minimum milliseconds per run. `--step` also times one output at batch 1 for the
next time step: locuslab's network has no streaming mode, so that is a forward over the last receptive-field
inputs (1, D, RF) under no_grad (what a PyTorch user of that module does), in microseconds.

`--pytorch-tcn` also times the `pytorch-tcn` package's `TCN` (pip install pytorch-tcn) with matching settings
(same channels, kernel, dilations 2^i, weight_norm, ReLU, no skip connections, dropout 0, input_shape 'NLC'),
and, with `--step`, its streaming mode (`model(x_t, inference=True)` with its internal ring buffers).

The peak resident set size of the process is printed at the end, and `--json FILE` writes every figure.
torch is only needed for this script and the test-fixture generators, never by effseq; see scripts/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from typing import Callable

import torch

warnings.filterwarnings("ignore", message=".*weight_norm.*deprecated.*")


def load_locuslab() -> type:
    """`TemporalConvNet` from the fixture generator next to the tests (one copy of the locuslab code)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "crates", "effseq", "tests", "fixtures", "make_tcn_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_tcn_fixtures", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.TemporalConvNet


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=int, default=256, help="input features D (default 256)")
    p.add_argument("--channels", type=int, default=256, help="channels of every level (default 256)")
    p.add_argument("--levels", type=int, default=4, help="levels L (default 4)")
    p.add_argument("--kernel", type=int, default=3, help="kernel size K (default 3)")
    p.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    p.add_argument("--time", type=int, default=1024, help="sequence length T (default 1024)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per mode (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--step", action="store_true", help="also time one next-step output at B=1")
    p.add_argument("--step-repeats", type=int, default=500, help="timed single steps for --step (default 500)")
    p.add_argument("--pytorch-tcn", action="store_true", help="also time the pytorch-tcn package's TCN")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for parameters and inputs (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = p.parse_args()
    for flag in ("input", "channels", "levels", "kernel", "batch", "time", "repeats", "threads", "step_repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    return args


def receptive_field(args: argparse.Namespace) -> int:
    """1 + 2 (K-1) (2^L - 1)."""
    return 1 + 2 * (args.kernel - 1) * (2**args.levels - 1)


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


def bench_sequence(apply: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, args) -> dict[str, dict[str, float]]:
    """Median and minimum milliseconds of `forward` and `forward+backward` over a (B, T, D) batch.
    `apply(x)` maps (B, T, D) to (B, T, C)."""
    x = torch.randn(args.batch, args.time, args.input)  # (B, T, D)

    def forward() -> None:
        with torch.no_grad():
            apply(x)

    x_grad = x.clone().requires_grad_(True)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        x_grad.grad = None
        apply(x_grad).sum().backward()  # (B, T, C) -> scalar

    figures = {}
    for mode, run in (("forward", forward), ("forward+backward", forward_backward)):
        seconds = time_runs(run, args.warmup, args.repeats)
        figures[mode] = {"median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds)}
    return figures


def bench_step(step: Callable[[], None], args) -> dict[str, float]:
    """Median and minimum microseconds of one next-step output under no_grad."""
    with torch.no_grad():
        seconds = time_runs(step, max(args.warmup, 20), args.step_repeats)
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
    channels = [args.channels] * args.levels
    rf = receptive_field(args)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}; "
        f"L={args.levels} K={args.kernel} D={args.input} C={args.channels} B={args.batch} T={args.time} "
        f"(receptive field {rf}), {args.warmup} warm-up + {args.repeats} timed runs"
    )
    print(f"{'model':12} {'mode':18} {'median':>12} {'min':>12}")
    results: dict[str, dict[str, dict[str, float]]] = {}

    def show(name: str) -> None:
        for mode, f in results[name].items():
            if "median_ms" in f:
                print(f"{name:12} {mode:18} {f['median_ms']:9.2f} ms {f['min_ms']:9.2f} ms")
            else:
                print(f"{name:12} {mode:18} {f['median_us']:9.1f} us {f['min_us']:9.1f} us")

    locuslab = load_locuslab()(args.input, channels, kernel_size=args.kernel, dropout=0.0).eval()
    results["locuslab"] = bench_sequence(lambda x: locuslab(x.transpose(1, 2)).transpose(1, 2), locuslab, args)
    if args.step:
        window = torch.randn(1, args.input, rf)  # (B=1, D, RF): the inputs the next output depends on
        results["locuslab"]["step_b1 (window)"] = bench_step(lambda: locuslab(window)[:, :, -1], args)
    show("locuslab")

    if args.pytorch_tcn:
        try:
            from pytorch_tcn import TCN
        except ImportError:
            raise SystemExit("--pytorch-tcn needs the package: pip install pytorch-tcn")
        model = TCN(
            args.input,
            channels,
            kernel_size=args.kernel,
            dropout=0.0,
            causal=True,
            use_norm="weight_norm",
            activation="relu",
            use_skip_connections=False,
            input_shape="NLC",
        ).eval()
        results["pytorch-tcn"] = bench_sequence(model, model, args)
        if args.step:
            model.reset_buffers()
            x_t = torch.randn(1, 1, args.input)  # (B=1, T=1, D)
            results["pytorch-tcn"]["step_b1 (streaming)"] = bench_step(lambda: model(x_t, inference=True), args)
        show("pytorch-tcn")

    rss = peak_rss_mib()
    print(f"peak RSS {rss:.1f} MiB")
    if args.json:
        report = {
            "framework": "pytorch",
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "config": {
                "levels": args.levels,
                "kernel": args.kernel,
                "input": args.input,
                "channels": args.channels,
                "batch": args.batch,
                "time": args.time,
                "receptive_field": rf,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "step_repeats": args.step_repeats if args.step else None,
                "layout": "input (B, T, D), transposed to (B, D, T) inside the timed region",
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
