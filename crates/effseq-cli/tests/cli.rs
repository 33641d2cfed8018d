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

/// The directory holding the files of the current checkpoint of run directory `dir`.
fn current(dir: &Path) -> std::path::PathBuf {
    effseq::checkpoint::resolve(dir).unwrap_or_else(|e| panic!("{} holds no loadable checkpoint: {e}", dir.display()))
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
        assert!(current(&dir.path().join("run")).join(file).is_file(), "checkpoint file {file}");
    }
    assert_eq!(current(&dir.path().join("run")), dir.path().join("run/step-20"), "the pointer names the version of step 20");

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
    assert!(dir.path().join("runs/gru-copy/current").is_file(), "default output directory runs/<model>-<task>");
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
    let text = stdout(&effseq(dir.path(), &["info", "--checkpoint", "run"]));
    assert!(text.contains("# checkpoint: step 20 of 20") && text.contains("(files in run/step-20)"), "{text}");
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
    let config = std::fs::read_to_string(current(&dir.path().join("run")).join("config.toml")).unwrap();
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
    let model = current(&dir.path().join("run")).join("model.safetensors");
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
    let large = current(&dir.path().join("large"));
    std::fs::copy(current(&dir.path().join("small")).join("model.safetensors"), large.join("model.safetensors")).unwrap();
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
    let config = std::fs::read_to_string(current(&dir.path().join("co2")).join("config.toml")).unwrap();
    assert!(config.contains("series = \"co2\"") && config.contains("horizon = 2"), "{config}");

    // Without --seq-len the window is the series' default; the default output directory names the series.
    let out = effseq(dir.path(), &["train", "--task", "forecast", "--series", "seattle", "--hidden", "4", "--steps", "2", "--batch", "2", "--eval-every", "0"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for needle in ["forecast seattle, window T = 60, horizon 1", "last value mse", "seasonal naive (season 365)", "done: 2 steps", "seasonal naive mse"] {
        assert!(text.contains(needle), "stdout should contain '{needle}':\n{text}");
    }
    assert!(dir.path().join("runs/lstm-forecast-seattle/current").is_file());
    let eval_text = stdout(&effseq(dir.path(), &["eval", "--checkpoint", "runs/lstm-forecast-seattle"]));
    assert!(eval_text.contains("window 60, horizon 1") && eval_text.contains("last value mse") && eval_text.contains("test windows"), "{eval_text}");

    // P-MNIST: the permutation seed is stored in the checkpoint and evaluation uses it.
    let (smnist, eval) = train_and_eval_real(dir.path(), "pmnist", &["--task", "smnist", "--permute", "3", "--steps", "2", "--hidden", "4"]);
    assert_eq!((smnist["seq_len"].as_u64(), smnist["permute_seed"].as_u64(), eval["permute_seed"].as_u64()), (Some(784), Some(3), Some(3)));
    let config = std::fs::read_to_string(current(&dir.path().join("pmnist")).join("config.toml")).unwrap();
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
    // A bidirectional model is refused on charlm (it would see the next character), so it never gets to generate.
    let out =
        effseq(dir.path(), &["train", "--model", "linear", "--task", "charlm", "--seq-len", "16", "--heads", "2", "--bidirectional", "--out", "lm-bidir"]);
    assert_fails(&out, 2, &["bidirectional", "charlm", "see the answer"]);
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

/// Starts `effseq args...` in `cwd` with stdout and stderr piped, and reads stdout up to the header's `  memory`
/// line, which `train` and `compare` print just before they install their Ctrl-C handler; returns the child and the
/// rest of its stdout.
#[cfg(unix)]
fn spawn_past_header(cwd: &Path, args: &[&str]) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_effseq"))
        .current_dir(cwd)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("  memory ") {
        assert!(stdout.read_line(&mut seen).unwrap() > 0, "the header never came:\n{seen}");
    }
    (child, stdout)
}

/// Ctrl-C (SIGINT to the parent alone: the worker hears of it through its stdin) stops the running model, which
/// is reported with what it reached; the rest are listed as not run, and the outputs are still written.
#[cfg(unix)]
#[test]
fn compare_interrupted_reports_what_finished() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["compare", "--task", "adding", "--seq-len", "20", "--models", "lstm,gru", "--budget-secs", "30", "--hidden", "8", "--batch", "4"];
    let (mut child, mut stdout) = spawn_past_header(dir.path(), &[&args[..], &["--eval-size", "32", "--json-file", "cmp.json"]].concat());
    // Let the first model train a while.
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

/// Starts `effseq train` in `cwd` with `args`, output discarded.
fn spawn_train(cwd: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_effseq"))
        .current_dir(cwd)
        .arg("train")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the effseq binary runs")
}

/// Waits until `dir` holds a checkpoint (at most 60 s).
fn wait_for_checkpoint(dir: &Path) {
    let start = std::time::Instant::now();
    while !effseq::checkpoint::exists(dir) {
        assert!(start.elapsed().as_secs() < 60, "no checkpoint appeared in {}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What a kill loop found.
#[derive(Debug, Default)]
struct KillLoop {
    /// `kill -9`s sent.
    kills: usize,
    /// Kills that came before the run had completed its first checkpoint (nothing to load yet, nothing lost).
    before_first_checkpoint: usize,
    /// Kills after which the checkpoint did not load (the figure that must be 0).
    unloadable: usize,
    /// Kills after which the loaded step was below the step loaded before (a lost checkpoint).
    went_back: usize,
    /// Kills that came while the run was writing checkpoints (the checkpoint had advanced since the last kill):
    /// those that can land in the middle of a save.
    while_saving: usize,
    /// The step of the checkpoint loaded after the last kill.
    last_step: u64,
    /// Resumptions that failed (a checkpoint that loads must also resume).
    failed_resumes: usize,
}

/// Trains a tiny model that writes a checkpoint at every step, kills it with SIGKILL after a random delay
/// (uniform in 50-600 ms, from a fixed seed), checks that the checkpoint loads completely (model, optimizer, state)
/// and never goes back, and resumes it in the next round; `kills` rounds in all. The lock of the killed run must
/// not block the next one.
fn kill_loop(kills: usize, seed: u64) -> KillLoop {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut report = KillLoop::default();
    let flags = ["--hidden", "16", "--batch", "4", "--seq-len", "10", "--eval-size", "8", "--eval-every", "0", "--checkpoint-every", "1"];
    for _ in 0..kills {
        let mut args = vec!["--steps", "1000000000"];
        if effseq::checkpoint::exists(&run) {
            args.extend(["--resume", "run"]);
        } else {
            args.extend(["--out", "run"]);
            args.extend(flags);
        }
        let mut child = spawn_train(dir.path(), &args);
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(50..600)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.code().is_some() {
            // It exited by itself: only a failed resumption does that here.
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            report.failed_resumes += 1;
            eprintln!("effseq exited with {status} before the kill: {err}");
        }
        report.kills += 1;
        if !effseq::checkpoint::exists(&run) {
            report.before_first_checkpoint += 1;
            continue;
        }
        match effseq::checkpoint::load(&run) {
            Ok(loaded) => {
                if loaded.state.step < report.last_step {
                    report.went_back += 1;
                }
                if loaded.state.step > report.last_step {
                    report.while_saving += 1;
                }
                report.last_step = loaded.state.step;
            }
            Err(e) => {
                report.unloadable += 1;
                eprintln!("unloadable after kill {}: {e}", report.kills);
            }
        }
    }
    report
}

/// `kill -9` at random moments of a run that checkpoints every step never leaves an unloadable checkpoint nor
/// loses one (10 kills here; `scripts/kill_loop.sh` runs the long version).
#[cfg(unix)]
#[test]
fn kill_9_never_leaves_an_unloadable_checkpoint() {
    let report = kill_loop(10, 15);
    assert_eq!((report.unloadable, report.went_back, report.failed_resumes), (0, 0, 0), "{report:?}");
    assert!(report.last_step > 0 && report.before_first_checkpoint < report.kills, "{report:?}");
}

/// The long kill loop behind README's figure: `EFFSEQ_KILLS` kills (default 200); with `EFFSEQ_KILL_REPORT=FILE`
/// the summary is written there. Run by `scripts/kill_loop.sh`.
#[cfg(unix)]
#[test]
#[ignore = "takes minutes: run by scripts/kill_loop.sh"]
fn kill_loop_long() {
    let kills: usize = std::env::var("EFFSEQ_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let start = std::time::Instant::now();
    let report = kill_loop(kills, 2026);
    let summary = format!(
        "kill -9 loop: {} kills of `effseq train` (LSTM, hidden 16, a checkpoint every step) at random moments (50-600 ms after start, seed 2026), each followed by a full load of the checkpoint and a resumption\n\
         kills while the run was writing checkpoints (it had advanced since the last kill): {}\n\
         unloadable checkpoints: {}\n\
         checkpoints that went back to an earlier step: {}\n\
         failed resumptions: {}\n\
         kills before the first checkpoint existed: {}\n\
         step reached: {}\n\
         wall time: {:.0} s\n",
        report.kills,
        report.while_saving,
        report.unloadable,
        report.went_back,
        report.failed_resumes,
        report.before_first_checkpoint,
        report.last_step,
        start.elapsed().as_secs_f64()
    );
    print!("{summary}");
    if let Ok(path) = std::env::var("EFFSEQ_KILL_REPORT") {
        std::fs::write(path, &summary).unwrap();
    }
    assert_eq!((report.unloadable, report.went_back, report.failed_resumes), (0, 0, 0), "{report:?}");
}

/// Ctrl-C and SIGTERM in `train`: the step reached is saved, the exit status says which signal, and the run resumes
/// from there to the same losses as an uninterrupted run.
#[cfg(unix)]
#[test]
fn ctrl_c_and_sigterm_save_the_step_reached() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--hidden", "8", "--batch", "4", "--seq-len", "10", "--eval-size", "8", "--eval-every", "0", "--checkpoint-every", "1000000"];
    for (signal, code, name) in [("-INT", 130, "Ctrl-C"), ("-TERM", 143, "SIGTERM")] {
        let mut args = vec!["--steps", "100000000", "--out", "run", "--overwrite"];
        args.extend(flags);
        let (child, _header) = spawn_past_header(dir.path(), &[&["train"][..], &args].concat());
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
        let out = child.wait_with_output().unwrap();
        assert_fails(&out, code, &[&format!("interrupted by {name} after step"), "checkpoint saved in run", "--resume run"]);
        let loaded = effseq::checkpoint::load(&dir.path().join("run")).unwrap();
        let err = stderr(&out);
        let step: u64 = err.split("after step ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
        assert_eq!(loaded.state.step, step, "the checkpoint holds the step reached: {err}");
        assert!(step > 0, "{err}");
    }
}

#[test]
fn a_second_run_on_one_out_is_refused_and_a_killed_run_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut first =
        spawn_train(dir.path(), &["--hidden", "8", "--batch", "4", "--seq-len", "10", "--steps", "100000000", "--checkpoint-every", "1", "--out", "run"]);
    wait_for_checkpoint(&dir.path().join("run"));
    let pid = first.id().to_string();
    assert_fails(&effseq(dir.path(), &["train", "--resume", "run", "--steps", "100000000"]), 2, &["run is in use by another effseq process", &pid]);
    let mut args = vec!["train", "--out", "run", "--overwrite"];
    args.extend_from_slice(TINY);
    assert_fails(&effseq(dir.path(), &args), 2, &["in use by another effseq process"]);
    // kill -9 leaves the lock file behind, but not the lock.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(dir.path().join("run/effseq.lock").is_file());
    assert!(effseq(dir.path(), &args).status.success(), "the stale lock file does not block");
}

#[test]
fn numbers_beyond_their_range_are_usage_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "18446744073709551615";
    for (flag, field) in [
        ("--steps", "train.steps"),
        ("--eval-every", "train.eval_every"),
        ("--checkpoint-every", "train.checkpoint_every"),
        ("--warmup", "train.warmup_steps"),
        ("--redraw-every", "model.redraw_every"),
        ("--seed", "train.seed"),
        ("--max-len", "model.max_len"),
        ("--seq-len", "task.seq_len"),
        ("--batch", "train.batch"),
    ] {
        let out = effseq(dir.path(), &["train", "--model", "performer", flag, huge, "--out", "run"]);
        assert_fails(&out, 2, &[field, "at most 9223372036854775807"]);
    }
    // Within i64 but far beyond any memory: refused by the memory guard, before allocating.
    for args in [
        &["--model", "transformer", "--positional", "learned", "--max-len", "9223372036854775807"][..],
        &["--seq-len", "9223372036854775807"][..],
        &["--batch", "4611686018427387904", "--seq-len", "1000"][..],
        &["--hidden", "4294967296"][..],
    ] {
        let mut all = vec!["train", "--out", "run"];
        all.extend_from_slice(args);
        assert_fails(&effseq(dir.path(), &all), 2, &["memory"]);
    }
    assert!(!dir.path().join("run").exists());

    train_and_eval_real(dir.path(), "lm", &["--model", "transformer", "--task", "charlm", "--seq-len", "16", "--heads", "2", "--steps", "2"]);
    let out = effseq(dir.path(), &["generate", "--checkpoint", "lm", "--prompt", "a", "--tokens", huge]);
    assert_fails(&out, 2, &["--tokens", "overflow"]);
    let out = effseq(dir.path(), &["generate", "--checkpoint", "lm", "--prompt", "a", "--tokens", "100000000000"]);
    assert_fails(&out, 2, &["generating 100000000000 tokens needs an estimated", "GiB"]);

    assert_fails(&effseq(dir.path(), &["bench", "--models", "lstm", "--repeats", huge]), 2, &["--repeats must be at most"]);
    let reformer = ["--model", "reformer", "--heads", "2", "--bucket-size", "8", "--steps", "1", "--eval-size", "8"];
    train_tiny(dir.path(), "lsh", &reformer);
    assert_fails(&effseq(dir.path(), &["eval", "--checkpoint", "lsh", "--n-hashes", huge]), 2, &["overflow"]);
    // bench: every size estimate is checked; a length that overflows is skipped with the reason, not an abort.
    let out = effseq(
        dir.path(),
        &["bench", "--models", "transformer,lstm", "--mode", "forward,train,step", "--seq-lens", "2251799813685248", "--batch", "1", "--json"],
    );
    let line = last_json(&out);
    for r in line["records"].as_array().unwrap() {
        let why = r["skipped"].as_str().unwrap_or_default();
        if r["model"] == "lstm" && r["mode"] == "step" {
            // A fixed-size state fits in memory at any context, but the step is timed at the context it reports,
            // and 2^51 steps (at least a microsecond each) are estimated far past the time budget.
            assert!(why.contains("time budget"), "{r}");
        } else {
            assert!(why.contains("overflows 64 bits") || why.contains("exceeds the limit"), "{r}");
        }
    }
}

#[test]
fn a_checkpoint_is_good_only_with_finite_weights() {
    let dir = tempfile::tempdir().unwrap();
    // A huge learning rate with a checkpoint at every step: the run diverges (exit 4, naming what went non-finite),
    // and the checkpoint it keeps evaluates to a finite metric.
    // The learning rate ramps up over 200 warmup steps, so both diverge after a few good steps (Adam moves every
    // weight by about the rate, and the TCN's outputs overflow once it nears 1e4: about step 8 at 3e5 / 200 per step).
    for (model, lr) in [("mamba", "1e3"), ("tcn", "3e5")] {
        let name = format!("div-{model}");
        let args = [
            "train",
            "--model",
            model,
            "--lr",
            lr,
            "--warmup",
            "200",
            "--checkpoint-every",
            "1",
            "--steps",
            "200",
            "--out",
            &name,
            "--hidden",
            "8",
            "--batch",
            "4",
            "--seq-len",
            "10",
        ];
        let out = effseq(dir.path(), &args);
        assert_fails(&out, 4, &["diverged at step", "the last good checkpoint is kept"]);
        let err = stderr(&out);
        let named = ["the training loss is", "the gradient norm is", "after the update", "on the next batch, so they were not saved"];
        assert!(named.iter().any(|n| err.contains(n)), "the first non-finite quantity is named: {err}");
        // At these rates the divergence comes after a few good steps: their last checkpoint is kept, and it is good.
        let eval = last_json(&effseq(dir.path(), &["eval", "--checkpoint", &name, "--json"]));
        assert!(eval["step"].as_u64().is_some_and(|s| s > 0) && eval["eval_metric"].as_f64().is_some_and(f64::is_finite), "{model}: {eval}");
    }
    // A checkpoint whose weights are not finite (as older versions could write): eval and generate refuse it, exit 3.
    train_and_eval_real(dir.path(), "lm", &["--model", "lstm", "--task", "charlm", "--seq-len", "16", "--steps", "2"]);
    let files = current(&dir.path().join("lm"));
    let mut tensors = effseq::checkpoint::read_safetensors(&files.join("model.safetensors")).unwrap();
    tensors.get_mut("rnn.weight_hh_l0").unwrap().1[5] = f32::NAN;
    struct Tensors(Vec<effseq::Param>);
    impl effseq::Module for Tensors {
        fn params(&self) -> Vec<&effseq::Param> {
            self.0.iter().collect()
        }
        fn params_mut(&mut self) -> Vec<&mut effseq::Param> {
            self.0.iter_mut().collect()
        }
    }
    let module = Tensors(tensors.into_iter().map(|(name, (shape, values))| effseq::Param::new(name, &shape, values)).collect());
    effseq::checkpoint::save_module_safetensors(&files.join("model.safetensors"), &module).unwrap();
    let bytes = std::fs::read(files.join("model.safetensors")).unwrap();
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(files.join("state.json")).unwrap()).unwrap();
    state["files"]["model.safetensors"] = serde_json::json!({ "bytes": bytes.len(), "crc32": format!("{:08x}", effseq::checkpoint::crc32(&bytes)) });
    std::fs::write(files.join("state.json"), serde_json::to_string_pretty(&state).unwrap()).unwrap();
    assert_fails(&effseq(dir.path(), &["eval", "--checkpoint", "lm"]), 3, &["model.safetensors", "'rnn.weight_hh_l0' is NaN at element 5"]);
    assert_fails(&effseq(dir.path(), &["generate", "--checkpoint", "lm", "--prompt", "a"]), 3, &["'rnn.weight_hh_l0' is NaN"]);
}

#[test]
fn a_bidirectional_model_is_refused_on_tasks_with_causal_targets() {
    let dir = tempfile::tempdir().unwrap();
    for (model, task) in [("lstm", "charlm"), ("gru", "copy"), ("transformer", "selective-copy"), ("linear", "duplicate"), ("reformer", "charlm")] {
        let out = effseq(dir.path(), &["train", "--model", model, "--task", task, "--bidirectional", "--out", "run"]);
        assert_fails(&out, 2, &["bidirectional", task, "per-step causal", "see the answer"]);
    }
    // One prediction per sequence: reading both directions is legitimate.
    train_tiny(dir.path(), "bi", &["--model", "gru", "--bidirectional"]);
}

#[test]
fn unwritable_outputs_are_found_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "not a directory").unwrap();
    assert_fails(&effseq(dir.path(), &["train", "--out", "file/run", "--steps", "5"]), 2, &["cannot write --out file/run", "file is not a directory"]);
    assert_fails(&effseq(dir.path(), &["train", "--out", "file", "--steps", "5"]), 2, &["--out file", "not a directory"]);
    let compare = TINY_COMPARE.to_vec();
    for (flag, path) in [("--json-file", "missing/x.json"), ("--markdown", "missing/x.md"), ("--plot", "missing/x.svg"), ("--json-file", ".")] {
        let mut args = compare.clone();
        args.extend([flag, path]);
        assert_fails(&effseq(dir.path(), &args), 2, &[flag, path]);
        let out = effseq(dir.path(), &["bench", "--models", "lstm", "--seq-lens", "8", "--batch", "1", "--repeats", "1", flag, path]);
        assert_fails(&out, 2, &[flag, path]);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing written");
}

#[test]
fn runs_that_do_not_fit_in_memory_are_refused_with_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let out = effseq(dir.path(), &["train", "--model", "transformer", "--max-memory-gib", "0.01", "--out", "run"]);
    assert_fails(&out, 2, &["this training run needs an estimated", "MiB (weights", "activations", "above --max-memory-gib 0.01"]);
    // Beyond the machine: a billion-step context at batch 1024.
    let out = effseq(dir.path(), &["train", "--model", "lstm", "--seq-len", "1000000000", "--batch", "1024", "--out", "run"]);
    assert_fails(&out, 2, &["needs an estimated", "GiB", "memory is available"]);
    assert!(!dir.path().join("run").exists());
    train_tiny(dir.path(), "small", &[]);
    assert_fails(&effseq(dir.path(), &["eval", "--checkpoint", "small", "--max-memory-gib", "0.001"]), 2, &["evaluating this checkpoint needs an estimated"]);
    assert_fails(&effseq(dir.path(), &["train", "--resume", "small", "--max-memory-gib", "0.001"]), 2, &["--max-memory-gib 0.001"]);
}

