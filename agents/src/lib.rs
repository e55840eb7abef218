//! # aligngym-agents
//!
//! The learning side of aligngym, on libtorch: the byte-level BPE [`tokenizer::Tokenizer`], the
//! GPT-2-style [`model::Gpt`] with value and reward heads, batched KV-cache [`sampling`], SFT,
//! checkpoints, and the agents.

pub mod checkpoint;
pub mod device;
pub mod error;
pub mod model;
pub mod optim;
pub mod sampling;
pub mod sft;
pub mod tokenizer;

pub use device::DeviceChoice;
pub use error::{AgentError, Result};
pub use model::{Gpt, GptConfig};
pub use tokenizer::Tokenizer;

#[cfg(test)]
mod tests;
