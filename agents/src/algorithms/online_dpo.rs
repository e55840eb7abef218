//! Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv
//! 2402.04792; TRL's `OnlineDPOTrainer`): each update samples two fresh completions per prompt from
//! the current policy, lets the judge — the higher score of the run's reward (the gold reward or a
//! reward model), or the simulated rater (a Bradley–Terry preference over the gold reward, as TRL's
//! pairwise judges give one) — pick the better, and takes one step of a DPO-family loss (any
//! `loss_type` of offline DPO) on those pairs.
//!
//! Per update, in named phases: **collect** 2 completions for each of `num_prompts` training
//! prompts through the rollout collector (one turn or many) → **judge**: the higher score is
//! chosen; exact ties carry no preference and are left out → **optimise**: summed log-probs of
//! both under the policy (and the frozen reference, unless the loss needs none), the loss, one
//! gradient step → **budget**.

use crate::metric;
use crate::scalars::host_scalars;
use crate::agent::{Agent, Metrics};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::online::{group_agent_accessors, group_agent_plumbing, GroupBatch, GroupCore, StepStats};
use crate::losses::{dpo_loss, masked_mean, DpoLoss, DpoLossParams, PairScores};
use crate::lm::policy::LmPolicy;
use crate::rollout::RewardSignal;
use crate::lm::sampling::{sequence_outputs, EntropyGrad};
use crate::agent::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::{oracle::preference_probability, OracleConfig, Task};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Who decides which of a prompt's two completions is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Judge {
    /// The run's reward (`--reward`: gold or a reward model): the higher score; exact ties carry
    /// no preference.
    #[default]
    Reward,
    /// The simulated rater: a preference sampled from Bradley–Terry over the env's gold reward
    /// (`judge_temperature`), flipped at `judge_flip_rate`: one comparison per pair, as the
    /// preference stage's oracle. The judge for envs that show agents preferences only.
    Oracle,
}

/// Online DPO hyperparameters (TRL's names; the loss knobs are offline DPO's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnlineDpoConfig {
    /// Adam learning rate. Default 1e-4 (as offline DPO here: small models from scratch want far
    /// more than TRL's 5e-7).
    pub learning_rate: f64,
    /// Prompts per update, each sampled twice. Default 32 (64 completions, PPO's batch).
    pub num_prompts: usize,
    /// β. Default 0.1 (TRL).
    pub beta: f64,
    /// The loss, as offline DPO's `loss_type`. Default sigmoid.
    pub loss_type: DpoLoss,
    /// ε of conservative (sigmoid) and robust DPO. Default 0.
    pub label_smoothing: f64,
    /// SimPO's γ. Default 0.5.
    pub simpo_gamma: f64,
    /// RPO's α (0: off). Default 0.
    pub rpo_alpha: f64,
    /// Sampling temperature. Default 0.7, the evaluation's (TRL samples at 0.9).
    pub temperature: f64,
    /// Completion-length limit per turn; 0 uses the task's. Default 0.
    pub max_new_tokens: usize,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Adam ε. Default 1e-8.
    pub adam_eps: f64,
    /// `reward` (default) or `oracle`.
    pub judge: Judge,
    /// The oracle judge's τ in P(a ≻ b) = σ((R(a) − R(b))/τ). Default 0.1, the preference stage's.
    pub judge_temperature: f32,
    /// The oracle judge's label-flip rate (rater noise). Default 0.
    pub judge_flip_rate: f32,
}

impl Default for OnlineDpoConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            num_prompts: 32,
            beta: 0.1,
            loss_type: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            rpo_alpha: 0.0,
            temperature: 0.7,
            max_new_tokens: 0,
            max_grad_norm: 1.0,
            adam_eps: 1e-8,
            judge: Judge::Reward,
            judge_temperature: OracleConfig::default().temperature,
            judge_flip_rate: 0.0,
        }
    }
}

