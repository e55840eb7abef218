"""transformers' own reading of a GGUF file, for aligngym's import tests
(agents/tests/gguf_reference.rs).

    python scripts/gguf_reference.py FILE.gguf REQUEST.json OUT_DIR

transformers dequantises the file itself (with the `gguf` package), undoes llama.cpp's Q/K
permutation and builds its tokenizer from the file's vocabulary. REQUEST.json: {"texts": [...],
"messages": [...]}. Writes OUT_DIR/ids.json (each text's ids, no special tokens added; the chat
template's rendering of the messages with a generation prompt, and its ids) and
OUT_DIR/logits.safetensors (`logits`: the model's fp32 logits `[T, V]` on the rendered chat's ids).
"""

import json
import pathlib
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(gguf, request, out):
    gguf = pathlib.Path(gguf)
    req = json.loads(pathlib.Path(request).read_text())
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in req["texts"]]
    chat = tok.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
    chat_ids = tok(chat, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([chat_ids])).logits[0].contiguous()
    save_file({"logits": logits}, out / "logits.safetensors")
    (out / "ids.json").write_text(json.dumps({"ids": ids, "chat": chat, "chat_ids": chat_ids}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
