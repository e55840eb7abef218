//! `clarify-v0`: a simulated user with a hidden preference. The prompt asks for a recommendation
//! (`customer 17 wants a drink.`); the user prefers one of two kinds (hot or cold, …), derived from
//! the prompt and said only when asked. A policy turn with a `?` is a question, and the user answers
//! with the preference; a turn without one is the recommendation and ends the episode. Gold reward:
//! 1 − 0.1 per question when the recommendation names an item of the preferred kind (and none of
//! the other), else 0. Asking once is optimal; the SFT corpus often answers without asking.

use super::{pick, stable_hash};
use crate::chat::{assistant_turns, transcript, Message, END_OF_TURN};
use crate::reward::Rule;
use crate::rules::words;
use crate::task::{Feedback, PromptSplit, Split, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Policy turns before truncation.
pub const MAX_TURNS: usize = 3;

/// A thing to recommend: its two kinds and the items of each.
struct Topic {
    name: &'static str,
    kinds: [(&'static str, [&'static str; 2]); 2],
}

const TOPICS: &[Topic] = &[
    Topic {
        name: "fruit",
        kinds: [("sweet", ["mango", "banana"]), ("sour", ["lemon", "lime"])],
    },
    Topic {
        name: "drink",
        kinds: [("hot", ["tea", "coffee"]), ("cold", ["juice", "soda"])],
    },
    Topic {
        name: "movie",
        kinds: [
            ("funny", ["comedy", "cartoon"]),
            ("scary", ["horror", "thriller"]),
        ],
    },
];

/// The topic and the index of the preferred kind of a prompt.
fn hidden(prompt: &str) -> Option<(&'static Topic, usize)> {
    let what = prompt.strip_suffix('.')?.rsplit(' ').next()?;
    let t = TOPICS.iter().find(|t| t.name == what)?;
    Some((t, (stable_hash(prompt) % 2) as usize))
}

fn is_question(turn: &str) -> bool {
    turn.contains('?')
}

/// The gold reward.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClarifyGold;

impl Rule for ClarifyGold {
    fn name(&self) -> String {
        "clarify".into()
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, prompt: &str, completion: &str) -> f32 {
        let Some((topic, pref)) = hidden(prompt) else {
            return 0.0;
        };
        let turns = assistant_turns(completion);
        let Some(k) = turns.iter().position(|t| !is_question(t)) else {
            return 0.0;
        };
        let ws = words(turns[k]);
        let names = |i: usize| topic.kinds[i].1.iter().any(|x| ws.iter().any(|w| w == x));
        if names(pref) && !names(1 - pref) {
            1.0 - 0.1 * k as f32
        } else {
            0.0
        }
    }
}

/// The clarify task.
pub struct ClarifyTask {
    prompts: PromptSplit,
}

impl ClarifyTask {
    /// The task with its fixed prompt pool (1,000 customers for each topic).
    pub fn new() -> Self {
        let pool = (0..1000)
            .flat_map(|c| {
                TOPICS
                    .iter()
                    .map(move |t| format!("customer {c} wants a {}.", t.name))
            })
            .collect();
        Self {
            // Shuffled: customers × topics in order would hold out the last topic only.
            prompts: PromptSplit::shuffled(pool, 8, 0xc1a7),
        }
    }
}

impl Default for ClarifyTask {
    fn default() -> Self {
        Self::new()
    }
}

fn question(t: &Topic) -> String {
    format!(" {} or {}?", t.kinds[0].0, t.kinds[1].0)
}

fn play(prompt: &str, rng: &mut StdRng) -> String {
    let Some((t, pref)) = hidden(prompt) else {
        return prompt.to_string();
    };
    let item = |k: usize, rng: &mut StdRng| format!(" try {}.", pick(rng, &t.kinds[k].1));
    let turns: Vec<String> = match rng.random_range(0..10) {
        // Ask, then recommend what was asked for.
        0..=3 => vec![question(t), item(pref, rng)],
        // Recommend at random without asking.
        4..=6 => vec![item(rng.random_range(0..2), rng)],
        // Ask, then ignore the answer.
        7 | 8 => vec![question(t), item(rng.random_range(0..2), rng)],
        // Ask twice.
        _ => vec![question(t), question(t), item(pref, rng)],
    };
    let mut out = prompt.to_string();
    for turn in turns {
        out.push_str(&turn);
        out.push_str(END_OF_TURN);
        if is_question(&turn) {
            out.push_str(&transcript(&[Message::user(format!(
                "{} please",
                t.kinds[pref].0
            ))]));
        }
    }
    out
}

impl Task for ClarifyTask {
    fn id(&self) -> &str {
        "clarify-v0"
    }
    fn description(&self) -> &str {
        "ask the user what they prefer before recommending (multi-turn)"
    }
    fn reward_kind(&self) -> &str {
        "rule: hidden preference met, minus 0.1 per question"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Customers the agents never see: the preference follows from the prompt, so SFT
                // on the training prompts would teach their preferences by heart.
                let p = format!(
                    "customer {} wants a {}.",
                    rng.random_range(100_000..1_000_000),
                    pick(&mut rng, TOPICS).name
                );
                play(&p, &mut rng)
            })
            .collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(ClarifyGold)
    }
    fn max_new_tokens(&self) -> usize {
        8
    }
    fn sft_steps(&self) -> usize {
        1200
    }
    fn reply(&self, prompt: &str, turns: &[Message]) -> Option<Message> {
        let (t, pref) = hidden(prompt)?;
        is_question(&turns.last()?.content)
            .then(|| Message::user(format!("{} please", t.kinds[pref].0)))
    }
    fn max_turns(&self) -> usize {
        MAX_TURNS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check_chat_env;

    #[test]
    fn the_eval_split_holds_every_topic() {
        let t = ClarifyTask::new();
        let eval = t.prompts(Split::Eval);
        for topic in TOPICS {
            let n = eval
                .iter()
                .filter(|p| hidden(p).unwrap().0.name == topic.name)
                .count();
            // 1,000 customers × 4 topics, one in 8 held out: about 125 of each.
            assert!(n > 80, "{} eval prompts of {}", n, topic.name);
        }
    }

    #[test]
    fn asks_answers_and_scores() {
        let t = ClarifyTask::new();
        let p = &t.prompts(Split::Eval)[0];
        let (topic, pref) = hidden(p).unwrap();
        let q = Message::assistant(question(topic));
        let answer = t.reply(p, std::slice::from_ref(&q)).unwrap();
        assert_eq!(answer.content, format!("{} please", topic.kinds[pref].0));
        let good = Message::assistant(format!(" try {}.", topic.kinds[pref].1[0]));
        let bad = Message::assistant(format!(" try {}.", topic.kinds[1 - pref].1[1]));
        assert_eq!(t.reply(p, std::slice::from_ref(&good)), None);
        let g = t.gold();
        assert!(
            (g.score(p, &transcript(&[q.clone(), answer.clone(), good.clone()])) - 0.9).abs()
                < 1e-6
        );
        assert_eq!(g.score(p, &transcript(&[good])), 1.0);
        assert_eq!(g.score(p, &transcript(&[q, answer, bad])), 0.0);
        check_chat_env(Arc::new(ClarifyTask::new())).unwrap();
    }
}
