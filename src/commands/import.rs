//! `aligngym import`: Import a GGUF model as a Hugging Face checkpoint directory.

use crate::commands::{self};
use aligngym_agents::Result;
use std::path::PathBuf;

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

/// `aligngym import`.
pub fn run(args: ImportArgs) -> Result<()> {
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
