//! One decoding step: one new token per sequence through the trunk and the LM head, reading and
//! extending the KV cache. The same math as [`Gpt::forward`] with a cache followed by
//! [`Gpt::lm_logits`], in as few libtorch calls as it takes. The Llama family decodes through
//! [`Gpt::forward_with`] itself (its q/k/v and gate/up matrices are fused once per `generate`); GPT-2
//! by one of two routes:
//!
//! - **Tensor ops** (any device, any precision): 2-D activations, weights pre-transposed once per
//!   `generate`, attention in the cache's kind (SDPA on a GPU; on a CPU, whose cache is fp32 in
//!   every precision, the fused attention of [`attention`]), residual adds in place.
//! - **CPU fp32**: libtorch only for the matmuls and GELU; embeddings, LayerNorms, biases, the
//!   cache writes and the attention ([`attention`]) are Rust loops over the tensors' memory.
//!   Measured on a 2-core CPU at the tiny size, each libtorch call costs 3–5 µs beyond its
//!   arithmetic once the matmuls have pushed the dispatcher out of the caches, and a step of ~140
//!   such calls spent more time in calls than in arithmetic.

mod attention;
mod host;

use super::{Block, ComputeWeights, Family, Gpt, KvCache, LayerCache, LinearWeights, Norm};
use tch::nn;
use tch::{Device, Kind, Tensor};

/// A linear layer as decoding reads it: the weight transposed to `[I, O]` and contiguous (at a
/// decoding step's few rows a plain matmul on it is 1.2–2× faster on CPU than `linear`'s
/// transposed read) and the bias `[O]`, both in the compute kind.
struct DecodeLinear {
    w_t: Tensor,
    b: Tensor,
}

impl DecodeLinear {
    fn new(l: &LinearWeights) -> Self {
        Self {
            w_t: l.w.tr().contiguous(),
            b: l.b
                .as_ref()
                .expect("GPT-2 layers have biases")
                .shallow_clone(),
        }
    }
    /// `x·Wᵀ + b` `[B, O]` for `x [B, I]`.
    fn apply(&self, x: &Tensor) -> Tensor {
        let mut y = x.mm(&self.w_t);
        y += &self.b;
        y
    }
    /// Adds `x·Wᵀ + b` into the fp32 stream `acc [B, O]`.
    fn add_into(&self, acc: &mut Tensor, x: &Tensor) {
        if x.kind() == acc.kind() {
            let _ = acc.addmm_(x, &self.w_t);
        } else {
            *acc += x.mm(&self.w_t);
        }
        *acc += &self.b;
    }
}

struct DecodeBlock {
    c_attn: DecodeLinear,
    c_proj: DecodeLinear,
    c_fc: DecodeLinear,
    mlp_proj: DecodeLinear,
}

/// The weights a decoding step reads, laid out for it; built once per `generate` call.
pub struct DecodeWeights {
    blocks: Vec<DecodeBlock>,
    wte_t: Tensor, // [C, V], for the LM head
    /// Whether the CPU fp32 route applies.
    host: bool,
    /// The Llama family's weights, for decoding through the forward pass.
    forward: Option<ComputeWeights>,
}

impl DecodeWeights {
    /// Take the tensor-ops route even where the CPU route applies (to test one against the other).
    #[cfg(test)]
    pub(crate) fn tensor_ops_only(mut self) -> Self {
        self.host = false;
        self
    }
}

/// The additive attention mask a decoding step reads, `[B·H, 1, L]` in `kind`: 0 where
/// `key_valid [B, L]` is true, −∞ where not.
pub fn key_bias(key_valid: &Tensor, n_head: i64, kind: Kind) -> Tensor {
    let (b, l) = key_valid.size2().expect("[B, L]");
    Tensor::zeros([b, l], (kind, key_valid.device()))
        .masked_fill(&key_valid.logical_not(), f64::NEG_INFINITY)
        .unsqueeze(1)
        .expand([b, n_head, l], false)
        .reshape([b * n_head, 1, l])
}

