//! Batched sampling with the KV cache: left-padded prompts of different lengths, temperature, top-k,
//! top-p; each sequence stops at its own EOS and is padded after it.

use crate::lm::model::{
    additive_mask, attention_mask, key_bias, positions_from_valid, Gpt, KvCache,
};
use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; log-probs are reported at this temperature. 0 means greedy. Default 0.7
    /// (the common RLHF trainer's default).
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 turns it off (default).
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches p; 1 turns it off (default).
    pub top_p: f64,
    /// Most tokens generated per completion (EOS included). Default 24.
    pub max_new_tokens: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 24,
        }
    }
}

impl SamplingConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(AgentError::config(
                "temperature",
                "expected a finite value ≥ 0",
            ));
        }
        if self.top_k < 0 {
            return Err(AgentError::config("top_k", "expected ≥ 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(AgentError::config("top_p", "expected a value in (0, 1]"));
        }
        if self.max_new_tokens == 0 {
            return Err(AgentError::config("max_new_tokens", "expected > 0"));
        }
        Ok(())
    }
}

/// Prompts and what follows them, for a teacher-forced pass (every scoring function takes one).
pub struct Sequences {
    /// Left-padded prompts `[B, L_p]` (i64).
    pub prompt: Tensor,
    /// Which prompt slots are real tokens `[B, L_p]` (bool).
    pub prompt_valid: Tensor,
    /// The tokens after the prompt `[B, N]` (i64), PAD after the end.
    pub tokens: Tensor,
    /// Which of them are real tokens, the policy's and an env's alike `[B, N]` (bool): attention
    /// reads these.
    pub valid: Tensor,
    /// Which of them the policy produced `[B, N]` (f32): only these are scored, trained on, or
    /// counted in KL, entropy and means.
    pub mask: Tensor,
}

impl Sequences {
    /// Rows `idx [k]` of every tensor.
    pub fn select(&self, idx: &Tensor) -> Sequences {
        Sequences {
            prompt: self.prompt.index_select(0, idx),
            prompt_valid: self.prompt_valid.index_select(0, idx),
            tokens: self.tokens.index_select(0, idx),
            valid: self.valid.index_select(0, idx),
            mask: self.mask.index_select(0, idx),
        }
    }
}

/// A batch of sampled completions, all on the model's device.
pub struct Generation {
    /// Left-padded prompts `[B, L_p]` (i64).
    pub prompt: Tensor,
    /// Which prompt slots are real tokens `[B, L_p]` (bool).
    pub prompt_valid: Tensor,
    /// Completion tokens `[B, N]` (i64), PAD after the end.
    pub tokens: Tensor,
    /// Log-probs of the completion tokens at the sampling temperature `[B, N]` (f32, 0 on padding).
    pub logprobs: Tensor,
    /// 1 for real completion tokens (EOS included), 0 for padding `[B, N]` (f32).
    pub mask: Tensor,
}

impl Generation {
    /// The sampled sequences, for a teacher-forced pass (every completion token is the policy's).
    pub fn sequences(&self) -> Sequences {
        Sequences {
            prompt: self.prompt.shallow_clone(),
            prompt_valid: self.prompt_valid.shallow_clone(),
            tokens: self.tokens.shallow_clone(),
            valid: self.mask.to_kind(Kind::Bool),
            mask: self.mask.shallow_clone(),
        }
    }

    /// Completion token ids per sequence, cut after EOS (EOS kept when present).
    pub fn completions(&self) -> Vec<Vec<u32>> {
        let toks: Vec<Vec<i64>> =
            Vec::<Vec<i64>>::try_from(&self.tokens.to_device(Device::Cpu)).unwrap_or_default();
        let mask: Vec<Vec<f32>> =
            Vec::<Vec<f32>>::try_from(&self.mask.to_device(Device::Cpu)).unwrap_or_default();
        toks.iter()
            .zip(&mask)
            .map(|(t, m)| {
                t.iter()
                    .zip(m)
                    .filter(|(_, &m)| m > 0.5)
                    .map(|(&x, _)| x as u32)
                    .collect()
            })
            .collect()
    }
}

