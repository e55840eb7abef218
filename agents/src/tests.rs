//! Tests of the model core: KV cache, sampling log-probs, checkpoints, SFT.

use crate::lm::checkpoint::{self, CheckpointConfig, ModelKind};
use crate::lm::model::{
    attention_mask, key_bias, positions_from_valid, Activation, Family, Gpt, GptConfig, KvCache,
};
use crate::lm::sampling::{
    generate, left_pad, sequence_logprobs, sequence_outputs, EntropyGrad, Generation,
    SamplingConfig,
};
use crate::lm::tokenizer::Tokenizer;
use crate::stages::sft::{self, SftConfig};
use aligngym_envs::TextCodec;
use tch::{nn, Device, Kind, Tensor};

/// Tests share libtorch's global RNG; each test holds this lock so seeds stay meaningful when the
/// harness runs tests on several threads.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn small_model(seed: u64, vocab: usize) -> (nn::VarStore, Gpt) {
    let cfg = GptConfig::gpt2(vocab, 2, 4, 32, 64);
    sft::init_model(&cfg, Device::Cpu, seed).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The log-probs of a generation's tokens from a teacher-forced pass at `temperature`.
fn recomputed_logprobs(m: &Gpt, g: &Generation, temperature: f64) -> Tensor {
    tch::no_grad(|| sequence_logprobs(m, &g.sequences(), temperature, false))
}

/// A Llama-family config at the test size: grouped-query attention (4 query heads sharing 2
/// key/value heads), an untied head, SwiGLU.
fn small_llama(family: Family, vocab: usize) -> GptConfig {
    GptConfig {
        family,
        n_kv_head: Some(2),
        intermediate_size: Some(48),
        activation: Activation::Silu,
        rope_theta: 500.0,
        norm_eps: 1e-6,
        tie_word_embeddings: false,
        ..GptConfig::gpt2(vocab, 2, 4, 32, 64)
    }
}

#[test]
fn kv_cache_decoding_matches_full_forward_on_a_left_padded_batch() {
    check_kv_cache_against_full_forward(&GptConfig::gpt2(50, 2, 4, 32, 64));
}

#[test]
fn llama_and_qwen2_decoding_matches_full_forward_on_a_left_padded_batch() {
    check_kv_cache_against_full_forward(&small_llama(Family::Llama, 50));
    check_kv_cache_against_full_forward(&small_llama(Family::Qwen2, 50));
    let tanh = GptConfig {
        activation: Activation::GeluTanh,
        ..GptConfig::gpt2(50, 2, 4, 32, 64)
    };
    check_kv_cache_against_full_forward(&tanh);
}

