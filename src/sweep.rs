//! Sweeps: a grid over envs × agents × hyperparameters × seeds, with shared stages (SFT, preference
//! data, reward models) built once and reused, finished runs skipped on re-run, interrupted runs
//! resumed, deterministic sharding, and tidy CSV output (`runs.csv`, `metrics.csv`).

use crate::commands::{self, ModelSize};
use crate::metrics::{read_long_csv, MetricRow};
use aligngym_agents::preferences::Branching;
use aligngym_agents::sampling::SamplingConfig;
use aligngym_agents::sft::SftConfig;
use aligngym_agents::{AgentError, Learns, LmPolicy, Result, RmConfig};
use aligngym_envs::{read_pairs, task, write_pairs, OracleConfig, PreferencePair};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A named preference data set built from a generator policy (or mixed from others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefsSpec {
    /// Name agents refer to.
    pub name: String,
    /// Generator: `sft` (the sweep's SFT policy: on-policy) or a checkpoint path (off-policy).
    #[serde(default = "default_generator")]
    pub generator: String,
    /// Generator sampling temperature. Default 0.7.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Pairs (multiplied by the sweep's scale). Default 1024.
    #[serde(default = "default_pairs")]
    pub pairs: usize,
    /// Oracle label-flip rate (simulated rater noise). Default 0.
    #[serde(default)]
    pub flip_rate: f32,
    /// Instead of sampling: the union of these sets' pairs, equally many from each.
    #[serde(default)]
    pub mix: Vec<String>,
    /// Multi-turn envs: where a pair's conversations part, `turn` (default) or `start`.
    #[serde(default)]
    pub branch: Branching,
}

fn default_generator() -> String {
    "sft".into()
}
fn default_temperature() -> f64 {
    0.7
}
fn default_pairs() -> usize {
    1024
}

/// One agent of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Name in run ids and plots, e.g. `ppo-gold`.
    pub name: String,
    /// `ppo` or `dpo`.
    pub agent: crate::spec::AgentKind,
    /// PPO's reward: `gold` or `rm` (a reward model trained on `prefs`).
    #[serde(default = "default_reward")]
    pub reward: String,
    /// The preference set DPO trains on, or PPO's reward model is trained on. Default `on`.
    #[serde(default = "default_prefs")]
    pub prefs: String,
    /// Fixed `--set` overrides.
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    /// Hyperparameter grid: key → values; every combination is a run.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
}

fn default_reward() -> String {
    "gold".into()
}
fn default_prefs() -> String {
    "on".into()
}

/// A sweep specification (TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Name of the sweep.
    pub name: String,
    /// The claim it tests, in words (copied into the report).
    #[serde(default)]
    pub claim: String,
    /// Env ids.
    pub envs: Vec<String>,
    /// Seeds of every run.
    pub seeds: Vec<u64>,
    /// Multiplies updates, SFT steps and preference pairs (1 = CPU size; larger for GPU-sized runs).
    #[serde(default = "one")]
    pub scale: f64,
    /// Updates per run before scaling. Default 60.
    #[serde(default = "default_updates")]
    pub updates: u64,
    /// Evaluate every this many updates (before scaling). Default 10.
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// SFT steps; 0 uses each env's recommended count.
    #[serde(default)]
    pub sft_steps: usize,
    /// Start every run from this checkpoint directory (a pretrained model, such as one `aligngym
    /// import` wrote; a relative path is read from the current directory) instead of an SFT
    /// stage: it is the starting policy, the frozen reference and the preference generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// Preference data sets. Default: one on-policy set named `on`.
    #[serde(default)]
    pub prefs: Vec<PrefsSpec>,
    /// The agents.
    pub agents: Vec<AgentSpec>,
    /// Two agent names whose difference in final gold reward (first − second) the report tabulates
    /// per env and compares between single-turn and multi-turn envs, e.g. `["ppo-rm", "dpo"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<[String; 2]>,
    /// The claim's decision rule (what is compared, which way, the statistic, the confidence and
    /// the margin), fixed before the runs; the report gives a verdict per env from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<crate::verdict::DecisionRule>,
}

