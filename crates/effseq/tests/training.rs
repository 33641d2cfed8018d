//! End-to-end training: LSTM and GRU learn the adding problem (T = 50) far below the trivial baseline
//! (MSE 0.167) within a small budget, and training is deterministic per seed.

use effseq::config::{ModelKind, RunConfig, TaskKind};
use effseq::tasks::Evaluation;
use effseq::train::{Progress, StepReport, Trainer};

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

fn adding_config(kind: ModelKind) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.model.kind = kind;
    cfg.model.hidden = 32;
    cfg.task.kind = TaskKind::Adding;
    cfg.task.seq_len = 50;
    cfg.task.eval_size = 500;
    // Measured on seeds 0..10: every LSTM run ends at MSE 0.0004..0.0010 and every GRU run below 0.001
    // (about 8 s per run in release on one core); with half the steps about a third of the LSTM runs are
    // still on the 0.167 plateau.
    cfg.train.steps = 2000;
    cfg.train.batch = 32;
    cfg.train.lr = 1e-2;
    cfg.train.warmup_steps = 20;
    cfg.train.eval_every = 500;
    cfg.train.seed = 0;
    cfg
}

fn learns_adding(kind: ModelKind) {
    let started = std::time::Instant::now();
    let mut record = Record::default();
    let summary = Trainer::new(adding_config(kind)).unwrap().run(&mut record).unwrap();
    println!(
        "{kind:?}: eval mse {:.5}, train loss {:.5}, {:.1} steps/s, {:.1} s",
        summary.eval.metric,
        summary.train_loss,
        summary.steps_per_s,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(summary.eval.metric_name, "mse");
    assert!(summary.eval.metric < 0.05, "{kind:?} reached eval mse {} (baseline 0.167)", summary.eval.metric);
}

#[test]
fn lstm_learns_adding() {
    learns_adding(ModelKind::Lstm);
}

#[test]
fn gru_learns_adding() {
    learns_adding(ModelKind::Gru);
}

#[test]
fn same_seed_same_losses_bit_for_bit() {
    let run = |seed: u64| {
        let mut cfg = adding_config(ModelKind::Lstm);
        cfg.model.layers = 2;
        cfg.model.dropout = 0.1;
        cfg.train.steps = 15;
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
