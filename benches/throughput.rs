//! Criterion benchmarks of the fixed workloads at the tiny size — W1 sampling with and without the
//! KV cache, W2 DPO step (with a reference model and precomputed), W3 PPO iteration, W4 SFT step,
//! through the same fixture as `aligngym bench` (which runs them at either size) — of VecEnv
//! stepping (64 envs, a rule reward), serial vs parallel, of the rollout collector against the same
//! sampling with no env, and of finishing episodes with an expensive reward, serial vs rayon.

use aligngym::agents::rollout::chat_envs;
use aligngym::agents::{Agent, Precision};
use aligngym::bench::{DpoReference, Fixture, BATCH, NEW_TOKENS, SFT_LEN};
use aligngym::commands::ModelSize;
use aligngym::envs::{
    make, AutoresetMode, ByteCodec, ChatEnvConfig, TextCodec, TextEnvConfig, VecEnv,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// W1 at the tiny size: 32 prompts × 16 tokens, 48 new tokens, with and without the KV cache.
fn sampling(c: &mut Criterion) {
    let fx = Fixture::new(ModelSize::Tiny, Device::Cpu, Precision::Fp32).expect("fixture");
    let mut g = c.benchmark_group("sampling_32x48_tiny");
    g.throughput(Throughput::Elements((BATCH * NEW_TOKENS) as u64));
    g.sample_size(10);
    g.bench_function("kv_cache", |b| b.iter(|| fx.sample(true).expect("sample")));
    g.bench_function("recompute_prefix", |b| {
        b.iter(|| fx.sample(false).expect("sample"))
    });
    g.finish();
}

/// W2, W3 and W4 at the tiny size, through the same fixture as `aligngym bench`.
fn training(c: &mut Criterion) {
    let fx = Fixture::new(ModelSize::Tiny, Device::Cpu, Precision::Fp32).expect("fixture");
    let mut opt = fx.optimizer();
    let toks = Tensor::randint_low(3, 512, [BATCH, SFT_LEN], (Kind::Int64, Device::Cpu));
    let mut g = c.benchmark_group("sft_step_32x64_tiny");
    g.throughput(Throughput::Elements((BATCH * SFT_LEN) as u64));
    g.sample_size(10);
    g.bench_function("forward_backward_adamw", |b| {
        b.iter(|| fx.sft_step(&mut opt, &toks))
    });
    g.finish();

    let reference = fx.policy.duplicate(false).expect("reference");
    let (rc, rr) = fx.reference_logps(&reference);
    let mut g = c.benchmark_group("dpo_step_32_pairs_tiny");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.bench_function("reference_model", |b| {
        b.iter(|| fx.dpo_step(&mut opt, DpoReference::Model(&reference)))
    });
    g.bench_function("precomputed_reference", |b| {
        b.iter(|| fx.dpo_step(&mut opt, DpoReference::Precomputed(&rc, &rr)))
    });
    g.finish();

    let mut agent = fx.ppo_agent().expect("agent");
    let mut step = 0u64;
    let mut g = c.benchmark_group("ppo_iteration_32x48_tiny");
    g.sample_size(10);
    g.bench_function("sample_score_4_epochs", |b| {
        b.iter(|| {
            agent.update(step).expect("update");
            step += 1;
        })
    });
    g.finish();
}

fn vec_env(c: &mut Criterion) {
    let codec: Arc<dyn TextCodec> = Arc::new(ByteCodec);
    let mut g = c.benchmark_group("vec_env_64_sentiment");
    g.throughput(Throughput::Elements(64 * 24));
    for parallel in [false, true] {
        let envs = (0..64)
            .map(|_| make("sentiment-v0", codec.clone(), TextEnvConfig::default()).expect("env"))
            .collect();
        let mut v = VecEnv::new(envs, AutoresetMode::NextStep, parallel);
        v.reset(Some(0)).expect("reset");
        let actions: Vec<u32> = (0..64u32).map(|i| 2 + (b'a' as u32) + i % 26).collect();
        g.bench_function(
            if parallel {
                "parallel_24_steps"
            } else {
                "serial_24_steps"
            },
            |b| {
                b.iter(|| {
                    for _ in 0..24 {
                        v.step(&actions).expect("step");
                    }
                })
            },
        );
    }
    g.finish();
}

/// The rollout collector's cost: W3's rollout (32 episodes × up to 48 tokens, tiny) through a
/// `VecEnv` of turn-level envs (env steps, detokenising, the rule reward, host copies) against the
/// same sampling with no env.
fn rollout(c: &mut Criterion) {
    let fx = Fixture::new(ModelSize::Tiny, Device::Cpu, Precision::Fp32).expect("fixture");
    let cfg = ChatEnvConfig::default();
    let mut envs = chat_envs(fx.task(), BATCH as usize, cfg, true).expect("envs");
    let ids: Vec<Vec<u32>> = fx
        .prompts
        .iter()
        .map(|p| fx.policy.tokenizer.encode_prompt(p))
        .collect();
    let mut g = c.benchmark_group("rollout_32x48_tiny");
    g.throughput(Throughput::Elements((BATCH * NEW_TOKENS) as u64));
    g.sample_size(20);
    let mut seed = 0;
    g.bench_function("collector_with_vec_env", |b| {
        b.iter(|| {
            seed += 1;
            fx.rollout(&mut envs, seed % 4).expect("rollout")
        })
    });
    g.bench_function("sampling_without_env", |b| {
        b.iter(|| {
            seed += 1;
            fx.rollout_without_env(&ids, seed % 4).expect("sample")
        })
    });
    g.finish();
}

/// Where rayon pays: finishing 64 episodes whose rule reward is expensive (long completions through
/// `instruct-v0`'s constraint checks and `calculator-v0`'s transcript parsing), serial vs rayon.
fn expensive_rewards(c: &mut Criterion) {
    let words: Vec<String> = (0..3000).map(|i| format!("word{}", i % 97)).collect();
    let long = format!(" {} ?", words.join(" "));
    for id in ["instruct-v0", "calculator-v0"] {
        let mut g = c.benchmark_group(format!("finish_64_long_episodes_{id}"));
        g.throughput(Throughput::Elements(64));
        g.sample_size(20);
        for parallel in [false, true] {
            let task = aligngym::envs::task(id).expect("task");
            let mut envs = chat_envs(task, 64, ChatEnvConfig::default(), parallel).expect("envs");
            let actions: Vec<Option<String>> = vec![Some(long.clone()); 64];
            g.bench_function(if parallel { "rayon" } else { "serial" }, |b| {
                b.iter(|| {
                    envs.reset(Some(0)).expect("reset");
                    envs.step_some(&actions).expect("step")
                })
            });
        }
        g.finish();
    }
}

criterion_group!(
    benches,
    sampling,
    training,
    vec_env,
    rollout,
    expensive_rewards
);
criterion_main!(benches);
