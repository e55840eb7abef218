//! The rollout collector: the one path by which agents, preference generation and the shared
//! evaluation get experience. It steps a [`VecEnv`] of turn-level [`ChatEnv`]s with the policy:
//! each round samples the next turn of every live episode in one batch (KV cache, on the device),
//! steps the envs with the decoded turns (rayon workers: replies and rule rewards), and appends each
//! env reply's tokens to its episode; episodes end when their env says so.
//!
//! The collector never re-tokenises a conversation: it keeps the exact ids it sampled and the exact
//! ids of each reply as it was encoded, so a teacher-forced pass over the batch sees what sampling
//! saw. Whether a token is the policy's comes from where it came from, never from its id: `mask` is
//! 1 on sampled tokens only, and a reply's tokens (mask 0) are context, never trained on and never
//! in KL, entropy or a mean. One KV cache serves the whole conversation: the prompts are prefilled
//! once, each turn decodes from where the last one stopped, and an env's reply is prefilled into
//! the cache of the sequences that got one while the others keep their place
//! ([`TurnSampler`]). A reply's tokens are what the checkpoint's chat template adds for it
//! (rendered with and without it), so a template that is not append-only is refused.

use crate::lm::policy::LmPolicy;
use crate::lm::sampling::{left_pad, right_pad, SamplingConfig, Sequences, TurnSampler};
use crate::{AgentError, Result};
use aligngym_envs::{
    AutoresetMode, ChatEnv, ChatEnvConfig, Message, RewardFn, Task, TextCodec, VecEnv,
};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The reward an online agent trains on.
pub enum RewardSignal {
    /// The env's gold reward, computed by the env on its rayon worker; each score is a gold query.
    Gold,
    /// A batched scorer on the calling thread (a learned reward model, an external judge).
    Scorer(Box<dyn RewardFn>),
}

impl RewardSignal {
    /// The scorer the collector calls, when the reward is not the env's own.
    pub fn scorer(&self) -> Option<&dyn RewardFn> {
        match self {
            RewardSignal::Gold => None,
            RewardSignal::Scorer(s) => Some(s.as_ref()),
        }
    }
    /// What the scorer has spent so far ([`RewardFn::flops_spent`]); the gold reward costs none.
    pub fn flops_spent(&self) -> f64 {
        self.scorer().map_or(0.0, |s| s.flops_spent())
    }
}

/// Which episodes to start.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Reset every env with a seed derived from this one (each picks its own prompt).
    Seed(u64),
    /// Env i starts on prompt `indices[i]` of its split (evaluation, preference data).
    Prompts(&'a [usize]),
    /// Env i continues the conversation `branches[i]` (preference pairs that part at a later turn).
    Branches(&'a [Branch]),
}

/// A conversation to continue: prompt `prompt` of the split, then the assistant `turns` replayed
/// through the env (which answers them as it would have), then sampling from there. The replayed
/// turns are context, not the policy's tokens of this rollout: an episode's `turns` and reward
/// cover the whole conversation, its tokens, mask and log-probs only what was sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// Index of the prompt in the env's split.
    pub prompt: usize,
    /// The assistant turns to replay, in order.
    pub turns: Vec<String>,
}

/// One finished episode, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// Index of its prompt in the env's split.
    pub prompt_index: usize,
    /// The prompt text.
    pub prompt: String,
    /// The conversation after the prompt (the policy's turns and the env's replies).
    pub turns: Vec<Message>,
    /// What rewards read: the transcript of `turns` (for one turn, the completion).
    pub transcript: String,
    /// The env's reward (the gold reward, or the external scorer's where the env asked for one).
    pub reward: f32,
    /// The gold reward, for evaluation.
    pub gold: f32,
    /// The env ended it (`terminated`); otherwise a limit did (`truncated`).
    pub terminated: bool,
    /// The policy's last turn ended with a stop token (EOS or end of turn) rather than the token limit.
    pub ended_turn: bool,
    /// Why it was cut short, where it was not the task's own limit.
    pub note: Option<String>,
    /// The policy's number of turns.
    pub policy_turns: usize,
    /// Token ids after the prompt: the policy's and the env's, in order.
    pub tokens: Vec<u32>,
    /// Which of `tokens` the policy sampled (the rest are the env's).
    pub policy: Vec<bool>,
    /// Position in `tokens` of the last policy token of each policy turn.
    pub turn_ends: Vec<usize>,
}

impl Episode {
    /// The policy's tokens, in order.
    pub fn policy_tokens(&self) -> Vec<u32> {
        self.tokens
            .iter()
            .zip(&self.policy)
            .filter(|(_, &p)| p)
            .map(|(&t, _)| t)
            .collect()
    }
}

