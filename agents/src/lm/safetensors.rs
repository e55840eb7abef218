//! Reading safetensors files with the checks every loader shares: a malformed file is one line
//! naming it, and a tensor holding NaN or infinity is refused. Below both the checkpoint loader
//! and the Hugging Face importer, which each read safetensors files.

use crate::{AgentError, Result};
use std::path::Path;
use tch::Tensor;

/// A checkpoint error naming `path`.
pub(crate) fn ck(path: &Path, msg: impl Into<String>) -> AgentError {
    AgentError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Read every tensor of a safetensors file; a malformed one (header, offsets, dtypes) is one line
/// naming the file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| {
        ck(
            path,
            format!("cannot read: {}", e.to_string().replace('\n', " ")),
        )
    })
}

/// Refuse a tensor holding NaN or infinity: weights that blew up must not be trained, sampled or
/// evaluated from as if they were a model.
pub fn finite(name: &str, t: &Tensor, source: &Path) -> Result<()> {
    let floating = matches!(
        t.kind(),
        tch::Kind::Float | tch::Kind::Double | tch::Kind::Half | tch::Kind::BFloat16
    );
    if floating && t.numel() > 0 && !bool::try_from(t.isfinite().all())? {
        return Err(ck(
            source,
            format!("tensor `{name}` holds NaN or infinite values"),
        ));
    }
    Ok(())
}
