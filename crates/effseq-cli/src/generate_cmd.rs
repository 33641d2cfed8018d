//! `effseq generate`: sample text from a charlm checkpoint with the model's streaming `step`, printing each
//! character as it comes. The prompt is read one token at a time through the same `step` (a softmax Transformer
//! fills its key/value cache, the linear models fold it into their fixed-size state), then every new token costs
//! one step: constant for LSTM, GRU, TCN, linear attention and the Performer, growing with the context for softmax.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use effseq::checkpoint;
use effseq::config::TaskKind;
use effseq::memory;
use effseq::model::StepInput;
use effseq::rng::{rng_for, Rng};
use effseq::tasks::charlm::CharLm;
use effseq::tasks::Task;
use rand::Rng as _;
use serde::Serialize;

use crate::failure::{exit, CliError};
use crate::preflight;

/// Arguments of `effseq generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint directory of a model trained on charlm, written by `effseq train`.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Text the sample continues (at least one character, from the training text's alphabet).
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// Characters to generate.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub tokens: usize,
    /// Softmax temperature; 0 picks the most likely character every time.
    #[arg(long, value_name = "X", default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the K most likely characters only (0: all).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampling.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Refuse to start when the estimated memory (weights, the streaming state after the prompt and every
    /// generated token, the text) exceeds this many GiB (it is always refused above the memory available).
    #[arg(long, value_name = "G")]
    pub max_memory_gib: Option<f64>,
}

/// The last line of `effseq generate --json`.
#[derive(Serialize)]
struct GenerateJson<'a> {
    model: &'a str,
    prompt_tokens: usize,
    generated_tokens: usize,
    text: &'a str,
    prompt_s: f64,
    generate_s: f64,
    tokens_per_s: f64,
    us_per_token: f64,
    final_context: usize,
}

/// Draws a token id from `logits (V)` at `temperature` among the `top_k` most likely (0 = all).
fn sample(logits: &[f32], temperature: f32, top_k: usize, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    if temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let max = logits[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| f64::from((logits[i] - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&i, &w) in order.iter().zip(&weights) {
        if u < w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

/// Runs `effseq generate`.
pub fn run(args: &GenerateArgs, json: bool) -> Result<(), CliError> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(CliError::usage(format!("--temperature must be a finite number >= 0, got {}", args.temperature)));
    }
    let (config, _) = checkpoint::load_config(&args.checkpoint)?;
    let context = (args.prompt.chars().count() as u64).saturating_add(args.tokens as u64);
    let estimate =
        memory::estimate_stream(&config, Task::io_of(&config.task)?, context).map_err(|e| CliError::usage(format!("--tokens {}: {e}", args.tokens)))?;
    preflight::check_memory(&format!("generating {} tokens", args.tokens), &estimate, args.max_memory_gib, "generate fewer --tokens")?;
    let (config, mut network, _) = checkpoint::load_model(&args.checkpoint)?;
    if config.task.kind != TaskKind::Charlm {
        return Err(CliError::usage(format!(
            "{} was trained on {}; generate needs a charlm checkpoint (text in, text out)",
            args.checkpoint.display(),
            config.task.kind.name()
        )));
    }
    let text = CharLm::new(config.task.seq_len, config.train.seed)?;
    let prompt = text.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err(CliError::usage("--prompt must hold at least one character"));
    }
    let vocab = text.vocab();
    let mut state = network.zero_state(1);
    let mut logits = vec![0.0f32; vocab]; // (1, V)
    let mut out = std::io::stdout().lock();
    let say = |s: &str| if json { eprint!("{s}") } else { print!("{s}") };

    let start = Instant::now();
    for &id in &prompt {
        network.step(StepInput::Tokens(&[id]), &mut state, &mut logits)?;
    }
    let prompt_s = start.elapsed().as_secs_f64();
    say(&args.prompt);

    let mut rng = rng_for(args.seed, 0x6765_6e65);
    let mut generated = Vec::with_capacity(args.tokens);
    let start = Instant::now();
    for _ in 0..args.tokens {
        let id = sample(&logits, args.temperature, args.top_k, &mut rng);
        generated.push(id);
        say(&text.decode(&[id]));
        if !json {
            out.flush().ok();
        }
        network.step(StepInput::Tokens(&[id]), &mut state, &mut logits)?;
    }
    let generate_s = start.elapsed().as_secs_f64();
    let n = args.tokens.max(1) as f64;
    let summary = format!(
        "{} tokens in {:.3} s: {:.0} tokens/s, {:.1} µs per token (prompt of {} tokens read in {:.3} s; context now {})",
        args.tokens,
        generate_s,
        args.tokens as f64 / generate_s.max(1e-12),
        generate_s / n * 1e6,
        prompt.len(),
        prompt_s,
        prompt.len() + args.tokens
    );
    if json {
        eprintln!("\n{summary}");
        let sample_text = text.decode(&generated);
        let line = GenerateJson {
            model: config.model.kind.name(),
            prompt_tokens: prompt.len(),
            generated_tokens: args.tokens,
            text: &sample_text,
            prompt_s,
            generate_s,
            tokens_per_s: args.tokens as f64 / generate_s.max(1e-12),
            us_per_token: generate_s / n * 1e6,
            final_context: prompt.len() + args.tokens,
        };
        let text = serde_json::to_string(&line).map_err(|e| CliError { message: format!("cannot write JSON: {e}"), hint: None, code: exit::OTHER })?;
        writeln!(out, "{text}").ok();
    } else {
        writeln!(out).ok();
        eprintln!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k_sampling() {
        let logits = [0.1f32, 2.0, -1.0, 1.9];
        let mut rng = rng_for(0, 1);
        assert_eq!(sample(&logits, 0.0, 0, &mut rng), 1);
        for _ in 0..200 {
            let id = sample(&logits, 1.0, 2, &mut rng);
            assert!(id == 1 || id == 3, "top-2 keeps ids 1 and 3, drew {id}");
        }
        // At temperature 1 over all four, every id turns up.
        let mut seen = [false; 4];
        for _ in 0..2000 {
            seen[sample(&logits, 1.0, 0, &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
