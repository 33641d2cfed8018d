//! Failures of the command-line tool: a message, an optional hint and an exit code per kind of problem.

use effseq::Error;

/// Exit codes.
pub mod exit {
    /// Anything not listed below (I/O errors, internal errors).
    pub const OTHER: u8 = 1;
    /// Bad usage: an unknown name, a malformed or invalid config, conflicting flags.
    pub const USAGE: u8 = 2;
    /// A missing, truncated, corrupt or mismatched checkpoint or data file.
    pub const DATA: u8 = 3;
    /// Training diverged (NaN or infinite loss, gradient or weight).
    pub const DIVERGED: u8 = 4;
    /// Stopped by Ctrl-C (128 + SIGINT, as a shell reports it; SIGTERM gives 143).
    pub const INTERRUPTED: u8 = 130;
}

/// What to tell the user when a command fails.
#[derive(Debug)]
pub struct CliError {
    /// One line: what went wrong, naming the file, field or value.
    pub message: String,
    /// What to do about it, if there is something useful to say.
    pub hint: Option<String>,
    /// The process exit code, one of [`exit`].
    pub code: u8,
}

impl CliError {
    /// A usage error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError { message: message.into(), hint: None, code: exit::USAGE }
    }

    /// The same error with a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Writes `error: <message>` and `hint: <hint>` to stderr.
    pub fn print(&self) {
        eprintln!("error: {}", self.message);
        if let Some(hint) = &self.hint {
            eprintln!("hint: {hint}");
        }
    }
}

impl From<Error> for CliError {
    fn from(err: Error) -> Self {
        let (code, hint) = match &err {
            Error::Config { path: Some(_), .. } => (exit::USAGE, Some("a run config has the sections [model], [task] and [train], every field optional")),
            Error::Config { path: None, .. } | Error::Unknown { .. } | Error::Invalid(_) => (exit::USAGE, None),
            // Say what a checkpoint is when the path is not one at all; a damaged file speaks for itself.
            Error::Checkpoint { msg, .. } if msg.contains("does not exist") || msg.contains("not an effseq checkpoint") || msg.contains("not a directory") => {
                (exit::DATA, Some("a checkpoint is a directory written by `effseq train` (model.safetensors, optimizer.safetensors, config.toml, state.json)"))
            }
            Error::Checkpoint { .. } => (exit::DATA, None),
            Error::Data { .. } => (exit::DATA, None),
            Error::NonFinite { .. } => (exit::DIVERGED, None),
            Error::Interrupted { .. } => (exit::INTERRUPTED, None),
            _ => (exit::OTHER, None),
        };
        CliError { message: err.to_string(), hint: hint.map(str::to_string), code }
    }
}
