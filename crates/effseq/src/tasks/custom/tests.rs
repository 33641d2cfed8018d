//! Tests of the custom task: what it infers from each kind of file, the statistics and splits, padded batches,
//! the loss and metrics, errors in validation data, and a short training run that learns.

use super::*;
use crate::config::{ModelKind, RunConfig, TaskKind};
use crate::rng::rng_for;
use crate::tasks::Task;
use rand::Rng as _;

fn task_config(dir: &Path, file: &str, text: &str, custom: CustomConfig) -> TaskConfig {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    TaskConfig { custom: Some(CustomConfig { data: path, ..custom }), ..TaskConfig::new(TaskKind::Custom) }
}

/// `n` variable-length univariate sequences (3..=8 steps) labelled by the sign of their sum, as a wide CSV.
fn sign_csv(n: usize, seed: u64) -> String {
    let mut rng = rng_for(seed, 0);
    let mut text = String::new();
    for _ in 0..n {
        let len = rng.random_range(3..=8);
        let x: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0) + 3.0).collect();
        let label = if x.iter().map(|v| v - 3.0).sum::<f32>() > 0.0 { "up" } else { "down" };
        let fields: Vec<String> = x.iter().map(|v| format!("{v:.4}")).chain(std::iter::repeat_n(String::new(), 8 - len)).collect();
        text.push_str(&format!("{label},{}\n", fields.join(",")));
    }
    text
}

#[test]
fn classification_from_a_wide_csv_is_inferred_split_and_standardised() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = task_config(dir.path(), "sign.csv", &sign_csv(50, 1), CustomConfig::default());
    let task = Custom::prepare(&mut cfg, 3).unwrap();
    let c = cfg.custom.as_ref().unwrap();
    assert!(c.is_resolved());
    assert_eq!((c.kind, c.layout, c.header, c.features), (Some(CustomKind::Classification), Some(CsvLayout::Wide), Some(false), 1));
    assert_eq!(c.classes, ["down", "up"], "names sorted");
    assert_eq!(task.sizes(), (40, 10, None), "a seeded 20% validation split");
    assert_eq!(cfg.seq_len, *task.train.lens.iter().max().unwrap());
    assert_eq!(task.length_range(), (3, 8));
    // The statistics are the training split's: its standardised steps have mean 0 and variance 1.
    assert!((c.x_mean[0] - 3.0).abs() < 0.2 && (c.x_std[0] - 0.58).abs() < 0.1, "{:?} {:?}", c.x_mean, c.x_std);
    let x = &task.train.x;
    let mean = x.iter().sum::<f32>() / x.len() as f32;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / x.len() as f32;
    assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
    // Padded batches carry their lengths; the same seed gives the same split and batches.
    let batch = task.train_batch(0, 16);
    let lens = batch.lengths.clone().unwrap();
    assert_eq!((batch.batch, batch.seq_len), (16, *lens.iter().max().unwrap()));
    let again = Custom::prepare(&mut task_config(dir.path(), "sign.csv", &sign_csv(50, 1), CustomConfig::default()), 3).unwrap();
    assert_eq!(again.train_batch(5, 16), task.train_batch(5, 16));
    assert!(task.baseline_note().contains("most frequent training class"));
}

#[test]
fn the_resolved_config_survives_toml_and_rebuilds_the_same_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = RunConfig { task: task_config(dir.path(), "sign.csv", &sign_csv(30, 2), CustomConfig::default()), ..Default::default() };
    let task = Task::prepare(&mut run.task, 0).unwrap();
    let text = run.to_toml();
    assert!(text.contains("[task.custom]") && text.contains("x_mean"), "{text}");
    let back: RunConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, run);
    back.validate().unwrap();
    assert_eq!(Task::io_of(&back.task).unwrap(), task.io());
    let rebuilt = Task::new(&back.task, 0).unwrap();
    assert_eq!(rebuilt.eval_batch(0, 5), task.eval_batch(0, 5));
    // An unresolved config cannot say its inputs and outputs yet.
    let fresh = task_config(dir.path(), "sign.csv", &sign_csv(30, 2), CustomConfig::default());
    assert!(Task::io_of(&fresh).is_err() && Task::new(&fresh, 0).is_err());
}

