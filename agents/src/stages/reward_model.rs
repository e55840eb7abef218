//! A learned Bradley–Terry reward model: the transformer trunk plus a scalar head read at the last
//! real token, trained on preference pairs with `−log σ(r⁺ − r⁻)`, centred so that the reference
//! samples it was trained on score 0 on average. It implements `RewardFn`, so PPO and the oracle
//! can use it.

use crate::lm::checkpoint::{self, ModelKind};
use crate::lm::lora::LoraConfig;
use crate::lm::optim::{lr_at, AdamW, AdamWConfig, LrSchedule};
use crate::lm::policy::LmPolicy;
use crate::lm::sampling::Sequences;
use crate::losses::bradley_terry_loss;
use crate::stages::pairs::{
    encode_completions, encode_pairs, encode_sequences, stack_pairs, Continuation, PairBatch,
};
use crate::{AgentError, Result};
use aligngym_envs::{derive_seed, EnvError, Message, PreferencePair, RewardFn};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

/// Reward-model training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmConfig {
    /// Adam learning rate. Default 1e-4.
    pub learning_rate: f64,
    /// Pairs per step. Default 32.
    pub batch_size: usize,
    /// Passes over the training pairs. Default 3.
    pub epochs: usize,
    /// Fraction of pairs held out for the pairwise-accuracy report. Default 0.1.
    pub heldout_fraction: f64,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// LoRA adapters on the frozen trunk instead of training every weight (`r = 0`, the
    /// default: every weight); the reward head trains either way.
    pub lora: LoraConfig,
}

impl RmConfig {
    /// Range-check every field (before anything is allocated or written).
    pub fn validate(&self) -> Result<()> {
        let positive = |f: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(AgentError::config(
                    f,
                    format!("{v}: expected a finite value > 0"),
                ))
            }
        };
        positive("learning_rate", self.learning_rate)?;
        positive("max_grad_norm", self.max_grad_norm)?;
        self.lora.validate()?;
        if self.batch_size == 0 {
            return Err(AgentError::config("batch_size", "expected > 0"));
        }
        if self.epochs == 0 {
            return Err(AgentError::config("epochs", "expected > 0"));
        }
        if !(0.0..1.0).contains(&self.heldout_fraction) {
            return Err(AgentError::config(
                "heldout_fraction",
                format!("{}: expected a value in [0, 1)", self.heldout_fraction),
            ));
        }
        Ok(())
    }
}

impl Default for RmConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            batch_size: 32,
            epochs: 3,
            heldout_fraction: 0.1,
            max_grad_norm: 1.0,
            lora: LoraConfig::default(),
        }
    }
}

/// What training measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RmReport {
    /// Pairwise accuracy on the training pairs after training.
    pub train_accuracy: f64,
    /// Pairwise accuracy on the held-out pairs; absent when none were held out (too few pairs
    /// for `heldout_fraction`), since an accuracy over nothing is no number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_accuracy: Option<f64>,
    /// Mean raw score on the reference samples, subtracted from every score.
    pub offset: f64,
    /// Final training loss.
    pub final_loss: f64,
    /// Training pairs and held-out pairs.
    pub pairs: (usize, usize),
    /// What training spent (tokens through gradient steps, FLOPs); what a run using the reward
    /// model adds to its `pipeline/*`.
    #[serde(default)]
    pub spent: crate::metric::Budget,
}

/// The reward model.
pub struct RewardModel {
    net: LmPolicy,
    offset: f64,
    /// FLOPs of the scoring passes so far, as f64 bits ([`RewardFn::flops_spent`]).
    flops: AtomicU64,
}

/// Scores `[B]` at the last real token of each continuation (raw, before centring).
fn raw_scores(net: &LmPolicy, s: &Sequences, train: bool) -> Tensor {
    let lp = s.prompt.size()[1];
    let h = completion_trunk(net, s, train); // [B, L_p + N, C]

    // Right-padded: the last real token sits at (number of real tokens − 1).
    let last = s
        .valid
        .to_kind(Kind::Int64)
        .sum_dim_intlist(1, false, Kind::Int64)
        - 1
        + lp; // [B]
    let c = h.size()[2];
    let at = h
        .gather(1, &last.view([-1, 1, 1]).expand([-1, 1, c], false), false)
        .squeeze_dim(1); // [B, C]
    net.model.reward(&at) // [B]
}

/// The trunk over prompt and continuation `[B, L_p + N, C]`.
fn completion_trunk(net: &LmPolicy, s: &Sequences, train: bool) -> Tensor {
    let full = Tensor::cat(&[&s.prompt, &s.tokens], 1); // [B, L_p + N]
    let valid = Tensor::cat(
        &[
            s.prompt_valid.to_kind(Kind::Bool),
            s.valid.to_kind(Kind::Bool),
        ],
        1,
    );
    net.model.forward_full(&full, &valid, train)
}

fn pair_scores(net: &LmPolicy, d: &PairBatch, idx: &Tensor, train: bool) -> (Tensor, Tensor) {
    let k = idx.size()[0];
    let s = raw_scores(net, &stack_pairs(d, idx), train); // [2k]
    (s.narrow(0, 0, k), s.narrow(0, k, k))
}