/// Left-pad `prompts` with `pad`: tokens `[B, L]` (i64) and validity `[B, L]` (bool).
pub fn left_pad(prompts: &[Vec<u32>], pad: u32, device: Device) -> (Tensor, Tensor) {
    let l = prompts.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
    let mut toks = Vec::with_capacity(prompts.len() * l);
    let mut valid = Vec::with_capacity(prompts.len() * l);
    for p in prompts {
        toks.extend(
            std::iter::repeat_n(pad as i64, l - p.len()).chain(p.iter().map(|&x| x as i64)),
        );
        valid.extend(
            std::iter::repeat_n(false, l - p.len()).chain(std::iter::repeat_n(true, p.len())),
        );
    }
    let b = prompts.len() as i64;
    let t = Tensor::from_slice(&toks)
        .view([b, l as i64])
        .to_device(device);
    let v = Tensor::from_slice(&valid)
        .view([b, l as i64])
        .to_device(device);
    (t, v)
}

/// Right-pad `seqs` with `pad`: tokens `[B, T]` (i64) and validity `[B, T]` (bool), T ≥ 1.
pub fn right_pad<S: AsRef<[u32]>>(seqs: &[S], pad: u32, device: Device) -> (Tensor, Tensor) {
    let t = seqs
        .iter()
        .map(|s| s.as_ref().len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut toks = Vec::with_capacity(seqs.len() * t);
    let mut valid = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        let s = s.as_ref();
        toks.extend(
            s.iter()
                .map(|&x| x as i64)
                .chain(std::iter::repeat_n(pad as i64, t - s.len())),
        );
        valid.extend(
            std::iter::repeat_n(true, s.len()).chain(std::iter::repeat_n(false, t - s.len())),
        );
    }
    let b = seqs.len() as i64;
    (
        Tensor::from_slice(&toks)
            .view([b, t as i64])
            .to_device(device),
        Tensor::from_slice(&valid)
            .view([b, t as i64])
            .to_device(device),
    )
}

/// Keep the top-k logits and the top-p nucleus of `logits [B, V]`; the rest become −∞.
pub fn filter_logits(logits: &Tensor, top_k: i64, top_p: f64) -> Tensor {
    let mut out = logits.shallow_clone();
    let v = logits.size()[1];
    if top_k > 0 && top_k < v {
        let (vals, _) = out.topk(top_k, -1, true, true); // [B, k]
        let thresh = vals.narrow(1, top_k - 1, 1); // [B, 1]
        out = out.masked_fill(&out.lt_tensor(&thresh), f64::NEG_INFINITY);
    }
    if top_p < 1.0 {
        let (sorted, idx) = out.sort(-1, true); // [B, V]
        let probs = sorted.softmax(-1, Kind::Float);
        let before = probs.cumsum(-1, Kind::Float) - &probs; // mass strictly before each token
        let drop_sorted = before.gt(top_p); // [B, V]
        let drop = drop_sorted.zeros_like().scatter(1, &idx, &drop_sorted);
        out = out.masked_fill(&drop, f64::NEG_INFINITY);
    }
    out
}

/// One draw per row of `probs [B, V]` by inverting the CDF with a single uniform per row: the
/// same distribution as `multinomial`, at a fraction of the cost on CPU (which otherwise draws B·V
/// random numbers per step). Zero-probability tokens are never chosen (`right` search).
pub fn sample_categorical(probs: &Tensor) -> Tensor {
    let (b, v) = probs.size2().expect("[B, V]");
    let cdf = probs.cumsum(-1, Kind::Float); // [B, V]
    let u = Tensor::rand([b, 1], (Kind::Float, probs.device())) * cdf.narrow(1, v - 1, 1); // [B, 1]
    u.searchsorted(&cdf, false, true, "right", None::<Tensor>)
        .squeeze_dim(1)
        .clamp_max(v - 1) // [B]
}