/// The memory estimate against the peak RSS (`VmHWM`) of the run, on small configs with enough activations to
/// matter. Measured (2 steps and the final evaluation each, 2026-12-04): LSTM 1.44, Transformer 1.25, GRU 2 layers
/// 1.37, Mamba 1.31, TCN 1.36, Performer 1.65, Reformer 1.96, Linear 2 blocks 1.17 (estimate / RSS).
#[test]
fn the_memory_estimate_tracks_the_peak_rss() {
    let dir = tempfile::tempdir().unwrap();
    for flags in [
        &["--model", "lstm", "--task", "adding", "--seq-len", "500", "--batch", "64", "--hidden", "256"][..],
        &["--model", "transformer", "--task", "charlm", "--seq-len", "512", "--batch", "16", "--hidden", "128"][..],
        &["--model", "mamba", "--task", "selective-copy", "--seq-len", "512", "--batch", "16", "--hidden", "64"][..],
        &["--model", "tcn", "--task", "adding", "--seq-len", "1000", "--batch", "32", "--hidden", "64"][..],
    ] {
        let mut args = vec!["train", "--steps", "2", "--eval-size", "16", "--eval-every", "0", "--out", "run", "--overwrite", "--json"];
        args.extend_from_slice(flags);
        let line = last_json(&effseq(dir.path(), &args));
        let (estimate, rss) = (line["memory_estimate_bytes"].as_f64().unwrap(), line["peak_rss_bytes"].as_f64().unwrap());
        let ratio = estimate / rss;
        assert!((0.9..=2.5).contains(&ratio), "{flags:?}: estimate {estimate} bytes, peak RSS {rss} bytes, ratio {ratio:.2}");
    }
}

