"""Typed stub of corelm._C, the native core (pybind11). Written by scripts/make_c_stub.py from the
built module: rerun it after changing the bindings."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

class Graph:
    """A model's forward step as one native call (see corelm/models/graph.py)."""

    def __init__(self, widths: Sequence[int], ops: list[Any], n_layer: int) -> None:
        """widths: floats per row of each buffer; ops: dicts naming their kind, buffers and tensors (checked here)."""

    def run(
        self,
        tokens: np.ndarray,
        segments: list[Any],
        last_rows: bool,
        until: int,
        hook: Callable[[int, np.ndarray | None, np.ndarray, float], None] | None = None,
    ) -> np.ndarray:
        """One forward step: ops [0, until) over tokens (int32), the segments' tokens one after another; segments:
        (cache [n_layer, 2, kv_heads, capacity, head_dim] or None, pos, length). last_rows: the select op keeps
        each segment's last row (else all rows). hook(op_index, input, output, seconds) is called after every
        op. Returns op until-1's output [rows, width], a view the next run may overwrite."""

def _tile_op(insn: str, c: np.ndarray, a: np.ndarray, b: np.ndarray, hardware: bool = False) -> np.ndarray:
    """C after one AMX instruction (tdpbssd/sud/usd/uud, tdpbf16ps) on tiles C, A, B loaded from 2-D arrays, on the
    emulator or (hardware=True) the CPU."""

