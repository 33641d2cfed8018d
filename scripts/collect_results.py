#!/usr/bin/env python3
"""Bundles the raw outputs of one results section into docs/results/SECTION.json (called by scripts/results.sh).

RAWDIR holds what the section's commands wrote: `manifest.tsv` (one line per command: name, side, round, seconds,
the command as typed), `NAME.json` (the command's JSON output, if any), `NAME.time` (`/usr/bin/time -v` output, if
the command ran under it: its maximum resident set size is kept), `NAME.criterion/` (a criterion output directory,
CRITERION_HOME: every benchmark's estimates are kept) and `load-before` (/proc/loadavg at the start).
The bundle adds what makes the figures reproducible and comparable: the section's command, date, git commit, CPU
model (`lscpu`), thread settings, versions of effseq, Python and the Python packages named by `--packages`, the
load average before and after, and the section's own settings (`--setting KEY=VALUE`). Every command's output is
kept whole; scripts/render_results.py turns the bundle into the Markdown table.

Standard library only; run it with the Python whose packages are measured, so that their versions are the ones
recorded.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("RAYON_NUM_THREADS", "MATMUL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section")
    p.add_argument("rawdir", type=Path)
    p.add_argument("out", type=Path, help="the JSON file to write")
    p.add_argument("--command", required=True, help="the command that regenerates this section")
    p.add_argument("--invocation", help="the command as it was typed, if different (e.g. `all`)")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--packages", default="", help="comma-separated Python packages whose versions to record")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE", help="a section setting (VALUE parsed as JSON if it can be)")
    return p.parse_args()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()


def lscpu() -> dict[str, str]:
    """`lscpu`'s fields (empty where it is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def cpu_model(fields: dict[str, str]) -> str:
    """`lscpu`'s model name (or /proc/cpuinfo's)."""
    if "Model name" in fields:
        return fields["Model name"]
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The vector-unit flags that bound a core's floating-point peak."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512vl", "avx512_bf16") if f in have]


def effseq_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    match = re.search(r'\[workspace\.package\][^\[]*?version\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else "unknown"


def clock_mhz(fields: dict[str, str]) -> float | None:
    """`lscpu`'s maximum clock, or else the clock /proc/cpuinfo reports (nominal under most hypervisors)."""
    if "CPU max MHz" in fields:
        return float(fields["CPU max MHz"])
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)
    return float(match.group(1)) if match else None


def criterion_estimates(home: Path) -> list[dict]:
    """Every benchmark under a criterion output directory: its id, throughput and the median and mean of its
    per-iteration time (ns) with their confidence bounds."""
    out = []
    for estimates in sorted(home.glob("**/new/estimates.json")):
        bench = json.loads((estimates.parent / "benchmark.json").read_text())
        est = json.loads(estimates.read_text())
        out.append(
            {
                "id": bench["full_id"],
                "group": bench["group_id"],
                "function": bench.get("function_id"),
                "value": bench.get("value_str"),
                "throughput": bench.get("throughput"),
                **{f"{stat}_ns": est[stat]["point_estimate"] for stat in ("median", "mean")},
                **{f"{stat}_ns_bounds": [est[stat]["confidence_interval"][k] for k in ("lower_bound", "upper_bound")] for stat in ("median", "mean")},
            }
        )
    return out


def max_rss_bytes(time_file: Path) -> int | None:
    """`Maximum resident set size (kbytes)` of a `/usr/bin/time -v` output."""
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    return int(match.group(1)) * 1024 if match else None


def parts(rawdir: Path) -> list[dict]:
    """Every command of the section, in the order they ran, with its output."""
    out = []
    for line in (rawdir / "manifest.tsv").read_text().splitlines():
        name, side, rnd, seconds, command = line.split("\t", 4)
        part = {"name": name, "side": side, "round": int(rnd), "seconds": float(seconds), "command": command, "output": None}
        if (rawdir / f"{name}.json").exists():
            part["output"] = json.loads((rawdir / f"{name}.json").read_text())
        if (rawdir / f"{name}.criterion").is_dir():
            part["output"] = criterion_estimates(rawdir / f"{name}.criterion")
        if (rawdir / f"{name}.time").exists():
            part["max_rss_bytes"] = max_rss_bytes(rawdir / f"{name}.time")
        out.append(part)
    return out


def setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    a = parse_args()
    versions = {"effseq": effseq_version(), "python": platform.python_version()}
    for package in filter(None, a.packages.split(",")):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    started = float((a.rawdir / "started").read_text())
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/results")
    fields = lscpu()
    bundle = {
        "section": a.section,
        "command": a.command,
        "invocation": a.invocation or a.command,
        "quick": a.quick,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.time() - started, 1),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty),
        "machine": {
            "cpu": cpu_model(fields),
            "vendor": fields.get("Vendor ID"),
            "family": fields.get("CPU family"),
            "model": fields.get("Model"),
            "flags": cpu_flags(),
            "clock_mhz": clock_mhz(fields),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": (a.rawdir / "load-before").read_text().strip(),
            "load_after": Path("/proc/loadavg").read_text().strip(),
        },
        "threads": a.threads,
        "environment": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "versions": versions,
        "settings": dict(setting(s) for s in a.setting),
        "parts": parts(a.rawdir),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(bundle, indent=1) + "\n")
    tmp.replace(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
