//! LoRA (Hu et al. 2021) with PEFT's names and semantics: a projection `W` of a frozen base gains
//! a trainable low-rank update, `y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ` with `A [r, in]`, `B [out, r]`,
//! `s = α / r` (α / √r with rsLoRA), A drawn as PEFT draws it and B zero, so a fresh adapter leaves
//! the model exactly as it was.
//!
//! Adapters live as variables beside the projection they adapt (`…q_proj.lora_A.weight`); they
//! are saved in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_{A,B}.weight`), which `peft` loads onto the transformers model.

use crate::lm::safetensors::ck;
use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

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
    /// `model.layers.0.self_attn.q_proj`) gets an adapter; `defaults` are the family's names for
    /// [`TargetModules::Default`].
    pub fn targets(&self, defaults: &[&str], module: &str) -> bool {
        let matches = |t: &str| module == t || module.ends_with(&format!(".{t}"));
        match &self.target_modules {
            TargetModules::AllLinear => true,
            TargetModules::Default => defaults.iter().any(|t| matches(t)),
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
    /// `fan_in_fan_out` is PEFT's flag for GPT-2's `Conv1D` projections.
    pub fn peft_json(&self, fan_in_fan_out: bool, base: &Path, modules: &[String]) -> Value {
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
            "fan_in_fan_out": fan_in_fan_out,
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

/// True for an adapter's variable (`…lora_A.weight`, `…lora_B.weight`).
pub fn is_adapter_var(name: &str) -> bool {
    name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lm::model::Family;
    const LLAMA: &[&str] = Family::Llama.lora_default_targets();

    #[test]
    fn target_modules_follow_peft_matching_and_defaults() {
        const GPT2: &[&str] = &["c_attn"];
        assert_eq!(Family::Gpt2.lora_default_targets(), GPT2);
        let cfg = |t: TargetModules| LoraConfig {
            r: 8,
            target_modules: t,
            ..Default::default()
        };
        let d = cfg(TargetModules::Default);
        assert!(d.targets(LLAMA, "model.layers.3.self_attn.q_proj"));
        assert!(d.targets(LLAMA, "model.layers.0.self_attn.v_proj"));
        assert!(!d.targets(LLAMA, "model.layers.0.self_attn.k_proj"));
        assert!(!d.targets(LLAMA, "model.layers.0.mlp.down_proj"));
        assert!(d.targets(GPT2, "transformer.h.1.attn.c_attn"));
        assert!(!d.targets(GPT2, "transformer.h.1.attn.c_proj"));
        // A bare name matches a whole last component only; a dotted one, its tail.
        let n = cfg(TargetModules::try_from(json!("c_proj, attn.c_attn")).unwrap());
        assert!(n.targets(GPT2, "transformer.h.0.mlp.c_proj"));
        assert!(n.targets(GPT2, "transformer.h.0.attn.c_proj"));
        assert!(n.targets(GPT2, "transformer.h.0.attn.c_attn"));
        assert!(!cfg(TargetModules::Names(vec!["proj".into()]))
            .targets(LLAMA, "model.layers.0.self_attn.q_proj"));
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
    fn adapter_configs_with_features_not_computed_here_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("aligngym-lora-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = LoraConfig {
            r: 4,
            ..Default::default()
        }
        .peft_json(false, &dir, &["m.layers.0.self_attn.q_proj".into()]);
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
