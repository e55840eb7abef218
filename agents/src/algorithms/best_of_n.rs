//! Best-of-n: no training. The policy samples n completions (episodes, in a multi-turn env) and
//! the reward — the gold reward or a reward model — keeps the best, so the agent sits on the
//! gold-vs-KL frontier beside the trained ones (Gao et al. 2022's baseline; Beirami et al. 2024 on
//! its KL). The shared evaluation does the sampling and the choosing ([`Agent::selection`]); an
//! update does nothing and costs nothing.
//!
//! Its KL to the policy it samples from has the bound `log n − (n − 1)/n` (exact for a continuous
//! reward). Because best-of-n reweights a completion by its reward alone, its KL equals the KL
//! between the reward distributions it induces, so [`best_of_n_kl`] measures it from the
//! candidates' rewards: the plug-in estimate on their empirical distribution, lower where rewards
//! tie (a rule reward with few values).

use crate::metric;
use crate::agent::{Agent, Budget, Metrics, Resumable, Selection, StateFile};
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::lm::policy::LmPolicy;
use crate::rollout::RewardSignal;
use crate::agent::RunnableAgent;
use crate::{AgentError, Result};
use aligngym_envs::RewardFn;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Best-of-n settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BestOfNConfig {
    /// Samples per episode, n. Default 4.
    pub n: usize,
}

impl Default for BestOfNConfig {
    fn default() -> Self {
        Self { n: 4 }
    }
}

impl BestOfNConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.n) {
            return Err(AgentError::config("n", "expected 1 to 1024"));
        }
        Ok(())
    }
}

impl Algorithm for BestOfNConfig {
    const NAME: &'static str = "best_of_n";
    const ABOUT: &'static str =
        "Best-of-n: no training; each episode the best of n samples by the reward";
    const LEARNS: Learns = Learns::Online;
    const TRAINS: bool = false;
    fn check(&self) -> Result<()> {
        self.validate()
    }
    fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
        let prior = ctx.prior_queries();
        let agent = BestOfNAgent::new(self.clone(), ctx.policy, (ctx.reward)()?)?;
        Ok(Box::new(agent.with_prior_oracle_queries(prior)))
    }
}

/// The KL bound of best-of-n, `log n − (n − 1)/n`.
pub fn best_of_n_kl_bound(n: usize) -> f64 {
    let n = n.max(1) as f64;
    n.ln() - (n - 1.0) / n
}

/// KL(best-of-n ‖ base) on the empirical distribution of `rewards` (the base policy's rewards for
/// one prompt): with `P(r)` each value's share, `F(r) = P(R ≤ r)`, `F⁻(r) = P(R < r)`, best-of-n
/// picks value r with `Q(r) = F(r)ⁿ − F⁻(r)ⁿ` (ties broken at random), and the KL is
/// `Σ Q log(Q / P)`. Non-finite rewards are left out; none left gives 0.
pub fn best_of_n_kl(rewards: &[f64], n: usize) -> f64 {
    let mut r: Vec<f64> = rewards.iter().copied().filter(|x| x.is_finite()).collect();
    if r.is_empty() {
        return 0.0;
    }
    r.sort_by(f64::total_cmp);
    let m = r.len() as f64;
    let n = n.max(1) as i32;
    let mut kl = 0.0;
    let mut below = 0usize;
    let mut i = 0;
    while i < r.len() {
        let mut j = i;
        while j < r.len() && r[j] == r[i] {
            j += 1;
        }
        let p = (j - i) as f64 / m;
        let (f, f_minus) = (j as f64 / m, below as f64 / m);
        let q = f.powi(n) - f_minus.powi(n);
        if q > 0.0 {
            kl += q * (q / p).ln();
        }
        below = j;
        i = j;
    }
    kl.max(0.0)
}

/// The best-of-n agent.
pub struct BestOfNAgent {
    cfg: BestOfNConfig,
    policy: LmPolicy,
    reward: RewardSignal,
    budget: Budget,
}

impl BestOfNAgent {
    /// Best-of-`cfg.n` from `policy`, choosing by `reward`.
    pub fn new(cfg: BestOfNConfig, policy: LmPolicy, reward: RewardSignal) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            policy,
            reward,
            budget: Budget::default(),
        })
    }

    /// Count `queries` oracle queries already spent on the choosing reward (a reward model's
    /// preference labels): best-of-n's only training cost.
    pub fn with_prior_oracle_queries(mut self, queries: u64) -> Self {
        self.budget.oracle_queries += queries;
        self
    }
}

impl Agent for BestOfNAgent {
    fn name(&self) -> &'static str {
        "best_of_n"
    }

    /// Nothing to learn: the update records n and the KL bound.
    fn update(&mut self, _step: u64) -> Result<Metrics> {
        let mut m = Metrics::new();
        m.insert(metric::BEST_OF_N_N.into(), self.cfg.n as f64);
        m.insert(metric::BEST_OF_N_KL_BOUND.into(), best_of_n_kl_bound(self.cfg.n));
        Ok(m)
    }

    fn policy(&self) -> &LmPolicy {
        &self.policy
    }

    fn budget(&self) -> Budget {
        self.budget
    }

    fn proxy_reward(&self) -> Option<&dyn RewardFn> {
        self.reward.scorer()
    }

    fn selection(&self) -> Option<Selection<'_>> {
        Some(Selection {
            n: self.cfg.n,
            reward: self.proxy_reward(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct BestOfNState {
    n: usize,
}

/// Nothing changes while it runs; the state records n, so a resumed run is the same agent.
impl Resumable for BestOfNAgent {
    fn save_state(&self, dir: &Path) -> Result<()> {
        StateFile::new().write(dir, "best_of_n_state", &BestOfNState { n: self.cfg.n })
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        let (_, s, _): (StateFile, BestOfNState, _) = StateFile::read(dir, "best_of_n_state")?;
        if s.n != self.cfg.n {
            return Err(AgentError::config(
                "n",
                format!("the run was started with n = {}, not {}", s.n, self.cfg.n),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_best_of_n_by_hand() {
        // The bound: log 4 − 3/4 = 1.3862944 − 0.75 = 0.6362944; n = 1 costs nothing.
        assert!((best_of_n_kl_bound(4) - 0.636_294_4).abs() < 1e-6);
        assert_eq!(best_of_n_kl_bound(1), 0.0);
        // Rewards {1, 2}, n = 2: P = (½, ½), F = (½, 1), F⁻ = (0, ½); Q = (¼, ¾);
        // KL = ¼ log ½ + ¾ log 1.5 = −0.1732868 + 0.3040988 = 0.1308120.
        assert!((best_of_n_kl(&[2.0, 1.0], 2) - 0.130_812_0).abs() < 1e-6);
        // All rewards equal: best-of-n is the base policy.
        assert_eq!(best_of_n_kl(&[0.5, 0.5, 0.5], 4), 0.0);
        // Many distinct rewards approach the bound from below.
        let r: Vec<f64> = (0..10_000).map(|i| i as f64).collect();
        let kl = best_of_n_kl(&r, 4);
        assert!(
            kl < best_of_n_kl_bound(4) && kl > best_of_n_kl_bound(4) - 1e-3,
            "{kl}"
        );
        // Ties lower it: {0, 0, 0, 1}, n = 4: Q(0) = ¾⁴ = 0.3164063, Q(1) = 0.6835938;
        // KL = 0.3164063 log(0.3164063/0.75) + 0.6835938 log(0.6835938/0.25) = 0.4145557.
        assert!((best_of_n_kl(&[0.0, 1.0, 0.0, 0.0], 4) - 0.414_555_7).abs() < 1e-6);
    }
}
