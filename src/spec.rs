//! A training run's full specification (saved as the run's `config.json`), `--set key=value`
//! overrides, and building the agent it describes.

use crate::eval::EvalConfig;
use crate::runner::RunConfig;
use aligngym_agents::{
    AgentError, BestOfNAgent, BestOfNConfig, DpoAgent, DpoConfig, GrpoAgent, GrpoConfig, KtoAgent,
    KtoConfig, LmPolicy, OnlineDpoAgent, OnlineDpoConfig, PpoAgent, PpoConfig, ReinforcePpAgent,
    ReinforcePpConfig, Result, RewardModel, RewardSignal, RlooAgent, RlooConfig, RunnableAgent,
};
use aligngym_envs::{read_pairs, read_unpaired, Feedback, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// PPO with an actor-critic policy.
    Ppo,
    /// DPO on an offline preference buffer.
    Dpo,
    /// GRPO (and Dr. GRPO, DAPO): online, critic-free, group-relative advantages.
    Grpo,
    /// RLOO: online, critic-free, leave-one-out baseline, KL in the reward.
    Rloo,
    /// REINFORCE++: online, critic-free, token KL in the reward, batch-whitened returns.
    #[value(name = "reinforce_pp")]
    ReinforcePp,
    /// Online DPO: two fresh samples per prompt, judged by the reward, a DPO-family loss.
    #[value(name = "online_dpo")]
    OnlineDpo,
    /// KTO on unpaired desirable/undesirable examples (or preference pairs, unpaired).
    Kto,
    /// Best-of-n: no training; each episode the best of n samples by the reward.
    #[value(name = "best_of_n")]
    BestOfN,
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ppo => "ppo",
            Self::Dpo => "dpo",
            Self::Grpo => "grpo",
            Self::Rloo => "rloo",
            Self::ReinforcePp => "reinforce_pp",
            Self::OnlineDpo => "online_dpo",
            Self::Kto => "kto",
            Self::BestOfN => "best_of_n",
        })
    }
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

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// The agent.
    pub agent: AgentKind,
    /// The env id.
    pub env: String,
    /// The starting policy (also the frozen reference).
    pub policy: PathBuf,
    /// PPO's reward.
    pub reward: RewardSpec,
    /// DPO's preference file.
    pub prefs: Option<PathBuf>,
    /// Oracle queries the preference file cost (default: one per pair).
    #[serde(default)]
    pub prefs_queries: Option<u64>,
    /// Run seed.
    pub seed: u64,
    /// PPO hyperparameters (PPO runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo: Option<PpoConfig>,
    /// DPO hyperparameters (DPO runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<DpoConfig>,
    /// GRPO hyperparameters (GRPO runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<GrpoConfig>,
    /// RLOO hyperparameters (RLOO runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rloo: Option<RlooConfig>,
    /// REINFORCE++ hyperparameters (REINFORCE++ runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinforce_pp: Option<ReinforcePpConfig>,
    /// Online DPO hyperparameters (online DPO runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_dpo: Option<OnlineDpoConfig>,
    /// KTO hyperparameters (KTO runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kto: Option<KtoConfig>,
    /// Best-of-n settings (best-of-n runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of_n: Option<BestOfNConfig>,
    /// Run length and evaluation cadence.
    pub run: RunConfig,
    /// The shared evaluation.
    pub eval: EvalConfig,
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
            agent,
            env: env.to_string(),
            policy,
            reward,
            prefs,
            prefs_queries: None,
            seed,
            ppo: (agent == AgentKind::Ppo).then(PpoConfig::default),
            dpo: (agent == AgentKind::Dpo).then(DpoConfig::default),
            grpo: (agent == AgentKind::Grpo).then(GrpoConfig::default),
            rloo: (agent == AgentKind::Rloo).then(RlooConfig::default),
            reinforce_pp: (agent == AgentKind::ReinforcePp).then(ReinforcePpConfig::default),
            online_dpo: (agent == AgentKind::OnlineDpo).then(OnlineDpoConfig::default),
            kto: (agent == AgentKind::Kto).then(KtoConfig::default),
            best_of_n: (agent == AgentKind::BestOfN).then(BestOfNConfig::default),
            run: RunConfig::default(),
            eval: EvalConfig::default(),
        }
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
        let agent = self.agent.to_string();
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
        if let Some(p) = &self.ppo {
            p.validate()?;
        }
        if let Some(d) = &self.dpo {
            d.validate()?;
        }
        if let Some(g) = &self.grpo {
            g.validate()?;
        }
        if let Some(r) = &self.rloo {
            r.validate()?;
        }
        if let Some(r) = &self.reinforce_pp {
            r.validate()?;
        }
        if let Some(o) = &self.online_dpo {
            o.validate()?;
        }
        if let Some(k) = &self.kto {
            k.validate()?;
        }
        if let Some(b) = &self.best_of_n {
            b.validate()?;
        }
        // max_new_tokens 0 means "the task's own limit", filled in when the evaluator is built.
        let mut sampling = self.eval.sampling.clone();
        sampling.max_new_tokens = sampling.max_new_tokens.max(1);
        sampling.validate()?;
        Ok(())
    }
}

