//! Human-readable descriptions of configs, parameters and results, shared by the subcommands.

use effseq::config::{ModelConfig, OptimizerKind, RunConfig, TaskConfig, TaskKind, TrainConfig};
use effseq::tasks::forecast::ForecastMetrics;
use effseq::tasks::Evaluation;
use effseq::Module;
use serde::Serialize;

/// `1234567` as `1,234,567`.
pub fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let groups: Vec<String> = digits.as_bytes().rchunks(3).rev().map(|g| String::from_utf8_lossy(g).into_owned()).collect();
    groups.join(",")
}

/// A number as a person writes it: plain in [1e-3, 1e4) (`0.002`), in scientific notation outside (`1e30`).
pub fn number(x: f32) -> String {
    if x == 0.0 || (1e-3..1e4).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// E.g. `lstm, hidden 128, 2 layers, bidirectional, dropout 0.1`.
pub fn describe_model(m: &ModelConfig) -> String {
    let plural = if m.layers == 1 { "" } else { "s" };
    let mut s = match m.receptive_field() {
        Some(rf) => format!("{}, {} channels, {} levels, kernel {}, receptive field {rf}", m.kind.name(), m.hidden, m.tcn_levels(), m.kernel_size),
        None if m.kind.is_attention() => {
            let positions = match m.positional {
                effseq::config::Positional::Sinusoidal => "sinusoidal positions".to_string(),
                effseq::config::Positional::Learned => format!("learned positions up to {}", m.max_len),
            };
            let mut s =
                format!("{}, width {}, {} block{plural}, {} heads, feed-forward {}, {positions}", m.kind.name(), m.hidden, m.layers, m.heads, m.ff_dim());
            if m.kind == effseq::config::ModelKind::Performer {
                let redraw = if m.redraw_every == 0 { "never redrawn".to_string() } else { format!("redrawn every {} steps", m.redraw_every) };
                s.push_str(&format!(", {} {:?} random features per head, {redraw}", m.feature_count(), m.performer_kernel()).to_lowercase());
            }
            if m.kind == effseq::config::ModelKind::Reformer {
                let layers = if m.reversible { "reversible" } else { "stored activations" };
                s.push_str(&format!(
                    ", LSH buckets of {} with {} hash rounds, {layers}, feed-forward in {} chunks",
                    m.lsh_bucket_size(),
                    m.n_hashes,
                    m.ff_chunks
                ));
            }
            if m.tie_embeddings {
                s.push_str(", tied embeddings");
            }
            s
        }
        None if m.kind == effseq::config::ModelKind::Mamba => format!(
            "{}, width {}, {} layer{plural}, state {}, expand {} (inner width {}), conv {}",
            m.kind.name(),
            m.hidden,
            m.layers,
            m.d_state,
            m.expand,
            m.expand * m.hidden,
            m.d_conv
        ),
        None => format!("{}, hidden {}, {} layer{plural}", m.kind.name(), m.hidden, m.layers),
    };
    if m.bidirectional {
        s.push_str(", bidirectional");
    }
    if m.dropout > 0.0 {
        s.push_str(&format!(", dropout {}", m.dropout));
    }
    if !m.bias {
        s.push_str(", no bias");
    }
    if let Some(e) = m.embed_dim {
        s.push_str(&format!(", embedding {e}"));
    }
    s
}

/// E.g. `adding, T = 50, 1000 eval sequences` (copy: `T = 50 (70 steps)`), `digits, T = 64 (8x8 pixels)`,
/// `smnist, T = 784 (28x28 pixels), permuted with seed 3`, `forecast sunspots, window T = 24, horizon 1`.
pub fn describe_task(cfg: &RunConfig) -> String {
    let t = &cfg.task;
    let name = t.kind.name();
    match t.kind {
        TaskKind::Adding => format!("{name}, T = {}, {} eval sequences", t.seq_len, t.eval_size),
        TaskKind::Copy => format!("{name}, T = {} ({} steps), {} eval sequences", t.seq_len, t.seq_len + 20, t.eval_size),
        TaskKind::Digits => format!("{name}, T = {} (8x8 pixels)", t.seq_len),
        TaskKind::Smnist => {
            let order = t.permute_seed.map(|p| format!(", permuted with seed {p}")).unwrap_or_default();
            format!("{name}, T = {} (28x28 pixels){order}", t.seq_len)
        }
        TaskKind::Forecast => format!("{name} {}, window T = {}, horizon {}", t.series.name(), t.seq_len, t.horizon),
        TaskKind::Charlm => format!("{name} (Moby-Dick), context T = {} characters", t.seq_len),
        TaskKind::Listops => format!("{name}, {}..{} tokens (published: 500..2000), {} test sequences", t.seq_len / 4, t.seq_len, t.eval_size),
        TaskKind::Duplicate => format!("{name}, T = {} (0 w 0 w, |w| = {}, 127 symbols), {} eval sequences", t.seq_len, t.seq_len / 2 - 1, t.eval_size),
        TaskKind::SelectiveCopy => format!(
            "{name}, {} tokens among T = {} noise positions ({} steps), {} eval sequences",
            effseq::tasks::selective_copy::TOKENS,
            t.seq_len,
            t.steps_per_sequence(),
            t.eval_size
        ),
        TaskKind::Custom => match &t.custom {
            Some(c) if c.kind == Some(effseq::config::CustomKind::Forecast) => {
                format!("{name} forecast of {}, window T = {}, horizon {}", c.data.display(), t.seq_len, t.horizon)
            }
            Some(c) => format!("{name} {} of {}, T <= {}", c.kind.map_or("(kind to infer)", |k| k.name()), c.data.display(), t.seq_len),
            None => name.to_string(),
        },
    }
}

/// What a custom run read and inferred, for the train header, e.g. `data.csv (csv, wide, no header): 1 feature per
/// step, 2 classes (down, up) inferred; 240 training and 60 validation sequences of 3..8 steps; inputs standardised`.
/// `given` is the custom section as the user wrote it, so the fields the run inferred are marked.
pub fn describe_custom(c: &effseq::tasks::custom::Custom, given: Option<&effseq::config::CustomConfig>) -> String {
    let cfg = c.config();
    let inferred = |field: bool| if field { " (inferred)" } else { "" };
    let format = cfg.format_of(&cfg.data).map(|f| f.name()).unwrap_or("?");
    let layout = match (cfg.layout, cfg.header) {
        (Some(l), Some(h)) => {
            format!(", {} layout{}, {}", l.name(), inferred(given.is_some_and(|g| g.layout.is_none())), if h { "header" } else { "no header" })
        }
        _ => String::new(),
    };
    let kind = cfg.kind.map_or("?", |k| k.name());
    let inputs = if cfg.tokens {
        format!("token ids, vocabulary {}", cfg.vocab.unwrap_or(0))
    } else if cfg.feature_names.is_empty() {
        format!("{} feature{} per step", cfg.features, if cfg.features == 1 { "" } else { "s" })
    } else {
        format!("{} features per step ({})", cfg.features, cfg.feature_names.join(", "))
    };
    let targets = if cfg.classes.is_empty() {
        let names = if cfg.target_names.is_empty() { String::new() } else { format!(" ({})", cfg.target_names.join(", ")) };
        format!("{} real target{}{names}", cfg.targets, if cfg.targets == 1 { "" } else { "s" })
    } else {
        let shown: Vec<&str> = cfg.classes.iter().take(12).map(String::as_str).collect();
        format!("{} classes ({}{})", cfg.classes.len(), shown.join(", "), if cfg.classes.len() > 12 { ", ..." } else { "" })
    };
    let columns = match (&cfg.layout, cfg.header) {
        (Some(_), Some(_)) => {
            let id = cfg.id_column.as_ref().map(|id| format!(", id column {id}")).unwrap_or_default();
            format!("; label column{} {}{id}", if cfg.y_columns.len() == 1 { "" } else { "s" }, cfg.y_columns.join(", "))
        }
        _ => String::new(),
    };
    let (train, valid, test) = c.sizes();
    let (lo, hi) = c.length_range();
    let noun = if cfg.kind == Some(effseq::config::CustomKind::Forecast) { "windows" } else { "sequences" };
    let valid_from = match (&cfg.valid, cfg.kind) {
        (Some(_), _) => String::new(),
        (None, Some(effseq::config::CustomKind::Forecast)) => format!(" (the last {:.0}%)", 100.0 * cfg.valid_fraction),
        (None, _) => format!(" (a seeded {:.0}% split)", 100.0 * cfg.valid_fraction),
    };
    let test = test.map(|n| format!(", {n} test")).unwrap_or_default();
    let lengths = if lo == hi { format!("{lo} steps") } else { format!("{lo}..{hi} steps") };
    let normalised = if cfg.x_mean.is_empty() && cfg.y_mean.is_empty() { "not standardised" } else { "standardised with the training statistics" };
    format!(
        "{} ({format}{layout}): {kind}{}, {inputs}, {targets}{columns}; {train} training and {valid} validation{valid_from}{test} {noun} of {lengths}; {normalised}",
        cfg.data.display(),
        inferred(given.is_some_and(|g| g.kind.is_none())),
    )
}

/// The short name of a run's task with its length, e.g. `adding (T = 50)`, `smnist (T = 784, permuted with seed 3)`,
/// `forecast sunspots (window 24, horizon 1)`.
pub fn task_label(t: &TaskConfig) -> String {
    match t.kind {
        TaskKind::Forecast => format!("{} {} (window {}, horizon {})", t.kind.name(), t.series.name(), t.seq_len, t.horizon),
        _ => {
            let order = t.permute_seed.map(|p| format!(", permuted with seed {p}")).unwrap_or_default();
            format!("{} (T = {}{order})", t.kind.name(), t.seq_len)
        }
    }
}

/// What one evaluated sequence of a task is called: `sequences`, `test images` or `test windows`.
pub fn sequences_noun(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Adding | TaskKind::Copy | TaskKind::Listops | TaskKind::SelectiveCopy | TaskKind::Duplicate => "sequences",
        TaskKind::Digits | TaskKind::Smnist => "test images",
        TaskKind::Forecast | TaskKind::Charlm => "test windows",
        TaskKind::Custom => "validation sequences",
    }
}

