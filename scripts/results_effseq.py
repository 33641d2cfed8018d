#!/usr/bin/env python3
"""effseq's own results in the README (no PyTorch side), measured and written by one command per section.

Each section runs the release `effseq` binary (`train`, `eval`, `bench`, `compare`) or an example (built first by
scripts/results.sh) under `/usr/bin/time -v`, keeps every command and its whole output in docs/results/<section>.txt,
the parsed figures in docs/results/<section>.json, and renders the README's table into docs/results/<section>.md,
headed by the command that wrote it. `--render` re-renders the Markdown from the JSON without measuring again.

    python3 scripts/results_effseq.py SECTION [--quick] [--render]
    SECTION: main | custom | bench | stream | reversible | selective-copy | duplicate | charlm | smnist | compare

Python's standard library only. `--quick` runs every configuration at a tiny size to test the pipeline; its files
are not written (set EFFSEQ_RESULTS_WRITE_QUICK=1 to write them anyway, e.g. to test the rendering).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")
# The same folder as the commands see it: they run in ROOT, and their recorded command lines stay machine-independent.
RESULTS_ARG = os.path.join("docs", "results")
BIN = os.path.join(ROOT, "target", "release", "effseq")
EXAMPLES = os.path.join(ROOT, "target", "release", "examples")
EVAL_LINE = re.compile(r"^step\s+(\d+)/\d+\s+eval (\S+) ([0-9.eE+-]+|NaN|nan|inf)")


def machine() -> dict:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "commit": commit + ("+changes" if dirty else ""), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


class Section:
    """One section's run: the commands, their outputs and parsed figures."""

    def __init__(self, name: str, command: str, quick: bool):
        self.name, self.command, self.quick = name, command, quick
        self.log: list[str] = []
        self.data: dict = {"section": name, "command": command, "machine": machine(), "quick": quick, "runs": {}}
        self.tmp = tempfile.mkdtemp(prefix=f"effseq-{name}-")

    def execute(self, program: str, args: list[str]) -> tuple[subprocess.CompletedProcess, float, str]:
        """Runs `program ARGS` under /usr/bin/time -v, logging the command and its output; fails loudly."""
        shown = os.path.basename(program) + " " + " ".join(shlex.quote(a) for a in args)
        print(f"[{self.name}] {shown}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-v", program, *args], capture_output=True, text=True, cwd=ROOT)
        wall = time.monotonic() - started
        self.log.append(f"$ {shown}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"[{self.name}] failed ({proc.returncode}): {shown}")
        return proc, wall, shown

    def run(self, key: str, args: list[str]) -> dict:
        """Runs `effseq ARGS --json` under /usr/bin/time -v; returns (and records under `key`) its JSON summary, the
        eval lines (step, metric name, value), the wall time and the peak RSS."""
        proc, wall, _ = self.execute(BIN, [*args, "--json"])
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        evals = [(int(m.group(1)), m.group(2), float(m.group(3))) for line in (proc.stdout + proc.stderr).splitlines() if (m := EVAL_LINE.match(line.strip()))]
        # With --json the human-readable lines go to stderr, beside /usr/bin/time's report (its lines start with a tab).
        printed = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("\t")]
        record = {"args": args, "summary": summary, "evals": evals, "wall_s": wall, "peak_rss_mib": int(rss.group(1)) / 1024 if rss else None, "printed": printed}
        self.data["runs"][key] = record
        return record

    def out(self, run_dir: str) -> str:
        return os.path.join(self.tmp, run_dir)

    def save(self, markdown: str) -> None:
        path = os.path.join(RESULTS, self.name)
        if not self.quick or os.environ.get("EFFSEQ_RESULTS_WRITE_QUICK"):
            with open(path + ".json", "w") as f:
                json.dump(self.data, f, indent=1)
            with open(path + ".txt", "w") as f:
                f.write(f"# {self.command}\n# {json.dumps(self.data['machine'])}\n\n" + "\n".join(self.log))
            with open(path + ".md", "w") as f:
                f.write(markdown)
        print(markdown)


