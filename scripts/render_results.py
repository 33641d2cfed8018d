#!/usr/bin/env python3
"""Renders docs/results/SECTION.md from docs/results/SECTION.json, the bundle scripts/results.sh writes
(scripts/collect_results.py): a header line with the command and the date, the table, footnotes for skipped or
shortened cells, and one paragraph of conditions. Re-rendering needs no measurement:

    python3 scripts/render_results.py rnn-torch              # docs/results/rnn-torch.json -> .md
    python3 scripts/render_results.py lsh-torch --dir target/results-quick

A cell is the median of its configuration's timed runs; with two rounds, the median of the two rounds' medians
(their mean), and the conditions say how far the rounds differed. Ratios are effseq / torch: below 1, effseq is
faster. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[1]
BRIEF_PEAK_GFLOPS_PER_CORE = 78.0  # the project brief's figure: Zen 3, AVX2 + FMA


# --- reading the bundle -------------------------------------------------------------------------------------------


def records(bundle: dict, side: str):
    """(part, record) for every record of a side's command outputs (`effseq bench` writes a list, the other tools
    an object with `records`)."""
    for part in bundle["parts"]:
        out = part.get("output")
        if part["side"] != side or out is None:
            continue
        for rec in out if isinstance(out, list) else out.get("records", []):
            yield part, rec


def stats(bundle: dict, side: str, model: str, mode: str, batch: int, seq_len: int) -> dict | None:
    """One side's figures for one configuration over every round, or None when it was not part of the run."""
    found = [(p, r) for p, r in records(bundle, side) if (r.get("model"), r.get("mode"), r.get("batch"), r.get("seq_len")) == (model, mode, batch, seq_len)]
    if not found:
        return None
    measured = [(p, r) for p, r in found if r.get("median_ms") is not None]
    if not measured:
        return {"skipped": found[0][1].get("skipped") or "not measured"}
    medians = [r["median_ms"] for _, r in measured]
    heaps = [r["peak_bytes"] for _, r in measured if r.get("peak_bytes") is not None]
    rss = [r.get("peak_rss_bytes") or p["output"].get("process_peak_rss_bytes") for p, r in measured if isinstance(p["output"], dict)]
    return {
        "median_ms": statistics.median(medians),
        "round_medians": medians,
        "cold": any(r.get("warm") is False for _, r in measured),
        "short": any(r.get("cut") and r.get("warm") is not False for _, r in measured),
        "peak_heap_bytes": max(heaps) if heaps else None,
        "peak_rss_bytes": max((x for x in rss if x), default=None),
    }


def part_named(bundle: dict, name: str) -> dict | None:
    return next((p for p in bundle["parts"] if p["name"] == name), None)


def setting(bundle: dict, key: str, default=None):
    return bundle["settings"].get(key, default)


def output(bundle: dict, side: str, key: str):
    """`key` of the first output of `side` that has it (e.g. the versions a torch script recorded)."""
    for part in bundle["parts"]:
        if part["side"] == side and isinstance(part.get("output"), dict) and key in part["output"]:
            return part["output"][key]
    return None


# --- formatting ---------------------------------------------------------------------------------------------------


class Notes:
    """Footnotes: each distinct text gets a letter, listed under the table."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"({chr(ord('a') + self.texts.index(text))})"

    def lines(self) -> list[str]:
        return [f"({chr(ord('a') + i)}) {text}" for i, text in enumerate(self.texts)]


def number(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or "median_ms" not in a or "median_ms" not in b:
        return ""
    r = a["median_ms"] / b["median_ms"]
    return f"{r:.3g}" if r >= 0.01 else f"{r:.{1 - math.floor(math.log10(r))}f}"  # two significant digits, no exponent


def cell(s: dict | None, notes: Notes, budget, scale: float = 1.0) -> str:
    """A side's median (ms, times `scale`), with its footnote when skipped, a single cold run or cut short."""
    if s is None:
        return "not run"
    if "skipped" in s:
        return f"skipped {notes.mark(s['skipped'])}"
    text = number(s["median_ms"] * scale)
    if s["cold"]:
        text += " " + notes.mark(f"a single cold run (no warm-up): one run took longer than the per-configuration budget of {budget} s")
    elif s["short"]:
        text += " " + notes.mark(f"fewer timed runs than the others: the per-configuration budget of {budget} s ran out")
    return text


def mib(v: float | None) -> str:
    return number(v / MIB) if v else ""


