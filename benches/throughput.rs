//! Criterion benchmarks of the hot paths: batched sampling with and without the KV cache (64 prompts
//! × 48 new tokens, the tiny model), a DPO step, an SFT step, and VecEnv stepping (64 envs, a rule
//! reward) serial vs parallel. `aligngym bench` runs the full fixed workloads W1–W4.

use aligngym::agents::sampling::{generate, generate_without_cache, SamplingConfig};
use aligngym::agents::sft::{init_model, lm_loss};
use aligngym::agents::GptConfig;
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

fn training(c: &mut Criterion) {
    let cfg = GptConfig::tiny(512);
    let (vs, model) = init_model(&cfg, Device::Cpu, 0).expect("model");
    let mut opt = aligngym::agents::optim::AdamW::new(&vs, Default::default());
    let toks = Tensor::randint_low(3, 512, [32, 64], (Kind::Int64, Device::Cpu));
    let valid = Tensor::ones([32, 64], (Kind::Bool, Device::Cpu));
    let mut g = c.benchmark_group("sft_step_32x64_tiny");
    g.throughput(Throughput::Elements(32 * 64));
    g.sample_size(10);
    g.bench_function("forward_backward_adamw", |b| {
        b.iter(|| {
            let l = lm_loss(&model, &toks, &valid, true);
            opt.zero_grad();
            l.backward();
            opt.step(1e-6);
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
