//! `aligngym train`: Train an agent from a policy checkpoint, with the shared evaluation.

use crate::commands::{self, params_of, Compute};
use crate::eval::Evaluator;
use crate::runner;
use crate::spec::{build_agent, read_train_spec, AgentKind, RewardSpec, TrainSpec};
use aligngym_agents::lm::device::DtypeChoice;
use aligngym_agents::metric;
use aligngym_agents::{AgentError, Precision, Result};
use aligngym_envs::task;
use std::path::{Path, PathBuf};

/// The arguments of `aligngym train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Which agent.
    #[arg(long, value_enum, required_unless_present_any = ["resume", "spec"])]
    pub agent: Option<AgentKind>,
    /// Environment id.
    #[arg(long, required_unless_present_any = ["resume", "spec"])]
    pub env: Option<String>,
    /// Starting policy checkpoint (also the frozen reference).
    #[arg(long, required_unless_present_any = ["resume", "spec"])]
    pub policy: Option<PathBuf>,
    /// A whole run spec in `config.json`'s form (what a sweep hands each run) instead of
    /// --agent, --env, --policy, --reward, --prefs, --seed and --set.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["agent", "env", "policy", "reward", "prefs", "sets", "seed", "resume"])]
    pub spec: Option<PathBuf>,
    /// An online agent's reward: `gold` (the env's) or `rm:DIR` (a trained reward model).
    #[arg(long)]
    pub reward: Option<RewardSpec>,
    /// The preference JSONL of DPO (pairs) and KTO (`{prompt, completion, label}` lines, or pairs).
    #[arg(long)]
    pub prefs: Option<PathBuf>,
    /// Run directory (config.json, metrics.csv, policy/, state/).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Override a hyperparameter: a key of the agent's config, or run.updates, run.eval_every,
    /// run.dtype, eval.prompts … (repeatable). With --resume, only run.* keys (e.g. to extend
    /// a run).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run seed (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub compute: Compute,
    /// Continue a stopped run from its directory (weights, optimiser, KL controller, counters).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["agent", "env", "policy", "out"])]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// libtorch intra-op threads (0 = libtorch's default); sweeps running several runs at
    /// once pass 1.
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// Also log to an experiment tracker: `tensorboard:DIR` writes TensorBoard event files into
    /// DIR (every metric as a scalar at its step, the config as text), rewritten after each
    /// update.
    #[arg(long, value_name = "TRACKER:DIR")]
    pub log: Option<LogTarget>,
}

/// Where `--log` writes.
#[derive(Debug, Clone, PartialEq)]
pub enum LogTarget {
    /// TensorBoard event files in this folder.
    TensorBoard(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some(("tensorboard", dir)) if !dir.is_empty() => {
                Ok(LogTarget::TensorBoard(PathBuf::from(dir)))
            }
            _ => Err(format!("`{s}`: expected tensorboard:DIR")),
        }
    }
}

