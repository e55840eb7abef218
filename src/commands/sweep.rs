//! `aligngym sweep`: Run a sweep spec: locally, as a shard, or on Slurm.

use crate::commands::{self, params_of, Compute, ModelSize};
use crate::sweep::{run_sweep, Part, SweepOptions, SweepSpec};
use aligngym_agents::stages::sft::SftConfig;
use aligngym_agents::{AgentError, DeviceChoice, Result};
use std::path::{Path, PathBuf};

/// The arguments of `aligngym sweep`.
#[derive(clap::Args)]
pub struct SweepArgs {
    /// The sweep spec (see src/sweeps/*.toml), or a sweep folder (its recorded sweep.json:
    /// resumes it in place).
    pub spec: PathBuf,
    /// Output folder (runs/, stages/, runs.csv, metrics.csv); default results/<sweep name>, or
    /// the folder given as SPEC.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Runs executed at once (each with one libtorch thread when > 1).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Only shard I of N (`I/N`, 0-based): machines can share a sweep and merge by copying.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Multiply updates and preference pairs (for GPU-sized runs).
    #[arg(long)]
    pub scale: Option<f64>,
    /// Run only run K (its index in the sweep's run list, as `aligngym status` shows) of the sweep
    /// recorded in the output folder, whose stages must be built; writes no CSVs (what a Slurm
    /// array task runs).
    #[arg(long, value_name = "K", conflicts_with_all = ["shard", "scale", "stage", "merge", "slurm", "overwrite"])]
    pub run_index: Option<usize>,
    /// Build only this shared stage (`sft:ENV`, `prefs:ENV` or `rm:ENV:PREFS`) of the sweep
    /// recorded in the output folder (what a Slurm stage job runs).
    #[arg(long, value_name = "STAGE", conflicts_with_all = ["shard", "scale", "merge", "slurm", "overwrite"])]
    pub stage: Option<String>,
    /// Only merge: write runs.csv and metrics.csv from the finished runs, then the plots and the
    /// report (what the Slurm merge job runs).
    #[arg(long, conflicts_with_all = ["shard", "scale", "slurm", "overwrite"])]
    pub merge: bool,
    /// libtorch threads of each run (default: 1 when --jobs > 1, else libtorch's own choice).
    #[arg(long)]
    pub threads: Option<i32>,
    #[command(flatten)]
    pub slurm: SlurmArgs,
    #[command(flatten)]
    pub compute: Compute,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// How `aligngym sweep --slurm` submits.
#[derive(clap::Args)]
pub struct SlurmArgs {
    /// Submit the sweep to Slurm and return at once: a job per missing stage, one job array of
    /// the missing runs, a merge job; prints the job ids (watch with `aligngym status DIR`).
    #[arg(long, conflicts_with_all = ["shard", "jobs"])]
    pub slurm: bool,
    /// With --slurm: write the batch scripts under DIR/slurm and print the sbatch lines (also in
    /// DIR/slurm/submit.sh) without submitting.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
    /// Slurm partition of every job (default: the cluster's).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// GPUs of each stage job and each run (`--gpus`).
    #[arg(long, default_value_t = 0, requires = "slurm")]
    pub gpus_per_run: u32,
    /// CPUs of each stage job and each run (`--cpus-per-task`); each run uses as many libtorch
    /// threads.
    #[arg(long, default_value_t = 1, requires = "slurm")]
    pub cpus_per_run: u32,
    /// Time limit of each job, in Slurm's format (HH:MM:SS, D-HH:MM:SS).
    #[arg(long, requires = "slurm", value_name = "HH:MM:SS")]
    pub time: Option<String>,
    /// Runs at once (the array's `%K`; default: as many as the cluster gives).
    #[arg(long, requires = "slurm", value_name = "K")]
    pub max_parallel: Option<usize>,
    /// One more `#SBATCH` line for every job, e.g. `--sbatch-arg=--mem=16G` (repeatable).
    #[arg(
        long,
        requires = "slurm",
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    pub sbatch_arg: Vec<String>,
}

/// `aligngym sweep`.
pub fn run(args: SweepArgs) -> Result<()> {
    let SweepArgs {
        spec,
        out,
        jobs,
        shard,
        scale,
        run_index,
        stage,
        merge,
        threads,
        slurm,
        compute,
        quiet,
        overwrite,
    } = args;
    let device = compute.device;
    if let Some(n) = threads {
        if n < 1 {
            return Err(AgentError::config("--threads", "expected at least 1"));
        }
        tch::set_num_threads(n);
    }
    let slurm_opts = slurm_options(slurm, device)?;
    let from_dir = spec.is_dir();
    if from_dir {
        if let Some(o) = &out {
            if commands::absolute(o)? != commands::absolute(&spec)? {
                return Err(AgentError::config(
                    "--out",
                    format!(
                        "{} is a sweep folder: it resumes in place (leave out --out)",
                        spec.display()
                    ),
                ));
            }
        }
    }
    let part = match (run_index, stage) {
        (Some(k), _) => Some(Part::Run(k)),
        (None, Some(t)) => Some(Part::Stage(t.parse()?)),
        (None, None) => None,
    };
    // A job of a sweep (a stage, a run, the merge) acts on the sweep its folder records.
    if part.is_some() || merge {
        let dir = out.unwrap_or_else(|| spec.clone());
        return run_job(&dir, part, merge, device, threads, quiet);
    }
    let mut s = if from_dir {
        crate::sweep::load_sweep_dir(&spec)?
    } else {
        SweepSpec::load(&spec)?
    };
    if let Some(x) = scale {
        s.scale = x;
        s.validate()?;
    }
    decide_dtype(&mut s, &compute, slurm_opts.as_ref())?;
    let shard = match shard {
        None => None,
        Some(t) => Some(parse_shard(&t)?),
    };
    let out = sweep_out(&s, &spec, out, from_dir, overwrite)?;
    if let Some(o) = slurm_opts {
        return submit_sweep(&s, &out, &o);
    }
    let n = run_sweep(
        &s,
        &out,
        &SweepOptions {
            jobs,
            shard,
            device,
            threads,
            part: Part::All,
            quiet,
        },
    )?;
    println!(
        "sweep {}: {n} run(s) executed now; runs.csv and metrics.csv in {}",
        s.name,
        out.display()
    );
    // A shard holds part of the runs: its verdicts would be on part of the seeds.
    if shard.is_none() && (s.rule.is_some() || !s.rules.is_empty()) {
        let metrics = crate::plot::read_sweep_metrics(&out)?;
        println!("\nVerdicts (the spec's decision rules):\n");
        print!(
            "{}",
            crate::verdict::markdown_table(&crate::verdict::evaluate_all(&s, &metrics))
        );
    }
    Ok(())
}

/// `aligngym sweep --slurm`.
fn submit_sweep(s: &SweepSpec, out: &Path, o: &crate::slurm::SlurmOptions) -> Result<()> {
    if s.agents.iter().any(|a| !a.tune.is_empty()) {
        return Err(AgentError::config(
            "--slurm",
            "a sweep with `tune` grids runs locally for now: its runs wait on tuning runs, which the Slurm job array does not order",
        ));
    }
    let sub = crate::slurm::submit(s, out, o)?;
    let dir = commands::absolute(out)?;
    if sub.plan.is_empty() {
        println!(
            "sweep {}: nothing to submit: every stage is built and all {} runs are finished, queued or running (`aligngym status {}`)",
            s.name,
            sub.skipped_runs,
            dir.display()
        );
        return Ok(());
    }
    if o.dry_run {
        println!(
            "sweep {}: dry run; batch scripts in {1}/slurm; these lines (also {1}/slurm/submit.sh) submit them:",
            s.name,
            dir.display()
        );
        for l in &sub.plan {
            println!("{l}");
        }
        return Ok(());
    }
    let list = |what: &dyn Fn(&str) -> bool| {
        sub.jobs
            .iter()
            .filter(|j| what(&j.what))
            .map(|j| j.id.clone())
            .collect::<Vec<_>>()
    };
    let stages = list(&|w| w.starts_with("stage:"));
    let runs = sub.jobs.iter().find(|j| j.what == "runs");
    let merge = list(&|w| w == "merge");
    println!(
        "sweep {}: submitted {}{}merge job {}; {} run(s) already finished, queued or running",
        s.name,
        if stages.is_empty() {
            String::new()
        } else {
            format!("stage jobs {}; ", stages.join(", "))
        },
        runs.map(|j| format!("runs array {} ({} runs); ", j.id, j.indices.len()))
            .unwrap_or_default(),
        merge.join(", "),
        sub.skipped_runs
    );
    println!(
        "watch: aligngym status {0}; logs in {0}/slurm/logs and {0}/runs/<id>.log",
        dir.display()
    );
    Ok(())
}

/// `aligngym sweep DIR --merge`: the CSVs from the finished runs, then plots and the report.
fn merge_sweep(s: &SweepSpec, dir: &Path) -> Result<()> {
    crate::sweep::collect(s, dir)?;
    let failed: Vec<String> = s
        .runs()
        .iter()
        .filter(|r| {
            matches!(
                crate::slurm::run_state(dir, &r.id),
                crate::slurm::RunState::Failed(_)
            )
        })
        .map(|r| r.id.clone())
        .collect();
    crate::plot::plot_sweep(dir)?;
    crate::report::write_report(dir)?;
    println!(
        "sweep {}: runs.csv, metrics.csv, plots, report.md and report.html written in {}",
        s.name,
        dir.display()
    );
    if !failed.is_empty() {
        println!(
            "{} run(s) failed (aligngym status {} shows why): {}",
            failed.len(),
            dir.display(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// `I/N` with I < N.
fn parse_shard(t: &str) -> Result<(usize, usize)> {
    let bad = || {
        AgentError::config(
            "--shard",
            format!("`{t}`: expected I/N with 0 ≤ I < N, e.g. 0/2"),
        )
    };
    let (i, n) = t.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// One job of a sweep in `dir`: a stage, a run, or the merge (what a Slurm array task runs).
fn run_job(
    dir: &Path,
    part: Option<Part>,
    merge: bool,
    device: DeviceChoice,
    threads: Option<i32>,
    quiet: bool,
) -> Result<()> {
    let s = crate::sweep::load_sweep_dir(dir)?;
    if merge {
        return merge_sweep(&s, dir);
    }
    let part = part.unwrap_or_default();
    let n = run_sweep(
        &s,
        dir,
        &SweepOptions {
            jobs: 1,
            shard: None,
            device,
            threads,
            part: part.clone(),
            quiet,
        },
    )?;
    match part {
        Part::Stage(st) => println!("sweep {}: stage {st} built", s.name),
        _ => println!("sweep {}: {n} run(s) executed now", s.name),
    }
    Ok(())
}

/// One precision for every run, decided here (children never time matmuls of their own); a
/// spec's own `run.dtype` stands unless --dtype is given. Runs on a cluster's GPU nodes decide
/// `auto` there, not on the machine that submits.
fn decide_dtype(
    s: &mut SweepSpec,
    compute: &Compute,
    slurm_opts: Option<&crate::slurm::SlurmOptions>,
) -> Result<()> {
    let device = compute.device;
    // Without a policy of its own, a sweep trains the tiny model its SFT stage makes.
    let params = s.policy.as_deref().map_or_else(
        || {
            ModelSize::Tiny
                .config(SftConfig::default().vocab_size)
                .num_params()
        },
        params_of,
    );
    let on_gpu_nodes = slurm_opts.is_some_and(|o| o.gpus_per_run > 0);
    if !(on_gpu_nodes && compute.dtype.is_none()) {
        let d = compute.precision(device.resolve()?, params);
        for a in &mut s.agents {
            if compute.dtype.is_some() || !a.set.contains_key("run.dtype") {
                a.set.insert("run.dtype".into(), d.to_string().into());
            }
        }
    }
    Ok(())
}

/// The sweep's folder: `--out`, the folder a sweep resumes from, or `results/<name>`; checked
/// against the spec file and against a different sweep already there.
fn sweep_out(
    s: &SweepSpec,
    spec: &Path,
    out: Option<PathBuf>,
    from_dir: bool,
    overwrite: bool,
) -> Result<PathBuf> {
    let out = match (out, from_dir) {
        (Some(o), _) => o,
        (None, true) => spec.to_path_buf(),
        (None, false) => PathBuf::from("results").join(&s.name),
    };
    // A sweep folder is resumable: re-running the same sweep into it finishes what is missing.
    let inputs: Vec<(&str, &Path)> = if from_dir {
        vec![]
    } else {
        vec![("SPEC", spec)]
    };
    commands::check_out(&out, &inputs, overwrite, |d| d.join("sweep.json").exists())?;
    // Its finished runs would pass for this spec's: a folder resumes only the sweep it holds.
    if out.join("sweep.json").is_file() {
        let old = crate::sweep::load_sweep_dir(&out)?;
        if let Some(what) = s.conflict_with(&old) {
            return Err(AgentError::config(
                "--out",
                format!(
                    "{} holds a sweep whose finished runs differ from this spec's: {what}; resume it with its own spec (`aligngym sweep {}`) or choose a new --out",
                    out.display(),
                    out.display()
                ),
            ));
        }
    }
    Ok(out)
}

/// The Slurm options of `--slurm`, checked (none without it).
fn slurm_options(
    slurm: SlurmArgs,
    device: DeviceChoice,
) -> Result<Option<crate::slurm::SlurmOptions>> {
    let opts = slurm.slurm.then_some(crate::slurm::SlurmOptions {
        partition: slurm.partition,
        gpus_per_run: slurm.gpus_per_run,
        cpus_per_run: slurm.cpus_per_run,
        time: slurm.time,
        max_parallel: slurm.max_parallel,
        sbatch_args: slurm.sbatch_arg,
        dry_run: slurm.dry_run,
        device,
    });
    if let Some(o) = &opts {
        o.validate()?;
    }
    Ok(opts)
}
