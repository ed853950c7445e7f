"""Writing a model as a GGUF file that llama.cpp and corelm both load (corelm alone when it holds
corelm's sparse matrices: formats/gguf.py's SPARSE_* keys).

Tensor names are already llama.cpp's (models/base.py); the architecture writes its own
hyperparameter keys (Model.write_hparams) and says when a tensor's rows are stored in another
order (Model.gguf_row_order: llama's Q/K rotary pairs). llama3 rope scaling is stored as a
`rope_freqs` tensor of per-pair divisors, llama.cpp's convention.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from corelm.formats.gguf import SPARSE_COLS, SPARSE_TENSORS, SPARSE_TYPES
from corelm.kernels import Weight, WeightType
from corelm.models.base import Model, ModelConfig


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


def _tensor(w: Weight, wtype: WeightType | None, order: np.ndarray | None) -> Weight:
    """w as the file stores it: in wtype (where given), rows in `order`; a sparse matrix stays sparse when
    wtype is its base type or not given."""
    layout = w.type if w.type.sparse and wtype in (None, w.type.base) else None
    w = w.unpacked()
    if wtype is not None and w.type != wtype and w.k % wtype.block_size == 0:
        w = Weight.from_float(w.to_float(), wtype)
    if order is not None:
        w = Weight(np.ascontiguousarray(w.data[order]), w.type, w.n, w.k)
    return w.sparse(layout) if layout else w


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
    type(model).write_gguf_keys(writer, c)
    for key, value in (tokenizer_metadata or {}).items():
        _add_value(writer, key, value)
    inv_freq = model.config.rope_inv_freq()
    base = ModelConfig(**{**c.__dict__, "rope_scaling": {}}).rope_inv_freq()
    if c.rope_scaling.get("rope_type", c.rope_scaling.get("type")) == "llama3":
        writer.add_tensor("rope_freqs.weight", (base / inv_freq).astype(np.float32))
    sparse: list[tuple[str, str, int]] = []  # (tensor, type, columns)
    for tname, t in model.w.items():
        if tname == "rope_freqs.weight":
            continue
        if isinstance(t, Weight):
            w = _tensor(t, wtype, model.gguf_row_order(tname, t.n))
            data = w.data
            if w.type.sparse:  # an I8 matrix of n x stride bytes, named in the sparse keys
                sparse.append((tname, w.type.name, w.k))
                writer.add_tensor(tname, data.view(np.int8), raw_dtype=gguf.GGMLQuantizationType.I8)
            elif w.type in (WeightType.F32, WeightType.F16):
                writer.add_tensor(tname, data.view(np.float32 if w.type == WeightType.F32 else np.float16))
            else:
                writer.add_tensor(tname, data, raw_dtype=gguf.GGMLQuantizationType(int(w.type)))
        else:
            vec = np.asarray(t, dtype=np.float32)
            order = model.gguf_row_order(tname, vec.size)
            if order is not None:
                vec = vec[order]
            writer.add_tensor(tname, vec)
    if sparse:
        writer.add_array(SPARSE_TENSORS, [name for name, _, _ in sparse])
        writer.add_array(SPARSE_TYPES, [tname for _, tname, _ in sparse])
        writer.add_array(SPARSE_COLS, [k for _, _, k in sparse])
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