fn check_kv_cache_against_full_forward(cfg: &GptConfig) {
    let _guard = lock();
    let (vs, m) = sft::init_model(cfg, Device::Cpu, 1).unwrap();
    // Biases start at 0 and LayerNorms at identity: perturb every variable so that a bias or a
    // LayerNorm parameter read wrongly shows.
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let noise = v.randn_like() * 0.1;
            v += noise;
        }
    });
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5, 6, 7], vec![8, 9], vec![10, 11, 12]];
    let cont: Vec<i64> = vec![13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]; // 4 steps × 3 sequences
    let steps = 4i64;
    let (prompt, pvalid) = left_pad(&prompts, 0, Device::Cpu);
    let (b, lp) = prompt.size2().unwrap();
    let next = Tensor::from_slice(&cont).view([b, steps]); // [B, steps]
    tch::no_grad(|| {
        // Incremental: prefill, then one token at a time.
        let mut cache = KvCache::new(m.config(), b, lp + steps, Device::Cpu, Kind::Float);
        let key_valid = Tensor::cat(
            &[
                pvalid.shallow_clone(),
                Tensor::ones([b, steps], (Kind::Bool, Device::Cpu)),
            ],
            1,
        );
        let pos = positions_from_valid(&pvalid);
        let h = m.forward(
            &prompt,
            &pos,
            &attention_mask(&pvalid, 0, lp),
            Some(&mut cache),
            false,
        );
        let mut inc = vec![m.lm_logits(&h.select(1, lp - 1))];
        let last = pos.select(1, lp - 1);
        for t in 0..steps - 1 {
            let p = &last + (t + 1);
            let tok = next.narrow(1, t, 1);
            let mask = attention_mask(&key_valid.narrow(1, 0, lp + t + 1), lp + t, 1);
            let h = m.forward(&tok, &p.unsqueeze(1), &mask, Some(&mut cache), false);
            inc.push(m.lm_logits(&h.squeeze_dim(1)));
        }
        // Full forward over the same sequences.
        let inc = Tensor::stack(&inc, 1); // [B, steps, V]
        let full_tokens = Tensor::cat(&[prompt.shallow_clone(), next.shallow_clone()], 1);
        let h = m.forward_full(&full_tokens, &key_valid, false);
        let full = m.lm_logits(&h.narrow(1, lp - 1, steps));
        let d = max_abs(&inc, &full);
        assert!(d < 1e-4, "{:?}: max |Δlogit| = {d}", cfg.family);
        // Prefill (into a cache longer than the mask, which the step must not confuse), copy the
        // prefill's rows `rows` if given, and decode `tokens [B', steps]` after them by one
        // route: the logits `[B', steps, V]`.
        let decode = |host: bool, mask_kind: Kind, rows: Option<&Tensor>, tokens: &Tensor| {
            let w = m.decode_weights(&m.compute_weights());
            let w = if host { w } else { w.tensor_ops_only() };
            let mut cache = KvCache::new(m.config(), b, lp + steps + 3, Device::Cpu, Kind::Float);
            let h = m.forward(
                &prompt,
                &pos,
                &attention_mask(&pvalid, 0, lp),
                Some(&mut cache),
                false,
            );
            let mut first = m.lm_logits(&h.select(1, lp - 1)); // [B, V]
            let (mut valid, mut last) = (key_valid.shallow_clone(), last.shallow_clone());
            if let Some(rows) = rows {
                cache = cache.select_rows(rows);
                first = first.index_select(0, rows);
                valid = valid.index_select(0, rows);
                last = last.index_select(0, rows);
            }
            let bias = key_bias(&valid, m.config().n_head as i64, mask_kind);
            let mut dec = vec![first];
            for t in 0..steps - 1 {
                let p = &last + (t + 1);
                dec.push(m.decode_step(&w, &tokens.select(1, t), &p, &bias, &mut cache));
            }
            Tensor::stack(&dec, 1)
        };
        // Sampling's decoding step, by both of its routes, gives the same logits; a mask in
        // another kind than the cache's reads the same (0 and −∞ are exact in bf16).
        for (host, mask_kind) in [
            (true, Kind::Float),
            (false, Kind::Float),
            (true, Kind::BFloat16),
        ] {
            let d = max_abs(&decode(host, mask_kind, None, &next), &full);
            assert!(
                d < 1e-4,
                "decode_step (host route: {host}, mask {mask_kind:?}): max |Δlogit| = {d}"
            );
        }
        // Copies of a prefill (the group agents' G samples of a prompt, which the host attention
        // reads once per group) decode as if each had been prefilled alone, each copy with a
        // continuation of its own, by both routes.
        let rows = Tensor::from_slice(&[0i64, 0, 1, 2, 2, 0]);
        let b2 = rows.size()[0];
        let next2 = (Tensor::arange(b2 * steps, (Kind::Int64, Device::Cpu)).remainder(20) + 25)
            .view([b2, steps]);
        let h2 = m.forward_full(
            &Tensor::cat(&[prompt.index_select(0, &rows), next2.shallow_clone()], 1),
            &key_valid.index_select(0, &rows),
            false,
        );
        let full2 = m.lm_logits(&h2.narrow(1, lp - 1, steps)); // [B', steps, V]
        for host in [true, false] {
            let d = max_abs(&decode(host, Kind::Float, Some(&rows), &next2), &full2);
            assert!(
                d < 1e-4,
                "copies of a prefill (host route: {host}): max |Δlogit| = {d}"
            );
        }
        // And left padding changes nothing: the short prompt alone gives the same logits.
        let solo = Tensor::from_slice(&[8i64, 9, 17, 18, 19]).view([1, 5]);
        let hs = m.forward_full(
            &solo,
            &Tensor::ones([1, 5], (Kind::Bool, Device::Cpu)),
            false,
        );
        let d2 = max_abs(&m.lm_logits(&hs.narrow(1, 1, 4)), &full.get(1).unsqueeze(0));
        assert!(d2 < 1e-4, "padding leaked: {d2}");
    });
}

