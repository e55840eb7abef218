//! The shared stages of a sweep (SFT, preference sets, reward models): keyed by their inputs,
//! built once under a lock, required or skipped per invocation.

use super::spec::{sanitize, SweepSpec};
use crate::commands::{self, ModelSize};
use crate::pipeline;
use aligngym_agents::lm::sampling::SamplingConfig;
use aligngym_agents::stages::preferences::Branching;
use aligngym_agents::stages::sft::SftConfig;
use aligngym_agents::{AgentError, LmPolicy, Result, RmConfig};
use aligngym_envs::{read_pairs, task, write_pairs, OracleConfig, PreferencePair};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A stage's input as stage keys name it: by its place in the sweep folder when it is inside, so
/// a folder keeps its stages however it is reached (a relative `--out`, an absolute one in a Slurm
/// job, a moved folder).
fn in_sweep(out: &Path, p: &Path) -> String {
    p.strip_prefix(out)
        .map_or_else(|_| p.display().to_string(), |r| r.display().to_string())
}

/// FNV-1a of a stage's config: stages with equal configs share a folder.
fn key(v: &impl Serialize) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")[..10].to_string()
}

/// A shared stage of a sweep, built once and used by many runs: the unit of a Slurm stage job.
/// Written `sft:ENV`, `prefs:ENV` or `rm:ENV:PREFS`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The SFT policy of an env (none when the sweep names a `policy`).
    Sft {
        /// Env id.
        env: String,
    },
    /// Every preference set of an env (sampled ones, then mixes).
    Prefs {
        /// Env id.
        env: String,
    },
    /// The reward model trained on one preference set of an env.
    Rm {
        /// Env id.
        env: String,
        /// The preference set's name.
        prefs: String,
    },
}

impl Stage {
    /// The env the stage belongs to.
    pub fn env(&self) -> &str {
        match self {
            Stage::Sft { env } | Stage::Prefs { env } | Stage::Rm { env, .. } => env,
        }
    }

    /// Whether `self` reads what `other` builds (SFT before preferences before reward models).
    pub fn needs(&self, other: &Stage) -> bool {
        let rank = |s: &Stage| match s {
            Stage::Sft { .. } => 0,
            Stage::Prefs { .. } => 1,
            Stage::Rm { .. } => 2,
        };
        self.env() == other.env() && rank(other) < rank(self) && rank(other) < 2
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Sft { env } => write!(f, "sft:{env}"),
            Stage::Prefs { env } => write!(f, "prefs:{env}"),
            Stage::Rm { env, prefs } => write!(f, "rm:{env}:{prefs}"),
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = AgentError;
    fn from_str(t: &str) -> Result<Self> {
        // An env id may hold `:` itself (`task:PATH`); a preference set's name may not.
        let (kind, rest) = t.split_once(':').unwrap_or((t, ""));
        let env = |e: &str| e.to_string();
        match (kind, rest.rsplit_once(':')) {
            ("sft", _) if !rest.is_empty() => Ok(Stage::Sft { env: env(rest) }),
            ("prefs", _) if !rest.is_empty() => Ok(Stage::Prefs { env: env(rest) }),
            ("rm", Some((e, p))) if !e.is_empty() && !p.is_empty() => Ok(Stage::Rm {
                env: env(e),
                prefs: p.to_string(),
            }),
            _ => Err(AgentError::config(
                "--stage",
                format!("`{t}`: expected sft:ENV, prefs:ENV or rm:ENV:PREFS"),
            )),
        }
    }
}

impl SweepSpec {
    /// The shared stages, each after those it needs.
    pub fn stages(&self) -> Vec<Stage> {
        let mut out = Vec::new();
        for env in &self.envs {
            if self.policy.is_none() {
                out.push(Stage::Sft { env: env.clone() });
            }
            out.push(Stage::Prefs { env: env.clone() });
            let mut rms: Vec<&String> = self
                .agents
                .iter()
                .filter(|a| a.reward == crate::sweep::SweepReward::Rm)
                .map(|a| &a.prefs)
                .collect();
            rms.sort();
            rms.dedup();
            out.extend(rms.into_iter().map(|p| Stage::Rm {
                env: env.clone(),
                prefs: p.clone(),
            }));
        }
        out
    }
}

/// Whether a stage is built here, must already be built, or is not needed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    Build,
    Require,
    Skip,
}

/// The shared stages of one env.
pub(super) struct EnvStages {
    /// The starting policy.
    pub(super) sft: PathBuf,
    /// Preference set name → its JSONL and the oracle queries it cost.
    pub(super) prefs: BTreeMap<String, (PathBuf, u64)>,
    /// Preference set name → its reward model.
    pub(super) rms: BTreeMap<String, PathBuf>,
}

