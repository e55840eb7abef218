//! `aligngym envs`: List the registered environments.

use aligngym_agents::Result;
use aligngym_envs::tasks;

/// `aligngym envs`.
pub fn run() -> Result<()> {
    println!(
        "{:<16} {:<14} {:<12} description",
        "id", "reward range", "feedback"
    );
    for t in tasks() {
        let (lo, hi) = t.gold().range();
        println!(
            "{:<16} {:<14} {:<12} {} ({})",
            t.id(),
            format!("[{lo}, {hi}]"),
            format!("{:?}", t.feedback()),
            t.description(),
            t.reward_kind()
        );
    }
    Ok(())
}