#[test]
fn tagging_is_inferred_from_labels_that_change_within_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let text = "id,x,tag\na,1,N\na,2,V\na,3,N\nb,4,V\nb,5,N\nc,6,N\nc,7,V\nd,1,V\n";
    let mut cfg = task_config(dir.path(), "tags.csv", text, CustomConfig::default());
    let task = Custom::prepare(&mut cfg, 0).unwrap();
    let c = cfg.custom.as_ref().unwrap();
    assert_eq!((c.kind, c.layout, c.classes.clone()), (Some(CustomKind::Tagging), Some(CsvLayout::Long), vec!["N".to_string(), "V".to_string()]));
    let io = task.io();
    assert_eq!((io.readout, io.output_dim), (Readout::EveryStep, 2));
    assert!(!c.kind.unwrap().targets_are_later_inputs(), "a bidirectional tagger is legitimate");
    let batch = task.train_batch(0, 3);
    let Targets::Classes(y) = &batch.targets else { panic!() };
    assert_eq!(y.len(), batch.batch * batch.seq_len);
    let lens = batch.lengths.clone().unwrap_or(vec![batch.seq_len; batch.batch]);
    for (row, &n) in lens.iter().enumerate() {
        assert!(y[row * batch.seq_len + n..(row + 1) * batch.seq_len].iter().all(|&v| v == IGNORE), "padding is ignored");
    }
    // A sequence-level label that changes within a sequence is an error naming the file and line.
    let mut cfg = task_config(dir.path(), "tags.csv", text, CustomConfig { kind: Some(CustomKind::Classification), ..Default::default() });
    let err = Custom::prepare(&mut cfg, 0).unwrap_err().to_string();
    assert!(err.contains("tags.csv:2") && err.contains("label changes at step 2"), "{err}");
}

#[test]
fn regression_metrics_are_on_the_original_scale() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rng_for(4, 0);
    let text: String = (0..40)
        .map(|_| {
            let x: Vec<f32> = (0..rng.random_range(2..6)).map(|_| rng.random_range(0.0f32..1.0)).collect();
            format!("{{\"x\": {x:?}, \"y\": {:.3}}}\n", 100.0 + 10.0 * x.iter().sum::<f32>())
        })
        .collect();
    let mut cfg = task_config(dir.path(), "reg.jsonl", &text, CustomConfig::default());
    let task = Custom::prepare(&mut cfg, 0).unwrap();
    let c = cfg.custom.clone().unwrap();
    assert_eq!((c.kind, c.targets, task.metric_name(), task.higher_is_better()), (Some(CustomKind::Regression), 1, "mse", false));
    // Predicting the training mean (0 on the standardised scale) scores the variance around it, in original units.
    let batch = task.eval_batch(0, 100);
    let Targets::Values(y) = &batch.targets else { panic!() };
    let score = task.score(&vec![0.0; y.len()], &batch).unwrap();
    let want: f64 = y.iter().map(|&v| f64::from(v * c.y_std[0]).powi(2)).sum();
    assert!((score.sq - want).abs() < 1e-3 * want, "{} vs {want}", score.sq);
    assert!(task.baseline_note().contains("training mean"));
    // Whole evaluation through Task: metric and MAE in original units.
    let task = Task::Custom(Box::new(task));
    let mut acc = crate::tasks::EvalAccumulator::default();
    acc.add(&task, &vec![0.0; y.len()], &batch).unwrap();
    let eval = acc.finish(&task).unwrap();
    assert!((f64::from(eval.metric) - want / y.len() as f64).abs() < 1e-2 && eval.mae.unwrap() > 0.0, "{eval:?}");
}

#[test]
fn forecast_windows_come_from_one_series_with_a_chronological_validation_tail() {
    let dir = tempfile::tempdir().unwrap();
    let text: String =
        std::iter::once("day,temp,wind\n".to_string()).chain((0..100).map(|i| format!("{i},{},{}\n", (i as f32 * 0.3).sin() * 10.0 + 20.0, i % 7))).collect();
    let custom = CustomConfig { kind: Some(CustomKind::Forecast), y_columns: vec!["temp".into()], ..Default::default() };
    let mut cfg = TaskConfig { seq_len: 10, horizon: 2, ..task_config(dir.path(), "s.csv", &text, custom) };
    let task = Custom::prepare(&mut cfg, 0).unwrap();
    let c = cfg.custom.as_ref().unwrap();
    assert_eq!((c.features, c.targets, c.x_columns.clone()), (2, 1, vec!["temp".to_string(), "wind".to_string()]), "the day column is a time axis");
    let windows = 100 - 10 - 2 + 1;
    let (train, valid, _) = task.sizes();
    assert_eq!((train + valid, valid), (windows, (windows as f32 * 0.2).round() as usize));
    assert_eq!(task.io(), TaskIo { input: InputKind::Dense { dim: 2 }, output_dim: 2, readout: Readout::LastStep });
    assert!(task.baseline_note().contains("last value"), "{}", task.baseline_note());
    // The last training window ends before the first validation window's targets.
    let last_train = task.batch_of(&task.train, &[train - 1]);
    let first_valid = task.eval_batch(0, 1);
    assert_ne!(last_train.inputs, first_valid.inputs);
    let mut short = TaskConfig {
        seq_len: 99,
        horizon: 2,
        ..task_config(dir.path(), "s.csv", &text, CustomConfig { kind: Some(CustomKind::Forecast), ..Default::default() })
    };
    assert!(Custom::prepare(&mut short, 0).unwrap_err().to_string().contains("window of 99"));
}