/// One decoding step over `logits [B, V]`: the next token of each sequence (PAD once it has
/// ended), its log-prob at the sampling temperature (0 once ended), and which sequences were alive.
fn pick_tokens(
    logits: &Tensor,
    cfg: &SamplingConfig,
    finished: &Tensor,
    pad: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (tok, logp_all) = if cfg.temperature == 0.0 {
        (
            logits.argmax(-1, false),
            logits.log_softmax(-1, Kind::Float),
        )
    } else {
        let scaled = logits / cfg.temperature; // [B, V]
        let probs = filter_logits(&scaled, cfg.top_k, cfg.top_p).softmax(-1, Kind::Float);
        (
            sample_categorical(&probs),
            scaled.log_softmax(-1, Kind::Float),
        ) // [B], [B, V]
    };
    let alive = finished.logical_not(); // [B]
    let tok = tok.where_self(&alive, pad);
    let lp =
        logp_all.gather(1, &tok.unsqueeze(1), false).squeeze_dim(1) * alive.to_kind(Kind::Float); // [B]
    (tok, lp, alive)
}

/// Sample up to `cfg.max_new_tokens` tokens after each prompt with the KV cache, each sequence
/// stopping at its EOS. The torch RNG must be seeded by the caller (`tch::manual_seed`) for
/// reproducible samples.
pub fn generate(
    model: &Gpt,
    prompts: &[Vec<u32>],
    pad: u32,
    eos: u32,
    cfg: &SamplingConfig,
    device: Device,
) -> Result<Generation> {
    generate_until(model, prompts, pad, &[eos], cfg, device)
}

/// [`generate`], each sequence stopping at the first of `stops` it samples (EOS, end of turn).
pub fn generate_until(
    model: &Gpt,
    prompts: &[Vec<u32>],
    pad: u32,
    stops: &[u32],
    cfg: &SamplingConfig,
    device: Device,
) -> Result<Generation> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Err(AgentError::Data("no prompts to sample from".into()));
    }
    if stops.is_empty() {
        return Err(AgentError::config(
            "stops",
            "expected at least one stop token",
        ));
    }
    let n = cfg.max_new_tokens as i64;
    let (prompt, prompt_valid) = left_pad(prompts, pad, device);
    let (b, lp) = prompt.size2()?;
    if (lp + n) as usize > model.config().block_size {
        return Err(AgentError::config(
            "max_new_tokens",
            format!(
                "prompt ({lp}) + max_new_tokens ({n}) exceeds the model's block_size {}",
                model.config().block_size
            ),
        ));
    }
    tch::no_grad(|| {
        let w = model.compute_weights();
        let mut cache = KvCache::new(model.config(), b, lp + n, device, model.cache_kind());
        // Decoding masks only the prompt's left padding: a live sequence has no padding after its
        // prompt, and an ended one's outputs are discarded, so one precomputed row serves every
        // step, as an additive mask (0 or −∞) that the attention adds to its scores.
        let key_valid = Tensor::cat(
            &[
                prompt_valid.shallow_clone(),
                Tensor::ones([b, n], (Kind::Bool, device)),
            ],
            1,
        ); // [B, L_p + N]
        let key_bias = key_bias(&key_valid, model.config().n_head as i64, model.cache_kind()); // [B·H, 1, L_p + N]
        let pos = positions_from_valid(&prompt_valid); // [B, L_p]
        let mask = attention_mask(&prompt_valid, 0, lp);
        let h = model.forward_with(&w, &prompt, &pos, &mask, Some(&mut cache), false); // [B, L_p, C]
        let mut logits = model.lm_logits_from(&w, &h.select(1, lp - 1)); // [B, V]
        let dw = model.decode_weights(&w);
        let last_prompt_pos = pos.select(1, lp - 1); // [B]
        let mut finished = Tensor::zeros([b], (Kind::Bool, device));
        let pad_t = Tensor::full([b], pad as i64, (Kind::Int64, device));
        let (mut toks, mut lps, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        let check_every = if device.is_cuda() { 16 } else { 4 };
        let stop_ids: Vec<i64> = stops.iter().map(|&s| s as i64).collect();
        for t in 0..n {
            let (tok, lp_tok, alive) = pick_tokens(&logits, cfg, &finished, &pad_t);
            lps.push(lp_tok);
            masks.push(alive.to_kind(Kind::Float));
            let stopped = stop_ids[1..]
                .iter()
                .fold(tok.eq(stop_ids[0]), |acc, &s| acc.logical_or(&tok.eq(s))); // [B]
            finished = finished.logical_or(&stopped);
            toks.push(tok.shallow_clone());
            // Checking costs a device sync, which on CUDA also stalls the queue of launched
            // kernels: every few steps is enough to stop early (a few more on a GPU).
            if t + 1 == n
                || ((t + 1) % check_every == 0 && bool::try_from(finished.all()).unwrap_or(false))
            {
                break;
            }
            logits = model.decode_step(
                &dw,
                &tok,
                &(&last_prompt_pos + (t + 1)),
                &key_bias,
                &mut cache,
            ); // [B, V]
        }
        Ok(Generation {
            prompt,
            prompt_valid,
            tokens: Tensor::stack(&toks, 1),
            logprobs: Tensor::stack(&lps, 1),
            mask: Tensor::stack(&masks, 1),
        })
    })
}

