"""BERT-family encoders: BERT (MiniLM, BGE, ...), RoBERTa and DistilBERT, with their task heads.

Embeddings: x = LN(word + position + token type)   (RoBERTa's positions start at padding_idx + 1)
Per block (post-LayerNorm):  x = LN(x + Wo·attn(Wq·x, Wk·x, Wv·x));  x = LN(x + Wd·gelu(Wu·x))
Attention is bidirectional within each sequence of a batch: sequences are stored one after
another with no padding, and each attends to its own rows only (no KV cache).

GGUF: llama.cpp's `bert` layout and keys (token_types, token_embd_norm, attn_output_norm,
layer_output_norm; bert.pooling_type; bert.classifier.output_labels). RoBERTa and DistilBERT
are written in the same layout: RoBERTa's position rows before its first position are dropped
at load (as llama.cpp's converter does). corelm.* keys hold what llama.cpp has no key for:
DistilBERT's ReLU head, and a sentence-transformers folder's normalisation and max_seq_length.
"""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np

from corelm import kernels
from corelm.kernels import Weight
from corelm.models.adapter import declare_residual
from corelm.models.base import Model, ModelConfig, gguf_key, head_of_hf, register, write_shape_hparams
from corelm.models.graph import GraphBuilder

# Hugging Face parameter names (after the "bert." / "roberta." / "distilbert." prefix) -> GGUF
# names; "{i}" is the layer, "{kind}" weight or bias.
_LAYER_NAMES = {
    # BERT, RoBERTa
    "encoder.layer.{i}.attention.self.query": "attn_q",
    "encoder.layer.{i}.attention.self.key": "attn_k",
    "encoder.layer.{i}.attention.self.value": "attn_v",
    "encoder.layer.{i}.attention.output.dense": "attn_output",
    "encoder.layer.{i}.attention.output.LayerNorm": "attn_output_norm",
    "encoder.layer.{i}.intermediate.dense": "ffn_up",
    "encoder.layer.{i}.output.dense": "ffn_down",
    "encoder.layer.{i}.output.LayerNorm": "layer_output_norm",
    # DistilBERT
    "transformer.layer.{i}.attention.q_lin": "attn_q",
    "transformer.layer.{i}.attention.k_lin": "attn_k",
    "transformer.layer.{i}.attention.v_lin": "attn_v",
    "transformer.layer.{i}.attention.out_lin": "attn_output",
    "transformer.layer.{i}.sa_layer_norm": "attn_output_norm",
    "transformer.layer.{i}.ffn.lin1": "ffn_up",
    "transformer.layer.{i}.ffn.lin2": "ffn_down",
    "transformer.layer.{i}.output_layer_norm": "layer_output_norm",
}
_OTHER_NAMES = {
    "embeddings.LayerNorm": "token_embd_norm",
    # heads: the dense layer before the classifier, then the classifier
    "pooler.dense": "cls",  # BERT (tanh); kept only when a classifier follows
    "classifier.dense": "cls",  # RoBERTa (tanh)
    "pre_classifier": "cls",  # DistilBERT (ReLU)
    "classifier.out_proj": "cls.output",  # RoBERTa
    "classifier": "cls.output",
}
HF_NAMES = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    **{f"{hf}.{kind}": f"blk.{{i}}.{gg}.{kind}" for hf, gg in _LAYER_NAMES.items() for kind in ("weight", "bias")},
    **{f"{hf}.{kind}": f"{gg}.{kind}" for hf, gg in _OTHER_NAMES.items() for kind in ("weight", "bias")},
}
HF_PREFIXES = ("bert.", "roberta.", "distilbert.")
HF_MODEL_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta")
_LAYER_TENSORS = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_output_norm", "ffn_up", "ffn_down",
                  "layer_output_norm")  # fmt: skip

# llama.cpp's enum llama_pooling_type, as stored in {arch}.pooling_type
POOLING_TYPES = {"": 0, "mean": 1, "cls": 2, "last": 3}
RANK = 4  # a sequence classifier on the pooled state (llama.cpp's rerankers)


def _config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    head, labels = head_of_hf(cfg)
    if cfg["model_type"] == "distilbert":
        if cfg.get("sinusoidal_pos_embds"):
            raise ValueError("DistilBERT with sinusoidal position embeddings is not supported")
        activation = cfg.get("activation", "gelu")
        width, heads, layers, ff, eps = cfg["dim"], cfg["n_heads"], cfg["n_layers"], cfg["hidden_dim"], 1e-12
        head_act = "relu"
    else:
        activation = cfg.get("hidden_act", "gelu")
        width, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
        ff, eps, head_act = cfg["intermediate_size"], cfg.get("layer_norm_eps", 1e-12), "tanh"
    if activation != "gelu":
        raise ValueError(f"unsupported activation {activation!r} (supported: gelu)")
    roberta = cfg["model_type"] in ("roberta", "xlm-roberta")
    offset = int(cfg.get("pad_token_id", 1)) + 1 if roberta else 0
    return ModelConfig(
        arch="bert",
        vocab_size=cfg["vocab_size"],
        n_layer=layers,
        n_embd=width,
        n_head=heads,
        n_head_kv=heads,
        n_ff=ff,
        ctx=cfg.get("max_position_embeddings", 512) - offset,
        norm_eps=eps,
        causal=False,
        head=head,
        labels=labels,
        head_act=head_act,
        pos_offset=offset,
    )


