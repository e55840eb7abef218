//! `aligngym train-rm`: Train a Bradley–Terry reward model on preference pairs.

use crate::commands::{self, params_of, Compute};
use aligngym_agents::{LmPolicy, Result, RmConfig};
use std::path::PathBuf;

/// The arguments of `aligngym train-rm`.
#[derive(clap::Args)]
pub struct TrainRmArgs {
    /// Preference JSONL (`prompt`, `chosen`, `rejected`).
    #[arg(long)]
    pub prefs: PathBuf,
    /// Policy checkpoint whose trunk initialises the reward model.
    #[arg(long)]
    pub init: PathBuf,
    /// Output reward-model directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Override a hyperparameter (learning_rate, batch_size, epochs, heldout_fraction,
    /// max_grad_norm; `lora.r=16` and the other `lora.` keys train LoRA adapters on the frozen
    /// trunk instead of every weight).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Seed for the split and the batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// `aligngym train-rm`.
pub fn run(args: TrainRmArgs) -> Result<()> {
    let TrainRmArgs {
        prefs,
        init,
        out,
        sets,
        seed,
        compute,
        overwrite,
    } = args;
    let dev = compute.device.resolve()?;
    let dtype = compute.precision(dev, params_of(&init));
    commands::check_out(
        &out,
        &[("--prefs", &prefs), ("--init", &init)],
        overwrite,
        |_| false,
    )?;
    let mut cfg = RmConfig::default();
    cfg = crate::spec::apply_overrides(
        &cfg,
        &sets,
        |v, k| {
            let path: Vec<String> = k.split('.').map(String::from).collect();
            path.iter()
                .try_fold(v, |at, p| at.get(p.as_str()))
                .map(|_| path)
        },
        |v| {
            v.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        },
    )?;
    cfg.validate()?;
    let pairs = aligngym_envs::read_pairs(&prefs)?;
    let p = LmPolicy::load(&init, dev)?.with_precision(dtype);
    let pairs_cost =
        crate::pipeline::read(&crate::pipeline::pairs_cost_path(&prefs))?.unwrap_or_default();
    let r = commands::train_rm(&p, &pairs, &pairs_cost, &cfg, seed, &out, false)?;
    let held = match r.heldout_accuracy {
        Some(a) => format!("{a:.3}"),
        None => "none (no pair held out: too few pairs for heldout_fraction)".into(),
    };
    println!(
        "train-rm: {} train / {} held-out pairs; pairwise accuracy train {:.3}, held-out {held}; offset {:.3}; saved to {}",
        r.pairs.0, r.pairs.1, r.train_accuracy, r.offset, out.display()
    );
    Ok(())
}
