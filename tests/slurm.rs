//! Sweeps on a real one-node Slurm cluster (slurmctld, slurmd and munged started on this machine
//! by `scripts/slurm-cluster.sh`; root only, as CI is).

use super::{bin, missing, root};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SLURM_SWEEP: &str = r#"
name = "slurm-test"
envs = ["arithmetic-v0"]
seeds = [0, 1]
updates = 8
eval_every = 2
sft_steps = 200

[[prefs]]
name = "on"
pairs = 64

[[agents]]
name = "ppo"
agent = "ppo"
reward = "rm"
[agents.set]
batch_size = 16
# The second value passes validation but blows the weights up: those two runs stop at their
# first step (the NaN guard), the others finish.
[agents.grid]
learning_rate = [1e-4, 1e10]

[[agents]]
name = "dpo"
agent = "dpo"
"#;

/// The cluster, stopped when the test ends however it ends.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh")
}

fn aligngym(cluster: &Cluster, args: &[&str]) -> Output {
    bin()
        .env("SLURM_CONF", cluster.conf())
        .args(args)
        .output()
        .expect("run aligngym")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The ids of the last submission into `dir`.
fn last_jobs(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("slurm/jobs.json")).unwrap();
    let all: Vec<Vec<serde_json::Value>> = serde_json::from_str(&text).unwrap();
    all.last()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

fn in_queue(cluster: &Cluster, ids: &[String]) -> usize {
    let o = Command::new("squeue")
        .env("SLURM_CONF", cluster.conf())
        .args(["-h", "-r", "-j", &ids.join(","), "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).lines().count()
}

/// Wait until none of the last submission's jobs is queued or running.
fn wait_for(cluster: &Cluster, dir: &Path) {
    let ids = last_jobs(dir);
    let t = Instant::now();
    while in_queue(cluster, &ids) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "jobs {ids:?} still queued after 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// runs.csv without its wall-clock column.
fn runs_table(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    let wall = rows[0]
        .iter()
        .position(|c| c == "budget/wall_seconds")
        .unwrap();
    rows.into_iter()
        .map(|mut r| {
            r.remove(wall);
            r
        })
        .collect()
}

/// metrics.csv without its wall-clock rows (`budget/` and `pipeline/wall_seconds`).
fn metrics_table(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("/wall_seconds,"))
        .map(String::from)
        .collect()
}

fn modified(dir: &Path) -> BTreeMap<String, std::time::SystemTime> {
    std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("done").exists())
        .map(|e| {
            let m = std::fs::metadata(e.path().join("metrics.csv"))
                .unwrap()
                .modified()
                .unwrap();
            (e.file_name().to_string_lossy().into_owned(), m)
        })
        .collect()
}

#[test]
fn sweeps_on_slurm_equal_local_ones_survive_cancellation_and_report_failures() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing("the Slurm test needs root to install and start slurmctld and slurmd");
        return;
    }
    let top = root().join("slurm");
    std::fs::create_dir_all(&top).unwrap();
    // Ports of this test's own, so a cluster already on the default ports is left alone.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let cluster = Cluster {
        dir: top.join("cluster"),
    };
    let up = Command::new(script())
        .arg("start")
        .arg(&cluster.dir)
        .env("SLURMCTLD_PORT", port.to_string())
        .env("SLURMD_PORT", (port + 1).to_string())
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "the Slurm cluster did not start:\n{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let spec = top.join("spec.toml");
    std::fs::write(&spec, SLURM_SWEEP).unwrap();
    let s = spec.to_str().unwrap();

    // The same sweep, locally: two of its runs fail, the CSVs hold the other four.
    let local = top.join("local");
    let l = local.to_str().unwrap();
    let o = aligngym(
        &cluster,
        &[
            "sweep", s, "--out", l, "--jobs", "2", "--device", "cpu", "--quiet",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 run(s) failed"));
    assert_eq!(runs_table(&local).len(), 5);

    // A dry run writes readable scripts and the sbatch lines, and submits nothing.
    let a = top.join("a");
    let a_s = a.to_str().unwrap();
    let dry = ok(aligngym(
        &cluster,
        &[
            "sweep",
            s,
            "--out",
            a_s,
            "--slurm",
            "--dry-run",
            "--max-parallel",
            "2",
            "--device",
            "cpu",
        ],
    ));
    assert!(dry.contains("--array=0-5%2"), "{dry}");
    assert!(dry.contains("--dependency=afterok:$stage0"), "{dry}");
    assert!(dry.contains("--dependency=afterany:$runs"), "{dry}");
    let runs_script = std::fs::read_to_string(a.join("slurm/runs.sbatch")).unwrap();
    assert!(runs_script.contains("#SBATCH --cpus-per-task=1"));
    assert!(runs_script.contains("--run-index \"$SLURM_ARRAY_TASK_ID\""));
    assert!(!a.join("slurm/jobs.json").exists());
    // Without sbatch: one clear line, nothing submitted.
    let o = bin()
        .env("PATH", "/nonexistent")
        .env("SLURM_CONF", cluster.conf())
        .args(["sweep", s, "--out", a_s, "--slurm", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sbatch not found"), "{err}");

    // Through the cluster: stage jobs, the array (two at a time), the merge.
    let out = ok(aligngym(
        &cluster,
        &[
            "sweep",
            s,
            "--out",
            a_s,
            "--slurm",
            "--max-parallel",
            "2",
            "--device",
            "cpu",
        ],
    ));
    assert!(
        out.contains("stage jobs") && out.contains("runs array") && out.contains("(6 runs)"),
        "{out}"
    );
    // Submitted again while the first submission is queued: its stages and runs are not missing.
    let again = ok(aligngym(
        &cluster,
        &["sweep", a_s, "--slurm", "--max-parallel", "2"],
    ));
    assert!(again.contains("nothing to submit"), "{again}");
    // A changed spec would renumber the queued tasks' runs: refused while they are queued.
    let changed = top.join("changed.toml");
    std::fs::write(
        &changed,
        SLURM_SWEEP.replace("seeds = [0, 1]", "seeds = [0, 1, 2]"),
    )
    .unwrap();
    let o = aligngym(
        &cluster,
        &[
            "sweep",
            changed.to_str().unwrap(),
            "--out",
            a_s,
            "--slurm",
            "--device",
            "cpu",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("still queued"), "{err}");
    wait_for(&cluster, &a);
    assert_eq!(runs_table(&a), runs_table(&local));
    assert_eq!(metrics_table(&a), metrics_table(&local));
    assert!(a.join("report.md").exists());
    let st = ok(aligngym(&cluster, &["status", a_s]));
    assert!(
        st.contains("6 runs: 4 done, 0 running, 2 failed, 0 pending"),
        "{st}"
    );
    let failed: Vec<&str> = st.lines().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failed.len(), 2, "{st}");
    assert!(
        failed
            .iter()
            .all(|l| l.contains("learning_rate=10000000000.0") && l.contains("non-finite")),
        "{st}"
    );
    // Re-submitting it would submit only the failed two.
    let dry = ok(aligngym(
        &cluster,
        &["sweep", a_s, "--slurm", "--dry-run", "--max-parallel", "2"],
    ));
    assert!(
        dry.contains("--array=2-3%2") && !dry.contains("stage0="),
        "{dry}"
    );

    // Cancelled halfway, then re-submitted: only the missing runs go, a half-done run resumes,
    // the finished ones are not touched, and the result equals the local sweep.
    let b = top.join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(a.join("sweep.json"), b.join("sweep.json")).unwrap();
    Command::new("cp")
        .arg("-r")
        .arg(a.join("stages"))
        .arg(&b)
        .status()
        .unwrap();
    let b_s = b.to_str().unwrap();
    let out = ok(aligngym(
        &cluster,
        &[
            "sweep",
            s,
            "--out",
            b_s,
            "--slurm",
            "--max-parallel",
            "2",
            "--device",
            "cpu",
        ],
    ));
    // Its stages are built already: no stage jobs.
    assert!(
        !out.contains("stage jobs") && out.contains("(6 runs)"),
        "{out}"
    );
    let spec_runs: Vec<String> = {
        let t: aligngym::sweep::SweepSpec = toml::from_str(SLURM_SWEEP).unwrap();
        t.runs().into_iter().map(|r| r.id).collect()
    };
    // Half done: training steps committed (step 0 is the starting policy's evaluation).
    let half_done = |id: &String| {
        let d = b.join("runs").join(id);
        !d.join("done").exists()
            && aligngym::runner::committed_step(&d)
                .ok()
                .flatten()
                .is_some_and(|k| k >= 2)
    };
    let t = Instant::now();
    let half = loop {
        if let Some(id) = spec_runs.iter().find(|id| half_done(id)) {
            break id.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(600), "no run got halfway");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ids = last_jobs(&b);
    ok(Command::new("scancel")
        .env("SLURM_CONF", cluster.conf())
        .args(&ids)
        .output()
        .unwrap());
    wait_for(&cluster, &b);
    let finished = modified(&b);
    assert!(finished.len() < 4, "cancelled too late: {finished:?}");
    let st = ok(aligngym(&cluster, &["status", b_s]));
    assert!(st.contains("committed"), "{st}");
    let out = ok(aligngym(
        &cluster,
        &["sweep", b_s, "--slurm", "--max-parallel", "2"],
    ));
    let missing = 6 - finished.len();
    assert!(out.contains(&format!("({missing} runs)")), "{out}");
    wait_for(&cluster, &b);
    assert_eq!(runs_table(&b), runs_table(&local));
    assert_eq!(metrics_table(&b), metrics_table(&local));
    let after = modified(&b);
    for (id, m) in &finished {
        assert_eq!(after[id], *m, "{id} was run again");
    }
    if !finished.contains_key(&half) {
        let log = std::fs::read_to_string(b.join("runs").join(format!("{half}.log"))).unwrap();
        assert!(
            log.contains("resumes from step") && !log.contains("resumes from step 0"),
            "{half}: {log}"
        );
    }
}

/// Without a cluster: what a dry run writes, what `status` says of an untouched sweep, and the one
/// line each bad job flag gets.
#[test]
fn slurm_dry_runs_and_job_flags_check_their_input() {
    let top = root().join("slurm-flags");
    std::fs::create_dir_all(&top).unwrap();
    let spec = top.join("spec.toml");
    std::fs::write(&spec, SLURM_SWEEP).unwrap();
    let s = spec.to_str().unwrap();
    let d = top.join("dry");
    let d_s = d.to_str().unwrap();
    super::fails(
        &[
            "sweep",
            s,
            "--out",
            d_s,
            "--slurm",
            "--dry-run",
            "--time",
            "1h",
        ],
        "--time",
    );
    super::fails(
        &[
            "sweep",
            s,
            "--out",
            d_s,
            "--slurm",
            "--dry-run",
            "--sbatch-arg",
            "mem=1G",
        ],
        "--sbatch-arg",
    );
    assert!(!d.exists(), "a refused submission wrote {}", d.display());
    let plan = super::run(&[
        "sweep",
        s,
        "--out",
        d_s,
        "--slurm",
        "--dry-run",
        "--device",
        "cpu",
        "--cpus-per-run",
        "2",
        "--sbatch-arg=--mem=2G",
    ]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    // sft, prefs, rm:…:on, the array of all six runs (no limit asked), the merge.
    assert_eq!(
        plan.lines().filter(|l| l.contains("=$(sbatch")).count(),
        5,
        "{plan}"
    );
    assert!(
        plan.contains("--dependency=afterok:$stage0:$stage1:$stage2\" --array=0-5 "),
        "{plan}"
    );
    let stage = std::fs::read_to_string(d.join("slurm/stage-rm-arithmetic-v0-on.sbatch")).unwrap();
    assert!(stage.contains("#SBATCH --cpus-per-task=2") && stage.contains("#SBATCH --mem=2G"));
    assert!(stage.contains("--stage rm:arithmetic-v0:on"), "{stage}");
    let st = String::from_utf8_lossy(&super::run(&["status", d_s]).stdout).into_owned();
    assert!(
        st.contains("6 runs: 0 done, 0 running, 0 failed, 6 pending"),
        "{st}"
    );
    assert!(st.contains("sft:arithmetic-v0 missing"), "{st}");
    // A job's part: its stages must be built, its index and stage must exist.
    super::fails(
        &["sweep", d_s, "--run-index", "0"],
        "stage sft:arithmetic-v0 is not built",
    );
    super::fails(&["sweep", d_s, "--run-index", "6"], "--run-index");
    super::fails(
        &["sweep", d_s, "--stage", "prefs:sentiment-v0"],
        "not a stage of this sweep",
    );
    super::fails(&["sweep", d_s, "--stage", "bogus"], "--stage");
    super::fails(
        &["sweep", d_s, "--stage", "prefs:arithmetic-v0"],
        "stage sft:arithmetic-v0 is not built",
    );
    let other = top.join("other");
    super::fails(
        &["sweep", d_s, "--out", other.to_str().unwrap()],
        "resumes in place",
    );
    super::fails(
        &[
            "sweep",
            s,
            "--run-index",
            "0",
            "--out",
            other.to_str().unwrap(),
        ],
        "not a sweep directory",
    );
}
