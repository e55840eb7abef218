//! The "Files and safety" contract through the CLI: a command never writes over what is not its
//! own, never into `/`, the current directory or one of its inputs, and refuses before it writes.

use super::{bin, fails, root, sft};
use std::path::Path;

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
