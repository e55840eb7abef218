//! Preference pairs (and single continuations) as tensors: the tokenisation DPO, its offline
//! family, KTO, online DPO and the reward model share — prompts left-padded, continuations
//! right-padded with a mask of the policy's tokens (a conversation's assistant turns only) — and
//! the batched log-prob passes over them.

use crate::lm::policy::LmPolicy;
use crate::lm::sampling::{left_pad, right_pad, sequence_logprobs, Sequences};
use crate::lm::tokenizer::Tokenizer;
use crate::Result;
use aligngym_envs::{derive_seed, Message, PreferencePair, Role, TextCodec};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

/// Tokenised preference pairs: left-padded prompts, right-padded continuations (`[BOS]` prompt;
/// a plain completion `+ [EOS]`; a conversation's assistant turns each `+ [end of turn]`, its other
/// messages rendered as the rollout collector renders an env's reply), on the device.
pub struct PairBatch {
    /// `[P, L_p]` prompts (i64), left-padded.
    pub prompt: Tensor,
    /// `[P, L_p]` prompt validity (bool).
    pub prompt_valid: Tensor,
    /// `[P, N]` chosen tokens.
    pub chosen: Tensor,
    /// `[P, N]` which chosen tokens are real (bool).
    pub chosen_valid: Tensor,
    /// `[P, N]` which chosen tokens are the policy's (f32): the only ones scored.
    pub chosen_mask: Tensor,
    /// `[P, N]` rejected tokens.
    pub rejected: Tensor,
    /// `[P, N]` which rejected tokens are real (bool).
    pub rejected_valid: Tensor,
    /// `[P, N]` which rejected tokens are the policy's (f32).
    pub rejected_mask: Tensor,
}

/// Token ids of a continuation and which of them are the policy's: a plain completion is all the
/// policy's, then EOS; in a conversation only the assistant turns are (each then end-of-turn, or
/// EOS for a tokenizer without one), and the other messages are context, as the chat template adds
/// them after the conversation so far (`prompt` first) — the tokens the rollout collector records.
fn continuation(
    tok: &Tokenizer,
    text: &str,
    conv: Option<(&[Message], &[Message])>,
) -> Result<(Vec<u32>, Vec<bool>)> {
    let Some((prompt, msgs)) = conv else {
        let mut ids = tok.encode_ids(text);
        ids.push(tok.eos_id());
        let n = ids.len();
        return Ok((ids, vec![true; n]));
    };
    let (mut ids, mut policy) = (Vec::new(), Vec::new());
    let mut so_far = prompt.to_vec();
    for m in msgs {
        let part = if m.role == Role::Assistant {
            tok.turn_ids(&m.content)
        } else {
            tok.message_ids(&so_far, m)?
        };
        policy.extend(std::iter::repeat_n(m.role == Role::Assistant, part.len()));
        ids.extend(part);
        so_far.push(m.clone());
    }
    Ok((ids, policy))
}

/// `[BOS]` prompts cut to half the context, left-padded (`[P, L_p]` tokens and validity), and the
/// room left for what follows them.
fn encode_prompts(policy: &LmPolicy, prompts: &[&str]) -> (Tensor, Tensor, usize) {
    let tok = &policy.tokenizer;
    let block = policy.model.config().block_size;
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut ids = tok.encode_prompt(p);
            ids.truncate(block / 2);
            ids
        })
        .collect();
    let lp = ids.iter().map(|p| p.len()).max().unwrap_or(1);
    let (prompt, prompt_valid) = left_pad(&ids, tok.pad_id(), policy.device());
    (prompt, prompt_valid, block.saturating_sub(lp).max(1))
}

/// What follows a prompt: plain text, or a conversation's turns after its prompt messages.
#[derive(Clone, Copy)]
pub enum Continuation<'a> {
    /// A single-turn completion (all the policy's, then EOS).
    Text(&'a str),
    /// The turns after `prompt`.
    Turns {
        /// The conversation's prompt messages.
        prompt: &'a [Message],
        /// The assistant turns and the replies between them.
        turns: &'a [Message],
    },
}

