//! One runner for every agent: `update()` N times, the shared evaluation every `eval_every` updates
//! (the first at step 0, the starting policy), checkpoints, and exact resumption.

use crate::eval::Evaluator;
use crate::metrics::{read_long_csv, write_long_csv, MetricRow};
use crate::pipeline::StageCost;
use aligngym_agents::metric;
use aligngym_agents::{lm::fsio, AgentError, Precision, Result, RunnableAgent};
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
    /// Seconds of evaluation so far (`eval/wall_seconds`); absent in states saved before it.
    #[serde(default)]
    eval_seconds: f64,
}

/// What a run is charged besides its updates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Charges {
    /// Seconds building the agent took (its data loaded, DPO's reference pass): a new run's
    /// `budget/wall_seconds` starts there, so no work of the run happens outside its clock (a
    /// resumed run keeps the clock it saved).
    pub setup_seconds: f64,
    /// The stages the run consumes, added to its `budget/*` in `pipeline/*`.
    pub consumed: StageCost,
    /// Seconds building the evaluator took (sampling the reference's evaluation episodes): the
    /// first of `eval/wall_seconds`.
    pub eval_setup_seconds: f64,
}

/// Where this process's time went while it ran a run, in seconds: what `train` reports, so that
/// a test can check no work of a run happens outside its clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Accounted {
    /// Building the agent (in `budget/wall_seconds` for a new run).
    pub setup: f64,
    /// Updates (`budget/wall_seconds`).
    pub training: f64,
    /// The evaluator's construction and every evaluation (`eval/wall_seconds`).
    pub evaluation: f64,
    /// File work: the run's folder and `config.json`, step commits and exports (durable writes
    /// of the state, the policy, `metrics.csv`).
    pub commits: f64,
}

/// What [`run`] returns: every metric row of the run, and this process's accounted time.
pub struct Ran {
    /// The run's rows, from step 0.
    pub rows: Vec<MetricRow>,
    /// This process's time, by what it was spent on.
    pub seconds: Accounted,
}

/// Evaluate `agent` at `step`, adding the seconds it took to `seconds`; the rows carry the
/// running total as `eval/wall_seconds`.
fn evaluate(
    evaluator: &Evaluator,
    agent: &dyn RunnableAgent,
    step: u64,
    seconds: &mut f64,
) -> Result<Vec<MetricRow>> {
    let t0 = Instant::now();
    let ev = evaluator.evaluate(
        agent.policy(),
        agent.proxy_reward(),
        agent.selection(),
        step,
    )?;
    *seconds += t0.elapsed().as_secs_f64();
    Ok(ev
        .into_iter()
        .chain([(metric::EVAL_WALL_SECONDS.to_string(), *seconds)])
        .map(|(k, v)| MetricRow {
            step,
            metric: k,
            value: v,
        })
        .collect())
}

fn budget_rows(agent: &dyn RunnableAgent, step: u64, wall: f64, c: &Charges) -> Vec<MetricRow> {
    let b = agent.budget();
    [
        (metric::BUDGET_SAMPLES, b.samples as f64),
        (metric::BUDGET_TOKENS_GENERATED, b.tokens_generated as f64),
        (metric::BUDGET_TRAIN_TOKENS, b.train_tokens as f64),
        (metric::BUDGET_ORACLE_QUERIES, b.oracle_queries as f64),
        (metric::BUDGET_WALL_SECONDS, wall),
        (metric::BUDGET_FLOPS, b.flops),
    ]
    .into_iter()
    .chain(crate::pipeline::rows(&b, wall, &c.consumed))
    .map(|(k, v)| MetricRow {
        step,
        metric: k.to_string(),
        value: v,
    })
    .collect()
}

/// The step commit: agent state, runner counters and every metric row up to the step go into
/// `state/` as one unit (staged, flushed, swapped in). `policy/` and the run's `metrics.csv` are
/// exports of that unit, rewritten after it and again on resume, so a kill at any instant leaves a
/// state that a resume continues exactly.
fn checkpoint(
    agent: &dyn RunnableAgent,
    dir: &Path,
    rows: &[MetricRow],
    st: RunnerState,
) -> Result<()> {
    // The NaN guard: nothing non-finite is committed, so the last commit stays the last good one.
    if let Some(r) = rows.iter().find(|r| !r.value.is_finite()) {
        return Err(AgentError::NonFinite {
            metric: r.metric.clone(),
            step: r.step,
        });
    }
    let staged = fsio::Staged::for_dir(&dir.join(STATE))?;
    agent.save_state(staged.path()).map_err(|e| match e {
        AgentError::NonFinite { metric, .. } => AgentError::NonFinite {
            metric,
            step: st.step,
        },
        other => other,
    })?;
    let s = serde_json::to_string_pretty(&st).map_err(|e| AgentError::Data(e.to_string()))?;
    let runner = staged.path().join(RUNNER);
    std::fs::write(&runner, s).map_err(|e| AgentError::io(&runner, e))?;
    write_long_csv(&staged.path().join(METRICS), rows)?;
    staged.commit()?;
    export(agent, dir, rows)
}

