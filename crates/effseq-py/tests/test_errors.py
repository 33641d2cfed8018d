"""Bad input from Python raises a clear exception (an effseq.Error that is also the matching built-in), never an
abort: wrong dtype, non-contiguous or misaligned arrays, wrong shapes, NaN and infinity, bad lengths, bad configs,
bad checkpoints, and panics inside the library."""

import json

import numpy as np
import pytest

import effseq
import effseq.kernels as K
from conftest import randn


def qkv(rng, shape=(1, 2, 6, 4)):
    return [randn(rng, *shape) for _ in range(3)]


def test_every_error_is_an_effseq_error_and_the_matching_builtin():
    assert issubclass(effseq.ShapeError, ValueError) and issubclass(effseq.ShapeError, effseq.Error)
    assert issubclass(effseq.InvalidArgumentError, ValueError)
    assert issubclass(effseq.ConfigError, ValueError)
    assert issubclass(effseq.DTypeError, TypeError)
    assert issubclass(effseq.IoError, OSError)
    assert issubclass(effseq.DivergedError, ArithmeticError)
    for name in effseq.errors.__all__:
        assert issubclass(getattr(effseq.errors, name), effseq.Error)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (lambda q: q.astype(np.float64), effseq.DTypeError, "q must have dtype float32, got float64: convert it with q.astype"),
        (lambda q: q.astype(np.int32), effseq.DTypeError, "must have dtype float32, got int32"),
        (lambda q: q.tolist(), effseq.DTypeError, "q must be a NumPy array of float32, got list"),
        (lambda q: None, effseq.DTypeError, "got NoneType"),
        (lambda q: q.transpose(0, 1, 3, 2), effseq.InvalidArgumentError, "q is not C-contiguous"),
        (lambda q: np.asfortranarray(q), effseq.InvalidArgumentError, "not C-contiguous"),
        (lambda q: q[:, :, ::2], effseq.InvalidArgumentError, "not C-contiguous"),
        (lambda q: q[0], effseq.ShapeError, r"q must have 4 dimensions \(B, H, T, Dh\), got shape \(2, 6, 4\)"),
        (lambda q: q[:, :, :0].copy(), effseq.ShapeError, "empty dimension"),
    ],
)
def test_bad_query_arrays(rng, bad, error, message):
    q, k, v = qkv(rng)
    for forward in (K.softmax_attention_forward, K.linear_attention_forward):
        with pytest.raises(error, match=message):
            forward(bad(q), k, v)


def test_misaligned_arrays(rng):
    q, k, v = qkv(rng)
    raw = np.zeros(q.nbytes + 1, dtype=np.uint8)
    misaligned = np.frombuffer(raw.data, dtype=np.float32, count=q.size, offset=1).reshape(q.shape)
    with pytest.raises(effseq.InvalidArgumentError, match="not aligned"):
        K.softmax_attention_forward(misaligned, k, v)


def test_shapes_that_do_not_fit_together(rng):
    q, k, v = qkv(rng)
    with pytest.raises(effseq.ShapeError, match=r"k must have shape \(B, H, T, Dh\) like q = \(1, 2, 6, 4\), got \(1, 2, 5, 4\)"):
        K.softmax_attention_forward(q, k[:, :, :5].copy(), v)
    with pytest.raises(effseq.ShapeError, match="projection must have shape"):
        K.favor_attention_forward(q, k, v, K.favor_projection(5, 7))
    with pytest.raises(effseq.ShapeError, match="n_hashes = 2 and n_buckets = 4"):
        K.lsh_attention_forward(q, v, rotations=K.lsh_rotations(0, 2, 4, 4), n_hashes=3, bucket_size=2)
    out, ctx = K.softmax_attention_forward(q, k, v)
    with pytest.raises(effseq.ShapeError, match="dout must have shape"):
        K.softmax_attention_backward(ctx, out[:, :1].copy())
    u, delta = randn(rng, 2, 10, 3), randn(rng, 2, 10, 3)
    A, B, C, D = randn(rng, 3, 4), randn(rng, 2, 10, 4), randn(rng, 2, 10, 5), randn(rng, 3)
    with pytest.raises(effseq.ShapeError, match=r"C must have shape \(B, T, N\) = \(2, 10, 4\), got \(2, 10, 5\)"):
        K.selective_scan_forward(u, delta, A, B, C, D)
    with pytest.raises(effseq.ShapeError, match="initial_state"):
        K.selective_scan_forward(u, delta, A, B, B, D, initial_state=randn(rng, 2, 3, 5))


