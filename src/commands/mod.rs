//! The work behind each CLI command, callable from tests and from the sweep driver.

pub mod bench;
pub mod check_env;
pub mod claims;
pub mod compare;
pub mod envs;
pub mod episodes;
pub mod eval;
pub mod import;
pub mod merge;
pub mod plot;
pub mod prefs;
pub mod report;
pub mod sample;
pub mod sft;
pub mod status;
pub mod sweep;
pub mod train;
pub mod train_rm;

use crate::pipeline::StageCost;
use aligngym_agents::lm::device::DtypeChoice;
use aligngym_agents::lm::fsio;
use aligngym_agents::lm::sampling::SamplingConfig;
use aligngym_agents::stages::preferences::{make_pairs, Branching, PrefsConfig};
use aligngym_agents::stages::sft::{self as sft_stage, SftConfig, SftLogRow};
use aligngym_agents::{
    AgentError, GptConfig, LmPolicy, Result, RewardModel, RmConfig, RmReport, Tokenizer,
};
use aligngym_agents::{DeviceChoice, Precision};
use aligngym_envs::{
    derive_seed, BradleyTerryOracle, OracleConfig, PreferencePair, SftRecord, Task, TextCodec,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A progress bar on stderr (hidden when stderr is not a terminal or `quiet`).
pub fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Progress as lines, for output that is not a terminal (a log file, CI, a Slurm log) where bars
/// draw nothing: one line per finished run and a heartbeat a minute, each with the elapsed time
/// and an estimate of what is left (from the mean time per finished run).
pub struct ProgressLines {
    what: String,
    total: usize,
    done: usize,
    start: std::time::Instant,
    last: std::time::Instant,
    on: bool,
}

impl ProgressLines {
    /// Lines for `total` runs of `what`, when stderr is not a terminal and not `quiet`.
    pub fn new(what: &str, total: usize, quiet: bool) -> Self {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        ProgressLines {
            what: what.to_string(),
            total,
            done: 0,
            start: now,
            last: now,
            on: !quiet && !std::io::stderr().is_terminal(),
        }
    }

    fn status(&self) -> String {
        let el = self.start.elapsed().as_secs_f64();
        let left = if self.done == 0 {
            "unknown".to_string()
        } else {
            hms(el / self.done as f64 * (self.total - self.done.min(self.total)) as f64)
        };
        format!("elapsed {}, about {left} left", hms(el))
    }

    /// A run finished (or failed).
    pub fn finished(&mut self, id: &str, ok: bool) {
        self.done += 1;
        if self.on {
            eprintln!(
                "{} [{}/{}] run {id} {} ({})",
                self.what,
                self.done,
                self.total,
                if ok { "done" } else { "FAILED" },
                self.status()
            );
            self.last = std::time::Instant::now();
        }
    }

    /// A line when a minute has passed without one.
    pub fn heartbeat(&mut self, running: usize) {
        if self.on && self.last.elapsed().as_secs() >= 60 {
            eprintln!(
                "{} [{}/{}] {running} running ({})",
                self.what,
                self.done,
                self.total,
                self.status()
            );
            self.last = std::time::Instant::now();
        }
    }
}

/// Seconds as `1h02m03s`, `2m03s` or `3s`.
pub fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, x) => format!("{x}s"),
        (0, m, x) => format!("{m}m{x:02}s"),
        (h, m, x) => format!("{h}h{m:02}m{x:02}s"),
    }
}

/// Model sizes by name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ModelSize {
    /// 4 layers, 4 heads, width 128, context 128.
    Tiny,
    /// 6 layers, 8 heads, width 256, context 128.
    Small,
    /// SmolLM2-135M's shape (Llama: 30 layers, width 576, 9 query / 3 key-value heads, MLP 1536,
    /// vocabulary 49,152, tied head), for benchmarks at a real model's size.
    #[value(name = "smollm2-135m")]
    #[serde(rename = "smollm2-135m")]
    Smollm2_135m,
}

