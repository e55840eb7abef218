//! `aligngym sample`: Print completions sampled from a checkpoint.

use crate::commands::{self, params_of, Compute};
use aligngym_agents::lm::sampling::SamplingConfig;
use aligngym_agents::{LmPolicy, Result};
use std::path::PathBuf;

/// The arguments of `aligngym sample`.
#[derive(clap::Args)]
pub struct SampleArgs {
    /// Policy checkpoint directory.
    #[arg(long)]
    pub policy: PathBuf,
    /// Prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Number of completions.
    #[arg(short = 'n', long, default_value_t = 4)]
    pub n: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Most new tokens per completion.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// `aligngym sample`.
pub fn run(args: SampleArgs) -> Result<()> {
    let SampleArgs {
        policy,
        prompt,
        n,
        temperature,
        top_k,
        top_p,
        max_new_tokens,
        seed,
        compute,
    } = args;
    let dev = compute.device.resolve()?;
    let p =
        LmPolicy::load(&policy, dev)?.with_precision(compute.precision(dev, params_of(&policy)));
    let cfg = SamplingConfig {
        temperature,
        top_k,
        top_p,
        max_new_tokens,
    };
    for (i, c) in commands::sample_texts(&p, &prompt, n, &cfg, seed)?
        .iter()
        .enumerate()
    {
        println!("[{i}] {prompt}{c}");
    }
    Ok(())
}
