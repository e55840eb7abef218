//! `check_env`: verifies that an environment follows the API contract (Gymnasium's env checker, for
//! our `Env`). Each violation names the rule it breaks.

use crate::chat::{Message, Role};
use crate::chat_env::{ChatEnv, ChatEnvConfig};
use crate::env::Env;
use crate::task::Task;
use crate::{EnvError, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::Arc;

fn fail(rule: &'static str, msg: impl Into<String>) -> EnvError {
    EnvError::Check {
        rule,
        msg: msg.into(),
    }
}

/// Episodes longer than this are reported as never ending.
const EPISODE_CAP: usize = 10_000;

/// Run one episode with actions from `rng` (the terminal action is never chosen when `avoid_end`),
/// checking the per-step rules; returns the steps' (reward, terminated, truncated) and observations.
#[allow(clippy::type_complexity)]
fn episode<E: Env>(
    env: &mut E,
    seed: u64,
    rng_seed: u64,
    avoid_end: bool,
) -> Result<(Vec<(f32, bool, bool)>, Vec<E::Obs>)> {
    let (obs0, _) = env.reset(Some(seed))?;
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let (lo, hi) = env.reward_range();
    let mut flags = Vec::new();
    let mut obs = vec![obs0];
    loop {
        let mut a = env.sample_action(&mut rng);
        if avoid_end {
            let mut tries = 0;
            while Some(&a) == env.terminal_action().as_ref() && tries < 100 {
                a = env.sample_action(&mut rng);
                tries += 1;
            }
        }
        let s = env.step(a)?;
        if !s.reward.is_finite() {
            return Err(fail(
                "reward_finite",
                format!("step {} returned reward {}", flags.len(), s.reward),
            ));
        }
        if s.reward < lo || s.reward > hi {
            return Err(fail(
                "reward_range",
                format!(
                    "reward {} outside the documented range [{lo}, {hi}]",
                    s.reward
                ),
            ));
        }
        if s.terminated && s.truncated {
            return Err(fail(
                "terminated_xor_truncated",
                "a step reported both terminated and truncated",
            ));
        }
        flags.push((s.reward, s.terminated, s.truncated));
        obs.push(s.obs);
        if s.terminated || s.truncated {
            return Ok((flags, obs));
        }
        if flags.len() >= EPISODE_CAP {
            return Err(fail(
                "episode_ends",
                format!("no termination or truncation within {EPISODE_CAP} steps"),
            ));
        }
    }
}

/// Check `make()`'s envs: seeded determinism, the terminated/truncated rules, `ResetNeeded`, the
/// reward range, and (where the env declares them) its episode limit and terminal action.
pub fn check_env<E: Env>(make: impl Fn() -> Result<E>) -> Result<()> {
    let mut a = make()?;
    let mut b = make()?;
    for seed in [0u64, 1, 12345] {
        let ea = episode(&mut a, seed, seed + 7, true)?;
        let eb = episode(&mut b, seed, seed + 7, true)?;
        if ea.1 != eb.1 || ea.0 != eb.0 {
            return Err(fail(
                "seeded_determinism",
                format!("two envs reset with seed {seed} and given the same actions diverged"),
            ));
        }
        // Same env, same seed again: reset must reseed, not continue the old stream.
        let again = episode(&mut a, seed, seed + 7, true)?;
        if again.1 != ea.1 {
            return Err(fail(
                "reset_reseeds",
                format!("reset(Some({seed})) twice on one env gave different episodes"),
            ));
        }
    }
    // Running out the limit must truncate, not terminate, at exactly the declared step.
    let (flags, _) = episode(&mut a, 3, 4, true)?;
    let last = flags.last().copied().unwrap_or((0.0, false, false));
    if let Some(max) = a.max_episode_steps() {
        // An env may end on its own before the limit (a single-turn chat); it may not run past the
        // limit, nor truncate anywhere else.
        let ok = if last.1 {
            flags.len() <= max
        } else {
            last.2 && flags.len() == max
        };
        if !ok {
            return Err(fail("truncation_at_limit", format!("expected truncation at step {max}, got an end at step {} (terminated={}, truncated={})", flags.len(), last.1, last.2)));
        }
    }
    if let Err(EnvError::ResetNeeded) = a.step(a.sample_action(&mut StdRng::seed_from_u64(0))) {
    } else {
        return Err(fail(
            "reset_needed",
            "stepping an ended episode must fail with ResetNeeded",
        ));
    }
    if let Some(t) = a.terminal_action() {
        a.reset(Some(5))?;
        let s = a.step(t.clone())?;
        if !s.terminated || s.truncated {
            return Err(fail(
                "terminal_action_terminates",
                format!(
                    "the terminal action gave terminated={}, truncated={}",
                    s.terminated, s.truncated
                ),
            ));
        }
        if !matches!(a.step(t), Err(EnvError::ResetNeeded)) {
            return Err(fail(
                "reset_needed",
                "stepping a terminated episode must fail with ResetNeeded",
            ));
        }
    }
    Ok(())
}

/// Check a task at the turn level: the [`Env`] rules above on its [`ChatEnv`], plus the rules of a
/// conversation — the observation starts with the prompt as a user message; after a turn that the
/// env answers, the observation is the previous one, the policy's turn as an assistant message, and
/// one reply that is not the assistant's; the episode ends by the task's turn limit at the latest.
pub fn check_chat_env(task: Arc<dyn Task>) -> Result<()> {
    let make = || ChatEnv::new(task.clone(), ChatEnvConfig::default());
    check_env(make)?;
    let mut env = make()?;
    for seed in 0..8u64 {
        let (mut obs, _) = env.reset(Some(seed))?;
        if obs.len() != 1 || obs[0].role != Role::User {
            return Err(fail(
                "prompt_observation",
                "reset must observe exactly the prompt, as one user message",
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        for turn in 1.. {
            let action = env.sample_action(&mut rng);
            let s = env.step(action.clone())?;
            let mut expect = obs.clone();
            expect.push(Message::assistant(action));
            if s.obs.len() < expect.len() || s.obs[..expect.len()] != expect[..] {
                return Err(fail(
                    "turn_in_observation",
                    format!("turn {turn}: the observation must extend the last one by the policy's turn"),
                ));
            }
            if s.terminated || s.truncated {
                if s.info.gold_reward.is_none_or(|g| !g.is_finite()) {
                    return Err(fail(
                        "gold_reward_at_end",
                        format!("turn {turn}: an ended episode must carry a finite gold reward"),
                    ));
                }
                break;
            }
            if s.obs.len() != expect.len() + 1 || s.obs[expect.len()].role == Role::Assistant {
                return Err(fail(
                    "reply_in_observation",
                    format!("turn {turn}: a continuing episode must add exactly one env reply"),
                ));
            }
            if turn >= task.max_turns().max(1) {
                return Err(fail(
                    "truncation_at_limit",
                    format!("still going after the turn limit {}", task.max_turns()),
                ));
            }
            obs = s.obs;
        }
    }
    Ok(())
}
