//! The `effseq` binary end to end: tiny training runs, evaluation, resumption, and every kind of bad input
//! giving its exit code and a message that names the problem.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Flags of a run small enough to take a fraction of a second.
const TINY: &[&str] =
    &["--hidden", "8", "--steps", "20", "--batch", "4", "--seq-len", "10", "--eval-size", "32", "--eval-every", "10", "--checkpoint-every", "10"];

/// Runs `effseq args...` in `cwd`.
fn effseq(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effseq")).current_dir(cwd).args(args).output().expect("the effseq binary runs")
}

/// Runs `effseq args...` in `cwd` with the data directory `EFFSEQ_DATA=data_dir`.
fn effseq_with_data(cwd: &Path, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effseq")).current_dir(cwd).env("EFFSEQ_DATA", data_dir).args(args).output().expect("the effseq binary runs")
}

/// Flags of a real-data run small enough to take well under a second (the task's flags come on top).
const TINY_REAL: &[&str] = &["--hidden", "8", "--steps", "6", "--batch", "4", "--eval-every", "3", "--checkpoint-every", "3"];

/// Trains a tiny model on a real-data task into `dir/name` (flags in `task_flags` replace those of [`TINY_REAL`]),
/// checks that `effseq eval` of its checkpoint reproduces the final evaluation exactly, and returns both JSON lines.
fn train_and_eval_real(dir: &Path, name: &str, task_flags: &[&str]) -> (Value, Value) {
    let mut args = vec!["train", "--json", "--out", name];
    for pair in TINY_REAL.chunks_exact(2) {
        if !task_flags.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(task_flags);
    let summary = last_json(&effseq(dir, &args));
    let eval = last_json(&effseq(dir, &["eval", "--checkpoint", name, "--json"]));
    assert_eq!(eval["eval_metric"], summary["eval_metric"], "eval of {name} reproduces the run's final evaluation");
    assert_eq!(eval["seq_len"], summary["seq_len"]);
    (summary, eval)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON object on the last line of stdout, after checking the exit code is 0.
fn last_json(out: &Output) -> Value {
    assert!(out.status.success(), "effseq failed ({:?}):\n{}", out.status.code(), stderr(out));
    let text = stdout(out);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {line:?}"))
}

/// Asserts the exit code and that stderr has `error:` and every one of `needles`.
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "expected exit code {code}; stderr:\n{err}");
    assert!(err.contains("error:"), "stderr should start with 'error:':\n{err}");
    assert!(!err.contains("panicked"), "must not panic:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr should mention '{needle}':\n{err}");
    }
}

/// Trains a tiny model into `dir/name` and returns the JSON summary; flags in `extra` replace those of [`TINY`].
fn train_tiny(dir: &Path, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["train", "--json", "--out", name];
    for pair in TINY.chunks_exact(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    last_json(&effseq(dir, &args))
}

#[test]
fn train_eval_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let summary = train_tiny(dir.path(), "run", &["--model", "gru", "--task", "adding"]);
    assert_eq!(summary["model"], "gru");
    assert_eq!(summary["task"], "adding");
    assert_eq!(summary["steps"], 20);
    assert_eq!(summary["metric_name"], "mse");
    assert!(summary["train_loss"].as_f64().unwrap().is_finite());
    assert!(summary["steps_per_s"].as_f64().unwrap() > 0.0);
    for file in ["model.safetensors", "optimizer.safetensors", "config.toml", "state.json"] {
        assert!(dir.path().join("run").join(file).is_file(), "checkpoint file {file}");
    }

    // Evaluating the checkpoint reproduces the final evaluation of the run exactly.
    let eval = last_json(&effseq(dir.path(), &["eval", "--checkpoint", "run", "--json"]));
    assert_eq!(eval["metric_name"], "mse");
    assert_eq!(eval["eval_metric"], summary["eval_metric"]);
    assert_eq!(eval["step"], 20);

    // Resume for 10 more steps into the same directory.
    let resumed = last_json(&effseq(dir.path(), &["train", "--resume", "run", "--steps", "30", "--json"]));
    assert_eq!(resumed["steps"], 30);
    assert_eq!(resumed["steps_this_run"], 10);
    let eval = last_json(&effseq(dir.path(), &["eval", "--checkpoint", "run", "--json"]));
    assert_eq!(eval["step"], 30);

    // A resumed run keeps its config.
    let out = effseq(dir.path(), &["train", "--resume", "run", "--hidden", "16"]);
    assert_fails(&out, 2, &["model.hidden (8 -> 16)"]);
    // A fresh run does not replace a checkpoint without --overwrite.
    let mut args = vec!["train", "--out", "run"];
    args.extend_from_slice(TINY);
    assert_fails(&effseq(dir.path(), &args), 2, &["already holds a checkpoint", "--overwrite"]);
    args.push("--overwrite");
    assert!(effseq(dir.path(), &args).status.success());
}

