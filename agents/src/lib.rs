//! # aligngym-agents
//!
//! The learning side of aligngym, on libtorch: the byte-level BPE [`tokenizer::Tokenizer`], the
//! GPT-2-style [`model::Gpt`] with value and reward heads, batched KV-cache [`sampling`], SFT,
//! checkpoints, the pure [`losses`], and the agents ([`ppo::PpoAgent`], [`grpo::GrpoAgent`],
//! [`rloo::RlooAgent`], [`dpo::DpoAgent`]) with the
//! learned [`reward_model::RewardModel`].

pub mod agent;
pub mod algorithm;
pub mod best_of_n;
pub mod chat_template;
pub mod checkpoint;
pub mod device;
pub mod dpo;
pub mod error;
pub mod fsio;
pub mod gguf;
pub mod grpo;
pub mod hf;
pub mod kto;
pub mod losses;
pub mod model;
pub mod online_dpo;
pub mod optim;
pub mod pairs;
pub mod policy;
pub mod ppo;
pub mod preferences;
pub mod reinforce_pp;
pub mod reward_model;
pub mod rloo;
pub mod rollout;
pub mod sampling;
pub mod sft;
pub mod tokenizer;

pub use agent::{Agent, Budget, Metrics, Resumable, RunnableAgent, Selection};
pub use algorithm::{Algorithm, BuildContext, Learns};
pub use best_of_n::{BestOfNAgent, BestOfNConfig};
pub use device::{DeviceChoice, Precision};
pub use dpo::{DpoAgent, DpoConfig};
pub use error::{AgentError, Result};
pub use grpo::{GrpoAgent, GrpoConfig, GrpoLoss};
pub use kto::{KtoAgent, KtoConfig};
pub use losses::{DpoLoss, KlEstimator};
pub use model::{Activation, Family, Gpt, GptConfig};
pub use online_dpo::{Judge, OnlineDpoAgent, OnlineDpoConfig};
pub use policy::{ActorCritic, LmPolicy, Policy};
pub use ppo::{CriticKind, PpoAgent, PpoConfig, RewardSignal};
pub use reinforce_pp::{ReinforcePpAgent, ReinforcePpConfig};
pub use reward_model::{RewardModel, RmConfig, RmReport};
pub use rloo::{RlooAgent, RlooConfig};
pub use tokenizer::Tokenizer;

#[cfg(test)]
mod tests;
