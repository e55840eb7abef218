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

use crate::agent::{Agent, Budget, Metrics, StateFile};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::optim::{AdamW, AdamWConfig};
use crate::policy::LmPolicy;
use crate::ppo::RewardSignal;
use crate::rollout::{chat_envs, collect, Rollout, Start};
use crate::sampling::{
    distinct_prompts, sequence_logprobs, sequence_outputs, EntropyGrad, SamplingConfig,
};
use crate::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::{
    derive_seed, ChatEnv, ChatEnvConfig, RewardFn, RewardSource, Split, Task, VecEnv,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// How the per-token losses of a batch are reduced to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLoss {
    /// Mean over each sequence's tokens, then over sequences (the GRPO paper); std-scaled
    /// advantages.
    Grpo,
    /// Sum over all tokens divided by a constant (rows × `max_new_tokens`): no length bias (Dr.
    /// GRPO); advantages not divided by the group's std.
    DrGrpo,
    /// Sum over all tokens divided by their count: token-level (DAPO; TRL's default).
    #[default]
    Dapo,
}

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

/// What the clipped surrogate measured on one minibatch.
pub struct GrpoLossOut {
    /// The loss to minimise (scalar).
    pub loss: Tensor,
    /// Fraction of tokens clipped below (ratio < 1 − ε_low with a negative advantage).
    pub clip_low: Tensor,
    /// Fraction of tokens clipped above (ratio > 1 + ε_high with a positive advantage).
    pub clip_high: Tensor,
    /// Mean k3 KL to the reference over the tokens (0 without one).
    pub kl: Tensor,
}

/// What a GRPO-family loss and its token metrics divide by, taken from the mask `[B, N]` of the
/// whole minibatch: losses of parts of a minibatch computed with the whole's norm sum to the
/// whole's loss, so a minibatch can run forward and backward in several passes.
pub struct GrpoNorm {
    /// The loss's denominator (scalar): live rows (`grpo`), rows × `max_len` (`dr_grpo`) or
    /// policy tokens (`dapo`).
    loss: Tensor,
    /// Policy tokens (scalar), for the per-token metrics.
    tokens: Tensor,
}

impl GrpoNorm {
    /// The norm of a minibatch with policy-token mask `mask [B, N]`.
    pub fn of(mask: &Tensor, loss_type: GrpoLoss, max_len: i64) -> Self {
        let tokens = mask.sum(Kind::Float).clamp_min(1e-8);
        let loss = match loss_type {
            GrpoLoss::Grpo => {
                let live = mask.sum_dim_intlist(1, false, Kind::Float).gt(0.0); // [B]
                live.to_kind(Kind::Float).sum(Kind::Float).clamp_min(1.0)
            }
            GrpoLoss::DrGrpo => {
                Tensor::from((mask.size()[0] * max_len).max(1) as f32).to_device(mask.device())
            }
            GrpoLoss::Dapo => tokens.shallow_clone(),
        };
        Self { loss, tokens }
    }
    /// `Σ x·mask / tokens`: a per-token mean over the minibatch, summed over its parts.
    pub fn token_mean(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        (x * mask).sum(Kind::Float) / &self.tokens
    }
}

/// The GRPO-family loss over `[B, N]` tokens: per token `−min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high)
/// A) + β k3`, with ρ = exp(logp − old_logp), A = `adv [B]` on every token of its row (or per
/// token, `adv [B, N]`, for REINFORCE++), k3 =
/// exp(ref − logp) − (ref − logp) − 1; reduced per `loss_type` over the tokens where `mask` is 1
/// (`max_len` is Dr. GRPO's constant).
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    loss_type: GrpoLoss,
    eps: (f64, f64),
    beta: f64,
    max_len: i64,
) -> GrpoLossOut {
    let norm = GrpoNorm::of(mask, loss_type, max_len);
    grpo_loss_part(
        logp, old_logp, ref_logp, adv, mask, loss_type, eps, beta, &norm,
    )
}

