"""Model presets and training settings (no torch here: `corelm train --help` stays fast).

A model config is a dict of transformers LlamaConfig fields; the vocabulary size and the
BOS/EOS ids come from the tokenizer. Every matrix width must be a multiple of 32 so that
corelm's Q8_0 / Q4_0 blocks cover every row of every matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 32  # corelm's quant block size (Q8_0, Q4_0)

# Fields every preset shares; a JSON config starts from these too.
COMMON: dict[str, Any] = dict(
    hidden_act="silu",
    rms_norm_eps=1e-5,
    initializer_range=0.02,
    attention_bias=False,
    mlp_bias=False,
    attention_dropout=0.0,
    tie_word_embeddings=True,
)
PRESETS: dict[str, dict[str, Any]] = {
    # for tests: 98K parameters besides the embedding
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
        max_position_embeddings=128,
    ),
    # corelm's default model: 4.4M parameters besides the embedding (+1M at vocab 4096)
    "small": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=704,
        max_position_embeddings=256,
    ),
}
DEFAULT_CONFIG = "small"
DEFAULT_VOCAB = 4096

# Bookkeeping keys of a config.json that a JSON config may carry; the ids come from the tokenizer.
IGNORED = {"model_type", "architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path"}
IGNORED |= {"bos_token_id", "eos_token_id", "pad_token_id"}

# Fields corelm's llama loader would silently ignore or get wrong: refused in a JSON config.
_UNSUPPORTED = {"attention_bias": False, "mlp_bias": False, "hidden_act": "silu"}


@dataclass
class Settings:
    """What shapes a training run. Saved in the checkpoint: --resume takes these values
    from it unless the command line gives others."""

    steps: int = 2000  # optimizer steps in the whole run (the cosine schedule spans them)
    batch: int = 16  # windows per step
    seq_len: int = 0  # tokens per window; 0: the model's context
    lr: float = 1e-3  # peak learning rate, after warmup; decays to 10% of it
    warmup: int = 100  # steps of linear warmup
    eval_every: int = 100  # steps between validation (and checkpoints)
    eval_windows: int = 64  # fixed validation windows, evenly spaced over the validation tenth
    seed: int = 1337  # weight init and batch sampling
    dtype: str = "auto"  # auto: bf16 autocast where the CPU has bf16 dot products, else fp32


def model_fields(spec: str, allowed: set[str]) -> dict[str, Any]:
    """LlamaConfig fields for a preset name or a JSON file (keys checked against `allowed`);
    a JSON config's vocab_size is among them (the default for --vocab-size)."""
    if spec in PRESETS:
        fields = {**COMMON, **PRESETS[spec]}
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--config {spec!r}: not a preset ({', '.join(PRESETS)}) and not a JSON file")
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {path}: not valid JSON: {e}") from None
        if not isinstance(given, dict):
            raise ValueError(f"--config {path}: expected a JSON object of LlamaConfig fields")
        unknown = sorted(set(given) - allowed - IGNORED)
        if unknown:
            raise ValueError(f"--config {path}: unknown LlamaConfig field(s) {', '.join(unknown)}")
        if given.get("model_type", "llama") != "llama":
            raise ValueError(f"--config {path}: model_type must be 'llama', got {given['model_type']!r}")
        fields = {**COMMON, **{k: v for k, v in given.items() if k not in IGNORED}}
    check_fields(fields, f"--config {spec}")
    return fields


def check_fields(f: dict[str, Any], where: str) -> None:
    """Shapes that corelm can run and quantize: positive sizes, heads that divide, widths of 32s."""
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if key not in f:
            raise ValueError(f"{where}: missing {key}")
        if not isinstance(f.get(key), int) or f[key] <= 0:
            raise ValueError(f"{where}: {key} must be a positive integer, got {f.get(key)!r}")
    for key, value in _UNSUPPORTED.items():
        if f.get(key, value) != value:
            raise ValueError(f"{where}: {key}={f[key]!r} is not supported by corelm (use {value!r})")
    heads = f["num_attention_heads"]
    kv = f.get("num_key_value_heads") or heads
    if heads % kv:
        raise ValueError(f"{where}: {heads} attention heads is not a multiple of {kv} key/value heads")
    head_dim = f.get("head_dim") or f["hidden_size"] // heads
    if not f.get("head_dim") and f["hidden_size"] % heads:
        raise ValueError(f"{where}: hidden_size {f['hidden_size']} is not a multiple of {heads} heads")
    if head_dim % 2:
        raise ValueError(f"{where}: the head dimension {head_dim} must be even (rotary pairs)")
    widths = {"hidden_size": f["hidden_size"], "intermediate_size": f["intermediate_size"]}
    widths["num_attention_heads x head_dim"] = heads * head_dim
    for name, width in widths.items():
        if width % BLOCK:
            raise ValueError(f"{where}: {name} {width} is not a multiple of {BLOCK} (corelm's quant block)")
    if f.get("max_position_embeddings", 1) <= 0:
        raise ValueError(f"{where}: max_position_embeddings must be positive")
