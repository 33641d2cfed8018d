#!/usr/bin/env python3
"""PyTorch side of effseq's side-by-side Mamba benchmark: one Mamba layer built on mamba_ssm's `selective_scan_ref`.

The network is the plain-PyTorch copy of mamba_ssm's Mamba stack in crates/effseq/tests/fixtures/make_mamba_fixtures.py
(`MambaNet`: `--layers` residual layers of RMSNorm + Mamba mixer, final RMSNorm; input D = d_model so there is no
encoder), with d_model `--d-model`, N = `--d-state`, expand 2, K = 4, R = ceil(d_model / 16), float32, on the CPU.
For every T in `--times` it times, after `--warmup` untimed runs,

* `forward`           the whole sequence under torch.no_grad();
* `forward+backward`  loss = output.sum(), then backward with respect to the parameters and the input;

and prints the median and minimum milliseconds and the median microseconds per token (B·T tokens). `--json FILE`
writes every figure as records in the shape of `effseq bench --json-file` (modes `forward` and `train`; see
scripts/bench_timing.py, which also holds the `--budget` time guard).

`selective_scan_ref` materialises deltaA and deltaB_u of shape (B, E, T, N) and runs a Python loop over T, so its
memory grows as B·E·T·N·4 bytes per tensor (1 GiB each at B = 8, E = 512, N = 16, T = 4096). Its backward is
quadratic in T: autograd's backward of every step's slice `deltaA[:, :, i]` materialises a zero gradient of the whole
(B, E, T, N) tensor (measured here: T = 128 → 256 costs 3.2× more). T above `--max-time` (forward, default 4096) or
`--max-time-backward` (forward+backward, default 512) is skipped and reported as such. The mamba_ssm CUDA kernels,
which fuse the scan, do not run on the CPU.

On a machine shared with other jobs, OpenMP's busy-waiting worker threads can slow torch down several-fold; run with
`OMP_WAIT_POLICY=PASSIVE` there (the figures in the effseq report were taken so).

torch is only needed for this script and the fixture generators, never by effseq; see scripts/README.md.
"""

from __future__ import annotations

import argparse
import platform

import torch
from bench_timing import HEADER, MIB, foreseen_skip, format_record, load_fixture_generator, peak_rss_bytes, record, time_runs, write_report


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=256, help="d_model (default 256; E = 2 d_model)")
    p.add_argument("--d-state", type=int, default=16, help="N (default 16)")
    p.add_argument("--layers", type=int, default=1, help="layers L (default 1)")
    p.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    p.add_argument("--times", default="1024,4096,16384,65536", help="comma-separated sequence lengths T")
    p.add_argument("--max-time", type=int, default=4096, help="skip forward above this T (default 4096)")
    p.add_argument(
        "--max-time-backward", type=int, default=512, help="skip forward+backward above this T (default 512)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--budget", type=float, help="seconds one configuration may take (see bench_timing.py; default none)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = args.d_model
    model = load_fixture_generator("make_mamba_fixtures").MambaNet(d, d, args.layers, args.d_state, 4, 2, -(-d // 16)).eval()
    times = [int(t) for t in args.times.split(",") if t]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}; "
        f"selective_scan_ref, L={args.layers} d_model={d} E={2 * d} N={args.d_state} K=4 B={args.batch}, "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    print(HEADER + f" {'us/token':>10}")
    records: list[dict] = []
    previous: dict[str, tuple[int, dict]] = {}  # mode -> (T, record) at the previous length
    for t in sorted(times):
        x = torch.randn(args.batch, t, d)  # (B, T, D)
        x_grad = x.clone().requires_grad_(True)

        def forward() -> None:
            with torch.no_grad():
                model(x)

        def forward_backward() -> None:
            model.zero_grad(set_to_none=False)
            x_grad.grad = None
            model(x_grad).sum().backward()

        modes = (
            ("forward", forward, args.max_time, "selective_scan_ref's (B, E, T, N) tensors"),
            ("train", forward_backward, args.max_time_backward, "selective_scan_ref's autograd backward is quadratic in T"),
        )
        for mode, run, cap, why in modes:
            estimate = foreseen_skip(previous.get(mode), t, args.budget, None)
            if t > cap:
                rec = record("selective_scan_ref", mode, args.batch, t, skipped=f"not run above T = {cap}: {why}")
            elif estimate:
                rec = record("selective_scan_ref", mode, args.batch, t, skipped=estimate)
            else:
                timing = time_runs(run, args.warmup, args.repeats, args.budget)
                rec = record("selective_scan_ref", mode, args.batch, t, timing, us_per_token=1e3 * timing["median_ms"] / (args.batch * t))
            records.append(rec)
            previous[mode] = (t, rec)
            print(format_record(rec) + (f" {rec['us_per_token']:10.2f}" if "us_per_token" in rec else ""), flush=True)
    print(f"peak RSS {peak_rss_bytes() / MIB:.1f} MiB")
    if args.json:
        write_report(args.json, torch.__version__, torch.get_num_threads(), vars(args), records)


if __name__ == "__main__":
    main()