def header(data: dict) -> str:
    m = data["machine"]
    quick = " (QUICK MODE: not a result)" if data.get("quick") else ""
    return f"`{data['command']}` ({m['date']}, {m['cores']} cores of {m['cpu']}, commit {m['commit']}){quick}\n\n"


def fmt_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def steps(quick: bool, full: int, short: int = 6) -> str:
    return str(short if quick else full)


# ---- main: the README's first command ------------------------------------------------------------------------


def main_job(s: Section) -> str:
    s.run("lstm-adding", ["train", "--model", "lstm", "--task", "adding", "--out", s.out("lstm-adding"), "--steps", steps(s.quick, 2000)])
    return render_main(s.data)


def render_main(data: dict) -> str:
    r = data["runs"]["lstm-adding"]
    sm = r["summary"]
    lines = [f"| step | eval mse |", "|---:|---:|"] + [f"| {st} | {v:.5f} |" for st, _, v in r["evals"]]
    return header(data) + "\n".join(lines) + f"\n\nFinal: eval mse {sm['eval_metric']:.5f}, train loss {sm['train_loss']:.5f}, {sm['steps']} steps in {sm['wall_time_s']:.1f} s ({sm['steps_per_s']:.1f} steps/s), peak RSS {r['peak_rss_mib']:.0f} MiB.\n"


# ---- your own data: the README's worked example --------------------------------------------------------------

CUSTOM_TRAIN = ["train", "--data", "data/seattle-weeks-train.csv", "--test", "data/seattle-weeks-test.csv", "--id-column", "week", "--model", "gru", "--hidden", "32", "--bidirectional", "--steps", "400", "--eval-every", "100"]


def custom(s: Section) -> str:
    out = s.out("weeks")
    record = s.run("train", [*CUSTOM_TRAIN, "--out", out])
    proc, wall, _ = s.execute(BIN, ["predict", "--checkpoint", out, "--data", "data/seattle-weeks-test.csv", "--out", os.path.join(s.tmp, "weeks-2015.csv")])
    with open(os.path.join(s.tmp, "weeks-2015.csv")) as f:
        s.data["predictions_head"] = f.read().splitlines()[:4]
    s.data["predict_output"] = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("predicted")]
    # The runs went to a scratch directory; the README's commands write to runs/.
    for key in ("predict_output",):
        s.data[key] = [line.replace(s.tmp, "runs") for line in s.data[key]]
    record["printed"] = [line.replace(s.tmp, "runs") for line in record["printed"]]
    del record
    return render_custom(s.data)


def render_custom(data: dict) -> str:
    train = data["runs"]["train"]["printed"]
    predicted = data["predict_output"]
    return header(data) + "```\n$ effseq " + " ".join(CUSTOM_TRAIN) + " --out runs/weeks\n" + "\n".join(train) + "\n```\n\n```\n$ effseq predict --checkpoint runs/weeks --data data/seattle-weeks-test.csv --out runs/weeks-2015.csv\n" + "\n".join(predicted) + "\n$ head -4 runs/weeks-2015.csv\n" + "\n".join(data["predictions_head"]) + "\n```\n"


# ---- selective copy (Gu & Dao 2023, sec. 4.1.1) ---------------------------------------------------------------

SELECTIVE_COPY = [
    ("mamba", ["--model", "mamba", "--layers", "2", "--hidden", "64"]),
    ("transformer", ["--model", "transformer", "--layers", "2", "--hidden", "64", "--d-ff", "128"]),
    ("linear", ["--model", "linear", "--layers", "2", "--hidden", "64", "--d-ff", "128"]),
    ("performer", ["--model", "performer", "--layers", "2", "--hidden", "64", "--d-ff", "128"]),
    ("lstm", ["--model", "lstm", "--hidden", "96"]),
]


def selective_copy(s: Section) -> str:
    for name, flags in SELECTIVE_COPY:
        s.run(name, ["train", *flags, "--task", "selective-copy", "--seq-len", "128", "--steps", steps(s.quick, 2000), "--eval-every", steps(s.quick, 500, 3), "--eval-size", "500", "--out", s.out(name)])
    return render_selective_copy(s.data)


def curve(evals: list) -> str:
    return " / ".join(f"{v:.3f}" for _, _, v in evals)


