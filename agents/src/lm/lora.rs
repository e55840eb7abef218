//! LoRA (Hu et al. 2021) with PEFT's names and semantics: a projection `W` of a frozen base gains
//! a trainable low-rank update, `y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ` with `A [r, in]`, `B [out, r]`,
//! `s = α / r` (α / √r with rsLoRA), A drawn as PEFT draws it and B zero, so a fresh adapter leaves
//! the model exactly as it was.
//!
//! Adapters live as variables beside the projection they adapt (`…q_proj.lora_A.weight`); they
//! are saved in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_{A,B}.weight`), which `peft` loads onto the transformers model.

use crate::lm::hf;
use crate::lm::model::{Family, Gpt};
use crate::lm::safetensors::{ck, finite, read_safetensors};
use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};

/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix PEFT's `PeftModel` puts before the transformers model's module names.
const PEFT_PREFIX: &str = "base_model.model.";

/// Which projections get adapters, by transformers' module names (PEFT's `target_modules`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "Value", try_from = "Value")]
pub enum TargetModules {
    /// PEFT's choice for the family: `q_proj` and `v_proj` (Llama, Qwen2), `c_attn` (GPT-2).
    #[default]
    Default,
    /// Every linear layer of the blocks (PEFT's `all-linear`: not the LM head).
    AllLinear,
    /// Modules whose name is one of these or ends with `.` and one of these (PEFT's matching).
    Names(Vec<String>),
}

impl From<TargetModules> for Value {
    fn from(t: TargetModules) -> Value {
        match t {
            TargetModules::Default => json!("default"),
            TargetModules::AllLinear => json!("all-linear"),
            TargetModules::Names(n) => json!(n),
        }
    }
}

