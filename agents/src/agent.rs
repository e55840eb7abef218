//! The `Agent` interface every learner implements, and the budget it reports.

use crate::policy::LmPolicy;
use crate::Result;
use aligngym_envs::RewardFn;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Named scalar metrics of one update (RLHF practitioners' names, e.g. `objective/kl`).
pub type Metrics = BTreeMap<String, f64>;

/// What a run has spent so far (the `budget/*` columns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Completions sampled for training.
    pub samples: u64,
    /// Tokens generated for training.
    pub tokens_generated: u64,
    /// Tokens passed through a gradient step.
    pub train_tokens: u64,
    /// Gold-reward or oracle evaluations used as training signal (preference labels, gold scores).
    pub oracle_queries: u64,
    /// Estimated floating-point operations (forward ×1, backward ×2).
    pub flops: f64,
}

/// A learner: each `update` collects what it needs and takes its optimisation step(s).
pub trait Agent {
    /// Short name (`ppo`, `dpo`).
    fn name(&self) -> &'static str;
    /// One update; `step` (0-based) seeds everything it draws, so runs resume exactly.
    fn update(&mut self, step: u64) -> Result<Metrics>;
    /// The policy being trained.
    fn policy(&self) -> &LmPolicy;
    /// Spending so far.
    fn budget(&self) -> Budget;
    /// The reward the agent optimises, for agents that have one (the `eval/proxy_reward` column).
    fn proxy_reward(&self) -> Option<&dyn RewardFn> {
        None
    }
}

/// Agents whose full training state (weights, optimiser, controllers, counters) can be saved and
/// restored, so a stopped run continues exactly.
pub trait Resumable {
    /// Write the state under `dir`.
    fn save_state(&self, dir: &Path) -> Result<()>;
    /// Restore a state written by `save_state`.
    fn load_state(&mut self, dir: &Path) -> Result<()>;
}

/// An agent the runner can drive: trainable and resumable.
pub trait RunnableAgent: Agent + Resumable {}
impl<T: Agent + Resumable> RunnableAgent for T {}