/// [`grpo_loss`] of some rows of a minibatch whose [`GrpoNorm`] is `norm`: the loss, clip
/// fractions and KL of the parts sum to the whole minibatch's.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss_part(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    loss_type: GrpoLoss,
    eps: (f64, f64),
    beta: f64,
    norm: &GrpoNorm,
) -> GrpoLossOut {
    let a = match adv.dim() {
        2 => adv.to_kind(Kind::Float),              // [B, N]
        _ => adv.to_kind(Kind::Float).unsqueeze(1), // [B, 1]
    };
    let ratio = ((logp - old_logp) * mask).exp(); // [B, N]
    let unclipped = &ratio * &a;
    let clipped = ratio.clamp(1.0 - eps.0, 1.0 + eps.1) * &a;
    let surrogate = -unclipped.minimum(&clipped); // [B, N]
    let (per_token, kl) = match ref_logp {
        Some(r) => {
            let d = r - logp;
            let k3 = d.exp() - &d - 1.0; // [B, N]
            (surrogate + beta * &k3, norm.token_mean(&k3, mask))
        }
        None => (surrogate, Tensor::from(0.0f32).to_device(logp.device())),
    };
    let summed = match loss_type {
        // Each row's token mean (0 on a row with no policy tokens), summed over the rows.
        GrpoLoss::Grpo => ((&per_token * mask).sum_dim_intlist(1, false, Kind::Float)
            / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0))
        .sum(Kind::Float),
        GrpoLoss::DrGrpo | GrpoLoss::Dapo => (&per_token * mask).sum(Kind::Float),
    };
    let low = ratio.lt(1.0 - eps.0).logical_and(&a.lt(0.0));
    let high = ratio.gt(1.0 + eps.1).logical_and(&a.gt(0.0));
    GrpoLossOut {
        loss: summed / &norm.loss,
        clip_low: norm.token_mean(&low.to_kind(Kind::Float), mask),
        clip_high: norm.token_mean(&high.to_kind(Kind::Float), mask),
        kl,
    }
}

/// Rows of `seq_len` tokens per forward/backward pass of a model `width` channels wide on
/// `device`, a whole number of groups of `group` rows (so each pass runs a group's prompt once).
/// On CPU about 2¹⁹ activations (tokens × width) a pass: a pass over a whole GRPO minibatch
/// (256 × 64 tokens) streams activations far larger than the caches through every elementwise
/// op, while small passes pay libtorch's per-op overhead. Measured on a 2-core CPU: at width 256
/// 2,048 tokens a pass beat 4,096 (fp32) and 1,024; at width 128 4,096 beat 2,048 by 7%. A GPU
/// takes the minibatch whole.
pub(crate) fn rows_per_pass(device: Device, seq_len: i64, width: i64, group: usize) -> usize {
    const CPU_ACTIVATIONS_PER_PASS: i64 = 1 << 19;
    match device {
        Device::Cpu => {
            let tokens = CPU_ACTIVATIONS_PER_PASS / width.max(1);
            let rows = (tokens / seq_len.max(1)).max(1) as usize;
            (rows / group.max(1)).max(1) * group.max(1)
        }
        _ => usize::MAX,
    }
}

/// What the group-sampling agents (GRPO here, RLOO in `rloo.rs`) share: the policy and its
/// optimiser, the envs that sample G completions per prompt, the frozen reference when a KL term
/// needs one, the reward, the clipped optimisation steps, the budget and the saved state. Each
/// algorithm adds only how it turns a rollout into advantages.
pub(crate) struct GroupCore {
    pub(crate) task: Arc<dyn Task>,
    envs: VecEnv<ChatEnv>,
    pub(crate) actor: LmPolicy,
    reference: Option<LmPolicy>,
    reward: RewardSignal,
    gold: Arc<dyn RewardFn>,
    opt: AdamW,
    pub(crate) seed: u64,
    pub(crate) budget: Budget,
    /// Prompts per update and completions per prompt.
    prompts: usize,
    g: usize,
}

