//! One decoder-only transformer configured by family (Radford et al. 2019; Touvron et al. 2023):
//!
//! - **GPT-2**: token and learned position embeddings, pre-LayerNorm blocks with fused QKV
//!   attention and a GELU MLP, a final LayerNorm and an LM head tied to the token embedding.
//! - **Llama**: no position table but rotary embeddings (RoPE, `rope_theta`) on queries and keys,
//!   RMSNorm, a SwiGLU MLP, grouped-query attention (fewer key/value heads than query heads), a
//!   tied or separate LM head. SmolLM2, TinyLlama and Llama 3 shapes are configurations of it.
//! - **Qwen2**: Llama with biases on the query, key and value projections.
//!
//! Every family has a value head and a scalar reward head over the trunk output. Incremental
//! decoding keeps a preallocated KV cache per layer (of the key/value heads).
//!
//! Variable names: GPT-2 keeps the names aligngym always used (`wte`, `h.0.attn.c_attn`, …; the
//! Hugging Face layout is mapped in [`crate::lm::hf`]); Llama and Qwen2 use transformers' own names
//! (`model.layers.0.self_attn.q_proj`, …), so their checkpoints need no renaming.

use crate::lm::device::Precision;
use crate::lm::lora::LoraConfig;
use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

mod decode;
pub use decode::{key_bias, DecodeWeights};

/// The transformer family: which block layout the weights have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// GPT-2: learned positions, LayerNorm, GELU MLP, fused QKV with biases, tied LM head.
    #[default]
    Gpt2,
    /// Llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases.
    Llama,
    /// Qwen2: Llama plus biases on the query, key and value projections.
    Qwen2,
}

impl Family {
    /// transformers' name of the module aligngym names `ours` (GPT-2's live under
    /// `transformer.`; the Llama family's names are transformers' own).
    pub fn transformers_module(self, ours: &str) -> String {
        match self {
            Family::Gpt2 => format!("transformer.{ours}"),
            Family::Llama | Family::Qwen2 => ours.to_string(),
        }
    }

    /// PEFT's default LoRA targets for the family.
    pub const fn lora_default_targets(self) -> &'static [&'static str] {
        match self {
            Family::Gpt2 => &["c_attn"],
            Family::Llama | Family::Qwen2 => &["q_proj", "v_proj"],
        }
    }

    /// Rotary position embeddings instead of a learned position table.
    pub fn rotary(self) -> bool {
        self != Family::Gpt2
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
        })
    }
}

/// The MLP's nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (the erf form; aligngym's own GPT-2 models).
    #[default]
    Gelu,
    /// GELU with the tanh approximation, as OpenAI's GPT-2 (transformers' `gelu_new`).
    GeluTanh,
    /// SiLU gating a second projection (SwiGLU; the Llama family).
    Silu,
}

impl Activation {
    /// libtorch's `approximate` argument of `gelu`.
    fn gelu_approximate(self) -> &'static str {
        if self == Activation::GeluTanh {
            "tanh"
        } else {
            "none"
        }
    }
}

/// How RoPE's frequencies are stretched for contexts past the pretraining length, as
/// transformers' `rope_parameters` (`rope_scaling` in 4.x) names the kinds aligngym computes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// How many times longer the context is than in pretraining.
        factor: f64,
    },
    /// Llama 3.1's: wavelengths past the pretraining context divided by `factor`, those shorter
    /// than a `high_freq_factor`-th of it kept, and a smooth blend between.
    Llama3 {
        /// How many times longer the context is than in pretraining.
        factor: f64,
        /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length of pretraining.
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    fn validate(&self) -> Result<()> {
        let (factor, bands) = match *self {
            RopeScaling::Linear { factor } => (factor, true),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => (
                factor,
                low_freq_factor > 0.0
                    && high_freq_factor > low_freq_factor
                    && original_max_position_embeddings > 0,
            ),
        };
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(AgentError::config("rope_scaling", "expected factor ≥ 1"));
        }
        if !bands {
            return Err(AgentError::config(
                "rope_scaling",
                "expected 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0",
            ));
        }
        Ok(())
    }

    /// The scaled inverse frequencies from plain RoPE's `inv_freq [D/2]` (fp32), computed as
    /// transformers computes them so that the logits agree to fp32 rounding.
    fn apply(&self, inv_freq: Tensor) -> Tensor {
        match *self {
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                let wavelen = (2.0 * std::f64::consts::PI) / &inv_freq; // [D/2]
                let long = wavelen.gt(low_wavelen);
                let scaled = inv_freq.where_self(&long.logical_not(), &(&inv_freq / factor));
                let smooth =
                    (old / &wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor); // [D/2]
                let blended: Tensor = (1.0 - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen.ge(high_wavelen).logical_and(&long.logical_not());
                blended.where_self(&medium, &scaled)
            }
        }
    }
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// Shape of the transformer; serialised into aligngym's run files (checkpoints carry transformers'
/// `config.json`, see [`crate::lm::hf`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// The block layout.
    #[serde(default)]
    pub family: Family,
    /// Number of token ids (the tokenizer's vocabulary size).
    pub vocab_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention (query) heads per block; must divide `n_embd`.
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Longest sequence (prompt + completion): the position table's length, or the longest
    /// context a rotary model is used at.
    pub block_size: usize,
    /// Dropout probability in training; 0 by default (RLHF turns dropout off everywhere).
    #[serde(default)]
    pub dropout: f64,
    /// Key/value heads (grouped-query attention; must divide `n_head`); `None` means `n_head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_head: Option<usize>,
    /// Width of the MLP's hidden layer; `None` means `4 · n_embd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
    /// The MLP's nonlinearity (GELU for GPT-2, SiLU for the Llama family).
    #[serde(default)]
    pub activation: Activation,
    /// RoPE's base (the Llama family).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RoPE's frequency scaling (Llama 3.1's `llama3`, `linear`); `None` for plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Channels per attention head where a checkpoint sets it apart from `n_embd / n_head` (the
    /// query projection is then `n_head · head_dim` wide); `None` means `n_embd / n_head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Epsilon of the LayerNorms or RMSNorms.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// The LM head is the token embedding (else a separate `lm_head` matrix).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

