#!/usr/bin/env python3
"""Side-by-side timing of effseq's kernels called from PyTorch (``effseq.torch``) against the PyTorch code each one
replaces, at equal thread counts (``torch.set_num_threads(N)`` and ``RAYON_NUM_THREADS = MATMUL_NUM_THREADS = N``
for effseq), in one process, the two alternating run by run so that both see the same machine load.

==========  =====================================================  ================================================
kernel      effseq.torch                                           PyTorch reference
==========  =====================================================  ================================================
softmax     ``softmax_attention(causal=True)``                     ``F.scaled_dot_product_attention(is_causal)``
linear      ``linear_attention(causal=True)`` (elu + 1)            elu + 1, then performer-pytorch's
                                                                   ``causal_linear_attention_noncuda``
favor       ``favor_attention(causal=True)``, the reference's      performer-pytorch's ``FastAttention(causal=True)``
            own projection matrix                                  (Dh ln Dh features)
lsh         ``lsh_attention(causal=True, torch_dup_counts=True)``  reformer-pytorch's ``LSHAttention(causal=True,
                                                                   allow_duplicate_attention=False)``
scan        ``selective_scan_fn`` (softplus, D, gate z)            mamba_ssm's ``selective_scan_ref`` (the plain
                                                                   copy in crates/effseq/tests/fixtures)
==========  =====================================================  ================================================

Attention inputs are (B, H, T, Dh) (LSH: shared qk); the scan's are mamba_ssm's (B, E, T) with state size N. Modes:
``forward`` under ``torch.no_grad()``, and ``train`` = forward + backward of ``sum(out * w)`` (gradients of every
input). Each cell is the median of ``--repeats`` runs after ``--warmup``; a side whose single warm-up run exceeds
``--budget`` seconds is not timed further (reported as skipped, e.g. selective_scan_ref's backward, quadratic in
T; the longer lengths of a side skipped, or estimated over the budget by scaling linearly in T, are not run). A
reference whose package is not installed is reported as skipped with the reason.

Writes every run's times to ``--json`` and the table to ``--markdown``. On a quiet machine (the figures in the
README come from this):

    RAYON_NUM_THREADS=2 ~/torchenv/bin/python scripts/python_kernels_bench.py --threads 2 \\
        --json docs/results/python-kernels.json --markdown docs/results/python-kernels.md

``--quick`` runs tiny sizes in seconds (to check that the script works, not to measure). Needs torch, numpy and the
effseq Python package (``pip install ./crates/effseq-py``); performer-pytorch and reformer-pytorch for their rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--threads", type=int, default=2, help="threads of both sides (default 2)")
    p.add_argument("--kernels", default="softmax,linear,favor,lsh,scan")
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--batch", type=int, default=4, help="B (default 4)")
    p.add_argument("--heads", type=int, default=4, help="H (default 4)")
    p.add_argument("--head-dim", type=int, default=64, help="Dh (default 64)")
    p.add_argument("--seq-lens", default="1024,4096", help="T values (default 1024,4096)")
    p.add_argument("--bucket-size", type=int, default=64, help="LSH bucket size (default 64)")
    p.add_argument("--n-hashes", type=int, default=4, help="LSH rounds (default 4)")
    p.add_argument("--scan-channels", type=int, default=256, help="scan E, channels (default 256)")
    p.add_argument("--scan-state", type=int, default=16, help="scan N, state size (default 16)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--budget", type=float, default=30.0, help="seconds a single warm-up run may take before a side is skipped")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats: checks the script, measures nothing")
    p.add_argument("--note", default="", help="a remark on the conditions, written into both outputs")
    p.add_argument("--json", help="write every run's times here")
    p.add_argument("--markdown", help="write the table here")
    a = p.parse_args()
    if a.quick:  # tiny sizes for every flag left at its default
        quick = dict(batch=1, heads=2, head_dim=16, seq_lens="128", bucket_size=16, n_hashes=2, scan_channels=32, scan_state=4, repeats=3)
        for name, value in quick.items():
            if getattr(a, name) == p.get_default(name):
                setattr(a, name, value)
    return a


def main() -> None:
    a = parse_args()
    # effseq's pools read these at their first use: set before effseq is imported.
    os.environ["RAYON_NUM_THREADS"] = os.environ["MATMUL_NUM_THREADS"] = str(a.threads)
    import torch

    import effseq
    import effseq.torch as et

    torch.set_num_threads(a.threads)
    effseq.set_num_threads(a.threads)
    rows = []
    header = f"{'kernel':<8} {'mode':<8} {'T':>6}  {'effseq ms':>10}  {'torch ms':>10}  {'torch / effseq':>14}"
    print(f"threads: effseq {effseq.num_threads()}, torch {torch.get_num_threads()}\n{header}", flush=True)
    for kernel in a.kernels.split(","):
        previous = {}  # (mode, side) -> (T, median ms or None when skipped) at the last length
        for t in sorted(map(int, a.seq_lens.split(","))):
            try:
                ours, theirs, inputs, reference_name = build(kernel, t, a, torch, et)
            except ImportError as e:
                rows.append({"kernel": kernel, "seq_len": t, "skipped": f"reference not installed: {e}"})
                print(f"{kernel:<8} skipped: reference not installed ({e})", flush=True)
                break
            for mode in a.modes.split(","):
                row = compare(ours, theirs, inputs, mode, a, torch, foreseen_skips(previous, mode, t, a.budget))
                for side in ("effseq", "torch"):
                    previous[(mode, side)] = (t, row[f"{side}_median_ms"])
                row.update(kernel=kernel, seq_len=t, reference=reference_name, shape=shape_of(kernel, t, a))
                rows.append(row)
                print(format_row(row), flush=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", *sys.argv]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "threads": {"effseq": effseq.num_threads(), "torch": torch.get_num_threads()},
        "versions": {"effseq": effseq.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "quick": a.quick,
        "note": a.note,
        "settings": {k: getattr(a, k) for k in ("batch", "heads", "head_dim", "bucket_size", "n_hashes", "scan_channels", "scan_state", "repeats", "warmup", "budget")},
        "rows": rows,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(markdown(result))


def shape_of(kernel, t, a):
    if kernel == "scan":
        return {"B": a.batch, "E": a.scan_channels, "N": a.scan_state, "T": t}
    return {"B": a.batch, "H": a.heads, "T": t, "Dh": a.head_dim}


def build(kernel, t, a, torch, et):
    """(effseq function, reference function, input tensors, reference name) for one kernel at length t."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    b, h, dh = a.batch, a.heads, a.head_dim

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen)

    if kernel == "softmax":
        q, k, v = (randn(b, h, t, dh) for _ in range(3))
        return (lambda q, k, v: et.softmax_attention(q, k, v, causal=True)), (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), [q, k, v], "torch.nn.functional.scaled_dot_product_attention"
    if kernel == "linear":
        from performer_pytorch.performer_pytorch import causal_linear_attention_noncuda

        q, k, v = (randn(b, h, t, dh) for _ in range(3))
        return (
            lambda q, k, v: et.linear_attention(q, k, v, causal=True),
            lambda q, k, v: causal_linear_attention_noncuda(F.elu(q) + 1, F.elu(k) + 1, v),
            [q, k, v],
            "performer-pytorch causal_linear_attention_noncuda (elu + 1)",
        )
    if kernel == "favor":
        from performer_pytorch.performer_pytorch import FastAttention

        attention = FastAttention(dim_heads=dh, causal=True)
        projection = attention.projection_matrix.float().contiguous()
        q, k, v = (randn(b, h, t, dh, scale=0.5) for _ in range(3))
        return (lambda q, k, v: et.favor_attention(q, k, v, projection, causal=True)), attention, [q, k, v], f"performer-pytorch FastAttention(causal=True), {projection.shape[0]} features"
    if kernel == "lsh":
        from reformer_pytorch.reformer_pytorch import LSHAttention

        if t % (2 * a.bucket_size):
            raise ImportError(f"reformer-pytorch needs T divisible by 2 * bucket_size = {2 * a.bucket_size}")
        attention = LSHAttention(bucket_size=a.bucket_size, n_hashes=a.n_hashes, causal=True, allow_duplicate_attention=False)
        qk, v = randn(b, h, t, dh), randn(b, h, t, dh)

        def reference(qk, v):
            out = attention(qk.reshape(b * h, t, dh), v.reshape(b * h, t, dh))[0]
            return out.reshape(b, h, t, dh)

        ours = lambda qk, v: et.lsh_attention(qk, v, bucket_size=a.bucket_size, n_hashes=a.n_hashes, causal=True, torch_dup_counts=True)  # noqa: E731
        return ours, reference, [qk, v], f"reformer-pytorch LSHAttention(causal=True, allow_duplicate_attention=False), bucket {a.bucket_size}, {a.n_hashes} rounds"
    if kernel == "scan":
        sys.path.insert(0, str(REPO / "crates" / "effseq" / "tests" / "fixtures"))
        from make_mamba_fixtures import selective_scan_ref

        e, n = a.scan_channels, a.scan_state
        inputs = [randn(b, e, t), randn(b, e, t, scale=0.5), -torch.exp(randn(e, n, scale=0.5)), randn(b, n, t), randn(b, n, t), randn(e), randn(b, e, t), randn(e, scale=0.3)]

        def call(fn):
            return lambda u, delta, A, B, C, D, z, bias: fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)

        return call(et.selective_scan_fn), call(selective_scan_ref), inputs, "mamba_ssm selective_scan_ref (plain PyTorch)"
    raise SystemExit(f"unknown kernel {kernel!r} (expected softmax, linear, favor, lsh, scan)")