def table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def spread(bundle: dict, side: str) -> float | None:
    """Largest relative difference between the rounds' medians of one configuration, over all configurations."""
    by_config: dict[tuple, list[float]] = {}
    for _, r in records(bundle, side):
        if r.get("median_ms") is not None:
            by_config.setdefault((r["model"], r["mode"], r["batch"], r["seq_len"]), []).append(r["median_ms"])
    diffs = [max(v) / min(v) - 1 for v in by_config.values() if len(v) > 1]
    return max(diffs) if diffs else None


# --- the sections -------------------------------------------------------------------------------------------------


def rnn_torch(b: dict, notes: Notes) -> tuple[list[str], str]:
    batch, t, budget = setting(b, "batch"), setting(b, "seq_len"), setting(b, "budget_s")
    rows = []
    for model, name in (("lstm", "LSTM"), ("gru", "GRU")):
        for mode, label, bsz, scale in (("forward", "forward, ms", batch, 1), ("train", "forward+backward, ms", batch, 1), ("step", "step at B = 1, µs", 1, 1e3)):
            e, t_ = stats(b, "effseq", model, mode, bsz, t), stats(b, "torch", model, mode, bsz, t)
            rows.append([f"{name} {label}", cell(e, notes, budget, scale), cell(t_, notes, budget, scale), ratio(e, t_)])
    imported = part_named(b, "rss-torch-import")
    for model, name in (("lstm", "LSTM"), ("gru", "GRU")):
        e, t_ = part_named(b, f"rss-effseq-{model}"), part_named(b, f"rss-torch-{model}")
        if e and t_ and e.get("max_rss_bytes") and t_.get("max_rss_bytes"):
            extra = f" (`import torch` alone: {mib(imported['max_rss_bytes'])})" if imported and imported.get("max_rss_bytes") else ""
            rows.append([f"{name} peak RSS of 4 training steps, MiB", mib(e["max_rss_bytes"]), mib(t_["max_rss_bytes"]) + extra, f"{e['max_rss_bytes'] / t_['max_rss_bytes']:.3g}"])
    dim = setting(b, "dim")
    text = (
        f"One layer, D = H = {dim}, B = {batch}, T = {t}, batch-first, `effseq bench` against `torch.nn.LSTM` / `torch.nn.GRU` "
        f"(`scripts/torch_rnn_bench.py`): forward is inference (`infer` / `torch.no_grad()`), forward+backward computes the "
        f"gradients of every parameter and the input for loss = sum(output), step is one streaming step at B = 1. "
        f"Median of {setting(b, 'repeats')} runs after warm-up (steps: of blocks of 200 for effseq, of {setting(b, 'step_repeats')} single steps for torch). "
        f"Peak RSS: `/usr/bin/time -v` around 4 training steps of each (the `effseq` binary keeps freed memory, see "
        f"`crates/effseq-cli/src/main.rs`)."
    )
    return table(["", "effseq", "torch", "effseq / torch"], rows), text


def tcn_torch(b: dict, notes: Notes) -> tuple[list[str], str]:
    batch, lens, budget = setting(b, "batch"), setting(b, "seq_lens"), setting(b, "budget_s")
    versions = output(b, "torch", "versions") or {}
    rows = []
    for t in lens:
        for mode, label in (("forward", "forward"), ("train", "forward+backward")):
            e = stats(b, "effseq", "tcn", mode, batch, t)
            theirs = [stats(b, "torch", m, mode, batch, t) for m in ("locuslab", "pytorch-tcn")]
            best = min((s for s in theirs if s and "median_ms" in s), key=lambda s: s["median_ms"], default=None)
            rows.append([f"B = {batch}, T = {t:,} {label}, ms", cell(e, notes, budget), *(cell(s, notes, budget) for s in theirs), ratio(e, best)])
    e = stats(b, "effseq", "tcn", "step", 1, lens[0])
    theirs = {m: stats(b, "torch", m, "step", 1, lens[0]) for m in ("locuslab", "pytorch-tcn")}
    kind = {r["model"]: r.get("step_kind") for _, r in records(b, "torch") if r["mode"] == "step"}
    best = min((s for s in theirs.values() if s and "median_ms" in s), key=lambda s: s["median_ms"], default=None)
    step_cells = [cell(s, notes, budget, 1e3) + (f" ({kind[m]})" if kind.get(m) else "") for m, s in theirs.items()]
    rows.append(["step at B = 1, µs", cell(e, notes, budget, 1e3), *step_cells, ratio(e, best)])
    header = ["", "effseq", "locuslab `TemporalConvNet`", f"`pytorch-tcn` {versions.get('pytorch-tcn', '')}".strip(), "effseq / best torch"]
    text = (
        f"{setting(b, 'levels')} levels of {setting(b, 'channels')} channels, kernel {setting(b, 'kernel')} (receptive field "
        f"{1 + 2 * (setting(b, 'kernel') - 1) * (2 ** setting(b, 'levels') - 1)}), input D = {setting(b, 'dim')}, dropout 0; "
        f"`effseq bench --models tcn` against locuslab's structure (weight norm included) and the `pytorch-tcn` package "
        f"(`scripts/torch_tcn_bench.py --pytorch-tcn`), median of {setting(b, 'repeats')} runs after warm-up. locuslab's "
        f"network has no streaming mode: its step re-runs the receptive field."
    )
    return table(header, rows), text


