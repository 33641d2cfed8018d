"""effseq.Model: built from every config form, trained by forward / backward / optimizer_step from Python, streaming
steps equal to the full forward for every causal architecture, checkpoints and weights round trips."""

import json

import numpy as np
import pytest

import effseq
from conftest import randn

TOML = """
[model]
kind = "gru"
hidden = 6

[task]
kind = "adding"
seq_len = 12

[train]
seed = 3
"""

CAUSAL = {
    "lstm": {"kind": "lstm", "hidden": 8, "layers": 2},
    "gru": {"kind": "gru", "hidden": 8},
    "tcn": {"kind": "tcn", "hidden": 8, "levels": 2},
    "transformer": {"kind": "transformer", "hidden": 8, "heads": 2, "layers": 2},
    "linear": {"kind": "linear", "hidden": 8, "heads": 2},
    "performer": {"kind": "performer", "hidden": 8, "heads": 2, "features": 6},
    "mamba": {"kind": "mamba", "hidden": 8, "d_state": 4},
}


def test_every_config_form_builds_the_same_model(tmp_path):
    as_dict = {"model": {"kind": "gru", "hidden": 6}, "task": {"kind": "adding", "seq_len": 12}, "train": {"seed": 3}}
    (tmp_path / "run.toml").write_text(TOML)
    (tmp_path / "run.json").write_text(json.dumps(as_dict))
    models = [effseq.Model(c) for c in (as_dict, TOML, json.dumps(as_dict), tmp_path / "run.toml", tmp_path / "run.json")]
    reference = models[0].state_dict()
    for m in models:
        assert m.config == models[0].config
        for name, value in m.state_dict().items():
            np.testing.assert_array_equal(value, reference[name])
    resolved = effseq.resolve_config(as_dict)
    assert resolved["model"]["layers"] == 1 and resolved["train"]["lr"] == pytest.approx(5e-3)
    assert resolved == models[0].config
    assert effseq.Model(effseq.config_toml(as_dict)).config == resolved
    m = models[0]
    assert m.input == {"kind": "dense", "dim": 2} and m.output_dim == 1 and m.readout == "last"
    assert m.num_params == sum(v.size for v in reference.values())
    assert "gru" in repr(m)
    # A TCN's depth is resolved for the task's sequence as `effseq train` does.
    assert effseq.resolve_config({"model": {"kind": "tcn"}, "task": {"kind": "adding", "seq_len": 100}})["model"]["levels"] == 5  # 1 + 2 (3 - 1) (2^5 - 1) = 125 >= 100


def test_forward_backward_and_optimizer_step_train_a_model(rng):
    # Regression y = mean of the inputs over time, read from the last step.
    model = effseq.Model({"model": {"kind": "gru", "hidden": 16}, "train": {"lr": 0.02, "warmup_steps": 5, "steps": 150}}, input_dim=2, output_dim=1, readout="last")
    x_eval = randn(rng, 64, 10, 2)
    y_eval = x_eval.mean(axis=1)[:, :1]

    def mse(out, y):
        return float(((out - y) ** 2).mean())

    before = mse(model.infer(x_eval), y_eval)
    for _ in range(150):
        x = randn(rng, 16, 10, 2)
        y = x.mean(axis=1)[:, :1]
        out = model.forward(x)
        model.zero_grad()
        model.backward((2.0 * (out - y) / out.size).astype(np.float32))
        info = model.optimizer_step()
    assert info["step"] == 150 and model.steps == 150 and info["grad_norm"] >= 0.0
    after = mse(model.infer(x_eval), y_eval)
    assert after < 0.2 * before, f"MSE {before:.4f} -> {after:.4f}"


def test_gradients_match_central_differences_of_infer(rng):
    model = effseq.Model({"model": {"kind": "lstm", "hidden": 4}}, input_dim=3, output_dim=2, readout="every")
    x = randn(rng, 2, 5, 3)
    w = rng.standard_normal((2, 5, 2)).astype(np.float32)
    inferred = model.infer(x)
    np.testing.assert_allclose(model.forward(x), inferred, rtol=1e-6, atol=1e-6)
    model.zero_grad()
    model.backward(w)
    once = model.gradients()
    model.forward(x)
    model.backward(w)  # accumulates
    grads = model.gradients()
    for name, g in grads.items():
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-5, atol=1e-6, err_msg=name)
    model.zero_grad()
    assert all(not g.any() for g in model.gradients().values())
    grads = once
    state = model.state_dict()
    for name in ("rnn.weight_hh_l0", "rnn.bias_ih_l0", "head.weight"):
        for index in [(0, 0), (1, 3)] if state[name].ndim == 2 else [(0,), (5,)]:
            def loss(delta):
                moved = {k: v.copy() for k, v in state.items()}
                moved[name][index] += delta
                model.load_state_dict(moved)
                return float((model.infer(x).astype(np.float64) * w).sum())

            numeric = (loss(1e-2) - loss(-1e-2)) / 2e-2
            assert numeric == pytest.approx(float(grads[name][index]), rel=2e-2, abs=2e-4), f"{name}{index}"
    model.load_state_dict(state)


