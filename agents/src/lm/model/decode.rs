//! One decoding step: one new token per sequence through the trunk and the LM head, reading and
//! extending the KV cache. The same math as [`Gpt::forward`] with a cache followed by
//! [`Gpt::lm_logits`], in as few libtorch calls as it takes. The Llama family decodes through
//! [`Gpt::forward_with`] itself (its q/k/v and gate/up matrices are fused once per `generate`); GPT-2
//! by one of two routes:
//!
//! - **Tensor ops** (any device, any precision): 2-D activations, weights pre-transposed once per
//!   `generate`, attention in the cache's kind (SDPA on a GPU; on a CPU, whose cache is fp32 in
//!   every precision, the fused attention of [`attention`]), residual adds in place.
//! - **CPU fp32** (where libtorch links a BLAS with `sgemm`, as its own builds do): no libtorch
//!   call inside the step. One parallel region on libtorch's OpenMP team ([`host`]), each thread
//!   taking its own sequences through every layer and the head: the matmuls are `sgemm` on its
//!   rows ([`blas`]); embeddings, LayerNorms, biases, GELU ([`activation`]), the cache writes
//!   and the attention ([`attention`]) are Rust loops over the tensors' memory. Each libtorch call
//!   costs 3–5 µs beyond its arithmetic once the matmuls have pushed the dispatcher out of the
//!   caches, and each of its parallel ops opens a region of its own, while the other thread spins
//!   (10–20% of `perf`'s samples in sampling) through every serial stretch between them. Against
//!   the route before it (libtorch for the matmuls and GELU, Rust loops for the rest), tiny fp32
//!   W6's sampling went from 0.246 to 0.183 s (medians of 24 iterations, interleaved).

mod activation;
mod attention;
mod blas;
mod host;

use super::{
    additive_mask, Block, ComputeWeights, Family, Gpt, KvCache, LayerCache, LinearWeights,
    MatmulKind, Norm, SharedPrefix,
};
use host::avx2_dispatch;
use tch::{Device, Kind, Tensor};

/// Below this many sequences the host route's step runs on the calling thread.
const MIN_SPLIT: usize = 2;

/// A linear layer as decoding reads it: the weight transposed to `[I, O]` and contiguous (at a
/// decoding step's few rows a plain matmul on it is 1.2–2× faster on CPU than `linear`'s
/// transposed read) and the bias `[O]`, both in the matmuls' arithmetic kind.
struct DecodeLinear {
    w_t: Tensor,
    b: Tensor,
    kind: MatmulKind,
}