def attention_torch(b: dict, notes: Notes) -> tuple[list[str], str]:
    batches, lens, budget = setting(b, "batches"), setting(b, "seq_lens"), setting(b, "budget_s")
    names = {"softmax": "softmax / SDPA", "linear": "linear / cumulative sums", "performer": "Performer / performer-pytorch"}
    rows = []
    for model, name in names.items():
        for mode, label in (("forward", "forward"), ("train", "fwd+bwd")):
            for batch in batches:
                for t in lens:
                    e, t_ = stats(b, "effseq", model, mode, batch, t), stats(b, "torch", model, mode, batch, t)
                    memory = [mib(e and e.get("peak_heap_bytes")), mib(t_ and t_.get("peak_rss_bytes"))]
                    rows.append([name, label, str(batch), f"{t:,}", cell(e, notes, budget), cell(t_, notes, budget), ratio(e, t_), *memory])
    versions = b["versions"]
    text = (
        f"One causal self-attention layer (input projection, attention, output projection; the first column names effseq's "
        f"layer / torch's), D = {setting(b, 'dim')}, {setting(b, 'heads')} heads, median ms of {setting(b, 'repeats')} runs after a warm-up; effseq "
        f"`examples/attention_layer.rs`, torch `scripts/torch_attention_bench.py` (each configuration in a fresh process): "
        f"softmax = the same projections + `scaled_dot_product_attention(is_causal=True)`, linear = the same projections, "
        f"elu + 1 features and performer-pytorch {versions.get('performer-pytorch')}'s `causal_linear_attention_noncuda`, "
        f"Performer = performer-pytorch's `SelfAttention` (FAVOR+, Dh ln Dh features). One round, effseq and torch "
        f"alternating model by model. Memory: effseq's peak extra heap (counting allocator), torch's process peak RSS "
        f"(`import torch` included). The example keeps glibc's default allocator settings (the `effseq` binary keeps freed "
        f"memory instead, see `crates/effseq-cli/src/main.rs`)."
    )
    header = ["layer", "mode", "B", "T", "effseq", "torch", "effseq / torch", "effseq heap MiB", "torch RSS MiB"]
    return table(header, rows, right_from=2), text


def mamba_torch(b: dict, notes: Notes) -> tuple[list[str], str]:
    batch, lens, budget = setting(b, "batch"), setting(b, "seq_lens"), setting(b, "budget_s")
    rows = []
    for t in lens:
        row = [f"{t:,}"]
        for mode in ("forward", "train"):
            e, t_ = stats(b, "effseq", "mamba", mode, batch, t), stats(b, "torch", "selective_scan_ref", mode, batch, t)
            row += [cell(e, notes, budget), cell(t_, notes, budget), ratio(e, t_)]
        row.append(mib(e and e.get("peak_heap_bytes")))  # the train row's
        rows.append(row)
    dim = setting(b, "dim")
    text = (
        f"One Mamba layer (RMSNorm + mixer, d_model {dim}, E = {2 * dim}, N = 16, K = 4, R = {-(-dim // 16)}) and a final "
        f"RMSNorm, B = {batch}, median ms of {setting(b, 'repeats')} runs after a warm-up; effseq `effseq bench --models mamba`, "
        f"torch the same layer in plain PyTorch on mamba_ssm's `selective_scan_ref` (`scripts/torch_mamba_bench.py`; "
        f"mamba_ssm's CUDA kernels do not run on a CPU). `selective_scan_ref` materialises (B, E, T, N) tensors and "
        f"its autograd backward is quadratic in T, so it is not run above T = {setting(b, 'torch_max_forward_t')} "
        f"(forward) and T = {setting(b, 'torch_max_backward_t')} (forward+backward). Peak heap: effseq's counting allocator."
    )
    header = ["T", "effseq forward", "torch forward", "ratio", "effseq fwd+bwd", "torch fwd+bwd", "ratio", "effseq train peak heap MiB"]
    return table(header, rows), text


