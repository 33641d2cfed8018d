//! `effseq`: train, evaluate and inspect sequence models from the command line.
//!
//! Every subcommand lives in its own module with a clap `Args` struct and a `run` function; adding one is one
//! variant of [`Command`] and one arm in [`dispatch`]. Failures are [`failure::CliError`]s: `error: <message>`
//! (and sometimes a `hint:` line) on stderr, and an exit code that says what kind of failure it was
//! ([`failure::exit`]). With `--json` the last line of stdout is one JSON object.

mod bench_cmd;
mod compare_cmd;
mod eval_cmd;
mod failure;
mod format;
mod generate_cmd;
mod info_cmd;
mod plot;
mod predict_cmd;
mod preflight;
mod progress;
mod signals;
mod train_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use failure::CliError;

/// Counts heap bytes so that `effseq bench` can report each configuration's peak memory.
#[global_allocator]
static ALLOCATOR: effseq::bench::alloc::CountingAllocator = effseq::bench::alloc::CountingAllocator;

/// Efficient sequence models (LSTM, GRU, TCN, Transformer, Linear Transformer, Performer) on the CPU: train,
/// evaluate, generate, inspect and benchmark.
#[derive(Parser, Debug)]
#[command(name = "effseq", version, about, propagate_version = true)]
struct Cli {
    /// Print one JSON object as the last line of stdout (human-readable lines go to stderr).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model on a generated (adding, copy) or real-data (digits, smnist, forecast, charlm) task, with periodic
    /// evaluation and checkpoints.
    Train(Box<train_cmd::TrainArgs>),
    /// Evaluate a checkpoint on its task's evaluation set.
    Eval(eval_cmd::EvalArgs),
    /// Predict new data with a checkpoint of your own data (--task custom): CSV or JSON Lines out, streaming through
    /// the input in bounded memory.
    Predict(predict_cmd::PredictArgs),
    /// Show the resolved config and the parameters (per tensor) of a config file or a checkpoint.
    Info(info_cmd::InfoArgs),
    /// Time and memory of each model against sequence length (forward, train, streaming step).
    Bench(bench_cmd::BenchArgs),
    /// Sample text from a charlm checkpoint with the model's streaming step, and report tokens/s.
    Generate(generate_cmd::GenerateArgs),
    /// Train several models on one task with matched parameter counts and the same budget (seconds or steps):
    /// one table (parameters, steps, steps/s, train loss, test metric, peak memory) and a metric-against-time chart.
    Compare(Box<compare_cmd::CompareArgs>),
    /// Internal: trains one model of `effseq compare` in a fresh process (spec on stdin, events on stdout).
    #[command(name = "compare-worker", hide = true)]
    CompareWorker(compare_cmd::WorkerArgs),
}

/// Runs the chosen subcommand.
fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Train(args) => train_cmd::run(&args, cli.json),
        Command::Eval(args) => eval_cmd::run(&args, cli.json),
        Command::Predict(args) => predict_cmd::run(&args, cli.json),
        Command::Info(args) => info_cmd::run(&args, cli.json),
        Command::Generate(args) => generate_cmd::run(&args, cli.json),
        Command::Compare(args) => compare_cmd::run(&args, cli.json),
        Command::CompareWorker(args) => compare_cmd::run_worker(&args),
        Command::Bench(args) => {
            bench_cmd::run(&args, cli.json)?;
            Ok(())
        }
    }
}

/// Tells glibc's allocator to keep freed memory for reuse instead of returning it to the kernel.
///
/// Training allocates and frees the same large activation buffers (tens of MiB) at every step. By default
/// glibc serves those with fresh `mmap`s and unmaps them on free, so every step pays a page fault and a
/// zero-fill per 4 KiB page: measured on the LSTM benchmark (B = 8, T = 1024, H = 256) that is 250 ms per
/// forward+backward instead of 175 ms. Raising the mmap and trim thresholds makes the buffers come back from
/// the heap, already mapped.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // clap prints its own usage errors and exits with code 2 (0 for --help and --version).
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            err.print();
            ExitCode::from(err.code)
        }
    }
}