def render_selective_copy(data: dict) -> str:
    rows = ["| model | flags | params | accuracy after " + " / ".join(str(st) for st, _, _ in next(iter(data["runs"].values()))["evals"]) + " steps | wall time | peak RSS |", "|---|---|---:|---|---:|---:|"]
    for name, flags in SELECTIVE_COPY:
        r = data["runs"][name]
        rows.append(f"| {name} | `{' '.join(flags)}` | {r['summary']['params']:,} | {curve(r['evals'])} | {fmt_time(r['wall_s'])} | {r['peak_rss_mib']:.0f} MiB |")
    return header(data) + "\n".join(rows) + "\n\nAccuracy over the 16 answers on 500 held-out sequences (chance 0.125); every model trains with the CLI defaults otherwise (batch 32, AdamW 5e-3, seed 0).\n"


# ---- duplication (Kitaev et al. 2020, sec. 5) -----------------------------------------------------------------

DUPLICATE_FLAGS = ["--task", "duplicate", "--seq-len", "64", "--layers", "2", "--hidden", "64", "--positional", "learned", "--max-len", "64", "--lr", "0.002"]
DUPLICATE_TRAINED = [("LSH-1", ["--model", "reformer", "--bucket-size", "16", "--n-hashes", "1"]), ("LSH-2", ["--model", "reformer", "--bucket-size", "16", "--n-hashes", "2"]), ("LSH-4", ["--model", "reformer", "--bucket-size", "16", "--n-hashes", "4"]), ("full attention", ["--model", "transformer"])]
DUPLICATE_EVAL_ROUNDS = [1, 2, 4, 8]


def duplicate(s: Section) -> str:
    for name, flags in DUPLICATE_TRAINED:
        out = s.out(name.replace(" ", "-"))
        s.run(name, ["train", *flags, *DUPLICATE_FLAGS, "--steps", steps(s.quick, 1500), "--eval-size", "500", "--out", out])
        if flags[1] == "reformer":
            for rounds in DUPLICATE_EVAL_ROUNDS:
                s.run(f"{name} eval {rounds}", ["eval", "--checkpoint", out, "--n-hashes", str(rounds)])
    return render_duplicate(s.data)


def render_duplicate(data: dict) -> str:
    runs = data["runs"]
    rows = ["| trained with | " + " | ".join(f"eval {k} round{'s' if k > 1 else ''}" for k in DUPLICATE_EVAL_ROUNDS) + " | training time |", "|---|" + "---:|" * (len(DUPLICATE_EVAL_ROUNDS) + 1)]
    for name, _ in DUPLICATE_TRAINED:
        train = runs[name]
        if f"{name} eval 1" in runs:
            cells = [f"{runs[f'{name} eval {k}']['summary']['eval_metric']:.3f}" for k in DUPLICATE_EVAL_ROUNDS]
        else:
            cells = [f"{train['summary']['eval_metric']:.3f} (exact attention)"] + [""] * (len(DUPLICATE_EVAL_ROUNDS) - 1)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {fmt_time(train['wall_s'])} |")
    flags = " ".join(DUPLICATE_FLAGS)
    return header(data) + "\n".join(rows) + f"\n\nEvery model: `effseq train {flags}` with the flags of its row (LSH: `--model reformer --bucket-size 16 --n-hashes K`), then `effseq eval --checkpoint DIR --n-hashes E` on 500 held-out sequences; accuracy over the second copy (chance 1/127 = 0.008).\n"


# ---- character-level language modelling -----------------------------------------------------------------------

# (row, flags): the defaults of each model, and the Performer once more with the softmax kernel (FAVOR+), which its
# charlm default replaces by the ReLU kernel (ModelConfig::feature_kernel says why).
CHARLM = [
    ("transformer", ["--model", "transformer"]),
    ("linear", ["--model", "linear"]),
    ("performer", ["--model", "performer"]),
    ("performer, softmax kernel", ["--model", "performer", "--feature-kernel", "softmax"]),
]


def charlm(s: Section) -> str:
    for name, flags in CHARLM:
        extra = ["--steps", "4", "--eval-every", "2"] if s.quick else []
        s.run(name, ["train", *flags, "--task", "charlm", "--out", s.out(name.replace(", ", "-").replace(" ", "-")), *extra])
    return render_charlm(s.data)


