//! The Hugging Face checkpoint layout: transformers' `config.json` schema for the supported
//! families, transformers' tensor names in `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), and the mapping between those names and the model's variables.
//!
//! GPT-2 stores its projections in the `Conv1D` layout `[in, out]`, the transpose of a linear
//! layer's `[out, in]`; they are transposed on the way in and out. The Llama family's variables
//! already carry transformers' names.

use crate::lm::model::{Activation, Family, GptConfig, RopeScaling};
use crate::{AgentError, Result};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// transformers' model configuration file.
pub const CONFIG: &str = "config.json";
/// The weights, in one file.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of sharded weights (tensor name → shard file).
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The generation defaults transformers reads beside the model.
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The `model_type`s this implementation loads.
pub const SUPPORTED: &str = "gpt2, llama, qwen2";

fn err(path: &Path, msg: impl Into<String>) -> AgentError {
    AgentError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads typed fields of a `config.json`, each error naming the file and the field.
struct Fields<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn bad(&self, field: &str, expected: &str) -> AgentError {
        err(self.path, format!("field `{field}`: expected {expected}"))
    }
    fn present(&self, field: &str) -> Option<&Value> {
        self.v.get(field).filter(|x| !x.is_null())
    }
    fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.bad(field, "a positive integer"))
    }
    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.present(field) {
            None => Ok(None),
            Some(x) => match x.as_u64() {
                // Shapes beyond 2^24 in any dimension are not a model this machine holds; refusing
                // them here keeps absurd values from reaching an allocation.
                Some(n) if n > 0 && n <= 1 << 24 => Ok(Some(n as usize)),
                _ => Err(self.bad(field, "a positive integer up to 16777216")),
            },
        }
    }
    fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        match self.present(field) {
            None => Ok(default),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| self.bad(field, "a number")),
        }
    }
    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.present(field) {
            None => Ok(default),
            Some(x) => x.as_bool().ok_or_else(|| self.bad(field, "true or false")),
        }
    }
    fn str_or<'s>(&'s self, field: &str, default: &'s str) -> Result<&'s str> {
        match self.present(field) {
            None => Ok(default),
            Some(x) => x.as_str().ok_or_else(|| self.bad(field, "a string")),
        }
    }
    /// Refuse a feature this implementation does not compute.
    fn refuse_if(&self, cond: bool, field: &str, what: &str) -> Result<()> {
        if cond {
            Err(err(
                self.path,
                format!("field `{field}`: {what} is not supported"),
            ))
        } else {
            Ok(())
        }
    }
}

/// True when a `config.json` is in transformers' schema (it names a `model_type`).
pub fn is_hf_config(v: &Value) -> bool {
    v.get("model_type").is_some()
}

