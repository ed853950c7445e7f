"""Writing a model as a GGUF file that llama.cpp and corelm both load.

Tensor names are already llama.cpp's (models/base.py). Two conversions are llama.cpp's
conventions rather than the model's: llama-architecture files hold Q/K rows permuted for
rotary pairs (2i, 2i+1) instead of Hugging Face's (i, i + d/2), and llama3 rope scaling is
stored as a `rope_freqs` tensor of per-pair divisors.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from corelm.kernels import Weight, WeightType
from corelm.models import ARCHITECTURES
from corelm.models.base import Model, ModelConfig


def rope_pair_permutation(n_rows: int, n_heads: int) -> np.ndarray:
    """Row order that turns split-half rotary pairs into adjacent pairs, head by head."""
    rows = np.arange(n_rows).reshape(n_heads, 2, n_rows // n_heads // 2)
    return rows.swapaxes(1, 2).reshape(-1)


def _add_value(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if value >= 0 else w.add_int32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        w.add_array(key, list(value))
    else:
        raise TypeError(f"cannot write metadata {key!r} of type {type(value).__name__}")


def _hparams(w: gguf.GGUFWriter, c: ModelConfig) -> None:
    module = ARCHITECTURES[c.arch][1]
    if hasattr(module, "write_hparams"):
        module.write_hparams(w, c)
        return
    if c.head:  # a decoder with a classifier: llama.cpp's keys for it
        w.add_pooling_type(gguf.PoolingType.RANK if c.head == "sequence" else gguf.PoolingType.NONE)
        w.add_array(f"{c.arch}.classifier.output_labels", c.labels)
    w.add_context_length(c.ctx)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.n_ff)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_head_kv)
    if c.arch == "gpt2":
        w.add_layer_norm_eps(c.norm_eps)
        return
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    if c.head_dim != c.n_embd // c.n_head:
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    kind = c.rope_scaling.get("rope_type", c.rope_scaling.get("type", "default"))
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(c.rope_scaling["factor"]))


def _tensor(w: Weight, wtype: WeightType | None) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    w = w.unpacked()
    if wtype is not None and w.type != wtype and w.k % wtype.block_size == 0:
        w = Weight.from_float(w.to_float(), wtype)
    return w.data, gguf.GGMLQuantizationType(int(w.type))


def write_gguf(
    model: Model,
    path: str | PathLike[str],
    tokenizer_metadata: dict[str, Any] | None = None,
    wtype: WeightType | None = None,
    name: str = "corelm model",
    progress: bool = False,
) -> Path:
    """Write `model` (weights converted to `wtype` where given) to `path`, atomically: to
    `path`.tmp, renamed at the end; a failure removes the .tmp and leaves `path` untouched.
    progress: a tqdm bar (bytes) while the tensors are written."""
    c, path = model.config, Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, c.arch)
    writer.add_name(name)
    _hparams(writer, c)
    for key, value in (tokenizer_metadata or {}).items():
        _add_value(writer, key, value)
    permute = c.arch == "llama" and c.rope_neox
    inv_freq = model.config.rope_inv_freq()
    base = ModelConfig(**{**c.__dict__, "rope_scaling": {}}).rope_inv_freq()
    if c.rope_scaling.get("rope_type", c.rope_scaling.get("type")) == "llama3":
        writer.add_tensor("rope_freqs.weight", (base / inv_freq).astype(np.float32))
    for tname, t in model.w.items():
        if tname == "rope_freqs.weight":
            continue
        heads = c.n_head if ".attn_q." in tname else c.n_head_kv if ".attn_k." in tname else 0
        if isinstance(t, Weight):
            data, qtype = _tensor(t, wtype)
            if permute and heads:
                data = data[rope_pair_permutation(t.n, heads)]
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                data = data.view(np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
                writer.add_tensor(tname, np.ascontiguousarray(data))
            else:
                writer.add_tensor(tname, np.ascontiguousarray(data), raw_dtype=qtype)
        else:
            vec = np.asarray(t, dtype=np.float32)
            if permute and heads:
                vec = vec[rope_pair_permutation(vec.size, heads)]
            writer.add_tensor(tname, vec)
    try:
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
