//! The `aligngym` command line: the arguments of every command and the dispatch to its body,
//! one file per command in `src/commands/`; callable as a library function ([`main`], [`run`]) so
//! a user's own binary with its own tasks has every command.

use crate::commands::{
    bench, check_env, claims, compare, envs, episodes, eval, import, merge, plot, prefs, report,
    sample, sft, status, sweep, train, train_rm,
};
use aligngym_agents::AgentError;
use aligngym_agents::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
    CheckEnv(check_env::CheckEnvArgs),
    /// Train the base policy (tokenizer + supervised fine-tuning) on an env's corpus or a text file.
    Sft(sft::SftArgs),
    /// Print completions sampled from a checkpoint.
    Sample(sample::SampleArgs),
    /// Play a policy through an env's episodes and show each transcript with its rewards.
    Episodes(episodes::EpisodesArgs),
    /// Sample completions from a generator policy and label pairs with the env's oracle (JSONL).
    Prefs(prefs::PrefsArgs),
    /// Train a Bradley–Terry reward model on preference pairs.
    TrainRm(train_rm::TrainRmArgs),
    /// Train an agent from a policy checkpoint, with the shared evaluation; writes a run directory.
    Train(train::TrainArgs),
    /// Run a sweep spec (TOML): envs × agents × hyperparameter grid × seeds, with shared stages.
    Sweep(sweep::SweepArgs),
    /// What of a sweep folder is finished, running, failed or pending (and its Slurm jobs).
    Status(status::StatusArgs),
    /// Draw the figures of a sweep folder (PNG and SVG in <DIR>/plots).
    Plot(plot::PlotArgs),
    /// Write <DIR>/report.md and report.html: the measured answer (and the verdict of the spec's
    /// decision rule) to the claim the sweep covers.
    Report(report::ReportArgs),
    /// The default comparison: SFT, on-policy preferences, a reward model, then PPO on the gold
    /// reward, PPO on the reward model and DPO on the same pairs, 3 seeds each; CSV, plots, report.
    Compare(compare::CompareArgs),
    /// Every claim sweep (src/sweeps/, each with its decision rule), shared stages built once;
    /// one report with a verdict per claim × task: report.md, report.html, verdicts.csv.
    Claims(claims::ClaimsArgs),
    /// Evaluate a policy on an env's held-out prompts against a reference (default: itself).
    Eval(eval::EvalArgs),
    /// Print the device, run forward/backward and sampling on CUDA and compare with CPU.
    GpuCheck,
    /// Time the fixed workloads W1–W4 (median after warm-up) against the machine's matmul peak.
    Bench(bench::BenchArgs),
    /// Import a GGUF model (llama.cpp's format) as a Hugging Face checkpoint directory: weights
    /// dequantised to fp32, tokenizer.json built from the file's vocabulary, its chat template.
    Import(import::ImportArgs),
    /// Fold a LoRA adapter (PEFT's layout: one PEFT saved, or a run's) into its base and write the
    /// merged model in the Hugging Face layout.
    Merge(merge::MergeArgs),
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
        Cmd::Envs => envs::run(),
        Cmd::CheckEnv(a) => check_env::run(a),
        Cmd::Import(a) => import::run(a),
        Cmd::Merge(a) => merge::run(a),
        Cmd::Sft(a) => sft::run(a),
        Cmd::Sample(a) => sample::run(a),
        Cmd::Episodes(a) => episodes::run(a),
        Cmd::Prefs(a) => prefs::run(a),
        Cmd::TrainRm(a) => train_rm::run(a),
        Cmd::Train(a) => train::run(a),
        Cmd::Sweep(a) => sweep::run(a),
        Cmd::Plot(a) => plot::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Status(a) => status::run(a),
        Cmd::Compare(a) => compare::run(a),
        Cmd::Claims(a) => claims::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::GpuCheck => bench::gpu_check(),
        Cmd::Bench(a) => bench::run(a),
    }
}
