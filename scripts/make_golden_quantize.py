"""Golden tensors from llama.cpp's quantizer (through llama-cpp-python), for corelm quantize.

    python scripts/make_golden_quantize.py     # writes tests/golden/quantize_llamacpp.json

Runs only where llama_cpp is importable (never in CI). Two F32 inputs: the real stories260K
(widths 64 and 172, so every k-quant falls back to a 32-block type or F16) and a seeded random
Llama of widths 256/512 with 8 layers (tests/support.py random_llama_gguf: the same bytes on
every machine), where the mixes give some layers' attn_v / ffn_down Q6_K, and a seeded random
GPT-2 (fused attn_qkv, tied embeddings: their own rules in the mixes). Each is quantized by
llama.cpp (default parameters: no importance matrix, so its reference quantizers run) to every
--type corelm writes; the JSON records, per tensor, llama.cpp's type and the sha256 of its bytes.
tests/test_quantize_k.py quantizes the same inputs with corelm and compares.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import gguf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from make_golden import quantize  # noqa: E402
from support import random_gpt2_gguf, random_llama_gguf, stories260k  # noqa: E402

OUT = ROOT / "tests" / "golden" / "quantize_llamacpp.json"
FTYPES = {  # corelm --type -> llama.cpp LLAMA_FTYPE_MOSTLY_*
    "q4_k_m": "Q4_K_M",
    "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
    "q8_0": "Q8_0",
    "q5_1": "Q5_1",
    "q5_0": "Q5_0",
    "q4_1": "Q4_1",
    "q4_0": "Q4_0",
}


def tensors(path: Path) -> dict[str, list[str]]:
    """name -> [type name, sha256 of the tensor's bytes]."""
    r = gguf.GGUFReader(path)
    return {t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()] for t in r.tensors}


def main() -> None:
    golden: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {
            "stories260K": stories260k(),
            "random_llama": random_llama_gguf(Path(tmp) / "random.gguf"),
            "random_gpt2": random_gpt2_gguf(Path(tmp) / "random-gpt2.gguf"),
        }
        for label, src in inputs.items():
            golden[label] = {}
            for ctype, ftype in FTYPES.items():
                dst = Path(tmp) / f"{label}-{ctype}.gguf"
                quantize(src, dst, ftype)
                golden[label][ctype] = tensors(dst)
                print(f"{label} {ctype}: {len(golden[label][ctype])} tensors", file=sys.stderr)
    OUT.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
