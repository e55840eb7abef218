"""The Python side of issue 6's comparison: W1–W4 with transformers' `generate` and TRL's trainers.

The same workloads as `aligngym bench` (src/bench.rs), at the same model sizes, so the two columns of
`make bench-reference` compare equal work:

  W1 sampling   32 prompts × 16 tokens, 48 new tokens each (no early stop), temperature 1, KV cache:
                the model's `generate` (GPT-2, or Llama at SmolLM2's shape).
  W2 DPO step   32 pairs, prompt 16, chosen and rejected 48 tokens, AdamW: TRL's `DPOTrainer`, (a) with
                a reference model, (b) with `precompute_ref_log_probs`.
  W3 PPO        sample 32 × 48 from 16-token prompts, rule reward, reference and value passes, GAE,
                4 epochs × 1 minibatch, separate value model: TRL 1.12's `PPOTrainer` (the last TRL
                with one), the reward model replaced by a length rule as in aligngym's W3.
  W4 SFT step   32 × 64 tokens: a plain PyTorch loop (forward with labels, AdamW, clipping): what
                every Python trainer pays at least.
  W5 GRPO       32 prompts × G = 8 completions of up to 48 tokens, the length rule as reward, one
                step (β = 0, `dapo`): TRL's `GRPOTrainer`.
  W6 RLOO       32 prompts × k = 4 completions of up to 48 tokens, the length rule, a reference pass
                (β = 0.05), one step: TRL's `RLOOTrainer`.

Each workload: one warm-up, then the median of `--repeats` timed repetitions (for the trainers, the
median time between consecutive optimiser steps). Prints a table and writes `--json` in the schema of
`aligngym bench --json`.
"""

import argparse
import contextlib
import importlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

SIZES = {
    "tiny": dict(vocab=512, n_layer=4, n_head=4, n_embd=128),
    "small": dict(vocab=4096, n_layer=6, n_head=8, n_embd=256),
    # SmolLM2-135M's shape (as `aligngym bench --size smollm2-135m`): Llama, grouped-query
    # attention, SwiGLU, tied head. Random weights on both sides: speed does not depend on them.
    "smollm2-135m": dict(vocab=49152, n_layer=30, n_head=9, n_embd=576, llama=dict(kv_heads=3, mlp=1536)),
}
B, LP, N, SFT_T = 32, 16, 48, 64
TARGET_WORDS = 20  # aligngym's W3 rule: length target of 20 words


