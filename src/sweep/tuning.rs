//! Equal tuning: an agent's `tune` grid runs on the tuning seeds, evaluated on the validation
//! prompts; the configuration with the best median final gold reward there is what the agent's
//! runs on the verdict's seeds use. Read from the finished tuning runs' folders, so a resumed
//! sweep chooses as the first did.

use super::scheduler::{run_file, RunFile};
use super::spec::{value_str, AgentSpec, Phase, RunSpec, SweepSpec};
use crate::metrics::{last, read_long_csv};
use aligngym_agents::metric;
use aligngym_agents::{AgentError, Result};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// One configuration of a `tune` grid and how it did on the validation prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Tried {
    /// The configuration.
    pub point: BTreeMap<String, toml::Value>,
    /// Final validation gold reward per tuning seed.
    pub gold: Vec<(u64, f64)>,
    /// Their median.
    pub median: f64,
}

/// `k=v, k=v` of a configuration.
pub fn point_label(point: &BTreeMap<String, toml::Value>) -> String {
    point
        .iter()
        .map(|(k, v)| format!("{k}={}", value_str(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tuning runs of `agent` on `env`.
fn tuning_runs<'a>(
    runs: &'a [RunSpec],
    env: &'a str,
    agent: &'a str,
) -> impl Iterator<Item = &'a RunSpec> {
    runs.iter()
        .filter(move |r| r.phase == Phase::Tune && r.env == env && r.agent.name == agent)
}

/// Whether run `r` of `runs` (the sweep's) may start: a tuned agent's run once all its tuning
/// runs are done.
pub fn ready(runs: &[RunSpec], out: &Path, r: &RunSpec) -> bool {
    !r.is_tuned()
        || tuning_runs(runs, &r.env, &r.agent.name)
            .all(|t| run_file(out, &t.id, RunFile::Dir).join("done").exists())
}

/// Every configuration `agent` tried on `env`, in grid order; an error names a tuning run that
/// has not finished.
pub fn tried(spec: &SweepSpec, out: &Path, env: &str, agent: &AgentSpec) -> Result<Vec<Tried>> {
    let runs = spec.runs();
    let mut by_point: Vec<Tried> = Vec::new();
    for t in tuning_runs(&runs, env, &agent.name) {
        let dir = run_file(out, &t.id, RunFile::Dir);
        if !dir.join("done").exists() {
            return Err(AgentError::Data(format!(
                "tuning run {} has not finished: `{}` on {env} cannot choose its configuration yet",
                t.id, agent.name
            )));
        }
        let rows = read_long_csv(&dir.join("metrics.csv"))?;
        let gold = last(&rows, metric::EVAL_GOLD_REWARD).ok_or_else(|| {
            AgentError::Data(format!(
                "tuning run {} has no {}",
                t.id,
                metric::EVAL_GOLD_REWARD
            ))
        })?;
        match by_point.iter_mut().find(|x| x.point == t.point) {
            Some(x) => x.gold.push((t.seed, gold)),
            None => by_point.push(Tried {
                point: t.point.clone(),
                gold: vec![(t.seed, gold)],
                median: 0.0,
            }),
        }
    }
    for x in &mut by_point {
        let mut v: Vec<f64> = x.gold.iter().map(|g| g.1).collect();
        v.sort_by(f64::total_cmp);
        x.median = crate::stats::quantile_sorted(&v, 0.5);
    }
    Ok(by_point)
}

/// The configuration of `tried` with the best median (the first in grid order on a tie).
pub fn best(tried: &[Tried]) -> Option<&Tried> {
    tried.iter().fold(None, |b: Option<&Tried>, x| match b {
        Some(b) if b.median >= x.median => Some(b),
        _ => Some(x),
    })
}

/// Run `r` as it starts: a tuned agent's run gets the configuration its tuning chose.
pub fn resolve(spec: &SweepSpec, out: &Path, r: &RunSpec) -> Result<RunSpec> {
    if !r.is_tuned() {
        return Ok(r.clone());
    }
    let tried = tried(spec, out, &r.env, &r.agent)?;
    let chosen = best(&tried).ok_or_else(|| {
        AgentError::Data(format!(
            "`{}` has no tuning runs on {}",
            r.agent.name, r.env
        ))
    })?;
    Ok(RunSpec {
        point: chosen.point.clone(),
        ..r.clone()
    })
}

/// `tuning.csv`: one row per tuning run (env, agent, configuration, seed, validation gold, and
/// whether its configuration was chosen); `None` when no agent tunes or a tuning run is missing.
pub fn tuning_csv(spec: &SweepSpec, out: &Path) -> Option<String> {
    let mut csv = String::from("env,agent,configuration,seed,validation_gold,chosen\n");
    let mut any = false;
    for env in &spec.envs {
        for a in spec.agents.iter().filter(|a| !a.tune.is_empty()) {
            let tried = tried(spec, out, env, a).ok()?;
            let chosen = best(&tried).map(|b| b.point.clone());
            for x in &tried {
                for (seed, gold) in &x.gold {
                    any = true;
                    let _ = writeln!(
                        csv,
                        "{env},{},\"{}\",{seed},{gold},{}",
                        a.name,
                        point_label(&x.point),
                        u8::from(chosen.as_ref() == Some(&x.point))
                    );
                }
            }
        }
    }
    any.then_some(csv)
}

/// The report's tuning section: per env and tuned agent, each configuration's median validation
/// gold, the chosen one in bold; empty when no agent tunes.
pub fn report_section(spec: &SweepSpec, out: &Path) -> String {
    let mut md = String::new();
    for env in &spec.envs {
        for a in spec.agents.iter().filter(|a| !a.tune.is_empty()) {
            let Ok(tried) = tried(spec, out, env, a) else {
                continue;
            };
            let chosen = best(&tried).map(|b| b.point.clone());
            if md.is_empty() {
                let _ = writeln!(
                    md,
                    "## Tuning\n\nEach configuration on tuning seeds {:?}, evaluated on validation prompts (training prompts, none of the eval split's); the best median final gold reward (bold) is what the agent's runs on seeds {:?} use.\n",
                    spec.tune_seeds, spec.seeds
                );
                md.push_str("| env | agent | configuration | validation gold (median) |\n|---|---|---|---|\n");
            }
            for x in &tried {
                let label = point_label(&x.point);
                let cell = if chosen.as_ref() == Some(&x.point) {
                    format!("**{label}**")
                } else {
                    label
                };
                let _ = writeln!(md, "| {env} | {} | {cell} | {:.3} |", a.name, x.median);
            }
        }
    }
    if !md.is_empty() {
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tried(v: i64, gold: &[f64]) -> Tried {
        let mut s = gold.to_vec();
        s.sort_by(f64::total_cmp);
        Tried {
            point: BTreeMap::from([("n".to_string(), toml::Value::Integer(v))]),
            gold: gold.iter().map(|&g| (0, g)).collect(),
            median: crate::stats::quantile_sorted(&s, 0.5),
        }
    }

    #[test]
    fn the_best_median_wins_and_a_tie_keeps_the_first() {
        let a = tried(1, &[0.2, 0.9, 0.3]); // median 0.3 despite one lucky seed
        let b = tried(2, &[0.4, 0.5, 0.45]); // median 0.45
        let c = tried(3, &[0.45, 0.45, 0.1]); // median 0.45: ties with b, later in the grid
        assert_eq!(best(&[a.clone(), b.clone(), c]).unwrap().point, b.point);
        assert_eq!(point_label(&b.point), "n=2");
        assert!(best(&[]).is_none());
        assert_eq!(best(std::slice::from_ref(&a)).unwrap().point, a.point);
    }
}
