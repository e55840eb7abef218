//! `aligngym bench`: Time the fixed workloads, and the GPU check.

use crate::commands::{self, Compute, ModelSize};
use aligngym_agents::lm::device::DtypeChoice;
use aligngym_agents::{AgentError, Result};
use std::path::PathBuf;

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

/// `aligngym gpu-check`.
pub fn gpu_check() -> Result<()> {
    crate::commands::gpu_check()
}

/// `aligngym bench`.
pub fn run(args: BenchArgs) -> Result<()> {
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
    println!(
        "--dtype auto picks {} here at this size (native bf16: {}, from the CPU's identification or the device; bf16 from {} parameters where native)",
        DtypeChoice::Auto.resolve(dev, params),
        if aligngym_agents::lm::device::native_bf16(dev) { "yes" } else { "no" },
        aligngym_agents::lm::device::BF16_MIN_PARAMS
    );
    if let Some(p) = json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| AgentError::Data(e.to_string()))?;
        commands::write_atomic(&p, &text)?;
    }
    Ok(())
}