def foreseen_skips(previous, mode, t, budget):
    """Sides not worth running at length t: skipped at a shorter length, or whose time there, scaled linearly in T (a
    lower bound for these kernels), already exceeds the budget."""
    skips = {}
    for side in ("effseq", "torch"):
        if (mode, side) not in previous:
            continue
        t0, median_ms = previous[(mode, side)]
        if median_ms is None:
            skips[side] = f"over the budget at T = {t0}"
        elif median_ms / 1e3 * t / t0 > budget:
            skips[side] = f"estimated {median_ms / 1e3 * t / t0:.3g} s from T = {t0} > budget {budget:.3g} s"
    return skips


def compare(ours, theirs, inputs, mode, a, torch, skipped):
    """Times both sides alternately: warm-up runs first (a side slower than the budget is skipped), then repeats.
    `skipped`: sides not to run at all, with the reason."""
    w = None

    def run(fn):
        nonlocal w
        if mode == "forward":
            with torch.no_grad():
                fn(*inputs)
            return
        leaves = [x.detach().requires_grad_(True) for x in inputs]
        out = fn(*leaves)
        if w is None or w.shape != out.shape:
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * w).sum().backward()

    sides = {"effseq": ours, "torch": theirs}
    times = {name: [] for name in sides}
    skipped = dict(skipped)
    for name, fn in sides.items():
        for _ in range(a.warmup if name not in skipped else 0):
            start = time.perf_counter()
            run(fn)
            took = time.perf_counter() - start
            if took > a.budget:
                skipped[name] = f"one run took {took:.3g} s > budget {a.budget:.3g} s"
                break
    for _ in range(a.repeats):
        for name, fn in sides.items():
            if name not in skipped:
                start = time.perf_counter()
                run(fn)
                times[name].append((time.perf_counter() - start) * 1e3)
    row = {"mode": mode}
    for name in sides:
        row[f"{name}_ms"] = times[name]
        row[f"{name}_median_ms"] = statistics.median(times[name]) if times[name] else None
        if name in skipped:
            row[f"{name}_skipped"] = skipped[name]
    if row["effseq_median_ms"] and row["torch_median_ms"]:
        row["speedup"] = row["torch_median_ms"] / row["effseq_median_ms"]
    return row


