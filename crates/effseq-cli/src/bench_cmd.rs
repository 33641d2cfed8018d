//! `effseq bench`: time and memory of each model against sequence length (see `effseq::bench`).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use effseq::bench::{self, BenchConfig, BenchMode, BenchRecord};
use effseq::config::ModelKind;
use effseq::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::failure::CliError;

/// Arguments of `effseq bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Models, comma-separated, or `all`.
    #[arg(long, default_value = "all")]
    pub models: String,
    /// Sequence lengths T, comma-separated.
    #[arg(long, default_value = "256,1024,4096")]
    pub seq_lens: String,
    /// Batch sizes B, comma-separated.
    #[arg(long, default_value = "1,8")]
    pub batch: String,
    /// Layer width of every model (input D = hidden H), so the table is fair.
    #[arg(long, alias = "hidden", default_value_t = 256)]
    pub dim: usize,
    /// Heads of the attention models (one causal block of width --dim).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Modes, comma-separated: forward, train (forward + backward), step (one streaming step).
    #[arg(long, default_value = "forward,train,step")]
    pub mode: String,
    /// Timed repetitions per configuration (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Skip configurations whose estimated time exceeds this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub budget: f64,
    /// Skip configurations whose estimated memory exceeds this many GiB.
    #[arg(long, default_value_t = 8.0)]
    pub max_memory_gib: f64,
    /// Write the records as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// Write the table as Markdown to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Draw the charts: FILE.svg or FILE.png (time vs length), FILE-memory and FILE-step beside it.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// The most timed repetitions per configuration (each one's time is kept).
const MAX_REPEATS: usize = 1_000_000;

fn parse_list<T>(what: &str, s: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let v: Vec<T> = s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(parse).collect::<Result<_>>()?;
    if v.is_empty() {
        return Err(Error::Invalid(format!("--{what} needs at least one value")));
    }
    Ok(v)
}

fn parse_usize(what: &'static str) -> impl Fn(&str) -> Result<usize> {
    move |x: &str| match x.parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(Error::Invalid(format!("--{what}: '{x}' is not a positive integer"))),
    }
}

impl BenchArgs {
    /// The benchmark grid these arguments describe.
    pub fn config(&self) -> Result<BenchConfig> {
        let models = if self.models == "all" { ModelKind::ALL.to_vec() } else { parse_list("models", &self.models, ModelKind::parse)? };
        if !(self.max_memory_gib > 0.0 && self.budget > 0.0) {
            return Err(Error::Invalid("--budget and --max-memory-gib must be positive".into()));
        }
        if self.repeats > MAX_REPEATS {
            return Err(Error::Invalid(format!("--repeats must be at most {MAX_REPEATS}, got {}", self.repeats)));
        }
        Ok(BenchConfig {
            models,
            seq_lens: parse_list("seq-lens", &self.seq_lens, parse_usize("seq-lens"))?,
            batches: parse_list("batch", &self.batch, parse_usize("batch"))?,
            dim: parse_usize("dim")(&self.dim.to_string())?,
            heads: parse_usize("heads")(&self.heads.to_string())?,
            modes: parse_list("mode", &self.mode, BenchMode::parse)?,
            repeats: parse_usize("repeats")(&self.repeats.to_string())?,
            budget_secs: self.budget,
            memory_limit_bytes: (self.max_memory_gib * (1u64 << 30) as f64) as u64,
        })
    }
}

/// Runs the benchmark, prints the table (and, with `json`, one JSON object as the last stdout line, the
/// human-readable lines then going to stderr).
pub fn run(args: &BenchArgs, json: bool) -> std::result::Result<Vec<BenchRecord>, CliError> {
    let cfg = args.config()?;
    if let Some(path) = &args.plot {
        crate::plot::check_plot_path(path)?;
    }
    for (flag, path) in [("--markdown", &args.markdown), ("--json-file", &args.json_file), ("--plot", &args.plot)] {
        if let Some(path) = path {
            crate::preflight::check_output_file(flag, path)?;
        }
    }
    let say = |text: &str| if json { eprint!("{text}") } else { print!("{text}") };
    say(&format!(
        "{}\n",
        format_args!(
        "effseq bench: models {} | D = H = {} for every model ({} heads, one block with a 4D feed-forward layer for attention) | {} thread(s) | median of {} runs after 1 warm-up | memory: peak extra heap bytes (counting allocator)",
        cfg.models.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
        cfg.dim,
        cfg.heads,
        rayon::current_num_threads(),
        cfg.repeats
    )));
    let total = cfg.models.len() * cfg.modes.len() * cfg.batches.len() * cfg.seq_lens.len();
    let bar = if std::io::stderr().is_terminal() && !json { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]").expect("static template"));
    let records = bench::run(&cfg, |done, _, r| {
        bar.set_position(done as u64);
        bar.set_message(format!("{} {} B={} T={}", r.model, r.mode, r.batch, r.seq_len));
    })?;
    bar.finish_and_clear();
    say(&bench::format_table(&records));
    if let Some(rss) = bench::process_peak_rss() {
        say(&format!("process peak RSS: {:.1} MiB\n", rss as f64 / (1u64 << 20) as f64));
    }
    if let Some(path) = &args.json_file {
        let text = serde_json::to_string_pretty(&records).map_err(|e| Error::Invalid(e.to_string()))?;
        write_atomic(path, text.as_bytes())?;
    }
    if let Some(path) = &args.markdown {
        write_atomic(path, bench::format_markdown(&records).as_bytes())?;
    }
    if let Some(path) = &args.plot {
        for written in crate::plot::write_bench_plots(&records, path)? {
            say(&format!("wrote {}\n", written.display()));
        }
    }
    if json {
        let obj = serde_json::json!({ "command": "bench", "dim": cfg.dim, "records": records });
        println!("{obj}");
    }
    Ok(records)
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