#[test]
fn validation_data_is_checked_against_the_training_classes_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("valid.jsonl"), "{\"x\": [1, 2], \"y\": \"a\"}\n{\"x\": [3], \"y\": \"zebra\"}\n").unwrap();
    let custom = CustomConfig { valid: Some(dir.path().join("valid.jsonl")), tokens: true, ..Default::default() };
    let mut cfg = task_config(dir.path(), "train.jsonl", "{\"x\": [1, 2, 3], \"y\": \"a\"}\n{\"x\": [0, 3], \"y\": \"b\"}\n", custom.clone());
    let err = Custom::prepare(&mut cfg, 0).unwrap_err().to_string();
    assert!(err.contains("valid.jsonl:2") && err.contains("'zebra' is not one of the 2 classes"), "{err}");
    std::fs::write(dir.path().join("valid.jsonl"), "{\"x\": [1, 9], \"y\": \"a\"}\n").unwrap();
    let mut cfg = task_config(dir.path(), "train.jsonl", "{\"x\": [1, 2, 3], \"y\": \"a\"}\n{\"x\": [0, 3], \"y\": \"b\"}\n", custom);
    let err = Custom::prepare(&mut cfg, 0).unwrap_err().to_string();
    assert!(err.contains("valid.jsonl:1") && err.contains("token 9 is not an integer id in 0..4"), "{err}");
}

#[test]
fn a_short_run_learns_variable_length_classification() {
    // Every architecture trains on padded batches of its own sequences; a GRU learns the sign task well.
    let dir = tempfile::tempdir().unwrap();
    let mut run = RunConfig {
        task: task_config(dir.path(), "sign.csv", &sign_csv(300, 5), CustomConfig::default()),
        model: crate::config::ModelConfig { kind: ModelKind::Gru, hidden: 16, bidirectional: true, ..Default::default() },
        ..Default::default()
    };
    run.train.steps = 150;
    run.train.batch = 16;
    run.train.lr = 1e-2;
    run.train.warmup_steps = 10;
    run.train.eval_every = 0;
    let mut trainer = crate::train::Trainer::new(run).unwrap();
    let summary = trainer.run(&mut crate::train::Silent).unwrap();
    assert_eq!(summary.eval.metric_name, "accuracy");
    assert!(summary.eval.metric > 0.85, "validation accuracy {}", summary.eval.metric);
    assert!(trainer.config().task.custom.as_ref().unwrap().is_resolved(), "the trainer keeps the resolved config for its checkpoints");
}

#[test]
fn token_sequences_are_embedded_and_learned() {
    // Sequences of token ids 0..6 whose class is whether token 5 occurs: a task only the ids (not their scale) tell.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rng_for(8, 0);
    let text: String = (0..300)
        .map(|_| {
            let ids: Vec<u32> = (0..rng.random_range(2..7)).map(|_| rng.random_range(0..6)).collect();
            format!("{{\"x\": {ids:?}, \"y\": {}}}\n", ids.contains(&5))
        })
        .collect();
    let mut run = RunConfig {
        task: task_config(dir.path(), "tokens.jsonl", &text, CustomConfig { tokens: true, ..Default::default() }),
        model: crate::config::ModelConfig { kind: ModelKind::Lstm, hidden: 16, ..Default::default() },
        ..Default::default()
    };
    run.train.steps = 120;
    run.train.batch = 16;
    run.train.lr = 1e-2;
    run.train.warmup_steps = 10;
    run.train.eval_every = 0;
    let mut trainer = crate::train::Trainer::new(run).unwrap();
    let c = trainer.config().task.custom.clone().unwrap();
    assert_eq!((c.vocab, c.classes.clone(), c.x_mean.is_empty()), (Some(6), vec!["false".to_string(), "true".to_string()], true), "ids are not standardised");
    assert_eq!(trainer.task().io().input, InputKind::Tokens { vocab: 6 });
    let summary = trainer.run(&mut crate::train::Silent).unwrap();
    assert!(summary.eval.metric > 0.85, "validation accuracy {}", summary.eval.metric);
}
