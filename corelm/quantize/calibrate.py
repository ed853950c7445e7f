"""Activation statistics for importance-weighted quantization.

For a matrix W used as y = x W^T, the output error of a quantized W' is x (W - W')^T; averaged
over inputs and keeping only the diagonal of E[x x^T], its square is
sum_col E[x_col^2] * sum_row (W - W')_row,col^2. So E[x_col^2], the mean square of each input
column, is how much the error in that column costs (llama.cpp's imatrix keeps the same number).

`activation_stats` runs the model over a calibration text, from an empty cache in windows,
with corelm.kernels.matmul wrapped so each call adds x^2 to its weight's running sum. The
wrapper is installed only for the duration of the call (it is a module attribute: do not run
other forward passes on other threads meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import numpy as np

from corelm import kernels
from corelm.kernels import Weight
from corelm.models.base import Model


@contextmanager
def _recording_matmul(model: Model, sums: dict[str, np.ndarray], counts: dict[str, int]):
    names = {id(w): name for name, w in model.w.items() if isinstance(w, Weight)}
    original = kernels.matmul

    def matmul(x: np.ndarray, w: Weight, out: np.ndarray | None = None, **epilogue) -> np.ndarray:
        name = names.get(id(w))
        if name is not None:
            rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
            if name in sums:
                sums[name] += np.einsum("ij,ij->j", rows, rows)
            else:
                sums[name] = np.einsum("ij,ij->j", rows, rows)
            counts[name] = counts.get(name, 0) + rows.shape[0]
        return original(x, w, out, **epilogue)

    kernels.matmul = matmul  # type: ignore[assignment]  # same call, recording on the way
    try:
        yield
    finally:
        kernels.matmul = original


def activation_stats(
    model: Model,
    ids: Sequence[int],
    window: int = 512,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Mean x^2 per input column [k] of every matrix `model` multiplies, keyed by weight name,
    over the token ids `ids` evaluated in windows of `window` tokens (each from an empty
    cache; the first `max_tokens` ids only when given). Matrices never multiplied (e.g. an
    embedding used only for lookups) are absent."""
    tokens = np.asarray(ids, dtype=np.int32)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if tokens.size == 0:
        raise ValueError("the calibration text has no tokens")
    window = max(1, min(window, model.config.ctx))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    starts = range(0, len(tokens), window)
    with _recording_matmul(model, sums, counts):
        for i, start in enumerate(starts):
            chunk = tokens[start : start + window]
            model.forward(chunk, 0, model.new_cache(len(chunk)), all_logits=True)
            if progress:
                progress(i + 1, len(starts))
    return {name: (s / counts[name]).astype(np.float32) for name, s in sums.items()}