impl TryFrom<Value> for TargetModules {
    type Error = String;
    fn try_from(v: Value) -> std::result::Result<Self, String> {
        let expected = "expected `default`, `all-linear`, module names separated by commas, or a list of names";
        let names: Vec<String> = match v {
            Value::Null => return Ok(Self::Default),
            Value::String(s) if s == "default" => return Ok(Self::Default),
            Value::String(s) if s == "all-linear" => return Ok(Self::AllLinear),
            Value::String(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
            Value::Array(a) => a
                .into_iter()
                .map(|x| x.as_str().map(String::from).ok_or(expected))
                .collect::<std::result::Result<_, _>>()?,
            _ => return Err(expected.into()),
        };
        if names.is_empty() || names.iter().any(|n| n.is_empty()) {
            return Err(expected.into());
        }
        Ok(Self::Names(names))
    }
}

fn default_alpha() -> f64 {
    8.0
}

/// LoRA's hyperparameters, under PEFT's names and with PEFT's defaults; `r = 0` (the default)
/// trains every weight instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter; 0 trains every weight (no adapters). PEFT's default is 8.
    #[serde(default)]
    pub r: usize,
    /// α: the update is scaled by α / r (α / √r with `use_rslora`). Default 8 (PEFT's).
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on each adapter's input while training. Default 0 (PEFT's).
    #[serde(default)]
    pub lora_dropout: f64,
    /// The projections adapted. Default: PEFT's for the family.
    #[serde(default)]
    pub target_modules: TargetModules,
    /// Scale by α / √r (Kalajdzievski 2023), which keeps the update's size steady across ranks.
    #[serde(default)]
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 0,
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: TargetModules::Default,
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// True when adapters are trained rather than every weight.
    pub fn enabled(&self) -> bool {
        self.r > 0
    }

    /// The factor on `B·A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Check the values (each error names the field).
    pub fn validate(&self) -> Result<()> {
        if self.r > 4096 {
            return Err(AgentError::config("lora.r", "expected at most 4096"));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(AgentError::config("lora.lora_alpha", "expected > 0"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(AgentError::config(
                "lora.lora_dropout",
                "expected in [0, 1)",
            ));
        }
        Ok(())
    }

    /// Whether the projection transformers names `module` (e.g.
    /// `model.layers.0.self_attn.q_proj`) gets an adapter in a model of `family`.
    pub fn targets(&self, family: Family, module: &str) -> bool {
        let matches = |t: &str| module == t || module.ends_with(&format!(".{t}"));
        match &self.target_modules {
            TargetModules::AllLinear => true,
            TargetModules::Default => match family {
                Family::Gpt2 => matches("c_attn"),
                Family::Llama | Family::Qwen2 => matches("q_proj") || matches("v_proj"),
            },
            TargetModules::Names(names) => names.iter().any(|t| matches(t)),
        }
    }

    /// Names in `target_modules` that match none of `modules` (a typo PEFT refuses too).
    pub fn unmatched<'a>(&'a self, modules: &[String]) -> Vec<&'a str> {
        match &self.target_modules {
            TargetModules::Names(names) => names
                .iter()
                .filter(|t| {
                    !modules
                        .iter()
                        .any(|m| m == *t || m.ends_with(&format!(".{t}")))
                })
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// PEFT's `adapter_config.json` for adapters of this configuration on the model at `base`,
    /// which adapts exactly `modules` (transformers' module names).
    pub fn peft_json(&self, family: Family, base: &Path, modules: &[String]) -> Value {
        // The module names themselves, as PEFT writes them after resolving `all-linear`: the
        // file then says exactly what was adapted, whatever PEFT's own defaults become.
        let mut short: Vec<&str> = modules
            .iter()
            .map(|m| m.rsplit('.').next().unwrap_or(m))
            .collect();
        short.sort_unstable();
        short.dedup();
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base.display().to_string(),
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": short,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": family == Family::Gpt2,
            "init_lora_weights": true,
            "inference_mode": true,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }
}

/// An adapter directory's configuration and the base model it adapts.
#[derive(Debug, Clone)]
pub struct AdapterFile {
    /// The hyperparameters (target modules as the file lists them).
    pub config: LoraConfig,
    /// `base_model_name_or_path`: a local checkpoint directory (relative paths are taken from
    /// the adapter's directory).
    pub base: PathBuf,
}

/// True when `dir` holds a PEFT adapter.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// Read PEFT's `adapter_config.json` in `dir`. Features aligngym does not compute (DoRA,
/// per-module ranks, trained biases, extra saved modules, layer subsets) are refused by name.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterFile> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| AgentError::io(&path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| ck(&path, format!("invalid JSON: {e}")))?;
    let field = |name: &str| v.get(name).filter(|x| !x.is_null());
    let bad = |name: &str, what: &str| ck(&path, format!("field `{name}`: {what}"));
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        _ => return Err(bad("peft_type", "expected \"LORA\"")),
    }
    let empty = |x: &Value| match x {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Bool(b) => !b,
        _ => false,
    };
    for (name, what) in [
        ("use_dora", "DoRA"),
        ("rank_pattern", "per-module ranks"),
        ("alpha_pattern", "per-module alphas"),
        ("modules_to_save", "fully trained extra modules"),
        ("layers_to_transform", "adapters on some layers only"),
        ("layers_pattern", "adapters on some layers only"),
        ("exclude_modules", "excluded modules"),
    ] {
        if field(name).is_some_and(|x| !empty(x)) {
            return Err(bad(name, &format!("{what} is not supported")));
        }
    }
    if let Some(b) = field("bias") {
        if b.as_str() != Some("none") {
            return Err(bad(
                "bias",
                "trained biases are not supported (expected \"none\")",
            ));
        }
    }
    let r = field("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("r", "expected a positive integer"))?;
    let num = |name: &str, default: f64| match field(name) {
        None => Ok(default),
        Some(x) => x
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| bad(name, "expected a number")),
    };
    let target_modules = match field("target_modules") {
        None => TargetModules::Default,
        Some(x) => TargetModules::try_from(x.clone()).map_err(|e| bad("target_modules", &e))?,
    };
    let config = LoraConfig {
        r: r as usize,
        lora_alpha: num("lora_alpha", 8.0)?,
        lora_dropout: num("lora_dropout", 0.0)?,
        target_modules,
        use_rslora: match field("use_rslora") {
            None => false,
            Some(x) => x
                .as_bool()
                .ok_or_else(|| bad("use_rslora", "expected true or false"))?,
        },
    };
    config
        .validate()
        .map_err(|e| ck(&path, e.to_string().replace("lora.", "")))?;
    let base = field("base_model_name_or_path")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            bad(
                "base_model_name_or_path",
                "expected the base model's directory",
            )
        })?;
    let base = PathBuf::from(base);
    let base = if base.is_relative() {
        dir.join(base)
    } else {
        base
    };
    if !base.is_dir() {
        return Err(bad(
            "base_model_name_or_path",
            &format!(
                "`{}` is not a local checkpoint directory (download the base model and point this field at it)",
                base.display()
            ),
        ));
    }
    Ok(AdapterFile { config, base })
}

