//! The sweep spec (TOML): envs, seeds, preference sets, agents with their grids, the decision
//! rule; every run it expands to, and each run's own [`TrainSpec`].

use crate::commands;
use crate::spec::{AgentKind, RewardSpec, TrainSpec};
use aligngym_agents::stages::preferences::Branching;
use aligngym_agents::{AgentError, Learns, Result};
use aligngym_envs::task;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A named preference data set built from a generator policy (or mixed from others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefsSpec {
    /// Name agents refer to.
    pub name: String,
    /// Generator: `sft` (the sweep's SFT policy: on-policy) or a checkpoint path (off-policy).
    #[serde(default)]
    pub generator: Generator,
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

/// The policy a preference set's completions are sampled from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Generator {
    /// The sweep's SFT policy (on-policy pairs), written `sft`.
    #[default]
    Sft,
    /// Another checkpoint (off-policy pairs), written as its path.
    Checkpoint(PathBuf),
}

impl Generator {
    /// The checkpoint it samples from, given the sweep's SFT policy.
    pub fn policy<'a>(&'a self, sft: &'a Path) -> &'a Path {
        match self {
            Generator::Sft => sft,
            Generator::Checkpoint(p) => p,
        }
    }
}

impl From<String> for Generator {
    fn from(s: String) -> Self {
        if s == "sft" {
            Generator::Sft
        } else {
            Generator::Checkpoint(PathBuf::from(s))
        }
    }
}

impl From<Generator> for String {
    fn from(g: Generator) -> String {
        g.to_string()
    }
}

impl std::fmt::Display for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Generator::Sft => f.write_str("sft"),
            Generator::Checkpoint(p) => write!(f, "{}", p.display()),
        }
    }
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
    pub agent: AgentKind,
    /// An online agent's reward: `gold` (the env's) or `rm` (a reward model trained on `prefs`).
    #[serde(default)]
    pub reward: SweepReward,
    /// The preference set DPO trains on, or PPO's reward model is trained on. Default `on`.
    #[serde(default = "default_prefs")]
    pub prefs: String,
    /// Fixed `--set` overrides.
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    /// Hyperparameter grid: key → values; every combination is a run.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    /// Hyperparameters tuned before the verdict: key → values. Every combination runs on the
    /// sweep's `tune_seeds`, evaluated on the validation prompts; the one with the best median
    /// final gold reward there is what this agent's runs on `seeds` use, evaluated on the eval
    /// split. A rule compares agents that tried equally many configurations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tune: BTreeMap<String, Vec<toml::Value>>,
}

impl AgentSpec {
    /// Configurations the agent tries before its runs: 1 untuned.
    pub fn configurations(&self) -> usize {
        grid_points(&self.tune).len()
    }
}

/// Where an online agent of a sweep gets its reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepReward {
    /// The env's gold reward.
    #[default]
    Gold,
    /// The reward model the sweep trains on the agent's preference set.
    Rm,
}

impl std::fmt::Display for SweepReward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gold => "gold",
            Self::Rm => "rm",
        })
    }
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
    /// Further decision rules (`[[rules]]`), each with a verdict per env in the report beside
    /// the claim's own (the default comparison's: gold at matched KL, and the cost to a level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::verdict::DecisionRule>,
    /// Seeds of the tuning runs (agents with a `tune` grid), disjoint from `seeds` so the
    /// verdict's runs are fresh. Default `[1000, 1001]`.
    #[serde(default = "default_tune_seeds")]
    pub tune_seeds: Vec<u64>,
}

