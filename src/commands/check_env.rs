//! `aligngym check-env`: Check an environment against the API contract.

use aligngym_agents::Result;
use aligngym_envs::{check_chat_env, check_env, make, task, TextEnvConfig};
use std::sync::Arc;

/// The arguments of `aligngym check-env`.
#[derive(clap::Args)]
pub struct CheckEnvArgs {
    /// Environment id, e.g. sentiment-v0.
    pub id: String,
}

/// `aligngym check-env`.
pub fn run(args: CheckEnvArgs) -> Result<()> {
    let CheckEnvArgs { id } = args;
    let codec = Arc::new(aligngym_envs::ByteCodec);
    // The token-level env (for outside agents) and the turn-level one (what the agents train on).
    check_env(|| make(&id, codec.clone(), TextEnvConfig::default()))?;
    let t = task(&id)?;
    check_chat_env(t.clone())?;
    println!(
        "{id}: check_env passed (token level, and turn level with up to {} turn(s))",
        t.max_turns().max(1)
    );
    Ok(())
}