/// Outputs of a teacher-forced pass over prompt + completion.
pub struct SequenceOutputs {
    /// Log-probs of the completion tokens at the given temperature `[B, N]`, 0 on padding.
    pub logprobs: Tensor,
    /// Entropy of the next-token distribution at each completion position `[B, N]`.
    pub entropy: Tensor,
    /// Trunk output at the positions that predict each completion token `[B, N, C]`.
    pub hidden: Tensor,
}

/// Trunk output `[B, N, C]` at the positions that predict each token after the prompt, from a
/// teacher-forced pass over `s.prompt` + `s.tokens` (attention over `s.valid`). Heads that read the
/// trunk (the critic) need nothing more.
pub fn completion_hidden(model: &Gpt, s: &Sequences, train: bool) -> Tensor {
    let lp = s.prompt.size()[1];
    let n = s.tokens.size()[1];
    let key_valid = [
        s.prompt_valid.to_kind(Kind::Bool),
        s.valid.to_kind(Kind::Bool),
    ];
    let valid = Tensor::cat(&key_valid, 1); // [B, L_p + N]

    // Rows that share their prompt (the group agents' G samples of one) run its tokens once.
    let (prompt_rows, inverse) = distinct_prompts(s); // [U, 2·L_p], [B]
    let (b, u) = (s.prompt.size()[0], prompt_rows.size()[0]);
    if u == b || n == 0 {
        // The last token predicts nothing: the pass stops before it.
        let m = (n - 1).max(0);
        let full = Tensor::cat(&[&s.prompt, &s.tokens.narrow(1, 0, m)], 1); // [B, L_p + N − 1]
        let h = model.forward_full(&full, &valid.narrow(1, 0, lp + m), train); // [B, L_p + N − 1, C]
        return h.narrow(1, lp - 1, n); // [B, N, C]
    }
    shared_prompt_hidden(model, s, &prompt_rows, &inverse, &valid, train)
}

/// The distinct prompts of `s` as rows `[U, 2·L_p]` (tokens, then validity) and which of them
/// each sequence has `[B]`.
pub fn distinct_prompts(s: &Sequences) -> (Tensor, Tensor) {
    let rows = Tensor::cat(&[&s.prompt, &s.prompt_valid.to_kind(Kind::Int64)], 1); // [B, 2·L_p]
    let (distinct, inverse, _) = rows.unique_dim(0, false, true, false);
    (distinct, inverse)
}

