//! What every online agent built on a group of completions per prompt shares (GRPO, RLOO,
//! REINFORCE++, online DPO): the policy and its optimiser, the envs that sample G completions per
//! prompt through the rollout collector, the reward, the frozen reference when a KL term needs
//! one, the clipped optimisation steps, the budget and the saved state. Each algorithm adds only
//! how it turns a rollout into advantages or a loss.

use crate::agent::{load_policy_state, save_policy_state, Budget, Metrics};
use crate::lm::optim::{AdamW, AdamWConfig};
use crate::lm::policy::LmPolicy;
use crate::lm::sampling::{
    distinct_prompts, sequence_logprobs, sequence_outputs, EntropyGrad, SamplingConfig,
};
use crate::losses::{grpo_loss_part, GrpoLoss, GrpoNorm};
use crate::metric;
use crate::rollout::{chat_envs, collect, RewardSignal, Rollout, Start};
use crate::scalars::{host_scalars, ScalarRows};
use crate::{AgentError, Result};
use aligngym_envs::{
    derive_seed, ChatEnv, ChatEnvConfig, RewardFn, RewardSource, Split, Task, VecEnv,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

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

/// What the group-sampling agents (GRPO, RLOO, REINFORCE++, online DPO) share: the policy and its
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
        m.remove(metric::KL);
        let [kl, mean_score] = host_scalars([&seq_kl.mean(Kind::Float), &score.mean(Kind::Float)])?;
        if !kl.is_finite() {
            return Err(AgentError::NonFinite {
                metric: metric::OBJECTIVE_KL.into(),
                step,
            });
        }
        m.insert(metric::OBJECTIVE_KL.into(), kl);
        m.insert(metric::OBJECTIVE_SCORES.into(), mean_score);
        m.insert(metric::OBJECTIVE_NON_SCORE_REWARD.into(), -coef * kl);
        m.insert(metric::OBJECTIVE_RLHF_REWARD.into(), mean_score - coef * kl);
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
                metric: [metric::LOSS, metric::GRAD_NORM][i].into(),
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
        let mut rows = ScalarRows::<6>::default(); // per minibatch: loss, clips, KL, entropy, norm
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
                let sum = |i: i64| sums.get(i);
                rows.push([&sum(0), &sum(1), &sum(2), &sum(3), &sum(4), &gn]);
            }
        }
        let [loss, clip_low, clip_high, kl, entropy, grad_norm] = rows.means()?;
        Ok(StepStats {
            loss,
            clip_low,
            clip_high,
            kl,
            entropy,
            grad_norm,
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
        let [reward, reward_std, zero_std, mean_length, policy_tokens] = host_scalars([
            &batch.rewards.mean(Kind::Float),
            &batch.rewards.std(true),
            &batch
                .group_std
                .le(0.0)
                .to_kind(Kind::Float)
                .mean(Kind::Float),
            &lengths.mean(Kind::Float),
            &mask.sum(Kind::Float),
        ])?;
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
        self.budget.tokens_generated += policy_tokens as u64;
        self.budget.train_tokens += train_tokens as u64;
        if matches!(self.reward, RewardSignal::Gold) {
            self.budget.oracle_queries += b as u64;
        }
        let prefill = run_tokens - b * n as f64;
        self.budget.flops += fpt * (prefill + policy_tokens)
            + reference * fpt * run_tokens
            + self.actor.model.train_pass_factor() * fpt * run_tokens * iterations as f64;

        let mut m = Metrics::new();
        m.insert(metric::REWARD.into(), reward);
        m.insert(metric::REWARD_STD.into(), reward_std);
        m.insert(metric::FRAC_REWARD_ZERO_STD.into(), zero_std);
        m.insert(metric::COMPLETIONS_MEAN_LENGTH.into(), mean_length);
        m.insert(metric::COMPLETIONS_CLIPPED_RATIO.into(), truncated);
        m.insert(metric::LOSS.into(), st.loss);
        m.insert(metric::KL.into(), st.kl);
        m.insert(metric::ENTROPY.into(), st.entropy);
        m.insert(metric::CLIP_RATIO_LOW_MEAN.into(), st.clip_low);
        m.insert(metric::CLIP_RATIO_HIGH_MEAN.into(), st.clip_high);
        m.insert(
            metric::CLIP_RATIO_REGION_MEAN.into(),
            st.clip_low + st.clip_high,
        );
        m.insert(metric::GRAD_NORM.into(), st.grad_norm);
        m.insert(metric::TRAIN_LR.into(), learning_rate);
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
        save_policy_state(dir, name, "actor", &self.actor, &self.opt, self.budget)
    }

    pub(crate) fn load_state(&mut self, dir: &Path, name: &str) -> Result<()> {
        self.budget = load_policy_state(dir, name, "actor", &mut self.actor, &mut self.opt)?;
        Ok(())
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

        impl crate::lm::policy::Policy for $agent {
            fn sample(
                &self,
                prompts: &[Vec<u32>],
                cfg: &crate::lm::sampling::SamplingConfig,
            ) -> crate::Result<crate::lm::sampling::Generation> {
                self.core.actor.sample(prompts, cfg)
            }
            fn tokenizer(&self) -> &crate::lm::tokenizer::Tokenizer {
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
        fn policy(&self) -> &crate::lm::policy::LmPolicy {
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
