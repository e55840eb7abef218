//! KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv
//! 2402.01306; TRL's `KTOTrainer`): offline, on unpaired examples — a completion and whether it is
//! desirable — instead of pairs. Each example's log-ratio `Δ = log π − log π_ref` is pushed above
//! (desirable) or below (undesirable) a reference point `z₀`, the batch's estimate of KL(π ‖ π_ref)
//! from mismatched prompt–completion pairs, clamped at 0 and not differentiated.
//!
//! Per update, in named phases: **batch** (seeded epochs over the examples) → **log-probs**: each
//! example's completion and its mismatched partner (the next example's completion, under this
//! prompt) in one forward pass; the reference's were computed once at the start → **loss**:
//! [`kto_loss`] around [`kto_reference_point`] → **step** → **budget**.

use crate::metric;
use crate::scalars::host_scalars;
use crate::agent::{load_policy_state, save_policy_state, Agent, Budget, Metrics, Resumable};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::losses::{kto_loss, kto_reference_point};
use crate::lm::optim::{lr_at, AdamW, AdamWConfig, LrSchedule};
use crate::stages::pairs::{encode_pairs, epoch_batch, epochs_done, pair_logps, reference_pair_logps, PairBatch};
use crate::lm::policy::LmPolicy;
use crate::agent::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::{ConversationPair, PreferencePair, UnpairedExample};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

/// KTO hyperparameters (TRL's names and defaults unless stated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtoConfig {
    /// Adam learning rate. Default 1e-4 (as DPO here; TRL's 5e-7 is for billion-parameter models).
    pub learning_rate: f64,
    /// Examples per step. Default 32.
    pub batch_size: usize,
    /// β. Default 0.1.
    pub beta: f64,
    /// λ_D, the weight of desirable examples. Default 1.
    pub desirable_weight: f64,
    /// λ_U, the weight of undesirable examples. Default 1.
    pub undesirable_weight: f64,
    /// Linear warm-up steps. Default 10.
    pub warmup_steps: usize,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            batch_size: 32,
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            warmup_steps: 10,
            max_grad_norm: 1.0,
        }
    }
}

impl KtoConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        let pos = AgentError::positive;
        pos("learning_rate", self.learning_rate)?;
        pos("beta", self.beta)?;
        pos("desirable_weight", self.desirable_weight)?;
        pos("undesirable_weight", self.undesirable_weight)?;
        pos("max_grad_norm", self.max_grad_norm)?;
        if self.batch_size < 2 {
            return Err(AgentError::config(
                "batch_size",
                "expected ≥ 2 (the KL estimate pairs each prompt with another's completion)",
            ));
        }
        Ok(())
    }
}

impl Algorithm for KtoConfig {
    const NAME: &'static str = "kto";
    const ABOUT: &'static str =
        "KTO on unpaired desirable/undesirable examples (or preference pairs, unpaired)";
    const LEARNS: Learns = Learns::Offline;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let path = ctx.prefs_file(
            "KTO",
            "lines {prompt, completion, label}, or preference pairs",
        )?;
        let examples = aligngym_envs::read_unpaired(path)?;
        let queries = ctx.prefs_queries.unwrap_or(examples.len() as u64);
        let agent = KtoAgent::new(
            self.clone(),
            ctx.policy,
            &examples,
            queries,
            ctx.updates,
            ctx.seed,
        )?;
        Ok(Box::new(agent))
    }
}

/// The KTO agent.
pub struct KtoAgent {
    cfg: KtoConfig,
    policy: LmPolicy,
    /// Example i's prompt with its own completion (`chosen`) and with example i + 1's (`rejected`).
    data: PairBatch,
    /// `[n]` 1 for desirable examples.
    desirable: Tensor,
    ref_own: Tensor,
    ref_mismatched: Tensor,
    opt: AdamW,
    seed: u64,
    budget: Budget,
    total_steps: usize,
}

