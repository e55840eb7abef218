//! PPO for language models (Schulman et al. 2017, arXiv 1707.06347; Ziegler et al. 2019,
//! arXiv 1909.08593; the RLHF implementation details of Huang et al. 2024, arXiv 2403.17031).
//!
//! Per update, in named phases: **collect** an episode per env through the rollout collector (one
//! turn or many; KV-cache sampling on the device, env steps on rayon workers, scores from the env or
//! a batched scorer) → **advantages**: missing-EOS penalty, per-token KL to the frozen reference (k1
//! or k3) on the policy's tokens, the score on the episode's last policy token, critic values, GAE
//! over the policy's tokens (an env's replies skipped), whitened advantages → **optimise**:
//! `update_epochs` × `num_minibatches` clipped policy and value steps with an entropy bonus,
//! gradient clipping and an optional `target_kl` stop → **KL control** (fixed or adaptive
//! `kl_coef`) → **budget**.

use crate::metric;
use crate::scalars::{host_scalars, ScalarRows};
use crate::agent::{Agent, Budget, Metrics, Resumable, StateFile};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::losses::{
    gae, kl_per_token, masked_mean, masked_var, ppo_policy_loss, ppo_value_loss, shaped_rewards,
    PolicyLoss, ValueLoss,
    whiten, KlEstimator,
};
use crate::lm::optim::{AdamW, AdamWConfig};
use crate::lm::policy::{ActorCritic, LmPolicy, Policy};
use crate::rollout::{chat_envs, collect, RewardSignal, Rollout, Start};
use crate::lm::sampling::{
    completion_hidden, sequence_logprobs, sequence_outputs, EntropyGrad, Generation,
    SamplingConfig, Sequences,
};
use crate::lm::tokenizer::Tokenizer;
use crate::agent::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::{
    derive_seed, ChatEnv, ChatEnvConfig, RewardFn, RewardSource, Split, Task, VecEnv,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Where the value estimates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CriticKind {
    /// A separate network of the same shape, initialised from the policy (the N+ details' choice).
    #[default]
    Separate,
    /// The policy's own trunk with its value head (half the compute, coupled gradients).
    Shared,
}

/// PPO hyperparameters (CleanRL names; RLHF defaults from REFERENCE.md unless stated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Adam learning rate for policy and critic. Default 3e-4: small models trained from scratch
    /// want rates far above the 3e-6 used at 1B scale.
    pub learning_rate: f64,
    /// Prompts (completions) per update. Default 64.
    pub batch_size: usize,
    /// Optimisation epochs over each rollout. Default 4.
    pub update_epochs: usize,
    /// Minibatches per epoch. Default 1.
    pub num_minibatches: usize,
    /// Discount γ. Default 1.
    pub gamma: f64,
    /// GAE λ. Default 0.95.
    pub gae_lambda: f64,
    /// Policy ratio clip ε. Default 0.2.
    pub clip_coef: f64,
    /// Value clip ε_v. Default 0.2.
    pub vf_clip_coef: f64,
    /// Value-loss weight. Default 0.1.
    pub vf_coef: f64,
    /// Entropy-bonus weight. Default 0.
    pub ent_coef: f64,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Stop an update's epochs early when approx-KL exceeds this; 0 turns it off (default).
    pub target_kl: f64,
    /// KL penalty coefficient (the initial value when adaptive). Default 0.05.
    pub kl_coef: f64,
    /// Per-token KL estimator. Default k1.
    pub kl_estimator: KlEstimator,
    /// Adapt `kl_coef` toward `kl_target` (Ziegler et al.). Default false.
    pub adaptive_kl: bool,
    /// Target sequence KL of the adaptive controller. Default 6.
    pub kl_target: f64,
    /// Horizon of the adaptive controller (samples). Default 10000.
    pub kl_horizon: f64,
    /// Subtracted from the score of completions with no EOS. Default 1.0.
    pub missing_eos_penalty: f64,
    /// Sampling temperature (also used when recomputing log-probs). Default 0.7.
    pub temperature: f64,
    /// Completion-length limit; 0 uses the task's. Default 0.
    pub max_new_tokens: usize,
    /// Whiten per-token rewards before GAE. Default false.
    pub whiten_rewards: bool,
    /// Separate or shared critic. Default separate.
    pub critic: CriticKind,
    /// Adam ε. Default 1e-5.
    pub adam_eps: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            learning_rate: 3e-4,
            batch_size: 64,
            update_epochs: 4,
            num_minibatches: 1,
            gamma: 1.0,
            gae_lambda: 0.95,
            clip_coef: 0.2,
            vf_clip_coef: 0.2,
            vf_coef: 0.1,
            ent_coef: 0.0,
            max_grad_norm: 1.0,
            target_kl: 0.0,
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            adaptive_kl: false,
            kl_target: 6.0,
            kl_horizon: 10000.0,
            missing_eos_penalty: 1.0,
            temperature: 0.7,
            max_new_tokens: 0,
            whiten_rewards: false,
            critic: CriticKind::Separate,
            adam_eps: 1e-5,
        }
    }
}