impl Gpt {
    /// The weights in the layout [`Gpt::decode_step`] reads, from the compute-precision weights
    /// `w` (the prefill's; so bf16 casts once per `generate`). Call it under `no_grad`.
    pub fn decode_weights(&self, w: &ComputeWeights) -> DecodeWeights {
        if self.cfg.family != Family::Gpt2 {
            return DecodeWeights {
                blocks: Vec::new(),
                wte_t: w.head.shallow_clone(),
                host: false,
                forward: Some(w.shallow_clone()),
            };
        }
        DecodeWeights {
            blocks: w
                .blocks
                .iter()
                .map(|b| DecodeBlock {
                    c_attn: DecodeLinear::new(&b.qkv),
                    c_proj: DecodeLinear::new(&b.o_proj),
                    c_fc: DecodeLinear::new(&b.mlp_in),
                    mlp_proj: DecodeLinear::new(&b.mlp_out),
                })
                .collect(),
            wte_t: w.head.tr().contiguous(),
            host: self.device() == Device::Cpu && w.head.kind() == Kind::Float,
            forward: None,
        }
    }

    /// One decoding step for `tokens [B]` (i64) at `positions [B]` (i64): writes their keys and
    /// values at the cache's next slot, advances it, and returns the fp32 LM logits `[B, V]`.
    /// `key_bias [B·H, 1, ≥ slot+1]` (the cache's kind) is added to the attention scores: 0
    /// where a key may be read, −∞ where not. Call it under `no_grad`.
    pub fn decode_step(
        &self,
        w: &DecodeWeights,
        tokens: &Tensor,
        positions: &Tensor,
        key_bias: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        if let Some(fw) = &w.forward {
            let b = tokens.size()[0];
            let (h, l) = (self.cfg.n_head as i64, key_bias.size()[2]);
            let mask = key_bias.view([b, h, 1, l]).narrow(3, 0, cache.len + 1); // [B, H, 1, L]
            let (tokens, positions) = (tokens.view([b, 1]), positions.view([b, 1]));
            let hidden = self.forward_with(fw, &tokens, &positions, &mask, Some(cache), false);
            return self.lm_logits_from(fw, &hidden.squeeze_dim(1)); // [B, V]
        }
        let logits = if w.host {
            self.decode_on_host(w, tokens, positions, key_bias, cache)
        } else {
            self.decode_with_tensor_ops(w, tokens, positions, key_bias, cache)
        };
        cache.len += 1;
        logits
    }

    fn decode_with_tensor_ops(
        &self,
        w: &DecodeWeights,
        tokens: &Tensor,
        positions: &Tensor,
        key_bias: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        let slot = cache.len;
        let mut x = Tensor::embedding(&self.wte, tokens, -1, false, false); // [B, C]
        x += Tensor::embedding(self.gpt2_wpe(), positions, -1, false, false);
        for ((blk, bw), lc) in self.blocks.iter().zip(&w.blocks).zip(&mut cache.layers) {
            blk.decode(bw, &mut x, key_bias, slot, lc);
        }
        let h = self.norm_f.forward(&x).to_kind(w.wte_t.kind()); // [B, C]
        h.mm(&w.wte_t).to_kind(Kind::Float) // [B, V]
    }

    fn decode_on_host(
        &self,
        w: &DecodeWeights,
        tokens: &Tensor,
        positions: &Tensor,
        key_bias: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        let slot = cache.len;
        let b = tokens.size()[0];
        let c = self.cfg.n_embd as i64;
        let (h, d) = (self.cfg.n_head as i64, c / self.cfg.n_head as i64);
        let opts = (Kind::Float, Device::Cpu);
        let mut x = Tensor::empty([b, c], opts); // [B, C], the fp32 residual stream
        {
            let tokens = tokens.contiguous();
            let positions = positions.contiguous();
            let (tok, pos) = (host_i64(&tokens), host_i64(&positions));
            let (wte, wpe) = (host(&self.wte), host(self.gpt2_wpe()));
            let c = c as usize;
            for (row, (&t, &p)) in host_mut(&mut x)
                .chunks_exact_mut(c)
                .zip(tok.iter().zip(pos))
            {
                let (e, q) = (&wte[t as usize * c..][..c], &wpe[p as usize * c..][..c]);
                for ((o, e), q) in row.iter_mut().zip(e).zip(q) {
                    *o = e + q;
                }
            }
        }
        let mut a = Tensor::empty([b, c], opts); // [B, C], LayerNorm output
        let mut q = Tensor::empty([b * h, 1, d], opts); // [B·H, 1, D]
        let eps = self.cfg.norm_eps as f32;
        let approximate = self.cfg.activation.gelu_approximate();
        // The MLP's output bias of the block before, added with the next LayerNorm.
        let mut pending: Option<&Tensor> = None;
        for ((blk, bw), lc) in self.blocks.iter().zip(&w.blocks).zip(&mut cache.layers) {
            add_and_layer_norm(&mut x, pending, layer_norm(&blk.norm_1), eps, &mut a);
            let qkv = a.mm(&bw.c_attn.w_t); // [B, 3C]
            scatter_qkv(&qkv, &bw.c_attn.b, &mut q, lc, slot, h);
            let y = attend_on_host(&q, key_bias, lc, slot).view([b, c]); // [B, C]
            let _ = x.addmm_(&y, &bw.c_proj.w_t);
            add_and_layer_norm(
                &mut x,
                Some(&bw.c_proj.b),
                layer_norm(&blk.norm_2),
                eps,
                &mut a,
            );
            let mut hidden = a.mm(&bw.c_fc.w_t); // [B, 4C]
            add_rows(&mut hidden, &bw.c_fc.b);
            let _ = hidden.gelu_(approximate);
            let _ = x.addmm_(&hidden, &bw.mlp_proj.w_t);
            pending = Some(&bw.mlp_proj.b);
        }
        add_and_layer_norm(&mut x, pending, layer_norm(&self.norm_f), eps, &mut a);
        a.mm(&w.wte_t) // [B, V]
    }
}

