//! `instruct-v0`: constraint following. Each prompt carries one constraint — a word count, a keyword
//! to include, a list of N items, or ending with a question — and the gold reward in [0, 1] measures
//! how well the completion satisfies it (graded for counts, 0/1 for keyword and question).

use super::pick;
use crate::reward::Rule;
use crate::rules::words;
use crate::task::{Feedback, PromptSplit, Split, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const TOPICS: &[&str] = &[
    "cats", "rain", "music", "the sea", "bread", "trains", "winter", "gardens", "books", "coffee",
];
const KEYWORDS: &[&str] = &[
    "blue", "quiet", "bright", "small", "warm", "old", "green", "fast",
];
const FILLER: &[&str] = &[
    "the", "sun", "is", "soft", "and", "we", "like", "it", "a", "lot", "day", "long", "song",
    "home", "light", "walk", "road", "tea", "cold", "time", "good", "slow", "tree", "wind",
];
const ITEMS: &[&str] = &[
    "apples", "boats", "chairs", "lamps", "maps", "hats", "cups", "kites", "shoes", "bells",
];

/// The constraint a prompt carries, parsed back from its text.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Exactly N words.
    Words(usize),
    /// Mention this word.
    Keyword(String),
    /// A comma-separated list of N items.
    List(usize),
    /// End with a question mark.
    Question,
}

impl Constraint {
    /// The constraint of a prompt made by this task.
    pub fn parse(prompt: &str) -> Option<Self> {
        let ws: Vec<&str> = prompt.split_whitespace().collect();
        match ws.first().copied()? {
            "write" => ws.get(1)?.parse().ok().map(Constraint::Words),
            "mention" => ws.get(1).map(|k| Constraint::Keyword(k.to_string())),
            "list" => ws.get(1)?.parse().ok().map(Constraint::List),
            "ask" => Some(Constraint::Question),
            _ => None,
        }
    }

    /// How well `completion` satisfies the constraint, in [0, 1].
    pub fn satisfaction(&self, completion: &str) -> f32 {
        let graded =
            |n: usize, want: usize| (1.0 - (n as f32 - want as f32).abs() / want as f32).max(0.0);
        match self {
            Constraint::Words(n) => graded(words(completion).len(), *n),
            Constraint::Keyword(k) => words(completion).iter().any(|w| w == k) as u8 as f32,
            Constraint::List(n) => {
                let items = completion
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .count();
                graded(items, *n)
            }
            Constraint::Question => completion.trim_end().ends_with('?') as u8 as f32,
        }
    }
}

/// Gold reward of `instruct-v0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConstraintReward;

impl Rule for ConstraintReward {
    fn name(&self) -> String {
        "constraint".into()
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, prompt: &str, completion: &str) -> f32 {
        Constraint::parse(prompt).map_or(0.0, |c| c.satisfaction(completion))
    }
}

/// The instruction-following task.
pub struct InstructTask {
    prompts: PromptSplit,
}

fn prompt(rng: &mut StdRng) -> String {
    let topic = pick(rng, TOPICS);
    match rng.random_range(0..4) {
        0 => format!("write {} words about {topic} :", rng.random_range(2..=6)),
        1 => format!(
            "mention {} when you talk about {topic} :",
            pick(rng, KEYWORDS)
        ),
        2 => format!("list {} things for {topic} :", rng.random_range(2..=4)),
        _ => format!("ask a question about {topic} :"),
    }
}

fn some_words(rng: &mut StdRng, n: usize) -> Vec<String> {
    (0..n).map(|_| pick(rng, FILLER).to_string()).collect()
}

/// A completion that satisfies the prompt's constraint when `good`, or misses it.
fn completion(rng: &mut StdRng, prompt: &str, good: bool) -> String {
    match Constraint::parse(prompt) {
        Some(Constraint::Words(n)) => {
            let m = if good {
                n
            } else {
                (n as i64 + if rng.random_bool(0.5) { 2 } else { -1 }).max(1) as usize
            };
            some_words(rng, m).join(" ")
        }
        Some(Constraint::Keyword(k)) => {
            let n = rng.random_range(3..=5);
            let mut ws = some_words(rng, n);
            if good {
                let at = rng.random_range(0..=ws.len());
                ws.insert(at, k);
            }
            ws.join(" ")
        }
        Some(Constraint::List(n)) => {
            let m = if good {
                n
            } else if n > 2 && rng.random_bool(0.5) {
                n - 1
            } else {
                n + 1
            };
            (0..m)
                .map(|_| pick(rng, ITEMS).to_string())
                .collect::<Vec<_>>()
                .join(" , ")
        }
        Some(Constraint::Question) => {
            let n = rng.random_range(3..=5);
            let ws = some_words(rng, n).join(" ");
            if good {
                format!("why is {ws} ?")
            } else {
                format!("{ws} .")
            }
        }
        None => String::new(),
    }
}

impl InstructTask {
    /// Build the task (its prompt pool comes from a fixed seed).
    pub fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0x1757);
        let pool = (0..1200).map(|_| prompt(&mut rng)).collect();
        Self {
            prompts: PromptSplit::from_pool(pool, 5),
        }
    }
}

impl Default for InstructTask {
    fn default() -> Self {
        Self::new()
    }
}

impl Task for InstructTask {
    fn id(&self) -> &str {
        "instruct-v0"
    }
    fn description(&self) -> &str {
        "a completion that satisfies the prompt's constraint (word count, keyword, N-item list, question)"
    }
    fn reward_kind(&self) -> &str {
        "rule: constraint satisfaction in [0, 1]"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let p = prompt(&mut rng);
                let good = rng.random_bool(0.5);
                let c = completion(&mut rng, &p, good);
                format!("{p} {c}")
            })
            .collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(ConstraintReward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn good_completions_score_one_and_bad_ones_less() {
        let mut rng = StdRng::seed_from_u64(3);
        let g = ConstraintReward;
        for _ in 0..200 {
            let p = prompt(&mut rng);
            assert_eq!(g.score(&p, &completion(&mut rng, &p, true)), 1.0, "{p}");
            assert!(g.score(&p, &completion(&mut rng, &p, false)) < 1.0, "{p}");
        }
        assert_eq!(g.score("write 4 words about cats :", " a b"), 0.5);
        assert_eq!(
            g.score("list 3 things for rain :", " hats , cups , maps"),
            1.0
        );
    }
}
