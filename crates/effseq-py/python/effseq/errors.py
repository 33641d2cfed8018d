"""The exceptions effseq raises. Every one is an ``effseq.Error`` and also the built-in exception a Python user would
expect for it (``ValueError`` for a bad value or shape, ``TypeError`` for a wrong type or dtype, ``OSError`` for an
I/O failure), so ``except ValueError`` works as well as ``except effseq.Error``."""


class Error(Exception):
    """Base class of every error effseq raises."""


class ConfigError(Error, ValueError):
    """A config (dict, TOML/JSON text or file) with an unknown field, a malformed or out-of-range value, or an
    unknown model, task or kernel name."""


class ShapeError(Error, ValueError):
    """An array whose shape does not fit the call."""


class InvalidArgumentError(Error, ValueError):
    """An argument the call cannot accept: a non-contiguous array, NaN or infinity in an input, a sequence length
    out of range, a backward without its forward, ..."""


class DTypeError(Error, TypeError):
    """Not a NumPy array (or not a CPU tensor), or not float32 (integer token ids for token models)."""


class CheckpointError(Error):
    """A checkpoint that is missing, truncated, corrupt, or does not match its config; or a directory that already
    holds a checkpoint the call would replace."""


class DataError(Error):
    """A data file of a task that is missing or malformed."""


class DivergedError(Error, ArithmeticError):
    """Training produced a NaN or infinite loss or gradient norm (the last good checkpoint is kept)."""


class IoError(Error, OSError):
    """An operating-system I/O error on a named file."""


class InternalError(Error):
    """A bug in effseq, caught at the boundary (a Rust panic) instead of aborting the interpreter. Please report it
    with the call that raised it."""


__all__ = [
    "Error",
    "ConfigError",
    "ShapeError",
    "InvalidArgumentError",
    "DTypeError",
    "CheckpointError",
    "DataError",
    "DivergedError",
    "IoError",
    "InternalError",
]
