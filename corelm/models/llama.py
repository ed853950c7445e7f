"""Llama family: Llama 1/2/3, TinyLlama, SmolLM; Qwen2 adds biases.

Per block: x += Wo·attn(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x));  x += Wd·(silu(Wg·n(x)) * Wu·n(x))
with n = RMSNorm. Grouped-query attention: n_head query heads share n_head_kv key/value heads.
Architectures that are llama plus one thing subclass Llama and override one piece of its
forward: how q, k, v are made (`declare_qkv`: Qwen3's q/k norms, Phi-3's fused projection) or
the feed-forward's gated activation (`declare_glu`: Phi-3's fused gate-up).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from corelm.models.adapter import declare_residual
from corelm.models.base import Model, ModelConfig, bidirectional_of_hf, register
from corelm.models.graph import GraphBuilder

# Hugging Face parameter names -> GGUF names; "{i}" is the layer.
HF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
    # *ForSequenceClassification / *ForTokenClassification heads
    "score.weight": "cls.output.weight",
    "score.bias": "cls.output.bias",
}


def _config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window", window is not None) and window and window < cfg["max_position_embeddings"]:
        raise ValueError(f"sliding-window attention (window {window}) is not supported")
    heads = cfg["num_attention_heads"]
    return ModelConfig(
        arch=cfg["model_type"] if cfg["model_type"] == "qwen2" else "llama",
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["num_hidden_layers"],
        n_embd=cfg["hidden_size"],
        n_head=heads,
        n_head_kv=cfg.get("num_key_value_heads") or heads,
        n_ff=cfg["intermediate_size"],
        ctx=cfg.get("max_position_embeddings", 2048),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        head_dim=cfg.get("head_dim") or 0,
        rope_theta=float(theta),
        rope_neox=True,
        rope_scaling=rope,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bidirectional=bidirectional_of_hf(cfg),
    )


def _expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    hd = c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (c.vocab_size, c.n_embd)}
    for i in range(c.n_layer):
        shapes |= {
            f"blk.{i}.attn_q.weight": (c.n_head * hd, c.n_embd),
            f"blk.{i}.attn_k.weight": (c.n_head_kv * hd, c.n_embd),
            f"blk.{i}.attn_v.weight": (c.n_head_kv * hd, c.n_embd),
            f"blk.{i}.attn_output.weight": (c.n_embd, c.n_head * hd),
            f"blk.{i}.ffn_gate.weight": (c.n_ff, c.n_embd),
            f"blk.{i}.ffn_up.weight": (c.n_ff, c.n_embd),
            f"blk.{i}.ffn_down.weight": (c.n_embd, c.n_ff),
        }
    return shapes


def rope_pair_permutation(n_rows: int, n_heads: int) -> np.ndarray:
    """Row order that turns split-half rotary pairs into adjacent pairs, head by head."""
    rows = np.arange(n_rows).reshape(n_heads, 2, n_rows // n_heads // 2)
    return rows.swapaxes(1, 2).reshape(-1)


@register
class Llama(Model):
    gguf_archs: ClassVar[tuple[str, ...]] = ("llama", "qwen2")  # (subclasses name their own)
    hf_model_types: ClassVar[tuple[str, ...]] = ("llama", "qwen2")
    hf_names = HF_NAMES
    # adapters' Llama mixin and its Qwen2 hooks both keep them here
    hf_adapter_paths = {
        "attn": ("model.layers.{i}.attention_adapters.adapters",),
        "ffn": ("model.layers.{i}.output_adapters.adapters",),
    }
    config_from_hf = staticmethod(_config_from_hf)  # type: ignore[assignment]
    expected_shapes = staticmethod(_expected_shapes)  # type: ignore[assignment]

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], arch: str, weights: dict[str, Any]) -> ModelConfig:
        config = super().config_from_gguf(meta, arch, weights)
        config.rope_neox = arch != "llama"  # llama.cpp's converter permutes llama's Q/K to adjacent pairs
        return config

    def gguf_row_order(self, name: str, rows: int) -> np.ndarray | None:
        """llama-architecture files hold Q/K rows permuted for adjacent rotary pairs (llama.cpp's
        convention); a model read from Hugging Face has split-half pairs: permute on the way out."""
        c = self.config
        heads = c.n_head if ".attn_q." in name else c.n_head_kv if ".attn_k." in name else 0
        return rope_pair_permutation(rows, heads) if heads and c.arch == "llama" and c.rope_neox else None

    def __init__(self, config: ModelConfig, weights: dict[str, Any]) -> None:
        super().__init__(config, weights)
        self.inv_freq = config.rope_inv_freq()
        if "rope_freqs.weight" in weights:  # llama.cpp stores llama3 scaling as per-pair divisors
            self.inv_freq = (self.inv_freq / weights["rope_freqs.weight"]).astype(np.float32)

    def required_weights(self) -> list[str]:
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(self.config.n_layer):
            names += [
                f"blk.{i}.{t}.weight"
                for t in (
                    "attn_norm",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_norm",
                    "ffn_gate",
                    "ffn_up",
                    "ffn_down",
                )
            ]
        return names

    def declare(self, g: GraphBuilder) -> None:
        c, hd = self.config, self.config.head_dim
        g.embed("token_embd", "x")
        for i in range(c.n_layer):
            p = f"blk.{i}."
            g.rmsnorm(p + "attn_norm", "x", "h", c.norm_eps)
            self.declare_qkv(g, p)
            g.rope(p + "rope_q", "q", c.n_head, hd, self.inv_freq, c.rope_neox)
            g.rope(p + "rope_k", "k", c.n_head_kv, hd, self.inv_freq, c.rope_neox)
            heads = (c.n_head, c.n_head_kv, hd)  # query heads, key/value heads, head dim
            g.attention(p + "attn", "q", "k", "v", "attn", i, *heads, causal=c.causal, window=c.sliding_window)
            declare_residual(g, c.adapter, p, "attn", p + "attn_output", "attn")
            g.rmsnorm(p + "ffn_norm", "x", "h", c.norm_eps)
            declare_residual(g, c.adapter, p, "ffn", p + "ffn_down", self.declare_glu(g, p))
        g.select("x", "x_out")
        g.rmsnorm("output_norm", "x_out", "hidden", c.norm_eps)
        self.declare_lm_head(g, "hidden")

    def declare_qkv(self, g: GraphBuilder, p: str) -> None:
        """Buffers q, k, v (before rope) from the block's normed rows "h"; p is "blk.{i}."."""
        for proj in ("q", "k", "v"):
            g.linear(p + "attn_" + proj, "h", proj)

    def declare_glu(self, g: GraphBuilder, p: str) -> str:
        """silu(gate) * up of the normed rows "h", n_ff wide; returns the buffer holding it."""
        g.linear(p + "ffn_gate", "h", "gate")
        g.linear(p + "ffn_up", "h", "up")
        g.glu(p + "ffn_glu", "gate", "up", "gate", self.config.n_ff)
        return "gate"