/// [`completion_hidden`] for a batch of `B` rows with `U < B` distinct prompts `prompt_rows
/// [U, 2·L_p]` (tokens, then validity), row i's being `inverse[i]`: the prompts go through the
/// trunk once, into an fp32 KV cache that each row then reads (with gradients flowing back to
/// the prompt's pass from every row that read it), and the completions run after them. The same
/// outputs as the whole-sequence pass up to float rounding, for U·L_p + B·N tokens instead of
/// B·(L_p + N).
fn shared_prompt_hidden(
    model: &Gpt,
    s: &Sequences,
    prompt_rows: &Tensor,
    inverse: &Tensor,
    valid: &Tensor,
    train: bool,
) -> Tensor {
    let (lp, n) = (s.prompt.size()[1], s.tokens.size()[1]);
    let u = prompt_rows.size()[0];
    let prompt = prompt_rows.narrow(1, 0, lp); // [U, L_p]
    let prompt_valid = prompt_rows.narrow(1, lp, lp).to_kind(Kind::Bool); // [U, L_p]
    let w = model.compute_weights();
    // The last completion token predicts nothing: the completions' pass stops before it.
    let m = n - 1;
    let mut cache = KvCache::growing(model.config(), u, s.prompt.device(), Kind::Float);
    let pos = positions_from_valid(&prompt_valid); // [U, L_p]
    let mask = additive_mask(&attention_mask(&prompt_valid, 0, lp), Kind::Float);
    let h_prompt = model.forward_with(&w, &prompt, &pos, &mask, Some(&mut cache), train); // [U, L_p, C]

    // The prompt's last position predicts the first completion token.
    let first = h_prompt
        .select(1, lp - 1)
        .index_select(0, inverse)
        .unsqueeze(1); // [B, 1, C]
    if m == 0 {
        return first; // [B, 1, C]
    }
    let mut cache = cache.select_rows(inverse); // B rows
    let valid = valid.narrow(1, 0, lp + m); // [B, L_p + N − 1]
    let positions = positions_from_valid(&valid).narrow(1, lp, m); // [B, N − 1]
    let mask = additive_mask(&attention_mask(&valid, lp, m), Kind::Float); // [B, 1, N − 1, L_p + N − 1]
    let tokens = s.tokens.narrow(1, 0, m); // [B, N − 1]
    let h = model.forward_with(&w, &tokens, &positions, &mask, Some(&mut cache), train); // [B, N − 1, C]
    Tensor::cat(&[first, h], 1) // [B, N, C]
}

/// Next-token log-distributions `[B, N, V]` at `temperature` (0 reads as 1, as greedy sampling
/// reports log-probs) and the log-probs of `tokens`, zeroed where `mask` is 0.
fn completion_logp(
    model: &Gpt,
    hidden: &Tensor,
    tokens: &Tensor,
    mask: &Tensor,
    temperature: f64,
) -> (Tensor, Tensor) {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    // The head is linear without a bias, so dividing its input by t divides the logits: over C
    // channels instead of V vocabulary entries, forward and back (49,152 against 576 for
    // SmolLM2). At temperature 1 there is nothing to divide.
    let logits = if t == 1.0 {
        model.lm_logits(hidden)
    } else {
        model.lm_logits(&(hidden / t))
    }; // [B, N, V]
    let logp_all = logits.log_softmax(-1, Kind::Float); // [B, N, V]
    let logprobs = logp_all
        .gather(2, &tokens.unsqueeze(-1), false)
        .squeeze_dim(-1)
        * mask; // [B, N]
    (logprobs, logp_all)
}

/// The log-probs `[B, N]` the model gives the policy's tokens at `temperature` (as sampling
/// reports them), 0 elsewhere.
pub fn sequence_logprobs(model: &Gpt, s: &Sequences, temperature: f64, train: bool) -> Tensor {
    let hidden = completion_hidden(model, s, train);
    completion_logp(model, &hidden, &s.tokens, &s.mask, temperature).0
}

/// Whether [`SequenceOutputs::entropy`] takes part in the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropyGrad {
    /// A loss term reads it (PPO's entropy bonus): computed with autograd.
    Tracked,
    /// Only logged: computed without autograd, so its `[B, N, V]` intermediates are neither
    /// recorded nor kept alive until the backward.
    Detached,
}

