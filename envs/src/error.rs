//! The one error type of the environment crate.

use std::path::PathBuf;

/// Everything that can go wrong on the environment side.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// `step` was called on an episode that already terminated or was truncated
    /// (Gymnasium's `ResetNeeded`).
    #[error(
        "ResetNeeded: the episode has ended (terminated or truncated); call reset() before step()"
    )]
    ResetNeeded,
    /// No environment is registered under this id.
    #[error("unknown env id `{id}`; registered ids: {known}")]
    UnknownEnv { id: String, known: String },
    /// A configuration field holds a value outside its allowed range.
    #[error("invalid config field `{field}`: {msg}")]
    InvalidConfig { field: &'static str, msg: String },
    /// A line of a preference-data file could not be read as a pair.
    #[error("{}:{line}: {msg}", path.display())]
    BadData {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// An input/output error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `check_env` found a violation of the API contract.
    #[error("check_env: rule `{rule}` violated: {msg}")]
    Check { rule: &'static str, msg: String },
    /// A reward function could not score its input.
    #[error("reward `{name}`: {msg}")]
    Reward { name: String, msg: String },
}

/// Result alias of the environment crate.
pub type Result<T> = std::result::Result<T, EnvError>;

impl EnvError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EnvError::Io {
            path: path.into(),
            source,
        }
    }
}
