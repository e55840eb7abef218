//! Loss math as pure functions over tensors, each checked against hand-worked values.
//!
//! Sources: PPO (Schulman et al. 2017, arXiv 1707.06347) and its RLHF details (Huang et al. 2024,
//! arXiv 2403.17031); GAE (Schulman et al. 2016, arXiv 1506.02438); DPO (Rafailov et al. 2023,
//! arXiv 2305.18290); IPO (Azar et al. 2023, arXiv 2310.12036); hinge (SLiC, Zhao et al. 2023);
//! conservative DPO / label smoothing (Mitchell 2023); Bradley–Terry reward modelling.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Mean of `x` over positions where `mask` is 1.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1e-8)
}

/// Variance of `x` over positions where `mask` is 1 (unbiased, as the RLHF trainers compute it).
pub fn masked_var(x: &Tensor, mask: &Tensor) -> Tensor {
    let mean = masked_mean(x, mask);
    let n = mask.sum(Kind::Float);
    let centred = (x - &mean) * mask;
    (&centred * &centred).sum(Kind::Float) / (n - 1.0).clamp_min(1.0)
}

/// `(x − μ) / √(σ² + 1e-8)` over the masked positions; padding stays 0.
pub fn whiten(x: &Tensor, mask: &Tensor) -> Tensor {
    let mean = masked_mean(x, mask);
    let var = masked_var(x, mask);
    (x - mean) * (var + 1e-8).rsqrt() * mask
}

/// Per-token KL estimator between the policy and the frozen reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `k1 = log π − log π_ref` (unbiased, can be negative per token). The common default.
    #[default]
    K1,
    /// `k3 = (r − 1) − log r` with `r = π_ref / π` (non-negative, lower variance).
    K3,
}

/// Per-token KL estimate `[B, N]` from log-probs of the sampled tokens, zero on padding.
pub fn kl_per_token(logp: &Tensor, ref_logp: &Tensor, mask: &Tensor, est: KlEstimator) -> Tensor {
    let logr = ref_logp - logp; // log(π_ref / π)
    let kl = match est {
        KlEstimator::K1 => -&logr,
        KlEstimator::K3 => logr.exp() - 1.0 - &logr,
    };
    kl * mask
}

/// Per-token rewards `r_t = −kl_coef · kl_t` on policy tokens, plus each row's `score [B]` at its
/// position `score_pos [B]` (i64: the last policy token of the episode — its EOS, or the last token
/// when cut off; in a multi-turn row env tokens may follow it).
pub fn shaped_rewards(
    kl: &Tensor,
    score: &Tensor,
    score_pos: &Tensor,
    mask: &Tensor,
    kl_coef: f64,
) -> Tensor {
    let bonus = mask.zeros_like().scatter(
        1,
        &score_pos.unsqueeze(1),
        &score.unsqueeze(1).to_kind(Kind::Float),
    ); // [B, N]
    (-kl_coef * kl + bonus) * mask
}

/// Generalised advantage estimation over `[B, N]`: `δ_t = r_t + γ V_{t'} − V_t`,
/// `A_t = δ_t + γ λ A_{t'}`, where t' is the next *policy* token of the row (`mask` 1): tokens with
/// mask 0 — an env's reply inside a multi-turn episode, padding after it — are not time steps of
/// the policy and are skipped, and nothing is bootstrapped past a row's last policy token. Returns
/// `(advantages, returns = A + V)`, both 0 where `mask` is 0.
pub fn gae(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    gamma: f64,
    lambda: f64,
) -> (Tensor, Tensor) {
    let n = rewards.size()[1];
    let values = values * mask;
    let mut next_adv = rewards.select(1, 0).zeros_like(); // [B]
    let mut next_value = next_adv.zeros_like(); // [B]
    let mut advs = Vec::with_capacity(n as usize);
    for t in (0..n).rev() {
        let m = mask.select(1, t); // [B]
        let v = values.select(1, t);
        let delta = rewards.select(1, t) + gamma * &next_value - &v;
        let a = (delta + gamma * lambda * &next_adv) * &m;
        // Where m is 0 the carried values pass through unchanged.
        let keep = 1.0 - &m;
        next_adv = &a + &next_adv * &keep;
        next_value = &v + &next_value * &keep;
        advs.push(a);
    }
    advs.reverse();
    let adv = Tensor::stack(&advs, 1); // [B, N]
    let ret = (&adv + &values) * mask;
    (adv, ret)
}

/// What the clipped PPO policy loss measured on a minibatch (0-d tensors).
pub struct PolicyLoss {
    /// The loss, `mean(max(−A ρ, −A clip(ρ, 1−ε, 1+ε)))` over the masked tokens.
    pub loss: Tensor,
    /// Fraction of tokens whose ratio was clipped.
    pub clipfrac: Tensor,
    /// `mean(½ (log ρ)²)`, the `target_kl` quantity.
    pub approxkl: Tensor,
    /// Mean ratio ρ.
    pub ratio: Tensor,
}