impl Block {
    /// The tensor-ops route through one block: adds its output for one new token per sequence to
    /// the fp32 residual stream `x [B, C]`, writing the token's key and value at cache slot `slot`.
    fn decode(
        &self,
        w: &DecodeBlock,
        x: &mut Tensor,
        key_bias: &Tensor,
        slot: i64,
        lc: &mut LayerCache,
    ) {
        let (b, c) = x.size2().expect("[B, C]");
        let (h, d) = (self.n_head, c / self.n_head);
        let kind = w.c_attn.w_t.kind();
        // Attention runs in the cache's kind (fp32 on CPU, see `Gpt::cache_kind`).
        let qkv = w.c_attn.apply(&self.norm_1.forward(x).to_kind(kind)); // [B, 3C]
        let q = qkv.narrow(1, 0, c).to_kind(lc.k.kind()); // [B, C]
        lc.k.select(2, slot)
            .copy_(&qkv.narrow(1, c, c).view([b, h, d]));
        lc.v.select(2, slot)
            .copy_(&qkv.narrow(1, 2 * c, c).view([b, h, d]));
        let y = if x.device() == Device::Cpu && lc.k.kind() == Kind::Float {
            attend_on_host(&q.reshape([b * h, 1, d]), key_bias, lc, slot)
        } else {
            // One fused kernel (on a GPU, the cache's kind is the compute kind).
            let t_bias = key_bias.size()[2];
            let mask = key_bias.view([b, h, 1, t_bias]).narrow(3, 0, slot + 1); // [B, H, 1, L]
            Tensor::scaled_dot_product_attention(
                &q.reshape([b, h, 1, d]),
                &lc.k.narrow(2, 0, slot + 1), // [B, H, L, D]
                &lc.v.narrow(2, 0, slot + 1), // [B, H, L, D]
                Some(mask),
                0.0,
                false,
                None,
                false,
            )
        }
        .reshape([b, c])
        .to_kind(kind); // [B, C]
        w.c_proj.add_into(x, &y);
        let mut hidden = w.c_fc.apply(&self.norm_2.forward(x).to_kind(kind)); // [B, 4C]
        let hidden = hidden.gelu_(self.activation.gelu_approximate());
        w.mlp_proj.add_into(x, &hidden);
    }
}

/// One query per sequence and head, `q [B·H, 1, D]` (fp32), against the first `slot + 1`
/// positions of an fp32 cache on the host with the additive `key_bias [B·H, 1, ≥ slot+1]`:
/// [`attention::attend`], fused, which on a CPU beats both SDPA (made for long queries) and two
/// batched matmuls (one MKL matrix-vector call per sequence-head each). `[B·H, 1, D]`.
fn attend_on_host(q: &Tensor, key_bias: &Tensor, lc: &LayerCache, slot: i64) -> Tensor {
    let (q, key_bias) = (q.contiguous(), key_bias.to_kind(Kind::Float).contiguous());
    let (bh, _, d) = q.size3().expect("[B·H, 1, D]");
    let mut y = Tensor::empty([bh, 1, d], (Kind::Float, Device::Cpu)); // [B·H, 1, D]
    attention::attend(
        attention::Shape {
            rows: bh as usize,
            d: d as usize,
            t_max: lc.k.size()[2] as usize,
            len: slot as usize + 1,
            bias_len: key_bias.size()[2] as usize,
        },
        host(&q),
        host(&lc.k),
        host(&lc.v),
        host(&key_bias),
        host_mut(&mut y),
    );
    y
}