/// A collected batch with its advantages (G consecutive rows per prompt).
pub(crate) struct GroupBatch {
    /// The episodes and their tokens.
    pub rollout: Rollout,
    /// The rewards the advantages came from `[B]`.
    pub rewards: Tensor,
    /// Advantages `[B]`, or `[B, N]` per token (0 on dropped groups).
    pub advantages: Tensor,
    /// The policy-token mask the loss reads (dropped groups zeroed) `[B, N]`.
    pub mask: Tensor,
    /// Reference log-probs `[B, N]` for a KL loss term.
    pub ref_logp: Option<Tensor>,
    /// Each group's reward std `[P]`.
    pub group_std: Tensor,
}

/// How the clipped steps run.
pub(crate) struct Steps {
    /// Passes over the batch.
    pub iterations: usize,
    /// Gradient steps per pass (each over whole groups).
    pub minibatches: usize,
    /// How the per-token losses are reduced.
    pub loss_type: GrpoLoss,
    /// (ε_low, ε_high) of the ratio clip.
    pub eps: (f64, f64),
    /// Weight of the k3 KL loss term (its reference log-probs in the batch).
    pub beta: f64,
    /// Dr. GRPO's constant per row.
    pub max_len: i64,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Gradient-norm clip.
    pub max_grad_norm: f64,
    /// Temperature of the recomputed log-probs (the sampling one).
    pub temperature: f64,
}

/// Means over the minibatches of one update.
pub(crate) struct StepStats {
    /// The loss minimised.
    pub loss: f64,
    /// Fraction of tokens clipped below / above.
    pub clip_low: f64,
    pub clip_high: f64,
    /// Mean k3 KL of the loss term (0 without one).
    pub kl: f64,
    /// Mean per-token entropy.
    pub entropy: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

impl GroupCore {
    /// `prompts` × `g` turn-level envs on `task`'s training split; a frozen copy of `policy` when
    /// `reference`.
    pub(crate) fn new(
        task: Arc<dyn Task>,
        policy: LmPolicy,
        reward: RewardSignal,
        seed: u64,
        (prompts, g): (usize, usize),
        reference: bool,
        adam_eps: f64,
    ) -> Result<Self> {
        if task.prompts(Split::Train).is_empty() {
            return Err(AgentError::config(
                "env",
                "the task has no training prompts",
            ));
        }
        let source = match reward {
            RewardSignal::Gold => RewardSource::Gold,
            RewardSignal::Scorer(_) => RewardSource::External,
        };
        let envs = chat_envs(
            task.clone(),
            prompts * g,
            ChatEnvConfig {
                split: Split::Train,
                reward: source,
                max_turns: 0,
            },
            true,
        )?;
        let reference = if reference {
            Some(policy.duplicate(false)?)
        } else {
            None
        };
        let opt = AdamW::new(
            &policy.vs,
            AdamWConfig {
                eps: adam_eps,
                ..Default::default()
            },
        );
        Ok(Self {
            gold: Arc::new(task.gold()),
            task,
            envs,
            actor: policy,
            reference,
            reward,
            opt,
            seed,
            budget: Budget::default(),
            prompts,
            g,
        })
    }

    /// The per-turn token limit (`requested`, or the task's when 0).
    pub(crate) fn max_new_tokens(&self, requested: usize) -> usize {
        if requested == 0 {
            self.task.max_new_tokens()
        } else {
            requested
        }
    }

