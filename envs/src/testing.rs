//! Test doubles: a tiny counting env, and envs broken on purpose so `check_env` can be shown to
//! catch each rule.

use crate::env::{Env, Info, Step};
use crate::{EnvError, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which rule a [`FlawedEnv`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// None: a correct env.
    None,
    /// Keeps stepping after the episode ended instead of failing with `ResetNeeded`.
    IgnoresResetNeeded,
    /// Draws its start state from a global counter rather than from the seed.
    UnseededReset,
    /// Pays a reward above its documented range.
    RewardOutOfRange,
    /// Reports terminated and truncated together at the limit.
    BothFlags,
    /// Never ends an episode.
    NeverEnds,
}

/// A counter env: obs = `[start, steps]`; action 0 terminates; the limit is 5 steps; reward 1 at
/// the end, in range [0, 1]. `flaw` breaks one rule on purpose.
pub struct FlawedEnv {
    flaw: Flaw,
    rng: StdRng,
    state: [u32; 2],
    done: bool,
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl FlawedEnv {
    /// An env with the given flaw.
    pub fn new(flaw: Flaw) -> Self {
        Self {
            flaw,
            rng: StdRng::seed_from_u64(0),
            state: [0, 0],
            done: true,
        }
    }
}

impl Env for FlawedEnv {
    type Obs = [u32; 2];
    type Action = u32;
    fn reset(&mut self, seed: Option<u64>) -> Result<([u32; 2], Info)> {
        if let Some(s) = seed {
            self.rng = StdRng::seed_from_u64(s);
        }
        let start = if self.flaw == Flaw::UnseededReset {
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        } else {
            self.rng.random_range(0..100)
        };
        self.state = [start, 0];
        self.done = false;
        Ok((self.state, Info::default()))
    }
    fn step(&mut self, action: u32) -> Result<Step<[u32; 2]>> {
        if self.done && self.flaw != Flaw::IgnoresResetNeeded {
            return Err(EnvError::ResetNeeded);
        }
        self.state[1] += 1;
        let limit = if self.flaw == Flaw::NeverEnds {
            u32::MAX
        } else {
            5
        };
        let at_limit = self.state[1] >= limit;
        let terminated = action == 0 || (self.flaw == Flaw::BothFlags && at_limit);
        let truncated = (!terminated || self.flaw == Flaw::BothFlags) && at_limit;
        let end = terminated || truncated;
        self.done = end;
        let reward = match (end, self.flaw) {
            (true, Flaw::RewardOutOfRange) => 2.0,
            (true, _) => 1.0,
            _ => 0.0,
        };
        Ok(Step {
            obs: self.state,
            reward,
            terminated,
            truncated,
            info: Info::default(),
        })
    }
    fn reward_range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn sample_action(&self, rng: &mut StdRng) -> u32 {
        rng.random_range(0..4)
    }
    fn terminal_action(&self) -> Option<u32> {
        Some(0)
    }
    fn max_episode_steps(&self) -> Option<usize> {
        Some(5)
    }
}
