//! Criterion benchmarks of the hot paths: batched sampling with and without the KV cache (64 prompts
//! × 48 new tokens, the tiny model), the fixed workloads' SFT step (W4), DPO step (W2, with a
//! reference model and precomputed) and PPO iteration (W3) at the tiny size, and VecEnv stepping (64
//! envs, a rule reward) serial vs parallel. `aligngym bench` runs W1–W4 at either size.

use aligngym::agents::sampling::{generate, generate_without_cache, SamplingConfig};
use aligngym::agents::sft::init_model;
use aligngym::agents::{Agent, GptConfig, Precision};
use aligngym::bench::{DpoReference, Fixture, BATCH, SFT_LEN};
use aligngym::commands::ModelSize;
use aligngym::envs::{make, AutoresetMode, ByteCodec, TextCodec, TextEnvConfig, VecEnv};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

fn sampling(c: &mut Criterion) {
    let cfg = GptConfig::tiny(512);
    let (_vs, model) = init_model(&cfg, Device::Cpu, 0).expect("model");
    let prompts: Vec<Vec<u32>> = (0..64u32)
        .map(|i| {
            (0..(8 + i % 9))
                .map(|j| 3 + (i * 31 + j * 17) % 500)
                .collect()
        })
        .collect();
    let s = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 48,
    };
    let mut g = c.benchmark_group("sampling_64x48_tiny");
    g.throughput(Throughput::Elements(64 * 48));
    g.sample_size(10);
    g.bench_function("kv_cache", |b| {
        b.iter(|| generate(&model, &prompts, 0, u32::MAX, &s, Device::Cpu).expect("generate"))
    });
    g.bench_function("recompute_prefix", |b| {
        b.iter(|| {
            generate_without_cache(&model, &prompts, 0, u32::MAX, &s, Device::Cpu)
                .expect("generate")
        })
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

criterion_group!(benches, sampling, training, vec_env);
criterion_main!(benches);
