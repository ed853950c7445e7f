"""The decoding loop: prefill the prompt in one forward pass, then one token per step.

    logits = prefill(prompt)              # [vocab] of the last prompt position
    repeat: token = sample(logits); emit; logits = decode_one(token)

Stop conditions: a stop token (unless ignore_eos), max_tokens, or a full context.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from corelm.engine.kv_cache import KVCache
from corelm.engine.sampling import Sampler
from corelm.models.base import Model


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop", "length"
    timestamps: list[float] = field(default_factory=list, repr=False)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        # The first token comes from the prefill's logits; later ones each cost a decode step.
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds and steps else 0.0


def generate_tokens(
    model: Model,
    cache: KVCache,
    prompt: Sequence[int],
    max_tokens: int,
    sampler: Sampler,
    stop_ids: frozenset[int] = frozenset(),
    ignore_eos: bool = False,
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yields generated token ids; fills `stats` as it goes."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt)
    history = list(prompt)
    t0 = time.perf_counter()
    logits = model.forward(np.asarray(prompt, dtype=np.int32), 0, cache)[0]
    stats.prefill_seconds = time.perf_counter() - t0
    pos = len(prompt)
    token_buf = np.zeros(1, dtype=np.int32)
    t_decode = time.perf_counter()
    stats.finish_reason = "length"
    for step in range(max_tokens):
        token = sampler(logits, history)
        if token in stop_ids and not ignore_eos:
            stats.finish_reason = "stop"
            break
        history.append(token)
        stats.generated_tokens += 1
        yield token
        if step == max_tokens - 1:
            break
        if pos >= cache.capacity:
            break  # the context is full
        token_buf[0] = token
        logits = model.forward(token_buf, pos, cache)[0]
        pos += 1
        stats.decode_seconds = time.perf_counter() - t_decode