/// `aligngym train`.
pub fn run(args: TrainArgs) -> Result<()> {
    // A run's clock starts with the command: loading its data and building the agent (DPO's
    // reference pass) are the run's work too.
    let clock = std::time::Instant::now();
    let TrainArgs {
        agent,
        env,
        policy,
        spec: spec_file,
        reward,
        prefs,
        out,
        sets,
        seed,
        compute,
        resume,
        quiet,
        threads,
        overwrite,
        log,
    } = args;
    let dev = compute.device.resolve()?;
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    // `--dtype` overrides `--set run.dtype`; a resumed run keeps its own unless told otherwise,
    // and `--set run.dtype` is not overruled by `auto`.
    let chosen = sets.iter().any(|s| s.starts_with("run.dtype="));
    // A spec file is the whole run as its writer decided it, precision included.
    let from_file = match &spec_file {
        Some(file) => Some(read_train_spec(file)?),
        None => None,
    };
    let params = policy
        .as_deref()
        .or(from_file.as_ref().map(|s| s.policy.as_path()))
        .map_or(0, params_of);
    let dtype = match compute.dtype {
        Some(d) => Some(d.resolve(dev, params)),
        None if resume.is_none() && from_file.is_none() && !chosen => {
            Some(DtypeChoice::Auto.resolve(dev, params))
        }
        None => None,
    };
    let (spec, dir, resuming) = match resume {
        Some(dir) => (resumed_spec(&dir, &sets, dtype)?, dir, true),
        None => {
            let out = out.unwrap_or_default();
            let spec = match from_file {
                Some(spec) => spec,
                None => TrainSpec::new(
                    agent.unwrap_or(AgentKind::Ppo),
                    &env.unwrap_or_default(),
                    policy.unwrap_or_default(),
                    reward.unwrap_or(RewardSpec::Gold),
                    prefs,
                    seed.unwrap_or(0),
                ),
            };
            let spec = new_spec(spec, spec_file.as_deref(), &out, &sets, dtype, overwrite)?;
            (spec, out, false)
        }
    };
    let t = task(&spec.env)?;
    let consumed = consumed_stages(&spec)?;
    let (mut agent, start) = build_agent(&spec, t.clone(), dev)?;
    let setup_seconds = clock.elapsed().as_secs_f64();
    let ev = Evaluator::new(t.clone(), &start, spec.eval.clone(), spec.seed)?;
    let charges = runner::Charges {
        setup_seconds,
        consumed,
        eval_setup_seconds: clock.elapsed().as_secs_f64() - setup_seconds,
    };
    let existed = dir.exists();
    let was_empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    let mut started = || -> Result<runner::Ran> {
        let files = std::time::Instant::now();
        if !resuming {
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
            let json =
                serde_json::to_string_pretty(&spec).map_err(|e| AgentError::Data(e.to_string()))?;
            commands::write_atomic(&dir.join("config.json"), &json)?;
        }
        let config_seconds = files.elapsed().as_secs_f64();
        let pb = commands::progress(spec.run.updates, &spec.agent().to_string(), quiet);
        let board = match &log {
            Some(LogTarget::TensorBoard(d)) => {
                let config = serde_json::to_string_pretty(&spec)
                    .map_err(|e| AgentError::Data(e.to_string()))?;
                Some(crate::tensorboard::TensorBoard::new(d, config)?)
            }
            None => None,
        };
        let mut logged = Ok(());
        let rows = runner::run(
            agent.as_mut(),
            &ev,
            &spec.run,
            &dir,
            resuming,
            &charges,
            |step, rows, all| {
                pb.set_position(step);
                if let Some(r) = rows.iter().find(|r| r.metric == metric::EVAL_GOLD_REWARD) {
                    pb.set_message(format!("gold {:.3}", r.value));
                }
                if let (Some(b), Ok(())) = (&board, &logged) {
                    logged = b.write(all);
                }
            },
        );
        pb.finish_and_clear();
        let ran = rows?;
        logged?;
        // The whole run, its starting evaluation and a resumed run's earlier steps included.
        if let Some(b) = &board {
            b.write(&ran.rows)?;
        }
        let mut ran = ran;
        ran.seconds.commits += config_seconds;
        Ok(ran)
    };
    let ran = match started() {
        Ok(ran) => ran,
        // A new run that failed before its first commit holds nothing worth keeping: `--out` is
        // left as it was found (absent, or empty). A run with committed steps is kept to resume.
        Err(e) => {
            if !resuming && was_empty && matches!(runner::committed_step(&dir), Ok(None)) {
                commands::discard(&dir, existed);
            }
            return Err(e);
        }
    };
    let rows = ran.rows;
    let first = rows
        .iter()
        .find(|r| r.metric == metric::EVAL_GOLD_REWARD)
        .map_or(f64::NAN, |r| r.value);
    let last = crate::metrics::last(&rows, metric::EVAL_GOLD_REWARD).unwrap_or(f64::NAN);
    let kl = crate::metrics::last(&rows, metric::EVAL_KL_TO_REF).unwrap_or(f64::NAN);
    println!(
        "train {}: eval/gold_reward {first:.3} -> {last:.3}, eval/kl_to_ref {kl:.3}; run in {}",
        spec.agent(),
        dir.display()
    );
    let a = ran.seconds;
    println!(
        "time: {:.3} s since the command started: building the agent {:.3}, training {:.3}, evaluation {:.3}, checkpoint commits {:.3}",
        clock.elapsed().as_secs_f64(),
        a.setup,
        a.training,
        a.evaluation,
        a.commits
    );
    Ok(())
}

