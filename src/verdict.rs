//! Decision rules and verdicts: each claim spec fixes, before any run, what it compares (a
//! [`Quantity`] of two agents), which way the claim predicts, the statistic, the confidence and a
//! practical margin; after the runs every task gets **holds**, **refuted** or **inconclusive**,
//! Holm-corrected over the claim's tasks.

use crate::metrics::MetricRow;
use crate::stats::{self, Comparison};
use crate::sweep::SweepSpec;
use aligngym_agents::metric;
use aligngym_agents::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a rule compares, per run or per seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Each run's final `eval/gold_reward`.
    FinalGold,
    /// Gold reward at matched KL: each run's (KL, gold) evaluation curve interpolated onto a KL
    /// grid common to every run of both agents; per seed the best of the agent's runs (its grid
    /// points: the frontier) at each grid KL, averaged over the grid.
    GoldAtKl,
    /// Wall seconds until a run's evaluation first reaches a common gold-reward level (half the
    /// smaller of the two agents' median gains over the start), the whole pipeline's
    /// (`pipeline/wall_seconds`: the run's own and the stages it consumed); ∞ when it never does.
    /// Compared as a ratio.
    WallToReach,
    /// FLOPs until that level, as [`Quantity::WallToReach`].
    FlopsToReach,
    /// Per seed, the interquartile range of the final gold reward over the agent's grid points
    /// (its hyperparameter sensitivity). Compared as a ratio.
    IqrOverGrid,
}

impl Quantity {
    /// Compared on a log scale (a ratio of the two agents), margins as fractions.
    fn is_ratio(self) -> bool {
        matches!(
            self,
            Quantity::WallToReach | Quantity::FlopsToReach | Quantity::IqrOverGrid
        )
    }

    /// Read where training ended (final gold, the frontier, the spread of final golds), so a
    /// budget that ended while an agent was still improving leaves it undecided; a cost to reach
    /// a level does not depend on what came after.
    fn reads_the_end(self) -> bool {
        !matches!(self, Quantity::WallToReach | Quantity::FlopsToReach)
    }

    /// May be infinite (never reached) or zero: only rank statistics apply.
    fn needs_ranks(self) -> bool {
        self.is_ratio()
    }

    /// What the effect column shows.
    pub fn effect_label(self) -> &'static str {
        match self {
            Quantity::FinalGold => "final gold reward, a − b",
            Quantity::GoldAtKl => "gold reward at matched KL, a − b",
            Quantity::WallToReach => "wall seconds to the level, a / b",
            Quantity::FlopsToReach => "FLOPs to the level, a / b",
            Quantity::IqrOverGrid => "IQR of final gold over the grid, a / b",
        }
    }
}

/// Which way the claim predicts a's quantity lies from b's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// a's is larger (better rewards, more sensitivity).
    Greater,
    /// a's is smaller (lower costs).
    Less,
}

/// How the two agents' values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Percentile bootstrap (10,000 resamples of the seeds) of the difference of means.
    #[default]
    Bootstrap,
    /// Mann–Whitney U (exact permutation p-values) with the Hodges–Lehmann shift and its Moses
    /// interval; rank-based, so it copes with runs that never reach a level.
    MannWhitney,
}

/// A claim's decision rule, fixed in its spec before the runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRule {
    /// What is compared.
    pub quantity: Quantity,
    /// The agent the claim favours (a name from `agents`).
    pub a: String,
    /// The agent it is compared with.
    pub b: String,
    /// `greater`: the claim holds when a's quantity exceeds b's; `less`: when it is below.
    pub direction: Direction,
    /// `bootstrap` (default) or `mann_whitney` (required for the quantities that can be ∞).
    #[serde(default)]
    pub statistic: Statistic,
    /// Two-sided confidence of the interval; each one-sided test runs at (1 − confidence) / 2,
    /// Holm-corrected over the claim's tasks. Default 0.95.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Practical-significance margin the effect must clear, in the quantity's units (gold reward
    /// for `final_gold` and `gold_at_kl`; a fraction for the ratios: 0.1 = at least 10% apart).
    /// A negative margin makes a non-inferiority rule: it holds when a is at most that much worse
    /// than b (a claim that a matches b). Default 0.
    #[serde(default)]
    pub margin: f64,
}

fn default_confidence() -> f64 {
    0.95
}

/// Bootstrap resamples (fixed, and the stream seeded: the same runs give the same verdict).
const RESAMPLES: usize = 10_000;
/// Seeds per agent below which a bootstrap rule is decided by Welch's t instead: a percentile
/// bootstrap over fewer values has no valid interval.
const BOOTSTRAP_MIN_SEEDS: usize = 10;

