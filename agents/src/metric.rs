//! Every metric name a run writes, defined once. Each constant's doc comment is its glossary line:
//! [`GLOSSARY`] lists them in this order, and `docs/metrics.md` is generated from it (a test checks
//! that the file is current). The names follow TRL's where TRL logs the same quantity.

/// What a run (or a stage it consumes) has spent: the `budget/*` columns but wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    /// Completions sampled for training.
    pub samples: u64,
    /// Tokens generated for training.
    pub tokens_generated: u64,
    /// Tokens passed through a gradient step.
    pub train_tokens: u64,
    /// Gold-reward or oracle evaluations used as training signal (preference labels, gold scores).
    pub oracle_queries: u64,
    /// Estimated floating-point operations (forward ×1, backward ×2).
    pub flops: f64,
}

impl Budget {
    /// Both spendings together.
    pub fn plus(&self, other: &Budget) -> Budget {
        Budget {
            samples: self.samples + other.samples,
            tokens_generated: self.tokens_generated + other.tokens_generated,
            train_tokens: self.train_tokens + other.train_tokens,
            oracle_queries: self.oracle_queries + other.oracle_queries,
            flops: self.flops + other.flops,
        }
    }
}

/// Declares each metric as a constant and collects them, with their doc lines, in [`GLOSSARY`].
macro_rules! metrics {
    ($($(#[doc = $doc:literal])+ $name:ident = $value:literal;)+) => {
        $($(#[doc = $doc])+ pub const $name: &str = $value;)+

        /// Every metric and its glossary line, in the order of this file.
        pub const GLOSSARY: &[Entry] = &[$(Entry { name: $value, meaning: concat!($($doc),+) }),+];
    };
}

/// One glossary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The metric's name in `metrics.csv`.
    pub name: &'static str,
    /// What it measures (the doc comment of its constant).
    pub meaning: &'static str,
}

metrics! {
    /// The shared evaluation: mean gold reward of completions sampled on the held-out prompts (the
    /// ground truth).
    EVAL_GOLD_REWARD = "eval/gold_reward";
    /// The shared evaluation: mean of the reward the agent optimised (the reward model for PPO-RM;
    /// the gold reward for PPO-gold), scored exactly as training scores episodes (a multi-turn one
    /// as a conversation); absent for DPO.
    EVAL_PROXY_REWARD = "eval/proxy_reward";
    /// The shared evaluation: mean sequence KL(π ‖ π_ref) on those samples, Σ over tokens of
    /// log π − log π_ref at the eval temperature (best-of-n: its KL measured on the candidates'
    /// rewards).
    EVAL_KL_TO_REF = "eval/kl_to_ref";
    /// The shared evaluation: fraction of eval samples the oracle prefers to π_ref's sample for the
    /// same prompt (identical texts count ½).
    EVAL_WIN_RATE_VS_REF = "eval/win_rate_vs_ref";
    /// The shared evaluation: mean per-token entropy of π on its samples.
    EVAL_ENTROPY = "eval/entropy";
    /// The shared evaluation: mean number of the policy's tokens per episode (EOS / end-of-turn
    /// included; env replies excluded).
    EVAL_RESPONSE_LEN = "eval/response_len";
    /// The shared evaluation: distinct token bigrams / all bigrams over the samples (low =
    /// repetitive).
    EVAL_DISTINCT_2 = "eval/distinct_2";
    /// Best-of-n: `log n − (n − 1)/n`, the bound its measured `eval/kl_to_ref` stays under.
    EVAL_KL_BOUND = "eval/kl_bound";
    /// Wall-clock seconds the shared evaluation has taken so far in this run (the reference's
    /// evaluation episodes sampled at the start included); with `budget/wall_seconds` it accounts
    /// for a run's time. Differs between identical runs, as every `*/wall_seconds` does.
    EVAL_WALL_SECONDS = "eval/wall_seconds";
    /// Best-of-n, each update: n.
    BEST_OF_N_N = "best_of_n/n";
    /// Best-of-n, each update: the bound `log n − (n − 1)/n` on its KL to the reference.
    BEST_OF_N_KL_BOUND = "best_of_n/kl_bound";
    /// Completions sampled for training (for DPO: the distinct completions behind its pairs).
    BUDGET_SAMPLES = "budget/samples";
    /// Tokens in those completions.
    BUDGET_TOKENS_GENERATED = "budget/tokens_generated";
    /// Tokens passed through gradient steps.
    BUDGET_TRAIN_TOKENS = "budget/train_tokens";
    /// Gold-reward evaluations or preference labels used as training signal (PPO-RM counts its
    /// reward model's labels).
    BUDGET_ORACLE_QUERIES = "budget/oracle_queries";
    /// Training wall-clock seconds from the moment `train` starts: loading the run's data, building
    /// the agent (DPO's reference pass, a reward model's loading) and every update; evaluation and
    /// checkpoint commits excluded. The one column that differs between identical runs.
    BUDGET_WALL_SECONDS = "budget/wall_seconds";
    /// Estimated FLOPs (forward 1×, backward 2×, attention included; a critic's passes without the
    /// LM head it does not run); for the group agents (GRPO, RLOO, REINFORCE++, online DPO) the
    /// work run: the prompt a group of samples shares counts once per pass, as it runs; the online
    /// agents add a learned reward model's scoring passes (its trunk over every padded position; a
    /// scorer of your own reports its FLOPs through `RewardFn::flops_spent`, 0 by default).
    BUDGET_FLOPS = "budget/flops";
    /// `budget/samples` plus the completions sampled for the stages the run consumed (its
    /// preference pairs, or its reward model's pairs).
    PIPELINE_SAMPLES = "pipeline/samples";
    /// `budget/tokens_generated` plus the tokens the consumed stages generated.
    PIPELINE_TOKENS_GENERATED = "pipeline/tokens_generated";
    /// `budget/train_tokens` plus the tokens the consumed stages trained on (a reward model's).
    PIPELINE_TRAIN_TOKENS = "pipeline/train_tokens";
    /// `budget/wall_seconds` plus the consumed stages' wall time (sampling and labelling pairs,
    /// training a reward model); a shared stage counts in full for each run that uses it, the SFT
    /// start for none. Cost rules (`wall_to_reach`) read this.
    PIPELINE_WALL_SECONDS = "pipeline/wall_seconds";
    /// `budget/flops` plus the consumed stages' FLOPs (`flops_to_reach` reads this).
    PIPELINE_FLOPS = "pipeline/flops";
    /// PPO, RLOO, REINFORCE++, online DPO: mean sequence KL of the rollout to the reference (PPO:
    /// the estimator `kl_estimator`; RLOO, REINFORCE++: k1).
    OBJECTIVE_KL = "objective/kl";
    /// PPO: mean sequence Σ −log π of the rollout.
    OBJECTIVE_ENTROPY = "objective/entropy";
    /// PPO, RLOO, REINFORCE++, online DPO: mean reward score (PPO: after the missing-EOS penalty).
    OBJECTIVE_SCORES = "objective/scores";
    /// PPO, RLOO, REINFORCE++: −kl_coef · objective/kl (RLOO: −β · objective/kl).
    OBJECTIVE_NON_SCORE_REWARD = "objective/non_score_reward";
    /// PPO, RLOO, REINFORCE++: scores + non_score_reward.
    OBJECTIVE_RLHF_REWARD = "objective/rlhf_reward";
    /// PPO: the KL coefficient in use (moves when `adaptive_kl`).
    OBJECTIVE_KL_COEF = "objective/kl_coef";
    /// PPO: mean policy turns per episode (1 for single-turn tasks).
    OBJECTIVE_TURNS = "objective/turns";
    /// PPO: mean ½(log ρ)² over minibatches (the `target_kl` quantity).
    POLICY_APPROXKL_AVG = "policy/approxkl_avg";
    /// PPO: fraction of tokens whose ratio was clipped.
    POLICY_CLIPFRAC_AVG = "policy/clipfrac_avg";
    /// PPO: mean per-token entropy during the updates.
    POLICY_ENTROPY_AVG = "policy/entropy_avg";
    /// PPO: 1 when `target_kl` stopped the epochs early.
    POLICY_EARLY_STOP = "policy/early_stop";
    /// PPO: the actor's gradient norm before clipping.
    POLICY_GRAD_NORM = "policy/grad_norm";
    /// PPO: the clipped policy loss.
    LOSS_POLICY_AVG = "loss/policy_avg";
    /// PPO: the clipped value loss.
    LOSS_VALUE_AVG = "loss/value_avg";
    /// PPO: mean probability ratio (should float near 1).
    VAL_RATIO = "val/ratio";
    /// PPO: fraction of clipped value predictions.
    VAL_CLIPFRAC_AVG = "val/clipfrac_avg";
    /// PPO: episodes whose last policy turn ended with a stop token (EOS, or `<|eot|>` in a
    /// conversation) rather than the token limit.
    VAL_NUM_EOS_TOKENS = "val/num_eos_tokens";
    /// PPO: 1 − Var(returns − values)/Var(returns) of the critic.
    VAL_EXPLAINED_VARIANCE = "val/explained_variance";
    /// PPO: the critic's gradient norm before clipping (a separate critic's, or the shared
    /// trunk's value-loss part).
    VAL_GRAD_NORM = "val/grad_norm";
    /// DPO: the batch loss (of its `loss_type`, RPO's NLL term included).
    LOSS_DPO = "loss/dpo";
    /// DPO and online DPO with `rpo_alpha` > 0 or `loss_type = orpo`: mean per-token NLL of the
    /// chosen completions.
    NLL_LOSS = "nll_loss";
    /// KTO: the batch loss.
    LOSS_KTO = "loss/kto";
    /// KTO: the reference point z₀ (the clamped KL estimate); GRPO: mean per-token k3 KL to the
    /// reference (0 with β = 0: no reference pass).
    KL = "kl";
    /// KTO: mean β·Δ over the batch's desirable examples; DPO, online DPO: β(log π − log π_ref) of
    /// the chosen completions (SimPO, ORPO: β × the mean per-token log-prob, as TRL logs them).
    REWARDS_CHOSEN = "rewards/chosen";
    /// KTO: mean β·Δ over the batch's undesirable examples; DPO, online DPO: β(log π − log π_ref)
    /// of the rejected completions (SimPO, ORPO: β × the mean per-token log-prob).
    REWARDS_REJECTED = "rewards/rejected";
    /// DPO, online DPO, KTO: chosen − rejected.
    REWARDS_MARGINS = "rewards/margins";
    /// DPO, online DPO: fraction of pairs with chosen > rejected.
    REWARDS_ACCURACIES = "rewards/accuracies";
    /// DPO, online DPO: summed log-probs of the chosen completions under π (both can fall while
    /// the margin rises).
    LOGPS_CHOSEN = "logps/chosen";
    /// DPO, online DPO: summed log-probs of the rejected completions under π.
    LOGPS_REJECTED = "logps/rejected";
    /// The learning rate of the update.
    TRAIN_LR = "train/lr";
    /// DPO, KTO: the gradient norm before clipping.
    TRAIN_GRAD_NORM = "train/grad_norm";
    /// DPO, KTO: passes over the pairs (KTO: the examples) made so far, TRL's `epoch`; an epoch is
    /// as many whole batches as the data holds.
    TRAIN_EPOCH = "train/epoch";
    /// GRPO, RLOO, REINFORCE++, online DPO: mean of the rewards the advantages come from (GRPO:
    /// after the overlong penalty; RLOO: minus β × the sequence KL; REINFORCE++: the score).
    REWARD = "reward";
    /// GRPO, RLOO, REINFORCE++, online DPO: std of those rewards.
    REWARD_STD = "reward_std";
    /// GRPO, RLOO, REINFORCE++, online DPO: fraction of prompt groups whose G rewards are all
    /// equal (no signal; dropped with `dynamic_sampling`).
    FRAC_REWARD_ZERO_STD = "frac_reward_zero_std";
    /// GRPO, RLOO, REINFORCE++, online DPO: mean policy tokens per episode.
    COMPLETIONS_MEAN_LENGTH = "completions/mean_length";
    /// GRPO, RLOO, REINFORCE++, online DPO: fraction of episodes cut by the token limit.
    COMPLETIONS_CLIPPED_RATIO = "completions/clipped_ratio";
    /// GRPO, RLOO, REINFORCE++: the clipped surrogate (plus β·KL); online DPO: its DPO-family loss.
    LOSS = "loss";
    /// GRPO, RLOO, REINFORCE++, online DPO: the gradient norm before clipping.
    GRAD_NORM = "grad_norm";
    /// GRPO, RLOO, REINFORCE++, online DPO: mean per-token entropy during the updates.
    ENTROPY = "entropy";
    /// GRPO, RLOO, REINFORCE++: fraction of tokens clipped below 1 − ε (negative advantage).
    CLIP_RATIO_LOW_MEAN = "clip_ratio/low_mean";
    /// GRPO, RLOO, REINFORCE++: fraction of tokens clipped above 1 + ε_high (positive advantage).
    CLIP_RATIO_HIGH_MEAN = "clip_ratio/high_mean";
    /// GRPO, RLOO, REINFORCE++: `clip_ratio/low_mean` + `clip_ratio/high_mean`.
    CLIP_RATIO_REGION_MEAN = "clip_ratio/region_mean";
}

/// `docs/metrics.md`: the glossary as a markdown page.
pub fn glossary_markdown() -> String {
    let mut s = String::from(
        "# Metric glossary\n\n\
         Every metric a run writes to `metrics.csv`, generated from `agents/src/metric.rs` (each \
         constant's doc comment); `cargo test -p aligngym-agents metric` checks that this page is \
         current, and `ALIGNGYM_BLESS=1` with that command rewrites it.\n\n\
         | metric | meaning |\n|---|---|\n",
    );
    for e in GLOSSARY {
        s.push_str(&format!("| `{}` | {} |\n", e.name, e.meaning.trim()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_listed_once_with_a_meaning() {
        let mut names: Vec<&str> = GLOSSARY.iter().map(|e| e.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a metric is declared twice");
        assert!(GLOSSARY.iter().all(|e| e.meaning.trim().len() > 10));
        // A doc comment of several lines reads as one sentence, not words run together.
        let gold = GLOSSARY
            .iter()
            .find(|e| e.name == EVAL_GOLD_REWARD)
            .unwrap();
        assert!(
            gold.meaning.contains("held-out prompts (the ground truth)"),
            "{gold:?}"
        );
        assert!(glossary_markdown().contains("| `eval/kl_to_ref` | The shared evaluation: mean"));
    }

    #[test]
    fn the_glossary_page_is_generated_from_the_constants() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
        let want = glossary_markdown();
        if std::env::var_os("ALIGNGYM_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "docs/metrics.md differs from agents/src/metric.rs; rerun this test with ALIGNGYM_BLESS=1"
        );
    }
}