#[test]
fn copy_task_reports_accuracy_and_human_output() {
    let dir = tempfile::tempdir().unwrap();
    let summary = train_tiny(dir.path(), "copy", &["--model", "lstm", "--task", "copy", "--seq-len", "5", "--layers", "2", "--dropout", "0.1"]);
    assert_eq!(summary["metric_name"], "accuracy");
    let accuracy = summary["eval_metric"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(summary["recall_loss"].as_f64().is_some());

    // Without --json: a header, evaluation lines and a summary on stdout, and no JSON.
    let mut args = vec!["train", "--model", "gru", "--task", "copy"];
    args.extend_from_slice(TINY);
    let out = effseq(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in ["training gru on copy", "parameters", "baseline", "step 10/20  eval accuracy", "done: 20 steps"] {
        assert!(text.contains(needle), "stdout should contain '{needle}':\n{text}");
    }
    assert!(dir.path().join("runs/gru-copy/state.json").is_file(), "default output directory runs/<model>-<task>");
}

#[test]
fn info_of_a_config_and_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), "[model]\nkind = \"gru\"\nhidden = 4\n\n[task]\nkind = \"copy\"\n").unwrap();
    let out = effseq(dir.path(), &["info", "--config", "run.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // GRU, V = 10 embedded to 4, H = 4: 40 + (12*4 + 12*4 + 12 + 12) + (10*4 + 10).
    for needle in ["kind = \"gru\"", "embedding.weight", "rnn.weight_hh_l0", "[12, 4]", "head.bias", "(210 in total)"] {
        assert!(text.contains(needle), "info should show '{needle}':\n{text}");
    }

    train_tiny(dir.path(), "run", &[]);
    let info = last_json(&effseq(dir.path(), &["info", "--checkpoint", "run", "--json"]));
    assert_eq!(info["config"]["model"]["hidden"], 8);
    assert_eq!(info["state"]["step"], 20);
    let total: u64 = info["params"].as_array().unwrap().iter().map(|p| p["numel"].as_u64().unwrap()).sum();
    assert_eq!(info["total_params"], total);
}

#[test]
fn config_file_is_overridden_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), "[model]\nkind = \"gru\"\nhidden = 6\n[train]\nsteps = 5\nbatch = 2\n").unwrap();
    let args = vec!["train", "--config", "run.toml", "--json", "--steps", "7", "--out", "run", "--seq-len", "6", "--eval-size", "8"];
    let summary = last_json(&effseq(dir.path(), &args));
    assert_eq!(summary["model"], "gru");
    assert_eq!(summary["steps"], 7);
    let config = std::fs::read_to_string(dir.path().join("run/config.toml")).unwrap();
    assert!(config.contains("hidden = 6") && config.contains("batch = 2"), "{config}");
}

#[test]
fn unknown_names_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(&effseq(dir.path(), &["train", "--model", "hyena"]), 2, &["unknown model 'hyena'", "lstm, gru, tcn, transformer, linear, performer"]);
    assert_fails(&effseq(dir.path(), &["train", "--task", "sorting"]), 2, &["unknown task 'sorting'", "adding, copy"]);
    assert_fails(&effseq(dir.path(), &["train", "--seq-len", "1", "--task", "adding"]), 2, &["task.seq_len"]);
    assert_fails(&effseq(dir.path(), &["train", "--dropout", "1.5"]), 2, &["model.dropout"]);
    assert_fails(&effseq(dir.path(), &["frobnicate"]), 2, &["frobnicate"]);
}

#[test]
fn bad_config_files_are_usage_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.toml"), "[model\nhidden = 3\n").unwrap();
    assert_fails(&effseq(dir.path(), &["train", "--config", "broken.toml"]), 2, &["broken.toml", "line 1"]);
    std::fs::write(dir.path().join("typo.toml"), "[model]\nhiden = 3\n").unwrap();
    assert_fails(&effseq(dir.path(), &["train", "--config", "typo.toml"]), 2, &["typo.toml", "unknown field `hiden`"]);
    assert_fails(&effseq(dir.path(), &["info", "--config", "typo.toml"]), 2, &["unknown field `hiden`"]);
    assert_fails(&effseq(dir.path(), &["train", "--config", "absent.toml"]), 2, &["absent.toml"]);
}