impl GptConfig {
    /// A GPT-2 of the given shape (exact GELU, tied head, no dropout).
    pub fn gpt2(
        vocab_size: usize,
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        block_size: usize,
    ) -> Self {
        Self {
            family: Family::Gpt2,
            vocab_size,
            n_layer,
            n_head,
            n_embd,
            block_size,
            dropout: 0.0,
            n_kv_head: None,
            intermediate_size: None,
            activation: Activation::Gelu,
            rope_theta: default_rope_theta(),
            rope_scaling: None,
            head_dim: None,
            norm_eps: default_norm_eps(),
            tie_word_embeddings: true,
        }
    }
    /// The "tiny" size: 4 layers, 4 heads, width 128, context 128.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::gpt2(vocab_size, 4, 4, 128, 128)
    }
    /// The "small" size: 6 layers, 8 heads, width 256, context 128.
    pub fn small(vocab_size: usize) -> Self {
        Self::gpt2(vocab_size, 6, 8, 256, 128)
    }
    /// Key/value heads per block.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }
    /// Channels per attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head.max(1))
    }
    /// Width of the attention's query and output projections: `n_head · head_dim`.
    pub fn attention_width(&self) -> usize {
        self.n_head * self.head_dim()
    }
    /// Width of the MLP's hidden layer.
    pub fn mlp_width(&self) -> usize {
        self.intermediate_size.unwrap_or(4 * self.n_embd)
    }
    /// Check the fields.
    pub fn validate(&self) -> Result<()> {
        let pos = |f: &str, v: usize| {
            if v == 0 {
                Err(AgentError::config(f, "must be > 0"))
            } else {
                Ok(())
            }
        };
        pos("vocab_size", self.vocab_size)?;
        pos("n_layer", self.n_layer)?;
        pos("n_head", self.n_head)?;
        pos("n_embd", self.n_embd)?;
        pos("block_size", self.block_size)?;
        pos("n_kv_head", self.kv_heads())?;
        pos("intermediate_size", self.mlp_width())?;
        if let Some(d) = self.head_dim {
            pos("head_dim", d)?;
            if self.family == Family::Gpt2 && d * self.n_head != self.n_embd {
                return Err(AgentError::config(
                    "head_dim",
                    "GPT-2's heads split n_embd evenly",
                ));
            }
        } else if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(AgentError::config(
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        if !self.n_head.is_multiple_of(self.kv_heads()) {
            return Err(AgentError::config(
                "n_kv_head",
                format!("{} does not divide n_head {}", self.kv_heads(), self.n_head),
            ));
        }
        if self.family.rotary() && !self.head_dim().is_multiple_of(2) {
            return Err(AgentError::config(
                "n_head",
                "rotary embeddings need an even head width",
            ));
        }
        if self.family == Family::Gpt2 && self.kv_heads() != self.n_head {
            return Err(AgentError::config(
                "n_kv_head",
                "GPT-2 has as many key/value heads as query heads",
            ));
        }
        let gated = self.activation == Activation::Silu;
        if gated == (self.family == Family::Gpt2) {
            return Err(AgentError::config(
                "activation",
                format!("{:?} is not the {} family's", self.activation, self.family),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(AgentError::config("dropout", "expected a value in [0, 1)"));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(AgentError::config("norm_eps", "expected a value in (0, 1)"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(AgentError::config("rope_theta", "expected a value > 1"));
        }
        if let Some(r) = &self.rope_scaling {
            if !self.family.rotary() {
                return Err(AgentError::config(
                    "rope_scaling",
                    "GPT-2 has no rotary embeddings",
                ));
            }
            r.validate()?;
        }
        Ok(())
    }
    /// Parameters of the trunk and LM head (value and reward heads excluded); counted in 128 bits
    /// and saturated, so that an absurd config reads as too large rather than wrapping around.
    pub fn num_params(&self) -> usize {
        let w = |x: usize| x as u128;
        let (c, m, v) = (w(self.n_embd), w(self.mlp_width()), w(self.vocab_size));
        let kv = w(self.kv_heads()) * w(self.head_dim());
        let a = w(self.attention_width());
        let head = if self.tie_word_embeddings { 0 } else { v * c };
        let n = match self.family {
            Family::Gpt2 => {
                let per_layer =
                    4 * c + (3 * c * c + 3 * c) + (c * c + c) + (c * m + m) + (m * c + c);
                v * c + w(self.block_size) * c + w(self.n_layer) * per_layer + 2 * c + head
            }
            Family::Llama | Family::Qwen2 => {
                let bias = if self.family == Family::Qwen2 {
                    a + 2 * kv
                } else {
                    0
                };
                let per_layer = 2 * c + 2 * c * a + 2 * c * kv + bias + 3 * c * m;
                v * c + w(self.n_layer) * per_layer + c + head
            }
        };
        usize::try_from(n).unwrap_or(usize::MAX)
    }
    /// Forward FLOPs per token for a sequence of length `t` (matmuls ×2, attention included).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let (c, m) = (self.n_embd as f64, self.mlp_width() as f64);
        let kv = (self.kv_heads() * self.head_dim()) as f64;
        let a = self.attention_width() as f64;
        let l = self.n_layer as f64;
        let mlp = if self.family == Family::Gpt2 {
            2.0
        } else {
            3.0
        } * c
            * m;
        let per_layer = 2.0 * c * a + 2.0 * c * kv + mlp;
        2.0 * (l * per_layer + self.vocab_size as f64 * c) + 2.0 * l * 2.0 * t as f64 * a
    }
    /// [`GptConfig::flops_per_token`] without the LM head: a pass that reads the trunk only (a
    /// value or reward head costs next to nothing).
    pub fn trunk_flops_per_token(&self, t: usize) -> f64 {
        self.flops_per_token(t) - 2.0 * (self.vocab_size * self.n_embd) as f64
    }
}

/// One layer's cached keys and values, preallocated to the longest sequence.
pub struct LayerCache {
    k: Tensor, // [B, H_kv, T_max, D]
    v: Tensor, // [B, H_kv, T_max, D]
}

/// The KV cache of every layer, and how many positions it holds.
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
    /// Rows holding copies of one row's first slots, when [`KvCache::select_rows`] made them.
    shared: Option<SharedPrefix>,
}

/// Which rows of a cache hold identical first `slots` positions: the G samples of a prompt, each
/// with a copy of its prefill. Those slots are never written again, so a reader may take any
/// row's copy; the host attention reads one per group while it stays in the CPU's caches.
#[derive(Clone, Debug)]
pub(crate) struct SharedPrefix {
    /// Positions shared.
    pub slots: usize,
    /// Per row, the lowest row with the same copy (itself if none is lower).
    pub first: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `max_len` positions.
    pub fn new(cfg: &GptConfig, batch: i64, max_len: i64, device: Device, kind: Kind) -> Self {
        let (h, d) = (cfg.kv_heads() as i64, cfg.head_dim() as i64);
        let layers = (0..cfg.n_layer)
            .map(|_| LayerCache {
                k: Tensor::zeros([batch, h, max_len, d], (kind, device)),
                v: Tensor::zeros([batch, h, max_len, d], (kind, device)),
            })
            .collect();
        Self {
            layers,
            len: 0,
            shared: None,
        }
    }
    /// A cache for `batch` sequences that holds exactly what was written to it, growing by
    /// concatenation: for passes that write it once or twice and read it with gradients (the
    /// shared prompt of a scoring or training pass), where a preallocated one costs copies.
    pub fn growing(cfg: &GptConfig, batch: i64, device: Device, kind: Kind) -> Self {
        Self::new(cfg, batch, 0, device, kind)
    }
    /// Positions held so far.
    pub fn len(&self) -> i64 {
        self.len
    }
    /// True when nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Slots allocated (held or free).
    pub fn capacity(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.k.size()[2])
    }
    /// The cache of the sequences `rows [B']` (i64, repeats allowed): sequences that share a
    /// prompt are prefilled once and then take copies of its cache. Only the held positions are
    /// copied (the free room is fresh zeros): `index_select` over the whole preallocated cache
    /// spent 4% of a GRPO iteration copying empty slots.
    pub fn select_rows(&self, rows: &Tensor) -> Self {
        let len = self.len;
        let pick = |x: &Tensor| {
            let (_, h, t, d) = x.size4().expect("[B, H, T, D]");
            if t == len {
                // No narrow: its backward would zero-fill and copy the gradient.
                return x.index_select(0, rows); // [B', H, len, D]
            }
            let held = x.narrow(2, 0, len).index_select(0, rows); // [B', H, len, D]
            let free = Tensor::zeros([rows.size()[0], h, t - len, d], (x.kind(), x.device()));
            Tensor::cat(&[held, free], 2) // [B', H, T, D]
        };
        let layers = self
            .layers
            .iter()
            .map(|l| LayerCache {
                k: pick(&l.k),
                v: pick(&l.v),
            })
            .collect();
        // Rows copied from one row share its held positions. (Rows of `self` that were already
        // copies of each other are not recognised: their copies are read separately, as before.)
        let shared = (rows.device() == Device::Cpu && len > 0)
            .then(|| Vec::<i64>::try_from(rows).ok())
            .flatten()
            .map(|rows| {
                let mut seen = std::collections::HashMap::new();
                let first = (0..rows.len())
                    .map(|r| *seen.entry(rows[r]).or_insert(r))
                    .collect();
                SharedPrefix {
                    slots: len as usize,
                    first,
                }
            });
        Self {
            layers,
            len: self.len,
            shared,
        }
    }
    /// Make room for `more` positions after the ones held (a conversation outgrowing its first
    /// allocation), keeping what is cached.
    pub fn reserve(&mut self, more: i64) {
        let need = self.len + more - self.capacity();
        if need <= 0 {
            return;
        }
        for l in &mut self.layers {
            let (b, h, _, d) = l.k.size4().expect("[B, H, T, D]");
            let z = Tensor::zeros([b, h, need, d], (l.k.kind(), l.k.device()));
            l.k = Tensor::cat(&[&l.k, &z], 2); // [B, H, T + need, D]
            l.v = Tensor::cat(&[&l.v, &z], 2);
        }
    }
}

/// LayerNorm (GPT-2) or RMSNorm (the Llama family); computes in fp32.
enum Norm {
    Layer {
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    },
    Rms {
        weight: Tensor,
        eps: f64,
    },
}

impl Norm {
    fn new(p: nn::Path, cfg: &GptConfig) -> Self {
        let c = cfg.n_embd as i64;
        if cfg.family == Family::Gpt2 {
            Norm::Layer {
                weight: p.var("weight", &[c], nn::Init::Const(1.0)),
                bias: p.var("bias", &[c], nn::Init::Const(0.0)),
                eps: cfg.norm_eps,
            }
        } else {
            Norm::Rms {
                weight: p.var("weight", &[c], nn::Init::Const(1.0)),
                eps: cfg.norm_eps,
            }
        }
    }
    /// The same variables (no copy).
    fn share(&self) -> Self {
        match self {
            Norm::Layer { weight, bias, eps } => Norm::Layer {
                weight: weight.shallow_clone(),
                bias: bias.shallow_clone(),
                eps: *eps,
            },
            Norm::Rms { weight, eps } => Norm::Rms {
                weight: weight.shallow_clone(),
                eps: *eps,
            },
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::Layer { weight, bias, eps } => {
                let c = weight.size()[0];
                x.layer_norm([c], Some(weight), Some(bias), *eps, true)
            }
            Norm::Rms { weight, eps } => {
                let x = x.to_kind(Kind::Float);
                let inv = (x.square().mean_dim(-1, true, Kind::Float) + *eps).rsqrt(); // [.., 1]
                x * inv * weight
            }
        }
    }
}

/// The query/key/value projections: one fused matrix (GPT-2's `c_attn`) or three.
enum QkvProj {
    Fused(nn::Linear),
    Split {
        q: nn::Linear,
        k: nn::Linear,
        v: nn::Linear,
    },
}

/// The MLP's input projections: GPT-2's `c_fc`, or SwiGLU's gate and up.
enum MlpIn {
    Plain(nn::Linear),
    Gated { gate: nn::Linear, up: nn::Linear },
}

/// A LoRA adapter of one projection `[O, I]` (see [`crate::lm::lora`]).
struct Lora {
    a: Tensor, // [r, I]
    b: Tensor, // [O, r], zero at the start
    scale: f64,
}

struct Block {
    /// The adapter of each projection, in [`Block::modules`]' order (empty: none at all).
    adapters: Vec<Option<Lora>>,
    norm_1: Norm,
    qkv: QkvProj,
    o_proj: nn::Linear,
    norm_2: Norm,
    mlp_in: MlpIn,
    mlp_out: nn::Linear,
    n_head: i64,
    n_kv_head: i64,
    head_dim: i64,
    activation: Activation,
    dropout: f64,
    /// Dropout on the adapters' input while training.
    lora_dropout: f64,
}

fn linear(p: nn::Path, i: usize, o: usize, std: f64, bias: bool) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: bias.then_some(nn::Init::Const(0.0)),
        bias,
    };
    nn::linear(p, i as i64, o as i64, cfg)
}