/// What a committed step shows outside `state/`: the policy checkpoint and `metrics.csv`.
fn export(agent: &dyn RunnableAgent, dir: &Path, rows: &[MetricRow]) -> Result<()> {
    agent.policy().save(dir.join("policy"))?;
    write_long_csv(&dir.join(METRICS), rows)
}

const STATE: &str = "state";
const RUNNER: &str = "runner.json";
const METRICS: &str = "metrics.csv";

/// The committed state of the run in `dir`, if any (finishing a commit a kill interrupted).
fn committed(dir: &Path) -> Result<Option<RunnerState>> {
    let state = dir.join(STATE);
    fsio::recover(&state)?;
    fsio::remove_stale_temporaries(dir, &[METRICS, "config.json", "done"]);
    let path = state.join(RUNNER);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| AgentError::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| AgentError::Checkpoint {
            path,
            msg: e.to_string(),
        })
}

/// The step a run in `dir` has committed (`None` before its first commit, the starting policy's).
/// Read-only: observers (`aligngym status`, a sweep deciding how to restart a run) may call it
/// while the run's own process is committing, so it never finishes or removes a staged commit
/// (the run's process does that when it resumes); in the instant between a commit's two renames
/// it sees none.
pub fn committed_step(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(STATE).join(RUNNER);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::io(&path, e)),
    };
    serde_json::from_str::<RunnerState>(&text)
        .map(|s| Some(s.step))
        .map_err(|e| AgentError::Checkpoint {
            path,
            msg: e.to_string(),
        })
}

/// Run `agent` for `cfg.updates` updates into `dir` (metrics.csv, policy/, state/); with `resume`,
/// continue from the state saved in `dir`. `charges` are what the run spent before its first
/// update and the stages it consumed. `on_update` sees each step with its new rows and all rows
/// so far (progress bars, a TensorBoard log).
pub fn run(
    agent: &mut dyn RunnableAgent,
    evaluator: &Evaluator,
    cfg: &RunConfig,
    dir: &Path,
    resume: bool,
    charges: &Charges,
    mut on_update: impl FnMut(u64, &[MetricRow], &[MetricRow]),
) -> Result<Ran> {
    let mut spent = Accounted {
        setup: charges.setup_seconds,
        evaluation: charges.eval_setup_seconds,
        ..Accounted::default()
    };
    if cfg.eval_every == 0 {
        return Err(AgentError::config("eval_every", "expected > 0"));
    }
    // Preparing the run's folder and reading a saved state count with the commits (file work).
    let prep = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let save_every = if cfg.save_every == 0 {
        cfg.eval_every
    } else {
        cfg.save_every
    };
    let mut st = RunnerState::default();
    let mut rows: Vec<MetricRow> = Vec::new();
    // A run killed before its first commit has nothing to continue: it starts over.
    let saved = if resume { committed(dir)? } else { None };
    spent.commits += prep.elapsed().as_secs_f64();
    if let Some(saved) = saved {
        st = saved;
        let state = dir.join(STATE);
        agent.load_state(&state)?;
        // States written before the step commit held no rows: the run's file, cut at the step.
        rows = match read_long_csv(&state.join(METRICS)) {
            Ok(r) => r,
            Err(_) if !state.join(METRICS).exists() => read_long_csv(&dir.join(METRICS))?
                .into_iter()
                .filter(|r| r.step <= st.step)
                .collect(),
            Err(e) => return Err(e),
        };
        let t0 = Instant::now();
        export(agent, dir, &rows)?;
        spent.commits += t0.elapsed().as_secs_f64();
    } else {
        st.eval_seconds = charges.eval_setup_seconds;
        rows.extend(evaluate(evaluator, agent, 0, &mut st.eval_seconds)?);
        spent.evaluation = st.eval_seconds;
        st.wall_seconds = charges.setup_seconds;
        rows.extend(budget_rows(agent, 0, st.wall_seconds, charges));
        let t0 = Instant::now();
        checkpoint(agent, dir, &rows, st)?;
        spent.commits += t0.elapsed().as_secs_f64();
    }
    let mut wall = st.wall_seconds;
    let mut eval_seconds = st.eval_seconds;
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
        spent.training += t0.elapsed().as_secs_f64();
        let done = step + 1;
        let start = rows.len();
        rows.extend(m.into_iter().map(|(k, v)| MetricRow {
            step: done,
            metric: k,
            value: v,
        }));
        if done % cfg.eval_every == 0 || done == cfg.updates {
            let before = eval_seconds;
            rows.extend(evaluate(evaluator, agent, done, &mut eval_seconds)?);
            spent.evaluation += eval_seconds - before;
            rows.extend(budget_rows(agent, done, wall, charges));
        }
        on_update(done, &rows[start..], &rows);
        if done % save_every == 0 || done == cfg.updates {
            let t0 = Instant::now();
            checkpoint(
                agent,
                dir,
                &rows,
                RunnerState {
                    step: done,
                    wall_seconds: wall,
                    eval_seconds,
                },
            )?;
            spent.commits += t0.elapsed().as_secs_f64();
        }
    }
    Ok(Ran {
        rows,
        seconds: spent,
    })
}