/// Clipped PPO policy loss `mean(max(−A ρ, −A clip(ρ, 1−ε, 1+ε)))` over masked tokens.
pub fn ppo_policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    adv: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> PolicyLoss {
    let logratio = (logp - old_logp) * mask;
    let ratio = logratio.exp();
    let l1 = -adv * &ratio;
    let l2 = -adv * ratio.clamp(1.0 - clip, 1.0 + clip);
    PolicyLoss {
        loss: masked_mean(&l1.maximum(&l2), mask),
        clipfrac: masked_mean(&l2.gt_tensor(&l1).to_kind(Kind::Float), mask),
        approxkl: masked_mean(&(0.5 * &logratio * &logratio), mask),
        ratio: masked_mean(&ratio, mask),
    }
}

/// What the clipped value loss measured on a minibatch (0-d tensors).
pub struct ValueLoss {
    /// `½ mean(max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²))`.
    pub loss: Tensor,
    /// Fraction of value predictions whose clipped form was the larger loss.
    pub clipfrac: Tensor,
}

/// Clipped value loss `½ mean(max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²))`.
pub fn ppo_value_loss(
    v: &Tensor,
    v_old: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> ValueLoss {
    let clipped = v_old + (v - v_old).clamp(-clip, clip);
    let a = (v - returns).square();
    let b = (&clipped - returns).square();
    ValueLoss {
        loss: 0.5 * masked_mean(&a.maximum(&b), mask),
        clipfrac: masked_mean(&b.gt_tensor(&a).to_kind(Kind::Float), mask),
    }
}

/// Which DPO-family loss. `Δ = log π − log π_ref` summed over a completion's policy tokens,
/// `h = β (Δ_c − Δ_r)`, `|y|` a completion's policy tokens, `lp = log π / |y|` its mean log-prob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// DPO: `−log σ(h)` (with label smoothing ε: `−(1−ε) log σ(h) − ε log σ(−h)`).
    #[default]
    Sigmoid,
    /// IPO as TRL computes it (Azar et al., length-averaged log-ratios):
    /// `((Δ_c/|y_c| − Δ_r/|y_r|) − 1/(2β))²`.
    Ipo,
    /// IPO on summed log-ratios: `(Δ_c − Δ_r − 1/(2β))²`, a different loss (aligngym's `ipo`
    /// before TRL's form was adopted).
    IpoSum,
    /// SLiC hinge: `max(0, 1 − h)`.
    Hinge,
    /// Robust DPO (Chowdhury et al. 2024) for labels flipped with rate ε = `label_smoothing`:
    /// `(−(1−ε) log σ(h) + ε log σ(−h)) / (1 − 2ε)`.
    Robust,
    /// SimPO (Meng et al. 2024), no reference: `−log σ(β (lp_c − lp_r) − γ)`.
    Simpo,
    /// ORPO (Hong et al. 2024), no reference: `−lp_c − β log σ(log odds_c − log odds_r)` with
    /// `log odds = lp − log(1 − e^lp)` (β plays ORPO's λ, as in TRL's ORPOTrainer).
    Orpo,
}

impl DpoLoss {
    /// Whether the loss reads the frozen reference's log-probs.
    pub fn needs_reference(self) -> bool {
        !matches!(self, DpoLoss::Simpo | DpoLoss::Orpo)
    }
}

/// What the DPO-family losses read of a batch of pairs, `[B]` each.
pub struct PairScores<'a> {
    /// Summed log-prob of the chosen completion under the policy.
    pub chosen: &'a Tensor,
    /// Summed log-prob of the rejected completion under the policy.
    pub rejected: &'a Tensor,
    /// The same under the frozen reference (`None` for the losses that need none).
    pub reference: Option<(&'a Tensor, &'a Tensor)>,
    /// Policy tokens in the chosen completion (f32, ≥ 1).
    pub chosen_len: &'a Tensor,
    /// Policy tokens in the rejected completion (f32, ≥ 1).
    pub rejected_len: &'a Tensor,
}

/// The knobs of a DPO-family loss.
#[derive(Debug, Clone, Copy)]
pub struct DpoLossParams {
    /// β (ORPO: λ).
    pub beta: f64,
    /// Which loss.
    pub loss: DpoLoss,
    /// ε of conservative DPO (sigmoid) and robust DPO.
    pub label_smoothing: f64,
    /// SimPO's target margin γ.
    pub simpo_gamma: f64,
    /// RPO's α: weight of the chosen completion's per-token NLL added to the loss (0: none).
    pub rpo_alpha: f64,
}

