//! `aligngym bench`: fixed workloads (so figures compare across tools at equal work), each timed as
//! the median of repeated runs after a warm-up, with achieved GFLOP/s and its ratio to a 1024³
//! matmul in the same precision measured in the same process (the machine's practical peak).
//!
//! W1 sampling: 32 prompts × 16 tokens, 48 new tokens each, temperature 1, KV cache (and, for
//! reference, its decoding matmuls alone, the floor libtorch's kernels set, and below SmolLM2's
//! size the same sampling without the cache). W2 DPO step: 32 pairs, prompt 16, chosen and rejected 48
//! tokens, AdamW; (a) reference log-probs from a reference model each step, (b) precomputed, (c)
//! LoRA adapters (r = 16, every linear layer) on the frozen base, which is the reference.
//! W3 PPO iteration: sample 32 × 48 from 16-token prompts, rule reward, reference and value forward
//! passes, GAE, 4 epochs × 1 minibatch, separate value network; and the same with LoRA adapters
//! (the critic adapters of its own on the shared base). W4 SFT step: 32 × 64 tokens.
//! W5 GRPO iteration: 32 prompts × G = 8 completions of 48 tokens, rule reward, group advantages,
//! one clipped step (β = 0: no reference pass). W6 RLOO iteration: 32 prompts × k = 4 completions
//! of 48 tokens, rule reward, a reference pass (β = 0.05), leave-one-out advantages, one step.

use crate::commands::ModelSize;
use aligngym_agents::lm::lora::{LoraConfig, TargetModules};
use aligngym_agents::lm::model::{Activation, Family};
use aligngym_agents::lm::optim::{AdamW, AdamWConfig};
use aligngym_agents::lm::sampling::{
    generate, generate_until, generate_without_cache, SamplingConfig,
};
use aligngym_agents::losses::{dpo_loss, DpoLoss, DpoLossParams, PairScores};
use aligngym_agents::rollout::{collect, Start};
use aligngym_agents::stages::pairs::{pair_lengths, pair_logps, PairBatch};
use aligngym_agents::stages::sft::{init_model, lm_loss};
use aligngym_agents::{
    Agent, GptConfig, GrpoAgent, GrpoConfig, LmPolicy, PpoAgent, PpoConfig, Precision, Result,
    RlooAgent, RlooConfig, Tokenizer,
};
use aligngym_envs::rules::LengthTarget;
use aligngym_envs::{ChatEnv, Feedback, Rule, Split, Task, TextCodec, VecEnv};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One measured workload.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Workload name.
    pub workload: String,
    /// Throughput unit.
    pub unit: String,
    /// Median throughput.
    pub throughput: f64,
    /// Median seconds per repetition.
    pub seconds: f64,
    /// Achieved GFLOP/s (model FLOPs / median time).
    pub gflops: f64,
    /// GFLOP/s as a fraction of the measured matmul peak.
    pub of_peak: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Model size.
    pub size: String,
    /// Device.
    pub device: String,
    /// libtorch threads.
    pub threads: i32,
    /// Compute precision of the workloads (`fp32` or `bf16`).
    pub dtype: String,
    /// The kind the workloads' matmuls compute in: the precision's own, or `fp32` for bf16 on
    /// a CPU without native bf16 (bf16 values multiplied in fp32).
    pub arithmetic: String,
    /// 1024³ matmul GFLOP/s in that arithmetic (the peak `of_peak` divides by).
    pub matmul_gflops: f64,
    /// The workloads.
    pub rows: Vec<BenchRow>,
}

