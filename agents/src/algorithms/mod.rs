//! One file per algorithm: its config (an [`Algorithm`]), its advantage or loss, and its agent,
//! readable top to bottom. The registry below names each once.

use crate::agent::RunnableAgent;
use crate::algorithm::{Algorithm, BuildContext, Learns};
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The registry of algorithms: `module::Variant(Config)`, where `module.rs` in this folder holds
/// the algorithm and `Config` implements [`Algorithm`]. This line declares the module and is the
/// one line an algorithm adds; the CLI's `--agent`, sweep specs, `config.json` sections, `--set`
/// keys, the agent builder and the end-to-end tests all come from it.
macro_rules! algorithms {
    ($($(#[doc = $doc:literal])* $(#[cfg($when:meta)])? $module:ident::$variant:ident($cfg:ident)),+ $(,)?) => {
        $($(#[cfg($when)])? pub mod $module;)+
        $($(#[cfg($when)])? pub use $module::$cfg;)+

        /// Which algorithm a run trains (its name is the config's [`Algorithm::NAME`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AgentKind {
            $($(#[doc = $doc])* $(#[cfg($when)])? $variant),+
        }

        /// An algorithm with its hyperparameters: the `"<name>": {…}` section of `config.json`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum AgentConfig {
            $($(#[doc = $doc])* $(#[cfg($when)])? $variant($module::$cfg)),+
        }

        impl AgentKind {
            /// Every registered algorithm.
            pub const ALL: &'static [AgentKind] = &[$($(#[cfg($when)])? AgentKind::$variant),+];

            /// Its name (`--agent`, sweep specs, `config.json`).
            pub fn name(self) -> &'static str {
                match self {
                    $($(#[cfg($when)])? Self::$variant => <$module::$cfg as Algorithm>::NAME),+
                }
            }

            /// One line about it.
            pub fn about(self) -> &'static str {
                match self {
                    $($(#[cfg($when)])? Self::$variant => <$module::$cfg as Algorithm>::ABOUT),+
                }
            }

            /// What it learns from.
            pub fn learns(self) -> Learns {
                match self {
                    $($(#[cfg($when)])? Self::$variant => <$module::$cfg as Algorithm>::LEARNS),+
                }
            }

            /// Whether its updates change the policy ([`Algorithm::TRAINS`]).
            pub fn trains(self) -> bool {
                match self {
                    $($(#[cfg($when)])? Self::$variant => <$module::$cfg as Algorithm>::TRAINS),+
                }
            }

            /// Its config with every default.
            pub fn default_config(self) -> AgentConfig {
                match self {
                    $($(#[cfg($when)])? Self::$variant => AgentConfig::$variant(<$module::$cfg>::default())),+
                }
            }
        }

        impl AgentConfig {
            /// Which algorithm.
            pub fn kind(&self) -> AgentKind {
                match self {
                    $($(#[cfg($when)])? Self::$variant(_) => AgentKind::$variant),+
                }
            }

            /// Check its ranges.
            pub fn check(&self) -> Result<()> {
                match self {
                    $($(#[cfg($when)])? Self::$variant(c) => c.check()),+
                }
            }

            /// Build its agent.
            pub fn build(&self, ctx: BuildContext) -> Result<Box<dyn RunnableAgent>> {
                match self {
                    $($(#[cfg($when)])? Self::$variant(c) => c.build(ctx)),+
                }
            }

            /// The section's JSON.
            pub fn to_value(&self) -> serde_json::Result<Value> {
                match self {
                    $($(#[cfg($when)])? Self::$variant(c) => serde_json::to_value(c)),+
                }
            }

            /// The section of `kind` from its JSON (absent: the defaults).
            pub fn from_value(kind: AgentKind, v: Option<Value>) -> serde_json::Result<Self> {
                let Some(v) = v else {
                    return Ok(kind.default_config());
                };
                Ok(match kind {
                    $($(#[cfg($when)])? AgentKind::$variant => Self::$variant(serde_json::from_value(v)?)),+
                })
            }
        }
    };
}

algorithms! {
    /// PPO with an actor-critic policy.
    ppo::Ppo(PpoConfig),
    /// DPO and its offline family on a preference file.
    dpo::Dpo(DpoConfig),
    /// GRPO (and Dr. GRPO, DAPO): online, critic-free, group-relative advantages.
    grpo::Grpo(GrpoConfig),
    /// RLOO: online, critic-free, leave-one-out baseline, KL in the reward.
    rloo::Rloo(RlooConfig),
    /// REINFORCE++: online, critic-free, token KL in the reward, batch-whitened returns.
    reinforce_pp::ReinforcePp(ReinforcePpConfig),
    /// Online DPO: two fresh samples per prompt, judged by the reward, a DPO-family loss.
    online_dpo::OnlineDpo(OnlineDpoConfig),
    /// KTO on unpaired desirable/undesirable examples (or preference pairs, unpaired).
    kto::Kto(KtoConfig),
    /// Best-of-n: no training; each episode the best of n samples by the reward.
    best_of_n::BestOfN(BestOfNConfig),
    /// A test-only REINFORCE that shows what adding an algorithm takes.
    #[cfg(test)]
    toy::Toy(ToyConfig),
}

impl AgentKind {
    /// The valid names, for messages.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AgentKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown agent `{}`; expected one of {}",
                    aligngym_envs::one_line(s),
                    Self::names()
                )
            })
    }
}

impl Serialize for AgentKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for AgentKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl clap::ValueEnum for AgentKind {
    fn value_variants<'a>() -> &'a [Self] {
        Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.about()))
    }
}