impl DecodeLinear {
    fn new(l: &LinearWeights) -> Self {
        Self {
            w_t: l.merged().tr().contiguous(),
            b: l.b
                .as_ref()
                .expect("GPT-2 layers have biases")
                .shallow_clone(),
            kind: l.kind,
        }
    }
    /// `x·Wᵀ + b` `[B, O]` in the values' kind for `x [B, I]` in the values' kind.
    fn apply(&self, x: &Tensor) -> Tensor {
        let mut y = x.to_kind(self.kind.arithmetic).mm(&self.w_t);
        y += &self.b;
        self.kind.result(y)
    }
    /// Adds `x·Wᵀ + b` into the fp32 stream `acc [B, O]`.
    fn add_into(&self, acc: &mut Tensor, x: &Tensor) {
        if x.kind() == acc.kind() {
            let _ = acc.addmm_(x, &self.w_t);
        } else {
            *acc += self
                .kind
                .result(x.to_kind(self.kind.arithmetic).mm(&self.w_t));
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
    kind: MatmulKind,
    /// The BLAS of the CPU fp32 route, where that route applies.
    host: Option<blas::Gemm>,
    /// The Llama family's weights, for decoding through the forward pass.
    forward: Option<ComputeWeights>,
}

impl DecodeWeights {
    /// Take the tensor-ops route even where the CPU route applies (to test one against the other).
    #[cfg(test)]
    pub(crate) fn tensor_ops_only(mut self) -> Self {
        self.host = None;
        self
    }
}

/// The additive attention mask a decoding step reads, `[B·H, 1, L]` in `kind`: 0 where
/// `key_valid [B, L]` is true, −∞ where not.
pub fn key_bias(key_valid: &Tensor, n_head: i64, kind: Kind) -> Tensor {
    let (b, l) = key_valid.size2().expect("[B, L]");
    additive_mask(key_valid, kind)
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
                kind: w.kind,
                host: None,
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
            kind: w.kind,
            // The CPU fp32 route calls the BLAS libtorch links (its own builds carry MKL's).
            host: (self.device() == Device::Cpu && w.kind.values == Kind::Float)
                .then(blas::sgemm)
                .flatten(),
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
        let logits = if let Some(gemm) = w.host {
            self.decode_on_host(w, gemm, tokens, positions, key_bias, cache)
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
        // Once per step rather than per layer: the mask in the cache's kind, and which rows
        // share their first positions.
        let cache_kind = cache.layers.first().map_or(Kind::Float, |lc| lc.k.kind());
        let key_bias = key_bias.to_kind(cache_kind).contiguous(); // [B·H, 1, L]
        let sources = sources(cache.shared.as_ref(), self.cfg.n_head);
        for ((blk, bw), lc) in self.blocks.iter().zip(&w.blocks).zip(&mut cache.layers) {
            blk.decode(bw, &mut x, &key_bias, sources, slot, lc);
        }
        let h = w.kind.operand(&self.norm_f.forward(&x)); // [B, C]
        w.kind.result(h.mm(&w.wte_t)).to_kind(Kind::Float) // [B, V]
    }

    /// The CPU fp32 route: the whole step in one parallel region on libtorch's team, each thread
    /// taking its own rows (sequences) through every layer and the LM head. A row's arithmetic
    /// reads only its own activations and cache, so the threads never wait for each other; the
    /// matmuls are `sgemm` on the thread's rows ([`blas`]), the rest Rust loops.
    fn decode_on_host(
        &self,
        w: &DecodeWeights,
        gemm: blas::Gemm,
        tokens: &Tensor,
        positions: &Tensor,
        key_bias: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        let b = tokens.size()[0] as usize;
        let c = self.cfg.n_embd;
        let h = self.cfg.n_head;
        let vocab = w.wte_t.size()[1] as usize;
        let (tokens, positions) = (tokens.contiguous(), positions.contiguous());
        let key_bias = key_bias.to_kind(Kind::Float).contiguous(); // [B·H, 1, L]
        let mut logits = Tensor::empty([b as i64, vocab as i64], (Kind::Float, Device::Cpu));
        let t_max = cache.layers.first().map_or(0, |lc| lc.k.size()[2] as usize);
        let attention = attention::Shape {
            rows: 0,
            d: c / h,
            t_max,
            len: cache.len as usize + 1,
            bias_len: key_bias.size()[2] as usize,
        };
        let step = HostStep {
            gemm,
            c,
            h,
            slot: cache.len as usize,
            attention,
            eps: self.cfg.norm_eps as f32,
            approximate: self.cfg.activation == super::Activation::GeluTanh,
            tokens: host_i64(&tokens),
            positions: host_i64(&positions),
            wte: host(&self.wte),
            wpe: host(self.gpt2_wpe()),
            key_bias: host(&key_bias),
            sources: sources(cache.shared.as_ref(), h),
            blocks: self
                .blocks
                .iter()
                .zip(&w.blocks)
                .zip(&mut cache.layers)
                .map(|((blk, bw), lc)| HostBlock {
                    norm_1: HostNorm::of(&blk.norm_1),
                    qkv: HostLinear::of(&bw.c_attn),
                    o_proj: HostLinear::of(&bw.c_proj),
                    norm_2: HostNorm::of(&blk.norm_2),
                    fc: HostLinear::of(&bw.c_fc),
                    mlp_proj: HostLinear::of(&bw.mlp_proj),
                    keys: host_mut(&mut lc.k).as_mut_ptr() as usize,
                    values: host_mut(&mut lc.v).as_mut_ptr() as usize,
                })
                .collect(),
            norm_f: HostNorm::of(&self.norm_f),
            head: host(&w.wte_t),
            logits: host_mut(&mut logits).as_mut_ptr() as usize,
            vocab,
        };
        host::split_rows(b, MIN_SPLIT, &|rows| step.run(rows));
        logits
    }
}

/// A LayerNorm's weight and bias, on the host.
struct HostNorm<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
}

impl<'a> HostNorm<'a> {
    fn of(n: &'a Norm) -> Self {
        let (weight, bias) = layer_norm(n);
        Self {
            gamma: host(weight),
            beta: host(bias),
        }
    }
}

/// A linear layer on the host: `w_t [I, O]` and `b [O]`.
struct HostLinear<'a> {
    w_t: &'a [f32],
    b: &'a [f32],
}

impl<'a> HostLinear<'a> {
    fn of(l: &'a DecodeLinear) -> Self {
        Self {
            w_t: host(&l.w_t),
            b: host(&l.b),
        }
    }

    /// `out [m, O] := x [m, I] · w_t + beta · out` (the bias is the caller's).
    fn product(&self, gemm: blas::Gemm, x: &[f32], beta: f32, out: &mut [f32]) {
        let o = self.b.len();
        let i = self.w_t.len() / o;
        gemm.rows(x.len() / i, o, i, x, self.w_t, beta, out);
    }
}

