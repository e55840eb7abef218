//! Reward functions: batched scoring of (prompt, completion) pairs, and combinators over them.
//!
//! Rule rewards implement [`Rule`] (one pair at a time, thread-safe) and get [`RewardFn`] for free;
//! learned reward models implement [`RewardFn`] directly and score a whole batch at once.

use crate::chat::{transcript, Message};
use crate::{EnvError, Result};
use std::sync::{Arc, Mutex};

/// Batched scoring of completions. The learned reward model (agents crate) implements it too.
pub trait RewardFn: Send {
    /// A short name for logs and CSV columns.
    fn name(&self) -> String;
    /// The documented range of scores, `(lo, hi)`; infinite where unbounded.
    fn range(&self) -> (f32, f32) {
        (f32::NEG_INFINITY, f32::INFINITY)
    }
    /// One score per `(prompts[i], completions[i])`.
    fn score_batch(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>>;
    /// One score per conversation: `turns[i]` is what followed `prompts[i]` (the policy's turns
    /// and the env's replies). By default their transcripts are scored; a learned scorer reads the
    /// turns as its conversational training pairs were tokenised.
    fn score_conversations(&self, prompts: &[&str], turns: &[&[Message]]) -> Result<Vec<f32>> {
        let texts: Vec<String> = turns.iter().map(|t| transcript(t)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.score_batch(prompts, &refs)
    }
    /// Floating-point operations spent scoring so far, counted as `budget/flops` counts them (a
    /// learned scorer's forward passes); 0 for rules and for scorers that cannot tell. Agents
    /// charge what it grows by while they collect to their budget.
    fn flops_spent(&self) -> f64 {
        0.0
    }
}

/// A reward computed by a rule, one pair at a time; `Sync`, so envs can score on rayon workers.
pub trait Rule: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> String;
    /// The documented range of scores.
    fn range(&self) -> (f32, f32);
    /// The score of one completion.
    fn score(&self, prompt: &str, completion: &str) -> f32;
}

impl<T: Rule> RewardFn for T {
    fn name(&self) -> String {
        Rule::name(self)
    }
    fn range(&self) -> (f32, f32) {
        Rule::range(self)
    }
    fn score_batch(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>> {
        check_lengths(&Rule::name(self), prompts, completions)?;
        Ok(prompts
            .iter()
            .zip(completions)
            .map(|(p, c)| self.score(p, c))
            .collect())
    }
}

impl<T: Rule + ?Sized> Rule for Arc<T> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn range(&self) -> (f32, f32) {
        (**self).range()
    }
    fn score(&self, prompt: &str, completion: &str) -> f32 {
        (**self).score(prompt, completion)
    }
}

impl RewardFn for Box<dyn RewardFn> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn range(&self) -> (f32, f32) {
        (**self).range()
    }
    fn score_batch(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>> {
        (**self).score_batch(prompts, completions)
    }
    fn score_conversations(&self, prompts: &[&str], turns: &[&[Message]]) -> Result<Vec<f32>> {
        (**self).score_conversations(prompts, turns)
    }
    fn flops_spent(&self) -> f64 {
        (**self).flops_spent()
    }
}

pub(crate) fn check_lengths(name: &str, prompts: &[&str], completions: &[&str]) -> Result<()> {
    if prompts.len() != completions.len() {
        return Err(EnvError::Reward {
            name: name.to_string(),
            msg: format!(
                "{} prompts but {} completions",
                prompts.len(),
                completions.len()
            ),
        });
    }
    Ok(())
}

/// `Σ wᵢ · rᵢ` over several reward functions.
pub struct WeightedSum {
    parts: Vec<(f32, Box<dyn RewardFn>)>,
}

impl WeightedSum {
    /// A weighted sum of `parts` (`(weight, reward)`).
    pub fn new(parts: Vec<(f32, Box<dyn RewardFn>)>) -> Self {
        Self { parts }
    }

