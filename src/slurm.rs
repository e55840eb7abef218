//! Sweeps on a Slurm cluster, through the scheduler the cluster already has: `sbatch`, `squeue`,
//! `sacct` and `scancel` command lines, nothing of our own running between jobs.
//!
//! A submission is one job per missing shared stage (each after the stages it reads, with
//! `--dependency=afterok`), one job array for the missing runs (task id = the run's index in the
//! sweep's run list, after every stage job), and a merge job after the array (`afterany`, so a
//! failed run does not hold back the others' CSVs). Every job runs `aligngym sweep DIR …` on the
//! shared `DIR`: array tasks write only their run's files, stage builders and run owners hold
//! `flock` locks that die with them, so re-submitting while an earlier submission still runs
//! never has two writers of one file.

use crate::commands;
use crate::sweep::{self, RunFile, Stage, SweepSpec};
use aligngym_agents::lm::fsio::Lock;
use aligngym_agents::{AgentError, DeviceChoice, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the jobs of a submission ask for resources.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// `--partition` of every job; the cluster's default when `None`.
    pub partition: Option<String>,
    /// GPUs of each stage job and run (`--gpus`); 0 asks for none.
    pub gpus_per_run: u32,
    /// CPUs of each stage job and run (`--cpus-per-task`); runs use that many libtorch threads.
    pub cpus_per_run: u32,
    /// `--time` limit of each job (Slurm's forms, e.g. `01:30:00`).
    pub time: Option<String>,
    /// Array tasks at once (`--array=…%K`); unlimited when `None`.
    pub max_parallel: Option<usize>,
    /// Further `#SBATCH` lines of every job, e.g. `--mem=16G`, `--account=proj`.
    pub sbatch_args: Vec<String>,
    /// Write the scripts and print the `sbatch` lines without submitting.
    pub dry_run: bool,
    /// `--device` of every job (resolved on the node: `auto` takes its GPU when it has one).
    pub device: DeviceChoice,
}

/// One job of a submission, as recorded in `DIR/slurm/jobs.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Slurm's job id.
    pub id: String,
    /// `stage:<stage>`, `runs` or `merge`.
    pub what: String,
    /// For the runs array: the run indices it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indices: Vec<usize>,
}

/// What a job waits for: an earlier line of the same plan (its shell variable) or a job an
/// earlier submission left in the queue.
#[derive(Debug, Clone)]
enum Dep {
    Var(String),
    Id(String),
}

/// One `sbatch` call of a plan.
struct Line {
    var: String,
    what: String,
    script: PathBuf,
    array: Option<String>,
    indices: Vec<usize>,
    deps: Vec<Dep>,
    dep_kind: &'static str,
}