#[test]
fn sampled_logprobs_equal_recomputed_ones_and_seed_reproduces() {
    let _guard = lock();
    let (_vs, m) = small_model(2, 40);
    // Repeated prompts (as the group agents sample them) are prefilled once and scored once.
    let prompts: Vec<Vec<u32>> = vec![
        vec![3, 4, 5, 6],
        vec![7],
        vec![3, 4, 5, 6],
        vec![8, 9, 10],
        vec![11, 12],
        vec![7],
    ];
    for cfg in [
        SamplingConfig {
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 10,
        },
        SamplingConfig {
            temperature: 1.3,
            top_k: 5,
            top_p: 0.9,
            max_new_tokens: 10,
        },
    ] {
        tch::manual_seed(5);
        let g = generate(&m, &prompts, 0, 2, &cfg, Device::Cpu).unwrap();
        let d = max_abs(&recomputed_logprobs(&m, &g, cfg.temperature), &g.logprobs);
        assert!(d < 1e-4, "max |Δlogp| = {d}");
        assert!(g.logprobs.le(0.0).all().int64_value(&[]) == 1);
        // Copies of a prompt sample on independently.
        assert!(!g.tokens.get(0).equal(&g.tokens.get(2)));
        tch::manual_seed(5);
        let g2 = generate(&m, &prompts, 0, 2, &cfg, Device::Cpu).unwrap();
        assert!(g.tokens.equal(&g2.tokens) && g.logprobs.equal(&g2.logprobs));
        tch::manual_seed(6);
        let g3 = generate(&m, &prompts, 0, 2, &cfg, Device::Cpu).unwrap();
        assert!(!g.tokens.equal(&g3.tokens));
    }
}

#[test]
fn a_detached_entropy_has_the_tracked_values_without_a_graph() {
    let _guard = lock();
    let (_vs, m) = small_model(4, 30);
    let prompts = vec![vec![3, 4, 5], vec![6, 7]];
    let cfg = SamplingConfig {
        temperature: 0.7,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 6,
    };
    tch::manual_seed(2);
    let s = generate(&m, &prompts, 0, 2, &cfg, Device::Cpu)
        .unwrap()
        .sequences();
    let tracked = sequence_outputs(&m, &s, 0.7, true, EntropyGrad::Tracked);
    let detached = sequence_outputs(&m, &s, 0.7, true, EntropyGrad::Detached);
    assert!(tracked.entropy.requires_grad());
    assert!(!detached.entropy.requires_grad());
    // Dropout is 0 at this config, so the two passes see the same model.
    assert!(max_abs(&tracked.entropy.detach(), &detached.entropy) < 1e-6);
    // The log-probs still carry the graph, and the entropy lies in [0, log V] on real tokens.
    assert!(detached.logprobs.requires_grad());
    let e = detached.entropy.masked_select(&s.mask.to_kind(Kind::Bool));
    assert!(e.numel() > 0);
    assert!(e.min().double_value(&[]) >= 0.0);
    assert!(e.max().double_value(&[]) <= (30f64).ln() + 1e-5);
}

#[test]
fn sequences_stop_at_their_own_eos_and_are_padded_after() {
    let _guard = lock();
    let (vs, m) = small_model(3, 30);
    // Make EOS (id 2) likely at every step: a constant final-LayerNorm bias aligned with its
    // embedding row gives it a logit of about 0.1 · 32 = 3.2.
    tch::no_grad(|| {
        let vars = vs.variables();
        let _ = vars["ln_f.bias"].shallow_clone().fill_(1.0);
        let _ = vars["wte"].get(2).fill_(0.1);
    });
    tch::manual_seed(0);
    let cfg = SamplingConfig {
        temperature: 1.0,
        max_new_tokens: 8,
        ..Default::default()
    };
    let g = generate(&m, &[vec![5, 6], vec![7]], 0, 2, &cfg, Device::Cpu).unwrap();
    let toks = Vec::<Vec<i64>>::try_from(&g.tokens).unwrap();
    let mask = Vec::<Vec<f32>>::try_from(&g.mask).unwrap();
    for (t, mk) in toks.iter().zip(&mask) {
        if let Some(e) = t.iter().position(|&x| x == 2) {
            assert!(mk[..=e].iter().all(|&v| v == 1.0));
            assert!(mk[e + 1..].iter().all(|&v| v == 0.0));
            assert!(t[e + 1..].iter().all(|&x| x == 0));
        }
    }
    assert!(
        toks.iter().any(|t| t.contains(&2)),
        "EOS never sampled: {toks:?}"
    );
}