def test_nan_and_infinity_are_refused_with_their_position(rng):
    q, k, v = qkv(rng)
    k[0, 1, 4, 2] = np.nan
    with pytest.raises(effseq.InvalidArgumentError, match=r"k contains NaN at index \(0, 1, 4, 2\)"):
        K.linear_attention_forward(q, k, v)
    k[0, 1, 4, 2] = np.inf
    with pytest.raises(ValueError, match="k contains an infinite value"):
        K.softmax_attention_forward(q, k, v)
    k[0, 1, 4, 2] = 0.0
    out, ctx = K.softmax_attention_forward(q, k, v)
    dout = np.ones_like(out)
    dout[0, 0, 0, 0] = -np.inf
    with pytest.raises(effseq.InvalidArgumentError, match="dout contains an infinite value"):
        K.softmax_attention_backward(ctx, dout)
    u, delta = randn(rng, 1, 300, 3), randn(rng, 1, 300, 3)
    delta[0, 299, 2] = np.nan  # in the last block of the finiteness scan
    with pytest.raises(effseq.InvalidArgumentError, match=r"delta contains NaN at index \(0, 299, 2\)"):
        K.selective_scan_forward(u, delta, randn(rng, 3, 2), randn(rng, 1, 300, 2), randn(rng, 1, 300, 2), randn(rng, 3))


def test_bad_lengths_and_names(rng):
    q, k, v = qkv(rng, (2, 2, 6, 4))
    with pytest.raises(effseq.ShapeError, match="lengths must hold B = 2 integers"):
        K.softmax_attention_forward(q, k, v, lengths=[6])
    with pytest.raises(effseq.InvalidArgumentError, match=r"lengths\[1\] = 7 is outside 0..=6"):
        K.softmax_attention_forward(q, k, v, lengths=[6, 7])
    with pytest.raises(effseq.InvalidArgumentError, match=r"lengths\[0\] = -1"):
        K.linear_attention_forward(q, k, v, causal=False, lengths=[-1, 2])
    with pytest.raises(effseq.DTypeError, match="lengths must be a sequence"):
        K.softmax_attention_forward(q, k, v, lengths="six")
    with pytest.raises(effseq.ConfigError, match="unknown FAVOR\\+ kernel 'gauss'"):
        K.favor_attention_forward(q, k, v, K.favor_projection(4, 3), kernel="gauss")
    with pytest.raises(effseq.ConfigError, match="unknown role"):
        K.favor_features(q, K.favor_projection(4, 3), role="value")
    with pytest.raises(effseq.ConfigError, match="even number of buckets"):
        K.lsh_attention_forward(q, v, n_buckets=3, bucket_size=2)
    with pytest.raises(effseq.ConfigError, match="bucket_size must be at least 1"):
        K.lsh_attention_forward(q, v, bucket_size=0)
    with pytest.raises(TypeError):
        K.softmax_attention_forward(q, k, v, causal=True, heads=3)  # no such keyword