/// Continuations right-padded to `[P, N]`, each cut to `room`: tokens, validity (bool) and the
/// policy-token mask (f32).
fn encode_continuations(
    policy: &LmPolicy,
    conts: &[Continuation],
    room: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let tok = &policy.tokenizer;
    let (ids, pol): (Vec<Vec<u32>>, Vec<Vec<bool>>) = conts
        .iter()
        .map(|c| {
            let (mut ids, mut pol) = match *c {
                Continuation::Text(t) => continuation(tok, t, None)?,
                Continuation::Turns { prompt, turns } => {
                    continuation(tok, "", Some((prompt, turns)))?
                }
            };
            ids.truncate(room);
            pol.truncate(room);
            Ok((ids, pol))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let dev = policy.device();
    let (toks, valid) = right_pad(&ids, tok.pad_id(), dev); // [P, N]
    let n = toks.size()[1] as usize;
    let mask: Vec<f32> = pol
        .iter()
        .flat_map(|p| (0..n).map(move |t| p.get(t).map_or(0.0, |&x| x as u8 as f32)))
        .collect();
    let mask = Tensor::from_slice(&mask)
        .view([conts.len() as i64, n as i64])
        .to_device(dev); // [P, N]
    Ok((toks, valid, mask))
}

/// Prompts and one continuation each, tokenised as DPO and the reward model train on them.
pub fn encode_sequences(
    policy: &LmPolicy,
    prompts: &[&str],
    conts: &[Continuation],
) -> Result<Sequences> {
    let (prompt, prompt_valid, room) = encode_prompts(policy, prompts);
    let (tokens, valid, mask) = encode_continuations(policy, conts, room)?;
    Ok(Sequences {
        prompt,
        prompt_valid,
        tokens,
        valid,
        mask,
    })
}

/// Tokenise pairs for `policy`, cutting prompts to half the context and continuations to what is
/// left.
pub fn encode_pairs(policy: &LmPolicy, pairs: &[PreferencePair]) -> Result<PairBatch> {
    let texts: Vec<&str> = pairs.iter().map(|p| p.prompt.as_str()).collect();
    let (prompt, prompt_valid, room) = encode_prompts(policy, &texts);
    let side = |chosen: bool| {
        let conts: Vec<Continuation> = pairs
            .iter()
            .map(|p| match (&p.conversation, chosen) {
                (Some(c), true) => Continuation::Turns {
                    prompt: &c.prompt,
                    turns: &c.chosen,
                },
                (Some(c), false) => Continuation::Turns {
                    prompt: &c.prompt,
                    turns: &c.rejected,
                },
                (None, true) => Continuation::Text(&p.chosen),
                (None, false) => Continuation::Text(&p.rejected),
            })
            .collect();
        encode_continuations(policy, &conts, room)
    };
    let (chosen, chosen_valid, chosen_mask) = side(true)?;
    let (rejected, rejected_valid, rejected_mask) = side(false)?;
    Ok(PairBatch {
        prompt,
        prompt_valid,
        chosen,
        chosen_valid,
        chosen_mask,
        rejected,
        rejected_valid,
        rejected_mask,
    })
}

/// `[BOS]` prompts, left-padded (`[P, L_p]` tokens and validity), and for each set of completions
/// their tokens `+ [EOS]`, right-padded (`[P, N]` tokens and f32 mask); prompts are cut to half the
/// context and completions to what is left.
pub(crate) fn encode_completions(
    policy: &LmPolicy,
    prompts: &[&str],
    sets: &[Vec<&str>],
) -> (Tensor, Tensor, Vec<(Tensor, Tensor)>) {
    let tok = &policy.tokenizer;
    let (prompt, prompt_valid, room) = encode_prompts(policy, prompts);
    let dev = policy.device();
    let encoded = sets
        .iter()
        .map(|texts| {
            let ids: Vec<Vec<u32>> = texts
                .iter()
                .map(|t| {
                    let mut ids = tok.encode_ids(t);
                    ids.push(tok.eos_id());
                    ids.truncate(room);
                    ids
                })
                .collect();
            let (toks, valid) = right_pad(&ids, tok.pad_id(), dev);
            (toks, valid.to_kind(Kind::Float))
        })
        .collect();
    (prompt, prompt_valid, encoded)
}

/// The pairs at `idx` as one batch of `2k` rows, chosen first then rejected: the prompt `[2k, L_p]`
/// repeated, the continuations `[2k, N]` with their validity and masks padded to the longer length,
/// so one forward pass scores both sides.
pub fn stack_pairs(b: &PairBatch, idx: &Tensor) -> Sequences {
    let p = b.prompt.index_select(0, idx);
    let pv = b.prompt_valid.index_select(0, idx);
    let n = b.chosen.size()[1].max(b.rejected.size()[1]);
    let pad_to = |t: &Tensor| {
        let extra = n - t.size()[1];
        if extra > 0 {
            t.constant_pad_nd([0, extra])
        } else {
            t.shallow_clone()
        }
    };
    let stack = |c: &Tensor, r: &Tensor| {
        Tensor::cat(
            &[
                pad_to(&c.index_select(0, idx)),
                pad_to(&r.index_select(0, idx)),
            ],
            0,
        )
    };
    Sequences {
        prompt: Tensor::cat(&[&p, &p], 0),
        prompt_valid: Tensor::cat(&[&pv, &pv], 0),
        tokens: stack(&b.chosen, &b.rejected),
        valid: stack(&b.chosen_valid, &b.rejected_valid),
        mask: stack(&b.chosen_mask, &b.rejected_mask),
    }
}

/// Summed completion log-probs `[B]` of chosen and rejected under `policy` at temperature 1, for the
/// pairs `idx` of `b`.
pub fn pair_logps(policy: &LmPolicy, b: &PairBatch, idx: &Tensor, train: bool) -> (Tensor, Tensor) {
    let k = idx.size()[0];
    let seqs = stack_pairs(b, idx); // [2k, ..]
    let logprobs = sequence_logprobs(&policy.model, &seqs, 1.0, train); // [2k, N]
    let s = logprobs.sum_dim_intlist(1, false, Kind::Float); // [2k]
    (s.narrow(0, 0, k), s.narrow(0, k, k))
}

/// Policy tokens `[k]` (f32, at least 1) of the chosen and rejected completions of pairs `idx`: the
/// lengths the length-normalised losses divide by.
pub fn pair_lengths(b: &PairBatch, idx: &Tensor) -> (Tensor, Tensor) {
    let len = |m: &Tensor| {
        m.index_select(0, idx)
            .sum_dim_intlist(1, false, Kind::Float)
            .clamp_min(1.0)
    };
    (len(&b.chosen_mask), len(&b.rejected_mask))
}

/// Summed log-probs `[P]` of every pair's two continuations under the frozen `reference`, in
/// chunks of 64 pairs, and the FLOPs that pass cost.
pub fn reference_pair_logps(reference: &LmPolicy, data: &PairBatch) -> (Tensor, Tensor, f64) {
    let n = data.prompt.size()[0];
    let (mut cs, mut rs) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(64) {
        let idx = Tensor::arange_start(
            start,
            (start + 64).min(n),
            (Kind::Int64, reference.device()),
        );
        let (c, r) = tch::no_grad(|| pair_logps(reference, data, &idx, false));
        cs.push(c);
        rs.push(r);
    }
    let per =
        (data.prompt.size()[1] + data.chosen.size()[1].max(data.rejected.size()[1])) as f64 * 2.0;
    let flops = reference.model.config().flops_per_token(per as usize / 2) * per * n as f64;
    (Tensor::cat(&cs, 0), Tensor::cat(&rs, 0), flops)
}

/// Passes over `n` examples made once update `step` (from 0) is done, in [`epoch_batch`]'s order:
/// an epoch is `n / batch_size` whole batches (TRL's `epoch`, which a budget in updates makes).
pub fn epochs_done(n: usize, batch_size: usize, step: u64) -> f64 {
    let per_epoch = (n / batch_size.min(n).max(1)).max(1);
    (step + 1) as f64 / per_epoch as f64
}

/// The indices `[≤ batch_size]` of update `step` over `n` examples: epochs of seeded
/// permutations, batch after batch.
pub fn epoch_batch(n: usize, batch_size: usize, seed: u64, step: u64) -> Vec<i64> {
    let bs = batch_size.min(n).max(1);
    let per_epoch = (n / bs).max(1) as u64;
    let epoch = step / per_epoch;
    let within = (step % per_epoch) as usize;
    let mut perm: Vec<i64> = (0..n as i64).collect();
    perm.shuffle(&mut StdRng::seed_from_u64(derive_seed(seed, epoch)));
    perm[within * bs..((within + 1) * bs).min(n)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_count_whole_batches_as_epoch_batch_draws_them() {
        // 10 examples in batches of 4: an epoch is 2 batches (the remainder of 2 waits for the
        // next permutation), so update 0 ends half an epoch and update 2 one and a half.
        assert_eq!(epochs_done(10, 4, 0), 0.5);
        assert_eq!(epochs_done(10, 4, 2), 1.5);
        // A batch larger than the data is the whole data: one epoch per update.
        assert_eq!(epochs_done(3, 8, 1), 2.0);
        // train's defaults on prefs' default file: 60 updates of 32 over 1,024 pairs.
        assert_eq!(epochs_done(1024, 32, 59), 1.875);
        // An epoch's batches are disjoint: the two of epoch 0 draw 8 distinct examples.
        let mut seen = epoch_batch(10, 4, 7, 0);
        seen.extend(epoch_batch(10, 4, 7, 1));
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 8);
    }
}
