//! `check_env`: verifies that an environment follows the API contract (Gymnasium's env checker, for
//! our `Env`). Each violation names the rule it breaks.

use crate::env::Env;
use crate::{EnvError, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

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
            while Some(a) == env.terminal_action() && tries < 100 {
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
        if !last.2 || flags.len() != max {
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
        let s = a.step(t)?;
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
