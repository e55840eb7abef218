//! Preference data from a generator policy: sample several episodes per prompt through the rollout
//! collector, label every pair with the oracle, write them as the common JSONL (`prompt`, `chosen`,
//! `rejected`, plus `chosen_score`, `rejected_score`, `source`) — plain text for single-turn tasks,
//! the conversational form (whole conversations) for multi-turn ones.

use crate::lm::policy::LmPolicy;
use crate::lm::sampling::SamplingConfig;
use crate::metric::Budget;
use crate::rollout::{chat_envs, collect, Branch, Rollout, Start};
use crate::{AgentError, Result};
use aligngym_envs::{
    derive_seed, ChatEnvConfig, ConversationPair, Message, PreferenceOracle, PreferencePair,
    RewardSource, Role, Split, Task,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;

/// How to build a preference data set.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefsConfig {
    /// Pairs to produce.
    pub pairs: usize,
    /// Completions sampled per prompt; every two of them form a pair (the DPO paper: 4 → 6 pairs).
    pub samples_per_prompt: usize,
    /// Sampling settings of the generator.
    pub sampling: SamplingConfig,
    /// Written into each line's `source` field.
    pub source: String,
    /// Drop pairs the oracle finds exactly tied (equal gold reward, so `P(a ≻ b) = ½`): raters
    /// would answer "no preference", and a coin-flip label only adds noise. The query still counts.
    pub skip_ties: bool,
    /// Where the two conversations of a multi-turn pair part (single-turn tasks ignore it).
    pub branching: Branching,
}

/// Where the two conversations of a multi-turn pair part. Either way a pair is two whole
/// conversations from the same first user message; what they share beyond it cancels in DPO's
/// log-ratio difference, so a later branch point says which turn made the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branching {
    /// At the first assistant turn: independent conversations. DPO on such pairs learns little
    /// on guess-number-v0 (a long rejected conversation pushes down every later turn alike).
    Start,
    /// After the first `t` assistant turns of a conversation sampled first, `t` drawn uniformly
    /// from 0 to its turns − 1: the samples of a prompt continue the same history.
    #[default]
    Turn,
}

impl std::str::FromStr for Branching {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "start" => Ok(Self::Start),
            "turn" => Ok(Self::Turn),
            _ => Err(AgentError::config(
                "branch",
                format!(
                    "unknown `{}`; expected start or turn",
                    aligngym_envs::one_line(s)
                ),
            )),
        }
    }
}

impl std::fmt::Display for Branching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Start => "start",
            Self::Turn => "turn",
        })
    }
}

