//! A test-only algorithm that shows what adding one takes: this file and its registry line in
//! `algorithms/mod.rs` (`architecture.rs` counts them). It is plain REINFORCE (Williams 1992) with
//! the batch's mean reward as its baseline, one on-policy step per update, on the online core.

use crate::agent::{Agent, Metrics, RunnableAgent};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::losses::GrpoLoss;
use crate::online::{group_agent_accessors, group_agent_plumbing, GroupBatch, GroupCore, Steps};
use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use tch::Kind;

/// The toy's hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToyConfig {
    /// Adam learning rate. Default 1e-4.
    pub learning_rate: f64,
    /// Episodes per update. Default 8.
    pub num_prompts: usize,
    /// Sampling temperature. Default 1.0.
    pub temperature: f64,
}

impl Default for ToyConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            num_prompts: 8,
            temperature: 1.0,
        }
    }
}

impl Algorithm for ToyConfig {
    const NAME: &'static str = "toy";
    const ABOUT: &'static str = "REINFORCE with a batch-mean baseline (a test-only example)";
    const LEARNS: Learns = Learns::Online;
    fn check(&self) -> Result<()> {
        if self.num_prompts < 2 {
            return Err(AgentError::config("num_prompts", "must be at least 2"));
        }
        Ok(())
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let reward = (ctx.reward)()?;
        let core = GroupCore::new(
            ctx.task,
            ctx.policy,
            reward,
            ctx.seed,
            (self.num_prompts, 1),
            false,
            1e-8,
        )?;
        Ok(Box::new(ToyAgent {
            cfg: self.clone(),
            core,
        }))
    }
}

/// The toy agent.
pub struct ToyAgent {
    cfg: ToyConfig,
    core: GroupCore,
}

group_agent_plumbing!(ToyAgent, "toy_state");

impl Agent for ToyAgent {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        let sampling = self.core.sampling(c.temperature, 0);
        let rollout = self.core.collect(step, &sampling)?;
        let rewards = self.core.rewards(&rollout, step, |_| 0.0)?; // [B]
        let advantages = &rewards - rewards.mean(Kind::Float); // [B]
        let mask = rollout.seqs.mask.shallow_clone(); // [B, N]
        let batch = GroupBatch {
            rollout,
            group_std: rewards.zeros_like(),
            rewards,
            advantages,
            mask,
            ref_logp: None,
        };
        let steps = Steps {
            iterations: 1,
            minibatches: 1,
            loss_type: GrpoLoss::Grpo,
            eps: (0.2, 0.2),
            beta: 0.0,
            max_len: sampling.max_new_tokens as i64,
            learning_rate: c.learning_rate,
            max_grad_norm: 1.0,
            temperature: c.temperature,
        };
        let st = self.core.optimise(&batch, &steps, step)?;
        self.core.finish(&batch, &st, 1, c.learning_rate, step)
    }

    group_agent_accessors!();
}
