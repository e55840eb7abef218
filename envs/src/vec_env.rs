//! N environments stepped together, on rayon workers or serially, with identical results.

use crate::env::{Env, Info, Step};
use crate::reward::RewardFn;
use crate::task::derive_seed;
use crate::{EnvError, Result};
use ndarray::Array1;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// What happens to a sub-env whose episode ended (Gymnasium 1.x names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AutoresetMode {
    /// The step after the end resets that env: its action is ignored and the reset observation is
    /// returned with reward 0 and both flags false (Gymnasium's default).
    #[default]
    NextStep,
    /// The env resets in the same step that ended it; the last observation is in `info.final_obs`.
    SameStep,
    /// No autoreset: stepping an ended env is `ResetNeeded`; call `reset_one`.
    Disabled,
}

/// Batched results of one `VecEnv::step`, arrays in env order.
#[derive(Debug, Clone, PartialEq)]
pub struct VecStep<O> {
    /// One observation per env.
    pub obs: Vec<O>,
    /// Rewards, `[N]`.
    pub rewards: Array1<f32>,
    /// Terminated flags, `[N]`.
    pub terminated: Array1<bool>,
    /// Truncated flags, `[N]`.
    pub truncated: Array1<bool>,
    /// One info per env.
    pub infos: Vec<Info>,
}

/// A vector of environments.
pub struct VecEnv<E: Env> {
    envs: Vec<E>,
    mode: AutoresetMode,
    parallel: bool,
    ended: Vec<bool>,
}