/// The task-specific settings in the `--json` lines: series and horizon (forecast) and the permutation seed
/// (smnist), each present only for its task.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TaskFields {
    /// Forecast: the series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<&'static str>,
    /// Forecast: steps predicted per window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon: Option<usize>,
    /// Smnist: the seed of the pixel permutation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permute_seed: Option<u64>,
}

/// The [`TaskFields`] of a task config.
pub fn task_fields(t: &TaskConfig) -> TaskFields {
    let forecast = t.kind == TaskKind::Forecast;
    TaskFields { series: forecast.then(|| t.series.name()), horizon: forecast.then_some(t.horizon), permute_seed: t.permute_seed }
}

/// E.g. `2000 steps, batch 32, adamw lr 0.002 (warmup 100, cosine to 0.1x), clip 1, seed 0`.
pub fn describe_train(t: &TrainConfig) -> String {
    let optimizer = match t.optimizer {
        OptimizerKind::Adamw => "adamw".to_string(),
        OptimizerKind::Sgd => format!("sgd (momentum {})", t.momentum),
    };
    let mut s = format!(
        "{} steps, batch {}, {optimizer} lr {} (warmup {}, cosine to {}x), clip {}, seed {}",
        t.steps,
        t.batch,
        number(t.lr),
        t.warmup_steps,
        t.min_lr_ratio,
        t.clip_norm,
        t.seed
    );
    if t.weight_decay > 0.0 {
        s.push_str(&format!(", weight decay {}", number(t.weight_decay)));
    }
    s
}