/// A collected batch: the episodes, and their tokens as tensors on the policy's device.
pub struct Rollout {
    /// The episodes, in env order.
    pub episodes: Vec<Episode>,
    /// Prompts and the tokens after them; `mask` marks the policy's tokens.
    pub seqs: Sequences,
    /// Sampling log-probs of the policy's tokens `[B, N]`, 0 elsewhere.
    pub logprobs: Tensor,
    /// Position of each row's last policy token `[B]` (i64): where the episode's score goes.
    pub score_pos: Tensor,
}

impl Rollout {
    /// The episodes at `rows` (host indices), in that order, with their tokens.
    pub fn select(&self, rows: &[usize]) -> Rollout {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let t = Tensor::from_slice(&idx).to_device(self.logprobs.device()); // [k]
        Rollout {
            episodes: rows.iter().map(|&r| self.episodes[r].clone()).collect(),
            seqs: self.seqs.select(&t),
            logprobs: self.logprobs.index_select(0, &t),
            score_pos: self.score_pos.index_select(0, &t),
        }
    }
}

/// `n` turn-level envs of `task`, stepped on rayon workers when `parallel` (same results either way).
pub fn chat_envs(
    task: Arc<dyn Task>,
    n: usize,
    cfg: ChatEnvConfig,
    parallel: bool,
) -> Result<VecEnv<ChatEnv>> {
    let envs = (0..n)
        .map(|_| ChatEnv::new(task.clone(), cfg.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(VecEnv::new(envs, AutoresetMode::Disabled, parallel))
}

/// Per-episode state while collecting.
struct Running {
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    policy: Vec<bool>,
    logprobs: Vec<f32>,
    turn_ends: Vec<usize>,
    ended_turn: bool,
    done: Option<Episode>,
}

impl Running {
    fn context_len(&self) -> usize {
        self.prompt_ids.len() + self.tokens.len()
    }
}

/// Collect one episode per env of `envs` with `policy`, sampling each turn with `sampling`
/// (`max_new_tokens` is per turn). Episodes whose env asks for an external score
/// (`RewardSource::External`) are scored by `scorer` in one batch at the end. The torch RNG must be
/// seeded by the caller for reproducible samples.
pub fn collect(
    policy: &LmPolicy,
    envs: &mut VecEnv<ChatEnv>,
    start: Start,
    sampling: &SamplingConfig,
    scorer: Option<&dyn RewardFn>,
) -> Result<Rollout> {
    let tok = &policy.tokenizer;
    let block = policy.model.config().block_size;
    let multi_turn = envs
        .envs()
        .first()
        .is_some_and(|e| e.task().max_turns() > 1);
    let (obs, _) = match start {
        Start::Seed(s) => envs.reset(Some(s))?,
        Start::Prompts(idx) => {
            if idx.len() != envs.len() {
                return Err(AgentError::config(
                    "prompts",
                    format!("{} prompt indices for {} envs", idx.len(), envs.len()),
                ));
            }
            envs.reset_with(|i, e| e.reset_to(idx[i]))?
        }
        Start::Branches(b) => {
            if b.len() != envs.len() {
                return Err(AgentError::config(
                    "branches",
                    format!("{} branches for {} envs", b.len(), envs.len()),
                ));
            }
            envs.reset_with(|i, e| e.reset_to(b[i].prompt))?
        }
    };
    let mut eps: Vec<Running> = obs
        .iter()
        .map(|o| Running {
            prompt_ids: tok.encode_prompt(o.first().map_or("", |m| m.content.as_str())),
            tokens: Vec::new(),
            policy: Vec::new(),
            logprobs: Vec::new(),
            turn_ends: Vec::new(),
            ended_turn: false,
            done: None,
        })
        .collect();
    if let Start::Branches(b) = start {
        replay(tok, envs, b, &mut eps)?;
    }
    let stops = tok.turn_stops();
    let prompts: Vec<Vec<u32>> = eps.iter().map(|e| e.prompt_ids.clone()).collect();
    let mut sampler = TurnSampler::new(
        &policy.model,
        &prompts,
        tok.pad_id(),
        &stops,
        policy.device(),
    )?;
    let mut round_cfg = sampling.clone();
    loop {
        let live: Vec<usize> = (0..eps.len()).filter(|&i| eps[i].done.is_none()).collect();
        if live.is_empty() {
            break;
        }
        // The longest live conversation bounds this turn's token budget (positions may not pass
        // the model's context); the episodes it leaves no room for are cut off first.
        let mut actions: Vec<Option<String>> = vec![None; eps.len()];
        let mut room = vec![false; eps.len()];
        for &i in &live {
            if eps[i].context_len() + 1 > block {
                let s = envs.envs_mut()[i].truncate(&format!(
                    "the conversation filled the model's context ({block} tokens)"
                ))?;
                eps[i].done = Some(finish(&eps[i], s)?);
            } else {
                room[i] = true;
            }
        }
        let Some(longest) = (0..eps.len())
            .filter(|&i| room[i])
            .map(|i| eps[i].context_len())
            .max()
        else {
            continue;
        };
        round_cfg.max_new_tokens = sampling.max_new_tokens.min(block - longest);
        let live_t = Tensor::from_slice(&room).to_device(policy.device()); // [B]
        let turn = sampler.turn(&live_t, &round_cfg)?;
        // One device→host copy of the turn's tokens, mask and log-probs.
        let host = |t: &Tensor, k: Kind| t.to_device(Device::Cpu).to_kind(k);
        let toks: Vec<Vec<i64>> = Vec::try_from(host(&turn.tokens, Kind::Int64))?;
        let mask: Vec<Vec<f32>> = Vec::try_from(host(&turn.mask, Kind::Float))?;
        let lps: Vec<Vec<f32>> = Vec::try_from(host(&turn.logprobs, Kind::Float))?;
        for i in (0..eps.len()).filter(|&i| room[i]) {
            let e = &mut eps[i];
            let sampled = || toks[i].iter().zip(&mask[i]).filter(|(_, &m)| m > 0.5);
            let turn: Vec<u32> = sampled().map(|(&t, _)| t as u32).collect();
            e.ended_turn = turn.last().is_some_and(|t| stops.contains(t));
            e.tokens.extend_from_slice(&turn);
            e.policy.extend(std::iter::repeat_n(true, turn.len()));
            e.logprobs.extend(
                lps[i]
                    .iter()
                    .zip(&mask[i])
                    .filter(|(_, &m)| m > 0.5)
                    .map(|(&l, _)| l),
            );
            e.turn_ends.push(e.tokens.len().saturating_sub(1));
            actions[i] = Some(tok.decode_ids(&turn));
        }
        let steps = envs.step_some(&actions)?;
        let mut replies: Vec<Vec<u32>> = vec![Vec::new(); eps.len()];
        for (i, s) in steps.into_iter().enumerate() {
            let Some(s) = s else { continue };
            if s.terminated || s.truncated {
                eps[i].done = Some(finish(&eps[i], s)?);
                continue;
            }
            let (reply, before) = s
                .obs
                .split_last()
                .ok_or_else(|| AgentError::Data("an env continued with no reply".into()))?;
            let ids = tok.message_ids(before, reply)?;
            if eps[i].context_len() + ids.len() + 1 > block {
                let s = envs.envs_mut()[i].truncate(&format!(
                    "the env's reply ({} tokens) overflowed the model's context ({block} tokens)",
                    ids.len()
                ))?;
                eps[i].done = Some(finish(&eps[i], s)?);
                continue;
            }
            let e = &mut eps[i];
            e.tokens.extend_from_slice(&ids);
            e.policy.extend(std::iter::repeat_n(false, ids.len()));
            e.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
            replies[i] = ids;
        }
        // The replies go into the KV cache after their turns; the other sequences keep their place.
        sampler.append(&replies)?;
    }
    let mut episodes: Vec<Episode> = eps.iter_mut().filter_map(|e| e.done.take()).collect();
    if let Some(scorer) = scorer {
        let need: Vec<usize> = (0..episodes.len())
            .filter(|&i| episodes[i].reward.is_nan())
            .collect();
        if !need.is_empty() {
            let unscored: Vec<&Episode> = need.iter().map(|&i| &episodes[i]).collect();
            let scores = score_episodes(scorer, &unscored, multi_turn)?;
            for (&i, s) in need.iter().zip(scores) {
                episodes[i].reward = s;
            }
        }
    }
    if let Some(e) = episodes.iter().find(|e| e.reward.is_nan()) {
        return Err(AgentError::Data(format!(
            "episode on prompt {:?} asked for an external score and no scorer was given",
            e.prompt
        )));
    }
    batch(policy, &eps, episodes)
}

/// `scorer`'s score of each episode, as training and evaluation both score them: a multi-turn
/// episode as a conversation (a learned scorer reads it as its conversational training pairs were
/// tokenised), a single turn as a completion.
pub fn score_episodes(
    scorer: &dyn RewardFn,
    episodes: &[&Episode],
    multi_turn: bool,
) -> Result<Vec<f32>> {
    let p: Vec<&str> = episodes.iter().map(|e| e.prompt.as_str()).collect();
    Ok(if multi_turn {
        let t: Vec<&[Message]> = episodes.iter().map(|e| e.turns.as_slice()).collect();
        scorer.score_conversations(&p, &t)?
    } else {
        let c: Vec<&str> = episodes.iter().map(|e| e.transcript.as_str()).collect();
        scorer.score_batch(&p, &c)?
    })
}

/// Step each env through its branch's assistant turns, appending each turn (as
/// [`Tokenizer::turn_ids`] encodes it) and the env's reply to that episode's prompt ids.
fn replay(
    tok: &crate::lm::tokenizer::Tokenizer,
    envs: &mut VecEnv<ChatEnv>,
    branches: &[Branch],
    eps: &mut [Running],
) -> Result<()> {
    let depth = branches.iter().map(|b| b.turns.len()).max().unwrap_or(0);
    for r in 0..depth {
        let actions: Vec<Option<String>> =
            branches.iter().map(|b| b.turns.get(r).cloned()).collect();
        for (i, s) in envs.step_some(&actions)?.into_iter().enumerate() {
            let Some(s) = s else { continue };
            if s.terminated || s.truncated {
                return Err(AgentError::Data(format!(
                    "a branch of prompt {} ended at its replayed turn {} (nothing is left to sample)",
                    branches[i].prompt,
                    r + 1
                )));
            }
            let (reply, before) = s
                .obs
                .split_last()
                .ok_or_else(|| AgentError::Data("an env continued with no reply".into()))?;
            let ids = &mut eps[i].prompt_ids;
            ids.extend(tok.turn_ids(&branches[i].turns[r]));
            ids.extend(tok.message_ids(before, reply)?);
        }
    }
    Ok(())
}

/// The finished episode of `e`, from the env's last step.
fn finish(e: &Running, s: aligngym_envs::Step<Vec<Message>>) -> Result<Episode> {
    let info = s.info;
    Ok(Episode {
        prompt_index: info.prompt_index,
        prompt: info.prompt.unwrap_or_default(),
        turns: s.obs.get(1..).map(|t| t.to_vec()).unwrap_or_default(),
        transcript: info.completion.unwrap_or_default(),
        reward: if info.needs_score { f32::NAN } else { s.reward },
        gold: info.gold_reward.unwrap_or(f32::NAN),
        terminated: s.terminated,
        ended_turn: e.ended_turn,
        note: info.note,
        policy_turns: e.turn_ends.len(),
        tokens: e.tokens.clone(),
        policy: e.policy.clone(),
        turn_ends: e.turn_ends.clone(),
    })
}

/// The tensors of a rollout: one host→device copy each.
fn batch(policy: &LmPolicy, eps: &[Running], episodes: Vec<Episode>) -> Result<Rollout> {
    let dev = policy.device();
    let pad = policy.tokenizer.pad_id();
    let prompts: Vec<Vec<u32>> = eps.iter().map(|e| e.prompt_ids.clone()).collect();
    let (prompt, prompt_valid) = left_pad(&prompts, pad, dev); // [B, L_p]
    let conts: Vec<&[u32]> = eps.iter().map(|e| e.tokens.as_slice()).collect();
    let (tokens, valid) = right_pad(&conts, pad, dev); // [B, N]
    let n = tokens.size()[1] as usize;
    let row = |v: &[f32]| {
        let mut r = v.to_vec();
        r.resize(n, 0.0);
        r
    };
    let mask: Vec<f32> = eps
        .iter()
        .flat_map(|e| row(&e.policy.iter().map(|&p| p as u8 as f32).collect::<Vec<_>>()))
        .collect();
    let lps: Vec<f32> = eps.iter().flat_map(|e| row(&e.logprobs)).collect();
    let b = eps.len() as i64;
    let mask = Tensor::from_slice(&mask).view([b, n as i64]).to_device(dev); // [B, N]
    let logprobs = Tensor::from_slice(&lps).view([b, n as i64]).to_device(dev); // [B, N]
    let pos: Vec<i64> = episodes
        .iter()
        .map(|e| e.turn_ends.last().copied().unwrap_or(0) as i64)
        .collect();
    Ok(Rollout {
        episodes,
        seqs: Sequences {
            prompt,
            prompt_valid,
            tokens,
            valid,
            mask,
        },
        logprobs,
        score_pos: Tensor::from_slice(&pos).to_device(dev),
    })
}

#[cfg(test)]
mod tests;