impl DecisionRule {
    /// Check the rule against the spec's agents.
    pub fn validate(&self, spec: &SweepSpec) -> Result<()> {
        let agent = |n: &str| spec.agents.iter().find(|a| a.name == n);
        for (field, n) in [("rule.a", &self.a), ("rule.b", &self.b)] {
            if agent(n).is_none() {
                return Err(AgentError::config(
                    field,
                    format!(
                        "no agent named `{n}`; the agents are {}",
                        spec.agents
                            .iter()
                            .map(|a| a.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        if self.a == self.b {
            return Err(AgentError::config("rule.b", "must differ from rule.a"));
        }
        if let (Some(a), Some(b)) = (agent(&self.a), agent(&self.b)) {
            let cost = matches!(
                self.quantity,
                Quantity::WallToReach | Quantity::FlopsToReach
            );
            if cost && a.configurations() > 1 {
                return Err(AgentError::config(
                    "rule.quantity",
                    format!(
                        "`{}` and `{}` are tuned: a cost to reach a level would leave out what their tuning runs spent",
                        self.a, self.b
                    ),
                ));
            }
            let (ka, kb) = (a.configurations(), b.configurations());
            if ka != kb {
                return Err(AgentError::config(
                    "rule.b",
                    format!(
                        "`{}` tries {ka} configuration(s) before its runs and `{}` {kb}: a fair rule tunes both sides alike (`tune` grids of as many points)",
                        self.a, self.b
                    ),
                ));
            }
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return Err(AgentError::config(
                "rule.confidence",
                "expected a value in (0.5, 1)",
            ));
        }
        if !(self.margin.is_finite() && (!self.quantity.is_ratio() || self.margin > -1.0)) {
            return Err(AgentError::config(
                "rule.margin",
                "expected a finite value (above −1 for a ratio)",
            ));
        }
        if self.quantity.needs_ranks() && self.statistic != Statistic::MannWhitney {
            return Err(AgentError::config(
                "rule.statistic",
                format!(
                    "`{:?}` can be infinite or zero (a run that never reaches the level, a flat grid): use `mann_whitney`",
                    self.quantity
                ),
            ));
        }
        for n in [&self.a, &self.b] {
            let grid_points: usize = agent(n)
                .map(|a| a.grid.values().map(|v| v.len().max(1)).product())
                .unwrap_or(1);
            match self.quantity {
                Quantity::IqrOverGrid if grid_points < 2 => {
                    return Err(AgentError::config(
                        "rule.quantity",
                        format!("`iqr_over_grid` needs a grid of ≥ 2 points for agent `{n}`"),
                    ))
                }
                Quantity::FinalGold | Quantity::WallToReach | Quantity::FlopsToReach
                    if grid_points > 1 =>
                {
                    return Err(AgentError::config(
                        "rule.quantity",
                        format!(
                            "agent `{n}` has a grid: per-seed values are ambiguous for `{:?}` (use `gold_at_kl` or `iqr_over_grid`)",
                            self.quantity
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A task's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The interval clears the margin in the claimed direction (Holm-corrected).
    Holds,
    /// The interval lies below the margin: the claimed effect is not there (or goes the other way).
    Refuted,
    /// Neither.
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Holds => "holds",
            Verdict::Refuted => "refuted",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// The measured effect of one task, in the quantity's own units (a − b, or a / b).
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    /// Point estimate.
    pub value: f64,
    /// Interval at the rule's confidence.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// Holm-adjusted p-value of "the claim does not hold" (effect within the margin or against).
    pub p_holds: f64,
    /// Holm-adjusted p-value of "the claim holds".
    pub p_refuted: f64,
    /// Rank-biserial correlation (Mann–Whitney): P(a beats b) − P(b beats a), oriented with the
    /// claim.
    pub rank_biserial: Option<f64>,
    /// Median of a's values and of b's (raw units).
    pub medians: (f64, f64),
}

/// One task's outcome of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVerdict {
    /// Env id.
    pub env: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The effect, when both agents had enough runs to compare.
    pub effect: Option<Effect>,
    /// Values (seeds) of a and of b that entered.
    pub seeds: (usize, usize),
    /// Why, in words (the level, the KL range, what would resolve it).
    pub detail: String,
    /// The rule's agents with a series still improving when its budget ended
    /// ([`crate::convergence`]); where the quantity reads the end of training, a decided verdict
    /// resting on one is "inconclusive (not converged)".
    pub not_converged: Vec<String>,
    /// The verdict the same rule gives on the first half of each run (its evaluations up to half
    /// its final step), where that differs: the verdict is budget-dependent.
    pub at_half_budget: Option<Verdict>,
}

/// A claim's verdicts over its tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimVerdict {
    /// The sweep's name.
    pub name: String,
    /// The claim in words.
    pub claim: String,
    /// Its rule.
    pub rule: DecisionRule,
    /// One per env of the sweep, in the spec's order.
    pub tasks: Vec<TaskVerdict>,
}

/// A run's rows with its seed and grid point, as the spec lists them.
struct Run<'a> {
    seed: u64,
    point: String,
    rows: &'a [MetricRow],
}

fn runs_of<'a>(
    spec: &SweepSpec,
    metrics: &'a BTreeMap<String, Vec<MetricRow>>,
    env: &str,
    agent: &str,
) -> Vec<Run<'a>> {
    spec.runs()
        .into_iter()
        .filter(|r| r.env == env && r.agent.name == agent)
        .filter_map(|r| {
            metrics.get(&r.id).map(|rows| Run {
                seed: r.seed,
                point: format!("{:?}", r.point),
                rows,
            })
        })
        .collect()
}

fn at_step(rows: &[MetricRow], step: u64, metric: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.step == step && r.metric == metric)
        .map(|r| r.value)
}

fn final_gold(rows: &[MetricRow]) -> f64 {
    crate::metrics::last(rows, metric::EVAL_GOLD_REWARD).unwrap_or(f64::NAN)
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    stats::quantile_sorted(&s, 0.5)
}

/// The (KL, gold) points of a run's evaluations.
pub fn kl_gold_curve(rows: &[MetricRow]) -> Vec<(f64, f64)> {
    rows.iter()
        .filter(|r| r.metric == metric::EVAL_GOLD_REWARD)
        .filter_map(|g| at_step(rows, g.step, metric::EVAL_KL_TO_REF).map(|kl| (kl, g.value)))
        .collect()
}

/// Per seed: the best interpolated gold of the seed's runs at each KL in `grid` (`None` where
/// none of them reaches it).
pub fn frontier_at(runs: &[&[MetricRow]], grid: &[f64]) -> Vec<Option<f64>> {
    let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| kl_gold_curve(r)).collect();
    grid.iter()
        .map(|&k| {
            curves
                .iter()
                .filter_map(|c| stats::interpolate(c, k))
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        })
        .collect()
}

/// Quartiles over seeds at one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quartiles {
    /// Lower quartile.
    pub q25: f64,
    /// Median.
    pub median: f64,
    /// Upper quartile.
    pub q75: f64,
}

/// Per agent (by name) its quartiles at each point of a KL grid.
pub type Bands = Vec<(String, Vec<Option<Quartiles>>)>;

/// Each agent's frontier on `env` (per seed the best of its runs — its grid points — at each KL),
/// with quartiles over seeds, on `points` KL values from the smallest KL of any evaluation to the
/// largest that every seed of some agent reaches; `None` where not every seed of that agent
/// reaches the KL.
pub fn frontier_bands(
    spec: &SweepSpec,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
    env: &str,
    points: usize,
) -> (Vec<f64>, Bands) {
    let agents: Vec<(String, Vec<Run>)> = spec
        .agents
        .iter()
        .map(|a| (a.name.clone(), runs_of(spec, metrics, env, &a.name)))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for (_, runs) in &agents {
        let mut reach = f64::INFINITY;
        for rs in by_seed(runs).values() {
            let kls: Vec<f64> = rs
                .iter()
                .flat_map(|r| kl_gold_curve(r.rows))
                .map(|p| p.0)
                .filter(|x| x.is_finite())
                .collect();
            if let (Some(mn), Some(mx)) = (
                kls.iter().cloned().reduce(f64::min),
                kls.iter().cloned().reduce(f64::max),
            ) {
                lo = lo.min(mn);
                reach = reach.min(mx);
            }
        }
        if reach.is_finite() {
            hi = hi.max(reach);
        }
    }
    if !lo.is_finite() || hi <= lo || points < 2 {
        return (vec![], vec![]);
    }
    let grid: Vec<f64> = (0..points)
        .map(|i| lo + (hi - lo) * i as f64 / (points - 1) as f64)
        .collect();
    let bands = agents
        .iter()
        .map(|(name, runs)| {
            let seeds: Vec<Vec<Option<f64>>> = by_seed(runs)
                .values()
                .map(|rs| {
                    let rows: Vec<&[MetricRow]> = rs.iter().map(|r| r.rows).collect();
                    frontier_at(&rows, &grid)
                })
                .collect();
            let q = (0..grid.len())
                .map(|i| {
                    let mut v: Vec<f64> = seeds.iter().filter_map(|s| s[i]).collect();
                    if v.len() < seeds.len() {
                        return None;
                    }
                    v.sort_by(f64::total_cmp);
                    Some(Quartiles {
                        q25: stats::quantile_sorted(&v, 0.25),
                        median: stats::quantile_sorted(&v, 0.5),
                        q75: stats::quantile_sorted(&v, 0.75),
                    })
                })
                .collect();
            (name.clone(), q)
        })
        .collect();
    (grid, bands)
}

/// Which agent dominates at each KL of a frontier: the one whose lower quartile lies above every
/// other present agent's upper quartile (`None`: the bands overlap, or fewer than two agents).
pub fn dominant(bands: &Bands, i: usize) -> Option<&str> {
    let present: Vec<(&str, Quartiles)> = bands
        .iter()
        .filter_map(|(n, b)| b.get(i).copied().flatten().map(|q| (n.as_str(), q)))
        .collect();
    if present.len() < 2 {
        return None;
    }
    present
        .iter()
        .find(|(n, q)| {
            present
                .iter()
                .filter(|(m, _)| m != n)
                .all(|(_, o)| q.q25 > o.q75)
        })
        .map(|(n, _)| *n)
}

fn by_seed<'a>(runs: &'a [Run<'a>]) -> BTreeMap<u64, Vec<&'a Run<'a>>> {
    let mut m: BTreeMap<u64, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        m.entry(r.seed).or_default().push(r);
    }
    m
}

/// The values of both agents for one env, plus words on how they were formed; `Err` with the
/// reason when there is nothing to compare.
fn values(
    rule: &DecisionRule,
    a: &[Run],
    b: &[Run],
) -> std::result::Result<(Vec<f64>, Vec<f64>, String), String> {
    match rule.quantity {
        Quantity::FinalGold => Ok((
            a.iter().map(|r| final_gold(r.rows)).collect(),
            b.iter().map(|r| final_gold(r.rows)).collect(),
            String::new(),
        )),
        Quantity::WallToReach | Quantity::FlopsToReach => {
            let start = median(
                &a.iter()
                    .chain(b)
                    .filter_map(|r| at_step(r.rows, 0, metric::EVAL_GOLD_REWARD))
                    .collect::<Vec<_>>(),
            );
            let gain = |v: &[Run]| {
                median(&v.iter().map(|r| final_gold(r.rows)).collect::<Vec<_>>()) - start
            };
            let (ga, gb) = (gain(a), gain(b));
            let (lo, hi) = (ga.min(gb), ga.max(gb));
            let g = if lo > 0.0 {
                0.5 * lo
            } else if hi > 0.0 {
                0.5 * hi
            } else {
                return Err(format!(
                    "neither agent improved on the start (median gold {start:.3}): no level to reach"
                ));
            };
            let target = start + g;
            let (pipeline, own) = if rule.quantity == Quantity::WallToReach {
                (metric::PIPELINE_WALL_SECONDS, metric::BUDGET_WALL_SECONDS)
            } else {
                (metric::PIPELINE_FLOPS, metric::BUDGET_FLOPS)
            };
            let cost = |r: &Run| {
                let metric = crate::pipeline::cost_metric(r.rows, pipeline, own);
                r.rows
                    .iter()
                    .filter(|x| {
                        x.metric == metric::EVAL_GOLD_REWARD && x.step > 0 && x.value >= target
                    })
                    .map(|x| x.step)
                    .min()
                    .and_then(|s| at_step(r.rows, s, metric))
                    .unwrap_or(f64::INFINITY)
            };
            let never = a.iter().chain(b).filter(|r| cost(r).is_infinite()).count();
            Ok((
                a.iter().map(cost).collect(),
                b.iter().map(cost).collect(),
                format!(
                    "level: gold ≥ {target:.3} (start {start:.3}); {never} run(s) never reached it (∞)"
                ),
            ))
        }
        Quantity::IqrOverGrid => {
            let iqr = |runs: &[Run]| -> Vec<f64> {
                by_seed(runs)
                    .values()
                    .map(|rs| {
                        let mut g: Vec<f64> = rs.iter().map(|r| final_gold(r.rows)).collect();
                        g.retain(|x| !x.is_nan());
                        g.sort_by(f64::total_cmp);
                        stats::quantile_sorted(&g, 0.75) - stats::quantile_sorted(&g, 0.25)
                    })
                    .collect()
            };
            let points = |runs: &[Run]| {
                let mut p: Vec<&str> = runs.iter().map(|r| r.point.as_str()).collect();
                p.sort();
                p.dedup();
                p.len()
            };
            Ok((
                iqr(a),
                iqr(b),
                format!(
                    "per seed, the IQR over {} grid points of a and {} of b",
                    points(a),
                    points(b)
                ),
            ))
        }
        Quantity::GoldAtKl => {
            let (sa, sb) = (by_seed(a), by_seed(b));
            // The KL range every seed of both agents covers.
            let mut lo = f64::NEG_INFINITY;
            let mut hi = f64::INFINITY;
            for runs in sa.values().chain(sb.values()) {
                let kls: Vec<f64> = runs
                    .iter()
                    .flat_map(|r| kl_gold_curve(r.rows))
                    .map(|p| p.0)
                    .filter(|x| x.is_finite())
                    .collect();
                if kls.is_empty() {
                    continue;
                }
                lo = lo.max(kls.iter().cloned().fold(f64::INFINITY, f64::min));
                hi = hi.min(kls.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
            }
            if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
                return Err("the agents' KL ranges do not overlap: no matched KL".into());
            }
            let grid: Vec<f64> = (0..=10).map(|i| lo + (hi - lo) * i as f64 / 10.0).collect();
            let per_seed = |s: &BTreeMap<u64, Vec<&Run>>| -> Vec<f64> {
                s.values()
                    .map(|runs| {
                        let rows: Vec<&[MetricRow]> = runs.iter().map(|r| r.rows).collect();
                        let f: Vec<f64> = frontier_at(&rows, &grid).into_iter().flatten().collect();
                        if f.is_empty() {
                            f64::NAN
                        } else {
                            f.iter().sum::<f64>() / f.len() as f64
                        }
                    })
                    .collect()
            };
            Ok((
                per_seed(&sa),
                per_seed(&sb),
                format!("mean over 11 KL points in [{lo:.3}, {hi:.3}]"),
            ))
        }
    }
}

/// One task's comparison before Holm's correction.
struct Partial {
    env: String,
    seeds: (usize, usize),
    medians: (f64, f64),
    cmp: std::result::Result<Comparison, String>,
    detail: String,
    not_converged: Vec<String>,
}

/// The health of each of `agent`'s series on `env` (one per grid point, over its seeds).
pub fn series_health(
    spec: &SweepSpec,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
    env: &str,
    agent: &str,
) -> Vec<crate::convergence::Health> {
    let mut series: BTreeMap<String, Vec<&[MetricRow]>> = BTreeMap::new();
    for r in runs_of(spec, metrics, env, agent) {
        series.entry(r.point).or_default().push(r.rows);
    }
    series
        .values()
        .map(|runs| crate::convergence::health(runs))
        .collect()
}

/// The rule's agents (of `agents`) with a series still improving at the end.
fn still_improving(
    spec: &SweepSpec,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
    env: &str,
    agents: [&str; 2],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for agent in agents {
        let improving = series_health(spec, metrics, env, agent)
            .iter()
            .any(|h| h.trend == crate::convergence::Trend::StillImproving);
        if improving && !out.iter().any(|a| a == agent) {
            out.push(agent.to_string());
        }
    }
    out
}

/// Each run cut at half its final step: what the claim would have seen with half the budget.
fn first_half(metrics: &BTreeMap<String, Vec<MetricRow>>) -> BTreeMap<String, Vec<MetricRow>> {
    metrics
        .iter()
        .map(|(id, rows)| {
            let end = rows.iter().map(|r| r.step).max().unwrap_or(0);
            let kept = rows.iter().filter(|r| r.step <= end / 2).cloned().collect();
            (id.clone(), kept)
        })
        .collect()
}

/// What turns one task's comparison into its verdict.
struct Decision<'a> {
    rule: &'a DecisionRule,
    /// +1 when the claim is "greater", −1 when "less".
    sign: f64,
    /// The margin on the oriented scale (log for ratios).
    margin: f64,
    /// The one-sided level, (1 − confidence)/2.
    alpha: f64,
    /// Tasks in the Holm family.
    family: usize,
}

/// The verdicts of `spec`'s rule on each of its envs; `None` when the spec has no rule.
pub fn evaluate(
    spec: &SweepSpec,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
) -> Option<ClaimVerdict> {
    Some(evaluate_rule(spec, spec.rule.as_ref()?, metrics))
}

/// The verdicts of every rule of `spec` (the claim's own first, then `rules`).
pub fn evaluate_all(
    spec: &SweepSpec,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
) -> Vec<ClaimVerdict> {
    spec.rule
        .iter()
        .chain(&spec.rules)
        .map(|r| evaluate_rule(spec, r, metrics))
        .collect()
}

/// The verdicts of `rule` on `spec`'s runs, with the half-budget check.
pub fn evaluate_rule(
    spec: &SweepSpec,
    rule: &DecisionRule,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
) -> ClaimVerdict {
    let mut full = evaluate_once(spec, rule, metrics);
    let half = evaluate_once(spec, rule, &first_half(metrics));
    for (t, h) in full.tasks.iter_mut().zip(half.tasks) {
        if h.verdict != t.verdict {
            t.at_half_budget = Some(h.verdict);
            let note = format!("budget-dependent: {} at half the budget", h.verdict);
            t.detail = if t.detail.is_empty() {
                note
            } else {
                format!("{}; {note}", t.detail)
            };
        }
    }
    full
}

/// The verdicts of `rule` on `metrics`, without the half-budget check.
fn evaluate_once(
    spec: &SweepSpec,
    rule: &DecisionRule,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
) -> ClaimVerdict {
    let rule = rule.clone();
    let sign = match rule.direction {
        Direction::Greater => 1.0,
        Direction::Less => -1.0,
    };
    // Oriented scale: larger is the claim's way; ratios on a log scale.
    let orient = |x: f64| sign * if rule.quantity.is_ratio() { x.ln() } else { x };
    let margin = if rule.quantity.is_ratio() {
        rule.margin.ln_1p()
    } else {
        rule.margin
    };
    let mut parts = Vec::new();
    for (i, env) in spec.envs.iter().enumerate() {
        let a = runs_of(spec, metrics, env, &rule.a);
        let b = runs_of(spec, metrics, env, &rule.b);
        let (cmp, seeds, medians, detail) = match values(&rule, &a, &b) {
            Err(why) => (Err(why.clone()), (0, 0), (f64::NAN, f64::NAN), why),
            Ok((va, vb, detail)) => {
                let keep = |v: &[f64]| -> Vec<f64> {
                    v.iter()
                        .copied()
                        .filter(|x| !x.is_nan())
                        .map(orient)
                        .filter(|x| !x.is_nan())
                        .collect()
                };
                let (oa, ob) = (keep(&va), keep(&vb));
                let medians = (median(&va), median(&vb));
                let cmp = if oa.len() < 2 || ob.len() < 2 {
                    Err(format!(
                        "{} value(s) of `{}` and {} of `{}`: at least 2 seeds each are needed",
                        oa.len(),
                        rule.a,
                        ob.len(),
                        rule.b
                    ))
                } else if rule.statistic == Statistic::Bootstrap
                    && oa.iter().chain(&ob).any(|x| !x.is_finite())
                {
                    Err("infinite values: the bootstrap needs finite ones".into())
                } else {
                    Ok(match rule.statistic {
                        // A percentile bootstrap over a handful of values has no valid
                        // interval: below BOOTSTRAP_MIN_SEEDS a side, Welch's t stands in.
                        Statistic::Bootstrap if oa.len().min(ob.len()) < BOOTSTRAP_MIN_SEEDS => {
                            stats::welch(&oa, &ob, margin, rule.confidence)
                        }
                        Statistic::Bootstrap => stats::bootstrap_mean_diff(
                            &oa,
                            &ob,
                            margin,
                            rule.confidence,
                            RESAMPLES,
                            i as u64,
                        ),
                        Statistic::MannWhitney => {
                            stats::mann_whitney(&oa, &ob, margin, rule.confidence)
                        }
                    })
                };
                (cmp, (oa.len(), ob.len()), medians, detail)
            }
        };
        let not_converged = if rule.quantity.reads_the_end() {
            still_improving(spec, metrics, env, [&rule.a, &rule.b])
        } else {
            Vec::new()
        };
        parts.push(Partial {
            env: env.clone(),
            seeds,
            medians,
            cmp,
            detail,
            not_converged,
        });
    }
    // Holm over the tasks that could be compared, for each one-sided family.
    let ok: Vec<&Comparison> = parts.iter().filter_map(|p| p.cmp.as_ref().ok()).collect();
    let adj_holds = stats::holm(&ok.iter().map(|c| c.p_holds).collect::<Vec<_>>());
    let adj_refuted = stats::holm(&ok.iter().map(|c| c.p_refuted).collect::<Vec<_>>());
    let alpha = (1.0 - rule.confidence) / 2.0;
    let family = ok.len();
    let decision = Decision {
        rule: &rule,
        sign,
        margin,
        alpha,
        family,
    };
    let mut k = 0;
    let tasks = parts
        .into_iter()
        .map(|p| {
            let holm = p.cmp.is_ok().then(|| {
                k += 1;
                (adj_holds[k - 1], adj_refuted[k - 1])
            });
            task_verdict(p, holm, &decision)
        })
        .collect();
    ClaimVerdict {
        name: spec.name.clone(),
        claim: spec.claim.clone(),
        rule,
        tasks,
    }
}

/// A unit enum's name as the spec spells it (`wall_to_reach`, `less`, …).
pub fn spec_name(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|x| x.as_str().map(String::from))
        .unwrap_or_default()
}

/// Format a number for a table: ∞ spelled out, three significant decimals otherwise.
pub fn num(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "∞" } else { "−∞" }.into()
    } else if x.is_nan() {
        "–".into()
    } else if x.abs() >= 1000.0 {
        format!("{x:.3e}")
    } else {
        format!("{x:.3}")
    }
}

