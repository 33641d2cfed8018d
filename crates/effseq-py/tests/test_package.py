"""The package itself: what it exports, torch imported only on demand, the thread pool, the timing script."""

import json
import subprocess
import sys

import pytest

import effseq
from conftest import REPO


def test_exports_and_version():
    assert effseq.__version__.count(".") == 2
    for name in effseq.__all__:
        assert hasattr(effseq, name), name
    for name in effseq.kernels.__all__:
        assert callable(getattr(effseq.kernels, name)), name


def test_import_effseq_does_not_import_torch():
    code = "import sys, effseq, effseq.kernels; assert 'torch' not in sys.modules, 'torch was imported'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_thread_pool():
    threads = effseq.num_threads()
    assert threads >= 1
    effseq.set_num_threads(threads)  # the count in use: fine
    with pytest.raises(effseq.InvalidArgumentError, match="already running with"):
        effseq.set_num_threads(threads + 1)
    with pytest.raises(effseq.InvalidArgumentError, match="at least 1"):
        effseq.set_num_threads(0)


def test_the_timing_script_runs(torch, tmp_path):
    # Tiny sizes: this checks that scripts/python_kernels_bench.py works, not how fast anything is. References whose
    # package is not installed (performer-pytorch, reformer-pytorch) are reported as skipped.
    out_json, out_md = tmp_path / "k.json", tmp_path / "k.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "python_kernels_bench.py"), "--quick", "--repeats", "1", "--json", str(out_json), "--markdown", str(out_md)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out_json.read_text())
    assert result["threads"]["effseq"] == result["threads"]["torch"] == 2 and result["quick"]
    timed = {r["kernel"] for r in result["rows"] if r.get("effseq_median_ms") and r.get("torch_median_ms")}
    assert {"softmax", "scan"} <= timed
    assert "| softmax |" in out_md.read_text()
