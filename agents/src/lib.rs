//! # aligngym-agents
//!
//! The learning side of aligngym, on libtorch, in rooms that each know only the rooms below them
//! (`algorithms → online → agent/algorithm → stages → rollout → lm`; a test checks it):
//!
//! - [`lm`]: the language model and nothing else — [`lm::model::Gpt`] with its CPU decode
//!   kernels, KV-cache [`lm::sampling`], the [`lm::tokenizer::Tokenizer`], checkpoints, devices,
//!   the optimiser;
//! - [`rollout`]: the collector that drives a `VecEnv` with the policy, and what it scores with;
//! - [`losses`]: the loss math as pure functions with hand-worked tests;
//! - [`stages`]: what a run consumes before it trains — SFT, preference generation, the learned
//!   [`stages::reward_model::RewardModel`], tokenised pairs;
//! - [`agent`] and [`algorithm`]: what every agent and every algorithm provides;
//! - [`online`]: what the group-sampling online agents share;
//! - [`algorithms`]: one file per algorithm.

pub mod agent;
pub mod algorithm;
pub mod algorithms;
pub mod error;
pub mod lm;
pub mod losses;
pub mod metric;
pub mod online;
pub mod rollout;
pub mod scalars;
pub mod stages;

pub use agent::{Agent, Budget, Metrics, Resumable, RunnableAgent, Selection};
pub use algorithm::{Algorithm, BuildContext, Learns};
pub use algorithms::best_of_n::{BestOfNAgent, BestOfNConfig};
pub use algorithms::dpo::{DpoAgent, DpoConfig};
pub use algorithms::grpo::{GrpoAgent, GrpoConfig};
pub use algorithms::kto::{KtoAgent, KtoConfig};
pub use algorithms::online_dpo::{Judge, OnlineDpoAgent, OnlineDpoConfig};
pub use algorithms::ppo::{CriticKind, PpoAgent, PpoConfig};
pub use algorithms::reinforce_pp::{ReinforcePpAgent, ReinforcePpConfig};
pub use algorithms::rloo::{RlooAgent, RlooConfig};
pub use algorithms::{AgentConfig, AgentKind};
pub use error::{AgentError, Result};
pub use lm::device::{DeviceChoice, Precision};
pub use lm::model::{Activation, Family, Gpt, GptConfig};
pub use lm::policy::{ActorCritic, LmPolicy, Policy};
pub use lm::tokenizer::Tokenizer;
pub use losses::{DpoLoss, GrpoLoss, KlEstimator};
pub use rollout::RewardSignal;
pub use stages::reward_model::{RewardModel, RmConfig, RmReport};

#[cfg(test)]
mod architecture;
#[cfg(test)]
mod tests;
