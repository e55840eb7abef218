//! The `aligngym` command line, one function per command, callable as a library function
//! ([`main`], [`run`]) so a user's own binary with its own tasks has every command.

use crate::commands::{self, ModelSize};
use crate::eval::{EvalConfig, Evaluator};
use crate::runner;
use crate::spec::{build_agent, read_train_spec, AgentKind, RewardSpec, TrainSpec};
use crate::sweep::{run_sweep, Part, SweepOptions, SweepSpec};
use aligngym_agents::lm::device::DtypeChoice;
use aligngym_agents::lm::sampling::SamplingConfig;
use aligngym_agents::metric;
use aligngym_agents::stages::preferences::Branching;
use aligngym_agents::stages::sft::SftConfig;
use aligngym_agents::{AgentError, DeviceChoice, LmPolicy, Precision, Result, RmConfig};
use aligngym_envs::{
    check_chat_env, check_env, make, task, tasks, write_pairs, OracleConfig, TextEnvConfig,
};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Where and in what precision a command computes.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Compute {
    /// Device: auto (CUDA when available), cpu or cuda (an error without CUDA).
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Compute precision: auto (the default; for `train --resume`, the run's own) picks bf16
    /// where the device runs it natively (CUDA with bf16, a CPU with AMX or AVX512-BF16: a matmul
    /// of each is timed at start-up) and fp32 elsewhere; or fp32, or bf16 (bf16 matmuls and KV
    /// cache; fp32 master weights, norms, softmaxes, losses and attention under training).
    #[arg(long)]
    pub dtype: Option<DtypeChoice>,
}

impl Compute {
    /// The precision to compute in on `device` for a model of `params` parameters (`auto` when
    /// none was asked for).
    pub fn precision(&self, device: tch::Device, params: usize) -> Precision {
        self.dtype.unwrap_or_default().resolve(device, params)
    }
}

/// Parameters of the model in a checkpoint directory (0 when it cannot be read: the command that
/// loads it says why).
use commands::params_of;

/// aligngym: a gym for LLM alignment algorithms. Define a task once; compare PPO, DPO and more on it
/// under the same budget, prompts and evaluation, against a gold reward the agents never see.
#[derive(Parser)]
#[command(name = "aligngym", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the registered environments (id, what a good completion is, reward range and kind).
    Envs,
    /// Check an environment against the API contract; exits non-zero on a violation.
    CheckEnv(CheckEnvArgs),
    /// Train the base policy (tokenizer + supervised fine-tuning) on an env's corpus or a text file.
    Sft(SftArgs),
    /// Print completions sampled from a checkpoint.
    Sample(SampleArgs),
    /// Sample completions from a generator policy and label pairs with the env's oracle (JSONL).
    Prefs(PrefsArgs),
    /// Train a Bradley–Terry reward model on preference pairs.
    TrainRm(TrainRmArgs),
    /// Train an agent from a policy checkpoint, with the shared evaluation; writes a run directory.
    Train(TrainArgs),
    /// Run a sweep spec (TOML): envs × agents × hyperparameter grid × seeds, with shared stages.
    Sweep(SweepArgs),
    /// What of a sweep folder is finished, running, failed or pending (and its Slurm jobs).
    Status(StatusArgs),
    /// Draw the figures of a sweep folder (PNG and SVG in <DIR>/plots).
    Plot(PlotArgs),
    /// Write <DIR>/report.md and report.html: the measured answer (and the verdict of the spec's
    /// decision rule) to the claim the sweep covers.
    Report(ReportArgs),
    /// The default comparison: SFT, on-policy preferences, a reward model, then PPO on the gold
    /// reward, PPO on the reward model and DPO on the same pairs, 3 seeds each; CSV, plots, report.
    Compare(CompareArgs),
    /// Every claim sweep (src/sweeps/, each with its decision rule), shared stages built once;
    /// one report with a verdict per claim × task: report.md, report.html, verdicts.csv.
    Claims(ClaimsArgs),
    /// Evaluate a policy on an env's held-out prompts against a reference (default: itself).
    Eval(EvalArgs),
    /// Print the device, run forward/backward and sampling on CUDA and compare with CPU.
    GpuCheck,
    /// Time the fixed workloads W1–W4 (median after warm-up) against the machine's matmul peak.
    Bench(BenchArgs),
    /// Import a GGUF model (llama.cpp's format) as a Hugging Face checkpoint directory: weights
    /// dequantised to fp32, tokenizer.json built from the file's vocabulary, its chat template.
    Import(ImportArgs),
}

