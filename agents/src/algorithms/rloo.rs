//! RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics", arXiv
//! 2402.14740; Kool et al. 2019). No critic: each completion's baseline is the mean reward of the
//! other k − 1 completions of its prompt, and the KL to the frozen reference is folded into the
//! reward at the sequence level, as in the paper and TRL's `RLOOTrainer`.
//!
//! Per update, in named phases: **collect** k completions for each of `num_prompts` training
//! prompts through the rollout collector (the same group sampling as GRPO, `online/`) →
//! **advantages**: `r_i = R_i − β Σ_t (log π − log π_ref)` over the policy's tokens, then
//! `A_i = r_i − mean_{j≠i} r_j`, the same on every token of the completion (optionally whitened over
//! the batch) → **optimise**: `num_iterations` × `num_minibatches` clipped steps (one on-policy
//! step by default: plain REINFORCE), the loss averaged per sequence, then over sequences →
//! **budget**.

use crate::agent::{Agent, Metrics};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::online::{group_agent_accessors, group_agent_plumbing, GroupBatch, GroupCore, Steps};
use crate::losses::GrpoLoss;
use crate::lm::policy::LmPolicy;
use crate::rollout::RewardSignal;
use crate::agent::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::Task;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// RLOO hyperparameters (the paper's and TRL's names and defaults unless stated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlooConfig {
    /// Adam learning rate. Default 1e-4: small models trained from scratch want rates far above
    /// the 1e-6 TRL uses at 1B scale.
    pub learning_rate: f64,
    /// Prompts per update. Default 16 (× k = 64 completions, PPO's batch).
    pub num_prompts: usize,
    /// Completions per prompt, k. Default 4, the paper's best (TRL's default is 2).
    pub num_generations: usize,
    /// Weight β of the sequence-level KL folded into the reward. Default 0.05 (TRL).
    pub beta: f64,
    /// Whiten the advantages over the batch. Default false (TRL).
    pub normalize_advantages: bool,
    /// Optimisation passes over each batch. Default 1 (on-policy REINFORCE).
    pub num_iterations: usize,
    /// Minibatches per pass (each a gradient step; they split whole groups). Default 1.
    pub num_minibatches: usize,
    /// Ratio clip ε (binds only off-policy: after the first step of a batch). Default 0.2.
    pub epsilon: f64,
    /// Sampling temperature (also used for the log-probs). Default 0.7, the temperature the
    /// shared evaluation samples at (as for PPO and GRPO here).
    pub temperature: f64,
    /// Completion-length limit per turn; 0 uses the task's. Default 0.
    pub max_new_tokens: usize,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Adam ε. Default 1e-8.
    pub adam_eps: f64,
}

impl Default for RlooConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            num_prompts: 16,
            num_generations: 4,
            beta: 0.05,
            normalize_advantages: false,
            num_iterations: 1,
            num_minibatches: 1,
            epsilon: 0.2,
            temperature: 0.7,
            max_new_tokens: 0,
            max_grad_norm: 1.0,
            adam_eps: 1e-8,
        }
    }
}

impl RlooConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        let pos = AgentError::positive;
        pos("learning_rate", self.learning_rate)?;
        pos("temperature", self.temperature)?;
        pos("epsilon", self.epsilon)?;
        pos("max_grad_norm", self.max_grad_norm)?;
        pos("adam_eps", self.adam_eps)?;
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(AgentError::config("beta", "expected a finite value ≥ 0"));
        }
        if self.num_generations < 2 {
            return Err(AgentError::config(
                "num_generations",
                "expected ≥ 2 (the baseline is the other completions' mean)",
            ));
        }
        if self.num_prompts == 0 || self.num_iterations == 0 || self.num_minibatches == 0 {
            return Err(AgentError::config(
                "num_prompts/num_iterations/num_minibatches",
                "expected > 0",
            ));
        }
        if !self.num_prompts.is_multiple_of(self.num_minibatches) {
            return Err(AgentError::config(
                "num_minibatches",
                format!("must divide num_prompts {}", self.num_prompts),
            ));
        }
        Ok(())
    }
}

impl Algorithm for RlooConfig {
    const NAME: &'static str = "rloo";
    const ABOUT: &'static str =
        "RLOO: online, critic-free, leave-one-out baseline, KL in the reward";
    const LEARNS: Learns = Learns::Online;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let prior = ctx.prior_queries();
        let reward = (ctx.reward)()?;
        let agent = RlooAgent::new(self.clone(), ctx.task, ctx.policy, reward, ctx.seed)?;
        Ok(Box::new(agent.with_prior_oracle_queries(prior)))
    }
}

