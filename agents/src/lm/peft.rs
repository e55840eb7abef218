//! PEFT's adapter files for a model's LoRA adapters (see [`crate::lm::lora`]):
//! `adapter_config.json` and `adapter_model.safetensors`, whose keys are
//! `base_model.model.<transformers' module name>.lora_{A,B}.weight`.

use crate::lm::hf;
use crate::lm::lora::{LoraConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::lm::model::{Family, Gpt};
use crate::lm::safetensors::{ck, finite, read_safetensors};
use crate::{AgentError, Result};
use std::path::Path;
use tch::{nn, Tensor};

/// The prefix PEFT's `PeftModel` puts before the transformers model's module names.
const PEFT_PREFIX: &str = "base_model.model.";

/// Write `model`'s adapters (its variables in `vs`) into the new folder `dir` in PEFT's layout,
/// naming `base` as the model they adapt.
pub fn save_adapter(dir: &Path, model: &Gpt, vs: &nn::VarStore, base: &Path) -> Result<()> {
    let cfg = model
        .lora()
        .ok_or_else(|| ck(dir, "the model has no adapters to save"))?;
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let family = model.config().family;
    let json = cfg.peft_json(family == Family::Gpt2, base, &model.adapted_modules());
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
    use crate::lm::lora::{is_adapter_var, TargetModules};
    use crate::lm::policy::LmPolicy;
    use aligngym_envs::TextCodec;
    use serde_json::json;
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
}