#[test]
fn missing_and_damaged_checkpoints_are_data_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(&effseq(dir.path(), &["eval", "--checkpoint", "nowhere"]), 3, &["nowhere", "does not exist"]);
    assert_fails(&effseq(dir.path(), &["train", "--resume", "nowhere"]), 3, &["nowhere", "does not exist"]);
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    assert_fails(&effseq(dir.path(), &["eval", "--checkpoint", "empty"]), 3, &["state.json", "not an effseq checkpoint"]);

    train_tiny(dir.path(), "run", &[]);
    let model = dir.path().join("run/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&effseq(dir.path(), &["eval", "--checkpoint", "run"]), 3, &["model.safetensors", "truncated"]);
    assert_fails(&effseq(dir.path(), &["train", "--resume", "run"]), 3, &["model.safetensors", "truncated"]);
    assert_fails(&effseq(dir.path(), &["info", "--checkpoint", "run"]), 3, &["model.safetensors", "truncated"]);
}

#[test]
fn checkpoint_whose_shapes_do_not_match_its_config() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(dir.path(), "small", &[]);
    train_tiny(dir.path(), "large", &["--hidden", "12"]);
    // The weights of the hidden-8 model in the hidden-12 checkpoint, with state.json's checksums updated so
    // that the size check is what catches it.
    let large = dir.path().join("large");
    std::fs::copy(dir.path().join("small/model.safetensors"), large.join("model.safetensors")).unwrap();
    let bytes = std::fs::read(large.join("model.safetensors")).unwrap();
    let state_path = large.join("state.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["files"]["model.safetensors"] = serde_json::json!({ "bytes": bytes.len(), "crc32": format!("{:08x}", effseq::checkpoint::crc32(&bytes)) });
    std::fs::write(&state_path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    assert_fails(&effseq(dir.path(), &["eval", "--checkpoint", "large"]), 3, &["model.safetensors", "rnn.weight_ih_l0", "[32, 2]", "expects [48, 2]"]);
}

#[test]
fn divergence_exits_with_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["train", "--lr", "1e30", "--out", "run"];
    args.extend_from_slice(TINY);
    assert_fails(&effseq(dir.path(), &args), 4, &["diverged at step"]);
}

