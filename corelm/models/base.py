"""What every architecture shares: the config, the weights, the transformer skeleton and the
task heads on top of it.

Weights are keyed by llama.cpp's GGUF tensor names (token_embd.weight, blk.0.attn_q.weight,
...) whatever file they came from; each architecture file maps Hugging Face names onto them.
A forward step is one native call running the architecture's graph (graph.py) over float32
activations [T, C] (T tokens of this step, C = n_embd). A batch is its sequences' rows one after
another, with no padding: matrix products run on all rows, attention on each sequence's own rows.

Heads (llama.cpp's names): the language-model head `output` (or the tied `token_embd`); a
classifier `cls.output` on the pooled hidden state (sequence classification) or on every row
(token classification), after an optional dense layer `cls` with its activation (BERT's pooler,
RoBERTa's classifier.dense, DistilBERT's pre_classifier).

Attention: decoders attend causally over each sequence's KV cache; encoders attend both ways within
each sequence's rows of the step (no cache). A decoder tagger or classifier fine-tuned to attend
both ways (ModelConfig.bidirectional) runs its own blocks as an encoder runs: unmasked, no cache,
no language-model head (it does not generate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import gguf
import numpy as np

from corelm import kernels
from corelm.engine.kv_cache import KVCache
from corelm.kernels import Weight
from corelm.models.adapter import BottleneckAdapter
from corelm.models.graph import CompiledGraph, GraphBuilder, Op
from corelm.models.parallel import Split, TensorParallel


@dataclass
class ModelConfig:
    arch: str
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    ctx: int  # context length the model was trained for
    norm_eps: float
    head_dim: int = 0  # 0: n_embd // n_head
    rope_dim: int = 0  # leading dims of each head that rope rotates (0: all; Phi-3's partial_rotary_factor)
    sliding_window: int = 0  # causal attention sees a row's last this many keys (0: all; Mistral)
    rope_theta: float = 10000.0
    rope_neox: bool = True  # split-half pairs (HF); llama GGUF files use adjacent pairs
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # HF rope_scaling ({} = none)
    tied_embeddings: bool = False
    causal: bool = True  # False: encoders and bidirectional decoders, every token sees the whole sequence
    # a decoder whose attention is unmasked (a tagger / classifier fine-tuned with --bidirectional, HF
    # config.json "is_causal": false, GGUF corelm.attention.bidirectional): it pools, frames its text and
    # takes its head as a decoder does, runs without a KV cache as an encoder does, and does not generate
    bidirectional: bool = False
    pooling: str = ""  # sentence embedding: "mean", "cls" or "last" ("": the architecture's default)
    head: str = ""  # classifier on top: "sequence", "token" or "" (none)
    labels: list[str] = field(default_factory=list)  # the classifier's outputs, in order
    head_act: str = ""  # activation after the `cls` dense layer: "tanh", "relu" or ""
    pos_offset: int = 0  # rows of position_embd before position 0 (RoBERTa: padding_idx + 1)
    normalize: bool = True  # embeddings scaled to unit length (sentence-transformers' Normalize)
    max_tokens: int = 0  # longer texts are cut to this many tokens when embedded or classified (0: ctx)
    adapter: BottleneckAdapter | None = None  # every block's bottleneck adapter (adapter.py), if any

    @property
    def decoder(self) -> bool:
        """A decoder architecture (gpt2, llama, ...), whichever way it attends."""
        return self.causal or self.bidirectional

    @property
    def kind(self) -> str:
        """What it is, for messages: a decoder, a bidirectional decoder or an encoder."""
        return "bidirectional decoder" if self.bidirectional else "decoder" if self.causal else "encoder"

    @property
    def default_pooling(self) -> str:
        """How a sequence becomes one vector when nothing says otherwise: encoders average their
        tokens (sentence-transformers' default), decoders take the last one (it has seen them all,
        and it is the row their sequence classifier reads)."""
        return self.pooling or ("last" if self.decoder else "mean")

    def __post_init__(self) -> None:
        if self.bidirectional:
            self.causal = False
            if self.sliding_window:
                raise ValueError("model config: a bidirectional decoder cannot have a sliding window")
        if self.head_dim == 0:
            self.head_dim = self.n_embd // self.n_head
        self.rope_dim = self.rope_dim or self.head_dim
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", "head_dim", "ctx"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.rope_dim % 2 or self.rope_dim > self.head_dim:
            raise ValueError(
                f"model config: rope_dim {self.rope_dim} must be even and at most head_dim {self.head_dim}"
            )
        if self.sliding_window < 0:
            raise ValueError(f"model config: sliding_window must be >= 0, got {self.sliding_window}")
        if self.n_head % self.n_head_kv:
            raise ValueError(f"model config: {self.n_head} heads is not a multiple of {self.n_head_kv} kv heads")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model config: unknown pooling {self.pooling!r} (known: {', '.join(POOLINGS[1:])})")
        if self.head not in ("", "sequence", "token"):
            raise ValueError(f"model config: unknown head {self.head!r}")

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse frequencies of the rotary pairs, with the config's scaling applied."""
        d = self.rope_dim
        inv = 1.0 / self.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
        if kind in ("default", None):
            pass
        elif kind == "linear":
            inv = inv / float(self.rope_scaling["factor"])
        elif kind == "llama3":
            s = self.rope_scaling
            factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
            old_ctx = float(s["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
            smooth = (old_ctx / wavelen - low) / (high - low)
            medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
            inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
        else:
            raise ValueError(f"unsupported rope scaling type {kind!r} (supported: linear, llama3)")
        return inv.astype(np.float32)


POOLINGS = ("", "mean", "cls", "last")
Weights = dict[str, Any]  # name -> Weight (matrices) or float32 ndarray (norms, biases)

# How tensor parallelism divides llama.cpp's tensors (parallel.py); per layer, without "blk.N.".
# Architectures whose tensors hold other layouts override Model.tensor_splits; a tensor not
# named here is whole on every rank.
TENSOR_SPLITS: dict[str, Split] = {
    "token_embd.weight": Split(0, ("vocab",)),
    "output.weight": Split(0, ("vocab",)),
    **{
        f"attn_{p}.{kind}": Split(0, (u,))
        for p, u in (("q", "q"), ("k", "kv"), ("v", "kv"))
        for kind in ("weight", "bias")
    },
    **{f"attn_qkv.{kind}": Split(0, ("q", "kv", "kv")) for kind in ("weight", "bias")},
    "attn_output.weight": Split(1, ("q",)),
    **{f"ffn_{p}.{kind}": Split(0, ("ff",)) for p in ("gate", "up") for kind in ("weight", "bias")},
    "ffn_down.weight": Split(1, ("ff",)),
}


class Model:
    """A transformer: config, weights, and its forward pass as a graph run by the native executor.

    An architecture is one file with one subclass, registered with @register, that says
    everything about it: the GGUF architecture names and Hugging Face model types it reads,
    how their configs become a ModelConfig, its tensors' names (HF -> GGUF) and shapes, the
    GGUF keys it writes, and its forward pass (`declare`): embeddings and blocks up to the select
    op, then the final norm into buffer "hidden" and, when it generates, the language-model head
    into buffer "logits" (see graph.py). The loader knows none of them by name."""

    gguf_archs: ClassVar[tuple[str, ...]] = ()  # GGUF general.architecture values it reads
    hf_model_types: ClassVar[tuple[str, ...]] = ()  # config.json model_type values it reads
    hf_names: ClassVar[dict[str, str]] = {}  # HF parameter name -> GGUF name; "{i}" is the layer
    hf_prefixes: ClassVar[tuple[str, ...]] = ("transformer.", "model.")  # added or removed to match hf_names
    hf_transposed: ClassVar[tuple[str, ...]] = ()  # block tensors (names after "blk.N.") HF stores [in, out]
    # where its HF blocks keep AdapterHub's adapter layers: {"attn": (path, ...), "ffn": (...)}, "{i}" the layer
    hf_adapter_paths: ClassVar[dict[str, tuple[str, ...]]] = {}
    gguf_norm_eps: ClassVar[str] = "attention.layer_norm_rms_epsilon"  # the GGUF key of its norms' epsilon
    tensor_splits: ClassVar[dict[str, Split]] = TENSOR_SPLITS  # how tensor parallelism divides its tensors

    def __init__(self, config: ModelConfig, weights: Weights) -> None:
        self.config = config
        self.w = weights
        # Set when this model is one rank's share of a tensor-parallel model (config and weights
        # are the share's: its heads, feed-forward units and vocabulary rows; see parallel.py).
        self.parallel: TensorParallel | None = None
        self.group: Any = None  # corelm.distributed.Group, which sends each step to the other ranks
        self.metadata: dict[str, Any] = {}  # the GGUF file's keys, for a model loaded from one
        self._graph: CompiledGraph | None = None
        self.check_weights()

    @classmethod
    def tensor_split(cls, name: str) -> Split | None:
        """How tensor parallelism divides tensor `name` (None: whole on every rank)."""
        parts = name.split(".")
        if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
            name = ".".join(parts[2:])
        return cls.tensor_splits.get(name)

    # Architectures list the tensors they need; loading fails early and clearly without them.
    def required_weights(self) -> list[str]:
        raise NotImplementedError

    def check_weights(self) -> None:
        c = self.config
        required = self.required_weights() + (c.adapter.tensors(c.n_layer) if c.adapter else [])
        missing = [n for n in required if n not in self.w]
        if missing:
            raise ValueError(
                f"{self.config.arch} model is missing tensors: {', '.join(missing[:8])}"
                + (" ..." if len(missing) > 8 else "")
            )
        if c.adapter:
            c.adapter.check_shapes(self.w, c.n_layer, c.n_embd)

    def new_cache(self, capacity: int, dtype: str = "float32") -> KVCache:
        """A KV cache for one sequence (of this rank's key/value heads; under MPI every rank makes its own)."""
        if self.group is not None:
            return self.group.new_cache(self, capacity, dtype)
        c = self.config
        return KVCache(c.n_layer, c.n_head_kv, capacity, c.head_dim, dtype)

    # ---- architecture-specific ----

    def declare(self, g: GraphBuilder) -> None:
        """The forward pass, as ops on g (see graph.py)."""
        raise NotImplementedError

    @classmethod
    def config_from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    @classmethod
    def expected_shapes(cls, c: ModelConfig) -> dict[str, tuple[int, ...]]:
        """The shapes the config implies (checked at load): matrices, and vectors other than
        n_embd-wide norms."""
        raise NotImplementedError

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], arch: str, weights: dict[str, Any]) -> ModelConfig:
        """The config from a GGUF file's metadata: llama.cpp's decoder keys (override for others)."""
        return decoder_config_from_gguf(meta, arch, weights, cls.gguf_norm_eps)

    @classmethod
    def write_hparams(cls, w: gguf.GGUFWriter, c: ModelConfig) -> None:
        """llama.cpp's hyperparameter keys for this config (the decoder keys; override for others)."""
        write_decoder_hparams(w, c)
        w.add_layer_norm_rms_eps(c.norm_eps)
        w.add_rope_freq_base(c.rope_theta)
        w.add_rope_dimension_count(c.rope_dim)
        if c.sliding_window:
            w.add_sliding_window(c.sliding_window)
        if c.head_dim != c.n_embd // c.n_head:
            w.add_key_length(c.head_dim)
            w.add_value_length(c.head_dim)
        kind = c.rope_scaling.get("rope_type", c.rope_scaling.get("type", "default"))
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(c.rope_scaling["factor"]))

    @classmethod
    def write_gguf_keys(cls, w: gguf.GGUFWriter, c: ModelConfig) -> None:
        """Every key a GGUF file of this config gets from it: the architecture's hyperparameters and
        the adapter's corelm.adapter.* keys."""
        cls.write_hparams(w, c)
        if c.adapter:
            c.adapter.write_gguf(w)

    def gguf_row_order(self, name: str, rows: int) -> np.ndarray | None:
        """The order in which tensor `name`'s rows are written to GGUF (None: as they are)."""
        return None

    # ---- the forward pass ----

    @property
    def graph(self) -> CompiledGraph:
        """The compiled graph, built on first use from the weights as they are then (load packs
        them first); `reset_graph` after replacing weights."""
        if self._graph is None:
            g = GraphBuilder(self.w, self.parallel)
            self.declare(g)
            self._graph = g.build(self.config.n_layer)
        return self._graph

    def reset_graph(self) -> None:
        self._graph = None

    def lookup_only_weights(self) -> set[str]:
        """Matrices only ever read a row at a time (embeddings): packing them would not pay."""
        tied = "output.weight" not in self.w  # the token embedding is the output matrix too
        return {"position_embd.weight", "token_types.weight"} | (set() if tied else {"token_embd.weight"})

    def output_weight(self) -> Weight:
        return self.w.get("output.weight") or self.w["token_embd.weight"]

    def forward(self, tokens: np.ndarray, pos: int, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Logits [T, vocab] (all_logits) or [1, vocab] (last token) for tokens at positions pos.."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        return self.forward_batch(tokens, [Segment(cache, pos, len(tokens))], all_logits)

    def forward_batch(
        self, tokens: np.ndarray, segments: list[Segment], all_logits: bool = False, hook: Hook | None = None
    ) -> np.ndarray:
        """One step over several sequences at once: `tokens` holds each segment's tokens in turn;
        one native call runs every layer for all of them (matrix products on all rows together,
        attention per segment against its own cache). Returns logits for every row (all_logits)
        or for the last row of each segment [len(segments), vocab]. The returned array is reused
        by the next call: copy it to keep it. hook: see `run`."""
        c = self.config
        if c.bidirectional:
            raise ValueError(
                f"this {c.arch} model is a bidirectional decoder (fine-tuned to attend both ways): it tags, "
                "classifies and embeds; it cannot generate text (every token was trained to see the ones after it)"
            )
        if "logits" not in self.graph.widths:
            what = f"this model is an encoder ({c.arch})"
            raise ValueError(f"{what}: it embeds, classifies and tags; it does not generate text")
        return self.run(tokens, segments, "logits", last_rows=not all_logits, hook=hook)

    def hidden_states(self, tokens: np.ndarray, segments: list[Segment]) -> tuple[np.ndarray, Step]:
        """The last layer's output after the final norm, [T, C] for all rows, and the step that
        says which rows are whose. Reused by the next call: copy to keep."""
        return self.run(tokens, segments, "hidden", last_rows=False), Step.make(segments)

    def run(
        self, tokens: np.ndarray, segments: list[Segment], output: str, last_rows: bool, hook: Hook | None = None
    ) -> np.ndarray:
        """The graph's ops up to the one that writes buffer `output`, in one native call.
        hook(op, input, output, seconds) is called after every op (slower: for profiles,
        calibration and debugging)."""
        g = self.graph
        native_hook = None
        if hook is not None:
            native_hook = lambda i, x, y, seconds: hook(g.ops[i], x, y, seconds)  # noqa: E731
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        if self.group is not None:  # every rank runs the step: they are sent it first
            return self.group.run(self, tokens, segments, last_rows, g.end_of(output), native_hook)
        segs = [(None if s.cache is None else s.cache.data, s.pos, s.length) for s in segments]
        return g.native.run(tokens, segs, last_rows, g.end_of(output), native_hook)

    # ---- task heads ----

    def pool(self, h: np.ndarray, step: Step, how: str) -> np.ndarray:
        """One vector per segment from hidden states h [T, C]: the mean of its rows, its first
        row ("cls") or its last row. -> [len(segments), C] (a new array)."""
        if how == "mean":
            starts = [r.start for r in step.rows]
            lengths = np.array([r.stop - r.start for r in step.rows], np.float32)
            return np.add.reduceat(h, starts, axis=0) / lengths[:, None]
        if how == "cls":
            return h[[r.start for r in step.rows]]
        if how == "last":
            return h[step.last_rows]
        raise ValueError(f"unknown pooling {how!r} (known: mean, cls, last)")

    def classifier_logits(self, h: np.ndarray, step: Step) -> np.ndarray:
        """The classifier head's logits: [segments, labels] for a sequence head (first row of
        each sequence for encoders, last row for decoders, as transformers pools), [T, labels]
        for a token head. A new array."""
        c = self.config
        if not c.head or "cls.output.weight" not in self.w:
            raise ValueError(f"this {c.arch} model has no classification head (it embeds; it cannot classify or tag)")
        if c.head == "sequence":
            h = np.ascontiguousarray(self.pool(h, step, "last" if c.decoder else "cls"))
        if "cls.weight" in self.w:
            h = self.linear(h, "cls", np.empty((h.shape[0], self.w["cls.weight"].n), np.float32))
            if c.head_act == "tanh":
                np.tanh(h, out=h)
            elif c.head_act == "relu":
                np.maximum(h, 0, out=h)
        return self.linear(h, "cls.output", np.empty((h.shape[0], self.w["cls.output.weight"].n), np.float32))

    def linear(self, x: np.ndarray, name: str, out: np.ndarray) -> np.ndarray:
        """x @ W.T (+ bias when the model has one under the same name), into out."""
        w, bias = self.w[name + ".weight"], self.w.get(name + ".bias")
        return kernels.matmul(x, w, out=out, bias=bias)

    # ---- pieces architectures share ----

    def declare_lm_head(self, g: GraphBuilder, x: str) -> None:
        """The language-model head on the selected rows of x: logits = hidden @ output.T (the
        token embedding when tied); none for a bidirectional decoder, which does not generate."""
        if self.config.bidirectional:
            return
        g.linear("output", x, "logits", weight="output" if "output.weight" in self.w else "token_embd")


ARCHITECTURES: list[type[Model]] = []  # filled by @register as corelm.models imports each file

M = TypeVar("M", bound=type[Model])


def register(cls: M) -> M:
    """Class decorator: make an architecture known to the loader."""
    ARCHITECTURES.append(cls)
    return cls


def head_of_hf(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """The task head an HF config describes: ("sequence" | "token" | "", labels in id order)."""
    archs = " ".join(cfg.get("architectures") or [])
    head = "sequence" if "SequenceClassification" in archs else "token" if "TokenClassification" in archs else ""
    if not head:
        return "", []
    id2label = cfg.get("id2label") or {}
    n = int(cfg.get("num_labels") or len(id2label) or 2)
    return head, [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def bidirectional_of_hf(cfg: dict[str, Any]) -> bool:
    """A decoder's config.json says it attends both ways: "is_causal": false, transformers' own switch
    (its masks then let every token see the whole sequence, padding aside)."""
    return cfg.get("is_causal", True) is False


BIDIRECTIONAL_KEY = "corelm.attention.bidirectional"  # GGUF: a decoder whose attention is unmasked


def gguf_key(meta: dict[str, Any], arch: str, key: str, default: Any = None) -> Any:
    """meta[f"{arch}.{key}"], or default; ValueError naming the key when both are missing."""
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
        raise ValueError(f"GGUF metadata lacks {arch}.{key}")
    return value


def decoder_config_from_gguf(meta: dict[str, Any], arch: str, weights: dict[str, Any], eps_key: str) -> ModelConfig:
    """llama.cpp's decoder keys (and its classifier keys for a decoder with a task head)."""
    heads = int(gguf_key(meta, arch, "attention.head_count"))
    n_embd = int(gguf_key(meta, arch, "embedding_length"))
    rope: dict[str, Any] = {}
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        rope = {"rope_type": "linear", "factor": float(gguf_key(meta, arch, "rope.scaling.factor"))}
    elif scaling not in ("none", None):
        raise ValueError(f"unsupported rope scaling {scaling!r}")
    n_labels = weights["cls.output.weight"].n if "cls.output.weight" in weights else 0
    labels = [str(s) for s in meta.get(f"{arch}.classifier.output_labels", [])]
    head = ("sequence" if meta.get(f"{arch}.pooling_type") == gguf.PoolingType.RANK else "token") if n_labels else ""
    return ModelConfig(
        arch=arch,
        vocab_size=weights["token_embd.weight"].n,
        n_layer=int(gguf_key(meta, arch, "block_count")),
        n_embd=n_embd,
        n_head=heads,
        n_head_kv=int(gguf_key(meta, arch, "attention.head_count_kv", heads)),
        n_ff=int(gguf_key(meta, arch, "feed_forward_length")),
        ctx=int(gguf_key(meta, arch, "context_length")),
        norm_eps=float(gguf_key(meta, arch, eps_key)),
        head_dim=int(gguf_key(meta, arch, "attention.key_length", n_embd // heads)),
        rope_dim=int(meta.get(f"{arch}.rope.dimension_count", 0)),
        sliding_window=int(meta.get(f"{arch}.attention.sliding_window", 0)),
        rope_theta=float(gguf_key(meta, arch, "rope.freq_base", 10000.0)),
        rope_scaling=rope,
        tied_embeddings="output.weight" not in weights,
        head=head,
        labels=labels or [f"LABEL_{i}" for i in range(n_labels)],
        bidirectional=bool(meta.get(BIDIRECTIONAL_KEY, False)),
    )


def write_decoder_hparams(w: gguf.GGUFWriter, c: ModelConfig) -> None:
    """The keys every llama.cpp decoder has, its classifier keys when it has a task head, and corelm's
    key for a decoder that attends both ways (llama.cpp has none for decoders: it would run the
    file causally)."""
    if c.bidirectional:
        w.add_bool(BIDIRECTIONAL_KEY, True)
    if c.head:
        w.add_pooling_type(gguf.PoolingType.RANK if c.head == "sequence" else gguf.PoolingType.NONE)
        w.add_array(f"{c.arch}.classifier.output_labels", c.labels)
    write_shape_hparams(w, c)
    w.add_head_count_kv(c.n_head_kv)


def write_shape_hparams(w: gguf.GGUFWriter, c: ModelConfig) -> None:
    """The keys of a transformer's shape that every llama.cpp architecture has."""
    w.add_context_length(c.ctx)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.n_ff)
    w.add_head_count(c.n_head)


Hook = Callable[[Op, "np.ndarray | None", np.ndarray, float], None]


@dataclass
class Segment:
    """One sequence's share of a batched step: `length` tokens at positions pos.. in `cache`
    (None for an encoder, whose sequences attend only to their own rows of the step)."""

    cache: KVCache | None
    pos: int
    length: int


@dataclass
class Step:
    """Which rows of a step's hidden states are whose: each segment's row range and last row."""

    segments: list[Segment]
    rows: list[slice]
    last_rows: list[int]

    @classmethod
    def make(cls, segments: list[Segment]) -> Step:
        rows, start = [], 0
        for s in segments:
            rows.append(slice(start, start + s.length))
            start += s.length
        return cls(segments, rows, [r.stop - 1 for r in rows])


def as_weight(dtype_name: str, array: np.ndarray, quant: int | None = None) -> Weight:
    """A 2-D float tensor (F32 / F16 / BF16 as stored) as a kernel Weight, optionally quantized."""
    from corelm.kernels import WeightType

    n, k = array.shape
    if quant is not None:
        return Weight.from_float(to_f32(dtype_name, array), WeightType(quant))
    wtype = {"F32": WeightType.F32, "F16": WeightType.F16, "BF16": WeightType.BF16}.get(dtype_name)
    if wtype is None:
        return Weight.from_float(to_f32(dtype_name, array), WeightType.F32)
    return Weight(np.ascontiguousarray(array).view(np.uint8).reshape(n, -1), wtype, n, k)


def to_f32(dtype_name: str, array: np.ndarray) -> np.ndarray:
    if dtype_name == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)
