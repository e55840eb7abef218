//! GRPO and its variants: Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath,
//! arXiv 2402.03300), Dr. GRPO (Liu et al. 2025, arXiv 2503.20783) and DAPO (Yu et al. 2025, arXiv
//! 2503.14476), with TRL 1.x's `GRPOTrainer` defaults and metric names. No critic: the baseline of a
//! completion is the mean reward of the other completions of its prompt.
//!
//! Per update, in named phases: **collect** G completions for each of `num_prompts` training
//! prompts through the rollout collector (one turn or many) → **advantages**: the episode's reward
//! (plus DAPO's soft overlong penalty), minus its group's mean, divided by the group's standard
//! deviation (`grpo`, `dapo`; not `dr_grpo`), the same on every policy token; with dynamic sampling
//! the groups whose rewards are all equal are dropped → **optimise**: `num_iterations` ×
//! `num_minibatches` steps of the clipped surrogate (ε_low, ε_high: DAPO's clip-higher), plus β ×
//! k3 KL to the frozen reference when β > 0, normalised per `loss_type` → **budget**.

use crate::agent::{Agent, Metrics, RunnableAgent};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::lm::policy::LmPolicy;
use crate::losses::GrpoLoss;
use crate::online::{group_agent_accessors, group_agent_plumbing, GroupBatch, GroupCore, Steps};
use crate::rollout::{RewardSignal, Rollout};
use crate::{AgentError, Result};
use aligngym_envs::Task;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Kind, Tensor};


/// GRPO hyperparameters (TRL's names and defaults unless stated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Adam learning rate. Default 1e-4: small models trained from scratch want rates far above
    /// the 1e-6 TRL uses at 1B scale.
    pub learning_rate: f64,
    /// Prompts per update. Default 8 (× `num_generations` = 64 completions, PPO's batch).
    pub num_prompts: usize,
    /// Completions per prompt, G. Default 8.
    pub num_generations: usize,
    /// Optimisation passes over each batch, μ. Default 1 (on-policy: the ratio starts at 1).
    pub num_iterations: usize,
    /// Minibatches per pass (each a gradient step; they split whole groups). Default 1.
    pub num_minibatches: usize,
    /// Loss normalisation (and advantage scaling). Default `dapo`.
    pub loss_type: GrpoLoss,
    /// Lower clip ε_low of the ratio. Default 0.2.
    pub epsilon: f64,
    /// Upper clip ε_high; unset means 0.28 with `dapo` (clip-higher) and `epsilon` otherwise.
    pub epsilon_high: Option<f64>,
    /// Weight β of the k3 KL to the frozen reference. Default 0 (TRL): no reference pass at all.
    pub beta: f64,
    /// Drop the groups whose rewards are all equal from the loss (DAPO's dynamic sampling, without
    /// re-sampling). Default false.
    pub dynamic_sampling: bool,
    /// DAPO's soft overlong penalty: completions within this many tokens of `max_new_tokens` lose
    /// up to `overlong_penalty` linearly. Default 0 (off).
    pub overlong_buffer: usize,
    /// The penalty at the length limit. Default 1.0.
    pub overlong_penalty: f64,
    /// Sampling temperature (also used for the log-probs). Default 0.7, the temperature the
    /// shared evaluation samples at (and PPO's here); TRL's 1.0 learned half as much on
    /// `guess-number-v0` in 40 updates (gold 0.29 → 0.33 against 0.29 → 0.65).
    pub temperature: f64,
    /// Completion-length limit per turn; 0 uses the task's. Default 0.
    pub max_new_tokens: usize,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Adam ε. Default 1e-8.
    pub adam_eps: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            num_prompts: 8,
            num_generations: 8,
            num_iterations: 1,
            num_minibatches: 1,
            loss_type: GrpoLoss::Dapo,
            epsilon: 0.2,
            epsilon_high: None,
            beta: 0.0,
            dynamic_sampling: false,
            overlong_buffer: 0,
            overlong_penalty: 1.0,
            temperature: 0.7,
            max_new_tokens: 0,
            max_grad_norm: 1.0,
            adam_eps: 1e-8,
        }
    }
}