impl OnlineDpoConfig {
    /// The loss's parameters.
    pub fn loss_params(&self) -> DpoLossParams {
        DpoLossParams {
            beta: self.beta,
            loss: self.loss_type,
            label_smoothing: self.label_smoothing,
            simpo_gamma: self.simpo_gamma,
            rpo_alpha: self.rpo_alpha,
        }
    }

    /// Check the ranges (the loss's as offline DPO checks them).
    pub fn validate(&self) -> Result<()> {
        AgentError::positive("learning_rate", self.learning_rate)?;
        self.loss_params().check()?;
        let pos = AgentError::positive;
        pos("temperature", self.temperature)?;
        pos("max_grad_norm", self.max_grad_norm)?;
        pos("adam_eps", self.adam_eps)?;
        if self.num_prompts == 0 {
            return Err(AgentError::config("num_prompts", "expected > 0"));
        }
        if !(self.judge_temperature.is_finite() && self.judge_temperature >= 0.0) {
            return Err(AgentError::config(
                "judge_temperature",
                "expected a finite value ≥ 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.judge_flip_rate) {
            return Err(AgentError::config(
                "judge_flip_rate",
                "expected a value in [0, 1]",
            ));
        }
        Ok(())
    }
}

impl Algorithm for OnlineDpoConfig {
    const NAME: &'static str = "online_dpo";
    const ABOUT: &'static str =
        "Online DPO: two fresh samples per prompt, judged by the reward, a DPO-family loss";
    const LEARNS: Learns = Learns::Online;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let prior = ctx.prior_queries();
        // The oracle judge is the env's rater: it compares on the gold reward, which agents never
        // see as a score (so preference-only envs allow it).
        let signal = match self.judge {
            Judge::Oracle if ctx.learned_reward => {
                return Err(AgentError::config(
                    "judge",
                    "the oracle judge compares on the env's gold reward: leave --reward at gold (or judge=reward to judge by the reward model)",
                ))
            }
            Judge::Oracle => RewardSignal::Gold,
            Judge::Reward => (ctx.reward)()?,
        };
        let agent = OnlineDpoAgent::new(self.clone(), ctx.task, ctx.policy, signal, ctx.seed)?;
        Ok(Box::new(agent.with_prior_oracle_queries(prior)))
    }
}

/// The judge's verdict on `scores [2P]` (two consecutive completions per prompt): the rows of the
/// chosen and rejected completions `[P]` (i64) and whether the pair carries a preference `[P]`
/// (f32: 0 on an exact tie).
pub fn judge_pairs(scores: &Tensor) -> (Tensor, Tensor, Tensor) {
    let s = scores.view([-1, 2]); // [P, 2]
    let p = s.size()[0];
    let second = s
        .select(1, 1)
        .gt_tensor(&s.select(1, 0))
        .to_kind(Kind::Int64); // [P]
    let base = Tensor::arange(p, (Kind::Int64, scores.device())) * 2; // [P]
    let chosen = &base + &second;
    let rejected = &base + 1 - &second;
    let decided = s
        .select(1, 0)
        .ne_tensor(&s.select(1, 1))
        .to_kind(Kind::Float); // [P]
    (chosen, rejected, decided)
}

/// The oracle judge on gold `scores` (two consecutive completions per prompt): per pair, the first
/// wins with P = σ((R₀ − R₁)/τ) after label flips at `flip_rate` (τ = 0: the higher, ties by a
/// fair coin); `(chosen, rejected)` row indices. Every pair gets a preference.
pub fn oracle_judge(
    scores: &[f32],
    temperature: f32,
    flip_rate: f32,
    rng: &mut impl Rng,
) -> (Vec<i64>, Vec<i64>) {
    scores
        .chunks(2)
        .enumerate()
        .map(|(i, s)| {
            let first =
                rng.random::<f32>() < preference_probability(s[0] - s[1], temperature, flip_rate);
            let (a, b) = (2 * i as i64, 2 * i as i64 + 1);
            if first {
                (a, b)
            } else {
                (b, a)
            }
        })
        .unzip()
}

/// The online DPO agent.
pub struct OnlineDpoAgent {
    cfg: OnlineDpoConfig,
    core: GroupCore,
}

impl OnlineDpoAgent {
    /// Online DPO from `policy` (also the frozen reference, unless the loss needs none), judged
    /// by `reward` on `task`'s training prompts.
    pub fn new(
        cfg: OnlineDpoConfig,
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
            (cfg.num_prompts, 2),
            cfg.loss_type.needs_reference(),
            cfg.adam_eps,
        )?;
        Ok(Self { cfg, core })
    }
}

