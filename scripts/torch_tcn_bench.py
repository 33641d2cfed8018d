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

The peak resident set size of the process is printed at the end, and `--json FILE` writes every figure as records
in the shape of `effseq bench --json-file` (modes `forward`, `train`, `step`; scripts/bench_timing.py, which also
holds the `--budget` time guard).
torch is only needed for this script and the test-fixture generators, never by effseq; see scripts/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import warnings
from typing import Callable

import torch
from bench_timing import HEADER, MIB, format_record, load_fixture_generator, peak_rss_bytes, record, time_runs, write_report

warnings.filterwarnings("ignore", message=".*weight_norm.*deprecated.*")


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
    p.add_argument("--budget", type=float, help="seconds one configuration may take (see bench_timing.py; default none)")
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


def bench_sequence(name: str, apply: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, args) -> list[dict]:
    """Records of `forward` and `train` (forward+backward) over a (B, T, D) batch; `apply(x)` maps (B, T, D) to
    (B, T, C)."""
    x = torch.randn(args.batch, args.time, args.input)  # (B, T, D)

    def forward() -> None:
        with torch.no_grad():
            apply(x)

    x_grad = x.clone().requires_grad_(True)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        x_grad.grad = None
        apply(x_grad).sum().backward()  # (B, T, C) -> scalar

    return [
        record(name, mode, args.batch, args.time, time_runs(run, args.warmup, args.repeats, args.budget))
        for mode, run in (("forward", forward), ("train", forward_backward))
    ]


def bench_step(name: str, step: Callable[[], None], how: str, args) -> dict:
    """Record of one next-step output at B=1 under no_grad (`step_us`: its median in µs; `how` says what a step is)."""
    with torch.no_grad():
        timing = time_runs(step, max(args.warmup, 20), args.step_repeats)
    return record(name, "step", 1, args.time, timing, step_us=1e3 * timing["median_ms"], step_kind=how)


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
    print(HEADER)
    records: list[dict] = []

    def show(mine: list[dict]) -> None:
        for rec in mine:
            print(format_record(rec), flush=True)
        records.extend(mine)

    locuslab = load_fixture_generator("make_tcn_fixtures").TemporalConvNet(args.input, channels, kernel_size=args.kernel, dropout=0.0).eval()
    mine = bench_sequence("locuslab", lambda x: locuslab(x.transpose(1, 2)).transpose(1, 2), locuslab, args)
    if args.step:
        window = torch.randn(1, args.input, rf)  # (B=1, D, RF): the inputs the next output depends on
        mine.append(bench_step("locuslab", lambda: locuslab(window)[:, :, -1], "re-runs the receptive field", args))
    show(mine)

    versions = {}
    if args.pytorch_tcn:
        try:
            from pytorch_tcn import TCN
        except ImportError:
            raise SystemExit("--pytorch-tcn needs the package: pip install pytorch-tcn")
        versions["pytorch-tcn"] = importlib.metadata.version("pytorch-tcn")
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
        mine = bench_sequence("pytorch-tcn", model, model, args)
        if args.step:
            model.reset_buffers()
            x_t = torch.randn(1, 1, args.input)  # (B=1, T=1, D)
            mine.append(bench_step("pytorch-tcn", lambda: model(x_t, inference=True), "its streaming mode", args))
        show(mine)

    print(f"peak RSS {peak_rss_bytes() / MIB:.1f} MiB")
    if args.json:
        config = {
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
            "budget_s": args.budget,
            "layout": "input (B, T, D), transposed to (B, D, T) inside the timed region",
        }
        write_report(args.json, torch.__version__, torch.get_num_threads(), config, records, versions=versions)


if __name__ == "__main__":
    main()