def add(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def attention(
    q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, n_past: int, scale: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Causal GQA: q [m, hq, d] at positions n_past.. against caches [hkv, capacity, d] (float32 or float16)."""

def collective_stats() -> dict[str, Any]:
    """Calls, bytes sent and seconds spent in the graph's collectives since the last reset."""

def copy(src: np.ndarray, out: np.ndarray) -> None:
    """Copies src's bytes (any C-contiguous array) into out (uint8, C-contiguous, as many bytes, not overlapping) on the
    thread pool: a load's first touch of fresh pages goes as fast as the threads that fault them."""

def dequantize(w: np.ndarray, type: int, n: int, k: int) -> npt.NDArray[np.float32]:
    """Raw weight bytes of n x k to fp32."""

def gelu_erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def gelu_tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def get_rows(w: np.ndarray, type: int, n: int, k: int, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Embedding lookup: rows ids of W (n x k, `type`) as fp32 [len(ids), k]."""

def info() -> dict[str, Any]:
    """CPU model, features, thread count and the path each kernel takes."""

def isa() -> str:
    """The kernel path in use: 'ref', 'avx2', 'avx512', 'amx' or 'amx-emu'."""

def layernorm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, out: np.ndarray | None = None
) -> np.ndarray: ...
def matmul(
    x: np.ndarray,
    w: np.ndarray,
    type: int,
    n: int,
    out: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    activation: str = "",
) -> np.ndarray:
    """y[..., n] = act(x[..., k] @ W.T (+ bias[n])) (+ residual[..., n]) for W (n rows of k elements of `type`, raw
    bytes); activation: '' (none), 'gelu_erf' or 'gelu_tanh'. residual may be out itself: out += x @ W.T."""

def mul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def num_threads() -> int: ...
def pack(w: np.ndarray, type: int, n: int, k: int, out: np.ndarray | None = None) -> npt.NDArray[np.uint8]:
    """GGUF-layout rows of a type to its 16-row interleaved layout (its *_X16 type): whole groups of 16 rows
    interleaved, the rest as they are. Written into `out` (uint8 [n, row bytes], not overlapping w) if given."""

def quantize(x: np.ndarray, type: int) -> npt.NDArray[np.uint8]:
    """Rows of fp32 to the raw bytes of `type` (GGUF layout): uint8[rows, row_bytes]."""

def read_bandwidth(bytes: int = 1073741824, reps: int = 5, streams: int = 8) -> float:
    """Best-of-reps read bandwidth (GB/s) of the thread pool over a buffer of `bytes`."""

def reset_collective_stats() -> None: ...
def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray: ...
def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, neox: bool) -> None:
    """In place on x [rows, heads, head_dim]: rotate the first 2*len(inv_freq) dims by positions[row]*inv_freq;
    neox=True pairs (i, i+n/2) (GPT-NeoX / Hugging Face), False pairs (2i, 2i+1) (GPT-J / llama.cpp normal)."""

def row_bytes(type: int, k: int) -> int: ...
def sample(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_k: np.ndarray,
    top_p: np.ndarray,
    min_p: np.ndarray,
    repeat_penalty: np.ndarray,
    presence_penalty: np.ndarray,
    frequency_penalty: np.ndarray,
    recent: np.ndarray,
    recent_offsets: np.ndarray,
    bias_ids: np.ndarray,
    bias_values: np.ndarray,
    bias_offsets: np.ndarray,
    rng: np.ndarray,
) -> npt.NDArray[np.int32]:
    """One token id per row of logits [B, vocab] (int32[B]), each row with its own parameters (float32 / int32
    arrays of B): logit bias (bias_ids / bias_values, row r's at bias_offsets[r]:bias_offsets[r+1]), then repeat
    / presence / frequency penalties over row r's recent[recent_offsets[r]:recent_offsets[r+1]], then greedy
    (temperature <= 0: argmax) or top-k, top-p, min-p on the untempered distribution, temperature and a draw
    from rng[r] (uint64 splitmix64 states, advanced in place)."""

def self_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float,
    causal: bool = False,
    seq_lengths: Sequence[int] | np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """GQA of m rows among themselves: q [m, hq, d], k/v [m, hkv, d] (float32 or float16). causal=False lets every
    row see all keys (encoders). seq_lengths: the rows are several sequences one after another, each attending
    only to its own rows (one call for a batch)."""

def set_collectives(mpi: dict) -> None:
    """Install the MPI entry points the graph's all_reduce / gather ops call (see corelm/distributed.py): a dict of
    allreduce, gatherv, abort (function addresses), comm, float32, sum (MPI handles), rank, size, timeout
    (seconds); size 0 removes them."""

def set_isa(name: str) -> str:
    """Switch kernel path; returns a warning string (empty if none) when it had to fall back."""

def _decode_tuning(
    prefetch_bytes: int | None = None, sparse_groups: int | None = None, prefetch_q8_0: bool | None = None
) -> dict[str, Any]:
    """How the one-row GEMVs stream the weights (chosen from the CPU at start-up): prefetch_bytes (how far on
    each block fetches; 0: none), sparse_groups (Q8_0_S16 row groups at once, 1 or 4) and prefetch_q8_0
    (whether Q8_0_X16 prefetches too). Sets what is given; returns the setting. For tests and benchmarks."""

def set_num_threads(n: int) -> None:
    """Size the thread pool (n < 1: physical cores)."""

def silu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def softmax(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis."""

def sparse_check(w: np.ndarray, type: int, n: int, k: int) -> int:
    """The codes a sparse matrix stores (the rest of its n x k are zero); raises ValueError for a group whose
    masks announce more than it holds (the kernels never read past a group either way; this names it)."""

def sparsify(w: np.ndarray, type: int, n: int, k: int, layout: int) -> npt.NDArray[np.uint8]:
    """A Q8_0 (or Q8_0_X16) matrix of n x k in a sparse layout: Q8_0_S16 (its zero codes left out; uint8[n,
    stride], the stride the fullest group of 16 rows needs) or Q8_0_24 (2:4; ValueError when it is not)."""

def supported_isas() -> list[str]:
    """Kernel paths this CPU can run, slowest first."""

def swiglu(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
def unpack(w: np.ndarray, type: int, n: int, k: int, out: np.ndarray | None = None) -> npt.NDArray[np.uint8]:
    """A *_X16 or sparse layout back to its GGUF type's rows. Written into `out` (as pack's) if given."""

def weight_types() -> list:
    """Every weight type's facts (formats.h's table): id, name, block_size, block_bytes, base (the GGUF type a
    16-row layout comes from), packed (a GGUF type's 16-row layout), kernel (its matrix product's name), sparsity
    ('' (zeros stored), 'unstructured' (rows of a tensor's own stride) or '2:4')."""