/// One block's weights and the addresses of its cache `[B, H, T_max, D]` (keys, values), which
/// the threads write at their own rows.
struct HostBlock<'a> {
    norm_1: HostNorm<'a>,
    qkv: HostLinear<'a>,
    o_proj: HostLinear<'a>,
    norm_2: HostNorm<'a>,
    fc: HostLinear<'a>,
    mlp_proj: HostLinear<'a>,
    keys: usize,
    values: usize,
}

/// Everything one decoding step on the host reads, and where it writes (the cache and the logits
/// `[B, V]`, by address: each thread writes its own rows).
struct HostStep<'a> {
    gemm: blas::Gemm,
    c: usize,
    h: usize,
    slot: usize,
    /// The attention's shape (its `rows` set per thread).
    attention: attention::Shape,
    eps: f32,
    /// GELU's tanh form rather than the exact one.
    approximate: bool,
    tokens: &'a [i64],
    positions: &'a [i64],
    wte: &'a [f32],
    wpe: &'a [f32],
    key_bias: &'a [f32],
    /// Which attention rows share their first positions (all the step's rows).
    sources: attention::Sources<'a>,
    blocks: Vec<HostBlock<'a>>,
    norm_f: HostNorm<'a>,
    head: &'a [f32],
    logits: usize,
    vocab: usize,
}