impl PpoConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        let pos = AgentError::positive;
        pos("learning_rate", self.learning_rate)?;
        pos("temperature", self.temperature)?;
        pos("clip_coef", self.clip_coef)?;
        if self.batch_size == 0 || self.update_epochs == 0 || self.num_minibatches == 0 {
            return Err(AgentError::config(
                "batch_size/update_epochs/num_minibatches",
                "expected > 0",
            ));
        }
        if !self.batch_size.is_multiple_of(self.num_minibatches) {
            return Err(AgentError::config(
                "num_minibatches",
                format!("must divide batch_size {}", self.batch_size),
            ));
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.gae_lambda) {
            return Err(AgentError::config(
                "gamma/gae_lambda",
                "expected values in [0, 1]",
            ));
        }
        if self.kl_coef < 0.0 || self.vf_coef < 0.0 || self.ent_coef < 0.0 {
            return Err(AgentError::config(
                "kl_coef/vf_coef/ent_coef",
                "expected ≥ 0",
            ));
        }
        // Both divide in the adaptive controller, even when it is off (a later --set turns it on).
        pos("kl_target", self.kl_target)?;
        pos("kl_horizon", self.kl_horizon)?;
        pos("vf_clip_coef", self.vf_clip_coef)?;
        pos("max_grad_norm", self.max_grad_norm)?;
        pos("adam_eps", self.adam_eps)?;
        let finite = self.target_kl.is_finite() && self.missing_eos_penalty.is_finite();
        if !(finite && self.target_kl >= 0.0) {
            return Err(AgentError::config(
                "target_kl/missing_eos_penalty",
                "expected finite values (target_kl ≥ 0)",
            ));
        }
        Ok(())
    }
}

impl Algorithm for PpoConfig {
    const NAME: &'static str = "ppo";
    const ABOUT: &'static str = "PPO with an actor-critic policy";
    const LEARNS: Learns = Learns::Online;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let prior = ctx.prior_queries();
        let reward = (ctx.reward)()?;
        let agent = PpoAgent::new(self.clone(), ctx.task, ctx.policy, reward, ctx.seed)?;
        Ok(Box::new(agent.with_prior_oracle_queries(prior)))
    }
}

/// The PPO agent.
pub struct PpoAgent {
    cfg: PpoConfig,
    task: Arc<dyn Task>,
    envs: VecEnv<ChatEnv>,
    actor: LmPolicy,
    critic: Option<LmPolicy>,
    reference: LmPolicy,
    reward: RewardSignal,
    gold: Arc<dyn RewardFn>,
    actor_opt: AdamW,
    critic_opt: Option<AdamW>,
    kl_coef: f64,
    seed: u64,
    budget: Budget,
}

/// A collected rollout with everything the optimisation phase needs (all `[B, N]` unless noted).
pub struct PpoBatch {
    /// The episodes and their tokens.
    pub rollout: Rollout,
    /// Episode scores after the missing-EOS penalty `[B]`.
    pub score: Tensor,
    /// Reference log-probs of the policy's tokens.
    pub ref_logp: Tensor,
    /// Critic values before the update.
    pub old_values: Tensor,
    /// Per-token KL to the reference (policy tokens only).
    pub kl: Tensor,
    /// GAE advantages, whitened over the policy tokens.
    pub advantages: Tensor,
    /// Value targets.
    pub returns: Tensor,
    /// The KL coefficient these rewards were shaped with.
    pub kl_coef: f64,
}