/// The verdict table of several claims, in markdown.
pub fn markdown_table(claims: &[ClaimVerdict]) -> String {
    let mut md = String::from("| claim | task | verdict | a vs b | effect | interval | p (Holm) | seeds |\n|---|---|---|---|---|---|---|---|\n");
    for c in claims {
        for t in &c.tasks {
            let (eff, int, p) = match &t.effect {
                Some(e) => (
                    format!("{} ({})", num(e.value), c.rule.quantity.effect_label()),
                    format!(
                        "[{}, {}] at {:.0}%",
                        num(e.lo),
                        num(e.hi),
                        c.rule.confidence * 100.0
                    ),
                    stats::format_p(if t.verdict == Verdict::Refuted {
                        e.p_refuted
                    } else {
                        e.p_holds
                    }),
                ),
                None => ("–".into(), "–".into(), "–".into()),
            };
            let mut verdict = format!("**{}**", t.verdict);
            if t.verdict == Verdict::Inconclusive
                && !t.not_converged.is_empty()
                && c.rule.quantity.reads_the_end()
            {
                verdict.push_str(" (not converged)");
            }
            if let Some(h) = t.at_half_budget {
                verdict.push_str(&format!(" (budget-dependent: {h} at half)"));
            }
            md.push_str(&format!(
                "| {} | {} | {verdict} | `{}` vs `{}` | {eff} | {int} | {p} | {}+{} |\n",
                c.name, t.env, c.rule.a, c.rule.b, t.seeds.0, t.seeds.1
            ));
        }
    }
    md
}

