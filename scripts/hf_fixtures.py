"""Tiny random Hugging Face checkpoints, and what transformers computes on them, for aligngym's
reference tests (agents/tests/hf_reference.rs).

    python scripts/hf_fixtures.py OUT_DIR

Writes one folder per model (as `save_pretrained` writes it, one of them sharded) with
`reference.safetensors` beside the weights: a left-padded batch (`input_ids`, `attention_mask`),
the full forward's `logits` at positions counted over valid tokens, and greedy generation's 32
`generated` tokens with the raw `step_logits` of each step (through transformers' KV cache).
"""

import pathlib
import sys

import torch
from safetensors.torch import save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 96
NEW_TOKENS = 32
PROMPTS = [[5, 17, 33, 2, 71, 9, 40], [11, 12], [90, 3, 3, 64]]


def llama_shape(**kw):
    shape = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rope_theta=500.0,
        rms_norm_eps=1e-6,
    )
    shape.update(kw)
    return shape


def models():
    yield "gpt2", GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=2,
        )
    ), {}
    yield "llama-gqa-tied", LlamaForCausalLM(
        LlamaConfig(**llama_shape(num_key_value_heads=2, tie_word_embeddings=True))
    ), {}
    # One key/value head for four query heads, a separate LM head, and sharded weights.
    yield "llama-untied-sharded", LlamaForCausalLM(
        LlamaConfig(**llama_shape(num_key_value_heads=1, tie_word_embeddings=False))
    ), {"max_shard_size": "20KB"}
    yield "qwen2", Qwen2ForCausalLM(
        Qwen2Config(**llama_shape(num_key_value_heads=2, tie_word_embeddings=False))
    ), {}


def left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def main(out):
    out = pathlib.Path(out)
    for name, model, save_kw in models():
        torch.manual_seed(0)
        with torch.no_grad():
            # Biases start at zero and norms at one: perturb everything so a misread one shows.
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.eval()
        folder = out / name
        model.save_pretrained(folder, **save_kw)
        ids, mask = left_pad(PROMPTS)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            model.generation_config.eos_token_id = None
            model.generation_config.pad_token_id = 0
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                output_logits=True,
                return_dict_in_generate=True,
            )
        save_file(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "logits": logits.contiguous(),
                "generated": gen.sequences[:, ids.shape[1] :].contiguous(),
                "step_logits": torch.stack(gen.logits, 1).contiguous(),
            },
            folder / "reference.safetensors",
        )
    (out / "done").write_text("ok\n")


if __name__ == "__main__":
    main(sys.argv[1])
