//! effseq from Python: the extension module `effseq._effseq`, wrapped by the Python package in `python/effseq`.
//!
//! Everything crosses the boundary through three doors, so that no input can abort the interpreter:
//!
//! - arrays come in through [`arrays`], which checks the type, dtype, layout, shape and finiteness of each one and
//!   lends its data to the library without copying;
//! - library calls run in [`detached`]: without the GIL (other Python threads keep running), with panics caught and
//!   raised as `effseq.errors.InternalError` instead of unwinding into the interpreter;
//! - library errors leave through [`to_py_err`] as the exception classes of `effseq.errors` (`ShapeError`,
//!   `ConfigError`, ... all subclasses of `effseq.Error` and of the matching built-in: `ValueError`, `TypeError`).
//!
//! [`kernels`] exposes the attention kernels and the selective scan, [`model`] the networks, [`train`] the
//! training loop.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

mod arrays;
mod config;
mod kernels;
mod model;
mod train;

/// The exception classes of `effseq.errors` (python/effseq/errors.py), by their Python name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A malformed or out-of-range config, an unknown name.
    Config,
    /// An array or buffer of the wrong shape.
    Shape,
    /// An argument outside what the operation accepts (non-contiguous array, NaN, bad length, ...).
    InvalidArgument,
    /// An array of the wrong dtype, or not an array at all.
    DType,
    /// A missing, truncated or mismatched checkpoint.
    Checkpoint,
    /// A missing or malformed data file.
    Data,
    /// Training diverged (NaN or infinite loss).
    Diverged,
    /// An operating-system I/O error.
    Io,
    /// A panic inside effseq: a bug, caught at the boundary.
    Internal,
    /// Anything else the library reports.
    Other,
}

impl ErrorKind {
    fn class_name(self) -> &'static str {
        match self {
            ErrorKind::Config => "ConfigError",
            ErrorKind::Shape => "ShapeError",
            ErrorKind::InvalidArgument => "InvalidArgumentError",
            ErrorKind::DType => "DTypeError",
            ErrorKind::Checkpoint => "CheckpointError",
            ErrorKind::Data => "DataError",
            ErrorKind::Diverged => "DivergedError",
            ErrorKind::Io => "IoError",
            ErrorKind::Internal => "InternalError",
            ErrorKind::Other => "Error",
        }
    }
}

/// A Python exception of class `kind` (from `effseq.errors`) with message `msg`.
pub(crate) fn error(py: Python<'_>, kind: ErrorKind, msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    let class = py.import("effseq.errors").and_then(|m| m.getattr(kind.class_name())).and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, msg),
        // Only when the extension module is imported without its Python package.
        Err(_) => PyRuntimeError::new_err(format!("effseq {}: {msg}", kind.class_name())),
    }
}

/// The Python exception for a library error.
pub(crate) fn to_py_err(py: Python<'_>, e: effseq::Error) -> PyErr {
    use effseq::Error as E;
    let kind = match &e {
        E::Shape { .. } => ErrorKind::Shape,
        E::Config { .. } | E::Unknown { .. } => ErrorKind::Config,
        E::Checkpoint { .. } => ErrorKind::Checkpoint,
        E::Data { .. } => ErrorKind::Data,
        E::NonFinite { .. } => ErrorKind::Diverged,
        E::Io { .. } => ErrorKind::Io,
        E::Invalid(_) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Other,
    };
    error(py, kind, e.to_string())
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(no message)".into())
}

/// `effseq.errors.InternalError` for a panic caught at the boundary.
pub(crate) fn internal_error(py: Python<'_>, payload: &(dyn Any + Send)) -> PyErr {
    let msg = format!("internal error in effseq (a bug: please report it with the call that caused it): {}", panic_message(payload));
    error(py, ErrorKind::Internal, msg)
}

/// Runs `f` without the GIL and with panics caught (rayon re-raises a worker's panic in the caller, so a panic in
/// any thread of a kernel arrives here); library errors become the matching Python exception.
pub(crate) fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> effseq::Result<T> + Send,
    T: Send,
{
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(to_py_err(py, e)),
        Err(payload) => Err(internal_error(py, payload.as_ref())),
    }
}

/// Panics inside the boundary, on the calling thread or (`in_worker`) in a rayon worker: the tests check that it
/// arrives as `effseq.errors.InternalError`, not as an abort or a `BaseException`.
#[pyfunction]
#[pyo3(signature = (in_worker = false))]
fn _panic_for_test(py: Python<'_>, in_worker: bool) -> PyResult<()> {
    detached(py, move || {
        if in_worker {
            use rayon::prelude::*;
            (0..64usize).into_par_iter().for_each(|i| assert!(i != 63, "deliberate panic in a rayon worker (test of the boundary)"));
        } else {
            panic!("deliberate panic (test of the boundary)");
        }
        Ok(())
    })
}

/// Starts the thread pool of effseq's kernels with `threads` threads; an error once the pool is running with another
/// count (it starts at the first parallel call, with `RAYON_NUM_THREADS` threads or one per core).
#[pyfunction]
fn _init_thread_pool(py: Python<'_>, threads: usize) -> PyResult<()> {
    if threads == 0 {
        return Err(error(py, ErrorKind::InvalidArgument, "the thread count must be at least 1"));
    }
    if rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_err() && rayon::current_num_threads() != threads {
        return Err(error(
            py,
            ErrorKind::InvalidArgument,
            format!(
                "effseq's thread pool is already running with {} threads: call effseq.set_num_threads({threads}) before any other effseq call, or set RAYON_NUM_THREADS={threads} before starting Python",
                rayon::current_num_threads()
            ),
        ));
    }
    Ok(())
}

/// Threads of effseq's kernels (the rayon pool; starts it if needed).
#[pyfunction]
fn num_threads() -> usize {
    rayon::current_num_threads()
}

#[pymodule]
fn _effseq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(_init_thread_pool, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    kernels::register(m)?;
    model::register(m)?;
    train::register(m)?;
    Ok(())
}