fn median_secs(repeats: usize, device: Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    sync(device);
    let mut t = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        f()?;
        sync(device);
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(t[t.len() / 2])
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `n³` matmul GFLOP/s in `kind` (median of `repeats`).
pub fn matmul_gflops(n: i64, repeats: usize, device: Device, kind: Kind) -> Result<f64> {
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let s = median_secs(repeats, device, || {
        let _ = a.matmul(&b);
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / s / 1e9)
}

struct BenchTask {
    prompts: Vec<String>,
}

const WORDS: &[&str] = &[
    "alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta", "eta",
    "iota", "rho", "tau", "phi", "chi",
];

impl Task for BenchTask {
    fn id(&self) -> &str {
        "bench-v0"
    }
    fn description(&self) -> &str {
        "benchmark prompts"
    }
    fn reward_kind(&self) -> &str {
        "rule: length target"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, _seed: u64) -> Vec<String> {
        self.prompts.iter().cycle().take(n).cloned().collect()
    }
    fn prompts(&self, _split: Split) -> &[String] {
        &self.prompts
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(LengthTarget::words(20, 20.0))
    }
    fn max_new_tokens(&self) -> usize {
        48
    }
}

fn random_ids(b: i64, t: i64, vocab: i64, device: Device) -> Tensor {
    Tensor::randint_low(3, vocab, [b, t], (Kind::Int64, device))
}

/// Sequences per batch in every workload.
pub const BATCH: i64 = 32;
/// Prompt tokens (W1–W3).
pub const PROMPT_LEN: i64 = 16;
/// New tokens per sequence (W1, W3) and completion tokens per DPO response (W2).
pub const NEW_TOKENS: i64 = 48;
/// Tokens per SFT sequence (W4).
pub const SFT_LEN: i64 = 64;

/// The model and inputs the workloads share; `cargo bench` builds the same one.
pub struct Fixture {
    /// The model's shape.
    pub cfg: GptConfig,
    /// Where it runs.
    pub device: Device,
    /// The policy (random weights; a tokenizer trained on the prompts).
    pub policy: LmPolicy,
    /// W3's prompt texts (16 tokens each: BOS + 15 words).
    pub prompts: Vec<String>,
    /// W1's prompt ids.
    pub prompt_ids: Vec<Vec<u32>>,
    /// W1's sampling: temperature 1, no top-k/top-p, 48 new tokens.
    pub sampling: SamplingConfig,
    /// W2's batch of pairs.
    pub pairs: PairBatch,
    /// Every pair's index `[B]` (W2 steps on the whole batch).
    all_pairs: Tensor,
    /// W4's validity mask `[B, 64]` (no padding).
    sft_valid: Tensor,
}

impl Fixture {
    /// The fixture at `size` on `device`, computing in `dtype`, from a fixed seed.
    pub fn new(size: ModelSize, device: Device, dtype: Precision) -> Result<Self> {
        // The binary sets this at start-up; the criterion benches get here without it.
        aligngym_agents::lm::device::keep_freed_memory();
        tch::manual_seed(0);
        let vocab = size.bench_vocab() as i64;
        let cfg = size.config(vocab as usize);
        let prompts: Vec<String> = (0..BATCH as usize)
            .map(|i| {
                (0..15)
                    .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let mut corpus = prompts.clone();
        corpus.extend((0..200).map(|i| format!("{} {}", WORDS[i % WORDS.len()], i)));
        let tokenizer = Tokenizer::train(&corpus, 300)?;
        let (vs, mut model) = init_model(&cfg, device, 0)?;
        model.set_precision(dtype);
        let prompt_ids: Vec<Vec<u32>> = (0..BATCH)
            .map(|i| {
                (0..PROMPT_LEN)
                    .map(|j| (3 + (i * 31 + j * 17) % (vocab - 3)) as u32)
                    .collect()
            })
            .collect();
        let pairs = PairBatch {
            prompt: random_ids(BATCH, PROMPT_LEN, vocab, device),
            prompt_valid: Tensor::ones([BATCH, PROMPT_LEN], (Kind::Bool, device)),
            chosen: random_ids(BATCH, NEW_TOKENS, vocab, device),
            chosen_valid: Tensor::ones([BATCH, NEW_TOKENS], (Kind::Bool, device)),
            chosen_mask: Tensor::ones([BATCH, NEW_TOKENS], (Kind::Float, device)),
            rejected: random_ids(BATCH, NEW_TOKENS, vocab, device),
            rejected_valid: Tensor::ones([BATCH, NEW_TOKENS], (Kind::Bool, device)),
            rejected_mask: Tensor::ones([BATCH, NEW_TOKENS], (Kind::Float, device)),
        };
        Ok(Self {
            cfg,
            device,
            policy: LmPolicy {
                vs,
                model,
                tokenizer,
                adapter_base: None,
            },
            prompts,
            prompt_ids,
            sampling: SamplingConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                max_new_tokens: NEW_TOKENS as usize,
            },
            pairs,
            all_pairs: Tensor::arange(BATCH, (Kind::Int64, device)),
            sft_valid: Tensor::ones([BATCH, SFT_LEN], (Kind::Bool, device)),
        })
    }

    /// W1: sample 48 tokens after every prompt (an EOS id the model never emits: no early stop).
    pub fn sample(&self, cache: bool) -> Result<()> {
        let f = if cache {
            generate
        } else {
            generate_without_cache
        };
        f(
            &self.policy.model,
            &self.prompt_ids,
            0,
            u32::MAX,
            &self.sampling,
            self.device,
        )
        .map(|_| ())
    }

    /// The reference log-probs `[B]` of the chosen and rejected responses.
    pub fn reference_logps(&self, reference: &LmPolicy) -> (Tensor, Tensor) {
        tch::no_grad(|| pair_logps(reference, &self.pairs, &self.all_pairs, false))
    }

    /// W2: one DPO step (sigmoid loss, β = 0.1), the reference log-probs computed by `reference`
    /// now or given.
    pub fn dpo_step(&self, opt: &mut AdamW, reference: DpoReference<'_>) {
        self.dpo_step_of(&self.policy, opt, reference)
    }

    /// [`Fixture::dpo_step`] of `policy` (e.g. [`Fixture::lora_policy`]).
    pub fn dpo_step_of(&self, policy: &LmPolicy, opt: &mut AdamW, reference: DpoReference<'_>) {
        let (pc, pr) = pair_logps(policy, &self.pairs, &self.all_pairs, true);
        let (rc, rr) = match reference {
            DpoReference::Model(m) => self.reference_logps(m),
            DpoReference::Precomputed(c, r) => (c.shallow_clone(), r.shallow_clone()),
        };
        let (lc, lr) = pair_lengths(&self.pairs, &self.all_pairs);
        let out = dpo_loss(
            &PairScores {
                chosen: &pc,
                rejected: &pr,
                reference: Some((&rc, &rr)),
                chosen_len: &lc,
                rejected_len: &lr,
            },
            &DpoLossParams {
                beta: 0.1,
                loss: DpoLoss::Sigmoid,
                label_smoothing: 0.0,
                simpo_gamma: 0.5,
                rpo_alpha: 0.0,
            },
        )
        .expect("the reference log-probs are given");
        let l = out.loss;
        opt.zero_grad();
        l.mean(Kind::Float).backward();
        let _ = opt.clip_grad_norm(1.0);
        opt.step(1e-6);
    }

    /// W4: one SFT step on `tokens [32, 64]`.
    pub fn sft_step(&self, opt: &mut AdamW, tokens: &Tensor) {
        let l = lm_loss(&self.policy.model, tokens, &self.sft_valid, true);
        opt.zero_grad();
        l.backward();
        let _ = opt.clip_grad_norm(1.0);
        opt.step(1e-6);
    }

    /// W3's task: its prompts and a length rule.
    pub fn task(&self) -> Arc<dyn Task> {
        Arc::new(BenchTask {
            prompts: self.prompts.clone(),
        })
    }

    /// W3's rollout through the collector: one episode per env of `envs` (W3's task; made with
    /// [`aligngym_agents::rollout::chat_envs`]), W1's sampling settings.
    pub fn rollout(&self, envs: &mut VecEnv<ChatEnv>, seed: u64) -> Result<()> {
        tch::manual_seed(seed as i64);
        collect(&self.policy, envs, Start::Seed(seed), &self.sampling, None).map(|_| ())
    }

    /// The same sampling as [`Fixture::rollout`] with no env: the prompts encoded once, then
    /// `generate` with the same stop tokens (what the collector adds is the env side).
    pub fn rollout_without_env(&self, prompt_ids: &[Vec<u32>], seed: u64) -> Result<()> {
        tch::manual_seed(seed as i64);
        let tok = &self.policy.tokenizer;
        generate_until(
            &self.policy.model,
            prompt_ids,
            tok.pad_id(),
            &tok.turn_stops(),
            &self.sampling,
            self.device,
        )
        .map(|g| {
            // The collector copies each round's tokens, mask and log-probs to the host.
            let _ = g.completions();
        })
    }

    /// The policy with LoRA adapters of [`LORA_RANK`] on every linear layer of its frozen base
    /// (α = 2r, the usual choice).
    pub fn lora_policy(&self) -> Result<LmPolicy> {
        let mut p = self.policy.duplicate(true)?;
        let cfg = LoraConfig {
            r: LORA_RANK,
            lora_alpha: 2.0 * LORA_RANK as f64,
            target_modules: TargetModules::AllLinear,
            ..Default::default()
        };
        p.attach_lora(&cfg, 0)?;
        Ok(p)
    }

    /// W3's agent: PPO on a length rule, batch 32 × 48, separate critic, 4 epochs × 1 minibatch.
    pub fn ppo_agent(&self) -> Result<PpoAgent> {
        self.ppo_agent_of(self.policy.duplicate(true)?)
    }

    /// [`Fixture::ppo_agent`] training `policy` (with adapters: the reference is the base and the
    /// critic adapters of its own on it).
    pub fn ppo_agent_of(&self, policy: LmPolicy) -> Result<PpoAgent> {
        let task = self.task();
        let cfg = PpoConfig {
            batch_size: BATCH as usize,
            max_new_tokens: NEW_TOKENS as usize,
            temperature: 1.0,
            learning_rate: 1e-6,
            ..Default::default()
        };
        PpoAgent::new(cfg, task, policy, aligngym_agents::RewardSignal::Gold, 0)
    }

    /// W5's agent: GRPO on W3's task, 32 prompts × G = 8 completions of 48 tokens, one update
    /// (TRL's `GRPOTrainer` defaults otherwise: β = 0, `dapo` loss).
    pub fn grpo_agent(&self) -> Result<GrpoAgent> {
        let cfg = GrpoConfig {
            num_prompts: BATCH as usize,
            num_generations: 8,
            max_new_tokens: NEW_TOKENS as usize,
            temperature: 1.0,
            learning_rate: 1e-6,
            ..Default::default()
        };
        GrpoAgent::new(
            cfg,
            self.task(),
            self.policy.duplicate(true)?,
            aligngym_agents::RewardSignal::Gold,
            0,
        )
    }

    /// W6's agent: RLOO on W3's task, 32 prompts × k = 4 completions of 48 tokens, one update
    /// (TRL's `RLOOTrainer` defaults otherwise: β = 0.05, so a reference pass).
    pub fn rloo_agent(&self) -> Result<RlooAgent> {
        let cfg = RlooConfig {
            num_prompts: BATCH as usize,
            num_generations: 4,
            max_new_tokens: NEW_TOKENS as usize,
            temperature: 1.0,
            learning_rate: 1e-6,
            ..Default::default()
        };
        RlooAgent::new(
            cfg,
            self.task(),
            self.policy.duplicate(true)?,
            aligngym_agents::RewardSignal::Gold,
            0,
        )
    }

    /// A fresh AdamW over the policy (ε = 1e-8, as the Python trainers use).
    pub fn optimizer(&self) -> AdamW {
        AdamW::new(
            &self.policy.vs,
            AdamWConfig {
                eps: 1e-8,
                ..Default::default()
            },
        )
    }
}

/// The adapters' rank in the LoRA rows of W2 and W3.
pub const LORA_RANK: usize = 16;

/// Where W2's reference log-probs come from.
pub enum DpoReference<'a> {
    /// A forward pass of this reference model each step.
    Model(&'a LmPolicy),
    /// Precomputed chosen and rejected log-probs `[B]`.
    Precomputed(&'a Tensor, &'a Tensor),
}

/// A workload of `aligngym bench` (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Sampling with the KV cache, its decoding matmuls alone, and (below SmolLM2's size)
    /// sampling without the cache.
    #[value(name = "W1")]
    W1,
    /// A DPO step, with a reference model and with precomputed reference log-probs.
    #[value(name = "W2")]
    W2,
    /// A PPO iteration.
    #[value(name = "W3")]
    W3,
    /// An SFT step.
    #[value(name = "W4")]
    W4,
    /// A GRPO iteration.
    #[value(name = "W5")]
    W5,
    /// An RLOO iteration.
    #[value(name = "W6")]
    W6,
}

/// Run the workloads `only` (every one when empty) at `size` on `device` in `dtype`, `repeats`
/// timed repetitions each.
pub fn run_bench(
    size: ModelSize,
    device: Device,
    dtype: Precision,
    repeats: usize,
    only: &[Workload],
) -> Result<BenchReport> {
    let want = |w: Workload| only.is_empty() || only.contains(&w);
    let fx = Fixture::new(size, device, dtype)?;
    let arithmetic = aligngym_agents::lm::device::matmul_arithmetic(dtype, device);
    let peak = matmul_gflops(1024, repeats.max(3), device, arithmetic)?;
    let (b, lp, n, sft_t) = (BATCH, PROMPT_LEN, NEW_TOKENS, SFT_LEN);
    let fpt = |t: i64| fx.cfg.flops_per_token(t as usize);
    let mut rows = Vec::new();
    let mut push = |name: &str, unit: &str, work: f64, secs: f64, flops: f64| {
        let g = flops / secs / 1e9;
        rows.push(BenchRow {
            workload: name.into(),
            unit: unit.into(),
            throughput: work / secs,
            seconds: secs,
            gflops: g,
            of_peak: g / peak,
        });
    };

    // W1: sampling with and without the KV cache.
    if want(Workload::W1) {
        let w1_flops =
            (b * lp) as f64 * fpt(lp) + (0..n).map(|t| b as f64 * fpt(lp + t)).sum::<f64>();
        let s = median_secs(repeats, device, || fx.sample(true))?;
        push(
            "W1 sampling (KV cache)",
            "new tokens/s",
            (b * n) as f64,
            s,
            w1_flops,
        );
        let (s, flops) = decode_matmul_floor(&fx.cfg, device, dtype.kind(), n - 1, repeats)?;
        push(
            "W1 floor: decode matmuls alone",
            "new tokens/s",
            (b * n) as f64,
            s,
            flops,
        );
        // Recomputing the prefix is a reference point at the small sizes; at SmolLM2's it takes
        // most of a minute a repetition and says nothing new.
        if size != ModelSize::Smollm2_135m {
            let w1_nocache_flops = (0..n)
                .map(|t| (b * (lp + t)) as f64 * fpt(lp + t))
                .sum::<f64>();
            let s = median_secs(repeats.min(3), device, || fx.sample(false))?;
            push(
                "W1 sampling (no cache)",
                "new tokens/s",
                (b * n) as f64,
                s,
                w1_nocache_flops,
            );
        }
    }

    // W2: DPO steps.
    if want(Workload::W2) {
        let reference = fx.policy.duplicate(false)?;
        let (ref_c, ref_r) = fx.reference_logps(&reference);
        let mut opt = fx.optimizer();
        let seq_tokens = (2 * b * (lp + n)) as f64;
        for with_ref in [true, false] {
            let s = median_secs(repeats, device, || {
                let r = if with_ref {
                    DpoReference::Model(&reference)
                } else {
                    DpoReference::Precomputed(&ref_c, &ref_r)
                };
                fx.dpo_step(&mut opt, r);
                Ok(())
            })?;
            let mult = if with_ref { 4.0 } else { 3.0 };
            push(
                if with_ref {
                    "W2 DPO step (reference model)"
                } else {
                    "W2 DPO step (precomputed ref)"
                },
                "pairs/s",
                b as f64,
                s,
                mult * seq_tokens * fpt(lp + n),
            );
        }
        // With adapters: the reference is the frozen base itself, and the backward pass skips
        // the base weights' gradients (a third of a full step's matmuls).
        let lora = fx.lora_policy()?;
        let base = lora.duplicate(false)?;
        let mut opt = AdamW::new(
            &lora.vs,
            AdamWConfig {
                eps: 1e-8,
                ..Default::default()
            },
        );
        let s = median_secs(repeats, device, || {
            fx.dpo_step_of(&lora, &mut opt, DpoReference::Model(&base));
            Ok(())
        })?;
        push(
            &format!("W2 DPO step (LoRA r={LORA_RANK}, ref = base)"),
            "pairs/s",
            b as f64,
            s,
            3.0 * seq_tokens * fpt(lp + n),
        );
    }

    // W4: SFT step.
    if want(Workload::W4) {
        let mut opt = fx.optimizer();
        let toks = random_ids(b, sft_t, fx.cfg.vocab_size as i64, device);
        let s = median_secs(repeats, device, || {
            fx.sft_step(&mut opt, &toks);
            Ok(())
        })?;
        push(
            "W4 SFT step",
            "tokens/s",
            (b * sft_t) as f64,
            s,
            3.0 * (b * sft_t) as f64 * fpt(sft_t),
        );
    }

    // W3, W5 and W6: PPO, GRPO and RLOO iterations through the real agents.
    if want(Workload::W3) {
        let (s, flops) = time_updates(&mut fx.ppo_agent()?, repeats.min(5), device)?;
        push("W3 PPO iteration", "iterations/s", 1.0, s, flops);
        let mut agent = fx.ppo_agent_of(fx.lora_policy()?)?;
        let (s, flops) = time_updates(&mut agent, repeats.min(5), device)?;
        push(
            &format!("W3 PPO iteration (LoRA r={LORA_RANK})"),
            "iterations/s",
            1.0,
            s,
            flops,
        );
    }
    if want(Workload::W5) {
        let (s, flops) = time_updates(&mut fx.grpo_agent()?, repeats.min(5), device)?;
        push("W5 GRPO iteration", "iterations/s", 1.0, s, flops);
    }
    if want(Workload::W6) {
        let (s, flops) = time_updates(&mut fx.rloo_agent()?, repeats.min(5), device)?;
        push("W6 RLOO iteration", "iterations/s", 1.0, s, flops);
    }

    Ok(BenchReport {
        size: format!("{size:?}").to_lowercase(),
        device: aligngym_agents::lm::device::describe(device),
        threads: tch::get_num_threads(),
        dtype: dtype.to_string(),
        arithmetic: if arithmetic == Kind::Float {
            "fp32"
        } else {
            "bf16"
        }
        .to_string(),
        matmul_gflops: peak,
        rows,
    })
}

/// What the matmuls of `steps` decoding steps alone take (median seconds) and their FLOPs: a
/// `[BATCH, I]` product with every weight matrix of `cfg`'s shape, fused as decoding fuses them
/// (q/k/v; gate and up), and the LM head, in `kind`, through the same libtorch call decoding
/// makes (`linear` for the Llama family; GPT-2's pre-transposed `mm`). Each matrix is a tensor of
/// its own, so, as in decoding, each step reads every weight from memory. No decoding step can
/// be faster than its matmuls: this is the floor under W1 that libtorch's kernels set.
fn decode_matmul_floor(
    cfg: &GptConfig,
    device: Device,
    kind: Kind,
    steps: i64,
    repeats: usize,
) -> Result<(f64, f64)> {
    let c = cfg.n_embd as i64;
    let (h, hkv, d) = (
        cfg.n_head as i64,
        cfg.kv_heads() as i64,
        cfg.head_dim() as i64,
    );
    let m = cfg.mlp_width() as i64;
    let gated = if cfg.activation == Activation::Silu {
        2
    } else {
        1
    };
    let mut shapes = Vec::new(); // (out, in) of each weight matrix, in the order decoding reads
    for _ in 0..cfg.n_layer {
        shapes.extend([((h + 2 * hkv) * d, c), (c, c), (gated * m, c), (c, m)]);
    }
    shapes.push((cfg.vocab_size as i64, c));
    let opts = (kind, device);
    let pre_transposed = cfg.family == Family::Gpt2;
    let weights: Vec<Tensor> = shapes
        .iter()
        .map(|&(o, i)| {
            let w = Tensor::randn([o, i], opts) * 0.02; // [O, I]
            if pre_transposed {
                w.tr().contiguous() // [I, O]
            } else {
                w
            }
        })
        .collect();
    let inputs: Vec<Tensor> = shapes
        .iter()
        .map(|&(_, i)| Tensor::randn([BATCH, i], opts)) // [B, I]
        .collect();
    let s = median_secs(repeats, device, || {
        tch::no_grad(|| {
            for _ in 0..steps {
                for (w, x) in weights.iter().zip(&inputs) {
                    let _ = if pre_transposed {
                        x.mm(w)
                    } else {
                        x.linear::<Tensor>(w, None)
                    }; // [B, O]
                }
            }
        });
        Ok(())
    })?;
    let params: i64 = shapes.iter().map(|&(o, i)| o * i).sum();
    Ok((s, 2.0 * (BATCH * params * steps) as f64))
}

/// The median seconds of an agent's update over `repeats` (after a warm-up) and the FLOPs one
/// update adds to its budget.
fn time_updates(agent: &mut dyn Agent, repeats: usize, device: Device) -> Result<(f64, f64)> {
    let mut step = 0u64;
    let mut flops_before = agent.budget().flops;
    let mut flops_per_update = 0.0;
    let s = median_secs(repeats, device, || {
        agent.update(step)?;
        step += 1;
        let f = agent.budget().flops;
        flops_per_update = f - flops_before;
        flops_before = f;
        Ok(())
    })?;
    Ok((s, flops_per_update))
}

/// The report as a table.
pub fn format_report(r: &BenchReport) -> String {
    let arithmetic = if r.arithmetic == r.dtype {
        String::new()
    } else {
        format!(", its matmuls in {} arithmetic", r.arithmetic)
    };
    let mut s = format!(
        "aligngym bench — size {}, device {}, {}{arithmetic} (1024³ matmul {:.1} GFLOP/s)\n",
        r.size, r.device, r.dtype, r.matmul_gflops
    );
    s.push_str(&format!(
        "{:<32} {:>14} {:<14} {:>10} {:>9} {:>8}\n",
        "workload", "throughput", "unit", "s/rep", "GFLOP/s", "of peak"
    ));
    for x in &r.rows {
        s.push_str(&format!(
            "{:<32} {:>14.2} {:<14} {:>10.4} {:>9.1} {:>7.1}%\n",
            x.workload,
            x.throughput,
            x.unit,
            x.seconds,
            x.gflops,
            100.0 * x.of_peak
        ));
    }
    s
}
