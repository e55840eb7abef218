"""Tiny random Hugging Face checkpoints, and what transformers computes on them, for aligngym's
reference tests (agents/tests/hf_reference.rs).

    python scripts/hf_fixtures.py OUT_DIR

Writes one folder per model (as `save_pretrained` writes it, one of them sharded) with
`reference.safetensors` beside the weights: a left-padded batch (`input_ids`, `attention_mask`),
the full forward's `logits` at positions counted over valid tokens, and greedy generation's 32
`generated` tokens with the raw `step_logits` of each step (through transformers' KV cache).

The models carry the quirks published families have: tied and untied heads, grouped-query
attention, a sharded checkpoint with an index, Qwen2's attention biases, a `head_dim` other than
hidden / heads, and Llama 3.1's `llama3` RoPE scaling. Two more come with tokenizers as their
families publish them (`tokenizers.json` below): Qwen2.5's (no BOS, `"bos_token": null`, a ChatML
template in `chat_template.jinja`, several EOS ids) and Llama 3's (BOS added by the tokenizer's own
post-processor, EOS ids listed in `generation_config.json`).
"""

import json
import pathlib
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models as bpe, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    PreTrainedTokenizerFast,
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
    # Heads wider than hidden / heads (the query projection is 4 x 16 = 64 wide for hidden 32).
    yield "llama-head-dim", LlamaForCausalLM(
        LlamaConfig(**llama_shape(num_key_value_heads=2, head_dim=16))
    ), {}
    # Llama 3.1's RoPE scaling, with the bands placed so that the 4 frequencies of a head of 8
    # fall in all three: kept (wavelength 6.3 < 32 / 4), blended (29.8) and divided (140, 663).
    yield "llama3-rope-scaling", LlamaForCausalLM(
        LlamaConfig(
            **llama_shape(
                num_key_value_heads=2,
                rope_parameters=dict(
                    rope_type="llama3",
                    rope_theta=500.0,
                    factor=8.0,
                    low_freq_factor=1.0,
                    high_freq_factor=4.0,
                    original_max_position_embeddings=32,
                ),
            )
        )
    ), {}


CORPUS = [f"what is {i} plus {i + 3}? the answer is {2 * i + 3}." for i in range(200)]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOKENIZER_VOCAB = 320


# Qwen2's own pre-tokenizer (transformers' Qwen2Tokenizer imposes it on any tokenizer.json):
# digits one by one, then byte-level without its own regex.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def byte_level_bpe(specials, qwen=False):
    tk = Tokenizer(bpe.BPE())
    if qwen:
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS, trainer)
    return tk


def tokenizers():
    """(name, model, tokenizer, EOS ids of generation_config.json, prompt mode)."""
    qwen = byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], qwen=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=qwen, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHATML
    ids = [qwen.token_to_id(t) for t in ["<|im_end|>", "<|endoftext|>"]]
    yield "qwen2.5-tokenizer", Qwen2ForCausalLM(
        Qwen2Config(**llama_shape(vocab_size=TOKENIZER_VOCAB, num_key_value_heads=2, bos_token_id=ids[1]))
    ), tok, ids, "chat"

    llama = byte_level_bpe(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"])
    bos = llama.token_to_id("<|begin_of_text|>")
    llama.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=llama,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    ids = [llama.token_to_id(t) for t in ["<|eot_id|>", "<|end_of_text|>"]]
    yield "llama3-tokenizer", LlamaForCausalLM(
        LlamaConfig(**llama_shape(vocab_size=TOKENIZER_VOCAB, num_key_value_heads=2, bos_token_id=bos))
    ), tok, ids, "plain"


QUESTIONS = ["what is 3 plus 6?", "what is 17 plus 20? the answer"]
ANSWER = "the answer is 9."


def with_tokenizer(out, name, model, tok, eos_ids, mode):
    """A checkpoint as its family publishes it, and what transformers makes of its prompts: the
    ids of each question (`prompt_i`, through the chat template in chat mode, else with the
    tokenizer's own special tokens; in chat mode also a whole `conversation` of the first question
    and its answer), their logits, and greedy generation stopping at the
    generation config's EOS ids. A third EOS id, the token greedy decoding of the first question
    reaches at its 4th step, makes stopping at an id past the tokenizer's EOS visible."""
    perturb(model)
    folder = out / name
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # What a user of the published checkpoint gets (transformers may impose a family's own
    # pre-tokenizer on tokenizer.json).
    tok = AutoTokenizer.from_pretrained(folder)
    tensors = {}
    if mode == "chat":
        conversation = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": ANSWER}]
        ids = tok.apply_chat_template(conversation, tokenize=True)["input_ids"]
        tensors["conversation"] = torch.tensor(list(ids))
        prompts = [
            list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)["input_ids"])
            for q in QUESTIONS
        ]
    else:
        prompts = [tok(q)["input_ids"] for q in QUESTIONS]
    pad = tok.pad_token_id
    with torch.no_grad():
        first = model.generate(
            input_ids=torch.tensor([prompts[0]]),
            do_sample=False,
            max_new_tokens=4,
            eos_token_id=None,
            pad_token_id=pad,
        )
        eos_ids = eos_ids + [int(first[0, -1])]
        GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos_ids, pad_token_id=pad).save_pretrained(folder)
        model.generation_config = GenerationConfig.from_pretrained(folder)
        for i, p in enumerate(prompts):
            ids = torch.tensor([p])
            tensors[f"prompt_{i}"] = ids[0].contiguous()
            tensors[f"logits_{i}"] = model(input_ids=ids).logits[0].contiguous()
            gen = model.generate(input_ids=ids, do_sample=False, max_new_tokens=12)
            tensors[f"generated_{i}"] = gen[0, ids.shape[1] :].contiguous()
    tensors["eos_ids"] = torch.tensor(eos_ids)
    save_file(tensors, folder / "reference.safetensors")


def perturb(model):
    torch.manual_seed(0)
    with torch.no_grad():
        # Biases start at zero and norms at one: perturb everything so a misread one shows.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()


def left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def main(out):
    out = pathlib.Path(out)
    for name, model, save_kw in models():
        perturb(model)
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
    for name, model, tok, eos_ids, mode in tokenizers():
        with_tokenizer(out, name, model, tok, eos_ids, mode)
    (out / "done").write_text("ok\n")


if __name__ == "__main__":
    main(sys.argv[1])
