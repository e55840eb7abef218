//! aligngym's transformer against transformers itself, on tiny random checkpoints of every
//! supported family that `scripts/hf_fixtures.py` writes with transformers (installed into `.venv`
//! by `make test`): logits through the full forward and through the KV cache, and greedy
//! generation, token for token.

use aligngym_agents::lm::checkpoint;
use aligngym_agents::lm::sampling::{generate_until, SamplingConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;
use common::py;
use tch::{Device, Kind, Tensor};

/// The fixtures, written once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aligngym-hf-fixtures-{}", std::process::id()));
        py(&["scripts/hf_fixtures.py", dir.to_str().unwrap()]);
        dir
    })
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn logits_and_greedy_generation_equal_transformers_for_every_family() {
    for name in ["gpt2", "llama-gqa-tied", "llama-untied-sharded", "qwen2"] {
        let dir = fixtures().join(name);
        let r = reference(&dir);
        let (_vs, model) = checkpoint::load_model(&dir, Device::Cpu).unwrap();
        let ids = &r["input_ids"];
        let valid = r["attention_mask"].to_kind(Kind::Bool); // [B, L]
        tch::no_grad(|| {
            // The full forward on a left-padded batch: equal at every real token.
            let logits = model.lm_logits(&model.forward_full(ids, &valid, false)); // [B, L, V]
            let keep = valid.unsqueeze(-1).to_kind(Kind::Float);
            let d = max_abs(&(&logits * &keep), &(&r["logits"] * &keep));
            assert!(d < 1e-4, "{name}: full forward max |Δlogit| = {d}");

            // Greedy generation through the KV cache: the same 32 tokens, and each step's
            // log-probability of its token equals transformers' from its own cache.
            let mask: Vec<Vec<i64>> = Vec::try_from(&r["attention_mask"]).unwrap();
            let rows: Vec<Vec<i64>> = Vec::try_from(ids).unwrap();
            let prompts: Vec<Vec<u32>> = rows
                .iter()
                .zip(&mask)
                .map(|(t, m)| {
                    t.iter()
                        .zip(m)
                        .filter(|(_, &m)| m == 1)
                        .map(|(&x, _)| x as u32)
                        .collect()
                })
                .collect();
            let n = r["generated"].size()[1];
            let cfg = SamplingConfig {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                max_new_tokens: n as usize,
            };
            // No stop token: transformers generated all the way too.
            let never = model.config().vocab_size as u32;
            let g = generate_until(&model, &prompts, 0, &[never], &cfg, Device::Cpu).unwrap();
            assert_eq!(
                Vec::<Vec<i64>>::try_from(&g.tokens).unwrap(),
                Vec::<Vec<i64>>::try_from(&r["generated"]).unwrap(),
                "{name}: greedy tokens differ"
            );
            let theirs = r["step_logits"]
                .log_softmax(-1, Kind::Float)
                .gather(2, &r["generated"].unsqueeze(-1), false)
                .squeeze_dim(-1); // [B, N]
            let d = max_abs(&g.logprobs, &theirs);
            assert!(d < 1e-4, "{name}: KV-cache log-prob max |Δ| = {d}");
        });
    }
    let _ = std::fs::remove_dir_all(fixtures());
}

#[test]
fn a_policy_trained_here_opens_in_transformers_with_identical_logits_ids_and_chat_text() {
    use aligngym_agents::lm::checkpoint::{CheckpointConfig, ModelKind};
    use aligngym_agents::stages::sft::{self, SftConfig};
    use aligngym_agents::{Activation, Family, GptConfig, Tokenizer};
    use aligngym_envs::{Message, TextCodec};

    let corpus = aligngym_envs::task("sentiment-v0").unwrap().corpus(800, 3);
    let tok = Tokenizer::train(&corpus, 300).unwrap();
    let v = tok.vocab_size();
    let llama = |family| GptConfig {
        family,
        n_kv_head: Some(2),
        intermediate_size: Some(40),
        activation: Activation::Silu,
        tie_word_embeddings: family == Family::Llama,
        ..GptConfig::gpt2(v, 2, 4, 32, 48)
    };
    let root = std::env::temp_dir().join(format!("aligngym-hf-export-{}", std::process::id()));
    let texts = [
        "the movie was great, 10/10!".to_string(),
        "  Déjà vu — 123 456 ✓ <|eos|> naïve".to_string(),
        corpus[0].clone(),
    ];
    let messages = [
        Message::new(aligngym_envs::Role::System, "be kind"),
        Message::user("hi there"),
        Message::assistant("hello!"),
        Message::user("rate 7+8"),
    ];
    let request = root.join("request.json");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        &request,
        serde_json::json!({"texts": texts, "messages": messages}).to_string(),
    )
    .unwrap();
    for (name, cfg) in [
        ("gpt2", GptConfig::gpt2(v, 2, 4, 32, 48)),
        ("llama", llama(Family::Llama)),
        ("qwen2", llama(Family::Qwen2)),
    ] {
        let (vs, model) = sft::init_model(&cfg, Device::Cpu, 7).unwrap();
        let seqs = sft::encode_corpus(&tok, &corpus, cfg.block_size).unwrap();
        let sft_cfg = SftConfig {
            steps: 4,
            batch_size: 8,
            warmup_steps: 1,
            ..SftConfig::default()
        };
        sft::train(&vs, &model, &seqs, tok.pad_id(), &sft_cfg, 1, |_| {}).unwrap();
        let dir = root.join(name);
        let ck = CheckpointConfig {
            kind: ModelKind::Policy,
            model: cfg.clone(),
            reward_offset: 0.0,
            aligngym_version: String::new(),
        };
        checkpoint::save(&dir, &vs, &tok, &ck).unwrap();
        let out = root.join(format!("{name}-out"));
        py(&[
            "scripts/hf_check.py",
            dir.to_str().unwrap(),
            request.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let theirs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("ids.json")).unwrap()).unwrap();
        let logits: HashMap<String, Tensor> =
            Tensor::read_safetensors(out.join("logits.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        for (i, text) in texts.iter().enumerate() {
            let ids = tok.encode_ids(text);
            let hf_ids: Vec<u32> = serde_json::from_value(theirs["ids"][i].clone()).unwrap();
            assert_eq!(ids, hf_ids, "{name}: ids of {text:?}");
            let x = Tensor::from_slice(&ids.iter().map(|&t| t as i64).collect::<Vec<_>>())
                .view([1, -1]);
            let valid = x.ones_like().to_kind(Kind::Bool);
            let ours = tch::no_grad(|| model.lm_logits(&model.forward_full(&x, &valid, false)));
            let d = max_abs(&ours.squeeze_dim(0), &logits[&format!("logits_{i}")]);
            assert!(d < 1e-4, "{name}: logits of {text:?}: max |Δ| = {d}");
        }
        let ours = tok
            .chat_template()
            .render(&messages, true, "<|bos|>", "<|eos|>")
            .unwrap();
        assert_eq!(
            theirs["chat"].as_str().unwrap(),
            ours,
            "{name}: chat template"
        );
    }
    let _ = std::fs::remove_dir_all(root);
}
