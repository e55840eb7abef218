//! What the stages a run consumes cost: each stage records its spending beside what it built
//! (`cost.json` in an SFT or reward-model folder, `FILE.cost.json` beside a preference file), the
//! cost of what it consumed included (a reward model's includes its pairs'). A run's `pipeline/*`
//! columns are its own `budget/*` plus the stages it used: its preference pairs (the DPO family),
//! or its reward model and that model's pairs (PPO-RM and the other agents on `rm:`). A stage
//! shared by several runs is charged in full to each (each would need it alone); the SFT start,
//! common to every agent, is recorded in its folder but not added.

use aligngym_agents::metric::{self, Budget};
use aligngym_agents::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file a stage folder records its cost in.
pub const COST_FILE: &str = "cost.json";

/// What building a stage's output spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageCost {
    /// Wall-clock seconds of building it.
    pub wall_seconds: f64,
    /// Samples, tokens, labels and FLOPs.
    #[serde(flatten)]
    pub spent: Budget,
}

impl StageCost {
    /// Both costs together.
    pub fn plus(&self, other: &StageCost) -> StageCost {
        StageCost {
            wall_seconds: self.wall_seconds + other.wall_seconds,
            spent: self.spent.plus(&other.spent),
        }
    }
}

/// Where a preference file's cost is recorded: `FILE.cost.json` beside it.
pub fn pairs_cost_path(pairs: &Path) -> PathBuf {
    let mut name = pairs.file_name().unwrap_or_default().to_os_string();
    name.push(".cost.json");
    pairs.with_file_name(name)
}

/// Write `cost` to `path` (atomically).
pub fn write(path: &Path, cost: &StageCost) -> Result<()> {
    let text = serde_json::to_string_pretty(cost).map_err(|e| AgentError::Data(e.to_string()))?;
    crate::commands::write_atomic(path, &text)
}

/// The cost recorded at `path`; none where nothing was recorded (data made elsewhere).
pub fn read(path: &Path) -> Result<Option<StageCost>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| AgentError::Data(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io(path, e)),
    }
}

/// Which of a cost's two columns to read in a run's `rows`: the whole pipeline's (`pipeline`)
/// where the run recorded it, else its own (`own`: runs made before `pipeline/*` existed).
pub fn cost_metric(
    rows: &[crate::metrics::MetricRow],
    pipeline: &'static str,
    own: &'static str,
) -> &'static str {
    if rows.iter().any(|r| r.metric == pipeline) {
        pipeline
    } else {
        own
    }
}

/// The `pipeline/*` values at a step: the run's own spending and wall time plus what it consumed.
/// Oracle labels are not repeated here: `budget/oracle_queries` already counts the labels of the
/// pairs a run uses.
pub fn rows(budget: &Budget, wall_seconds: f64, consumed: &StageCost) -> [(&'static str, f64); 5] {
    let all = StageCost {
        wall_seconds,
        spent: *budget,
    }
    .plus(consumed);
    [
        (metric::PIPELINE_SAMPLES, all.spent.samples as f64),
        (
            metric::PIPELINE_TOKENS_GENERATED,
            all.spent.tokens_generated as f64,
        ),
        (metric::PIPELINE_TRAIN_TOKENS, all.spent.train_tokens as f64),
        (metric::PIPELINE_WALL_SECONDS, all.wall_seconds),
        (metric::PIPELINE_FLOPS, all.spent.flops),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_up_and_round_trip() {
        let pairs = StageCost {
            wall_seconds: 2.0,
            spent: Budget {
                samples: 8,
                tokens_generated: 80,
                train_tokens: 0,
                oracle_queries: 4,
                flops: 1e9,
            },
        };
        let rm = StageCost {
            wall_seconds: 3.0,
            spent: Budget {
                train_tokens: 500,
                flops: 2e9,
                ..Budget::default()
            },
        };
        let own = Budget {
            samples: 1,
            tokens_generated: 2,
            train_tokens: 3,
            oracle_queries: 9,
            flops: 5.0,
        };
        let got = rows(&own, 10.0, &rm.plus(&pairs));
        assert_eq!(got.map(|(_, v)| v), [9.0, 82.0, 503.0, 15.0, 3e9 + 5.0]);
        let dir = std::env::temp_dir().join(format!("aligngym-cost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = pairs_cost_path(&dir.join("prefs.jsonl"));
        assert_eq!(p.file_name().unwrap(), "prefs.jsonl.cost.json");
        assert_eq!(read(&p).unwrap(), None);
        write(&p, &pairs).unwrap();
        assert_eq!(read(&p).unwrap(), Some(pairs));
        std::fs::write(&p, "{").unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .contains("prefs.jsonl.cost.json"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