/// E.g. `eval mse 0.00123 (loss 0.00123)` or `eval accuracy 0.9870 (loss 0.0123, recall loss 0.0456)`; forecast
/// adds the MAE and the baselines: `eval mse 310.12345 (loss 0.12345; mae 13.2; last value mse 420.5 mae 15.9;
/// seasonal naive mse 1180 mae 27.4; beats both baselines)`.
pub fn describe_eval(e: &Evaluation) -> String {
    let mut s = format!("eval {} {:.5} (loss {:.5}", e.metric_name, e.metric, e.loss);
    if let Some(mae) = e.mae {
        s.push_str(&format!(", mae {mae:.5}"));
    }
    if let Some(r) = e.recall_loss {
        s.push_str(&format!(", recall loss {r:.5}"));
    }
    if let Some(m) = &e.forecast {
        s.push_str(&format!("; {}", describe_forecast(m)));
    }
    s.push(')');
    s
}

/// The MAE of a forecast, the baselines' MSE and MAE and whether the model's MSE beats them.
pub fn describe_forecast(m: &ForecastMetrics) -> String {
    let verdict = match (m.mse < m.naive_mse, m.mse < m.seasonal_mse) {
        (true, true) => "beats both baselines",
        (true, false) => "beats the last value, not the seasonal naive",
        (false, true) => "beats the seasonal naive, not the last value",
        (false, false) => "beats neither baseline",
    };
    let g = |x: f64| significant(x, 4);
    format!(
        "mae {}; last value mse {} mae {}; seasonal naive mse {} mae {}; {verdict}",
        g(m.mae),
        g(m.naive_mse),
        g(m.naive_mae),
        g(m.seasonal_mse),
        g(m.seasonal_mae)
    )
}

