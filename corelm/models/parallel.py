"""Tensor parallelism: one rank's share of a model split over N ranks (Megatron-LM's split).

Each rank holds
- its query heads' rows of attn_q (and its key/value heads' rows of attn_k, attn_v, or of each
  part of a fused attn_qkv), with their biases, and the same query heads' columns of attn_output;
- its feed-forward units' rows of ffn_gate and ffn_up (each part of a fused gate-up) and their
  columns of ffn_down;
- its vocabulary rows of token_embd and output (one matrix when they are tied);
- every other tensor whole (norms, position embeddings, the biases of attn_output and ffn_down,
  classifier heads): they are small.

A block then computes attention for the rank's heads and the feed-forward for its units without
talking to the other ranks, and ends each half with one all-reduce: the graph builder (graph.py)
adds an all_reduce op after every matrix split by columns (attn_output, ffn_down), with the bias
and the residual added on rank 0 only, so the sum is the unsplit result. The token embedding is
looked up where each id's row lives (zeros elsewhere) and summed by one all-reduce per step; the
output's logits are gathered on rank 0, which samples.

Key/value heads are divided, never duplicated: N must divide n_head_kv (and so n_head); query
heads go with their key/value heads. Feed-forward units and vocabulary rows are divided in whole
chunks (16 rows, for the kernels' interleaved layouts, and whole quantization blocks of the
matrices split by columns), as evenly as the chunks allow. A rank's columns of a quantized matrix
must be whole blocks (32 elements, 256 for k-quants): where a head boundary is not, the model
cannot be split over that many ranks and loading says so.

The architecture says how each tensor divides (Model.tensor_splits, llama.cpp's names -> Split);
this file knows none by name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from corelm import _C
from corelm.kernels import Weight, WeightType

if TYPE_CHECKING:
    from corelm.models.base import Model, ModelConfig

PACK_ROWS = 16  # rows per interleaved group (kernels.PACK_ROWS): shares are whole groups where they can be
UNITS = ("q", "kv", "ff", "vocab")


@dataclass(frozen=True)
class Split:
    """How tensor parallelism divides a tensor: along `axis` (0: its rows, the outputs - column
    parallel; 1: its columns, the inputs - row parallel, an all-reduce follows), which is one or
    more runs of units one after another, each run divided among the ranks: "q" (query heads x
    head_dim), "kv" (key/value heads x head_dim), "ff" (feed-forward units), "vocab" (token ids)."""

    axis: int
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.axis not in (0, 1) or not self.parts or any(p not in UNITS for p in self.parts):
            raise ValueError(f"bad split {self}")


@dataclass
class TensorParallel:
    """Rank `rank` of `size`: which elements of each unit it holds, and how each tensor divides."""

    rank: int
    size: int
    splits: dict[str, Split]  # tensor name -> its split; tensors not named are whole on every rank
    shares: dict[str, list[tuple[int, int]]]  # unit -> every rank's (start, count) along one run of it
    runs: dict[str, int]  # unit -> elements in one run (q: n_head * head_dim, ff: n_ff, ...)

    @classmethod
    def plan(
        cls, model: type[Model], c: ModelConfig, weights: dict[str, Any], rank: int, size: int, quant: int | None = None
    ) -> TensorParallel:
        """The split of a model of config `c` (weights: the whole model's tensors, for their names
        and types; quant: the type they will be quantized to after the split). ValueError naming
        what does not divide."""
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not one of {size} ranks")
        splits = {name: s for name in weights if (s := model.tensor_split(name)) is not None}
        hd = c.head_dim
        if c.n_head_kv % size:
            raise ValueError(
                f"tensor parallelism over {size} ranks divides attention by key/value heads, and this model's "
                f"{c.n_head_kv} key/value heads ({c.n_head} query heads) do not divide by {size}: use a number of "
                f"ranks that divides {c.n_head_kv}"
            )
        runs = {"q": c.n_head * hd, "kv": c.n_head_kv * hd, "ff": c.n_ff, "vocab": c.vocab_size}
        shares = {
            "q": [(r * runs["q"] // size, runs["q"] // size) for r in range(size)],
            "kv": [(r * runs["kv"] // size, runs["kv"] // size) for r in range(size)],
        }
        # Columns of row-parallel matrices must be whole quantization blocks (before and after `quant`).
        blocks: dict[str, int] = {"ff": PACK_ROWS, "vocab": PACK_ROWS, "q": 1}
        for name, s in splits.items():
            w = weights[name]
            if s.axis == 1 and isinstance(w, Weight):
                for unit in s.parts:
                    block = w.type.block_size
                    if quant is not None and w.k % WeightType(quant).block_size == 0:
                        block = math.lcm(block, WeightType(quant).block_size)
                    blocks[unit] = math.lcm(blocks[unit], block)
        for name, s in splits.items():
            if s.axis == 1 and "q" in s.parts and runs["q"] // size % blocks["q"]:
                raise ValueError(
                    f"{name} cannot be split over {size} ranks: each rank's {runs['q'] // size} columns "
                    f"({c.n_head // size} heads x {hd}) are not whole blocks of {blocks['q']} (its weight type); "
                    "use fewer ranks or another weight type"
                )
        for unit in ("ff", "vocab"):
            shares[unit] = _chunked(runs[unit], blocks[unit], size, unit)
        return cls(rank, size, splits, shares, runs)

    def share(self, unit: str) -> tuple[int, int]:
        """This rank's (start, count) of one run of `unit`."""
        return self.shares[unit][self.rank]

    def widths(self, unit: str) -> list[int]:
        """Every rank's count of `unit`, rank 0 first."""
        return [n for _, n in self.shares[unit]]

    def split(self, name: str) -> Split | None:
        return self.splits.get(name)

    def local_config(self, c: ModelConfig) -> ModelConfig:
        """The config of this rank's share: its heads and feed-forward units (the vocabulary stays
        the model's: logits are gathered whole on rank 0)."""
        hd = c.head_dim
        return dataclasses.replace(
            c, n_head=self.share("q")[1] // hd, n_head_kv=self.share("kv")[1] // hd, n_ff=self.share("ff")[1]
        )

    def ranges(self, s: Split, length: int, name: str) -> list[tuple[int, int]]:
        """This rank's (start, stop) ranges along a tensor axis of `length` elements split as `s`."""
        total = sum(self.runs[p] for p in s.parts)
        if length != total:
            raise ValueError(f"{name}: {length} elements along axis {s.axis}, its split {s.parts} implies {total}")
        out, at = [], 0
        for p in s.parts:
            start, count = self.share(p)
            out.append((at + start, at + start + count))
            at += self.runs[p]
        return out

    def take(self, name: str, t: Any) -> Any:
        """This rank's slice of tensor `name` (a Weight or a float32 vector); whole if it is not split.
        Rows of one range stay a view (of the file's mapping: only those pages are read)."""
        s = self.splits.get(name)
        if s is None:
            return t
        if not isinstance(t, Weight):
            if s.axis != 0:
                return t
            v = np.asarray(t)
            return np.concatenate([v[a:b] for a, b in self.ranges(s, v.shape[0], name)])
        if t.type.packed:
            raise ValueError(f"{name}: split before packing")
        data = t.data.reshape(t.n, -1)
        if s.axis == 0:
            ranges = self.ranges(s, t.n, name)
            parts = [data[a:b] for a, b in ranges]
            rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
            return Weight(rows, t.type, sum(b - a for a, b in ranges), t.k)
        block = t.type.block_size
        cols = []
        for a, b in self.ranges(s, t.k, name):
            if a % block or b % block:
                raise ValueError(f"{name}: columns {a}..{b} are not whole {t.type.name} blocks of {block}")
            cols.append(data[:, _C.row_bytes(int(t.type), a) : _C.row_bytes(int(t.type), b)])
        k = sum(b - a for a, b in self.ranges(s, t.k, name))
        return Weight(np.ascontiguousarray(np.concatenate(cols, axis=1)), t.type, t.n, k)


def _chunked(total: int, chunk: int, size: int, unit: str) -> list[tuple[int, int]]:
    """`total` elements over `size` ranks in whole chunks, as evenly as they go (the first ranks
    take one more chunk where they do not divide; the last takes a partial chunk at the end)."""
    chunks, tail = divmod(total, chunk)
    counts = [(chunks // size + (r < chunks % size)) * chunk for r in range(size)]
    counts[-1] += tail
    if min(counts) == 0:
        what = {"ff": "feed-forward units", "vocab": "vocabulary rows"}[unit]
        raise ValueError(f"{total} {what} cannot be split over {size} ranks in chunks of {chunk}: use fewer ranks")
    starts = np.cumsum([0, *counts[:-1]]).tolist()
    return list(zip(starts, counts, strict=True))
