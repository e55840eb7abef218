//! The collector's contract on a multi-turn env: recorded log-probs equal a teacher-forced pass
//! over the whole conversation, env tokens are masked out and get no gradient, rewards sit on the
//! last policy token of the episode, an overflowing reply truncates, and serial and rayon envs give
//! identical PPO updates.

use super::{chat_envs, collect, Branch, Start};
use crate::algorithms::ppo::{PpoAgent, PpoConfig};
use crate::lm::model::GptConfig;
use crate::lm::policy::LmPolicy;
use crate::lm::sampling::{sequence_logprobs, SamplingConfig};
use crate::lm::tokenizer::Tokenizer;
use crate::losses::ppo_policy_loss;
use crate::rollout::RewardSignal;
use crate::stages::sft;
use crate::Agent;
use aligngym_envs::chat::END_OF_TURN;
use aligngym_envs::tasks::guess_number::GuessNumberTask;
use aligngym_envs::{ChatEnvConfig, Feedback, Message, Rule, Split, Task};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

fn policy(task: &dyn Task, block_size: usize, seed: u64) -> LmPolicy {
    let tokenizer = Tokenizer::train(&task.corpus(300, 0), 400).unwrap();
    let cfg = GptConfig::gpt2(tokenizer.vocab_size(), 2, 4, 32, block_size);
    let (vs, model) = sft::init_model(&cfg, Device::Cpu, seed).unwrap();
    // Perturb every variable so biases and LayerNorms matter too.
    tch::manual_seed(seed as i64);
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut v) in vars {
            let noise = v.randn_like() * 0.05;
            v += noise;
        }
    });
    LmPolicy {
        vs,
        model,
        tokenizer,
        adapter_base: None,
    }
}

fn sampling() -> SamplingConfig {
    SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 4,
    }
}

use aligngym_envs::TextCodec;

