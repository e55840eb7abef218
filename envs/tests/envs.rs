//! End-to-end tests of the environment API through the public interface.

use aligngym_envs::testing::{Flaw, FlawedEnv};
use aligngym_envs::*;
use std::sync::Arc;

#[test]
fn check_env_passes_on_every_registered_env() {
    let codec: Arc<dyn TextCodec> = Arc::new(ByteCodec);
    // Other tests in this binary register their own tasks (the README's polite-v0) while this one
    // runs; those must pass check_env too, but the corpus bar is one the built-ins set themselves.
    let built_in: Vec<String> = built_in().iter().map(|t| t.id().to_string()).collect();
    assert!(built_in.len() >= 8);
    let all = tasks();
    for id in &built_in {
        assert!(all.iter().any(|t| t.id() == id), "{id} is not registered");
    }
    for t in all {
        for split in [Split::Train, Split::Eval] {
            let cfg = TextEnvConfig {
                split,
                ..Default::default()
            };
            check_env(|| make(t.id(), codec.clone(), cfg.clone()))
                .unwrap_or_else(|e| panic!("{}: {e}", t.id()));
        }
        // Train and eval prompts never overlap.
        let train: std::collections::HashSet<_> = t.prompts(Split::Train).iter().collect();
        assert!(
            t.prompts(Split::Eval).iter().all(|p| !train.contains(p)),
            "{}",
            t.id()
        );
        // The corpus is reproducible and, for the built-ins, varied.
        let c = t.corpus(200, 9);
        assert_eq!(c, t.corpus(200, 9));
        if !built_in.iter().any(|id| id == t.id()) {
            continue;
        }
        let distinct: std::collections::HashSet<_> = c.iter().collect();
        assert!(distinct.len() > 50, "{} corpus too repetitive", t.id());
    }
}

#[test]
fn check_env_names_the_broken_rule() {
    assert!(check_env(|| Ok(FlawedEnv::new(Flaw::None))).is_ok());
    for (flaw, rule) in [
        (Flaw::IgnoresResetNeeded, "reset_needed"),
        (Flaw::UnseededReset, "seeded_determinism"),
        (Flaw::RewardOutOfRange, "reward_range"),
        (Flaw::BothFlags, "terminated_xor_truncated"),
        (Flaw::NeverEnds, "episode_ends"),
    ] {
        let err =
            check_env(|| Ok(FlawedEnv::new(flaw))).expect_err(&format!("{flaw:?} not caught"));
        assert!(err.to_string().contains(rule), "{flaw:?}: {err}");
    }
}

/// Observations, rewards, terminated and truncated flags of one vector step.
type StepRecord = (Vec<Vec<u32>>, Vec<f32>, Vec<bool>, Vec<bool>);

fn rollout(n: usize, parallel: bool, mode: AutoresetMode) -> Vec<StepRecord> {
    let codec: Arc<dyn TextCodec> = Arc::new(ByteCodec);
    let envs = (0..n)
        .map(|_| {
            make(
                "sentiment-v0",
                codec.clone(),
                TextEnvConfig {
                    max_new_tokens: 5,
                    ..Default::default()
                },
            )
            .unwrap()
        })
        .collect();
    let mut v = VecEnv::new(envs, mode, parallel);
    v.reset(Some(2024)).unwrap();
    let mut out = Vec::new();
    for t in 0..23u32 {
        // Deterministic actions that hit EOS (id 1) now and then.
        let actions: Vec<u32> = (0..n as u32)
            .map(|i| {
                if (i + t) % 7 == 0 {
                    1
                } else {
                    2 + (i * 31 + t * 17) % 256
                }
            })
            .collect();
        let s = v.step(&actions).unwrap();
        out.push((
            s.obs,
            s.rewards.to_vec(),
            s.terminated.to_vec(),
            s.truncated.to_vec(),
        ));
    }
    out
}