fn accuracy(net: &LmPolicy, d: &PairBatch, ids: &[i64]) -> (f64, f64, f64) {
    if ids.is_empty() {
        return (f64::NAN, 0.0, 0.0);
    }
    let (mut correct, mut sum, mut count) = (0.0, 0.0, 0.0);
    for chunk in ids.chunks(64) {
        let idx = Tensor::from_slice(chunk).to_device(net.device());
        let (c, r) = tch::no_grad(|| pair_scores(net, d, &idx, false));
        correct += c
            .gt_tensor(&r)
            .to_kind(Kind::Float)
            .sum(Kind::Float)
            .double_value(&[]);
        sum += (c.sum(Kind::Float) + r.sum(Kind::Float)).double_value(&[]);
        count += 2.0 * chunk.len() as f64;
    }
    (correct / ids.len() as f64, sum, count)
}

impl RewardModel {
    /// This reward model, scoring in `precision`.
    pub fn with_precision(mut self, precision: crate::lm::device::Precision) -> Self {
        self.net.model.set_precision(precision);
        self
    }

    /// Train a reward model whose trunk starts from `init` on `pairs`; `seed` shuffles and splits.
    pub fn train(
        init: &LmPolicy,
        pairs: &[PreferencePair],
        cfg: &RmConfig,
        seed: u64,
        mut on_step: impl FnMut(usize, usize, f64),
    ) -> Result<(Self, RmReport)> {
        cfg.validate()?;
        if pairs.len() < 2 {
            return Err(AgentError::Data(format!(
                "a reward model needs at least 2 preference pairs, got {}",
                pairs.len()
            )));
        }
        let mut net = init.duplicate(true)?;
        if cfg.lora.enabled() {
            net.attach_lora(&cfg.lora, derive_seed(seed, 0x10a))?;
        }
        let data = encode_pairs(&net, pairs)?;
        let mut ids: Vec<i64> = (0..pairs.len() as i64).collect();
        ids.shuffle(&mut StdRng::seed_from_u64(seed));
        let n_held =
            ((pairs.len() as f64 * cfg.heldout_fraction).round() as usize).min(pairs.len() - 1);
        let (held, train) = ids.split_at(n_held);
        let (held, train) = (held.to_vec(), train.to_vec());
        let mut opt = AdamW::new(
            &net.vs,
            AdamWConfig {
                eps: 1e-8,
                ..Default::default()
            },
        );
        let bs = cfg.batch_size.min(train.len()).max(1);
        let steps_per_epoch = train.len().div_ceil(bs);
        let total = steps_per_epoch * cfg.epochs.max(1);
        let mut final_loss = f64::NAN;
        let mut spent = crate::metric::Budget::default();
        // Both sides of a pair run the trunk over the prompt and the continuation, padding included.
        let width = (data.prompt.size()[1] + data.chosen.size()[1]) as usize;
        // Real tokens of each pair (its prompt on both sides), read to the host once.
        let per_row = |t: &Tensor| {
            t.to_kind(Kind::Int64)
                .sum_dim_intlist(1, false, Kind::Int64)
        };
        let pair_tokens: Vec<i64> = Vec::try_from(
            &(per_row(&data.prompt_valid) * 2
                + per_row(&data.chosen_valid)
                + per_row(&data.rejected_valid))
            .to_device(tch::Device::Cpu),
        )?;
        for step in 0..total {
            let epoch = step / steps_per_epoch;
            let mut perm = train.clone();
            perm.shuffle(&mut StdRng::seed_from_u64(derive_seed(
                seed,
                epoch as u64 + 1,
            )));
            let k = step % steps_per_epoch;
            let chunk = &perm[k * bs..((k + 1) * bs).min(perm.len())];
            let idx = Tensor::from_slice(chunk).to_device(net.device());
            let (rc, rr) = pair_scores(&net, &data, &idx, true);
            spent.train_tokens += chunk
                .iter()
                .map(|&i| pair_tokens[i as usize] as u64)
                .sum::<u64>();
            spent.flops += net.model.train_pass_factor()
                * net.model.config().trunk_flops_per_token(width)
                * (2 * chunk.len() * width) as f64;
            let loss = bradley_terry_loss(&rc, &rr).mean(Kind::Float);
            opt.zero_grad();
            loss.backward();
            let _ = opt.clip_grad_norm(cfg.max_grad_norm);
            opt.step(lr_at(
                step,
                total,
                total / 10,
                cfg.learning_rate,
                0.1,
                LrSchedule::Cosine,
            ));
            final_loss = loss.double_value(&[]);
            if !final_loss.is_finite() {
                return Err(AgentError::NonFinite {
                    metric: "rm/loss".into(),
                    step: step as u64,
                });
            }
            on_step(step, total, final_loss);
        }
        let (train_accuracy, sum, count) = accuracy(&net, &data, &train);
        let heldout_accuracy = (!held.is_empty()).then(|| accuracy(&net, &data, &held).0);
        let offset = sum / count.max(1.0);
        let report = RmReport {
            train_accuracy,
            heldout_accuracy,
            offset,
            final_loss,
            pairs: (train.len(), held.len()),
            spent,
        };
        Ok((
            Self {
                net,
                offset,
                flops: AtomicU64::new(0),
            },
            report,
        ))
    }

