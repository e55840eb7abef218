//! Supervised fine-tuning: next-token cross-entropy on a task corpus (each example
//! `[BOS] text [EOS]`, right-padded) or on a data file of texts, prompt–completion pairs and
//! conversations, where only the completion or the assistant's turns are trained on; AdamW with
//! warm-up and decay, gradient clipping.

use crate::lm::model::{Gpt, GptConfig};
use crate::lm::optim::{lr_at, AdamW, AdamWConfig, LrSchedule};
use crate::lm::sampling::right_pad;
use crate::lm::tokenizer::{PromptFormat, Tokenizer};
use crate::{AgentError, Result};
use aligngym_envs::{SftRecord, TextCodec};
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

/// One tokenised example: its ids, and for each whether the loss predicts it (the first id,
/// having no context, never is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    /// Token ids, prompt first.
    pub ids: Vec<u32>,
    /// Whether each id is a training target.
    pub train: Vec<bool>,
}

impl SftExample {
    /// An example every id of which is trained on.
    pub fn full(ids: Vec<u32>) -> Self {
        let train = vec![true; ids.len()];
        Self { ids, train }
    }

    /// Ids trained on (the first id has no context, so it never counts).
    pub fn targets(&self) -> usize {
        self.train.iter().skip(1).filter(|&&t| t).count()
    }

    fn truncate(mut self, block_size: usize) -> Self {
        self.ids.truncate(block_size);
        self.train.truncate(block_size);
        self
    }
}

/// Tokenised corpus: `[BOS] ids [EOS]` per example, cut to `block_size`.
pub fn encode_corpus(
    tok: &Tokenizer,
    corpus: &[String],
    block_size: usize,
) -> Result<Vec<SftExample>> {
    let records: Vec<SftRecord> = corpus
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| SftRecord::Text(l.clone()))
        .collect();
    encode_records(tok, &records, block_size)
}

/// Tokenise SFT records, cut to `block_size`: a text as `[BOS] ids [EOS]`, all trained on; a
/// prompt as rollouts present it (the chat template's user turn for an instruct model) and its
/// completion as the policy's turn ends, only the completion trained on; a conversation through
/// the chat template, only the assistant's turns trained on. An example left with nothing to
/// train on (its answer cut off by `block_size`) is an error naming it.
pub fn encode_records(
    tok: &Tokenizer,
    records: &[SftRecord],
    block_size: usize,
) -> Result<Vec<SftExample>> {
    if records.is_empty() {
        return Err(AgentError::Data(
            "the corpus is empty: no non-blank lines to train on".into(),
        ));
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ex = match r {
                SftRecord::Text(t) => {
                    // Language modelling on the text as it is, never through a chat template.
                    let mut ids = tok.encode_prompt_as(t, PromptFormat::Raw);
                    ids.push(tok.eos_id());
                    SftExample::full(ids)
                }
                SftRecord::PromptCompletion { prompt, completion } => {
                    let mut ids = tok.encode_prompt(prompt);
                    let mut train = vec![false; ids.len()];
                    let answer = tok.turn_ids(completion);
                    train.extend(std::iter::repeat_n(true, answer.len()));
                    ids.extend(answer);
                    SftExample { ids, train }
                }
                SftRecord::Conversation(messages) => {
                    let (ids, train) = tok
                        .conversation_ids(messages)
                        .map_err(|e| AgentError::Data(format!("example {}: {e}", i + 1)))?;
                    SftExample { ids, train }
                }
            }
            .truncate(block_size);
            if ex.targets() == 0 {
                return Err(AgentError::Data(format!(
                    "example {}: nothing left to train on within the model's {block_size} positions",
                    i + 1
                )));
            }
            Ok(ex)
        })
        .collect()
}

/// Entropy (nats per token) of the unigram distribution of the tokens SFT predicts: a baseline a
/// model that learned nothing about context would reach.
pub fn unigram_entropy(examples: &[SftExample]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0usize;
    for ex in examples {
        for (&t, _) in ex.ids.iter().zip(&ex.train).skip(1).filter(|(_, &k)| k) {
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
    lm_loss_on(model, tokens, valid, valid, train)
}

/// Mean next-token cross-entropy over the targets `targets [B, T]` (bool) marks, attending over
/// `valid [B, T]`.
pub fn lm_loss_on(
    model: &Gpt,
    tokens: &Tensor,
    valid: &Tensor,
    targets: &Tensor,
    train: bool,
) -> Tensor {
    let t = tokens.size()[1];
    let h = model.forward_full(tokens, valid, train); // [B, T, C]
    let logits = model.lm_logits(&h.narrow(1, 0, t - 1)); // [B, T-1, V]
    let next = tokens.narrow(1, 1, t - 1); // [B, T-1]
    let tmask = targets.narrow(1, 1, t - 1).to_kind(Kind::Float); // [B, T-1]
    let nll = -logits
        .log_softmax(-1, Kind::Float)
        .gather(2, &next.unsqueeze(-1), false)
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
    /// Tokens of the batch (padding excluded).
    pub tokens: usize,
    /// Estimated FLOPs of the step: forward and backward (×3) over every padded position.
    pub flops: f64,
}

/// Train `model` (variables in `vs`) on `seqs` for `cfg.steps` steps, sampling batches with `seed`.
/// `on_step` sees every step's record (progress bars, CSV).
pub fn train(
    vs: &nn::VarStore,
    model: &Gpt,
    examples: &[SftExample],
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
        let batch: Vec<&SftExample> = (0..cfg.batch_size)
            .map(|_| &examples[rng.random_range(0..examples.len())])
            .collect();
        let ids: Vec<&Vec<u32>> = batch.iter().map(|e| &e.ids).collect();
        let (tokens, valid) = right_pad(&ids, pad, device); // [B, T]
        let width = tokens.size()[1] as usize;
        let flags: Vec<bool> = batch
            .iter()
            .flat_map(|e| {
                let pad_to = width - e.train.len();
                e.train
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(false, pad_to))
            })
            .collect();
        let targets = Tensor::from_slice(&flags)
            .view([batch.len() as i64, width as i64])
            .to_device(device); // [B, T]
        let loss = lm_loss_on(model, &tokens, &valid, &targets, true);
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
        let positions = batch.len() * width;
        let row = SftLogRow {
            step,
            loss: loss.double_value(&[]),
            lr,
            grad_norm: norm.double_value(&[]),
            tokens: batch.iter().map(|e| e.ids.len()).sum(),
            flops: model.train_pass_factor()
                * model.config().flops_per_token(width)
                * positions as f64,
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
