//! Every architecture learns: a short seeded run of each of the eight models on the adding problem must end far
//! below the task's trivial baseline (always predicting 1.0 scores MSE ≈ 0.167; every model here must reach
//! MSE < 0.01). Gradient checks and PyTorch parity cannot catch a model that is correct and still fails to learn
//! (a TCN initialised with filters ten times too small passed both and stayed at 0.167; so did a Performer whose
//! random features had collapsed onto their floor).
//!
//! Each run takes seconds in release on one core. The step counts and learning rates were measured on seed 0 with
//! a margin: the final MSE of each model (comment beside each case) is at least 4x below the threshold.

use effseq::config::{ModelKind, RunConfig, TaskKind};
use effseq::tasks::Evaluation;
use effseq::train::{Progress, StepReport, Trainer};

/// The trivial baseline: always predicting 1.0 (the mean of the sum of two U(0, 1) values).
const BASELINE_MSE: f32 = 1.0 / 6.0;
/// The threshold every model must beat.
const MAX_MSE: f32 = 0.01;

/// Collects the loss of every step and prints evaluations (visible with `--nocapture`).
#[derive(Default)]
struct Record {
    losses: Vec<f32>,
}

impl Progress for Record {
    fn on_step(&mut self, report: &StepReport) {
        self.losses.push(report.loss);
    }
    fn on_eval(&mut self, step: u64, eval: &Evaluation) {
        println!("step {step}: eval {} {:.5}", eval.metric_name, eval.metric);
    }
}

/// The adding problem at T = 50 for `kind`, width 32, batch 32, AdamW with a short warmup; 500 evaluation sequences.
fn adding(kind: ModelKind, steps: u64, lr: f32) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.model.kind = kind;
    cfg.model.hidden = 32;
    cfg.task.kind = TaskKind::Adding;
    cfg.task.seq_len = 50;
    cfg.task.eval_size = 500;
    cfg.train.steps = steps;
    cfg.train.batch = 32;
    cfg.train.lr = lr;
    cfg.train.warmup_steps = 20;
    cfg.train.eval_every = steps / 2;
    cfg.train.seed = 0;
    cfg
}

/// Trains `cfg` and checks the final evaluation against [`MAX_MSE`]; returns every step's training loss.
fn learns(mut cfg: RunConfig) -> Vec<f32> {
    let kind = cfg.model.kind;
    let steps = cfg.task.steps_per_sequence();
    cfg.model.resolve_for_sequence(steps);
    let started = std::time::Instant::now();
    let mut record = Record::default();
    let summary = Trainer::new(cfg).unwrap().run(&mut record).unwrap();
    println!(
        "{kind:?}: eval mse {:.5}, train loss {:.5}, {:.1} steps/s, {:.1} s",
        summary.eval.metric,
        summary.train_loss,
        summary.steps_per_s,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(summary.eval.metric_name, "mse");
    assert!(summary.eval.metric < MAX_MSE, "{kind:?} reached eval mse {} (threshold {MAX_MSE}, baseline 0.167)", summary.eval.metric);
    record.losses
}

#[test]
fn lstm_learns_adding() {
    // Measured on seeds 0..10: every run ends at MSE 0.0004..0.0010; with half the steps about a third of the runs
    // are still on the 0.167 plateau.
    learns(adding(ModelKind::Lstm, 2000, 1e-2));
}

#[test]
fn gru_learns_adding() {
    learns(adding(ModelKind::Gru, 2000, 1e-2));
}

#[test]
fn tcn_learns_adding() {
    // 4 levels of kernel 3 (receptive field 61 covers T = 50); seed 0 reaches 0.0025 at step 600.
    learns(adding(ModelKind::Tcn, 800, 1e-2));
}

#[test]
fn transformer_learns_adding() {
    // Seed 0: 0.00017 at step 600.
    learns(adding(ModelKind::Transformer, 600, 1e-2));
}

#[test]
fn linear_transformer_learns_adding() {
    // Seed 0: 0.00057 at step 600.
    learns(adding(ModelKind::Linear, 600, 1e-2));
}

#[test]
fn performer_learns_adding_and_survives_feature_redraws() {
    // New random features every 100 steps (performer-pytorch's default is 1000): five redraws in the run.
    let mut cfg = adding(ModelKind::Performer, 600, 1e-2);
    cfg.model.redraw_every = 100;
    let losses = learns(cfg);
    let mean = |r: std::ops::Range<usize>| losses[r.clone()].iter().sum::<f32>() / r.len() as f32;
    // Once the model has learned (from step 300), a redraw changes the estimator, not what the model knows: the ten
    // steps after it may lose some accuracy (seed 0, 16 features per head: 0.0009 -> 0.006 at step 300, 0.0005 ->
    // 0.010 at step 400) but must stay far below the baseline, and fifty steps later be back near where it was.
    for redraw in [300, 400, 500] {
        let (before, after, later) = (mean(redraw - 10..redraw), mean(redraw..redraw + 10), mean(redraw + 50..redraw + 60));
        println!("redraw at step {redraw}: mean loss {before:.5} before, {after:.5} after, {later:.5} fifty steps later");
        assert!(after < 0.2 * BASELINE_MSE, "the redraw at step {redraw} moved the loss from {before} to {after}");
        assert!(later < 2.0 * before.max(1e-3), "fifty steps after the redraw at step {redraw} the loss is {later}, against {before} before it");
    }
}

#[test]
fn reformer_learns_adding_with_several_buckets() {
    // T = 64 in buckets of 16: four chunks per round, so the hashing decides what each position sees (a sequence
    // that fits one bucket is exact attention). Seed 0: 0.0013 at step 600 with 4 rounds.
    let mut cfg = adding(ModelKind::Reformer, 500, 1e-2);
    cfg.task.seq_len = 64;
    cfg.model.bucket_size = Some(16);
    cfg.model.n_hashes = 2;
    learns(cfg);
}

#[test]
fn mamba_learns_adding() {
    // Seed 0: 0.0023 at step 600.
    learns(adding(ModelKind::Mamba, 800, 1e-2));
}

/// Training is deterministic per seed, dropout included: a learning result can be reproduced bit for bit.
#[test]
fn same_seed_same_losses_bit_for_bit() {
    let run = |seed: u64| {
        let mut cfg = adding(ModelKind::Lstm, 15, 1e-2);
        cfg.model.layers = 2;
        cfg.model.dropout = 0.1;
        cfg.train.seed = seed;
        cfg.task.eval_size = 32;
        let mut record = Record::default();
        Trainer::new(cfg).unwrap().run(&mut record).unwrap();
        record.losses.iter().map(|l| l.to_bits()).collect::<Vec<u32>>()
    };
    let first = run(5);
    assert_eq!(first.len(), 15);
    assert_eq!(first, run(5), "the same seed must give the same losses");
    assert_ne!(first, run(6), "another seed must give other losses");
}
