//! The one error type of the agents crate.

use aligngym_envs::one_line;
use std::path::PathBuf;

/// Everything that can go wrong on the learning side.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An error from libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// An error from the environment side (rewards, preference data, registry).
    #[error(transparent)]
    Env(#[from] aligngym_envs::EnvError),
    /// An input/output error on a named file.
    #[error("{}: {source}", one_line(&path.display().to_string()))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A checkpoint directory is missing, incomplete or inconsistent.
    #[error("checkpoint {}: {}", one_line(&path.display().to_string()), one_line(msg))]
    Checkpoint { path: PathBuf, msg: String },
    /// The tokenizer could not be trained, saved or loaded.
    #[error("tokenizer: {}", one_line(.0))]
    Tokenizer(String),
    /// A configuration field holds a bad value.
    #[error("invalid config field `{}`: {}", one_line(field), one_line(msg))]
    Config { field: String, msg: String },
    /// A requested device cannot be used.
    #[error("device: {}", one_line(.0))]
    Device(String),
    /// A loss, reward or gradient became NaN or infinite.
    #[error("non-finite `{metric}` at step {step}; stopping (the last good checkpoint is kept)")]
    NonFinite { metric: String, step: u64 },
    /// Bad input data (e.g. an empty corpus).
    #[error("{}", one_line(.0))]
    Data(String),
}

/// Result alias of the agents crate.
pub type Result<T> = std::result::Result<T, AgentError>;

impl AgentError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }
    /// `Ok` when `v` is finite and > 0, else a bad config field (learning rates, temperatures,
    /// clip ranges, norms: the values every agent's `validate` checks).
    pub fn positive(field: &str, v: f64) -> Result<()> {
        if v > 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(AgentError::config(field, "expected a finite value > 0"))
        }
    }
    /// A bad config field.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        AgentError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}
