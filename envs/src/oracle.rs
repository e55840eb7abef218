//! Simulated preference raters: Bradley–Terry over a gold reward, with a temperature and a
//! label-flip rate, seeded so a preference data set is reproducible from its seed.

use crate::reward::RewardFn;
use crate::{EnvError, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Settings of the Bradley–Terry oracle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OracleConfig {
    /// Temperature τ of `P(a ≻ b) = σ((R(a) − R(b)) / τ)`; 0 means always prefer the higher gold
    /// reward (ties broken by a fair coin). Default 0.1, a fairly decisive rater on rewards in [−1, 1].
    pub temperature: f32,
    /// Probability of flipping the label after sampling it (simulated rater noise). Default 0.
    pub flip_rate: f32,
}

impl Default for OracleConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            flip_rate: 0.0,
        }
    }
}

impl OracleConfig {
    /// Check the ranges: τ ≥ 0 and finite, 0 ≤ flip_rate ≤ 1.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(EnvError::InvalidConfig {
                field: "temperature",
                msg: "expected a finite value ≥ 0".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.flip_rate) {
            return Err(EnvError::InvalidConfig {
                field: "flip_rate",
                msg: "expected a value in [0, 1]".into(),
            });
        }
        Ok(())
    }
}

/// One comparison: whether the first completion won, and the probability it had of winning
/// (after the flip noise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preference {
    /// True when `a` is preferred to `b`.
    pub a_wins: bool,
    /// `P(a ≻ b)` under the oracle, flips included.
    pub prob_a: f32,
    /// Gold reward of `a`.
    pub reward_a: f32,
    /// Gold reward of `b`.
    pub reward_b: f32,
}

/// Compares two completions of a prompt.
pub trait PreferenceOracle {
    /// Compare `a[i]` with `b[i]` for `prompts[i]`, for each i.
    fn compare_batch(
        &mut self,
        prompts: &[&str],
        a: &[&str],
        b: &[&str],
    ) -> Result<Vec<Preference>>;
    /// Number of single comparisons answered so far (a budget the runner reports).
    fn queries(&self) -> u64;
}

/// `P(a ≻ b) = (1 − f) · σ(Δ/τ) + f · (1 − σ(Δ/τ))`, the probability after label flips.
pub fn preference_probability(delta: f32, temperature: f32, flip_rate: f32) -> f32 {
    let p = if temperature == 0.0 {
        if delta > 0.0 {
            1.0
        } else if delta < 0.0 {
            0.0
        } else {
            0.5
        }
    } else {
        1.0 / (1.0 + (-delta / temperature).exp())
    };
    (1.0 - flip_rate) * p + flip_rate * (1.0 - p)
}

/// The Bradley–Terry oracle over a gold reward.
pub struct BradleyTerryOracle<R> {
    gold: R,
    cfg: OracleConfig,
    rng: StdRng,
    queries: u64,
}

impl<R: RewardFn> BradleyTerryOracle<R> {
    /// An oracle over `gold`, seeded with `seed`.
    pub fn new(gold: R, cfg: OracleConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            gold,
            cfg,
            rng: StdRng::seed_from_u64(seed),
            queries: 0,
        })
    }
    /// The gold reward the oracle compares with.
    pub fn gold(&self) -> &R {
        &self.gold
    }
    /// The oracle's settings.
    pub fn config(&self) -> OracleConfig {
        self.cfg
    }
}

impl<R: RewardFn> PreferenceOracle for BradleyTerryOracle<R> {
    fn compare_batch(
        &mut self,
        prompts: &[&str],
        a: &[&str],
        b: &[&str],
    ) -> Result<Vec<Preference>> {
        if a.len() != prompts.len() || b.len() != prompts.len() {
            return Err(EnvError::Reward {
                name: "oracle".into(),
                msg: format!("{} prompts, {} a, {} b", prompts.len(), a.len(), b.len()),
            });
        }
        let ra = self.gold.score_batch(prompts, a)?;
        let rb = self.gold.score_batch(prompts, b)?;
        self.queries += prompts.len() as u64;
        Ok(ra
            .into_iter()
            .zip(rb)
            .map(|(x, y)| {
                let p_clean = preference_probability(x - y, self.cfg.temperature, 0.0);
                let mut a_wins = self.rng.random::<f32>() < p_clean;
                if self.rng.random::<f32>() < self.cfg.flip_rate {
                    a_wins = !a_wins;
                }
                let prob_a =
                    preference_probability(x - y, self.cfg.temperature, self.cfg.flip_rate);
                Preference {
                    a_wins,
                    prob_a,
                    reward_a: x,
                    reward_b: y,
                }
            })
            .collect())
    }
    fn queries(&self) -> u64 {
        self.queries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward::Rule;

    /// Gold reward = the number parsed from the completion.
    struct Num;
    impl Rule for Num {
        fn name(&self) -> String {
            "num".into()
        }
        fn range(&self) -> (f32, f32) {
            (f32::NEG_INFINITY, f32::INFINITY)
        }
        fn score(&self, _p: &str, c: &str) -> f32 {
            c.parse().unwrap_or(0.0)
        }
    }

    fn rate(cfg: OracleConfig, a: &str, b: &str, n: usize, seed: u64) -> f64 {
        let mut o = BradleyTerryOracle::new(Num, cfg, seed).unwrap();
        let prefs = o
            .compare_batch(&vec!["p"; n], &vec![a; n], &vec![b; n])
            .unwrap();
        assert_eq!(o.queries(), n as u64);
        prefs.iter().filter(|p| p.a_wins).count() as f64 / n as f64
    }

    #[test]
    fn empirical_rate_matches_bradley_terry() {
        let n = 20_000;
        for (delta, tau) in [(0.1f32, 0.1f32), (0.3, 0.5), (-0.2, 0.1), (0.0, 1.0)] {
            let cfg = OracleConfig {
                temperature: tau,
                flip_rate: 0.0,
            };
            let p = 1.0 / (1.0 + (-(delta / tau) as f64).exp());
            let emp = rate(cfg, &format!("{delta}"), "0", n, 7);
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (emp - p).abs() < 4.0 * se + 1e-9,
                "Δ={delta} τ={tau}: {emp} vs {p}"
            );
        }
    }

    #[test]
    fn flip_rate_behaves_as_specified() {
        let n = 20_000;
        // τ = 0: the better completion always wins before flips, so the win rate is 1 − flip_rate.
        for f in [0.0f32, 0.1, 0.3, 0.5] {
            let emp = rate(
                OracleConfig {
                    temperature: 0.0,
                    flip_rate: f,
                },
                "1",
                "0",
                n,
                3,
            );
            let p = 1.0 - f as f64;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!((emp - p).abs() < 4.0 * se + 1e-9, "flip {f}: {emp}");
        }
        assert!((preference_probability(1.0, 0.0, 0.25) - 0.75).abs() < 1e-7);
    }

    #[test]
    fn same_seed_same_labels() {
        let cfg = OracleConfig {
            temperature: 1.0,
            flip_rate: 0.2,
        };
        let run = |seed| {
            let mut o = BradleyTerryOracle::new(Num, cfg, seed).unwrap();
            o.compare_batch(&["p"; 200], &["0.2"; 200], &["0"; 200])
                .unwrap()
                .iter()
                .map(|p| p.a_wins)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }

    #[test]
    fn bad_config_rejected() {
        assert!(OracleConfig {
            temperature: -1.0,
            flip_rate: 0.0
        }
        .validate()
        .is_err());
        assert!(OracleConfig {
            temperature: 1.0,
            flip_rate: 1.5
        }
        .validate()
        .is_err());
    }
}
