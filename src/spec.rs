//! A training run's full specification (saved as the run's `config.json`), `--set key=value`
//! overrides, and building the agent it describes.

use crate::eval::EvalConfig;
use crate::runner::RunConfig;
use aligngym_agents::lm::lora::LoraConfig;
pub use aligngym_agents::{AgentConfig, AgentKind};
use aligngym_agents::{
    AgentError, BuildContext, LmPolicy, Result, RewardModel, RewardSignal, RunnableAgent,
};
use aligngym_envs::{Feedback, Task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A run's spec from `path` (`config.json`, or a file in its form for `train --spec`); errors
/// are one line naming the file.
pub fn read_train_spec(path: &Path) -> Result<TrainSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| AgentError::Data(format!("{}: {e}", path.display())))
}

/// Where PPO's reward comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum RewardSpec {
    /// The env's gold reward.
    Gold,
    /// A learned reward model checkpoint.
    Rm(PathBuf),
}

impl From<RewardSpec> for String {
    fn from(r: RewardSpec) -> String {
        match r {
            RewardSpec::Gold => "gold".into(),
            RewardSpec::Rm(p) => format!("rm:{}", p.display()),
        }
    }
}

impl TryFrom<String> for RewardSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for RewardSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "gold" {
            Ok(Self::Gold)
        } else if let Some(p) = s.strip_prefix("rm:") {
            if p.is_empty() {
                Err("`rm:` needs a directory, e.g. rm:runs/rm".into())
            } else {
                Ok(Self::Rm(PathBuf::from(p)))
            }
        } else {
            Err(format!("unknown reward `{s}`; expected `gold` or `rm:DIR`"))
        }
    }
}

/// Everything that defines a training run. `config.json` holds it as `agent`, the inputs, the
/// algorithm's section under its name (`"ppo": {…}`), `run` and `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SpecFile", into = "SpecFile")]
pub struct TrainSpec {
    /// The env id.
    pub env: String,
    /// The starting policy (also the frozen reference).
    pub policy: PathBuf,
    /// An online agent's reward.
    pub reward: RewardSpec,
    /// An offline agent's preference (or unpaired) file.
    pub prefs: Option<PathBuf>,
    /// Oracle queries the preference file cost (default: one per pair).
    pub prefs_queries: Option<u64>,
    /// Run seed.
    pub seed: u64,
    /// The algorithm and its hyperparameters.
    pub config: AgentConfig,
    /// Run length and evaluation cadence.
    pub run: RunConfig,
    /// The shared evaluation.
    pub eval: EvalConfig,
    /// LoRA adapters instead of training every weight (`r = 0`, the default: every weight).
    pub lora: LoraConfig,
}

/// [`TrainSpec`] as `config.json` spells it.
#[derive(Serialize, Deserialize)]
struct SpecFile {
    agent: AgentKind,
    env: String,
    policy: PathBuf,
    reward: RewardSpec,
    prefs: Option<PathBuf>,
    #[serde(default)]
    prefs_queries: Option<u64>,
    seed: u64,
    /// The agent's section, under its name (and anything unknown, refused on reading).
    #[serde(flatten)]
    sections: Map<String, Value>,
    run: RunConfig,
    eval: EvalConfig,
    #[serde(default)]
    lora: LoraConfig,
}

impl TryFrom<SpecFile> for TrainSpec {
    type Error = String;
    fn try_from(mut f: SpecFile) -> std::result::Result<Self, String> {
        let section = f.sections.remove(f.agent.name());
        if let Some(k) = f.sections.keys().next() {
            return Err(format!(
                "unknown field `{}` (a run of agent `{}` has a `{}` section)",
                aligngym_envs::one_line(k),
                f.agent,
                f.agent
            ));
        }
        let config = AgentConfig::from_value(f.agent, section).map_err(|e| e.to_string())?;
        Ok(Self {
            env: f.env,
            policy: f.policy,
            reward: f.reward,
            prefs: f.prefs,
            prefs_queries: f.prefs_queries,
            seed: f.seed,
            config,
            run: f.run,
            eval: f.eval,
            lora: f.lora,
        })
    }
}

impl From<TrainSpec> for SpecFile {
    fn from(s: TrainSpec) -> Self {
        let mut sections = Map::new();
        sections.insert(
            s.config.kind().name().to_string(),
            s.config.to_value().unwrap_or_default(),
        );
        Self {
            agent: s.config.kind(),
            env: s.env,
            policy: s.policy,
            reward: s.reward,
            prefs: s.prefs,
            prefs_queries: s.prefs_queries,
            seed: s.seed,
            sections,
            run: s.run,
            eval: s.eval,
            lora: s.lora,
        }
    }
}

