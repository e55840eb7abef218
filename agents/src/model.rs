//! A GPT-2-style decoder (Radford et al. 2019): token and learned position embeddings, pre-LayerNorm
//! blocks with causal multi-head attention and a GELU MLP, a final LayerNorm and an LM head tied to
//! the token embedding; plus a value head and a scalar reward head over the trunk output. Incremental
//! decoding keeps a preallocated KV cache per layer.

use crate::{AgentError, Precision, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

mod decode;
pub use decode::{key_bias, DecodeWeights};

/// Shape of the transformer; serialised into `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Number of token ids (the tokenizer's vocabulary size).
    pub vocab_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block; must divide `n_embd`.
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Longest sequence (prompt + completion) the position table covers.
    pub block_size: usize,
    /// Dropout probability in training; 0 by default (RLHF turns dropout off everywhere).
    #[serde(default)]
    pub dropout: f64,
}

impl GptConfig {
    /// The "tiny" size: 4 layers, 4 heads, width 128, context 128.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            block_size: 128,
            dropout: 0.0,
        }
    }
    /// The "small" size: 6 layers, 8 heads, width 256, context 128.
    pub fn small(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            n_layer: 6,
            n_head: 8,
            n_embd: 256,
            block_size: 128,
            dropout: 0.0,
        }
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
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(AgentError::config(
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(AgentError::config("dropout", "expected a value in [0, 1)"));
        }
        Ok(())
    }
    /// Parameters of the trunk and tied LM head (heads excluded).
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        self.vocab_size * c + self.block_size * c + self.n_layer * (12 * c * c + 13 * c) + 2 * c
    }
    /// Forward FLOPs per token for a sequence of length `t` (matmuls ×2, attention included).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let c = self.n_embd as f64;
        let l = self.n_layer as f64;
        2.0 * (l * 12.0 * c * c + self.vocab_size as f64 * c) + 2.0 * l * 2.0 * t as f64 * c
    }
}

/// One layer's cached keys and values, preallocated to the longest sequence.
pub struct LayerCache {
    k: Tensor, // [B, H, T_max, D]
    v: Tensor, // [B, H, T_max, D]
}

/// The KV cache of every layer, and how many positions it holds.
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `max_len` positions.
    pub fn new(cfg: &GptConfig, batch: i64, max_len: i64, device: Device, kind: Kind) -> Self {
        let (h, d) = (cfg.n_head as i64, (cfg.n_embd / cfg.n_head) as i64);
        let layers = (0..cfg.n_layer)
            .map(|_| LayerCache {
                k: Tensor::zeros([batch, h, max_len, d], (kind, device)),
                v: Tensor::zeros([batch, h, max_len, d], (kind, device)),
            })
            .collect();
        Self { layers, len: 0 }
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

struct Block {
    ln_1: nn::LayerNorm,
    c_attn: nn::Linear,
    c_proj: nn::Linear,
    ln_2: nn::LayerNorm,
    c_fc: nn::Linear,
    mlp_proj: nn::Linear,
    n_head: i64,
    dropout: f64,
}

fn linear(p: nn::Path, i: usize, o: usize, std: f64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, i as i64, o as i64, cfg)
}

impl Block {
    fn new(p: nn::Path, cfg: &GptConfig) -> Self {
        let c = cfg.n_embd;
        // GPT-2's scaled init of the residual projections keeps the stream's variance flat in depth.
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Self {
            ln_1: nn::layer_norm(&p / "ln_1", vec![c as i64], Default::default()),
            c_attn: linear(&p / "attn" / "c_attn", c, 3 * c, 0.02),
            c_proj: linear(&p / "attn" / "c_proj", c, c, proj_std),
            ln_2: nn::layer_norm(&p / "ln_2", vec![c as i64], Default::default()),
            c_fc: linear(&p / "mlp" / "c_fc", c, 4 * c, 0.02),
            mlp_proj: linear(&p / "mlp" / "c_proj", 4 * c, c, proj_std),
            n_head: cfg.n_head as i64,
            dropout: cfg.dropout,
        }
    }

    /// The matmul weights in `kind`: the variables themselves for fp32, differentiable casts
    /// otherwise (gradients flow back into the fp32 variables).
    fn weights(&self, kind: Kind) -> BlockWeights {
        let cast = |l: &nn::Linear| LinearWeights {
            w: l.ws.to_kind(kind),
            b: l.bs
                .as_ref()
                .expect("linear layers have a bias")
                .to_kind(kind),
        };
        BlockWeights {
            c_attn: cast(&self.c_attn),
            c_proj: cast(&self.c_proj),
            c_fc: cast(&self.c_fc),
            mlp_proj: cast(&self.mlp_proj),
        }
    }

