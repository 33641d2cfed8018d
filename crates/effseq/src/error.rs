//! The one error type of the library. The CLI maps each variant to a message and an exit code.

use std::path::PathBuf;

/// Everything that can go wrong in effseq, with enough context to say *what* and *where*.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer or parameter does not have the shape the operation needs.
    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    Shape { what: String, expected: Vec<usize>, got: Vec<usize> },

    /// A configuration value is missing, malformed or out of range.
    #[error("invalid config{}: {msg}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Config { path: Option<PathBuf>, msg: String },

    /// A name (model, task, optimizer, ...) that effseq does not know.
    #[error("unknown {kind} '{name}' (expected one of: {choices})")]
    Unknown { kind: &'static str, name: String, choices: String },

    /// A checkpoint that is missing, truncated, corrupted or does not match its config.
    #[error("checkpoint {}: {msg}", .path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// A data file that is missing or malformed; `line` is 1-based when known.
    #[error("data file {}{}: {msg}", .path.display(), .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data { path: PathBuf, line: Option<usize>, msg: String },

    /// Training diverged: the loss, a gradient or a weight became NaN or infinite. `what` names the first
    /// non-finite quantity (the loss, the gradient norm, or a tensor and element).
    #[error("training diverged at step {step}: {what} (the last good checkpoint is kept; try a lower --lr or gradient clipping)")]
    NonFinite { step: u64, what: String },

    /// Training was asked to stop (Ctrl-C, SIGTERM) after `step` completed steps; `checkpoint` is where the state
    /// of that step was saved (`None` when the run writes no checkpoints).
    #[error("interrupted after step {step}{}", .checkpoint.as_ref().map(|p| format!(": checkpoint saved in {}", p.display())).unwrap_or_else(|| ": no checkpoint directory, nothing saved".into()))]
    Interrupted { step: u64, checkpoint: Option<PathBuf> },

    /// An operating-system I/O error on a named file.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An argument outside what the operation accepts.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Shorthand for [`Error::Config`] without a file.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config { path: None, msg: msg.into() }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(what: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        Error::Shape { what: what.into(), expected: expected.to_vec(), got: got.to_vec() }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns `Err(Error::Shape)` unless `got == expected`.
pub fn check_shape(what: &str, expected: &[usize], got: &[usize]) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::shape(what, expected, got))
    }
}

/// Returns `Err(Error::Shape)` unless the buffer holds exactly the product of `shape` elements.
pub fn check_len(what: &str, shape: &[usize], len: usize) -> Result<()> {
    let want: usize = shape.iter().product();
    if want == len {
        Ok(())
    } else {
        Err(Error::Shape { what: format!("{what} (buffer of {len} elements)"), expected: shape.to_vec(), got: vec![len] })
    }
}
