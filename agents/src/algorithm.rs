//! What every algorithm provides so that the CLI, `config.json`, sweeps and Slurm jobs know it: a
//! name, what it learns from, how to check its config and how to build its agent. An algorithm's
//! file implements [`Algorithm`] for its config struct; the registry in `algorithms/mod.rs`
//! (`algorithms!`) lists each once.

use crate::agent::RunnableAgent;
use crate::lm::policy::LmPolicy;
use crate::rollout::RewardSignal;
use crate::{AgentError, Result};
use aligngym_envs::Task;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// What an algorithm learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learns {
    /// Rollouts scored by a reward: the env's gold reward or a reward model (`--reward`).
    Online,
    /// A preference (or unpaired) data file (`--prefs`).
    Offline,
}

/// Everything building an agent needs besides its config.
pub struct BuildContext<'a> {
    /// The task.
    pub task: Arc<dyn Task>,
    /// The starting policy (the evaluator keeps its own copy as the reference).
    pub policy: LmPolicy,
    /// The reward of an online agent, made on demand (offline agents never load a reward model).
    pub reward: &'a dyn Fn() -> Result<RewardSignal>,
    /// Whether `reward` is a learned reward model rather than the env's gold reward.
    pub learned_reward: bool,
    /// The preference file of an offline agent.
    pub prefs: Option<&'a Path>,
    /// Oracle queries behind the preference file, or behind the reward model's training pairs.
    pub prefs_queries: Option<u64>,
    /// Updates the run will make (offline agents size their schedules by it).
    pub updates: usize,
    /// The run's seed.
    pub seed: u64,
}

impl BuildContext<'_> {
    /// Oracle queries an online agent starts with: a reward model's labels count as its queries.
    pub fn prior_queries(&self) -> u64 {
        if self.learned_reward {
            self.prefs_queries.unwrap_or(0)
        } else {
            0
        }
    }

    /// The preference file, or one line saying that `name` needs one.
    pub fn prefs_file(&self, name: &str, what: &str) -> Result<&Path> {
        self.prefs.ok_or_else(|| {
            AgentError::config("prefs", format!("{name} needs --prefs FILE ({what})"))
        })
    }
}

/// An algorithm, implemented by its config struct.
pub trait Algorithm: Serialize + DeserializeOwned + Default + Clone + PartialEq {
    /// Its name: `--agent NAME`, `agent = "NAME"` in a sweep spec, the `"NAME": {…}` section of
    /// `config.json`, the prefix of `--set` keys.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// What it learns from.
    const LEARNS: Learns;
    /// Whether its updates change the policy. An algorithm that only selects among samples
    /// (best-of-n) does not: its place on the gold-vs-KL frontier is set by its config, not by
    /// its updates, so plots and reports draw it as one point per config rather than a curve.
    const TRAINS: bool = true;
    /// Check the config's ranges: one line naming the field.
    fn check(&self) -> Result<()>;
    /// The agent.
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>>;
}