/// Log-probs, per-position entropies and trunk output of a teacher-forced pass (see
/// [`sequence_logprobs`]; this one also pays for the entropy).
pub fn sequence_outputs(
    model: &Gpt,
    s: &Sequences,
    temperature: f64,
    train: bool,
    entropy_grad: EntropyGrad,
) -> SequenceOutputs {
    let hidden = completion_hidden(model, s, train);
    let (logprobs, logp_all) = completion_logp(model, &hidden, &s.tokens, &s.mask, temperature);
    let entropy = |logp_all: &Tensor| {
        -(logp_all.exp() * logp_all).sum_dim_intlist(-1, false, Kind::Float) * &s.mask
        // [B, N]
    };
    let entropy = match entropy_grad {
        EntropyGrad::Tracked => entropy(&logp_all),
        EntropyGrad::Detached => tch::no_grad(|| entropy(&logp_all)),
    }; // [B, N]
    SequenceOutputs {
        logprobs,
        entropy,
        hidden,
    }
}

/// Sampling without the KV cache: every step recomputes the whole prefix. Same results as
/// [`generate`] up to float rounding; kept as the baseline the cache is measured against.
pub fn generate_without_cache(
    model: &Gpt,
    prompts: &[Vec<u32>],
    pad: u32,
    eos: u32,
    cfg: &SamplingConfig,
    device: Device,
) -> Result<Generation> {
    cfg.validate()?;
    let n = cfg.max_new_tokens as i64;
    let (prompt, prompt_valid) = left_pad(prompts, pad, device);
    let b = prompt.size()[0];
    tch::no_grad(|| {
        let mut seq = prompt.shallow_clone();
        let mut valid = prompt_valid.shallow_clone();
        let mut finished = Tensor::zeros([b], (Kind::Bool, device));
        let pad_t = Tensor::full([b], pad as i64, (Kind::Int64, device));
        let (mut toks, mut lps, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let h = model.forward_full(&seq, &valid, false); // [B, T, C]
            let t = seq.size()[1];
            let logits = model.lm_logits(&h.select(1, t - 1)); // [B, V]
            let (tok, lp_tok, alive) = pick_tokens(&logits, cfg, &finished, &pad_t);
            lps.push(lp_tok);
            masks.push(alive.to_kind(Kind::Float));
            finished = finished.logical_or(&tok.eq(eos as i64));
            seq = Tensor::cat(&[&seq, &tok.unsqueeze(1)], 1);
            valid = Tensor::cat(&[&valid, &alive.unsqueeze(1)], 1);
            toks.push(tok);
        }
        Ok(Generation {
            prompt,
            prompt_valid,
            tokens: Tensor::stack(&toks, 1),
            logprobs: Tensor::stack(&lps, 1),
            mask: Tensor::stack(&masks, 1),
        })
    })
}

/// What one turn sampled, on the device.
pub struct Turn {
    /// Sampled tokens `[B, N]` (i64), PAD where a sequence was not sampling.
    pub tokens: Tensor,
    /// Their log-probs at the sampling temperature `[B, N]`, 0 elsewhere.
    pub logprobs: Tensor,
    /// 1 where a token was sampled `[B, N]` (f32).
    pub mask: Tensor,
}

/// Conversations sampled turn by turn with one KV cache: the prompts are prefilled once; each turn
/// decodes the next policy turn of the live sequences; an env's reply is prefilled after it while
/// the other sequences keep their place. The cache may hold gaps (left padding, the slots of a
/// sequence that stopped early, a shorter reply): `key_valid` masks them out of every later
/// attention, and each sequence's positions count its own tokens only, so the log-probs equal a
/// teacher-forced pass over the conversation without the gaps.
pub struct TurnSampler<'a> {
    model: &'a Gpt,
    weights: crate::lm::model::ComputeWeights,
    decode: crate::lm::model::DecodeWeights,
    cache: KvCache,
    /// Which cache slots hold real tokens `[B, len]` (bool).
    key_valid: Tensor,
    /// Position of each sequence's next token `[B]` (i64).
    next_pos: Tensor,
    /// Next-token logits of every sequence `[B, V]` (fp32).
    logits: Tensor,
    pad: u32,
    stops: Vec<i64>,
    device: Device,
}

