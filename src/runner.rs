//! One runner for every agent: `update()` N times, the shared evaluation every `eval_every` updates
//! (the first at step 0, the starting policy), checkpoints, and exact resumption.

use crate::eval::Evaluator;
use crate::metrics::{read_long_csv, write_long_csv, MetricRow};
use aligngym_agents::{AgentError, Precision, Result, RunnableAgent};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// How long to run and how often to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Agent updates (PPO iterations, DPO steps). Default 60.
    pub updates: u64,
    /// Evaluate every this many updates (and at the end). Default 10.
    pub eval_every: u64,
    /// Checkpoint every this many updates; 0 means at every evaluation. Default 0.
    pub save_every: u64,
    /// Compute precision of training, sampling and evaluation: `fp32` (default) or `bf16` (bf16
    /// matmuls and KV cache; fp32 master weights, LayerNorms, softmaxes and losses).
    pub dtype: Precision,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            updates: 60,
            eval_every: 10,
            save_every: 0,
            dtype: Precision::Fp32,
        }
    }
}

/// Where the runner was when it last checkpointed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct RunnerState {
    step: u64,
    wall_seconds: f64,
}

fn budget_rows(agent: &dyn RunnableAgent, step: u64, wall: f64) -> Vec<MetricRow> {
    let b = agent.budget();
    [
        ("budget/samples", b.samples as f64),
        ("budget/tokens_generated", b.tokens_generated as f64),
        ("budget/train_tokens", b.train_tokens as f64),
        ("budget/oracle_queries", b.oracle_queries as f64),
        ("budget/wall_seconds", wall),
        ("budget/flops", b.flops),
    ]
    .into_iter()
    .map(|(k, v)| MetricRow {
        step,
        metric: k.to_string(),
        value: v,
    })
    .collect()
}

fn checkpoint(
    agent: &dyn RunnableAgent,
    dir: &Path,
    rows: &[MetricRow],
    st: RunnerState,
) -> Result<()> {
    agent.policy().save(dir.join("policy"))?;
    let tmp = dir.join(".state.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    agent.save_state(&tmp)?;
    let s = serde_json::to_string_pretty(&st).map_err(|e| AgentError::Data(e.to_string()))?;
    std::fs::write(tmp.join("runner.json"), s)
        .map_err(|e| AgentError::io(tmp.join("runner.json"), e))?;
    let state = dir.join("state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::rename(&tmp, &state).map_err(|e| AgentError::io(&state, e))?;
    write_long_csv(&dir.join("metrics.csv"), rows)
}

/// Run `agent` for `cfg.updates` updates into `dir` (metrics.csv, policy/, state/); with `resume`,
/// continue from the state saved in `dir`. `on_update` sees each step (progress bars).
pub fn run(
    agent: &mut dyn RunnableAgent,
    evaluator: &Evaluator,
    cfg: &RunConfig,
    dir: &Path,
    resume: bool,
    mut on_update: impl FnMut(u64, &[MetricRow]),
) -> Result<Vec<MetricRow>> {
    if cfg.eval_every == 0 {
        return Err(AgentError::config("eval_every", "expected > 0"));
    }
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let save_every = if cfg.save_every == 0 {
        cfg.eval_every
    } else {
        cfg.save_every
    };
    let mut st = RunnerState::default();
    let mut rows: Vec<MetricRow> = Vec::new();
    if resume {
        let path = dir.join("state").join("runner.json");
        let text = std::fs::read_to_string(&path).map_err(|e| AgentError::Checkpoint {
            path: dir.to_path_buf(),
            msg: format!("no resumable state ({}: {e})", path.display()),
        })?;
        st = serde_json::from_str(&text).map_err(|e| AgentError::Checkpoint {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        agent.load_state(&dir.join("state"))?;
        rows = read_long_csv(&dir.join("metrics.csv"))?
            .into_iter()
            .filter(|r| r.step <= st.step)
            .collect();
    } else {
        let ev = evaluator.evaluate(agent.policy(), agent.proxy_reward(), 0)?;
        rows.extend(ev.into_iter().map(|(k, v)| MetricRow {
            step: 0,
            metric: k,
            value: v,
        }));
        rows.extend(budget_rows(agent, 0, 0.0));
        checkpoint(agent, dir, &rows, st)?;
    }
    let mut wall = st.wall_seconds;
    for step in st.step..cfg.updates {
        let t0 = Instant::now();
        // Errors name the update by the step its metrics would have carried (updates done).
        let m = agent.update(step).map_err(|e| match e {
            AgentError::NonFinite { metric, .. } => AgentError::NonFinite {
                metric,
                step: step + 1,
            },
            other => other,
        })?;
        wall += t0.elapsed().as_secs_f64();
        let done = step + 1;
        let start = rows.len();
        rows.extend(m.into_iter().map(|(k, v)| MetricRow {
            step: done,
            metric: k,
            value: v,
        }));
        if done % cfg.eval_every == 0 || done == cfg.updates {
            let ev = evaluator.evaluate(agent.policy(), agent.proxy_reward(), done)?;
            rows.extend(ev.into_iter().map(|(k, v)| MetricRow {
                step: done,
                metric: k,
                value: v,
            }));
            rows.extend(budget_rows(agent, done, wall));
        }
        on_update(done, &rows[start..]);
        if done % save_every == 0 || done == cfg.updates {
            checkpoint(
                agent,
                dir,
                &rows,
                RunnerState {
                    step: done,
                    wall_seconds: wall,
                },
            )?;
        }
    }
    Ok(rows)
}
