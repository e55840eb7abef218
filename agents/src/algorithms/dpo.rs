//! DPO and its variants on an offline preference buffer (Rafailov et al. 2023, arXiv 2305.18290;
//! IPO: Azar et al. 2023, arXiv 2310.12036; hinge: SLiC, Zhao et al. 2023; label smoothing:
//! Mitchell 2023). Reference log-probs are computed once up front (the reference is frozen), which
//! halves the forward work of every step.

use crate::metric;
use crate::scalars::host_scalars;
use crate::agent::{load_policy_state, save_policy_state, Agent, Budget, Metrics, Resumable};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::losses::{dpo_loss, DpoLoss, DpoLossParams, PairScores};
use crate::lm::optim::{lr_at, AdamW, AdamWConfig, LrSchedule};
use crate::stages::pairs::{
    encode_pairs, epoch_batch, epochs_done, pair_lengths, pair_logps, reference_pair_logps, PairBatch,
};
use crate::lm::policy::LmPolicy;
use crate::agent::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::PreferencePair;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

/// DPO hyperparameters (names as in the common RLHF trainers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// Adam learning rate. Default 1e-4: the paper's 1e-6 is for GPT-2-large; small models from
    /// scratch want far larger rates.
    pub learning_rate: f64,
    /// Pairs per step. Default 32.
    pub batch_size: usize,
    /// β: strength of the implicit KL constraint. Default 0.1 (the paper's).
    pub beta: f64,
    /// Loss variant: sigmoid (DPO, the default), ipo (TRL's, length-averaged), ipo_sum, hinge,
    /// robust, simpo or orpo (these two use no reference model; β is ORPO's λ).
    pub loss_type: DpoLoss,
    /// ε: conservative DPO's label smoothing (sigmoid), robust DPO's assumed flip rate. Default 0.
    pub label_smoothing: f64,
    /// SimPO's target reward margin γ. Default 0.5 (TRL's; the paper uses 1.375 with β = 2.5).
    pub simpo_gamma: f64,
    /// RPO's α: weight of the chosen completion's per-token NLL added to the loss. Default 0 (off).
    pub rpo_alpha: f64,
    /// Linear warm-up steps. Default 10.
    pub warmup_steps: usize,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Compute reference log-probs once before training (default true); false recomputes them with
    /// the reference model every step.
    pub precompute_ref_logps: bool,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            batch_size: 32,
            beta: 0.1,
            loss_type: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            rpo_alpha: 0.0,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            precompute_ref_logps: true,
        }
    }
}

impl DpoConfig {
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

    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(AgentError::config(
                "learning_rate",
                "expected a finite value > 0",
            ));
        }
        if self.batch_size == 0 {
            return Err(AgentError::config("batch_size", "expected > 0"));
        }
        self.loss_params().check()?;
        Ok(())
    }
}

impl Algorithm for DpoConfig {
    const NAME: &'static str = "dpo";
    const ABOUT: &'static str = "DPO (and its offline family) on a preference file";
    const LEARNS: Learns = Learns::Offline;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let path = ctx.prefs_file("DPO", "make one with `aligngym prefs`")?;
        let pairs = aligngym_envs::read_pairs(path)?;
        let queries = ctx.prefs_queries.unwrap_or(pairs.len() as u64);
        let agent = DpoAgent::new(
            self.clone(),
            ctx.policy,
            &pairs,
            queries,
            ctx.updates,
            ctx.seed,
        )?;
        Ok(Box::new(agent))
    }
}

/// The DPO agent.
pub struct DpoAgent {
    cfg: DpoConfig,
    policy: LmPolicy,
    reference: Option<LmPolicy>,
    data: PairBatch,
    ref_chosen: Option<Tensor>,
    ref_rejected: Option<Tensor>,
    opt: AdamW,
    seed: u64,
    budget: Budget,
    total_steps: usize,
}

impl DpoAgent {
    /// DPO from `policy` (also the frozen reference) on `pairs`; `oracle_queries` is what the labels
    /// cost (pairs labelled by the oracle); `total_steps` shapes the warm-up schedule.
    pub fn new(
        cfg: DpoConfig,
        policy: LmPolicy,
        pairs: &[PreferencePair],
        oracle_queries: u64,
        total_steps: usize,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        if pairs.is_empty() {
            return Err(AgentError::Data(
                "DPO needs at least one preference pair".into(),
            ));
        }
        let reference = policy.duplicate(false)?;
        let data = encode_pairs(&policy, pairs)?;
        let mut budget = Budget {
            oracle_queries,
            ..Default::default()
        };
        // The completions behind the pairs were sampled for this data set: count them once.
        let mut seen = std::collections::HashSet::new();
        for p in pairs {
            for c in [&p.chosen, &p.rejected] {
                if seen.insert((p.prompt.as_str(), c.as_str())) {
                    budget.samples += 1;
                    budget.tokens_generated += policy.tokenizer.encode_ids(c).len() as u64 + 1;
                }
            }
        }
        let (ref_chosen, ref_rejected, reference) = if !cfg.loss_type.needs_reference() {
            (None, None, None)
        } else if cfg.precompute_ref_logps {
            let (c, r, flops) = reference_pair_logps(&reference, &data);
            budget.flops += flops;
            (Some(c), Some(r), None)
        } else {
            (None, None, Some(reference))
        };
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
            reference,
            data,
            ref_chosen,
            ref_rejected,
            opt,
            seed,
            budget,
            total_steps,
        })
    }

    /// Number of pairs in the buffer.
    pub fn num_pairs(&self) -> usize {
        self.data.prompt.size()[0] as usize
    }

    /// Indices of the pairs of update `step`: epochs of seeded permutations, batch after batch.
    fn batch_indices(&self, step: u64) -> Vec<i64> {
        epoch_batch(self.num_pairs(), self.cfg.batch_size, self.seed, step)
    }
}