impl HostStep<'_> {
    /// The step for sequences `rows`, on the calling thread.
    fn run(&self, rows: std::ops::Range<usize>) {
        let (m, c, h) = (rows.len(), self.c, self.h);
        if m == 0 {
            return;
        }
        let d = c / h;
        let per_row = h * self.attention.t_max * d;
        let mut x = vec![0f32; m * c]; // [m, C], the residual stream
        for (r, row) in x.chunks_exact_mut(c).enumerate() {
            let (t, p) = (self.tokens[rows.start + r], self.positions[rows.start + r]);
            let (e, q) = (
                &self.wte[t as usize * c..][..c],
                &self.wpe[p as usize * c..][..c],
            );
            for ((o, e), q) in row.iter_mut().zip(e).zip(q) {
                *o = e + q;
            }
        }
        let mut a = vec![0f32; m * c]; // [m, C], a LayerNorm's output
        let mut qkv = vec![0f32; m * 3 * c]; // [m, 3C]
        let mut q = vec![0f32; m * c]; // [m·H, D]
        let mut y = vec![0f32; m * c]; // [m·H, D], the attention's output
        let mut hidden = vec![0f32; m * 4 * c]; // [m, 4C]
        let bias_len = self.attention.bias_len;
        let key_bias = &self.key_bias[rows.start * h * bias_len..rows.end * h * bias_len];
        // The MLP's output bias of the block before, added with the next LayerNorm.
        let mut pending: Option<&[f32]> = None;
        for blk in &self.blocks {
            // SAFETY: rows `rows` of the cache, which no other thread of the step touches; the
            // cache is borrowed mutably by `decode_on_host` until every thread is done.
            let (keys, values) = unsafe {
                let at = rows.start * per_row;
                (
                    std::slice::from_raw_parts_mut((blk.keys as *mut f32).add(at), m * per_row),
                    std::slice::from_raw_parts_mut((blk.values as *mut f32).add(at), m * per_row),
                )
            };
            add_and_layer_norm(
                &mut x,
                pending,
                blk.norm_1.gamma,
                blk.norm_1.beta,
                self.eps,
                &mut a,
            );
            blk.qkv.product(self.gemm, &a, 0.0, &mut qkv);
            scatter_qkv(
                &qkv,
                blk.qkv.b,
                &mut q,
                keys,
                values,
                self.slot,
                h,
                self.attention.t_max,
            );
            let shape = attention::Shape {
                rows: m * h,
                ..self.attention
            };
            let sources = self.sources.from(rows.start * h);
            attention::attend_part(shape, &q, keys, values, key_bias, sources, &mut y);
            blk.o_proj.product(self.gemm, &y, 1.0, &mut x);
            add_and_layer_norm(
                &mut x,
                Some(blk.o_proj.b),
                blk.norm_2.gamma,
                blk.norm_2.beta,
                self.eps,
                &mut a,
            );
            blk.fc.product(self.gemm, &a, 0.0, &mut hidden);
            bias_and_gelu(&mut hidden, blk.fc.b, self.approximate);
            blk.mlp_proj.product(self.gemm, &hidden, 1.0, &mut x);
            pending = Some(blk.mlp_proj.b);
        }
        add_and_layer_norm(
            &mut x,
            pending,
            self.norm_f.gamma,
            self.norm_f.beta,
            self.eps,
            &mut a,
        );
        // SAFETY: rows `rows` of the logits, which no other thread writes; `logits` outlives
        // the step.
        let logits = unsafe {
            std::slice::from_raw_parts_mut(
                (self.logits as *mut f32).add(rows.start * self.vocab),
                m * self.vocab,
            )
        };
        self.gemm.rows(m, self.vocab, c, &a, self.head, 0.0, logits);
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
        sources: attention::Sources<'_>,
        slot: i64,
        lc: &mut LayerCache,
    ) {
        let (b, c) = x.size2().expect("[B, C]");
        let (h, d) = (self.n_head, c / self.n_head);
        let kind = w.c_attn.kind.values;
        // Attention runs in the cache's kind (fp32 on CPU, see `Gpt::cache_kind`).
        let qkv = w.c_attn.apply(&self.norm_1.forward(x).to_kind(kind)); // [B, 3C]
        let q = qkv.narrow(1, 0, c).to_kind(lc.k.kind()); // [B, C]
        lc.k.select(2, slot)
            .copy_(&qkv.narrow(1, c, c).view([b, h, d]));
        lc.v.select(2, slot)
            .copy_(&qkv.narrow(1, 2 * c, c).view([b, h, d]));
        let y = if x.device() == Device::Cpu && lc.k.kind() == Kind::Float {
            attend_on_host(&q.reshape([b * h, 1, d]), key_bias, sources, lc, slot)
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
/// positions of an fp32 cache on the host with the additive `key_bias [B·H, 1, ≥ slot+1]`
/// (fp32): [`attention::attend`], fused, which on a CPU beats both SDPA (made for long queries)
/// and two batched matmuls (one MKL matrix-vector call per sequence-head each). `[B·H, 1, D]`.
fn attend_on_host(
    q: &Tensor,
    key_bias: &Tensor,
    sources: attention::Sources<'_>,
    lc: &LayerCache,
    slot: i64,
) -> Tensor {
    let q = q.contiguous();
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
        host(key_bias),
        sources,
        host_mut(&mut y),
    );
    y
}

/// Which attention rows (`heads` per sequence) read their first positions from another's copy.
fn sources(shared: Option<&SharedPrefix>, heads: usize) -> attention::Sources<'_> {
    shared.map_or(attention::Sources::NONE, |p| attention::Sources {
        slots: p.slots,
        first: &p.first,
        heads,
        offset: 0,
    })
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

/// GPT-2's LayerNorm's weight and bias (the routes of this file are GPT-2's).
fn layer_norm(n: &Norm) -> (&Tensor, &Tensor) {
    match n {
        Norm::Layer { weight, bias, .. } => (weight, bias),
        Norm::Rms { .. } => unreachable!("GPT-2 blocks use LayerNorm"),
    }
}

impl Gpt {
    fn gpt2_wpe(&self) -> &Tensor {
        self.wpe.as_ref().expect("GPT-2 has a position table")
    }
}

avx2_dispatch! {
    /// `x [m, C] += bias` (when given), then `out = LayerNorm(x)` (`gamma`, `beta`, epsilon
    /// `eps`) row by row.
    fn add_and_layer_norm(
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
}

avx2_dispatch! {
    /// `hidden [m, N] += bias [N]` on every row, then GELU (its tanh form if `approximate`).
    fn bias_and_gelu(hidden: &mut [f32], bias: &[f32], approximate: bool) {
        for row in hidden.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            if approximate {
                activation::gelu_tanh(row);
            } else {
                activation::gelu_erf(row);
            }
        }
    }
}

/// Adds the attention bias to `qkv [m, 3C]` and scatters it: queries into `q [m·H, D]`, keys
/// and values into the cache rows `keys`, `values` (both `[m, H, T_max, D]`) at `slot`.
#[allow(clippy::too_many_arguments)]
fn scatter_qkv(
    qkv: &[f32],
    bias: &[f32],
    q: &mut [f32],
    keys: &mut [f32],
    values: &mut [f32],
    slot: usize,
    h: usize,
    t_max: usize,
) {
    let c = bias.len() / 3;
    let d = c / h;
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
        for j in 0..h {
            // Head j's channels are columns j·D..(j+1)·D of the key and value parts of the row.
            let at = ((i * h + j) * t_max + slot) * d;
            let (kc, vc) = (c + j * d, 2 * c + j * d);
            add(&mut keys[at..at + d], &row[kc..kc + d], &bias[kc..kc + d]);
            add(&mut values[at..at + d], &row[vc..vc + d], &bias[vc..vc + d]);
        }
    }
}