#[test]
fn multi_turn_logprobs_masks_gradients_and_reward_positions() {
    // libtorch's RNG is global: hold the crate's test lock.
    let _g = crate::tests::lock();
    let task: Arc<dyn Task> = Arc::new(GuessNumberTask::new());
    let pi = policy(task.as_ref(), 128, 3);
    assert!(pi.tokenizer.eot_id().is_some());
    let mut envs = chat_envs(task.clone(), 12, ChatEnvConfig::default(), true).unwrap();
    tch::manual_seed(7);
    let roll = collect(&pi, &mut envs, Start::Seed(11), &sampling(), None).unwrap();
    assert_eq!(roll.episodes.len(), 12);
    assert!(
        roll.episodes.iter().any(|e| e.policy_turns >= 2),
        "a random policy should be asked again at least once"
    );
    // The mask is exactly where the tokens came from.
    let mask: Vec<Vec<f32>> = Vec::try_from(&roll.seqs.mask).unwrap();
    let toks: Vec<Vec<i64>> = Vec::try_from(&roll.seqs.tokens).unwrap();
    let mut env_tokens = 0;
    for (i, e) in roll.episodes.iter().enumerate() {
        for (t, (&id, &p)) in e.tokens.iter().zip(&e.policy).enumerate() {
            assert_eq!(toks[i][t], id as i64);
            assert_eq!(mask[i][t], if p { 1.0 } else { 0.0 });
            env_tokens += usize::from(!p);
        }
        // Each turn's last token is the policy's; what follows it is the env's reply or padding.
        for &end in &e.turn_ends {
            assert_eq!(mask[i][end], 1.0);
            if end + 1 < mask[i].len() {
                assert_eq!(mask[i][end + 1], 0.0, "episode {i}, turn end {end}");
            }
        }
        // The replies are in the tokens exactly as the env said them.
        let replies: Vec<&Message> = e
            .turns
            .iter()
            .filter(|m| m.role != aligngym_envs::Role::Assistant)
            .collect();
        let env_ids: Vec<u32> = e
            .tokens
            .iter()
            .zip(&e.policy)
            .filter(|(_, &p)| !p)
            .map(|(&t, _)| t)
            .collect();
        let expect: Vec<u32> = replies
            .iter()
            .flat_map(|m| {
                pi.tokenizer
                    .encode_ids(&aligngym_envs::chat::render_reply(m))
            })
            .collect();
        assert_eq!(env_ids, expect);
        // The score goes on the last policy token, and the gold reward reads the transcript.
        assert_eq!(e.gold, task.gold().score(&e.prompt, &e.transcript));
    }
    assert!(env_tokens > 0);
    let pos: Vec<i64> = Vec::try_from(&roll.score_pos).unwrap();
    for (e, &p) in roll.episodes.iter().zip(&pos) {
        assert_eq!(p as usize, *e.turn_ends.last().unwrap());
    }
    // Teacher-forced over the whole conversation: the recorded log-probs.
    let lp = tch::no_grad(|| sequence_logprobs(&pi.model, &roll.seqs, 1.0, false));
    let d = (&lp - &roll.logprobs).abs().max().double_value(&[]);
    assert!(d < 1e-4, "max |Δ log-prob| = {d}");
    // Env tokens get no gradient: changing the advantages there changes nothing.
    let grads = |adv: &Tensor| {
        for (_, mut v) in pi.vs.variables() {
            v.zero_grad();
        }
        let lp = sequence_logprobs(&pi.model, &roll.seqs, 1.0, true);
        let loss = ppo_policy_loss(&lp, &roll.logprobs, adv, &roll.seqs.mask, 0.2).loss;
        loss.backward();
        let mut v: Vec<_> = pi.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::cat(
            &v.iter()
                .map(|(_, t)| t.grad().flatten(0, -1))
                .collect::<Vec<_>>(),
            0,
        )
    };
    let adv = Tensor::randn(roll.seqs.mask.size(), (Kind::Float, Device::Cpu)) * &roll.seqs.mask;
    let noise = Tensor::randn(roll.seqs.mask.size(), (Kind::Float, Device::Cpu)) * 100.0;
    let adv_env = &adv + noise * (1.0 - &roll.seqs.mask);
    let g1 = grads(&adv);
    let g2 = grads(&adv_env);
    assert!(g1.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert_eq!((&g1 - &g2).abs().max().double_value(&[]), 0.0);
}

/// A multi-turn task whose reply is too long for a small context.
struct Chatty;

impl Task for Chatty {
    fn id(&self) -> &str {
        "chatty-test"
    }
    fn description(&self) -> &str {
        "replies at length"
    }
    fn reward_kind(&self) -> &str {
        "rule"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, _seed: u64) -> Vec<String> {
        (0..n)
            .map(|i| format!("say {i} {END_OF_TURN} and then some more words"))
            .collect()
    }
    fn prompts(&self, _split: Split) -> &[String] {
        static P: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        P.get_or_init(|| vec!["say something".to_string()])
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(aligngym_envs::rules::LengthTarget::words(3, 2.0))
    }
    fn reply(&self, _prompt: &str, _turns: &[Message]) -> Option<Message> {
        Some(Message::user("and then some more words ".repeat(30)))
    }
    fn max_turns(&self) -> usize {
        4
    }
}

#[test]
fn a_branch_replays_its_turns_as_dpo_encodes_them_and_samples_on() {
    let _g = crate::tests::lock();
    let task: Arc<dyn Task> = Arc::new(GuessNumberTask::new());
    let pi = policy(task.as_ref(), 128, 5);
    let prompts: Vec<usize> = (0..8).collect();
    let mut envs = chat_envs(task.clone(), prompts.len(), ChatEnvConfig::default(), true).unwrap();
    tch::manual_seed(3);
    let trunk = collect(&pi, &mut envs, Start::Prompts(&prompts), &sampling(), None).unwrap();
    // Branch every trunk with two or more turns after its first turn, twice.
    let branches: Vec<Branch> = trunk
        .episodes
        .iter()
        .filter(|e| e.policy_turns >= 2)
        .flat_map(|e| {
            let b = Branch {
                prompt: e.prompt_index,
                turns: vec![e.turns[0].content.clone()],
            };
            [b.clone(), b]
        })
        .collect();
    assert!(branches.len() >= 4, "{} branches", branches.len());
    let mut envs = chat_envs(task.clone(), branches.len(), ChatEnvConfig::default(), true).unwrap();
    tch::manual_seed(4);
    let roll = collect(
        &pi,
        &mut envs,
        Start::Branches(&branches),
        &sampling(),
        None,
    )
    .unwrap();
    let prompt_rows: Vec<Vec<i64>> = Vec::try_from(&roll.seqs.prompt).unwrap();
    let prompt_valid: Vec<Vec<bool>> = Vec::try_from(&roll.seqs.prompt_valid).unwrap();
    for (i, (e, b)) in roll.episodes.iter().zip(&branches).enumerate() {
        let t = &trunk.episodes[b.prompt];
        // The whole conversation: the replayed turn and the env's same reply, then the samples.
        assert_eq!(e.turns[..2], t.turns[..2], "episode {i}");
        assert!(e.policy_turns >= 1 && e.turns.len() > 2);
        assert_eq!(e.gold, task.gold().score(&e.prompt, &e.transcript));
        // The context the sampler saw is the prompt, then the replayed turn and reply exactly as
        // DPO tokenises them in a conversational pair.
        let user = [Message::user(&e.prompt)];
        let dpo = crate::stages::pairs::encode_sequences(
            &pi,
            &[e.prompt.as_str()],
            &[crate::stages::pairs::Continuation::Turns {
                prompt: &user,
                turns: &e.turns[..2],
            }],
        )
        .unwrap();
        let cont: Vec<i64> = Vec::try_from(dpo.tokens.get(0)).unwrap();
        let mut expect: Vec<i64> = pi
            .tokenizer
            .encode_prompt(&e.prompt)
            .iter()
            .map(|&x| x as i64)
            .collect();
        expect.extend(cont);
        let seen: Vec<i64> = prompt_rows[i]
            .iter()
            .zip(&prompt_valid[i])
            .filter(|(_, &v)| v)
            .map(|(&x, _)| x)
            .collect();
        assert_eq!(seen, expect, "episode {i}");
    }
    // Sampling went on from that context: the recorded log-probs are a teacher-forced pass's.
    let lp = tch::no_grad(|| sequence_logprobs(&pi.model, &roll.seqs, 1.0, false));
    let d = (&lp - &roll.logprobs).abs().max().double_value(&[]);
    assert!(d < 1e-4, "max |Δ log-prob| = {d}");
    // A replayed turn that ends the game leaves nothing to sample: one line naming the prompt.
    let p = &task.prompts(Split::Train)[0];
    let (_, secret) = aligngym_envs::tasks::guess_number::game(p).unwrap();
    let done = [Branch {
        prompt: 0,
        turns: vec![format!(" {secret}")],
    }];
    let mut envs = chat_envs(task.clone(), 1, ChatEnvConfig::default(), false).unwrap();
    let err = collect(&pi, &mut envs, Start::Branches(&done), &sampling(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("prompt 0 ended at its replayed turn 1"),
        "{err}"
    );
}

#[test]
fn a_reply_that_overflows_the_context_truncates_the_episode() {
    // libtorch's RNG is global: hold the crate's test lock.
    let _g = crate::tests::lock();
    let task: Arc<dyn Task> = Arc::new(Chatty);
    let pi = policy(task.as_ref(), 32, 1);
    let mut envs = chat_envs(task, 3, ChatEnvConfig::default(), false).unwrap();
    tch::manual_seed(0);
    let roll = collect(&pi, &mut envs, Start::Seed(0), &sampling(), None).unwrap();
    for e in &roll.episodes {
        assert!(!e.terminated);
        assert_eq!(e.policy_turns, 1);
        let note = e.note.as_deref().unwrap_or("");
        assert!(note.contains("overflowed the model's context"), "{note}");
        assert!(e.gold.is_finite());
    }
    assert!(roll.seqs.tokens.size()[1] <= 4);
}

#[test]
fn serial_and_rayon_envs_give_identical_ppo_updates() {
    // libtorch's RNG is global: hold the crate's test lock.
    let _g = crate::tests::lock();
    let task: Arc<dyn Task> = Arc::new(GuessNumberTask::new());
    let run = |parallel: bool| {
        let pi = policy(task.as_ref(), 128, 5);
        let cfg = PpoConfig {
            batch_size: 8,
            learning_rate: 1e-3,
            ..Default::default()
        };
        let mut a =
            PpoAgent::with_envs(cfg, task.clone(), pi, RewardSignal::Gold, 9, parallel).unwrap();
        (0..2).map(|s| a.update(s).unwrap()).collect::<Vec<_>>()
    };
    let serial = run(false);
    let again = run(false);
    assert_eq!(serial, again, "serial twice");
    let rayon = run(true);
    assert_eq!(serial, rayon);
    assert!(serial[1]["objective/turns"] > 1.0);
}

#[test]
fn the_built_in_chat_format_is_append_only() {
    // Rendering a conversation turn by turn (what the collector appends) gives the ids of
    // rendering it whole (what SFT trains on), for every multi-turn built-in task.
    for task in aligngym_envs::tasks()
        .into_iter()
        .filter(|t| t.max_turns() > 1)
    {
        let tok = Tokenizer::train(&task.corpus(300, 0), 400).unwrap();
        let eot = tok.eot_id().unwrap();
        for line in task.corpus(40, 1) {
            let whole = tok.encode_prompt(&line);
            // The corpus line is the prompt, then turns each ending with <|eot|>, replies between.
            let (prompt, rest) = line.split_at(line.find('.').unwrap() + 1);
            let mut pieces = tok.encode_prompt(prompt);
            for (k, part) in rest.split(END_OF_TURN).enumerate() {
                if k > 0 {
                    // What follows a turn's end: the env's reply, then the next turn.
                    let (reply, turn) = match part.rfind('\n') {
                        Some(i) if part.starts_with('\n') => part.split_at(i + 1),
                        _ => ("", part),
                    };
                    pieces.extend(tok.encode_ids(reply));
                    pieces.extend(tok.encode_ids(turn));
                } else {
                    pieces.extend(tok.encode_ids(part));
                }
                if k + 1 < rest.split(END_OF_TURN).count() {
                    pieces.push(eot);
                }
            }
            assert_eq!(pieces, whole, "{}: {line:?}", task.id());
        }
    }
}

#[test]
fn adaptive_kl_metrics_use_the_coefficient_the_rewards_used() {
    // libtorch's RNG is global: hold the crate's test lock.
    let _g = crate::tests::lock();
    let task: Arc<dyn Task> = Arc::new(GuessNumberTask::new());
    let cfg = PpoConfig {
        batch_size: 8,
        learning_rate: 1e-3,
        adaptive_kl: true,
        kl_coef: 0.2,
        // A target far below any KL the first updates reach: the controller raises kl_coef.
        kl_target: 1e-6,
        kl_horizon: 8.0,
        ..Default::default()
    };
    let mut a = PpoAgent::new(
        cfg,
        task.clone(),
        policy(task.as_ref(), 128, 2),
        RewardSignal::Gold,
        4,
    )
    .unwrap();
    let _ = a.update(0).unwrap();
    let used = a.kl_coef();
    let m = a.update(1).unwrap();
    assert!(m["objective/kl"] > 0.0);
    assert_eq!(m["objective/kl_coef"], used);
    let non_score = m["objective/non_score_reward"];
    assert!(
        (non_score + used * m["objective/kl"]).abs() < 1e-9,
        "{non_score}"
    );
    assert!((m["objective/rlhf_reward"] - (m["objective/scores"] + non_score)).abs() < 1e-9);
    // The controller moved after the update: the next rewards use a larger coefficient.
    assert!(a.kl_coef() > used, "{} vs {used}", a.kl_coef());
    // Every divisor and clip is checked up front.
    for (field, bad) in [
        (
            "kl_target",
            PpoConfig {
                kl_target: 0.0,
                ..Default::default()
            },
        ),
        (
            "kl_horizon",
            PpoConfig {
                kl_horizon: -1.0,
                ..Default::default()
            },
        ),
        (
            "vf_clip_coef",
            PpoConfig {
                vf_clip_coef: f64::NAN,
                ..Default::default()
            },
        ),
        (
            "max_grad_norm",
            PpoConfig {
                max_grad_norm: 0.0,
                ..Default::default()
            },
        ),
        (
            "adam_eps",
            PpoConfig {
                adam_eps: 0.0,
                ..Default::default()
            },
        ),
    ] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

/// A reward model trained for one epoch on pairs of `pi`'s episodes of `task` (6 envs, the first
/// of each two chosen), those episodes and the pairs.
fn trained_reward_model(
    task: &Arc<dyn Task>,
    pi: &LmPolicy,
) -> (
    crate::stages::reward_model::RewardModel,
    super::Rollout,
    Vec<aligngym_envs::PreferencePair>,
) {
    use crate::stages::reward_model::{RewardModel, RmConfig};
    use aligngym_envs::{ConversationPair, PreferencePair};
    let mut envs = chat_envs(task.clone(), 6, ChatEnvConfig::default(), false).unwrap();
    tch::manual_seed(3);
    let roll = collect(pi, &mut envs, Start::Seed(2), &sampling(), None).unwrap();
    let pairs: Vec<PreferencePair> = roll
        .episodes
        .chunks(2)
        .map(|w| {
            PreferencePair::conversational(ConversationPair {
                prompt: vec![Message::user(w[0].prompt.clone())],
                chosen: w[0].turns.clone(),
                rejected: w[1].turns.clone(),
            })
        })
        .collect();
    let cfg = RmConfig {
        epochs: 1,
        heldout_fraction: 0.0,
        ..Default::default()
    };
    let (rm, _) = RewardModel::train(pi, &pairs, &cfg, 0, |_, _, _| {}).unwrap();
    (rm, roll, pairs)
}

#[test]
fn a_reward_model_scores_episodes_as_it_was_trained_on_conversations() {
    // PPO with a reward model on a multi-turn env: the collector asks the scorer for whole
    // conversations, and the reward model reads them with the tokens of its training pairs.
    use crate::stages::pairs::{encode_pairs, stack_pairs};
    use aligngym_envs::RewardFn;
    let _g = crate::tests::lock();
    let task: Arc<dyn Task> = Arc::new(GuessNumberTask::new());
    let pi = policy(task.as_ref(), 128, 6);
    let (rm, roll, pairs) = trained_reward_model(&task, &pi);
    let prompts: Vec<&str> = roll.episodes.iter().map(|e| e.prompt.as_str()).collect();
    let turns: Vec<&[Message]> = roll.episodes.iter().map(|e| e.turns.as_slice()).collect();
    let got = rm.score_conversations(&prompts, &turns).unwrap();
    // The chosen side of each training pair, scored through the training path.
    let batch = encode_pairs(rm.network(), &pairs).unwrap();
    let idx = Tensor::arange(pairs.len() as i64, (Kind::Int64, Device::Cpu));
    let want = tch::no_grad(|| rm.raw_pair_scores(&stack_pairs(&batch, &idx)));
    for (k, w) in want.iter().take(pairs.len()).enumerate() {
        assert!(
            (got[2 * k] - w).abs() < 1e-4,
            "episode {}: {} vs {w}",
            2 * k,
            got[2 * k]
        );
    }
    // As plain transcripts (no end-of-turn tokens) the same episodes score differently.
    let texts: Vec<&str> = roll
        .episodes
        .iter()
        .map(|e| e.transcript.as_str())
        .collect();
    assert_ne!(rm.score_batch(&prompts, &texts).unwrap(), got);
}

#[test]
fn a_reward_models_scoring_passes_count_in_the_budget() {
    use crate::algorithms::rloo::{RlooAgent, RlooConfig};
    use aligngym_envs::RewardFn;
    let _g = crate::tests::lock();
    let task: Arc<dyn Task> = Arc::new(GuessNumberTask::new());
    let pi = policy(task.as_ref(), 128, 6);
    let (rm, roll, _) = trained_reward_model(&task, &pi);
    let prompts: Vec<&str> = roll.episodes.iter().map(|e| e.prompt.as_str()).collect();
    let texts: Vec<&str> = roll
        .episodes
        .iter()
        .map(|e| e.transcript.as_str())
        .collect();
    assert_eq!(rm.flops_spent(), 0.0);
    rm.score_batch(&prompts, &texts).unwrap();
    let once = rm.flops_spent();
    // One trunk forward over every padded position: (rows × t) × trunk FLOPs per token at the
    // padded length t, for one t the batch can have.
    let rows = prompts.len() as f64;
    let cfg = rm.network().model.config().clone();
    let t = (1..=cfg.block_size * 2)
        .find(|&t| (cfg.trunk_flops_per_token(t) * rows * t as f64 - once).abs() < 1e-6 * once);
    assert!(
        t.is_some(),
        "{once} FLOPs is no whole trunk pass over {rows} rows"
    );
    // The same batch again, and twice as many rows of it, add once and twice as much.
    rm.score_batch(&prompts, &texts).unwrap();
    assert_eq!(rm.flops_spent(), 2.0 * once);
    let (p2, t2) = (
        [&prompts[..], &prompts[..]].concat(),
        [&texts[..], &texts[..]].concat(),
    );
    rm.score_batch(&p2, &t2).unwrap();
    assert_eq!(rm.flops_spent(), 4.0 * once);

    // RLOO (through the group agents' core) and PPO, each with a fresh copy of the reward model:
    // the same update as with the gold reward (the reward does not change what is sampled first),
    // plus the model's scoring passes.
    type Make<'a> = Box<dyn Fn(RewardSignal) -> Box<dyn Agent> + 'a>;
    let rloo: Make = Box::new(|reward| {
        let cfg = RlooConfig {
            num_prompts: 2,
            num_generations: 2,
            max_new_tokens: 8,
            ..Default::default()
        };
        let pi = pi.duplicate(true).unwrap();
        Box::new(RlooAgent::new(cfg, task.clone(), pi, reward, 1).unwrap())
    });
    let ppo: Make = Box::new(|reward| {
        let cfg = PpoConfig {
            batch_size: 4,
            ..Default::default()
        };
        let pi = pi.duplicate(true).unwrap();
        Box::new(PpoAgent::new(cfg, task.clone(), pi, reward, 1).unwrap())
    });
    for (name, make) in [("rloo", rloo), ("ppo", ppo)] {
        let (model, _, _) = trained_reward_model(&task, &pi);
        let mut gold = make(RewardSignal::Gold);
        let mut scored = make(RewardSignal::Scorer(Box::new(model)));
        gold.update(0).unwrap();
        scored.update(0).unwrap();
        let spent = scored.proxy_reward().unwrap().flops_spent();
        let extra = scored.budget().flops - gold.budget().flops;
        assert!(spent > 0.0, "{name}");
        assert!(
            (extra - spent).abs() <= 1e-9 * spent,
            "{name}: {extra} vs {spent}"
        );
    }
}
