//! The shared evaluation: every agent is measured the same way, on the same held-out episodes with
//! the same sampling settings and the same sampling seed (common random numbers), against the same
//! frozen reference episodes. Episodes run through the rollout collector, so a multi-turn env is
//! evaluated on whole conversations and the KL and entropy count the policy's tokens only.

use aligngym_agents::algorithms::best_of_n::{best_of_n_kl, best_of_n_kl_bound};
use aligngym_agents::lm::sampling::{
    sequence_logprobs, sequence_outputs, EntropyGrad, SamplingConfig,
};
use aligngym_agents::metric;
use aligngym_agents::rollout::{chat_envs, collect, score_episodes, Episode, Rollout, Start};
use aligngym_agents::{LmPolicy, Metrics, Result, Selection};
use aligngym_envs::{
    derive_seed, BradleyTerryOracle, ChatEnvConfig, OracleConfig, PreferenceOracle, RewardFn,
    RewardSource, Rule, Split, Task,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use tch::Kind;

/// Evaluation settings, shared by every run of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Prompts evaluated (the first N of the eval split; N spread over the training prompts for
    /// `split = "validation"`); 0 means all. Default 128.
    pub prompts: usize,
    /// Completions sampled per eval prompt (more gives steadier means on small eval splits). Default 4.
    pub samples_per_prompt: usize,
    /// Sampling settings of the evaluation (temperature 0.7 by default, as in training).
    pub sampling: SamplingConfig,
    /// The oracle judging win rates against the reference.
    pub oracle: OracleConfig,
    /// Which prompts: `eval` (the held-out split, default: what verdicts read) or `validation`
    /// (training prompts, evenly spaced: what a sweep's tuning chooses on, never the verdict's).
    pub split: EvalSplit,
}

/// The prompts an evaluation reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalSplit {
    /// The task's held-out eval split, its first `prompts`.
    #[default]
    Eval,
    /// `prompts` of the task's training prompts, evenly spaced over them: disjoint from the eval
    /// split by construction, so choosing a configuration on them leaves the verdict's prompts
    /// unseen. (They are prompts the agents train on: a task's split has no third share, and
    /// carving one out would change every training run.)
    Validation,
}

impl EvalSplit {
    /// The task split the prompts come from, and the indices of `n` of its `all` prompts (`n` = 0:
    /// all of them).
    fn pick(self, all: usize, n: usize) -> (Split, Vec<usize>) {
        let n = if n == 0 { all } else { n.min(all) };
        match self {
            Self::Eval => (Split::Eval, (0..n).collect()),
            Self::Validation => (Split::Train, (0..n).map(|i| i * all / n.max(1)).collect()),
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            prompts: 128,
            samples_per_prompt: 4,
            sampling: SamplingConfig {
                max_new_tokens: 0,
                ..Default::default()
            },
            oracle: OracleConfig::default(),
            split: EvalSplit::Eval,
        }
    }
}

/// Evaluates policies against the frozen reference on fixed eval episodes, through the rollout
/// collector (the same path the agents train on).
pub struct Evaluator {
    cfg: EvalConfig,
    sampling: SamplingConfig,
    task: Arc<dyn Task>,
    /// The task split the prompts come from ([`EvalSplit::pick`]).
    split: Split,
    /// That split's prompt index of each episode.
    indices: Vec<usize>,
    gold: Arc<dyn Rule>,
    reference: LmPolicy,
    ref_transcripts: Vec<String>,
    ref_gold: f64,
    seed: u64,
}

/// Fraction of distinct token bigrams among all bigrams of the completions.
pub fn distinct_2(completions: &[Vec<u32>]) -> f64 {
    let mut all = 0usize;
    let mut seen = HashSet::new();
    for c in completions {
        for w in c.windows(2) {
            all += 1;
            seen.insert((w[0], w[1]));
        }
    }
    if all == 0 {
        0.0
    } else {
        seen.len() as f64 / all as f64
    }
}

fn mean(v: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = v.len().max(1) as f64;
    v.sum::<f64>() / n
}

impl Evaluator {
    /// An evaluator for `task` against `reference` (the SFT policy); `seed` fixes the sampling noise.
    pub fn new(
        task: Arc<dyn Task>,
        reference: &LmPolicy,
        cfg: EvalConfig,
        seed: u64,
    ) -> Result<Self> {
        let all = match cfg.split {
            EvalSplit::Eval => task.prompts(Split::Eval).len(),
            EvalSplit::Validation => task.prompts(Split::Train).len(),
        };
        let (split, picked) = cfg.split.pick(all, cfg.prompts);
        let k = cfg.samples_per_prompt.max(1);
        let indices: Vec<usize> = picked
            .into_iter()
            .flat_map(|i| std::iter::repeat_n(i, k))
            .collect();
        let mut sampling = cfg.sampling.clone();
        if sampling.max_new_tokens == 0 {
            sampling.max_new_tokens = task.max_new_tokens();
        }
        let reference = reference.duplicate(false)?;
        let gold = task.gold();
        let mut ev = Self {
            cfg,
            sampling,
            task,
            split,
            indices,
            gold,
            reference,
            ref_transcripts: Vec::new(),
            ref_gold: 0.0,
            seed,
        };
        let r = ev.sample(&ev.reference)?;
        ev.ref_gold = mean(r.episodes.iter().map(|e| e.gold as f64));
        ev.ref_transcripts = r.episodes.into_iter().map(|e| e.transcript).collect();
        Ok(ev)
    }