def render_charlm(data: dict) -> str:
    first = data["runs"][CHARLM[0][0]]
    rows = ["| model | flags | params | test bpc after " + " / ".join(str(st) for st, _, _ in first["evals"]) + " steps | final ÷ linear's | wall time | steps/s | peak RSS |", "|---|---|---:|---|---:|---:|---:|---:|"]
    linear = data["runs"]["linear"]["summary"]["eval_metric"]
    for name, flags in CHARLM:
        r = data["runs"][name]
        sm = r["summary"]
        rows.append(f"| {name} | `{' '.join(flags)}` | {sm['params']:,} | {curve(r['evals'])} | {sm['eval_metric'] / linear:.3f} | {fmt_time(r['wall_s'])} | {sm['steps_per_s']:.2f} | {r['peak_rss_mib']:.0f} MiB |")
    return header(data) + "\n".join(rows) + "\n\n`effseq train --task charlm` with the flags of the row and the defaults: width 128, one block, 4 heads, context 256, 2000 steps of 32 windows, AdamW 5e-3 with warmup and cosine decay; the Performer's defaults on charlm are the ReLU kernel with 110 features per head, redrawn every 1000 steps. Bits per character on the test part (the last 5% of the book; uniform guess 6.4 bpc, unigram frequencies 4.4 bpc). Wall time includes the evaluations every 250 steps.\n"


# ---- sequential MNIST in a fixed budget ----------------------------------------------------------------------

SMNIST = [("gru", ["--model", "gru"]), ("tcn (paper shape)", ["--model", "tcn", "--hidden", "25", "--kernel-size", "7", "--levels", "8"]), ("lstm", ["--model", "lstm"]), ("mamba", ["--model", "mamba"])]


def smnist(s: Section) -> str:
    for name, flags in SMNIST:
        s.run(name, ["train", *flags, "--task", "smnist", "--steps", steps(s.quick, 400, 2), "--eval-every", steps(s.quick, 200, 1), "--out", s.out(name.split()[0])])
    return render_smnist(s.data)


def render_smnist(data: dict) -> str:
    rows = ["| model | flags | params | test accuracy after " + " / ".join(str(st) for st, _, _ in data["runs"][SMNIST[0][0]]["evals"]) + " steps | wall time | peak RSS |", "|---|---|---:|---|---:|---:|"]
    for name, flags in SMNIST:
        r = data["runs"][name]
        rows.append(f"| {name} | `{' '.join(flags)}` | {r['summary']['params']:,} | {curve(r['evals'])} | {fmt_time(r['wall_s'])} | {r['peak_rss_mib']:.0f} MiB |")
    return header(data) + "\n".join(rows) + "\n\n400 steps of 32 (1.6 epochs of the 8,000 training digits), otherwise the CLI defaults; accuracy on the 2,000 test digits (chance 0.1).\n"


# ---- every model against sequence length; streaming steps ------------------------------------------------------

BENCH_MODELS = ["lstm", "gru", "tcn", "transformer", "linear", "performer", "reformer", "mamba"]


def bench(s: Section) -> str:
    lens = "64,128" if s.quick else "256,1024,4096"
    files = ["--json-file", os.path.join(RESULTS_ARG, "bench-all.json"), "--markdown", os.path.join(RESULTS_ARG, "bench-all.md"), "--plot", os.path.join(RESULTS_ARG, "bench.svg")]
    proc, wall, _ = s.execute(BIN, ["bench", "--models", "all", "--mode", "forward,train", "--batch", "1,8", "--seq-lens", lens, *([] if s.quick else files), "--json"])
    s.data["records"] = json.loads(proc.stdout.strip().splitlines()[-1])
    s.data["wall_s"] = wall
    s.data["peak_rss_mib"] = peak_rss(proc)
    return render_bench(s.data)


def peak_rss(proc: subprocess.CompletedProcess) -> float | None:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return int(m.group(1)) / 1024 if m else None


def records_of(data: dict) -> list:
    recs = data["records"]
    return recs["records"] if isinstance(recs, dict) else recs