/// Quote for a POSIX shell: a plain word as is, anything else in single quotes.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Indices as Slurm's `--array` list: runs of consecutive ones as ranges (`0-3,7,9-11`).
pub fn array_list(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            indices[i].to_string()
        } else {
            format!("{}-{}", indices[i], indices[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// A job name Slurm and shells both take as is.
fn job_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl SlurmOptions {
    /// Refuse what would make a broken script: one clear line naming the flag.
    pub fn validate(&self) -> Result<()> {
        if self.cpus_per_run == 0 {
            return Err(AgentError::config("--cpus-per-run", "expected at least 1"));
        }
        if self.max_parallel == Some(0) {
            return Err(AgentError::config("--max-parallel", "expected at least 1"));
        }
        if let Some(t) = &self.time {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
            {
                return Err(AgentError::config(
                    "--time",
                    format!("`{t}`: expected Slurm's time format, e.g. 01:30:00 or 2-00:00:00"),
                ));
            }
        }
        if let Some(p) = &self.partition {
            if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(AgentError::config(
                    "--partition",
                    format!("`{}`: expected a partition name", envs_one_line(p)),
                ));
            }
        }
        for a in &self.sbatch_args {
            if !a.starts_with('-') || a.chars().any(|c| c == '\n' || c == '\r') {
                return Err(AgentError::config(
                    "--sbatch-arg",
                    format!(
                        "`{}`: expected one sbatch option, e.g. --mem=16G",
                        envs_one_line(a)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `#SBATCH` lines every job shares.
    fn header(&self, name: &str, log: &str, cpus: u32, gpus: u32) -> String {
        let mut h = String::new();
        let _ = writeln!(h, "#SBATCH --job-name={name}");
        let _ = writeln!(h, "#SBATCH --output={log}");
        let _ = writeln!(h, "#SBATCH --cpus-per-task={cpus}");
        if gpus > 0 {
            let _ = writeln!(h, "#SBATCH --gpus={gpus}");
        }
        if let Some(t) = &self.time {
            let _ = writeln!(h, "#SBATCH --time={t}");
        }
        if let Some(p) = &self.partition {
            let _ = writeln!(h, "#SBATCH --partition={p}");
        }
        for a in &self.sbatch_args {
            let _ = writeln!(h, "#SBATCH {a}");
        }
        h
    }
}

fn envs_one_line(s: &str) -> String {
    aligngym_envs::one_line(s).into_owned()
}

/// The jobs of every earlier submission into `out`, oldest first.
pub fn recorded_jobs(out: &Path) -> Vec<Vec<Job>> {
    std::fs::read_to_string(out.join("slurm").join("jobs.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// A command's stdout, or `None` when it is missing or fails (the queue is then unknown).
fn query(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// What earlier submissions still have in the queue (`squeue`; nothing where it is missing).
#[derive(Debug, Default)]
struct Queued {
    /// Run indices of array tasks queued or running.
    indices: Vec<usize>,
    /// Stage (as written, `sft:ENV`) → the id of its job, queued or running.
    stages: std::collections::BTreeMap<String, String>,
}

fn queued(out: &Path) -> Queued {
    let mut q = Queued::default();
    for job in recorded_jobs(out).iter().flatten() {
        // One line per task (`-r`); `%K` is an array task's index.
        let Some(text) = query("squeue", &["-h", "-r", "-j", &job.id, "-o", "%K"]) else {
            continue;
        };
        if job.what == "runs" {
            q.indices
                .extend(text.lines().filter_map(|l| l.trim().parse::<usize>().ok()));
        } else if let Some(st) = job.what.strip_prefix("stage:") {
            if text.lines().any(|l| !l.trim().is_empty()) {
                q.stages.insert(st.to_string(), job.id.clone());
            }
        }
    }
    q.indices.sort_unstable();
    q.indices.dedup();
    q
}

/// What a submission did (or, for a dry run, would do).
#[derive(Debug, Clone)]
pub struct Submission {
    /// The `sbatch` lines, as in `DIR/slurm/submit.sh`.
    pub plan: Vec<String>,
    /// The jobs submitted (empty for a dry run or when nothing was missing).
    pub jobs: Vec<Job>,
    /// Stages and runs left out because they are finished, queued or running.
    pub skipped_runs: usize,
}

/// Write the batch scripts for what `out` is missing and (unless a dry run) submit them.
pub fn submit(spec: &SweepSpec, out: &Path, o: &SlurmOptions) -> Result<Submission> {
    o.validate()?;
    let out = commands::absolute(out)?;
    let slurm = out.join("slurm");
    for d in [out.join("runs"), out.join("stages"), slurm.join("logs")] {
        std::fs::create_dir_all(&d).map_err(|e| AgentError::io(&d, e))?;
    }
    let queued = queued(&out);
    // Queued jobs read the run list from sweep.json when they start: a changed spec would give
    // their indices other runs.
    if !queued.indices.is_empty() || !queued.stages.is_empty() {
        if let Ok(old) = sweep::load_sweep_dir(&out) {
            if &old != spec {
                return Err(AgentError::config(
                    "SPEC",
                    format!(
                        "jobs of an earlier submission of a different spec are still queued in {}: wait for them or scancel them (`aligngym status` lists them) before submitting a changed sweep",
                        out.display()
                    ),
                ));
            }
        }
    }
    let json = serde_json::to_string_pretty(spec).map_err(|e| AgentError::Data(e.to_string()))?;
    commands::write_atomic(&out.join("sweep.json"), &json)?;
    let exe = std::env::current_exe().map_err(|e| AgentError::io("aligngym", e))?;
    let runs = spec.runs();
    let todo: Vec<usize> = (0..runs.len())
        .filter(|&k| {
            let id = &runs[k].id;
            !sweep::run_file(&out, id, RunFile::Dir)
                .join("done")
                .exists()
                && !Lock::is_held(&sweep::run_file(&out, id, RunFile::Lock))
                && queued.indices.binary_search(&k).is_err()
        })
        .collect();
    // Stages an earlier submission still builds are waited for, not built again.
    let stages: Vec<Stage> = spec
        .stages()
        .into_iter()
        .filter(|s| {
            !sweep::stage_built(spec, &out, s) && !queued.stages.contains_key(&s.to_string())
        })
        .collect();
    let waiting: Vec<Dep> = queued
        .stages
        .iter()
        .filter(|(st, _)| spec.stages().iter().any(|s| &s.to_string() == *st))
        .map(|(_, id)| Dep::Id(id.clone()))
        .collect();
    let skipped_runs = runs.len() - todo.len();
    if todo.is_empty() && stages.is_empty() {
        return Ok(Submission {
            plan: vec![],
            jobs: vec![],
            skipped_runs,
        });
    }

    let q = |p: &Path| sh_quote(&p.display().to_string());
    let common = format!(
        "--device {} --threads \"${{SLURM_CPUS_PER_TASK:-1}}\" --quiet",
        o.device
    );
    let script = |file: &str,
                  name: &str,
                  log: &str,
                  gpus: u32,
                  cpus: u32,
                  what: &str,
                  cmd: &str| {
        let text = format!(
            "#!/bin/bash\n# aligngym sweep `{}`: {what}.\n# Written by `aligngym sweep --slurm`; the sbatch lines that submit it are in submit.sh.\n{}set -euo pipefail\nexec {} sweep {} {cmd}\n",
            spec.name,
            o.header(name, log, cpus, gpus),
            q(&exe),
            q(&out),
        );
        let path = slurm.join(file);
        commands::write_atomic(&path, &text).map(|_| path)
    };
    let base = job_name(&format!("aligngym-{}", spec.name));
    let logs = slurm.join("logs");
    let mut plan: Vec<Line> = Vec::new();
    for (k, st) in stages.iter().enumerate() {
        let tag = job_name(&st.to_string().replace(':', "-"));
        let path = script(
            &format!("stage-{tag}.sbatch"),
            &format!("{base}-{tag}"),
            &logs.join("%x-%j.out").display().to_string(),
            o.gpus_per_run,
            o.cpus_per_run,
            &format!("builds the shared stage {st}"),
            &format!("--stage {} {common}", sh_quote(&st.to_string())),
        )?;
        let mut deps: Vec<Dep> = stages[..k]
            .iter()
            .enumerate()
            .filter(|(_, d)| st.needs(d))
            .map(|(j, _)| Dep::Var(format!("stage{j}")))
            .collect();
        deps.extend(
            queued
                .stages
                .iter()
                .filter(|(q, _)| {
                    spec.stages()
                        .iter()
                        .any(|d| st.needs(d) && &d.to_string() == *q)
                })
                .map(|(_, id)| Dep::Id(id.clone())),
        );
        plan.push(Line {
            var: format!("stage{k}"),
            what: format!("stage:{st}"),
            script: path,
            array: None,
            indices: vec![],
            deps,
            dep_kind: "afterok",
        });
    }
    let stage_deps: Vec<Dep> = plan
        .iter()
        .map(|l| Dep::Var(l.var.clone()))
        .chain(waiting)
        .collect();
    if !todo.is_empty() {
        let path = script(
            "runs.sbatch",
            &format!("{base}-runs"),
            &logs.join("%x-%A_%a.out").display().to_string(),
            o.gpus_per_run,
            o.cpus_per_run,
            "one run per array task; the task id is the run's index in the sweep's run list (`aligngym status DIR` names them)",
            &format!("--run-index \"$SLURM_ARRAY_TASK_ID\" {common}"),
        )?;
        let array = match o.max_parallel {
            Some(k) => format!("{}%{k}", array_list(&todo)),
            None => array_list(&todo),
        };
        plan.push(Line {
            var: "runs".into(),
            what: "runs".into(),
            script: path,
            array: Some(array),
            indices: todo.clone(),
            deps: stage_deps.clone(),
            dep_kind: "afterok",
        });
    }
    let path = script(
        "merge.sbatch",
        &format!("{base}-merge"),
        &logs.join("%x-%j.out").display().to_string(),
        0,
        1,
        "merges runs.csv and metrics.csv and draws the plots and the report",
        "--merge",
    )?;
    let merge_deps = if todo.is_empty() {
        stage_deps
    } else {
        vec![Dep::Var("runs".into())]
    };
    plan.push(Line {
        var: "merge".into(),
        what: "merge".into(),
        script: path,
        array: None,
        indices: vec![],
        deps: merge_deps,
        dep_kind: "afterany",
    });

    // The plan as a shell script: the same lines submit by hand.
    let args_of = |l: &Line, id_of: &dyn Fn(&str) -> String| -> Vec<String> {
        let mut a = vec!["--parsable".to_string()];
        if !l.deps.is_empty() {
            let ids: Vec<String> = l
                .deps
                .iter()
                .map(|d| match d {
                    Dep::Var(v) => id_of(v),
                    Dep::Id(id) => id.clone(),
                })
                .collect();
            a.push("--kill-on-invalid-dep=yes".into());
            a.push(format!("--dependency={}:{}", l.dep_kind, ids.join(":")));
        }
        if let Some(arr) = &l.array {
            a.push(format!("--array={arr}"));
        }
        a.push(l.script.display().to_string());
        a
    };
    let lines: Vec<String> = plan
        .iter()
        .map(|l| {
            let a = args_of(l, &|v| format!("${v}"));
            let words: Vec<String> = a
                .iter()
                .map(|w| {
                    if w.contains('$') {
                        format!("\"{w}\"")
                    } else {
                        sh_quote(w)
                    }
                })
                .collect();
            format!("{}=$(sbatch {})", l.var, words.join(" "))
        })
        .collect();
    let mut sh = String::from(
        "#!/bin/bash\n# Submits the sweep's missing stages, its missing runs (one array) and the merge, in order.\nset -euo pipefail\n",
    );
    for l in &lines {
        let _ = writeln!(sh, "{l}");
    }
    let _ = writeln!(sh, "echo \"runs: ${{runs:-none}}, merge: $merge\"");
    commands::write_atomic(&slurm.join("submit.sh"), &sh)?;
    if o.dry_run {
        return Ok(Submission {
            plan: lines,
            jobs: vec![],
            skipped_runs,
        });
    }

    let mut jobs: Vec<Job> = Vec::new();
    let mut ids: std::collections::BTreeMap<String, String> = Default::default();
    for l in &plan {
        let a = args_of(l, &|v| ids[v].clone());
        let res = Command::new("sbatch").args(&a).output();
        let id = match res {
            Err(e) => Err(if e.kind() == std::io::ErrorKind::NotFound {
                "sbatch not found: is Slurm installed and on PATH? (--dry-run writes the scripts without submitting)".to_string()
            } else {
                format!("sbatch: {e}")
            }),
            Ok(r) if !r.status.success() => Err(format!(
                "sbatch refused {}: {}",
                l.script.display(),
                String::from_utf8_lossy(&r.stderr)
                    .lines()
                    .find(|x| !x.trim().is_empty())
                    .unwrap_or("no message")
            )),
            Ok(r) => {
                // `--parsable` prints `id` or `id;cluster`.
                let t = String::from_utf8_lossy(&r.stdout);
                let id = t.trim().split(';').next().unwrap_or("").to_string();
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
                    Err(format!(
                        "sbatch printed no job id for {}",
                        l.script.display()
                    ))
                } else {
                    Ok(id)
                }
            }
        };
        match id {
            Ok(id) => {
                ids.insert(l.var.clone(), id.clone());
                jobs.push(Job {
                    id,
                    what: l.what.clone(),
                    indices: l.indices.clone(),
                });
            }
            Err(why) => {
                // Half a submission would run stages with no runs after them: take it back.
                for j in &jobs {
                    let _ = Command::new("scancel").arg(&j.id).output();
                }
                return Err(AgentError::Data(envs_one_line(&why)));
            }
        }
    }
    let mut all = recorded_jobs(&out);
    all.push(jobs.clone());
    let text = serde_json::to_string_pretty(&all).map_err(|e| AgentError::Data(e.to_string()))?;
    commands::write_atomic(&slurm.join("jobs.json"), &text)?;
    Ok(Submission {
        plan: lines,
        jobs,
        skipped_runs,
    })
}

/// The state of one run of a sweep, as read from its folder.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Finished (`done`).
    Done,
    /// A process holds its lock; the last committed step, if any.
    Running(Option<u64>),
    /// Its last attempt failed: the last line of its log.
    Failed(String),
    /// Not started, or stopped (cancelled, pre-empted); resumes from the step given.
    Pending(Option<u64>),
}

/// A run's state in the sweep folder `out`.
pub fn run_state(out: &Path, id: &str) -> RunState {
    let dir = sweep::run_file(out, id, RunFile::Dir);
    let step = crate::runner::committed_step(&dir).ok().flatten();
    if dir.join("done").exists() {
        RunState::Done
    } else if Lock::is_held(&sweep::run_file(out, id, RunFile::Lock)) {
        RunState::Running(step)
    } else if sweep::run_file(out, id, RunFile::Failed).exists() {
        let log =
            std::fs::read_to_string(sweep::run_file(out, id, RunFile::Log)).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(empty log)");
        RunState::Failed(envs_one_line(last))
    } else {
        RunState::Pending(step)
    }
}

/// `aligngym status DIR`: what is finished on disk, what runs and what failed, and the jobs of
/// the last Slurm submission as `squeue` (and `sacct`, where accounting is on) see them.
pub fn status(dir: &Path) -> Result<String> {
    let spec = sweep::load_sweep_dir(dir)?;
    let runs = spec.runs();
    let updates = spec.scaled_updates();
    let mut text = String::new();
    let states: Vec<RunState> = runs.iter().map(|r| run_state(dir, &r.id)).collect();
    let count = |f: &dyn Fn(&RunState) -> bool| states.iter().filter(|s| f(s)).count();
    let _ = writeln!(
        text,
        "sweep {} in {}: {} runs: {} done, {} running, {} failed, {} pending",
        spec.name,
        dir.display(),
        runs.len(),
        count(&|s| *s == RunState::Done),
        count(&|s| matches!(s, RunState::Running(_))),
        count(&|s| matches!(s, RunState::Failed(_))),
        count(&|s| matches!(s, RunState::Pending(_))),
    );
    let stages: Vec<String> = spec
        .stages()
        .iter()
        .map(|s| {
            let state = if sweep::stage_built(&spec, dir, s) {
                "built"
            } else if Lock::is_held(
                &dir.join("stages")
                    .join(format!(".{}.lock", crate::sweep::sanitize(&s.to_string()))),
            ) {
                "building"
            } else {
                "missing"
            };
            format!("{s} {state}")
        })
        .collect();
    if !stages.is_empty() {
        let _ = writeln!(text, "stages: {}", stages.join(", "));
    }
    let at = |s: Option<u64>| match s {
        Some(k) => format!(" (step {k} of {updates} committed)"),
        None => String::new(),
    };
    for (k, (r, s)) in runs.iter().zip(&states).enumerate() {
        match s {
            RunState::Done => {}
            RunState::Running(step) => {
                let _ = writeln!(text, "running  [{k}] {}{}", r.id, at(*step));
            }
            RunState::Failed(last) => {
                let _ = writeln!(text, "failed   [{k}] {}: {last}", r.id);
            }
            RunState::Pending(step) => {
                let _ = writeln!(text, "pending  [{k}] {}{}", r.id, at(*step));
            }
        }
    }
    if let Some(last) = recorded_jobs(dir).last() {
        let ids: Vec<&str> = last.iter().map(|j| j.id.as_str()).collect();
        let joined = ids.join(",");
        let queue = query("squeue", &["-h", "-r", "-j", &joined, "-o", "%i|%T|%r"]);
        let acct = query(
            "sacct",
            &[
                "-n",
                "-P",
                "-X",
                "-j",
                &joined,
                "-o",
                "JobID,State,ExitCode",
            ],
        );
        for j in last {
            let mut parts: Vec<String> = Vec::new();
            if let Some(qt) = &queue {
                let mut states: std::collections::BTreeMap<String, usize> = Default::default();
                for l in qt.lines() {
                    let f: Vec<&str> = l.split('|').collect();
                    // Array tasks print as `ID_TASK`, pending ranges as `ID_[…]`.
                    if f.len() == 3 && f[0].split('_').next() == Some(j.id.as_str()) {
                        let reason = if f[2] == "None" || f[2].is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", f[2])
                        };
                        *states.entry(format!("{}{reason}", f[1])).or_default() += 1;
                    }
                }
                if states.is_empty() {
                    parts.push("not in the queue".into());
                } else {
                    parts.extend(states.iter().map(|(s, n)| format!("{n} {s}")));
                }
            }
            if let Some(at) = &acct {
                let mut states: std::collections::BTreeMap<String, usize> = Default::default();
                for l in at.lines() {
                    let f: Vec<&str> = l.split('|').collect();
                    if f.len() == 3 && f[0].split('_').next() == Some(j.id.as_str()) {
                        *states.entry(format!("{} {}", f[1], f[2])).or_default() += 1;
                    }
                }
                if !states.is_empty() {
                    parts.push(format!(
                        "sacct: {}",
                        states
                            .iter()
                            .map(|(s, n)| format!("{n} {s}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            if queue.is_none() && acct.is_none() {
                parts.push("queue unknown (no squeue here)".into());
            }
            let _ = writeln!(
                text,
                "slurm job {} ({}): {}",
                j.id,
                j.what,
                parts.join("; ")
            );
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_lists_compress_consecutive_indices() {
        assert_eq!(array_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_list(&[0, 1, 2, 3, 7, 9, 10, 11]), "0-3,7,9-11");
        assert_eq!(array_list(&[5]), "5");
        assert_eq!(array_list(&[1, 3]), "1,3");
    }

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(sh_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn options_that_would_break_a_script_are_refused() {
        let ok = SlurmOptions {
            cpus_per_run: 1,
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            SlurmOptions {
                cpus_per_run: 0,
                ..ok.clone()
            },
            SlurmOptions {
                time: Some("1h".into()),
                ..ok.clone()
            },
            SlurmOptions {
                sbatch_args: vec!["--mem=1G\nrm -rf /".into()],
                ..ok.clone()
            },
            SlurmOptions {
                sbatch_args: vec!["mem=1G".into()],
                ..ok.clone()
            },
            SlurmOptions {
                max_parallel: Some(0),
                ..ok.clone()
            },
            SlurmOptions {
                partition: Some("a b".into()),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stages_parse_print_and_order() {
        for t in [
            "sft:arithmetic-v0",
            "prefs:arithmetic-v0",
            "rm:arithmetic-v0:on",
            // A task file's env id holds a colon of its own.
            "sft:task:/data/t.toml",
            "rm:task:/data/t.toml:on",
        ] {
            assert_eq!(t.parse::<Stage>().unwrap().to_string(), t);
        }
        let rm: Stage = "rm:task:/data/t.toml:on".parse().unwrap();
        assert_eq!(rm.env(), "task:/data/t.toml");
        for bad in ["", "sft", "sft:", "rm:a", "rm::on", "rm:a:", "dpo:a"] {
            assert!(bad.parse::<Stage>().is_err(), "{bad}");
        }
        let sft: Stage = "sft:a".parse().unwrap();
        let prefs: Stage = "prefs:a".parse().unwrap();
        let rm: Stage = "rm:a:on".parse().unwrap();
        let rm2: Stage = "rm:a:off".parse().unwrap();
        assert!(prefs.needs(&sft) && rm.needs(&sft) && rm.needs(&prefs));
        assert!(!sft.needs(&prefs) && !rm.needs(&rm2) && !prefs.needs(&rm));
        assert!(!prefs.needs(&"sft:b".parse().unwrap()));
    }
}
