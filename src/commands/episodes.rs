//! `aligngym episodes`: play a policy through an env's episodes, with the same collector training
//! uses, and show each transcript: the prompt, every turn (the policy's and the env's replies), the
//! reward of each policy turn and the gold reward.

use crate::commands::{params_of, Compute};
use aligngym_agents::lm::sampling::SamplingConfig;
use aligngym_agents::rollout::{chat_envs, collect, Episode, Start};
use aligngym_agents::{AgentError, LmPolicy, Result};
use aligngym_envs::{derive_seed, task, ChatEnvConfig, Message, RewardSource, Role, Split};
use serde::Serialize;
use std::path::PathBuf;

/// Which prompts the episodes start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// The prompts agents train on.
    Train,
    /// The held-out prompts of the shared evaluation.
    Eval,
}

/// The arguments of `aligngym episodes`.
#[derive(clap::Args)]
pub struct EpisodesArgs {
    /// Environment id.
    #[arg(long)]
    pub env: String,
    /// Policy checkpoint.
    #[arg(long)]
    pub policy: PathBuf,
    /// Number of episodes (prompts drawn from the split by the seed).
    #[arg(short = 'n', long, default_value_t = 4)]
    pub n: usize,
    /// Seed of the prompts drawn and of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which prompts.
    #[arg(long, value_enum, default_value_t = SplitArg::Eval)]
    pub split: SplitArg,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Most new tokens per policy turn (default: the task's).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Also write the episodes as JSON to this file (refused where a file exists).
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub compute: Compute,
}

/// One turn of an episode as shown.
#[derive(Debug, Serialize)]
struct Turn<'a> {
    role: &'a str,
    content: &'a str,
    /// The env's reward for a policy turn (the episode's on its last one; 0 before); none for the
    /// env's replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    reward: Option<f32>,
}

/// One episode as shown.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    prompt_index: usize,
    prompt: &'a str,
    turns: Vec<Turn<'a>>,
    reward: f32,
    gold_reward: f32,
    /// `terminated` (the env ended it) or `truncated` (a limit did).
    end: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn shown(e: &Episode) -> Shown<'_> {
    let last_policy = e.turns.iter().rposition(|m| m.role == Role::Assistant);
    let turns = e
        .turns
        .iter()
        .enumerate()
        .map(|(i, m): (usize, &Message)| Turn {
            role: role_name(m.role),
            content: &m.content,
            reward: (m.role == Role::Assistant).then(|| {
                if Some(i) == last_policy {
                    e.reward
                } else {
                    0.0
                }
            }),
        })
        .collect();
    Shown {
        prompt_index: e.prompt_index,
        prompt: &e.prompt,
        turns,
        reward: e.reward,
        gold_reward: e.gold,
        end: if e.terminated {
            "terminated"
        } else {
            "truncated"
        },
        note: e.note.as_deref(),
    }
}

/// `aligngym episodes`.
pub fn run(args: EpisodesArgs) -> Result<()> {
    let EpisodesArgs {
        env,
        policy,
        n,
        seed,
        split,
        temperature,
        max_new_tokens,
        json,
        compute,
    } = args;
    if n == 0 {
        return Err(AgentError::config("n", "expected at least one episode"));
    }
    if let Some(j) = json.as_deref().filter(|j| j.exists()) {
        return Err(AgentError::config(
            "json",
            format!("{} exists; not overwriting it", j.display()),
        ));
    }
    let dev = compute.device.resolve()?;
    let p =
        LmPolicy::load(&policy, dev)?.with_precision(compute.precision(dev, params_of(&policy)));
    let t = task(&env)?;
    let sampling = SamplingConfig {
        temperature,
        max_new_tokens: max_new_tokens.unwrap_or_else(|| t.max_new_tokens()),
        ..Default::default()
    };
    let split = match split {
        SplitArg::Train => Split::Train,
        SplitArg::Eval => Split::Eval,
    };
    let cfg = ChatEnvConfig {
        split,
        reward: RewardSource::Gold,
        max_turns: 0,
    };
    let mut envs = chat_envs(t, n, cfg, true)?;
    tch::manual_seed(derive_seed(seed, 0xe915) as i64);
    let roll = collect(&p, &mut envs, Start::Seed(seed), &sampling, None)?;
    let episodes: Vec<Shown> = roll.episodes.iter().map(shown).collect();
    for (i, e) in episodes.iter().enumerate() {
        println!(
            "── episode {} (prompt {} of the split)",
            i + 1,
            e.prompt_index
        );
        println!("user: {}", e.prompt);
        for turn in &e.turns {
            match turn.reward {
                Some(r) => println!("{}: {}    [reward {r:.3}]", turn.role, turn.content),
                None => println!("{}: {}", turn.role, turn.content),
            }
        }
        let note = e.note.map(|n| format!(" ({n})")).unwrap_or_default();
        println!(
            "{}{note}; reward {:.3}, gold reward {:.3}\n",
            e.end, e.reward, e.gold_reward
        );
    }
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&episodes).map_err(|e| AgentError::Data(e.to_string()))?;
        crate::commands::write_atomic(&path, &text)?;
    }
    Ok(())
}