impl DpoLossParams {
    /// Check the ranges every DPO-family agent shares; the error names the field.
    pub fn check(&self) -> crate::Result<()> {
        use crate::AgentError;
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(AgentError::config("beta", "expected a finite value > 0"));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(AgentError::config(
                "label_smoothing",
                "expected a value in [0, 0.5)",
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(AgentError::config("simpo_gamma", "expected a finite value"));
        }
        if !(self.rpo_alpha >= 0.0 && self.rpo_alpha.is_finite()) {
            return Err(AgentError::config(
                "rpo_alpha",
                "expected a finite value ≥ 0",
            ));
        }
        Ok(())
    }
}

/// Per-pair losses and what the trainers log of them.
pub struct DpoLossOut {
    /// `[B]` the loss of each pair.
    pub loss: Tensor,
    /// `[B]` implicit rewards of chosen and rejected (detached): `β Δ`, or for the
    /// reference-free losses `β lp`, as TRL logs them.
    pub chosen_rewards: Tensor,
    /// See `chosen_rewards`.
    pub rejected_rewards: Tensor,
    /// `[B]` per-token NLL of the chosen completion (detached), where the loss includes it.
    pub nll: Option<Tensor>,
}

/// DPO-family losses per pair; `None` when the loss needs the reference and none is given.
pub fn dpo_loss(s: &PairScores, p: &DpoLossParams) -> Option<DpoLossOut> {
    let beta = p.beta;
    let eps = p.label_smoothing;
    let lp_c = s.chosen / s.chosen_len; // [B]
    let lp_r = s.rejected / s.rejected_len; // [B]
    let nll_c = -&lp_c; // [B]
    let (loss, chosen_rewards, rejected_rewards) = if p.loss.needs_reference() {
        let (ref_c, ref_r) = s.reference?;
        let d_c = s.chosen - ref_c; // [B]
        let d_r = s.rejected - ref_r; // [B]
        let h = beta * (&d_c - &d_r);
        let l = match p.loss {
            DpoLoss::Sigmoid => -(1.0 - eps) * h.log_sigmoid() - eps * (-&h).log_sigmoid(),
            DpoLoss::Ipo => {
                (&d_c / s.chosen_len - &d_r / s.rejected_len - 1.0 / (2.0 * beta)).square()
            }
            DpoLoss::IpoSum => (&d_c - &d_r - 1.0 / (2.0 * beta)).square(),
            DpoLoss::Hinge => (-&h + 1.0).relu(),
            DpoLoss::Robust => {
                (-(1.0 - eps) * h.log_sigmoid() + eps * (-&h).log_sigmoid()) / (1.0 - 2.0 * eps)
            }
            DpoLoss::Simpo | DpoLoss::Orpo => unreachable!("reference-free"),
        };
        (l, (beta * d_c).detach(), (beta * d_r).detach())
    } else {
        let l = match p.loss {
            DpoLoss::Simpo => -(beta * (&lp_c - &lp_r) - p.simpo_gamma).log_sigmoid(),
            DpoLoss::Orpo => {
                // log(1 − e^lp) = log(−expm1(lp)): exact where lp is near 0.
                let log_odds = |lp: &Tensor| lp - (-lp.expm1()).log();
                &nll_c - beta * (log_odds(&lp_c) - log_odds(&lp_r)).log_sigmoid()
            }
            _ => unreachable!("needs a reference"),
        };
        (l, (beta * &lp_c).detach(), (beta * &lp_r).detach())
    };
    let with_nll = p.rpo_alpha > 0.0 || p.loss == DpoLoss::Orpo;
    let loss = if p.rpo_alpha > 0.0 {
        loss + p.rpo_alpha * &nll_c
    } else {
        loss
    };
    Some(DpoLossOut {
        loss,
        chosen_rewards,
        rejected_rewards,
        nll: with_nll.then(|| nll_c.detach()),
    })
}

/// KTO's reference point `z₀ = max(0, mean Δ_KL)` (0-d, detached) from the log-ratios `[B]` of
/// mismatched prompt–completion pairs, TRL's estimate of KL(π ‖ π_ref).
pub fn kto_reference_point(kl_logratios: &Tensor) -> Tensor {
    kl_logratios.detach().mean(Kind::Float).clamp_min(0.0)
}

/// KTO (Ethayarajh et al. 2024) per example `[B]`, from the summed log-ratios `Δ = log π − log
/// π_ref` `[B]`, which examples are desirable `[B]` (f32, 1 or 0) and the reference point `z0`
/// (0-d): desirable `λ_D (1 − σ(β (Δ − z₀)))`, undesirable `λ_U (1 − σ(β (z₀ − Δ)))`.
pub fn kto_loss(
    delta: &Tensor,
    desirable: &Tensor,
    z0: &Tensor,
    beta: f64,
    (lambda_d, lambda_u): (f64, f64),
) -> Tensor {
    let good = lambda_d * (1.0 - (beta * (delta - z0)).sigmoid()); // [B]
    let bad = lambda_u * (1.0 - (beta * (z0 - delta)).sigmoid()); // [B]
    desirable * good + (1.0 - desirable) * bad
}

/// Bradley–Terry loss `−log σ(r⁺ − r⁻)` per pair.
pub fn bradley_terry_loss(r_chosen: &Tensor, r_rejected: &Tensor) -> Tensor {
    -(r_chosen - r_rejected).log_sigmoid()
}

/// How the per-token losses of a batch are reduced to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLoss {
    /// Mean over each sequence's tokens, then over sequences (the GRPO paper); std-scaled
    /// advantages.
    Grpo,
    /// Sum over all tokens divided by a constant (rows × `max_new_tokens`): no length bias (Dr.
    /// GRPO); advantages not divided by the group's std.
    DrGrpo,
    /// Sum over all tokens divided by their count: token-level (DAPO; TRL's default).
    #[default]
    Dapo,
}