#[test]
fn serial_and_parallel_vec_env_rollouts_are_identical() {
    for n in [1usize, 2, 3, 8, 17, 64] {
        for mode in [AutoresetMode::NextStep, AutoresetMode::SameStep] {
            assert_eq!(
                rollout(n, false, mode),
                rollout(n, true, mode),
                "n={n} {mode:?}"
            );
        }
    }
    // Different seeds per env: not every env draws the same prompt.
    let r = rollout(16, true, AutoresetMode::NextStep);
    let firsts: std::collections::HashSet<_> =
        r[0].0.iter().map(|o| o[..o.len() - 1].to_vec()).collect();
    assert!(firsts.len() > 1);
}

#[test]
fn autoreset_modes_follow_gymnasium() {
    let codec: Arc<dyn TextCodec> = Arc::new(ByteCodec);
    let env = || make("arithmetic-v0", codec.clone(), TextEnvConfig::default()).unwrap();
    // NextStep: the step after EOS resets and returns reward 0, no flags.
    let mut v = VecEnv::new(vec![env()], AutoresetMode::NextStep, false);
    let (obs0, _) = v.reset(Some(1)).unwrap();
    let s = v.step(&[1]).unwrap();
    assert!(s.terminated[0]);
    let s2 = v.step(&[5]).unwrap();
    assert!(!s2.terminated[0] && !s2.truncated[0] && s2.rewards[0] == 0.0);
    assert_ne!(s2.obs[0].last(), Some(&5));
    assert!(obs0[0].len() >= 4);
    // SameStep: the final obs is in info; the returned obs is a fresh prompt.
    let mut v = VecEnv::new(vec![env()], AutoresetMode::SameStep, false);
    v.reset(Some(1)).unwrap();
    let s = v.step(&[1]).unwrap();
    assert!(s.terminated[0]);
    assert_eq!(s.infos[0].final_obs.as_ref().unwrap().last(), Some(&1));
    assert_ne!(s.obs[0].last(), Some(&1));
    // Disabled: stepping an ended env is ResetNeeded until reset_one.
    let mut v = VecEnv::new(vec![env()], AutoresetMode::Disabled, false);
    v.reset(Some(1)).unwrap();
    v.step(&[1]).unwrap();
    assert!(matches!(v.step(&[1]), Err(EnvError::ResetNeeded)));
    v.reset_one(0).unwrap();
    assert!(v.step(&[1]).is_ok());
}

#[test]
fn external_scores_are_filled_in_one_batch() {
    struct CountingScorer(std::cell::Cell<usize>);
    impl RewardFn for CountingScorer {
        fn name(&self) -> String {
            "count".into()
        }
        fn score_batch(&self, p: &[&str], c: &[&str]) -> Result<Vec<f32>> {
            self.0.set(self.0.get() + 1);
            Ok(p.iter().zip(c).map(|(_, c)| c.len() as f32 + 0.5).collect())
        }
    }
    let codec: Arc<dyn TextCodec> = Arc::new(ByteCodec);
    let cfg = TextEnvConfig {
        reward: RewardSource::External,
        max_new_tokens: 3,
        ..Default::default()
    };
    let envs = (0..4)
        .map(|_| make("hh-v0", codec.clone(), cfg.clone()).unwrap())
        .collect();
    let mut v = VecEnv::new(envs, AutoresetMode::NextStep, true);
    v.reset(Some(0)).unwrap();
    let scorer = CountingScorer(std::cell::Cell::new(0));
    let a = [b'o' as u32 + 2; 4];
    v.step_scored(&a, &scorer).unwrap();
    v.step_scored(&a, &scorer).unwrap();
    assert_eq!(scorer.0.get(), 0);
    let s = v.step_scored(&a, &scorer).unwrap();
    assert_eq!(scorer.0.get(), 1);
    assert!(s.truncated.iter().all(|&t| t));
    assert_eq!(s.rewards.to_vec(), vec![3.5; 4]);
    assert!(s.infos.iter().all(|i| i.gold_reward.is_some()));
}

#[test]
fn unknown_env_id_lists_known_ones() {
    let e = make("nope-v9", Arc::new(ByteCodec), TextEnvConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nope-v9") && e.contains("sentiment-v0"), "{e}");
}

mod custom_task_example {
    include!("../examples/custom_task.rs");
    #[test]
    fn the_readme_example_runs() {
        main().unwrap();
    }
}
