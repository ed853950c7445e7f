"""Choosing the next token from logits: logit bias, penalties, then top-k / top-p / min-p filters
on the untempered distribution, then temperature and a draw (llama.cpp's default order).

The work is one native call for a whole batch (corelm._C.sample, csrc/core/sampling.cpp): each
row has its own parameters, penalty window, logit bias and random state. `sample` is that call
for rows described by SamplingParams; `Sampler` is the same for one sequence.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from corelm import _C


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off; divides positive (multiplies negative) logits of recent tokens
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64  # how many recent tokens the penalties look at (<= 0: all of them)
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

    @property
    def penalized(self) -> bool:
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0

    def rng_state(self) -> int:
        """The initial random state of a sequence: the seed (mod 2**64), else a fresh random one."""
        return self.seed % 2**64 if self.seed is not None else secrets.randbits(64)


def _runs(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids as one flat int32 array and the int64 offsets where each row starts (and the end)."""
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    flat = np.fromiter((i for r in rows for i in r), np.int32, count=int(offsets[-1]))
    return flat, offsets


def sample(
    logits: np.ndarray,
    params: Sequence[SamplingParams],
    histories: Sequence[Sequence[int]],
    biases: Sequence[Mapping[int, float]],
    rng: np.ndarray,
) -> np.ndarray:
    """One token id per row of logits [B, vocab] (int32 [B]): row r with params[r], penalties over
    the last repeat_last_n ids of histories[r], logit bias biases[r] (token id -> added to its
    logit), and random state rng[r] (uint64 [B], advanced in place)."""
    recent = [h[-p.repeat_last_n :] if p.repeat_last_n > 0 else h for p, h in zip(params, histories, strict=True)]
    recent_ids, recent_offsets = _runs([r if p.penalized else () for p, r in zip(params, recent, strict=True)])
    bias_ids, bias_offsets = _runs([list(b) for b in biases])
    bias_values = np.fromiter((v for b in biases for v in b.values()), np.float32, count=bias_ids.size)

    def column(name: str, dtype: type) -> np.ndarray:
        return np.array([getattr(p, name) for p in params], dtype)

    return _C.sample(
        np.ascontiguousarray(logits, dtype=np.float32),
        column("temperature", np.float32),
        np.array([min(max(p.top_k, 0), 2**31 - 1) for p in params], np.int32),
        column("top_p", np.float32),
        column("min_p", np.float32),
        column("repeat_penalty", np.float32),
        column("presence_penalty", np.float32),
        column("frequency_penalty", np.float32),
        recent_ids,
        recent_offsets,
        bias_ids,
        bias_values,
        bias_offsets,
        rng,
    )


class Sampler:
    """One sequence's sampler: the same seed gives the same tokens (its random state advances
    with each draw)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.array([params.rng_state()], np.uint64)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        row = np.asarray(logits, dtype=np.float32).reshape(1, -1)
        return int(sample(row, [self.params], [history], [{}], self.rng)[0])