#[test]
fn optimizer_and_other_float_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (section, line, field) in [
        ("train", "weight_decay = -0.1", "train.weight_decay"),
        ("train", "weight_decay = nan", "train.weight_decay"),
        ("train", "momentum = nan", "train.momentum"),
        ("train", "momentum = 1.5", "train.momentum"),
        ("train", "lr = nan", "train.lr"),
        ("train", "lr = inf", "train.lr"),
        ("train", "clip_norm = nan", "train.clip_norm"),
        ("train", "min_lr_ratio = nan", "train.min_lr_ratio"),
        ("model", "dropout = nan", "model.dropout"),
    ] {
        std::fs::write(dir.path().join("bad.toml"), format!("[{section}]\n{line}\n")).unwrap();
        assert_fails(&effseq(dir.path(), &["train", "--config", "bad.toml", "--out", "run"]), 2, &[field]);
    }
    assert_fails(&effseq(dir.path(), &["train", "--lr", "NaN", "--out", "run"]), 2, &["train.lr"]);
    assert_fails(&effseq(dir.path(), &["train", "--dropout", "NaN", "--out", "run"]), 2, &["model.dropout"]);
}

#[test]
fn data_problems_are_data_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let row = format!("{},3\n", vec!["1"; 64].join(","));
    // One image: too few for a train/test split; a short first line: named as line 1.
    std::fs::write(data.join("digits.csv.gz"), gzip(row.as_bytes())).unwrap();
    assert_fails(&effseq_with_data(dir.path(), &data, &["train", "--task", "digits", "--out", "run"]), 3, &["digits.csv.gz", "split"]);
    std::fs::write(data.join("digits.csv.gz"), gzip(format!("1,2,3\n{row}{row}").as_bytes())).unwrap();
    assert_fails(&effseq_with_data(dir.path(), &data, &["train", "--task", "digits", "--out", "run"]), 3, &["digits.csv.gz:1", "expected 65"]);
}

/// `bytes` gzip-compressed.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
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
