//! `aligngym prefs`: Sample completions from a generator policy and label pairs with the oracle.

use crate::commands::{self, params_of, Compute};
use aligngym_agents::lm::sampling::SamplingConfig;
use aligngym_agents::stages::preferences::Branching;
use aligngym_agents::{LmPolicy, Result};
use aligngym_envs::{task, write_pairs, OracleConfig};
use std::path::PathBuf;

/// The arguments of `aligngym prefs`.
#[derive(clap::Args)]
pub struct PrefsArgs {
    /// Environment id.
    #[arg(long)]
    pub env: String,
    /// Generator policy checkpoint (π_sft for on-policy data, any other for off-policy).
    #[arg(long)]
    pub policy: PathBuf,
    /// Number of pairs to write. The default, 1,024, is what a sweep's preference set holds, and
    /// gives `train --agent dpo` at its defaults (60 updates of 32 pairs) 1.9 passes over the
    /// pairs, within TRL's 1 to 3 epochs.
    #[arg(long, default_value_t = 1024)]
    pub pairs: usize,
    /// Completions per prompt; every two form a pair (4 gives 6 pairs, as in the DPO paper).
    #[arg(long, default_value_t = 4)]
    pub per_prompt: usize,
    /// Oracle temperature τ (0 = always the better completion).
    #[arg(long, default_value_t = OracleConfig::default().temperature)]
    pub oracle_temperature: f32,
    /// Probability that the oracle's label is flipped (simulated rater noise).
    #[arg(long, default_value_t = 0.0)]
    pub flip_rate: f32,
    /// Keep pairs whose completions have equal gold reward (labelled by a coin flip); by default
    /// they are dropped, as raters would say "no preference".
    #[arg(long)]
    pub keep_ties: bool,
    /// Multi-turn envs: where a pair's two conversations part. `start`: at the first assistant
    /// turn (independent conversations); `turn`: after the first t turns of a conversation
    /// sampled first, t uniform over its turns, so the pair says which turn made the difference.
    #[arg(long, default_value_t = Branching::Turn)]
    pub branch: Branching,
    /// Output JSONL file.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Seed for prompts, sampling and labels.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// `aligngym prefs`.
pub fn run(args: PrefsArgs) -> Result<()> {
    let PrefsArgs {
        env,
        policy,
        pairs,
        per_prompt,
        oracle_temperature,
        flip_rate,
        keep_ties,
        branch,
        out,
        seed,
        compute,
        overwrite,
    } = args;
    let dev = compute.device.resolve()?;
    let t = task(&env)?;
    commands::check_out(&out, &[("--policy", &policy)], overwrite, |_| false)?;
    let p =
        LmPolicy::load(&policy, dev)?.with_precision(compute.precision(dev, params_of(&policy)));
    let oracle = OracleConfig {
        temperature: oracle_temperature,
        flip_rate,
    };
    let sampling = SamplingConfig {
        max_new_tokens: t.max_new_tokens(),
        ..Default::default()
    };
    let (data, cost) = commands::build_prefs(
        &p,
        t.clone(),
        pairs,
        per_prompt,
        oracle,
        sampling,
        &policy.display().to_string(),
        !keep_ties,
        branch,
        seed,
    )?;
    write_pairs(&out, &data)?;
    crate::pipeline::write(&crate::pipeline::pairs_cost_path(&out), &cost)?;
    println!(
        "prefs: {} pairs ({} oracle queries, {:.1} s) written to {}",
        data.len(),
        cost.spent.oracle_queries,
        cost.wall_seconds,
        out.display()
    );
    Ok(())
}
