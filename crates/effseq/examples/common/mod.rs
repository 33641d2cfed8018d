//! What the layer-timing examples (`attention_layer`, `lsh_layer`) share: their comma-separated flags, the timing
//! loop (one warm-up run, then `--repeats` timed runs, with the configuration's peak extra heap from the counting
//! allocator) and the `--json FILE` output, whose records have the shape of `effseq bench --json-file` (model,
//! mode, batch, seq_len, dim, median_ms, min_ms, peak_bytes, skipped) plus every timed run, for
//! `scripts/render_results.py`.

use std::time::Instant;

use effseq::bench::alloc;
use effseq::bench::process_peak_rss;
use serde_json::{json, Value};

/// The comma-separated values of `flag`, or of `default` when the flag is absent.
pub fn list(args: &[String], flag: &str, default: &str) -> Vec<String> {
    let value = args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map_or(default, |s| s.as_str());
    value.split(',').map(str::to_string).collect()
}

/// The first value of `flag` parsed as a number.
pub fn number(args: &[String], flag: &str, default: &str) -> usize {
    list(args, flag, default)[0].parse().unwrap_or_else(|_| panic!("{flag} takes a number"))
}

/// The value after `flag`, if present.
pub fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// The deterministic input every layer example feeds: (B, T, D) values in [-1, 1).
pub fn input(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0).collect()
}

/// One configuration's timed runs (ms, sorted) and peak extra heap bytes.
pub struct Timing {
    times_ms: Vec<f64>,
    peak_bytes: u64,
}

impl Timing {
    /// Runs `run(rep)` once as warm-up (rep 0) and `repeats` times timed (rep 1..=repeats).
    pub fn measure(repeats: usize, mut run: impl FnMut(usize)) -> Self {
        let base = alloc::reset_peak();
        let mut times_ms = Vec::with_capacity(repeats);
        for rep in 0..=repeats {
            let start = Instant::now();
            run(rep);
            if rep > 0 {
                times_ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times_ms.sort_by(f64::total_cmp);
        Timing { times_ms, peak_bytes: alloc::peak().saturating_sub(base) }
    }

    fn median(&self) -> f64 {
        self.times_ms[self.times_ms.len() / 2]
    }

    /// The console columns: median ms, min ms, peak heap MiB.
    pub fn columns(&self) -> String {
        format!("{:>11.2} {:>10.2} {:>14.0}", self.median(), self.times_ms[0], self.peak_bytes as f64 / (1u64 << 20) as f64)
    }

    /// The JSON record of this configuration.
    pub fn record(&self, model: &str, mode: &str, batch: usize, seq_len: usize, dim: usize) -> Value {
        json!({
            "model": model, "mode": mode, "batch": batch, "seq_len": seq_len, "dim": dim,
            "median_ms": self.median(), "min_ms": self.times_ms[0], "times_ms": self.times_ms,
            "runs": self.times_ms.len(), "warm": true, "peak_bytes": self.peak_bytes, "skipped": null,
        })
    }
}

/// Writes the records with the settings, effseq's version, the thread count and this process's peak RSS to the
/// file named by `--json`, if given.
pub fn write_json(args: &[String], config: Value, records: Vec<Value>) {
    let Some(path) = value(args, "--json") else { return };
    let report = json!({
        "framework": "effseq",
        "version": env!("CARGO_PKG_VERSION"),
        "threads": rayon::current_num_threads(),
        "command": args,
        "config": config,
        "records": records,
        "process_peak_rss_bytes": process_peak_rss(),
    });
    let text = serde_json::to_string_pretty(&report).expect("JSON of plain values");
    std::fs::write(path, text + "\n").unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    println!("wrote {path}");
}