group_agent_plumbing!(OnlineDpoAgent, "online_dpo_state");

impl Agent for OnlineDpoAgent {
    fn name(&self) -> &'static str {
        "online_dpo"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        // Phase 1: two completions per prompt.
        let sampling = self.core.sampling(c.temperature, c.max_new_tokens);
        let rollout = self.core.collect(step, &sampling)?;
        // Phase 2: the judge.
        let score = self.core.rewards(&rollout, step, |_| 0.0)?; // [2P]
        let (ci, ri, decided) = match c.judge {
            Judge::Reward => judge_pairs(&score), // [P], [P], [P]
            Judge::Oracle => {
                // A stream per update (not a stored one): a resumed run draws the same labels.
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    self.core.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                let s: Vec<f32> = Vec::try_from(&score.to_kind(Kind::Float))?;
                let (ch, rj) = oracle_judge(&s, c.judge_temperature, c.judge_flip_rate, &mut rng);
                let dev = score.device();
                (
                    Tensor::from_slice(&ch).to_device(dev),              // [P]
                    Tensor::from_slice(&rj).to_device(dev),              // [P]
                    Tensor::ones([ch.len() as i64], (Kind::Float, dev)), // [P]
                )
            }
        };
        let mask = rollout.seqs.mask.shallow_clone(); // [2P, N]

