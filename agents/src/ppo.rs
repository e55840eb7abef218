//! PPO for language models (Schulman et al. 2017, arXiv 1707.06347; Ziegler et al. 2019,
//! arXiv 1909.08593; the RLHF implementation details of Huang et al. 2024, arXiv 2403.17031).
//!
//! Per update: sample a completion per prompt (KV cache, on the device) → truncate after EOS → score
//! with any `RewardFn` (missing-EOS penalty) → per-token KL to the frozen reference (k1 or k3) →
//! KL-shaped rewards with the score at the last real token → critic values → GAE → whitened
//! advantages → `update_epochs` × `num_minibatches` clipped policy and value updates with an entropy
//! bonus, gradient clipping and an optional `target_kl` early stop; fixed or adaptive `kl_coef`.

use crate::agent::{Agent, Budget, Metrics, Resumable, StateFile};
use crate::losses::{
    gae, kl_per_token, masked_mean, masked_var, ppo_policy_loss, ppo_value_loss, shaped_rewards,
    whiten, KlEstimator,
};
use crate::optim::{AdamW, AdamWConfig};
use crate::policy::{ActorCritic, LmPolicy, Policy};
use crate::sampling::{
    completion_hidden, sequence_logprobs, sequence_outputs, Generation, SamplingConfig,
};
use crate::tokenizer::Tokenizer;
use crate::{AgentError, Result};
use aligngym_envs::{derive_seed, RewardFn, Split, Task, TextCodec};
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
        let pos = |f: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(AgentError::config(f, "expected a finite value > 0"))
            }
        };
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
        Ok(())
    }
}

/// The PPO agent.
pub struct PpoAgent {
    cfg: PpoConfig,
    task: Arc<dyn Task>,
    actor: LmPolicy,
    critic: Option<LmPolicy>,
    reference: LmPolicy,
    reward: Box<dyn RewardFn>,
    actor_opt: AdamW,
    critic_opt: Option<AdamW>,
    kl_coef: f64,
    seed: u64,
    budget: Budget,
    reward_counts_as_oracle: bool,
}

impl PpoAgent {
    /// PPO from `policy` (also the frozen reference and, by default, the critic's initialisation),
    /// optimising `reward` on `task`'s training prompts. `reward_counts_as_oracle`: each score is a
    /// gold-reward query (true for the gold reward, false for a learned reward model).
    pub fn new(
        cfg: PpoConfig,
        task: Arc<dyn Task>,
        policy: LmPolicy,
        reward: Box<dyn RewardFn>,
        reward_counts_as_oracle: bool,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
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
            cfg,
            task,
            actor: policy,
            critic,
            reference,
            reward,
            actor_opt,
            critic_opt,
            seed,
            budget: Budget::default(),
            reward_counts_as_oracle,
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
}

fn select(g: &Generation, idx: &Tensor) -> Generation {
    Generation {
        prompt: g.prompt.index_select(0, idx),
        prompt_valid: g.prompt_valid.index_select(0, idx),
        tokens: g.tokens.index_select(0, idx),
        logprobs: g.logprobs.index_select(0, idx),
        mask: g.mask.index_select(0, idx),
    }
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
        let net = self.critic.as_ref().unwrap_or(&self.actor);
        let hidden = completion_hidden(
            &net.model,
            &g.prompt,
            &g.prompt_valid,
            &g.tokens,
            &g.mask,
            train,
        ); // [B, N, C]
        net.model.value(&hidden) * &g.mask // [B, N]
    }
}