/// Sample, label and return `cfg.pairs` pairs (pairs of identical completions are skipped: they
/// carry no preference; so are ties when `cfg.skip_ties`). Episodes run through the rollout
/// collector on the task's training prompts.
pub fn make_pairs(
    generator: &LmPolicy,
    task: Arc<dyn Task>,
    oracle: &mut dyn PreferenceOracle,
    cfg: &PrefsConfig,
    seed: u64,
) -> Result<(Vec<PreferencePair>, Budget)> {
    if cfg.samples_per_prompt < 2 {
        return Err(AgentError::config("samples_per_prompt", "expected ≥ 2"));
    }
    let multi_turn = task.max_turns() > 1;
    let n_prompts = task.prompts(Split::Train).len();
    let all: Vec<usize> = (0..n_prompts).collect();
    let mut out = Vec::with_capacity(cfg.pairs);
    let mut spent = Budget::default();
    let k = cfg.samples_per_prompt;
    let per_round = 64usize.div_ceil(k).max(1);
    let mut round = 0u64;
    let env_cfg = ChatEnvConfig {
        split: Split::Train,
        reward: RewardSource::Gold,
        max_turns: 0,
    };
    while out.len() < cfg.pairs {
        if round > 50 + cfg.pairs as u64 {
            return Err(AgentError::Data(format!(
                "could only make {} distinct pairs out of {} asked for",
                out.len(),
                cfg.pairs
            )));
        }
        let s = derive_seed(seed, round);
        let mut rng = StdRng::seed_from_u64(s);
        let chosen: Vec<usize> = all
            .choose_multiple(&mut rng, per_round.min(n_prompts))
            .copied()
            .collect();
        let indices: Vec<usize> = chosen
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, k))
            .collect();
        let mut envs = chat_envs(task.clone(), indices.len(), env_cfg.clone(), true)?;
        tch::manual_seed(s as i64);
        // Branching at a turn: one conversation per prompt first, each continued k times from a
        // random one of its turns.
        let branches: Option<Vec<Branch>> = if multi_turn && cfg.branching == Branching::Turn {
            let mut trunks = chat_envs(task.clone(), chosen.len(), env_cfg.clone(), true)?;
            let trunk = collect(
                generator,
                &mut trunks,
                Start::Prompts(&chosen),
                &cfg.sampling,
                None,
            )?;
            spend_sampling(&mut spent, generator, &trunk);
            let mut out = Vec::with_capacity(indices.len());
            for e in &trunk.episodes {
                let mine: Vec<String> = e
                    .turns
                    .iter()
                    .filter(|m| m.role == Role::Assistant)
                    .map(|m| m.content.clone())
                    .collect();
                let t = rng.random_range(0..mine.len().max(1));
                let b = Branch {
                    prompt: e.prompt_index,
                    turns: mine[..t].to_vec(),
                };
                out.extend(std::iter::repeat_n(b, k));
            }
            Some(out)
        } else {
            None
        };
        let start = match &branches {
            Some(b) => Start::Branches(b),
            None => Start::Prompts(&indices),
        };
        let roll = collect(generator, &mut envs, start, &cfg.sampling, None)?;
        spend_sampling(&mut spent, generator, &roll);
        let texts: Vec<&str> = roll.episodes.iter().map(|e| e.prompt.as_str()).collect();
        let comps: Vec<&str> = roll
            .episodes
            .iter()
            .map(|e| e.transcript.as_str())
            .collect();
        let (mut ps, mut a, mut b, mut eps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for j in 0..chosen.len() {
            for x in 0..k {
                for y in x + 1..k {
                    let (ca, cb) = (comps[j * k + x], comps[j * k + y]);
                    // Identical completions carry no preference; empty ones are not valid preference data.
                    if ca != cb && !ca.trim().is_empty() && !cb.trim().is_empty() {
                        ps.push(texts[j * k]);
                        a.push(ca);
                        b.push(cb);
                        eps.push((j * k + x, j * k + y));
                    }
                }
            }
        }
        let labels = oracle.compare_batch(&ps, &a, &b)?;
        spent.oracle_queries += labels.len() as u64;
        for (i, l) in labels.iter().enumerate() {
            if out.len() == cfg.pairs {
                break;
            }
            if cfg.skip_ties && l.reward_a == l.reward_b {
                continue;
            }
            let (c, r, cs, rs, (ec, er)) = if l.a_wins {
                (a[i], b[i], l.reward_a, l.reward_b, eps[i])
            } else {
                (b[i], a[i], l.reward_b, l.reward_a, (eps[i].1, eps[i].0))
            };
            // A multi-turn pair is two whole conversations from the same first user message, in
            // the conversational format (the env's replies stay context in DPO's loss).
            let mut p = if multi_turn {
                PreferencePair::conversational(ConversationPair {
                    prompt: vec![Message::user(ps[i])],
                    chosen: roll.episodes[ec].turns.clone(),
                    rejected: roll.episodes[er].turns.clone(),
                })
            } else {
                PreferencePair::new(ps[i], c, r)
            };
            p.extra.insert("chosen_score".into(), json!(cs));
            p.extra.insert("rejected_score".into(), json!(rs));
            p.extra.insert("source".into(), json!(cfg.source));
            out.push(p);
        }
        round += 1;
    }
    Ok((out, spent))
}

/// Add what sampling `roll` cost: its episodes, the policy's tokens, and one forward per token
/// (the prompts' prefill included).
fn spend_sampling(spent: &mut Budget, generator: &LmPolicy, roll: &Rollout) {
    let s = &roll.seqs;
    let (b, lp, n) = (s.prompt.size()[0], s.prompt.size()[1], s.tokens.size()[1]);
    let generated = roll
        .episodes
        .iter()
        .flat_map(|e| &e.policy)
        .filter(|&&p| p)
        .count() as u64;
    spent.samples += b as u64;
    spent.tokens_generated += generated;
    let fpt = generator.model.config().flops_per_token((lp + n) as usize);
    spent.flops += fpt * ((b * lp) as f64 + generated as f64);
}