impl KtoAgent {
    /// KTO from `policy` (also the frozen reference) on `examples`; `oracle_queries` is what the
    /// labels cost; `total_steps` shapes the warm-up schedule.
    pub fn new(
        cfg: KtoConfig,
        policy: LmPolicy,
        examples: &[UnpairedExample],
        oracle_queries: u64,
        total_steps: usize,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        let n = examples.len();
        if n < 2 {
            return Err(AgentError::Data("KTO needs at least two examples".into()));
        }
        // Row i: example i's completion, and the next example's completion under i's prompt (the
        // mismatched pair whose KL is KTO's reference point). A conversation's completion is its
        // turns, so only its assistant tokens count.
        let rows: Vec<PreferencePair> = (0..n)
            .map(|i| {
                let (e, next) = (&examples[i], &examples[(i + 1) % n]);
                match (&e.conversation, &next.conversation) {
                    (Some(c), Some(d)) => PreferencePair::conversational(ConversationPair {
                        prompt: c.prompt.clone(),
                        chosen: c.completion.clone(),
                        rejected: d.completion.clone(),
                    }),
                    _ => PreferencePair::new(&e.prompt, &e.completion, &next.completion),
                }
            })
            .collect();
        let data = encode_pairs(&policy, &rows)?;
        let labels: Vec<f32> = examples.iter().map(|e| f32::from(e.label)).collect();
        let desirable = Tensor::from_slice(&labels).to_device(policy.device()); // [n]
        let mut budget = Budget {
            oracle_queries,
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        for e in examples {
            if seen.insert((e.prompt.as_str(), e.completion.as_str())) {
                budget.samples += 1;
                budget.tokens_generated +=
                    policy.tokenizer.encode_ids(&e.completion).len() as u64 + 1;
            }
        }
        let reference = policy.duplicate(false)?;
        let (ref_own, ref_mismatched, flops) = reference_pair_logps(&reference, &data);
        budget.flops += flops;
        let opt = AdamW::new(
            &policy.vs,
            AdamWConfig {
                eps: 1e-8,
                ..Default::default()
            },
        );
        Ok(Self {
            cfg,
            policy,
            data,
            desirable,
            ref_own,
            ref_mismatched,
            opt,
            seed,
            budget,
            total_steps,
        })
    }
}

impl Agent for KtoAgent {
    fn name(&self) -> &'static str {
        "kto"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        // Phase 1: the batch.
        let n = self.desirable.size()[0] as usize;
        let idx_v = epoch_batch(n, c.batch_size, self.seed, step);
        let idx = Tensor::from_slice(&idx_v).to_device(self.policy.device()); // [k]

        // Phase 2: own and mismatched completions in one pass.
        let (own, mismatched) = pair_logps(&self.policy, &self.data, &idx, true); // [k], [k]
        let delta = &own - self.ref_own.index_select(0, &idx); // [k]
        let kl = mismatched.detach() - self.ref_mismatched.index_select(0, &idx); // [k]

        // Phase 3: the loss around the reference point.
        let z0 = kto_reference_point(&kl); // []
        let good = self.desirable.index_select(0, &idx); // [k]
        let losses = kto_loss(
            &delta,
            &good,
            &z0,
            c.beta,
            (c.desirable_weight, c.undesirable_weight),
        );
        let loss = losses.mean(Kind::Float);
        // Phase 4: the step.
        self.opt.zero_grad();
        loss.backward();
        let gn = self.opt.clip_grad_norm(c.max_grad_norm);
        let lr = lr_at(
            step as usize,
            self.total_steps.max(1),
            c.warmup_steps,
            c.learning_rate,
            1.0,
            LrSchedule::Constant,
        );
        let rewards = c.beta * delta.detach(); // [k]
        let bad = 1.0 - &good;
        let over = |w: &Tensor| (&rewards * w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1.0);
        let (chosen, rejected) = (over(&good), over(&bad));
        let [loss_v, z0, chosen, rejected, margin, grad_norm] = host_scalars([
            &loss.detach(),
            &z0,
            &chosen,
            &rejected,
            &(&chosen - &rejected),
            &gn,
        ])?;
        if !loss_v.is_finite() || !grad_norm.is_finite() {
            return Err(AgentError::NonFinite {
                metric: if loss_v.is_finite() {
                    metric::TRAIN_GRAD_NORM
                } else {
                    metric::LOSS_KTO
                }
                .into(),
                step,
            });
        }
        self.opt.step(lr);
        // Phase 5: the budget (the forward pass covers both continuations).
        let k = idx_v.len() as u64;
        let per_row = (self.data.prompt.size()[1] * 2
            + self.data.chosen.size()[1]
            + self.data.rejected.size()[1]) as u64;
        let toks = per_row * k;
        self.budget.train_tokens += toks;
        let fpt = self
            .policy
            .model
            .config()
            .flops_per_token((per_row / 2) as usize);
        self.budget.flops += self.policy.model.train_pass_factor() * fpt * toks as f64;
        let mut m = Metrics::new();
        for (name, value) in [
            (metric::LOSS_KTO, loss_v),
            (metric::KL, z0),
            (metric::REWARDS_CHOSEN, chosen),
            (metric::REWARDS_REJECTED, rejected),
            (metric::REWARDS_MARGINS, margin),
            (metric::TRAIN_GRAD_NORM, grad_norm),
        ] {
            m.insert(name.to_string(), value);
        }
        m.insert(metric::TRAIN_LR.into(), lr);
        m.insert(metric::TRAIN_EPOCH.into(), epochs_done(n, c.batch_size, step));
        Ok(m)
    }