impl Agent for PpoAgent {
    fn name(&self) -> &'static str {
        "ppo"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        let seed = derive_seed(self.seed, step);
        let mut rng = StdRng::seed_from_u64(seed);
        let prompts = self.task.prompts(Split::Train);
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.shuffle(&mut rng);
        let texts: Vec<&str> = (0..c.batch_size)
            .map(|i| prompts[order[i % order.len()]].as_str())
            .collect();
        let ids = self.actor.encode_prompts(&texts);
        tch::manual_seed(seed as i64);
        let gen = self.actor.sample(&ids, &self.sampling())?;
        // One device→host copy of the completions serves both the texts and the EOS flags.
        let ids = gen.completions();
        let tok = &self.actor.tokenizer;
        let completions: Vec<String> = ids.iter().map(|c| tok.decode_ids(c)).collect();
        let eos: Vec<bool> = ids
            .iter()
            .map(|c| c.last() == Some(&tok.eos_id()))
            .collect();
        let comp_refs: Vec<&str> = completions.iter().map(|s| s.as_str()).collect();
        let raw = self.reward.score_batch(&texts, &comp_refs)?;
        let scores: Vec<f32> = raw
            .iter()
            .zip(&eos)
            .map(|(&s, &e)| {
                if e {
                    s
                } else {
                    s - c.missing_eos_penalty as f32
                }
            })
            .collect();
        if let Some(bad) = scores.iter().position(|s| !s.is_finite()) {
            return Err(AgentError::NonFinite {
                metric: format!("objective/scores (sample {bad})"),
                step,
            });
        }
        let dev = self.actor.device();
        let score = Tensor::from_slice(&scores).to_device(dev); // [B]
        let mask = &gen.mask; // [B, N]
        let (b, n) = mask.size2()?;
        let (ref_logp, old_values) = tch::no_grad(|| {
            let r = sequence_logprobs(
                &self.reference.model,
                &gen.prompt,
                &gen.prompt_valid,
                &gen.tokens,
                mask,
                c.temperature,
                false,
            );
            (r, self.values(&gen, false))
        });
        let old_logp = gen.logprobs.shallow_clone(); // [B, N]
        let kl = kl_per_token(&old_logp, &ref_logp, mask, c.kl_estimator); // [B, N]
        let mut rewards = shaped_rewards(&kl, &score, mask, self.kl_coef); // [B, N]
        if c.whiten_rewards {
            rewards = whiten(&rewards, mask);
        }
        let (adv, returns) = gae(&rewards, &old_values, mask, c.gamma, c.gae_lambda);
        let adv = whiten(&adv, mask);