    /// The eval prompts, one per episode (each repeated `samples_per_prompt` times).
    pub fn prompts(&self) -> Vec<&str> {
        let p = self.task.prompts(self.split);
        self.indices.iter().map(|&i| p[i].as_str()).collect()
    }
    /// Mean gold reward of the reference's episodes.
    pub fn reference_gold(&self) -> f64 {
        self.ref_gold
    }

    /// The eval episodes of `policy`, with the same sampling noise for every policy.
    pub fn sample(&self, policy: &LmPolicy) -> Result<Rollout> {
        self.collect_on(policy, &self.indices, None, 0xe7a1)
    }

    /// Episodes of `policy` on the eval prompts `indices`, scored by `scorer` (else the gold
    /// reward), with the sampling noise of seed stream `stream`.
    fn collect_on(
        &self,
        policy: &LmPolicy,
        indices: &[usize],
        scorer: Option<&dyn RewardFn>,
        stream: u64,
    ) -> Result<Rollout> {
        let mut envs = chat_envs(
            self.task.clone(),
            indices.len(),
            ChatEnvConfig {
                split: self.split,
                reward: if scorer.is_some() {
                    RewardSource::External
                } else {
                    RewardSource::Gold
                },
                max_turns: 0,
            },
            true,
        )?;
        tch::manual_seed(derive_seed(self.seed, stream) as i64);
        collect(
            policy,
            &mut envs,
            Start::Prompts(indices),
            &self.sampling,
            scorer,
        )
    }

