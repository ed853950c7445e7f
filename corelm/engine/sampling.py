"""Choosing the next token from logits: penalties, then top-k / top-p / min-p filters on the
untempered distribution, then temperature and a draw (llama.cpp's default order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off; divides positive (multiplies negative) logits of recent tokens
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64  # how many recent tokens the penalties look at
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "above 0 and at most 1"),
            ("min_p", 0 <= self.min_p <= 1, "from 0 to 1"),
            ("repeat_penalty", self.repeat_penalty > 0, "positive"),
        )
        for name, ok, wanted in checks:  # NaN fails every one of them
            if not ok:
                raise ValueError(f"{name} must be {wanted}, got {getattr(self, name)}")


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, in no particular order. Exact, but partitions only the
    candidates at least as large as the k-th largest of 64-element chunk maxima (k distinct
    elements, so the k-th largest logit is never below it): ~30x faster than argpartition over
    a 150k vocabulary, which took most of a small model's sampling time."""
    chunk = 64
    n = logits.size - logits.size % chunk
    if n // chunk <= 2 * k:
        return np.argpartition(-logits, k - 1)[:k]
    maxima = logits[:n].reshape(-1, chunk).max(axis=1)
    threshold = np.partition(maxima, maxima.size - k)[maxima.size - k]
    cand = np.flatnonzero(logits >= threshold)
    return cand[np.argpartition(-logits[cand], k - 1)[:k]]


class Sampler:
    """Stateful only through its random generator: the same seed gives the same tokens."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def apply_penalties(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        p = self.params
        if not history or (p.repeat_penalty == 1.0 and p.presence_penalty == 0 and p.frequency_penalty == 0):
            return logits
        recent = np.asarray(history[-p.repeat_last_n :] if p.repeat_last_n > 0 else history, dtype=np.int64)
        ids, counts = np.unique(recent, return_counts=True)
        logits = logits.copy()
        vals = logits[ids]
        vals = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        logits[ids] = vals - counts * p.frequency_penalty - p.presence_penalty
        return logits

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        logits = self.apply_penalties(np.asarray(logits, dtype=np.float32), history)
        if p.temperature <= 0:
            return int(np.argmax(logits))
        ids = top_k_ids(logits, p.top_k) if 0 < p.top_k < logits.size else np.arange(logits.size)
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        z = logits[ids].astype(np.float64)
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            ids, z, probs = ids[:keep], z[:keep], probs[:keep]
        if p.min_p > 0:
            keep = probs >= p.min_p * probs[0]
            ids, z = ids[keep], z[keep]
        w = np.exp((z - z[0]) / p.temperature)
        return int(ids[self.rng.choice(ids.size, p=w / w.sum())])