impl TrainSpec {
    /// A spec with default hyperparameters for `agent`.
    pub fn new(
        agent: AgentKind,
        env: &str,
        policy: PathBuf,
        reward: RewardSpec,
        prefs: Option<PathBuf>,
        seed: u64,
    ) -> Self {
        Self {
            env: env.to_string(),
            policy,
            reward,
            prefs,
            prefs_queries: None,
            seed,
            config: agent.default_config(),
            run: RunConfig::default(),
            eval: EvalConfig::default(),
            lora: LoraConfig::default(),
        }
    }

    /// The algorithm.
    pub fn agent(&self) -> AgentKind {
        self.config.kind()
    }

    /// Make every input path absolute, relative paths taken from `base`: a run records absolute
    /// inputs, so that it resumes from any working directory.
    pub fn anchor_inputs(&mut self, base: &Path) {
        let mut paths: Vec<&mut PathBuf> = vec![&mut self.policy];
        paths.extend(self.prefs.as_mut());
        if let RewardSpec::Rm(p) = &mut self.reward {
            paths.push(p);
        }
        for p in paths {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }

    /// Apply `key=value` overrides. A bare key is looked up in the agent's section, then `run`, then
    /// `eval`; `section.key` names it fully. Unknown keys and unparsable values are errors.
    pub fn apply_sets(&mut self, sets: &[String]) -> Result<()> {
        let agent = self.agent().to_string();
        let resolve = |v: &Value, key: &str| -> Option<Vec<String>> {
            if key.contains('.') {
                return Some(key.split('.').map(String::from).collect());
            }
            match [agent.as_str(), "run", "eval"]
                .into_iter()
                .find(|sec| v.get(sec).and_then(|x| x.get(key)).is_some())
            {
                Some(sec) => Some(vec![sec.to_string(), key.to_string()]),
                None if matches!(key, "seed" | "prefs_queries") => Some(vec![key.to_string()]),
                None => None,
            }
        };
        let spec: TrainSpec = apply_overrides(&*self, sets, resolve, |v| known_keys(v, &agent))?;
        spec.validate()?;
        *self = spec;
        Ok(())
    }

    /// Check every section.
    pub fn validate(&self) -> Result<()> {
        self.config.check()?;
        self.lora.validate()?;
        // max_new_tokens 0 means "the task's own limit", filled in when the evaluator is built.
        let mut sampling = self.eval.sampling.clone();
        sampling.max_new_tokens = sampling.max_new_tokens.max(1);
        sampling.validate()?;
        Ok(())
    }
}

fn known_keys(v: &Value, agent: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for sec in [agent, "run", "eval", "lora"] {
        if let Some(Value::Object(m)) = v.get(sec) {
            keys.extend(m.keys().map(|k| {
                if sec == agent {
                    k.clone()
                } else {
                    format!("{sec}.{k}")
                }
            }));
        }
    }
    keys
}

/// `cfg` with `key=value` overrides applied: `resolve` maps a key to its path in the serde tree
/// (`None`: unknown), and each value is parsed as the type already at that path. Unknown keys list
/// `known`; unparsable values name the key.
pub fn apply_overrides<T: Serialize + serde::de::DeserializeOwned>(
    cfg: &T,
    sets: &[String],
    resolve: impl Fn(&Value, &str) -> Option<Vec<String>>,
    known: impl Fn(&Value) -> Vec<String>,
) -> Result<T> {
    let mut v = serde_json::to_value(cfg).map_err(|e| AgentError::Data(e.to_string()))?;
    for s in sets {
        let (key, raw) = s
            .split_once('=')
            .ok_or_else(|| AgentError::config(s.clone(), "expected --set key=value"))?;
        let unknown = |v: &Value| {
            AgentError::config(
                key,
                format!("unknown key; known keys: {}", known(v).join(", ")),
            )
        };
        let path = resolve(&v, key).ok_or_else(|| unknown(&v))?;
        if path
            .iter()
            .try_fold(&v, |cur, k| cur.get(k.as_str()))
            .is_none()
        {
            return Err(unknown(&v));
        }
        if let Some(slot) = path
            .iter()
            .try_fold(&mut v, |cur, k| cur.get_mut(k.as_str()))
        {
            *slot = parse_like(slot, raw)
                .map_err(|m| AgentError::config(key, format!("cannot parse `{raw}`: {m}")))?;
        }
    }
    serde_json::from_value(v).map_err(|e| AgentError::config("--set", e.to_string()))
}

/// Parse `raw` as the same JSON type as `like`.
fn parse_like(like: &Value, raw: &str) -> std::result::Result<Value, String> {
    match like {
        Value::Bool(_) => raw
            .parse::<bool>()
            .map(Value::Bool)
            .map_err(|_| "expected true or false".into()),
        Value::Number(n) if n.is_u64() => raw
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| {
                raw.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| Value::from(f as u64))
                    .ok_or(())
            })
            .map_err(|_| "expected a non-negative integer".into()),
        Value::Number(_) => raw
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .ok_or_else(|| "expected a number".into()),
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Null => Ok(serde_json::from_str(raw).unwrap_or(Value::String(raw.to_string()))),
        Value::Object(_) | Value::Array(_) => serde_json::from_str(raw).map_err(|e| e.to_string()),
    }
}

