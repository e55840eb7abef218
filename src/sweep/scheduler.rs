//! Running a sweep's runs: each a `train --spec` process (a few at once), locked, logged, resumed
//! where it stopped, marked done or failed.

use super::collect::collect;
use super::spec::{shard, RunSpec, SweepSpec};
use super::stages::{env_stages, EnvStages, Mode, Stage};
use crate::commands;
use aligngym_agents::lm::device::DtypeChoice;
use aligngym_agents::{AgentError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What one invocation of a sweep does.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Part {
    /// Stages, then the runs (the shard's, when sharded), then `runs.csv` and `metrics.csv`.
    #[default]
    All,
    /// Build one stage; the stages it needs must be built already.
    Stage(Stage),
    /// One run, by its index in [`SweepSpec::runs`]; its stages must be built already. Writes
    /// only the run's own files (no CSVs), so array tasks never write the same file.
    Run(usize),
}

/// How a sweep is executed.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Runs at once (each a subprocess with one libtorch thread when > 1).
    pub jobs: usize,
    /// `(i, n)`: only the i-th of n shards.
    pub shard: Option<(usize, usize)>,
    /// Device argument passed to every stage and run.
    pub device: aligngym_agents::DeviceChoice,
    /// libtorch threads of each run; `None`: 1 when `jobs` > 1, else libtorch's default.
    pub threads: Option<i32>,
    /// What to do.
    pub part: Part,
    /// No progress bars.
    pub quiet: bool,
}

/// The `aligngym train` arguments of a new run: its spec, built here and validated, goes to the
/// process as a JSON file beside the run's folder.
fn train_args(
    spec: &SweepSpec,
    r: &RunSpec,
    stages: &EnvStages,
    out: &Path,
    opts: &SweepOptions,
    dev: tch::Device,
) -> Result<Vec<String>> {
    let (prefs_path, queries) = &stages.prefs[&r.agent.prefs];
    let rm = stages.rms.get(&r.agent.prefs).map(PathBuf::as_path);
    // A tuned agent's run takes the configuration its tuning runs chose.
    let r = &super::tuning::resolve(spec, out, r)?;
    let mut t = spec.train_spec(r, &stages.sft, prefs_path, *queries, rm)?;
    // `auto` is decided here, once per run as `train` would, unless the grid or `set` chose.
    let chosen = r.agent.set.keys().chain(r.point.keys());
    if !chosen.into_iter().any(|k| k == "run.dtype" || k == "dtype") {
        t.run.dtype = DtypeChoice::Auto.resolve(dev, commands::params_of(&stages.sft));
    }
    let file = run_file(out, &r.id, RunFile::Spec);
    let json = serde_json::to_string_pretty(&t).map_err(|e| AgentError::Data(e.to_string()))?;
    commands::write_atomic(&file, &json)?;
    let mut a: Vec<String> = vec![
        "train".into(),
        "--spec".into(),
        file.display().to_string(),
        "--out".into(),
        run_file(out, &r.id, RunFile::Dir).display().to_string(),
        "--device".into(),
        opts.device.to_string(),
        "--quiet".into(),
    ];
    a.extend(threads_arg(opts));
    Ok(a)
}

fn threads_arg(opts: &SweepOptions) -> Vec<String> {
    match opts.threads {
        Some(n) => vec!["--threads".into(), n.to_string()],
        None if opts.jobs > 1 => vec!["--threads".into(), "1".into()],
        None => vec![],
    }
}

/// Where a sweep keeps a run's lock, log and failure record (beside its folder, so that a run
/// started over, which replaces the folder, keeps them).
pub fn run_file(out: &Path, id: &str, what: RunFile) -> PathBuf {
    let runs = out.join("runs");
    match what {
        RunFile::Dir => runs.join(id),
        RunFile::Lock => runs.join(format!(".{id}.lock")),
        RunFile::Log => runs.join(format!("{id}.log")),
        RunFile::Failed => runs.join(format!("{id}.failed")),
        RunFile::Spec => runs.join(format!("{id}.spec.json")),
    }
}