fn corpus() -> Vec<String> {
    let t = aligngym_envs::task("sentiment-v0").unwrap();
    t.corpus(2000, 1)
}

#[test]
fn save_load_round_trip_and_bad_checkpoints() {
    let _guard = lock();
    let tok = Tokenizer::train(&corpus(), 300).unwrap();
    let cfg = GptConfig::gpt2(tok.vocab_size(), 1, 2, 16, 32);
    let (vs, m) = sft::init_model(&cfg, Device::Cpu, 4).unwrap();
    let root = std::env::temp_dir().join(format!("aligngym-ck-{}", std::process::id()));
    let dir = root.join("policy");
    let ck = CheckpointConfig {
        kind: ModelKind::Policy,
        model: cfg.clone(),
        reward_offset: 0.0,
        aligngym_version: String::new(),
    };
    checkpoint::save(&dir, &vs, &tok, &ck).unwrap();
    for f in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "aligngym.json",
        "aligngym_heads.safetensors",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let loaded = checkpoint::load(&dir, Device::Cpu).unwrap();
    let x = Tensor::from_slice(&[3i64, 4, 5, 6]).view([1, 4]);
    let v = Tensor::ones([1, 4], (Kind::Bool, Device::Cpu));
    let (a, b) = tch::no_grad(|| {
        (
            m.lm_logits(&m.forward_full(&x, &v, false)),
            loaded
                .model
                .lm_logits(&loaded.model.forward_full(&x, &v, false)),
        )
    });
    assert!(a.equal(&b));
    assert_eq!(loaded.config.kind, ModelKind::Policy);

    // Checkpoints of earlier versions (one config.json, aligngym's names) still load.
    let legacy = root.join("legacy");
    std::fs::create_dir_all(&legacy).unwrap();
    let ours: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&ours, legacy.join("model.safetensors")).unwrap();
    std::fs::write(
        legacy.join("config.json"),
        serde_json::to_string(&ck).unwrap(),
    )
    .unwrap();
    tok.save(legacy.join("tokenizer.json")).unwrap();
    let old = checkpoint::load(&legacy, Device::Cpu).unwrap();
    let c = tch::no_grad(|| old.model.lm_logits(&old.model.forward_full(&x, &v, false)));
    assert!(a.equal(&c));

    // A tensor with the wrong shape, then a missing tensor: errors name it (transformers' names).
    let mut named = crate::lm::hf::export(&vs, Family::Gpt2);
    for (n, t) in named.iter_mut() {
        if n == "transformer.h.0.attn.c_attn.weight" {
            *t = Tensor::zeros([3, 3], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
    let e = checkpoint::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("transformer.h.0.attn.c_attn.weight") && e.contains("shape"),
        "{e}"
    );
    named.retain(|(n, _)| n != "transformer.ln_f.bias");
    named.retain(|(n, _)| n != "transformer.h.0.attn.c_attn.weight");
    Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
    let e = checkpoint::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing tensor")
            && (e.contains("ln_f.bias") || e.contains("h.0.attn.c_attn.weight")),
        "{e}"
    );

    // A tokenizer with more ids than the weights have rows.
    checkpoint::save(&dir, &vs, &tok, &ck).unwrap();
    let cfg_path = dir.join("config.json");
    let mut c2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    c2["vocab_size"] = serde_json::json!(tok.vocab_size() - 1);
    std::fs::write(&cfg_path, c2.to_string()).unwrap();
    let e = checkpoint::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size"),
        "{e}"
    );
    // An architecture this implementation does not have: one line naming it and the supported.
    c2["model_type"] = serde_json::json!("mamba");
    std::fs::write(&cfg_path, c2.to_string()).unwrap();
    let e = checkpoint::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("mamba") && e.contains("gpt2, llama, qwen2"),
        "{e}"
    );
    // Missing directory; corrupt config.
    assert!(checkpoint::load(root.join("nope"), Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .contains("no such checkpoint"));
    std::fs::write(dir.join("config.json"), "{").unwrap();
    assert!(checkpoint::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .contains("config.json"));
    // No temporary directories left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn sft_beats_unigram_entropy_and_is_reproducible() {
    let _guard = lock();
    let corpus = corpus();
    let tok = Tokenizer::train(&corpus, 300).unwrap();
    let cfg = GptConfig::gpt2(tok.vocab_size(), 2, 2, 64, 32);
    let seqs = sft::encode_corpus(&tok, &corpus, cfg.block_size).unwrap();
    let h1 = sft::unigram_entropy(&seqs);
    let sc = SftConfig {
        steps: 150,
        batch_size: 32,
        learning_rate: 3e-3,
        warmup_steps: 10,
        ..Default::default()
    };
    let run = || {
        let (vs, m) = sft::init_model(&cfg, Device::Cpu, 7).unwrap();
        sft::train(&vs, &m, &seqs, tok.pad_id(), &sc, 7, |_| {}).unwrap()
    };
    let a = run();
    let tail: f64 = a[a.len() - 10..].iter().map(|r| r.loss).sum::<f64>() / 10.0;
    eprintln!("sft tail loss {tail:.3} vs unigram entropy {h1:.3}");
    assert!(
        tail < 0.5 * h1,
        "SFT loss {tail:.3} not well below the unigram entropy {h1:.3}"
    );
    let b = run();
    assert_eq!(a, b, "same seed, different loss curve");
    assert!(sft::encode_corpus(&tok, &["  ".to_string()], 32).is_err());
}

