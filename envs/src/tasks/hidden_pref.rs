//! `hidden-pref-v0`: the reward lives only inside the oracle. A hidden linear scorer gives every word
//! of a fixed vocabulary a weight drawn from N(0, 1) (seeded); a completion scores
//! `tanh(mean weight of its words)` (unknown words weigh −1), in [−1, 1]. Agents learn from
//! comparisons alone.

use super::pick;
use crate::reward::Rule;
use crate::rules::words;
use crate::task::{Feedback, PromptSplit, Split, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;
use std::sync::Arc;

const VOCAB: &[&str] = &[
    "amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "heron", "iris", "jade", "kelp",
    "lumen", "maple", "nectar", "onyx", "pearl", "quartz", "raven", "sage", "thorn", "umber",
    "vale", "willow", "xenon", "yarrow", "zephyr", "birch", "coral", "dune", "flint", "gale",
    "hazel", "ivy", "juniper", "lotus", "moss", "nova", "opal", "pine", "reed",
];

/// The hidden linear scorer.
#[derive(Debug, Clone)]
pub struct HiddenLinear {
    weights: HashMap<&'static str, f32>,
}

impl HiddenLinear {
    /// Weights drawn from N(0, 1) with `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let weights = VOCAB
            .iter()
            .map(|w| (*w, StandardNormal.sample(&mut rng)))
            .collect();
        Self { weights }
    }
}

impl Rule for HiddenLinear {
    fn name(&self) -> String {
        "hidden_linear".into()
    }
    fn range(&self) -> (f32, f32) {
        (-1.0, 1.0)
    }
    fn score(&self, _prompt: &str, completion: &str) -> f32 {
        let ws = words(completion);
        if ws.is_empty() {
            return -1.0f32.tanh();
        }
        let total: f32 = ws
            .iter()
            .map(|w| self.weights.get(w.as_str()).copied().unwrap_or(-1.0))
            .sum();
        (total / ws.len() as f32).tanh()
    }
}

/// The hidden-preference task.
pub struct HiddenPrefTask {
    prompts: PromptSplit,
}

impl HiddenPrefTask {
    /// Build the task.
    pub fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0x41dd);
        let pool = (0..800)
            .map(|_| {
                format!(
                    "topic {} {} :",
                    pick(&mut rng, VOCAB),
                    pick(&mut rng, VOCAB)
                )
            })
            .collect();
        Self {
            prompts: PromptSplit::from_pool(pool, 5),
        }
    }
}

impl Default for HiddenPrefTask {
    fn default() -> Self {
        Self::new()
    }
}

impl Task for HiddenPrefTask {
    fn id(&self) -> &str {
        "hidden-pref-v0"
    }
    fn description(&self) -> &str {
        "words the hidden scorer likes; learnable from comparisons alone"
    }
    fn reward_kind(&self) -> &str {
        "oracle only: hidden linear word scorer, tanh in [-1, 1]"
    }
    fn feedback(&self) -> Feedback {
        Feedback::PreferencesOnly
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let p = format!(
                    "topic {} {} :",
                    pick(&mut rng, VOCAB),
                    pick(&mut rng, VOCAB)
                );
                let k = rng.random_range(3..=8);
                let c: Vec<&str> = (0..k).map(|_| *pick(&mut rng, VOCAB)).collect();
                format!("{p} {} .", c.join(" "))
            })
            .collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(HiddenLinear::new(0x5ec2e7))
    }
}
