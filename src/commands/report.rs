//! `aligngym report`: Write the report of a sweep folder.

use aligngym_agents::Result;
use std::path::PathBuf;

/// The arguments of `aligngym report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// A sweep output folder.
    pub dir: PathBuf,
}

/// `aligngym report`.
pub fn run(args: ReportArgs) -> Result<()> {
    let ReportArgs { dir } = args;
    crate::plot::plot_sweep(&dir)?;
    crate::report::write_report(&dir)?;
    println!("{}", dir.join("report.md").display());
    Ok(())
}