def cell(row, side):
    median = row.get(f"{side}_median_ms")
    return f"{median:,.1f}" if median is not None else f"skipped ({row.get(f'{side}_skipped', '')})"


def format_row(row):
    speedup = f"{row['speedup']:.1f}x" if "speedup" in row else "-"
    return f"{row['kernel']:<8} {row['mode']:<8} {row['seq_len']:>6}  {cell(row, 'effseq'):>10}  {cell(row, 'torch'):>10}  {speedup:>14}"


def markdown(result):
    s = result["settings"]
    lines = [
        f"effseq.torch against the PyTorch code it replaces, {result['threads']['effseq']} effseq threads and "
        f"{result['threads']['torch']} torch threads, median ms of {s['repeats']} alternating runs after {s['warmup']} warm-up "
        f"({result['date']}, {result['machine']['cpu']}, torch {result['versions']['torch']}"
        + (", --quick: tiny sizes, not a measurement" if result["quick"] else "")
        + ")."
        + (f" {result['note']}" if result["note"] else ""),
        "",
        "| kernel | shape | mode | effseq.torch | PyTorch reference | reference / effseq |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['kernel']} | T = {row['seq_len']} | - | - | {row['skipped']} | |")
            continue
        shape = ", ".join(f"{k} = {v}" for k, v in row["shape"].items())
        speedup = f"{row['speedup']:.1f}×" if "speedup" in row else ""
        lines.append(f"| {row['kernel']} | {shape} | {row['mode']} | {cell(row, 'effseq')} | {cell(row, 'torch')} | {speedup} |")
    lines.append("")
    lines.append("References: " + "; ".join(sorted({f"{r['kernel']}: {r['reference']}" for r in result["rows"] if "reference" in r})) + ".")
    return "\n".join(lines) + "\n"


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