impl Block {
    fn new(p: nn::Path, cfg: &GptConfig) -> Self {
        let (c, m, a) = (cfg.n_embd, cfg.mlp_width(), cfg.attention_width());
        let kv = cfg.kv_heads() * cfg.head_dim();
        // GPT-2's scaled init of the residual projections keeps the stream's variance flat in depth.
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        let shape = |qkv, o_proj, mlp_in, mlp_out, n1, n2| Self {
            adapters: Vec::new(),
            norm_1: n1,
            qkv,
            o_proj,
            norm_2: n2,
            mlp_in,
            mlp_out,
            n_head: cfg.n_head as i64,
            n_kv_head: cfg.kv_heads() as i64,
            head_dim: cfg.head_dim() as i64,
            activation: cfg.activation,
            dropout: cfg.dropout,
            lora_dropout: 0.0,
        };
        match cfg.family {
            Family::Gpt2 => shape(
                QkvProj::Fused(linear(&p / "attn" / "c_attn", c, 3 * c, 0.02, true)),
                linear(&p / "attn" / "c_proj", c, c, proj_std, true),
                MlpIn::Plain(linear(&p / "mlp" / "c_fc", c, m, 0.02, true)),
                linear(&p / "mlp" / "c_proj", m, c, proj_std, true),
                Norm::new(&p / "ln_1", cfg),
                Norm::new(&p / "ln_2", cfg),
            ),
            Family::Llama | Family::Qwen2 => {
                let bias = cfg.family == Family::Qwen2;
                let (at, f) = (&p / "self_attn", &p / "mlp");
                shape(
                    QkvProj::Split {
                        q: linear(&at / "q_proj", c, a, 0.02, bias),
                        k: linear(&at / "k_proj", c, kv, 0.02, bias),
                        v: linear(&at / "v_proj", c, kv, 0.02, bias),
                    },
                    linear(&at / "o_proj", a, c, proj_std, false),
                    MlpIn::Gated {
                        gate: linear(&f / "gate_proj", c, m, 0.02, false),
                        up: linear(&f / "up_proj", c, m, 0.02, false),
                    },
                    linear(&f / "down_proj", m, c, proj_std, false),
                    Norm::new(&p / "input_layernorm", cfg),
                    Norm::new(&p / "post_attention_layernorm", cfg),
                )
            }
        }
    }

