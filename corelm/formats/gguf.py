"""Reading GGUF files (v2, v3): metadata and memory-mapped tensors.

The file's structure is parsed here, every count and length checked against the bytes that
remain (a corrupted count of 2**60 array items is named, not looped over), rather than by the
`gguf` package's reader, whose per-field numpy views take 48 s on Gemma 4's 262k-token
vocabulary and 2.8 s on SmolLM2's (this parser: well under a second; the package still gives the
type tables). Tensors whose type the kernels take (corelm.kernels.WeightType: F32, F16, BF16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) stay views of the memory map until a model packs
them.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from corelm.formats import ModelFileError

GGUF_MAGIC = b"GGUF"
# GGUFValueType -> numpy little-endian type of its scalars (4..6: u32 i32 f32; 7: bool; 10..12: u64 i64 f64).
_SCALARS = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_SCALARS_DT = {t: np.dtype(code) for t, code in _SCALARS.items()}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4
_U64 = struct.Struct("<Q")
_TYPE_SIZES = {int(t): size for t, size in gguf.GGML_QUANT_SIZES.items()}  # type id -> (block, bytes per block)

ValueType = tuple[int, int | None]  # (GGUFValueType, element type of an array or None)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor: `data` is a view of the file (uint8 rows for block types), `shape` numpy order."""

    name: str
    type: int  # GGML type id
    shape: tuple[int, ...]
    data: np.ndarray
    offset: int  # of the data in the file


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    mapping: np.memmap
    types: dict[str, ValueType]  # each metadata key's GGUF type, as stored

    def release(self, names: list[str]) -> None:
        """Drop these tensors' pages from this process's resident memory (after copying them):
        the mapping stays valid and would fault them back in from the file if read."""
        mm = getattr(self.mapping, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        page = mmap.PAGESIZE
        for name in names:
            t = self.tensors[name]
            start = -(-t.offset // page) * page
            end = (t.offset + t.data.nbytes) // page * page
            if end > start:
                mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Reader:
    """Bounds-checked cursor over the file's bytes."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: corrupted GGUF: {what} (at byte {self.pos} of {len(self.buf)})")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"{what} needs {n} bytes, file ends first")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        return str(self.take(self.u64(f"{what} length"), what), "utf-8", "replace")

    def scalars(self, vtype: int, count: int, what: str) -> np.ndarray:
        dtype = _SCALARS_DT[vtype]
        return np.frombuffer(self.take(count * dtype.itemsize, what), dtype)

    def strings(self, count: int, what: str) -> list[str]:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        if count * 8 > end - pos:
            raise self.fail(f"{what} claims {count} strings")
        out = []
        for _ in range(count):  # the hot loop of a big vocabulary: locals only
            if pos + 8 > end:
                break
            (n,) = _U64.unpack_from(buf, pos)
            if n > end - pos - 8:
                break
            out.append(str(buf[pos + 8 : pos + 8 + n], "utf-8", "replace"))
            pos += 8 + n
        self.pos = pos
        if len(out) < count:
            raise self.fail(f"{what}: string {len(out)} of {count} runs past the end of the file")
        return out

    def value(self, vtype: int, what: str) -> tuple[Any, int | None]:
        """(python value, element type of an array or None)."""
        if vtype in _SCALARS:
            return self.scalars(vtype, 1, what).tolist()[0], None
        if vtype == _STRING:
            return self.string(what), None
        if vtype == _ARRAY:
            itype, count = self.u32(f"{what} item type"), self.u64(f"{what} count")
            if itype in _SCALARS:
                return self.scalars(itype, count, what).tolist(), itype
            if itype == _STRING:
                return self.strings(count, what), itype
            raise self.fail(f"{what} has unsupported array item type {itype}")
        raise self.fail(f"{what} has unknown value type {vtype}")


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: the row length first
    type: int
    offset: int  # from the data section's start


def _parse(buf: memoryview, path: Path) -> tuple[int, dict[str, Any], dict[str, ValueType], list[_TensorInfo], int]:
    """(version, metadata, its types, tensor infos, data section start) of a GGUF file."""
    r = _Reader(buf, path)
    if bytes(r.take(4, "magic")) != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (bad magic)")
    version = r.u32("version")
    if version not in (2, 3):
        raise ModelFileError(f"{path}: unsupported GGUF version {version} (corelm reads v2 and v3)")
    n_tensors, n_kv = r.u64("tensor count"), r.u64("metadata count")
    # Every entry takes at least 12 (metadata) or 28 (tensor info) bytes: cheap sanity bounds.
    if n_kv * 12 > len(buf) or n_tensors * 28 > len(buf):
        raise r.fail(f"absurd counts: {n_tensors} tensors, {n_kv} metadata entries")
    metadata: dict[str, Any] = {}
    types: dict[str, ValueType] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        if key in metadata:
            raise r.fail(f"metadata key {key!r} appears twice")
        vtype = r.u32(f"type of {key!r}")
        metadata[key], item = r.value(vtype, f"value of {key!r}")
        types[key] = (vtype, item)
    alignment = metadata.get("general.alignment", 32) if types.get("general.alignment") == (4, None) else 32
    infos = []
    data_end = 0  # of the tensor data, relative to the data section's start
    for i in range(n_tensors):
        name = r.string(f"tensor name #{i}")
        n_dims = r.u32(f"dims of {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
        dims = struct.unpack(f"<{n_dims}Q", r.take(8 * n_dims, f"dims of tensor {name!r}"))
        ttype, offset = r.u32(f"type of tensor {name!r}"), r.u64(f"offset of tensor {name!r}")
        if ttype in _TYPE_SIZES:  # unknown types and bad dims are named later, with the tensor
            block, type_size = _TYPE_SIZES[ttype]
            data_end = max(data_end, offset + int(np.prod(dims, dtype=object)) // block * type_size)
        infos.append(_TensorInfo(name, dims, ttype, offset))
    data_start = -(-r.pos // (alignment or 1)) * (alignment or 1)
    # The data section starts aligned; a file without tensor data (a vocabulary) may end unpadded.
    needed = data_start + data_end if data_end else r.pos
    if needed > len(buf):
        raise ModelFileError(
            f"{path}: truncated GGUF: its tensors need {needed} bytes, the file has {len(buf)} "
            "(an interrupted download or copy?)"
        )
    return version, metadata, types, infos, data_start


def load_gguf(path: str | PathLike[str]) -> GGUFFile:
    """Open a GGUF file: metadata and memory-mapped tensors, every offset and size checked."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    size = path.stat().st_size
    if size < 24:
        raise ModelFileError(f"{path}: {size} bytes is too short for a GGUF file")
    mm = np.memmap(path, mode="r")
    version, metadata, types, infos, data_start = _parse(memoryview(mm), path)  # type: ignore[arg-type]  # a memmap is a buffer
    tensors = {}
    for t in infos:
        try:
            qtype = gguf.GGMLQuantizationType(t.type)
        except ValueError:
            raise ModelFileError(f"{path}: tensor {t.name!r} has unknown type id {t.type}") from None
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if any(d <= 0 for d in t.dims) or t.dims[0] % block:
            raise ModelFileError(f"{path}: tensor {t.name!r} has invalid dims {list(t.dims)} for {qtype.name}")
        if t.name in tensors:
            raise ModelFileError(f"{path}: corrupted GGUF: tensor {t.name!r} appears twice")
        n_bytes = int(np.prod(t.dims, dtype=object)) // block * type_size
        start = data_start + t.offset
        if start + n_bytes > size:
            raise ModelFileError(
                f"{path}: tensor {t.name!r} ({n_bytes} bytes at offset {start}) runs past the end of the "
                f"file ({size} bytes): truncated or corrupted"
            )
        raw = mm[start : start + n_bytes]
        shape = tuple(reversed(t.dims))
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        tensors[t.name] = GGUFTensor(t.name, int(qtype), shape, raw.reshape(rows, -1), start)
    _sparse_tensors(path, metadata, tensors)
    return GGUFFile(path, version, metadata, tensors, mm, types)


# corelm's sparse layouts (kernels.WeightType.Q8_0_S16, docs/sparsity.md) are stored as GGUF I8 matrices of
# n rows x `stride` bytes - valid GGUF for every tool (llama.cpp refuses them by shape, naming the tensor) -
# and these keys say which tensors they are, of which type, with how many columns.
SPARSE_TENSORS, SPARSE_TYPES, SPARSE_COLS = "corelm.sparse.tensors", "corelm.sparse.types", "corelm.sparse.cols"
_I8 = int(gguf.GGMLQuantizationType.I8)


def _sparse_tensors(path: Path, metadata: dict[str, Any], tensors: dict[str, GGUFTensor]) -> None:
    """Give the tensors the sparse keys name their corelm type and logical shape [n, k] (data stays [n, stride])."""
    names, types, cols = (metadata.get(key, []) for key in (SPARSE_TENSORS, SPARSE_TYPES, SPARSE_COLS))
    if not (len(names) == len(types) == len(cols)):
        raise ModelFileError(
            f"{path}: corrupted GGUF: {SPARSE_TENSORS}, {SPARSE_TYPES} and {SPARSE_COLS} differ in length"
        )
    from corelm.kernels import PACK_ROWS, WeightType  # the formats layer reads; the type table is the kernels'

    for name, tname, k in zip(names, types, cols, strict=True):
        wtype = WeightType.__members__.get(str(tname))
        t = tensors.get(str(name))
        if wtype is None or not wtype.sparse:
            raise ModelFileError(f"{path}: sparse tensor {name!r} has unknown type {tname!r}")
        if t is None:
            raise ModelFileError(f"{path}: the sparse keys name tensor {name!r}, which the file does not hold")
        if t.type != _I8 or len(t.shape) != 2 or not isinstance(k, int) or k <= 0 or k % wtype.block_size:
            raise ModelFileError(f"{path}: sparse tensor {name!r} ({t.shape}, type {t.type}, {k} columns) is malformed")
        n = t.shape[0]
        if n % PACK_ROWS:
            raise ModelFileError(f"{path}: sparse tensor {name!r} has {n} rows, not a multiple of {PACK_ROWS}")
        tensors[t.name] = GGUFTensor(t.name, int(wtype), (n, k), t.data, t.offset)
