//! Human-readable descriptions of configs, parameters and results, shared by the subcommands.

use effseq::config::{ModelConfig, OptimizerKind, RunConfig, TaskKind, TrainConfig};
use effseq::tasks::Evaluation;
use effseq::Module;

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
    let mut s = format!("{}, hidden {}, {} layer{}", m.kind.name(), m.hidden, m.layers, if m.layers == 1 { "" } else { "s" });
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

/// E.g. `adding, T = 50, 1000 eval sequences` (copy: `T = 50 (70 steps)`).
pub fn describe_task(cfg: &RunConfig) -> String {
    let t = &cfg.task;
    let steps = match t.kind {
        TaskKind::Adding => String::new(),
        TaskKind::Copy => format!(" ({} steps)", t.seq_len + 20),
    };
    format!("{}, T = {}{steps}, {} eval sequences", t.kind.name(), t.seq_len, t.eval_size)
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

/// E.g. `eval mse 0.00123 (loss 0.00123)` or `eval accuracy 0.9870 (loss 0.0123, recall loss 0.0456)`.
pub fn describe_eval(e: &Evaluation) -> String {
    let mut s = format!("eval {} {:.5} (loss {:.5}", e.metric_name, e.metric, e.loss);
    if let Some(r) = e.recall_loss {
        s.push_str(&format!(", recall loss {r:.5}"));
    }
    s.push(')');
    s
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
    fn numbers_read_naturally() {
        assert_eq!(number(0.002), "0.002");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1e30), "1e30");
        assert_eq!(number(1e-5), "1e-5");
    }
}
