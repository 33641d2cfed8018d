"""Timing, time guard and JSON output shared by the PyTorch side-by-side scripts (scripts/torch_*_bench.py).

Every script reports its configurations as records in the same shape as `effseq bench --json-file` (model, mode,
batch, seq_len, median_ms, min_ms, skipped) plus every timed run (`times_ms`), so that scripts/render_results.py
reads both sides alike. Modes are effseq's names: `forward` (no_grad), `train` (forward + backward), `step`.

The time guard keeps a results section within minutes on two cores: a configuration gets `budget_s` seconds
(warm-up included). A warm-up run that alone takes longer than that is kept as the configuration's only figure
(`runs` 1, `warm` false: a cold run) and the timed runs are skipped; otherwise timed runs stop once the next one
would overrun the budget (at least one is always timed). `foreseen_skip` skips a longer configuration outright when
the previous length's time or peak RSS, scaled linearly in T (a lower bound for every model compared here), already
exceeds the budget or the memory limit.

Standard library only (the scripts import torch themselves).
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

MIB = 1 << 20


def time_runs(run: Callable[[], None], warmup: int, repeats: int, budget_s: float | None = None) -> dict:
    """Times `run()`: `warmup` untimed calls, then up to `repeats` timed ones, within `budget_s` seconds if given.
    Returns {median_ms, min_ms, times_ms, runs, warm, cut}: `warm` says whether warm-up preceded the timed runs,
    `cut` (or None) why fewer than `repeats` runs were timed."""
    began = time.perf_counter()
    for _ in range(warmup):
        start = time.perf_counter()
        run()
        took = time.perf_counter() - start
        if budget_s is not None and took > budget_s:
            cut = f"one run took {took:.3g} s > budget {budget_s:g} s: a single cold run"
            return summary([took], warm=False, cut=cut)
    seconds: list[float] = []
    cut = None
    while len(seconds) < repeats:
        if seconds and budget_s is not None and time.perf_counter() - began + seconds[-1] > budget_s:
            cut = f"{len(seconds)} of {repeats} runs within the budget of {budget_s:g} s"
            break
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return summary(seconds, warm=warmup > 0, cut=cut)


def summary(seconds: list[float], warm: bool, cut: str | None) -> dict:
    """Median, minimum and every run in milliseconds."""
    return {
        "median_ms": 1e3 * statistics.median(seconds),
        "min_ms": 1e3 * min(seconds),
        "times_ms": [1e3 * s for s in seconds],
        "runs": len(seconds),
        "warm": warm,
        "cut": cut,
    }


def record(model: str, mode: str, batch: int, seq_len: int, timing: dict | None = None, skipped: str | None = None, **extra) -> dict:
    """One configuration's record: `timing` from time_runs, or `skipped` with the reason."""
    rec = {"model": model, "mode": mode, "batch": batch, "seq_len": seq_len, "median_ms": None, "min_ms": None, "skipped": skipped}
    rec.update(timing or {})
    rec.update(extra)
    return rec


def foreseen_skip(previous: tuple[int, dict] | None, seq_len: int, budget_s: float | None, max_rss_bytes: float | None) -> str | None:
    """Why a configuration at `seq_len` is not worth running, from the record of the same kind at the previous
    (shorter) length: skipped there, or its time or peak RSS scaled linearly in T over the budget or the limit."""
    if previous is None:
        return None
    t0, rec = previous
    if rec.get("skipped"):
        return f"skipped at T = {t0} already"
    scale = seq_len / t0
    if budget_s is not None and rec["median_ms"] / 1e3 * scale > budget_s:
        return f"estimated {rec['median_ms'] / 1e3 * scale:.3g} s per run from T = {t0} > budget {budget_s:g} s"
    rss = rec.get("peak_rss_bytes")
    if max_rss_bytes is not None and rss and rss * scale > max_rss_bytes:
        return f"estimated peak RSS {rss * scale / 2**30:.1f} GiB from T = {t0} > limit {max_rss_bytes / 2**30:g} GiB"
    return None


def load_fixture_generator(name: str):
    """The module crates/effseq/tests/fixtures/`name`.py: the PyTorch reference models live in the fixture
    generators, one copy each (imported with their directory on the path, for their `fixture_io` import)."""
    fixtures = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "crates", "effseq", "tests", "fixtures")
    if fixtures not in sys.path:
        sys.path.insert(0, fixtures)
    spec = importlib.util.spec_from_file_location(name, os.path.join(fixtures, f"{name}.py"))
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {name}.py from {fixtures}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def isolated(cmd: list[str], timeout_s: float) -> dict:
    """Runs one configuration in a fresh process (so that its peak RSS is its own) whose last stdout line is the
    record as JSON; a failure or a timeout becomes a skipped record's reason."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"skipped": f"killed after {timeout_s:g} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return {"skipped": f"failed: {last}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def isolated_grid(kinds: list[tuple[str, str, int]], seq_lens: list[int], command: Callable[[str, str, int, int], list[str]], budget_s: float | None, max_rss_bytes: float | None, timeout_s: float) -> list[dict]:
    """Every (model, mode, batch) of `kinds` at every T of `seq_lens` (shortest first), each configuration in a fresh
    process `command(model, mode, batch, T)` (see `isolated`), longer ones skipped when `foreseen_skip` says so."""
    records = []
    for model, mode, batch in kinds:
        previous = None
        for t in sorted(seq_lens):
            reason = foreseen_skip(previous, t, budget_s, max_rss_bytes)
            rec = record(model, mode, batch, t, skipped=reason)
            if reason is None:
                rec.update(isolated(command(model, mode, batch, t), timeout_s))
            previous = (t, rec)
            print(format_record(rec), flush=True)
            records.append(rec)
    return records


def format_record(rec: dict) -> str:
    """One line for the console."""
    head = f"{rec['model']:<18} {rec['mode']:<8} {rec['batch']:>3} {rec['seq_len']:>6}"
    if rec.get("skipped"):
        return f"{head}  skipped: {rec['skipped']}"
    rss = f" {rec['peak_rss_bytes'] / MIB:9.0f} MiB" if rec.get("peak_rss_bytes") else ""
    note = f"  ({rec['cut']})" if rec.get("cut") else ""
    return f"{head} {rec['median_ms']:11.3f} {rec['min_ms']:11.3f} ms{rss}{note}"


HEADER = f"{'model':<18} {'mode':<8} {'B':>3} {'T':>6} {'median':>11} {'min':>11}"


def write_report(path: str, torch_version: str, threads: int, config: dict, records: list[dict], **extra) -> None:
    """The script's JSON: framework, versions, settings, records and the process's peak RSS."""
    report = {"framework": "pytorch", "torch_version": torch_version, "threads": threads, "config": config, "records": records}
    report.update(extra)
    report["process_peak_rss_bytes"] = peak_rss_bytes()
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")
