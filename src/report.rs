//! `aligngym report`: the answer to the claim a sweep covers, as `report.md` and a self-contained
//! `report.html` — the verdict of the spec's decision rule per env, medians and spread over seeds of
//! the final comparison metrics, the cost to reach a common gold-reward level, the spread over
//! hyperparameter grids, the frontier over grids, over-optimisation fits, and the figures.

use crate::metrics::MetricRow;
use crate::plot::{read_sweep_metrics, series_key};
use crate::sweep::load_sweep_dir;
use aligngym_agents::metric;
use aligngym_agents::Result;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    crate::stats::quantile_sorted(&s, q)
}

fn last(rows: &[MetricRow], m: &str) -> f64 {
    crate::metrics::last(rows, m).unwrap_or(f64::NAN)
}

/// Per-series statistics of one env.
pub struct SeriesStats {
    /// Series name (agent and grid point).
    pub name: String,
    /// Runs (seeds) in it.
    pub runs: usize,
    /// Final gold reward of each run.
    pub gold: Vec<f64>,
    /// Final KL to the reference of each run.
    pub kl: Vec<f64>,
    /// Final win rate of each run.
    pub win: Vec<f64>,
    /// Training wall seconds of each run.
    pub wall: Vec<f64>,
    /// FLOPs of each run.
    pub flops: Vec<f64>,
    /// Oracle queries of each run.
    pub queries: Vec<f64>,
    /// Whether it was still improving when its budget ended, and its collapsed runs.
    pub health: crate::convergence::Health,
}

/// Statistics per series for `env`, plus the starting gold reward (step 0).
pub fn env_stats(metrics: &BTreeMap<String, Vec<MetricRow>>, env: &str) -> (Vec<SeriesStats>, f64) {
    let mut groups: BTreeMap<String, Vec<&Vec<MetricRow>>> = BTreeMap::new();
    for (id, rows) in metrics {
        if let Some(rest) = id.strip_prefix(&format!("{}.", crate::sweep::sanitize(env))) {
            groups.entry(series_key(rest)).or_default().push(rows);
        }
    }
    let mut start = Vec::new();
    let stats = groups
        .into_iter()
        .map(|(name, runs)| {
            // Best-of-n evaluates its selection from step 0 on: not the starting policy.
            for r in runs
                .iter()
                .filter(|r| !r.iter().any(|x| x.metric == metric::EVAL_KL_BOUND))
            {
                if let Some(x) = r
                    .iter()
                    .find(|x| x.step == 0 && x.metric == metric::EVAL_GOLD_REWARD)
                {
                    start.push(x.value);
                }
            }
            let col = |m: &str| runs.iter().map(|r| last(r, m)).collect::<Vec<_>>();
            SeriesStats {
                name,
                runs: runs.len(),
                gold: col(metric::EVAL_GOLD_REWARD),
                kl: col(metric::EVAL_KL_TO_REF),
                win: col(metric::EVAL_WIN_RATE_VS_REF),
                wall: col(metric::BUDGET_WALL_SECONDS),
                flops: col(metric::BUDGET_FLOPS),
                queries: col(metric::BUDGET_ORACLE_QUERIES),
                health: crate::convergence::health(
                    &runs.iter().map(|r| r.as_slice()).collect::<Vec<_>>(),
                ),
            }
        })
        .collect();
    (stats, quantile(&start, 0.5))
}

/// The table of an env's series: final values (median [IQR] over seeds), costs, and whether
/// each was still improving or collapsed (see [`crate::convergence`]).
fn series_table(stats: &[SeriesStats]) -> String {
    let mut md = String::from("| series | runs | eval/gold_reward | eval/kl_to_ref | eval/win_rate_vs_ref | wall s | GFLOPs | oracle queries | trend |\n|---|---|---|---|---|---|---|---|---|\n");
    for s in stats {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} |",
            s.name,
            s.runs,
            fmt_med(&s.gold),
            fmt_med(&s.kl),
            fmt_med(&s.win),
            quantile(&s.wall, 0.5),
            quantile(&s.flops, 0.5) / 1e9,
            quantile(&s.queries, 0.5),
            s.health.label()
        );
    }
    md
}