impl ModelSize {
    /// The transformer shape for a vocabulary (SmolLM2's has its own).
    pub fn config(self, vocab: usize) -> GptConfig {
        match self {
            Self::Tiny => GptConfig::tiny(vocab),
            Self::Small => GptConfig::small(vocab),
            Self::Smollm2_135m => GptConfig {
                family: aligngym_agents::Family::Llama,
                n_kv_head: Some(3),
                intermediate_size: Some(1536),
                activation: aligngym_agents::Activation::Silu,
                rope_theta: 100_000.0,
                norm_eps: 1e-5,
                tie_word_embeddings: true,
                ..GptConfig::gpt2(49_152, 30, 9, 576, 2048)
            },
        }
    }
    /// The vocabulary a benchmark at this size uses.
    pub fn bench_vocab(self) -> usize {
        match self {
            Self::Tiny => 512,
            Self::Small => 4096,
            Self::Smollm2_135m => 49_152,
        }
    }
}

/// `path` made absolute and normalised lexically (`.` and `..` resolved), without touching the
/// disk beyond the current directory and the longest existing prefix (symlinks there resolved).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let cwd = std::env::current_dir().map_err(|e| AgentError::io(".", e))?;
    let joined = cwd.join(path);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    // Resolve symlinks in the part that exists, so two spellings of one folder compare equal.
    let mut existing = out.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(n) => rest.push(n.to_os_string()),
            None => break,
        }
        existing.pop();
    }
    let mut resolved = existing.canonicalize().unwrap_or(existing);
    resolved.extend(rest.iter().rev());
    Ok(resolved)
}

/// The `--out` contract: `out` may never be `/`, the current directory or a folder above it, nor
/// be, contain or sit inside one of the command's `inputs`; it must not exist or be an empty
/// directory, unless `overwrite` (or `ours(out)`: a folder this command made and may continue,
/// such as a sweep's). Checked before anything is written.
pub fn check_out(
    out: &Path,
    inputs: &[(&str, &Path)],
    overwrite: bool,
    ours: impl Fn(&Path) -> bool,
) -> Result<()> {
    let refuse = |why: String| {
        Err(AgentError::config(
            "--out",
            format!("refusing to write to {}: {why}", out.display()),
        ))
    };
    let abs = absolute(out)?;
    let cwd = absolute(Path::new("."))?;
    if abs.parent().is_none() {
        return refuse("it is the root folder".into());
    }
    if cwd.starts_with(&abs) {
        return refuse(if cwd == abs {
            "it is the current directory".into()
        } else {
            "it holds the current directory".into()
        });
    }
    for (flag, input) in inputs {
        let i = absolute(input)?;
        if i == abs {
            return refuse(format!("it is the input {flag} {}", input.display()));
        }
        if i.starts_with(&abs) {
            return refuse(format!("it holds the input {flag} {}", input.display()));
        }
        if abs.starts_with(&i) {
            return refuse(format!("it is inside the input {flag} {}", input.display()));
        }
    }
    if !out.exists() || overwrite || ours(out) {
        return Ok(());
    }
    if out.is_dir() {
        let n = std::fs::read_dir(out)
            .map_err(|e| AgentError::io(out, e))?
            .count();
        if n == 0 {
            return Ok(());
        }
        return refuse(format!(
            "it is a folder with {n} entr{} this command did not make; choose a new or empty folder, or pass --overwrite to replace it",
            if n == 1 { "y" } else { "ies" }
        ));
    }
    refuse("it already exists; choose a new name, or pass --overwrite to replace it".into())
}

/// Remove what a failed command wrote to `out`: the folder itself when the command made it, else
/// its contents (it was empty: [`check_out`] accepts no other).
pub fn discard(out: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(out);
    } else if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Write text to `path` durably (a temporary sibling, fsync, rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    fsio::write_atomic(path, text.as_bytes())
}

/// Read a corpus file: one example per line; blank lines are skipped; none at all is an error.
pub fn read_corpus(path: &Path) -> Result<Vec<SftRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    let lines = corpus_records(text.lines().map(String::from).collect());
    if lines.is_empty() {
        return Err(AgentError::Data(format!(
            "{}: the corpus is empty (expected one example per line)",
            path.display()
        )));
    }
    Ok(lines)
}

