//! Fuzzing the readers of user input: the preference JSONL, the sweep spec, `--set` values, a
//! checkpoint's `config.json`, a run's spec (`train --spec`, a run's `config.json`) and
//! safetensors files. Each target mutates the files of its corpus
//! (`fuzz/corpus/<target>/`: valid inputs and every input that once broke a reader) with proptest
//! and asserts that the reader returns: a value, or an error of one line that names the file. A
//! panic (which is what a crash is here: the binary's hook turns it into "internal error") fails
//! the target, and proptest shrinks the input before reporting it.
//!
//! `make test` runs a short pass (`FUZZ_CASES`, default 256 per target); `make fuzz` runs each target
//! for `FUZZ_SECONDS` (default 600) and prints the executions.

use super::root;
use aligngym::spec::{AgentKind, RewardSpec, TrainSpec};
use aligngym::sweep::SweepSpec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Byte strings a mutation splices in: the syntax of the formats and the numbers that break code.
const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "=",
    ".",
    "\n",
    "\u{feff}",
    "\0",
    "null",
    "true",
    "-1",
    "0",
    "-0",
    "1e999",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999",
    "0.5",
    "\"\"",
    "[]",
    "{}",
    "[[agents]]",
    "\u{202e}",
    "\u{ffff}",
];

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "{}: empty corpus", dir.display());
    seeds
}

/// One mutation, decoded from four numbers so that proptest can shrink it.
fn mutate(mut b: Vec<u8>, (op, pos, arg, len): (u8, u32, u32, u8), seeds: &[Vec<u8>]) -> Vec<u8> {
    let at = |n: usize| if n == 0 { 0 } else { pos as usize % (n + 1) };
    match op % 6 {
        0 if !b.is_empty() => {
            let i = pos as usize % b.len();
            b[i] ^= 1 << (arg % 8);
        }
        1 => {
            let i = at(b.len());
            b.insert(i, arg as u8);
        }
        2 if !b.is_empty() => {
            let i = pos as usize % b.len();
            let end = (i + len as usize % 16 + 1).min(b.len());
            b.drain(i..end);
        }
        3 => b.truncate(at(b.len())),
        4 => {
            let other = &seeds[arg as usize % seeds.len()];
            let from = at(other.len()).min(other.len());
            let end = (from + len as usize * 4).min(other.len());
            let i = at(b.len());
            b.splice(i..i, other[from..end].iter().copied());
        }
        _ => {
            let t = TOKENS[arg as usize % TOKENS.len()].as_bytes();
            let i = at(b.len());
            b.splice(i..i, t.iter().copied());
        }
    }
    b
}

