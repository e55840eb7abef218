//! The "Files and safety" contract through the CLI: a command never writes over what is not its
//! own, never into `/`, the current directory or one of its inputs, and refuses before it writes;
//! a run or a sweep killed at any instant resumes to exactly the uninterrupted result; a full disk
//! is a clean failure that leaves nothing behind.

use super::{bin, fails, metrics, missing, root, run, sft, train_cmd, without_wall};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Runs in `dir` that must fail with one line naming `needle`.
fn fails_in(dir: &Path, args: &[&str], needle: &str) {
    let out = bin()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run aligngym");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "aligngym {args:?} should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got:\n{err}");
    assert!(
        err.contains(needle),
        "aligngym {args:?}: `{needle}` not in `{err}`"
    );
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn out_is_never_the_current_directory_root_an_input_or_a_foreign_folder() {
    let work = root().join("safety");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("precious.txt"), "mine").unwrap();
    let before = listing(&work);
    let sft_args = |out: &str| {
        vec![
            "sft".to_string(),
            "--env".into(),
            "arithmetic-v0".into(),
            "--steps".into(),
            "1".into(),
            "--device".into(),
            "cpu".into(),
            "--out".into(),
            out.to_string(),
        ]
    };
    for (out, needle) in [
        (".", "it is the current directory"),
        ("..", "it holds the current directory"),
        ("/", "it is the root folder"),
        (work.to_str().unwrap(), "it is the current directory"),
    ] {
        let mut a = sft_args(out);
        fails_in(
            &work,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            needle,
        );
        // Even --overwrite never makes these acceptable.
        a.push("--overwrite".into());
        fails_in(
            &work,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            needle,
        );
    }
    assert_eq!(listing(&work), before, "nothing written or removed");
    // A folder holding someone else's files.
    let foreign = work.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.md"), "keep").unwrap();
    let a = sft_args(foreign.to_str().unwrap());
    fails(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "a folder with 1 entry this command did not make",
    );
    assert_eq!(listing(&foreign), vec!["notes.md".to_string()]);
    // The input checkpoint, and folders inside or around it.
    let policy = sft("arithmetic-v0");
    let p = policy.to_str().unwrap();
    let inside = policy.join("run");
    let policy_files = listing(&policy);
    for (out, needle) in [
        (p.to_string(), "it is the input --policy"),
        (
            inside.to_str().unwrap().to_string(),
            "it is inside the input --policy",
        ),
        (
            policy.parent().unwrap().to_str().unwrap().to_string(),
            "it holds the input --policy",
        ),
    ] {
        fails(
            &[
                "train",
                "--agent",
                "ppo",
                "--env",
                "arithmetic-v0",
                "--policy",
                p,
                "--out",
                &out,
                "--device",
                "cpu",
                "--overwrite",
            ],
            needle,
        );
    }
    fails(
        &[
            "train-rm", "--prefs", "x.jsonl", "--init", p, "--out", p, "--device", "cpu",
        ],
        "it is the input --init",
    );
    assert_eq!(
        listing(&policy),
        policy_files,
        "the input checkpoint is untouched"
    );
    assert!(!inside.exists());
    // An existing preference file is not replaced without --overwrite.
    let prefs = work.join("prefs.jsonl");
    std::fs::write(&prefs, "{}\n").unwrap();
    fails(
        &[
            "prefs",
            "--env",
            "arithmetic-v0",
            "--policy",
            p,
            "--out",
            prefs.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        "it already exists",
    );
    assert_eq!(std::fs::read_to_string(&prefs).unwrap(), "{}\n");
}

#[test]
fn a_sweep_name_is_one_folder_name() {
    let dir = root().join("bad-sweep-names");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, needle) in [
        ("../../escape", "`../../escape` must be a plain folder name"),
        ("/abs", "`/abs` must be a plain folder name"),
    ] {
        let spec = dir.join("s.toml");
        std::fs::write(
            &spec,
            format!("name = \"{name}\"\nenvs = [\"arithmetic-v0\"]\nseeds = [0]\n[[agents]]\nname = \"ppo\"\nagent = \"ppo\"\n"),
        )
        .unwrap();
        fails(
            &["sweep", spec.to_str().unwrap(), "--device", "cpu"],
            needle,
        );
    }
    assert!(!dir.join("escape").exists() && !Path::new("/abs").exists());
}