/// A corpus's non-blank lines as texts to train on.
pub fn corpus_records(lines: Vec<String>) -> Vec<SftRecord> {
    lines
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(SftRecord::Text)
        .collect()
}

/// Where SFT starts.
pub enum SftStart {
    /// A fresh model of this size, with a tokenizer trained on the data's text.
    Fresh(ModelSize),
    /// A pretrained checkpoint: its tokenizer and chat template, its weights.
    Pretrained(Box<LmPolicy>),
}

/// Every string of the data, for training a tokenizer on.
fn record_texts(data: &[SftRecord]) -> Vec<String> {
    data.iter()
        .flat_map(|r| match r {
            SftRecord::Text(t) => vec![t.clone()],
            SftRecord::PromptCompletion { prompt, completion } => {
                vec![prompt.clone(), completion.clone()]
            }
            SftRecord::Conversation(ms) => ms.iter().map(|m| m.content.clone()).collect(),
        })
        .collect()
}

/// Train the base policy: SFT on `data` from `start`; writes a checkpoint, `sft_log.csv` and
/// `corpus_stats.json` (examples, tokens, the tokens trained on, the unigram entropy) to `out`
/// (nothing is left there on failure). Returns the loss curve.
pub fn run_sft(
    data: &[SftRecord],
    start: SftStart,
    cfg: &SftConfig,
    seed: u64,
    device: tch::Device,
    out: &Path,
    quiet: bool,
) -> Result<Vec<SftLogRow>> {
    cfg.validate()?;
    let mut policy = match start {
        SftStart::Fresh(size) => {
            let tokenizer = Tokenizer::train(&record_texts(data), cfg.vocab_size)?;
            let (vs, model) =
                sft_stage::init_model(&size.config(tokenizer.vocab_size()), device, seed)?;
            LmPolicy {
                vs,
                model,
                tokenizer,
                adapter_base: None,
            }
        }
        SftStart::Pretrained(p) => *p,
    };
    let gcfg = policy.model.config().clone();
    let clock = std::time::Instant::now();
    let examples = sft_stage::encode_records(&policy.tokenizer, data, gcfg.block_size)?;
    policy.model.set_precision(cfg.dtype);
    let (vs, model, tok) = (&policy.vs, &policy.model, &policy.tokenizer);
    let pb = progress(cfg.steps as u64, "sft", quiet);
    let rows = sft_stage::train(vs, model, &examples, tok.pad_id(), cfg, seed, |r| {
        pb.inc(1);
        if r.step % 10 == 0 {
            pb.set_message(format!("loss {:.3}", r.loss));
        }
    })?;
    pb.finish_and_clear();
    // Everything is staged beside `out` and swapped in whole; an error leaves nothing behind.
    let staged = fsio::Staged::for_dir(out)?;
    let stage = staged.path();
    policy.write_into(stage)?;
    let mut csv = String::from("step,loss,lr,grad_norm\n");
    for r in &rows {
        csv.push_str(&format!("{},{},{},{}\n", r.step, r.loss, r.lr, r.grad_norm));
    }
    std::fs::write(stage.join("sft_log.csv"), csv)
        .map_err(|e| AgentError::io(stage.join("sft_log.csv"), e))?;
    let stats = serde_json::json!({
        "examples": examples.len(),
        "tokens": examples.iter().map(|e| e.ids.len()).sum::<usize>(),
        "trained_tokens": examples.iter().map(|e| e.targets()).sum::<usize>(),
        "unigram_entropy_nats": sft_stage::unigram_entropy(&examples),
    });
    std::fs::write(stage.join("corpus_stats.json"), format!("{stats}\n"))
        .map_err(|e| AgentError::io(stage, e))?;
    let cost = StageCost {
        wall_seconds: clock.elapsed().as_secs_f64(),
        spent: aligngym_agents::metric::Budget {
            train_tokens: rows.iter().map(|r| r.tokens as u64).sum(),
            flops: rows.iter().map(|r| r.flops).sum(),
            ..Default::default()
        },
    };
    crate::pipeline::write(&stage.join(crate::pipeline::COST_FILE), &cost)?;
    staged.commit()?;
    Ok(rows)
}

