//! `runs.csv` and `metrics.csv` from the finished run folders.

use super::spec::{value_str, Phase, SweepSpec};
use crate::commands;
use crate::convergence;
use crate::metrics::{read_long_csv, MetricRow};
use aligngym_agents::metric;
use aligngym_agents::{AgentError, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The final-metric columns of `runs.csv`, in order (documented in the README; never reordered).
pub const RUN_COLUMNS: &[&str] = &[
    metric::EVAL_GOLD_REWARD,
    metric::EVAL_PROXY_REWARD,
    metric::EVAL_KL_TO_REF,
    metric::EVAL_WIN_RATE_VS_REF,
    metric::EVAL_ENTROPY,
    metric::EVAL_RESPONSE_LEN,
    metric::EVAL_DISTINCT_2,
    metric::BUDGET_SAMPLES,
    metric::BUDGET_TOKENS_GENERATED,
    metric::BUDGET_TRAIN_TOKENS,
    metric::BUDGET_ORACLE_QUERIES,
    metric::BUDGET_WALL_SECONDS,
    metric::BUDGET_FLOPS,
];

/// Write `runs.csv` (one row per finished run) and `metrics.csv` (long) from the run folders.
pub fn collect(spec: &SweepSpec, out: &Path) -> Result<()> {
    let mut hp_keys: Vec<String> = spec
        .agents
        .iter()
        .flat_map(|a| a.grid.keys().chain(a.tune.keys()).cloned())
        .collect();
    hp_keys.sort();
    hp_keys.dedup();
    let mut runs_csv = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "run_id",
        "env",
        "agent",
        "agent_kind",
        "reward",
        "prefs",
        "seed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(hp_keys.iter().map(|k| format!("hp.{k}")));
    header.extend(RUN_COLUMNS.iter().map(|s| s.to_string()));
    header.push("final_step".into());
    header.push("collapsed".into());
    runs_csv
        .write_record(&header)
        .map_err(|e| AgentError::Data(e.to_string()))?;
    let mut long = csv::Writer::from_writer(Vec::new());
    long.write_record(["run_id", "step", "metric", "value"])
        .map_err(|e| AgentError::Data(e.to_string()))?;
    let mut finished = Vec::new();
    // Tuning runs stay in their folders and `tuning.csv`: the CSVs hold what verdicts read.
    for r in spec.runs().into_iter().filter(|r| r.phase == Phase::Main) {
        let dir = out.join("runs").join(&r.id);
        if dir.join("done").exists() {
            let rows: Vec<MetricRow> = read_long_csv(&dir.join("metrics.csv"))?;
            finished.push((r, rows));
        }
    }
    // A run collapsed when it ends below its start by more than its series' spread over seeds.
    let mut series: BTreeMap<String, Vec<&[MetricRow]>> = BTreeMap::new();
    for (r, rows) in &finished {
        series
            .entry(crate::plot::series_key(&r.id))
            .or_default()
            .push(rows.as_slice());
    }
    let spreads: BTreeMap<String, f64> = series
        .into_iter()
        .map(|(k, runs)| (k, convergence::series_spread(&runs)))
        .collect();
    for (r, rows) in &finished {
        let spread = spreads[&crate::plot::series_key(&r.id)];
        // A tuned agent's runs list the configuration they ran with.
        let point =
            super::tuning::resolve(spec, out, r).map_or_else(|_| r.point.clone(), |x| x.point);
        let mut rec: Vec<String> = vec![
            r.id.clone(),
            r.env.clone(),
            r.agent.name.clone(),
            r.agent.agent.to_string(),
            r.agent.reward.to_string(),
            r.agent.prefs.clone(),
            r.seed.to_string(),
        ];
        rec.extend(
            hp_keys
                .iter()
                .map(|k| point.get(k).map(value_str).unwrap_or_default()),
        );
        rec.extend(RUN_COLUMNS.iter().map(|m| {
            crate::metrics::last(rows, m)
                .map(|v| v.to_string())
                .unwrap_or_default()
        }));
        rec.push(rows.iter().map(|x| x.step).max().unwrap_or(0).to_string());
        rec.push(u8::from(convergence::collapsed(rows, spread)).to_string());
        runs_csv
            .write_record(&rec)
            .map_err(|e| AgentError::Data(e.to_string()))?;
        for x in rows {
            long.write_record([
                r.id.as_str(),
                &x.step.to_string(),
                &x.metric,
                &x.value.to_string(),
            ])
            .map_err(|e| AgentError::Data(e.to_string()))?;
        }
    }
    let bytes =
        |w: csv::Writer<Vec<u8>>| w.into_inner().map_err(|e| AgentError::Data(e.to_string()));
    commands::write_atomic(
        &out.join("runs.csv"),
        &String::from_utf8_lossy(&bytes(runs_csv)?),
    )?;
    commands::write_atomic(
        &out.join("metrics.csv"),
        &String::from_utf8_lossy(&bytes(long)?),
    )?;
    if let Some(csv) = super::tuning::tuning_csv(spec, out) {
        commands::write_atomic(&out.join("tuning.csv"), &csv)?;
    }
    Ok(())
}
