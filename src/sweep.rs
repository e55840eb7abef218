//! Sweeps: a grid over envs × agents × hyperparameters × seeds, with shared stages (SFT, preference
//! data, reward models) built once and reused, finished runs skipped on re-run, interrupted runs
//! resumed, deterministic sharding, and tidy CSV output (`runs.csv`, `metrics.csv`).

use crate::commands::{self, ModelSize};
use crate::metrics::{read_long_csv, MetricRow};
use aligngym_agents::sampling::SamplingConfig;
use aligngym_agents::sft::SftConfig;
use aligngym_agents::{AgentError, LmPolicy, Result, RmConfig};
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
        let mut s: SweepSpec = toml::from_str(&text).map_err(|e| {
            AgentError::Data(format!(
                "{}: {}",
                path.display(),
                e.to_string().replace('\n', " ")
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

/// How a sweep is executed.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Runs at once (each a subprocess with one libtorch thread when > 1).
    pub jobs: usize,
    /// `(i, n)`: only the i-th of n shards.
    pub shard: Option<(usize, usize)>,
    /// Device argument passed to every stage and run.
    pub device: aligngym_agents::DeviceChoice,
    /// No progress bars.
    pub quiet: bool,
}

/// The shared stages of one env.
struct EnvStages {
    sft: PathBuf,
    prefs: BTreeMap<String, (PathBuf, u64)>,
}

fn stage_sft(
    spec: &SweepSpec,
    env: &str,
    out: &Path,
    dev: tch::Device,
    quiet: bool,
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
    if !dir.join("model.safetensors").exists() {
        let corpus = t.corpus(cfg.corpus_size, 0);
        commands::run_sft(&corpus, ModelSize::Tiny, &cfg, 0, dev, &dir, quiet)?;
    }
    Ok(dir)
}

fn stage_prefs(
    spec: &SweepSpec,
    env: &str,
    sft: &Path,
    out: &Path,
    dev: tch::Device,
) -> Result<BTreeMap<String, (PathBuf, u64)>> {
    let t = task(env)?;
    let mut done: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    let scaled = |n: usize| ((n as f64 * spec.scale).round() as usize).max(2);
    for p in spec.prefs.iter().filter(|p| p.mix.is_empty()) {
        let gen_path = if p.generator == "sft" {
            sft.to_path_buf()
        } else {
            PathBuf::from(&p.generator)
        };
        let k = key(&(
            env,
            gen_path.display().to_string(),
            p.temperature,
            scaled(p.pairs),
            p.flip_rate,
        ));
        let path = out
            .join("stages")
            .join(format!("prefs-{env}-{}-{k}.jsonl", p.name));
        let meta = path.with_extension("queries");
        if !path.exists() || !meta.exists() {
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
                0,
            )?;
            write_pairs(&path, &pairs)?;
            commands::write_atomic(&meta, &q.to_string())?;
        }
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
        if !path.exists() {
            write_pairs(&path, &all)?;
        }
        done.insert(p.name.clone(), (path, q));
    }
    Ok(done)
}

fn stage_rm(
    env: &str,
    prefs_name: &str,
    prefs: &(PathBuf, u64),
    sft: &Path,
    out: &Path,
    dev: tch::Device,
    quiet: bool,
) -> Result<PathBuf> {
    let cfg = RmConfig::default();
    let dir = out.join("stages").join(format!(
        "rm-{env}-{prefs_name}-{}",
        key(&(prefs.0.display().to_string(), &cfg))
    ));
    // The report is written after the model: its presence marks a finished stage.
    if !dir.join("rm_report.json").exists() {
        let pairs = read_pairs(&prefs.0)?;
        let init = LmPolicy::load(sft, dev)?;
        commands::train_rm(&init, &pairs, &cfg, 0, &dir, quiet)?;
    }
    Ok(dir)
}

/// The `aligngym train` arguments of a run.
fn train_args(
    spec: &SweepSpec,
    r: &RunSpec,
    stages: &EnvStages,
    rm: Option<&Path>,
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
    match (r.agent.agent, rm) {
        (crate::spec::AgentKind::Dpo, _) => {
            a.extend([
                "--prefs".into(),
                prefs_path.display().to_string(),
                "--set".into(),
                format!("prefs_queries={queries}"),
            ]);
        }
        (
            crate::spec::AgentKind::Ppo
            | crate::spec::AgentKind::Grpo
            | crate::spec::AgentKind::Rloo,
            Some(rm),
        ) => {
            a.extend([
                "--reward".into(),
                format!("rm:{}", rm.display()),
                "--set".into(),
                format!("prefs_queries={queries}"),
            ]);
        }
        (
            crate::spec::AgentKind::Ppo
            | crate::spec::AgentKind::Grpo
            | crate::spec::AgentKind::Rloo,
            None,
        ) => a.extend(["--reward".into(), "gold".into()]),
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
    if opts.jobs > 1 {
        a.extend(["--threads".into(), "1".into()]);
    }
    a
}

/// Execute (the shard of) a sweep into `out`; returns how many runs were executed now.
pub fn run_sweep(spec: &SweepSpec, out: &Path, opts: &SweepOptions) -> Result<usize> {
    std::fs::create_dir_all(out.join("runs")).map_err(|e| AgentError::io(out, e))?;
    std::fs::create_dir_all(out.join("stages")).map_err(|e| AgentError::io(out, e))?;
    let json = serde_json::to_string_pretty(spec).map_err(|e| AgentError::Data(e.to_string()))?;
    commands::write_atomic(&out.join("sweep.json"), &json)?;
    let dev = opts.device.resolve()?;
    let mut runs = spec.runs();
    if let Some((i, n)) = opts.shard {
        runs = shard(runs, i, n);
    }
    // Stages, once per env, before any run.
    let mut stages: BTreeMap<String, EnvStages> = BTreeMap::new();
    let mut rms: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for env in &spec.envs {
        if !runs.iter().any(|r| &r.env == env) {
            continue;
        }
        let sft = stage_sft(spec, env, out, dev, opts.quiet)?;
        let prefs = stage_prefs(spec, env, &sft, out, dev)?;
        for a in spec.agents.iter().filter(|a| a.reward == "rm") {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                rms.entry((env.clone(), a.prefs.clone()))
            {
                slot.insert(stage_rm(
                    env,
                    &a.prefs,
                    &prefs[&a.prefs],
                    &sft,
                    out,
                    dev,
                    opts.quiet,
                )?);
            }
        }
        stages.insert(env.clone(), EnvStages { sft, prefs });
    }
    let todo: Vec<&RunSpec> = runs
        .iter()
        .filter(|r| !out.join("runs").join(&r.id).join("done").exists())
        .collect();
    let pb = commands::progress(todo.len() as u64, "runs", opts.quiet);
    let exe = std::env::current_exe().map_err(|e| AgentError::io("aligngym", e))?;
    let jobs = opts.jobs.max(1);
    let mut queue = todo.iter();
    let mut running: Vec<(std::process::Child, PathBuf, String)> = Vec::new();
    let mut failures = Vec::new();
    let mut executed = 0;
    loop {
        while running.len() < jobs {
            let Some(r) = queue.next() else { break };
            let dir = out.join("runs").join(&r.id);
            let rm = if r.agent.reward == "rm" {
                rms.get(&(r.env.clone(), r.agent.prefs.clone()))
                    .map(|p| p.as_path())
            } else {
                None
            };
            let st = &stages[&r.env];
            // A run with a record resumes (from its last commit, or from the start when killed
            // before one); a folder without one holds nothing to keep.
            let args: Vec<String> = if dir.join("config.json").exists() {
                vec![
                    "train".into(),
                    "--resume".into(),
                    dir.display().to_string(),
                    "--device".into(),
                    opts.device.to_string(),
                    "--quiet".into(),
                ]
            } else {
                let _ = std::fs::remove_dir_all(&dir);
                train_args(spec, r, st, rm, &dir, opts)
            };
            let log = std::fs::File::create(out.join("runs").join(format!("{}.log", r.id)))
                .map_err(|e| AgentError::io(out, e))?;
            let mut cmd = Command::new(&exe);
            die_with_parent(&mut cmd);
            let child = cmd
                .args(&args)
                .stdout(log.try_clone().map_err(|e| AgentError::io(out, e))?)
                .stderr(log)
                .spawn()
                .map_err(|e| AgentError::io(&exe, e))?;
            running.push((child, dir, r.id.clone()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut k = 0;
        while k < running.len() {
            if let Some(status) = running[k]
                .0
                .try_wait()
                .map_err(|e| AgentError::io("child", e))?
            {
                let (_, dir, id) = running.remove(k);
                if status.success() {
                    commands::write_atomic(&dir.join("done"), "")?;
                    executed += 1;
                } else {
                    failures.push(id);
                }
                pb.inc(1);
            } else {
                k += 1;
            }
        }
    }
    pb.finish_and_clear();
    collect(spec, out)?;
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
    };
    s.fill_defaults();
    s.validate()?;
    Ok(s)
}
