//! Checkpoints: a directory in the Hugging Face layout (see [`crate::lm::hf`]) that transformers opens
//! as it is, plus aligngym's heads and metadata in files of their own; written under a temporary
//! name and renamed into place. Loading validates every tensor's name and shape, and still reads
//! the single-`config.json` checkpoints of earlier versions.

use crate::lm::hf;
use crate::lm::model::{Gpt, GptConfig};
use crate::lm::safetensors::{ck, finite, read_safetensors};
use crate::lm::tokenizer::Tokenizer;
use crate::{AgentError, Result};
use aligngym_envs::TextCodec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A language-model policy (SFT or aligned).
    Policy,
    /// A Bradley–Terry reward model (read through the reward head).
    RewardModel,
}

/// `config.json`: the model shape plus what the checkpoint is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// Policy or reward model.
    pub kind: ModelKind,
    /// The transformer's shape.
    #[serde(flatten)]
    pub model: GptConfig,
    /// Offset subtracted from reward-head outputs so reference samples score 0 on average.
    #[serde(default)]
    pub reward_offset: f64,
    /// The version of aligngym that wrote it.
    #[serde(default)]
    pub aligngym_version: String,
}

/// A loaded model: its variables, network and tokenizer.
pub struct LoadedModel {
    /// Owns the variables.
    pub vs: nn::VarStore,
    /// The network.
    pub model: Gpt,
    /// The tokenizer it was trained with.
    pub tokenizer: Tokenizer,
    /// Its `config.json`.
    pub config: CheckpointConfig,
}

/// aligngym's own file beside a checkpoint: what it is and how it was made.
pub const META: &str = "aligngym.json";
/// aligngym's value and reward heads (transformers knows nothing of them).
pub const HEADS: &str = "aligngym_heads.safetensors";

/// What [`META`] holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    kind: ModelKind,
    #[serde(default)]
    reward_offset: f64,
    #[serde(default)]
    dropout: f64,
    #[serde(default)]
    aligngym_version: String,
}

/// Write the checkpoint to `dir` atomically (a sibling temporary directory, then rename) in the
/// Hugging Face layout: transformers' `config.json`, `model.safetensors` with transformers' names,
/// `generation_config.json`, `tokenizer.json` and `tokenizer_config.json`; aligngym's heads and
/// metadata go in files of their own beside them.
pub fn save(
    dir: impl AsRef<Path>,
    vs: &nn::VarStore,
    tokenizer: &Tokenizer,
    config: &CheckpointConfig,
) -> Result<()> {
    write_staged(dir.as_ref(), |tmp| write_into(tmp, vs, tokenizer, config))
}

/// Write a checkpoint directory atomically: `write` fills a sibling temporary folder, which is
/// then renamed to `dir` (its parent made if missing).
pub fn write_staged(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = crate::lm::fsio::parent_of(dir);
    std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
    if dir.file_name().is_none() {
        return Err(ck(dir, "not a directory name"));
    }
    let staged = crate::lm::fsio::Staged::for_dir(dir)?;
    write(staged.path())?;
    staged.commit()
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ck(path, e.to_string()))?;
    std::fs::write(path, text).map_err(|e| AgentError::io(path, e))
}

/// Write a checkpoint's files into the existing folder `tmp` (a [`crate::lm::fsio::Staged`] one, which
/// callers may add files of their own to before committing it).
pub fn write_into(
    tmp: &Path,
    vs: &nn::VarStore,
    tokenizer: &Tokenizer,
    config: &CheckpointConfig,
) -> Result<()> {
    write_vars_into(tmp, vs.variables(), tokenizer, config)
}

/// [`write_into`] of named variables.
pub fn write_vars_into(
    tmp: &Path,
    vars: HashMap<String, Tensor>,
    tokenizer: &Tokenizer,
    config: &CheckpointConfig,
) -> Result<()> {
    let family = config.model.family;
    Tensor::write_safetensors(&hf::export_heads(&vars), tmp.join(HEADS))?;
    Tensor::write_safetensors(&hf::export_vars(vars, family), tmp.join(hf::WEIGHTS))?;
    let ids = hf::TokenIds {
        bos: tokenizer.bos_id(),
        eos: tokenizer.eos_ids().to_vec(),
        pad: tokenizer.pad_id(),
    };
    write_json(
        &tmp.join(hf::CONFIG),
        &hf::config_to_json(&config.model, &ids),
    )?;
    write_json(
        &tmp.join(hf::GENERATION_CONFIG),
        &hf::generation_config_json(&ids),
    )?;
    let meta = Meta {
        kind: config.kind,
        reward_offset: config.reward_offset,
        dropout: config.model.dropout,
        aligngym_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_json(&tmp.join(META), &meta)?;
    tokenizer.save(tmp.join("tokenizer.json"))
}

/// Read the configuration of a checkpoint directory: transformers' `config.json` with aligngym's
/// [`META`] beside it (a model from elsewhere, without one, is a policy), or the single
/// `config.json` of checkpoints written before the Hugging Face layout.
pub fn read_config(dir: impl AsRef<Path>) -> Result<CheckpointConfig> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(ck(dir, "no such checkpoint directory"));
    }
    let path = dir.join(hf::CONFIG);
    let v = read_json(&path)?;
    if !hf::is_hf_config(&v) {
        return serde_json::from_value(v).map_err(|e| ck(dir, format!("config.json: {e}")));
    }
    let mut model = hf::config_from_json(&v, &path)?;
    let meta_path = dir.join(META);
    let meta = if meta_path.exists() {
        serde_json::from_value(read_json(&meta_path)?).map_err(|e| ck(&meta_path, e.to_string()))?
    } else {
        Meta {
            kind: ModelKind::Policy,
            reward_offset: 0.0,
            dropout: 0.0,
            aligngym_version: String::new(),
        }
    };
    model.dropout = meta.dropout;
    Ok(CheckpointConfig {
        kind: meta.kind,
        model,
        reward_offset: meta.reward_offset,
        aligngym_version: meta.aligngym_version,
    })
}