#[test]
fn sft_records_train_only_completions_and_assistant_turns() {
    use aligngym_envs::{Message, Role, SftRecord};
    let _guard = lock();
    let corpus = corpus();
    let tok = Tokenizer::train(&corpus, 300).unwrap();
    let eot = tok.eot_id().unwrap();
    let conv = vec![
        Message::user("the film 3"),
        Message::assistant(" great"),
        Message::new(Role::Tool, "again"),
        Message::assistant(" bad"),
    ];
    let records = [
        SftRecord::Text("the film".into()),
        SftRecord::PromptCompletion {
            prompt: "the film".into(),
            completion: " was great".into(),
        },
        SftRecord::Conversation(conv.clone()),
    ];
    let ex = sft::encode_records(&tok, &records, 64).unwrap();
    // A text: [BOS] text [EOS], every target trained.
    let mut text = tok.encode_prompt("the film");
    text.push(tok.eos_id());
    assert_eq!(ex[0], sft::SftExample::full(text.clone()));
    // A prompt and its completion: the completion as the policy's turn, only it trained.
    let answer = tok.turn_ids(" was great");
    let prompt = tok.encode_prompt("the film");
    assert_eq!(ex[1].ids, [prompt.clone(), answer.clone()].concat());
    assert_eq!(ex[1].targets(), answer.len());
    assert!(ex[1].train[..prompt.len()].iter().all(|&t| !t));
    // A conversation: the built-in format after BOS, the assistant's turns (and their
    // end-of-turn) trained, the env's reply not.
    let trained: Vec<u32> = ex[2]
        .ids
        .iter()
        .zip(&ex[2].train)
        .filter(|(_, &t)| t)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(
        trained,
        [tok.turn_ids(" great"), tok.turn_ids(" bad")].concat()
    );
    assert_eq!(ex[2].ids[0], tok.bos_id().unwrap());
    assert_eq!(trained.iter().filter(|&&i| i == eot).count(), 2);
    let whole = tok.chat_template().render(&conv, false, "", "").unwrap();
    assert_eq!(
        tok.decode_ids(&ex[2].ids),
        tok.decode_ids(&tok.encode_ids(&whole))
    );
    // Cut off before its answer, an example has nothing to train on.
    let e = sft::encode_records(&tok, &records[1..2], prompt.len())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("example 1") && e.contains("nothing left to train on"),
        "{e}"
    );

    // The loss is the mean negative log-likelihood of the marked targets only.
    let cfg = GptConfig::gpt2(tok.vocab_size(), 1, 2, 32, 64);
    let (_vs, m) = sft::init_model(&cfg, Device::Cpu, 3).unwrap();
    let ids: Vec<i64> = ex[2].ids.iter().map(|&i| i as i64).collect();
    let x = Tensor::from_slice(&ids).view([1, -1]);
    let valid = x.ones_like().to_kind(Kind::Bool);
    let marks = Tensor::from_slice(&ex[2].train).view([1, -1]);
    let loss = tch::no_grad(|| sft::lm_loss_on(&m, &x, &valid, &marks, false)).double_value(&[]);
    let logp = tch::no_grad(|| m.lm_logits(&m.forward_full(&x, &valid, false)))
        .log_softmax(-1, Kind::Float)
        .squeeze_dim(0); // [T, V]
    let (mut sum, mut n) = (0.0, 0);
    for (t, (&id, &trained)) in ids.iter().zip(&ex[2].train).enumerate().skip(1) {
        if trained {
            sum -= logp.double_value(&[t as i64 - 1, id]);
            n += 1;
        }
    }
    assert_eq!(n, ex[2].targets());
    assert!(
        (loss - sum / n as f64).abs() < 1e-5,
        "{loss} vs {}",
        sum / n as f64
    );
}

