"""GPT-2: learned positions, LayerNorm, GELU (tanh), fused QKV, tied embeddings.

Per block: x += Wo·attn(split(Wqkv·ln1(x)) + b);  x += Wd·gelu(Wu·ln2(x) + bu) + bd
"""

from __future__ import annotations

from typing import Any

import gguf

from corelm.models.adapter import declare_residual
from corelm.models.base import Model, ModelConfig, bidirectional_of_hf, register, write_decoder_hparams
from corelm.models.graph import GraphBuilder

# HF's Conv1D stores weights [in, out]: the loader transposes the names listed here.
TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")

HF_NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
    # GPT2ForSequenceClassification's `score` (no bias), GPT2ForTokenClassification's `classifier`
    "score.weight": "cls.output.weight",
    "classifier.weight": "cls.output.weight",
    "classifier.bias": "cls.output.bias",
    **{
        f"transformer.h.{{i}}.{hf}.{kind}": f"blk.{{i}}.{gg}.{kind}"
        for hf, gg in (
            ("ln_1", "attn_norm"),
            ("attn.c_attn", "attn_qkv"),
            ("attn.c_proj", "attn_output"),
            ("ln_2", "ffn_norm"),
            ("mlp.c_fc", "ffn_up"),
            ("mlp.c_proj", "ffn_down"),
        )
        for kind in ("weight", "bias")
    },
}


def _config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    n_embd = cfg["n_embd"]
    return ModelConfig(
        arch="gpt2",
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["n_layer"],
        n_embd=n_embd,
        n_head=cfg["n_head"],
        n_head_kv=cfg["n_head"],
        n_ff=cfg.get("n_inner") or 4 * n_embd,
        ctx=cfg.get("n_positions", 1024),
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        tied_embeddings=True,
        bidirectional=bidirectional_of_hf(cfg),
    )


def _expected_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    shapes = {"token_embd.weight": (c.vocab_size, c.n_embd)}
    for i in range(c.n_layer):
        shapes |= {
            f"blk.{i}.attn_qkv.weight": (3 * c.n_embd, c.n_embd),
            f"blk.{i}.attn_output.weight": (c.n_embd, c.n_embd),
            f"blk.{i}.ffn_up.weight": (c.n_ff, c.n_embd),
            f"blk.{i}.ffn_down.weight": (c.n_embd, c.n_ff),
        }
    return shapes


@register
class GPT2(Model):
    gguf_archs = ("gpt2",)
    hf_model_types = ("gpt2",)
    hf_names = HF_NAMES
    hf_transposed = TRANSPOSED
    hf_adapter_paths = {
        "attn": ("transformer.h.{i}.attention_adapters.adapters",),
        "ffn": ("transformer.h.{i}.output_adapters.adapters",),
    }
    gguf_norm_eps = "attention.layer_norm_epsilon"
    config_from_hf = staticmethod(_config_from_hf)  # type: ignore[assignment]
    expected_shapes = staticmethod(_expected_shapes)  # type: ignore[assignment]

    @classmethod
    def write_hparams(cls, w: gguf.GGUFWriter, c: ModelConfig) -> None:
        write_decoder_hparams(w, c)
        w.add_layer_norm_eps(c.norm_eps)

    def required_weights(self) -> list[str]:
        names = ["token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"]
        for i in range(self.config.n_layer):
            names += [
                f"blk.{i}.{t}.{kind}"
                for t in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
                for kind in ("weight", "bias")
            ]
        return names

    def declare(self, g: GraphBuilder) -> None:
        c = self.config
        g.embed("token_embd", "x")
        g.embed("position_embd", "x", positions=True, accumulate=True)
        for i in range(c.n_layer):
            p = f"blk.{i}."
            g.layernorm(p + "attn_norm", "x", "h", c.norm_eps)
            g.linear(p + "attn_qkv", "h", "qkv")
            width = c.n_head * c.head_dim  # n_embd (a tensor-parallel rank's share: its heads)
            for j, part in enumerate("qkv"):
                g.copy(f"{p}attn_{part}", "qkv", part, j * width, width)
            g.attention(p + "attn", "q", "k", "v", "attn", i, c.n_head, c.n_head, c.head_dim, causal=c.causal)
            declare_residual(g, c.adapter, p, "attn", p + "attn_output", "attn")
            g.layernorm(p + "ffn_norm", "x", "h", c.norm_eps)
            g.linear(p + "ffn_up", "h", "ff", activation="gelu_tanh")
            declare_residual(g, c.adapter, p, "ffn", p + "ffn_down", "ff")
        g.select("x", "x_out")
        g.layernorm("output_norm", "x_out", "hidden", c.norm_eps)
        self.declare_lm_head(g, "hidden")