    /// Load a reward-model checkpoint; a policy directory is refused.
    pub fn load(dir: impl AsRef<Path>, device: tch::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let l = checkpoint::load(dir, device)?;
        if l.config.kind != ModelKind::RewardModel {
            return Err(AgentError::Checkpoint {
                path: dir.to_path_buf(),
                msg: "holds a policy, not a reward model (train one with `aligngym train-rm`)"
                    .into(),
            });
        }
        let mut vs = l.vs;
        vs.freeze();
        Ok(Self {
            net: LmPolicy {
                vs,
                model: l.model,
                tokenizer: l.tokenizer,
                adapter_base: None,
            },
            offset: l.config.reward_offset,
            flops: AtomicU64::new(0),
        })
    }

    /// Save as a reward-model checkpoint (one trained with adapters: the merged model).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        checkpoint::write_staged(dir.as_ref(), |tmp| {
            self.net
                .write_checkpoint(tmp, ModelKind::RewardModel, self.offset)
        })
    }

    /// Adds one scoring pass over `seqs` to the FLOPs spent: the trunk forward over every padded
    /// position (the reward head's C multiply-adds a row are noise next to it).
    fn charge(&self, seqs: &Sequences) {
        let (b, lp) = (seqs.prompt.size()[0], seqs.prompt.size()[1]);
        let t = (lp + seqs.tokens.size()[1]) as usize;
        let flops = self.net.model.config().trunk_flops_per_token(t) * (b as usize * t) as f64;
        let _ = self
            .flops
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + flops).to_bits())
            });
    }

    /// Centred scores of conversations (`turns[i]` after the user message `prompts[i]`), tokenised
    /// as conversational preference pairs are.
    pub fn score_turns(&self, prompts: &[&str], turns: &[&[Message]]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (p, t) in prompts.chunks(64).zip(turns.chunks(64)) {
            let firsts: Vec<Vec<Message>> = p.iter().map(|x| vec![Message::user(*x)]).collect();
            let conts: Vec<Continuation> = firsts
                .iter()
                .zip(t)
                .map(|(f, t)| Continuation::Turns {
                    prompt: f,
                    turns: t,
                })
                .collect();
            let seqs = encode_sequences(&self.net, p, &conts)?;
            self.charge(&seqs);
            let s = tch::no_grad(|| raw_scores(&self.net, &seqs, false)) - self.offset;
            out.extend(Vec::<f32>::try_from(
                &s.to_kind(Kind::Float).to_device(tch::Device::Cpu),
            )?);
        }
        Ok(out)
    }

    /// Centred scores of preference-style completions.
    pub fn score_texts(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (p, c) in prompts.chunks(64).zip(completions.chunks(64)) {
            let (prompt, prompt_valid, mut sets) = encode_completions(&self.net, p, &[c.to_vec()]);
            let (tokens, mask) = sets.pop().expect("one completion set");
            let seqs = Sequences {
                prompt,
                prompt_valid,
                tokens,
                valid: mask.to_kind(Kind::Bool),
                mask,
            };
            self.charge(&seqs);
            let s = tch::no_grad(|| raw_scores(&self.net, &seqs, false)) - self.offset;
            out.extend(Vec::<f32>::try_from(
                &s.to_kind(Kind::Float).to_device(tch::Device::Cpu),
            )?);
        }
        Ok(out)
    }
}

impl RewardFn for RewardModel {
    fn name(&self) -> String {
        "reward_model".into()
    }
    fn score_batch(
        &self,
        prompts: &[&str],
        completions: &[&str],
    ) -> aligngym_envs::Result<Vec<f32>> {
        if prompts.len() != completions.len() {
            return Err(EnvError::Reward {
                name: "reward_model".into(),
                msg: "prompts and completions differ in number".into(),
            });
        }
        self.score_texts(prompts, completions)
            .map_err(|e| EnvError::Reward {
                name: "reward_model".into(),
                msg: e.to_string(),
            })
    }
    fn score_conversations(
        &self,
        prompts: &[&str],
        turns: &[&[Message]],
    ) -> aligngym_envs::Result<Vec<f32>> {
        self.score_turns(prompts, turns)
            .map_err(|e| aligngym_envs::EnvError::Reward {
                name: "reward_model".into(),
                msg: e.to_string(),
            })
    }
    fn flops_spent(&self) -> f64 {
        f64::from_bits(self.flops.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
impl RewardModel {
    /// The network (tests tokenise with it).
    pub(crate) fn network(&self) -> &LmPolicy {
        &self.net
    }
    /// Centred scores of already tokenised sequences.
    pub(crate) fn raw_pair_scores(&self, s: &Sequences) -> Vec<f32> {
        let t = raw_scores(&self.net, s, false) - self.offset;
        Vec::try_from(&t.to_kind(Kind::Float)).unwrap_or_default()
    }
}
