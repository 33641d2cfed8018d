//! Fuzz targets of the two readers that take files from users: the run config (TOML and JSON) and the checkpoint
//! directory. Every input must give `Ok` or an `Err`, never a panic; what a reader accepts must also be safe to use
//! (a validated config serialises again and has a memory estimate; a loaded checkpoint has finite weights).
//!
//! Inputs are random mutations of valid files (bytes flipped, cut, inserted; numbers replaced by extreme values;
//! the checksums in `state.json` re-sealed half the time so that the parsers behind them are reached) and random
//! text. The case counts are fixed below; `cargo test --release -p effseq --test fuzz_readers` runs them all,
//! deterministically (a fixed ChaCha seed): 15,000 config inputs (5,000 mutated files read as TOML and again as
//! JSON, 5,000 random texts) and 3,000 damaged checkpoints (each read by `load`, `load_model` and `load_config`),
//! with 0 panics on 2026-12-04.

use std::fs;
use std::path::Path;

use effseq::checkpoint::{self, TrainState};
use effseq::config::{ModelKind, RunConfig, TaskKind};
use effseq::memory;
use effseq::model::Network;
use effseq::optim::Optimizer;
use effseq::tasks::Task;
use effseq::Module;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Config inputs per target.
const CONFIG_CASES: u32 = 5_000;
/// Checkpoint inputs.
const CHECKPOINT_CASES: u32 = 3_000;

/// A runner with `cases` cases and a fixed seed, so every run tries the same inputs.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(Config { cases, failure_persistence: None, ..Config::default() }, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// A valid config file with every section, as `config.toml` stores it.
fn valid_config_text() -> String {
    let mut cfg = RunConfig::default();
    cfg.model.kind = ModelKind::Transformer;
    cfg.model.hidden = 16;
    cfg.task.kind = TaskKind::Copy;
    cfg.to_toml()
}

/// Values that have broken readers before: out of range, non-finite, wrong type.
const EXTREMES: &[&str] = &[
    "18446744073709551615",
    "9223372036854775807",
    "-9223372036854775808",
    "-1",
    "0",
    "1e308",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "\"x\"",
    "[]",
    "{}",
    "true",
    "4294967296",
];

/// A mutation of `text`: a value replaced by an extreme one, a cut, or bytes changed.
fn mutate_text(text: &str, choice: usize, at: usize, extreme: usize, byte: u8) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return text.to_string();
    }
    match choice % 4 {
        0 => {
            // Replace the value of one `key = value` line.
            let i = at % lines.len();
            lines
                .iter()
                .enumerate()
                .map(|(j, l)| match l.split_once(" = ") {
                    Some((key, _)) if j == i => format!("{key} = {}", EXTREMES[extreme % EXTREMES.len()]),
                    _ => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        1 => text[..text.char_indices().map(|(i, _)| i).nth(at % text.len().max(1)).unwrap_or(0)].to_string(),
        2 => {
            let mut bytes = text.as_bytes().to_vec();
            let i = at % bytes.len();
            bytes[i] = byte;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => {
            let i = at % lines.len();
            lines.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, l)| *l).collect::<Vec<_>>().join("\n")
        }
    }
}

/// What the CLI does with a config it reads: parse, validate, and for a valid one serialise and estimate memory.
fn read_config(path: &Path) {
    if let Ok(cfg) = RunConfig::from_file(path) {
        let again: RunConfig = toml::from_str(&cfg.to_toml()).expect("a validated config serialises and parses back");
        assert_eq!(again, cfg);
        if let Ok(io) = Task::io_of(&cfg.task) {
            let _ = memory::estimate_train(&cfg, io);
            let _ = memory::estimate_eval(&cfg, io);
            let _ = memory::estimate_stream(&cfg, io, u64::MAX);
        }
    }
}

#[test]
fn config_reader_never_panics_on_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("run.toml");
    let json_path = dir.path().join("run.json");
    let text = valid_config_text();
    let json = serde_json::to_string_pretty(&toml::from_str::<RunConfig>(&text).unwrap()).unwrap();
    runner(CONFIG_CASES)
        .run(&(any::<usize>(), any::<usize>(), any::<usize>(), any::<u8>(), 0..3usize), |(choice, at, extreme, byte, rounds)| {
            let mut mutated = text.clone();
            for r in 0..=rounds {
                mutated = mutate_text(&mutated, choice.wrapping_add(r), at.wrapping_mul(r + 1), extreme.wrapping_add(r), byte);
            }
            fs::write(&toml_path, &mutated).unwrap();
            read_config(&toml_path);
            // The JSON form, with a number replaced the same way.
            let json_mutated = match json.split_once(": ") {
                Some(_) => {
                    let parts: Vec<&str> = json.split(": ").collect();
                    let i = 1 + at % (parts.len() - 1);
                    let value_end = parts[i].find([',', '\n']).unwrap_or(parts[i].len());
                    let replaced = format!("{}{}", EXTREMES[extreme % EXTREMES.len()], &parts[i][value_end..]);
                    parts.iter().enumerate().map(|(j, p)| if j == i { replaced.clone() } else { p.to_string() }).collect::<Vec<_>>().join(": ")
                }
                None => json.clone(),
            };
            fs::write(&json_path, json_mutated).unwrap();
            read_config(&json_path);
            Ok(())
        })
        .unwrap();
}

