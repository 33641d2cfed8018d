"""effseq.train: the CLI's training loop from Python, its progress events, checkpoints, resumption, early stop,
Ctrl-C, and the GIL released while it runs."""

import _thread
import threading

import numpy as np
import pytest

import effseq
from conftest import iterations_while


def tiny(steps=12, **train):
    return {
        "model": {"kind": "lstm", "hidden": 8},
        "task": {"kind": "adding", "seq_len": 8, "eval_size": 16},
        "train": {"steps": steps, "batch": 4, "warmup_steps": 2, "eval_every": 5, "checkpoint_every": 4, "seed": 7, **train},
    }


def test_train_reports_progress_and_writes_a_checkpoint(tmp_path):
    events = []
    summary = effseq.train(tiny(), checkpoint_dir=tmp_path / "run", progress=events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and events[0]["start_step"] == 0 and events[0]["total_steps"] == 12
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert all(np.isfinite(e["loss"]) and e["lr"] > 0 and e["steps_per_s"] > 0 for e in steps)
    assert [e["step"] for e in events if e["event"] == "eval"] == [5, 10, 12]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [4, 8, 12]
    final_eval = [e for e in events if e["event"] == "eval"][-1]
    assert final_eval["metric_name"] == "mse" and final_eval["sequences"] == 16

    assert summary["model"] == "lstm" and summary["task"] == "adding"
    assert summary["steps"] == 12 and summary["steps_this_run"] == 12
    assert summary["eval"]["metric"] == final_eval["metric"] and np.isfinite(summary["train_loss"])
    assert summary["checkpoint"] == str(tmp_path / "run") and summary["params"] > 0
    model = effseq.Model.load(tmp_path / "run")
    assert model.steps == 12
    assert model.evaluate()["metric"] == pytest.approx(summary["eval"]["metric"], rel=1e-6)


def test_resume_continues_the_run_exactly(tmp_path):
    straight = effseq.train(tiny(12))
    effseq.train(tiny(6), checkpoint_dir=tmp_path / "run")
    resumed = effseq.train(tiny(12), checkpoint_dir=tmp_path / "run", resume=True)
    assert (resumed["steps"], resumed["steps_this_run"]) == (12, 6)
    # The schedule of a 6-step run differs from a 12-step one, so compare against a run that stopped at 6 of 12.
    effseq.train(tiny(12), checkpoint_dir=tmp_path / "stopped", progress=lambda e: e["event"] == "step" and e["step"] == 6)
    continued = effseq.train(None, checkpoint_dir=tmp_path / "stopped", resume=True)
    assert continued["train_loss"] == straight["train_loss"]
    assert continued["eval"]["metric"] == straight["eval"]["metric"]
    assert resumed["steps"] == continued["steps"] == 12
    effseq.train(tiny(4), checkpoint_dir=tmp_path / "run", overwrite=True)
    assert effseq.Model.load(tmp_path / "run").steps == 4


def test_a_callback_returning_true_ends_the_run_early(tmp_path):
    summary = effseq.train(tiny(50), checkpoint_dir=tmp_path / "run", progress=lambda e: e["event"] == "step" and e["step"] >= 3)
    assert (summary["steps"], summary["steps_this_run"]) == (3, 3)
    assert effseq.Model.load(tmp_path / "run").steps == 3


def test_ctrl_c_stops_training_after_a_final_checkpoint(tmp_path):
    started = threading.Event()

    def on_event(event):
        if event["event"] == "step" and event["step"] == 2:
            started.set()

    # Interrupt the main thread (which runs the training) once it is under way, as Ctrl-C would.
    timer = threading.Thread(target=lambda: started.wait(30) and _thread.interrupt_main())
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        effseq.train(tiny(100_000, eval_every=0, checkpoint_every=0), checkpoint_dir=tmp_path / "run", progress=on_event)
    timer.join()
    stopped_at = effseq.Model.load(tmp_path / "run").steps
    assert 2 <= stopped_at < 100_000


def test_the_gil_is_released_while_training():
    counted, summary = iterations_while(lambda: effseq.train(tiny(400, eval_every=0, checkpoint_every=0)))
    assert summary["steps"] == 400
    assert counted > 1000, f"the main thread ran only {counted} iterations during training"