#[test]
fn real_data_tasks_train_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    // Digits: T is fixed at 64; --eval-size does not apply and says so.
    let (digits, eval) = train_and_eval_real(dir.path(), "digits", &["--task", "digits", "--model", "gru", "--eval-size", "32"]);
    assert_eq!((digits["task"].as_str(), digits["seq_len"].as_u64(), digits["metric_name"].as_str()), (Some("digits"), Some(64), Some("accuracy")));
    assert_eq!(eval["sequences"], 359);
    assert!(digits.get("series").is_none() && digits.get("forecast").is_none() && digits.get("permute_seed").is_none());

    // Forecast: every baseline field in the JSON of train and eval, with the series and horizon.
    let (co2, eval) = train_and_eval_real(dir.path(), "co2", &["--task", "forecast", "--series", "co2", "--horizon", "2", "--seq-len", "30"]);
    assert_eq!((co2["series"].as_str(), co2["horizon"].as_u64(), co2["seq_len"].as_u64()), (Some("co2"), Some(2), Some(30)));
    for key in ["mse", "mae", "naive_mse", "naive_mae", "seasonal_mse", "seasonal_mae"] {
        assert!(co2["forecast"][key].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0), "train JSON forecast.{key}: {co2}");
        assert_eq!(eval["forecast"][key], co2["forecast"][key], "eval reproduces forecast.{key}");
    }
    let as_f32 = |v: &Value| v.as_f64().map(|x| x as f32);
    assert_eq!(as_f32(&co2["eval_metric"]), as_f32(&co2["forecast"]["mse"]), "the metric is the test mse");
    let config = std::fs::read_to_string(dir.path().join("co2/config.toml")).unwrap();
    assert!(config.contains("series = \"co2\"") && config.contains("horizon = 2"), "{config}");

    // Without --seq-len the window is the series' default; the default output directory names the series.
    let out = effseq(dir.path(), &["train", "--task", "forecast", "--series", "seattle", "--hidden", "4", "--steps", "2", "--batch", "2", "--eval-every", "0"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for needle in ["forecast seattle, window T = 60, horizon 1", "last value mse", "seasonal naive (season 365)", "done: 2 steps", "seasonal naive mse"] {
        assert!(text.contains(needle), "stdout should contain '{needle}':\n{text}");
    }
    assert!(dir.path().join("runs/lstm-forecast-seattle/state.json").is_file());
    let eval_text = stdout(&effseq(dir.path(), &["eval", "--checkpoint", "runs/lstm-forecast-seattle"]));
    assert!(eval_text.contains("window 60, horizon 1") && eval_text.contains("last value mse") && eval_text.contains("test windows"), "{eval_text}");

    // P-MNIST: the permutation seed is stored in the checkpoint and evaluation uses it.
    let (smnist, eval) = train_and_eval_real(dir.path(), "pmnist", &["--task", "smnist", "--permute", "3", "--steps", "2", "--hidden", "4"]);
    assert_eq!((smnist["seq_len"].as_u64(), smnist["permute_seed"].as_u64(), eval["permute_seed"].as_u64()), (Some(784), Some(3), Some(3)));
    let config = std::fs::read_to_string(dir.path().join("pmnist/config.toml")).unwrap();
    assert!(config.contains("permute_seed = 3"), "{config}");
    let info = stdout(&effseq(dir.path(), &["info", "--checkpoint", "pmnist"]));
    assert!(info.contains("permute_seed = 3"), "{info}");

    // A resumed real-data run keeps its task settings.
    let resumed = last_json(&effseq(dir.path(), &["train", "--resume", "co2", "--steps", "8", "--json"]));
    assert_eq!((resumed["steps"].as_u64(), resumed["series"].as_str(), resumed["horizon"].as_u64()), (Some(8), Some("co2"), Some(2)));
    assert_fails(&effseq(dir.path(), &["train", "--resume", "co2", "--horizon", "3"]), 2, &["task.horizon (2 -> 3)"]);
}

#[test]
fn real_data_flag_errors() {
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--out", "run", "--steps", "1"];
        args.extend_from_slice(extra);
        effseq(dir.path(), &args)
    };
    assert_fails(&train(&["--task", "forecast", "--series", "mars"]), 2, &["unknown series 'mars'", "sunspots, co2, seattle"]);
    assert_fails(&train(&["--task", "forecast", "--horizon", "0"]), 2, &["task.horizon must be at least 1"]);
    assert_fails(&train(&["--task", "forecast", "--horizon", "two"]), 2, &["invalid value 'two'", "--horizon"]);
    assert_fails(&train(&["--task", "forecast", "--horizon", "60"]), 2, &["series sunspots has 309 steps", "horizon of 60"]);
    assert_fails(&train(&["--task", "forecast", "--seq-len", "300"]), 2, &["window of 300"]);
    assert_fails(&train(&["--task", "digits", "--seq-len", "50"]), 2, &["task.seq_len is fixed at 64", "--seq-len"]);
    assert_fails(&train(&["--task", "adding", "--permute", "1"]), 2, &["permute_seed", "smnist task only"]);
    assert_fails(&train(&["--task", "digits", "--series", "co2"]), 2, &["task.series applies to the forecast task only"]);
    assert_fails(&train(&["--task", "copy", "--horizon", "2"]), 2, &["task.horizon applies to the forecast task only"]);
    assert_fails(&train(&["--task", "mnist"]), 2, &["unknown task 'mnist'", "adding, copy, digits, smnist, forecast"]);

    // A data directory without the files: exit 3 naming the missing file and the variable that moves it.
    let empty = dir.path().join("no-data");
    std::fs::create_dir(&empty).unwrap();
    for (task, file) in [("digits", "digits.csv.gz"), ("smnist", "mnist-10k-images-idx3-ubyte.gz"), ("forecast", "sunspots.csv")] {
        let out = effseq_with_data(dir.path(), &empty, &["train", "--task", task, "--out", "run"]);
        assert_fails(&out, 3, &[file, "EFFSEQ_DATA"]);
    }
    let out = effseq_with_data(dir.path(), &empty, &["train", "--task", "forecast", "--series", "seattle", "--out", "run"]);
    assert_fails(&out, 3, &["seattle-weather.csv"]);
    assert!(!dir.path().join("run").exists(), "no checkpoint directory for a run that never started");
}