    /// The residual stream `x` and the LayerNorms stay fp32; the matmuls and attention run in the
    /// weights' kind, and adding their outputs back promotes to fp32.
    fn forward(
        &self,
        w: &BlockWeights,
        x: &Tensor,
        mask: &Tensor,
        past: i64,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let (b, t, c) = x.size3().expect("[B, T, C]");
        let h = self.n_head;
        let kind = w.c_attn.w.kind();
        let qkv = w.c_attn.apply(&self.ln_1.forward(x).to_kind(kind)); // [B, T, 3C]

        // Without a cache (training and scoring passes) attention runs in fp32: libtorch's CPU
        // backward of bf16 attention is ~6× slower than fp32's, and attention's FLOPs are few.
        // Decoding (no backward) keeps the bf16 cache and attends in bf16.
        let qkv = if cache.is_none() {
            qkv.to_kind(Kind::Float)
        } else {
            qkv
        };
        let parts = qkv.split(c, 2);
        let heads = |z: &Tensor| z.view([b, t, h, c / h]).transpose(1, 2); // [B, H, T, D]
        let (q, k, v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
        let (k, v) = match cache {
            Some(lc) => {
                lc.k.narrow(2, past, t).copy_(&k);
                lc.v.narrow(2, past, t).copy_(&v);
                (lc.k.narrow(2, 0, past + t), lc.v.narrow(2, 0, past + t)) // [B, H, past+T, D]
            }
            None => (k, v),
        };
        let p = if train { self.dropout } else { 0.0 };
        // [B, H, T, D]
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, None, false);
        let y = y.transpose(1, 2).contiguous().view([b, t, c]).to_kind(kind); // [B, T, C]
        let x = x + w.c_proj.apply(&y).dropout(p, train); // fp32 [B, T, C]
        let m = w.mlp_proj.apply(
            &w.c_fc
                .apply(&self.ln_2.forward(&x).to_kind(kind))
                .gelu("none"),
        ); // [B, T, C]
        &x + m.dropout(p, train)
    }
}

/// A linear layer's weight `[O, I]` and bias `[O]` in the compute kind.
struct LinearWeights {
    w: Tensor,
    b: Tensor,
}

impl LinearWeights {
    fn apply(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, Some(&self.b))
    }
}

struct BlockWeights {
    c_attn: LinearWeights,
    c_proj: LinearWeights,
    c_fc: LinearWeights,
    mlp_proj: LinearWeights,
}

/// The weights one or more forward passes read, in the model's compute precision. Sampling builds
/// them once per call, so bf16 decoding casts the weights once rather than at every token.
pub struct ComputeWeights {
    blocks: Vec<BlockWeights>,
    wte: Tensor, // [V, C], for the LM head
}

/// The transformer with its three heads.
pub struct Gpt {
    cfg: GptConfig,
    wte: Tensor, // [V, C]
    wpe: Tensor, // [T_max, C]
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    value_head: nn::Linear,
    reward_head: nn::Linear,
    precision: Precision,
}

impl Gpt {
    /// Build the variables under `p` (randomly initialised; the value head starts at zero).
    pub fn new(p: &nn::Path, cfg: &GptConfig) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.n_embd as i64;
        let wte = p.var(
            "wte",
            &[cfg.vocab_size as i64, c],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let wpe = p.var(
            "wpe",
            &[cfg.block_size as i64, c],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        );
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(p / "h" / i, cfg))
            .collect();
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        Ok(Self {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f: nn::layer_norm(p / "ln_f", vec![c], Default::default()),
            value_head: nn::linear(p / "value_head", c, 1, zero),
            reward_head: linear(
                p / "reward_head",
                cfg.n_embd,
                1,
                1.0 / (cfg.n_embd as f64 + 1.0).sqrt(),
            ),
            precision: Precision::Fp32,
        })
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
    /// The kind activations and the KV cache are stored in.
    pub fn compute_kind(&self) -> Kind {
        self.precision.kind()
    }

    /// The weights in the compute precision (differentiable; under `no_grad` a plain cast).
    pub fn compute_weights(&self) -> ComputeWeights {
        let kind = self.compute_kind();
        ComputeWeights {
            blocks: self.blocks.iter().map(|b| b.weights(kind)).collect(),
            wte: self.wte.to_kind(kind),
        }
    }

    /// Trunk output `[B, T, C]` (fp32) for `tokens [B, T]` at `positions [B, T]`, attending where
    /// `mask [B, 1, T, T_k]` is true (or, for a float mask, adding it to the attention scores). With a cache, the new keys and values are written at
    /// `cache.len()` and the cache advances by T.
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
        let mut x = (Tensor::embedding(&self.wte, tokens, -1, false, false)
            + Tensor::embedding(&self.wpe, positions, -1, false, false))
        .dropout(p, train); // [B, T, C]
        for (i, (blk, bw)) in self.blocks.iter().zip(&w.blocks).enumerate() {
            let lc = cache.as_mut().map(|c| &mut c.layers[i]);
            x = blk.forward(bw, &x, mask, past, lc, train);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.ln_f.forward(&x)
    }

    /// Trunk output `[B, T, C]` of whole sequences with validity mask `valid [B, T]` (left or right
    /// padding both work: positions count valid tokens).
    pub fn forward_full(&self, tokens: &Tensor, valid: &Tensor, train: bool) -> Tensor {
        let t = tokens.size()[1];
        let positions = positions_from_valid(valid);
        let mask = attention_mask(valid, 0, t);
        self.forward(tokens, &positions, &mask, None, train)
    }

    /// fp32 LM logits `[.., V]` of trunk output `[.., C]` (head tied to the token embedding; the
    /// matmul runs in the compute precision, the softmaxes that follow in fp32).
    pub fn lm_logits(&self, hidden: &Tensor) -> Tensor {
        self.lm_logits_with(&self.wte.to_kind(self.compute_kind()), hidden)
    }
    /// [`Gpt::lm_logits`] with the embedding from [`Gpt::compute_weights`].
    pub fn lm_logits_from(&self, w: &ComputeWeights, hidden: &Tensor) -> Tensor {
        self.lm_logits_with(&w.wte, hidden)
    }
    fn lm_logits_with(&self, wte: &Tensor, hidden: &Tensor) -> Tensor {
        let logits = hidden.to_kind(wte.kind()).matmul(&wte.tr()); // [.., V]
        logits.to_kind(Kind::Float)
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