def test_backward_needs_its_own_forward(rng):
    model = effseq.Model({"model": {"kind": "gru", "hidden": 4}}, input_dim=1, output_dim=1)
    x = randn(rng, 1, 3, 1)
    out = model.forward(x)
    model.backward(np.ones_like(out))
    with pytest.raises(effseq.InvalidArgumentError, match="backward needs a training forward first"):
        model.backward(np.ones_like(out))
    model.forward(x)
    model.infer(x)  # inference in between discards what the backward needed
    with pytest.raises(effseq.InvalidArgumentError, match="backward needs a training forward first"):
        model.backward(np.ones_like(out))


@pytest.mark.parametrize("kind", sorted(CAUSAL))
def test_streaming_steps_equal_the_full_forward(kind, rng):
    model = effseq.Model({"model": CAUSAL[kind]}, input_dim=3, output_dim=4, readout="every")
    x = randn(rng, 2, 7, 3)
    full = model.infer(x)  # (B, T, C)
    state = model.zero_state(2)
    branch = None
    for t in range(7):
        out = model.step(np.ascontiguousarray(x[:, t]), state)
        np.testing.assert_allclose(out, full[:, t], rtol=1e-4, atol=1e-5, err_msg=f"{kind} step {t}")
        if t == 3:
            branch = state.copy()
    assert state.steps == 7 and state.batch == 2
    # The copy continues on its own.
    np.testing.assert_allclose(model.step(np.ascontiguousarray(x[:, 4]), branch), full[:, 4], rtol=1e-4, atol=1e-5)


def test_token_models_stream_and_tie_embeddings(rng):
    model = effseq.Model({"model": {"kind": "linear", "hidden": 8, "heads": 2, "tie_embeddings": True}}, vocab=11, output_dim=11)
    ids = rng.integers(0, 11, size=(3, 6)).astype(np.int32)
    full = model.infer(ids)
    assert full.shape == (3, 6, 11)
    state = model.zero_state(3)
    for t in range(6):
        np.testing.assert_allclose(model.step(ids[:, t], state), full[:, t], rtol=1e-4, atol=1e-5)
    assert "embedding.weight" in model.state_dict() and "head.weight" not in model.state_dict()
    np.testing.assert_allclose(model.infer(ids.astype(np.uint8)), full)


def test_padded_batches_use_lengths(rng):
    model = effseq.Model({"model": {"kind": "transformer", "hidden": 8, "heads": 2, "bidirectional": True, "pooling": "mean"}}, input_dim=2, output_dim=3, readout="last")
    x = randn(rng, 2, 6, 2)
    padded = model.infer(x, lengths=[6, 4])
    alone = model.infer(np.ascontiguousarray(x[1:, :4]))
    np.testing.assert_allclose(padded[1], alone[0], rtol=1e-5, atol=1e-5)
    out = model.forward(x, lengths=[6, 4])
    model.backward(np.ones_like(out))


def test_checkpoints_and_weights_round_trip(tmp_path, rng):
    config = {"model": {"kind": "lstm", "hidden": 8}, "task": {"kind": "adding", "seq_len": 10, "eval_size": 32}, "train": {"steps": 10, "warmup_steps": 2}}
    model = effseq.Model(config)
    x = randn(rng, 4, 10, 2)

    def train_steps(m, n, seed):
        data = np.random.default_rng(seed)
        for _ in range(n):
            out = m.forward(randn(data, 4, 10, 2))
            m.zero_grad()
            m.backward(out - 1.0)
            m.optimizer_step()

    train_steps(model, 3, 0)
    model.save(tmp_path / "ckpt")
    # A checkpoint directory holds the pointer `current` and the version it names (see effseq's checkpoint.rs).
    version = (tmp_path / "ckpt" / "current").read_text().strip()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["current", version]
    assert sorted(p.name for p in (tmp_path / "ckpt" / version).iterdir()) == ["config.toml", "model.safetensors", "optimizer.safetensors", "state.json"]
    loaded = effseq.Model.load(tmp_path / "ckpt")
    assert loaded.steps == 3 and loaded.config == model.config
    np.testing.assert_array_equal(loaded.infer(x), model.infer(x))
    # The optimizer state came along: two more identical steps give identical weights.
    train_steps(model, 2, 1)
    train_steps(loaded, 2, 1)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)
    evaluation = loaded.evaluate()
    assert evaluation["metric_name"] == "mse" and evaluation["sequences"] == 32 and np.isfinite(evaluation["metric"])

    # Weights alone, into a model whose I/O is given by keyword.
    model.save_weights(tmp_path / "weights.safetensors")
    bare = effseq.Model({"model": {"kind": "lstm", "hidden": 8}}, input_dim=2, output_dim=1, readout="last")
    bare.load_weights(tmp_path / "weights.safetensors")
    np.testing.assert_array_equal(bare.infer(x), model.infer(x))


def test_performer_buffers_are_in_the_state_dict():
    model = effseq.Model({"model": {"kind": "performer", "hidden": 8, "heads": 2, "features": 5}}, input_dim=2, output_dim=1)
    state = model.state_dict()
    projections = [k for k in state if k.endswith("projection_matrix")]
    assert projections and state[projections[0]].shape == (5, 4)
    # Layer 0's projection is the one favor_projection draws for the same seed.
    np.testing.assert_array_equal(state[projections[0]], effseq.kernels.favor_projection(4, 5, seed=model.config["train"]["seed"]))
