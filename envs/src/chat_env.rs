//! The turn-level environment: Gymnasium semantics where an action is the policy's whole turn and
//! the observation is the conversation so far. Every task runs in it — a single-turn task ends after
//! the first turn; a multi-turn task answers through [`Task::reply`] until it ends the episode or
//! the turn limit truncates it. The rollout collector (agents crate) steps these envs in a
//! [`crate::VecEnv`]; the token-level [`crate::TextEnv`] stays for outside agents.

use crate::chat::{transcript, Message};
use crate::env::{Env, Info, RewardSource, Step};
use crate::reward::Rule;
use crate::task::{Split, Task};
use crate::{EnvError, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Settings of a turn-level env.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChatEnvConfig {
    /// Which prompts episodes draw from. Default train.
    pub split: Split,
    /// Where the end-of-episode reward comes from. Default the gold reward.
    pub reward: RewardSource,
    /// Policy turns before truncation; 0 means the task's own limit. Default 0.
    pub max_turns: usize,
}

impl Default for ChatEnvConfig {
    fn default() -> Self {
        Self {
            split: Split::Train,
            reward: RewardSource::Gold,
            max_turns: 0,
        }
    }
}

/// One conversation with a task.
pub struct ChatEnv {
    task: Arc<dyn Task>,
    gold: Arc<dyn Rule>,
    cfg: ChatEnvConfig,
    max_turns: usize,
    rng: StdRng,
    started: bool,
    done: bool,
    prompt_index: usize,
    /// The prompt message followed by the turns.
    conversation: Vec<Message>,
    policy_turns: usize,
}

impl ChatEnv {
    /// A turn-level env for `task`.
    pub fn new(task: Arc<dyn Task>, cfg: ChatEnvConfig) -> Result<Self> {
        if task.prompts(cfg.split).is_empty() {
            return Err(EnvError::InvalidConfig {
                field: "split",
                msg: format!("task {} has no {:?} prompts", task.id(), cfg.split),
            });
        }
        let max_turns = if cfg.max_turns == 0 {
            task.max_turns().max(1)
        } else {
            cfg.max_turns
        };
        Ok(Self {
            gold: task.gold(),
            task,
            cfg,
            max_turns,
            rng: StdRng::seed_from_u64(0),
            started: false,
            done: true,
            prompt_index: 0,
            conversation: Vec::new(),
            policy_turns: 0,
        })
    }

    /// The task this env runs.
    pub fn task(&self) -> &Arc<dyn Task> {
        &self.task
    }

    /// The prompt of the current episode.
    pub fn prompt(&self) -> &str {
        self.conversation.first().map_or("", |m| m.content.as_str())
    }

    /// Start an episode on prompt `index` of the split (evaluation and preference data pick their
    /// prompts; Gymnasium passes this as a reset option). The env's RNG is not advanced.
    pub fn reset_to(&mut self, index: usize) -> Result<(Vec<Message>, Info)> {
        let n = self.task.prompts(self.cfg.split).len();
        if index >= n {
            return Err(EnvError::InvalidConfig {
                field: "prompt_index",
                msg: format!("{index} is outside the {n} {:?} prompts", self.cfg.split),
            });
        }
        self.started = true;
        self.prompt_index = index;
        let p = self.task.prompts(self.cfg.split)[index].clone();
        self.conversation = vec![Message::user(p)];
        self.policy_turns = 0;
        self.done = false;
        Ok((self.conversation.clone(), self.info()))
    }

    /// Cut the running episode short (the collector does when a reply would overflow the model's
    /// context): it ends as truncated, scored like any other end, with `note` in its info.
    pub fn truncate(&mut self, note: &str) -> Result<Step<Vec<Message>>> {
        if self.done {
            return Err(EnvError::ResetNeeded);
        }
        let mut s = self.finish(false, true)?;
        s.info.note = Some(note.to_string());
        Ok(s)
    }

    fn info(&self) -> Info {
        Info {
            prompt_index: self.prompt_index,
            ..Info::default()
        }
    }

    fn finish(&mut self, terminated: bool, truncated: bool) -> Result<Step<Vec<Message>>> {
        self.done = true;
        let prompt = self.prompt().to_string();
        let completion = transcript(&self.conversation[1..]);
        let gold = self.gold.score(&prompt, &completion);
        let mut info = self.info();
        let reward = info.end(self.cfg.reward, prompt, completion, gold);
        Ok(Step {
            obs: self.conversation.clone(),
            reward,
            terminated,
            truncated,
            info,
        })
    }
}

impl Env for ChatEnv {
    type Obs = Vec<Message>;
    type Action = String;

    fn reset(&mut self, seed: Option<u64>) -> Result<(Vec<Message>, Info)> {
        if let Some(s) = seed {
            self.rng = StdRng::seed_from_u64(s);
        } else if !self.started {
            self.rng = StdRng::seed_from_u64(0);
        }
        let n = self.task.prompts(self.cfg.split).len();
        let i = self.rng.random_range(0..n);
        self.reset_to(i)
    }

    fn step(&mut self, action: String) -> Result<Step<Vec<Message>>> {
        if self.done {
            return Err(EnvError::ResetNeeded);
        }
        self.conversation.push(Message::assistant(action));
        self.policy_turns += 1;
        let reply = self
            .task
            .reply(self.prompt(), &self.conversation[1..])
            .filter(|_| self.task.max_turns() > 1);
        match reply {
            None => self.finish(true, false),
            Some(_) if self.policy_turns >= self.max_turns => self.finish(false, true),
            Some(m) => {
                self.conversation.push(m);
                Ok(Step {
                    obs: self.conversation.clone(),
                    reward: 0.0,
                    terminated: false,
                    truncated: false,
                    info: self.info(),
                })
            }
        }
    }

    fn reward_range(&self) -> (f32, f32) {
        self.cfg.reward.range(self.gold.as_ref())
    }

    fn sample_action(&self, rng: &mut StdRng) -> String {
        // A few printable words or numbers: enough to exercise replies, parse errors and limits.
        const WORDS: &[&str] = &[" 1", " 7", " 12", " yes", " no", " calc(2*3)", " ?", " the"];
        let n = rng.random_range(1..4);
        (0..n)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect()
    }

    fn max_episode_steps(&self) -> Option<usize> {
        Some(self.max_turns)
    }
}