impl Agent for DpoAgent {
    fn name(&self) -> &'static str {
        "dpo"
    }

    fn update(&mut self, step: u64) -> Result<Metrics> {
        let c = self.cfg.clone();
        let idx_v = self.batch_indices(step);
        let idx = Tensor::from_slice(&idx_v).to_device(self.policy.device());
        let (pc, pr) = pair_logps(&self.policy, &self.data, &idx, true);
        let refs = match (&self.ref_chosen, &self.ref_rejected, &self.reference) {
            _ if !c.loss_type.needs_reference() => None,
            (Some(c), Some(r), _) => Some((c.index_select(0, &idx), r.index_select(0, &idx))),
            (_, _, Some(reference)) => Some(tch::no_grad(|| {
                pair_logps(reference, &self.data, &idx, false)
            })),
            _ => None,
        };
        let (len_c, len_r) = pair_lengths(&self.data, &idx);
        let out = dpo_loss(
            &PairScores {
                chosen: &pc,
                rejected: &pr,
                reference: refs.as_ref().map(|(c, r)| (c, r)),
                chosen_len: &len_c,
                rejected_len: &len_r,
            },
            &c.loss_params(),
        )
        .ok_or_else(|| {
            AgentError::Data("DPO has neither reference log-probs nor a reference model".into())
        })?;
        let (losses, chosen_r, rejected_r) = (out.loss, out.chosen_rewards, out.rejected_rewards);
        let nll = out.nll.map(|n| n.mean(Kind::Float));
        let loss = losses.mean(Kind::Float);
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
        let margins = &chosen_r - &rejected_r;
        let [loss_v, chosen, rejected, margin, accuracy, logps_chosen, logps_rejected, grad_norm] =
            host_scalars([
                &loss.detach(),
                &chosen_r.mean(Kind::Float),
                &rejected_r.mean(Kind::Float),
                &margins.mean(Kind::Float),
                &margins.gt(0.0).to_kind(Kind::Float).mean(Kind::Float),
                &pc.detach().mean(Kind::Float),
                &pr.detach().mean(Kind::Float),
                &gn,
            ])?;
        if !loss_v.is_finite() || !grad_norm.is_finite() {
            return Err(AgentError::NonFinite {
                metric: if loss_v.is_finite() {
                    metric::GRAD_NORM.into()
                } else {
                    metric::LOSS_DPO.into()
                },
                step,
            });
        }
        self.opt.step(lr);
        let k = idx_v.len() as u64;
        let toks = (self.data.prompt.size()[1] * 2
            + self.data.chosen.size()[1]
            + self.data.rejected.size()[1]) as u64
            * k;
        self.budget.train_tokens += toks;
        let fpt = self
            .policy
            .model
            .config()
            .flops_per_token((toks / (2 * k)) as usize);
        self.budget.flops += self.policy.model.train_pass_factor() * fpt * toks as f64
            + if self.reference.is_some() {
                fpt * toks as f64
            } else {
                0.0
            };
        let mut m = Metrics::new();
        for (name, value) in [
            (metric::LOSS_DPO, loss_v),
            (metric::REWARDS_CHOSEN, chosen),
            (metric::REWARDS_REJECTED, rejected),
            (metric::REWARDS_MARGINS, margin),
            (metric::REWARDS_ACCURACIES, accuracy),
            (metric::LOGPS_CHOSEN, logps_chosen),
            (metric::LOGPS_REJECTED, logps_rejected),
            (metric::TRAIN_GRAD_NORM, grad_norm),
        ] {
            m.insert(name.to_string(), value);
        }
        m.insert(metric::TRAIN_LR.into(), lr);
        m.insert(
            metric::TRAIN_EPOCH.into(),
            epochs_done(self.num_pairs(), c.batch_size, step),
        );
        if let Some(n) = nll {
            m.insert(metric::NLL_LOSS.into(), n.double_value(&[]));
        }
        Ok(m)
    }

    fn policy(&self) -> &LmPolicy {
        &self.policy
    }
    fn budget(&self) -> Budget {
        self.budget
    }
}

impl Resumable for DpoAgent {
    fn save_state(&self, dir: &Path) -> Result<()> {
        save_policy_state(dir, "dpo_state", "policy", &self.policy, &self.opt, self.budget)
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        self.budget = load_policy_state(dir, "dpo_state", "policy", &mut self.policy, &mut self.opt)?;
        Ok(())
    }
}