/// The model's shape from transformers' `config.json` (already parsed; `path` names it in
/// errors). Features the implementation does not compute (RoPE scaling, sliding windows, biases
/// Llama does not have) are refused by name rather than computed wrongly.
pub fn config_from_json(v: &Value, path: &Path) -> Result<GptConfig> {
    let f = Fields { v, path };
    let model_type = f.str_or("model_type", "")?;
    let family = match model_type {
        "gpt2" => Family::Gpt2,
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        other => {
            return Err(err(
                path,
                format!("model_type `{other}` is not supported (supported: {SUPPORTED})"),
            ))
        }
    };
    let cfg = match family {
        Family::Gpt2 => {
            let activation = match f.str_or("activation_function", "gelu_new")? {
                "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
                "gelu" => Activation::Gelu,
                other => {
                    return Err(err(
                        path,
                        format!("field `activation_function`: `{other}` is not supported (gelu_new, gelu_pytorch_tanh, gelu)"),
                    ))
                }
            };
            f.refuse_if(
                f.bool_or("scale_attn_by_inverse_layer_idx", false)?,
                "scale_attn_by_inverse_layer_idx",
                "attention scaled by layer index",
            )?;
            f.refuse_if(
                !f.bool_or("scale_attn_weights", true)?,
                "scale_attn_weights",
                "unscaled attention",
            )?;
            GptConfig {
                activation,
                intermediate_size: f.opt_usize("n_inner")?,
                norm_eps: f.f64_or("layer_norm_epsilon", 1e-5)?,
                tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
                ..GptConfig::gpt2(
                    f.usize("vocab_size")?,
                    f.usize("n_layer")?,
                    f.usize("n_head")?,
                    f.usize("n_embd")?,
                    f.usize("n_positions")?,
                )
            }
        }
        Family::Llama | Family::Qwen2 => {
            let hidden = f.usize("hidden_size")?;
            let heads = f.usize("num_attention_heads")?;
            f.refuse_if(
                f.str_or("hidden_act", "silu")? != "silu",
                "hidden_act",
                "an activation other than silu",
            )?;
            if family == Family::Llama {
                f.refuse_if(
                    f.bool_or("attention_bias", false)?,
                    "attention_bias",
                    "attention biases on Llama",
                )?;
                f.refuse_if(f.bool_or("mlp_bias", false)?, "mlp_bias", "MLP biases")?;
            } else {
                f.refuse_if(
                    f.bool_or("use_sliding_window", false)?,
                    "use_sliding_window",
                    "sliding-window attention",
                )?;
            }
            let (rope_theta, rope_scaling) = rope_of(&f)?;
            let kv = f.opt_usize("num_key_value_heads")?;
            GptConfig {
                family,
                n_kv_head: kv.filter(|&k| k != heads),
                intermediate_size: Some(f.usize("intermediate_size")?),
                activation: Activation::Silu,
                rope_theta,
                rope_scaling,
                head_dim: f.opt_usize("head_dim")?.filter(|&d| d * heads != hidden),
                norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
                tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
                ..GptConfig::gpt2(
                    f.usize("vocab_size")?,
                    f.usize("num_hidden_layers")?,
                    heads,
                    hidden,
                    f.usize("max_position_embeddings")?,
                )
            }
        }
    };
    cfg.validate().map_err(|e| err(path, e.to_string()))?;
    Ok(cfg)
}

/// RoPE's base and scaling. transformers 5 keeps them in `rope_parameters`; 4.x had
/// `rope_theta` and `rope_scaling` at the top level. Kinds aligngym does not compute (YaRN,
/// dynamic NTK, LongRoPE, partial rotation) are refused by name.
fn rope_of(f: &Fields) -> Result<(f64, Option<RopeScaling>)> {
    let mut theta = f.f64_or("rope_theta", 10_000.0)?;
    let (field, r) = match (f.present("rope_parameters"), f.present("rope_scaling")) {
        (Some(r), _) => ("rope_parameters", r),
        (None, Some(r)) => ("rope_scaling", r),
        (None, None) => return Ok((theta, None)),
    };
    let sub = Fields { v: r, path: f.path };
    let named = |e: AgentError| match e {
        AgentError::Checkpoint { path, msg } => AgentError::Checkpoint {
            path,
            msg: msg.replacen("field `", &format!("field `{field}."), 1),
        },
        e => e,
    };
    let kind = match sub.present("rope_type") {
        Some(_) => sub.str_or("rope_type", "default"),
        None => sub.str_or("type", "default"),
    }
    .map_err(named)?;
    theta = sub.f64_or("rope_theta", theta).map_err(named)?;
    f.refuse_if(
        sub.f64_or("partial_rotary_factor", 1.0).map_err(named)? != 1.0,
        &format!("{field}.partial_rotary_factor"),
        "rotation of part of each head",
    )?;
    let factor = || sub.f64_or("factor", 1.0).map_err(named);
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: factor()? }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: sub.f64_or("low_freq_factor", 1.0).map_err(named)?,
            high_freq_factor: sub.f64_or("high_freq_factor", 4.0).map_err(named)?,
            original_max_position_embeddings: match sub
                .opt_usize("original_max_position_embeddings")
                .map_err(named)?
            {
                Some(n) => n,
                None => f.usize("max_position_embeddings")?,
            },
        }),
        other => {
            return Err(err(
                f.path,
                format!("field `{field}`: RoPE scaling `{other}` is not supported (default, linear, llama3)"),
            ))
        }
    };
    Ok((theta, scaling))
}

