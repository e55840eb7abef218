//! `aligngym eval`: Evaluate a policy on an env's held-out prompts against a reference.

use crate::commands::{params_of, Compute};
use crate::eval::{EvalConfig, Evaluator};
use aligngym_agents::{LmPolicy, Result};
use aligngym_envs::task;
use std::path::PathBuf;

/// The arguments of `aligngym eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Environment id.
    #[arg(long)]
    pub env: String,
    /// Policy checkpoint.
    #[arg(long)]
    pub policy: PathBuf,
    /// Reference policy checkpoint (for KL and win rate).
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
    /// Seed of the evaluation's sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// `aligngym eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let EvalArgs {
        env,
        policy,
        reference,
        seed,
        compute,
    } = args;
    let dev = compute.device.resolve()?;
    let dtype = compute.precision(dev, params_of(&policy));
    let t = task(&env)?;
    let p = LmPolicy::load(&policy, dev)?.with_precision(dtype);
    let r = match &reference {
        Some(d) => LmPolicy::load(d, dev)?.with_precision(dtype),
        None => p.duplicate(false)?,
    };
    let ev = Evaluator::new(t.clone(), &r, EvalConfig::default(), seed)?;
    for (k, v) in ev.evaluate(&p, None, None, 0)? {
        println!("{k:<24} {v:.4}");
    }
    Ok(())
}