/// Instants in `(0.05, 0.95)` of a span, from a seed (a fixed LCG: the same seeds, the same
/// fractions on every machine; the instants themselves vary with the machine's speed).
fn fractions(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            0.05 + 0.9 * ((x >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

/// SIGKILL `child` after `after` (or let it finish first).
fn kill_after(mut child: Child, after: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Names in `dir` (recursively) that are aligngym temporaries: hidden staging files and folders.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name.contains(".tmp") {
            found.push(e.path());
        } else if e.file_type().unwrap().is_dir() {
            found.extend(temporaries(&e.path()));
        }
    }
    found
}

#[test]
fn a_train_killed_at_random_instants_resumes_to_the_uninterrupted_metrics() {
    let env = "arithmetic-v0";
    let policy = sft(env);
    let p = policy.to_str().unwrap();
    // A commit after every update, so kills land before, inside and after commits.
    let common = [
        "--set",
        "run.updates=6",
        "--set",
        "run.eval_every=2",
        "--set",
        "run.save_every=1",
        "--set",
        "batch_size=16",
        "--quiet",
    ];
    // Every weight three times; LoRA adapters (their state is the adapters alone) once.
    let lora = [
        "--set",
        "lora.r=4",
        "--set",
        "lora.target_modules=all-linear",
    ];
    let mut whole_full = PathBuf::new();
    for (variant, adapters, seeds) in [("", &[][..], 1..=3u64), ("lora-", &lora[..], 4..=4)] {
        let extra: Vec<&str> = common.iter().chain(adapters).copied().collect();
        let whole = root().join(format!("kill-{variant}whole"));
        let w = whole.to_str().unwrap();
        let mut args = train_cmd("ppo", env, p, w, &extra);
        let t0 = Instant::now();
        run(&args);
        let span = t0.elapsed();
        let want = without_wall(metrics(&whole));
        assert!(want.iter().any(|r| r.0 == 6));
        // The runs are started from the e2e root with a relative --policy and resumed from
        // elsewhere: a run records its inputs as absolute paths.
        let rel = policy.strip_prefix(root()).unwrap().to_str().unwrap();
        let elsewhere = root().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        for seed in seeds {
            let dir = root().join(format!("kill-{variant}{seed}"));
            let d = dir.to_str().unwrap();
            args = train_cmd("ppo", env, rel, d, &extra);
            // Killed twice: once in the first run, once in the resumed one.
            for (i, f) in fractions(seed, 2).into_iter().enumerate() {
                let child = if i == 0 || !dir.join("config.json").exists() {
                    bin().current_dir(root()).args(&args).spawn().unwrap()
                } else {
                    bin()
                        .current_dir(&elsewhere)
                        .args(["train", "--resume", d, "--device", "cpu", "--quiet"])
                        .spawn()
                        .unwrap()
                };
                kill_after(child, span.mul_f64(f));
            }
            let finish = if dir.join("config.json").exists() {
                bin()
                    .current_dir(&elsewhere)
                    .args(["train", "--resume", d, "--device", "cpu", "--quiet"])
                    .output()
            } else {
                // Killed before the run had a record: started again from nothing.
                bin().current_dir(root()).args(&args).output()
            }
            .unwrap();
            assert!(
                finish.status.success(),
                "{}",
                String::from_utf8_lossy(&finish.stderr)
            );
            assert_eq!(
                without_wall(metrics(&dir)),
                want,
                "{variant}seed {seed}: killed at {:?} of {span:?}, the resumed run differs",
                fractions(seed, 2)
            );
            assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
            assert!(dir.join("policy/model.safetensors").exists());
            if !adapters.is_empty() {
                assert!(dir
                    .join("policy/adapter/adapter_model.safetensors")
                    .exists());
            }
        }
        if variant.is_empty() {
            whole_full = whole;
        }
    }
    let w = whole_full.to_str().unwrap();
    // A resume cannot shorten a run below what it has done.
    fails(
        &[
            "train",
            "--resume",
            w,
            "--set",
            "run.updates=3",
            "--device",
            "cpu",
        ],
        "fewer than the 6 updates",
    );
}

const KILL_SWEEP: &str = r#"
name = "kill-sweep"
envs = ["arithmetic-v0"]
seeds = [0]
updates = 4
eval_every = 2
sft_steps = 100

[[prefs]]
name = "on"
pairs = 32

[[agents]]
name = "ppo-gold"
agent = "ppo"
reward = "gold"
[agents.set]
batch_size = 16

[[agents]]
name = "dpo"
agent = "dpo"
"#;

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// `runs.csv` without its wall-clock column.
fn runs_without_wall(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let wall = header
        .iter()
        .position(|h| *h == "budget/wall_seconds")
        .unwrap();
    text.lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| *i != wall)
                .map(|(_, f)| f)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[test]
fn a_sweep_killed_mid_run_leaves_no_orphans_and_finishes_what_is_missing() {
    let dir = root().join("kill-sweep");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, KILL_SWEEP).unwrap();
    let sweep = |out: &Path| -> Command {
        let mut c = bin();
        c.args(["sweep", spec.to_str().unwrap(), "--out"])
            .arg(out)
            .args(["--device", "cpu", "--jobs", "2", "--quiet"]);
        c
    };
    let whole = dir.join("whole");
    assert!(sweep(&whole).status().unwrap().success());
    let want = runs_without_wall(&whole);
    assert_eq!(want.len(), 3, "{want:?}");

    // The sweep killed (twice, at random instants), then one of its runs killed.
    for (seed, f) in [
        (1u64, fractions(1, 1)[0]),
        (2, fractions(2, 1)[0]),
        (3, -1.0),
    ] {
        let out = dir.join(format!("killed-{seed}"));
        let mut child = sweep(&out).spawn().unwrap();
        // Wait until the runs are training, then kill the sweep at a random instant of them.
        let runs = out.join("runs");
        let t0 = Instant::now();
        while !std::fs::read_dir(&runs)
            .map(|d| d.flatten().any(|e| e.path().join("config.json").exists()))
            .unwrap_or(false)
        {
            assert!(child.try_wait().unwrap().is_none(), "the sweep ended early");
            assert!(t0.elapsed() < Duration::from_secs(300));
            std::thread::sleep(Duration::from_millis(10));
        }
        let needle = runs.to_str().unwrap().to_string();
        if f < 0.0 {
            let victim = processes_mentioning(&needle)
                .into_iter()
                .find(|&pid| pid != child.id())
                .expect("a run of the sweep");
            // SAFETY: kill(2) on a pid we just read; at worst it has exited already.
            unsafe { libc::kill(victim as i32, libc::SIGKILL) };
            let st = child.wait().unwrap();
            assert!(!st.success(), "a sweep with a killed run reports failure");
            assert!(sweep(&out).status().unwrap().success());
            assert_eq!(runs_without_wall(&out), want, "a run killed");
            continue;
        }
        std::thread::sleep(Duration::from_millis((f * 3000.0) as u64));
        child.kill().unwrap();
        child.wait().unwrap();
        // Its runs die with it.
        let t0 = Instant::now();
        while !processes_mentioning(&needle).is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "orphans of a killed sweep: {:?}",
                processes_mentioning(&needle)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(sweep(&out).status().unwrap().success());
        assert_eq!(runs_without_wall(&out), want, "seed {seed}");
    }
}

/// A tmpfs of `kib` KiB at `dir`, unmounted when dropped; `None` (with the reason printed) where
/// this process may not mount one.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, kib: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            missing("the disk-full cases need root to mount a small tmpfs");
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output();
        let why = match &out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(format!("mount: {e}")),
        };
        if let Some(why) = why {
            missing(&format!("the disk-full cases cannot mount a tmpfs ({why})"));
            return None;
        }
        Some(Self(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs that must fail with exit 1 and one line mentioning a full disk.
fn fails_full(args: &[&str]) {
    let out = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

#[test]
fn a_full_disk_is_a_clean_failure_that_leaves_nothing_behind() {
    let policy = sft("arithmetic-v0");
    let p = policy.to_str().unwrap();
    let weights = std::fs::metadata(policy.join("model.safetensors"))
        .unwrap()
        .len();
    // Room for the run's record and one policy, not for its optimiser state.
    let kib = weights * 5 / 2 / 1024;
    let Some(disk) = SmallDisk::mount(&root().join("full-disk"), kib) else {
        return;
    };
    let d = &disk.0;
    let sft_out = d.join("sft");
    fails_full(&[
        "sft",
        "--env",
        "arithmetic-v0",
        "--steps",
        "1",
        "--size",
        "small",
        "--device",
        "cpu",
        "--out",
        sft_out.to_str().unwrap(),
    ]);
    assert!(listing(d).is_empty(), "{:?}", listing(d));
    let run_out = d.join("run");
    fails_full(&train_cmd(
        "ppo",
        "arithmetic-v0",
        p,
        run_out.to_str().unwrap(),
        &["--set", "run.updates=1", "--quiet"],
    ));
    assert!(listing(d).is_empty(), "{:?}", listing(d));
    // Preference pairs: more than the disk holds.
    let tiny = SmallDisk::mount(&root().join("full-disk-2"), 8).unwrap();
    let prefs = tiny.0.join("p.jsonl");
    fails_full(&[
        "prefs",
        "--env",
        "arithmetic-v0",
        "--policy",
        p,
        "--pairs",
        "256",
        "--device",
        "cpu",
        "--out",
        prefs.to_str().unwrap(),
    ]);
    assert!(listing(&tiny.0).is_empty(), "{:?}", listing(&tiny.0));
}

/// `aligngym ARGS` fails with exit `code` and one line naming `needle`.
fn fails_with(code: i32, args: &[&str], needle: &str) {
    let out = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "`{needle}` not in `{err}`");
}

#[test]
fn non_finite_weights_are_refused_and_usage_errors_exit_2() {
    let policy = sft("arithmetic-v0");
    let p = policy.to_str().unwrap();
    // A copy of the checkpoint with one NaN in one tensor.
    let bad = root().join("nan-weights");
    std::fs::create_dir_all(&bad).unwrap();
    for f in std::fs::read_dir(&policy).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, bad.join(f.file_name().unwrap())).unwrap();
        }
    }
    let weights = bad.join("model.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&weights).unwrap();
    let (name, t) = tensors
        .iter_mut()
        .find(|(n, _)| n.ends_with("h.0.mlp.c_fc.weight"))
        .expect("a GPT-2 MLP weight");
    let _ = t.view(-1).get(0).fill_(f64::NAN);
    let name = name.clone();
    tch::Tensor::write_safetensors(&tensors, &weights).unwrap();
    let b = bad.to_str().unwrap();
    let needle = format!("tensor `{name}` holds NaN or infinite values");
    fails_with(
        1,
        &[
            "sample", "--policy", b, "--prompt", "1+1=", "--device", "cpu",
        ],
        &needle,
    );
    let out = root().join("nan-weights-run");
    fails_with(
        1,
        &train_cmd("ppo", "arithmetic-v0", b, out.to_str().unwrap(), &[]),
        &needle,
    );
    assert!(!out.exists());
    // A config.json describing a model this machine cannot hold: refused with its parameter
    // count before anything is allocated.
    let huge = root().join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(policy.join("config.json")).unwrap())
            .unwrap();
    cfg["n_embd"] = 1_048_576.into();
    cfg["n_layer"] = 4096.into();
    cfg["n_head"] = 16.into();
    std::fs::write(huge.join("config.json"), cfg.to_string()).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(policy.join(f), huge.join(f)).unwrap();
    }
    let h = huge.to_str().unwrap();
    fails_with(
        1,
        &[
            "sample", "--policy", h, "--prompt", "1+1=", "--device", "cpu",
        ],
        "parameters (",
    );
    // A reward model on 2 pairs holds none out: no held-out accuracy, and the command says why.
    let two = root().join("two-pairs.jsonl");
    std::fs::write(
        &two,
        "{\"prompt\":\"1+1=\",\"chosen\":\"2\",\"rejected\":\"3\"}\n{\"prompt\":\"2+2=\",\"chosen\":\"4\",\"rejected\":\"5\"}\n",
    )
    .unwrap();
    let rm = root().join("rm-two");
    let out = bin()
        .args(["train-rm", "--prefs", two.to_str().unwrap(), "--init", p])
        .args(["--out", rm.to_str().unwrap(), "--device", "cpu"])
        .args(["--set", "epochs=1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("held-out none (no pair held out"));
    let report = std::fs::read_to_string(rm.join("rm_report.json")).unwrap();
    assert!(
        !report.contains("heldout_accuracy") && !report.contains("NaN"),
        "{report}"
    );
    // Usage errors (a bad value on the command line) exit 2; runtime errors exit 1.
    let o = root().join("usage").to_str().unwrap().to_string();
    fails_with(
        2,
        &train_cmd(
            "ppo",
            "arithmetic-v0",
            p,
            &o,
            &["--set", "learning_rate=-1"],
        ),
        "learning_rate",
    );
    fails_with(
        2,
        &[
            "train-rm",
            "--prefs",
            "x.jsonl",
            "--init",
            p,
            "--out",
            &o,
            "--set",
            "learning_rate=-1",
        ],
        "learning_rate",
    );
    // clap's own usage errors keep clap's form (the error, then usage and a hint), and exit 2.
    let out = bin().args(["sft", "--nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: unexpected argument '--nope'"));
    assert!(!Path::new(&o).exists());
}