    /// The sampling of an update: `temperature`, no top-k/top-p, `max_new_tokens` (0: the task's).
    pub(crate) fn sampling(&self, temperature: f64, max_new_tokens: usize) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: self.max_new_tokens(max_new_tokens),
        }
    }

    /// The metrics of an algorithm that folds `coef` × the sequence KL `seq_kl [B]` into its
    /// reward, under the names PPO logs them (`objective/*`) rather than GRPO's loss-term `kl`.
    pub(crate) fn kl_in_reward_metrics(
        m: &mut Metrics,
        seq_kl: &Tensor,
        score: &Tensor,
        coef: f64,
        step: u64,
    ) -> Result<()> {
        m.remove("kl");
        let v: Vec<f64> = Vec::try_from(
            Tensor::stack(&[seq_kl.mean(Kind::Float), score.mean(Kind::Float)], 0)
                .to_kind(Kind::Double),
        )?;
        let (kl, mean_score) = (v[0], v[1]);
        if !kl.is_finite() {
            return Err(AgentError::NonFinite {
                metric: "objective/kl".into(),
                step,
            });
        }
        m.insert("objective/kl".into(), kl);
        m.insert("objective/scores".into(), mean_score);
        m.insert("objective/non_score_reward".into(), -coef * kl);
        m.insert("objective/rlhf_reward".into(), mean_score - coef * kl);
        Ok(())
    }

    /// Phase 1: the update's training prompts, drawn with a seed derived from `step` (without
    /// replacement while the split lasts), each G times, through the collector.
    pub(crate) fn collect(&mut self, step: u64, sampling: &SamplingConfig) -> Result<Rollout> {
        let seed = derive_seed(self.seed, step);
        let n = self.task.prompts(Split::Train).len();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x96b0);
        let mut pool: Vec<usize> = (0..n).collect();
        pool.shuffle(&mut rng);
        let prompts: Vec<usize> = (0..self.prompts)
            .map(|i| {
                if i < n {
                    pool[i]
                } else {
                    rng.random_range(0..n)
                }
            })
            .collect();
        let indices: Vec<usize> = prompts
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, self.g))
            .collect();
        tch::manual_seed(seed as i64);
        let scored = self.reward.flops_spent();
        let rollout = collect(
            &self.actor,
            &mut self.envs,
            Start::Prompts(&indices),
            sampling,
            self.reward.scorer(),
        )?;
        // A learned reward model's scoring passes are part of what the update spent.
        self.budget.flops += self.reward.flops_spent() - scored;
        Ok(rollout)
    }

    /// The episodes' rewards `[B]` on the policy's device, each plus `bonus(episode)`; a
    /// non-finite one stops the run.
    pub(crate) fn rewards(
        &self,
        rollout: &Rollout,
        step: u64,
        bonus: impl Fn(&crate::rollout::Episode) -> f64,
    ) -> Result<Tensor> {
        let r: Vec<f32> = rollout
            .episodes
            .iter()
            .map(|e| e.reward + bonus(e) as f32)
            .collect();
        if let Some(bad) = r.iter().position(|x| !x.is_finite()) {
            return Err(AgentError::NonFinite {
                metric: format!("reward (sample {bad})"),
                step,
            });
        }
        Ok(Tensor::from_slice(&r).to_device(self.actor.device())) // [B]
    }

    /// The frozen reference's log-probs of the rollout's tokens `[B, N]`, when there is one (in
    /// passes of [`rows_per_pass`] rows).
    pub(crate) fn reference_logprobs(&self, rollout: &Rollout, temperature: f64) -> Option<Tensor> {
        let s = &rollout.seqs;
        let (b, seq_len) = (s.prompt.size()[0], s.prompt.size()[1] + s.tokens.size()[1]);
        // usize throughout: on a GPU the pass is usize::MAX, the whole batch.
        let width = self.actor.model.config().n_embd as i64;
        let rows = rows_per_pass(s.prompt.device(), seq_len, width, self.g)
            .min(b as usize)
            .max(1);
        self.reference.as_ref().map(|r| {
            tch::no_grad(|| {
                let parts: Vec<Tensor> = (0..b as usize)
                    .step_by(rows)
                    .map(|at| {
                        let end = (at + rows).min(b as usize);
                        let idx = Tensor::arange_start(
                            at as i64,
                            end as i64,
                            (Kind::Int64, s.prompt.device()),
                        ); // [rows]
                        sequence_logprobs(&r.model, &s.select(&idx), temperature, false)
                    })
                    .collect();
                Tensor::cat(&parts, 0) // [B, N]
            })
        })
    }

    /// One gradient step on `loss` (a scalar): clipped to `max_grad_norm`, refused when the loss
    /// or the gradient norm is not finite. Returns the norm before clipping (a 0-d tensor).
    pub(crate) fn step_on(
        &mut self,
        loss: &Tensor,
        learning_rate: f64,
        max_grad_norm: f64,
        step: u64,
    ) -> Result<Tensor> {
        self.opt.zero_grad();
        loss.backward();
        self.apply_step(&loss.detach(), learning_rate, max_grad_norm, step)
    }

    /// Clips the accumulated gradients, refuses a non-finite `loss` or gradient norm, and takes
    /// the optimiser step; returns the norm before clipping.
    fn apply_step(
        &mut self,
        loss: &Tensor,
        learning_rate: f64,
        max_grad_norm: f64,
        step: u64,
    ) -> Result<Tensor> {
        let gn = self.opt.clip_grad_norm(max_grad_norm);
        let checks = Tensor::stack(&[loss.shallow_clone(), gn.shallow_clone()], 0).isfinite();
        let ok: Vec<bool> = Vec::try_from(&checks)?;
        if let Some(i) = ok.iter().position(|&x| !x) {
            return Err(AgentError::NonFinite {
                metric: ["loss", "grad_norm"][i].into(),
                step,
            });
        }
        self.opt.step(learning_rate);
        Ok(gn)
    }

    /// Phase 3: `iterations` × `minibatches` clipped steps over whole groups. A minibatch runs
    /// forward and backward in passes of [`rows_per_pass`] rows, its gradients summed before the
    /// step (the same step as one pass, up to float rounding).
    pub(crate) fn optimise(
        &mut self,
        batch: &GroupBatch,
        c: &Steps,
        step: u64,
    ) -> Result<StepStats> {
        let mut rng = StdRng::seed_from_u64(derive_seed(self.seed, step) ^ 0x6e0);
        let dev = self.actor.device();
        let (g, groups) = (self.g, self.prompts);
        let per_mb = groups / c.minibatches;
        let seq_len = batch.rollout.seqs.prompt.size()[1] + batch.rollout.seqs.tokens.size()[1];
        let pass = rows_per_pass(dev, seq_len, self.actor.model.config().n_embd as i64, g);
        let mut rows: Vec<Tensor> = Vec::new();
        for _ in 0..c.iterations {
            let mut order: Vec<usize> = (0..groups).collect();
            order.shuffle(&mut rng);
            for chunk in order.chunks(per_mb) {
                let ids: Vec<i64> = chunk
                    .iter()
                    .flat_map(|&p| (p * g..(p + 1) * g).map(|i| i as i64))
                    .collect();
                let idx = Tensor::from_slice(&ids).to_device(dev); // [mb]
                let norm = GrpoNorm::of(&batch.mask.index_select(0, &idx), c.loss_type, c.max_len);
                self.opt.zero_grad();
                let mut parts: Vec<Tensor> = Vec::new(); // per pass: loss, clips, KL, entropy
                for part in ids.chunks(pass) {
                    let idx = Tensor::from_slice(part).to_device(dev); // [rows]
                    let s = batch.rollout.seqs.select(&idx);
                    let mask = batch.mask.index_select(0, &idx); // [rows, N]
                    let out = sequence_outputs(
                        &self.actor.model,
                        &s,
                        c.temperature,
                        true,
                        EntropyGrad::Detached,
                    );
                    let ref_logp = batch.ref_logp.as_ref().map(|r| r.index_select(0, &idx));
                    let l = grpo_loss_part(
                        &out.logprobs,
                        &batch.rollout.logprobs.index_select(0, &idx),
                        ref_logp.as_ref().filter(|_| c.beta > 0.0),
                        &batch.advantages.index_select(0, &idx),
                        &mask,
                        c.loss_type,
                        c.eps,
                        c.beta,
                        &norm,
                    );
                    l.loss.backward();
                    parts.push(Tensor::stack(
                        &[
                            l.loss.detach(),
                            l.clip_low,
                            l.clip_high,
                            l.kl.detach(),
                            norm.token_mean(&out.entropy, &mask),
                        ],
                        0,
                    ));
                }
                let sums = Tensor::stack(&parts, 0).sum_dim_intlist(0, false, Kind::Float); // [5]
                let gn = self.apply_step(&sums.get(0), c.learning_rate, c.max_grad_norm, step)?;
                rows.push(Tensor::cat(&[sums, gn.view([1])], 0));
            }
        }
        let m: Vec<f64> = Vec::try_from(
            Tensor::stack(&rows, 0)
                .mean_dim(0, false, Kind::Float)
                .to_kind(Kind::Double),
        )?;
        Ok(StepStats {
            loss: m[0],
            clip_low: m[1],
            clip_high: m[2],
            kl: m[3],
            entropy: m[4],
            grad_norm: m[5],
        })
    }

    /// Phase 4: what the update spent (sampling, the reference pass, the training passes), and
    /// the metrics every group agent logs under TRL's names. `kl` is the algorithm's own KL.
    pub(crate) fn finish(
        &mut self,
        batch: &GroupBatch,
        st: &StepStats,
        iterations: usize,
        learning_rate: f64,
        step: u64,
    ) -> Result<Metrics> {
        let mask = &batch.rollout.seqs.mask;
        let lengths = mask.sum_dim_intlist(1, false, Kind::Float); // [B]
        let v: Vec<f64> = Vec::try_from(
            Tensor::stack(
                &[
                    batch.rewards.mean(Kind::Float),
                    batch.rewards.std(true),
                    batch
                        .group_std
                        .le(0.0)
                        .to_kind(Kind::Float)
                        .mean(Kind::Float),
                    lengths.mean(Kind::Float),
                    mask.sum(Kind::Float),
                ],
                0,
            )
            .to_kind(Kind::Double),
        )?;
        let eps = &batch.rollout.episodes;
        let truncated = eps.iter().filter(|e| !e.ended_turn).count() as f64 / eps.len() as f64;

        let s = &batch.rollout.seqs;
        let b = eps.len() as f64;
        let (lp, n) = (s.prompt.size()[1], s.tokens.size()[1]);
        let seq_tokens = b * (lp + n) as f64;
        let fpt = self.actor.model.config().flops_per_token((lp + n) as usize);
        let train_tokens = seq_tokens * iterations as f64;
        let reference = if self.reference.is_some() { 1.0 } else { 0.0 };
        // Each distinct prompt runs once per pass (sampling's prefill, every scoring pass: their
        // passes hold whole groups).
        let run_tokens = (distinct_prompts(s).0.size()[0] * lp) as f64 + b * n as f64;
        self.budget.samples += b as u64;
        self.budget.tokens_generated += v[4] as u64;
        self.budget.train_tokens += train_tokens as u64;
        if matches!(self.reward, RewardSignal::Gold) {
            self.budget.oracle_queries += b as u64;
        }
        let prefill = run_tokens - b * n as f64;
        self.budget.flops += fpt * (prefill + v[4])
            + reference * fpt * run_tokens
            + 3.0 * fpt * run_tokens * iterations as f64;

        let mut m = Metrics::new();
        m.insert("reward".into(), v[0]);
        m.insert("reward_std".into(), v[1]);
        m.insert("frac_reward_zero_std".into(), v[2]);
        m.insert("completions/mean_length".into(), v[3]);
        m.insert("completions/clipped_ratio".into(), truncated);
        m.insert("loss".into(), st.loss);
        m.insert("kl".into(), st.kl);
        m.insert("entropy".into(), st.entropy);
        m.insert("clip_ratio/low_mean".into(), st.clip_low);
        m.insert("clip_ratio/high_mean".into(), st.clip_high);
        m.insert("clip_ratio/region_mean".into(), st.clip_low + st.clip_high);
        m.insert("grad_norm".into(), st.grad_norm);
        m.insert("train/lr".into(), learning_rate);
        if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_finite()) {
            return Err(AgentError::NonFinite {
                metric: k.clone(),
                step,
            });
        }
        Ok(m)
    }

    pub(crate) fn proxy_reward(&self) -> &dyn RewardFn {
        match &self.reward {
            RewardSignal::Gold => self.gold.as_ref(),
            RewardSignal::Scorer(s) => s.as_ref(),
        }
    }

    /// Weights, optimiser and budget under `<dir>/<name>.*`.
    pub(crate) fn save_state(&self, dir: &Path, name: &str) -> Result<()> {
        let mut st = StateFile::new();
        st.add("actor", self.actor.vs.variables().into_iter().collect());
        st.add("opt", self.opt.state());
        st.write(
            dir,
            name,
            &GroupState {
                budget: self.budget,
            },
        )
    }

    pub(crate) fn load_state(&mut self, dir: &Path, name: &str) -> Result<()> {
        let (st, s, path): (StateFile, GroupState, _) = StateFile::read(dir, name)?;
        crate::checkpoint::load_tensors_into(&mut self.actor.vs, st.group("actor"), &path)?;
        self.opt.load_state(st.group("opt"))?;
        self.budget = s.budget;
        Ok(())
    }
}

