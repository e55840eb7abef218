//! `sentiment-v0`: the DPO paper's IMDb experiment in miniature (Rafailov et al. 2023, §6.1).
//! A corpus of short movie-review-like texts of mixed sentiment; prompts are review prefixes of 2–8
//! words; the gold reward is the lexicon sentiment of the completion, in [−1, 1].

use super::pick;
use crate::reward::Rule;
use crate::rules::Sentiment;
use crate::task::{Feedback, PromptSplit, Split, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const OPENINGS: &[&str] = &[
    "this movie",
    "the film",
    "i thought this film",
    "the story of this movie",
    "the acting in this film",
    "honestly the plot",
    "my friends and i found the movie",
    "the ending of the film",
    "the director made a film that",
    "i watched this movie last night and it",
    "the cast of this picture",
    "as a fan of the genre i found it",
    "the music in this movie",
    "the first half of the film",
    "this sequel",
    "the characters in this story",
];
const POS: &[&str] = &[
    "was great",
    "was really wonderful",
    "is a masterpiece",
    "had superb acting",
    "was so much fun",
    "felt fresh and clever",
    "was truly moving",
    "is the best film of the year",
    "was charming and funny",
    "had a brilliant script",
    "was beautiful to watch",
    "was a delight",
    "had stunning music",
    "kept me gripped",
    "was very good",
    "made me happy",
];
const NEG: &[&str] = &[
    "was terrible",
    "was really boring",
    "is a waste of time",
    "had wooden acting",
    "was dull and slow",
    "felt predictable and lazy",
    "was a mess",
    "is the worst film of the year",
    "was silly and pointless",
    "had a weak script",
    "was painful to watch",
    "was disappointing",
    "had awful music",
    "bored me",
    "was very bad",
    "made me sad",
];
const TAILS: &[&str] = &[
    "and i would recommend it",
    "and i loved every minute",
    "and the cast was excellent",
    "and i hated every minute",
    "and the cast was poor",
    "and i would not recommend it",
    "overall",
    "from start to finish",
    "in my opinion",
    "if you ask me",
];

/// The sentiment task.
pub struct SentimentTask {
    prompts: PromptSplit,
}

impl SentimentTask {
    /// Build the task (its prompt pool comes from a fixed seed).
    pub fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0x5e47);
        let pool: Vec<String> = (0..900)
            .map(|_| {
                let review = Self::review(&mut rng);
                let ws: Vec<&str> = review.split_whitespace().collect();
                let k = rng
                    .random_range(2..=8usize)
                    .min(ws.len().saturating_sub(1))
                    .max(1);
                ws[..k].join(" ")
            })
            .collect();
        Self {
            prompts: PromptSplit::from_pool(pool, 5),
        }
    }

    fn review(rng: &mut StdRng) -> String {
        let positive = rng.random_bool(0.5);
        let body = pick(rng, if positive { POS } else { NEG });
        let mut s = format!("{} {}", pick(rng, OPENINGS), body);
        if rng.random_bool(0.6) {
            s.push(' ');
            let tail = *pick(rng, TAILS);
            s.push_str(tail);
        }
        if rng.random_bool(0.3) {
            let second_positive = rng.random_bool(0.7) == positive;
            let second = pick(rng, if second_positive { POS } else { NEG });
            s.push_str(&format!(" but the ending {second}"));
        }
        s.push_str(if rng.random_bool(0.2) { " !" } else { " ." });
        s
    }
}

impl Default for SentimentTask {
    fn default() -> Self {
        Self::new()
    }
}

impl Task for SentimentTask {
    fn id(&self) -> &str {
        "sentiment-v0"
    }
    fn description(&self) -> &str {
        "a continuation of a movie-review prefix that reads as positive as possible"
    }
    fn reward_kind(&self) -> &str {
        "rule: lexicon sentiment of the completion, in [-1, 1]"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| Self::review(&mut rng)).collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(Sentiment)
    }
    fn max_new_tokens(&self) -> usize {
        24
    }
}