fn one() -> f64 {
    1.0
}
fn default_updates() -> u64 {
    60
}
fn default_eval_every() -> u64 {
    10
}

impl SweepSpec {
    /// Read and validate a spec file; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parse and validate a spec's text; errors name `path` (where the text came from).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut s: SweepSpec = toml::from_str(text).map_err(|e| {
            // toml's own rendering draws the line over several; one line names where instead.
            let at =
                e.span()
                    .and_then(|sp| text.get(..sp.start))
                    .map_or_else(String::new, |before| {
                        let line = before.matches('\n').count() + 1;
                        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                        format!("line {line}, column {column}: ")
                    });
            AgentError::Data(format!(
                "{}: {at}{}",
                path.display(),
                e.message().replace('\n', " ")
            ))
        })?;
        s.fill_defaults();
        s.validate()
            .map_err(|e| AgentError::Data(format!("{}: {e}", path.display())))?;
        if let Some(p) = &s.policy {
            let abs = commands::absolute(p)?;
            if !abs.join("config.json").is_file() {
                return Err(AgentError::Data(format!(
                    "{}: policy: {} is not a checkpoint directory (for SmolLM2, `make smollm2` writes it)",
                    path.display(),
                    p.display()
                )));
            }
            s.policy = Some(abs);
        }
        Ok(s)
    }

    fn fill_defaults(&mut self) {
        if self.prefs.is_empty() {
            self.prefs.push(PrefsSpec {
                name: "on".into(),
                generator: "sft".into(),
                temperature: 0.7,
                pairs: 1024,
                flip_rate: 0.0,
                mix: vec![],
                branch: Branching::Turn,
            });
        }
    }

    /// Check names and references.
    pub fn validate(&self) -> Result<()> {
        for e in &self.envs {
            task(e)?;
        }
        if self.seeds.is_empty() || self.agents.is_empty() || self.envs.is_empty() {
            return Err(AgentError::config(
                "envs/agents/seeds",
                "each needs at least one entry",
            ));
        }
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(AgentError::config("scale", "expected a finite value > 0"));
        }
        for a in &self.agents {
            if !self.prefs.iter().any(|p| p.name == a.prefs) {
                return Err(AgentError::config(
                    format!("agents.{}.prefs", a.name),
                    format!("no preference set named `{}`", a.prefs),
                ));
            }
            if a.reward != "gold" && a.reward != "rm" {
                return Err(AgentError::config(
                    format!("agents.{}.reward", a.name),
                    "expected `gold` or `rm`",
                ));
            }
        }
        // Names become folder names: one plain path component each, so nothing lands outside
        // the sweep's folder.
        let component = |field: String, n: &str| {
            let ok = !n.is_empty()
                && n != "."
                && n != ".."
                && !n.contains(['/', '\\', '\0'])
                && n.trim() == n;
            if ok {
                Ok(())
            } else {
                Err(AgentError::config(
                    field,
                    format!("`{n}` must be a plain folder name (no `/`, `\\`, `..`, surrounding spaces)"),
                ))
            }
        };
        component("name".into(), &self.name)?;
        for a in &self.agents {
            component(format!("agents.{}.name", a.name), &a.name)?;
        }
        for p in &self.prefs {
            component(format!("prefs.{}.name", p.name), &p.name)?;
        }
        if let Some(gap) = &self.gap {
            for g in gap {
                if !self.agents.iter().any(|a| &a.name == g) {
                    return Err(AgentError::config(
                        "gap",
                        format!(
                            "no agent named `{g}`; the agents are {}",
                            self.agents
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        if let Some(r) = &self.rule {
            r.validate(self)?;
        }
        for p in &self.prefs {
            for m in &p.mix {
                if !self.prefs.iter().any(|q| &q.name == m && q.mix.is_empty()) {
                    return Err(AgentError::config(
                        format!("prefs.{}.mix", p.name),
                        format!("`{m}` is not a sampled preference set"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every run of the sweep, in a fixed order.
    pub fn runs(&self) -> Vec<RunSpec> {
        let mut out = Vec::new();
        for env in &self.envs {
            for a in &self.agents {
                for point in grid_points(&a.grid) {
                    for &seed in &self.seeds {
                        let hp: String = point
                            .iter()
                            .map(|(k, v)| format!(".{k}={}", value_str(v)))
                            .collect();
                        let id = sanitize(&format!("{env}.{}{hp}.s{seed}", a.name));
                        out.push(RunSpec {
                            id,
                            env: env.clone(),
                            agent: a.clone(),
                            point: point.clone(),
                            seed,
                        });
                    }
                }
            }
        }
        out
    }

    /// Updates per run after scaling.
    pub fn scaled_updates(&self) -> u64 {
        ((self.updates as f64 * self.scale).round() as u64).max(1)
    }
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Run id (also its folder name).
    pub id: String,
    /// Env id.
    pub env: String,
    /// The agent.
    pub agent: AgentSpec,
    /// This run's grid point.
    pub point: BTreeMap<String, toml::Value>,
    /// Seed.
    pub seed: u64,
}

fn grid_points(grid: &BTreeMap<String, Vec<toml::Value>>) -> Vec<BTreeMap<String, toml::Value>> {
    let mut points = vec![BTreeMap::new()];
    for (k, vals) in grid {
        points = points
            .into_iter()
            .flat_map(|p| {
                vals.iter().map(move |v| {
                    let mut q = p.clone();
                    q.insert(k.clone(), v.clone());
                    q
                })
            })
            .collect();
    }
    points
}

fn value_str(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Shard `i` of `n`: every n-th run starting at i, so shards partition the run list.
pub fn shard(runs: Vec<RunSpec>, i: usize, n: usize) -> Vec<RunSpec> {
    runs.into_iter()
        .enumerate()
        .filter(|(k, _)| k % n == i)
        .map(|(_, r)| r)
        .collect()
}

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
        let parts: Vec<&str> = t.split(':').collect();
        let env = |e: &str| e.to_string();
        match parts.as_slice() {
            ["sft", e] => Ok(Stage::Sft { env: env(e) }),
            ["prefs", e] => Ok(Stage::Prefs { env: env(e) }),
            ["rm", e, p] => Ok(Stage::Rm {
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
                .filter(|a| a.reward == "rm")
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

/// What one invocation of a sweep does.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Part {
    /// Stages, then the runs (the shard's, when sharded), then `runs.csv` and `metrics.csv`.
    #[default]
    All,
    /// Build one stage; the stages it needs must be built already.
    Stage(Stage),
    /// One run, by its index in [`SweepSpec::runs`]; its stages must be built already. Writes
    /// only the run's own files (no CSVs), so array tasks never write the same file.
    Run(usize),
}

/// How a sweep is executed.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Runs at once (each a subprocess with one libtorch thread when > 1).
    pub jobs: usize,
    /// `(i, n)`: only the i-th of n shards.
    pub shard: Option<(usize, usize)>,
    /// Device argument passed to every stage and run.
    pub device: aligngym_agents::DeviceChoice,
    /// libtorch threads of each run; `None`: 1 when `jobs` > 1, else libtorch's default.
    pub threads: Option<i32>,
    /// What to do.
    pub part: Part,
    /// No progress bars.
    pub quiet: bool,
}

/// Whether a stage is built here, must already be built, or is not needed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Build,
    Require,
    Skip,
}

/// The shared stages of one env.
struct EnvStages {
    sft: PathBuf,
    prefs: BTreeMap<String, (PathBuf, u64)>,
    /// Preference set name → its reward model.
    rms: BTreeMap<String, PathBuf>,
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
    let _lock =
        aligngym_agents::fsio::Lock::exclusive(&out.join("stages").join(format!(".{stage}.lock")))?;
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
    let dir = out
        .join("stages")
        .join(format!("sft-{env}-{}", key(&(env, &cfg, "tiny"))));
    let stage = Stage::Sft { env: env.into() };
    build_once(
        out,
        &stage,
        mode,
        &dir.join("model.safetensors"),
        quiet,
        || {
            let corpus = t.corpus(cfg.corpus_size, 0);
            commands::run_sft(&corpus, ModelSize::Tiny, &cfg, 0, dev, &dir, quiet).map(|_| ())
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
        let gen_path = if p.generator == "sft" {
            sft.to_path_buf()
        } else {
            PathBuf::from(&p.generator)
        };
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
            .join(format!("prefs-{env}-{}-{k}.jsonl", p.name));
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
            let (pairs, q) = commands::build_prefs(
                &g,
                t.clone(),
                scaled(p.pairs),
                4,
                oracle,
                sampling,
                &p.generator,
                true,
                p.branch,
                0,
            )?;
            write_pairs(&path, &pairs)?;
            commands::write_atomic(&meta, &q.to_string())
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
        let mut q = 0;
        for m in &p.mix {
            let (src, sq) = &done[m];
            let pairs = read_pairs(src)?;
            let take = per.min(pairs.len());
            q += sq * take as u64 / pairs.len().max(1) as u64;
            all.extend(pairs.into_iter().take(take));
        }
        build_once(out, &stage, mode, &path, quiet, || {
            write_pairs(&path, &all)?;
            Ok(())
        })?;
        done.insert(p.name.clone(), (path, q));
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
            let init = LmPolicy::load(sft, dev)?;
            commands::train_rm(&init, &pairs, &cfg, 0, &dir, quiet).map(|_| ())
        },
    )?;
    Ok(dir)
}

/// The stages of one env, each built, required or skipped as `mode` says; `None` when the
/// stages stop at `last` (a stage job needs nothing after its own).
fn env_stages(
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

/// The `aligngym train` arguments of a run.
fn train_args(
    spec: &SweepSpec,
    r: &RunSpec,
    stages: &EnvStages,
    dir: &Path,
    opts: &SweepOptions,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "train".into(),
        "--agent".into(),
        r.agent.agent.to_string(),
        "--env".into(),
        r.env.clone(),
    ];
    a.extend([
        "--policy".into(),
        stages.sft.display().to_string(),
        "--out".into(),
        dir.display().to_string(),
    ]);
    a.extend([
        "--seed".into(),
        r.seed.to_string(),
        "--device".into(),
        opts.device.to_string(),
        "--quiet".into(),
    ]);
    let (prefs_path, queries) = &stages.prefs[&r.agent.prefs];
    let rm = if r.agent.reward == "rm" {
        stages.rms.get(&r.agent.prefs)
    } else {
        None
    };
    match (r.agent.agent.learns(), rm) {
        (Learns::Offline, _) => {
            a.extend([
                "--prefs".into(),
                prefs_path.display().to_string(),
                "--set".into(),
                format!("prefs_queries={queries}"),
            ]);
        }
        (Learns::Online, Some(rm)) => {
            a.extend([
                "--reward".into(),
                format!("rm:{}", rm.display()),
                "--set".into(),
                format!("prefs_queries={queries}"),
            ]);
        }
        (Learns::Online, None) => a.extend(["--reward".into(), "gold".into()]),
    }
    let eval_every = ((spec.eval_every as f64 * spec.scale).round() as u64).max(1);
    a.extend([
        "--set".into(),
        format!("run.updates={}", spec.scaled_updates()),
        "--set".into(),
        format!("run.eval_every={eval_every}"),
    ]);
    for (k, v) in r.agent.set.iter().chain(r.point.iter()) {
        a.extend(["--set".into(), format!("{k}={}", value_str(v))]);
    }
    a.extend(threads_arg(opts));
    a
}

fn threads_arg(opts: &SweepOptions) -> Vec<String> {
    match opts.threads {
        Some(n) => vec!["--threads".into(), n.to_string()],
        None if opts.jobs > 1 => vec!["--threads".into(), "1".into()],
        None => vec![],
    }
}

/// Where a sweep keeps a run's lock, log and failure record (beside its folder, so that a run
/// started over, which replaces the folder, keeps them).
pub fn run_file(out: &Path, id: &str, what: RunFile) -> PathBuf {
    let runs = out.join("runs");
    match what {
        RunFile::Dir => runs.join(id),
        RunFile::Lock => runs.join(format!(".{id}.lock")),
        RunFile::Log => runs.join(format!("{id}.log")),
        RunFile::Failed => runs.join(format!("{id}.failed")),
    }
}

/// The files of a sweep's run, for [`run_file`].
#[derive(Debug, Clone, Copy)]
pub enum RunFile {
    /// The run folder (`train --out`); finished when it holds `done`.
    Dir,
    /// Held while a process runs it.
    Lock,
    /// The run's output (`train`'s stdout and stderr).
    Log,
    /// Written when the run's last attempt failed (its exit status); removed when it starts again.
    Failed,
}

/// Execute (the part of) a sweep into `out`; returns how many runs were executed now.
pub fn run_sweep(spec: &SweepSpec, out: &Path, opts: &SweepOptions) -> Result<usize> {
    std::fs::create_dir_all(out.join("runs")).map_err(|e| AgentError::io(out, e))?;
    std::fs::create_dir_all(out.join("stages")).map_err(|e| AgentError::io(out, e))?;
    if opts.part == Part::All {
        let json =
            serde_json::to_string_pretty(spec).map_err(|e| AgentError::Data(e.to_string()))?;
        commands::write_atomic(&out.join("sweep.json"), &json)?;
    }
    let dev = opts.device.resolve()?;
    let mut runs = spec.runs();
    match &opts.part {
        Part::All => {
            if let Some((i, n)) = opts.shard {
                runs = shard(runs, i, n);
            }
        }
        Part::Run(k) => {
            let n = runs.len();
            runs = runs.into_iter().skip(*k).take(1).collect();
            if runs.is_empty() {
                return Err(AgentError::config(
                    "--run-index",
                    format!("{k}: the sweep has {n} runs (0 to {})", n.saturating_sub(1)),
                ));
            }
        }
        Part::Stage(stage) => {
            if !spec.stages().contains(stage) {
                return Err(AgentError::config(
                    "--stage",
                    format!(
                        "`{stage}` is not a stage of this sweep; its stages are {}",
                        spec.stages()
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let mode = |s: &Stage| {
                if s == stage {
                    Mode::Build
                } else if stage.needs(s) {
                    Mode::Require
                } else {
                    Mode::Skip
                }
            };
            env_stages(spec, stage.env(), out, dev, opts.quiet, &mode, Some(stage))?;
            return Ok(0);
        }
    }
    // Stages, once per env, before any run.
    let mode = |_: &Stage| match opts.part {
        Part::All => Mode::Build,
        _ => Mode::Require,
    };
    let mut stages: BTreeMap<String, EnvStages> = BTreeMap::new();
    for env in &spec.envs {
        if !runs.iter().any(|r| &r.env == env) {
            continue;
        }
        if let Some(st) = env_stages(spec, env, out, dev, opts.quiet, &mode, None)? {
            stages.insert(env.clone(), st);
        }
    }
    let done = |r: &RunSpec| run_file(out, &r.id, RunFile::Dir).join("done").exists();
    let todo: Vec<&RunSpec> = runs.iter().filter(|r| !done(r)).collect();
    let pb = commands::progress(todo.len() as u64, "runs", opts.quiet);
    let mut lines = commands::ProgressLines::new(&spec.name, todo.len(), opts.quiet);
    let exe = std::env::current_exe().map_err(|e| AgentError::io("aligngym", e))?;
    let jobs = opts.jobs.max(1);
    let mut queue = todo.iter();
    struct Running {
        child: std::process::Child,
        id: String,
        _lock: aligngym_agents::fsio::Lock,
    }
    let mut running: Vec<Running> = Vec::new();
    let mut failures = Vec::new();
    let mut executed = 0;
    loop {
        while running.len() < jobs {
            let Some(r) = queue.next() else { break };
            // Another process (a shard, a Slurm task of an earlier submission) runs it: theirs.
            let Some(lock) =
                aligngym_agents::fsio::Lock::try_exclusive(&run_file(out, &r.id, RunFile::Lock))?
            else {
                eprintln!("run {} is being run by another process: left to it", r.id);
                pb.inc(1);
                continue;
            };
            if done(r) {
                pb.inc(1);
                continue;
            }
            let dir = run_file(out, &r.id, RunFile::Dir);
            let _ = std::fs::remove_file(run_file(out, &r.id, RunFile::Failed));
            // A run with a record resumes (from its last commit, or from the start when killed
            // before one); a folder without one holds nothing to keep.
            let args: Vec<String> = if dir.join("config.json").exists() {
                let mut a = vec![
                    "train".into(),
                    "--resume".into(),
                    dir.display().to_string(),
                    "--device".into(),
                    opts.device.to_string(),
                    "--quiet".into(),
                ];
                a.extend(threads_arg(opts));
                a
            } else {
                let _ = std::fs::remove_dir_all(&dir);
                train_args(spec, r, &stages[&r.env], &dir, opts)
            };
            let log_path = run_file(out, &r.id, RunFile::Log);
            let mut log = std::fs::File::create(&log_path).map_err(|e| AgentError::io(out, e))?;
            // Which attempt this is, for whoever reads the log after a cancellation.
            let from = crate::runner::committed_step(&dir).ok().flatten();
            let head = match from {
                Some(k) => format!("aligngym sweep: run {} resumes from step {k}\n", r.id),
                None => format!("aligngym sweep: run {} starts\n", r.id),
            };
            std::io::Write::write_all(&mut log, head.as_bytes())
                .map_err(|e| AgentError::io(&log_path, e))?;
            let mut cmd = Command::new(&exe);
            die_with_parent(&mut cmd);
            let child = cmd
                .args(&args)
                .stdout(log.try_clone().map_err(|e| AgentError::io(out, e))?)
                .stderr(log)
                .spawn()
                .map_err(|e| AgentError::io(&exe, e))?;
            running.push(Running {
                child,
                id: r.id.clone(),
                _lock: lock,
            });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        lines.heartbeat(running.len());
        let mut k = 0;
        while k < running.len() {
            if let Some(status) = running[k]
                .child
                .try_wait()
                .map_err(|e| AgentError::io("child", e))?
            {
                let Running { id, .. } = running.remove(k);
                lines.finished(&id, status.success());
                if status.success() {
                    commands::write_atomic(&run_file(out, &id, RunFile::Dir).join("done"), "")?;
                    executed += 1;
                } else {
                    commands::write_atomic(
                        &run_file(out, &id, RunFile::Failed),
                        &format!("{status}\n"),
                    )?;
                    failures.push(id);
                }
                pb.inc(1);
            } else {
                k += 1;
            }
        }
    }
    pb.finish_and_clear();
    if opts.part == Part::All {
        collect(spec, out)?;
    }
    if !failures.is_empty() {
        return Err(AgentError::Data(format!(
            "{} run(s) failed (see runs/<id>.log): {}",
            failures.len(),
            failures.join(", ")
        )));
    }
    Ok(executed)
}

/// A run's process is killed when the sweep's dies, however it dies (SIGKILL included), so a
/// killed sweep leaves no orphan training behind (Linux: a parent-death signal).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls run (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The sweep died before the signal was armed: nothing would ever kill us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// The final-metric columns of `runs.csv`, in order (documented in the README; never reordered).
pub const RUN_COLUMNS: &[&str] = &[
    "eval/gold_reward",
    "eval/proxy_reward",
    "eval/kl_to_ref",
    "eval/win_rate_vs_ref",
    "eval/entropy",
    "eval/response_len",
    "eval/distinct_2",
    "budget/samples",
    "budget/tokens_generated",
    "budget/train_tokens",
    "budget/oracle_queries",
    "budget/wall_seconds",
    "budget/flops",
];

/// Write `runs.csv` (one row per finished run) and `metrics.csv` (long) from the run folders.
pub fn collect(spec: &SweepSpec, out: &Path) -> Result<()> {
    let mut hp_keys: Vec<String> = spec
        .agents
        .iter()
        .flat_map(|a| a.grid.keys().cloned())
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
    runs_csv
        .write_record(&header)
        .map_err(|e| AgentError::Data(e.to_string()))?;
    let mut long = csv::Writer::from_writer(Vec::new());
    long.write_record(["run_id", "step", "metric", "value"])
        .map_err(|e| AgentError::Data(e.to_string()))?;
    for r in spec.runs() {
        let dir = out.join("runs").join(&r.id);
        if !dir.join("done").exists() {
            continue;
        }
        let rows: Vec<MetricRow> = read_long_csv(&dir.join("metrics.csv"))?;
        let mut rec: Vec<String> = vec![
            r.id.clone(),
            r.env.clone(),
            r.agent.name.clone(),
            r.agent.agent.to_string(),
            r.agent.reward.clone(),
            r.agent.prefs.clone(),
            r.seed.to_string(),
        ];
        rec.extend(
            hp_keys
                .iter()
                .map(|k| r.point.get(k).map(value_str).unwrap_or_default()),
        );
        rec.extend(RUN_COLUMNS.iter().map(|m| {
            crate::metrics::last(&rows, m)
                .map(|v| v.to_string())
                .unwrap_or_default()
        }));
        rec.push(rows.iter().map(|x| x.step).max().unwrap_or(0).to_string());
        runs_csv
            .write_record(&rec)
            .map_err(|e| AgentError::Data(e.to_string()))?;
        for x in &rows {
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
    Ok(())
}

/// Read the spec a sweep folder was made with; a folder that is not a sweep is a clear error.
pub fn load_sweep_dir(dir: &Path) -> Result<SweepSpec> {
    let p = dir.join("sweep.json");
    let text = std::fs::read_to_string(&p).map_err(|_| AgentError::Data(format!("{} is not a sweep directory (no sweep.json; make one with `aligngym sweep` or `aligngym compare`)", dir.display())))?;
    serde_json::from_str(&text).map_err(|e| AgentError::Data(format!("{}: {e}", p.display())))
}

/// The default comparison as a sweep: PPO on the gold reward (where the env shows it), PPO on a
/// reward model trained on exactly DPO's pairs, and DPO on those pairs; same SFT start.
pub fn compare_spec(env: &str, seeds: u64, scale: f64) -> Result<SweepSpec> {
    let t = task(env)?;
    let mut agents = Vec::new();
    let mk = |name: &str, agent, reward: &str| AgentSpec {
        name: name.into(),
        agent,
        reward: reward.into(),
        prefs: "on".into(),
        set: BTreeMap::new(),
        grid: BTreeMap::new(),
    };
    if t.feedback() == aligngym_envs::Feedback::Reward {
        agents.push(mk("ppo-gold", crate::spec::AgentKind::Ppo, "gold"));
    }
    agents.push(mk("ppo-rm", crate::spec::AgentKind::Ppo, "rm"));
    agents.push(mk("dpo", crate::spec::AgentKind::Dpo, "gold"));
    let mut s = SweepSpec {
        name: format!("compare-{env}"),
        claim: "DPO vs PPO from the same SFT start: PPO on the gold reward, PPO on a reward model trained on exactly DPO's preference pairs, and DPO on those pairs.".into(),
        envs: vec![env.to_string()],
        seeds: (0..seeds.max(1)).collect(),
        scale,
        updates: 60,
        eval_every: 10,
        sft_steps: 0,
        policy: None,
        prefs: vec![],
        agents,
        gap: None,
        rule: None,
    };
    s.fill_defaults();
    s.validate()?;
    Ok(s)
}
