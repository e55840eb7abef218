"""PEFT's side of aligngym's LoRA round trip (agents/tests/hf_reference.rs).

    python scripts/peft_check.py load BASE_DIR ADAPTER_DIR IDS_JSON OUT.safetensors
    python scripts/peft_check.py make BASE_DIR ADAPTER_DIR IDS_JSON OUT.safetensors
    python scripts/peft_check.py plain MODEL_DIR - IDS_JSON OUT.safetensors

`load` opens an adapter aligngym wrote onto the transformers model of BASE_DIR with
`PeftModel.from_pretrained`; `make` adds a LoRA adapter with PEFT (A and B both random, rsLoRA, on
every linear layer) to BASE_DIR's model and saves it in ADAPTER_DIR; `plain` opens MODEL_DIR alone
(a merged model). Each writes the model's logits (`logits_i`, `[T, V]`) on each row of ids in
IDS_JSON.
"""

import json
import pathlib
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main(mode, base, adapter, ids_path, out):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if mode == "load":
        model = PeftModel.from_pretrained(model, adapter)
    elif mode == "make":
        torch.manual_seed(0)
        cfg = LoraConfig(
            r=4,
            lora_alpha=6,
            target_modules="all-linear",
            use_rslora=True,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
        model.save_pretrained(adapter)
        # Written as PEFT writes it, with the base named by its absolute path.
        cfg_path = pathlib.Path(adapter) / "adapter_config.json"
        c = json.loads(cfg_path.read_text())
        c["base_model_name_or_path"] = str(pathlib.Path(base).resolve())
        cfg_path.write_text(json.dumps(c))
    model.eval()
    rows = json.loads(pathlib.Path(ids_path).read_text())
    logits = {}
    with torch.no_grad():
        for i, row in enumerate(rows):
            logits[f"logits_{i}"] = model(input_ids=torch.tensor([row])).logits[0].contiguous()
    save_file(logits, out)


if __name__ == "__main__":
    main(*sys.argv[1:6])