impl GrpoConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        let pos = AgentError::positive;
        pos("learning_rate", self.learning_rate)?;
        pos("temperature", self.temperature)?;
        pos("epsilon", self.epsilon)?;
        pos("epsilon_high", self.eps_high())?;
        pos("max_grad_norm", self.max_grad_norm)?;
        pos("adam_eps", self.adam_eps)?;
        if self.num_generations < 2 {
            return Err(AgentError::config(
                "num_generations",
                "expected ≥ 2 (a group baseline needs other completions)",
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
        let non_negative = |v: f64| v >= 0.0 && v.is_finite();
        if !non_negative(self.beta) || !non_negative(self.overlong_penalty) {
            return Err(AgentError::config(
                "beta/overlong_penalty",
                "expected finite values ≥ 0",
            ));
        }
        Ok(())
    }

    /// The upper clip in effect.
    pub fn eps_high(&self) -> f64 {
        match (self.epsilon_high, self.loss_type) {
            (Some(e), _) => e,
            (None, GrpoLoss::Dapo) => 0.28,
            (None, _) => self.epsilon,
        }
    }
}

impl Algorithm for GrpoConfig {
    const NAME: &'static str = "grpo";
    const ABOUT: &'static str =
        "GRPO (and Dr. GRPO, DAPO): online, critic-free, group-relative advantages";
    const LEARNS: Learns = Learns::Online;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let prior = ctx.prior_queries();
        let reward = (ctx.reward)()?;
        let agent = GrpoAgent::new(self.clone(), ctx.task, ctx.policy, reward, ctx.seed)?;
        Ok(Box::new(agent.with_prior_oracle_queries(prior)))
    }
}

/// Group-relative advantages of `rewards [P·G]` (G consecutive completions per prompt): `r − mean`
/// of the group, divided by the group's unbiased std + 1e-4 when `scale` (TRL's form). Also returns
/// each group's std `[P]`.
pub fn group_advantages(rewards: &Tensor, g: i64, scale: bool) -> (Tensor, Tensor) {
    let r = rewards.to_kind(Kind::Float).view([-1, g]); // [P, G]
    let mean = r.mean_dim(1, true, Kind::Float); // [P, 1]
    let std = r.std_dim(1, true, true); // [P, 1]
    let centred = &r - &mean; // [P, G]
    let adv = if scale {
        centred / (&std + 1e-4)
    } else {
        centred
    };
    (adv.view([-1]), std.view([-1]))
}

/// DAPO's soft overlong penalty for a completion of `len` tokens under a limit of `max_len`:
/// 0 up to `max_len − buffer`, then falling linearly to `−penalty` at `max_len`.
pub fn overlong_penalty(len: usize, max_len: usize, buffer: usize, penalty: f64) -> f64 {
    let free = max_len.saturating_sub(buffer);
    if buffer == 0 || len <= free {
        0.0
    } else {
        -penalty * ((len - free) as f64 / buffer as f64).min(1.0)
    }
}

/// The GRPO agent.
pub struct GrpoAgent {
    cfg: GrpoConfig,
    core: GroupCore,
}