/// Training state saved next to the policy checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct GroupState {
    budget: Budget,
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

/// What every agent built on [`GroupCore`] (in a field `core`) shares: sampling and the tokenizer
/// through its actor, its saved state under `<dir>/<state>.*`, and the reward model's labels
/// counted as its oracle queries.
macro_rules! group_agent_plumbing {
    ($agent:ty, $state:literal) => {
        impl $agent {
            /// Count `queries` oracle queries already spent on this agent's reward (a reward
            /// model's preference labels), so budgets compare with DPO's.
            pub fn with_prior_oracle_queries(mut self, queries: u64) -> Self {
                self.core.budget.oracle_queries += queries;
                self
            }
        }

        impl crate::policy::Policy for $agent {
            fn sample(
                &self,
                prompts: &[Vec<u32>],
                cfg: &crate::sampling::SamplingConfig,
            ) -> crate::Result<crate::sampling::Generation> {
                self.core.actor.sample(prompts, cfg)
            }
            fn tokenizer(&self) -> &crate::tokenizer::Tokenizer {
                &self.core.actor.tokenizer
            }
        }

        impl crate::agent::Resumable for $agent {
            fn save_state(&self, dir: &std::path::Path) -> crate::Result<()> {
                self.core.save_state(dir, $state)
            }
            fn load_state(&mut self, dir: &std::path::Path) -> crate::Result<()> {
                self.core.load_state(dir, $state)
            }
        }
    };
}
pub(crate) use group_agent_plumbing;

