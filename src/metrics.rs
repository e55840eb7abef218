//! Metric rows and their CSV files (long format: one row per step and metric), written under a
//! temporary name and renamed into place.

use aligngym_agents::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One value of one metric at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// Updates done when it was measured (0 = the starting policy).
    pub step: u64,
    /// Metric name, e.g. `eval/gold_reward`.
    pub metric: String,
    /// Its value.
    pub value: f64,
}

/// Write `rows` as `step,metric,value` to `path` durably (temporary sibling, fsync, rename).
pub fn write_long_csv(path: &Path, rows: &[MetricRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)
            .map_err(|e| AgentError::Data(format!("{}: {e}", path.display())))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| AgentError::Data(format!("{}: {e}", path.display())))?;
    aligngym_agents::lm::fsio::write_atomic(path, &bytes)
}

/// Read a `step,metric,value` file.
pub fn read_long_csv(path: &Path) -> Result<Vec<MetricRow>> {
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| AgentError::Data(format!("{}: {e}", path.display())))?;
    r.deserialize()
        .enumerate()
        .map(|(i, row)| {
            row.map_err(|e| AgentError::Data(format!("{}:{}: {e}", path.display(), i + 2)))
        })
        .collect()
}

/// The last value of `metric` in `rows`.
pub fn last(rows: &[MetricRow], metric: &str) -> Option<f64> {
    rows.iter()
        .rev()
        .find(|r| r.metric == metric)
        .map(|r| r.value)
}

/// `(step, value)` of every row of `metric`.
pub fn series(rows: &[MetricRow], metric: &str) -> Vec<(u64, f64)> {
    rows.iter()
        .filter(|r| r.metric == metric)
        .map(|r| (r.step, r.value))
        .collect()
}
