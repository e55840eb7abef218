//! A language-model policy (the actor), its frozen copies (the reference), and the critic.

use crate::lm::checkpoint::{self, CheckpointConfig, ModelKind};
use crate::lm::device::Precision;
use crate::lm::lora::{self, LoraConfig};
use crate::lm::model::Gpt;
use crate::lm::peft;
use crate::lm::sampling::{generate_until, Generation, SamplingConfig};
use crate::lm::tokenizer::Tokenizer;
use crate::{AgentError, Result};
use aligngym_envs::TextCodec;
use std::path::{Path, PathBuf};
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

/// Where a policy with adapters keeps them, inside its checkpoint directory.
pub const ADAPTER_DIR: &str = "adapter";

/// A transformer LM with its variables and tokenizer.
pub struct LmPolicy {
    /// Owns the variables.
    pub vs: nn::VarStore,
    /// The network.
    pub model: Gpt,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The checkpoint its frozen base came from, when it trains LoRA adapters (PEFT's
    /// `base_model_name_or_path` when they are saved).
    pub adapter_base: Option<PathBuf>,
}

impl LmPolicy {
    /// Load a policy checkpoint; a reward-model directory is refused. A PEFT adapter directory
    /// (`adapter_config.json` naming a local base checkpoint) loads as that base with the
    /// adapters on it, frozen base and all, ready to train on.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        if lora::is_adapter_dir(dir) && !dir.join(crate::lm::hf::CONFIG).exists() {
            let file = lora::read_adapter_config(dir)?;
            if lora::is_adapter_dir(&file.base) && !file.base.join(crate::lm::hf::CONFIG).exists() {
                return Err(AgentError::Checkpoint {
                    path: dir.join(lora::ADAPTER_CONFIG),
                    msg: "field `base_model_name_or_path`: names another adapter, not a model"
                        .into(),
                });
            }
            let mut p = Self::load(&file.base, device)?;
            p.freeze_base();
            peft::load_adapter(&mut p.model, &p.vs, dir, &file.config)?;
            p.adapter_base = Some(file.base);
            return Ok(p);
        }
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
            adapter_base: None,
        })
    }

    /// Freeze every weight of the model and train LoRA adapters (drawn from `seed`) on the
    /// projections `cfg` targets instead; the heads stay trainable.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        self.freeze_base();
        self.model.attach_lora(&self.vs.root(), cfg, seed)?;
        Ok(())
    }

    /// Stop gradients into every weight of the transformer (not the heads).
    fn freeze_base(&mut self) {
        let family = self.model.config().family;
        for (name, t) in self.vs.variables() {
            if crate::lm::hf::hf_name(family, &name).is_some() {
                let _ = t.set_requires_grad(false);
            }
        }
    }

    /// Save as a policy checkpoint (written beside `dir` and renamed into place). With adapters,
    /// the checkpoint is the merged model (every command and transformers open it as it is) and
    /// `adapter/` beside its files holds the adapters alone in PEFT's layout, for
    /// `PeftModel.from_pretrained` on the base.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        checkpoint::write_staged(dir.as_ref(), |tmp| self.write_into(tmp))
    }

    /// Write the checkpoint's files (as [`LmPolicy::save`] does) into the existing folder `tmp`.
    pub fn write_into(&self, tmp: &Path) -> Result<()> {
        self.write_checkpoint(tmp, ModelKind::Policy, 0.0)
    }

    /// Write the network as a checkpoint of `kind` into the existing folder `tmp`: with adapters,
    /// the merged model, and for a policy the adapters alone in PEFT's layout in `adapter/` (PEFT
    /// has no causal LM with a reward head to load a reward model's into).
    pub fn write_checkpoint(&self, tmp: &Path, kind: ModelKind, reward_offset: f64) -> Result<()> {
        let cfg = CheckpointConfig {
            kind,
            model: self.model.config().clone(),
            reward_offset,
            aligngym_version: String::new(),
        };
        if self.model.shares_base() && self.model.lora().is_none() {
            return Err(AgentError::Checkpoint {
                path: tmp.to_path_buf(),
                msg: "a frozen reference shares its base's weights and is not saved on its own"
                    .into(),
            });
        }
        if self.model.lora().is_none() {
            return checkpoint::write_into(tmp, &self.vs, &self.tokenizer, &cfg);
        }
        let vars = self.model.merged_variables(&self.vs);
        checkpoint::write_vars_into(tmp, vars, &self.tokenizer, &cfg)?;
        if kind != ModelKind::Policy {
            return Ok(());
        }
        let base = self.adapter_base.clone().unwrap_or_default();
        peft::save_adapter(&tmp.join(ADAPTER_DIR), &self.model, &self.vs, &base)
    }

    /// The variables a run's state holds: every one that trains (the adapters and heads alone
    /// when the base is frozen).
    pub fn state_variables(&self) -> Vec<(String, Tensor)> {
        self.vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }

    /// Restore what [`LmPolicy::state_variables`] gave (names and shapes checked).
    pub fn load_state_variables(
        &mut self,
        tensors: Vec<(String, Tensor)>,
        source: &Path,
    ) -> Result<()> {
        checkpoint::load_trainable_into(&self.vs, tensors, source)
    }

    /// An independent copy of the weights (e.g. the frozen reference, or a critic initialised from
    /// the policy); `trainable` false freezes it. A policy training adapters shares its frozen
    /// base instead of copying it: the copy's reference is the base alone (adapters off, as
    /// TRL's reference is with PEFT), a trainable copy has adapters and heads of its own.
    pub fn duplicate(&self, trainable: bool) -> Result<Self> {
        if self.model.lora().is_some() || self.model.shares_base() {
            let mut vs = nn::VarStore::new(self.vs.device());
            let mut model = self.model.share_base(&vs.root());
            if let (true, Some(cfg)) = (trainable, self.model.lora()) {
                model.attach_lora(&vs.root(), cfg, 0)?;
            }
            vs.copy(&self.vs)?;
            if !trainable {
                vs.freeze();
            }
            return Ok(Self {
                vs,
                model,
                tokenizer: self.tokenizer.clone(),
                adapter_base: self.adapter_base.clone(),
            });
        }
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
            adapter_base: None,
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
