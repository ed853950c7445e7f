"""Benchmark models: real architectures (TinyLlama-1.1B, GPT-2 124M, Qwen2.5-0.5B) with seeded
random weights. Speed depends on shapes, not values.

    python -m benchmarks.models --out bench-models [--only tinyllama]

writes, per model, an HF folder (config.json, fp16 model.safetensors, tokenizer.json) and
GGUF files at F16, Q8_0 and Q4_0 - the same GGUF bytes go to every runtime that reads GGUF.
The vocabularies come from llama.cpp's vocab-only GGUFs in ../shared/data (same sizes as the
real models), so llama.cpp accepts the files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import corelm
from corelm.formats.gguf_write import write_gguf
from corelm.kernels import WeightType
from corelm.quantize import quantize_model
from corelm.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"

CONFIGS = {
    "tinyllama": dict(
        vocab="llama.cpp-vocab/ggml-vocab-llama-spm.gguf",
        config=dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            torch_dtype="float16",
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "gpt2": dict(
        vocab="llama.cpp-vocab/ggml-vocab-gpt-2.gguf",
        config=dict(
            architectures=["GPT2LMHeadModel"],
            model_type="gpt2",
            vocab_size=50257,
            n_embd=768,
            n_layer=12,
            n_head=12,
            n_positions=1024,
            n_inner=None,
            layer_norm_epsilon=1e-5,
            activation_function="gelu_new",
            torch_dtype="float16",
            bos_token_id=50256,
            eos_token_id=50256,
        ),
    ),
    "qwen2.5-0.5b": dict(
        vocab="llama.cpp-vocab-over4MiB/ggml-vocab-qwen2.gguf",
        config=dict(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
            torch_dtype="float16",
            bos_token_id=151643,
            eos_token_id=151643,
        ),
    ),
}
GGUF_TYPES = {"f16": WeightType.F16, "q8_0": WeightType.Q8_0, "q4_0": WeightType.Q4_0, "q4_k_m": None}
MIXES = ("q4_k_m",)  # written from the F16 file by corelm quantize


def _shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes of a config (the subset each architecture needs)."""
    if cfg["model_type"] == "gpt2":
        c, v, f = cfg["n_embd"], cfg["vocab_size"], 4 * cfg["n_embd"]
        s = {
            "transformer.wte.weight": (v, c),
            "transformer.wpe.weight": (cfg["n_positions"], c),
            "transformer.ln_f.weight": (c,),
            "transformer.ln_f.bias": (c,),
        }
        for i in range(cfg["n_layer"]):
            p = f"transformer.h.{i}."
            s.update(
                {
                    p + "ln_1.weight": (c,),
                    p + "ln_1.bias": (c,),
                    p + "attn.c_attn.weight": (c, 3 * c),
                    p + "attn.c_attn.bias": (3 * c,),
                    p + "attn.c_proj.weight": (c, c),
                    p + "attn.c_proj.bias": (c,),
                    p + "ln_2.weight": (c,),
                    p + "ln_2.bias": (c,),
                    p + "mlp.c_fc.weight": (c, f),
                    p + "mlp.c_fc.bias": (f,),
                    p + "mlp.c_proj.weight": (f, c),
                    p + "mlp.c_proj.bias": (c,),
                }
            )
        return s
    c, v, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = c // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    s = {"model.embed_tokens.weight": (v, c), "model.norm.weight": (c,)}
    if not cfg["tie_word_embeddings"]:
        s["lm_head.weight"] = (v, c)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update(
            {
                p + "input_layernorm.weight": (c,),
                p + "post_attention_layernorm.weight": (c,),
                p + "self_attn.q_proj.weight": (c, c),
                p + "self_attn.k_proj.weight": (kv, c),
                p + "self_attn.v_proj.weight": (kv, c),
                p + "self_attn.o_proj.weight": (c, c),
                p + "mlp.gate_proj.weight": (f, c),
                p + "mlp.up_proj.weight": (f, c),
                p + "mlp.down_proj.weight": (c, f),
            }
        )
        if cfg["model_type"] == "qwen2":
            s.update(
                {
                    p + "self_attn.q_proj.bias": (c,),
                    p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,),
                }
            )
    return s


def make_hf_folder(name: str, out: Path, seed: int = 0) -> Path:
    spec = CONFIGS[name]
    folder = out / name / "hf"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = spec["config"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    rng = np.random.default_rng(seed)
    tensors = {}
    for pname, shape in _shapes(cfg).items():
        if len(shape) == 1:
            base = 0.0 if pname.endswith("bias") else 1.0
            tensors[pname] = (base + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
        else:
            tensors[pname] = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    tok = Tokenizer.from_gguf(DATA / spec["vocab"])
    tok._hf.save(str(folder / "tokenizer.json"))
    special = {
        name: tok.token_text(i) for name, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id)) if i is not None
    }
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096, **special}))
    return folder


def make_ggufs(name: str, out: Path, types=GGUF_TYPES) -> dict[str, Path]:
    """The GGUF files of `name`: F16, Q8_0 and Q4_0 with every matrix in the type (as
    llama-quantize --pure), and Q4_K_M as llama-quantize writes it (corelm quantize, same bytes)."""
    spec = CONFIGS[name]
    folder = out / name / "hf"
    vocab_meta = Tokenizer.from_gguf(DATA / spec["vocab"]).gguf_metadata()
    model = corelm.load(folder).model
    paths = {}
    for tname in sorted(types, key=lambda t: t in MIXES):  # mixes last: made from the F16 file
        path = out / name / f"{name}-{tname}.gguf"
        if not path.exists():
            if tname in MIXES:
                quantize_model(make_ggufs(name, out, ["f16"])["f16"], path, tname, progress=False)
            else:
                write_gguf(model, path, tokenizer_metadata=vocab_meta, wtype=GGUF_TYPES[tname],
                           name=f"{name} (random weights)")  # fmt: skip
        paths[tname] = path
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-models"))
    ap.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args()
    for name in args.only:
        if not (args.out / name / "hf" / "model.safetensors").exists():
            print(f"{name}: writing HF folder", flush=True)
            make_hf_folder(name, args.out)
        print(f"{name}: writing GGUF files", flush=True)
        make_ggufs(name, args.out)


if __name__ == "__main__":
    main()