def _config_from_gguf(meta: dict[str, Any], arch: str, weights: dict[str, Any]) -> ModelConfig:
    def get(key: str, default: Any = None) -> Any:
        return gguf_key(meta, arch, key, default)

    labels = [str(s) for s in get("classifier.output_labels", [])]
    pooling = int(get("pooling_type", 0))
    if pooling not in (*POOLING_TYPES.values(), RANK):
        raise ValueError(f"unknown bert.pooling_type {pooling}")
    head = ("sequence" if pooling == RANK else "token") if "cls.output.weight" in weights else ""
    if head and not labels:
        labels = [f"LABEL_{i}" for i in range(weights["cls.output.weight"].n)]
    heads = int(get("attention.head_count"))
    return ModelConfig(
        arch="bert",
        vocab_size=weights["token_embd.weight"].n,
        n_layer=int(get("block_count")),
        n_embd=int(get("embedding_length")),
        n_head=heads,
        n_head_kv=heads,
        n_ff=int(get("feed_forward_length")),
        ctx=int(get("context_length")),
        norm_eps=float(get("attention.layer_norm_epsilon")),
        causal=False,
        pooling={v: k for k, v in POOLING_TYPES.items()}.get(pooling, ""),
        head=head,
        labels=labels,
        head_act=str(meta.get("corelm.bert.head_activation", "tanh")),
        normalize=bool(meta.get("corelm.embedding.normalize", True)),
        max_tokens=int(meta.get("corelm.embedding.max_tokens", 0)),
    )


def _write_hparams(w: gguf.GGUFWriter, c: ModelConfig) -> None:
    write_shape_hparams(w, c)
    w.add_layer_norm_eps(c.norm_eps)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(RANK if c.head == "sequence" else POOLING_TYPES[c.default_pooling]))
    if c.labels:
        w.add_array("bert.classifier.output_labels", c.labels)
    if c.head_act != "tanh":
        w.add_string("corelm.bert.head_activation", c.head_act)
    # sentence-transformers settings llama.cpp has no key for
    w.add_bool("corelm.embedding.normalize", c.normalize)
    if c.max_tokens:
        w.add_uint32("corelm.embedding.max_tokens", c.max_tokens)


def _expected_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    shapes = {"token_embd.weight": (c.vocab_size, c.n_embd), "position_embd.weight": (c.ctx, c.n_embd)}
    for i in range(c.n_layer):
        shapes |= {f"blk.{i}.attn_{x}.weight": (c.n_embd, c.n_embd) for x in ("q", "k", "v", "output")}
        shapes |= {f"blk.{i}.ffn_up.weight": (c.n_ff, c.n_embd), f"blk.{i}.ffn_down.weight": (c.n_embd, c.n_ff)}
    return shapes


@register
class Bert(Model):
    gguf_archs = ("bert",)
    hf_model_types = HF_MODEL_TYPES
    hf_names = HF_NAMES
    hf_prefixes = HF_PREFIXES
    hf_adapter_paths = {  # BERT / RoBERTa, DistilBERT
        "attn": ("encoder.layer.{i}.attention.output.adapters", "transformer.layer.{i}.attention_adapters.adapters"),
        "ffn": ("encoder.layer.{i}.output.adapters", "transformer.layer.{i}.output_adapters.adapters"),
    }
    gguf_norm_eps = "attention.layer_norm_epsilon"
    config_from_hf = staticmethod(_config_from_hf)  # type: ignore[assignment]
    config_from_gguf = staticmethod(_config_from_gguf)  # type: ignore[assignment]
    write_hparams = staticmethod(_write_hparams)  # type: ignore[assignment]
    expected_shapes = staticmethod(_expected_shapes)  # type: ignore[assignment]

    def __init__(self, config: ModelConfig, weights: dict[str, Any]) -> None:
        if config.pos_offset:  # RoBERTa: drop the position rows no token uses, so positions start at 0
            wpe, skip = weights["position_embd.weight"], config.pos_offset
            weights["position_embd.weight"] = Weight(wpe.data[skip:], wpe.type, wpe.n - skip, wpe.k)
            config.pos_offset = 0
        super().__init__(config, weights)
        # One segment per text: every token is of type 0, whose embedding is added to all of them.
        types = weights.get("token_types.weight")
        self.token_type0 = kernels.embedding(types, np.zeros(1, np.int32))[0] if types is not None else None

    def lookup_only_weights(self) -> set[str]:
        return {"token_embd.weight", "position_embd.weight", "token_types.weight"}

    def required_weights(self) -> list[str]:
        names = ["token_embd.weight", "position_embd.weight", "token_embd_norm.weight", "token_embd_norm.bias"]
        for i in range(self.config.n_layer):
            names += [f"blk.{i}.{t}.{kind}" for t in _LAYER_TENSORS for kind in ("weight", "bias")]
        return names

    def declare(self, g: GraphBuilder) -> None:
        c = self.config
        g.embed("token_embd", "x")
        g.embed("position_embd", "x", positions=True, accumulate=True)
        if self.token_type0 is not None:
            g.add_vector("token_types", "x", self.token_type0, "x")
        g.layernorm("token_embd_norm", "x", "x", c.norm_eps)
        for i in range(c.n_layer):
            p = f"blk.{i}."
            for proj in ("q", "k", "v"):
                g.linear(p + "attn_" + proj, "x", proj)
            g.attention(p + "attn", "q", "k", "v", "attn", i, c.n_head, c.n_head, c.head_dim, causal=False)
            declare_residual(g, c.adapter, p, "attn", p + "attn_output", "attn", p + "attn_output_norm", c.norm_eps)
            g.linear(p + "ffn_up", "x", "ff", activation="gelu_erf")
            declare_residual(g, c.adapter, p, "ffn", p + "ffn_down", "ff", p + "layer_output_norm", c.norm_eps)
        g.select("x", "hidden")  # post-LayerNorm: every block already ends normalised
