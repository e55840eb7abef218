//! `aligngym sample`: Print completions sampled from a checkpoint.

use crate::commands::{params_of, Compute};
use aligngym_agents::lm::sampling::SamplingConfig;
use aligngym_agents::lm::tokenizer::PromptFormat;
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
    /// How the prompt reaches the model: `auto` renders it through the checkpoint's own chat
    /// template where it has one (an instruct model answers as it was trained to), `chat` always,
    /// `raw` never (a base model continues the text).
    #[arg(long, value_enum, default_value_t = PromptFormat::Auto)]
    pub format: PromptFormat,
    /// Shorthand for `--format chat`.
    #[arg(long, conflicts_with = "format")]
    pub chat: bool,
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
        format,
        chat,
        compute,
    } = args;
    let format = if chat { PromptFormat::Chat } else { format };
    let dev = compute.device.resolve()?;
    let p =
        LmPolicy::load(&policy, dev)?.with_precision(compute.precision(dev, params_of(&policy)));
    let cfg = SamplingConfig {
        temperature,
        top_k,
        top_p,
        max_new_tokens,
    };
    let ids = p.tokenizer.encode_prompt_as(&prompt, format);
    for (i, c) in sample_texts(&p, &ids, n, &cfg, seed)?.iter().enumerate() {
        println!("[{i}] {prompt}{c}");
    }
    Ok(())
}

/// `n` completions of `prompt`'s ids.
fn sample_texts(
    policy: &LmPolicy,
    prompt: &[u32],
    n: usize,
    sampling: &SamplingConfig,
    seed: u64,
) -> Result<Vec<String>> {
    tch::manual_seed(seed as i64);
    let ids = vec![prompt.to_vec(); n];
    let gen = aligngym_agents::Policy::sample(policy, &ids, sampling)?;
    Ok(policy.decode(&gen))
}