impl<E: Env> VecEnv<E> {
    /// Wrap `envs`; `parallel` steps them on rayon workers.
    pub fn new(envs: Vec<E>, mode: AutoresetMode, parallel: bool) -> Self {
        let n = envs.len();
        Self {
            envs,
            mode,
            parallel,
            ended: vec![false; n],
        }
    }
    /// Number of sub-envs.
    pub fn len(&self) -> usize {
        self.envs.len()
    }
    /// True when there are no sub-envs.
    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }
    /// The autoreset mode.
    pub fn mode(&self) -> AutoresetMode {
        self.mode
    }
    /// The sub-envs.
    pub fn envs(&self) -> &[E] {
        &self.envs
    }

    fn map<T: Send>(
        &mut self,
        f: impl Fn(usize, &mut E, bool) -> Result<T> + Sync + Send,
    ) -> Result<Vec<T>> {
        let ended = &self.ended;
        if self.parallel {
            self.envs
                .par_iter_mut()
                .enumerate()
                .map(|(i, e)| f(i, e, ended[i]))
                .collect()
        } else {
            self.envs
                .iter_mut()
                .enumerate()
                .map(|(i, e)| f(i, e, ended[i]))
                .collect()
        }
    }

    /// Reset every env; with `Some(seed)`, env i is seeded from `(seed, i)`.
    pub fn reset(&mut self, seed: Option<u64>) -> Result<(Vec<E::Obs>, Vec<Info>)> {
        let out = self.map(|i, e, _| e.reset(seed.map(|s| derive_seed(s, i as u64))))?;
        self.ended.iter_mut().for_each(|d| *d = false);
        Ok(out.into_iter().unzip())
    }

    /// Reset one env (for [`AutoresetMode::Disabled`]), continuing its RNG.
    pub fn reset_one(&mut self, i: usize) -> Result<(E::Obs, Info)> {
        let env = self.envs.get_mut(i).ok_or(EnvError::InvalidConfig {
            field: "index",
            msg: format!("no sub-env {i}"),
        })?;
        self.ended[i] = false;
        env.reset(None)
    }

    /// Reset every env with `f(i, env)` (e.g. to a chosen prompt), on the workers like `step`.
    pub fn reset_with(
        &mut self,
        f: impl Fn(usize, &mut E) -> Result<(E::Obs, Info)> + Sync + Send,
    ) -> Result<(Vec<E::Obs>, Vec<Info>)> {
        let out = self.map(|i, e, _| f(i, e))?;
        self.ended.iter_mut().for_each(|d| *d = false);
        Ok(out.into_iter().unzip())
    }

    /// Step only the envs given an action (`None` leaves an env as it is: an episode that has
    /// ended and waits for the rest of the batch); no autoreset.
    pub fn step_some(
        &mut self,
        actions: &[Option<E::Action>],
    ) -> Result<Vec<Option<Step<E::Obs>>>> {
        if actions.len() != self.envs.len() {
            return Err(EnvError::InvalidConfig {
                field: "actions",
                msg: format!("{} actions for {} envs", actions.len(), self.envs.len()),
            });
        }
        let steps = self.map(|i, e, _| actions[i].clone().map(|a| e.step(a)).transpose())?;
        for (d, s) in self.ended.iter_mut().zip(&steps) {
            if let Some(s) = s {
                *d = s.terminated || s.truncated;
            }
        }
        Ok(steps)
    }

    /// The sub-envs, mutably (to end an episode from outside, e.g. [`crate::ChatEnv::truncate`]).
    pub fn envs_mut(&mut self) -> &mut [E] {
        &mut self.envs
    }

    /// Step every env with its action.
    pub fn step(&mut self, actions: &[E::Action]) -> Result<VecStep<E::Obs>> {
        if actions.len() != self.envs.len() {
            return Err(EnvError::InvalidConfig {
                field: "actions",
                msg: format!("{} actions for {} envs", actions.len(), self.envs.len()),
            });
        }
        let mode = self.mode;
        let steps: Vec<Step<E::Obs>> = self.map(|i, e, was_ended| match (mode, was_ended) {
            (AutoresetMode::NextStep, true) => {
                let (obs, info) = e.reset(None)?;
                Ok(Step {
                    obs,
                    reward: 0.0,
                    terminated: false,
                    truncated: false,
                    info,
                })
            }
            (AutoresetMode::SameStep, _) => {
                let mut s = e.step(actions[i].clone())?;
                if s.terminated || s.truncated {
                    let (obs, info) = e.reset(None)?;
                    let final_obs = std::mem::replace(&mut s.obs, obs);
                    s.info.final_obs = obs_as_tokens(&final_obs);
                    s.info.prompt_index = info.prompt_index;
                    s.info.prompt_len = info.prompt_len;
                }
                Ok(s)
            }
            _ => e.step(actions[i].clone()),
        })?;
        if mode != AutoresetMode::SameStep {
            for (d, s) in self.ended.iter_mut().zip(&steps) {
                *d = s.terminated || s.truncated;
            }
        }
        let rewards = steps.iter().map(|s| s.reward).collect();
        let terminated = steps.iter().map(|s| s.terminated).collect();
        let truncated = steps.iter().map(|s| s.truncated).collect();
        let (obs, infos) = steps.into_iter().map(|s| (s.obs, s.info)).unzip();
        Ok(VecStep {
            obs,
            rewards,
            terminated,
            truncated,
            infos,
        })
    }

    /// Step, then fill in the rewards of the episodes that ended with `info.needs_score` using
    /// `scorer`, in one batch on the calling thread (learned reward models are not `Sync`).
    pub fn step_scored(
        &mut self,
        actions: &[E::Action],
        scorer: &dyn RewardFn,
    ) -> Result<VecStep<E::Obs>> {
        let mut out = self.step(actions)?;
        let idx: Vec<usize> = (0..out.infos.len())
            .filter(|&i| out.infos[i].needs_score)
            .collect();
        if idx.is_empty() {
            return Ok(out);
        }
        let prompts: Vec<&str> = idx
            .iter()
            .map(|&i| out.infos[i].prompt.as_deref().unwrap_or(""))
            .collect();
        let comps: Vec<&str> = idx
            .iter()
            .map(|&i| out.infos[i].completion.as_deref().unwrap_or(""))
            .collect();
        let scores = scorer.score_batch(&prompts, &comps)?;
        for (&i, s) in idx.iter().zip(scores) {
            out.rewards[i] = s;
            out.infos[i].needs_score = false;
        }
        Ok(out)
    }
}

/// The final observation as tokens, when the observation type is a token list.
fn obs_as_tokens<O: std::fmt::Debug + 'static>(o: &O) -> Option<Vec<u32>> {
    (o as &dyn std::any::Any)
        .downcast_ref::<Vec<u32>>()
        .cloned()
}