    fn policy(&self) -> &LmPolicy {
        &self.policy
    }
    fn budget(&self) -> Budget {
        self.budget
    }
}

impl Resumable for KtoAgent {
    fn save_state(&self, dir: &Path) -> Result<()> {
        save_policy_state(dir, "kto_state", "policy", &self.policy, &self.opt, self.budget)
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        self.budget = load_policy_state(dir, "kto_state", "policy", &mut self.policy, &mut self.opt)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aligngym_envs::{ConversationExample, Message, Role, TextCodec};

    fn policy() -> LmPolicy {
        let corpus: Vec<String> = (0..40)
            .map(|i| format!("guess {i} higher lower found it"))
            .collect();
        let tokenizer = crate::lm::tokenizer::Tokenizer::train(&corpus, 300).unwrap();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let cfg = crate::lm::model::GptConfig::tiny(tokenizer.vocab_size());
        let model = crate::lm::model::Gpt::new(&vs.root(), &cfg).unwrap();
        LmPolicy {
            vs,
            model,
            tokenizer,
            adapter_base: None,
        }
    }

    #[test]
    fn conversational_examples_train_on_the_assistant_turns_only() {
        let p = policy();
        let turn = |role: Role, content: &str| Message::new(role, content);
        let ex = |label: bool, guesses: &[&str]| {
            let mut completion = Vec::new();
            for (i, g) in guesses.iter().enumerate() {
                if i > 0 {
                    completion.push(turn(Role::User, "higher"));
                }
                completion.push(turn(Role::Assistant, g));
            }
            let c = ConversationExample {
                prompt: vec![turn(Role::User, "guess 1..8")],
                completion,
            };
            UnpairedExample {
                prompt: aligngym_envs::prefs::prompt_text(&c.prompt),
                completion: aligngym_envs::chat::transcript(&c.completion),
                label,
                conversation: Some(c),
            }
        };
        let examples = vec![ex(true, &["4", "6"]), ex(false, &["1"])];
        let agent = KtoAgent::new(KtoConfig::default(), p, &examples, 2, 10, 0).unwrap();
        let tok = &agent.policy.tokenizer;
        let end = 1; // each assistant turn ends with end-of-turn (or EOS)
        let own = |g: &[&str]| {
            g.iter()
                .map(|x| tok.encode_ids(x).len() + end)
                .sum::<usize>()
        };
        // Row 0: its own two guesses (the reply between them is context, not scored); its
        // mismatched completion is example 1's single guess.
        let scored = |m: &Tensor, row: i64| m.get(row).sum(Kind::Float).double_value(&[]) as usize;
        let valid = |m: &Tensor, row: i64| m.get(row).sum(Kind::Int64).int64_value(&[]) as usize;
        assert_eq!(scored(&agent.data.chosen_mask, 0), own(&["4", "6"]));
        assert!(valid(&agent.data.chosen_valid, 0) > own(&["4", "6"]));
        assert_eq!(scored(&agent.data.rejected_mask, 0), own(&["1"]));
        assert_eq!(scored(&agent.data.chosen_mask, 1), own(&["1"]));
    }
}