        let mb = b / c.num_minibatches as i64;
        let mut stats: Vec<Tensor> = Vec::new(); // [pg, vf, clipfrac, approxkl, ratio, vclipfrac, entropy] per minibatch
        let mut stopped_early = 0.0;
        'epochs: for _ in 0..c.update_epochs {
            let mut perm: Vec<i64> = (0..b).collect();
            perm.shuffle(&mut rng);
            for chunk in perm.chunks(mb as usize) {
                let idx = Tensor::from_slice(chunk).to_device(dev);
                let g = select(&gen, &idx);
                let out = sequence_outputs(
                    &self.actor.model,
                    &g.prompt,
                    &g.prompt_valid,
                    &g.tokens,
                    &g.mask,
                    c.temperature,
                    true,
                );
                let (pg, clipfrac, approxkl, ratio) = ppo_policy_loss(
                    &out.logprobs,
                    &old_logp.index_select(0, &idx),
                    &adv.index_select(0, &idx),
                    &g.mask,
                    c.clip_coef,
                );
                let v = self.values(&g, true);
                let (vf, vclip) = ppo_value_loss(
                    &v,
                    &old_values.index_select(0, &idx),
                    &returns.index_select(0, &idx),
                    &g.mask,
                    c.vf_clip_coef,
                );
                let ent = masked_mean(&out.entropy, &g.mask);
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
                    .map(|o| o.clip_grad_norm(c.max_grad_norm));
                // One host read tells which quantity (if any) went non-finite.
                let cgn = cgn.unwrap_or_else(|| Tensor::from(0.0f32));
                let checks = Tensor::stack(&[pg.detach(), vf.detach(), gn, cgn], 0).isfinite();
                let ok: Vec<bool> = Vec::try_from(&checks)?;
                if let Some(i) = ok.iter().position(|&x| !x) {
                    let metric = [
                        "loss/policy_avg",
                        "loss/value_avg",
                        "policy/grad_norm",
                        "val/grad_norm",
                    ][i];
                    return Err(AgentError::NonFinite {
                        metric: metric.into(),
                        step,
                    });
                }
                self.actor_opt.step(c.learning_rate);
                if let Some(o) = self.critic_opt.as_mut() {
                    o.step(c.learning_rate);
                }
                let row = Tensor::stack(
                    &[
                        pg.detach(),
                        vf.detach(),
                        clipfrac,
                        approxkl.detach(),
                        ratio.detach(),
                        vclip,
                        ent.detach(),
                    ],
                    0,
                );
                stats.push(row);
                if c.target_kl > 0.0 && approxkl.double_value(&[]) > c.target_kl {
                    stopped_early = 1.0;
                    break 'epochs;
                }
            }
        }
        let minibatches_run = stats.len() as f64;
        let stats: Vec<f64> = Vec::try_from(
            Tensor::stack(&stats, 0)
                .mean_dim(0, false, Kind::Float)
                .to_kind(Kind::Double),
        )?;

        // Rollout statistics (sequence-level sums, batch means), one transfer.
        let seq_kl = kl.sum_dim_intlist(1, false, Kind::Float); // [B]
        let ent_seq = (-&old_logp * mask).sum_dim_intlist(1, false, Kind::Float); // [B]
        let ev = 1.0
            - masked_var(&(&returns - &old_values), mask)
                / masked_var(&returns, mask).clamp_min(1e-8);
        let roll: Vec<f64> = Vec::try_from(
            Tensor::stack(
                &[
                    seq_kl.mean(Kind::Float),
                    ent_seq.mean(Kind::Float),
                    score.mean(Kind::Float),
                    mask.sum(Kind::Float),
                    ev,
                ],
                0,
            )
            .to_kind(Kind::Double),
        )?;
        let (mean_kl, mean_ent, mean_score, n_tokens, explained) =
            (roll[0], roll[1], roll[2], roll[3], roll[4]);
        if c.adaptive_kl {
            let err = (mean_kl / c.kl_target - 1.0).clamp(-0.2, 0.2);
            self.kl_coef *= 1.0 + err * b as f64 / c.kl_horizon;
        }
        let kl_coef_used = if c.adaptive_kl {
            self.kl_coef
        } else {
            c.kl_coef
        };
        // Budget: sampling (1 forward per token), reference + critic forwards, and training passes.
        let cfgm = self.actor.model.config();
        let lp = gen.prompt.size()[1];
        let seq_tokens = (b * (lp + n)) as f64;
        let fpt = cfgm.flops_per_token((lp + n) as usize);
        let nets = if self.critic.is_some() { 2.0 } else { 1.0 };
        let train_tokens = seq_tokens * minibatches_run / c.num_minibatches as f64;
        self.budget.samples += b as u64;
        self.budget.tokens_generated += n_tokens as u64;
        self.budget.train_tokens += train_tokens as u64;
        if self.reward_counts_as_oracle {
            self.budget.oracle_queries += b as u64;
        }
        self.budget.flops += fpt * (b as f64 * lp as f64 + n_tokens)
            + 2.0 * fpt * seq_tokens
            + 3.0 * fpt * train_tokens * nets;

        let mut m = Metrics::new();
        m.insert("objective/kl".into(), mean_kl);
        m.insert("objective/entropy".into(), mean_ent);
        m.insert("objective/scores".into(), mean_score);
        m.insert("objective/non_score_reward".into(), -kl_coef_used * mean_kl);
        m.insert(
            "objective/rlhf_reward".into(),
            mean_score - kl_coef_used * mean_kl,
        );
        m.insert("objective/kl_coef".into(), self.kl_coef);
        m.insert("loss/policy_avg".into(), stats[0]);
        m.insert("loss/value_avg".into(), stats[1]);
        m.insert("policy/clipfrac_avg".into(), stats[2]);
        m.insert("policy/approxkl_avg".into(), stats[3]);
        m.insert("val/ratio".into(), stats[4]);
        m.insert("val/clipfrac_avg".into(), stats[5]);
        m.insert("policy/entropy_avg".into(), stats[6]);
        m.insert(
            "val/num_eos_tokens".into(),
            eos.iter().filter(|&&e| e).count() as f64,
        );
        m.insert("val/explained_variance".into(), explained);
        m.insert("policy/early_stop".into(), stopped_early);
        m.insert("train/lr".into(), c.learning_rate);
        for (k, v) in &m {
            if !v.is_finite() && k != "val/explained_variance" {
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
        Some(self.reward.as_ref())
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
        st.add("actor", self.actor.vs.variables().into_iter().collect());
        st.add("actor_opt", self.actor_opt.state());
        if let (Some(cr), Some(o)) = (&self.critic, &self.critic_opt) {
            st.add("critic", cr.vs.variables().into_iter().collect());
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
        crate::checkpoint::load_tensors_into(&mut self.actor.vs, st.group("actor"), &path)?;
        self.actor_opt.load_state(st.group("actor_opt"))?;
        if let (Some(cr), Some(o)) = (self.critic.as_mut(), self.critic_opt.as_mut()) {
            crate::checkpoint::load_tensors_into(&mut cr.vs, st.group("critic"), &path)?;
            o.load_state(st.group("critic_opt"))?;
        }
        self.kl_coef = s.kl_coef;
        self.budget = s.budget;
        Ok(())
    }
}