#[test]
fn categorical_sampling_matches_its_probabilities() {
    let _guard = lock();
    tch::manual_seed(3);
    // Three rows: a skewed distribution, one with zero-probability tokens, a one-hot.
    let probs = Tensor::from_slice(&[
        0.7f32, 0.2, 0.1, 0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 1.0, 0.0,
    ])
    .view([3, 4]);
    let n = 20000;
    let mut counts = [[0usize; 4]; 3];
    for _ in 0..n / 100 {
        let batch = probs.repeat([100, 1]); // [300, 4]
        let toks = Vec::<i64>::try_from(&crate::lm::sampling::sample_categorical(&batch)).unwrap();
        for (i, t) in toks.iter().enumerate() {
            counts[i % 3][*t as usize] += 1;
        }
    }
    let p: Vec<Vec<f32>> = Vec::try_from(&probs).unwrap();
    for r in 0..3 {
        for c in 0..4 {
            let emp = counts[r][c] as f64 / n as f64;
            let want = p[r][c] as f64;
            let se = (want * (1.0 - want) / n as f64).sqrt();
            assert!(
                (emp - want).abs() <= 4.0 * se + 1e-12,
                "row {r} token {c}: {emp} vs {want}"
            );
        }
    }
}

#[test]
fn bf16_compute_tracks_fp32_and_trains_fp32_master_weights() {
    let _guard = lock();
    let (vs, mut m) = small_model(5, 60);
    let x = Tensor::randint_low(3, 60, [4, 12], (Kind::Int64, Device::Cpu));
    let v = Tensor::ones([4, 12], (Kind::Bool, Device::Cpu));
    let grads = |m: &Gpt| {
        for (_, mut t) in vs.variables() {
            t.zero_grad();
        }
        let logits = m.lm_logits(&m.forward_full(&x, &v, false));
        assert_eq!(logits.kind(), Kind::Float, "logits come back in fp32");
        let loss = sft::lm_loss(m, &x, &v, false);
        loss.backward();
        let g = vs.variables()["h.0.mlp.c_fc.weight"].grad();
        (logits.detach(), loss.double_value(&[]), g.copy())
    };
    let (l32, loss32, g32) = grads(&m);
    m.set_precision(crate::lm::device::Precision::Bf16);
    let (l16, loss16, g16) = grads(&m);
    // The variables stay fp32 and receive fp32 gradients through the casts.
    for (name, t) in vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name} is no longer fp32");
    }
    assert_eq!(g16.kind(), Kind::Float);
    // bf16 keeps 8 mantissa bits: logits agree to about 1e-2 of their scale, and differ at all
    // (so the bf16 path really ran).
    let d = max_abs(&l32, &l16);
    let scale = l32.abs().max().double_value(&[]);
    assert!(
        d > 0.0 && d < 3e-2 * scale.max(1.0),
        "max |Δlogit| {d} at scale {scale}"
    );
    assert!(
        (loss32 - loss16).abs() < 1e-2 * loss32,
        "{loss32} vs {loss16}"
    );
    let cos = (&g32 * &g16).sum(Kind::Float).double_value(&[])
        / (g32.norm().double_value(&[]) * g16.norm().double_value(&[]));
    assert!(cos > 0.99, "bf16 gradient direction cosine {cos}");
    // bf16 decoding with the cache follows the bf16 full forward.
    tch::manual_seed(3);
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5], vec![6], vec![7, 8]];
    let cfg = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 6,
    };
    let g = generate(&m, &prompts, 0, 2, &cfg, Device::Cpu).unwrap();
    let d = max_abs(&g.logprobs, &recomputed_logprobs(&m, &g, 1.0));
    assert!(
        d < 5e-2,
        "bf16 sampled vs recomputed log-probs differ by {d}"
    );
}

