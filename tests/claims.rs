//! `aligngym claims` at test size, and its report.html opened in a real headless Chromium.

use super::{bin, missing, root};
use std::path::Path;
use std::process::Command;

/// Chromium's path (scripts/chromium.sh installs it as root when missing), or why there is none.
fn chromium() -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn headless(chrome: &str, profile: &Path, extra: &[&str], page: &Path) -> (String, String) {
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn attr(dom: &str, name: &str) -> Option<usize> {
    let i = dom.find(&format!("{name}=\""))? + name.len() + 2;
    dom[i..].split('"').next()?.parse().ok()
}

#[test]
fn claims_at_test_size_write_verdicts_and_a_report_chromium_renders() {
    let out = root().join("claims");
    let args = [
        "claims",
        "--scale",
        "0.1",
        "--seeds",
        "2",
        "--envs",
        "arithmetic-v0",
        "--only",
        "dpo-cheaper,dpo-frontier",
        "--jobs",
        "2",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    let r = bin().args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    assert!(r.status.success(), "{stdout}\n{stderr}");
    // Not a terminal: a line per stage and per finished run, with the time left.
    assert!(
        stderr.contains("stage sft:arithmetic-v0 built in"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dpo-frontier [14/14] run ") && stderr.contains("about 0s left"),
        "{stderr}"
    );
    // The verdict table: one row per claim × task. Two seeds a side cannot decide anything at
    // 95% (no exact test's p reaches 0.025 below four), so every verdict is inconclusive.
    for claim in ["dpo-cheaper", "dpo-frontier"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {claim} | arithmetic-v0 |")))
            .unwrap_or_else(|| panic!("no row for {claim}:\n{stdout}"));
        assert!(row.contains("**inconclusive**"), "{row}");
        // Two seeds each enter the cost comparison (the frontier's needs KL ranges that overlap,
        // which runs this short need not have).
        if claim == "dpo-cheaper" {
            assert!(row.ends_with("| 2+2 |"), "{row}");
        }
    }
    let csv = std::fs::read_to_string(out.join("verdicts.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    // `claims --table` prints the same table from the CSV alone (what the README's comes from).
    let table = bin()
        .args([
            "claims",
            "--table",
            out.join("verdicts.csv").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("| claim | task | verdict |"), "{table}");
    assert!(stdout.contains(&table), "{table}\nvs\n{stdout}");
    assert!(csv.starts_with("claim,env,verdict,quantity,a,b,"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.starts_with("# Claims, as measured") && md.contains("## Verdicts"));
    // Both claims share one SFT stage: built once, linked into each claim's folder.
    let sfts = std::fs::read_dir(out.join("stages"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("sft-")
        })
        .count();
    assert_eq!(sfts, 1);
    assert_eq!(stderr.matches("stage sft:arithmetic-v0 built").count(), 1);

    // Resuming runs nothing again and writes the same verdicts.
    let again = bin().args(args).output().unwrap();
    assert!(again.status.success());
    let err2 = String::from_utf8_lossy(&again.stderr);
    assert!(!err2.contains("] run "), "{err2}");
    assert_eq!(
        std::fs::read_to_string(out.join("verdicts.csv")).unwrap(),
        csv
    );

    // At another scale its finished runs would pass for runs of that scale: refused, untouched.
    let mut other: Vec<&str> = args.to_vec();
    other[2] = "0.2";
    let r = bin().args(&other).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("resume with the same --scale"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("verdicts.csv")).unwrap(),
        csv
    );

    let html = out.join("report.html");
    let chrome = match chromium() {
        Ok(c) => c,
        Err(why) => {
            missing(&format!("the Chromium check of report.html: {why}"));
            return;
        }
    };
    let profile = out.join("chromium-profile");
    let (dom, log) = headless(
        &chrome,
        &profile,
        &["--virtual-time-budget=5000", "--dump-dom"],
        &html,
    );
    let (figures, loaded) = (
        attr(&dom, "data-figures"),
        attr(&dom, "data-figures-loaded"),
    );
    assert!(
        figures.is_some_and(|n| n >= 4) && figures == loaded,
        "figures {figures:?}, loaded {loaded:?}\n{log}"
    );
    assert!(
        dom.contains("class=\"v-"),
        "no verdict cell in the rendered page"
    );
    // Any console message (an error, an uncaught exception) is a fault of the page.
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console output: {console:?}");
    let shot = out.join("report.png");
    headless(
        &chrome,
        &profile,
        &[
            "--window-size=1280,1600",
            &format!("--screenshot={}", shot.display()),
        ],
        &html,
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("a screenshot"),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let n = pixels.len() / px;
    let dark = pixels
        .chunks(px)
        .filter(|p| p.iter().take(3).map(|&c| c as u32).sum::<u32>() < 3 * 200)
        .count();
    let coloured = pixels
        .chunks(px)
        .filter(|p| {
            let (mx, mn) = (p[..3].iter().max().unwrap(), p[..3].iter().min().unwrap());
            mx - mn > 60
        })
        .count();
    // Text and tables darken a few percent of the page; the verdict badges add colour.
    assert!(
        dark * 100 > n && coloured > 100,
        "the screenshot looks blank: {dark} dark and {coloured} coloured of {n} pixels"
    );
}

/// A rule whose answer is known by construction: best-of-8 by the gold reward against a copy of
/// itself handicapped to one sample. Choosing the best of eight draws by the very reward that is
/// measured cannot do worse than one draw, and on a policy that is right only some of the time it
/// does much better; so the rule must hold, and its mirror image must be refuted, at four seeds a
/// side (the fewest at which the test can reach 95%).
#[test]
fn a_sweep_rule_with_a_known_answer_gets_it() {
    let dir = root().join("known-answer");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        r#"
name = "known-answer"
claim = "the best of 8 samples by the gold reward beats one sample"
envs = ["arithmetic-v0"]
seeds = [0, 1, 2, 3]
updates = 1
eval_every = 1
sft_steps = 200

[[agents]]
name = "best-of-8"
agent = "best_of_n"
reward = "gold"
[agents.set]
n = 8

[[agents]]
name = "best-of-1"
agent = "best_of_n"
reward = "gold"
[agents.set]
n = 1

[[rules]]
quantity = "final_gold"
a = "best-of-8"
b = "best-of-1"
direction = "greater"

[[rules]]
quantity = "final_gold"
a = "best-of-1"
b = "best-of-8"
direction = "greater"
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let r = bin()
        .args(["sweep", spec.to_str().unwrap(), "--jobs", "2", "--quiet"])
        .args(["--device", "cpu", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let row = |a: &str, b: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("| `{a}` vs `{b}` |")))
            .unwrap_or_else(|| panic!("no verdict for {a} vs {b}:\n{stdout}"))
            .to_string()
    };
    let holds = row("best-of-8", "best-of-1");
    assert!(holds.contains("| **holds** |"), "{holds}");
    assert!(holds.ends_with("| 4+4 |"), "{holds}");
    let refuted = row("best-of-1", "best-of-8");
    assert!(refuted.contains("| **refuted** |"), "{refuted}");
}

/// Equal tuning, on a grid whose best configuration is known by construction: best-of-n by the
/// gold reward tuned over n ∈ {1, 8} must choose 8 on the validation prompts, from its tuning
/// seeds, and run it on the verdict's fresh seeds on the eval split; a rule between a tuned agent
/// and an untuned one is refused before anything runs.
#[test]
fn a_tune_grid_chooses_on_validation_and_runs_fresh_seeds() {
    let dir = root().join("tune");
    std::fs::create_dir_all(&dir).unwrap();
    let body = r#"
name = "tune"
envs = ["arithmetic-v0"]
seeds = [0, 1]
tune_seeds = [7, 8]
updates = 1
eval_every = 1
sft_steps = 200

[[agents]]
name = "bon"
agent = "best_of_n"
reward = "gold"
[agents.tune]
n = [1, 8]

[[agents]]
name = "bon-2"
agent = "best_of_n"
reward = "gold"
[agents.set]
n = 2
"#;
    let spec = dir.join("spec.toml");
    let unfair = dir.join("unfair.toml");
    std::fs::write(&spec, body).unwrap();
    std::fs::write(
        &unfair,
        format!("{body}\n[[rules]]\nquantity = \"final_gold\"\na = \"bon\"\nb = \"bon-2\"\ndirection = \"greater\"\n"),
    )
    .unwrap();
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let r = bin()
        .args(["sweep", unfair.to_str().unwrap(), "--quiet", "--out", o])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        err.contains("`bon` tries 2 configuration(s) before its runs and `bon-2` 1"),
        "{err}"
    );
    assert!(!out.exists(), "a refused spec writes nothing");

    let r = bin()
        .args(["sweep", spec.to_str().unwrap(), "--jobs", "2", "--quiet"])
        .args(["--device", "cpu", "--out", o])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let config = |id: &str| -> serde_json::Value {
        let t = std::fs::read_to_string(out.join("runs").join(id).join("config.json")).unwrap();
        serde_json::from_str(&t).unwrap()
    };
    // The tuning runs: every configuration on every tuning seed, on the validation prompts.
    for n in [1, 8] {
        for seed in [7, 8] {
            let c = config(&format!("arithmetic-v0.bon.tune.n={n}.s{seed}"));
            assert_eq!(c["best_of_n"]["n"], n, "{c}");
            assert_eq!(c["eval"]["split"], "validation", "{c}");
            assert_eq!(c["seed"], seed, "{c}");
        }
    }
    // The chosen configuration on the verdict's seeds, on the eval split.
    for seed in [0, 1] {
        let c = config(&format!("arithmetic-v0.bon.s{seed}"));
        assert_eq!(c["best_of_n"]["n"], 8, "{c}");
        assert_eq!(c["eval"]["split"], "eval", "{c}");
    }
    let tuning = std::fs::read_to_string(out.join("tuning.csv")).unwrap();
    assert_eq!(tuning.lines().count(), 5, "{tuning}");
    for line in tuning.lines().skip(1) {
        let chosen = line.starts_with("arithmetic-v0,bon,\"n=8\",");
        assert!(line.ends_with(if chosen { ",1" } else { ",0" }), "{tuning}");
    }
    // runs.csv holds the verdict's runs only, with the configuration they ran.
    let runs = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    assert_eq!(runs.lines().count(), 5, "{runs}");
    assert!(!runs.contains(".tune."), "{runs}");
    let report = bin().args(["report", o]).output().unwrap();
    assert!(report.status.success());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Tuning") && md.contains("| arithmetic-v0 | bon | **n=8** |"),
        "{md}"
    );
}