def lsh_torch(b: dict, notes: Notes) -> tuple[list[str], str]:
    budget = setting(b, "budget_s")
    configs = sorted({(r["mode"], r["batch"], r["seq_len"]) for _, r in records(b, "effseq")}, key=lambda c: (c[1], c[0] != "forward", c[2]))
    rows = []
    for mode, batch, t in configs:
        e, t_ = stats(b, "effseq", "lsh", mode, batch, t), stats(b, "torch", "reformer-pytorch", mode, batch, t)
        memory = [mib(e and e.get("peak_heap_bytes")), mib(e and e.get("peak_rss_bytes")), mib(t_ and t_.get("peak_rss_bytes"))]
        rows.append(["forward" if mode == "forward" else "fwd+bwd", str(batch), f"{t:,}", cell(e, notes, budget), cell(t_, notes, budget), ratio(e, t_), *memory])
    text = (
        f"One LSH self-attention layer (`toqk`, `tov`, LSH attention, `to_out`; D = {setting(b, 'dim')}, {setting(b, 'heads')} "
        f"heads, bucket {setting(b, 'bucket_size')}, {setting(b, 'n_hashes')} hash rounds, causal), median ms of "
        f"{setting(b, 'repeats')} runs after a warm-up; effseq `examples/lsh_layer.rs`, torch reformer-pytorch "
        f"{b['versions'].get('reformer-pytorch')}'s `LSHSelfAttention(allow_duplicate_attention=False)` "
        f"(`scripts/torch_lsh_bench.py`). Every configuration runs in its own process on both sides, so peak RSS is that "
        f"configuration's (torch's includes `import torch`); effseq's peak heap is its counting allocator's, and the example "
        f"keeps glibc's default allocator settings. One round, alternating per mode and batch size."
    )
    header = ["mode", "B", "T", "effseq", "reformer-pytorch", "effseq / torch", "effseq heap MiB", "effseq RSS MiB", "torch RSS MiB"]
    return table(header, rows, right_from=1), text


def nominal_peak(machine: dict) -> tuple[float | None, str]:
    """FLOP per cycle and clock of one core of this CPU, and how they were read."""
    flags, mhz = set(machine.get("flags") or []), machine.get("clock_mhz")
    zen4 = machine.get("vendor") == "AuthenticAMD" and machine.get("family") == "25" and "avx512f" in flags
    if zen4:
        per_cycle, why = 32, "AVX-512 on AMD family 25 (Zen 4), which runs 512-bit FMAs on its two 256-bit pipes: 32 FLOP/cycle"
    elif "avx512f" in flags:
        per_cycle, why = 64, "AVX-512 with two 512-bit FMA pipes: 64 FLOP/cycle"
    elif {"avx2", "fma"} <= flags:
        per_cycle, why = 32, "AVX2 + FMA, two 256-bit FMA pipes: 32 FLOP/cycle"
    else:
        return None, "no FMA vector unit recognised"
    if not mhz:
        return None, why + ", clock unknown"
    return per_cycle * mhz / 1e3, f"{why} × {mhz / 1e3:.2f} GHz (the clock the system reports; boost clocks run higher) = {per_cycle * mhz / 1e3:.0f} GFLOP/s per core"


PRODUCTS = {
    "lstm_input_proj_8192x1024x256": "LSTM input projection (T·B × 4H × D)",
    "recurrent_step": "one LSTM step's recurrent product (B × 4H × H)",
}

BACKENDS = {
    "gemm": "`gemm` crate",
    "matrixmultiply": "`matrixmultiply`",
    "packed_1thread": "packed panels, own 1-thread pool",
    "packed_pool": "packed panels",
}


