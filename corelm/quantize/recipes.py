"""Which tensor gets which weight type, for each `corelm quantize --type`: llama.cpp's rules
(llama_tensor_get_type in llama-quant.cpp), so a corelm file has the types a llama-quantize
file of the same --type has.

f32, f16, bf16: every matrix. q8_0, q6_k, q5_1, q5_0, q4_1, q4_0: every matrix, except the
output matrix (the token embedding when the two are tied), which gets Q6_K (Q8_0 stays Q8_0).
The mixes:

    tensor                                            q4_k_m   q5_k_m
    output.weight (token_embd when tied)              Q6_K     Q6_K
    blk.i.attn_v.weight, i in more_bits()             Q6_K     Q6_K
    blk.i.attn_qkv.weight (fused), i in more_bits()   Q6_K     Q6_K
    blk.i.ffn_down.weight, i in more_bits()           Q6_K     Q6_K
    every other matrix                                Q4_K     Q5_K

more_bits(i) holds for the first and last eighth of the layers and every third layer between:
the layers whose errors cost the most. k-quants need rows that are a multiple of 256 long;
other matrices fall back as llama.cpp's do (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and the
output matrix straight to Q8_0; F16 when no block fits), which is why a k-quant file of a model whose width is not a
multiple of 256 (Qwen2.5-0.5B: 896) holds Q5_0 and Q8_0 tensors. --pure puts every matrix
in the base type (llama-quantize --pure). Positional embeddings and bottleneck adapters keep their type (kept).
"""

from __future__ import annotations

import re

from gguf import LlamaFileType

from corelm.kernels import WeightType

_MIXES = {"q4_k_m": WeightType.Q4_K, "q5_k_m": WeightType.Q5_K}  # the type of every other matrix

# general.file_type of each --type, as llama.cpp writes it.
FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
    "q5_1": LlamaFileType.MOSTLY_Q5_1,
    "q5_0": LlamaFileType.MOSTLY_Q5_0,
    "q4_1": LlamaFileType.MOSTLY_Q4_1,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
    "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M,
}

# The types a whole file can be written in (every GGUF type llama.cpp names a file type for).
_PURE = {t.name.lower(): t for t in WeightType.gguf_types() if t.name.lower() in FILE_TYPES}
TYPE_NAMES = [*_PURE, *_MIXES]

_FALLBACK = {
    WeightType.Q4_K: WeightType.Q5_0,
    WeightType.Q5_K: WeightType.Q5_1,
    WeightType.Q6_K: WeightType.Q8_0,
}
_LAYER = re.compile(r"blk\.(\d+)\.")
# Matrices llama.cpp never converts (positional embeddings): they keep the type they have.
KEPT = ("position_embd.weight", "token_types.weight")


def kept(name: str) -> bool:
    """Tensors written in the type they have: positional embeddings, and bottleneck adapters
    (blk.N.adapter_*: a small share of the weights, and their bottleneck rows are rarely a whole
    number of blocks)."""
    return name in KEPT or ".adapter_" in name


def more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the layers a mix gives more bits."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def is_known(name: str) -> bool:
    return name in _PURE or name in _MIXES


def tensor_type(recipe: str, name: str, k: int, n_layers: int, tied: bool, pure: bool = False) -> WeightType:
    """The type `recipe` gives the matrix `name` whose rows are k long, before the fallback for
    a k that the type's blocks do not divide (`fit`). pure: every matrix in the recipe's base
    type, as llama-quantize --pure."""
    mix = recipe in _MIXES
    base = _MIXES[recipe] if mix else _PURE[recipe]
    if pure or base in (WeightType.F32, WeightType.F16, WeightType.BF16):
        return base
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if k % base.block_size or base == WeightType.Q8_0:
            return WeightType.Q8_0
        return WeightType.Q6_K
    if not mix:
        return base
    match = _LAYER.match(name)
    layer = int(match.group(1)) if match else -1
    # llama.cpp (as of llama-cpp-python 0.3.36) counts a fused attn_qkv as attention V
    if name.endswith(("attn_v.weight", "attn_qkv.weight", "ffn_down.weight")) and more_bits(layer, n_layers):
        return WeightType.Q6_K
    return base


def fit(wtype: WeightType, k: int) -> WeightType:
    """`wtype`, or llama.cpp's fallback when its blocks do not divide rows of k: the k-quant's
    32-block stand-in, else F16."""
    if k % wtype.block_size == 0:
        return wtype
    fallback = _FALLBACK.get(wtype)
    if fallback is not None and k % fallback.block_size == 0:
        return fallback
    return WeightType.F16
