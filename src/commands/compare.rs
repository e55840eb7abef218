//! `aligngym compare`: The default comparison (`make run`).

use crate::commands::{self, Compute, ModelSize};
use crate::sweep::{run_sweep, Part, SweepOptions};
use aligngym_agents::stages::sft::SftConfig;
use aligngym_agents::Result;
use std::path::PathBuf;

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
    /// Seeds per agent (4 is the fewest at which the verdicts' tests can decide at 95%).
    #[arg(long, default_value_t = 4)]
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

/// `aligngym compare`.
pub fn run(args: CompareArgs) -> Result<()> {
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
    let metrics = crate::plot::read_sweep_metrics(&out)?;
    println!("Verdicts (PPO on a reward model vs DPO on the same pairs):\n");
    print!(
        "{}",
        crate::verdict::markdown_table(&crate::verdict::evaluate_all(&s, &metrics))
    );
    println!();
    print!("{}", crate::report::summary_table(&out)?);
    println!(
        "CSV: {0}/runs.csv, {0}/metrics.csv; plots: {0}/plots; report: {0}/report.md, {0}/report.html",
        out.display()
    );
    Ok(())
}