        // Phase 3: the DPO loss on the judged pairs, one step.
        let out = sequence_outputs(
            &self.core.actor.model,
            &rollout.seqs,
            1.0,
            true,
            EntropyGrad::Detached,
        );
        let logp = out.logprobs.sum_dim_intlist(1, false, Kind::Float); // [2P]
        let ref_logp = self.core.reference_logprobs(&rollout, 1.0).map(|r| {
            r.sum_dim_intlist(1, false, Kind::Float) // [2P]
        });
        let len = mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0); // [2P]
        let pick = |t: &Tensor| (t.index_select(0, &ci), t.index_select(0, &ri));
        let (pc, pr) = pick(&logp);
        let (lc, lr) = pick(&len);
        let refs = ref_logp.as_ref().map(pick);
        let o = dpo_loss(
            &PairScores {
                chosen: &pc,
                rejected: &pr,
                reference: refs.as_ref().map(|(a, b)| (a, b)),
                chosen_len: &lc,
                rejected_len: &lr,
            },
            &c.loss_params(),
        )
        .ok_or_else(|| AgentError::Data("online DPO's loss needs the reference model".into()))?;
        let n_decided = decided.sum(Kind::Float).clamp_min(1.0);
        let loss = (&o.loss * &decided).sum(Kind::Float) / &n_decided;
        let gn = self
            .core
            .step_on(&loss, c.learning_rate, c.max_grad_norm, step)?;
        let w = |t: &Tensor| (t * &decided).sum(Kind::Float) / &n_decided;
        let margins = &o.chosen_rewards - &o.rejected_rewards; // [P]
        let seq_kl = match &ref_logp {
            Some(r) => logp.detach() - r,
            None => logp.zeros_like(),
        }; // [2P]
        let [loss_v, entropy, grad_norm, chosen, rejected, margin, accuracy, logps_chosen, logps_rejected] =
            host_scalars([
                &loss.detach(),
                &masked_mean(&out.entropy, &mask),
                &gn,
                &w(&o.chosen_rewards),
                &w(&o.rejected_rewards),
                &w(&margins),
                &w(&margins.gt(0.0).to_kind(Kind::Float)),
                &w(&pc.detach()),
                &w(&pr.detach()),
            ])?;
        let group_std = score.view([-1, 2]).std_dim(1, true, false); // [P]
        let batch = GroupBatch {
            rollout,
            rewards: score.shallow_clone(),
            advantages: score.zeros_like(),
            mask,
            ref_logp: None,
            group_std,
        };
        let st = StepStats {
            loss: loss_v,
            clip_low: 0.0,
            clip_high: 0.0,
            kl: 0.0,
            entropy,
            grad_norm,
        };
        // Phase 4: the budget, and GRPO's sampling metrics (`frac_reward_zero_std` is the
        // fraction of tied pairs); no ratio is clipped here.
        let mut m = self.core.finish(&batch, &st, 1, c.learning_rate, step)?;
        if c.judge == Judge::Oracle {
            // The gold scores behind the comparisons are the rater's, not queries of their own:
            // one comparison per pair, where `finish` counted a gold query per completion.
            self.core.budget.oracle_queries -= ci.size()[0] as u64;
        }
        for k in [
            metric::CLIP_RATIO_LOW_MEAN,
            metric::CLIP_RATIO_HIGH_MEAN,
            metric::CLIP_RATIO_REGION_MEAN,
        ] {
            m.remove(k);
        }
        GroupCore::kl_in_reward_metrics(&mut m, &seq_kl, &score, 0.0, step)?;
        m.remove(metric::OBJECTIVE_NON_SCORE_REWARD);
        m.remove(metric::OBJECTIVE_RLHF_REWARD);
        for (name, value) in [
            (metric::REWARDS_CHOSEN, chosen),
            (metric::REWARDS_REJECTED, rejected),
            (metric::REWARDS_MARGINS, margin),
            (metric::REWARDS_ACCURACIES, accuracy),
            (metric::LOGPS_CHOSEN, logps_chosen),
            (metric::LOGPS_REJECTED, logps_rejected),
        ] {
            m.insert(name.to_string(), value);
        }
        if let Some(n) = o.nll {
            m.insert(metric::NLL_LOSS.into(), w(&n).double_value(&[]));
        }
        Ok(m)
    }

    group_agent_accessors!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judge_prefers_the_higher_score_and_skips_ties() {
        // Prompt 0: [0.2, 0.9] → chosen row 1, rejected row 0; prompt 1: [0.5, 0.1] → rows 2, 3;
        // prompt 2: [0.4, 0.4] → a tie, no preference.
        let s = Tensor::from_slice(&[0.2f32, 0.9, 0.5, 0.1, 0.4, 0.4]);
        let (c, r, d) = judge_pairs(&s);
        assert_eq!(Vec::<i64>::try_from(&c).unwrap(), vec![1, 2, 4]);
        assert_eq!(Vec::<i64>::try_from(&r).unwrap(), vec![0, 3, 5]);
        assert_eq!(Vec::<f32>::try_from(&d).unwrap(), vec![1.0, 1.0, 0.0]);
    }

    #[test]
    fn the_oracle_judge_samples_bradley_terry_and_flips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // τ = 0: the higher always wins; a tie goes either way.
        let (c, r) = oracle_judge(&[0.2, 0.9, 0.5, 0.1], 0.0, 0.0, &mut rng);
        assert_eq!((c, r), (vec![1, 2], vec![0, 3]));
        // Flip rate 1: always the lower.
        let (c, _) = oracle_judge(&[0.2, 0.9, 0.5, 0.1], 0.0, 1.0, &mut rng);
        assert_eq!(c, vec![0, 3]);
        // Δ = 0.1 at τ = 0.1: P(first) = σ(1) ≈ 0.731 over many pairs.
        let scores: Vec<f32> = (0..20_000).flat_map(|_| [0.6f32, 0.5]).collect();
        let (c, _) = oracle_judge(&scores, 0.1, 0.0, &mut rng);
        let first = c
            .iter()
            .enumerate()
            .filter(|(i, &x)| x == 2 * *i as i64)
            .count() as f64;
        let p = first / 20_000.0;
        assert!((p - 0.7311).abs() < 0.01, "{p}");
    }
}