/// Means over the minibatches of one update.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OptimiseStats {
    /// Clipped policy loss.
    pub policy_loss: f64,
    /// Clipped value loss.
    pub value_loss: f64,
    /// Fraction of policy tokens whose ratio was clipped.
    pub clipfrac: f64,
    /// ½ mean (log ρ)².
    pub approxkl: f64,
    /// Mean ratio ρ.
    pub ratio: f64,
    /// Fraction of values clipped.
    pub value_clipfrac: f64,
    /// Mean entropy over policy tokens.
    pub entropy: f64,
    /// Minibatches run (fewer than epochs × minibatches after a `target_kl` stop).
    pub minibatches: usize,
    /// The epochs stopped early on `target_kl`.
    pub stopped_early: bool,
}

impl OptimiseStats {
    /// The `loss/*`, `policy/*` and `val/*` metrics.
    pub fn to_metrics(&self, m: &mut Metrics) {
        m.insert(metric::LOSS_POLICY_AVG.into(), self.policy_loss);
        m.insert(metric::LOSS_VALUE_AVG.into(), self.value_loss);
        m.insert(metric::POLICY_CLIPFRAC_AVG.into(), self.clipfrac);
        m.insert(metric::POLICY_APPROXKL_AVG.into(), self.approxkl);
        m.insert(metric::VAL_RATIO.into(), self.ratio);
        m.insert(metric::VAL_CLIPFRAC_AVG.into(), self.value_clipfrac);
        m.insert(metric::POLICY_ENTROPY_AVG.into(), self.entropy);
        m.insert(
            metric::POLICY_EARLY_STOP.into(),
            if self.stopped_early { 1.0 } else { 0.0 },
        );
    }
}

/// Statistics of a rollout (sequence-level sums, batch means).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RolloutStats {
    /// Mean sequence KL to the reference.
    pub kl: f64,
    /// Mean sequence entropy estimate (−Σ log π of the sampled policy tokens).
    pub entropy: f64,
    /// Mean score after the missing-EOS penalty.
    pub scores: f64,
    /// Policy tokens sampled.
    pub policy_tokens: f64,
    /// 1 − Var(returns − V) / Var(returns).
    pub explained_variance: f64,
    /// Episodes whose last turn ended with a stop token.
    pub num_eos: f64,
    /// Mean policy turns per episode.
    pub turns: f64,
}

impl RolloutStats {
    /// The `objective/*` metrics, with the KL coefficient the rewards were shaped with.
    pub fn to_metrics(&self, kl_coef: f64, m: &mut Metrics) {
        m.insert(metric::OBJECTIVE_KL.into(), self.kl);
        m.insert(metric::OBJECTIVE_ENTROPY.into(), self.entropy);
        m.insert(metric::OBJECTIVE_SCORES.into(), self.scores);
        m.insert(metric::OBJECTIVE_NON_SCORE_REWARD.into(), -kl_coef * self.kl);
        m.insert(
            metric::OBJECTIVE_RLHF_REWARD.into(),
            self.scores - kl_coef * self.kl,
        );
        m.insert(metric::OBJECTIVE_KL_COEF.into(), kl_coef);
        m.insert(metric::VAL_NUM_EOS_TOKENS.into(), self.num_eos);
        m.insert(metric::VAL_EXPLAINED_VARIANCE.into(), self.explained_variance);
        m.insert(metric::OBJECTIVE_TURNS.into(), self.turns);
    }
}

impl PpoAgent {
    /// PPO from `policy` (also the frozen reference and, by default, the critic's initialisation),
    /// optimising `reward` on episodes of `task`'s training prompts, stepped in `batch_size`
    /// turn-level envs (rayon workers).
    pub fn new(
        cfg: PpoConfig,
        task: Arc<dyn Task>,
        policy: LmPolicy,
        reward: RewardSignal,
        seed: u64,
    ) -> Result<Self> {
        Self::with_envs(cfg, task, policy, reward, seed, true)
    }