/// The agent a spec describes, and the starting policy (for the evaluator's reference).
pub fn build_agent(
    spec: &TrainSpec,
    task: Arc<dyn Task>,
    device: tch::Device,
) -> Result<(Box<dyn RunnableAgent>, LmPolicy)> {
    let mut policy = LmPolicy::load(&spec.policy, device)?.with_precision(spec.run.dtype);
    if spec.lora.enabled() {
        if policy.model.lora().is_some() {
            return Err(AgentError::config(
                "lora.r",
                format!(
                    "{} is already a LoRA adapter; leave lora.r at 0 to train it",
                    spec.policy.display()
                ),
            ));
        }
        policy.adapter_base = Some(spec.policy.clone());
        policy.attach_lora(&spec.lora, aligngym_envs::derive_seed(spec.seed, 0x10a))?;
    }
    // With adapters, the reference is the frozen base itself (shared, not copied).
    let start = policy.duplicate(false)?;
    // The online agents' reward: the env's gold reward, or a reward model.
    let reward = || -> Result<RewardSignal> {
        Ok(match &spec.reward {
            RewardSpec::Gold => {
                if task.feedback() == Feedback::PreferencesOnly {
                    return Err(AgentError::config("reward", format!("env {} gives agents preferences only; train a reward model and pass --reward rm:DIR", task.id())));
                }
                RewardSignal::Gold
            }
            RewardSpec::Rm(dir) => RewardSignal::Scorer(Box::new(
                RewardModel::load(dir, device)?.with_precision(spec.run.dtype),
            )),
        })
    };
    let ctx = BuildContext {
        task: task.clone(),
        policy,
        reward: &reward,
        learned_reward: matches!(spec.reward, RewardSpec::Rm(_)),
        prefs: spec.prefs.as_deref(),
        prefs_queries: spec.prefs_queries,
        updates: spec.run.updates as usize,
        seed: spec.seed,
    };
    let agent = spec.config.build(ctx)?;
    Ok((agent, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: AgentKind) -> TrainSpec {
        TrainSpec::new(kind, "arithmetic-v0", "p".into(), RewardSpec::Gold, None, 3)
    }

    #[test]
    fn config_json_holds_the_agents_section_under_its_name_and_reads_back() {
        for &kind in AgentKind::ALL {
            let s = spec(kind);
            let v = serde_json::to_value(&s).unwrap();
            assert_eq!(v["agent"], kind.name());
            let sections: Vec<&String> = v
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| AgentKind::ALL.iter().any(|a| a.name() == k.as_str()))
                .collect();
            assert_eq!(sections, [kind.name()], "{kind}");
            let back: TrainSpec = serde_json::from_value(v).unwrap();
            assert_eq!(back, s);
            assert_eq!(kind.name().parse::<AgentKind>().unwrap(), kind);
        }
        // A missing section means the defaults; `--set` reaches the section by bare key.
        let mut v = serde_json::to_value(spec(AgentKind::Grpo)).unwrap();
        v.as_object_mut().unwrap().remove("grpo");
        let mut back: TrainSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec(AgentKind::Grpo));
        back.apply_sets(&["num_generations=4".into()]).unwrap();
        match &back.config {
            AgentConfig::Grpo(c) => assert_eq!(c.num_generations, 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_agents_section_or_an_unknown_name_is_one_line() {
        let mut v = serde_json::to_value(spec(AgentKind::Ppo)).unwrap();
        v["dpo"] = serde_json::json!({});
        let e = serde_json::from_value::<TrainSpec>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `dpo`"), "{e}");
        let e = "grop".parse::<AgentKind>().unwrap_err();
        assert_eq!(
            e,
            format!(
                "unknown agent `grop`; expected one of {}",
                AgentKind::names()
            )
        );
        assert!(!e.contains('\n'));
    }
}
