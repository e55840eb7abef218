//! `arithmetic-v0`: a verifiable reward. Prompts are `a+b=` with `a, b ∈ 0..=20`; the gold reward is 1
//! for exactly the right number (then EOS), else 0 — no partial credit. The SFT corpus holds a
//! controlled fraction of wrong answers (off by 1–3, default 30%) and of chatty tails after the
//! answer (`17+25=42 i think`, default 50%), so that alignment has headroom: the tail habit is one
//! that RL on the training prompts can remove everywhere, held-out prompts included.

use crate::reward::Rule;
use crate::rules::ExactAnswer;
use crate::task::{Feedback, PromptSplit, Split, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const TAILS: &[&str] = &["i think", "maybe", "or so", "probably"];

/// Largest operand.
pub const MAX_OPERAND: u32 = 20;

/// The arithmetic task.
pub struct ArithmeticTask {
    wrong_fraction: f64,
    tail_fraction: f64,
    prompts: PromptSplit,
}

/// The answer of an `a+b=` prompt.
pub fn answer(prompt: &str) -> Option<String> {
    let body = prompt.trim().strip_suffix('=')?;
    let (a, b) = body.split_once('+')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    Some((a + b).to_string())
}

impl ArithmeticTask {
    /// The task with `wrong_fraction` of the SFT corpus answered wrongly (default 0.3) and
    /// `tail_fraction` of it followed by a chatty tail (default 0.5).
    pub fn new(wrong_fraction: f64, tail_fraction: f64) -> Self {
        let pool: Vec<String> = (0..=MAX_OPERAND)
            .flat_map(|a| (0..=MAX_OPERAND).map(move |b| format!("{a}+{b}=")))
            .collect();
        // Shuffled so that the eval split covers operands evenly.
        let prompts = PromptSplit::shuffled(pool, 5, 0xa417);
        Self {
            wrong_fraction: wrong_fraction.clamp(0.0, 1.0),
            tail_fraction: tail_fraction.clamp(0.0, 1.0),
            prompts,
        }
    }
}

impl Default for ArithmeticTask {
    fn default() -> Self {
        Self::new(0.3, 0.5)
    }
}

impl Task for ArithmeticTask {
    fn id(&self) -> &str {
        "arithmetic-v0"
    }
    fn description(&self) -> &str {
        "the exact sum of the prompt `a+b=`, then EOS"
    }
    fn reward_kind(&self) -> &str {
        "rule: exact answer, 1 or 0"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (a, b) = (
                    rng.random_range(0..=MAX_OPERAND),
                    rng.random_range(0..=MAX_OPERAND),
                );
                let mut c = (a + b) as i64;
                if rng.random_bool(self.wrong_fraction) {
                    let off = rng.random_range(1..=3) as i64;
                    c = if rng.random_bool(0.5) || c < off {
                        c + off
                    } else {
                        c - off
                    };
                }
                if rng.random_bool(self.tail_fraction) {
                    format!("{a}+{b}={c} {}", TAILS[rng.random_range(0..TAILS.len())])
                } else {
                    format!("{a}+{b}={c}")
                }
            })
            .collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(ExactAnswer::new(Arc::new(answer)))
    }
    fn max_new_tokens(&self) -> usize {
        6
    }
    fn sft_steps(&self) -> usize {
        1500
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn answers_and_corpus_error_rate() {
        assert_eq!(answer("17+25="), Some("42".into()));
        assert_eq!(answer("17-25="), None);
        let t = ArithmeticTask::default();
        let g = t.gold();
        let corpus = t.corpus(4000, 1);
        let wrong = corpus
            .iter()
            .filter(|l| {
                let (p, c) = l.split_at(l.find('=').unwrap() + 1);
                answer(p).as_deref() != c.split(' ').next()
            })
            .count() as f64
            / 4000.0;
        assert!((wrong - 0.3).abs() < 0.03, "{wrong}");
        let tails = corpus.iter().filter(|l| l.contains(' ')).count() as f64 / 4000.0;
        assert!((tails - 0.5).abs() < 0.03, "{tails}");
        assert_eq!(g.score("3+4=", "7 i think"), 0.0);
        assert_eq!(g.score("3+4=", "7"), 1.0);
        assert_eq!(g.score("3+4=", "8"), 0.0);
    }
}