    /// [`PpoAgent::new`], stepping the envs serially or on rayon workers (the results are equal).
    pub fn with_envs(
        cfg: PpoConfig,
        task: Arc<dyn Task>,
        policy: LmPolicy,
        reward: RewardSignal,
        seed: u64,
        parallel: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let source = match reward {
            RewardSignal::Gold => RewardSource::Gold,
            RewardSignal::Scorer(_) => RewardSource::External,
        };
        let envs = chat_envs(
            task.clone(),
            cfg.batch_size,
            ChatEnvConfig {
                split: Split::Train,
                reward: source,
                max_turns: 0,
            },
            parallel,
        )?;
        let reference = policy.duplicate(false)?;
        let critic = match cfg.critic {
            CriticKind::Separate => Some(policy.duplicate(true)?),
            CriticKind::Shared => None,
        };
        let adam = AdamWConfig {
            eps: cfg.adam_eps,
            ..Default::default()
        };
        let actor_opt = AdamW::new(&policy.vs, adam);
        let critic_opt = critic.as_ref().map(|c| AdamW::new(&c.vs, adam));
        Ok(Self {
            kl_coef: cfg.kl_coef,
            gold: Arc::new(task.gold()),
            cfg,
            task,
            envs,
            actor: policy,
            critic,
            reference,
            reward,
            actor_opt,
            critic_opt,
            seed,
            budget: Budget::default(),
        })
    }

    /// Count `queries` oracle queries already spent on this agent's reward (e.g. the preference
    /// labels a reward model was trained on), so budgets compare with DPO's.
    pub fn with_prior_oracle_queries(mut self, queries: u64) -> Self {
        self.budget.oracle_queries += queries;
        self
    }

    /// The current KL coefficient.
    pub fn kl_coef(&self) -> f64 {
        self.kl_coef
    }

    fn sampling(&self) -> SamplingConfig {
        let n = if self.cfg.max_new_tokens == 0 {
            self.task.max_new_tokens()
        } else {
            self.cfg.max_new_tokens
        };
        SamplingConfig {
            temperature: self.cfg.temperature,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: n,
        }
    }

    /// Phase 1: one episode per env, through the collector (seeded by `step`).
    pub fn collect(&mut self, step: u64) -> Result<Rollout> {
        let seed = derive_seed(self.seed, step);
        tch::manual_seed(seed as i64);
        let sampling = self.sampling();
        let scored = self.reward.flops_spent();
        let rollout = collect(
            &self.actor,
            &mut self.envs,
            Start::Seed(seed),
            &sampling,
            self.reward.scorer(),
        )?;
        // A learned reward model's scoring passes are part of what the update spent.
        self.budget.flops += self.reward.flops_spent() - scored;
        Ok(rollout)
    }

    /// Phase 2: scores with the missing-EOS penalty, reference log-probs, values, KL-shaped rewards
    /// on the policy tokens, GAE over them and whitened advantages.
    pub fn advantages(&self, rollout: Rollout, step: u64) -> Result<PpoBatch> {
        let c = &self.cfg;
        let scores: Vec<f32> = rollout
            .episodes
            .iter()
            .map(|e| {
                if e.ended_turn {
                    e.reward
                } else {
                    e.reward - c.missing_eos_penalty as f32
                }
            })
            .collect();
        if let Some(bad) = scores.iter().position(|s| !s.is_finite()) {
            return Err(AgentError::NonFinite {
                metric: format!("objective/scores (sample {bad})"),
                step,
            });
        }
        let score = Tensor::from_slice(&scores).to_device(self.actor.device()); // [B]
        let mask = &rollout.seqs.mask; // [B, N]
        let (ref_logp, old_values) = tch::no_grad(|| {
            let r = sequence_logprobs(&self.reference.model, &rollout.seqs, c.temperature, false);
            (r, self.values(&rollout.seqs, false))
        }); // [B, N], [B, N]
        let kl = kl_per_token(&rollout.logprobs, &ref_logp, mask, c.kl_estimator); // [B, N]
        let mut rewards = shaped_rewards(&kl, &score, &rollout.score_pos, mask, self.kl_coef); // [B, N]
        if c.whiten_rewards {
            rewards = whiten(&rewards, mask);
        }
        let (adv, returns) = gae(&rewards, &old_values, mask, c.gamma, c.gae_lambda); // [B, N]
        Ok(PpoBatch {
            advantages: whiten(&adv, mask),
            returns,
            score,
            ref_logp,
            old_values,
            kl,
            rollout,
            kl_coef: self.kl_coef,
        })
    }