/// The [`Agent`] accessors of a [`GroupCore`] agent, inside its `impl Agent`.
macro_rules! group_agent_accessors {
    () => {
        fn policy(&self) -> &crate::policy::LmPolicy {
            &self.core.actor
        }
        fn budget(&self) -> crate::agent::Budget {
            self.core.budget
        }
        fn proxy_reward(&self) -> Option<&dyn aligngym_envs::RewardFn> {
            Some(self.core.proxy_reward())
        }
    };
}
pub(crate) use group_agent_accessors;

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

    /// Two rows with unequal lengths: row 0 has 1 token, row 1 has 3; on-policy (ratio 1).
    #[test]
    fn parts_of_a_minibatch_sum_to_its_loss() {
        // Each row as its own pass, with the whole minibatch's norm: the same values as the
        // worked ones above (row 0 contributes −1, row 1 the rest).
        let (logp, mask, adv) = unequal();
        for (lt, want, row0) in [
            (GrpoLoss::Grpo, -0.25, -0.5),
            (GrpoLoss::DrGrpo, 0.0625, -0.125),
            (GrpoLoss::Dapo, 0.125, -0.25),
        ] {
            let norm = GrpoNorm::of(&mask, lt, 4);
            let part = |r: i64| {
                let row = |x: &Tensor| x.narrow(0, r, 1);
                grpo_loss_part(
                    &row(&logp),
                    &row(&logp),
                    None,
                    &row(&adv),
                    &row(&mask),
                    lt,
                    (0.2, 0.2),
                    0.0,
                    &norm,
                )
                .loss
            };
            close(&part(0), row0);
            close(&(part(0) + part(1)), want);
        }
    }

    fn unequal() -> (Tensor, Tensor, Tensor) {
        let logp = t(&[-1.0, 0.0, 0.0, -1.0, -1.0, -1.0], &[2, 3]);
        let mask = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[2, 3]);
        let adv = t(&[1.0, -0.5], &[2]);
        (logp, mask, adv)
    }

    #[test]
    fn grpo_dr_grpo_and_dapo_normalise_differently() {
        let (logp, mask, adv) = unequal();
        let run = |lt| grpo_loss(&logp, &logp, None, &adv, &mask, lt, (0.2, 0.2), 0.0, 4).loss;
        // Per-token loss −A (ratio 1): row 0 [−1], row 1 [0.5, 0.5, 0.5].
        // grpo: mean of per-row means = (−1 + 0.5) / 2 = −0.25.
        close(&run(GrpoLoss::Grpo), -0.25);
        // dr_grpo: sum / (2 rows × 4) = (−1 + 1.5) / 8 = 0.0625.
        close(&run(GrpoLoss::DrGrpo), 0.0625);
        // dapo: sum / 4 tokens = 0.5 / 4 = 0.125.
        close(&run(GrpoLoss::Dapo), 0.125);
    }

    #[test]
    fn dapo_clips_higher_above_one_plus_eps_low() {
        // One token, A = 1, ratio e^0.25 ≈ 1.2840: past both 1 + ε = 1.2 and 1 + ε_high = 1.28,
        // so the loss is −1.2 with symmetric clipping and −1.28 with clip-higher.
        let old = t(&[0.0], &[1, 1]);
        let logp = t(&[0.25], &[1, 1]);
        let mask = t(&[1.0], &[1, 1]);
        let adv = t(&[1.0], &[1]);
        let sym = grpo_loss(
            &logp,
            &old,
            None,
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.2),
            0.0,
            1,
        );
        close(&sym.loss, -1.2);
        close(&sym.clip_high, 1.0);
        let hi = grpo_loss(
            &logp,
            &old,
            None,
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.28),
            0.0,
            1,
        );
        close(&hi.loss, -1.28);
        // A ratio of e^0.22 ≈ 1.2461 is clipped at 1.2 symmetric, not at all with ε_high 0.28.
        let logp = t(&[0.22], &[1, 1]);
        let hi = grpo_loss(
            &logp,
            &old,
            None,
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.28),
            0.0,
            1,
        );
        close(&hi.loss, -(0.22f64.exp()));
        close(&hi.clip_high, 0.0);
        // A negative advantage with a ratio below 1 − ε_low counts as clipped low.
        let logp = t(&[-0.5], &[1, 1]);
        let neg = t(&[-2.0], &[1]);
        let lo = grpo_loss(
            &logp,
            &old,
            None,
            &neg,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.28),
            0.0,
            1,
        );
        // −min(ρA, clip(ρ)A) = −min(−2·0.6065, −2·0.8) = 1.6.
        close(&lo.loss, 1.6);
        close(&lo.clip_low, 1.0);
    }

    #[test]
    fn the_kl_term_is_k3_weighted_by_beta() {
        // logp = ref + 0.5 on one token, A = 0: loss = β k3, k3 = e^−0.5 + 0.5 − 1 ≈ 0.106531.
        let logp = t(&[-0.5], &[1, 1]);
        let reference = t(&[-1.0], &[1, 1]);
        let mask = t(&[1.0], &[1, 1]);
        let adv = t(&[0.0], &[1]);
        let l = grpo_loss(
            &logp,
            &logp,
            Some(&reference),
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.2),
            0.1,
            1,
        );
        let k3 = (-0.5f64).exp() + 0.5 - 1.0;
        close(&l.kl, k3);
        close(&l.loss, 0.1 * k3);
    }
}
