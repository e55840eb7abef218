//! Supervised fine-tuning: next-token cross-entropy on a task corpus (each example
//! `[BOS] text [EOS]`, right-padded), AdamW with warm-up and decay, gradient clipping.

use crate::lm::model::{Gpt, GptConfig};
use crate::lm::optim::{lr_at, AdamW, AdamWConfig, LrSchedule};
use crate::lm::sampling::right_pad;
use crate::lm::tokenizer::Tokenizer;
use crate::{AgentError, Result};
use aligngym_envs::TextCodec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

/// SFT hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Optimiser steps. Default 600 (about a minute for the tiny model on 2 CPU cores).
    pub steps: usize,
    /// Sequences per step. Default 32.
    pub batch_size: usize,
    /// Peak learning rate. Default 1e-3 (small models from scratch want large rates).
    pub learning_rate: f64,
    /// Linear warm-up steps. Default 30.
    pub warmup_steps: usize,
    /// Decay after warm-up. Default cosine.
    pub schedule: LrSchedule,
    /// Final learning rate as a fraction of the peak. Default 0.1.
    pub min_lr_ratio: f64,
    /// AdamW weight decay on matrices. Default 0.01.
    pub weight_decay: f64,
    /// Gradient-norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Examples drawn from the task's corpus generator. Default 8000.
    pub corpus_size: usize,
    /// Target BPE vocabulary size. Default 512.
    pub vocab_size: usize,
    /// Compute precision: fp32 (default) or bf16 with fp32 master weights.
    pub dtype: crate::lm::device::Precision,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 32,
            learning_rate: 1e-3,
            warmup_steps: 30,
            schedule: LrSchedule::Cosine,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            corpus_size: 8000,
            vocab_size: 512,
            dtype: crate::lm::device::Precision::Fp32,
        }
    }
}

impl SftConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(AgentError::config("steps", "expected > 0"));
        }
        if self.batch_size == 0 {
            return Err(AgentError::config("batch_size", "expected > 0"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(AgentError::config(
                "learning_rate",
                "expected a finite value > 0",
            ));
        }
        if self.vocab_size < 260 {
            return Err(AgentError::config(
                "vocab_size",
                "expected ≥ 260 (256 bytes + specials)",
            ));
        }
        Ok(())
    }
}

/// Tokenised corpus: `[BOS] ids [EOS]` per example, cut to `block_size`.
pub fn encode_corpus(
    tok: &Tokenizer,
    corpus: &[String],
    block_size: usize,
) -> Result<Vec<Vec<u32>>> {
    let seqs: Vec<Vec<u32>> = corpus
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut ids = tok.encode_prompt(l);
            ids.push(tok.eos_id());
            ids.truncate(block_size);
            ids
        })
        .collect();
    if seqs.is_empty() {
        return Err(AgentError::Data(
            "the corpus is empty: no non-blank lines to train on".into(),
        ));
    }
    Ok(seqs)
}

/// Entropy (nats per token) of the unigram distribution of the tokens SFT predicts: a baseline a
/// model that learned nothing about context would reach.
pub fn unigram_entropy(seqs: &[Vec<u32>]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0usize;
    for s in seqs {
        for &t in &s[1..] {
            *counts.entry(t).or_insert(0usize) += 1;
            n += 1;
        }
    }
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum()
}

/// Mean next-token cross-entropy over valid targets of a right-padded batch.
pub fn lm_loss(model: &Gpt, tokens: &Tensor, valid: &Tensor, train: bool) -> Tensor {
    let t = tokens.size()[1];
    let h = model.forward_full(tokens, valid, train); // [B, T, C]
    let logits = model.lm_logits(&h.narrow(1, 0, t - 1)); // [B, T-1, V]
    let targets = tokens.narrow(1, 1, t - 1); // [B, T-1]
    let tmask = valid.narrow(1, 1, t - 1).to_kind(Kind::Float); // [B, T-1]
    let nll = -logits
        .log_softmax(-1, Kind::Float)
        .gather(2, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1); // [B, T-1]
    (nll * &tmask).sum(Kind::Float) / tmask.sum(Kind::Float).clamp_min(1.0)
}

/// One SFT step's record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SftLogRow {
    /// Step index (0-based).
    pub step: usize,
    /// Training loss (nats per token).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// Train `model` (variables in `vs`) on `seqs` for `cfg.steps` steps, sampling batches with `seed`.
/// `on_step` sees every step's record (progress bars, CSV).
pub fn train(
    vs: &nn::VarStore,
    model: &Gpt,
    seqs: &[Vec<u32>],
    pad: u32,
    cfg: &SftConfig,
    seed: u64,
    mut on_step: impl FnMut(&SftLogRow),
) -> Result<Vec<SftLogRow>> {
    cfg.validate()?;
    let device = vs.device();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut opt = AdamW::new(
        vs,
        AdamWConfig {
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    );
    let mut rows = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let batch: Vec<&Vec<u32>> = (0..cfg.batch_size)
            .map(|_| &seqs[rng.random_range(0..seqs.len())])
            .collect();
        let (tokens, valid) = right_pad(&batch, pad, device);
        let loss = lm_loss(model, &tokens, &valid, true);
        opt.zero_grad();
        loss.backward();
        let norm = opt.clip_grad_norm(cfg.max_grad_norm);
        let lr = lr_at(
            step,
            cfg.steps,
            cfg.warmup_steps,
            cfg.learning_rate,
            cfg.min_lr_ratio,
            cfg.schedule,
        );
        opt.step(lr);
        let row = SftLogRow {
            step,
            loss: loss.double_value(&[]),
            lr,
            grad_norm: norm.double_value(&[]),
        };
        if !row.loss.is_finite() {
            return Err(AgentError::NonFinite {
                metric: "sft/loss".into(),
                step: step as u64,
            });
        }
        on_step(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Build a fresh model of shape `cfg` with weights drawn from `seed`.
pub fn init_model(cfg: &GptConfig, device: Device, seed: u64) -> Result<(nn::VarStore, Gpt)> {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), cfg)?;
    Ok((vs, model))
}