#[test]
fn config_reader_never_panics_on_random_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    let line = prop_oneof![
        "\\[(model|task|train)\\]",
        "(kind|hidden|layers|steps|batch|lr|seq_len|max_len|heads|dropout|momentum|weight_decay|eval_every|redraw_every) = [-0-9a-z.\"\\[\\]]{0,24}",
        ".{0,40}",
    ];
    runner(CONFIG_CASES)
        .run(&prop::collection::vec(line, 0..12), |lines| {
            fs::write(&path, lines.join("\n")).unwrap();
            read_config(&path);
            Ok(())
        })
        .unwrap();
}

/// Rewrites the checksums of `state.json` in `files_dir` to match the files as they are.
fn reseal(files_dir: &Path) {
    let path = files_dir.join(checkpoint::STATE_FILE);
    let Ok(text) = fs::read_to_string(&path) else { return };
    let Ok(mut state) = serde_json::from_str::<serde_json::Value>(&text) else { return };
    if let Some(files) = state.get_mut("files").and_then(|f| f.as_object_mut()) {
        for (name, sum) in files.iter_mut() {
            if let Ok(bytes) = fs::read(files_dir.join(name)) {
                *sum = serde_json::json!({ "bytes": bytes.len(), "crc32": format!("{:08x}", checkpoint::crc32(&bytes)) });
            }
        }
    }
    fs::write(&path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

#[test]
fn checkpoint_reader_never_panics_on_damaged_files() {
    let source = tempfile::tempdir().unwrap();
    let mut cfg = RunConfig::default();
    cfg.model.kind = ModelKind::Gru;
    cfg.model.hidden = 6;
    cfg.task.kind = TaskKind::Copy;
    cfg.task.seq_len = 4;
    let network = Network::new(&cfg.model, Task::io_of(&cfg.task).unwrap(), 0).unwrap();
    let optimizer = Optimizer::new(&cfg.train, &network.params());
    checkpoint::save(source.path(), &cfg, &network, &optimizer, &TrainState { step: 3, ..TrainState::default() }).unwrap();
    let version = checkpoint::resolve(source.path()).unwrap();
    let names = [checkpoint::MODEL_FILE, checkpoint::OPTIMIZER_FILE, checkpoint::CONFIG_FILE, checkpoint::STATE_FILE, checkpoint::CURRENT_FILE];
    let originals: Vec<Vec<u8>> =
        names.iter().map(|&name| fs::read(if name == checkpoint::CURRENT_FILE { source.path().join(name) } else { version.join(name) }).unwrap()).collect();
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    let files_dir = run.join(version.file_name().unwrap());
    fs::create_dir_all(&files_dir).unwrap();
    let mutation = (0..names.len(), 0..4usize, any::<usize>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..16), any::<bool>());
    runner(CHECKPOINT_CASES)
        .run(&mutation, |(file, kind, at, byte, inserted, seal)| {
            for (i, &name) in names.iter().enumerate() {
                let path = if name == checkpoint::CURRENT_FILE { run.join(name) } else { files_dir.join(name) };
                let mut bytes = originals[i].clone();
                if i == file {
                    let at = at % bytes.len().max(1);
                    match kind {
                        0 => bytes.truncate(at),
                        1 if !bytes.is_empty() => bytes[at] ^= byte | 1,
                        2 => {
                            bytes.splice(at..at, inserted.iter().copied());
                        }
                        _ => {
                            // Little-endian u64s in the safetensors header are the lengths: make one extreme.
                            let end = (at + 8).min(bytes.len());
                            bytes[at..end].iter_mut().for_each(|b| *b = 0xff);
                        }
                    }
                }
                fs::write(&path, &bytes).unwrap();
            }
            if seal {
                reseal(&files_dir);
            }
            if let Ok(loaded) = checkpoint::load(&run) {
                assert!(loaded.network.params().iter().all(|p| p.value.iter().all(|v| v.is_finite())));
            }
            let _ = checkpoint::load_model(&run);
            let _ = checkpoint::load_config(&run);
            Ok(())
        })
        .unwrap();
}
