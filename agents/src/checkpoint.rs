//! Checkpoints: a directory with `model.safetensors`, `config.json` and `tokenizer.json`, written
//! under a temporary name and renamed into place; loading validates every tensor's name and shape.

use crate::model::{Gpt, GptConfig};
use crate::tokenizer::Tokenizer;
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

fn ck(path: &Path, msg: impl Into<String>) -> AgentError {
    AgentError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Write the checkpoint to `dir` atomically (a sibling temporary directory, then rename).
pub fn save(
    dir: impl AsRef<Path>,
    vs: &nn::VarStore,
    tokenizer: &Tokenizer,
    config: &CheckpointConfig,
) -> Result<()> {
    let dir = dir.as_ref();
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| AgentError::io(parent, e))?;
    let name = dir
        .file_name()
        .ok_or_else(|| ck(dir, "not a directory name"))?
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
    let vars = vs.variables();
    let mut named: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(k, v)| (k, v.to_device(Device::Cpu).to_kind(tch::Kind::Float)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, tmp.join("model.safetensors"))?;
    let mut cfg = config.clone();
    cfg.aligngym_version = env!("CARGO_PKG_VERSION").to_string();
    let json = serde_json::to_string_pretty(&cfg).map_err(|e| ck(dir, e.to_string()))?;
    std::fs::write(tmp.join("config.json"), json)
        .map_err(|e| AgentError::io(tmp.join("config.json"), e))?;
    tokenizer.save(tmp.join("tokenizer.json"))?;
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(|e| AgentError::io(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| AgentError::io(dir, e))?;
        let _ = std::fs::remove_dir_all(old);
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| AgentError::io(dir, e))?;
    }
    Ok(())
}

/// Read `config.json` of a checkpoint directory.
pub fn read_config(dir: impl AsRef<Path>) -> Result<CheckpointConfig> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(ck(dir, "no such checkpoint directory"));
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ck(dir, format!("config.json: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ck(dir, format!("config.json: {e}")))
}

/// Copy named tensors into `vs`, checking that the names and shapes agree exactly.
pub fn load_tensors_into(
    vs: &mut nn::VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
) -> Result<()> {
    let mut file: HashMap<String, Tensor> = tensors.into_iter().collect();
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
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

/// Load a checkpoint onto `device`, validating tensor names and shapes and the tokenizer's size.
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
    if tokenizer.vocab_size() != config.model.vocab_size {
        return Err(ck(
            dir,
            format!(
                "tokenizer.json has {} tokens but config.json says vocab_size {}",
                tokenizer.vocab_size(),
                config.model.vocab_size
            ),
        ));
    }
    let weights: PathBuf = dir.join("model.safetensors");
    if !weights.exists() {
        return Err(ck(dir, "missing model.safetensors"));
    }
    let tensors = Tensor::read_safetensors(&weights)
        .map_err(|e| ck(&weights, format!("cannot read: {e}")))?;
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), &config.model)?;
    load_tensors_into(&mut vs, tensors, &weights)?;
    Ok(LoadedModel {
        vs,
        model,
        tokenizer,
        config,
    })
}
