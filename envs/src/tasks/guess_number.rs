//! `guess-number-v0`: a multi-turn game. The prompt names a game and a range (`game 417: guess my
//! number from 1 to 16.`); the secret is derived from the prompt, so the gold reward can check a
//! transcript. Each policy turn is a guess; the env answers `higher`, `lower` or (for a turn with no
//! number) `say a number`, and ends the episode at the right guess. Gold reward: 1 − 0.1 per extra
//! guess when found, 0 when the 6-turn limit runs out. Binary search is optimal; the SFT corpus mixes
//! it with a linear scan and with random guesses that ignore the answers, so there is room to learn.

use super::pick;
use crate::chat::{assistant_turns, transcript, Message, END_OF_TURN};
use crate::reward::Rule;
use crate::task::{Feedback, PromptSplit, Split, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Policy turns before truncation.
pub const MAX_TURNS: usize = 6;
const RANGES: &[u32] = &[8, 16];
/// Game numbers of the train and eval prompts; the SFT corpus draws from the next range.
const GAMES: std::ops::Range<u32> = 0..1000;
const CORPUS_GAMES: std::ops::Range<u32> = 100_000..1_000_000;

/// The range and secret of a prompt, or `None` if it is not this task's.
pub fn game(prompt: &str) -> Option<(u32, u32)> {
    let n: u32 = prompt.strip_suffix('.')?.rsplit(' ').next()?.parse().ok()?;
    if n == 0 {
        return None;
    }
    let h = super::stable_hash(prompt);
    Some((n, (h % n as u64) as u32 + 1))
}

/// The first number in a turn.
pub fn guess_of(turn: &str) -> Option<u32> {
    let digits: String = turn
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The env's answer to a guess.
fn answer(secret: u32, turn: &str) -> Option<&'static str> {
    match guess_of(turn) {
        None => Some("say a number"),
        Some(g) if g < secret => Some("higher"),
        Some(g) if g > secret => Some("lower"),
        Some(_) => None,
    }
}

/// The gold reward: 1 − 0.1 per guess before the right one; 0 when it never comes.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuessGold;

impl Rule for GuessGold {
    fn name(&self) -> String {
        "guess_number".into()
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, prompt: &str, completion: &str) -> f32 {
        let Some((_, secret)) = game(prompt) else {
            return 0.0;
        };
        assistant_turns(completion)
            .iter()
            .take(MAX_TURNS)
            .position(|t| guess_of(t) == Some(secret))
            .map_or(0.0, |k| 1.0 - 0.1 * k as f32)
    }
}

/// The guess-the-number task.
pub struct GuessNumberTask {
    prompts: PromptSplit,
}

impl GuessNumberTask {
    /// The task with its fixed prompt pool (ranges 8 and 16, 1,000 games each).
    pub fn new() -> Self {
        let pool = GAMES
            .flat_map(|g| {
                RANGES
                    .iter()
                    .map(move |n| format!("game {g}: guess my number from 1 to {n}."))
            })
            .collect();
        Self {
            // Shuffled: games × ranges in order would hold out range-16 games only.
            prompts: PromptSplit::shuffled(pool, 8, 0x6e55),
        }
    }
}

impl Default for GuessNumberTask {
    fn default() -> Self {
        Self::new()
    }
}

/// How a corpus transcript picks its guesses.
#[derive(Clone, Copy)]
enum Strategy {
    Bisect,
    Scan,
    Random,
}

/// One transcript of `strategy` on `prompt`, in the built-in chat rendering with end-of-turn marks.
fn play(prompt: &str, strategy: Strategy, rng: &mut StdRng) -> String {
    let Some((n, secret)) = game(prompt) else {
        return prompt.to_string();
    };
    let (mut lo, mut hi) = (1, n);
    let mut turns = Vec::new();
    for k in 0..MAX_TURNS as u32 {
        let g = match strategy {
            Strategy::Bisect => (lo + hi) / 2,
            Strategy::Scan => (k + 1).min(n),
            Strategy::Random => rng.random_range(1..=n),
        };
        turns.push(Message::assistant(format!(" {g}")));
        match answer(secret, &format!("{g}")) {
            None => break,
            Some(a) => {
                if g < secret {
                    lo = g + 1
                } else {
                    hi = g.saturating_sub(1).max(lo)
                }
                if (k as usize) + 1 < MAX_TURNS {
                    turns.push(Message::user(a));
                }
            }
        }
    }
    // The end-of-turn token follows every policy turn, as the collector samples it.
    let mut out = prompt.to_string();
    for m in &turns {
        out.push_str(&transcript(std::slice::from_ref(m)));
        if m.role == crate::chat::Role::Assistant {
            out.push_str(END_OF_TURN);
        }
    }
    out
}

impl Task for GuessNumberTask {
    fn id(&self) -> &str {
        "guess-number-v0"
    }
    fn description(&self) -> &str {
        "find a secret number in few guesses from higher/lower replies (multi-turn)"
    }
    fn reward_kind(&self) -> &str {
        "rule: found, minus 0.1 per extra guess"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Games the agents never see: the secret follows from the prompt, so SFT on the
                // training prompts would teach it their secrets by heart.
                let p = format!(
                    "game {}: guess my number from 1 to {}.",
                    rng.random_range(CORPUS_GAMES),
                    pick(&mut rng, RANGES)
                );
                let s = *pick(
                    &mut rng,
                    &[
                        Strategy::Bisect,
                        Strategy::Scan,
                        Strategy::Random,
                        Strategy::Random,
                    ],
                );
                play(&p, s, &mut rng)
            })
            .collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(GuessGold)
    }
    fn max_new_tokens(&self) -> usize {
        4
    }
    fn sft_steps(&self) -> usize {
        1500
    }
    fn reply(&self, prompt: &str, turns: &[Message]) -> Option<Message> {
        let (_, secret) = game(prompt)?;
        answer(secret, &turns.last()?.content).map(Message::user)
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
    fn the_eval_split_holds_both_ranges_as_the_training_split_does() {
        let t = GuessNumberTask::new();
        for split in [Split::Train, Split::Eval] {
            let p = t.prompts(split);
            let wide = p.iter().filter(|p| game(p).unwrap().0 == 16).count();
            let share = wide as f64 / p.len() as f64;
            assert!(
                (0.4..0.6).contains(&share),
                "{split:?}: {share} range-16 games"
            );
        }
    }

    #[test]
    fn replies_gold_and_corpus() {
        let t = GuessNumberTask::new();
        let p = &t.prompts(Split::Eval)[0];
        let (n, secret) = game(p).unwrap();
        assert!((1..=n).contains(&secret));
        let g = t.gold();
        let low = Message::assistant(format!(" {}", secret - 1));
        if secret > 1 {
            assert_eq!(
                t.reply(p, std::slice::from_ref(&low)),
                Some(Message::user("higher"))
            );
            let tr = transcript(&[
                low,
                Message::user("higher"),
                Message::assistant(format!(" {secret}")),
            ]);
            assert!((g.score(p, &tr) - 0.9).abs() < 1e-6, "{tr}");
        }
        assert_eq!(
            t.reply(p, &[Message::assistant(format!(" {secret}"))]),
            None
        );
        assert_eq!(
            t.reply(p, &[Message::assistant(" what")]),
            Some(Message::user("say a number"))
        );
        assert_eq!(g.score(p, &format!(" {secret}")), 1.0);
        assert_eq!(g.score(p, " 0\nuser: higher\n"), 0.0);
        // Bisection always finds it within the limit; the corpus starts with the prompt.
        let mut rng = StdRng::seed_from_u64(0);
        for p in t.prompts(Split::Train).iter().take(50) {
            let line = play(p, Strategy::Bisect, &mut rng);
            let body = line
                .strip_prefix(p.as_str())
                .unwrap()
                .replace(END_OF_TURN, "");
            assert!(g.score(p, &body) >= 0.6, "{line}");
        }
        check_chat_env(Arc::new(GuessNumberTask::new())).unwrap();
    }
}