    /// The projections under their names within the block (transformers' for the Llama
    /// family, aligngym's GPT-2 names), in the order of the weights they make.
    fn modules(&self) -> Vec<(&'static str, &nn::Linear)> {
        let mut m = match &self.qkv {
            QkvProj::Fused(l) => vec![("attn.c_attn", l), ("attn.c_proj", &self.o_proj)],
            QkvProj::Split { q, k, v } => vec![
                ("self_attn.q_proj", q),
                ("self_attn.k_proj", k),
                ("self_attn.v_proj", v),
                ("self_attn.o_proj", &self.o_proj),
            ],
        };
        match &self.mlp_in {
            MlpIn::Plain(l) => m.extend([("mlp.c_fc", l), ("mlp.c_proj", &self.mlp_out)]),
            MlpIn::Gated { gate, up } => m.extend([
                ("mlp.gate_proj", gate),
                ("mlp.up_proj", up),
                ("mlp.down_proj", &self.mlp_out),
            ]),
        }
        m
    }

    /// This block's base variables (shared, not copied), without adapters.
    fn share(&self) -> Self {
        let lin = |l: &nn::Linear| nn::Linear {
            ws: l.ws.shallow_clone(),
            bs: l.bs.as_ref().map(Tensor::shallow_clone),
        };
        Self {
            adapters: Vec::new(),
            norm_1: self.norm_1.share(),
            qkv: match &self.qkv {
                QkvProj::Fused(l) => QkvProj::Fused(lin(l)),
                QkvProj::Split { q, k, v } => QkvProj::Split {
                    q: lin(q),
                    k: lin(k),
                    v: lin(v),
                },
            },
            o_proj: lin(&self.o_proj),
            norm_2: self.norm_2.share(),
            mlp_in: match &self.mlp_in {
                MlpIn::Plain(l) => MlpIn::Plain(lin(l)),
                MlpIn::Gated { gate, up } => MlpIn::Gated {
                    gate: lin(gate),
                    up: lin(up),
                },
            },
            mlp_out: lin(&self.mlp_out),
            ..*self
        }
    }

    /// The matmul weights in `kind`: the variables themselves for fp32, differentiable casts
    /// otherwise (gradients flow back into the fp32 variables). Split projections are fused here
    /// (q, k, v into one matrix; gate and up into one) so that each costs one matmul.
    fn weights(&self, kind: MatmulKind) -> BlockWeights {
        let adapters: Vec<Option<&Lora>> = self.adapters.iter().map(Option::as_ref).collect();
        // Without adapters every projection gets the empty list (no update).
        let (qkv, o, mlp_in, mlp_out): (&[_], &[_], &[_], &[_]) = if adapters.is_empty() {
            (&[], &[], &[], &[])
        } else {
            let nq = match &self.qkv {
                QkvProj::Fused(_) => 1,
                QkvProj::Split { .. } => 3,
            };
            let (qkv, rest) = adapters.split_at(nq);
            let (o, rest) = rest.split_at(1);
            let (mlp_in, mlp_out) = rest.split_at(rest.len() - 1);
            (qkv, o, mlp_in, mlp_out)
        };
        BlockWeights {
            qkv: match &self.qkv {
                QkvProj::Fused(l) => LinearWeights::of(&[l], qkv, kind),
                QkvProj::Split { q, k, v } => LinearWeights::of(&[q, k, v], qkv, kind),
            },
            o_proj: LinearWeights::of(&[&self.o_proj], o, kind),
            mlp_in: match &self.mlp_in {
                MlpIn::Plain(l) => LinearWeights::of(&[l], mlp_in, kind),
                MlpIn::Gated { gate, up } => LinearWeights::of(&[gate, up], mlp_in, kind),
            },
            mlp_out: LinearWeights::of(&[&self.mlp_out], mlp_out, kind),
            dropout: self.lora_dropout,
        }
    }

    /// The residual stream `x` and the norms stay fp32; the matmuls and attention run in the
    /// weights' kind, and adding their outputs back promotes to fp32. `rope` is the rotary
    /// embedding's `(cos, sin)` `[B, 1, T, D]` for the family that has one.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        w: &BlockWeights,
        x: &Tensor,
        mask: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        past: i64,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("[B, T, C]");
        let (h, hkv, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let kind = w.qkv.kind.values;
        let lora_p = if train { w.dropout } else { 0.0 };
        let qkv = w.qkv.apply(&self.norm_1.forward(x).to_kind(kind), lora_p); // [B, T, (H + 2·H_kv)·D]

        // Training and scoring passes attend in fp32 (without a cache, or with an fp32 one):
        // libtorch's CPU backward of bf16 attention is ~6× slower than fp32's, and attention's
        // FLOPs are few. Decoding attends in its cache's kind (`Gpt::cache_kind`: fp32 on CPU,
        // the compute kind on a GPU).
        let qkv = qkv.to_kind(cache.as_ref().map_or(Kind::Float, |lc| lc.k.kind()));
        let parts = qkv.split_with_sizes([h * d, hkv * d, hkv * d], 2);
        let heads = |z: &Tensor, n: i64| z.view([b, t, n, d]).transpose(1, 2); // [B, n, T, D]
        let (mut q, mut k, v) = (
            heads(&parts[0], h),
            heads(&parts[1], hkv),
            heads(&parts[2], hkv),
        );
        if let Some((cos, sin)) = rope {
            let (cos, sin) = (cos.to_kind(q.kind()), sin.to_kind(q.kind()));
            q = apply_rope(&q, &cos, &sin);
            k = apply_rope(&k, &cos, &sin);
        }
        let (k, v) = match cache {
            Some(lc) if past + t <= lc.k.size()[2] => {
                lc.k.narrow(2, past, t).copy_(&k);
                lc.v.narrow(2, past, t).copy_(&v);
                (lc.k.narrow(2, 0, past + t), lc.v.narrow(2, 0, past + t)) // [B, H_kv, past+T, D]
            }
            Some(lc) => {
                // A cache without room (`KvCache::growing`) grows by concatenation: autograd then
                // records a cat, whose backward is views of the gradient, where a copy into a
                // preallocated buffer records a CopySlices that clones the buffer's whole gradient.
                // A narrow, even over the whole tensor, would add a backward that zero-fills and
                // copies the gradient: a grown cache holds exactly `past` slots.
                let grow = |held: &Tensor, new: Tensor| match past {
                    0 => new,
                    _ if held.size()[2] == past => Tensor::cat(&[held, &new], 2),
                    _ => Tensor::cat(&[&held.narrow(2, 0, past), &new], 2),
                };
                lc.k = grow(&lc.k, k);
                lc.v = grow(&lc.v, v);
                (lc.k.shallow_clone(), lc.v.shallow_clone()) // [B, H_kv, past+T, D]
            }
            None => (k, v),
        };
        let p = if train { self.dropout } else { 0.0 };
        let gqa = hkv != h;
        let y = if t == 1 && !train && x.device() == Device::Cpu && mask.kind() != Kind::Bool {
            attend_one_query(&q, &k, &v, mask)
        } else {
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, None, gqa)
        }; // [B, H, T, D]
        let y = y
            .transpose(1, 2)
            .contiguous()
            .view([b, t, h * d])
            .to_kind(kind); // [B, T, H·D]
        let x = x + w.o_proj.apply(&y, lora_p).dropout(p, train); // fp32 [B, T, C]
        let hidden = w
            .mlp_in
            .apply(&self.norm_2.forward(&x).to_kind(kind), lora_p); // [B, T, M or 2M]
        let m = w.mlp_out.apply(&self.activate(&hidden), lora_p); // [B, T, C]
        &x + m.dropout(p, train)
    }

    /// The MLP's nonlinearity on its input projection's output `[.., M]` (SwiGLU: `[.., 2M]`,
    /// gate then up).
    fn activate(&self, hidden: &Tensor) -> Tensor {
        match self.activation {
            Activation::Silu => {
                let gu = hidden.chunk(2, -1); // 2 × [.., M]
                gu[0].silu() * &gu[1]
            }
            a => hidden.gelu(a.gelu_approximate()),
        }
    }
}