def test_panics_inside_effseq_become_internal_errors_not_aborts():
    for in_worker in (False, True):
        with pytest.raises(effseq.InternalError, match="deliberate panic"):
            effseq._effseq._panic_for_test(in_worker=in_worker)
    # The interpreter and the thread pool are still fine afterwards.
    q = np.ones((1, 1, 4, 2), dtype=np.float32)
    out, _ = K.softmax_attention_forward(q, q, q)
    np.testing.assert_allclose(out, q)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model": {"kind": "lstm", "hiden": 8}}, "unknown field `hiden`"),
        ({"model": {"kind": "transformr"}}, "unknown variant `transformr`"),
        ({"model": {"kind": "transformer", "hidden": 10, "heads": 4}}, r"model.hidden \(10\) must be a positive multiple of model.heads \(4\)"),
        ({"model": {"hidden": "wide"}}, "invalid type"),
        ({"train": {"lr": -1.0}}, "train.lr must be a positive number"),
        ({"task": {"kind": "digits", "seq_len": 10}}, "task.seq_len is fixed at 64"),
        ("[model\nkind = 'lstm'", "TOML"),
        ('{"model": {"kind": "lstm",}}', "JSON line 1"),
        (42, "config must be a dict, the text of a TOML or JSON config, or a pathlib.Path"),
    ],
)
def test_bad_configs(config, message):
    with pytest.raises(effseq.ConfigError, match=message):
        effseq.Model(config)
    with pytest.raises(ValueError, match=message):
        effseq.train(config)


def test_config_files_that_are_missing_or_bad(tmp_path):
    with pytest.raises(effseq.IoError, match="nope.toml"):
        effseq.Model(tmp_path / "nope.toml")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"layers": 0}}))
    with pytest.raises(effseq.ConfigError, match="bad.json.*model.layers must be at least 1"):
        effseq.Model(bad)


def test_bad_model_inputs(rng):
    dense = effseq.Model({"model": {"kind": "gru", "hidden": 8}}, input_dim=3, output_dim=2, readout="every")
    with pytest.raises(effseq.DTypeError, match="inputs must have dtype float32"):
        dense.forward(np.zeros((2, 5, 3), dtype=np.int64))
    with pytest.raises(effseq.ShapeError, match=r"inputs must have shape \(B, T, D\) with D = 3 features = \(2, 5, 3\), got \(2, 5, 4\)"):
        dense.forward(randn(rng, 2, 5, 4))
    with pytest.raises(effseq.ShapeError, match="3 dimensions"):
        dense.infer(randn(rng, 5, 3))
    x = randn(rng, 2, 5, 3)
    x[1, 2, 0] = np.nan
    with pytest.raises(effseq.InvalidArgumentError, match=r"inputs contains NaN at index \(1, 2, 0\)"):
        dense.forward(x)
    with pytest.raises(effseq.InvalidArgumentError, match="backward needs a training forward first"):
        dense.backward(np.zeros((2, 5, 2), dtype=np.float32))
    out = dense.forward(randn(rng, 2, 5, 3))
    with pytest.raises(effseq.ShapeError, match="like the last forward's outputs"):
        dense.backward(np.zeros((2, 5, 3), dtype=np.float32))
    dense.backward(np.ones_like(out))  # the failed call kept the forward
    with pytest.raises(effseq.InvalidArgumentError, match=r"lengths\[0\] = 0 is outside 1..=5"):
        dense.infer(randn(rng, 2, 5, 3), lengths=[0, 5])
    state = dense.zero_state(2)
    with pytest.raises(effseq.ShapeError, match=r"x must have shape \(B, D\) with the state's batch B = 2"):
        dense.step(randn(rng, 3, 3), state)
    other = effseq.Model({"model": {"kind": "tcn", "hidden": 8, "levels": 1}}, input_dim=3, output_dim=2)
    with pytest.raises(effseq.InvalidArgumentError, match="different architecture"):
        dense.step(randn(rng, 2, 3), other.zero_state(2))
    with pytest.raises(effseq.InvalidArgumentError, match="at least 1"):
        dense.zero_state(0)

    tokens = effseq.Model({"model": {"kind": "lstm", "hidden": 8}}, vocab=10, output_dim=10)
    with pytest.raises(effseq.DTypeError, match="integer token ids"):
        tokens.forward(randn(rng, 2, 5))
    with pytest.raises(effseq.InvalidArgumentError, match="token id 10 at flat index 3, outside the vocabulary 0..10"):
        tokens.forward(np.array([[1, 2, 3, 10]]))
    with pytest.raises(effseq.InvalidArgumentError, match="token id -1"):
        tokens.infer(np.array([[-1, 2]]))
    with pytest.raises(effseq.ShapeError, match=r"token ids of shape \(B,\)"):
        tokens.step(np.array([[1]]), tokens.zero_state(1))

    with pytest.raises(effseq.ConfigError, match="exactly one of input_dim"):
        effseq.Model(None, input_dim=3, vocab=4, output_dim=1)
    with pytest.raises(effseq.ConfigError, match="output_dim"):
        effseq.Model(None, input_dim=3)
    with pytest.raises(effseq.ConfigError, match="unknown readout 'first'"):
        effseq.Model(None, input_dim=3, output_dim=1, readout="first")
    bidirectional = effseq.Model({"model": {"kind": "linear", "hidden": 8, "heads": 2, "bidirectional": True}}, input_dim=3, output_dim=2)
    with pytest.raises(effseq.InvalidArgumentError, match="streaming needs a causal model"):
        bidirectional.step(randn(rng, 1, 3), bidirectional.zero_state(1))


