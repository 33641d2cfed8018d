"""effseq: efficient sequence models on the CPU (a Rust library), from Python.

- :class:`Model`: LSTM, GRU, TCN, softmax / linear / Performer Transformers, Reformer and Mamba networks built from the
  same config as the ``effseq`` command line; ``forward``/``backward``/``optimizer_step`` for your own loop,
  ``infer``, streaming ``step`` with a :class:`State`, checkpoints (``save``/``load``) and safetensors weights.
- :func:`train`: the CLI's training loop (``effseq train``) with a progress callback; returns the summary.
- :mod:`effseq.kernels`: the attention kernels and the selective scan, forward and backward on NumPy arrays.
- :mod:`effseq.torch`: the same kernels as ``torch.autograd.Function``s (imports torch; ``import effseq`` does not).
- :mod:`effseq.errors`: what goes wrong raises an ``effseq.Error`` (also a ``ValueError``/``TypeError``/...).

Threads: effseq's kernels run on their own pool, ``RAYON_NUM_THREADS`` threads (default one per core), or set it with
:func:`set_num_threads` before the first call.
"""

import os as _os

from . import errors, kernels
from ._effseq import Model, State, __version__, config_toml, num_threads, resolve_config, train
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergedError,
    DTypeError,
    Error,
    InternalError,
    InvalidArgumentError,
    IoError,
    ShapeError,
)
from .kernels import KernelContext


def set_num_threads(threads: int) -> None:
    """Runs effseq's kernels on ``threads`` threads: its rayon pool and the pool of its GEMM library
    (matrixmultiply, at most 4). Call it before the first effseq computation; afterwards the count is fixed
    (an ``InvalidArgumentError`` then, unless it is the count already in use)."""
    threads = int(threads)
    _effseq_init_thread_pool(threads)
    # matrixmultiply reads its count at its first product; processes started from here inherit both.
    _os.environ["RAYON_NUM_THREADS"] = _os.environ["MATMUL_NUM_THREADS"] = str(threads)


from ._effseq import _init_thread_pool as _effseq_init_thread_pool  # noqa: E402


def __getattr__(name):
    # `effseq.torch` without an explicit import; torch is imported only here, on first use.
    if name == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'effseq' has no attribute {name!r}")


__all__ = [
    "Model",
    "State",
    "KernelContext",
    "train",
    "resolve_config",
    "config_toml",
    "num_threads",
    "set_num_threads",
    "errors",
    "kernels",
    "__version__",
    *errors.__all__,
]