#[test]
fn emulated_bf16_rounds_where_native_bf16_does() {
    let _guard = lock();
    let (_vs, mut m) = small_model(6, 60);
    m.set_precision(crate::lm::device::Precision::Bf16);
    let x = Tensor::randint_low(3, 60, [4, 12], (Kind::Int64, Device::Cpu));
    let v = Tensor::ones([4, 12], (Kind::Bool, Device::Cpu));
    let kind = |values: Kind, arithmetic: Kind| crate::lm::model::MatmulKind { values, arithmetic };
    let logits = |k: crate::lm::model::MatmulKind| {
        tch::no_grad(|| {
            let w = m.compute_weights_in(k);
            let positions = crate::lm::model::positions_from_valid(&v);
            let mask = crate::lm::model::attention_mask(&v, 0, 12);
            let h = m.forward_with(&w, &x, &positions, &mask, None, false);
            m.lm_logits_from(&w, &h) // [4, 12, V]
        })
    };
    let native = logits(kind(Kind::BFloat16, Kind::BFloat16));
    let emulated = logits(kind(Kind::BFloat16, Kind::Float));
    let fp32 = logits(kind(Kind::Float, Kind::Float));
    // The emulated route's logits are bf16 values (its products were rounded back)...
    let rounded = emulated.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    assert_eq!(max_abs(&rounded, &emulated), 0.0);
    // ...and it sits far closer to the native route (which differs from it only in summation
    // order) than fp32 does (which rounds nothing).
    let (d_native, d_fp32) = (max_abs(&native, &emulated), max_abs(&native, &fp32));
    assert!(
        d_fp32 > 0.0 && d_native < 0.25 * d_fp32,
        "emulated vs native bf16 {d_native}, fp32 vs native {d_fp32}"
    );
}

#[test]
fn turn_sampler_continues_the_kv_cache_across_replies_with_gaps() {
    // Sequences stop at different steps (many stop ids), replies of different lengths (some none)
    // leave gaps in the cache: the recorded log-probs must still equal a teacher-forced pass over
    // each conversation without the gaps.
    use crate::lm::sampling::{right_pad, Sequences, TurnSampler};
    let _guard = lock();
    let (vs, m) = small_model(3, 60);
    tch::no_grad(|| {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut v) in vars {
            let noise = v.randn_like() * 0.1;
            v += noise;
        }
    });
    // Sequences 4 and 5 repeat the prompts of 0 and 1 (prefilled once, sampled on apart).
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|i| i % 4)
        .map(|i| (0..(2 + i)).map(|j| 3 + (i * 7 + j * 5) % 50).collect())
        .collect();
    let stops: Vec<u32> = (3..15).collect();
    tch::manual_seed(11);
    let mut s = TurnSampler::new(&m, &prompts, 0, &stops, Device::Cpu).unwrap();
    let cfg = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 5,
    };
    let mut conv: Vec<Vec<u32>> = vec![Vec::new(); 6];
    let mut policy: Vec<Vec<bool>> = vec![Vec::new(); 6];
    let mut recorded: Vec<Vec<f32>> = vec![Vec::new(); 6];
    let mut live = [true; 6];
    let mut stopped_early = 0;
    for turn in 0..3u32 {
        let t = s.turn(&Tensor::from_slice(&live), &cfg).unwrap();
        let toks: Vec<Vec<i64>> = Vec::try_from(&t.tokens).unwrap();
        let mask: Vec<Vec<f32>> = Vec::try_from(&t.mask).unwrap();
        let lps: Vec<Vec<f32>> = Vec::try_from(&t.logprobs).unwrap();
        let mut chunks = vec![Vec::new(); 6];
        for i in 0..6 {
            if !live[i] {
                assert!(mask[i].iter().all(|&x| x == 0.0));
                continue;
            }
            let n = mask[i].iter().filter(|&&x| x > 0.5).count();
            stopped_early += usize::from(n < toks[i].len());
            for k in 0..n {
                conv[i].push(toks[i][k] as u32);
                policy[i].push(true);
                recorded[i].push(lps[i][k]);
            }
            // Sequence 5 ends after its first turn; the others get replies of 1–4 tokens, and
            // sequence 2 none in the second round.
            if i == 5 || (i == 2 && turn == 1) {
                live[i] = i != 5;
                continue;
            }
            chunks[i] = (0..1 + (i as u32 + turn) % 4)
                .map(|j| 20 + (i as u32 * 3 + j) % 30)
                .collect();
            conv[i].extend(&chunks[i]);
            policy[i].extend(std::iter::repeat_n(false, chunks[i].len()));
            recorded[i].extend(std::iter::repeat_n(0.0, chunks[i].len()));
        }
        s.append(&chunks).unwrap();
    }
    assert!(
        stopped_early > 0,
        "some turns must stop before the token limit"
    );
    let (prompt, prompt_valid) = left_pad(&prompts, 0, Device::Cpu);
    let (tokens, valid) = right_pad(&conv, 0, Device::Cpu);
    let n = tokens.size()[1] as usize;
    let pad_row = |v: &Vec<f32>| {
        let mut r = v.clone();
        r.resize(n, 0.0);
        r
    };
    let mask: Vec<f32> = policy
        .iter()
        .flat_map(|p| pad_row(&p.iter().map(|&x| x as u8 as f32).collect()))
        .collect();
    let rec: Vec<f32> = recorded.iter().flat_map(pad_row).collect();
    let seqs = Sequences {
        prompt,
        prompt_valid,
        tokens,
        valid,
        mask: Tensor::from_slice(&mask).view([6, n as i64]),
    };
    let lp = tch::no_grad(|| sequence_logprobs(&m, &seqs, 1.0, false));
    let d = max_abs(&lp, &Tensor::from_slice(&rec).view([6, n as i64]));
    assert!(d < 1e-4, "max |Δ log-prob| = {d}");
}