/// Leave-one-out advantages of `rewards [P·k]` (k consecutive completions per prompt):
/// `A_i = r_i − (Σ_{j≠i} r_j) / (k − 1)`, which is `k / (k − 1) · (r_i − mean r)`.
pub fn loo_advantages(rewards: &Tensor, k: i64) -> Tensor {
    let r = rewards.to_kind(Kind::Float).view([-1, k]); // [P, k]
    let others = (r.sum_dim_intlist(1, true, Kind::Float) - &r) / (k - 1) as f64; // [P, k]
    (r - others).view([-1]) // [P·k]
}

/// The RLOO agent.
pub struct RlooAgent {
    cfg: RlooConfig,
    core: GroupCore,
}

impl RlooAgent {
    /// RLOO from `policy` (also the frozen reference when β > 0), optimising `reward` on `task`'s
    /// training prompts.
    pub fn new(
        cfg: RlooConfig,
        task: Arc<dyn Task>,
        policy: LmPolicy,
        reward: RewardSignal,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        let core = GroupCore::new(
            task,
            policy,
            reward,
            seed,
            (cfg.num_prompts, cfg.num_generations),
            cfg.beta > 0.0,
            cfg.adam_eps,
        )?;
        Ok(Self { cfg, core })
    }
}

group_agent_plumbing!(RlooAgent, "rloo_state");

impl Agent for RlooAgent {
    fn name(&self) -> &'static str {
        "rloo"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        let sampling = self.core.sampling(c.temperature, c.max_new_tokens);
        let max_len = sampling.max_new_tokens;
        // Phase 1: k completions per prompt.
        let rollout = self.core.collect(step, &sampling)?;
        // Phase 2: the score, minus β × the sequence KL, minus the others' mean.
        let score = self.core.rewards(&rollout, step, |_| 0.0)?; // [B]
        let mask = rollout.seqs.mask.shallow_clone(); // [B, N]
        let seq_kl = match self.core.reference_logprobs(&rollout, c.temperature) {
            Some(r) => ((&rollout.logprobs - r) * &mask).sum_dim_intlist(1, false, Kind::Float),
            None => score.zeros_like(),
        }; // [B]
        let rewards = &score - c.beta * &seq_kl; // [B]
        let k = c.num_generations as i64;
        let mut advantages = loo_advantages(&rewards, k); // [B]
        if c.normalize_advantages {
            let std = advantages.std(true).clamp_min(1e-8);
            advantages = (&advantages - advantages.mean(Kind::Float)) / std;
        }
        let group_std = rewards.view([-1, k]).std_dim(1, true, false); // [P]
        let batch = GroupBatch {
            rollout,
            rewards,
            advantages,
            mask,
            ref_logp: None,
            group_std,
        };
        // Phase 3: the clipped surrogate, per-sequence means (the KL is already in the reward).
        let steps = Steps {
            iterations: c.num_iterations,
            minibatches: c.num_minibatches,
            loss_type: GrpoLoss::Grpo,
            eps: (c.epsilon, c.epsilon),
            beta: 0.0,
            max_len: max_len as i64,
            learning_rate: c.learning_rate,
            max_grad_norm: c.max_grad_norm,
            temperature: c.temperature,
        };
        let st = self.core.optimise(&batch, &steps, step)?;
        let mut m = self
            .core
            .finish(&batch, &st, c.num_iterations, c.learning_rate, step)?;
        GroupCore::kl_in_reward_metrics(&mut m, &seq_kl, &score, c.beta, step)?;
        Ok(m)
    }

    group_agent_accessors!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_leaves_each_completion_out() {
        // Group [1, 2, 6]: A_0 = 1 − (2 + 6)/2 = −3, A_1 = 2 − 3.5 = −1.5, A_2 = 6 − 1.5 = 4.5;
        // group [0, 0, 3]: −1.5, −1.5, 3.
        let r = Tensor::from_slice(&[1.0f32, 2.0, 6.0, 0.0, 0.0, 3.0]);
        let a: Vec<f32> = Vec::try_from(&loo_advantages(&r, 3)).unwrap();
        assert_eq!(a, vec![-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]);
        // k = 2: each completion against the other, ±(r_0 − r_1).
        let r = Tensor::from_slice(&[0.25f32, 1.0]);
        let a: Vec<f32> = Vec::try_from(&loo_advantages(&r, 2)).unwrap();
        assert_eq!(a, vec![-0.75, 0.75]);
    }
}
