"""A GGUF file with one tensor of each ggml type aligngym imports, quantised by the `gguf`
package, and that package's own dequantisation of each, for agents/tests/gguf_reference.rs.

    python scripts/gguf_types.py OUT_DIR

Writes OUT_DIR/types.gguf (tensors named after their type, shape [4, 64], plus an IQ2_XXS tensor
that aligngym does not read) and OUT_DIR/types.safetensors (`gguf.quants.dequantize` of each).
"""

import pathlib
import sys

import gguf
import numpy as np
from safetensors.numpy import save_file

T = gguf.GGMLQuantizationType
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def main(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(out / "types.gguf", arch="llama")
    reference = {}
    for name in TYPES:
        qtype = T[name]
        data = (rng.standard_normal((4, 64)) * 0.7).astype(np.float32)
        if name == "F32":
            w.add_tensor(name, data)
            reference[name] = data
            continue
        if name == "F16":
            q = data.astype(np.float16)
            w.add_tensor(name, q)
            reference[name] = q.astype(np.float32)
            continue
        q = gguf.quants.quantize(data, qtype)
        w.add_tensor(name, q, raw_dtype=qtype)
        reference[name] = gguf.quants.dequantize(q, qtype).astype(np.float32).reshape(data.shape)
    block, size = gguf.GGML_QUANT_SIZES[T.IQ2_XXS]
    raw = np.zeros((1, 256 // block * size), dtype=np.uint8)
    w.add_tensor("IQ2_XXS", raw, raw_dtype=T.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({k: np.ascontiguousarray(v) for k, v in reference.items()}, out / "types.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