/// What the clipped surrogate measured on one minibatch.
pub struct GrpoLossOut {
    /// The loss to minimise (scalar).
    pub loss: Tensor,
    /// Fraction of tokens clipped below (ratio < 1 − ε_low with a negative advantage).
    pub clip_low: Tensor,
    /// Fraction of tokens clipped above (ratio > 1 + ε_high with a positive advantage).
    pub clip_high: Tensor,
    /// Mean k3 KL to the reference over the tokens (0 without one).
    pub kl: Tensor,
}

/// What a GRPO-family loss and its token metrics divide by, taken from the mask `[B, N]` of the
/// whole minibatch: losses of parts of a minibatch computed with the whole's norm sum to the
/// whole's loss, so a minibatch can run forward and backward in several passes.
pub struct GrpoNorm {
    /// The loss's denominator (scalar): live rows (`grpo`), rows × `max_len` (`dr_grpo`) or
    /// policy tokens (`dapo`).
    loss: Tensor,
    /// Policy tokens (scalar), for the per-token metrics.
    tokens: Tensor,
}

impl GrpoNorm {
    /// The norm of a minibatch with policy-token mask `mask [B, N]`.
    pub fn of(mask: &Tensor, loss_type: GrpoLoss, max_len: i64) -> Self {
        let tokens = mask.sum(Kind::Float).clamp_min(1e-8);
        let loss = match loss_type {
            GrpoLoss::Grpo => {
                let live = mask.sum_dim_intlist(1, false, Kind::Float).gt(0.0); // [B]
                live.to_kind(Kind::Float).sum(Kind::Float).clamp_min(1.0)
            }
            GrpoLoss::DrGrpo => {
                Tensor::from((mask.size()[0] * max_len).max(1) as f32).to_device(mask.device())
            }
            GrpoLoss::Dapo => tokens.shallow_clone(),
        };
        Self { loss, tokens }
    }
    /// `Σ x·mask / tokens`: a per-token mean over the minibatch, summed over its parts.
    pub fn token_mean(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        (x * mask).sum(Kind::Float) / &self.tokens
    }
}

/// The GRPO-family loss over `[B, N]` tokens: per token `−min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high)
/// A) + β k3`, with ρ = exp(logp − old_logp), A = `adv [B]` on every token of its row (or per
/// token, `adv [B, N]`, for REINFORCE++), k3 =
/// exp(ref − logp) − (ref − logp) − 1; reduced per `loss_type` over the tokens where `mask` is 1
/// (`max_len` is Dr. GRPO's constant).
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    loss_type: GrpoLoss,
    eps: (f64, f64),
    beta: f64,
    max_len: i64,
) -> GrpoLossOut {
    let norm = GrpoNorm::of(mask, loss_type, max_len);
    grpo_loss_part(
        logp, old_logp, ref_logp, adv, mask, loss_type, eps, beta, &norm,
    )
}

