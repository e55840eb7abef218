//! `aligngym sft`: Train the base policy (tokenizer and supervised fine-tuning).

use crate::commands::{self, Compute, ModelSize};
use aligngym_agents::stages::sft::SftConfig;
use aligngym_agents::{AgentError, Result};
use aligngym_envs::task;
use std::path::{Path, PathBuf};

/// The arguments of `aligngym sft`.
#[derive(clap::Args)]
pub struct SftArgs {
    /// Environment whose corpus generator provides the training text.
    #[arg(long, required_unless_present = "corpus")]
    pub env: Option<String>,
    /// A text file with one example per line, instead of an env's corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Output checkpoint directory (model.safetensors, config.json, tokenizer.json, sft_log.csv).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Optimiser steps (default: the env's recommended count, else 600).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Model size.
    #[arg(long, value_enum, default_value_t = ModelSize::Tiny)]
    pub size: ModelSize,
    /// Seed for the corpus, initialisation and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// `aligngym sft`.
pub fn run(args: SftArgs) -> Result<()> {
    let SftArgs {
        env,
        corpus,
        out,
        steps,
        size,
        seed,
        compute,
        overwrite,
    } = args;
    let dev = compute.device.resolve()?;
    let dtype = compute.precision(
        dev,
        size.config(SftConfig::default().vocab_size).num_params(),
    );
    let inputs: Vec<(&str, &Path)> = corpus.iter().map(|c| ("--corpus", c.as_path())).collect();
    commands::check_out(&out, &inputs, overwrite, |_| false)?;
    let mut cfg = SftConfig::default();
    let text = match (&corpus, &env) {
        (Some(p), _) => commands::read_corpus(p)?,
        (None, Some(id)) => {
            let t = task(id)?;
            cfg.steps = t.sft_steps();
            t.corpus(cfg.corpus_size, seed)
        }
        (None, None) => return Err(AgentError::config("env", "give --env ID or --corpus FILE")),
    };
    if let Some(s) = steps {
        cfg.steps = s;
    }
    cfg.dtype = dtype;
    let rows = commands::run_sft(&text, size, &cfg, seed, dev, &out, false)?;
    let last = rows.last().map_or(f64::NAN, |r| r.loss);
    println!(
        "sft: {} steps, final loss {last:.4} nats/token; checkpoint in {}",
        rows.len(),
        out.display()
    );
    Ok(())
}