fn fmt_med(v: &[f64]) -> String {
    format!(
        "{:.3} [{:.3}, {:.3}]",
        quantile(v, 0.5),
        quantile(v, 0.25),
        quantile(v, 0.75)
    )
}

/// Cost (median over runs) for a series to first reach `target` gold at an evaluation.
fn cost_to_reach(
    metrics: &BTreeMap<String, Vec<MetricRow>>,
    env: &str,
    series: &str,
    target: f64,
) -> Option<(f64, f64, f64)> {
    let mut walls = Vec::new();
    let mut flops = Vec::new();
    let mut toks = Vec::new();
    for (id, rows) in metrics {
        let Some(rest) = id.strip_prefix(&format!("{}.", crate::sweep::sanitize(env))) else {
            continue;
        };
        if series_key(rest) != series {
            continue;
        }
        let step = rows
            .iter()
            .filter(|r| r.metric == metric::EVAL_GOLD_REWARD && r.step > 0 && r.value >= target)
            .map(|r| r.step)
            .min()?;
        let at = |m: &str| {
            rows.iter()
                .find(|r| r.step == step && r.metric == m)
                .map(|r| r.value)
                .unwrap_or(f64::NAN)
        };
        // The whole pipeline's cost where the run recorded it (the stages it consumed included).
        let cost = |pipeline, own| at(crate::pipeline::cost_metric(rows, pipeline, own));
        walls.push(cost(
            metric::PIPELINE_WALL_SECONDS,
            metric::BUDGET_WALL_SECONDS,
        ));
        flops.push(cost(metric::PIPELINE_FLOPS, metric::BUDGET_FLOPS));
        toks.push(
            cost(metric::PIPELINE_TRAIN_TOKENS, metric::BUDGET_TRAIN_TOKENS)
                + cost(
                    metric::PIPELINE_TOKENS_GENERATED,
                    metric::BUDGET_TOKENS_GENERATED,
                ),
        );
    }
    if walls.is_empty() {
        return None;
    }
    Some((
        quantile(&walls, 0.5),
        quantile(&flops, 0.5),
        quantile(&toks, 0.5),
    ))
}