    /// For a selecting agent: each eval episode as the best of `sel.n` the policy samples (by
    /// `sel.reward`, else the gold reward; the first on ties), and the mean over episodes of
    /// best-of-n's KL measured on its candidates' rewards ([`best_of_n_kl`]).
    pub fn sample_best_of(&self, policy: &LmPolicy, sel: Selection<'_>) -> Result<(Rollout, f64)> {
        let n = sel.n.max(1);
        let indices: Vec<usize> = self
            .indices
            .iter()
            .flat_map(|&i| std::iter::repeat_n(i, n))
            .collect();
        let all = self.collect_on(policy, &indices, sel.reward, 0xb0f)?;
        let mut best = Vec::with_capacity(self.indices.len());
        let mut kl = 0.0;
        for (slot, cands) in all.episodes.chunks(n).enumerate() {
            let r: Vec<f64> = cands.iter().map(|e| e.reward as f64).collect();
            let top = (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b });
            best.push(slot * n + top);
            kl += best_of_n_kl(&r, n);
        }
        let k = best.len().max(1) as f64;
        Ok((all.select(&best), kl / k))
    }

    /// The comparison-axis metrics of `policy` (`eval/*`), with `proxy` scored where given;
    /// `step` seeds the oracle's win-rate labels. With `selection`, each episode is the best of
    /// n ([`Evaluator::sample_best_of`]) and `eval/kl_to_ref` is best-of-n's measured KL (its
    /// bound is `eval/kl_bound`).
    pub fn evaluate(
        &self,
        policy: &LmPolicy,
        proxy: Option<&dyn RewardFn>,
        selection: Option<Selection<'_>>,
        step: u64,
    ) -> Result<Metrics> {
        let (roll, selected_kl) = match selection {
            Some(sel) => {
                let (r, kl) = self.sample_best_of(policy, sel)?;
                (r, Some((kl, best_of_n_kl_bound(sel.n))))
            }
            None => (self.sample(policy)?, None),
        };
        let eps = &roll.episodes;
        let prompts: Vec<&str> = eps.iter().map(|e| e.prompt.as_str()).collect();
        let comps: Vec<&str> = eps.iter().map(|e| e.transcript.as_str()).collect();
        let mut m = Metrics::new();
        m.insert(
            metric::EVAL_GOLD_REWARD.into(),
            mean(eps.iter().map(|e| e.gold as f64)),
        );
        if let Some(p) = proxy {
            // Scored as the collector scores training episodes: one code path.
            let all: Vec<&Episode> = eps.iter().collect();
            let s = score_episodes(p, &all, self.task.max_turns() > 1)?;
            m.insert(
                metric::EVAL_PROXY_REWARD.into(),
                mean(s.iter().map(|&x| x as f64)),
            );
        }
        let t = self.sampling.temperature;
        let (kl, ent) = tch::no_grad(|| {
            let pi = sequence_outputs(&policy.model, &roll.seqs, t, false, EntropyGrad::Detached);
            let rf = sequence_logprobs(&self.reference.model, &roll.seqs, t, false);
            // Both log-prob tensors are zero off the policy's tokens.
            let kl = (&pi.logprobs - &rf)
                .sum_dim_intlist(1, false, Kind::Float)
                .mean(Kind::Float);
            let ent = aligngym_agents::losses::masked_mean(&pi.entropy, &roll.seqs.mask);
            (kl.double_value(&[]), ent.double_value(&[]))
        });
        match selected_kl {
            // The policy is its own reference here; the selection is what moved.
            Some((measured, bound)) => {
                m.insert(metric::EVAL_KL_TO_REF.into(), measured);
                m.insert(metric::EVAL_KL_BOUND.into(), bound);
            }
            None => {
                m.insert(metric::EVAL_KL_TO_REF.into(), kl);
            }
        }
        m.insert(metric::EVAL_ENTROPY.into(), ent);
        let refs: Vec<&str> = self.ref_transcripts.iter().map(|s| s.as_str()).collect();
        let mut oracle = BradleyTerryOracle::new(
            self.gold.clone(),
            self.cfg.oracle,
            derive_seed(self.seed, step ^ 0x0a11),
        )?;
        let prefs = oracle.compare_batch(&prompts, &comps, &refs)?;
        let wins = prefs
            .iter()
            .zip(comps.iter().zip(&refs))
            .map(|(p, (a, b))| {
                if a == b {
                    0.5
                } else if p.a_wins {
                    1.0
                } else {
                    0.0
                }
            });
        m.insert(metric::EVAL_WIN_RATE_VS_REF.into(), mean(wins));
        let ids: Vec<Vec<u32>> = eps.iter().map(|e| e.policy_tokens()).collect();
        m.insert(
            metric::EVAL_RESPONSE_LEN.into(),
            mean(ids.iter().map(|c| c.len() as f64)),
        );
        m.insert(metric::EVAL_DISTINCT_2.into(), distinct_2(&ids));
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aligngym_agents::stages::sft;
    use aligngym_agents::{GptConfig, Tokenizer};
    use aligngym_envs::{Message, TextCodec};

    #[test]
    fn validation_prompts_are_spread_over_the_training_split_and_eval_keeps_its_first() {
        // 10 training prompts, 4 wanted: every 2.5th, rounded down.
        assert_eq!(
            EvalSplit::Validation.pick(10, 4),
            (Split::Train, vec![0, 2, 5, 7])
        );
        assert_eq!(EvalSplit::Eval.pick(10, 4), (Split::Eval, vec![0, 1, 2, 3]));
        // More wanted than there are, or 0: all of them.
        assert_eq!(EvalSplit::Validation.pick(3, 8).1, vec![0, 1, 2]);
        assert_eq!(EvalSplit::Eval.pick(3, 0).1, vec![0, 1, 2]);
    }

    /// Tells the two scoring paths apart: a conversation scores its number of turns, a transcript 0.
    struct TurnCounter;
    impl RewardFn for TurnCounter {
        fn name(&self) -> String {
            "turns".into()
        }
        fn score_batch(&self, _: &[&str], completions: &[&str]) -> aligngym_envs::Result<Vec<f32>> {
            Ok(vec![0.0; completions.len()])
        }
        fn score_conversations(
            &self,
            _: &[&str],
            turns: &[&[Message]],
        ) -> aligngym_envs::Result<Vec<f32>> {
            Ok(turns.iter().map(|t| t.len() as f32).collect())
        }
    }

    #[test]
    fn the_proxy_reward_scores_multi_turn_eval_episodes_as_training_does() {
        let task = aligngym_envs::task("guess-number-v0").unwrap();
        let tok = Tokenizer::train(&task.corpus(400, 0), 300).unwrap();
        let cfg = GptConfig::gpt2(tok.vocab_size(), 1, 2, 32, 128);
        let (vs, model) = sft::init_model(&cfg, tch::Device::Cpu, 1).unwrap();
        let policy = LmPolicy {
            vs,
            model,
            tokenizer: tok,
            adapter_base: None,
        };
        let eval_cfg = EvalConfig {
            prompts: 4,
            samples_per_prompt: 1,
            ..Default::default()
        };
        let ev = Evaluator::new(task.clone(), &policy, eval_cfg, 5).unwrap();
        let m = ev.evaluate(&policy, Some(&TurnCounter), None, 0).unwrap();
        // The same episodes (same sampling seed), scored as whole conversations.
        let roll = ev.sample(&policy).unwrap();
        let turns = roll.episodes.iter().map(|e| e.turns.len() as f64);
        let want = turns.clone().sum::<f64>() / roll.episodes.len() as f64;
        assert!(
            turns.clone().any(|t| t > 1.0),
            "no episode went past one turn"
        );
        assert_eq!(m[metric::EVAL_PROXY_REWARD], want);
    }
}