def gemm(b: dict, notes: Notes) -> tuple[list[str], str]:
    peak, why = nominal_peak(b["machine"])
    rows = []
    for part in b["parts"]:
        threads = part["round"]
        for bench in part.get("output") or []:
            pool = 1 if "1thread" in (bench["function"] or "") else threads
            if pool != threads and threads != 1:
                continue  # a single-thread product measured again in the two-thread run
            flops = (bench.get("throughput") or {}).get("Elements")
            gflops = flops / bench["median_ns"] if flops else None
            fractions = [f"{100 * gflops / (per_core * pool):.0f}%" if gflops and per_core else "" for per_core in (BRIEF_PEAK_GFLOPS_PER_CORE, peak)]
            shape = re.search(r"(\d+)x(\d+)x(\d+)$", bench["value"] or "")
            product = PRODUCTS.get(bench["value"], bench["value"]) if bench["group"] == "gemm" else PRODUCTS.get(bench["group"], bench["group"])
            rows.append([product, BACKENDS.get(bench["function"], bench["function"]), "×".join(shape.groups()) if shape else "", str(pool), number(bench["median_ns"] / 1e6), f"{gflops:.1f}" if gflops else "", *fractions])
    text = (
        f"`cargo bench -p effseq --bench matmul` (criterion, `crates/effseq/benches/matmul.rs`) filtered to the shapes above "
        f"(M×N×K: the LSTM's hoisted input projection and one step's recurrent product), run once with "
        f"RAYON_NUM_THREADS = MATMUL_NUM_THREADS = 1 and once with 2; ms is criterion's median time per product, "
        f"GFLOP/s = 2MNK / that time. Peaks per core: {BRIEF_PEAK_GFLOPS_PER_CORE:g} GFLOP/s is the project brief's "
        f"(Zen 3, AVX2 + FMA); this CPU has {', '.join(b['machine'].get('flags') or []) or 'unknown flags'}: {why}."
    )
    nominal = f"% of {peak:.0f}/core (nominal)" if peak else "% of nominal peak"
    header = ["product", "backend", "M×N×K", "threads", "ms", "GFLOP/s", f"% of {BRIEF_PEAK_GFLOPS_PER_CORE:g}/core (brief)", nominal]
    return table(header, rows, right_from=3), text


SECTIONS = {
    "rnn-torch": rnn_torch,
    "tcn-torch": tcn_torch,
    "attention-torch": attention_torch,
    "mamba-torch": mamba_torch,
    "lsh-torch": lsh_torch,
    "gemm": gemm,
}


# --- the page -----------------------------------------------------------------------------------------------------


def header_line(b: dict) -> str:
    v = b["versions"]
    packages = ", ".join(f"{k} {x}" for k, x in v.items() if k not in ("effseq", "python") and x)
    commit = b["git_commit"][:10] + (" with uncommitted changes" if b["git_dirty"] else "")
    counts = setting(b, "thread_counts")
    threads = " and ".join(map(str, counts)) + " threads" if counts else f"{b['threads']} threads"
    line = (
        f"`{b['command']}` ({b['date']}; {b['machine']['cpu']}, {threads}; effseq {v['effseq']} at {commit}"
        + (f"; {packages}" if packages else "")
        + f"; Python {v['python']})"
    )
    if b["quick"]:
        line += " — **--quick: tiny sizes that check the pipeline, not a measurement**"
    return line + "."


def conditions(b: dict, text: str, raw: str) -> str:
    rounds = max((p["round"] for p in b["parts"]), default=1)
    parts = [text]
    if b["section"] != "gemm":
        parts.append("Ratio = effseq / torch (below 1: effseq is faster).")
        if rounds > 1:
            spreads = [f"{side} {100 * s:.0f}%" for side in ("effseq", "torch") if (s := spread(b, side)) is not None]
            parts.append(f"{rounds} rounds, effseq and torch alternating; a cell is the median of the rounds' medians, which differ by at most {', '.join(spreads)}.")
        parts.append(f"Per-configuration time budget of torch's side: {setting(b, 'budget_s')} s (`scripts/bench_timing.py`).")
        threads = ", ".join(f"{k}={v}" for k, v in b["environment"].items() if v)
        parts.append(f"Threads: {threads} and torch.set_num_threads({b['threads']}).")
    load = lambda s: s.split()[0]  # noqa: E731
    minutes, seconds = divmod(round(b["duration_s"]), 60)
    parts.append(
        f"Load average before / after: {load(b['machine']['load_before'])} / {load(b['machine']['load_after'])}; "
        f"the section took {minutes} min {seconds} s. Raw figures of every run: `{raw}`."
    )
    return " ".join(parts)


def render(bundle: dict, raw: str) -> str:
    notes = Notes()
    rows, text = SECTIONS[bundle["section"]](bundle, notes)
    lines = [header_line(bundle), "", *rows, ""]
    if notes.texts:
        lines += [*notes.lines(), ""]
    lines.append(conditions(bundle, text, raw))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("section", choices=sorted(SECTIONS))
    p.add_argument("--dir", type=Path, default=REPO / "docs" / "results", help="where SECTION.json is and SECTION.md goes")
    a = p.parse_args()
    source = a.dir / f"{a.section}.json"
    if not source.exists():
        sys.exit(f"{source} not found: run scripts/results.sh {a.section} first")
    bundle = json.loads(source.read_text())
    target = a.dir / f"{a.section}.md"
    try:
        raw = source.resolve().relative_to(REPO).as_posix()
    except ValueError:
        raw = str(source)
    target.write_text(render(bundle, raw))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