/// Build `pairs` oracle-labelled preference pairs from `generator` on `task`.
#[allow(clippy::too_many_arguments)]
pub fn build_prefs(
    generator: &LmPolicy,
    task: Arc<dyn Task>,
    pairs: usize,
    per_prompt: usize,
    oracle: OracleConfig,
    sampling: SamplingConfig,
    source: &str,
    skip_ties: bool,
    branching: Branching,
    seed: u64,
) -> Result<(Vec<PreferencePair>, StageCost)> {
    let clock = std::time::Instant::now();
    let mut oracle = BradleyTerryOracle::new(task.gold(), oracle, derive_seed(seed, 0x0ac1e))?;
    let cfg = PrefsConfig {
        pairs,
        samples_per_prompt: per_prompt,
        sampling,
        source: source.to_string(),
        skip_ties,
        branching,
    };
    let (out, mut spent) = make_pairs(generator, task, &mut oracle, &cfg, seed)?;
    spent.oracle_queries = aligngym_envs::PreferenceOracle::queries(&oracle);
    let cost = StageCost {
        wall_seconds: clock.elapsed().as_secs_f64(),
        spent,
    };
    Ok((out, cost))
}

/// Train a reward model on `pairs` (which cost `pairs_cost` to make) from `init`, save it to
/// `out` with its cost (training plus the pairs') and report, and return the report.
pub fn train_rm(
    init: &LmPolicy,
    pairs: &[PreferencePair],
    pairs_cost: &StageCost,
    cfg: &RmConfig,
    seed: u64,
    out: &Path,
    quiet: bool,
) -> Result<RmReport> {
    let clock = std::time::Instant::now();
    let pb = progress(0, "rm", quiet);
    let (rm, report) = RewardModel::train(init, pairs, cfg, seed, |s, total, loss| {
        pb.set_length(total as u64);
        pb.set_position(s as u64 + 1);
        pb.set_message(format!("loss {loss:.3}"));
    })?;
    pb.finish_and_clear();
    rm.save(out)?;
    let cost = StageCost {
        wall_seconds: clock.elapsed().as_secs_f64(),
        spent: report.spent,
    };
    crate::pipeline::write(
        &out.join(crate::pipeline::COST_FILE),
        &cost.plus(pairs_cost),
    )?;
    let json =
        serde_json::to_string_pretty(&report).map_err(|e| AgentError::Data(e.to_string()))?;
    write_atomic(&out.join("rm_report.json"), &json)?;
    Ok(report)
}