/// The arguments of `aligngym import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The .gguf file (Llama or Qwen2 architecture; F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
    /// and K-quant tensors).
    pub file: PathBuf,
    /// Output checkpoint directory (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out (never the input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
}

/// The arguments of `aligngym check-env`.
#[derive(clap::Args)]
pub struct CheckEnvArgs {
    /// Environment id, e.g. sentiment-v0.
    pub id: String,
}

/// The arguments of `aligngym sft`.
#[derive(clap::Args)]
pub struct SftArgs {
    /// Environment whose corpus generator provides the training text.
    #[arg(long, required_unless_present = "corpus")]
    pub env: Option<String>,
    /// A text file with one example per line, instead of an env's corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Output checkpoint directory (model.safetensors, config.json, tokenizer.json, sft_log.csv).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Optimiser steps (default: the env's recommended count, else 600).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Model size.
    #[arg(long, value_enum, default_value_t = ModelSize::Tiny)]
    pub size: ModelSize,
    /// Seed for the corpus, initialisation and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// The arguments of `aligngym sample`.
#[derive(clap::Args)]
pub struct SampleArgs {
    /// Policy checkpoint directory.
    #[arg(long)]
    pub policy: PathBuf,
    /// Prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Number of completions.
    #[arg(short = 'n', long, default_value_t = 4)]
    pub n: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Most new tokens per completion.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// The arguments of `aligngym prefs`.
#[derive(clap::Args)]
pub struct PrefsArgs {
    /// Environment id.
    #[arg(long)]
    pub env: String,
    /// Generator policy checkpoint (π_sft for on-policy data, any other for off-policy).
    #[arg(long)]
    pub policy: PathBuf,
    /// Number of pairs to write.
    #[arg(long, default_value_t = 512)]
    pub pairs: usize,
    /// Completions per prompt; every two form a pair (4 gives 6 pairs, as in the DPO paper).
    #[arg(long, default_value_t = 4)]
    pub per_prompt: usize,
    /// Oracle temperature τ (0 = always the better completion).
    #[arg(long, default_value_t = OracleConfig::default().temperature)]
    pub oracle_temperature: f32,
    /// Probability that the oracle's label is flipped (simulated rater noise).
    #[arg(long, default_value_t = 0.0)]
    pub flip_rate: f32,
    /// Keep pairs whose completions have equal gold reward (labelled by a coin flip); by default
    /// they are dropped, as raters would say "no preference".
    #[arg(long)]
    pub keep_ties: bool,
    /// Multi-turn envs: where a pair's two conversations part. `start`: at the first assistant
    /// turn (independent conversations); `turn`: after the first t turns of a conversation
    /// sampled first, t uniform over its turns, so the pair says which turn made the difference.
    #[arg(long, default_value_t = Branching::Turn)]
    pub branch: Branching,
    /// Output JSONL file.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Seed for prompts, sampling and labels.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// The arguments of `aligngym train-rm`.
#[derive(clap::Args)]
pub struct TrainRmArgs {
    /// Preference JSONL (`prompt`, `chosen`, `rejected`).
    #[arg(long)]
    pub prefs: PathBuf,
    /// Policy checkpoint whose trunk initialises the reward model.
    #[arg(long)]
    pub init: PathBuf,
    /// Output reward-model directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Override a hyperparameter (learning_rate, batch_size, epochs, heldout_fraction, max_grad_norm).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Seed for the split and the batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

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
}

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

/// The arguments of `aligngym status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// A sweep output folder.
    pub dir: PathBuf,
}

/// The arguments of `aligngym plot`.
#[derive(clap::Args)]
pub struct PlotArgs {
    /// A sweep output folder.
    pub dir: PathBuf,
}

/// The arguments of `aligngym report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// A sweep output folder.
    pub dir: PathBuf,
}

/// The arguments of `aligngym compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Environment id.
    #[arg(long, default_value = "sentiment-v0")]
    pub env: String,
    /// Output folder.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not empty (never when it is, holds or sits inside an
    /// input, the current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Seeds per agent.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Runs executed at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Multiply updates and preference pairs (for GPU-sized runs).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    #[command(flatten)]
    pub compute: Compute,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The arguments of `aligngym claims`.
#[derive(clap::Args)]
pub struct ClaimsArgs {
    /// Output folder (one sweep folder per claim, the shared stages, the report); an existing
    /// claims folder resumes.
    #[arg(long, default_value = "claims-results")]
    pub out: PathBuf,
    /// Replace `--out` when it exists and is not a claims folder (never when it is or holds the
    /// current directory or /).
    #[arg(long)]
    pub overwrite: bool,
    /// Multiply every claim's updates, SFT steps and preference pairs (e.g. 4 on a GPU).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Seeds 0..N for every claim, instead of each spec's own (5).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// Only these envs, for every claim (comma-separated), instead of each spec's own.
    #[arg(long, value_delimiter = ',')]
    pub envs: Option<Vec<String>>,
    /// Only these claims (comma-separated names, e.g. `dpo-cheaper,dpo-frontier`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Runs executed at once (each with one libtorch thread when > 1).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    #[command(flatten)]
    pub compute: Compute,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// The arguments of `aligngym eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Environment id.
    #[arg(long)]
    pub env: String,
    /// Policy checkpoint.
    #[arg(long)]
    pub policy: PathBuf,
    /// Reference policy checkpoint (for KL and win rate).
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
    /// Seed of the evaluation's sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
}

/// The arguments of `aligngym bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model size: tiny (vocab 512, 4×128) or small (vocab 4096, 6×256).
    #[arg(long, value_enum, default_value_t = ModelSize::Tiny)]
    pub size: ModelSize,
    #[command(flatten)]
    pub compute: Compute,
    /// Timed repetitions per workload (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only these workloads (comma-separated, e.g. `W5,W6`); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<crate::bench::Workload>,
}

