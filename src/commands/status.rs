//! `aligngym status`: What of a sweep folder is finished, running, failed or pending.

use aligngym_agents::Result;
use std::path::PathBuf;

/// The arguments of `aligngym status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// A sweep output folder.
    pub dir: PathBuf,
}

/// `aligngym status`.
pub fn run(args: StatusArgs) -> Result<()> {
    print!("{}", crate::slurm::status(&args.dir)?);
    Ok(())
}