/// [`grpo_loss`] of some rows of a minibatch whose [`GrpoNorm`] is `norm`: the loss, clip
/// fractions and KL of the parts sum to the whole minibatch's.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss_part(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    loss_type: GrpoLoss,
    eps: (f64, f64),
    beta: f64,
    norm: &GrpoNorm,
) -> GrpoLossOut {
    let a = match adv.dim() {
        2 => adv.to_kind(Kind::Float),              // [B, N]
        _ => adv.to_kind(Kind::Float).unsqueeze(1), // [B, 1]
    };
    let ratio = ((logp - old_logp) * mask).exp(); // [B, N]
    let unclipped = &ratio * &a;
    let clipped = ratio.clamp(1.0 - eps.0, 1.0 + eps.1) * &a;
    let surrogate = -unclipped.minimum(&clipped); // [B, N]
    let (per_token, kl) = match ref_logp {
        Some(r) => {
            let d = r - logp;
            let k3 = d.exp() - &d - 1.0; // [B, N]
            (surrogate + beta * &k3, norm.token_mean(&k3, mask))
        }
        None => (surrogate, Tensor::from(0.0f32).to_device(logp.device())),
    };
    let summed = match loss_type {
        // Each row's token mean (0 on a row with no policy tokens), summed over the rows.
        GrpoLoss::Grpo => ((&per_token * mask).sum_dim_intlist(1, false, Kind::Float)
            / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0))
        .sum(Kind::Float),
        GrpoLoss::DrGrpo | GrpoLoss::Dapo => (&per_token * mask).sum(Kind::Float),
    };
    let low = ratio.lt(1.0 - eps.0).logical_and(&a.lt(0.0));
    let high = ratio.gt(1.0 + eps.1).logical_and(&a.gt(0.0));
    GrpoLossOut {
        loss: summed / &norm.loss,
        clip_low: norm.token_mean(&low.to_kind(Kind::Float), mask),
        clip_high: norm.token_mean(&high.to_kind(Kind::Float), mask),
        kl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }
    fn close(a: &Tensor, b: &[f32]) {
        let a: Vec<f32> = Vec::try_from(&a.flatten(0, -1)).unwrap();
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
    fn scalar(a: &Tensor) -> f64 {
        a.double_value(&[])
    }

    #[test]
    fn gae_by_hand() {
        // One row, 3 real tokens then padding; γ = 1, λ = 0.5; r = [0, 0, 1]; V = [0.5, 0.2, 0.4, 9].
        // δ2 = 1 + 0 − 0.4 = 0.6 → A2 = 0.6
        // δ1 = 0 + 0.4 − 0.2 = 0.2 → A1 = 0.2 + 0.5·0.6 = 0.5
        // δ0 = 0 + 0.2 − 0.5 = −0.3 → A0 = −0.3 + 0.5·0.5 = −0.05
        // returns = A + V = [0.45, 0.7, 1.0, 0]
        let r = t(&[0.0, 0.0, 1.0, 0.0], &[1, 4]);
        let v = t(&[0.5, 0.2, 0.4, 9.0], &[1, 4]);
        let m = t(&[1.0, 1.0, 1.0, 0.0], &[1, 4]);
        let (a, ret) = gae(&r, &v, &m, 1.0, 0.5);
        close(&a, &[-0.05, 0.5, 0.6, 0.0]);
        close(&ret, &[0.45, 0.7, 1.0, 0.0]);
        // γ = 0.9, λ = 1: A2 = 1 − 0.4 = 0.6; A1 = 0.9·0.4 − 0.2 + 0.9·0.6 = 0.7; A0 = 0.9·0.2 − 0.5 + 0.9·0.7 = 0.31
        let (a, _) = gae(&r, &v, &m, 0.9, 1.0);
        close(&a, &[0.31, 0.7, 0.6, 0.0]);
    }

    #[test]
    fn gae_over_a_two_turn_episode_skips_env_tokens() {
        // Policy turn 1 = tokens 0, 1; the env's reply = tokens 2, 3 (mask 0); policy turn 2 =
        // tokens 4, 5; padding 6. γ = 1, λ = 0.5; the score 1 sits on token 5 (the last policy
        // token); r = [0, 0, 0, 0, 0, 1, 0]; V = [0.5, 0.2, 7, 7, 0.4, 0.3, 9] (V on env tokens and
        // padding must not matter).
        // δ5 = 1 − 0.3 = 0.7 → A5 = 0.7
        // δ4 = 0 + 0.3 − 0.4 = −0.1 → A4 = −0.1 + 0.5·0.7 = 0.25
        // token 1's next policy token is 4: δ1 = 0 + 0.4 − 0.2 = 0.2 → A1 = 0.2 + 0.5·0.25 = 0.325
        // δ0 = 0 + 0.2 − 0.5 = −0.3 → A0 = −0.3 + 0.5·0.325 = −0.1375
        // returns = A + V on policy tokens: [0.3625, 0.525, 0, 0, 0.65, 1.0, 0]
        let r = t(&[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[1, 7]);
        let v = t(&[0.5, 0.2, 7.0, 7.0, 0.4, 0.3, 9.0], &[1, 7]);
        let m = t(&[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0], &[1, 7]);
        let (a, ret) = gae(&r, &v, &m, 1.0, 0.5);
        close(&a, &[-0.1375, 0.325, 0.0, 0.0, 0.25, 0.7, 0.0]);
        close(&ret, &[0.3625, 0.525, 0.0, 0.0, 0.65, 1.0, 0.0]);
    }

    #[test]
    fn kl_estimators_by_hand() {
        // logp = −1, ref = −2: k1 = logp − ref = 1; r = e^{−1}: k3 = e^{−1} − 1 + 1 = 0.367879
        // logp = −2, ref = −1: k1 = −1; r = e: k3 = e − 1 − 1 = 0.718282
        let lp = t(&[-1.0, -2.0, -3.0], &[1, 3]);
        let rf = t(&[-2.0, -1.0, -3.0], &[1, 3]);
        let m = t(&[1.0, 1.0, 0.0], &[1, 3]);
        close(
            &kl_per_token(&lp, &rf, &m, KlEstimator::K1),
            &[1.0, -1.0, 0.0],
        );
        close(
            &kl_per_token(&lp, &rf, &m, KlEstimator::K3),
            &[0.367_879_4, 0.718_281_8, 0.0],
        );
    }

    #[test]
    fn shaped_rewards_put_the_score_on_the_last_policy_token() {
        // kl = [1, 2, 3 | pad], kl_coef 0.1, score 5 → [−0.1, −0.2, −0.3 + 5, 0]
        let kl = t(&[1.0, 2.0, 3.0, 0.0, 1.0, 1.0, 1.0, 1.0], &[2, 4]);
        let m = t(&[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], &[2, 4]);
        let pos = Tensor::from_slice(&[2i64, 3]);
        let r = shaped_rewards(&kl, &t(&[5.0, -1.0], &[2]), &pos, &m, 0.1);
        close(&r, &[-0.1, -0.2, 4.7, 0.0, -0.1, -0.1, -0.1, -1.1]);
        // Two turns: policy tokens 0 and 2, an env token at 1; the score goes on token 2 and the
        // env token gets neither KL nor score.
        let m = t(&[1.0, 0.0, 1.0, 0.0], &[1, 4]);
        let kl = t(&[1.0, 0.0, 2.0, 0.0], &[1, 4]);
        let r = shaped_rewards(&kl, &t(&[1.0], &[1]), &Tensor::from_slice(&[2i64]), &m, 0.5);
        close(&r, &[-0.5, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn whiten_by_hand() {
        // masked values [1, 2, 3]: mean 2, unbiased var 1 → [−1, 0, 1], padding 0
        let w = whiten(
            &t(&[1.0, 2.0, 3.0, 100.0], &[1, 4]),
            &t(&[1.0, 1.0, 1.0, 0.0], &[1, 4]),
        );
        close(&w, &[-1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn ppo_losses_by_hand() {
        // Token 1: ρ = e^{0.5} = 1.6487, A = 1 → max(−1.6487, −1.2) = −1.2 (clipped)
        // Token 2: ρ = e^{−0.5} = 0.6065, A = 1 → max(−0.6065, −0.8) = −0.6065 (not clipped)
        // loss = (−1.2 − 0.6065)/2 = −0.90327; clipfrac = 0.5; approxkl = ½·0.25 = 0.125
        let lp = t(&[0.5, -0.5, 7.0], &[1, 3]);
        let old = t(&[0.0, 0.0, 0.0], &[1, 3]);
        let adv = t(&[1.0, 1.0, 1.0], &[1, 3]);
        let m = t(&[1.0, 1.0, 0.0], &[1, 3]);
        let PolicyLoss {
            loss,
            clipfrac: cf,
            approxkl: akl,
            ratio,
        } = ppo_policy_loss(&lp, &old, &adv, &m, 0.2);
        assert!(
            (scalar(&loss) + 0.903_265).abs() < 1e-5,
            "{}",
            scalar(&loss)
        );
        assert!((scalar(&cf) - 0.5).abs() < 1e-6);
        assert!((scalar(&akl) - 0.125).abs() < 1e-6);
        assert!((scalar(&ratio) - (1.648_721 + 0.606_531) / 2.0).abs() < 1e-5);
        // Value: V = 1, V_old = 0, R = 2, ε = 0.2: (1−2)² = 1; clipped V = 0.2 → (0.2−2)² = 3.24
        // → ½·3.24 = 1.62, clipfrac 1
        let ValueLoss {
            loss: vl,
            clipfrac: vcf,
        } = ppo_value_loss(
            &t(&[1.0], &[1, 1]),
            &t(&[0.0], &[1, 1]),
            &t(&[2.0], &[1, 1]),
            &t(&[1.0], &[1, 1]),
            0.2,
        );
        assert!((scalar(&vl) - 1.62).abs() < 1e-5);
        assert!((scalar(&vcf) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn dpo_losses_by_hand() {
        // Summed log-probs: π_c = −2 over 2 tokens, π_r = −6 over 4; ref_c = −3, ref_r = −5.
        // Δ_c = 1, Δ_r = −1; β = 0.5 → chosen reward 0.5, rejected −0.5, h = 1.
        let (pc, pr, rc, rr) = (
            t(&[-2.0], &[1]),
            t(&[-6.0], &[1]),
            t(&[-3.0], &[1]),
            t(&[-5.0], &[1]),
        );
        let (lc, lr) = (t(&[2.0], &[1]), t(&[4.0], &[1]));
        let scores = PairScores {
            chosen: &pc,
            rejected: &pr,
            reference: Some((&rc, &rr)),
            chosen_len: &lc,
            rejected_len: &lr,
        };
        let base = DpoLossParams {
            beta: 0.5,
            loss: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            rpo_alpha: 0.0,
        };
        let run = |p: DpoLossParams| dpo_loss(&scores, &p).unwrap();
        // sigmoid: −log σ(1) = 0.3132617
        let o = run(base);
        close(&o.loss, &[0.313_261_7]);
        close(&o.chosen_rewards, &[0.5]);
        close(&o.rejected_rewards, &[-0.5]);
        assert!(o.nll.is_none());
        // label smoothing 0.1: 0.9·0.3132617 + 0.1·(−log σ(−1) = 1.3132617) = 0.4132617
        let o = run(DpoLossParams {
            label_smoothing: 0.1,
            ..base
        });
        close(&o.loss, &[0.413_261_7]);
        // robust, ε = 0.1: (0.9·0.3132617 − 0.1·1.3132617) / 0.8 = 0.1506094 / 0.8 = 0.1882617
        let o = run(DpoLossParams {
            loss: DpoLoss::Robust,
            label_smoothing: 0.1,
            ..base
        });
        close(&o.loss, &[0.188_261_7]);
        // IPO (TRL, length-averaged): Δ_c/2 − Δ_r/4 = 0.5 + 0.25 = 0.75; (0.75 − 1/(2·0.5))² = 0.0625
        let o = run(DpoLossParams {
            loss: DpoLoss::Ipo,
            ..base
        });
        close(&o.loss, &[0.0625]);
        // IPO on sums: (1 − (−1) − 1)² = 1
        let o = run(DpoLossParams {
            loss: DpoLoss::IpoSum,
            ..base
        });
        close(&o.loss, &[1.0]);
        // hinge: max(0, 1 − 1) = 0; with β = 0.25, h = 0.5 → 0.5
        close(
            &run(DpoLossParams {
                loss: DpoLoss::Hinge,
                ..base
            })
            .loss,
            &[0.0],
        );
        close(
            &run(DpoLossParams {
                loss: DpoLoss::Hinge,
                beta: 0.25,
                ..base
            })
            .loss,
            &[0.5],
        );
        // RPO, α = 1: 0.3132617 + 1·(−π_c/|y_c| = 1) = 1.3132617
        let o = run(DpoLossParams {
            rpo_alpha: 1.0,
            ..base
        });
        close(&o.loss, &[1.313_261_7]);
        close(o.nll.as_ref().unwrap(), &[1.0]);
        // SimPO, β = 0.5, γ = 0.5: lp_c = −1, lp_r = −1.5 → 0.5·0.5 − 0.5 = −0.25;
        // −log σ(−0.25) = log(1 + e^0.25) = log 2.2840254 = 0.8259394; rewards β·lp = −0.5, −0.75.
        let free = PairScores {
            reference: None,
            ..scores
        };
        let o = dpo_loss(
            &free,
            &DpoLossParams {
                loss: DpoLoss::Simpo,
                ..base
            },
        )
        .unwrap();
        close(&o.loss, &[0.825_939_4]);
        close(&o.chosen_rewards, &[-0.5]);
        close(&o.rejected_rewards, &[-0.75]);
        // ORPO, λ = β = 0.5: log odds_c = −1 − log(1 − e^−1) = −1 + 0.4586751 = −0.5413249;
        // log odds_r = −1.5 − log(1 − e^−1.5) = −1.5 + 0.2524825 = −1.2475175; difference 0.7061927;
        // −log σ(0.7061927) = log(1 + e^−0.7061927) = log 1.4935053 = 0.4011355;
        // loss = NLL_c 1 + 0.5·0.4011355 = 1.2005677
        let o = dpo_loss(
            &free,
            &DpoLossParams {
                loss: DpoLoss::Orpo,
                ..base
            },
        )
        .unwrap();
        close(&o.loss, &[1.200_567_7]);
        close(o.nll.as_ref().unwrap(), &[1.0]);
        // KTO, β = 0.5, λ_D = 1, λ_U = 2, z₀ = max(0, mean(−0.2, 0.4)) = 0.1; Δ = [1, −1]:
        // desirable 1 − σ(0.5·(1 − 0.1)) = 1 − σ(0.45) = 1 − 0.6106392 = 0.3893608;
        // undesirable 2·(1 − σ(0.5·(0.1 + 1))) = 2·(1 − σ(0.55)) = 2·(1 − 0.6341356) = 0.7317289.
        let z0 = kto_reference_point(&t(&[-0.2, 0.4], &[2]));
        close(&z0, &[0.1]);
        close(&kto_reference_point(&t(&[-1.0, 0.2], &[2])), &[0.0]);
        let l = kto_loss(
            &t(&[1.0, -1.0], &[2]),
            &t(&[1.0, 0.0], &[2]),
            &z0,
            0.5,
            (1.0, 2.0),
        );
        close(&l, &[0.389_360_8, 0.731_728_9]);
        // A loss that reads the reference gets none: no loss, not a silent zero reference.
        assert!(dpo_loss(&free, &base).is_none());
        // Bradley–Terry: −log σ(2 − 1) = 0.3132617
        close(
            &bradley_terry_loss(&t(&[2.0], &[1]), &t(&[1.0], &[1])),
            &[0.313_261_7],
        );
    }
}

/// The GRPO family's clipped surrogate, worked by hand.
#[cfg(test)]
mod clipped_surrogate_tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn close(x: &Tensor, want: f64) {
        let got = x.double_value(&[]);
        assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
    }

    /// Two rows with unequal lengths: row 0 has 1 token, row 1 has 3; on-policy (ratio 1).
    #[test]
    fn parts_of_a_minibatch_sum_to_its_loss() {
        // Each row as its own pass, with the whole minibatch's norm: the same values as the
        // worked ones above (row 0 contributes −1, row 1 the rest).
        let (logp, mask, adv) = unequal();
        for (lt, want, row0) in [
            (GrpoLoss::Grpo, -0.25, -0.5),
            (GrpoLoss::DrGrpo, 0.0625, -0.125),
            (GrpoLoss::Dapo, 0.125, -0.25),
        ] {
            let norm = GrpoNorm::of(&mask, lt, 4);
            let part = |r: i64| {
                let row = |x: &Tensor| x.narrow(0, r, 1);
                grpo_loss_part(
                    &row(&logp),
                    &row(&logp),
                    None,
                    &row(&adv),
                    &row(&mask),
                    lt,
                    (0.2, 0.2),
                    0.0,
                    &norm,
                )
                .loss
            };
            close(&part(0), row0);
            close(&(part(0) + part(1)), want);
        }
    }

    fn unequal() -> (Tensor, Tensor, Tensor) {
        let logp = t(&[-1.0, 0.0, 0.0, -1.0, -1.0, -1.0], &[2, 3]);
        let mask = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[2, 3]);
        let adv = t(&[1.0, -0.5], &[2]);
        (logp, mask, adv)
    }

    #[test]
    fn grpo_dr_grpo_and_dapo_normalise_differently() {
        let (logp, mask, adv) = unequal();
        let run = |lt| grpo_loss(&logp, &logp, None, &adv, &mask, lt, (0.2, 0.2), 0.0, 4).loss;
        // Per-token loss −A (ratio 1): row 0 [−1], row 1 [0.5, 0.5, 0.5].
        // grpo: mean of per-row means = (−1 + 0.5) / 2 = −0.25.
        close(&run(GrpoLoss::Grpo), -0.25);
        // dr_grpo: sum / (2 rows × 4) = (−1 + 1.5) / 8 = 0.0625.
        close(&run(GrpoLoss::DrGrpo), 0.0625);
        // dapo: sum / 4 tokens = 0.5 / 4 = 0.125.
        close(&run(GrpoLoss::Dapo), 0.125);
    }

    #[test]
    fn dapo_clips_higher_above_one_plus_eps_low() {
        // One token, A = 1, ratio e^0.25 ≈ 1.2840: past both 1 + ε = 1.2 and 1 + ε_high = 1.28,
        // so the loss is −1.2 with symmetric clipping and −1.28 with clip-higher.
        let old = t(&[0.0], &[1, 1]);
        let logp = t(&[0.25], &[1, 1]);
        let mask = t(&[1.0], &[1, 1]);
        let adv = t(&[1.0], &[1]);
        let sym = grpo_loss(
            &logp,
            &old,
            None,
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.2),
            0.0,
            1,
        );
        close(&sym.loss, -1.2);
        close(&sym.clip_high, 1.0);
        let hi = grpo_loss(
            &logp,
            &old,
            None,
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.28),
            0.0,
            1,
        );
        close(&hi.loss, -1.28);
        // A ratio of e^0.22 ≈ 1.2461 is clipped at 1.2 symmetric, not at all with ε_high 0.28.
        let logp = t(&[0.22], &[1, 1]);
        let hi = grpo_loss(
            &logp,
            &old,
            None,
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.28),
            0.0,
            1,
        );
        close(&hi.loss, -(0.22f64.exp()));
        close(&hi.clip_high, 0.0);
        // A negative advantage with a ratio below 1 − ε_low counts as clipped low.
        let logp = t(&[-0.5], &[1, 1]);
        let neg = t(&[-2.0], &[1]);
        let lo = grpo_loss(
            &logp,
            &old,
            None,
            &neg,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.28),
            0.0,
            1,
        );
        // −min(ρA, clip(ρ)A) = −min(−2·0.6065, −2·0.8) = 1.6.
        close(&lo.loss, 1.6);
        close(&lo.clip_low, 1.0);
    }

    #[test]
    fn the_kl_term_is_k3_weighted_by_beta() {
        // logp = ref + 0.5 on one token, A = 0: loss = β k3, k3 = e^−0.5 + 0.5 − 1 ≈ 0.106531.
        let logp = t(&[-0.5], &[1, 1]);
        let reference = t(&[-1.0], &[1, 1]);
        let mask = t(&[1.0], &[1, 1]);
        let adv = t(&[0.0], &[1]);
        let l = grpo_loss(
            &logp,
            &logp,
            Some(&reference),
            &adv,
            &mask,
            GrpoLoss::Dapo,
            (0.2, 0.2),
            0.1,
            1,
        );
        let k3 = (-0.5f64).exp() + 0.5 - 1.0;
        close(&l.kl, k3);
        close(&l.loss, 0.1 * k3);
    }
}
