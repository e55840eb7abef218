//! `aligngym plot`: Draw the figures of a sweep folder.

use aligngym_agents::Result;
use std::path::PathBuf;

/// The arguments of `aligngym plot`.
#[derive(clap::Args)]
pub struct PlotArgs {
    /// A sweep output folder.
    pub dir: PathBuf,
}

/// `aligngym plot`.
pub fn run(args: PlotArgs) -> Result<()> {
    let PlotArgs { dir } = args;
    for f in crate::plot::plot_sweep(&dir)? {
        println!("{}", f.display());
    }
    Ok(())
}
