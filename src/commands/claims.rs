//! `aligngym claims`: Every claim sweep with its verdicts.

use crate::commands::{self, Compute, ModelSize};
use aligngym_agents::stages::sft::SftConfig;
use aligngym_agents::{AgentError, Result};
use std::path::PathBuf;

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
    /// Run nothing: print the verdict table of this `verdicts.csv` (a claims folder's, or
    /// `docs/claims/verdicts.csv`) as `claims` prints it, for the README.
    #[arg(long, value_name = "FILE")]
    pub table: Option<PathBuf>,
}

/// `aligngym claims`.
pub fn run(args: ClaimsArgs) -> Result<()> {
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
        table,
    } = args;
    if let Some(file) = table {
        let verdicts = crate::claims::read_verdicts_csv(&file)?;
        print!("{}", crate::verdict::markdown_table(&verdicts));
        return Ok(());
    }
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
