"""Reading safetensors files, memory-mapped, with the header validated.

Parsed here rather than with the `safetensors` package because its numpy API has no
bfloat16: BF16 tensors come back as raw uint16 (type BF16) that the kernels take directly.
"""

from __future__ import annotations

import json
import struct
from os import PathLike
from pathlib import Path

import numpy as np

from corelm.formats import ModelFileError

_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_MAX_HEADER = 100 << 20


def read_safetensors(path: str | PathLike[str]) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (dtype name, array view of the file). BF16 arrays are uint16."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ModelFileError(f"{path}: too short for a safetensors file")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, _MAX_HEADER):
            raise ModelFileError(f"{path}: malformed safetensors header (claims {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{path}: malformed safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: malformed safetensors header: not a JSON object")
    mm = np.memmap(path, mode="r")
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path}: malformed entry for tensor {name!r}: {info!r}") from e
        if dtype_name not in _DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
        dtype = _DTYPES[dtype_name]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or not 0 <= begin <= end or end - begin != count * dtype.itemsize:
            raise ModelFileError(
                f"{path}: tensor {name!r}: offsets {begin}..{end} do not fit shape {shape} {dtype_name}"
            )
        if base + end > size:
            raise ModelFileError(f"{path}: tensor {name!r} runs past the end of the file: truncated")
        out[name] = (dtype_name, mm[base + begin : base + end].view(dtype).reshape(shape))
    return out