/// Rows that share a prompt run it once (`completion_hidden`'s shared pass): outputs and every
/// parameter's gradient must equal the whole-sequence pass over each row.
fn check_shared_prompt_pass(cfg: &GptConfig) {
    use crate::lm::sampling::{completion_hidden, right_pad, Sequences};
    let _guard = lock();
    let (vs, m) = sft::init_model(cfg, Device::Cpu, 5).unwrap();
    // Two prompts of different lengths (left padding), each three times, interleaved; the
    // completions have gaps (an env's reply is valid but not the policy's) and end at different
    // lengths.
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|i| {
            (0..(3 + 2 * (i % 2)))
                .map(|j| 3 + (i % 2 * 11 + j * 5) % 40)
                .collect()
        })
        .collect();
    let conv: Vec<Vec<u32>> = (0..6u32)
        .map(|i| (0..(4 + i)).map(|j| 3 + (i * 7 + j * 3) % 40).collect())
        .collect();
    let (prompt, prompt_valid) = left_pad(&prompts, 0, Device::Cpu);
    let (tokens, valid) = right_pad(&conv, 0, Device::Cpu);
    let s = Sequences {
        mask: valid.to_kind(Kind::Float),
        prompt,
        prompt_valid,
        tokens,
        valid,
    };
    let (lp, n) = (s.prompt.size()[1], s.tokens.size()[1]);
    let weight = Tensor::randn([6, n, cfg.n_embd as i64], (Kind::Float, Device::Cpu)); // [B, N, C]
    let grads = |h: &Tensor| {
        let v: Vec<_> = vs.trainable_variables();
        for t in &v {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        (h * &weight).sum(Kind::Float).backward();
        // The value and reward heads take no part: their gradients stay undefined.
        v.iter()
            .map(|t| t.grad())
            .filter(|g| g.defined())
            .map(|g| g.copy())
            .collect::<Vec<_>>()
    };
    let shared = completion_hidden(&m, &s, true); // [B, N, C]
    let g_shared = grads(&shared);
    let full = Tensor::cat(&[&s.prompt, &s.tokens], 1);
    let whole = m
        .forward_full(&full, &Tensor::cat(&[&s.prompt_valid, &s.valid], 1), true)
        .narrow(1, lp - 1, n); // [B, N, C]
    let g_whole = grads(&whole);
    let d = max_abs(&shared, &whole);
    assert!(d < 1e-5, "shared-prompt hidden states differ by {d}");
    assert_eq!(g_shared.len(), g_whole.len());
    assert!(g_whole.len() >= 2 + 4 * cfg.n_layer);
    for (a, b) in g_shared.iter().zip(&g_whole) {
        // Relative to the gradient's size: these sum over every token of the batch.
        let (d, scale) = (max_abs(a, b), b.abs().max().double_value(&[]));
        assert!(
            d <= 1e-5 * scale.max(1.0),
            "a gradient differs by {d} (largest entry {scale}) between the two passes"
        );
    }
}

#[test]
fn rows_sharing_a_prompt_run_it_once_with_the_same_outputs_and_gradients() {
    check_shared_prompt_pass(&GptConfig::gpt2(50, 2, 4, 32, 64));
    check_shared_prompt_pass(&small_llama(Family::Llama, 50));
    check_shared_prompt_pass(&small_llama(Family::Qwen2, 50));
}
