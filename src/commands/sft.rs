//! `aligngym sft`: Train the base policy — from scratch (a tokenizer and a fresh model on an env's
//! corpus or a text file), or from a pretrained checkpoint on a data file of texts, prompt–completion
//! pairs or conversations.

use crate::commands::{self, params_of, Compute, ModelSize, SftStart};
use aligngym_agents::lm::lora::{LoraConfig, TargetModules};
use aligngym_agents::stages::sft::SftConfig;
use aligngym_agents::{AgentError, LmPolicy, Result};
use aligngym_envs::task;
use std::path::{Path, PathBuf};

/// TRL's `SFTConfig` default learning rate, for a pretrained model.
const PRETRAINED_LEARNING_RATE: f64 = 2e-5;
/// TRL's default passes over a data file.
const EPOCHS: usize = 3;

/// The arguments of `aligngym sft`.
#[derive(clap::Args)]
pub struct SftArgs {
    /// Environment whose corpus generator provides the training text.
    #[arg(long, required_unless_present_any = ["corpus", "data"])]
    pub env: Option<String>,
    /// A text file with one example per line, instead of an env's corpus.
    #[arg(long, conflicts_with = "env")]
    pub corpus: Option<PathBuf>,
    /// A JSONL data file in TRL's SFT forms, mixed freely: `{"text"}` (every token trained on),
    /// `{"prompt", "completion"}` (the completion only) or `{"messages": [{role, content}, …]}`
    /// (rendered by the chat template, the assistant's turns only).
    #[arg(long, conflicts_with_all = ["env", "corpus"])]
    pub data: Option<PathBuf>,
    /// Start from this pretrained checkpoint (its weights, tokenizer and chat template) instead of
    /// a fresh model; `--size` is then unused.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Train LoRA adapters of this rank on a frozen `--policy` instead of every weight (PEFT's
    /// semantics; the checkpoint is the merged model, with the adapter in PEFT's layout in its
    /// `adapter/` folder).
    #[arg(long, requires = "policy", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub lora_r: Option<u64>,
    /// LoRA's α (the update is scaled by α / r). Default 8, PEFT's.
    #[arg(long, requires = "lora_r")]
    pub lora_alpha: Option<f64>,
    /// The projections adapted: `default` (PEFT's for the family), `all-linear`, or transformers'
    /// module names separated by commas (`q_proj,v_proj`).
    #[arg(long, requires = "lora_r")]
    pub lora_target_modules: Option<String>,
    /// Output checkpoint directory (model.safetensors, config.json, tokenizer.json, sft_log.csv,
    /// corpus_stats.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Optimiser steps (default: the env's recommended count; 3 passes over `--data`; else 600).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Peak learning rate (default: 1e-3 from scratch, 2e-5 from `--policy`, as TRL).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Sequences per step (default 32).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Model size, from scratch.
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
        data,
        policy,
        out,
        steps,
        learning_rate,
        batch_size,
        size,
        seed,
        compute,
        overwrite,
        lora_r,
        lora_alpha,
        lora_target_modules,
    } = args;
    let dev = compute.device.resolve()?;
    let params = match &policy {
        Some(p) => params_of(p),
        None => size.config(SftConfig::default().vocab_size).num_params(),
    };
    let dtype = compute.precision(dev, params);
    let inputs: Vec<(&str, &Path)> = [
        ("--corpus", &corpus),
        ("--data", &data),
        ("--policy", &policy),
    ]
    .into_iter()
    .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
    .collect();
    commands::check_out(&out, &inputs, overwrite, |_| false)?;
    let mut cfg = SftConfig::default();
    if let Some(b) = batch_size {
        cfg.batch_size = b;
    }
    let records = match (&data, &corpus, &env) {
        (Some(p), _, _) => {
            let records = aligngym_envs::read_sft(p)?;
            cfg.steps = (EPOCHS * records.len()).div_ceil(cfg.batch_size.max(1));
            records
        }
        (None, Some(p), _) => commands::read_corpus(p)?,
        (None, None, Some(id)) => {
            let t = task(id)?;
            cfg.steps = t.sft_steps();
            let records = commands::corpus_records(t.corpus(cfg.corpus_size, seed));
            if records.is_empty() {
                return Err(AgentError::config(
                    "env",
                    format!("{id} has no SFT corpus (a task file's `corpus` names the column that completes its prompts): give --data FILE, or train from a pretrained --policy"),
                ));
            }
            records
        }
        (None, None, None) => {
            return Err(AgentError::config(
                "env",
                "give --env ID, --corpus FILE or --data FILE",
            ))
        }
    };
    let start = match &policy {
        Some(dir) => {
            cfg.learning_rate = PRETRAINED_LEARNING_RATE;
            cfg.warmup_steps = 0;
            let mut p = LmPolicy::load(dir, dev)?;
            if let Some(r) = lora_r {
                let mut lora = LoraConfig {
                    r: r as usize,
                    ..LoraConfig::default()
                };
                if let Some(a) = lora_alpha {
                    lora.lora_alpha = a;
                }
                if let Some(t) = lora_target_modules {
                    lora.target_modules = TargetModules::try_from(serde_json::Value::String(t))
                        .map_err(|e| AgentError::config("--lora-target-modules", e))?;
                }
                p.adapter_base =
                    Some(std::path::absolute(dir).map_err(|e| AgentError::io(dir, e))?);
                p.attach_lora(&lora, seed)?;
            }
            SftStart::Pretrained(Box::new(p))
        }
        None => SftStart::Fresh(size),
    };
    if let Some(s) = steps {
        cfg.steps = s;
    }
    if let Some(lr) = learning_rate {
        cfg.learning_rate = lr;
    }
    cfg.dtype = dtype;
    let rows = commands::run_sft(&records, start, &cfg, seed, dev, &out, false)?;
    let last = rows.last().map_or(f64::NAN, |r| r.loss);
    println!(
        "sft: {} steps, final loss {last:.4} nats/token; checkpoint in {}",
        rows.len(),
        out.display()
    );
    Ok(())
}
