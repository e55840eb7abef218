//! The stages a run consumes before its agent trains: supervised fine-tuning, preference pairs
//! sampled and labelled from a generator policy, the learned reward model, and the tokenised pair
//! batches that the reward model and the DPO family share.

pub mod pairs;
pub mod preferences;
pub mod reward_model;
pub mod sft;