/// Copy named tensors into the variables of `vs` that train (all of a fully trained model; the
/// adapters and heads of one with LoRA adapters), checking names and shapes as
/// [`load_tensors_into`] does: a run's state holds those alone.
pub fn load_trainable_into(
    vs: &nn::VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
) -> Result<()> {
    let trainable: std::collections::HashSet<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, _)| n)
        .collect();
    load_matching(vs, tensors, source, |n| trainable.contains(n))
}

/// Copy named tensors into `vs`, checking that the names and shapes agree exactly.
pub fn load_tensors_into(
    vs: &mut nn::VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
) -> Result<()> {
    load_matching(vs, tensors, source, |_| true)
}

/// Copy named tensors into the variables of `vs` whose names pass `keep`: every such variable must
/// be in `tensors` with its shape, and `tensors` must hold nothing else.
fn load_matching(
    vs: &nn::VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut file: HashMap<String, Tensor> = tensors.into_iter().collect();
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|n| keep(n)).collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let t = file
            .remove(name)
            .ok_or_else(|| ck(source, format!("missing tensor `{name}`")))?;
        if t.size() != var.size() {
            return Err(ck(
                source,
                format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    t.size(),
                    var.size()
                ),
            ));
        }
        finite(name, &t, source)?;
        tch::no_grad(|| {
            let mut v = var.shallow_clone();
            v.copy_(&t.to_device(var.device()).to_kind(var.kind()))
        });
    }
    if let Some(extra) = file.keys().min() {
        return Err(ck(
            source,
            format!("unexpected tensor `{extra}` (not part of this model)"),
        ));
    }
    Ok(())
}

/// Refuse a model too large for this machine before allocating it (fp32 weights alone).
fn fits(dir: &Path, model: &GptConfig) -> Result<()> {
    let params = model.num_params() as u64;
    let total = crate::lm::device::host_memory_bytes();
    if total > 0 && params.saturating_mul(4) > total {
        return Err(ck(
            dir,
            format!(
                "config.json describes {params} parameters ({} GiB in fp32); this machine has {} GiB of memory",
                params.saturating_mul(4) >> 30,
                total >> 30
            ),
        ));
    }
    Ok(())
}

/// Load a checkpoint onto `device` (either layout), validating tensor names and shapes and the
/// tokenizer's size.
pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<LoadedModel> {
    let dir = dir.as_ref();
    let config = read_config(dir)?;
    config
        .model
        .validate()
        .map_err(|e| ck(dir, format!("config.json: {e}")))?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(ck(dir, "missing tokenizer.json"));
    }
    let tokenizer = Tokenizer::load(&tok_path)?;
    // Embedding tables are often padded past the tokenizer (to a multiple of 64 or 128); a
    // tokenizer with ids the weights lack is broken.
    if tokenizer.vocab_size() > config.model.vocab_size {
        return Err(ck(
            dir,
            format!(
                "tokenizer.json has {} tokens but config.json says vocab_size {}",
                tokenizer.vocab_size(),
                config.model.vocab_size
            ),
        ));
    }
    let (vs, model) = load_weights(dir, &config, device)?;
    Ok(LoadedModel {
        vs,
        model,
        tokenizer,
        config,
    })
}

/// The network of a checkpoint directory without its tokenizer (a model from elsewhere may come
/// without one): transformers' layout, sharded or not, or aligngym's earlier one.
pub fn load_model(dir: impl AsRef<Path>, device: Device) -> Result<(nn::VarStore, Gpt)> {
    let dir = dir.as_ref();
    let config = read_config(dir)?;
    config
        .model
        .validate()
        .map_err(|e| ck(dir, format!("config.json: {e}")))?;
    load_weights(dir, &config, device)
}

fn load_weights(
    dir: &Path,
    config: &CheckpointConfig,
    device: Device,
) -> Result<(nn::VarStore, Gpt)> {
    fits(dir, &config.model)?;
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), &config.model)?;
    let meta = dir.join(META).exists();
    if !meta && !hf::is_hf_config(&read_json(&dir.join(hf::CONFIG))?) {
        let weights: PathBuf = dir.join(hf::WEIGHTS);
        let tensors = read_safetensors(&weights)?;
        load_tensors_into(&mut vs, tensors, &weights)?;
        return Ok((vs, model));
    }
    let tensors = hf::read_weights(dir)?;
    let source = if dir.join(hf::WEIGHTS).exists() {
        dir.join(hf::WEIGHTS)
    } else {
        dir.join(hf::WEIGHTS_INDEX)
    };
    hf::load_into(&vs, config.model.family, tensors, &source)?;
    let heads = dir.join(HEADS);
    if heads.exists() {
        let tensors = read_safetensors(&heads)?;
        load_heads(&vs, tensors, &heads)?;
    } else if config.kind == ModelKind::RewardModel {
        return Err(ck(dir, format!("missing {HEADS} (a reward model's head)")));
    }
    Ok((vs, model))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ck(path, format!("invalid JSON: {e}")))
}

/// Copy aligngym's heads from `tensors` into `vs` (names and shapes checked).
fn load_heads(vs: &nn::VarStore, tensors: Vec<(String, Tensor)>, source: &Path) -> Result<()> {
    load_matching(vs, tensors, source, hf::is_head)
}