/// Rotary embedding of `x [B, n, T, D]` with `cos`, `sin` `[B, 1, T, D]` (transformers' layout:
/// the two halves of each head rotate together).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let halves = x.chunk(2, -1); // 2 × [B, n, T, D/2]
    let rotated = Tensor::cat(&[-&halves[1], halves[0].shallow_clone()], -1); // [B, n, T, D]
    x * cos + rotated * sin
}

/// The kinds a matmul of the compute precision reads and runs in.
///
/// A CPU without native bf16 (neither AVX512-BF16 nor AMX) runs libtorch's bf16 matmuls through
/// oneDNN's emulation at a fifth of its fp32 rate (58 against 275 GFLOP/s for 1024³ on a 2-core
/// Xeon); there a bf16 matmul becomes an fp32 matmul of the same bf16 values (upcasting bf16 is
/// exact, and native kernels accumulate in fp32 too) whose output is rounded back to bf16: the
/// values and rounding points of the native route at the fp32 kernels' speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatmulKind {
    /// The kind weights and activations are rounded to (the compute precision's).
    pub(crate) values: Kind,
    /// The kind the products run in: `values`, or fp32 where bf16 is emulated.
    pub(crate) arithmetic: Kind,
}

impl MatmulKind {
    fn of(precision: Precision, device: Device) -> Self {
        Self {
            values: precision.kind(),
            arithmetic: crate::lm::device::matmul_arithmetic(precision, device),
        }
    }
    /// `t` rounded to the values' kind, in the arithmetic's (differentiable).
    fn operand(self, t: &Tensor) -> Tensor {
        t.to_kind(self.values).to_kind(self.arithmetic)
    }
    /// A product computed in the arithmetic's kind, rounded to the values'.
    fn result(self, t: Tensor) -> Tensor {
        t.to_kind(self.values)
    }
}

/// A linear layer's weight `[O, I]` and bias `[O]` in the compute kind, and its adapters' update
/// where they are being trained.
struct LinearWeights {
    w: Tensor,
    b: Option<Tensor>,
    /// `(A, B)`: the layers' adapters as one update `B·A` (`A [R, I]`, `B [O, R]`, scaled),
    /// kept apart from `w` so their gradients need no `[O, I]` product.
    low_rank: Option<(Tensor, Tensor)>,
    kind: MatmulKind,
}

/// True when gradients will flow into `t` (a variable that requires them, outside `no_grad`).
fn tracked(t: &Tensor) -> bool {
    t.requires_grad() && t.reshape([-1]).narrow(0, 0, 1).requires_grad()
}

impl LinearWeights {
    /// The layers' weights stacked along the output dimension, cast to `kind`, with their
    /// adapters (`adapters[i]` of `layers[i]`; empty or all `None`: none): merged into the
    /// weight where no gradient reaches them (sampling, the frozen reference's passes), kept as
    /// a low-rank product where one does.
    fn of(layers: &[&nn::Linear], adapters: &[Option<&Lora>], kind: MatmulKind) -> Self {
        let stacked = if layers.len() == 1 {
            layers[0].ws.shallow_clone()
        } else {
            Tensor::cat(&layers.iter().map(|l| &l.ws).collect::<Vec<_>>(), 0)
        }; // [O, I]
        let low_rank = Self::update(layers, adapters);
        let (w, low_rank) = match low_rank {
            Some((a, b)) if !tracked(&a) => {
                (kind.operand(&(stacked + b.matmul(&a))), None) // [O, I]
            }
            Some((a, b)) => (
                kind.operand(&stacked),
                Some((kind.operand(&a), kind.operand(&b))),
            ),
            None => (kind.operand(&stacked), None),
        };
        let b = if layers.iter().all(|l| l.bs.is_some()) {
            let bs: Vec<&Tensor> = layers.iter().filter_map(|l| l.bs.as_ref()).collect();
            Some(if bs.len() == 1 {
                kind.operand(bs[0])
            } else {
                kind.operand(&Tensor::cat(&bs, 0))
            })
        } else if layers.iter().any(|l| l.bs.is_some()) {
            // Qwen2 has biases on q, k and v but not o; a mix within one fused matrix pads the
            // bias-free parts with zeros.
            let bs: Vec<Tensor> = layers
                .iter()
                .map(|l| match &l.bs {
                    Some(b) => b.shallow_clone(),
                    None => Tensor::zeros([l.ws.size()[0]], (l.ws.kind(), l.ws.device())),
                })
                .collect();
            Some(kind.operand(&Tensor::cat(&bs, 0)))
        } else {
            None
        };
        Self {
            w,
            b,
            low_rank,
            kind,
        }
    }

    /// The adapters of stacked `layers` as one fp32 update `B·A`: `A [R, I]` the adapters' `A`s
    /// stacked, `B [O, R]` block-diagonal (each layer's rows read its own adapter's columns, and
    /// a layer without one reads none), scaled.
    fn update(layers: &[&nn::Linear], adapters: &[Option<&Lora>]) -> Option<(Tensor, Tensor)> {
        if adapters.iter().all(Option::is_none) {
            return None;
        }
        let rank: i64 = adapters.iter().flatten().map(|l| l.a.size()[0]).sum();
        let a = Tensor::cat(
            &adapters.iter().flatten().map(|l| &l.a).collect::<Vec<_>>(),
            0,
        ); // [R, I]
        let mut before = 0;
        let rows: Vec<Tensor> = layers
            .iter()
            .zip(adapters)
            .map(|(l, ad)| {
                let o = l.ws.size()[0];
                let opts = (l.ws.kind(), l.ws.device());
                match ad {
                    None => Tensor::zeros([o, rank], opts),
                    Some(ad) => {
                        let r = ad.a.size()[0];
                        let row = Tensor::cat(
                            &[
                                Tensor::zeros([o, before], opts),
                                &ad.b * ad.scale,
                                Tensor::zeros([o, rank - before - r], opts),
                            ],
                            1,
                        ); // [O_i, R]
                        before += r;
                        row
                    }
                }
            })
            .collect();
        Some((a, Tensor::cat(&rows, 0))) // [R, I], [O, R]
    }