impl<'a> TurnSampler<'a> {
    /// Prefill `prompts` (left-padded). The torch RNG must be seeded by the caller.
    pub fn new(
        model: &'a Gpt,
        prompts: &[Vec<u32>],
        pad: u32,
        stops: &[u32],
        device: Device,
    ) -> Result<Self> {
        if prompts.is_empty() {
            return Err(AgentError::Data("no prompts to sample from".into()));
        }
        if stops.is_empty() {
            return Err(AgentError::config(
                "stops",
                "expected at least one stop token",
            ));
        }
        // The group agents sample G completions of each prompt: prefill each distinct prompt once
        // and give its copies its cache.
        let mut distinct: Vec<&Vec<u32>> = Vec::new();
        let mut first: std::collections::HashMap<&Vec<u32>, i64> = Default::default();
        let rows: Vec<i64> = prompts
            .iter()
            .map(|p| {
                *first.entry(p).or_insert_with(|| {
                    distinct.push(p);
                    distinct.len() as i64 - 1
                })
            })
            .collect();
        let distinct: Vec<Vec<u32>> = distinct.into_iter().cloned().collect();
        let (prompt, prompt_valid) = left_pad(&distinct, pad, device); // [U, L_p]
        let (u, lp) = prompt.size2()?;
        if lp as usize > model.config().block_size {
            return Err(AgentError::config(
                "prompt",
                format!(
                    "{lp} tokens exceed the model's block_size {}",
                    model.config().block_size
                ),
            ));
        }
        tch::no_grad(|| {
            let weights = model.compute_weights();
            let decode = model.decode_weights(&weights);
            // The prompts only: `turn` and `append` grow the cache by what each needs, after the
            // prompts' copies are made (copying a turn's empty room G times cost more than the
            // growth). Never the whole context: a real model's (8192 positions for SmolLM2)
            // would take gigabytes per batch.
            let mut cache = KvCache::new(model.config(), u, lp, device, model.cache_kind());
            let pos = positions_from_valid(&prompt_valid); // [U, L_p]
            let mask = attention_mask(&prompt_valid, 0, lp);
            let h = model.forward_with(&weights, &prompt, &pos, &mask, Some(&mut cache), false); // [U, L_p, C]
            let mut logits = model.lm_logits_from(&weights, &h.select(1, lp - 1)); // [U, V]
            let (mut pos, mut prompt_valid) = (pos, prompt_valid);
            if (u as usize) < prompts.len() {
                let rows = Tensor::from_slice(&rows).to_device(device); // [B]
                cache = cache.select_rows(&rows);
                logits = logits.index_select(0, &rows); // [B, V]
                pos = pos.index_select(0, &rows); // [B, L_p]
                prompt_valid = prompt_valid.index_select(0, &rows); // [B, L_p]
            }
            Ok(Self {
                model,
                next_pos: pos.select(1, lp - 1) + 1,
                key_valid: prompt_valid.to_kind(Kind::Bool),
                logits,
                weights,
                decode,
                cache,
                pad,
                stops: stops.iter().map(|&s| s as i64).collect(),
                device,
            })
        })
    }

