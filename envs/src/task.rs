//! A task: everything that defines an alignment problem, independent of tokenizer and agent.

use crate::chat::Message;
use crate::reward::Rule;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the agents may learn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    /// The reward may be shown to agents (e.g. PPO on the gold reward).
    Reward,
    /// Agents see only the oracle's comparisons; the gold reward is for evaluation alone.
    PreferencesOnly,
}

/// Which prompt set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Prompts the agents train on.
    #[default]
    Train,
    /// Held-out prompts for the shared evaluation.
    Eval,
}

/// An alignment task: a corpus for SFT, prompts, and a gold reward.
///
/// A new task is one type implementing this trait plus a [`crate::registry::register`] call.
pub trait Task: Send + Sync {
    /// Registry id, e.g. `sentiment-v0`.
    fn id(&self) -> &str;
    /// What a good completion is, in one sentence (the README table row).
    fn description(&self) -> &str;
    /// What kind of reward the gold reward is (rule, oracle-only …), for listings.
    fn reward_kind(&self) -> &str;
    /// Whether agents may see the gold reward, or only comparisons.
    fn feedback(&self) -> Feedback;
    /// `n` SFT examples (prompt and completion as one text), varied, reproducible from `seed`.
    fn corpus(&self, n: usize, seed: u64) -> Vec<String>;
    /// The prompts of a split; train and eval never overlap.
    fn prompts(&self, split: Split) -> &[String];
    /// The gold reward, never shown to agents unless a run asks for it.
    fn gold(&self) -> Arc<dyn Rule>;
    /// A sensible completion-length limit in tokens for this task.
    fn max_new_tokens(&self) -> usize {
        24
    }
    /// SFT steps that make a good starting policy for this task with the tiny model.
    fn sft_steps(&self) -> usize {
        600
    }
    /// The env's answer to the policy's latest turn, for multi-turn tasks: `turns` is the
    /// conversation after the prompt (assistant turns and earlier replies alternating, the policy's
    /// last); `None` ends the episode. Single-turn tasks keep the default (end after one turn).
    /// Anything hidden (a secret number, a preference) is derived from the prompt, so the gold
    /// reward can score the transcript.
    fn reply(&self, _prompt: &str, _turns: &[Message]) -> Option<Message> {
        None
    }
    /// Most policy turns per episode; an episode still going after them is truncated. Default 1.
    fn max_turns(&self) -> usize {
        1
    }
}

/// A task's prompts, split into train and eval sets that never overlap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptSplit {
    train: Vec<String>,
    eval: Vec<String>,
}

impl PromptSplit {
    /// Split a pool (every `eval_every`-th prompt is held out), dropping duplicates so the two sets
    /// never overlap.
    pub fn from_pool(pool: Vec<String>, eval_every: usize) -> Self {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<String> = pool
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect();
        let (mut train, mut eval) = (Vec::new(), Vec::new());
        for (i, p) in unique.into_iter().enumerate() {
            if i % eval_every == eval_every - 1 {
                eval.push(p)
            } else {
                train.push(p)
            }
        }
        Self { train, eval }
    }

    /// Given sets (a data file's own split column); the caller keeps them apart.
    pub fn from_sets(train: Vec<String>, eval: Vec<String>) -> Self {
        Self { train, eval }
    }

    /// [`PromptSplit::from_pool`] after a seeded shuffle of the pool. A pool built in nested
    /// loops has a period (game × range, customer × topic), and holding out every k-th prompt of
    /// it would hold out one value of the inner loop only: an eval split of range-16 games alone.
    pub fn shuffled(mut pool: Vec<String>, eval_every: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        for i in (1..pool.len()).rev() {
            pool.swap(i, rng.random_range(0..=i));
        }
        Self::from_pool(pool, eval_every)
    }

    /// The prompts of one split.
    pub fn get(&self, split: Split) -> &[String] {
        match split {
            Split::Train => &self.train,
            Split::Eval => &self.eval,
        }
    }
}

/// SplitMix64: a seed for stream `index` derived from `seed`, so per-env RNGs are independent and
/// reproducible whatever the thread schedule.
pub fn derive_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index.wrapping_add(1)));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