/// Write `model`'s adapters (its variables in `vs`) into the new folder `dir` in PEFT's layout,
/// naming `base` as the model they adapt.
pub fn save_adapter(dir: &Path, model: &Gpt, vs: &nn::VarStore, base: &Path) -> Result<()> {
    let cfg = model
        .lora()
        .ok_or_else(|| ck(dir, "the model has no adapters to save"))?;
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let family = model.config().family;
    let json = cfg.peft_json(family, base, &model.adapted_modules());
    let path = dir.join(ADAPTER_CONFIG);
    let text = serde_json::to_string_pretty(&json).map_err(|e| ck(&path, e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| AgentError::io(&path, e))?;
    write_adapter_weights(
        &dir.join(ADAPTER_WEIGHTS),
        family,
        &model.adapter_variables(vs),
    )
}

/// Attach the adapters of the PEFT directory `dir` (configuration `cfg`, as
/// [`read_adapter_config`] read it) to `model`, whose variables live in `vs`.
pub fn load_adapter(
    model: &mut Gpt,
    vs: &nn::VarStore,
    dir: &Path,
    cfg: &LoraConfig,
) -> Result<()> {
    model.attach_lora(&vs.root(), cfg, 0)?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let ours: Vec<(String, Vec<i64>)> = model
        .adapter_variables(vs)
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    let tensors = read_adapter_weights(&path, model.config().family, &ours)?;
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, t) in tensors {
            let mut v = vars[&name].shallow_clone();
            v.copy_(&t.to_device(v.device()).to_kind(v.kind()));
        }
    });
    Ok(())
}

/// True for an adapter's variable (`…lora_A.weight`, `…lora_B.weight`).
pub fn is_adapter_var(name: &str) -> bool {
    name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
}

/// PEFT's key for the adapter variable `ours` of a `family` model.
pub fn peft_name(family: Family, ours: &str) -> Option<String> {
    let (module, which) = ours
        .strip_suffix(".lora_A.weight")
        .map(|m| (m, "lora_A"))
        .or_else(|| ours.strip_suffix(".lora_B.weight").map(|m| (m, "lora_B")))?;
    let (theirs, _) = hf::hf_name(family, &format!("{module}.weight"))?;
    let theirs = theirs.strip_suffix(".weight")?;
    Some(format!("{PEFT_PREFIX}{theirs}.{which}.weight"))
}

/// Write `adapter_model.safetensors` (the adapter variables under PEFT's keys, fp32 on the CPU).
pub fn write_adapter_weights(path: &Path, family: Family, vars: &[(String, Tensor)]) -> Result<()> {
    let mut out: Vec<(String, Tensor)> = vars
        .iter()
        .filter_map(|(n, t)| {
            let key = peft_name(family, n)?;
            Some((key, t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float)))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&out, path)?;
    Ok(())
}