    /// Sample up to `cfg.max_new_tokens` tokens for the sequences where `live [B]` (bool) is true,
    /// each stopping at its first stop token. Every sampled token is written to the cache, so a
    /// reply can follow.
    pub fn turn(&mut self, live: &Tensor, cfg: &SamplingConfig) -> Result<Turn> {
        cfg.validate()?;
        let n = cfg.max_new_tokens as i64;
        let b = self.logits.size()[0];
        tch::no_grad(|| {
            self.cache.reserve(n);
            let len = self.cache.len();
            // This turn's slots count as valid while it decodes (a stopped sequence's outputs are
            // discarded); afterwards only the sampled ones stay valid.
            let open = Tensor::ones([b, self.cache.capacity() - len], (Kind::Bool, self.device));
            let kb = key_bias(
                &Tensor::cat(&[&self.key_valid, &open], 1),
                self.model.config().n_head as i64,
                self.model.cache_kind(),
            ); // [B·H, 1, capacity]
            let pad_t = Tensor::full([b], self.pad as i64, (Kind::Int64, self.device));
            let mut finished = live.logical_not(); // [B]
            let (mut toks, mut lps, mut masks) = (Vec::new(), Vec::new(), Vec::new());
            // Checking costs a device sync: every few steps is enough (more on a GPU).
            let check_every = if self.device.is_cuda() { 16 } else { 4 };
            for t in 0..n {
                if t % check_every == 0 && bool::try_from(finished.all()).unwrap_or(false) {
                    break;
                }
                let (tok, lp_tok, alive) = pick_tokens(&self.logits, cfg, &finished, &pad_t);
                let stopped = self.stops[1..]
                    .iter()
                    .fold(tok.eq(self.stops[0]), |acc, &s| acc.logical_or(&tok.eq(s))); // [B]
                finished = finished.logical_or(&stopped);
                // Feed the token: its key and value are what the next token, or a reply, reads.
                let next = self.model.decode_step(
                    &self.decode,
                    &tok,
                    &self
                        .next_pos
                        .clamp_max(self.model.config().block_size as i64 - 1),
                    &kb,
                    &mut self.cache,
                ); // [B, V]
                   // A sequence that has stopped keeps the logits of its last real token.
                self.logits = next.where_self(&alive.unsqueeze(1), &self.logits);
                self.next_pos += alive.to_kind(Kind::Int64);
                toks.push(tok);
                lps.push(lp_tok);
                masks.push(alive.to_kind(Kind::Float));
            }
            let sampled = masks.len() as i64;
            let mask = if sampled == 0 {
                Tensor::zeros([b, 0], (Kind::Float, self.device))
            } else {
                Tensor::stack(&masks, 1)
            }; // [B, n]
            self.key_valid = Tensor::cat(&[&self.key_valid, &mask.to_kind(Kind::Bool)], 1);
            debug_assert_eq!(self.key_valid.size()[1], len + sampled);
            let stack = |v: &[Tensor], k: Kind| {
                if v.is_empty() {
                    Tensor::zeros([b, 0], (k, self.device))
                } else {
                    Tensor::stack(v, 1)
                }
            };
            Ok(Turn {
                tokens: stack(&toks, Kind::Int64),
                logprobs: stack(&lps, Kind::Float),
                mask,
            })
        })
    }

    /// Prefill `chunks[i]` after sequence i (an env's reply; empty for none) as one right-aligned
    /// chunk; the sequences with a chunk continue from its last token.
    pub fn append(&mut self, chunks: &[Vec<u32>]) -> Result<()> {
        let r = chunks.iter().map(|c| c.len()).max().unwrap_or(0) as i64;
        if r == 0 {
            return Ok(());
        }
        let (tokens, valid) = left_pad(chunks, self.pad, self.device); // [B, R]
        tch::no_grad(|| {
            self.cache.reserve(r);
            let len = self.cache.len();
            let keys = Tensor::cat(&[&self.key_valid, &valid], 1); // [B, len + R]
            let offset = valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1; // [B, R]
            let pos = (self.next_pos.unsqueeze(1) + offset.clamp_min(0))
                .clamp_max(self.model.config().block_size as i64 - 1)
                * valid.to_kind(Kind::Int64); // [B, R]
            let mask = attention_mask(&keys, len, r); // [B, 1, R, len + R]
            let h = self.model.forward_with(
                &self.weights,
                &tokens,
                &pos,
                &mask,
                Some(&mut self.cache),
                false,
            ); // [B, R, C]
            let last = self
                .model
                .lm_logits_from(&self.weights, &h.select(1, r - 1)); // [B, V]
            let has = valid.select(1, r - 1).unsqueeze(1); // [B, 1]
            self.logits = last.where_self(&has, &self.logits);
            self.next_pos += valid
                .to_kind(Kind::Int64)
                .sum_dim_intlist(1, false, Kind::Int64);
            self.key_valid = keys;
            Ok(())
        })
    }
}
