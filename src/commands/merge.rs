//! `aligngym merge`: Fold a LoRA adapter into its base and write the merged model.

use crate::commands::{self};
use aligngym_agents::lm::lora;
use aligngym_agents::{AgentError, LmPolicy, Result};
use std::path::PathBuf;

/// The arguments of `aligngym merge`.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// A PEFT adapter directory (`adapter_config.json` naming a local base checkpoint, and
    /// `adapter_model.safetensors`): one PEFT saved, or a run's `policy/adapter`; a run directory
    /// stands for its `policy/adapter`.
    pub adapter: PathBuf,
    /// Output checkpoint directory (the Hugging Face layout, as the base's).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out (never an input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
}

/// `aligngym merge`.
pub fn run(args: MergeArgs) -> Result<()> {
    let MergeArgs {
        adapter,
        out,
        overwrite,
    } = args;
    let in_run = adapter
        .join("policy")
        .join(aligngym_agents::lm::policy::ADAPTER_DIR);
    let adapter = if !lora::is_adapter_dir(&adapter) && lora::is_adapter_dir(&in_run) {
        in_run
    } else {
        adapter
    };
    if !lora::is_adapter_dir(&adapter) {
        return Err(AgentError::Checkpoint {
            path: adapter,
            msg: format!("no {} (not a LoRA adapter)", lora::ADAPTER_CONFIG),
        });
    }
    let base = lora::read_adapter_config(&adapter)?.base;
    commands::check_out(
        &out,
        &[("ADAPTER", adapter.as_path()), ("its base", base.as_path())],
        overwrite,
        |_| false,
    )?;
    let policy = LmPolicy::load(&adapter, tch::Device::Cpu)?;
    let modules = policy.model.adapted_modules().len();
    policy.save(&out)?;
    println!(
        "merge: {modules} adapted projections folded into {}; merged model in {} (the adapter alone in its adapter/)",
        base.display(),
        out.display()
    );
    Ok(())
}
