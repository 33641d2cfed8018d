"""Shared fixtures of effseq's Python tests.

torch: the tests that need it use the `torch` fixture, which skips them with a reason pytest prints (run with -rs)
when torch is not installed, unless EFFSEQ_REQUIRE_TORCH=1 (what .ci/run sets when its `pip install torch`
succeeded), in which case a missing torch is an error, never a silent skip.
"""

import importlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

# The boundary tests panic on purpose: one line each in the log, not a backtrace (read by std at the first panic).
os.environ["RUST_BACKTRACE"] = "0"

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "crates" / "effseq" / "tests" / "fixtures"


@pytest.fixture(scope="session")
def torch():
    try:
        return importlib.import_module("torch")
    except ImportError as e:
        if os.environ.get("EFFSEQ_REQUIRE_TORCH") == "1":
            pytest.fail(f"torch is required here (EFFSEQ_REQUIRE_TORCH=1) but cannot be imported: {e}")
        pytest.skip(f"torch is not installed ({e}): the effseq.torch tests need it (pip install torch)")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, *shape, scale=1.0):
    """float32 N(0, scale^2) of `shape`."""
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def iterations_while(work):
    """Runs `work()` in a thread and counts the iterations of a Python loop on this thread until it returns: with
    the GIL released inside `work`, the count runs into the millions; held, it would stall. Returns (count, result)."""
    done = threading.Event()
    result = {}

    def run():
        try:
            result["value"] = work()
        finally:
            done.set()

    worker = threading.Thread(target=run)
    counted = 0
    worker.start()
    while not done.is_set():
        counted += 1
    worker.join()
    return counted, result.get("value")