/// Special-token ids a `config.json` and `generation_config.json` carry.
#[derive(Debug, Clone)]
pub struct TokenIds {
    /// Beginning of sequence, where the tokenizer has one.
    pub bos: Option<u32>,
    /// The ids that end a generation, EOS first.
    pub eos: Vec<u32>,
    /// Padding.
    pub pad: u32,
}

impl TokenIds {
    /// EOS as transformers writes `eos_token_id`: one id, or the list where there are several.
    fn eos_json(&self) -> Value {
        match self.eos.as_slice() {
            [one] => json!(one),
            many => json!(many),
        }
    }
}

/// transformers' `config.json` for `cfg` (what `save_pretrained` writes for the family).
pub fn config_to_json(cfg: &GptConfig, ids: &TokenIds) -> Value {
    let common = json!({
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos.first(),
        "pad_token_id": ids.pad,
        "dtype": "float32",
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "vocab_size": cfg.vocab_size,
        "use_cache": true,
    });
    let specific = match cfg.family {
        Family::Gpt2 => json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "activation_function": if cfg.activation == Activation::GeluTanh { "gelu_new" } else { "gelu" },
            "n_embd": cfg.n_embd,
            "n_head": cfg.n_head,
            "n_layer": cfg.n_layer,
            "n_positions": cfg.block_size,
            "n_inner": cfg.intermediate_size,
            "layer_norm_epsilon": cfg.norm_eps,
            "attn_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "resid_pdrop": cfg.dropout,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
        }),
        Family::Llama | Family::Qwen2 => {
            let (model_type, arch) = if cfg.family == Family::Llama {
                ("llama", "LlamaForCausalLM")
            } else {
                ("qwen2", "Qwen2ForCausalLM")
            };
            json!({
                "model_type": model_type,
                "architectures": [arch],
                "hidden_act": "silu",
                "hidden_size": cfg.n_embd,
                "intermediate_size": cfg.mlp_width(),
                "num_attention_heads": cfg.n_head,
                "num_key_value_heads": cfg.kv_heads(),
                "num_hidden_layers": cfg.n_layer,
                "head_dim": cfg.head_dim(),
                "max_position_embeddings": cfg.block_size,
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta,
                "rope_parameters": rope_json(cfg),
                "attention_bias": false,
                "attention_dropout": cfg.dropout,
                "mlp_bias": false,
            })
        }
    };
    let mut out = common;
    if let (Some(o), Value::Object(s)) = (out.as_object_mut(), specific) {
        o.extend(s);
    }
    out
}

/// `rope_parameters` as transformers 5 writes them: the base, the kind and its fields.
fn rope_json(cfg: &GptConfig) -> Value {
    let mut r = match &cfg.rope_scaling {
        Some(s) => serde_json::to_value(s).unwrap_or_else(|_| json!({})),
        None => json!({"rope_type": "default"}),
    };
    if let Some(o) = r.as_object_mut() {
        o.insert("rope_theta".into(), json!(cfg.rope_theta));
    }
    r
}

/// transformers' `generation_config.json` for a model with these special tokens.
pub fn generation_config_json(ids: &TokenIds) -> Value {
    json!({
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos_json(),
        "pad_token_id": ids.pad,
    })
}

/// True for aligngym's own heads (value and reward).
pub fn is_head(name: &str) -> bool {
    name.starts_with("value_head.") || name.starts_with("reward_head.")
}

/// GPT-2 projections stored as `Conv1D` (`[in, out]`).
fn is_conv1d(name: &str) -> bool {
    name.ends_with(".weight")
        && ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
            .iter()
            .any(|p| name.contains(p))
}

