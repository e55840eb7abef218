//! The task registry: built-in tasks plus any a user registers, looked up by id.

use crate::codec::TextCodec;
use crate::env::{TextEnv, TextEnvConfig};
use crate::task::Task;
use crate::tasks::{
    arithmetic::ArithmeticTask, calculator::CalculatorTask, clarify::ClarifyTask,
    guess_number::GuessNumberTask, hh::HhTask, hidden_pref::HiddenPrefTask, instruct::InstructTask,
    sentiment::SentimentTask,
};
use crate::{EnvError, Result};
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

/// The tasks aligngym ships, freshly made (the registry starts with them).
pub fn built_in() -> Vec<Arc<dyn Task>> {
    vec![
        Arc::new(SentimentTask::new()) as Arc<dyn Task>,
        Arc::new(ArithmeticTask::default()),
        Arc::new(InstructTask::new()),
        Arc::new(HhTask::new()),
        Arc::new(HiddenPrefTask::new()),
        Arc::new(GuessNumberTask::new()),
        Arc::new(CalculatorTask::new()),
        Arc::new(ClarifyTask::new()),
    ]
}

fn table() -> &'static RwLock<Vec<Arc<dyn Task>>> {
    static T: OnceLock<RwLock<Vec<Arc<dyn Task>>>> = OnceLock::new();
    T.get_or_init(|| RwLock::new(built_in()))
}

/// Register a task; its id must be new.
pub fn register(task: Arc<dyn Task>) -> Result<()> {
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    if t.iter().any(|x| x.id() == task.id()) {
        return Err(EnvError::InvalidConfig {
            field: "id",
            msg: format!("a task with id `{}` is already registered", task.id()),
        });
    }
    t.push(task);
    Ok(())
}

/// Every registered task, built-ins first.
pub fn tasks() -> Vec<Arc<dyn Task>> {
    table().read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The task registered under `id`; `task:PATH` reads the task file at PATH (once per process)
/// and registers it under that id.
pub fn task(id: &str) -> Result<Arc<dyn Task>> {
    if let Some(path) = id.strip_prefix(crate::task_file::TASK_PREFIX) {
        if let Some(t) = tasks().into_iter().find(|t| t.id() == id) {
            return Ok(t);
        }
        let t: Arc<dyn Task> = Arc::new(crate::task_file::TaskFile::load(Path::new(path))?);
        // Two threads may read the same file at once: the first registration stands.
        return match register(t.clone()) {
            Ok(()) => Ok(t),
            Err(_) => Ok(tasks().into_iter().find(|t| t.id() == id).unwrap_or(t)),
        };
    }
    let all = tasks();
    all.iter()
        .find(|t| t.id() == id)
        .cloned()
        .ok_or_else(|| EnvError::UnknownEnv {
            id: id.to_string(),
            known: all
                .iter()
                .map(|t| t.id().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A text env for task `id`, with token ids from `codec` (Gymnasium's `make`).
pub fn make(id: &str, codec: Arc<dyn TextCodec>, cfg: TextEnvConfig) -> Result<TextEnv> {
    TextEnv::new(task(id)?, codec, cfg)
}