    /// Phase 3: `update_epochs` × `num_minibatches` clipped policy and value steps.
    pub fn optimise(&mut self, batch: &PpoBatch, step: u64) -> Result<OptimiseStats> {
        let c = self.cfg.clone();
        let mut rng = StdRng::seed_from_u64(derive_seed(self.seed, step) ^ 0x0b7);
        let dev = self.actor.device();
        let b = batch.rollout.episodes.len() as i64;
        let mb = (b / c.num_minibatches as i64).max(1);
        let mut rows = ScalarRows::<7>::default(); // per minibatch: the OptimiseStats means
        let mut stopped_early = false;
        'epochs: for _ in 0..c.update_epochs {
            let mut perm: Vec<i64> = (0..b).collect();
            perm.shuffle(&mut rng);
            for chunk in perm.chunks(mb as usize) {
                let idx = Tensor::from_slice(chunk).to_device(dev); // [mb]
                let s = batch.rollout.seqs.select(&idx);
                // The entropy enters the loss only through a bonus.
                let entropy_grad = if c.ent_coef > 0.0 {
                    EntropyGrad::Tracked
                } else {
                    EntropyGrad::Detached
                };
                let out =
                    sequence_outputs(&self.actor.model, &s, c.temperature, true, entropy_grad);
                let PolicyLoss {
                    loss: pg,
                    clipfrac,
                    approxkl,
                    ratio,
                } = ppo_policy_loss(
                    &out.logprobs,
                    &batch.rollout.logprobs.index_select(0, &idx),
                    &batch.advantages.index_select(0, &idx),
                    &s.mask,
                    c.clip_coef,
                );
                let v = self.values(&s, true); // [mb, N]
                let ValueLoss {
                    loss: vf,
                    clipfrac: vclip,
                } = ppo_value_loss(
                    &v,
                    &batch.old_values.index_select(0, &idx),
                    &batch.returns.index_select(0, &idx),
                    &s.mask,
                    c.vf_clip_coef,
                );
                let ent = masked_mean(&out.entropy, &s.mask);
                let loss = &pg + c.vf_coef * &vf - c.ent_coef * &ent;
                self.actor_opt.zero_grad();
                if let Some(o) = self.critic_opt.as_mut() {
                    o.zero_grad();
                }
                loss.backward();
                let gn = self.actor_opt.clip_grad_norm(c.max_grad_norm);
                let cgn = self
                    .critic_opt
                    .as_mut()
                    .map(|o| o.clip_grad_norm(c.max_grad_norm))
                    .unwrap_or_else(|| Tensor::from(0.0f32));
                // One host read tells which quantity (if any) went non-finite.
                let checks = Tensor::stack(&[pg.detach(), vf.detach(), gn, cgn], 0).isfinite();
                let ok: Vec<bool> = Vec::try_from(&checks)?;
                const NAMES: [&str; 4] = [
                    metric::LOSS_POLICY_AVG,
                    metric::LOSS_VALUE_AVG,
                    metric::POLICY_GRAD_NORM,
                    metric::VAL_GRAD_NORM,
                ];
                if let Some(i) = ok.iter().position(|&x| !x) {
                    return Err(AgentError::NonFinite {
                        metric: NAMES[i].into(),
                        step,
                    });
                }
                self.actor_opt.step(c.learning_rate);
                if let Some(o) = self.critic_opt.as_mut() {
                    o.step(c.learning_rate);
                }
                rows.push([
                    &pg.detach(),
                    &vf.detach(),
                    &clipfrac,
                    &approxkl.detach(),
                    &ratio.detach(),
                    &vclip,
                    &ent.detach(),
                ]);
                if c.target_kl > 0.0 && approxkl.double_value(&[]) > c.target_kl {
                    stopped_early = true;
                    break 'epochs;
                }
            }
        }
        let [policy_loss, value_loss, clipfrac, approxkl, ratio, value_clipfrac, entropy] =
            rows.means()?;
        Ok(OptimiseStats {
            policy_loss,
            value_loss,
            clipfrac,
            approxkl,
            ratio,
            value_clipfrac,
            entropy,
            minibatches: rows.len(),
            stopped_early,
        })
    }

    /// The rollout's statistics, one device→host transfer.
    pub fn rollout_stats(&self, batch: &PpoBatch) -> Result<RolloutStats> {
        let mask = &batch.rollout.seqs.mask;
        let seq_kl = batch.kl.sum_dim_intlist(1, false, Kind::Float); // [B]
        let ent_seq = (-&batch.rollout.logprobs * mask).sum_dim_intlist(1, false, Kind::Float); // [B]
        let ev = 1.0
            - masked_var(&(&batch.returns - &batch.old_values), mask)
                / masked_var(&batch.returns, mask).clamp_min(1e-8);
        let [kl, entropy, scores, policy_tokens, explained_variance] = host_scalars([
            &seq_kl.mean(Kind::Float),
            &ent_seq.mean(Kind::Float),
            &batch.score.mean(Kind::Float),
            &mask.sum(Kind::Float),
            &ev,
        ])?;
        let eps = &batch.rollout.episodes;
        Ok(RolloutStats {
            kl,
            entropy,
            scores,
            policy_tokens,
            explained_variance,
            num_eos: eps.iter().filter(|e| e.ended_turn).count() as f64,
            turns: eps.iter().map(|e| e.policy_turns as f64).sum::<f64>() / eps.len().max(1) as f64,
        })
    }

    /// Phase 4: the adaptive KL controller (Ziegler et al.) sees this rollout's KL; the next
    /// update's rewards use the new coefficient.
    pub fn control_kl(&mut self, mean_kl: f64, samples: usize) {
        let c = &self.cfg;
        if c.adaptive_kl {
            let err = (mean_kl / c.kl_target - 1.0).clamp(-0.2, 0.2);
            self.kl_coef *= 1.0 + err * samples as f64 / c.kl_horizon;
        }
    }

    /// Phase 5: what the update spent: sampling (one forward per token, prompt included),
    /// reference and critic forwards, and the training passes.
    pub fn spend(&mut self, batch: &PpoBatch, roll: &RolloutStats, opt: &OptimiseStats) {
        let c = &self.cfg;
        let s = &batch.rollout.seqs;
        let b = batch.rollout.episodes.len() as f64;
        let (lp, n) = (s.prompt.size()[1], s.tokens.size()[1]);
        let seq_tokens = b * (lp + n) as f64;
        let fpt = self.actor.model.config().flops_per_token((lp + n) as usize);
        let value_net = self.critic.as_ref().unwrap_or(&self.actor);
        let fpt_value = value_net
            .model
            .config()
            .trunk_flops_per_token((lp + n) as usize);
        let train_tokens = seq_tokens * opt.minibatches as f64 / c.num_minibatches as f64;
        self.budget.samples += b as u64;
        self.budget.tokens_generated += roll.policy_tokens as u64;
        self.budget.train_tokens += train_tokens as u64;
        if matches!(self.reward, RewardSignal::Gold) {
            self.budget.oracle_queries += b as u64;
        }
        self.budget.flops += update_flops(
            UpdateTokens {
                prompt: b * lp as f64,
                generated: roll.policy_tokens,
                sequence: seq_tokens,
                train: train_tokens,
            },
            PassFlops {
                forward: fpt,
                value_forward: fpt_value,
                train_factor: self.actor.model.train_pass_factor(),
                critic_train_factor: self.critic.as_ref().map(|c| c.model.train_pass_factor()),
            },
        );
    }

    /// Values `[B, N]` for the states before each token after the prompt (0 off the policy's).
    fn values(&self, s: &Sequences, train: bool) -> Tensor {
        let net = self.critic.as_ref().unwrap_or(&self.actor);
        let hidden = completion_hidden(&net.model, s, train); // [B, N, C]
        net.model.value(&hidden) * &s.mask // [B, N]
    }
}

