//! End-to-end training is deterministic per seed (every model's learning test is in `learning.rs`).

use effseq::config::{ModelKind, RunConfig, TaskKind};
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
}

fn adding_config(kind: ModelKind) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.model.kind = kind;
    cfg.model.hidden = 32;
    cfg.task.kind = TaskKind::Adding;
    cfg.task.seq_len = 50;
    cfg.task.eval_size = 500;
    cfg.train.steps = 2000;
    cfg.train.batch = 32;
    cfg.train.lr = 1e-2;
    cfg.train.warmup_steps = 20;
    cfg.train.eval_every = 500;
    cfg.train.seed = 0;
    cfg
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
