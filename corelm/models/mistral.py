"""Mistral: Llama whose attention sees only each row's last `sliding_window` keys (itself
included, as transformers' sliding-window mask does).

GGUF: written as llama.cpp's `llama` (its converter does the same) with the window under
llama.attention.sliding_window (gguf-py's Keys.Attention.SLIDING_WINDOW), which Llama reads back,
so the window survives the round trip. Such a file therefore loads as a Llama: the window is all
that sets Mistral apart, and the config carries it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from corelm.models.base import ModelConfig, register
from corelm.models.llama import Llama


def _config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    window = int(cfg.get("sliding_window") or 0)  # null: full attention (Mistral 7B v0.2 on)
    return dataclasses.replace(Llama.config_from_hf({**cfg, "sliding_window": None}), sliding_window=window)


@register
class Mistral(Llama):
    gguf_archs = ()  # its files say "llama" (see above)
    hf_model_types = ("mistral",)
    config_from_hf = staticmethod(_config_from_hf)  # type: ignore[assignment]