fn default_tune_seeds() -> Vec<u64> {
    vec![1000, 1001]
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
                generator: Generator::Sft,
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
        self.validate_tuning()?;
        for r in self.rule.iter().chain(&self.rules) {
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
        // Every run's own spec, before anything is built or launched: a bad value in one grid
        // cell refuses the sweep, naming the run.
        for r in self.runs() {
            let rm = (r.agent.reward == SweepReward::Rm).then_some(Path::new("rm"));
            self.train_spec(&r, Path::new("sft"), Path::new("prefs.jsonl"), 0, rm)?;
        }
        Ok(())
    }

    /// `tune` grids: not beside a `grid`, no empty value list, tuning seeds apart from `seeds`.
    fn validate_tuning(&self) -> Result<()> {
        for a in self.agents.iter().filter(|a| !a.tune.is_empty()) {
            let field = format!("agents.{}.tune", a.name);
            if !a.grid.is_empty() {
                return Err(AgentError::config(
                    field,
                    "an agent either tunes (picks one configuration) or sweeps a grid (runs them all), not both",
                ));
            }
            if let Some((k, _)) = a.tune.iter().find(|(_, v)| v.is_empty()) {
                return Err(AgentError::config(
                    format!("{field}.{k}"),
                    "expected at least one value",
                ));
            }
            if self.tune_seeds.is_empty() {
                return Err(AgentError::config(
                    "tune_seeds",
                    "expected at least one seed",
                ));
            }
            if let Some(s) = self.tune_seeds.iter().find(|s| self.seeds.contains(s)) {
                return Err(AgentError::config(
                    "tune_seeds",
                    format!("seed {s} is also in `seeds`: the verdict's runs must be fresh seeds"),
                ));
            }
        }
        Ok(())
    }

    /// The spec of run `r`, from its env's stages: the starting `policy`, the preference set
    /// (`prefs`, which cost `queries` oracle labels) and, for `reward = "rm"`, its reward model.
    pub fn train_spec(
        &self,
        r: &RunSpec,
        policy: &Path,
        prefs: &Path,
        queries: u64,
        rm: Option<&Path>,
    ) -> Result<TrainSpec> {
        let kind = r.agent.agent;
        let (reward, prefs, queries) = match (kind.learns(), rm) {
            (Learns::Offline, _) => (RewardSpec::Gold, Some(prefs.to_path_buf()), Some(queries)),
            (Learns::Online, Some(rm)) if r.agent.reward == SweepReward::Rm => {
                (RewardSpec::Rm(rm.to_path_buf()), None, Some(queries))
            }
            (Learns::Online, _) => (RewardSpec::Gold, None, None),
        };
        let mut t = TrainSpec::new(kind, &r.env, policy.to_path_buf(), reward, prefs, r.seed);
        t.prefs_queries = queries;
        let eval_every = ((self.eval_every as f64 * self.scale).round() as u64).max(1);
        let mut sets = vec![
            format!("run.updates={}", self.scaled_updates()),
            format!("run.eval_every={eval_every}"),
        ];
        for (k, v) in r.agent.set.iter().chain(r.point.iter()) {
            sets.push(format!("{k}={}", value_str(v)));
        }
        if r.phase == Phase::Tune {
            sets.push("eval.split=validation".into());
        }
        t.apply_sets(&sets).map_err(|e| match e {
            AgentError::Config { field, msg } => AgentError::Config {
                field: format!("{field}` of run `{}", r.id),
                msg,
            },
            other => other,
        })?;
        Ok(t)
    }

    /// What in this spec would change runs that `old` (the spec a folder was made with) already
    /// defines: finished runs are found by id (env, agent name, grid point, seed), which does not
    /// say how long they ran, from which stages or with which fixed values. `None` when nothing
    /// does; adding envs, seeds, agents or grid values is fine.
    pub fn conflict_with(&self, old: &SweepSpec) -> Option<String> {
        let differs = |what: &str, a: String, b: String| {
            (a != b).then(|| format!("{what} is {b} there, {a} here"))
        };
        fn json<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        differs("scale", self.scale.to_string(), old.scale.to_string())
            .or_else(|| differs("updates", self.updates.to_string(), old.updates.to_string()))
            .or_else(|| {
                differs(
                    "eval_every",
                    self.eval_every.to_string(),
                    old.eval_every.to_string(),
                )
            })
            .or_else(|| {
                differs(
                    "sft_steps",
                    self.sft_steps.to_string(),
                    old.sft_steps.to_string(),
                )
            })
            .or_else(|| differs("policy", json(&self.policy), json(&old.policy)))
            .or_else(|| differs("tune_seeds", json(&self.tune_seeds), json(&old.tune_seeds)))
            .or_else(|| {
                self.prefs.iter().find_map(|p| {
                    let q = old.prefs.iter().find(|q| q.name == p.name)?;
                    differs(&format!("prefs `{}`", p.name), json(p), json(q))
                })
            })
            .or_else(|| {
                self.agents.iter().find_map(|a| {
                    let b = old.agents.iter().find(|b| b.name == a.name)?;
                    let fixed =
                        |x: &AgentSpec| json(&(x.agent, x.reward, &x.prefs, &x.set, &x.tune));
                    differs(&format!("agent `{}`", a.name), fixed(a), fixed(b))
                })
            })
    }

    /// Every run of the sweep, in a fixed order: the tuning runs first (their results decide the
    /// configuration of their agent's other runs), then the runs the verdicts read.
    pub fn runs(&self) -> Vec<RunSpec> {
        let mut out = Vec::new();
        for phase in [Phase::Tune, Phase::Main] {
            for env in &self.envs {
                for a in &self.agents {
                    let (grid, seeds, tag) = match phase {
                        Phase::Tune if a.tune.is_empty() => continue,
                        Phase::Tune => (&a.tune, &self.tune_seeds, ".tune"),
                        Phase::Main => (&a.grid, &self.seeds, ""),
                    };
                    for point in grid_points(grid) {
                        for &seed in seeds {
                            let hp: String = point
                                .iter()
                                .map(|(k, v)| format!(".{k}={}", value_str(v)))
                                .collect();
                            out.push(RunSpec {
                                id: sanitize(&format!("{env}.{}{tag}{hp}.s{seed}", a.name)),
                                env: env.clone(),
                                agent: a.clone(),
                                point: point.clone(),
                                seed,
                                phase,
                            });
                        }
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
    /// This run's grid point (a tuning run's configuration; for the other runs of a tuned
    /// agent, empty here and filled with the chosen configuration when the run starts).
    pub point: BTreeMap<String, toml::Value>,
    /// Seed.
    pub seed: u64,
    /// Tuning run or a run the verdicts read.
    pub phase: Phase,
}

/// What a run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A run on the eval split, on `seeds`: what the CSVs, plots and verdicts read.
    Main,
    /// A tuning run: a configuration of a `tune` grid on a tuning seed, on the validation prompts.
    Tune,
}

impl RunSpec {
    /// A run of a tuned agent that must wait for its tuning runs.
    pub fn is_tuned(&self) -> bool {
        self.phase == Phase::Main && !self.agent.tune.is_empty()
    }
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

pub(super) fn value_str(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `s` as one plain file-name component: characters other than ASCII letters, digits and
/// `-_.=` become `_` (an env id `task:dir/t.toml` is `task_dir_t.toml` in run ids and folders).
pub fn sanitize(s: &str) -> String {
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

/// Read the spec a sweep folder was made with; a folder that is not a sweep is a clear error.
pub fn load_sweep_dir(dir: &Path) -> Result<SweepSpec> {
    let p = dir.join("sweep.json");
    let text = std::fs::read_to_string(&p).map_err(|_| AgentError::Data(format!("{} is not a sweep directory (no sweep.json; make one with `aligngym sweep` or `aligngym compare`)", dir.display())))?;
    serde_json::from_str(&text).map_err(|e| AgentError::Data(format!("{}: {e}", p.display())))
}

/// The default comparison's questions, PPO on a reward model against DPO on the same pairs: does
/// PPO align better (gold reward at matched KL), and is DPO cheaper (the whole pipeline's wall
/// time to a common gold level).
fn compare_rules() -> Vec<crate::verdict::DecisionRule> {
    use crate::verdict::{DecisionRule, Direction, Quantity, Statistic};
    vec![
        DecisionRule {
            quantity: Quantity::GoldAtKl,
            a: "ppo-rm".into(),
            b: "dpo".into(),
            direction: Direction::Greater,
            statistic: Statistic::Bootstrap,
            confidence: 0.95,
            margin: 0.0,
        },
        DecisionRule {
            quantity: Quantity::WallToReach,
            a: "dpo".into(),
            b: "ppo-rm".into(),
            direction: Direction::Less,
            statistic: Statistic::MannWhitney,
            confidence: 0.95,
            margin: 0.0,
        },
    ]
}

/// The default comparison as a sweep: PPO on the gold reward (where the env shows it), PPO on a
/// reward model trained on exactly DPO's pairs, and DPO on those pairs; same SFT start.
pub fn compare_spec(env: &str, seeds: u64, scale: f64) -> Result<SweepSpec> {
    let t = task(env)?;
    let mut agents = Vec::new();
    let mk = |name: &str, agent, reward| AgentSpec {
        name: name.into(),
        agent,
        reward,
        prefs: "on".into(),
        set: BTreeMap::new(),
        grid: BTreeMap::new(),
        tune: BTreeMap::new(),
    };
    if t.feedback() == aligngym_envs::Feedback::Reward {
        agents.push(mk("ppo-gold", AgentKind::Ppo, SweepReward::Gold));
    }
    agents.push(mk("ppo-rm", AgentKind::Ppo, SweepReward::Rm));
    agents.push(mk("dpo", AgentKind::Dpo, SweepReward::Gold));
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
        rules: compare_rules(),
        tune_seeds: default_tune_seeds(),
    };
    s.fill_defaults();
    s.validate()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::AgentConfig;

    const SPEC: &str = r#"
name = "t"
envs = ["arithmetic-v0"]
seeds = [0]
updates = 10
scale = 2.0
[[agents]]
name = "ppo-rm"
agent = "ppo"
reward = "rm"
[agents.grid]
learning_rate = [1e-4, 3e-4]
[[agents]]
name = "grpo"
agent = "grpo"
[[agents]]
name = "dpo"
agent = "dpo"
[agents.set]
beta = 0.3
"#;

    #[test]
    fn each_run_gets_its_own_validated_spec_with_the_stage_inputs_its_agent_reads() {
        let s = SweepSpec::parse(SPEC, Path::new("t.toml")).unwrap();
        let runs = s.runs();
        assert_eq!(runs.len(), 4);
        let (sft, prefs, rm) = (
            Path::new("/s/sft"),
            Path::new("/s/p.jsonl"),
            Path::new("/s/rm"),
        );
        let t = |i: usize| s.train_spec(&runs[i], sft, prefs, 77, Some(rm)).unwrap();
        let ppo = t(1);
        assert_eq!(ppo.reward, RewardSpec::Rm(rm.into()));
        assert_eq!((ppo.prefs.as_deref(), ppo.prefs_queries), (None, Some(77)));
        assert_eq!(ppo.run.updates, 20);
        match &ppo.config {
            AgentConfig::Ppo(c) => assert_eq!(c.learning_rate, 3e-4),
            other => panic!("{other:?}"),
        }
        let grpo = t(2);
        assert_eq!(
            (grpo.reward, grpo.prefs, grpo.prefs_queries),
            (RewardSpec::Gold, None, None)
        );
        let dpo = t(3);
        assert_eq!(dpo.prefs.as_deref(), Some(prefs));
        assert_eq!(dpo.prefs_queries, Some(77));
        match &dpo.config {
            AgentConfig::Dpo(c) => assert_eq!(c.beta, 0.3),
            other => panic!("{other:?}"),
        }
        assert_eq!(dpo.policy, sft);
    }

    #[test]
    fn a_folder_resumes_only_a_spec_that_keeps_its_finished_runs() {
        let old = SweepSpec::parse(SPEC, Path::new("t.toml")).unwrap();
        let same = |text: &str| SweepSpec::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(same(SPEC).conflict_with(&old), None);
        // More seeds, another grid value or another agent add runs and change none.
        let grown = SPEC
            .replace("seeds = [0]", "seeds = [0, 1]")
            .replace("[1e-4, 3e-4]", "[1e-4, 3e-4, 1e-3]")
            + "[[agents]]\nname = \"rloo\"\nagent = \"rloo\"\n";
        assert_eq!(same(&grown).conflict_with(&old), None);
        let scaled = SPEC.replace("scale = 2.0", "scale = 0.5");
        assert_eq!(
            same(&scaled).conflict_with(&old).unwrap(),
            "scale is 2 there, 0.5 here"
        );
        let beta = SPEC.replace("beta = 0.3", "beta = 0.5");
        let e = same(&beta).conflict_with(&old).unwrap();
        assert!(e.starts_with("agent `dpo` is "), "{e}");
        let flips = SPEC.to_string() + "[[prefs]]\nname = \"on\"\nflip_rate = 0.2\n";
        let e = same(&flips).conflict_with(&old).unwrap();
        assert!(e.starts_with("prefs `on` is "), "{e}");
    }

    #[test]
    fn one_bad_grid_cell_refuses_the_sweep_naming_the_run() {
        let bad = SPEC.replace("[1e-4, 3e-4]", "[1e-4, -1.0]");
        let e = SweepSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.toml: invalid config field `learning_rate` of run `arithmetic-v0.ppo-rm.learning_rate=-1.0.s0`: expected a finite value > 0"
        );
        let typo = SPEC.replace("beta = 0.3", "btea = 0.3");
        let e = SweepSpec::parse(&typo, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`btea` of run `arithmetic-v0.dpo.s0`: unknown key"),
            "{e}"
        );
    }
}