def test_bad_state_dicts_and_checkpoints(tmp_path, rng):
    model = effseq.Model({"model": {"kind": "gru", "hidden": 4}, "task": {"kind": "adding", "seq_len": 6}})
    state = model.state_dict()
    with pytest.raises(effseq.ShapeError, match=r'missing \["head.bias"\]'):
        model.load_state_dict({k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(effseq.ShapeError, match="'head.weight' must have shape \\(1, 4\\), got \\(4, 1\\)"):
        model.load_state_dict({**state, "head.weight": state["head.weight"].T.copy()})
    with pytest.raises(effseq.DTypeError, match="'head.bias'.*float32"):
        model.load_state_dict({**state, "head.bias": state["head.bias"].astype(np.float64)})
    with pytest.raises(effseq.ShapeError, match=r'unexpected \["extra"\]'):
        model.load_state_dict({**state, "extra": state["head.bias"]})
    model.load_state_dict({"head.bias": np.full((1,), 0.5, dtype=np.float32)}, strict=False)
    assert model.state_dict()["head.bias"][0] == 0.5

    with pytest.raises(effseq.CheckpointError, match="directory does not exist"):
        effseq.Model.load(tmp_path / "missing")
    model.save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / (tmp_path / "ckpt" / "current").read_text().strip() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(effseq.CheckpointError, match="model.safetensors"):
        effseq.Model.load(tmp_path / "ckpt")
    explicit = effseq.Model(None, input_dim=2, output_dim=1)
    with pytest.raises(effseq.CheckpointError, match="save_weights"):
        explicit.save(tmp_path / "explicit")
    with pytest.raises(effseq.CheckpointError, match="missing"):
        explicit.load_weights(tmp_path / "nothing.safetensors")


def test_training_errors(tmp_path):
    tiny = {"model": {"kind": "lstm", "hidden": 4}, "task": {"kind": "adding", "seq_len": 5, "eval_size": 8}, "train": {"steps": 3, "batch": 2}}
    with pytest.raises(effseq.DTypeError, match="progress must be a callable"):
        effseq.train(tiny, progress=3)
    with pytest.raises(effseq.ConfigError, match="resume=True needs checkpoint_dir"):
        effseq.train(tiny, resume=True)

    class Stop(Exception):
        pass

    def explode(event):
        if event["event"] == "step":
            raise Stop("from the callback")

    with pytest.raises(Stop, match="from the callback"):
        effseq.train(tiny, progress=explode)
    diverging = {**tiny, "train": {"steps": 20, "batch": 2, "lr": 1e30, "clip_norm": 0.0, "warmup_steps": 0}}
    with pytest.raises(effseq.DivergedError, match="training diverged at step"):
        effseq.train(diverging)
    effseq.train(tiny, checkpoint_dir=tmp_path / "run")
    with pytest.raises(effseq.CheckpointError, match="already holds a checkpoint"):
        effseq.train(tiny, checkpoint_dir=tmp_path / "run")
    with pytest.raises(effseq.ConfigError, match="a resumed run keeps the config"):
        effseq.train({**tiny, "model": {"kind": "gru", "hidden": 4}}, checkpoint_dir=tmp_path / "run", resume=True)
