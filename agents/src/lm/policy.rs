//! A language-model policy (the actor), its frozen copies (the reference), and the critic.

use crate::lm::checkpoint::{self, CheckpointConfig, ModelKind};
use crate::lm::device::Precision;
use crate::lm::model::Gpt;
use crate::lm::sampling::{generate_until, Generation, SamplingConfig};
use crate::lm::tokenizer::Tokenizer;
use crate::{AgentError, Result};
use aligngym_envs::TextCodec;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// Samples completions with log-probs.
pub trait Policy {
    /// Sample one completion per prompt (token ids, `[BOS]`-prefixed).
    fn sample(&self, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> Result<Generation>;
    /// The tokenizer the policy reads and writes.
    fn tokenizer(&self) -> &Tokenizer;
}

/// A policy with a critic: values for every completion position.
pub trait ActorCritic: Policy {
    /// Value estimates `[B, N]` for the states before each completion token.
    fn values(&self, gen: &Generation, train: bool) -> Tensor;
}

/// A transformer LM with its variables and tokenizer.
pub struct LmPolicy {
    /// Owns the variables.
    pub vs: nn::VarStore,
    /// The network.
    pub model: Gpt,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl LmPolicy {
    /// Load a policy checkpoint; a reward-model directory is refused.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        let l = checkpoint::load(dir, device)?;
        if l.config.kind != ModelKind::Policy {
            return Err(AgentError::Checkpoint {
                path: dir.to_path_buf(),
                msg: "holds a reward model, not a policy".into(),
            });
        }
        Ok(Self {
            vs: l.vs,
            model: l.model,
            tokenizer: l.tokenizer,
        })
    }

    /// Save as a policy checkpoint.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let cfg = CheckpointConfig {
            kind: ModelKind::Policy,
            model: self.model.config().clone(),
            reward_offset: 0.0,
            aligngym_version: String::new(),
        };
        checkpoint::save(dir, &self.vs, &self.tokenizer, &cfg)
    }

    /// An independent copy of the weights (e.g. the frozen reference, or a critic initialised from
    /// the policy); `trainable` false freezes it.
    pub fn duplicate(&self, trainable: bool) -> Result<Self> {
        let mut vs = nn::VarStore::new(self.vs.device());
        let mut model = Gpt::new(&vs.root(), self.model.config())?;
        model.set_precision(self.model.precision());
        vs.copy(&self.vs)?;
        if !trainable {
            vs.freeze();
        }
        Ok(Self {
            vs,
            model,
            tokenizer: self.tokenizer.clone(),
        })
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// This policy, computing in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.model.set_precision(precision);
        self
    }

    /// `[BOS] + ids(prompt)` for each prompt.
    pub fn encode_prompts(&self, prompts: &[impl AsRef<str>]) -> Vec<Vec<u32>> {
        prompts
            .iter()
            .map(|p| self.tokenizer.encode_prompt(p.as_ref()))
            .collect()
    }

    /// Completion texts of a generation (EOS and padding dropped).
    pub fn decode(&self, gen: &Generation) -> Vec<String> {
        gen.completions()
            .iter()
            .map(|c| self.tokenizer.decode_ids(c))
            .collect()
    }
}

impl Policy for LmPolicy {
    fn sample(&self, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> Result<Generation> {
        generate_until(
            &self.model,
            prompts,
            self.tokenizer.pad_id(),
            self.tokenizer.eos_ids(),
            cfg,
            self.device(),
        )
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}
