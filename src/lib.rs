//! # aligngym
//!
//! A gym for LLM alignment algorithms. Define a task once (an environment with a rule reward, a
//! learned reward model or a preference oracle) and compare agents on it — PPO and DPO first — under
//! the same budget, prompts and evaluation, against a gold reward the agents never see.
//!
//! This crate is the runner, the shared evaluation, metrics and CSV, the CLI, and a facade over the
//! two library crates: [`envs`] (no libtorch) and [`agents`].

pub use aligngym_agents as agents;
pub use aligngym_envs as envs;

pub mod bench;
pub mod claims;
pub mod cli;
pub mod commands;
pub mod convergence;
pub mod eval;
pub mod html;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod report;
pub mod runner;
pub mod slurm;
pub mod spec;
pub mod stats;
pub mod sweep;
pub mod tensorboard;
pub mod verdict;