/// Read `adapter_model.safetensors` as (our variable name → tensor) for a `family` model whose
/// adapter variables are `ours`: every one must be in the file with its shape, and the file must
/// hold nothing else.
pub fn read_adapter_weights(
    path: &Path,
    family: Family,
    ours: &[(String, Vec<i64>)],
) -> Result<Vec<(String, Tensor)>> {
    let mut file: std::collections::HashMap<String, Tensor> =
        read_safetensors(path)?.into_iter().collect();
    let mut out = Vec::with_capacity(ours.len());
    for (name, shape) in ours {
        let key = peft_name(family, name)
            .ok_or_else(|| ck(path, format!("`{name}` is not an adapter variable")))?;
        // PEFT ≤ 0.6 kept the adapter's name in the key.
        let legacy = key.replace(".weight", ".default.weight");
        let t = file
            .remove(&key)
            .or_else(|| file.remove(&legacy))
            .ok_or_else(|| ck(path, format!("missing tensor `{key}`")))?;
        if &t.size() != shape {
            return Err(ck(
                path,
                format!(
                    "tensor `{key}` has shape {:?}, expected {shape:?}",
                    t.size()
                ),
            ));
        }
        finite(&key, &t, path)?;
        out.push((name.clone(), t));
    }
    if let Some(extra) = file.keys().min() {
        return Err(ck(
            path,
            format!("unexpected tensor `{extra}` (not an adapter of this model's target modules)"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_modules_follow_peft_matching_and_defaults() {
        let cfg = |t: TargetModules| LoraConfig {
            r: 8,
            target_modules: t,
            ..Default::default()
        };
        let d = cfg(TargetModules::Default);
        assert!(d.targets(Family::Llama, "model.layers.3.self_attn.q_proj"));
        assert!(d.targets(Family::Qwen2, "model.layers.0.self_attn.v_proj"));
        assert!(!d.targets(Family::Llama, "model.layers.0.self_attn.k_proj"));
        assert!(!d.targets(Family::Llama, "model.layers.0.mlp.down_proj"));
        assert!(d.targets(Family::Gpt2, "transformer.h.1.attn.c_attn"));
        assert!(!d.targets(Family::Gpt2, "transformer.h.1.attn.c_proj"));
        // A bare name matches a whole last component only; a dotted one, its tail.
        let n = cfg(TargetModules::try_from(json!("c_proj, attn.c_attn")).unwrap());
        assert!(n.targets(Family::Gpt2, "transformer.h.0.mlp.c_proj"));
        assert!(n.targets(Family::Gpt2, "transformer.h.0.attn.c_proj"));
        assert!(n.targets(Family::Gpt2, "transformer.h.0.attn.c_attn"));
        assert!(!cfg(TargetModules::Names(vec!["proj".into()]))
            .targets(Family::Llama, "model.layers.0.self_attn.q_proj"));
        let modules = vec!["model.layers.0.self_attn.q_proj".to_string()];
        let typo = cfg(TargetModules::Names(vec!["q_proj".into(), "qproj".into()]));
        assert_eq!(typo.unmatched(&modules), ["qproj"]);
        // Every spelling reads back as written.
        for t in [
            TargetModules::Default,
            TargetModules::AllLinear,
            TargetModules::Names(vec!["q_proj".into(), "k_proj".into()]),
        ] {
            let v = Value::from(t.clone());
            assert_eq!(TargetModules::try_from(v).unwrap(), t);
        }
        assert!(TargetModules::try_from(json!(3)).is_err());
        assert!(TargetModules::try_from(json!("q_proj,,v_proj")).is_err());
    }

    use crate::lm::policy::LmPolicy;
    use aligngym_envs::TextCodec;
    use tch::{Device, Kind};

    /// A random policy of `family` (GPT-2; Llama with grouped-query attention; Qwen2 with biases).
    fn policy(family: &str) -> LmPolicy {
        let corpus: Vec<String> = (0..40).map(|i| format!("adapt {i} low rank")).collect();
        let tokenizer = crate::lm::tokenizer::Tokenizer::train(&corpus, 300).unwrap();
        let v = tokenizer.vocab_size();
        let cfg = match family {
            "gpt2" => crate::lm::model::GptConfig::gpt2(v, 2, 4, 32, 64),
            _ => hf::config_from_json(
                &json!({"model_type": family, "vocab_size": v, "hidden_size": 32,
                    "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "max_position_embeddings": 64}),
                Path::new("config.json"),
            )
            .unwrap(),
        };
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), &cfg).unwrap();
        LmPolicy {
            vs,
            model,
            tokenizer,
            adapter_base: None,
        }
    }

    fn logits(p: &LmPolicy, ids: &Tensor) -> Tensor {
        let valid = ids.ones_like().to_kind(Kind::Bool);
        p.model.lm_logits(&p.model.forward_full(ids, &valid, false)) // [B, T, V]
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn adapters_start_as_a_no_op_train_alone_and_share_the_frozen_base() {
        let _rng = crate::tests::lock();
        for family in ["gpt2", "llama", "qwen2"] {
            let dir =
                std::env::temp_dir().join(format!("aligngym-lora-{family}-{}", std::process::id()));
            let mut p = policy(family);
            let ids = Tensor::randint(
                p.model.config().vocab_size as i64,
                [2, 7],
                (Kind::Int64, Device::Cpu),
            );
            let base = tch::no_grad(|| logits(&p, &ids));
            p.save(dir.join("base")).unwrap();
            p.adapter_base = Some(dir.join("base"));
            let cfg = LoraConfig {
                r: 4,
                lora_alpha: 8.0,
                target_modules: TargetModules::AllLinear,
                ..Default::default()
            };
            p.attach_lora(&cfg, 3).unwrap();
            let per_block = if family == "gpt2" { 4 } else { 7 };
            assert_eq!(p.model.adapted_modules().len(), 2 * per_block, "{family}");
            // B starts at zero: the model computes exactly as before.
            assert_eq!(
                max_abs(&tch::no_grad(|| logits(&p, &ids)), &base),
                0.0,
                "{family}"
            );

            // With B moved, the merged route (no gradient: sampling) and the low-rank route
            // (training) agree, and differ from the base.
            tch::no_grad(|| {
                for (n, mut t) in p.model.adapter_variables(&p.vs) {
                    if n.ends_with("lora_B.weight") {
                        t.copy_(&(t.randn_like() * 0.3));
                    }
                }
            });
            let merged = tch::no_grad(|| logits(&p, &ids));
            let low_rank = logits(&p, &ids);
            assert!(low_rank.requires_grad());
            let d = max_abs(&merged, &low_rank.detach());
            assert!(d < 1e-4, "{family}: merged vs low-rank max |Δ| = {d}");
            assert!(
                max_abs(&merged, &base) > 1e-2,
                "{family}: the adapters changed nothing"
            );

            // Gradients reach the adapters alone.
            low_rank.square().mean(Kind::Float).backward();
            for (n, t) in p.vs.variables() {
                let g = t.grad();
                if is_adapter_var(&n) {
                    assert!(
                        g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                        "{family}: {n}"
                    );
                } else if hf::hf_name(p.model.config().family, &n).is_some() {
                    assert!(!g.defined() && !t.requires_grad(), "{family}: {n} trains");
                }
            }
            // A run's state is the adapters and the heads.
            let state = p.state_variables();
            assert!(
                state
                    .iter()
                    .all(|(n, _)| is_adapter_var(n) || hf::is_head(n)),
                "{family}"
            );
            assert_eq!(state.len(), 4 * per_block + 4, "{family}");

            // The reference is the base itself, sharing its tensors (its store holds the heads
            // alone); a trainable copy has the adapters' values.
            let reference = p.duplicate(false).unwrap();
            assert_eq!(reference.vs.variables().len(), 4, "{family}");
            assert_eq!(
                max_abs(&tch::no_grad(|| logits(&reference, &ids)), &base),
                0.0
            );
            let copy = p.duplicate(true).unwrap();
            assert!(max_abs(&tch::no_grad(|| logits(&copy, &ids)), &merged) < 1e-6);

            // Saved: the merged model, and the adapter in PEFT's layout on the base.
            p.save(dir.join("tuned")).unwrap();
            let back = LmPolicy::load(dir.join("tuned"), Device::Cpu).unwrap();
            assert!(back.model.lora().is_none());
            let d = max_abs(&tch::no_grad(|| logits(&back, &ids)), &merged);
            assert!(d < 1e-4, "{family}: merged checkpoint max |Δ| = {d}");
            let adapter = dir.join("tuned").join(crate::lm::policy::ADAPTER_DIR);
            let again = LmPolicy::load(&adapter, Device::Cpu).unwrap();
            assert_eq!(
                again.model.lora(),
                Some(&LoraConfig {
                    target_modules: TargetModules::Names(if family == "gpt2" {
                        vec!["c_attn".into(), "c_fc".into(), "c_proj".into()]
                    } else {
                        [
                            "down_proj",
                            "gate_proj",
                            "k_proj",
                            "o_proj",
                            "q_proj",
                            "up_proj",
                            "v_proj",
                        ]
                        .map(String::from)
                        .to_vec()
                    }),
                    ..cfg.clone()
                })
            );
            assert_eq!(
                again.adapter_base.as_deref(),
                Some(dir.join("base").as_path())
            );
            let d = max_abs(&tch::no_grad(|| logits(&again, &ids)), &merged);
            assert!(d < 1e-4, "{family}: adapter reloaded max |Δ| = {d}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn scale_is_alpha_over_r_or_its_root() {
        let mut c = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            ..Default::default()
        };
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 8.0);
        assert!(!LoraConfig::default().enabled());
        c.lora_dropout = 1.0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("lora_dropout"));
    }

    #[test]
    fn peft_names_follow_transformers_module_names() {
        assert_eq!(
            peft_name(
                Family::Llama,
                "model.layers.0.self_attn.q_proj.lora_A.weight"
            )
            .unwrap(),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            peft_name(Family::Gpt2, "h.2.attn.c_attn.lora_B.weight").unwrap(),
            "base_model.model.transformer.h.2.attn.c_attn.lora_B.weight"
        );
        assert!(peft_name(Family::Llama, "model.layers.0.self_attn.q_proj.weight").is_none());
    }

    #[test]
    fn adapter_configs_with_features_not_computed_here_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("aligngym-lora-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = LoraConfig {
            r: 4,
            ..Default::default()
        }
        .peft_json(Family::Llama, &dir, &["m.layers.0.self_attn.q_proj".into()]);
        std::fs::write(dir.join(ADAPTER_CONFIG), base.to_string()).unwrap();
        let read = read_adapter_config(&dir).unwrap();
        assert_eq!(read.config.r, 4);
        assert_eq!(
            read.config.target_modules,
            TargetModules::Names(vec!["q_proj".into()])
        );
        for (field, value, expected) in [
            ("use_dora", json!(true), "field `use_dora`: DoRA"),
            ("rank_pattern", json!({"q_proj": 8}), "field `rank_pattern`"),
            ("bias", json!("all"), "field `bias`"),
            ("r", json!(0), "field `r`"),
            ("peft_type", json!("IA3"), "field `peft_type`"),
            (
                "base_model_name_or_path",
                json!("HuggingFaceTB/SmolLM2-135M"),
                "not a local checkpoint",
            ),
        ] {
            let mut v = base.clone();
            v[field] = value;
            std::fs::write(dir.join(ADAPTER_CONFIG), v.to_string()).unwrap();
            let e = read_adapter_config(&dir).unwrap_err().to_string();
            assert!(e.contains(ADAPTER_CONFIG) && e.contains(expected), "{e}");
            assert!(!e.contains('\n'));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
