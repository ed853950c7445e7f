"""Phi-3: Llama with fused projections: one matrix makes q, k and v (split by column copies), one
makes [gate; up] (the glu reads both halves of its output); rope may turn only the leading
partial_rotary_factor of each head (split-half pairs).

GGUF: llama.cpp's `phi3`: blk.N.attn_qkv, and blk.N.ffn_up holding the gate rows then the up rows;
rope.dimension_count says how many dims rope turns. Long-rope configs (rope_scaling "longrope" /
"su": per-frequency short and long factors) are not supported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from corelm.models.base import TENSOR_SPLITS, ModelConfig, register
from corelm.models.graph import GraphBuilder
from corelm.models.llama import Llama
from corelm.models.parallel import Split

HF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.qkv_proj.weight": "blk.{i}.attn_qkv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
    # Phi3ForSequenceClassification / Phi3ForTokenClassification heads
    "score.weight": "cls.output.weight",
    "score.bias": "cls.output.bias",
}
LAYER_TENSORS = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def _config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind != "default":
        raise ValueError(f"Phi-3 rope scaling {kind!r} is not supported (only unscaled rope)")
    partial = float(rope.pop("partial_rotary_factor", cfg.get("partial_rotary_factor") or 1.0))
    # Llama's reader refuses sliding windows; this architecture honours them.
    config = Llama.config_from_hf({**cfg, "rope_parameters": rope, "rope_scaling": None, "sliding_window": None})
    rope_dim = int(config.head_dim * partial)
    window = int(cfg.get("sliding_window") or 0)
    return dataclasses.replace(config, arch="phi3", rope_dim=rope_dim, sliding_window=window)


def _expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    qkv = (c.n_head + 2 * c.n_head_kv) * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (c.vocab_size, c.n_embd)}
    for i in range(c.n_layer):
        shapes |= {
            f"blk.{i}.attn_qkv.weight": (qkv, c.n_embd),
            f"blk.{i}.attn_output.weight": (c.n_embd, c.n_head * c.head_dim),
            f"blk.{i}.ffn_up.weight": (2 * c.n_ff, c.n_embd),
            f"blk.{i}.ffn_down.weight": (c.n_embd, c.n_ff),
        }
    return shapes


@register
class Phi3(Llama):
    gguf_archs = ("phi3",)
    hf_model_types = ("phi3",)
    hf_names = HF_NAMES
    config_from_hf = staticmethod(_config_from_hf)  # type: ignore[assignment]
    expected_shapes = staticmethod(_expected_shapes)  # type: ignore[assignment]
    # ffn_up holds the gate rows, then the up rows: a rank takes its units of each
    tensor_splits = TENSOR_SPLITS | {"ffn_up.weight": Split(0, ("ff", "ff"))}

    def required_weights(self) -> list[str]:
        layers = [f"blk.{i}.{t}.weight" for i in range(self.config.n_layer) for t in LAYER_TENSORS]
        return ["token_embd.weight", "output_norm.weight", *layers]

    def declare_qkv(self, g: GraphBuilder, p: str) -> None:
        c = self.config
        q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        g.linear(p + "attn_qkv", "h", "qkv")
        for name, start, width in (("q", 0, q), ("k", q, kv), ("v", q + kv, kv)):
            g.copy(p + "attn_" + name, "qkv", name, start, width)

    def declare_glu(self, g: GraphBuilder, p: str) -> str:
        n_ff = self.config.n_ff
        g.linear(p + "ffn_up", "h", "gate_up")
        g.glu(p + "ffn_glu", "gate_up", "gate_up", "ff", n_ff, gate_col=0, up_col=n_ff)
        return "ff"