/// The spec of a run to resume from `dir`, with `sets` (run.* keys only) and `dtype` applied and
/// recorded in its `config.json`.
fn resumed_spec(dir: &Path, sets: &[String], dtype: Option<Precision>) -> Result<TrainSpec> {
    let path = dir.join("config.json");
    let mut spec = read_train_spec(&path)?;
    // Runs recorded before inputs were stored absolute: relative to the working directory
    // they were started from, when it is this one, else to the run folder.
    let base = if spec.policy.exists() {
        std::env::current_dir().map_err(|e| AgentError::io(".", e))?
    } else {
        std::path::absolute(dir).map_err(|e| AgentError::io(dir, e))?
    };
    spec.anchor_inputs(&base);
    if let Some(bad) = sets.iter().find(|s| !s.starts_with("run.")) {
        return Err(AgentError::config(
            bad.clone(),
            "with --resume only run.* keys may be changed",
        ));
    }
    spec.apply_sets(sets)?;
    if let Some(d) = dtype {
        spec.run.dtype = d;
    }
    // This process owns the run: finish a commit a kill interrupted before reading it.
    aligngym_agents::lm::fsio::recover(&dir.join("state"))?;
    let done = runner::committed_step(dir)?.unwrap_or(0);
    if spec.run.updates < done {
        return Err(AgentError::config(
            "run.updates",
            format!(
                "{} is fewer than the {done} updates {} has already done",
                spec.run.updates,
                dir.display()
            ),
        ));
    }
    // Keep the extended length in the run's record.
    let json = serde_json::to_string_pretty(&spec).map_err(|e| AgentError::Data(e.to_string()))?;
    commands::write_atomic(&path, &json)?;
    Ok(spec)
}

/// A new run's `spec` (from a spec file or the flags) with `sets` and `dtype` applied, its
/// inputs made absolute, and `out` checked against them (and against `spec_file`).
fn new_spec(
    mut spec: TrainSpec,
    spec_file: Option<&Path>,
    out: &Path,
    sets: &[String],
    dtype: Option<Precision>,
    overwrite: bool,
) -> Result<TrainSpec> {
    spec.apply_sets(sets)?;
    if let Some(d) = dtype {
        spec.run.dtype = d;
    }
    let cwd = std::env::current_dir().map_err(|e| AgentError::io(".", e))?;
    spec.anchor_inputs(&cwd);
    let mut inputs: Vec<(&str, &Path)> = vec![("--policy", &spec.policy)];
    // A spec file is an input too: `--out` must not replace the folder that holds it.
    if let Some(f) = spec_file {
        inputs.push(("--spec", f));
    }
    if let Some(p) = &spec.prefs {
        inputs.push(("--prefs", p));
    }
    if let RewardSpec::Rm(d) = &spec.reward {
        inputs.push(("--reward", d));
    }
    commands::check_out(out, &inputs, overwrite, |_| false)?;
    Ok(spec)
}

/// What the stages `spec` uses cost, as they recorded it ([`crate::pipeline`]): its preference
/// pairs, and its reward model (whose record includes its own pairs). Data made elsewhere, with
/// no record, adds nothing.
fn consumed_stages(spec: &TrainSpec) -> Result<crate::pipeline::StageCost> {
    use crate::pipeline::{pairs_cost_path, read, COST_FILE};
    let mut total = crate::pipeline::StageCost::default();
    if let Some(p) = &spec.prefs {
        total = total.plus(&read(&pairs_cost_path(p))?.unwrap_or_default());
    }
    if let RewardSpec::Rm(dir) = &spec.reward {
        total = total.plus(&read(&dir.join(COST_FILE))?.unwrap_or_default());
    }
    Ok(total)
}
