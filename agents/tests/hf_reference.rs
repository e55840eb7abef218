//! aligngym's transformer against transformers itself, on tiny random checkpoints of every
//! supported family that `scripts/hf_fixtures.py` writes with transformers (installed into `.venv`
//! by `make test`): logits through the full forward and through the KV cache, and greedy
//! generation, token for token.

use aligngym_agents::lm::checkpoint;
use aligngym_agents::lm::lora::{self, LoraConfig, TargetModules};
use aligngym_agents::lm::peft;
use aligngym_agents::lm::sampling::{generate_until, SamplingConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The tests that read the fixtures; the last one to finish removes them.
static FIXTURE_USERS: AtomicUsize = AtomicUsize::new(3);

fn done_with_fixtures() {
    if FIXTURE_USERS.fetch_sub(1, Ordering::SeqCst) == 1 {
        let _ = std::fs::remove_dir_all(fixtures());
    }
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
    for name in [
        "gpt2",
        "llama-gqa-tied",
        "llama-untied-sharded",
        "qwen2",
        "llama-head-dim",
        "llama3-rope-scaling",
    ] {
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
    done_with_fixtures();
}

/// Qwen2.5's tokenizer (no BOS, a ChatML template in `chat_template.jinja`, PAD among the EOS
/// ids) and Llama 3's (BOS from the tokenizer's post-processor, EOS ids listed in
/// `generation_config.json`), each with a third EOS id that greedy decoding reaches: prompts,
/// logits and where generation stops equal transformers', and a checkpoint saved here keeps them
/// for transformers.
#[test]
fn published_tokenizers_load_and_stop_as_transformers_resolves_them() {
    use aligngym_agents::lm::tokenizer::PromptFormat;
    use aligngym_agents::{LmPolicy, Policy};
    use aligngym_envs::TextCodec;
    let questions = ["what is 3 plus 6?", "what is 17 plus 20? the answer"];
    for (name, chat) in [("qwen2.5-tokenizer", true), ("llama3-tokenizer", false)] {
        let dir = fixtures().join(name);
        let r = reference(&dir);
        let policy = LmPolicy::load(&dir, Device::Cpu).unwrap();
        let tok = &policy.tokenizer;
        let eos: Vec<u32> = Vec::<i64>::try_from(&r["eos_ids"])
            .unwrap()
            .iter()
            .map(|&i| i as u32)
            .collect();
        assert_eq!(tok.eos_ids(), eos.as_slice(), "{name}: EOS ids");
        assert_eq!(tok.chat_prompts(), chat, "{name}: chat prompts");
        assert_eq!(tok.bos_id().is_none(), chat, "{name}: BOS");
        assert_eq!(tok.adds_bos(), !chat, "{name}: BOS added");
        let prompts: Vec<Vec<u32>> = questions.iter().map(|q| tok.encode_prompt(q)).collect();
        let sampling = SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 12,
        };
        let gen = policy.sample(&prompts, &sampling).unwrap();
        let completions = gen.completions();
        for (i, ids) in prompts.iter().enumerate() {
            let theirs: Vec<i64> = Vec::try_from(&r[&format!("prompt_{i}")]).unwrap();
            let ours: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            assert_eq!(ours, theirs, "{name}: prompt {i}");
            let x = Tensor::from_slice(&ours).view([1, -1]);
            let valid = x.ones_like().to_kind(Kind::Bool);
            let logits = tch::no_grad(|| {
                policy
                    .model
                    .lm_logits(&policy.model.forward_full(&x, &valid, false))
            });
            let d = max_abs(&logits.squeeze_dim(0), &r[&format!("logits_{i}")]);
            assert!(d < 1e-4, "{name}: logits of prompt {i}: max |Δ| = {d}");
            let generated: Vec<i64> = Vec::try_from(&r[&format!("generated_{i}")]).unwrap();
            let ours: Vec<i64> = completions[i].iter().map(|&t| t as i64).collect();
            assert_eq!(ours, generated, "{name}: greedy completion {i}");
        }
        if chat {
            // SFT on a conversation: transformers' ids, the assistant's answer and its end trained.
            let conv = [
                aligngym_envs::Message::user(questions[0]),
                aligngym_envs::Message::assistant("the answer is 9."),
            ];
            let (ids, mine) = tok.conversation_ids(&conv).unwrap();
            let theirs: Vec<i64> = Vec::try_from(&r["conversation"]).unwrap();
            let ours: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            assert_eq!(ours, theirs, "{name}: conversation ids");
            let trained: Vec<u32> = ids
                .iter()
                .zip(&mine)
                .filter(|(_, &m)| m)
                .map(|(&i, _)| i)
                .collect();
            assert_eq!(
                trained,
                tok.encode_ids("the answer is 9.<|im_end|>\n"),
                "{name}"
            );
            assert_eq!(&ids[..prompts[0].len()], prompts[0].as_slice(), "{name}");
            // A `{"text"}` line is language modelling on the text as it is: no template, and
            // no BOS where the tokenizer has none.
            let text = aligngym_agents::stages::sft::encode_records(
                tok,
                &[aligngym_envs::SftRecord::Text(questions[1].into())],
                64,
            )
            .unwrap();
            let mut want = tok.encode_ids(questions[1]);
            want.push(tok.eos_id());
            assert_eq!(text[0].ids, want, "{name}: a text line");
        }
        // The first question stops at the third EOS id, before the token budget.
        assert!(completions[0].len() <= 4, "{name}: {:?}", completions[0]);
        assert!(eos.contains(completions[0].last().unwrap()));

        // Saved here, the checkpoint keeps no BOS, the EOS ids and the template, for aligngym and
        // for transformers.
        let saved = std::env::temp_dir().join(format!("aligngym-{name}-{}", std::process::id()));
        policy.save(&saved).unwrap();
        let again = LmPolicy::load(&saved, Device::Cpu).unwrap();
        assert_eq!(again.tokenizer.eos_ids(), tok.eos_ids(), "{name}");
        assert_eq!(again.tokenizer.bos_id(), tok.bos_id(), "{name}");
        assert_eq!(again.tokenizer.encode_prompt(questions[1]), prompts[1]);
        let request = saved.with_file_name(format!("{name}-request.json"));
        let messages = [aligngym_envs::Message::user(questions[0])];
        std::fs::write(
            &request,
            serde_json::json!({"texts": questions, "messages": messages}).to_string(),
        )
        .unwrap();
        let out = saved.with_file_name(format!("{name}-out"));
        py(&[
            "scripts/hf_check.py",
            saved.to_str().unwrap(),
            request.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let theirs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("ids.json")).unwrap()).unwrap();
        let their_eos: Vec<u32> = serde_json::from_value(theirs["eos_token_id"].clone()).unwrap();
        assert_eq!(
            their_eos, eos,
            "{name}: transformers' EOS ids of the saved checkpoint"
        );
        assert_eq!(
            theirs["bos_token"].is_null(),
            chat,
            "{name}: {}",
            theirs["bos_token"]
        );
        // `sample --format raw` gives a chat model's tokenizer the plain text as transformers
        // encodes it; a model without a template of its own has one format only.
        let with_specials: Vec<u32> =
            serde_json::from_value(theirs["with_specials"][1].clone()).unwrap();
        assert_eq!(
            tok.encode_prompt_as(questions[1], PromptFormat::Raw),
            with_specials,
            "{name}: raw prompt"
        );
        assert_eq!(
            tok.encode_prompt_as(questions[1], PromptFormat::Chat),
            prompts[1],
            "{name}: chat prompt"
        );
        if chat {
            let rendered = tok
                .chat_template()
                .render(&messages, true, "", "<|im_end|>")
                .unwrap();
            assert_eq!(theirs["chat"].as_str().unwrap(), rendered, "{name}");
        } else {
            assert_eq!(with_specials, prompts[1], "{name}: ids with special tokens");
        }
        for p in [saved.clone(), out] {
            let _ = std::fs::remove_dir_all(p);
        }
        let _ = std::fs::remove_file(request);
    }
    done_with_fixtures();
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

/// LoRA both ways with PEFT on GPT-2 (Conv1D projections), Llama (grouped-query attention, tied
/// head) and Qwen2 (attention biases): adapters made here load onto the transformers model with
/// `PeftModel.from_pretrained`, and adapters PEFT makes (A and B random, rsLoRA, all-linear) load
/// here; the adapted models' logits agree.
#[test]
fn lora_adapters_round_trip_with_peft() {
    let rows: Vec<Vec<i64>> = vec![vec![5, 17, 33, 2, 71, 9, 40], vec![11, 12, 90, 3]];
    let work = std::env::temp_dir().join(format!("aligngym-peft-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let ids_path = work.join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(&rows).unwrap()).unwrap();
    let compare = |model: &aligngym_agents::Gpt, theirs: &Path, what: &str| {
        let theirs: HashMap<String, Tensor> = Tensor::read_safetensors(theirs)
            .unwrap()
            .into_iter()
            .collect();
        for (i, row) in rows.iter().enumerate() {
            let ids = Tensor::from_slice(row).unsqueeze(0); // [1, T]
            let valid = ids.ones_like().to_kind(Kind::Bool);
            let ours = tch::no_grad(|| model.lm_logits(&model.forward_full(&ids, &valid, false)));
            let d = max_abs(&ours.squeeze_dim(0), &theirs[&format!("logits_{i}")]);
            assert!(d < 1e-4, "{what}: max |Δlogit| = {d}");
        }
    };
    for name in ["gpt2", "llama-gqa-tied", "qwen2"] {
        let base = fixtures().join(name);
        let base_s = base.to_str().unwrap();

        // Ours → PEFT: PEFT's default targets, B moved off zero so the adapters matter.
        let (vs, mut model) = checkpoint::load_model(&base, Device::Cpu).unwrap();
        let cfg = LoraConfig {
            r: 4,
            lora_alpha: 16.0,
            target_modules: TargetModules::Default,
            ..Default::default()
        };
        model.attach_lora(&vs.root(), &cfg, 1).unwrap();
        tch::manual_seed(1);
        tch::no_grad(|| {
            for (n, mut t) in model.adapter_variables(&vs) {
                if n.ends_with("lora_B.weight") {
                    t.copy_(&(t.randn_like() * 0.2));
                }
            }
        });
        let ours_dir = work.join(format!("{name}-ours"));
        peft::save_adapter(&ours_dir, &model, &vs, &base).unwrap();
        let out = work.join(format!("{name}-ours.safetensors"));
        py(&[
            "scripts/peft_check.py",
            "load",
            base_s,
            ours_dir.to_str().unwrap(),
            ids_path.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        compare(&model, &out, &format!("{name}: ours in PEFT"));

        // PEFT → ours.
        let theirs_dir = work.join(format!("{name}-theirs"));
        let out = work.join(format!("{name}-theirs.safetensors"));
        py(&[
            "scripts/peft_check.py",
            "make",
            base_s,
            theirs_dir.to_str().unwrap(),
            ids_path.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let file = lora::read_adapter_config(&theirs_dir).unwrap();
        assert!(file.config.use_rslora && file.config.r == 4, "{name}");
        let (vs, mut model) = checkpoint::load_model(&base, Device::Cpu).unwrap();
        peft::load_adapter(&mut model, &vs, &theirs_dir, &file.config).unwrap();
        compare(&model, &out, &format!("{name}: PEFT's here"));
    }
    std::fs::remove_dir_all(&work).unwrap();
    done_with_fixtures();
}