/// The elements of a contiguous fp32 CPU tensor, read in place.
fn host(t: &Tensor) -> &[f32] {
    assert!(t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous());
    // SAFETY: a contiguous fp32 CPU tensor holds numel f32s at data_ptr, alive while `t` is.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

/// The elements of a contiguous fp32 CPU tensor, written in place.
fn host_mut(t: &mut Tensor) -> &mut [f32] {
    assert!(t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous());
    // SAFETY: as in `host`; the &mut borrow keeps this the only Rust view of the memory.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }
}

/// The elements of a contiguous i64 CPU tensor, read in place.
fn host_i64(t: &Tensor) -> &[i64] {
    assert!(t.kind() == Kind::Int64 && t.device() == Device::Cpu && t.is_contiguous());
    // SAFETY: as in `host`, for i64.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const i64, t.numel()) }
}

/// `m [B, N] += bias [N]` on every row.
fn add_rows(m: &mut Tensor, bias: &Tensor) {
    let bias = host(bias);
    for row in host_mut(m).chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// GPT-2's LayerNorm (the routes of this file are GPT-2's).
fn layer_norm(n: &Norm) -> &nn::LayerNorm {
    match n {
        Norm::Layer(ln) => ln,
        Norm::Rms { .. } => unreachable!("GPT-2 blocks use LayerNorm"),
    }
}

impl Gpt {
    fn gpt2_wpe(&self) -> &Tensor {
        self.wpe.as_ref().expect("GPT-2 has a position table")
    }
}

/// `x [B, C] += bias` (when given), then `out = LayerNorm(x)` (epsilon `eps`) row by row.
fn add_and_layer_norm(
    x: &mut Tensor,
    bias: Option<&Tensor>,
    ln: &nn::LayerNorm,
    eps: f32,
    out: &mut Tensor,
) {
    let gamma = host(ln.ws.as_ref().expect("LayerNorm has a weight"));
    let beta = host(ln.bs.as_ref().expect("LayerNorm has a bias"));
    let bias = bias.map(host);
    let (x, out) = (host_mut(x), host_mut(out));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the one feature `layer_norm_avx2` is compiled for beyond the
        // baseline.
        return unsafe { layer_norm_avx2(x, bias, gamma, beta, eps, out) };
    }
    layer_norm_rows(x, bias, gamma, beta, eps, out);
}

/// [`layer_norm_rows`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn layer_norm_avx2(
    x: &mut [f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    layer_norm_rows(x, bias, gamma, beta, eps, out);
}

#[inline(always)]
fn layer_norm_rows(
    x: &mut [f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let c = gamma.len();
    for (row, o) in x.chunks_exact_mut(c).zip(out.chunks_exact_mut(c)) {
        if let Some(bias) = bias {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        let mean = host::lane_sum(row, |v| v) / c as f32;
        let var = host::lane_sum(row, |v| (v - mean) * (v - mean)) / c as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), g), b) in o.iter_mut().zip(&*row).zip(gamma).zip(beta) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

/// Adds the attention bias to `qkv [B, 3C]` and scatters it: queries into `q [B·H, 1, D]`, keys
/// and values into the cache at `slot` (both `[B, H, T_max, D]`).
fn scatter_qkv(
    qkv: &Tensor,
    bias: &Tensor,
    q: &mut Tensor,
    lc: &mut LayerCache,
    slot: i64,
    h: i64,
) {
    let (qkv, bias) = (host(qkv), host(bias));
    let c = bias.len() / 3;
    let d = c / h as usize;
    let t_max = lc.v.size()[2] as usize;
    let slot = slot as usize;
    let (q, keys, values) = (host_mut(q), host_mut(&mut lc.k), host_mut(&mut lc.v));
    let add = |out: &mut [f32], x: &[f32], b: &[f32]| {
        for ((o, x), b) in out.iter_mut().zip(x).zip(b) {
            *o = x + b;
        }
    };
    for (i, (row, q)) in qkv
        .chunks_exact(3 * c)
        .zip(q.chunks_exact_mut(c))
        .enumerate()
    {
        add(q, &row[..c], &bias[..c]);
        for j in 0..h as usize {
            // Head j's channels are columns j·D..(j+1)·D of the key and value parts of the row.
            let at = ((i * h as usize + j) * t_max + slot) * d;
            let (kc, vc) = (c + j * d, 2 * c + j * d);
            add(&mut keys[at..at + d], &row[kc..kc + d], &bias[kc..kc + d]);
            add(&mut values[at..at + d], &row[vc..vc + d], &bias[vc..vc + d]);
        }
    }
}
