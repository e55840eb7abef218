//! The shared evaluation: every agent is measured the same way, on the same held-out prompts with
//! the same sampling settings and the same sampling seed (common random numbers), against the same
//! frozen reference samples.

use aligngym_agents::sampling::{sequence_logprobs, sequence_outputs, SamplingConfig};
use aligngym_agents::{LmPolicy, Metrics, Policy, Result};
use aligngym_envs::{
    derive_seed, BradleyTerryOracle, OracleConfig, PreferenceOracle, RewardFn, Rule, Split, Task,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use tch::Kind;

/// Evaluation settings, shared by every run of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out prompts evaluated (the first N of the eval split); 0 means all. Default 128.
    pub prompts: usize,
    /// Completions sampled per eval prompt (more gives steadier means on small eval splits). Default 4.
    pub samples_per_prompt: usize,
    /// Sampling settings of the evaluation (temperature 0.7 by default, as in training).
    pub sampling: SamplingConfig,
    /// The oracle judging win rates against the reference.
    pub oracle: OracleConfig,
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
        }
    }
}

/// Evaluates policies against the frozen reference on fixed eval prompts.
pub struct Evaluator {
    cfg: EvalConfig,
    sampling: SamplingConfig,
    prompts: Vec<String>,
    gold: Arc<dyn Rule>,
    reference: LmPolicy,
    ref_completions: Vec<String>,
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

impl Evaluator {
    /// An evaluator for `task` against `reference` (the SFT policy); `seed` fixes the sampling noise.
    pub fn new(task: &dyn Task, reference: &LmPolicy, cfg: EvalConfig, seed: u64) -> Result<Self> {
        let all = task.prompts(Split::Eval);
        let n = if cfg.prompts == 0 {
            all.len()
        } else {
            cfg.prompts.min(all.len())
        };
        let k = cfg.samples_per_prompt.max(1);
        let prompts: Vec<String> = all[..n]
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), k))
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
            prompts,
            gold,
            reference,
            ref_completions: Vec::new(),
            ref_gold: 0.0,
            seed,
        };
        let (comps, _, _) = ev.sample(&ev.reference)?;
        let refs: Vec<&str> = ev.prompts.iter().map(|s| s.as_str()).collect();
        let cr: Vec<&str> = comps.iter().map(|s| s.as_str()).collect();
        let g = ev.gold.score_batch(&refs, &cr)?;
        ev.ref_gold = g.iter().map(|&x| x as f64).sum::<f64>() / g.len().max(1) as f64;
        ev.ref_completions = comps;
        Ok(ev)
    }

    /// The eval prompts, each repeated `samples_per_prompt` times.
    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }
    /// Mean gold reward of the reference's samples.
    pub fn reference_gold(&self) -> f64 {
        self.ref_gold
    }

    fn sample(
        &self,
        policy: &LmPolicy,
    ) -> Result<(
        Vec<String>,
        Vec<Vec<u32>>,
        aligngym_agents::sampling::Generation,
    )> {
        tch::manual_seed(derive_seed(self.seed, 0xe7a1) as i64);
        let ids = policy.encode_prompts(&self.prompts);
        let mut out_texts = Vec::new();
        let mut out_ids = Vec::new();
        let gen = policy.sample(&ids, &self.sampling)?;
        for c in gen.completions() {
            out_texts.push(policy.tokenizer.decode_ids(&c));
            out_ids.push(c);
        }
        Ok((out_texts, out_ids, gen))
    }

    /// The comparison-axis metrics of `policy` (`eval/*`), with `proxy` scored where given;
    /// `step` seeds the oracle's win-rate labels.
    pub fn evaluate(
        &self,
        policy: &LmPolicy,
        proxy: Option<&dyn RewardFn>,
        step: u64,
    ) -> Result<Metrics> {
        let (texts, ids, gen) = self.sample(policy)?;
        let prompts: Vec<&str> = self.prompts.iter().map(|s| s.as_str()).collect();
        let comps: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let gold = self.gold.score_batch(&prompts, &comps)?;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        let mut m = Metrics::new();
        m.insert("eval/gold_reward".into(), mean(&gold));
        if let Some(p) = proxy {
            m.insert(
                "eval/proxy_reward".into(),
                mean(&p.score_batch(&prompts, &comps)?),
            );
        }
        let t = self.sampling.temperature;
        let (kl, ent) = tch::no_grad(|| {
            let pi = sequence_outputs(
                &policy.model,
                &gen.prompt,
                &gen.prompt_valid,
                &gen.tokens,
                &gen.mask,
                t,
                false,
            );
            let rf = sequence_logprobs(
                &self.reference.model,
                &gen.prompt,
                &gen.prompt_valid,
                &gen.tokens,
                &gen.mask,
                t,
                false,
            );
            // Both log-prob tensors are already zero on padding.
            let kl = (&pi.logprobs - &rf)
                .sum_dim_intlist(1, false, Kind::Float)
                .mean(Kind::Float);
            let ent = aligngym_agents::losses::masked_mean(&pi.entropy, &gen.mask);
            (kl.double_value(&[]), ent.double_value(&[]))
        });
        m.insert("eval/kl_to_ref".into(), kl);
        m.insert("eval/entropy".into(), ent);
        let refs: Vec<&str> = self.ref_completions.iter().map(|s| s.as_str()).collect();
        let mut oracle = BradleyTerryOracle::new(
            self.gold.clone(),
            self.cfg.oracle,
            derive_seed(self.seed, step ^ 0x0a11),
        )?;
        let prefs = oracle.compare_batch(&prompts, &comps, &refs)?;
        let wins: f64 = prefs
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
            })
            .sum();
        m.insert(
            "eval/win_rate_vs_ref".into(),
            wins / prefs.len().max(1) as f64,
        );
        m.insert(
            "eval/response_len".into(),
            ids.iter().map(|c| c.len() as f64).sum::<f64>() / ids.len().max(1) as f64,
        );
        m.insert("eval/distinct_2".into(), distinct_2(&ids));
        Ok(m)
    }
}
