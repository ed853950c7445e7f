"""Typed access to the native kernels (``corelm._C``).

Weights are matrices of ``n`` rows by ``k`` columns stored as raw bytes in GGUF's block
layouts, so a memory-mapped GGUF tensor is used as it is. Activations are float32.
Every function validates its arguments in native code and raises ``TypeError`` (dtype),
``ValueError`` (shape, contiguity, block size) or ``IndexError`` (token ids).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

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
    # corelm's own sparse layouts (zeros left out; in corelm's GGUF files, see docs/sparsity.md)
    Q8_0_S16 = 2008  # any zeros
    Q8_0_24 = 2108  # 2:4
    Q8_0_B16 = 2208  # whole blocks of 16 rows x 32

    @property
    def block_size(self) -> int:
        """Elements per block."""
        return int(_FACTS[self]["block_size"])

    @property
    def packed(self) -> bool:
        """Whether this is one of corelm's 16-row layouts (the sparse ones are too)."""
        return _FACTS[self]["base"] != self

    @property
    def sparse(self) -> bool:
        """Whether zeros are left out (a layout made by Weight.sparse())."""
        return bool(_FACTS[self]["sparsity"])

    @property
    def kernel(self) -> str:
        """Its matrix product kernel's name, as corelm.info()["kernels"] lists it."""
        return str(_FACTS[self]["kernel"])

    @property
    def own_stride(self) -> bool:
        """Whether a tensor's rows are its own stride of bytes, not row_bytes (Q8_0_S16: any zeros left out;
        Q8_0_B16: whole blocks left out)."""
        return _FACTS[self]["sparsity"] in ("unstructured", "block")

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
# The GGUF types with sparse layouts (Weight.sparse()), from the native table: any zeros, 2:4.
SPARSE_LAYOUTS = frozenset(t.base for t in WeightType if t.sparse)


def packing_pays() -> bool:
    """Whether the active kernel path has native kernels for the interleaved layouts."""
    paths = _C.info()["kernels"]
    return all(paths[t.kernel] != "ref" for t in WeightType if t.packed and not t.sparse)


def sparse_pays(t: WeightType) -> bool:
    """Whether the active kernel path has a native kernel for sparse type t (the reference decodes every
    group on each call: slower than the dense layout)."""
    return _C.info()["kernels"][t.kernel] != "ref"


@dataclass(frozen=True)
class Weight:
    """An ``n`` x ``k`` matrix in one of the kernel weight types (raw GGUF-layout bytes)."""

    data: np.ndarray
    type: WeightType
    n: int
    k: int

    def __post_init__(self) -> None:
        if self.type.own_stride:  # every group checked once here (the kernels clamp their reads)
            if self.n % PACK_ROWS or self.data.nbytes % self.n:
                raise ValueError(f"{self.type.name} weight of {self.n} x {self.k} cannot have {self.data.nbytes} bytes")
            if self.stored > self.n * self.k:  # computing it runs _C.sparse_check, which names a corrupted group
                raise ValueError(f"{self.type.name} weight of {self.n} x {self.k} stores {self.stored} codes")
            return
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

    def packed(self, out: np.ndarray | None = None) -> Weight:
        """This matrix in its type's 16-row interleaved layout (itself when already packed or shorter than 16
        rows): whole groups of 16 rows interleaved, the last n % 16 rows as they were. Same bytes, another order.
        With `out` (uint8, this matrix's byte shape, apart from it) the result is written there, even when
        there is nothing to interleave."""
        if self.type.packed or self.n < PACK_ROWS:
            if out is None:
                return self
            _C.copy(np.ascontiguousarray(self.data), out)
            return Weight(out, self.type, self.n, self.k)
        return Weight(_C.pack(self.data, int(self.type), self.n, self.k, out), self.type.layout, self.n, self.k)

    def sparse(self, layout: WeightType = WeightType.Q8_0_S16) -> Weight:
        """This Q8_0 matrix (n a multiple of 16) without its zero codes: the same values in fewer bytes.
        Q8_0_S16 takes any zeros (fewer bytes the sparser it is); Q8_0_24 a 2:4 matrix (22 bytes per 32
        weights, and products that skip the zeros); Q8_0_B16 any matrix too, leaving out its all-zero blocks of
        16 rows x 32 (products skip them). Raises ValueError for a type with no sparse layout or a
        matrix the layout cannot hold."""
        if self.type == layout:
            return self
        if self.type.sparse:
            return self.unpacked().sparse(layout)
        if not layout.sparse or self.type.base != layout.base:
            raise ValueError(f"{self.type.name} has no sparse layout {layout.name}")
        data = _C.sparsify(self.data, int(self.type), self.n, self.k, int(layout))
        return Weight(data, layout, self.n, self.k)

    def unpacked(self) -> Weight:
        """The GGUF layout of this matrix (itself when it is not packed); a sparse one with its zeros back."""
        if not self.type.packed:
            return self
        return Weight(_C.unpack(self.data, int(self.type), self.n, self.k), self.type.base, self.n, self.k)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @cached_property
    def stored(self) -> int:
        """Values the bytes hold: n * k, or for a sparse matrix the codes it stores (Q8_0_S16: its nonzero ones;
        Q8_0_24: half; Q8_0_B16: its stored blocks')."""
        if not self.type.sparse:
            return self.n * self.k
        return int(_C.sparse_check(self.data, int(self.type), self.n, self.k))


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
