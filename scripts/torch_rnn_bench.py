#!/usr/bin/env python3
"""PyTorch side of effseq's side-by-side RNN benchmark: torch.nn.LSTM and torch.nn.GRU on the CPU.

For each model (one layer by default, batch_first=True, input D, hidden H, batch B, length T) it times, after
warm-up, `--repeats` runs of

* `forward`           the whole sequence under torch.no_grad();
* `forward+backward`  loss = output.sum(), then backward with respect to the parameters and the input;

and prints the median and minimum milliseconds per run. `--step` also times one streaming step at batch 1
(`model(x_t, state)` for a single time step under no_grad, median and minimum microseconds), for comparison with
effseq's streaming `step`. The peak resident set size of the process (resource.getrusage) is printed at the end,
and `--json FILE` writes every figure as records in the shape of `effseq bench --json-file` (modes `forward`,
`train`, `step`; see scripts/bench_timing.py, which also holds the `--budget` time guard).

`--train-steps N` only runs N forward+backward steps of the first model and exits: the process whose peak RSS
scripts/results.sh reads with `/usr/bin/time -v` (a training run's memory, `import torch` included).

torch is only needed for this script and the test-fixture generator, never by effseq; see scripts/README.md.
"""

from __future__ import annotations

import argparse
import platform

import torch
from bench_timing import HEADER, MIB, format_record, peak_rss_bytes, record, time_runs, write_report

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
    p.add_argument("--budget", type=float, help="seconds one configuration may take (see bench_timing.py; default none)")
    p.add_argument("--train-steps", type=int, metavar="N", help="only run N forward+backward steps of the first model")
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


def bench_sequence(model: torch.nn.Module, kind: str, args: argparse.Namespace) -> list[dict]:
    """Records of `forward` and `train` (forward+backward) over a (B, T, D) batch."""
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

    return [
        record(kind, mode, args.batch, args.time, time_runs(run, args.warmup, args.repeats, args.budget))
        for mode, run in (("forward", forward), ("train", forward_backward))
    ]


def bench_step(model: torch.nn.Module, kind: str, args: argparse.Namespace) -> dict:
    """Record of one streaming step `model(x_t, state)` at B=1 under no_grad (`step_us`: its median in µs)."""
    x_t = torch.randn(1, 1, args.input)  # (B=1, T=1, D)
    h = torch.zeros(args.layers, 1, args.hidden)  # (L, B=1, H)
    state = (h, torch.zeros_like(h)) if kind == "lstm" else h
    holder = {"state": state}

    def step() -> None:
        _, holder["state"] = model(x_t, holder["state"])

    with torch.no_grad():
        timing = time_runs(step, max(args.warmup, 100), args.step_repeats)
    return record(kind, "step", 1, args.time, timing, step_us=1e3 * timing["median_ms"])


def train_only(args: argparse.Namespace) -> None:
    """`--train-steps N` forward+backward steps of the first model, for an outside peak-RSS reading."""
    model = MODELS[args.models[0]](args.input, args.hidden, num_layers=args.layers, batch_first=True)
    x = torch.randn(args.batch, args.time, args.input, requires_grad=True)  # (B, T, D)
    for _ in range(args.train_steps):
        model.zero_grad()
        output, _ = model(x)  # (B, T, H)
        output.sum().backward()
    print(f"{args.models[0]}: {args.train_steps} training steps, peak RSS {peak_rss_bytes() / MIB:.1f} MiB")


def main() -> None:
    """Runs every selected model and mode, prints a table and optionally writes JSON."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.train_steps:
        train_only(args)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}; "
        f"L={args.layers} D={args.input} H={args.hidden} B={args.batch} T={args.time}, "
        f"{args.warmup} warm-up + {args.repeats} timed runs"
    )
    print(HEADER)
    records: list[dict] = []
    for kind in args.models:
        model = MODELS[kind](args.input, args.hidden, num_layers=args.layers, batch_first=True)
        mine = bench_sequence(model, kind, args)
        if args.step:
            mine.append(bench_step(model, kind, args))
        for rec in mine:
            print(format_record(rec), flush=True)
        records += mine
    print(f"peak RSS {peak_rss_bytes() / MIB:.1f} MiB")
    if args.json:
        config = {
            "layers": args.layers,
            "input": args.input,
            "hidden": args.hidden,
            "batch": args.batch,
            "time": args.time,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "step_repeats": args.step_repeats if args.step else None,
            "budget_s": args.budget,
            "batch_first": True,
        }
        write_report(args.json, torch.__version__, torch.get_num_threads(), config, records)


if __name__ == "__main__":
    main()