/// The whole command line as a library function: parse `std::env::args()`, run the command, print
/// any error as one line, and return the exit code. A binary of the user's own that registers its
/// tasks (`aligngym::envs::register`) and then calls this has every command for them:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     // aligngym::envs::register(std::sync::Arc::new(MyTask::new())).unwrap();
///     aligngym::cli::main()
/// }
/// ```
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// [`main`] with explicit arguments (the first is the program name).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print and succeed; usage errors exit 2, as clap's do.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    aligngym_agents::lm::device::keep_freed_memory();
    // A panic is a bug of ours, not the user's: one line and a hint, no backtrace, exit 1.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error ({}{at}); please report it with the command you ran",
            msg.replace('\n', " ")
        );
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli.cmd))) {
        Ok(Ok(())) => {
            if let Some(n) = aligngym_agents::lm::device::take_dtype_notice() {
                eprintln!("{n}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            // A bad value on the command line is a usage error, as clap's own are (exit 2).
            if matches!(e, AgentError::Config { .. }) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Envs => cmd_envs(),
        Cmd::CheckEnv(a) => cmd_check_env(a),
        Cmd::Import(a) => cmd_import(a),
        Cmd::Sft(a) => cmd_sft(a),
        Cmd::Sample(a) => cmd_sample(a),
        Cmd::Prefs(a) => cmd_prefs(a),
        Cmd::TrainRm(a) => cmd_train_rm(a),
        Cmd::Train(a) => cmd_train(a),
        Cmd::Sweep(a) => cmd_sweep(a),
        Cmd::Plot(a) => cmd_plot(a),
        Cmd::Report(a) => cmd_report(a),
        Cmd::Status(a) => cmd_status(a),
        Cmd::Compare(a) => cmd_compare(a),
        Cmd::Claims(a) => cmd_claims(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::GpuCheck => cmd_gpu_check(),
        Cmd::Bench(a) => cmd_bench(a),
    }
}

/// `aligngym envs`.
fn cmd_envs() -> Result<()> {
    println!(
        "{:<16} {:<14} {:<12} description",
        "id", "reward range", "feedback"
    );
    for t in tasks() {
        let (lo, hi) = t.gold().range();
        println!(
            "{:<16} {:<14} {:<12} {} ({})",
            t.id(),
            format!("[{lo}, {hi}]"),
            format!("{:?}", t.feedback()),
            t.description(),
            t.reward_kind()
        );
    }
    Ok(())
}

/// `aligngym import`.
fn cmd_import(args: ImportArgs) -> Result<()> {
    let ImportArgs {
        file,
        out,
        overwrite,
    } = args;
    commands::check_out(&out, &[("FILE", file.as_path())], overwrite, |_| false)?;
    let r = aligngym_agents::lm::gguf::import(&file, &out)?;
    let types: Vec<String> = r.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let c = &r.config;
    println!(
        "import: {} model, {} layers, width {}, {} heads ({} key/value), vocab {} ({} parameters); tensors {}; checkpoint in {}",
        c.family,
        c.n_layer,
        c.n_embd,
        c.n_head,
        c.kv_heads(),
        r.vocab,
        c.num_params(),
        types.join(", "),
        out.display()
    );
    Ok(())
}

/// `aligngym check-env`.
fn cmd_check_env(args: CheckEnvArgs) -> Result<()> {
    let CheckEnvArgs { id } = args;
    let codec = Arc::new(aligngym_envs::ByteCodec);
    // The token-level env (for outside agents) and the turn-level one (what the agents train on).
    check_env(|| make(&id, codec.clone(), TextEnvConfig::default()))?;
    let t = task(&id)?;
    check_chat_env(t.clone())?;
    println!(
        "{id}: check_env passed (token level, and turn level with up to {} turn(s))",
        t.max_turns().max(1)
    );
    Ok(())
}

/// `aligngym sft`.
fn cmd_sft(args: SftArgs) -> Result<()> {
    let SftArgs {
        env,
        corpus,
        out,
        steps,
        size,
        seed,
        compute,
        overwrite,
    } = args;
    let dev = compute.device.resolve()?;
    let dtype = compute.precision(
        dev,
        size.config(SftConfig::default().vocab_size).num_params(),
    );
    let inputs: Vec<(&str, &Path)> = corpus.iter().map(|c| ("--corpus", c.as_path())).collect();
    commands::check_out(&out, &inputs, overwrite, |_| false)?;
    let mut cfg = SftConfig::default();
    let text = match (&corpus, &env) {
        (Some(p), _) => commands::read_corpus(p)?,
        (None, Some(id)) => {
            let t = task(id)?;
            cfg.steps = t.sft_steps();
            t.corpus(cfg.corpus_size, seed)
        }
        (None, None) => return Err(AgentError::config("env", "give --env ID or --corpus FILE")),
    };
    if let Some(s) = steps {
        cfg.steps = s;
    }
    cfg.dtype = dtype;
    let rows = commands::run_sft(&text, size, &cfg, seed, dev, &out, false)?;
    let last = rows.last().map_or(f64::NAN, |r| r.loss);
    println!(
        "sft: {} steps, final loss {last:.4} nats/token; checkpoint in {}",
        rows.len(),
        out.display()
    );
    Ok(())
}

/// `aligngym sample`.
fn cmd_sample(args: SampleArgs) -> Result<()> {
    let SampleArgs {
        policy,
        prompt,
        n,
        temperature,
        top_k,
        top_p,
        max_new_tokens,
        seed,
        compute,
    } = args;
    let dev = compute.device.resolve()?;
    let p =
        LmPolicy::load(&policy, dev)?.with_precision(compute.precision(dev, params_of(&policy)));
    let cfg = SamplingConfig {
        temperature,
        top_k,
        top_p,
        max_new_tokens,
    };
    for (i, c) in commands::sample_texts(&p, &prompt, n, &cfg, seed)?
        .iter()
        .enumerate()
    {
        println!("[{i}] {prompt}{c}");
    }
    Ok(())
}

/// `aligngym prefs`.
fn cmd_prefs(args: PrefsArgs) -> Result<()> {
    let PrefsArgs {
        env,
        policy,
        pairs,
        per_prompt,
        oracle_temperature,
        flip_rate,
        keep_ties,
        branch,
        out,
        seed,
        compute,
        overwrite,
    } = args;
    let dev = compute.device.resolve()?;
    let t = task(&env)?;
    commands::check_out(&out, &[("--policy", &policy)], overwrite, |_| false)?;
    let p =
        LmPolicy::load(&policy, dev)?.with_precision(compute.precision(dev, params_of(&policy)));
    let oracle = OracleConfig {
        temperature: oracle_temperature,
        flip_rate,
    };
    let sampling = SamplingConfig {
        max_new_tokens: t.max_new_tokens(),
        ..Default::default()
    };
    let (data, queries) = commands::build_prefs(
        &p,
        t.clone(),
        pairs,
        per_prompt,
        oracle,
        sampling,
        &policy.display().to_string(),
        !keep_ties,
        branch,
        seed,
    )?;
    write_pairs(&out, &data)?;
    println!(
        "prefs: {} pairs ({queries} oracle queries) written to {}",
        data.len(),
        out.display()
    );
    Ok(())
}

/// `aligngym train-rm`.
fn cmd_train_rm(args: TrainRmArgs) -> Result<()> {
    let TrainRmArgs {
        prefs,
        init,
        out,
        sets,
        seed,
        compute,
        overwrite,
    } = args;
    let dev = compute.device.resolve()?;
    let dtype = compute.precision(dev, params_of(&init));
    commands::check_out(
        &out,
        &[("--prefs", &prefs), ("--init", &init)],
        overwrite,
        |_| false,
    )?;
    let mut cfg = RmConfig::default();
    cfg = crate::spec::apply_overrides(
        &cfg,
        &sets,
        |v, k| v.get(k).map(|_| vec![k.to_string()]),
        |v| {
            v.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        },
    )?;
    cfg.validate()?;
    let pairs = aligngym_envs::read_pairs(&prefs)?;
    let p = LmPolicy::load(&init, dev)?.with_precision(dtype);
    let r = commands::train_rm(&p, &pairs, &cfg, seed, &out, false)?;
    let held = match r.heldout_accuracy {
        Some(a) => format!("{a:.3}"),
        None => "none (no pair held out: too few pairs for heldout_fraction)".into(),
    };
    println!(
        "train-rm: {} train / {} held-out pairs; pairwise accuracy train {:.3}, held-out {held}; offset {:.3}; saved to {}",
        r.pairs.0, r.pairs.1, r.train_accuracy, r.offset, out.display()
    );
    Ok(())
}

/// `aligngym train`.
fn cmd_train(args: TrainArgs) -> Result<()> {
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
        Some(dir) => {
            let path = dir.join("config.json");
            let mut spec = read_train_spec(&path)?;
            // Runs recorded before inputs were stored absolute: relative to the working directory
            // they were started from, when it is this one, else to the run folder.
            let base = if spec.policy.exists() {
                std::env::current_dir().map_err(|e| AgentError::io(".", e))?
            } else {
                std::path::absolute(&dir).map_err(|e| AgentError::io(&dir, e))?
            };
            spec.anchor_inputs(&base);
            if let Some(bad) = sets.iter().find(|s| !s.starts_with("run.")) {
                return Err(AgentError::config(
                    bad.clone(),
                    "with --resume only run.* keys may be changed",
                ));
            }
            spec.apply_sets(&sets)?;
            if let Some(d) = dtype {
                spec.run.dtype = d;
            }
            // This process owns the run: finish a commit a kill interrupted before reading it.
            aligngym_agents::lm::fsio::recover(&dir.join("state"))?;
            let done = runner::committed_step(&dir)?.unwrap_or(0);
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
            let json =
                serde_json::to_string_pretty(&spec).map_err(|e| AgentError::Data(e.to_string()))?;
            commands::write_atomic(&path, &json)?;
            (spec, dir, true)
        }
        None => {
            let out = out.unwrap_or_default();
            let mut spec = match from_file {
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
            spec.apply_sets(&sets)?;
            if let Some(d) = dtype {
                spec.run.dtype = d;
            }
            let cwd = std::env::current_dir().map_err(|e| AgentError::io(".", e))?;
            spec.anchor_inputs(&cwd);
            let mut inputs: Vec<(&str, &Path)> = vec![("--policy", &spec.policy)];
            // A spec file is an input too: `--out` must not replace the folder that holds it.
            if let Some(f) = &spec_file {
                inputs.push(("--spec", f));
            }
            if let Some(p) = &spec.prefs {
                inputs.push(("--prefs", p));
            }
            if let RewardSpec::Rm(d) = &spec.reward {
                inputs.push(("--reward", d));
            }
            commands::check_out(&out, &inputs, overwrite, |_| false)?;
            (spec, out, false)
        }
    };
    let t = task(&spec.env)?;
    let (mut agent, start) = build_agent(&spec, t.clone(), dev)?;
    let ev = Evaluator::new(t.clone(), &start, spec.eval.clone(), spec.seed)?;
    let existed = dir.exists();
    let was_empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    let mut started = || -> Result<Vec<crate::metrics::MetricRow>> {
        if !resuming {
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
            let json =
                serde_json::to_string_pretty(&spec).map_err(|e| AgentError::Data(e.to_string()))?;
            commands::write_atomic(&dir.join("config.json"), &json)?;
        }
        let pb = commands::progress(spec.run.updates, &spec.agent().to_string(), quiet);
        let rows = runner::run(
            agent.as_mut(),
            &ev,
            &spec.run,
            &dir,
            resuming,
            |step, rows| {
                pb.set_position(step);
                if let Some(r) = rows.iter().find(|r| r.metric == metric::EVAL_GOLD_REWARD) {
                    pb.set_message(format!("gold {:.3}", r.value));
                }
            },
        );
        pb.finish_and_clear();
        rows
    };
    let rows = match started() {
        Ok(rows) => rows,
        // A new run that failed before its first commit holds nothing worth keeping: `--out` is
        // left as it was found (absent, or empty). A run with committed steps is kept to resume.
        Err(e) => {
            if !resuming && was_empty && matches!(runner::committed_step(&dir), Ok(None)) {
                commands::discard(&dir, existed);
            }
            return Err(e);
        }
    };
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
    Ok(())
}

/// `aligngym sweep`.
fn cmd_sweep(args: SweepArgs) -> Result<()> {
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
    let slurm_opts = slurm.slurm.then_some(crate::slurm::SlurmOptions {
        partition: slurm.partition,
        gpus_per_run: slurm.gpus_per_run,
        cpus_per_run: slurm.cpus_per_run,
        time: slurm.time,
        max_parallel: slurm.max_parallel,
        sbatch_args: slurm.sbatch_arg,
        dry_run: slurm.dry_run,
        device,
    });
    if let Some(o) = &slurm_opts {
        o.validate()?;
    }
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
        let s = crate::sweep::load_sweep_dir(&dir)?;
        if merge {
            return merge_sweep(&s, &dir);
        }
        let part = part.unwrap_or_default();
        let n = run_sweep(
            &s,
            &dir,
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
        return Ok(());
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
    // One precision for every run, decided here (children never time matmuls of their own); a
    // spec's own `run.dtype` stands unless --dtype is given. Runs on a cluster's GPU nodes decide
    // `auto` there, not on the machine that submits.
    // Without a policy of its own, a sweep trains the tiny model its SFT stage makes.
    let params = s.policy.as_deref().map_or_else(
        || {
            ModelSize::Tiny
                .config(SftConfig::default().vocab_size)
                .num_params()
        },
        params_of,
    );
    let on_gpu_nodes = slurm_opts.as_ref().is_some_and(|o| o.gpus_per_run > 0);
    if !(on_gpu_nodes && compute.dtype.is_none()) {
        let d = compute.precision(device.resolve()?, params);
        for a in &mut s.agents {
            if compute.dtype.is_some() || !a.set.contains_key("run.dtype") {
                a.set.insert("run.dtype".into(), d.to_string().into());
            }
        }
    }
    let shard = match shard {
        None => None,
        Some(t) => Some(parse_shard(&t)?),
    };
    let out = match (out, from_dir) {
        (Some(o), _) => o,
        (None, true) => spec.clone(),
        (None, false) => PathBuf::from("results").join(&s.name),
    };
    // A sweep folder is resumable: re-running the same sweep into it finishes what is missing.
    let inputs: Vec<(&str, &Path)> = if from_dir {
        vec![]
    } else {
        vec![("SPEC", &spec)]
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
    Ok(())
}

/// `aligngym sweep --slurm`.
fn submit_sweep(s: &SweepSpec, out: &Path, o: &crate::slurm::SlurmOptions) -> Result<()> {
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

/// `aligngym status`.
fn cmd_status(args: StatusArgs) -> Result<()> {
    print!("{}", crate::slurm::status(&args.dir)?);
    Ok(())
}

/// `aligngym plot`.
fn cmd_plot(args: PlotArgs) -> Result<()> {
    let PlotArgs { dir } = args;
    for f in crate::plot::plot_sweep(&dir)? {
        println!("{}", f.display());
    }
    Ok(())
}

/// `aligngym report`.
fn cmd_report(args: ReportArgs) -> Result<()> {
    let ReportArgs { dir } = args;
    crate::plot::plot_sweep(&dir)?;
    crate::report::write_report(&dir)?;
    println!("{}", dir.join("report.md").display());
    Ok(())
}

/// `aligngym compare`.
fn cmd_compare(args: CompareArgs) -> Result<()> {
    let CompareArgs {
        env,
        out,
        seeds,
        jobs,
        scale,
        compute,
        quiet,
        overwrite,
    } = args;
    let device = compute.device;
    // The comparison's models are the tiny size, trained here.
    let tiny = ModelSize::Tiny
        .config(SftConfig::default().vocab_size)
        .num_params();
    let dtype = compute.precision(device.resolve()?, tiny);
    commands::check_out(&out, &[], overwrite, |d| d.join("sweep.json").exists())?;
    let mut s = crate::sweep::compare_spec(&env, seeds, scale)?;
    for a in &mut s.agents {
        a.set.insert("run.dtype".into(), dtype.to_string().into());
    }
    run_sweep(
        &s,
        &out,
        &SweepOptions {
            jobs,
            shard: None,
            device,
            threads: None,
            part: Part::All,
            quiet,
        },
    )?;
    crate::plot::plot_sweep(&out)?;
    crate::report::write_report(&out)?;
    print!("{}", crate::report::summary_table(&out)?);
    println!(
        "CSV: {0}/runs.csv, {0}/metrics.csv; plots: {0}/plots; report: {0}/report.md, {0}/report.html",
        out.display()
    );
    Ok(())
}

/// `aligngym claims`.
fn cmd_claims(args: ClaimsArgs) -> Result<()> {
    let ClaimsArgs {
        out,
        overwrite,
        scale,
        seeds,
        envs,
        only,
        jobs,
        compute,
        quiet,
    } = args;
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(AgentError::config("--scale", "expected a finite value > 0"));
    }
    let device = compute.device;
    let tiny = ModelSize::Tiny
        .config(SftConfig::default().vocab_size)
        .num_params();
    let dtype = compute.precision(device.resolve()?, tiny);
    commands::check_out(&out, &[], overwrite, |d| d.join("claims.json").exists())?;
    let o = crate::claims::ClaimsOptions {
        scale,
        seeds,
        envs,
        only,
        jobs,
        device,
        dtype: dtype.to_string(),
        quiet,
    };
    // Checked before anything is written.
    crate::claims::claim_specs(&o)?;
    // Finished runs are found by id (env, agent, grid point, seed), which says nothing of the
    // scale or precision they ran at: a folder resumes only at its own.
    let record = serde_json::json!({ "scale": scale, "dtype": o.dtype });
    let path = out.join("claims.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let old: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| AgentError::Data(format!("{}: {e}", path.display())))?;
        if old != record {
            return Err(AgentError::config(
                "--out",
                format!(
                    "{} holds claims run at {old}, not {record}: resume with the same --scale and --dtype, or choose a new --out",
                    out.display()
                ),
            ));
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| AgentError::io(&out, e))?;
    commands::write_atomic(&path, &format!("{record}\n"))?;
    let command: String = std::env::args().collect::<Vec<_>>().join(" ");
    let r = crate::claims::run_claims(&out, &o, &command)?;
    println!("{}", crate::verdict::markdown_table(&r.verdicts));
    println!(
        "report: {0}/report.md, {0}/report.html; verdicts: {0}/verdicts.csv",
        out.display()
    );
    if !r.failed.is_empty() {
        return Err(AgentError::Data(format!(
            "{} claim(s) have failed runs (their reports cover the runs that finished): {}",
            r.failed.len(),
            r.failed
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// `aligngym eval`.
fn cmd_eval(args: EvalArgs) -> Result<()> {
    let EvalArgs {
        env,
        policy,
        reference,
        seed,
        compute,
    } = args;
    let dev = compute.device.resolve()?;
    let dtype = compute.precision(dev, params_of(&policy));
    let t = task(&env)?;
    let p = LmPolicy::load(&policy, dev)?.with_precision(dtype);
    let r = match &reference {
        Some(d) => LmPolicy::load(d, dev)?.with_precision(dtype),
        None => p.duplicate(false)?,
    };
    let ev = Evaluator::new(t.clone(), &r, EvalConfig::default(), seed)?;
    for (k, v) in ev.evaluate(&p, None, None, 0)? {
        println!("{k:<24} {v:.4}");
    }
    Ok(())
}

/// `aligngym gpu-check`.
fn cmd_gpu_check() -> Result<()> {
    crate::commands::gpu_check()
}

/// `aligngym bench`.
fn cmd_bench(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        size,
        compute,
        repeats,
        json,
        workloads,
    } = args;
    let dev = compute.device.resolve()?;
    let params = size.config(size.bench_vocab()).num_params();
    let r = crate::bench::run_bench(
        size,
        dev,
        compute.precision(dev, params),
        repeats,
        &workloads,
    )?;
    print!("{}", crate::bench::format_report(&r));
    let peaks = aligngym_agents::lm::device::matmul_peaks(dev);
    println!(
        "--dtype auto picks {} here at this size (512³ matmul: bf16 {:.0} GFLOP/s, fp32 {:.0} GFLOP/s; bf16 from {} parameters where native)",
        DtypeChoice::Auto.resolve(dev, params),
        peaks.bf16,
        peaks.fp32,
        aligngym_agents::lm::device::BF16_MIN_PARAMS
    );
    if let Some(p) = json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| AgentError::Data(e.to_string()))?;
        commands::write_atomic(&p, &text)?;
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