    /// `x·Wᵀ + b` (plus the adapters' update, their input dropped out with probability `p`) in
    /// the values' kind for `x [.., I]` in the values' kind.
    fn apply(&self, x: &Tensor, p: f64) -> Tensor {
        let x = x.to_kind(self.kind.arithmetic);
        let mut y = x.linear(&self.w, self.b.as_ref()); // [.., O]
        if let Some((a, b)) = &self.low_rank {
            let x = if p > 0.0 { x.dropout(p, true) } else { x };
            y += x.matmul(&a.tr()).matmul(&b.tr()); // [.., R] → [.., O]
        }
        self.kind.result(y)
    }

    /// The weight with the adapters' update folded in (for routes that read the weight alone).
    fn merged(&self) -> Tensor {
        match &self.low_rank {
            None => self.w.shallow_clone(),
            Some((a, b)) => self.kind.operand(&(&self.w + b.matmul(a))),
        }
    }

    fn shallow_clone(&self) -> Self {
        Self {
            w: self.w.shallow_clone(),
            b: self.b.as_ref().map(Tensor::shallow_clone),
            low_rank: self
                .low_rank
                .as_ref()
                .map(|(a, b)| (a.shallow_clone(), b.shallow_clone())),
            kind: self.kind,
        }
    }
}

struct BlockWeights {
    qkv: LinearWeights,
    o_proj: LinearWeights,
    mlp_in: LinearWeights,
    mlp_out: LinearWeights,
    /// Dropout on the adapters' input while training.
    dropout: f64,
}

impl BlockWeights {
    fn shallow_clone(&self) -> Self {
        Self {
            qkv: self.qkv.shallow_clone(),
            o_proj: self.o_proj.shallow_clone(),
            mlp_in: self.mlp_in.shallow_clone(),
            mlp_out: self.mlp_out.shallow_clone(),
            dropout: self.dropout,
        }
    }
}

/// The weights one or more forward passes read, in the model's compute precision. Sampling builds
/// them once per call, so bf16 decoding casts the weights once rather than at every token.
pub struct ComputeWeights {
    blocks: Vec<BlockWeights>,
    head: Tensor, // [V, C], the LM head (the token embedding when tied)
    kind: MatmulKind,
}

impl ComputeWeights {
    fn shallow_clone(&self) -> Self {
        Self {
            blocks: self
                .blocks
                .iter()
                .map(BlockWeights::shallow_clone)
                .collect(),
            head: self.head.shallow_clone(),
            kind: self.kind,
        }
    }
}

/// The transformer with its three heads.
pub struct Gpt {
    cfg: GptConfig,
    wte: Tensor,              // [V, C]
    wpe: Option<Tensor>,      // [T_max, C], GPT-2 only
    lm_head: Option<Tensor>,  // [V, C], when not tied to `wte`
    inv_freq: Option<Tensor>, // [D/2], the rotary families' frequencies
    blocks: Vec<Block>,
    norm_f: Norm,
    value_head: nn::Linear,
    reward_head: nn::Linear,
    precision: Precision,
    /// The adapters' configuration, when the base is frozen and adapters train.
    lora: Option<LoraConfig>,
    /// True when the base weights are another model's (see [`Gpt::share_base`]).
    shared: bool,
}

/// The value head (zero at the start) and the reward head under `p`.
fn heads(p: &nn::Path, cfg: &GptConfig) -> (nn::Linear, nn::Linear) {
    let zero = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    let c = cfg.n_embd;
    (
        nn::linear(p / "value_head", c as i64, 1, zero),
        linear(p / "reward_head", c, 1, 1.0 / (c as f64 + 1.0).sqrt(), true),
    )
}

