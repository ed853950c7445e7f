"""Typed access to the native kernels (``corelm._C``).

Weights are matrices of ``n`` rows by ``k`` columns stored as raw bytes in GGUF's block
layouts, so a memory-mapped GGUF tensor is used as it is. Activations are float32.
Every function validates its arguments in native code and raises ``TypeError`` (dtype),
``ValueError`` (shape, contiguity, block size) or ``IndexError`` (token ids).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from corelm import _C

# Ops that take and return float32 arrays, re-exported as they are.
rmsnorm = _C.rmsnorm
layernorm = _C.layernorm
softmax = _C.softmax
rope = _C.rope
silu = _C.silu
gelu_tanh = _C.gelu_tanh
gelu_erf = _C.gelu_erf
swiglu = _C.swiglu
add = _C.add
mul = _C.mul
attention = _C.attention


def timed_isas() -> list[str]:
    """The kernel paths worth timing: those this CPU runs, without emulations ("amx-emu" runs the AMX
    tile kernels in software, to prove them correct, at a speed that means nothing)."""
    return [isa for isa in _C.supported_isas() if not isa.endswith("-emu")]


# Each weight type's facts, from the native core's table (formats.h): one source for C++ and Python.
_FACTS: dict[int, dict] = {t["id"]: t for t in _C.weight_types()}


class WeightType(enum.IntEnum):
    """Weight types the kernels multiply directly; values are GGML's type ids. The members mirror the
    native table (a test checks that they agree); their facts come from it."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q4_K = 12  # k-quants: super-blocks of 256
    Q5_K = 13
    Q6_K = 14
    BF16 = 30
    # corelm's own interleaved layouts of 16 rows (faster kernels; never in files)
    F32_X16 = 1000
    F16_X16 = 1001
    Q4_0_X16 = 1002
    Q4_1_X16 = 1003
    Q5_0_X16 = 1006
    Q5_1_X16 = 1007
    Q8_0_X16 = 1008
    Q4_K_X16 = 1012
    Q5_K_X16 = 1013
    Q6_K_X16 = 1014
    BF16_X16 = 1030

    @property
    def block_size(self) -> int:
        """Elements per block."""
        return int(_FACTS[self]["block_size"])

    @property
    def packed(self) -> bool:
        """Whether this is one of corelm's 16-row layouts."""
        return _FACTS[self]["base"] != self

    @property
    def base(self) -> WeightType:
        """The GGUF type a packed layout is made from (the type itself otherwise)."""
        return WeightType(_FACTS[self]["base"])

    @property
    def layout(self) -> WeightType:
        """The 16-row layout of a GGUF type (the type itself when it is one)."""
        return WeightType(_FACTS[self]["packed"])

    @classmethod
    def gguf_types(cls) -> list[WeightType]:
        """The types GGUF files hold, from the most bits per weight to the fewest."""
        return [WeightType(t) for t in _FACTS if not WeightType(t).packed]


PACK_ROWS = 16


def packing_pays() -> bool:
    """Whether the active kernel path has native kernels for the interleaved layouts."""
    paths = _C.info()["kernels"]
    return all(paths[f"matmul_{t.name.lower().replace('_x16', 'x16')}"] != "ref" for t in WeightType if t.packed)


@dataclass(frozen=True)
class Weight:
    """An ``n`` x ``k`` matrix in one of the kernel weight types (raw GGUF-layout bytes)."""

    data: np.ndarray
    type: WeightType
    n: int
    k: int

    def __post_init__(self) -> None:
        expected = _C.row_bytes(int(self.type), self.k) * self.n
        if self.data.nbytes != expected:
            raise ValueError(
                f"{self.type.name} weight of {self.n} x {self.k} needs {expected} bytes, got {self.data.nbytes}"
            )

    @classmethod
    def from_float(cls, x: np.ndarray, type: WeightType) -> Weight:
        """Quantize (or convert) a float32 [n, k] matrix; bytes equal GGUF's reference quantizer."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {x.shape}")
        return cls(_C.quantize(x, int(type)), WeightType(type), x.shape[0], x.shape[1])

    def to_float(self) -> np.ndarray:
        """The matrix as float32 [n, k]."""
        return _C.dequantize(self.data, int(self.type), self.n, self.k)

    def packed(self) -> Weight:
        """This matrix in its type's 16-row interleaved layout (itself when already packed or shorter than 16
        rows): whole groups of 16 rows interleaved, the last n % 16 rows as they were. Same bytes, another order."""
        if self.type.packed or self.n < PACK_ROWS:
            return self
        return Weight(_C.pack(self.data, int(self.type), self.n, self.k), self.type.layout, self.n, self.k)

    def unpacked(self) -> Weight:
        """The GGUF layout of this matrix (itself when it is not packed)."""
        if not self.type.packed:
            return self
        return Weight(_C.unpack(self.data, int(self.type), self.n, self.k), self.type.base, self.n, self.k)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def matmul(
    x: np.ndarray,
    w: Weight,
    out: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    activation: str = "",
) -> np.ndarray:
    """``act(x[..., k] @ w.T (+ bias)) (+ residual)`` -> ``[..., n]`` float32, in one native call
    (activation "gelu_erf", "gelu_tanh", "silu" or "relu", applied while the output is in cache); ``residual`` may
    be ``out`` itself (``out += x @ w.T``). Integer weight types quantize x to 8-bit blocks."""
    return _C.matmul(x, w.data, int(w.type), w.n, out, bias, residual, activation)


def embedding(w: Weight, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``ids`` of ``w`` as float32 ``[len(ids), k]``; raises IndexError for ids out of range."""
    return _C.get_rows(w.data, int(w.type), w.n, w.k, np.ascontiguousarray(ids, dtype=np.int32), out)
