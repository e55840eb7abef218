//! The Gymnasium-style environment API, and the text environment built on a [`Task`].

use crate::codec::TextCodec;
use crate::reward::Rule;
use crate::task::{Split, Task};
use crate::{EnvError, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Extra information returned by `reset` and `step` (Gymnasium's `info` dict, typed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    /// Index of the episode's prompt in its split.
    pub prompt_index: usize,
    /// Number of prompt tokens at the start of the observation.
    pub prompt_len: usize,
    /// At the end of an episode: the prompt text.
    pub prompt: Option<String>,
    /// At the end of an episode: the completion text (special tokens removed).
    pub completion: Option<String>,
    /// At the end of an episode: the gold reward, for evaluation (agents must not train on it
    /// unless the run says so).
    pub gold_reward: Option<f32>,
    /// The reward is to be filled in by an external scorer (see [`RewardSource::External`]).
    pub needs_score: bool,
    /// With `AutoresetMode::SameStep`: the observation that ended the episode.
    pub final_obs: Option<Vec<u32>>,
    /// Why an episode was cut short when it was not the task's own limit (e.g. "the env's reply
    /// overflowed the context").
    pub note: Option<String>,
}

impl Info {
    /// Fill in the end of an episode scored `gold`; returns the env's reward for it (the gold
    /// reward, or 0 with `needs_score` when an external scorer gives it).
    pub(crate) fn end(
        &mut self,
        source: RewardSource,
        prompt: String,
        completion: String,
        gold: f32,
    ) -> f32 {
        self.gold_reward = Some(gold);
        self.prompt = Some(prompt);
        self.completion = Some(completion);
        match source {
            RewardSource::Gold => gold,
            RewardSource::External => {
                self.needs_score = true;
                0.0
            }
        }
    }
}

/// The result of one `step` (Gymnasium's 5-tuple).
#[derive(Debug, Clone, PartialEq)]
pub struct Step<O> {
    /// The observation after the action.
    pub obs: O,
    /// The reward for this transition.
    pub reward: f32,
    /// The task ended (for text: EOS was emitted).
    pub terminated: bool,
    /// A limit cut the episode off (for text: the token limit); bootstrap values only here.
    pub truncated: bool,
    /// Extra information.
    pub info: Info,
}

/// A Gymnasium-style environment. Seeding happens only through `reset`.
pub trait Env: Send {
    /// What the agent sees.
    type Obs: Clone + PartialEq + std::fmt::Debug + Send + 'static;
    /// What the agent does.
    type Action: Clone + PartialEq + std::fmt::Debug + Send + Sync;
    /// Start a new episode; `Some(seed)` reseeds the env's RNG, `None` continues it.
    fn reset(&mut self, seed: Option<u64>) -> Result<(Self::Obs, Info)>;
    /// Take one action. Stepping an ended episode is [`EnvError::ResetNeeded`].
    fn step(&mut self, action: Self::Action) -> Result<Step<Self::Obs>>;
    /// The documented range of the reward.
    fn reward_range(&self) -> (f32, f32);
    /// A uniformly random valid action (Gymnasium's `action_space.sample()`).
    fn sample_action(&self, rng: &mut StdRng) -> Self::Action;
    /// An action that terminates the episode when there is one (for text: EOS).
    fn terminal_action(&self) -> Option<Self::Action> {
        None
    }
    /// The most steps an episode can take before truncation, if bounded.
    fn max_episode_steps(&self) -> Option<usize> {
        None
    }
}

/// Where the end-of-episode reward of a [`TextEnv`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    /// The task's gold reward, computed inside the env (on a rayon worker in a `VecEnv`).
    #[default]
    Gold,
    /// Reward 0 from the env with `info.needs_score`; a scorer (e.g. a learned reward model) fills it
    /// in, batched on the calling thread (`VecEnv::step_scored`).
    External,
}

impl RewardSource {
    /// The range of an env's step rewards: 0 mid-episode, then the gold reward (`gold`'s range) or
    /// an external scorer's (unbounded).
    pub fn range(self, gold: &dyn Rule) -> (f32, f32) {
        match self {
            RewardSource::Gold => {
                let (lo, hi) = gold.range();
                (lo.min(0.0), hi.max(0.0))
            }
            RewardSource::External => (f32::NEG_INFINITY, f32::INFINITY),
        }
    }
}

/// Settings of a text environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TextEnvConfig {
    /// Token limit of a completion; reaching it truncates. 0 means the task's own default.
    pub max_new_tokens: usize,
    /// Which prompts episodes draw from.
    pub split: Split,
    /// Where the reward comes from.
    pub reward: RewardSource,
}

