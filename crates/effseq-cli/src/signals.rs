//! Ctrl-C (SIGINT) and SIGTERM: the first one raises a flag that the running command polls (`train` writes the
//! checkpoint of the step it reached and exits, `compare` stops the running model and reports what finished); a
//! second one ends the process at once, killing `compare`'s worker. Checkpoints are switched atomically, so even
//! that loses nothing already saved.
//!
//! Unix only (libc); elsewhere the signals keep their default action, which ends the process.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// The running worker's process id (0: none), killed by a second signal.
static WORKER_PID: AtomicI32 = AtomicI32::new(0);

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe calls here: atomics, kill and _exit.
    if RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        let pid = WORKER_PID.load(Ordering::SeqCst);
        // SAFETY: kill and _exit are async-signal-safe.
        unsafe {
            if pid > 0 {
                libc::kill(pid, libc::SIGKILL);
            }
            libc::_exit(128 + RECEIVED.load(Ordering::SeqCst));
        }
    }
}

/// Installs the handler for SIGINT and SIGTERM: the first raises [`interrupted`], the second kills the worker (if
/// any) and exits with 128 + the first signal's number.
pub fn catch() {
    #[cfg(unix)]
    // SAFETY: the handler only touches atomics and async-signal-safe functions.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Makes this (worker) process ignore Ctrl-C: the parent decides, and tells it through its stdin.
pub fn ignore_interrupt() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// Whether Ctrl-C or SIGTERM was received.
pub fn interrupted() -> bool {
    RECEIVED.load(Ordering::SeqCst) != 0
}

/// The received signal as the user knows it: `Ctrl-C`, `SIGTERM`.
pub fn name() -> &'static str {
    #[cfg(unix)]
    if RECEIVED.load(Ordering::SeqCst) == libc::SIGTERM {
        return "SIGTERM";
    }
    "Ctrl-C"
}

/// The exit status of a command ended by the received signal, as a shell reports it: 128 + its number (130 for
/// Ctrl-C, 143 for SIGTERM).
pub fn exit_code() -> u8 {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => 130,
        signal => u8::try_from(128 + signal).unwrap_or(130),
    }
}

/// Records the running worker (0 when none).
pub fn set_worker(pid: u32) {
    WORKER_PID.store(pid as i32, Ordering::SeqCst);
}