def lm_config(size):
    """The transformers config of a size: GPT-2 for tiny and small, Llama for SmolLM2's shape."""
    from transformers import GPT2Config, LlamaConfig

    s = SIZES[size]
    if "llama" in s:
        return LlamaConfig(
            vocab_size=s["vocab"],
            hidden_size=s["n_embd"],
            intermediate_size=s["llama"]["mlp"],
            num_hidden_layers=s["n_layer"],
            num_attention_heads=s["n_head"],
            num_key_value_heads=s["llama"]["kv_heads"],
            max_position_embeddings=2048,
            rope_theta=100_000.0,
            rms_norm_eps=1e-5,
            hidden_act="silu",
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    return GPT2Config(
        vocab_size=s["vocab"],
        n_positions=128,
        n_embd=s["n_embd"],
        n_layer=s["n_layer"],
        n_head=s["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def causal_lm(size):
    """A randomly initialised causal LM of `size` (the seed is the caller's)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(lm_config(size))


def word_tokenizer(vocab):
    """One word per id (`t0`, `t1`, …), so a text of k words is exactly k tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="t0", bos_token="t1", eos_token="t2", unk_token="t3"
    )


def words(g, vocab, n):
    return " ".join(f"t{i}" for i in torch.randint(4, vocab, (n,), generator=g).tolist())


def median_time(repeats, fn):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_times_callback():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    return StepTimes()


def median_step(cb):
    gaps = [b - a for a, b in zip(cb.ends, cb.ends[1:])]
    return statistics.median(gaps[1:] if len(gaps) > 2 else gaps)  # the first gap is a warm-up


def common_args(dtype, lr):
    return dict(
        per_device_train_batch_size=B,
        gradient_accumulation_steps=1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        use_cpu=not torch.cuda.is_available(),
        bf16=dtype == "bf16",
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )


def w1(size, dtype, repeats, device):
    torch.manual_seed(0)
    model = causal_lm(size).to(device).eval()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = None  # no early stop
    ids = torch.randint(3, SIZES[size]["vocab"], (B, LP), device=device)
    mask = torch.ones_like(ids)

    def run():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=N,
            pad_token_id=0,
            use_cache=True,
        )
        assert out.shape == (B, LP + N), out.shape
        sync(device)

    s = median_time(repeats, run)
    return [row("W1 sampling (KV cache)", "new tokens/s", B * N / s, s)]


def w2(size, dtype, repeats, device):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    g = torch.Generator().manual_seed(0)
    vocab = SIZES[size]["vocab"]
    # The trainer appends EOS to each completion: 47 words + EOS = 48 tokens, as in aligngym's W2.
    # Completions start with a space so that prompt + completion splits at the same word boundary.
    data = Dataset.from_dict(
        {
            "prompt": [words(g, vocab, LP) for _ in range(B)],
            "chosen": [" " + words(g, vocab, N - 1) for _ in range(B)],
            "rejected": [" " + words(g, vocab, N - 1) for _ in range(B)],
        }
    )
    rows = []
    for precompute in (False, True):
        torch.manual_seed(0)
        model = causal_lm(size).to(device)
        ref = None if precompute else causal_lm(size).to(device)
        cb = step_times_callback()
        with tempfile.TemporaryDirectory() as out:
            cfg = DPOConfig(
                output_dir=out,
                max_steps=repeats + 2,
                beta=0.1,
                max_length=LP + N,
                precompute_ref_log_probs=precompute,
                **common_args(dtype, 1e-6),
            )
            trainer = DPOTrainer(
                model=model,
                ref_model=ref,
                args=cfg,
                train_dataset=data,
                processing_class=word_tokenizer(vocab),
                callbacks=[cb],
            )
            trainer.train()
        s = median_step(cb)
        name = "W2 DPO step (precomputed ref)" if precompute else "W2 DPO step (reference model)"
        rows.append(row(name, "pairs/s", B / s, s))
    return rows


def w3(size, dtype, repeats, device, trl_ppo_path):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    # TRL 1.13 dropped the PPO trainer; 1.12 is installed beside the newer TRL and imported first.
    sys.path.insert(0, trl_ppo_path)
    for m in [m for m in sys.modules if m == "trl" or m.startswith("trl.")]:
        del sys.modules[m]
    ppo = importlib.import_module("trl.experimental.ppo.ppo_trainer")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    class LengthRule(torch.nn.Module):
        """Stands for the reward model: the score is a rule on the response, as in aligngym's W3."""

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

    rule = LengthRule().to(device)
    learned_reward = ppo.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if model is rule:
            n = (query_responses[:, context_length:] != pad_token_id).sum(1).float()
            return None, -(n - TARGET_WORDS).abs() / TARGET_WORDS, None
        return learned_reward(model, query_responses, pad_token_id, context_length)

    ppo.get_reward = get_reward

    vocab = SIZES[size]["vocab"]
    g = torch.Generator().manual_seed(0)
    tok = word_tokenizer(vocab)
    prompts = [tok(words(g, vocab, LP))["input_ids"] for _ in range(B)]
    data = Dataset.from_dict({"input_ids": prompts})
    torch.manual_seed(0)
    policy = causal_lm(size).to(device)
    ref = causal_lm(size).to(device)
    cfg_v = lm_config(size)
    cfg_v.num_labels = 1
    value = AutoModelForSequenceClassification.from_config(cfg_v).to(device)
    cb = step_times_callback()
    iters = repeats + 2
    with tempfile.TemporaryDirectory() as out:
        cfg = PPOConfig(
            output_dir=out,
            total_episodes=B * iters,
            num_mini_batches=1,
            num_ppo_epochs=4,
            response_length=N,
            temperature=1.0,
            stop_token=None,
            missing_eos_penalty=None,
            local_rollout_forward_batch_size=B,
            num_sample_generations=0,
            **common_args(dtype, 1e-6),
        )
        trainer = PPOTrainer(
            args=cfg,
            processing_class=tok,
            model=policy,
            ref_model=ref,
            reward_model=rule,
            value_model=value,
            train_dataset=data,
            callbacks=[cb],
        )
        trainer.train()
    s = median_step(cb)
    return [row("W3 PPO iteration", "iterations/s", 1 / s, s)]


def length_rule(completions, **kw):
    """aligngym's W3/W5/W6 rule as a TRL reward function: closeness to TARGET_WORDS words."""
    return [-abs(len(c.split()) - TARGET_WORDS) / TARGET_WORDS for c in completions]


def group_trainer(size, dtype, repeats, device, which):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    if which == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer

        k, extra = 8, dict(beta=0.0, loss_type="dapo")
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

        k, extra = 4, dict(beta=0.05)
    vocab = SIZES[size]["vocab"]
    g = torch.Generator().manual_seed(0)
    steps = repeats + 2
    data = Dataset.from_dict({"prompt": [words(g, vocab, LP) for _ in range(B * steps)]})
    torch.manual_seed(0)
    cb = step_times_callback()
    args = common_args(dtype, 1e-6)
    # One optimiser step per generation of 32 prompts × k completions.
    args["per_device_train_batch_size"] = B * k
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as init:
        # The trainers build their reference model from the policy's path: save it first.
        causal_lm(size).save_pretrained(init)
        model = AutoModelForCausalLM.from_pretrained(init).to(device)
        cfg = Config(
            output_dir=out,
            max_steps=steps,
            num_generations=k,
            max_completion_length=N,
            temperature=1.0,
            **extra,
            **args,
        )
        trainer = Trainer(
            model=model,
            reward_funcs=length_rule,
            args=cfg,
            train_dataset=data,
            processing_class=word_tokenizer(vocab),
            callbacks=[cb],
        )
        trainer.train()
    s = median_step(cb)
    name = "W5 GRPO iteration" if which == "grpo" else "W6 RLOO iteration"
    return [row(name, "iterations/s", 1 / s, s)]


def w5(size, dtype, repeats, device):
    return group_trainer(size, dtype, repeats, device, "grpo")


def w6(size, dtype, repeats, device):
    return group_trainer(size, dtype, repeats, device, "rloo")


def w4(size, dtype, repeats, device):
    torch.manual_seed(0)
    model = causal_lm(size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(3, SIZES[size]["vocab"], (B, SFT_T), device=device)
    amp = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if dtype == "bf16"
        else contextlib.nullcontext()
    )

    def run():
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)

    s = median_time(repeats, run)
    return [row("W4 SFT step", "tokens/s", B * SFT_T / s, s)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def row(workload, unit, throughput, seconds):
    return dict(workload=workload, unit=unit, throughput=throughput, seconds=seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="tiny", help="model size (as aligngym bench)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="fp32, or bf16 (generate in bf16 weights; trainers with bf16=True autocast)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions per workload after one warm-up")
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6", help="comma-separated subset of W1,W2,W3,W4,W5,W6")
    ap.add_argument("--trl-ppo", default=os.path.join(sys.prefix, "reference", "trl-1.12"), help="folder holding TRL 1.12 (for its PPO trainer)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import transformers

    try:  # W1 and W4 need transformers alone
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    versions = dict(torch=torch.__version__, transformers=transformers.__version__, trl_dpo=trl_version, trl_ppo="1.12.0" if trl_version else None)
    rows = []
    wanted = a.workloads.upper().split(",")
    quiet = io.StringIO()
    for w, fn in [("W1", w1), ("W2", w2), ("W4", w4), ("W3", w3), ("W5", w5), ("W6", w6)]:
        if w not in wanted:
            continue
        args = (a.size, a.dtype, a.repeats, device) + ((a.trl_ppo,) if w == "W3" else ())
        with contextlib.redirect_stdout(quiet):  # the trainers print their own summaries
            rows += fn(*args)
    report = dict(size=a.size, device=str(device), threads=torch.get_num_threads(), dtype=a.dtype, versions=versions, rows=rows)
    print(f"python reference — size {a.size}, device {device} ({torch.get_num_threads()} threads), {a.dtype}; {versions}")
    for r in rows:
        print(f"{r['workload']:<32} {r['throughput']:>14.2f} {r['unit']:<14} {r['seconds']:>10.4f}")
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