/// A stage's output is missing where it must already be built.
fn not_built(stage: &Stage, path: &Path) -> AgentError {
    AgentError::Data(format!(
        "stage {stage} is not built ({}): build it first (`aligngym sweep DIR --stage {stage}`, or a plain `aligngym sweep`)",
        path.display()
    ))
}

/// Build a stage's output at `done` (its completion marker) with `build`, under the stage's
/// lock, unless it is there: concurrent sweeps (shards, Slurm jobs re-submitted while the first
/// still runs) build it once, and a killed builder's lock dies with it.
fn build_once(
    out: &Path,
    stage: &Stage,
    mode: Mode,
    done: &Path,
    quiet: bool,
    build: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if done.exists() {
        return Ok(());
    }
    if mode != Mode::Build {
        return Err(not_built(stage, done));
    }
    let _lock = aligngym_agents::lm::fsio::Lock::exclusive(
        &out.join("stages")
            .join(format!(".{}.lock", sanitize(&stage.to_string()))),
    )?;
    if done.exists() {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    build()?;
    if !quiet {
        eprintln!(
            "stage {stage} built in {}",
            commands::hms(t0.elapsed().as_secs_f64())
        );
    }
    Ok(())
}

fn stage_sft(
    spec: &SweepSpec,
    env: &str,
    out: &Path,
    dev: tch::Device,
    quiet: bool,
    mode: Mode,
) -> Result<PathBuf> {
    if let Some(p) = &spec.policy {
        return Ok(p.clone());
    }
    let t = task(env)?;
    let base = if spec.sft_steps == 0 {
        t.sft_steps()
    } else {
        spec.sft_steps
    };
    let steps = ((base as f64 * spec.scale).round() as usize).max(50);
    let cfg = SftConfig {
        steps,
        ..Default::default()
    };
    let dir = out.join("stages").join(format!(
        "sft-{}-{}",
        sanitize(env),
        key(&(env, &cfg, "tiny"))
    ));
    let stage = Stage::Sft { env: env.into() };
    build_once(
        out,
        &stage,
        mode,
        &dir.join("model.safetensors"),
        quiet,
        || {
            let corpus = commands::corpus_records(t.corpus(cfg.corpus_size, 0));
            let start = commands::SftStart::Fresh(ModelSize::Tiny);
            commands::run_sft(&corpus, start, &cfg, 0, dev, &dir, quiet).map(|_| ())
        },
    )?;
    Ok(dir)
}

fn stage_prefs(
    spec: &SweepSpec,
    env: &str,
    sft: &Path,
    out: &Path,
    dev: tch::Device,
    quiet: bool,
    mode: Mode,
) -> Result<BTreeMap<String, (PathBuf, u64)>> {
    let t = task(env)?;
    let stage = Stage::Prefs { env: env.into() };
    let mut done: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    let scaled = |n: usize| ((n as f64 * spec.scale).round() as usize).max(2);
    for p in spec.prefs.iter().filter(|p| p.mix.is_empty()) {
        let gen_path = p.generator.policy(sft).to_path_buf();
        // Branching is in the key only where it changes the data (multi-turn, `turn`), so the
        // stages built before it existed stay valid.
        let base = (
            env,
            in_sweep(out, &gen_path),
            p.temperature,
            scaled(p.pairs),
            p.flip_rate,
        );
        let k = match p.branch {
            Branching::Turn if t.max_turns() > 1 => key(&(base, p.branch)),
            _ => key(&base),
        };
        let path = out
            .join("stages")
            .join(format!("prefs-{}-{}-{k}.jsonl", sanitize(env), p.name));
        // The query count is written after the pairs: it marks a finished set.
        let meta = path.with_extension("queries");
        build_once(out, &stage, mode, &meta, quiet, || {
            let g = LmPolicy::load(&gen_path, dev)?;
            let sampling = SamplingConfig {
                temperature: p.temperature,
                max_new_tokens: t.max_new_tokens(),
                ..Default::default()
            };
            let oracle = OracleConfig {
                flip_rate: p.flip_rate,
                ..Default::default()
            };
            let (pairs, cost) = commands::build_prefs(
                &g,
                t.clone(),
                scaled(p.pairs),
                4,
                oracle,
                sampling,
                &p.generator.to_string(),
                true,
                p.branch,
                0,
            )?;
            write_pairs(&path, &pairs)?;
            pipeline::write(&pipeline::pairs_cost_path(&path), &cost)?;
            commands::write_atomic(&meta, &cost.spent.oracle_queries.to_string())
        })?;
        let q: u64 = std::fs::read_to_string(&meta)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        done.insert(p.name.clone(), (path, q));
    }
    for p in spec.prefs.iter().filter(|p| !p.mix.is_empty()) {
        let path = out.join("stages").join(format!(
            "prefs-{env}-{}-{}.jsonl",
            p.name,
            key(&(env, &p.mix, scaled(p.pairs)))
        ));
        let n = scaled(p.pairs);
        let per = n / p.mix.len();
        let mut all: Vec<PreferencePair> = Vec::new();
        // A mix costs the share of each source's cost that its pairs are of that source.
        let mut cost = pipeline::StageCost::default();
        for m in &p.mix {
            let (src, sq) = &done[m];
            let pairs = read_pairs(src)?;
            let take = per.min(pairs.len());
            let share = take as f64 / pairs.len().max(1) as f64;
            let c = pipeline::read(&pipeline::pairs_cost_path(src))?.unwrap_or_default();
            cost = cost.plus(&pipeline::StageCost {
                wall_seconds: c.wall_seconds * share,
                spent: aligngym_agents::metric::Budget {
                    samples: (c.spent.samples as f64 * share) as u64,
                    tokens_generated: (c.spent.tokens_generated as f64 * share) as u64,
                    train_tokens: 0,
                    oracle_queries: sq * take as u64 / pairs.len().max(1) as u64,
                    flops: c.spent.flops * share,
                },
            });
            all.extend(pairs.into_iter().take(take));
        }
        build_once(out, &stage, mode, &path, quiet, || {
            pipeline::write(&pipeline::pairs_cost_path(&path), &cost)?;
            write_pairs(&path, &all)?;
            Ok(())
        })?;
        done.insert(p.name.clone(), (path, cost.spent.oracle_queries));
    }
    Ok(done)
}

#[allow(clippy::too_many_arguments)]
fn stage_rm(
    env: &str,
    prefs_name: &str,
    prefs: &(PathBuf, u64),
    sft: &Path,
    out: &Path,
    dev: tch::Device,
    quiet: bool,
    mode: Mode,
) -> Result<PathBuf> {
    let cfg = RmConfig::default();
    let dir = out.join("stages").join(format!(
        "rm-{env}-{prefs_name}-{}",
        key(&(in_sweep(out, &prefs.0), &cfg))
    ));
    let stage = Stage::Rm {
        env: env.into(),
        prefs: prefs_name.into(),
    };
    // The report is written after the model: its presence marks a finished stage.
    build_once(
        out,
        &stage,
        mode,
        &dir.join("rm_report.json"),
        quiet,
        || {
            let pairs = read_pairs(&prefs.0)?;
            let pairs_cost =
                pipeline::read(&pipeline::pairs_cost_path(&prefs.0))?.unwrap_or_default();
            let init = LmPolicy::load(sft, dev)?;
            commands::train_rm(&init, &pairs, &pairs_cost, &cfg, 0, &dir, quiet).map(|_| ())
        },
    )?;
    Ok(dir)
}

/// The stages of one env, each built, required or skipped as `mode` says; `None` when the
/// stages stop at `last` (a stage job needs nothing after its own).
pub(super) fn env_stages(
    spec: &SweepSpec,
    env: &str,
    out: &Path,
    dev: tch::Device,
    quiet: bool,
    mode: &dyn Fn(&Stage) -> Mode,
    last: Option<&Stage>,
) -> Result<Option<EnvStages>> {
    let sft_stage = Stage::Sft { env: env.into() };
    let sft = stage_sft(spec, env, out, dev, quiet, mode(&sft_stage))?;
    if last == Some(&sft_stage) {
        return Ok(None);
    }
    let prefs_stage = Stage::Prefs { env: env.into() };
    let prefs = stage_prefs(spec, env, &sft, out, dev, quiet, mode(&prefs_stage))?;
    if last == Some(&prefs_stage) {
        return Ok(None);
    }
    let mut rms = BTreeMap::new();
    for s in spec.stages() {
        if let Stage::Rm { env: e, prefs: p } = &s {
            if e != env || mode(&s) == Mode::Skip {
                continue;
            }
            let dir = stage_rm(env, p, &prefs[p], &sft, out, dev, quiet, mode(&s))?;
            rms.insert(p.clone(), dir);
            if last == Some(&s) {
                return Ok(None);
            }
        }
    }
    Ok(Some(EnvStages { sft, prefs, rms }))
}

/// Whether a stage's output is complete in `out` (with the stages it needs).
pub fn stage_built(spec: &SweepSpec, out: &Path, stage: &Stage) -> bool {
    let mode = |s: &Stage| {
        if s == stage || stage.needs(s) {
            Mode::Require
        } else {
            Mode::Skip
        }
    };
    env_stages(
        spec,
        stage.env(),
        out,
        tch::Device::Cpu,
        true,
        &mode,
        Some(stage),
    )
    .is_ok()
}