def cell(rec: dict | None, key: str = "median_ms") -> str:
    if rec is None:
        return "-"
    if rec.get("skipped"):
        return short_skip(rec["skipped"])
    value = rec[key]
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def render_bench(data: dict) -> str:
    recs = records_of(data)
    lens = sorted({r["seq_len"] for r in recs})
    find = lambda m, mode, b, t: next((r for r in recs if r["model"] == m and r["mode"] == mode and r["batch"] == b and r["seq_len"] == t), None)  # noqa: E731
    head = ["model"] + [f"forward B=8, T={t}" for t in lens] + [f"train B=8, T={t}" for t in lens] + [f"train peak MiB, B=8 T={lens[-1]}"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in BENCH_MODELS:
        cells = [cell(find(m, "forward", 8, t)) for t in lens] + [cell(find(m, "train", 8, t)) for t in lens]
        last = find(m, "train", 8, lens[-1])
        cells.append("-" if last is None or last.get("skipped") else f"{last['peak_bytes'] / 2**20:,.0f}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    total = f" The whole run took {fmt_time(data['wall_s'])} with a peak RSS of {data['peak_rss_mib']:,.0f} MiB." if data.get("wall_s") else ""
    return header(data) + "\n".join(rows) + f"\n\nMedian ms of 5 runs after a warm-up; every model one layer or block of width D = 256 (attention: 4 heads, feed-forward 4D; Reformer 4 hash rounds, buckets of 64), B = 1 rows in docs/results/bench-all.md; peak MiB is the extra heap of the step (counting allocator).{total}\n"


def stream(s: Section) -> str:
    lens = "64,128" if s.quick else "256,1024,4096,16384"
    files = ["--json-file", os.path.join(RESULTS_ARG, "stream-all.json"), "--markdown", os.path.join(RESULTS_ARG, "stream-all.md")]
    proc, wall, _ = s.execute(BIN, ["bench", "--models", "all", "--mode", "step", "--batch", "1", "--seq-lens", lens, *([] if s.quick else files), "--json"])
    s.data["records"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return render_stream(s.data)


def render_stream(data: dict) -> str:
    recs = records_of(data)
    lens = sorted({r["seq_len"] for r in recs})
    rows = ["| model | " + " | ".join(f"context {t}" for t in lens) + f" | heap at {lens[-1]} |", "|---|" + "---:|" * (len(lens) + 1)]
    for m in BENCH_MODELS:
        mine = {r["seq_len"]: r for r in recs if r["model"] == m and r["mode"] == "step"}
        cells = []
        for t in lens:
            r = mine.get(t)
            cells.append("-" if r is None else (short_skip(r["skipped"]) if r.get("skipped") else f"{r['step_us']:,.0f}"))
        last = mine.get(lens[-1])
        cells.append("-" if last is None or last.get("skipped") else f"{last['peak_bytes'] / 2**20:,.1f} MiB")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return header(data) + "\n".join(rows) + "\n\nµs per token of one streaming step at B = 1, measured after the model has consumed a context of that many steps (median of 5 blocks of 200 steps); every model one layer or block of width 256; heap = the model and its streaming state at the longest context (counting allocator).\n"


def short_skip(reason: str) -> str:
    """The first clause of a skip reason, for a table cell."""
    return "skipped: " + re.split(r"[:(;]", reason)[0].strip()


# ---- reversible layers -------------------------------------------------------------------------------------------

def reversible(s: Section) -> str:
    example = os.path.join(EXAMPLES, "reversible_memory")
    lens, layer_list = ((256,), (2, 4)) if s.quick else ((4096, 16384), (2, 6, 12))
    rows = []
    for t in lens:
        for layers in layer_list:
            for mode in ("reversible", "plain"):
                proc, _, _ = s.execute(example, ["--seq-len", str(t), "--layers", str(layers), "--mode", mode])
                f = proc.stdout.split()
                rows.append({"t": int(f[0]), "layers": int(f[1]), "mode": f[2], "saved_mib": float(f[3]), "kept_mib": float(f[4]), "heap_peak_mib": float(f[5]), "model_mib": float(f[6]), "rss_mib": float(f[7]), "step_s": float(f[8])})
    s.data["rows"] = rows
    return render_reversible(s.data)


def render_reversible(data: dict) -> str:
    rows = data["rows"]
    find = lambda t, l, m: next(r for r in rows if r["t"] == t and r["layers"] == l and r["mode"] == m)  # noqa: E731
    out = ["| T | layers | reversible: kept MiB | peak RSS MiB | step s | stored activations: kept MiB | peak RSS MiB | step s |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in sorted({r["t"] for r in rows}):
        for layers in sorted({r["layers"] for r in rows}):
            rv, pl = find(t, layers, "reversible"), find(t, layers, "plain")
            out.append(f"| {t:,} | {layers} | {rv['kept_mib']:,.0f} | {rv['rss_mib']:,.0f} | {rv['step_s']:.1f} | {pl['kept_mib']:,.0f} | {pl['rss_mib']:,.0f} | {pl['step_s']:.1f} |")
    return header(data) + "\n".join(out) + "\n\nOne training step (forward + backward) of the Reformer stack: LSH attention (2 rounds, buckets of 64), D = 256, 4 heads, d_ff 1024, B = 1, dropout 0.1, feed-forward in 8 chunks, each configuration in its own process (`reversible_memory` example); kept = what the stack holds for its backward after the forward (counting allocator), peak RSS = the process's VmHWM.\n"


# ---- equal budgets: effseq compare -----------------------------------------------------------------------------

COMPARE = [
    ("adding", ["--budget-secs", "20", "--evals", "4"]),
    ("copy", ["--budget-secs", "20", "--evals", "4"]),
    ("digits", ["--budget-secs", "20", "--evals", "4"]),
    ("forecast", ["--budget-secs", "20", "--evals", "4"]),
    ("smnist", ["--budget-secs", "30", "--evals", "3"]),
    ("charlm", ["--budget-secs", "30", "--evals", "3"]),
    ("listops", ["--budget-secs", "30", "--evals", "3", "--seq-len", "500", "--eval-size", "200"]),
]


def compare(s: Section) -> str:
    for task, flags in COMPARE:
        if s.quick:
            flags = ["--steps", "3", "--evals", "1"] + (["--seq-len", "100", "--eval-size", "20"] if task == "listops" else [])
        files = [] if s.quick else ["--markdown", os.path.join(RESULTS_ARG, f"compare-{task}.md"), "--json-file", os.path.join(RESULTS_ARG, f"compare-{task}.json"), "--plot", os.path.join(RESULTS_ARG, f"compare-{task}.svg")]
        proc, wall, shown = s.execute(BIN, ["compare", "--task", task, *flags, *files])
        s.data["runs"][task] = {"wall_s": wall, "command": shown}
    return header(s.data) + "Tables: docs/results/compare-TASK.md (each with its command and date).\n"


SECTIONS = {
    "main": (main_job, render_main),
    "selective-copy": (selective_copy, render_selective_copy),
    "duplicate": (duplicate, render_duplicate),
    "charlm": (charlm, render_charlm),
    "smnist": (smnist, render_smnist),
    "custom": (custom, render_custom),
    "bench": (bench, render_bench),
    "stream": (stream, render_stream),
    "reversible": (reversible, render_reversible),
    "compare": (compare, lambda data: header(data)),
}


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=sorted(SECTIONS))
    p.add_argument("--quick", action="store_true", help="a handful of steps per run, to test the pipeline (files are not written)")
    p.add_argument("--render", action="store_true", help="re-render docs/results/SECTION.md from its JSON")
    a = p.parse_args()
    measure, render = SECTIONS[a.section]
    if a.render:
        with open(os.path.join(RESULTS, a.section + ".json")) as f:
            data = json.load(f)
        markdown = render(data)
        with open(os.path.join(RESULTS, a.section + ".md"), "w") as f:
            f.write(markdown)
        print(markdown)
        return
    if not os.access(BIN, os.X_OK):
        raise SystemExit(f"{BIN} not found: run `cargo build --release` first")
    command = f"scripts/results.sh {a.section}"
    s = Section(a.section, command, a.quick)
    s.save(measure(s))


if __name__ == "__main__":
    run()