impl GrpoAgent {
    /// GRPO from `policy` (also the frozen reference when β > 0), optimising `reward` on `task`'s
    /// training prompts.
    pub fn new(
        cfg: GrpoConfig,
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

    /// Phase 2: rewards (with the overlong penalty), group-relative advantages, dropped groups,
    /// reference log-probs when β > 0.
    fn advantages(&self, rollout: Rollout, step: u64) -> Result<GroupBatch> {
        let c = &self.cfg;
        let max_len = self.core.max_new_tokens(c.max_new_tokens);
        let rewards = self.core.rewards(&rollout, step, |e| {
            // Per turn: the mean length of the policy's turns.
            let len = e.policy.iter().filter(|&&p| p).count() / e.policy_turns.max(1);
            overlong_penalty(len, max_len, c.overlong_buffer, c.overlong_penalty)
        })?; // [B]
        let g = c.num_generations as i64;
        let scale = c.loss_type != GrpoLoss::DrGrpo;
        let (adv, group_std) = group_advantages(&rewards, g, scale); // [B], [P]
        let (advantages, mask) = if c.dynamic_sampling {
            let keep = group_std
                .gt(0.0)
                .to_kind(Kind::Float)
                .repeat_interleave_self_int(g, 0, None); // [B]
            (&adv * &keep, &rollout.seqs.mask * keep.unsqueeze(1)) // [B], [B, N]
        } else {
            (adv, rollout.seqs.mask.shallow_clone())
        };
        let ref_logp = self.core.reference_logprobs(&rollout, c.temperature); // [B, N]
        Ok(GroupBatch {
            rollout,
            rewards,
            advantages,
            mask,
            ref_logp,
            group_std,
        })
    }
}

group_agent_plumbing!(GrpoAgent, "grpo_state");

impl Agent for GrpoAgent {
    fn name(&self) -> &'static str {
        "grpo"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        let sampling = self.core.sampling(c.temperature, c.max_new_tokens);
        let max_len = sampling.max_new_tokens;
        let rollout = self.core.collect(step, &sampling)?;
        let batch = self.advantages(rollout, step)?;
        let steps = Steps {
            iterations: c.num_iterations,
            minibatches: c.num_minibatches,
            loss_type: c.loss_type,
            eps: (c.epsilon, c.eps_high()),
            beta: c.beta,
            max_len: max_len as i64,
            learning_rate: c.learning_rate,
            max_grad_norm: c.max_grad_norm,
            temperature: c.temperature,
        };
        let st = self.core.optimise(&batch, &steps, step)?;
        self.core
            .finish(&batch, &st, c.num_iterations, c.learning_rate, step)
    }

    group_agent_accessors!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn close(x: &Tensor, want: f64) {
        let got = x.double_value(&[]);
        assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
    }

    #[test]
    fn the_group_baseline_is_per_prompt() {
        // Two prompts whose rewards differ by a constant: identical advantages.
        let r = t(&[0.0, 1.0, 2.0, 5.0, 6.0, 7.0], &[6]);
        let (adv, std) = group_advantages(&r, 3, true);
        let a: Vec<f32> = Vec::try_from(&adv).unwrap();
        // Group [0, 1, 2]: mean 1, unbiased std 1 → (r − 1) / (1 + 1e-4).
        let s = 1.0 / (1.0 + 1e-4);
        for (got, want) in a.iter().zip([-s, 0.0, s, -s, 0.0, s]) {
            assert!((*got as f64 - want).abs() < 1e-6, "{a:?}");
        }
        close(&std.get(0), 1.0);
        close(&std.get(1), 1.0);
        // Unscaled (Dr. GRPO): only centred.
        let (adv, _) = group_advantages(&t(&[1.0, 3.0], &[2]), 2, false);
        assert_eq!(Vec::<f32>::try_from(&adv).unwrap(), vec![-1.0, 1.0]);
    }

    #[test]
    fn overlong_penalty_is_linear_inside_the_buffer() {
        assert_eq!(overlong_penalty(10, 20, 4, 1.0), 0.0);
        assert_eq!(overlong_penalty(16, 20, 4, 1.0), 0.0);
        assert_eq!(overlong_penalty(17, 20, 4, 1.0), -0.25);
        assert_eq!(overlong_penalty(20, 20, 4, 2.0), -2.0);
        assert_eq!(overlong_penalty(20, 20, 0, 1.0), 0.0);
    }
}
