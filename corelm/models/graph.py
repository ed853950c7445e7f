"""A model's forward pass declared once, as a graph of named ops, and run natively in one call.

An architecture writes its forward as calls on a GraphBuilder, in order:

    g.embed("token_embd", out="x")
    for i in range(n_layer):
        g.rmsnorm(f"blk.{i}.attn_norm", "x", out="h")
        g.linear(f"blk.{i}.attn_q", "h", out="q")
        ...
    g.select("x", out="x_out")               # the rows whose outputs are wanted
    g.rmsnorm("output_norm", "x_out", out="hidden")
    g.linear("output", "hidden", out="logits")

Op names are the weights' GGUF names without `.weight` (`blk.3.attn_q`, `output_norm`), so a
hook or a profile names an op the way llama.cpp names its tensors. Buffers are named float32
arrays of [rows, width]; the builder learns each width from the op that first writes it and
checks every later use. `build` hands the list to the native executor (csrc/core/graph.h),
which checks it again, plans the buffers once and runs a whole step — every layer, for a
batch of sequences — in one call that releases the GIL.

The select op divides a step: the ops before it run on every row; it keeps every row (hidden
states, all logits) or each sequence's last row (generation), and the ops after it run on those.

A builder given a TensorParallel plan (parallel.py) declares one rank's share of the same forward
from the same calls: a matrix split by columns (attn_output, ffn_down) is followed by an
all_reduce op, with its bias and the residual added on rank 0 only; the token embedding split by
vocabulary rows looks up only this rank's ids and is summed by an all_reduce; logits from an
output split by vocabulary rows are gathered whole on rank 0. Architectures write nothing else
for it: their widths come from the (share's) config and weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corelm import _C
from corelm.kernels import Weight
from corelm.models.parallel import TensorParallel


@dataclass(frozen=True)
class Op:
    """One node: its kind, name (role and layer) and buffers, and the native description."""

    kind: str
    name: str
    layer: int
    out: str
    inputs: tuple[str, ...]
    weight: Weight | None  # the matrix a matmul or embedding reads
    tensor: str  # its name ("blk.3.attn_q.weight"; "" for ops without one)
    spec: dict[str, Any] = field(repr=False)  # what the executor gets (buffer ids, tensors, params)


class GraphBuilder:
    """Collects ops in order over named buffers; `weights` resolves tensor names."""

    def __init__(self, weights: dict[str, Any], parallel: TensorParallel | None = None) -> None:
        self.w = weights
        self.tp = parallel
        self.ops: list[Op] = []
        self.widths: dict[str, int] = {}

    # ---- buffers ----

    def _buffer(self, name: str, width: int | None = None) -> int:
        """The id of buffer `name`; width (when given) must agree with what it already has."""
        if name not in self.widths:
            if width is None:
                raise ValueError(f"graph: buffer {name!r} is read before any op writes it")
            self.widths[name] = width
        elif width is not None and self.widths[name] != width:
            raise ValueError(f"graph: buffer {name!r} is {self.widths[name]} wide, an op writes {width}")
        return list(self.widths).index(name)

    def width(self, buffer: str) -> int:
        return self.widths[buffer]

    def _add(
        self,
        kind: str,
        name: str,
        out: str,
        width: int,
        inputs: tuple[str, ...] = (),
        layer: int = -1,
        tensor: str = "",
        **spec: Any,
    ) -> None:
        ids = {key: self._buffer(b) for key, b in zip(("in", "in2", "in3"), inputs, strict=False)}
        spec = {"kind": kind, "name": name, "layer": layer, **ids, **spec, "out": self._buffer(out, width)}
        weight = self.w[tensor] if tensor else None
        if weight is not None:
            spec["weight"] = (weight.data, int(weight.type), weight.n, weight.k)
        self.ops.append(Op(kind, name, layer, out, inputs, weight, tensor, spec))

    @staticmethod
    def _layer(name: str) -> int:
        parts = name.split(".")
        return int(parts[1]) if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit() else -1

    # ---- ops ----

    def embed(self, name: str, out: str, positions: bool = False, offset: int = 0, accumulate: bool = False) -> None:
        """out (+)= rows of `name`.weight at the step's token ids (or positions + offset)."""
        w = self.w[name + ".weight"]
        split = self.tp.split(name + ".weight") if self.tp else None
        if split is not None:  # this rank's vocabulary rows; the other ids' rows come from the all-reduce
            assert self.tp is not None
            if split.parts != ("vocab",) or positions or accumulate:
                raise ValueError(f"graph: {name} is split {split}; only a token embedding split by ids is")
            start, count = self.tp.share("vocab")
            vocab = self.tp.runs["vocab"]
            self._add("embed", name, out, w.k, tensor=name + ".weight", id_start=start, id_count=count, vocab=vocab)
            self._add("all_reduce", name + ".all_reduce", out, w.k)
            return
        self._add(
            "embed",
            name,
            out,
            w.k,
            tensor=name + ".weight",
            from_positions=positions,
            id_offset=offset,
            accumulate=accumulate,
        )

    def add_vector(self, name: str, x: str, vector: np.ndarray, out: str) -> None:
        """out = x + vector (one row, broadcast)."""
        self._add("add_vector", name, out, self.width(x), (x,), vector=np.ascontiguousarray(vector, np.float32))

    def add(self, name: str, x: str, y: str, out: str) -> None:
        """out = x + y (buffers of one width; out may be x or y)."""
        if self.width(y) != self.width(x):
            raise ValueError(f"graph: {name} adds {y!r} ({self.width(y)} wide) to {x!r} ({self.width(x)} wide)")
        self._add("add", name, out, self.width(x), (x, y), self._layer(name))

    def rmsnorm(self, name: str, x: str, out: str, eps: float, group: int = 0) -> None:
        """out = RMSNorm(x) * name.weight; group > 0 normalises each `group` columns on their own
        (per-head q/k norms)."""
        self._norm("rmsnorm", name, x, out, eps=eps, group=group)

    def layernorm(self, name: str, x: str, out: str, eps: float) -> None:
        """out = LayerNorm(x) * name.weight + name.bias."""
        self._norm("layernorm", name, x, out, eps=eps, bias=self.w[name + ".bias"])

    def _norm(self, kind: str, name: str, x: str, out: str, **spec: Any) -> None:
        self._add(kind, name, out, self.width(x), (x,), self._layer(name), norm=self.w[name + ".weight"], **spec)

    def linear(self, name: str, x: str, out: str, residual: str = "", activation: str = "", weight: str = "") -> None:
        """out = act(x @ W.T (+ bias when the model has one)) (+ residual), one native matmul;
        W is `weight` (default: `name`).weight, the bias `name`.bias; residual may be out itself;
        activation "", "gelu_erf", "gelu_tanh", "silu" or "relu"."""
        tensor = (weight or name) + ".weight"
        spec: dict[str, Any] = {"bias": self.w.get(name + ".bias"), "activation": activation}
        split = self.tp.split(tensor) if self.tp else None
        layer = self._layer(name)
        if split is not None and split.axis == 1:  # row parallel: partial sums, then one all-reduce
            assert self.tp is not None
            if activation:
                raise ValueError(f"graph: {name} is split by columns: an activation cannot follow its partial sums")
            if self.tp.rank != 0:  # added once, by rank 0
                spec["bias"], residual = None, ""
            if residual:
                spec["residual"] = self._buffer(residual)
            self._add("matmul", name, out, self.w[tensor].n, (x,), layer, tensor, **spec)
            self._add("all_reduce", name + ".all_reduce", out, self.w[tensor].n, layer=layer)
            return
        if split is not None and split.parts == ("vocab",):  # this rank's logits, gathered on rank 0
            assert self.tp is not None
            if residual:
                raise ValueError(f"graph: {name} is split by vocabulary rows: it takes no residual")
            part = out + ".part"
            self._add("matmul", name, part, self.w[tensor].n, (x,), layer, tensor, **spec)
            widths = self.tp.widths("vocab")
            self._add("gather", name + ".gather", out, sum(widths), (part,), layer, parts=widths)
            return
        if residual:
            spec["residual"] = self._buffer(residual)
        self._add("matmul", name, out, self.w[tensor].n, (x,), layer, tensor, **spec)

    def rope(self, name: str, x: str, heads: int, head_dim: int, inv_freq: np.ndarray, neox: bool) -> None:
        """Rotary position embedding, in place on x [rows, heads, head_dim]."""
        self._add(
            "rope",
            name,
            x,
            self.width(x),
            (x,),
            self._layer(name),
            heads=heads,
            head_dim=head_dim,
            inv_freq=np.ascontiguousarray(inv_freq, np.float32),
            neox=neox,
        )

    def attention(
        self,
        name: str,
        q: str,
        k: str,
        v: str,
        out: str,
        layer: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        causal: bool,
        window: int = 0,
        scale: float | None = None,
    ) -> None:
        """Grouped-query attention of the step's rows: decoders store k, v in each sequence's
        cache (layer `layer`) and attend to it (causal; the last `window` keys when window > 0),
        encoders attend within each sequence's own rows."""
        scale = head_dim**-0.5 if scale is None else scale
        self._add(
            "attention",
            name,
            out,
            heads * head_dim,
            (q, k, v),
            layer,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            causal=causal,
            window=window,
            scale=scale,
        )

    def glu(self, name: str, gate: str, up: str, out: str, width: int, gate_col: int = 0, up_col: int = 0) -> None:
        """out = silu(gate[:, gate_col:+width]) * up[:, up_col:+width] (SwiGLU; gate and up may be
        one fused buffer)."""
        self._add("glu", name, out, width, (gate, up), self._layer(name), col0=gate_col, col1=up_col)

    def copy(self, name: str, x: str, out: str, start: int, width: int) -> None:
        """out = x[:, start:start+width] (split a fused projection)."""
        self._add("copy", name, out, width, (x,), self._layer(name), col0=start)

    def select(self, x: str, out: str) -> None:
        """The rows the rest of the graph works on: all of them, or each sequence's last."""
        self._add("select", "select", out, self.width(x), (x,))

    def build(self, n_layer: int) -> CompiledGraph:
        native = _C.Graph(list(self.widths.values()), [op.spec for op in self.ops], n_layer)
        return CompiledGraph(native, self.ops, dict(self.widths))


class CompiledGraph:
    """The native executor of one model's graph, with the op list hooks and profiles read."""

    def __init__(self, native: Any, ops: list[Op], widths: dict[str, int]) -> None:
        self.native = native
        self.ops = ops
        self.widths = widths
        self.writers = {op.out: i for i, op in enumerate(ops)}  # buffer -> the last op writing it

    def end_of(self, buffer: str) -> int:
        """How many ops run until `buffer` ("hidden", "logits") holds its final value."""
        return self.writers[buffer] + 1
