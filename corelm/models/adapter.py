"""Bottleneck adapters (Houlsby, Pfeiffer) in corelm's graph, exactly as AdapterHub's `adapters`
(1.3.0) runs them.

A bottleneck adapter is a small non-linear block beside one of a transformer block's sublayers,

    a(h) = W_up · act(W_down · h + b_down) + b_up      (W_down: [n_embd / reduction, n_embd])

so unlike LoRA it cannot be merged into the block's weights: the graph runs it. Where it sits and
what it reads follow `adapters`' Adapter.pre_forward / forward / post_forward for the two configs
corelm fine-tunes (residual_before_ln=True, adapter_residual_before_ln=False, no adapter layer
norms, scaling 1, no gating). With s a sublayer's output (attention's output projection, the
feed-forward's down projection), x the residual stream that entered the sublayer and LN the
block's own norm after the sum (post-LN encoders: BERT's attn_output_norm / layer_output_norm;
pre-LN decoders have none there):

    no adapter                                   x' = LN(x + s)
    Pfeiffer (SeqBnConfig, original_ln_before)   x' = LN(y + a(LN(y))),  y = x + s   (decoders: y + a(y))
    Houlsby (DoubleSeqBnConfig)                  x' = LN(x + s + a(s))

Pfeiffer has one adapter per block, after the feed-forward (`output_adapter`), with relu; Houlsby
one after attention too (`mh_adapter`), with swish (silu). The same equations hold for BERT /
RoBERTa / DistilBERT (adapters' own block code), GPT-2 and Llama (its mixins) and Qwen2 (its
hooks on o_proj / down_proj, whose residual the model adds itself).

Tensors (corelm's own names; llama.cpp knows none of them and will not load a GGUF file holding
them): blk.N.adapter_attn_down / adapter_attn_up / adapter_ffn_down / adapter_ffn_up (.weight,
.bias). GGUF keys: corelm.adapter.places (["ffn"] or ["attn", "ffn"]),
corelm.adapter.original_ln_before (bool), corelm.adapter.activation ("relu" or "silu").
A Hugging Face folder is read as `adapters`' save_pretrained writes it: config.json's
"adapters" section names the adapter and its config; each architecture says where its blocks
keep the adapter layers (Model.hf_adapter_paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corelm.models.graph import GraphBuilder

PLACES = ("attn", "ffn")
# adapters' non_linearity -> the graph's activation
ACTIVATIONS = {"relu": "relu", "swish": "silu", "silu": "silu"}
# The adapters config keys whose other values would change the equations above.
_FIXED: dict[str, Any] = {
    "residual_before_ln": True,
    "adapter_residual_before_ln": False,
    "original_ln_after": True,
    "ln_before": False,
    "ln_after": False,
    "is_parallel": False,
    "use_gating": False,
    "phm_layer": False,
    "scaling": 1.0,
    "cross_adapter": False,
    "inv_adapter": None,
    "leave_out": [],
}
_KEY = "corelm.adapter."


@dataclass(frozen=True)
class BottleneckAdapter:
    """Which sublayers of every block have an adapter, what it reads, and its activation."""

    places: tuple[str, ...]  # of PLACES: "attn" (adapters' mh_adapter), "ffn" (output_adapter)
    original_ln_before: bool  # True: reads the (normed) sum y (Pfeiffer); False: the sublayer output (Houlsby)
    activation: str  # "relu" or "silu"

    def __post_init__(self) -> None:
        if not self.places or any(p not in PLACES for p in self.places):
            raise ValueError(f"adapter places {self.places!r}: expected some of {', '.join(PLACES)}")
        if self.activation not in ("relu", "silu"):
            raise ValueError(f"adapter activation {self.activation!r}: expected relu or silu")

    def tensors(self, n_layer: int) -> list[str]:
        return [f"blk.{i}.adapter_{place}_{part}.{kind}" for i in range(n_layer) for place in self.places
                for part in ("down", "up") for kind in ("weight", "bias")]  # fmt: skip

    def check_shapes(self, weights: dict[str, Any], n_layer: int, n_embd: int) -> None:
        """W_down maps n_embd to the bottleneck, W_up back; their biases match."""
        for i in range(n_layer):
            for place in self.places:
                p = f"blk.{i}.adapter_{place}_"
                down, up = weights[p + "down.weight"], weights[p + "up.weight"]
                bottleneck = down.n
                shapes = {
                    p + "down.weight": ((down.n, down.k), (bottleneck, n_embd)),
                    p + "up.weight": ((up.n, up.k), (n_embd, bottleneck)),
                    p + "down.bias": ((len(weights[p + "down.bias"]),), (bottleneck,)),
                    p + "up.bias": ((len(weights[p + "up.bias"]),), (n_embd,)),
                }
                for name, (have, want) in shapes.items():
                    if have != want:
                        raise ValueError(f"adapter tensor {name} is {have}, expected {want}")

    # ---- files ----

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> tuple[BottleneckAdapter, str] | None:
        """The adapter a config.json written by `adapters` holds, and its name; None without one."""
        section = cfg.get("adapters") or {}
        named = section.get("adapters") or {}
        if not named:
            return None
        if len(named) > 1:
            raise ValueError(f"config.json holds {len(named)} adapters ({', '.join(named)}); corelm runs one")
        ((name, key),) = named.items()
        conf = (section.get("config_map") or {}).get(key)
        if not isinstance(conf, dict):
            raise ValueError(f"config.json: adapter {name!r} has no config in adapters.config_map")
        if conf.get("architecture") not in (None, "bottleneck"):
            raise ValueError(f"config.json: adapter {name!r} is {conf['architecture']}, not a bottleneck adapter")
        for k, want in _FIXED.items():
            if k in conf and conf[k] != want:
                raise ValueError(
                    f"config.json: adapter {name!r} has {k}={conf[k]!r}; corelm runs bottleneck adapters with "
                    f"{k}={want!r} (Pfeiffer / Houlsby)"
                )
        act = str(conf.get("non_linearity", "")).lower()
        if act not in ACTIVATIONS:
            raise ValueError(f"config.json: adapter {name!r} uses non_linearity {act!r} (supported: relu, swish)")
        places = tuple(p for p, key in (("attn", "mh_adapter"), ("ffn", "output_adapter")) if conf.get(key))
        if not places:
            raise ValueError(f"config.json: adapter {name!r} is placed nowhere (mh_adapter and output_adapter false)")
        return cls(places, bool(conf.get("original_ln_before", False)), ACTIVATIONS[act]), name

    @classmethod
    def from_gguf(cls, meta: dict[str, Any]) -> BottleneckAdapter | None:
        if _KEY + "places" not in meta:
            return None
        return cls(
            tuple(str(p) for p in meta[_KEY + "places"]),
            bool(meta.get(_KEY + "original_ln_before", False)),
            str(meta.get(_KEY + "activation", "")),
        )

    def write_gguf(self, w: Any) -> None:
        """The corelm.adapter.* keys (w: a gguf.GGUFWriter)."""
        w.add_array(_KEY + "places", list(self.places))
        w.add_bool(_KEY + "original_ln_before", self.original_ln_before)
        w.add_string(_KEY + "activation", self.activation)


def hf_names(paths: dict[str, tuple[str, ...]], name: str) -> dict[str, str]:
    """HF parameter names of adapter `name` -> corelm's, for an architecture whose blocks keep the
    adapter layers at `paths` ({"attn": ("encoder.layer.{i}.attention.output.adapters", ...), ...})."""
    table = {}
    for place, spellings in paths.items():
        for path in spellings:
            for kind in ("weight", "bias"):
                table[f"{path}.{name}.adapter_down.0.{kind}"] = f"blk.{{i}}.adapter_{place}_down.{kind}"
                table[f"{path}.{name}.adapter_up.{kind}"] = f"blk.{{i}}.adapter_{place}_up.{kind}"
    return table


def declare_residual(
    g: GraphBuilder,
    adapter: BottleneckAdapter | None,
    p: str,
    place: str,
    name: str,
    inp: str,
    norm: str = "",
    eps: float = 0.0,
    x: str = "x",
) -> None:
    """x = x + s, s = linear `name` of buffer `inp` (a block's sublayer `place` added to the residual
    stream x), then the block's LayerNorm `norm` when it has one after the sum (post-LN encoders),
    with the block's adapter at `place` where `adapters` puts it (see the module docstring).
    p is "blk.{i}."."""
    ad = f"{p}adapter_{place}"
    if adapter is None or place not in adapter.places:
        g.linear(name, inp, x, residual=x)
    elif adapter.original_ln_before:  # Pfeiffer: y = x + s; y += a(LN(y))
        g.linear(name, inp, x, residual=x)
        src = x
        if norm:
            g.layernorm(norm, x, "adapter_in", eps)
            src = "adapter_in"
        _bottleneck(g, adapter, ad, src, x)
    else:  # Houlsby: s += a(s); x += s
        g.linear(name, inp, "sublayer")
        _bottleneck(g, adapter, ad, "sublayer", "sublayer")
        g.add(ad + "_add", x, "sublayer", x)
    if norm:
        g.layernorm(norm, x, x, eps)


def _bottleneck(g: GraphBuilder, adapter: BottleneckAdapter, ad: str, src: str, out: str) -> None:
    """out += W_up · act(W_down · src + b_down) + b_up."""
    g.linear(ad + "_down", src, "adapter", activation=adapter.activation)
    g.linear(ad + "_up", "adapter", out, residual=out)
