//! REINFORCE++ (Hu 2025, arXiv 2501.03262), as OpenRLHF runs it: no critic and no group baseline
//! by default. The KL to the frozen reference is a per-token reward `−β kl_t`, the score is added
//! at the episode's last policy token, the return of each token is the sum of the rewards after
//! it (γ = 1), and the returns are whitened over every policy token of the batch — the batch is
//! the baseline. The `baseline` variant (OpenRLHF's `reinforce_baseline`) first subtracts the mean
//! score of the prompt's other samples, so it needs several samples per prompt.
//!
//! Per update, in named phases: **collect** `num_generations` completions for each of
//! `num_prompts` training prompts (the rollout collector, one turn or many) → **advantages**:
//! scores (minus the group mean with `baseline`), k1 KL per token, rewards-to-go, whitened →
//! **optimise**: `num_iterations` × `num_minibatches` clipped steps, the loss averaged over tokens
//! (OpenRLHF's token-level mean) → **budget**.

use crate::agent::{Agent, Metrics};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::online::{group_agent_accessors, group_agent_plumbing, GroupBatch, GroupCore, Steps};
use crate::losses::GrpoLoss;
use crate::losses::{gae, kl_per_token, shaped_rewards, whiten, KlEstimator};
use crate::lm::policy::LmPolicy;
use crate::rollout::RewardSignal;
use crate::agent::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::Task;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// REINFORCE++ hyperparameters (OpenRLHF's names and defaults unless stated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReinforcePpConfig {
    /// Adam learning rate. Default 1e-4: small models trained from scratch want rates far above
    /// the 5e-7 OpenRLHF's examples use at 7B scale.
    pub learning_rate: f64,
    /// Prompts per update. Default 16.
    pub num_prompts: usize,
    /// Samples per prompt. Default 4 (× 16 = 64 episodes, PPO's batch); OpenRLHF's plain
    /// REINFORCE++ samples 1, its baseline variant several.
    pub num_generations: usize,
    /// Subtract the mean score of the prompt's samples before the returns (`reinforce_baseline`).
    /// Default false (plain REINFORCE++).
    pub baseline: bool,
    /// β of the per-token KL reward `−β kl_t` (k1 estimator). Default 0.01 (OpenRLHF's
    /// REINFORCE++ examples).
    pub kl_coef: f64,
    /// Optimisation passes over each batch. Default 1.
    pub num_iterations: usize,
    /// Minibatches per pass (each a gradient step; they split whole prompt groups). Default 1.
    pub num_minibatches: usize,
    /// Ratio clip ε (binds only after the first step of a batch). Default 0.2.
    pub epsilon: f64,
    /// Sampling temperature (also used for the log-probs). Default 0.7, the temperature the
    /// shared evaluation samples at (as for the other online agents here).
    pub temperature: f64,
    /// Completion-length limit per turn; 0 uses the task's. Default 0.
    pub max_new_tokens: usize,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Adam ε. Default 1e-8.
    pub adam_eps: f64,
}

impl Default for ReinforcePpConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            num_prompts: 16,
            num_generations: 4,
            baseline: false,
            kl_coef: 0.01,
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

