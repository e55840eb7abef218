"""Open a checkpoint directory with transformers, as a user of the aligned model would, and write
what transformers computes, for aligngym's reference tests (agents/tests/hf_reference.rs).

    python scripts/hf_check.py CHECKPOINT_DIR REQUEST.json OUT_DIR

REQUEST.json: {"texts": [...], "messages": [{"role": ..., "content": ...}, ...]}. Writes
OUT_DIR/ids.json (each text's ids from AutoTokenizer, no special tokens added, and with the
tokenizer's own special tokens; the chat template's rendering of the messages with a generation
prompt; the BOS token and the generation config's EOS ids) and OUT_DIR/logits.safetensors
(`logits_i`: AutoModelForCausalLM's logits `[T, V]` on text i's ids).
"""

import json
import pathlib
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig


def main(checkpoint, request, out):
    req = json.loads(pathlib.Path(request).read_text())
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in req["texts"]]
    logits = {}
    with torch.no_grad():
        for i, row in enumerate(ids):
            logits[f"logits_{i}"] = model(input_ids=torch.tensor([row])).logits[0].contiguous()
    save_file(logits, out / "logits.safetensors")
    rendered = tok.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
    eos = GenerationConfig.from_pretrained(checkpoint).eos_token_id
    (out / "ids.json").write_text(
        json.dumps(
            {
                "ids": ids,
                "with_specials": [tok(t)["input_ids"] for t in req["texts"]],
                "chat": rendered,
                "bos_token": tok.bos_token,
                "eos_token_id": eos if isinstance(eos, list) else [eos],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
