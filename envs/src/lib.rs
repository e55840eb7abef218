//! # aligngym-envs
//!
//! The environment side of aligngym: Gymnasium-style text environments ([`Env`], [`VecEnv`]), reward
//! functions ([`RewardFn`], rule rewards and combinators), the simulated preference oracle
//! ([`PreferenceOracle`]), preference data in the common JSONL format, the task registry with
//! `check_env`, and the built-in tasks. It does not link libtorch: token ids are `u32`, text is `&str`,
//! rewards are `f32`.

pub mod chat;
pub mod chat_env;
pub mod check;
pub mod codec;
pub mod env;
pub mod error;
pub mod oracle;
pub mod prefs;
pub mod registry;
pub mod reward;
pub mod rules;
pub mod task;
pub mod task_file;
pub mod tasks;
pub mod testing;
pub mod vec_env;

pub use chat::{Message, Role};
pub use chat_env::{ChatEnv, ChatEnvConfig};
pub use check::{check_chat_env, check_env};
pub use codec::{ByteCodec, TextCodec};
pub use env::{Env, Info, RewardSource, Step, TextEnv, TextEnvConfig};
pub use error::{one_line, EnvError, Result};
pub use oracle::{BradleyTerryOracle, OracleConfig, Preference, PreferenceOracle};
pub use prefs::{
    read_pairs, read_sft, read_unpaired, write_pairs, ConversationExample, ConversationPair,
    PrefReader, PrefWriter, PreferencePair, SftRecord, UnpairedExample,
};
pub use registry::{built_in, make, register, task, tasks};
pub use reward::{Clip, RewardFn, Rule, RunningNorm, Scale, WeightedSum};
pub use task::{derive_seed, Feedback, PromptSplit, Split, Task};
pub use task_file::{TaskFile, VerifierKind, TASK_PREFIX};
pub use vec_env::{AutoresetMode, VecEnv, VecStep};
