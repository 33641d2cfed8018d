#!/usr/bin/env python3
"""PyTorch side of the causal linear-attention kernel benchmark (effseq's `attention::linear::causal_forward` /
`causal_backward`, timed by the ignored test `attention::linear::tests::timing_of_causal_kernels`).

The kernel alone, on already feature-mapped inputs: fq, fk (BH, T, F) positive, v (BH, T, E), F = E = 64 by default,

    out_i = (sum_{j<=i} (fq_i . fk_j) v_j) / (fq_i . sum_{j<=i} fk_j + eps)

in two PyTorch formulations:

* `cumsum`          the cumulative-sum formulation (Katharopoulos et al. 2020, eq. 8-9, as in performer-pytorch's
                    `causal_linear_attention_noncuda`): S_i = cumsum_j fk_j v_j^T materialised per step. It needs
                    T*F*E floats, so T is cut into chunks of C steps carrying S and z across chunks, C chosen so
                    that one (BH, C, F, E) tensor stays under `--chunk-mib` MiB. For forward+backward each chunk
                    runs under torch.utils.checkpoint (recomputed in the backward pass), otherwise autograd would
                    keep every chunk's (BH, C, F, E) tensor alive and memory would grow as T*F*E again.
* `causal_product`  fast-transformers' C++ `CausalDotProduct` (numerator only; the denominator is a cumsum), when
                    `import fast_transformers.causal_product` works; otherwise it is reported as unavailable.

Modes: `forward` (under torch.no_grad()) and `forward+backward` (loss = sum(out * R) with a fixed random R; gradients
of fq, fk and v). After `--warmup` untimed runs it times `--repeats` runs (1 when BH*T >= `--big`) and prints the
median wall and process-CPU milliseconds (process CPU time is the sum over threads; on a shared machine it counts
only this process's cycles, so compare it with the `cpu` figures of the effseq test). torch.set_num_threads(2) by
default. torch is only needed for this script, never by effseq; see scripts/README.md.

    ~/torchenv/bin/python scripts/torch_linear_attention_bench.py --bh 4,32 --time 1024,4096,16384,65536
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch
import torch.utils.checkpoint


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bh", default="4,32", help="comma-separated BH = B*H values (default 4,32)")
    p.add_argument("--time", default="1024,4096,16384,65536", help="comma-separated T values (default 1024..65536)")
    p.add_argument("--features", type=int, default=64, help="F (default 64)")
    p.add_argument("--value", type=int, default=64, help="E (default 64)")
    p.add_argument("--eps", type=float, default=1e-6, help="denominator eps (default 1e-6)")
    p.add_argument("--modes", default="forward,forward+backward", help="comma-separated modes (default both)")
    p.add_argument("--impls", default="cumsum,causal_product", help="comma-separated formulations (default both)")
    p.add_argument("--chunk-mib", type=float, default=64.0, help="max MiB of one (BH, C, F, E) chunk (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    p.add_argument("--big", type=int, default=1 << 20, help="BH*T from which one timed run and no warm-up (default 2^20)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = p.parse_args()
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1, --warmup at least 0")
    return args


def cumsum_chunk(fq, fk, v, s0, z0, eps: float):
    """One chunk of the cumulative-sum formulation: fq, fk (BH, C, F), v (BH, C, E), carried state s0 (BH, F, E),
    z0 (BH, F). Returns out (BH, C, E) and the state after the chunk."""
    z = z0.unsqueeze(1) + fk.cumsum(dim=1)  # (BH, C, F)
    den = torch.einsum("btf,btf->bt", fq, z) + eps  # (BH, C)
    ctx = s0.unsqueeze(1) + torch.einsum("btf,bte->btfe", fk, v).cumsum(dim=1)  # (BH, C, F, E)
    num = torch.einsum("btfe,btf->bte", ctx, fq)  # (BH, C, E)
    return num / den.unsqueeze(-1), ctx[:, -1], z[:, -1]


def cumsum_attention(fq, fk, v, eps: float, chunk: int, checkpoint: bool):
    """Causal linear attention by chunked cumulative sums (memory O(BH*chunk*F*E))."""
    bh, _, f = fq.shape
    e = v.shape[-1]
    s = fq.new_zeros(bh, f, e)  # (BH, F, E)
    z = fq.new_zeros(bh, f)  # (BH, F)
    outs = []
    for qc, kc, vc in zip(fq.split(chunk, dim=1), fk.split(chunk, dim=1), v.split(chunk, dim=1)):
        if checkpoint:
            out, s, z = torch.utils.checkpoint.checkpoint(cumsum_chunk, qc, kc, vc, s, z, eps, use_reentrant=False)
        else:
            out, s, z = cumsum_chunk(qc, kc, vc, s, z, eps)
        outs.append(out)
    return torch.cat(outs, dim=1)


def causal_product_attention(fq, fk, v, eps: float):
    """fast-transformers' causal_product for the numerator (it takes (B, H, T, ·); BH goes in as H)."""
    from fast_transformers.causal_product import causal_dot_product

    num = causal_dot_product(fq.unsqueeze(0), fk.unsqueeze(0), v.unsqueeze(0)).squeeze(0)  # (BH, T, E)
    den = torch.einsum("btf,btf->bt", fq, fk.cumsum(dim=1)) + eps  # (BH, T)
    return num / den.unsqueeze(-1)


