"""GPT-2: learned positions, LayerNorm, GELU (tanh), fused QKV, tied embeddings.

Per block: x += Wo·attn(split(Wqkv·ln1(x)) + b);  x += Wd·gelu(Wu·ln2(x) + bu) + bd
"""

from __future__ import annotations

from typing import Any

import numpy as np

from corelm import _C, kernels
from corelm.models.base import Model, ModelConfig, Step

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


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
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
        qkv_bias=True,
    )


def expected_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    shapes = {"token_embd.weight": (c.vocab_size, c.n_embd)}
    for i in range(c.n_layer):
        shapes |= {
            f"blk.{i}.attn_qkv.weight": (3 * c.n_embd, c.n_embd),
            f"blk.{i}.attn_output.weight": (c.n_embd, c.n_embd),
            f"blk.{i}.ffn_up.weight": (c.n_ff, c.n_embd),
            f"blk.{i}.ffn_down.weight": (c.n_embd, c.n_ff),
        }
    return shapes


class GPT2(Model):
    def required_weights(self) -> list[str]:
        names = ["token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"]
        for i in range(self.config.n_layer):
            names += [
                f"blk.{i}.{t}.{kind}"
                for t in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
                for kind in ("weight", "bias")
            ]
        return names

    def buffer_shapes(self, t: int) -> dict[str, tuple[int, ...]]:
        c = self.config
        return {
            "x": (t, c.n_embd),
            "pos_embd": (t, c.n_embd),
            "h": (t, c.n_embd),
            "qkv": (t, 3, c.n_head, c.head_dim),
            "q": (t, c.n_head, c.head_dim),
            "k": (t, c.n_head, c.head_dim),
            "v": (t, c.n_head, c.head_dim),
            "attn": (t, c.n_embd),
            "ff": (t, c.n_ff),
        }

    def embed(self, tokens: np.ndarray, step: Step) -> np.ndarray:
        x = kernels.embedding(self.w["token_embd.weight"], tokens, out=step.ws["x"])
        pos = kernels.embedding(self.w["position_embd.weight"], step.positions, out=step.ws["pos_embd"])
        return _C.add(x, pos, out=x)

    def block(self, x: np.ndarray, layer: int, step: Step) -> None:
        c, p, b = self.config, f"blk.{layer}.", step.ws
        t = x.shape[0]
        h = _C.layernorm(x, self.w[p + "attn_norm.weight"], self.w[p + "attn_norm.bias"], c.norm_eps, out=b["h"])
        qkv = self.linear(h, p + "attn_qkv", b["qkv"].reshape(t, -1)).reshape(b["qkv"].shape)
        q, k, v = b["q"], b["k"], b["v"]
        for i, dst in enumerate((q, k, v)):
            np.copyto(dst, qkv[:, i])
        a = self.attention(q, k, v, layer, step, out=b["attn"])
        self.linear(a, p + "attn_output", x, residual=x)
        h = _C.layernorm(x, self.w[p + "ffn_norm.weight"], self.w[p + "ffn_norm.bias"], c.norm_eps, out=b["h"])
        f = self.linear(h, p + "ffn_up", b["ff"], activation="gelu_tanh")
        self.linear(f, p + "ffn_down", x, residual=x)

    def final_norm(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return _C.layernorm(x, self.w["output_norm.weight"], self.w["output_norm.bias"], self.config.norm_eps, out=out)