impl Gpt {
    /// Build the variables under `p` (randomly initialised; the value head starts at zero).
    pub fn new(p: &nn::Path, cfg: &GptConfig) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.n_embd as i64;
        let v = cfg.vocab_size as i64;
        let init = |stdev| nn::Init::Randn { mean: 0.0, stdev };
        let (wte, wpe, blocks, norm_f) = if cfg.family == Family::Gpt2 {
            let wte = p.var("wte", &[v, c], init(0.02));
            let wpe = p.var("wpe", &[cfg.block_size as i64, c], init(0.01));
            let blocks = (0..cfg.n_layer)
                .map(|i| Block::new(p / "h" / i, cfg))
                .collect();
            (wte, Some(wpe), blocks, Norm::new(p / "ln_f", cfg))
        } else {
            let m = p / "model";
            let wte = (&m / "embed_tokens").var("weight", &[v, c], init(0.02));
            let blocks = (0..cfg.n_layer)
                .map(|i| Block::new(&m / "layers" / i, cfg))
                .collect();
            let norm = Norm::new(&m / "norm", cfg);
            (wte, None, blocks, norm)
        };
        let lm_head =
            (!cfg.tie_word_embeddings).then(|| (p / "lm_head").var("weight", &[v, c], init(0.02)));
        let inv_freq = cfg.family.rotary().then(|| {
            let d = cfg.head_dim() as i64;
            // transformers' formula, in fp32 as it computes it: θ^(−2i/D).
            let exponent = Tensor::arange_start_step(0, d, 2, (Kind::Int64, p.device()))
                .to_kind(Kind::Float)
                / d as f64; // [D/2]
            let inv_freq = Tensor::from(cfg.rope_theta as f32)
                .to_device(p.device())
                .pow(&exponent)
                .reciprocal(); // [D/2]
            match &cfg.rope_scaling {
                Some(r) => r.apply(inv_freq),
                None => inv_freq,
            }
        });
        let (value_head, reward_head) = heads(p, cfg);
        Ok(Self {
            cfg: cfg.clone(),
            wte,
            wpe,
            lm_head,
            inv_freq,
            blocks,
            norm_f,
            value_head,
            reward_head,
            precision: Precision::Fp32,
            lora: None,
            shared: false,
        })
    }

    /// The variable-name prefix of block `i` (aligngym's GPT-2 names, transformers' otherwise).
    fn block_prefix(&self, i: usize) -> String {
        match self.cfg.family {
            Family::Gpt2 => format!("h.{i}"),
            Family::Llama | Family::Qwen2 => format!("model.layers.{i}"),
        }
    }

    /// Every projection of the blocks: (variable prefix, transformers' module name).
    fn projection_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            for (suffix, _) in blk.modules() {
                let ours = format!("{}.{suffix}", self.block_prefix(i));
                let theirs = self.cfg.family.transformers_module(&ours);
                out.push((ours, theirs));
            }
        }
        out
    }

    /// Add LoRA adapters under `root` (the root of this model's VarStore, or of the store a
    /// [`Gpt::share_base`] copy was made in) on the projections `cfg` targets: `A` drawn as PEFT
    /// draws it (uniform in ±1/√in) from `seed`, `B` zero, so the model computes as before. Freezing
    /// the base is the caller's (it owns the store). Returns transformers' names of the adapted
    /// modules.
    pub fn attach_lora(
        &mut self,
        root: &nn::Path,
        cfg: &LoraConfig,
        seed: u64,
    ) -> Result<Vec<String>> {
        use rand::{Rng, SeedableRng};
        cfg.validate()?;
        if !cfg.enabled() {
            return Err(AgentError::config("lora.r", "expected a rank ≥ 1"));
        }
        if self.lora.is_some() {
            return Err(AgentError::config("lora", "the model already has adapters"));
        }
        let names = self.projection_names();
        let all: Vec<String> = names.iter().map(|(_, t)| t.clone()).collect();
        let unmatched = cfg.unmatched(&all);
        let defaults = self.cfg.family.lora_default_targets();
        if !unmatched.is_empty() || !all.iter().any(|m| cfg.targets(defaults, m)) {
            let mut short: Vec<&str> = all.iter().filter_map(|m| m.rsplit('.').next()).collect();
            short.sort_unstable();
            short.dedup();
            return Err(AgentError::config(
                "lora.target_modules",
                format!(
                    "{} matches no projection of this {} model (its projections: {})",
                    if unmatched.is_empty() {
                        "the choice".to_string()
                    } else {
                        format!("`{}`", unmatched.join("`, `"))
                    },
                    self.cfg.family,
                    short.join(", ")
                ),
            ));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let r = cfg.r as i64;
        let mut adapted = Vec::new();
        let mut names = names.into_iter();
        for blk in &mut self.blocks {
            let shapes: Vec<(i64, i64)> = blk
                .modules()
                .iter()
                .map(|(_, l)| (l.ws.size()[0], l.ws.size()[1]))
                .collect();
            blk.adapters = shapes
                .into_iter()
                .map(|(o, i)| {
                    let (ours, theirs) = names.next()?;
                    if !cfg.targets(self.cfg.family.lora_default_targets(), &theirs) {
                        return None;
                    }
                    let mut parts = ours.split('.');
                    let mut p = root / parts.next().unwrap_or_default();
                    for c in parts {
                        p = p / c;
                    }
                    let bound = 1.0 / (i as f64).sqrt();
                    let init: Vec<f32> = (0..r * i)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect();
                    let a0 = Tensor::from_slice(&init).view([r, i]); // [r, I]
                    let a = (&p / "lora_A").var_copy("weight", &a0);
                    let b = (&p / "lora_B").var("weight", &[o, r], nn::Init::Const(0.0));
                    adapted.push(theirs);
                    Some(Lora {
                        a,
                        b,
                        scale: cfg.scale(),
                    })
                })
                .collect();
            blk.lora_dropout = cfg.lora_dropout;
        }
        self.lora = Some(cfg.clone());
        Ok(adapted)
    }

    /// Each adapted projection: its variable prefix, transformers' module name, the projection
    /// and its adapter.
    fn adapted(&self) -> Vec<(String, String, &nn::Linear, &Lora)> {
        let names = self.projection_names();
        let mut out = Vec::new();
        let mut names = names.into_iter();
        for blk in &self.blocks {
            for (k, (_, lin)) in blk.modules().into_iter().enumerate() {
                let Some((ours, theirs)) = names.next() else {
                    break;
                };
                if let Some(Some(ad)) = blk.adapters.get(k) {
                    out.push((ours, theirs, lin, ad));
                }
            }
        }
        out
    }

    /// transformers' names of the adapted projections.
    pub fn adapted_modules(&self) -> Vec<String> {
        self.adapted().into_iter().map(|(_, t, _, _)| t).collect()
    }

    /// The variables of `vs` (this model's store) with each adapted projection's weight replaced
    /// by `W + s·B·A` and the adapters left out: the model the adapters make, as one.
    pub fn merged_variables(&self, vs: &nn::VarStore) -> HashMap<String, Tensor> {
        let mut vars = vs.variables();
        vars.retain(|n, _| !crate::lm::lora::is_adapter_var(n));
        tch::no_grad(|| {
            for (ours, _, lin, ad) in self.adapted() {
                let merged = &lin.ws + ad.b.matmul(&ad.a) * ad.scale; // [O, I]
                vars.insert(format!("{ours}.weight"), merged);
            }
        });
        vars
    }

    /// The adapters' variables of `vs` (this model's store).
    pub fn adapter_variables(&self, vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(n, _)| crate::lm::lora::is_adapter_var(n))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// True when the base weights are another model's, frozen (its store holds the heads and
    /// any adapters alone).
    pub fn shares_base(&self) -> bool {
        self.shared
    }

    /// FLOPs of a training pass per forward FLOP over the same tokens: 3 (the forward, and the
    /// backward's gradients of the inputs and of the weights), 2 when only adapters train (no
    /// weight gradients but the adapters' few, left out).
    pub fn train_pass_factor(&self) -> f64 {
        if self.lora.is_some() {
            2.0
        } else {
            3.0
        }
    }

    /// The adapters' configuration, when the model has them.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// A model computing with this one's base weights (the same tensors: no copy), without
    /// adapters, with fresh heads under `p` (a new VarStore's root).
    pub fn share_base(&self, p: &nn::Path) -> Self {
        let (value_head, reward_head) = heads(p, &self.cfg);
        Self {
            cfg: self.cfg.clone(),
            wte: self.wte.shallow_clone(),
            wpe: self.wpe.as_ref().map(Tensor::shallow_clone),
            lm_head: self.lm_head.as_ref().map(Tensor::shallow_clone),
            inv_freq: self.inv_freq.as_ref().map(Tensor::shallow_clone),
            blocks: self.blocks.iter().map(Block::share).collect(),
            norm_f: self.norm_f.share(),
            value_head,
            reward_head,
            precision: self.precision,
            lora: None,
            shared: true,
        }
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.wte.device()
    }
    /// The model's shape.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The precision forward passes compute in (the weights themselves stay fp32).
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Compute in `precision` from now on.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    /// The kind activations are stored in.
    pub fn compute_kind(&self) -> Kind {
        self.precision.kind()
    }

    /// The kind a decoding KV cache is stored and attended in: the compute kind on a GPU, fp32
    /// on CPU. A decoding step's attention is a matrix-vector product per head, bound by reading
    /// the cache; libtorch's bf16 route for it on CPU (SDPA's flash kernel calling MKL's bf16
    /// gemv per head) took a quarter of a tiny bf16 GRPO iteration, its fp32 batched matmuls
    /// half that. Training passes attend in fp32 too, so sampling and scoring agree better.
    pub fn cache_kind(&self) -> Kind {
        if self.device() == Device::Cpu {
            Kind::Float
        } else {
            self.compute_kind()
        }
    }

    /// The weights in the compute precision (differentiable; under `no_grad` a plain cast).
    pub fn compute_weights(&self) -> ComputeWeights {
        self.compute_weights_in(self.matmul_kind())
    }

    /// [`Gpt::compute_weights`] for matmuls of `kind`, whatever the device runs natively.
    pub(crate) fn compute_weights_in(&self, kind: MatmulKind) -> ComputeWeights {
        ComputeWeights {
            blocks: self.blocks.iter().map(|b| b.weights(kind)).collect(),
            head: kind.operand(self.lm_head.as_ref().unwrap_or(&self.wte)),
            kind,
        }
    }

    fn matmul_kind(&self) -> MatmulKind {
        MatmulKind::of(self.precision, self.device())
    }

    /// Trunk output `[B, T, C]` (fp32) for `tokens [B, T]` at `positions [B, T]`, attending where
    /// `mask [B, 1, T, T_k]` is true (or, for a float mask, adding it to the attention scores).
    /// With a cache, the new keys and values are written at `cache.len()` and the cache advances
    /// by T.
    pub fn forward(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        self.forward_with(
            &self.compute_weights(),
            tokens,
            positions,
            mask,
            cache,
            train,
        )
    }

    /// [`Gpt::forward`] with weights from [`Gpt::compute_weights`].
    pub fn forward_with(
        &self,
        w: &ComputeWeights,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let t = tokens.size()[1];
        let past = cache.as_ref().map_or(0, |c| c.len);
        let p = if train { self.cfg.dropout } else { 0.0 };
        let mut x = Tensor::embedding(&self.wte, tokens, -1, false, false); // [B, T, C]
        if let Some(wpe) = &self.wpe {
            x += Tensor::embedding(wpe, positions, -1, false, false);
        }
        let mut x = x.dropout(p, train);
        let rope = self.inv_freq.as_ref().map(|inv| {
            let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv; // [B, T, D/2]
            let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [B, 1, T, D]
            (emb.cos(), emb.sin())
        });
        for (i, (blk, bw)) in self.blocks.iter().zip(&w.blocks).enumerate() {
            let lc = cache.as_mut().map(|c| &mut c.layers[i]);
            x = blk.forward(bw, &x, mask, rope.as_ref(), past, lc, train);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.norm_f.forward(&x)
    }

    /// Trunk output `[B, T, C]` of whole sequences with validity mask `valid [B, T]` (left or right
    /// padding both work: positions count valid tokens).
    pub fn forward_full(&self, tokens: &Tensor, valid: &Tensor, train: bool) -> Tensor {
        let t = tokens.size()[1];
        let positions = positions_from_valid(valid);
        let mask = additive_mask(&attention_mask(valid, 0, t), Kind::Float);
        self.forward(tokens, &positions, &mask, None, train)
    }

    /// fp32 LM logits `[.., V]` of trunk output `[.., C]` (the matmul runs in the compute
    /// precision, the softmaxes that follow in fp32).
    pub fn lm_logits(&self, hidden: &Tensor) -> Tensor {
        let kind = self.matmul_kind();
        let head = self.lm_head.as_ref().unwrap_or(&self.wte);
        lm_logits_with(&kind.operand(head), kind, hidden)
    }
    /// [`Gpt::lm_logits`] with the head from [`Gpt::compute_weights`].
    pub fn lm_logits_from(&self, w: &ComputeWeights, hidden: &Tensor) -> Tensor {
        lm_logits_with(&w.head, w.kind, hidden)
    }
    /// Value estimates `[..]` of trunk output `[.., C]`.
    pub fn value(&self, hidden: &Tensor) -> Tensor {
        self.value_head.forward(hidden).squeeze_dim(-1)
    }
    /// Scalar rewards `[..]` of trunk output `[.., C]`.
    pub fn reward(&self, hidden: &Tensor) -> Tensor {
        self.reward_head.forward(hidden).squeeze_dim(-1)
    }
}

fn lm_logits_with(head: &Tensor, kind: MatmulKind, hidden: &Tensor) -> Tensor {
    let logits = kind.operand(hidden).matmul(&head.tr()); // [.., V]
    kind.result(logits).to_kind(Kind::Float)
}

/// Position of each token: the number of valid tokens before it (0 for padding).
pub fn positions_from_valid(valid: &Tensor) -> Tensor {
    (valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0) // [B, T]
}

/// Attention mask `[B, 1, T, T_k]` for queries at absolute positions `past..past+T` over keys whose
/// validity is `key_valid [B, T_k]`: causal and valid keys only, and every query always sees its own
/// slot, so padding rows stay finite instead of becoming NaN.
pub fn attention_mask(key_valid: &Tensor, past: i64, t: i64) -> Tensor {
    let dev = key_valid.device();
    let tk = key_valid.size()[1];
    let q = Tensor::arange_start(past, past + t, (Kind::Int64, dev)).view([t, 1]);
    let k = Tensor::arange(tk, (Kind::Int64, dev)).view([1, tk]);
    let causal = k.le_tensor(&q).unsqueeze(0); // [1, T, T_k]
    let own = k.eq_tensor(&q).unsqueeze(0); // [1, T, T_k]
    let valid = key_valid.to_kind(Kind::Bool).unsqueeze(1); // [B, 1, T_k]
    causal.logical_and(&valid).logical_or(&own).unsqueeze(1) // [B, 1, T, T_k]
}

/// A boolean attention `mask` as the bias in `kind` that attention adds to its scores: 0 where it
/// is true, −∞ where not. SDPA makes the same conversion at every call; a pass through L layers
/// converts once.
pub fn additive_mask(mask: &Tensor, kind: Kind) -> Tensor {
    Tensor::zeros(mask.size(), (kind, mask.device()))
        .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
}

/// Attention of one new token per sequence, `q [B, H, 1, D]`, over the cached keys and values
/// `[B, H_kv, L, D]` with an additive `mask` broadcastable to `[B, H, 1, L]`, on a CPU: the G query
/// heads that share a key-value head are the rows of one batched matmul, so each cached key is read
/// once per step for all of them (transformers' grouping: query head i reads key-value head i / G).
/// SDPA's CPU kernels are made for long queries; for one query row they cost more than the
/// matmuls. Returns `[B, H, 1, D]` in `q`'s kind.
fn attend_one_query(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let (b, h, _, d) = q.size4().expect("[B, H, 1, D]");
    let (hkv, l) = (k.size()[1], k.size()[2]);
    let g = h / hkv;
    let queries = q.reshape([b * hkv, g, d]); // [B·H_kv, G, D]
    let keys = k.reshape([b * hkv, l, d]).transpose(1, 2); // [B·H_kv, D, L]
    let values = v.reshape([b * hkv, l, d]); // [B·H_kv, L, D]
    let bias = mask
        .to_kind(q.kind())
        .expand([b, h, 1, l], false)
        .reshape([b * hkv, g, l]); // [B·H_kv, G, L]
    bias.baddbmm(&queries, &keys, 1.0, 1.0 / (d as f64).sqrt()) // [B·H_kv, G, L]
        .softmax(-1, q.kind())
        .bmm(&values) // [B·H_kv, G, D]
        .view([b, h, 1, d])
}
