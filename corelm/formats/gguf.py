"""Reading GGUF files (v2, v3): metadata and memory-mapped tensors.

Values are parsed by the `gguf` package. Before it runs, `_check_layout` walks the file's
structure with every count and length checked against the bytes that remain: the
package's reader trusts them, so a corrupted count (2**60 array items) would make it loop
for ever or read past the end. Tensors whose type the kernels take (corelm.kernels.WeightType:
F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) stay views of the memory map until
a model packs them.
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
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4
_TYPE_SIZES = {int(t): size for t, size in gguf.GGML_QUANT_SIZES.items()}  # type id -> (block, bytes per block)


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


class _Walker:
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

    def string(self, what: str) -> bytes:
        return bytes(self.take(self.u64(f"{what} length"), what))

    def skip_value(self, vtype: int, what: str) -> None:
        if vtype in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[vtype], what)
        elif vtype == _STRING:
            self.take(self.u64(f"{what} length"), what)
        elif vtype == _ARRAY:
            itype, count = self.u32(f"{what} item type"), self.u64(f"{what} count")
            if itype in _SCALAR_SIZES:
                self.take(count * _SCALAR_SIZES[itype], what)
            elif itype == _STRING:
                if count * 8 > len(self.buf) - self.pos:
                    raise self.fail(f"{what} claims {count} strings")
                for _ in range(count):
                    self.take(self.u64(f"{what} item length"), what)
            else:
                raise self.fail(f"{what} has unsupported array item type {itype}")
        else:
            raise self.fail(f"{what} has unknown value type {vtype}")


def _check_layout(buf: memoryview, path: Path) -> None:
    w = _Walker(buf, path)
    if bytes(w.take(4, "magic")) != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (bad magic)")
    version = w.u32("version")
    if version not in (2, 3):
        raise ModelFileError(f"{path}: unsupported GGUF version {version} (corelm reads v2 and v3)")
    n_tensors, n_kv = w.u64("tensor count"), w.u64("metadata count")
    # Every entry takes at least 12 (metadata) or 28 (tensor info) bytes: cheap sanity bounds.
    if n_kv * 12 > len(buf) or n_tensors * 28 > len(buf):
        raise w.fail(f"absurd counts: {n_tensors} tensors, {n_kv} metadata entries")
    alignment = 32  # GGUF's default, unless general.alignment says otherwise
    for i in range(n_kv):
        key = w.string(f"metadata key #{i}")
        vtype = w.u32(f"type of {key!r}")
        if key == b"general.alignment" and vtype == 4:  # uint32
            alignment = struct.unpack("<I", w.buf[w.pos : w.pos + 4])[0] or 1
        w.skip_value(vtype, f"value of {key!r}")
    data_end = 0  # of the tensor data, relative to the data section's start
    for i in range(n_tensors):
        name = w.string(f"tensor name #{i}")
        n_dims = w.u32(f"dims of {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise w.fail(f"tensor {name!r} has {n_dims} dimensions")
        dims = struct.unpack(f"<{n_dims}Q", w.take(8 * n_dims, f"dims of tensor {name!r}"))
        ttype, offset = w.u32(f"type of tensor {name!r}"), w.u64(f"offset of tensor {name!r}")
        if ttype in _TYPE_SIZES:  # unknown types and bad dims are named later, with the tensor
            block, type_size = _TYPE_SIZES[ttype]
            data_end = max(data_end, offset + int(np.prod(dims, dtype=object)) // block * type_size)
    # The data section starts aligned; a file without tensor data (a vocabulary) may end unpadded.
    needed = -(-w.pos // alignment) * alignment + data_end if data_end else w.pos
    if needed > len(buf):
        raise ModelFileError(
            f"{path}: truncated GGUF: its tensors need {needed} bytes, the file has {len(buf)} "
            "(an interrupted download or copy?)"
        )


def _metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """GGUF key -> python value (str, int, float, bool, or a list of them)."""
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if not field.types:
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            item = field.types[1] if len(field.types) > 1 else None
            if item == gguf.GGUFValueType.STRING:
                meta[key] = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
            else:
                meta[key] = [field.parts[i].tolist()[0] for i in field.data]
        elif field.types[0] == gguf.GGUFValueType.STRING:
            meta[key] = bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
        else:
            meta[key] = field.parts[field.data[0]].tolist()[0]
    return meta


def load_gguf(path: str | PathLike[str]) -> GGUFFile:
    """Open a GGUF file: metadata and memory-mapped tensors, every offset and size checked."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    size = path.stat().st_size
    if size < 24:
        raise ModelFileError(f"{path}: {size} bytes is too short for a GGUF file")
    mm = np.memmap(path, mode="r")
    _check_layout(memoryview(mm), path)  # type: ignore[arg-type]  # a memmap is a buffer
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: corrupted GGUF: {e}") from e
    version = int(reader.fields["GGUF.version"].parts[0][0])
    tensors = {}
    for t in reader.tensors:
        try:
            qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
        except ValueError:
            raise ModelFileError(f"{path}: tensor {t.name!r} has unknown type id {int(t.tensor_type)}") from None
        dims = [int(d) for d in t.shape]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if any(d <= 0 for d in dims) or dims[0] % block:
            raise ModelFileError(f"{path}: tensor {t.name!r} has invalid dims {dims} for {qtype.name}")
        n_bytes = int(np.prod(dims, dtype=object)) // block * type_size
        start = int(t.data_offset)  # absolute (the reader adds the data section start)
        if start + n_bytes > size:
            raise ModelFileError(
                f"{path}: tensor {t.name!r} ({n_bytes} bytes at offset {start}) runs past the end of the "
                f"file ({size} bytes): truncated or corrupted"
            )
        raw = mm[start : start + n_bytes]
        shape = tuple(reversed(dims))
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        tensors[t.name] = GGUFTensor(t.name, int(qtype), shape, raw.reshape(rows, -1), start)
    metadata = _metadata(reader)
    _sparse_tensors(path, metadata, tensors)
    return GGUFFile(path, version, metadata, tensors, mm)


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