/// `x` with about `digits` significant digits, without an exponent for everyday magnitudes: `412.3`, `0.01234`.
pub fn significant(x: f64, digits: usize) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i64;
    if !(-4..9).contains(&magnitude) {
        return format!("{x:.*e}", digits.saturating_sub(1));
    }
    let decimals = (digits as i64 - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

/// One line per parameter tensor (name, shape, count) and a total, aligned.
pub fn param_table(module: &dyn Module) -> String {
    let params = module.params();
    let rows: Vec<(String, String, String)> = params.iter().map(|p| (p.name.clone(), format!("{:?}", p.shape), grouped(p.numel()))).collect();
    let total = grouped(module.num_params());
    let name_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max("total".len());
    let shape_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let count_w = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(total.len());
    let mut out = String::new();
    for (name, shape, count) in &rows {
        out.push_str(&format!("  {name:<name_w$}  {shape:<shape_w$}  {count:>count_w$}\n"));
    }
    out.push_str(&format!("  {:<name_w$}  {:<shape_w$}  {total:>count_w$}\n", "total", ""));
    out
}

/// The parameters as JSON: `[{"name", "shape", "numel"}, ...]`.
pub fn param_json(module: &dyn Module) -> serde_json::Value {
    module.params().iter().map(|p| serde_json::json!({ "name": p.name, "shape": p.shape, "numel": p.numel() })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(412.345, 4), "412.3");
        assert_eq!(significant(0.0123456, 4), "0.01235");
        assert_eq!(significant(123456.0, 4), "123456");
        assert_eq!(significant(0.0, 4), "0");
        assert_eq!(significant(1.5e-7, 3), "1.50e-7");
    }

    #[test]
    fn forecast_evaluations_name_the_baselines_and_the_verdict() {
        let m = ForecastMetrics { mse: 300.0, mae: 12.0, naive_mse: 400.0, naive_mae: 15.0, seasonal_mse: 250.0, seasonal_mae: 11.0, windows: 47 };
        let text = describe_forecast(&m);
        assert_eq!(text, "mae 12.00; last value mse 400.0 mae 15.00; seasonal naive mse 250.0 mae 11.00; beats the last value, not the seasonal naive");
        let both = ForecastMetrics { mse: 100.0, ..m };
        assert!(describe_forecast(&both).ends_with("beats both baselines"));
    }

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(number(0.002), "0.002");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1e30), "1e30");
        assert_eq!(number(1e-5), "1e-5");
    }
}