/// The files of a sweep's run, for [`run_file`].
#[derive(Debug, Clone, Copy)]
pub enum RunFile {
    /// The run folder (`train --out`); finished when it holds `done`.
    Dir,
    /// Held while a process runs it.
    Lock,
    /// The run's output (`train`'s stdout and stderr).
    Log,
    /// Written when the run's last attempt failed (its exit status); removed when it starts again.
    Failed,
    /// The run's spec as the sweep built it (`train --spec`); `config.json` is its record after.
    Spec,
}

/// Execute (the part of) a sweep into `out`; returns how many runs were executed now.
pub fn run_sweep(spec: &SweepSpec, out: &Path, opts: &SweepOptions) -> Result<usize> {
    std::fs::create_dir_all(out.join("runs")).map_err(|e| AgentError::io(out, e))?;
    std::fs::create_dir_all(out.join("stages")).map_err(|e| AgentError::io(out, e))?;
    if opts.part == Part::All {
        let json =
            serde_json::to_string_pretty(spec).map_err(|e| AgentError::Data(e.to_string()))?;
        commands::write_atomic(&out.join("sweep.json"), &json)?;
    }
    let dev = opts.device.resolve()?;
    let all = spec.runs();
    let mut runs = all.clone();
    match &opts.part {
        Part::All => {
            if let Some((i, n)) = opts.shard {
                if all.iter().any(RunSpec::is_tuned) {
                    return Err(AgentError::config(
                        "--shard",
                        "a sweep with `tune` grids runs whole: a shard's runs would wait on tuning runs of other shards",
                    ));
                }
                runs = shard(runs, i, n);
            }
        }
        Part::Run(k) => {
            let n = runs.len();
            runs = runs.into_iter().skip(*k).take(1).collect();
            if runs.is_empty() {
                return Err(AgentError::config(
                    "--run-index",
                    format!("{k}: the sweep has {n} runs (0 to {})", n.saturating_sub(1)),
                ));
            }
        }
        Part::Stage(stage) => {
            if !spec.stages().contains(stage) {
                return Err(AgentError::config(
                    "--stage",
                    format!(
                        "`{stage}` is not a stage of this sweep; its stages are {}",
                        spec.stages()
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let mode = |s: &Stage| {
                if s == stage {
                    Mode::Build
                } else if stage.needs(s) {
                    Mode::Require
                } else {
                    Mode::Skip
                }
            };
            env_stages(spec, stage.env(), out, dev, opts.quiet, &mode, Some(stage))?;
            return Ok(0);
        }
    }
    // Stages, once per env, before any run.
    let mode = |_: &Stage| match opts.part {
        Part::All => Mode::Build,
        _ => Mode::Require,
    };
    let mut stages: BTreeMap<String, EnvStages> = BTreeMap::new();
    for env in &spec.envs {
        if !runs.iter().any(|r| &r.env == env) {
            continue;
        }
        if let Some(st) = env_stages(spec, env, out, dev, opts.quiet, &mode, None)? {
            stages.insert(env.clone(), st);
        }
    }
    let done = |r: &RunSpec| run_file(out, &r.id, RunFile::Dir).join("done").exists();
    let todo: Vec<&RunSpec> = runs.iter().filter(|r| !done(r)).collect();
    let pb = commands::progress(todo.len() as u64, "runs", opts.quiet);
    let mut lines = commands::ProgressLines::new(&spec.name, todo.len(), opts.quiet);
    let exe = std::env::current_exe().map_err(|e| AgentError::io("aligngym", e))?;
    let jobs = opts.jobs.max(1);
    // Runs in order, except that a tuned agent's runs wait for their tuning runs.
    let mut pending: Vec<&RunSpec> = todo;
    struct Running {
        child: std::process::Child,
        id: String,
        _lock: aligngym_agents::lm::fsio::Lock,
    }
    let mut running: Vec<Running> = Vec::new();
    let mut failures = Vec::new();
    let mut executed = 0;
    loop {
        while running.len() < jobs {
            let Some(k) = pending
                .iter()
                .position(|r| super::tuning::ready(&all, out, r))
            else {
                break;
            };
            let r = pending.remove(k);
            // Another process (a shard, a Slurm task of an earlier submission) runs it: theirs.
            let Some(lock) = aligngym_agents::lm::fsio::Lock::try_exclusive(&run_file(
                out,
                &r.id,
                RunFile::Lock,
            ))?
            else {
                eprintln!("run {} is being run by another process: left to it", r.id);
                pb.inc(1);
                continue;
            };
            if done(r) {
                pb.inc(1);
                continue;
            }
            let dir = run_file(out, &r.id, RunFile::Dir);
            let _ = std::fs::remove_file(run_file(out, &r.id, RunFile::Failed));
            // A run with a record resumes (from its last commit, or from the start when killed
            // before one); a folder without one holds nothing to keep.
            let args: Vec<String> = if dir.join("config.json").exists() {
                let mut a = vec![
                    "train".into(),
                    "--resume".into(),
                    dir.display().to_string(),
                    "--device".into(),
                    opts.device.to_string(),
                    "--quiet".into(),
                ];
                a.extend(threads_arg(opts));
                a
            } else {
                let _ = std::fs::remove_dir_all(&dir);
                train_args(spec, r, &stages[&r.env], out, opts, dev)?
            };
            let log_path = run_file(out, &r.id, RunFile::Log);
            let mut log = std::fs::File::create(&log_path).map_err(|e| AgentError::io(out, e))?;
            // Which attempt this is, for whoever reads the log after a cancellation.
            let from = crate::runner::committed_step(&dir).ok().flatten();
            let head = match from {
                Some(k) => format!("aligngym sweep: run {} resumes from step {k}\n", r.id),
                None => format!("aligngym sweep: run {} starts\n", r.id),
            };
            std::io::Write::write_all(&mut log, head.as_bytes())
                .map_err(|e| AgentError::io(&log_path, e))?;
            let mut cmd = Command::new(&exe);
            die_with_parent(&mut cmd);
            let child = cmd
                .args(&args)
                .stdout(log.try_clone().map_err(|e| AgentError::io(out, e))?)
                .stderr(log)
                .spawn()
                .map_err(|e| AgentError::io(&exe, e))?;
            running.push(Running {
                child,
                id: r.id.clone(),
                _lock: lock,
            });
        }
        if running.is_empty() {
            // Left waiting with nothing running here: their tuning runs failed (listed below)
            // or another process holds them.
            if !pending.is_empty() && failures.is_empty() {
                return Err(AgentError::Data(format!(
                    "{} run(s) wait on tuning runs that another process is running: run the sweep again when it is done",
                    pending.len()
                )));
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        lines.heartbeat(running.len());
        let mut k = 0;
        while k < running.len() {
            if let Some(status) = running[k]
                .child
                .try_wait()
                .map_err(|e| AgentError::io("child", e))?
            {
                let Running { id, .. } = running.remove(k);
                lines.finished(&id, status.success());
                if status.success() {
                    commands::write_atomic(&run_file(out, &id, RunFile::Dir).join("done"), "")?;
                    executed += 1;
                } else {
                    commands::write_atomic(
                        &run_file(out, &id, RunFile::Failed),
                        &format!("{status}\n"),
                    )?;
                    failures.push(id);
                }
                pb.inc(1);
            } else {
                k += 1;
            }
        }
    }
    pb.finish_and_clear();
    if opts.part == Part::All {
        collect(spec, out)?;
    }
    if !failures.is_empty() {
        return Err(AgentError::Data(format!(
            "{} run(s) failed (see runs/<id>.log): {}",
            failures.len(),
            failures.join(", ")
        )));
    }
    Ok(executed)
}

/// A run's process is killed when the sweep's dies, however it dies (SIGKILL included), so a
/// killed sweep leaves no orphan training behind (Linux: a parent-death signal).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls run (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The sweep died before the signal was armed: nothing would ever kill us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