impl ReinforcePpConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        let pos = AgentError::positive;
        pos("learning_rate", self.learning_rate)?;
        pos("temperature", self.temperature)?;
        pos("epsilon", self.epsilon)?;
        pos("max_grad_norm", self.max_grad_norm)?;
        pos("adam_eps", self.adam_eps)?;
        if !(self.kl_coef >= 0.0 && self.kl_coef.is_finite()) {
            return Err(AgentError::config("kl_coef", "expected a finite value ≥ 0"));
        }
        if self.num_generations == 0 || (self.baseline && self.num_generations < 2) {
            return Err(AgentError::config(
                "num_generations",
                if self.baseline {
                    "expected ≥ 2 with baseline (the group mean is the others' scores too)"
                } else {
                    "expected > 0"
                },
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

impl Algorithm for ReinforcePpConfig {
    const NAME: &'static str = "reinforce_pp";
    const ABOUT: &'static str =
        "REINFORCE++: online, critic-free, token KL in the reward, batch-whitened returns";
    const LEARNS: Learns = Learns::Online;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let prior = ctx.prior_queries();
        let reward = (ctx.reward)()?;
        let agent = ReinforcePpAgent::new(self.clone(), ctx.task, ctx.policy, reward, ctx.seed)?;
        Ok(Box::new(agent.with_prior_oracle_queries(prior)))
    }
}

/// REINFORCE++ advantages `[B, N]`: per-token rewards `−β kl_t` plus `score [B]` at `score_pos
/// [B]`, summed from each token to the end of its row over the policy's tokens (γ = 1: GAE with
/// λ = 1 and no values), whitened over all policy tokens of the batch; 0 where `mask` is 0.
pub fn reinforce_pp_advantages(
    score: &Tensor,
    kl: &Tensor,
    score_pos: &Tensor,
    mask: &Tensor,
    beta: f64,
) -> Tensor {
    let rewards = shaped_rewards(kl, score, score_pos, mask, beta); // [B, N]
    let (returns, _) = gae(&rewards, &mask.zeros_like(), mask, 1.0, 1.0); // [B, N]
    whiten(&returns, mask)
}

/// Scores minus the mean score of their prompt's group (`g` consecutive rows per prompt).
pub fn minus_group_mean(score: &Tensor, g: i64) -> Tensor {
    let s = score.to_kind(Kind::Float).view([-1, g]); // [P, g]
    (&s - s.mean_dim(1, true, Kind::Float)).view([-1]) // [P·g]
}

/// The REINFORCE++ agent.
pub struct ReinforcePpAgent {
    cfg: ReinforcePpConfig,
    core: GroupCore,
}

impl ReinforcePpAgent {
    /// REINFORCE++ from `policy` (also the frozen reference when β > 0), optimising `reward` on
    /// `task`'s training prompts.
    pub fn new(
        cfg: ReinforcePpConfig,
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
            cfg.kl_coef > 0.0,
            cfg.adam_eps,
        )?;
        Ok(Self { cfg, core })
    }
}

group_agent_plumbing!(ReinforcePpAgent, "reinforce_pp_state");

impl Agent for ReinforcePpAgent {
    fn name(&self) -> &'static str {
        "reinforce_pp"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        let sampling = self.core.sampling(c.temperature, c.max_new_tokens);
        let max_len = sampling.max_new_tokens;
        // Phase 1: the episodes.
        let rollout = self.core.collect(step, &sampling)?;
        // Phase 2: token rewards, rewards-to-go, whitened over the batch.
        let score = self.core.rewards(&rollout, step, |_| 0.0)?; // [B]
        let g = c.num_generations as i64;
        let centred = if c.baseline {
            minus_group_mean(&score, g)
        } else {
            score.shallow_clone()
        }; // [B]
        let mask = rollout.seqs.mask.shallow_clone(); // [B, N]
        let kl = match self.core.reference_logprobs(&rollout, c.temperature) {
            Some(r) => kl_per_token(&rollout.logprobs, &r, &mask, KlEstimator::K1),
            None => mask.zeros_like(),
        }; // [B, N]
        let advantages =
            reinforce_pp_advantages(&centred, &kl, &rollout.score_pos, &mask, c.kl_coef); // [B, N]
        let seq_kl = kl.sum_dim_intlist(1, false, Kind::Float); // [B]
        let group_std = score.view([-1, g]).std_dim(1, true, false); // [P]
        let batch = GroupBatch {
            rollout,
            rewards: score.shallow_clone(),
            advantages,
            mask,
            ref_logp: None,
            group_std,
        };
        // Phase 3: clipped steps, a token-level mean (the KL is in the returns already).
        let steps = Steps {
            iterations: c.num_iterations,
            minibatches: c.num_minibatches,
            loss_type: GrpoLoss::Dapo,
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
        GroupCore::kl_in_reward_metrics(&mut m, &seq_kl, &score, c.kl_coef, step)?;
        Ok(m)
    }

    group_agent_accessors!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &[f32]) {
        let a: Vec<f32> = Vec::try_from(&a.flatten(0, -1)).unwrap();
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn returns_to_go_of_kl_and_score_whitened_by_hand() {
        // Row 0: three policy tokens, then padding; kl = [0.1, 0.2, 0.3], β = 1, score 1 at the
        // last policy token (2): rewards [−0.1, −0.2, 0.7], returns-to-go [0.4, 0.5, 0.7].
        // Row 1: two policy tokens with an env token between them (mask [1, 0, 1]), kl 0, score
        // −0.2 at position 2: returns [−0.2, 0, −0.2] (the env token is not a step).
        // Over the five policy tokens {0.4, 0.5, 0.7, −0.2, −0.2}: mean 0.24, unbiased variance
        // (0.0256 + 0.0676 + 0.2116 + 0.1936 + 0.1936) / 4 = 0.173, std 0.4159327;
        // whitened: 0.3846776, 0.6251011, 1.1059482, −1.0578635, −1.0578635.
        let kl = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]).view([2, 4]);
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]).view([2, 4]);
        let score = Tensor::from_slice(&[1.0f32, -0.2]);
        let pos = Tensor::from_slice(&[2i64, 2]);
        let a = reinforce_pp_advantages(&score, &kl, &pos, &mask, 1.0);
        close(
            &a,
            &[
                0.384_677_6,
                0.625_101_1,
                1.105_948_2,
                0.0,
                -1.057_863_5,
                0.0,
                -1.057_863_5,
                0.0,
            ],
        );
    }

    #[test]
    fn the_baseline_is_the_prompts_mean_score() {
        // Groups [1, 3] and [10, 14]: [−1, 1] and [−2, 2]; a constant added to a group cancels.
        let s = Tensor::from_slice(&[1.0f32, 3.0, 10.0, 14.0]);
        close(&minus_group_mean(&s, 2), &[-1.0, 1.0, -2.0, 2.0]);
        let shifted = Tensor::from_slice(&[101.0f32, 103.0, 10.0, 14.0]);
        close(&minus_group_mean(&shifted, 2), &[-1.0, 1.0, -2.0, 2.0]);
    }
}
