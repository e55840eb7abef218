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
    #[error(
        "unknown env id `{}`; registered ids: {known} (or task:PATH, a task file)",
        one_line(id)
    )]
    UnknownEnv { id: String, known: String },
    /// A configuration field holds a value outside its allowed range.
    #[error("invalid config field `{field}`: {}", one_line(msg))]
    InvalidConfig { field: &'static str, msg: String },
    /// A line of a preference-data file could not be read as a pair.
    #[error("{}:{line}: {}", one_line(&path.display().to_string()), one_line(msg))]
    BadData {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// An input/output error on a named file.
    #[error("{}: {source}", one_line(&path.display().to_string()))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `check_env` found a violation of the API contract.
    #[error("check_env: rule `{rule}` violated: {}", one_line(msg))]
    Check { rule: &'static str, msg: String },
    /// A reward function could not score its input.
    #[error("reward `{}`: {}", one_line(name), one_line(msg))]
    Reward { name: String, msg: String },
}

/// `s` with its control characters escaped (`\n` → `\\n`): every error is one line, whatever
/// strings from the user's files it quotes.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
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
