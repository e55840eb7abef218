//! Sweeps: a grid over envs × agents × hyperparameters × seeds, with shared stages (SFT, preference
//! data, reward models) built once and reused, finished runs skipped on re-run, interrupted runs
//! resumed, deterministic sharding, and tidy CSV output (`runs.csv`, `metrics.csv`).

mod collect;
mod scheduler;
mod spec;
mod stages;
mod tuning;

pub use collect::{collect, RUN_COLUMNS};
pub use scheduler::{run_file, run_sweep, Part, RunFile, SweepOptions};
pub use spec::{
    compare_spec, load_sweep_dir, sanitize, shard, AgentSpec, Phase, PrefsSpec, RunSpec,
    SweepReward, SweepSpec,
};
pub use stages::{stage_built, Stage};
pub use tuning::{report_section as tuning_report, tuning_csv};
