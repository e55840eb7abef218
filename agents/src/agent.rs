//! The `Agent` interface every learner implements, and the budget it reports.

use crate::lm::optim::AdamW;
use crate::lm::policy::LmPolicy;
use crate::Result;
use aligngym_envs::RewardFn;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Named scalar metrics of one update (RLHF practitioners' names, e.g. `objective/kl`).
pub type Metrics = BTreeMap<String, f64>;

pub use crate::metric::Budget;

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
    /// For agents that act by selection rather than by training (best-of-n): each episode is the
    /// best of `n` the policy samples, by `reward`.
    fn selection(&self) -> Option<Selection<'_>> {
        None
    }
}

/// How a selecting agent acts: the best of `n` samples by a reward.
#[derive(Clone, Copy)]
pub struct Selection<'a> {
    /// Samples per episode.
    pub n: usize,
    /// The reward that picks (`None`: the env's gold reward).
    pub reward: Option<&'a dyn RewardFn>,
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

/// Training state on disk: named tensor groups in `<name>.safetensors` and scalars in `<name>.json`.
pub(crate) struct StateFile {
    tensors: Vec<(String, tch::Tensor)>,
}

impl StateFile {
    /// An empty state.
    pub(crate) fn new() -> Self {
        Self {
            tensors: Vec::new(),
        }
    }

    /// Add a group of tensors under `prefix` (copied to the CPU).
    pub(crate) fn add(&mut self, prefix: &str, group: Vec<(String, tch::Tensor)>) {
        self.tensors.extend(
            group
                .into_iter()
                .map(|(k, v)| (format!("{prefix}.{k}"), v.to_device(tch::Device::Cpu))),
        );
    }

    /// Write `<dir>/<name>.safetensors` and `<dir>/<name>.json`. Weights or optimiser moments that
    /// hold NaN or infinity are refused (the runner's NaN guard: such a state is never committed,
    /// the last good one is kept); the step is filled in by the runner.
    pub(crate) fn write(&self, dir: &Path, name: &str, scalars: &impl Serialize) -> Result<()> {
        for (k, t) in &self.tensors {
            if crate::lm::safetensors::finite(k, t, dir).is_err() {
                return Err(crate::AgentError::NonFinite {
                    metric: format!("weights {k}"),
                    step: 0,
                });
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| crate::AgentError::io(dir, e))?;
        tch::Tensor::write_safetensors(&self.tensors, dir.join(format!("{name}.safetensors")))?;
        let json = serde_json::to_string_pretty(scalars)
            .map_err(|e| crate::AgentError::Data(e.to_string()))?;
        let jp = dir.join(format!("{name}.json"));
        std::fs::write(&jp, json).map_err(|e| crate::AgentError::io(&jp, e))
    }

    /// Read a state written by [`StateFile::write`]: the tensors and the scalars.
    pub(crate) fn read<T: serde::de::DeserializeOwned>(
        dir: &Path,
        name: &str,
    ) -> Result<(Self, T, std::path::PathBuf)> {
        let path = dir.join(format!("{name}.safetensors"));
        let tensors = crate::lm::safetensors::read_safetensors(&path)?;
        let jp = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&jp).map_err(|e| crate::AgentError::io(&jp, e))?;
        let scalars = serde_json::from_str(&text).map_err(|e| crate::AgentError::Checkpoint {
            path: jp,
            msg: e.to_string(),
        })?;
        Ok((Self { tensors }, scalars, path))
    }

    /// The tensors of group `prefix`, names without the prefix.
    pub(crate) fn group(&self, prefix: &str) -> Vec<(String, tch::Tensor)> {
        let p = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&p)
                    .map(|s| (s.to_string(), v.shallow_clone()))
            })
            .collect()
    }
}

/// The scalars of a policy-trained agent's state beside its weights and optimiser.
#[derive(Debug, Serialize, Deserialize)]
struct PolicyState {
    budget: Budget,
}

/// Save an agent's policy weights (as the tensor group `group`), optimiser moments and budget
/// under `<dir>/<name>.*`: the whole state of DPO, KTO and the group agents.
pub(crate) fn save_policy_state(
    dir: &Path,
    name: &str,
    group: &str,
    policy: &LmPolicy,
    opt: &AdamW,
    budget: Budget,
) -> Result<()> {
    let mut st = StateFile::new();
    st.add(group, policy.state_variables());
    st.add("opt", opt.state());
    st.write(dir, name, &PolicyState { budget })
}

/// Restore what [`save_policy_state`] wrote; returns the budget.
pub(crate) fn load_policy_state(
    dir: &Path,
    name: &str,
    group: &str,
    policy: &mut LmPolicy,
    opt: &mut AdamW,
) -> Result<Budget> {
    let (st, s, path): (StateFile, PolicyState, _) = StateFile::read(dir, name)?;
    policy.load_state_variables(st.group(group), &path)?;
    opt.load_state(st.group("opt"))?;
    Ok(s.budget)
}