/// transformers' name of the variable `ours`, and whether the stored tensor is its transpose;
/// `None` for aligngym's own heads (value and reward), which live in a file of their own.
pub fn hf_name(family: Family, ours: &str) -> Option<(String, bool)> {
    if is_head(ours) || crate::lm::lora::is_adapter_var(ours) {
        return None;
    }
    Some(match family {
        Family::Gpt2 if ours == "lm_head.weight" => (ours.to_string(), false),
        Family::Gpt2 => {
            let name = match ours {
                "wte" | "wpe" => format!("transformer.{ours}.weight"),
                _ => family.transformers_module(ours),
            };
            (name, is_conv1d(ours))
        }
        Family::Llama | Family::Qwen2 => (ours.to_string(), false),
    })
}

/// Tensors a checkpoint may carry that are not weights: GPT-2's causal-mask buffers and old
/// Llama checkpoints' RoPE frequencies.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") && !name.contains("c_attn")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

/// Every tensor of a checkpoint directory's weights: `model.safetensors`, or the shards
/// `model.safetensors.index.json` lists.
pub fn read_weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(WEIGHTS);
    let index = dir.join(WEIGHTS_INDEX);
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| AgentError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| err(&index, e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| err(&index, "field `weight_map`: expected an object"))?;
        let mut shards = BTreeSet::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .filter(|f| !f.contains('/') && !f.contains('\\') && !f.starts_with('.'))
                .ok_or_else(|| {
                    err(
                        &index,
                        format!("weight_map `{name}`: expected a file name in this folder"),
                    )
                })?;
            shards.insert(file.to_string());
        }
        let mut files = Vec::new();
        for s in shards {
            let p = dir.join(&s);
            if !p.exists() {
                return Err(err(&index, format!("shard `{s}` is missing")));
            }
            files.push(p);
        }
        files
    } else {
        return Err(err(dir, format!("missing {WEIGHTS} (or {WEIGHTS_INDEX})")));
    };
    let mut out = HashMap::new();
    for f in files {
        let tensors = crate::lm::safetensors::read_safetensors(&f)?;
        out.extend(tensors);
    }
    Ok(out)
}

/// Copy transformers-named `tensors` into the variables of `vs` (all but aligngym's heads),
/// transposing GPT-2's `Conv1D` weights and checking every name and shape. Known buffers are
/// skipped, and a tied model ignores a stored `lm_head.weight`; any other tensor is an error.
pub fn load_into(
    vs: &nn::VarStore,
    family: Family,
    mut tensors: HashMap<String, Tensor>,
    source: &Path,
) -> Result<()> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for ours in names {
        let Some((theirs, transposed)) = hf_name(family, ours) else {
            continue;
        };
        // Checkpoints saved from `GPT2Model` (OpenAI's own) lack the `transformer.` prefix.
        let t = tensors
            .remove(&theirs)
            .or_else(|| {
                theirs
                    .strip_prefix("transformer.")
                    .and_then(|n| tensors.remove(n))
            })
            .ok_or_else(|| err(source, format!("missing tensor `{theirs}`")))?;
        let t = if transposed { t.tr() } else { t };
        let var = &vars[ours];
        if t.size() != var.size() {
            return Err(err(
                source,
                format!(
                    "tensor `{theirs}` has shape {:?}, expected {:?}",
                    if transposed { t.tr().size() } else { t.size() },
                    if transposed {
                        var.tr().size()
                    } else {
                        var.size()
                    }
                ),
            ));
        }
        crate::lm::safetensors::finite(&theirs, &t, source)?;
        tch::no_grad(|| {
            let mut v = var.shallow_clone();
            v.copy_(&t.to_device(var.device()).to_kind(var.kind()))
        });
    }
    let tied = !vars.contains_key("lm_head.weight");
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|n| !(is_buffer(n) || tied && n.as_str() == "lm_head.weight"))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(err(
            source,
            format!("unexpected tensor `{name}` (not part of a {family} model of this shape)"),
        ));
    }
    Ok(())
}