/// Run `check` on mutated corpus inputs: `FUZZ_CASES` of them, or rounds of them for
/// `FUZZ_SECONDS`. Returns the executions.
fn fuzz(target: &str, check: impl Fn(&[u8]) -> Result<(), TestCaseError>) -> u64 {
    let seeds = corpus(target);
    let cases: u32 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Every seed as it is, then mutations of them.
    for s in &seeds {
        check(s).unwrap_or_else(|e| panic!("{target}: a corpus file fails: {e}"));
    }
    let runs = AtomicU64::new(seeds.len() as u64);
    let strategy = (
        0..seeds.len(),
        prop::collection::vec(any::<(u8, u32, u32, u8)>(), 1..8),
    );
    // The last failing input (after shrinking, the smallest), for the corpus.
    let crash = root().join(format!("fuzz-{target}-crash"));
    let t0 = Instant::now();
    for round in 0u64.. {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        seed[8..8 + target.len().min(24)]
            .copy_from_slice(&target.as_bytes()[..target.len().min(24)]);
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases,
                failure_persistence: None,
                max_shrink_iters: 2048,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        let result = runner.run(&strategy, |(i, ops)| {
            let input = ops
                .into_iter()
                .fold(seeds[i].clone(), |b, op| mutate(b, op, &seeds));
            runs.fetch_add(1, Ordering::Relaxed);
            let r = check(&input);
            if r.is_err() {
                std::fs::write(&crash, &input).unwrap();
            }
            r
        });
        if let Err(e) = result {
            panic!("fuzz {target}: {e} (input in {})", crash.display());
        }
        if t0.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    let n = runs.load(Ordering::Relaxed);
    // Reached only when no input failed (a failure panics above).
    eprintln!(
        "fuzz {target}: {n} executions in {:.0} s, none failed",
        t0.elapsed().as_secs_f64()
    );
    n
}

/// An error must be one line that names the file it is about.
fn one_line(msg: String, path: &Path) -> Result<(), TestCaseError> {
    prop_assert!(!msg.contains('\n'), "a message of several lines: {msg:?}");
    let name = path.file_name().unwrap().to_string_lossy();
    prop_assert!(msg.contains(&*name), "`{msg}` does not name {name}");
    Ok(())
}

/// A scratch file of this target (one per thread: targets run side by side).
fn scratch(target: &str, name: &str) -> PathBuf {
    let d = root().join(format!("fuzz-{target}"));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn fuzz_preference_jsonl() {
    let path = scratch("prefs", "pairs.jsonl");
    fuzz("prefs", |bytes| {
        std::fs::write(&path, bytes).unwrap();
        match aligngym::envs::read_pairs(&path) {
            Ok(pairs) => prop_assert!(!pairs.is_empty()),
            Err(e) => one_line(e.to_string(), &path)?,
        }
        Ok(())
    });
}

#[test]
fn fuzz_sweep_spec() {
    let path = scratch("sweep", "spec.toml");
    fuzz("sweep", |bytes| {
        std::fs::write(&path, bytes).unwrap();
        if let Err(e) = SweepSpec::load(&path) {
            one_line(e.to_string(), &path)?;
        }
        Ok(())
    });
}

#[test]
fn fuzz_set_values() {
    fuzz("set", |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let sets: Vec<String> = text.lines().map(String::from).collect();
        for &agent in AgentKind::ALL {
            let mut spec = TrainSpec::new(
                agent,
                "arithmetic-v0",
                PathBuf::from("policy"),
                RewardSpec::Gold,
                None,
                0,
            );
            match spec.apply_sets(&sets) {
                // What is accepted is valid as a whole.
                Ok(()) => prop_assert!(spec.validate().is_ok()),
                Err(e) => prop_assert!(!e.to_string().contains('\n')),
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_checkpoint_config_json() {
    let path = scratch("config", "config.json");
    let dir = path.parent().unwrap().to_path_buf();
    fuzz("config", |bytes| {
        std::fs::write(&path, bytes).unwrap();
        match aligngym::agents::lm::checkpoint::read_config(&dir) {
            Ok(c) => {
                // Accepted shapes have a parameter count (saturating: no overflow on absurd ones).
                if c.model.validate().is_ok() {
                    prop_assert!(c.model.num_params() > 0);
                }
            }
            Err(e) => one_line(e.to_string(), &path)?,
        }
        Ok(())
    });
}

#[test]
fn fuzz_run_spec() {
    let path = scratch("run-spec", "spec.json");
    fuzz("run-spec", |bytes| {
        std::fs::write(&path, bytes).unwrap();
        match aligngym::spec::read_train_spec(&path) {
            // What is read is either valid or refused in one line (as `train --spec` refuses it).
            Ok(spec) => {
                if let Err(e) = spec.validate() {
                    prop_assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
            Err(e) => one_line(e.to_string(), &path)?,
        }
        Ok(())
    });
}

#[test]
fn fuzz_safetensors() {
    let path = scratch("safetensors", "model.safetensors");
    fuzz("safetensors", |bytes| {
        std::fs::write(&path, bytes).unwrap();
        if let Err(e) = aligngym::agents::lm::safetensors::read_safetensors(&path) {
            one_line(e.to_string(), &path)?;
        }
        Ok(())
    });
}