/// The tokens one PPO update passes through its networks.
#[derive(Debug, Clone, Copy)]
struct UpdateTokens {
    /// Prompt tokens prefilled for sampling.
    prompt: f64,
    /// Tokens sampled.
    generated: f64,
    /// Prompt + completion tokens of the batch (each reference and value forward reads them).
    sequence: f64,
    /// Tokens of the training passes (forward and backward).
    train: f64,
}

/// What one token costs each of PPO's networks.
#[derive(Debug, Clone, Copy)]
struct PassFlops {
    /// A forward through the whole LM, per token.
    forward: f64,
    /// A forward through the value network's trunk (no LM head), per token.
    value_forward: f64,
    /// The policy's training pass per forward ([`Gpt::train_pass_factor`]).
    train_factor: f64,
    /// A separate critic's, when there is one (a shared critic's values come out of the
    /// policy's own pass).
    critic_train_factor: Option<f64>,
}

/// FLOPs of one PPO update: sampling and the reference forward through the whole LM, the value
/// forward through a trunk only, and the training passes of the policy and a separate critic.
fn update_flops(t: UpdateTokens, f: PassFlops) -> f64 {
    let critic_train = f
        .critic_train_factor
        .map_or(0.0, |k| k * f.value_forward * t.train);
    f.forward * (t.prompt + t.generated)
        + (f.forward + f.value_forward) * t.sequence
        + f.train_factor * f.forward * t.train
        + critic_train
}