impl Default for TextEnvConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 0,
            split: Split::Train,
            reward: RewardSource::Gold,
        }
    }
}

/// A text-generation episode: the observation is the prompt's token ids followed by the tokens
/// generated so far; an action is the next token id; EOS terminates, `max_new_tokens` truncates; the
/// reward is 0 until the end, then the score of the completion.
pub struct TextEnv {
    task: Arc<dyn Task>,
    codec: Arc<dyn TextCodec>,
    gold: Arc<dyn Rule>,
    max_new_tokens: usize,
    cfg: TextEnvConfig,
    rng: StdRng,
    prompt_index: usize,
    obs: Vec<u32>,
    prompt_len: usize,
    generated: usize,
    started: bool,
    done: bool,
}

impl TextEnv {
    /// An env for `task` with token ids from `codec`.
    pub fn new(task: Arc<dyn Task>, codec: Arc<dyn TextCodec>, cfg: TextEnvConfig) -> Result<Self> {
        let max_new_tokens = if cfg.max_new_tokens == 0 {
            task.max_new_tokens()
        } else {
            cfg.max_new_tokens
        };
        if task.prompts(cfg.split).is_empty() {
            return Err(EnvError::InvalidConfig {
                field: "split",
                msg: format!("task {} has no {:?} prompts", task.id(), cfg.split),
            });
        }
        if codec.eos_id() == codec.pad_id() {
            return Err(EnvError::InvalidConfig {
                field: "codec",
                msg: "PAD and EOS must be different ids".into(),
            });
        }
        let gold = task.gold();
        Ok(Self {
            task,
            codec,
            gold,
            max_new_tokens,
            cfg,
            rng: StdRng::seed_from_u64(0),
            prompt_index: 0,
            obs: Vec::new(),
            prompt_len: 0,
            generated: 0,
            started: false,
            done: true,
        })
    }
    /// The task this env runs.
    pub fn task(&self) -> &Arc<dyn Task> {
        &self.task
    }
    /// The completion-length limit in tokens.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }

    fn info(&self) -> Info {
        Info {
            prompt_index: self.prompt_index,
            prompt_len: self.prompt_len,
            ..Info::default()
        }
    }
}

impl Env for TextEnv {
    type Obs = Vec<u32>;
    type Action = u32;

    fn reset(&mut self, seed: Option<u64>) -> Result<(Vec<u32>, Info)> {
        if let Some(s) = seed {
            self.rng = StdRng::seed_from_u64(s);
        } else if !self.started {
            // Gymnasium leaves an unseeded first reset to entropy; we stay reproducible instead.
            self.rng = StdRng::seed_from_u64(0);
        }
        self.started = true;
        let prompts = self.task.prompts(self.cfg.split);
        self.prompt_index = self.rng.random_range(0..prompts.len());
        self.obs = self.codec.encode(&prompts[self.prompt_index]);
        self.prompt_len = self.obs.len();
        self.generated = 0;
        self.done = false;
        Ok((self.obs.clone(), self.info()))
    }

    fn step(&mut self, action: u32) -> Result<Step<Vec<u32>>> {
        if self.done {
            return Err(EnvError::ResetNeeded);
        }
        if action as usize >= self.codec.vocab_size() {
            return Err(EnvError::InvalidConfig {
                field: "action",
                msg: format!(
                    "token id {action} outside the vocabulary 0..{}",
                    self.codec.vocab_size()
                ),
            });
        }
        self.obs.push(action);
        self.generated += 1;
        let terminated = action == self.codec.eos_id();
        let truncated = !terminated && self.generated >= self.max_new_tokens;
        let mut info = self.info();
        let mut reward = 0.0;
        if terminated || truncated {
            self.done = true;
            let prompt = self.task.prompts(self.cfg.split)[self.prompt_index].clone();
            let completion = self.codec.decode(&self.obs[self.prompt_len..]);
            let gold = self.gold.score(&prompt, &completion);
            reward = info.end(self.cfg.reward, prompt, completion, gold);
        }
        Ok(Step {
            obs: self.obs.clone(),
            reward,
            terminated,
            truncated,
            info,
        })
    }

    fn reward_range(&self) -> (f32, f32) {
        self.cfg.reward.range(self.gold.as_ref())
    }

    fn sample_action(&self, rng: &mut StdRng) -> u32 {
        rng.random_range(0..self.codec.vocab_size() as u32)
    }

    fn terminal_action(&self) -> Option<u32> {
        Some(self.codec.eos_id())
    }

    fn max_episode_steps(&self) -> Option<usize> {
        Some(self.max_new_tokens)
    }
}
