"""Qwen3: Llama with an RMSNorm on each head of q and k (before rope), no q/k/v biases, and a
head_dim of its own (often not n_embd / n_head).

GGUF: llama.cpp's `qwen3`: blk.N.attn_q_norm / attn_k_norm hold one head_dim-wide weight shared
by every head; rotary pairs stay split-half (no Q/K row permutation, unlike `llama`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from corelm.models.base import ModelConfig, register
from corelm.models.graph import GraphBuilder
from corelm.models.llama import HF_NAMES as LLAMA_HF_NAMES
from corelm.models.llama import Llama

HF_NAMES = {
    **LLAMA_HF_NAMES,
    "model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
}
QK_NORMS = ("attn_q_norm", "attn_k_norm")


def _config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    return dataclasses.replace(Llama.config_from_hf(cfg), arch="qwen3")


def _expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    norms = {f"blk.{i}.{n}.weight": (c.head_dim,) for i in range(c.n_layer) for n in QK_NORMS}
    return Llama.expected_shapes(c) | norms


@register
class Qwen3(Llama):
    gguf_archs = ("qwen3",)
    hf_model_types = ("qwen3",)
    hf_names = HF_NAMES
    config_from_hf = staticmethod(_config_from_hf)  # type: ignore[assignment]
    expected_shapes = staticmethod(_expected_shapes)  # type: ignore[assignment]

    def required_weights(self) -> list[str]:
        return super().required_weights() + [
            f"blk.{i}.{n}.weight" for i in range(self.config.n_layer) for n in QK_NORMS
        ]

    def declare_qkv(self, g: GraphBuilder, p: str) -> None:
        super().declare_qkv(g, p)
        c = self.config
        g.rmsnorm(p + "attn_q_norm", "q", "q", c.norm_eps, group=c.head_dim)
        g.rmsnorm(p + "attn_k_norm", "k", "k", c.norm_eps, group=c.head_dim)