#[test]
fn charlm_attention_models_train_evaluate_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    for (model, extra) in [("transformer", &[][..]), ("linear", &["--tie-embeddings"][..]), ("performer", &["--features", "8", "--redraw-every", "3"][..])] {
        let name = format!("lm-{model}");
        let mut flags = vec!["--model", model, "--task", "charlm", "--seq-len", "32", "--heads", "2"];
        flags.extend_from_slice(extra);
        let (summary, _) = train_and_eval_real(dir.path(), &name, &flags);
        assert_eq!(summary["metric_name"], "bpc", "{model}");
        assert!(summary["eval_metric"].as_f64().unwrap() > 0.0);
        let out = effseq(dir.path(), &["generate", "--checkpoint", &name, "--prompt", "Call me ", "--tokens", "30", "--seed", "1", "--json"]);
        let line = last_json(&out);
        assert_eq!(line["generated_tokens"], 30, "{model}");
        assert_eq!(line["text"].as_str().unwrap().chars().count(), 30);
        assert!(line["tokens_per_s"].as_f64().unwrap() > 0.0);
        // The same seed samples the same text.
        let again = last_json(&effseq(dir.path(), &["generate", "--checkpoint", &name, "--prompt", "Call me ", "--tokens", "30", "--seed", "1", "--json"]));
        assert_eq!(again["text"], line["text"]);
    }
    // Characters outside the alphabet, and checkpoints of other tasks, are usage errors.
    assert_fails(&effseq(dir.path(), &["generate", "--checkpoint", "lm-linear", "--prompt", "日本"]), 2, &["not in the charlm alphabet"]);
    train_tiny(dir.path(), "adding-run", &[]);
    assert_fails(&effseq(dir.path(), &["generate", "--checkpoint", "adding-run", "--prompt", "x"]), 2, &["charlm"]);
    // A bidirectional model cannot stream.
    let (_, _) = train_and_eval_real(dir.path(), "lm-bidir", &["--model", "linear", "--task", "charlm", "--seq-len", "16", "--heads", "2", "--bidirectional"]);
    assert_fails(&effseq(dir.path(), &["generate", "--checkpoint", "lm-bidir", "--prompt", "a"]), 2, &["causal"]);
}

/// Flags of a comparison small enough to take about a second: two recurrent models, 5 steps each.
const TINY_COMPARE: &[&str] = &[
    "compare",
    "--task",
    "adding",
    "--seq-len",
    "20",
    "--models",
    "lstm,gru",
    "--steps",
    "5",
    "--hidden",
    "8",
    "--batch",
    "4",
    "--eval-size",
    "32",
    "--evals",
    "2",
];