fn known_keys(v: &Value, agent: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for sec in [agent, "run", "eval"] {
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
    let policy = LmPolicy::load(&spec.policy, device)?.with_precision(spec.run.dtype);
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
    // A reward model's preference labels count as oracle queries of the agent that uses it.
    let prior = if matches!(spec.reward, RewardSpec::Rm(_)) {
        spec.prefs_queries.unwrap_or(0)
    } else {
        0
    };
    let agent: Box<dyn RunnableAgent> = match spec.agent {
        AgentKind::Ppo => Box::new(
            PpoAgent::new(
                spec.ppo.clone().unwrap_or_default(),
                task.clone(),
                policy,
                reward()?,
                spec.seed,
            )?
            .with_prior_oracle_queries(prior),
        ),
        AgentKind::Grpo => Box::new(
            GrpoAgent::new(
                spec.grpo.clone().unwrap_or_default(),
                task.clone(),
                policy,
                reward()?,
                spec.seed,
            )?
            .with_prior_oracle_queries(prior),
        ),
        AgentKind::Rloo => Box::new(
            RlooAgent::new(
                spec.rloo.clone().unwrap_or_default(),
                task.clone(),
                policy,
                reward()?,
                spec.seed,
            )?
            .with_prior_oracle_queries(prior),
        ),
        AgentKind::ReinforcePp => Box::new(
            ReinforcePpAgent::new(
                spec.reinforce_pp.clone().unwrap_or_default(),
                task.clone(),
                policy,
                reward()?,
                spec.seed,
            )?
            .with_prior_oracle_queries(prior),
        ),
        AgentKind::OnlineDpo => {
            let cfg = spec.online_dpo.clone().unwrap_or_default();
            // The oracle judge is the env's rater: it compares on the gold reward, which agents
            // never see as a score (so preference-only envs allow it).
            let signal = match (cfg.judge, &spec.reward) {
                (aligngym_agents::Judge::Oracle, RewardSpec::Gold) => RewardSignal::Gold,
                (aligngym_agents::Judge::Oracle, RewardSpec::Rm(_)) => {
                    return Err(AgentError::config(
                        "judge",
                        "the oracle judge compares on the env's gold reward: leave --reward at gold (or judge=reward to judge by the reward model)",
                    ))
                }
                (aligngym_agents::Judge::Reward, _) => reward()?,
            };
            Box::new(
                OnlineDpoAgent::new(cfg, task.clone(), policy, signal, spec.seed)?
                    .with_prior_oracle_queries(prior),
            )
        }
        AgentKind::BestOfN => Box::new(
            BestOfNAgent::new(
                spec.best_of_n.clone().unwrap_or_default(),
                policy,
                reward()?,
            )?
            .with_prior_oracle_queries(prior),
        ),
        AgentKind::Kto => {
            let path = spec.prefs.as_ref().ok_or_else(|| {
                AgentError::config(
                    "prefs",
                    "KTO needs --prefs FILE (lines {prompt, completion, label}, or preference pairs)",
                )
            })?;
            let examples = read_unpaired(path)?;
            let queries = spec.prefs_queries.unwrap_or(examples.len() as u64);
            Box::new(KtoAgent::new(
                spec.kto.clone().unwrap_or_default(),
                policy,
                &examples,
                queries,
                spec.run.updates as usize,
                spec.seed,
            )?)
        }
        AgentKind::Dpo => {
            let path = spec.prefs.as_ref().ok_or_else(|| {
                AgentError::config(
                    "prefs",
                    "DPO needs --prefs FILE (make one with `aligngym prefs`)",
                )
            })?;
            let pairs = read_pairs(path)?;
            let queries = spec.prefs_queries.unwrap_or(pairs.len() as u64);
            Box::new(DpoAgent::new(
                spec.dpo.clone().unwrap_or_default(),
                policy,
                &pairs,
                queries,
                spec.run.updates as usize,
                spec.seed,
            )?)
        }
    };
    Ok((agent, start))
}