impl Policy for PpoAgent {
    fn sample(&self, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> Result<Generation> {
        self.actor.sample(prompts, cfg)
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.actor.tokenizer
    }
}

impl ActorCritic for PpoAgent {
    fn values(&self, g: &Generation, train: bool) -> Tensor {
        PpoAgent::values(self, &g.sequences(), train)
    }
}

impl Agent for PpoAgent {
    fn name(&self) -> &'static str {
        "ppo"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let rollout = self.collect(step)?;
        let batch = self.advantages(rollout, step)?;
        let opt = self.optimise(&batch, step)?;
        let roll = self.rollout_stats(&batch)?;
        self.control_kl(roll.kl, batch.rollout.episodes.len());
        self.spend(&batch, &roll, &opt);
        let mut m = Metrics::new();
        roll.to_metrics(batch.kl_coef, &mut m);
        opt.to_metrics(&mut m);
        m.insert(metric::TRAIN_LR.into(), self.cfg.learning_rate);
        for (k, v) in &m {
            if !v.is_finite() && k != metric::VAL_EXPLAINED_VARIANCE {
                return Err(AgentError::NonFinite {
                    metric: k.clone(),
                    step,
                });
            }
        }
        Ok(m)
    }

    fn policy(&self) -> &LmPolicy {
        &self.actor
    }
    fn budget(&self) -> Budget {
        self.budget
    }
    fn proxy_reward(&self) -> Option<&dyn RewardFn> {
        Some(match &self.reward {
            RewardSignal::Gold => self.gold.as_ref(),
            RewardSignal::Scorer(s) => s.as_ref(),
        })
    }
}

/// Training state saved next to the policy checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct PpoState {
    kl_coef: f64,
    budget: Budget,
}

impl Resumable for PpoAgent {
    fn save_state(&self, dir: &Path) -> Result<()> {
        let mut st = StateFile::new();
        st.add("actor", self.actor.state_variables());
        st.add("actor_opt", self.actor_opt.state());
        if let (Some(cr), Some(o)) = (&self.critic, &self.critic_opt) {
            st.add("critic", cr.state_variables());
            st.add("critic_opt", o.state());
        }
        st.write(
            dir,
            "ppo_state",
            &PpoState {
                kl_coef: self.kl_coef,
                budget: self.budget,
            },
        )
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        let (st, s, path): (StateFile, PpoState, _) = StateFile::read(dir, "ppo_state")?;
        self.actor.load_state_variables(st.group("actor"), &path)?;
        self.actor_opt.load_state(st.group("actor_opt"))?;
        if let (Some(cr), Some(o)) = (self.critic.as_mut(), self.critic_opt.as_mut()) {
            cr.load_state_variables(st.group("critic"), &path)?;
            o.load_state(st.group("critic_opt"))?;
        }
        self.kl_coef = s.kl_coef;
        self.budget = s.budget;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_passes_are_counted_without_an_lm_head() {
        // One episode: 2 prompt tokens, 3 sampled (5 a sequence), 2 epochs (10 training tokens);
        // 10 FLOPs a token through the whole LM, 6 through a trunk.
        let t = UpdateTokens {
            prompt: 2.0,
            generated: 3.0,
            sequence: 5.0,
            train: 10.0,
        };
        let f = |train_factor, critic_train_factor| PassFlops {
            forward: 10.0,
            value_forward: 6.0,
            train_factor,
            critic_train_factor,
        };
        // Sampling 10·5 = 50, reference 10·5 = 50, value forward 6·5 = 30, policy training
        // 3·10·10 = 300, separate critic training 3·6·10 = 180.
        assert_eq!(update_flops(t, f(3.0, Some(3.0))), 610.0);
        // A shared critic's values come out of the policy's training pass.
        assert_eq!(update_flops(t, f(3.0, None)), 430.0);
        // LoRA on both (no weight gradients): training 2·10·10 = 200 and 2·6·10 = 120.
        assert_eq!(update_flops(t, f(2.0, Some(2.0))), 450.0);
    }
}