/// Write `dir/report.md`; returns its text.
pub fn write_report(dir: &Path) -> Result<String> {
    let spec = load_sweep_dir(dir)?;
    let metrics = read_sweep_metrics(dir)?;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", spec.name);
    if !spec.claim.is_empty() {
        let _ = writeln!(md, "**Claim tested:** {}\n", spec.claim);
    }
    let _ = writeln!(md, "Seeds: {:?}; updates per run: {}; scale {}. Values are median [IQR] over seeds of the final evaluation.\n", spec.seeds, spec.scaled_updates(), spec.scale);
    for v in crate::verdict::evaluate_all(&spec, &metrics) {
        let r = &v.rule;
        let _ = writeln!(
            md,
            "**Decision rule** (fixed in the spec): `{}` of `{}` vs `{}`, claimed `{}`, `{}` at {:.0}% confidence, margin {}.\n",
            crate::verdict::spec_name(r.quantity),
            r.a,
            r.b,
            crate::verdict::spec_name(r.direction),
            crate::verdict::spec_name(r.statistic),
            r.confidence * 100.0,
            r.margin
        );
        md.push_str(&crate::verdict::markdown_table(std::slice::from_ref(&v)));
        md.push('\n');
        for t in &v.tasks {
            if !t.detail.is_empty() {
                let _ = writeln!(md, "- {}: {}.", t.env, t.detail);
            }
        }
        let _ = writeln!(md);
    }
    md.push_str(&crate::sweep::tuning_report(&spec, dir));
    for env in &spec.envs {
        let (stats, start) = env_stats(&metrics, env);
        if stats.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "## {env}\n\nStarting policy (SFT): eval/gold_reward {start:.3}.\n"
        );
        md.push_str(&series_table(&stats));
        // A common level every series improved to reaches: half the smallest median gain.
        let gains: Vec<f64> = stats
            .iter()
            .map(|s| quantile(&s.gold, 0.5) - start)
            .collect();
        let min_gain = gains.iter().cloned().fold(f64::INFINITY, f64::min);
        if min_gain > 0.0 {
            let target = start + 0.5 * min_gain;
            let _ = writeln!(md, "\n**Cost to reach eval/gold_reward ≥ {target:.3}** (half the smallest median gain), median over seeds, for the whole pipeline (the run and the stages it consumed: its pairs, its reward model):\n\n| series | wall s | GFLOPs | tokens (generated + trained) |\n|---|---|---|---|");
            for s in &stats {
                match cost_to_reach(&metrics, env, &s.name, target) {
                    Some((w, f, t)) => {
                        let _ = writeln!(md, "| {} | {w:.1} | {:.1} | {t:.0} |", s.name, f / 1e9);
                    }
                    None => {
                        let _ = writeln!(md, "| {} | not reached by every seed | | |", s.name);
                    }
                }
            }
        } else {
            let _ = writeln!(md, "\nNot every series improved on the starting policy, so no common level to compare costs at.");
        }
        // Spread over hyperparameter grids, per agent kind.
        let mut by_agent: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for s in &stats {
            let agent = s.name.split('.').next().unwrap_or(&s.name).to_string();
            by_agent
                .entry(agent)
                .or_default()
                .extend(s.gold.iter().copied());
        }
        if stats.len() > by_agent.len() {
            let _ = writeln!(md, "\n**Sensitivity** (spread of final gold reward over every grid point and seed):\n\n| agent | runs | median | IQR |\n|---|---|---|---|");
            for (a, v) in &by_agent {
                let _ = writeln!(
                    md,
                    "| {a} | {} | {:.3} | {:.3} |",
                    v.len(),
                    quantile(v, 0.5),
                    quantile(v, 0.75) - quantile(v, 0.25)
                );
            }
        }
        let best = stats.iter().max_by(|a, b| {
            quantile(&a.gold, 0.5)
                .partial_cmp(&quantile(&b.gold, 0.5))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        if let Some(b) = best {
            let _ = writeln!(md, "\n**Answer on {env}:** `{}` reached the highest median gold reward ({:.3}, KL {:.2}).", b.name, quantile(&b.gold, 0.5), quantile(&b.kl, 0.5));
        }
        if spec.agents.iter().any(|a| !a.grid.is_empty()) {
            frontier_section(&mut md, &spec, &metrics, env);
        }
        overoptimisation_section(&mut md, &spec, &metrics, env, start);
        let slug = crate::sweep::sanitize(env);
        for fig in ["curves", "frontier", "frontier-bands", "overoptimisation"] {
            if dir.join("plots").join(format!("{slug}-{fig}.png")).exists() {
                let _ = writeln!(md, "\n![{env} {fig}](plots/{slug}-{fig}.png)");
            }
        }
        let _ = writeln!(md);
    }
    if let Some(gap) = &spec.gap {
        gap_section(&mut md, &spec.envs, &metrics, gap);
    }
    crate::commands::write_atomic(&dir.join("report.md"), &md)?;
    let html = crate::html::report_html(&md, dir, &spec.name)?;
    crate::commands::write_atomic(&dir.join("report.html"), &html)?;
    Ok(md)
}

/// The frontier over each agent's grid on a KL grid, with quartiles over seeds, and where one
/// agent's band lies above every other's.
fn frontier_section(
    md: &mut String,
    spec: &crate::sweep::SweepSpec,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
    env: &str,
) {
    let (grid, bands) = crate::verdict::frontier_bands(spec, metrics, env, 12);
    if grid.is_empty() || bands.len() < 2 {
        return;
    }
    let _ = writeln!(md, "\n**Frontier** (per seed the best gold reward of the agent's grid points at each KL, interpolated along each run's evaluations; median [IQR] over seeds; an agent dominates where its lower quartile clears every other's upper quartile):\n");
    let names: Vec<&str> = bands.iter().map(|(n, _)| n.as_str()).collect();
    let _ = writeln!(
        md,
        "| KL | {} | dominates |\n|---|{}---|",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    let mut spans: Vec<(String, f64, f64)> = Vec::new();
    for (i, k) in grid.iter().enumerate() {
        let cells: Vec<String> = bands
            .iter()
            .map(|(_, b)| match b[i] {
                Some(q) => format!("{:.3} [{:.3}, {:.3}]", q.median, q.q25, q.q75),
                None => "–".into(),
            })
            .collect();
        let d = crate::verdict::dominant(&bands, i);
        let _ = writeln!(
            md,
            "| {k:.3} | {} | {} |",
            cells.join(" | "),
            d.unwrap_or("–")
        );
        let who = d.unwrap_or("").to_string();
        match spans.last_mut() {
            Some(s) if s.0 == who => s.2 = *k,
            _ => spans.push((who, *k, *k)),
        }
    }
    let said: Vec<String> = spans
        .iter()
        .filter(|s| !s.0.is_empty())
        .map(|(n, a, b)| format!("`{n}` dominates over KL [{a:.3}, {b:.3}]"))
        .collect();
    let _ = writeln!(
        md,
        "\n{}.",
        if said.is_empty() {
            "No agent's band clears the others' anywhere on the grid".to_string()
        } else {
            format!("{}; the bands overlap elsewhere", said.join("; "))
        }
    );
}

/// Gao et al. (2022)'s curves fitted to the gold-reward gain over the start against d = √KL for
/// the agents that optimise a learned reward: d(α − β log d) for RL (every evaluation of every
/// run), d(α − β d) for best-of-n (each run's one evaluation, n over its grid).
fn overoptimisation_section(
    md: &mut String,
    spec: &crate::sweep::SweepSpec,
    metrics: &BTreeMap<String, Vec<MetricRow>>,
    env: &str,
    start: f64,
) {
    let mut rows = Vec::new();
    for a in spec
        .agents
        .iter()
        .filter(|a| a.reward == crate::sweep::SweepReward::Rm)
    {
        let selects = !a.agent.trains();
        let mut d = Vec::new();
        let mut y = Vec::new();
        let mut peaks = Vec::new();
        for r in spec
            .runs()
            .iter()
            .filter(|r| r.env == env && r.agent.name == a.name)
        {
            let Some(rows) = metrics.get(&r.id) else {
                continue;
            };
            let mut curve = crate::verdict::kl_gold_curve(rows);
            if selects {
                curve = curve.split_off(curve.len().saturating_sub(1));
            }
            if let Some(p) = curve.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
                peaks.push(*p);
            }
            for (kl, gold) in curve {
                if kl.is_finite() && gold.is_finite() && kl > 0.0 {
                    d.push(kl.sqrt());
                    y.push(gold - start);
                }
            }
        }
        let x2: Vec<f64> = d
            .iter()
            .map(|&x| if selects { x * x } else { x * x.ln() })
            .collect();
        let Some(f) = crate::stats::fit_two(&d, &x2, &y, 0.95) else {
            continue;
        };
        let pk: Vec<f64> = peaks.iter().map(|p| p.1).collect();
        let pd: Vec<f64> = peaks.iter().map(|p| p.0.max(0.0).sqrt()).collect();
        rows.push(format!(
            "| {} | {} | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {:.2} | {} | {:.3} at √KL {:.2} |",
            a.name,
            if selects { "d(α − β d)" } else { "d(α − β log d)" },
            f.alpha,
            f.alpha_ci.0,
            f.alpha_ci.1,
            f.beta,
            f.beta_ci.0,
            f.beta_ci.1,
            f.r2,
            f.n,
            quantile(&pk, 0.5),
            quantile(&pd, 0.5),
        ));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n**Over-optimisation fits** (Gao et al. 2022: gold-reward gain over the start against d = √KL; least squares with 95% t-intervals, which treat a run's evaluations as independent and so are narrower than they should be; R² of the gain; each run's gold peak, median over runs):\n\n| agent | form | α | β | R² | points | gold peak |\n|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(md, "{r}");
    }
}

/// The difference in final gold reward between two agents per env, and its mean over the
/// single-turn and the multi-turn envs (the "PPO for long-horizon tasks" claim).
fn gap_section(
    md: &mut String,
    envs: &[String],
    metrics: &BTreeMap<String, Vec<MetricRow>>,
    [a, b]: &[String; 2],
) {
    let _ = writeln!(md, "## Gap by kind of task: `{a}` − `{b}`\n\nFinal eval/gold_reward, median over seeds; the gap is the difference of the medians.\n\n| env | kind | SFT start | {a} | {b} | gap |\n|---|---|---|---|---|---|");
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for env in envs {
        let (stats, start) = env_stats(metrics, env);
        let med = |name: &str| {
            stats
                .iter()
                .find(|s| s.name == name)
                .map(|s| quantile(&s.gold, 0.5))
        };
        let (Some(x), Some(y)) = (med(a), med(b)) else {
            continue;
        };
        let turns = aligngym_envs::task(env).map_or(1, |t| t.max_turns());
        let kind = if turns > 1 {
            "multi-turn"
        } else {
            "single-turn"
        };
        by_kind.entry(kind).or_default().push(x - y);
        let _ = writeln!(
            md,
            "| {env} | {kind} | {start:.3} | {x:.3} | {y:.3} | {:+.3} |",
            x - y
        );
    }
    let _ = writeln!(md);
    for (kind, gaps) in &by_kind {
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let _ = writeln!(
            md,
            "Mean gap over the {} {kind} env(s): {mean:+.3}.",
            gaps.len()
        );
    }
    if let (Some(s), Some(m)) = (by_kind.get("single-turn"), by_kind.get("multi-turn")) {
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let (s, m) = (mean(s), mean(m));
        let _ = writeln!(
            md,
            "\n**Answer:** `{a}`'s lead over `{b}` is {} on the multi-turn envs ({m:+.3}) than on the single-turn ones ({s:+.3}).",
            if m > s { "larger" } else { "not larger" }
        );
    }
    let _ = writeln!(md);
}

/// A plain-text summary table (printed at the end of `compare`).
pub fn summary_table(dir: &Path) -> Result<String> {
    let spec = load_sweep_dir(dir)?;
    let metrics = read_sweep_metrics(dir)?;
    let mut out = String::new();
    for env in &spec.envs {
        let (stats, start) = env_stats(&metrics, env);
        let _ = writeln!(out, "{env} (SFT start: gold {start:.3})");
        let _ = writeln!(
            out,
            "  {:<28} {:>5} {:>22} {:>9} {:>9} {:>8}",
            "series", "runs", "gold median [IQR]", "KL", "win rate", "wall s"
        );
        for s in &stats {
            let _ = writeln!(
                out,
                "  {:<28} {:>5} {:>22} {:>9.3} {:>9.3} {:>8.1}",
                s.name,
                s.runs,
                fmt_med(&s.gold),
                quantile(&s.kl, 0.5),
                quantile(&s.win, 0.5),
                quantile(&s.wall, 0.5)
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(gold_start: f64, gold_end: f64) -> Vec<MetricRow> {
        let row = |step, metric: &str, value| MetricRow {
            step,
            metric: metric.to_string(),
            value,
        };
        vec![
            row(0, "eval/gold_reward", gold_start),
            row(10, "eval/gold_reward", gold_end),
            row(10, "eval/kl_to_ref", 1.0),
        ]
    }

    #[test]
    fn the_start_leaves_out_best_of_n_runs() {
        // Best-of-n's step-0 evaluation is already a selection (0.9 here): the start is the other
        // runs' 0.1.
        let mut m = BTreeMap::new();
        m.insert("arithmetic-v0.ppo.s0".to_string(), run(0.1, 0.5));
        let mut bon = run(0.9, 0.9);
        bon.push(MetricRow {
            step: 0,
            metric: "eval/kl_bound".into(),
            value: 0.6,
        });
        m.insert("arithmetic-v0.bon.s0".to_string(), bon);
        let (stats, start) = env_stats(&m, "arithmetic-v0");
        assert_eq!(stats.len(), 2);
        assert_eq!(start, 0.1);
    }

    #[test]
    fn the_gap_section_compares_single_and_multi_turn_envs() {
        // Medians over seeds: arithmetic ppo-rm {0.5, 0.7} → 0.6, dpo 0.5 → gap +0.1;
        // guess-number ppo-rm 0.6, dpo {0.2, 0.4} → 0.3 → gap +0.3; the multi-turn gap is larger.
        let mut m = BTreeMap::new();
        m.insert("arithmetic-v0.ppo-rm.s0".to_string(), run(0.1, 0.5));
        m.insert("arithmetic-v0.ppo-rm.s1".to_string(), run(0.1, 0.7));
        m.insert("arithmetic-v0.dpo.s0".to_string(), run(0.1, 0.5));
        m.insert("guess-number-v0.ppo-rm.s0".to_string(), run(0.2, 0.6));
        m.insert("guess-number-v0.dpo.s0".to_string(), run(0.2, 0.2));
        m.insert("guess-number-v0.dpo.s1".to_string(), run(0.2, 0.4));
        let envs = ["arithmetic-v0".to_string(), "guess-number-v0".to_string()];
        let mut md = String::new();
        gap_section(&mut md, &envs, &m, &["ppo-rm".into(), "dpo".into()]);
        assert!(
            md.contains("| arithmetic-v0 | single-turn | 0.100 | 0.600 | 0.500 | +0.100 |"),
            "{md}"
        );
        assert!(
            md.contains("| guess-number-v0 | multi-turn | 0.200 | 0.600 | 0.300 | +0.300 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "is larger on the multi-turn envs (+0.300) than on the single-turn ones (+0.100)"
            ),
            "{md}"
        );
    }

    #[test]
    fn the_series_table_marks_a_run_still_improving_and_one_collapsed() {
        let curve = |golds: &[f64]| -> Vec<MetricRow> {
            golds
                .iter()
                .enumerate()
                .map(|(i, &g)| MetricRow {
                    step: 10 * i as u64,
                    metric: "eval/gold_reward".into(),
                    value: g,
                })
                .collect()
        };
        let mut m = BTreeMap::new();
        // Cut short while climbing, on both seeds.
        m.insert(
            "arithmetic-v0.short.s0".to_string(),
            curve(&[0.1, 0.2, 0.3, 0.4]),
        );
        m.insert(
            "arithmetic-v0.short.s1".to_string(),
            curve(&[0.1, 0.2, 0.3, 0.41]),
        );
        // One seed falls from 0.3 to 0.05, far beyond the seeds' spread.
        m.insert(
            "arithmetic-v0.fall.s0".to_string(),
            curve(&[0.3, 0.2, 0.1, 0.05]),
        );
        m.insert(
            "arithmetic-v0.fall.s1".to_string(),
            curve(&[0.3, 0.3, 0.3, 0.25]),
        );
        let (stats, _) = env_stats(&m, "arithmetic-v0");
        let table = series_table(&stats);
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("| {name} |")))
                .unwrap()
                .to_string()
        };
        assert!(row("short").ends_with("| still improving |"), "{table}");
        assert!(
            row("fall").contains("| collapsed (1 of 2 runs); settled |"),
            "{table}"
        );
    }
}