/// A task's verdict from its comparison and its Holm-adjusted p-values (holds, refuted).
fn task_verdict(p: Partial, holm: Option<(f64, f64)>, d: &Decision) -> TaskVerdict {
    let Ok(c) = p.cmp else {
        return TaskVerdict {
            env: p.env,
            verdict: Verdict::Inconclusive,
            effect: None,
            seeds: p.seeds,
            detail: p.detail,
            not_converged: p.not_converged,
            at_half_budget: None,
        };
    };
    let (ph, pr) = holm.unwrap_or((1.0, 1.0));
    // Too few seeds for any test to reach the level: no verdict, whatever the data.
    let decidable = stats::seeds_can_decide(p.seeds.0, p.seeds.1, d.alpha, d.family);
    let decided = if !decidable {
        Verdict::Inconclusive
    } else if ph <= d.alpha {
        Verdict::Holds
    } else if pr <= d.alpha {
        Verdict::Refuted
    } else {
        Verdict::Inconclusive
    };
    // A verdict on where training ended needs both agents to have got there.
    let unsettled = decided != Verdict::Inconclusive && !p.not_converged.is_empty();
    let verdict = if unsettled {
        Verdict::Inconclusive
    } else {
        decided
    };
    // Back to the quantity's units: a − b, or a / b.
    let raw = |x: f64| {
        let y = d.sign * x;
        if d.rule.quantity.is_ratio() {
            y.exp()
        } else {
            y
        }
    };
    let (lo, hi) = (raw(c.lo).min(raw(c.hi)), raw(c.lo).max(raw(c.hi)));
    let mut detail = p.detail;
    let mut say = |s: String| {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&s);
    };
    if unsettled {
        say(format!(
            "not converged: {} still improving when the budget ended (the data alone say {decided})",
            p.not_converged
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    match verdict {
        _ if unsettled => {}
        Verdict::Refuted if c.hi < -1e-9 => say("the effect goes the other way".into()),
        Verdict::Refuted => say("the effect is smaller than the margin".into()),
        Verdict::Inconclusive if !decidable => say(format!(
            "{}+{} seeds cannot decide at {:.0}%{}; about {} per agent would",
            p.seeds.0,
            p.seeds.1,
            d.rule.confidence * 100.0,
            if d.family > 1 {
                format!(" over {} tasks", d.family)
            } else {
                String::new()
            },
            stats::seeds_to_decide(d.alpha, d.family)
                .max(stats::seeds_to_resolve(p.seeds.0.min(p.seeds.1), &c, d.margin).unwrap_or(0))
        )),
        Verdict::Inconclusive => {
            let n = p.seeds.0.min(p.seeds.1);
            say(match stats::seeds_to_resolve(n, &c, d.margin) {
                Some(m) => {
                    format!("at this spread about {m} seeds per agent would resolve it")
                }
                None => "the estimate sits on the margin: more seeds would not resolve it".into(),
            })
        }
        Verdict::Holds => {}
    }
    if d.family > 1 {
        say(format!("Holm over {} tasks", d.family));
    }
    TaskVerdict {
        env: p.env,
        verdict,
        effect: Some(Effect {
            value: raw(c.estimate),
            lo,
            hi,
            p_holds: ph,
            p_refuted: pr,
            rank_biserial: c.rank_biserial,
            medians: p.medians,
        }),
        seeds: p.seeds,
        detail,
        not_converged: p.not_converged,
        at_half_budget: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::AgentSpec;

    fn agent(name: &str) -> AgentSpec {
        AgentSpec {
            name: name.into(),
            agent: crate::spec::AgentKind::Ppo,
            reward: crate::sweep::SweepReward::Gold,
            prefs: "on".into(),
            set: BTreeMap::new(),
            grid: BTreeMap::new(),
            tune: BTreeMap::new(),
        }
    }

    fn spec(envs: &[&str], seeds: u64, rule: DecisionRule) -> SweepSpec {
        let mut s = crate::sweep::compare_spec("sentiment-v0", seeds, 1.0).unwrap();
        s.envs = envs.iter().map(|e| e.to_string()).collect();
        s.agents = vec![agent("a"), agent("b")];
        s.rule = Some(rule);
        s
    }

    fn rule(quantity: Quantity, direction: Direction, statistic: Statistic) -> DecisionRule {
        DecisionRule {
            quantity,
            a: "a".into(),
            b: "b".into(),
            direction,
            statistic,
            confidence: 0.95,
            margin: 0.0,
        }
    }

    fn row(step: u64, metric: &str, value: f64) -> MetricRow {
        MetricRow {
            step,
            metric: metric.into(),
            value,
        }
    }

    /// A run evaluated at steps 0, 10, 20 with gold rising linearly from 0.1 to `end`, KL from
    /// 0 to `kl_end`, then settled there at step 30; 1 s per step.
    fn run(end: f64, kl_end: f64) -> Vec<MetricRow> {
        let mut v = Vec::new();
        for (i, s) in [0u64, 10, 20, 30].into_iter().enumerate() {
            let f = (i as f64 / 2.0).min(1.0);
            v.push(row(s, "eval/gold_reward", 0.1 + (end - 0.1) * f));
            v.push(row(s, "eval/kl_to_ref", kl_end * f));
            v.push(row(s, "budget/wall_seconds", s as f64));
            v.push(row(s, "budget/flops", 1e9 * s as f64));
        }
        v
    }

    fn metrics(
        env: &str,
        a: &[f64],
        b: &[f64],
        kl: (f64, f64),
    ) -> BTreeMap<String, Vec<MetricRow>> {
        let mut m = BTreeMap::new();
        for (i, x) in a.iter().enumerate() {
            m.insert(format!("{env}.a.s{i}"), run(*x, kl.0));
        }
        for (i, x) in b.iter().enumerate() {
            m.insert(format!("{env}.b.s{i}"), run(*x, kl.1));
        }
        m
    }

    #[test]
    fn each_verdict_comes_out_where_the_data_put_it() {
        let r = rule(
            Quantity::FinalGold,
            Direction::Greater,
            Statistic::Bootstrap,
        );
        let s = spec(&["sentiment-v0"], 5, r.clone());
        let holds = metrics(
            "sentiment-v0",
            &[0.8, 0.82, 0.79, 0.81, 0.8],
            &[0.5, 0.52, 0.49, 0.5, 0.51],
            (1.0, 1.0),
        );
        let v = evaluate(&s, &holds).unwrap();
        assert_eq!(v.tasks[0].verdict, Verdict::Holds, "{v:?}");
        let e = v.tasks[0].effect.as_ref().unwrap();
        assert!(
            (e.value - 0.3).abs() < 1e-9 && e.lo > 0.25 && e.hi < 0.35,
            "{e:?}"
        );
        // The same data with the claim the other way round: refuted, "the other way".
        let mut s2 = s.clone();
        s2.rule.as_mut().unwrap().direction = Direction::Less;
        let v = evaluate(&s2, &holds).unwrap();
        assert_eq!(v.tasks[0].verdict, Verdict::Refuted);
        assert!(
            v.tasks[0].detail.contains("other way"),
            "{}",
            v.tasks[0].detail
        );
        // A real but small effect against a margin it cannot clear: refuted, "smaller than".
        let mut s3 = s.clone();
        s3.rule.as_mut().unwrap().margin = 0.5;
        let v = evaluate(&s3, &holds).unwrap();
        assert_eq!(v.tasks[0].verdict, Verdict::Refuted);
        assert!(v.tasks[0].detail.contains("smaller than the margin"));
        // Medians differ (0.7 vs 0.5) but the spread swamps it: the interval straddles zero.
        let noisy = metrics(
            "sentiment-v0",
            &[0.2, 0.7, 0.95, 0.1, 0.9],
            &[0.5, 0.9, 0.1, 0.45, 0.6],
            (1.0, 1.0),
        );
        let v = evaluate(&s, &noisy).unwrap();
        let t = &v.tasks[0];
        let e = t.effect.as_ref().unwrap();
        assert_eq!(e.medians, (0.7, 0.5));
        assert!(e.lo < 0.0 && e.hi > 0.0, "{e:?}");
        assert_eq!(t.verdict, Verdict::Inconclusive);
        assert!(
            t.detail.contains("seeds per agent would resolve it"),
            "{}",
            t.detail
        );
    }

    #[test]
    fn holm_can_turn_a_lone_pass_into_inconclusive() {
        // Mann–Whitney with 5 vs 5 fully separated: p = 1/252 ≈ 0.00397 per task. Alone that
        // passes α = 0.025; over three tasks whose other two are null-ish, Holm's first threshold is
        // 0.025 / 3 = 0.0083: still passes. With 4 vs 4 (p = 1/70 ≈ 0.0143): passes alone, not
        // after Holm over 3 tasks.
        let r = rule(
            Quantity::FinalGold,
            Direction::Greater,
            Statistic::MannWhitney,
        );
        let a = [0.9, 0.91, 0.92, 0.93];
        let b = [0.1, 0.11, 0.12, 0.13];
        let one = spec(&["sentiment-v0"], 4, r.clone());
        let m = metrics("sentiment-v0", &a, &b, (1.0, 1.0));
        assert_eq!(evaluate(&one, &m).unwrap().tasks[0].verdict, Verdict::Holds);
        let three = spec(&["sentiment-v0", "arithmetic-v0", "hh-v0"], 4, r);
        let mut m = metrics("sentiment-v0", &a, &b, (1.0, 1.0));
        m.extend(metrics("arithmetic-v0", &a, &b, (1.0, 1.0)));
        m.extend(metrics(
            "hh-v0",
            &[0.5, 0.6, 0.4, 0.55],
            &[0.5, 0.45, 0.6, 0.52],
            (1.0, 1.0),
        ));
        let v = evaluate(&three, &m).unwrap();
        // Sorted p: 1/70, 1/70, large → Holm: 3/70 = 0.043 > 0.025 for the first: nothing passes.
        assert_eq!(v.tasks[0].verdict, Verdict::Inconclusive, "{v:?}");
        assert!(v.tasks[0].detail.contains("Holm over 3 tasks"));
        let e = v.tasks[0].effect.as_ref().unwrap();
        assert!((e.p_holds - 3.0 / 70.0).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn the_frontier_dominance_follows_the_bands() {
        // a climbs 0.1 → 0.9 over KL 0 → 2, b 0.1 → 0.3 over KL 0 → 2 (per seed, ± a small
        // shift): a's quartiles clear b's everywhere but at KL 0, where both start at 0.1.
        let spec = spec(
            &["sentiment-v0"],
            3,
            rule(Quantity::GoldAtKl, Direction::Greater, Statistic::Bootstrap),
        );
        let m = metrics(
            "sentiment-v0",
            &[0.9, 0.92, 0.88],
            &[0.3, 0.32, 0.28],
            (2.0, 2.0),
        );
        let (grid, bands) = frontier_bands(&spec, &m, "sentiment-v0", 5);
        assert_eq!(grid, vec![0.0, 0.5, 1.0, 1.5, 2.0]);
        assert_eq!(dominant(&bands, 0), None);
        for (i, k) in grid.iter().enumerate().skip(1) {
            assert_eq!(dominant(&bands, i), Some("a"), "at {k}");
        }
        // At KL 1 (halfway): a's median is 0.1 + 0.8 / 2 = 0.5, b's 0.1 + 0.2 / 2 = 0.2.
        let q = bands[0].1[2].unwrap();
        assert!((q.median - 0.5).abs() < 1e-12, "{q:?}");
        assert!((bands[1].1[2].unwrap().median - 0.2).abs() < 1e-12);
    }

    #[test]
    fn costs_never_reached_count_as_infinite() {
        // a reaches every level fast and b never improves: the level is half a's gain; b's cost
        // is ∞ for every seed, so a / b = 0 with every pair favouring a.
        let r = rule(
            Quantity::WallToReach,
            Direction::Less,
            Statistic::MannWhitney,
        );
        let s = spec(&["sentiment-v0"], 5, r);
        let m = metrics("sentiment-v0", &[0.9; 5], &[0.1; 5], (1.0, 1.0));
        let v = evaluate(&s, &m).unwrap();
        let t = &v.tasks[0];
        assert_eq!(t.verdict, Verdict::Holds, "{t:?}");
        assert!(
            t.detail.contains("5 run(s) never reached it"),
            "{}",
            t.detail
        );
        assert_eq!(t.effect.as_ref().unwrap().rank_biserial, Some(1.0));
        // The bootstrap is refused for a quantity that can be ∞.
        let bad = rule(Quantity::WallToReach, Direction::Less, Statistic::Bootstrap);
        let mut s2 = s.clone();
        s2.rule = Some(bad.clone());
        assert!(bad.validate(&s2).is_err());
    }

    #[test]
    fn costs_to_reach_charge_the_stages_a_run_consumed() {
        // The same curves and the same own clock: no difference. Charge b's runs 100 s of stages
        // (its pairs and reward model) in `pipeline/wall_seconds`: a reaches the level cheaper.
        let r = rule(
            Quantity::WallToReach,
            Direction::Less,
            Statistic::MannWhitney,
        );
        let s = spec(&["sentiment-v0"], 5, r);
        let mut m = metrics("sentiment-v0", &[0.9; 5], &[0.9; 5], (1.0, 1.0));
        let v = evaluate(&s, &m).unwrap();
        assert_eq!(
            v.tasks[0].verdict,
            Verdict::Inconclusive,
            "{:?}",
            v.tasks[0]
        );
        for (id, rows) in m.iter_mut() {
            let stages = if id.contains(".b.") { 100.0 } else { 0.0 };
            let walls: Vec<(u64, f64)> = rows
                .iter()
                .filter(|x| x.metric == metric::BUDGET_WALL_SECONDS)
                .map(|x| (x.step, x.value))
                .collect();
            for (step, w) in walls {
                rows.push(row(step, metric::PIPELINE_WALL_SECONDS, w + stages));
            }
        }
        let v = evaluate(&s, &m).unwrap();
        let t = &v.tasks[0];
        assert_eq!(t.verdict, Verdict::Holds, "{t:?}");
        // Level 0.5 reached at step 10: 10 s against 110 s.
        assert!(
            (t.effect.as_ref().unwrap().value - 10.0 / 110.0).abs() < 1e-9,
            "{t:?}"
        );
    }

    #[test]
    fn gold_at_matched_kl_compares_on_the_common_range() {
        // a: gold 0.1 → 0.9 over KL 0 → 2; b: 0.1 → 0.5 over KL 0 → 1. On [0, 1], a's curve is
        // 0.1 + 0.4 k and b's 0.1 + 0.4 k as well: equal at matched KL although a's final gold is
        // far higher. Mean over the 11 points: 0.3 for both.
        let mut r = rule(Quantity::GoldAtKl, Direction::Greater, Statistic::Bootstrap);
        r.margin = 0.05;
        let s = spec(&["sentiment-v0"], 5, r);
        let m = metrics("sentiment-v0", &[0.9; 5], &[0.5; 5], (2.0, 1.0));
        let v = evaluate(&s, &m).unwrap();
        let t = &v.tasks[0];
        let e = t.effect.as_ref().unwrap();
        assert!(
            (e.medians.0 - 0.3).abs() < 1e-9 && (e.medians.1 - 0.3).abs() < 1e-9,
            "{e:?}"
        );
        assert!(e.value.abs() < 1e-9);
        assert!(t.detail.contains("[0.000, 1.000]"), "{}", t.detail);
        assert_eq!(t.verdict, Verdict::Refuted, "{t:?}");
        assert!(t.detail.contains("smaller than the margin"));
        // The same runs under a non-inferiority rule (a at most 0.05 below b): it holds; against
        // runs where a sits 0.1 below b at every KL, it is refuted.
        let mut r = rule(Quantity::GoldAtKl, Direction::Greater, Statistic::Bootstrap);
        r.margin = -0.05;
        let s = spec(&["sentiment-v0"], 5, r);
        let v = evaluate(&s, &m).unwrap();
        assert_eq!(v.tasks[0].verdict, Verdict::Holds, "{:?}", v.tasks[0]);
        let worse = metrics("sentiment-v0", &[0.3; 5], &[0.5; 5], (1.0, 1.0));
        let v = evaluate(&s, &worse).unwrap();
        assert_eq!(v.tasks[0].verdict, Verdict::Refuted, "{:?}", v.tasks[0]);
        // A ratio cannot fall to −100%.
        let mut r = rule(
            Quantity::WallToReach,
            Direction::Less,
            Statistic::MannWhitney,
        );
        r.margin = -1.0;
        let s = spec(&["sentiment-v0"], 5, r.clone());
        assert!(r
            .validate(&s)
            .unwrap_err()
            .to_string()
            .contains("rule.margin"));
    }

    #[test]
    fn a_verdict_resting_on_an_agent_still_improving_is_not_converged() {
        // The data say a > b, but a's last evaluations still gain far more than the spread of
        // its seeds: the budget ended before a settled, so no verdict; the table says why.
        let r = rule(
            Quantity::FinalGold,
            Direction::Greater,
            Statistic::Bootstrap,
        );
        let s = spec(&["sentiment-v0"], 5, r.clone());
        let mut m = metrics(
            "sentiment-v0",
            &[0.8, 0.82, 0.79, 0.81, 0.8],
            &[0.5; 5],
            (1.0, 1.0),
        );
        for (_, rows) in m.iter_mut().filter(|(id, _)| id.contains(".a.")) {
            let end = rows
                .iter()
                .rfind(|x| x.metric == metric::EVAL_GOLD_REWARD)
                .unwrap()
                .value;
            for x in rows
                .iter_mut()
                .filter(|x| x.metric == metric::EVAL_GOLD_REWARD)
            {
                // Still rising at step 30: 0.1, 0.3, 0.5, `end`.
                x.value = match x.step {
                    0 => 0.1,
                    10 => 0.3,
                    20 => 0.5,
                    _ => end,
                };
            }
        }
        let v = evaluate(&s, &m).unwrap();
        let t = &v.tasks[0];
        assert_eq!(t.verdict, Verdict::Inconclusive, "{t:?}");
        assert_eq!(t.not_converged, vec!["a".to_string()]);
        assert!(
            t.detail.contains("not converged: `a` still improving")
                && t.detail.contains("say holds"),
            "{}",
            t.detail
        );
        let table = markdown_table(std::slice::from_ref(&v));
        assert!(
            table.contains("**inconclusive** (not converged)"),
            "{table}"
        );
        // At half the budget (steps 0 and 10: too few evaluations to judge a trend) a was at
        // 0.3, level with b: "a > b" refuted there.
        assert_eq!(t.at_half_budget, Some(Verdict::Refuted), "{t:?}");

        // A cost to reach a level does not wait for convergence.
        let cost = rule(
            Quantity::WallToReach,
            Direction::Less,
            Statistic::MannWhitney,
        );
        let v = evaluate(&spec(&["sentiment-v0"], 5, cost), &m).unwrap();
        assert!(v.tasks[0].not_converged.is_empty(), "{:?}", v.tasks[0]);
    }

    #[test]
    fn a_verdict_that_changes_with_half_the_budget_is_budget_dependent() {
        // b leads at half the budget (step 40: 0.6 against 0.3, both settled) and a overtakes
        // it and settles by the end (step 80): holds at the full budget, refuted at half.
        let r = rule(
            Quantity::FinalGold,
            Direction::Greater,
            Statistic::Bootstrap,
        );
        let s = spec(&["sentiment-v0"], 5, r);
        let mut m = BTreeMap::new();
        let curve = |golds: [f64; 9]| -> Vec<MetricRow> {
            golds
                .iter()
                .enumerate()
                .flat_map(|(i, &g)| {
                    let step = 10 * i as u64;
                    [
                        row(step, metric::EVAL_GOLD_REWARD, g),
                        row(step, metric::EVAL_KL_TO_REF, 0.1 * i as f64),
                    ]
                })
                .collect()
        };
        for i in 0..5 {
            let d = 0.005 * i as f64;
            let (a, b) = (0.3 + d, 0.6 + d);
            let late = 0.9 + d;
            m.insert(
                format!("sentiment-v0.a.s{i}"),
                curve([0.1, a, a, a, a, late, late, late, late]),
            );
            m.insert(
                format!("sentiment-v0.b.s{i}"),
                curve([0.1, b, b, b, b, b, b, b, b]),
            );
        }
        let t = &evaluate(&s, &m).unwrap().tasks[0];
        assert_eq!(t.verdict, Verdict::Holds, "{t:?}");
        assert_eq!(t.at_half_budget, Some(Verdict::Refuted), "{t:?}");
        assert!(
            t.detail
                .contains("budget-dependent: refuted at half the budget"),
            "{}",
            t.detail
        );
    }

    #[test]
    fn the_default_comparison_decides_its_two_questions() {
        // `make run`'s spec: PPO-RM vs DPO at matched KL, and DPO's pipeline cost to a level.
        // DPO reaches a higher gold at every KL and at a tenth of the wall time.
        let s = crate::sweep::compare_spec("sentiment-v0", 4, 1.0).unwrap();
        assert!(s.rule.is_none());
        let mut m = BTreeMap::new();
        for r in s.runs() {
            let (end, slow) = match r.agent.name.as_str() {
                "dpo" => (0.9 + 0.01 * r.seed as f64, 1.0),
                _ => (0.5 + 0.01 * r.seed as f64, 10.0),
            };
            let mut rows = run(end, 1.0);
            for x in rows
                .iter_mut()
                .filter(|x| x.metric == metric::BUDGET_WALL_SECONDS)
            {
                x.value *= slow;
            }
            m.insert(r.id, rows);
        }
        let v = evaluate_all(&s, &m);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].rule.quantity, v[1].rule.quantity),
            (Quantity::GoldAtKl, Quantity::WallToReach)
        );
        // "PPO aligns better" is refuted (DPO is ahead at matched KL); "DPO is cheaper" holds.
        assert_eq!(
            v[0].tasks[0].verdict,
            Verdict::Refuted,
            "{:?}",
            v[0].tasks[0]
        );
        assert_eq!(v[1].tasks[0].verdict, Verdict::Holds, "{:?}", v[1].tasks[0]);
    }

    #[test]
    fn too_few_seeds_give_no_verdict_however_clear_the_data() {
        // a ends at 0.9 and b at 0.1 on every seed: as clear as data gets. With 2 or 3 seeds a
        // side no test reaches a one-sided 0.025 (the least exact p is 1/6 and 1/20), so the
        // verdict is inconclusive and says how many would do; with 5 it holds.
        for (seeds, want) in [
            (2, Verdict::Inconclusive),
            (3, Verdict::Inconclusive),
            (5, Verdict::Holds),
        ] {
            for statistic in [Statistic::Bootstrap, Statistic::MannWhitney] {
                let s = spec(
                    &["sentiment-v0"],
                    seeds,
                    rule(Quantity::FinalGold, Direction::Greater, statistic),
                );
                let a: Vec<f64> = (0..seeds).map(|i| 0.9 + 0.01 * i as f64).collect();
                let b: Vec<f64> = (0..seeds).map(|i| 0.1 + 0.01 * i as f64).collect();
                let m = metrics("sentiment-v0", &a, &b, (1.0, 1.0));
                let t = &evaluate(&s, &m).unwrap().tasks[0];
                assert_eq!(t.verdict, want, "{seeds} seeds, {statistic:?}: {t:?}");
                if want == Verdict::Inconclusive {
                    assert!(
                        t.detail
                            .contains("seeds cannot decide at 95%; about 4 per agent would"),
                        "{}",
                        t.detail
                    );
                }
            }
        }
    }
}