/// The trunk's variables under transformers' names and layouts (fp32 on the CPU, sorted by name),
/// ready for `model.safetensors`; aligngym's heads (and LoRA adapters) are left out.
pub fn export(vs: &nn::VarStore, family: Family) -> Vec<(String, Tensor)> {
    export_vars(vs.variables(), family)
}

/// [`export`] of named variables.
pub fn export_vars(vars: HashMap<String, Tensor>, family: Family) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = vars
        .into_iter()
        .filter_map(|(ours, t)| {
            let (name, transposed) = hf_name(family, &ours)?;
            let t = t.to_device(Device::Cpu).to_kind(Kind::Float);
            let t = if transposed { t.tr().contiguous() } else { t };
            Some((name, t))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// aligngym's heads (value and reward), under their own names, for the file beside the weights.
pub fn export_heads(vars: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = vars
        .iter()
        .filter(|(n, _)| is_head(n))
        .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).to_kind(Kind::Float)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(extra: Value) -> Value {
        let mut v = json!({
            "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rope_theta": 500.0,
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    }

    fn parse(v: Value) -> std::result::Result<GptConfig, String> {
        config_from_json(&v, Path::new("config.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn head_width_and_rope_scaling_are_read_and_written_back() {
        let cfg = parse(llama(json!({
            "head_dim": 16,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64},
        })))
        .unwrap();
        assert_eq!((cfg.head_dim(), cfg.attention_width()), (16, 64));
        assert_eq!(cfg.rope_theta, 5e5);
        assert_eq!(
            cfg.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64
            })
        );
        let ids = TokenIds {
            bos: None,
            eos: vec![3, 5],
            pad: 0,
        };
        let written = config_to_json(&cfg, &ids);
        assert_eq!(parse(written.clone()).unwrap(), cfg);
        assert!(written["bos_token_id"].is_null());
        assert_eq!(written["eos_token_id"], json!(3));
        assert_eq!(generation_config_json(&ids)["eos_token_id"], json!([3, 5]));

        // transformers 4.x: `rope_scaling` with `type`; a head width equal to hidden / heads is
        // no quirk.
        let cfg = parse(llama(json!({"head_dim": 8,
            "rope_scaling": {"type": "linear", "factor": 2.0}})))
        .unwrap();
        assert_eq!(cfg.head_dim, None);
        assert_eq!(cfg.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        // Llama 3.1 without its own pretraining length falls back to max_position_embeddings.
        let cfg = parse(llama(
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
        ))
        .unwrap();
        assert!(matches!(
            cfg.rope_scaling,
            Some(RopeScaling::Llama3 {
                original_max_position_embeddings: 128,
                ..
            })
        ));
    }

    #[test]
    fn rope_kinds_not_computed_here_are_refused_by_name() {
        for (extra, expected) in [
            (
                json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}),
                "field `rope_parameters`: RoPE scaling `yarn` is not supported",
            ),
            (
                json!({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}),
                "field `rope_scaling`: RoPE scaling `dynamic`",
            ),
            (
                json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
                "field `rope_parameters.partial_rotary_factor`",
            ),
            (
                json!({"rope_parameters": {"rope_type": "linear", "factor": "two"}}),
                "field `rope_parameters.factor`: expected a number",
            ),
            (
                json!({"rope_parameters": {"rope_type": "linear", "factor": 0.5}}),
                "factor ≥ 1",
            ),
            (
                json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0,
                    "low_freq_factor": 4.0, "high_freq_factor": 1.0}}),
                "low_freq_factor < high_freq_factor",
            ),
        ] {
            let e = parse(llama(extra)).unwrap_err();
            assert!(
                e.contains("config.json") && e.contains(expected),
                "{e} lacks {expected}"
            );
        }
    }
}