/// `make gpu-check`: print the device, run forward/backward and sampling on CUDA, compare with CPU.
/// Fails (non-zero exit) when CUDA is not usable — it never falls back to CPU.
pub fn gpu_check() -> Result<()> {
    use aligngym_agents::lm::model::Gpt;
    use aligngym_agents::lm::sampling::{generate, sequence_logprobs};
    use tch::{nn, Device, Kind, Tensor};
    println!(
        "tch::Cuda::is_available() = {}, cudnn = {}, devices = {}",
        tch::Cuda::is_available(),
        tch::Cuda::cudnn_is_available(),
        tch::Cuda::device_count()
    );
    let cuda = aligngym_agents::DeviceChoice::Cuda.resolve()?;
    println!("device: {}", aligngym_agents::lm::device::describe(cuda));
    let cfg = GptConfig::tiny(512);
    tch::manual_seed(0);
    let vs_cpu = nn::VarStore::new(Device::Cpu);
    let m_cpu = Gpt::new(&vs_cpu.root(), &cfg)?;
    let mut vs_gpu = nn::VarStore::new(cuda);
    let m_gpu = Gpt::new(&vs_gpu.root(), &cfg)?;
    vs_gpu.copy(&vs_cpu)?;
    let prompts: Vec<Vec<u32>> = (0..8u32)
        .map(|i| (0..(4 + i)).map(|j| 3 + (i * 7 + j * 13) % 500).collect())
        .collect();
    let s = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 24,
    };
    tch::manual_seed(1);
    let g = generate(&m_gpu, &prompts, 0, 2, &s, cuda)?;
    let toks = g.tokens.shallow_clone();
    // The same sequences scored on both devices: forward logits and backward gradients agree.
    let on = |m: &Gpt, d: Device| {
        let s = aligngym_agents::lm::sampling::Sequences {
            prompt: g.prompt.to_device(d),
            prompt_valid: g.prompt_valid.to_device(d),
            tokens: toks.to_device(d),
            valid: g.mask.to_device(d).to_kind(Kind::Bool),
            mask: g.mask.to_device(d),
        };
        sequence_logprobs(m, &s, 1.0, true)
    };
    let lc = on(&m_cpu, Device::Cpu);
    let lg = on(&m_gpu, cuda);
    let dl = (&lc - lg.to_device(Device::Cpu))
        .abs()
        .max()
        .double_value(&[]);
    lc.sum(Kind::Float).backward();
    lg.sum(Kind::Float).backward();
    let gc = vs_cpu.variables()["h.0.attn.c_attn.weight"].grad();
    let gg = vs_gpu.variables()["h.0.attn.c_attn.weight"]
        .grad()
        .to_device(Device::Cpu);
    let dg =
        (&gc - &gg).abs().max().double_value(&[]) / gc.abs().max().double_value(&[]).max(1e-12);
    let dsample = (&g.logprobs.to_device(Device::Cpu) - lc.detach())
        .abs()
        .max()
        .double_value(&[]);
    println!("sampled {} tokens on {cuda:?}; max |Δ log-prob| CUDA vs CPU {dl:.2e}; sampled vs recomputed {dsample:.2e}; relative max |Δ grad| {dg:.2e}", g.mask.sum(Kind::Float).double_value(&[]));
    let _ = Tensor::zeros([1], (Kind::Float, cuda));
    if dl > 1e-3 || dg > 1e-2 || dsample > 1e-3 {
        return Err(AgentError::Device(format!(
            "CUDA and CPU disagree: Δlogp {dl:.2e}, Δgrad {dg:.2e}, Δsample {dsample:.2e}"
        )));
    }
    // bf16 on the GPU (fp32 master weights) tracks the fp32 CPU pass to bf16's precision.
    let mut m_bf16 = m_gpu;
    m_bf16.set_precision(aligngym_agents::Precision::Bf16);
    let g16 = generate(&m_bf16, &prompts, 0, 2, &s, cuda)?;
    let l16 = tch::no_grad(|| on(&m_bf16, cuda));
    let d16 = (&lc.detach() - l16.to_device(Device::Cpu))
        .abs()
        .max()
        .double_value(&[]);
    println!(
        "bf16: sampled {} tokens; max |Δ log-prob| bf16 CUDA vs fp32 CPU {d16:.2e}",
        g16.mask.sum(Kind::Float).double_value(&[])
    );
    if d16.is_nan() || d16 >= 0.1 {
        return Err(AgentError::Device(format!(
            "bf16 on CUDA strays from fp32: Δlogp {d16:.2e}"
        )));
    }
    println!("gpu-check: OK");
    Ok(())
}

/// Parameters of the model in checkpoint `dir` (0 when it cannot be read: the caller's later load
/// says why).
pub fn params_of(dir: &Path) -> usize {
    aligngym_agents::lm::checkpoint::read_config(dir).map_or(0, |c| c.model.num_params())
}

/// Where and in what precision a command computes.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Compute {
    /// Device: auto (CUDA when available), cpu or cuda (an error without CUDA).
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Compute precision: auto (the default; for `train --resume`, the run's own) picks bf16
    /// where the device runs it natively (CUDA with bf16, a CPU with AMX or AVX512-BF16: a matmul
    /// read from the CPU's identification, never timed) and fp32 elsewhere; or fp32, or bf16 (bf16 matmuls and KV
    /// cache; fp32 master weights, norms, softmaxes, losses and attention under training).
    #[arg(long)]
    pub dtype: Option<DtypeChoice>,
}

impl Compute {
    /// The precision to compute in on `device` for a model of `params` parameters (`auto` when
    /// none was asked for).
    pub fn precision(&self, device: tch::Device, params: usize) -> Precision {
        self.dtype.unwrap_or_default().resolve(device, params)
    }
}