def time_runs(run: Callable[[], None], warmup: int, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of `repeats` calls of `run` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    """Times every (impl, BH, T, mode) and prints one line each."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    f, e = args.features, args.value
    try:
        import fast_transformers.causal_product  # noqa: F401

        have_causal_product = True
    except ImportError as err:
        have_causal_product = False
        print(f"fast_transformers.causal_product: unavailable ({err})")
    records = []
    for bh in (int(x) for x in args.bh.split(",")):
        for t in (int(x) for x in args.time.split(",")):
            gen = torch.Generator().manual_seed(0)
            fq = torch.rand(bh, t, f, generator=gen) + 0.05  # (BH, T, F) positive features
            fk = torch.rand(bh, t, f, generator=gen) + 0.05  # (BH, T, F)
            v = torch.randn(bh, t, e, generator=gen)  # (BH, T, E)
            r = torch.randn(bh, t, e, generator=gen)  # (BH, T, E) loss weights
            chunk = max(1, int(args.chunk_mib * 2**20 / (4 * bh * f * e)))
            big = bh * t >= args.big
            warmup, repeats = (0, 1) if big else (args.warmup, args.repeats)
            for impl in args.impls.split(","):
                if impl == "causal_product" and not have_causal_product:
                    continue
                for mode in args.modes.split(","):
                    if impl == "cumsum":
                        attend = lambda a, b, c, ckpt: cumsum_attention(a, b, c, args.eps, chunk, ckpt)  # noqa: E731
                    elif impl == "causal_product":
                        attend = lambda a, b, c, ckpt: causal_product_attention(a, b, c, args.eps)  # noqa: E731
                    else:
                        raise SystemExit(f"unknown impl {impl}")
                    if mode == "forward":

                        def run() -> None:
                            with torch.no_grad():
                                attend(fq, fk, v, False)

                    elif mode == "forward+backward":
                        leaves = [x.clone().requires_grad_(True) for x in (fq, fk, v)]

                        def run() -> None:
                            for x in leaves:
                                x.grad = None
                            (attend(*leaves, True) * r).sum().backward()

                    else:
                        raise SystemExit(f"unknown mode {mode}")
                    wall, cpu = time_runs(run, warmup, repeats)
                    rec = {"impl": impl, "bh": bh, "t": t, "f": f, "e": e, "mode": mode, "chunk": chunk if impl == "cumsum" else None,
                           "repeats": repeats, "median_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu}
                    records.append(rec)
                    extra = f" chunk {chunk}" if impl == "cumsum" else ""
                    print(f"{impl:15s} BH {bh:3d} T {t:6d} F {f} E {e} {mode:17s} {1e3 * wall:10.2f} ms (cpu {1e3 * cpu:10.2f} ms, {repeats} runs{extra})", flush=True)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": args.threads, "records": records}, fh, indent=1)


if __name__ == "__main__":
    main()