    /// `Σ wᵢ · score(partᵢ)` over `n` items.
    fn weigh(
        &self,
        n: usize,
        score: impl Fn(&dyn RewardFn) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let mut total = vec![0.0f32; n];
        for (w, r) in &self.parts {
            for (t, s) in total.iter_mut().zip(score(r.as_ref())?) {
                *t += w * s;
            }
        }
        Ok(total)
    }
}

impl RewardFn for WeightedSum {
    fn name(&self) -> String {
        let terms: Vec<String> = self
            .parts
            .iter()
            .map(|(w, r)| format!("{w}*{}", r.name()))
            .collect();
        terms.join("+")
    }
    fn range(&self) -> (f32, f32) {
        self.parts.iter().fold((0.0, 0.0), |(lo, hi), (w, r)| {
            let (a, b) = r.range();
            let (a, b) = if *w >= 0.0 {
                (w * a, w * b)
            } else {
                (w * b, w * a)
            };
            (lo + a, hi + b)
        })
    }
    fn score_batch(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>> {
        self.weigh(prompts.len(), |r| r.score_batch(prompts, completions))
    }
    fn score_conversations(&self, prompts: &[&str], turns: &[&[Message]]) -> Result<Vec<f32>> {
        self.weigh(prompts.len(), |r| r.score_conversations(prompts, turns))
    }
    fn flops_spent(&self) -> f64 {
        self.parts.iter().map(|(_, r)| r.flops_spent()).sum()
    }
}

/// Clips the inner reward to `[lo, hi]`.
pub struct Clip<R> {
    inner: R,
    lo: f32,
    hi: f32,
}

impl<R: RewardFn> Clip<R> {
    /// Clip `inner` to `[lo, hi]`.
    pub fn new(inner: R, lo: f32, hi: f32) -> Self {
        Self { inner, lo, hi }
    }
}

impl<R: RewardFn> RewardFn for Clip<R> {
    fn name(&self) -> String {
        format!("clip({},{},{})", self.inner.name(), self.lo, self.hi)
    }
    fn range(&self) -> (f32, f32) {
        let (a, b) = self.inner.range();
        (a.max(self.lo), b.min(self.hi))
    }
    fn score_batch(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>> {
        let raw = self.inner.score_batch(prompts, completions)?;
        Ok(raw.into_iter().map(|s| s.clamp(self.lo, self.hi)).collect())
    }
    fn score_conversations(&self, prompts: &[&str], turns: &[&[Message]]) -> Result<Vec<f32>> {
        let raw = self.inner.score_conversations(prompts, turns)?;
        Ok(raw.into_iter().map(|s| s.clamp(self.lo, self.hi)).collect())
    }
    fn flops_spent(&self) -> f64 {
        self.inner.flops_spent()
    }
}

/// `scale · r + shift`.
pub struct Scale<R> {
    inner: R,
    scale: f32,
    shift: f32,
}

impl<R: RewardFn> Scale<R> {
    /// `scale · inner + shift`.
    pub fn new(inner: R, scale: f32, shift: f32) -> Self {
        Self {
            inner,
            scale,
            shift,
        }
    }
}

impl<R: RewardFn> RewardFn for Scale<R> {
    fn name(&self) -> String {
        format!("{}*{}+{}", self.scale, self.inner.name(), self.shift)
    }
    fn range(&self) -> (f32, f32) {
        let (a, b) = self.inner.range();
        let (a, b) = (self.scale * a + self.shift, self.scale * b + self.shift);
        (a.min(b), a.max(b))
    }
    fn score_batch(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>> {
        let raw = self.inner.score_batch(prompts, completions)?;
        Ok(raw
            .into_iter()
            .map(|s| self.scale * s + self.shift)
            .collect())
    }
    fn score_conversations(&self, prompts: &[&str], turns: &[&[Message]]) -> Result<Vec<f32>> {
        let raw = self.inner.score_conversations(prompts, turns)?;
        Ok(raw
            .into_iter()
            .map(|s| self.scale * s + self.shift)
            .collect())
    }
    fn flops_spent(&self) -> f64 {
        self.inner.flops_spent()
    }
}

/// Normalises by a running mean and standard deviation of every score seen so far
/// (Welford's update, batch by batch): `(r − μ) / (σ + eps)`.
pub struct RunningNorm<R> {
    inner: R,
    stats: Mutex<(f64, f64, f64)>, // (count, mean, M2)
    eps: f32,
}

impl<R: RewardFn> RunningNorm<R> {
    /// Normalise `inner` with running statistics.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            stats: Mutex::new((0.0, 0.0, 0.0)),
            eps: 1e-8,
        }
    }
    /// Current `(mean, std)` of the scores seen so far.
    pub fn stats(&self) -> (f64, f64) {
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let var = if s.0 > 1.0 { s.2 / s.0 } else { 1.0 };
        (s.1, var.sqrt())
    }
}

impl<R: RewardFn> RewardFn for RunningNorm<R> {
    fn name(&self) -> String {
        format!("norm({})", self.inner.name())
    }
    fn score_batch(&self, prompts: &[&str], completions: &[&str]) -> Result<Vec<f32>> {
        Ok(self.normalise(self.inner.score_batch(prompts, completions)?))
    }
    fn score_conversations(&self, prompts: &[&str], turns: &[&[Message]]) -> Result<Vec<f32>> {
        Ok(self.normalise(self.inner.score_conversations(prompts, turns)?))
    }
    fn flops_spent(&self) -> f64 {
        self.inner.flops_spent()
    }
}

impl<R: RewardFn> RunningNorm<R> {
    /// Folds `raw` into the running statistics, then normalises it by them.
    fn normalise(&self, raw: Vec<f32>) -> Vec<f32> {
        {
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            for &x in &raw {
                let x = x as f64;
                s.0 += 1.0;
                let d = x - s.1;
                s.1 += d / s.0;
                s.2 += d * (x - s.1);
            }
        }
        let (mean, std) = self.stats();
        raw.into_iter()
            .map(|x| ((x as f64 - mean) / (std + self.eps as f64)) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{KeywordReward, LengthTarget};

    /// A scorer that says it spends `cost` FLOPs a call and scores conversations as 7.
    struct Costly {
        calls: Mutex<f64>,
        cost: f64,
    }

    impl Costly {
        fn new(cost: f64) -> Self {
            Self {
                calls: Mutex::new(0.0),
                cost,
            }
        }
    }

    impl RewardFn for Costly {
        fn name(&self) -> String {
            "costly".into()
        }
        fn score_batch(&self, prompts: &[&str], _completions: &[&str]) -> Result<Vec<f32>> {
            *self.calls.lock().unwrap() += 1.0;
            Ok(vec![0.0; prompts.len()])
        }
        fn score_conversations(&self, prompts: &[&str], _turns: &[&[Message]]) -> Result<Vec<f32>> {
            Ok(vec![7.0; prompts.len()])
        }
        fn flops_spent(&self) -> f64 {
            *self.calls.lock().unwrap() * self.cost
        }
    }

    /// Through the trait as a generic sees it, so a `Box<dyn RewardFn>` uses its own impl.
    fn spent<R: RewardFn>(r: &R) -> f64 {
        r.flops_spent()
    }

    #[test]
    fn combinators_pass_on_their_scorers_flops_and_conversations() {
        let ws = WeightedSum::new(vec![
            (1.0, Box::new(Costly::new(3.0))),
            (2.0, Box::new(Costly::new(5.0))),
            (1.0, Box::new(LengthTarget::words(3, 3.0))),
        ]);
        let r = RunningNorm::new(Scale::new(Clip::new(ws, -1.0, 1.0), 2.0, 0.0));
        assert_eq!(spent(&r), 0.0);
        r.score_batch(&["p"], &["a b"]).unwrap();
        assert_eq!(spent(&r), 8.0);
        let boxed: Box<dyn RewardFn> = Box::new(r);
        boxed.score_batch(&["p"], &["a b"]).unwrap();
        assert_eq!(spent(&boxed), 16.0);
        assert_eq!(spent(&LengthTarget::words(3, 3.0)), 0.0);
        // A boxed scorer reads conversations its own way, not as transcripts, and so do the
        // combinators over it: 2 · 7 + 0.5 · 7 = 17.5, clipped to 10, then 10 · 0.5 − 1 = 4.
        let turns = [Message::assistant("hi")];
        let conv = |r: &dyn RewardFn| r.score_conversations(&["p"], &[&turns[..]]).unwrap();
        let boxed: Box<dyn RewardFn> = Box::new(Costly::new(1.0));
        assert_eq!(conv(&boxed), vec![7.0]);
        let ws = WeightedSum::new(vec![
            (2.0, Box::new(Costly::new(1.0))),
            (0.5, Box::new(Costly::new(1.0))),
        ]);
        assert_eq!(conv(&ws), vec![17.5]);
        let scaled = Scale::new(Clip::new(ws, 0.0, 10.0), 0.5, -1.0);
        assert_eq!(conv(&scaled), vec![4.0]);
        // A running norm keeps the statistics of those scores (through the transcripts they
        // would be −1: `Costly` scores texts 0).
        let norm = RunningNorm::new(scaled);
        assert_eq!(conv(&norm), vec![0.0]);
        assert_eq!(conv(&norm), vec![0.0]);
        assert_eq!(norm.stats(), (4.0, 0.0));
    }

    #[test]
    fn weighted_sum_clip_scale_compose() {
        let ws = WeightedSum::new(vec![
            (2.0, Box::new(KeywordReward::include(&["good"]))),
            (-1.0, Box::new(LengthTarget::words(3, 3.0))),
        ]);
        // "good" found → 1.0 · 2; 1 word vs target 3 → length reward 1 − 2/3 → −(1/3)
        let s = ws.score_batch(&["p"], &["good"]).unwrap();
        assert!((s[0] - (2.0 - 1.0 / 3.0)).abs() < 1e-6, "{s:?}");
        let c = Clip::new(ws, -1.0, 1.0);
        assert_eq!(c.score_batch(&["p"], &["good"]).unwrap(), vec![1.0]);
        let sc = Scale::new(c, 3.0, 1.0);
        assert_eq!(sc.score_batch(&["p"], &["good"]).unwrap(), vec![4.0]);
        assert!(sc.score_batch(&["p", "q"], &["good"]).is_err());
    }

    #[test]
    fn running_norm_tracks_mean_and_std() {
        let n = RunningNorm::new(LengthTarget::words(0, 10.0));
        // scores 1 − words/10 for 0, 2, 4, 6 words → 1, .8, .6, .4: mean .7
        let comps = ["", "a b", "a b c d", "a b c d e f"];
        let out = n.score_batch(&["p"; 4], &comps).unwrap();
        let (mean, std) = n.stats();
        assert!((mean - 0.7).abs() < 1e-6);
        assert!((std - 0.05f64.sqrt()).abs() < 1e-6);
        assert!((out.iter().sum::<f32>()).abs() < 1e-5);
    }
}