#[test]
fn compare_prints_the_table_and_writes_markdown_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = TINY_COMPARE.to_vec();
    args.extend(["--json", "--markdown", "cmp.md", "--json-file", "cmp.json", "--plot", "cmp.svg"]);
    let out = effseq(dir.path(), &args);
    let line = last_json(&out);

    // The table (on stderr with --json): every column, one row per model.
    let err = stderr(&out);
    let header = err.lines().find(|l| l.starts_with("model ")).unwrap_or_else(|| panic!("no table header in:\n{err}"));
    for column in ["width", "params", "steps", "steps/s", "train loss", "test mse (lower is better)", "peak RSS", "peak heap", "status"] {
        assert!(header.contains(column), "column {column} missing from {header:?}");
    }
    for model in ["lstm", "gru"] {
        let row = err.lines().find(|l| l.starts_with(&format!("{model} "))).unwrap_or_else(|| panic!("no {model} row in:\n{err}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[3], "5", "5 steps done: {row}");
        assert_eq!(*cells.last().unwrap(), "done", "{row}");
        assert!(row.contains("MiB"), "peak memory shown: {row}");
    }
    assert!(err.contains("VmHWM"), "the memory method is named");

    // The JSON line: every field, and the file holds the same object.
    for key in [
        "command",
        "command_line",
        "date",
        "task",
        "seq_len",
        "batch",
        "lr",
        "seed",
        "budget",
        "step_cap",
        "eval_schedule",
        "target_params",
        "metric_name",
        "higher_is_better",
        "memory_method",
        "interrupted",
        "models",
        "not_run",
    ] {
        assert!(line.get(key).is_some(), "JSON field {key} missing: {line}");
    }
    assert_eq!((line["command"].as_str(), line["task"].as_str(), line["metric_name"].as_str()), (Some("compare"), Some("adding"), Some("mse")));
    assert_eq!(line["budget"]["steps"], 5);
    assert_eq!(line["interrupted"], false);
    let models = line["models"].as_array().unwrap();
    assert_eq!(models.iter().map(|m| m["model"].as_str().unwrap()).collect::<Vec<_>>(), ["lstm", "gru"]);
    for m in models {
        for key in [
            "width",
            "params",
            "status",
            "steps",
            "steps_per_s",
            "train_time_s",
            "eval_time_s",
            "wall_time_s",
            "train_loss",
            "metric",
            "eval_loss",
            "metric_name",
            "higher_is_better",
            "stopped_by",
            "peak_rss_bytes",
            "peak_heap_bytes",
            "curve",
        ] {
            assert!(m.get(key).is_some_and(|v| !v.is_null()), "model field {key} missing: {m}");
        }
        assert_eq!((m["status"].as_str(), m["steps"].as_u64(), m["stopped_by"].as_str()), (Some("done"), Some(5), Some("steps")));
        assert!(m["peak_rss_bytes"].as_u64().unwrap() > 1 << 20 && m["peak_heap_bytes"].as_u64().unwrap() > 0);
        // Evaluated at step 0, then every ceil(5 / 2) = 3 steps, and at the end; the last point is the final metric.
        let curve = m["curve"].as_array().unwrap();
        assert_eq!(curve.iter().map(|p| p["step"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 3, 5]);
        assert_eq!(curve[2]["metric"], m["metric"]);
    }
    // The GRU's width is matched to the LSTM's parameter count (8 LSTM units reading the 2 adding features: 4 gates * 8 * (2 inputs + 8 recurrent + 2 biases) + a head of 8 + 1 = 393).
    assert_eq!((models[0]["width"].as_u64(), models[0]["params"].as_u64(), line["target_params"].as_u64()), (Some(8), Some(393), Some(393)));
    let gru = models[1]["params"].as_f64().unwrap();
    assert!((gru - 393.0).abs() / 393.0 < 0.15, "gru has {gru} parameters");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cmp.json")).unwrap()).unwrap();
    assert_eq!(file, line);

    // Markdown: the command line and date above the table, a row per model.
    let md = std::fs::read_to_string(dir.path().join("cmp.md")).unwrap();
    let first = md.lines().next().unwrap();
    assert!(first.starts_with("`effseq compare --task adding --seq-len 20 --models lstm,gru") && first.ends_with("UTC)"), "{first}");
    assert!(md.contains("| model | width | params | steps | steps/s | train loss | test mse (lower is better) | peak RSS | peak heap | status |"), "{md}");
    assert!(md.contains("| lstm | 8 | 393 | 5 |") && md.contains("| gru |"), "{md}");

    // The chart: one line per model, named in the legend.
    let svg = std::fs::read_to_string(dir.path().join("cmp.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("lstm (393 params)") && svg.contains("gru (") && svg.contains("test mse (lower is better)"));
    // Only the three outputs are left (temporary files were renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn compare_rejects_unknown_models_and_bad_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let out = effseq(dir.path(), &["compare", "--models", "lstm,mamba2", "--steps", "5"]);
    assert_fails(&out, 2, &["mamba2", "lstm, gru, tcn"]);
    assert_fails(&effseq(dir.path(), &["compare", "--models", "lstm,lstm", "--steps", "5"]), 2, &["twice"]);
    assert_fails(&effseq(dir.path(), &["compare", "--models", "lstm", "--budget-secs", "0"]), 2, &["--budget-secs"]);
    assert_fails(&effseq(dir.path(), &["compare", "--models", "lstm", "--steps", "5", "--plot", "x.pdf"]), 2, &[".svg or .png"]);
    // A model that diverges is reported as failed, the others still run, and the exit code is that of divergence.
    let out = effseq(dir.path(), &["compare", "--task", "adding", "--seq-len", "10", "--models", "lstm,gru", "--steps", "5", "--hidden", "8", "--lr", "1e30"]);
    assert_fails(&out, 4, &["2 of 2 models failed: lstm, gru"]);
    let text = stdout(&out);
    assert!(text.contains("lstm failed: training diverged at step") && text.contains("gru failed: training diverged at step"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("gru ") && l.ends_with("failed")), "{text}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

/// Ctrl-C (SIGINT to the parent alone: the worker hears of it through its stdin) stops the running model, which
/// is reported with what it reached; the rest are listed as not run, and the outputs are still written.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn compare_interrupted_reports_what_finished() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_effseq"))
        .current_dir(dir.path())
        .args(["compare", "--task", "adding", "--seq-len", "20", "--models", "lstm,gru", "--budget-secs", "30", "--hidden", "8", "--batch", "4"])
        .args(["--eval-size", "32", "--json-file", "cmp.json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // The header's last line comes after the Ctrl-C handler is installed; then let the first model train a while.
    while !seen.contains("  memory ") {
        assert!(stdout.read_line(&mut seen).unwrap() > 0, "the header never came:\n{seen}");
    }
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "stdout:\n{rest}\nstderr:\n{err}");
    assert!(err.contains("interrupted by Ctrl-C: lstm stopped early; not run: gru"), "{err}");
    assert!(rest.contains("lstm (interrupted): "), "{rest}");
    let lstm = rest.lines().find(|l| l.starts_with("lstm ") && !l.contains(':')).unwrap_or_else(|| panic!("no lstm row:\n{rest}"));
    assert!(lstm.ends_with("interrupted"), "{lstm}");
    assert!(rest.lines().any(|l| l.starts_with("gru ") && l.ends_with("not run")), "{rest}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cmp.json")).unwrap()).unwrap();
    assert_eq!(json["interrupted"], true);
    assert_eq!(json["not_run"], serde_json::json!(["gru"]));
    let m = &json["models"][0];
    assert_eq!((m["status"].as_str(), m["stopped_by"].as_str()), (Some("interrupted"), Some("interrupted")));
    let steps = m["steps"].as_u64().unwrap();
    assert!(steps > 0 && m["train_time_s"].as_f64().unwrap() < 30.0, "{m}");
    assert_eq!(m["curve"].as_array().unwrap().last().unwrap()["step"].as_u64(), Some(steps), "a final evaluation where it stopped");
}

/// A tiny long-format CSV of variable-length sequences (2 to 5 steps of 2 features) whose class is the sign of the
/// first feature's sum, with a header and an id column.
fn sign_csv(n: usize, offset: usize) -> String {
    let mut text = String::from("id,time,a,b,label\n");
    for s in 0..n {
        let len = 2 + (s * 7 + offset) % 4;
        let sign = if (s + offset).is_multiple_of(2) { 1.0 } else { -1.0 };
        for t in 0..len {
            let a = sign * (0.5 + ((s * 13 + t * 5) % 7) as f32 / 10.0);
            text.push_str(&format!("seq{s},{t},{a:.2},{:.2},{}\n", ((s + t) % 5) as f32 / 5.0, if sign > 0.0 { "pos" } else { "neg" }));
        }
    }
    text
}

#[test]
fn custom_data_trains_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.csv"), sign_csv(40, 0)).unwrap();
    std::fs::write(dir.path().join("test.csv"), sign_csv(10, 1)).unwrap();
    let flags = ["--hidden", "8", "--steps", "40", "--batch", "8", "--eval-every", "20", "--checkpoint-every", "20", "--lr", "0.02", "--bidirectional"];
    let mut args = vec!["train", "--json", "--data", "train.csv", "--test", "test.csv", "--out", "run"];
    args.extend_from_slice(&flags);
    let out = effseq(dir.path(), &args);
    let summary = last_json(&out);
    assert_eq!((summary["task"].as_str(), summary["metric_name"].as_str()), (Some("custom"), Some("accuracy")));
    assert!(summary["test_metric"].as_f64().unwrap() > 0.7, "{summary}");
    let header = stderr(&out);
    assert!(header.contains("long layout (inferred)") && header.contains("classification (inferred)") && header.contains("2 classes (neg, pos)"), "{header}");
    assert!(header.contains("id column id") && header.contains("features per step (a, b)"), "{header}");
    // The checkpoint remembers how to read the data: eval re-reads it, predict reads new data without the training file.
    let eval = last_json(&effseq(dir.path(), &["eval", "--checkpoint", "run", "--json"]));
    assert_eq!(eval["eval_metric"], summary["eval_metric"]);
    assert_eq!(eval["test_metric"], summary["test_metric"]);
    std::fs::rename(dir.path().join("train.csv"), dir.path().join("moved.csv")).unwrap();
    for out_file in ["pred.csv", "pred.jsonl"] {
        let pred = last_json(&effseq(dir.path(), &["predict", "--checkpoint", "run", "--data", "test.csv", "--out", out_file, "--json"]));
        assert_eq!((pred["predictions"].as_u64(), pred["metric_name"].as_str()), (Some(10), Some("accuracy")));
        assert!(
            (pred["metric"].as_f64().unwrap() - summary["test_metric"].as_f64().unwrap()).abs() < 1e-6,
            "predict scores the labelled file as the test evaluation did"
        );
        let text = std::fs::read_to_string(dir.path().join(out_file)).unwrap();
        assert!(!dir.path().join(format!("{out_file}.tmp")).exists());
        if out_file.ends_with(".csv") {
            assert!(text.starts_with("index,id,label,p_neg,p_pos\n0,seq0,"), "{text}");
            assert_eq!(text.lines().count(), 11);
        } else {
            let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert_eq!(first["id"], "seq0");
            let p = &first["probabilities"];
            assert!((p["neg"].as_f64().unwrap() + p["pos"].as_f64().unwrap() - 1.0).abs() < 1e-5, "{first}");
        }
    }
    // Unlabelled data predicts without a score; predictions go to stdout as JSON Lines without --out.
    std::fs::write(dir.path().join("new.csv"), "id,time,a,b\nq,0,0.9,0.1\nq,1,0.8,0.2\n").unwrap();
    let out = effseq(dir.path(), &["predict", "--checkpoint", "run", "--data", "new.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!((line["index"].as_u64(), line["id"].as_str()), (Some(0), Some("q")));
    assert!(!stderr(&out).contains("accuracy"));
}

#[test]
fn custom_data_problems_are_data_errors_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.csv"), sign_csv(20, 0)).unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--steps", "2", "--hidden", "4", "--out", "run", "--overwrite"];
        args.extend_from_slice(extra);
        effseq(dir.path(), &args)
    };
    std::fs::write(dir.path().join("nan.csv"), "id,a,label\ns,1,x\ns,NaN,x\nt,2,y\n").unwrap();
    assert_fails(&train(&["--data", "nan.csv"]), 3, &["nan.csv:3", "column 2 ('a')", "not a finite number"]);
    std::fs::write(dir.path().join("ragged.csv"), "label,t1,t2\n1,2,3\n0,4\n").unwrap();
    assert_fails(&train(&["--data", "ragged.csv"]), 3, &["ragged.csv:3", "expected 3"]);
    std::fs::write(dir.path().join("empty.jsonl"), "").unwrap();
    assert_fails(&train(&["--data", "empty.jsonl"]), 3, &["empty.jsonl", "empty"]);
    std::fs::write(dir.path().join("bad.jsonl"), "{\"x\": [1, 2], \"y\": 0}\n{\"x\": [[1, 2]], \"y\": 1}\n").unwrap();
    assert_fails(&train(&["--data", "bad.jsonl"]), 3, &["bad.jsonl:2", "2 features per step"]);
    assert_fails(&train(&["--data", "missing.csv"]), 3, &["missing.csv", "cannot open"]);
    assert_fails(&train(&["--data", "train.csv", "--x-columns", "zzz"]), 3, &["no feature column 'zzz'"]);
    assert_fails(&train(&["--data", "train.csv", "--seq-len", "5"]), 2, &["--seq-len"]);
    assert_fails(&train(&["--task", "adding", "--data", "train.csv"]), 2, &["--task custom"]);
    assert_fails(&train(&["--task", "custom"]), 2, &["--data"]);
    assert_fails(&train(&["--data", "train.data"]), 2, &["format"]);
    // Training succeeds; then data that does not fit the checkpoint.
    assert!(train(&["--data", "train.csv"]).status.success());
    std::fs::write(dir.path().join("three.jsonl"), "{\"x\": [[1, 2, 3]]}\n").unwrap();
    let predict = |file: &str| effseq(dir.path(), &["predict", "--checkpoint", "run", "--data", file]);
    std::fs::write(dir.path().join("few.csv"), "id,a\nq,1\n").unwrap();
    assert_fails(&predict("few.csv"), 3, &["few.csv", "no feature column 'b'"]);
    std::fs::write(dir.path().join("label.csv"), "id,time,a,b,label\nq,0,1,2,maybe\n").unwrap();
    let out = predict("label.csv");
    assert!(out.status.success(), "an unknown label in new data is no obstacle to predicting it: {}", stderr(&out));
    std::fs::write(dir.path().join("inf.csv"), "id,time,a,b\nq,0,1,inf\n").unwrap();
    assert_fails(&predict("inf.csv"), 3, &["inf.csv:2", "column 4 ('b')"]);
    assert_fails(&effseq(dir.path(), &["predict", "--checkpoint", "nowhere", "--data", "few.csv"]), 3, &["nowhere"]);
}

#[test]
fn predict_refuses_a_built_in_task_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(dir.path(), "adding", &[]);
    std::fs::write(dir.path().join("x.jsonl"), "{\"x\": [1]}\n").unwrap();
    assert_fails(&effseq(dir.path(), &["predict", "--checkpoint", "adding", "--data", "x.jsonl"]), 2, &["adding task"]);
}
