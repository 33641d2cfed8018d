//! Checks made before any work starts, so that a run never fails at its end for a reason known at its start:
//! every output path is writable, the checkpoint directory of a `train` run is locked against a second run, and
//! the memory a run will need (estimated from its config, [`effseq::memory`]) fits the machine.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use effseq::memory::{self, MemoryEstimate};

use crate::failure::CliError;

/// The lock file in a run's checkpoint directory.
pub const LOCK_FILE: &str = "effseq.lock";

/// Checks that `path`, given with `flag`, can be written when the command ends: its directory exists and accepts a
/// new file (the outputs are written to a temporary file there and renamed), and it is not a directory itself.
pub fn check_output_file(flag: &str, path: &Path) -> Result<(), CliError> {
    if path.is_dir() {
        return Err(CliError::usage(format!("{flag} {} is a directory; give a file name", path.display())));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        let what = if parent.exists() { "is not a directory" } else { "does not exist" };
        return Err(CliError::usage(format!("cannot write {flag} {}: {} {what}", path.display(), parent.display()))
            .with_hint("create the directory first, or give another path"));
    }
    probe_directory(&parent).map_err(|e| CliError::usage(format!("cannot write {flag} {}: {e}", path.display())))
}

/// Checks that the checkpoint directory `dir` of `--out` can be written: it is a writable directory, or does not
/// exist yet under a writable directory (nothing is created here).
pub fn check_output_dir(flag: &str, dir: &Path) -> Result<(), CliError> {
    let unusable = |why: String| CliError::usage(format!("cannot write {flag} {}: {why}", dir.display()));
    if dir.exists() {
        if !dir.is_dir() {
            return Err(unusable("it exists and is not a directory".into()));
        }
        return probe_directory(dir).map_err(unusable);
    }
    // The nearest existing ancestor must be a directory that accepts new entries.
    let mut ancestor = dir.parent();
    while let Some(a) = ancestor {
        let a = if a.as_os_str().is_empty() { Path::new(".") } else { a };
        if a.exists() {
            if !a.is_dir() {
                return Err(unusable(format!("{} is not a directory", a.display())));
            }
            return probe_directory(a).map_err(unusable);
        }
        ancestor = a.parent();
    }
    Ok(())
}

/// Creates and removes a file in `dir`: the only reliable test that the directory accepts new entries (the
/// permission bits say nothing for root, a read-only mount or a full quota).
fn probe_directory(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".effseq-probe-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("{} does not accept new files ({e})", dir.display())),
    }
}

/// The exclusive lock of a run's checkpoint directory, held until it is dropped or the process ends (an OS file
/// lock, `flock` on Unix: a process killed with `kill -9` releases it too, so a stale lock file never blocks).
#[derive(Debug)]
pub struct RunLock {
    /// The open lock file; closing it releases the lock.
    _file: File,
}

/// Creates `dir` if needed and takes the exclusive lock of its [`LOCK_FILE`]; a directory locked by another
/// running effseq is a usage error naming that process.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| effseq::Error::io(dir, e))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| effseq::Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's process id, for the message the next run gets.
            let _ = file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).and_then(|_| writeln!(file, "{}", std::process::id()));
            Ok(RunLock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let by = if holder.is_empty() { "another effseq process".to_string() } else { format!("another effseq process (pid {holder})") };
            Err(CliError::usage(format!("{} is in use by {by}: two runs cannot write one checkpoint directory", dir.display()))
                .with_hint("wait for that run to end (the lock is released when it exits, even if it is killed), or write elsewhere with --out DIR"))
        }
        Err(TryLockError::Error(e)) => Err(effseq::Error::io(&path, e).into()),
    }
}

/// Refuses a run whose estimated memory exceeds `--max-memory-gib` (when given) or the memory available now
/// (Linux `MemAvailable`); the message gives the estimate and its parts, `hint` says what to lower.
pub fn check_memory(what: &str, estimate: &MemoryEstimate, max_memory_gib: Option<f64>, hint: &str) -> Result<(), CliError> {
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    if let Some(limit) = max_memory_gib {
        if !(limit.is_finite() && limit > 0.0) {
            return Err(CliError::usage(format!("--max-memory-gib must be a positive number, got {limit}")));
        }
        if gib(estimate.total) > limit {
            return Err(CliError::usage(format!("{what} needs an estimated {estimate}, above --max-memory-gib {limit}"))
                .with_hint(format!("{hint}, or raise --max-memory-gib")));
        }
    }
    if let Some(available) = memory::available_bytes() {
        if estimate.total > available {
            return Err(CliError::usage(format!("{what} needs an estimated {estimate}, but only {:.2} GiB of memory is available", gib(available)))
                .with_hint(format!("{hint}, or free memory")));
        }
    }
    Ok(())
}
