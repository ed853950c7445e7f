"""Activation statistics for importance-weighted quantization.

For a matrix W used as y = x W^T, the output error of a quantized W' is x (W - W')^T; averaged
over inputs and keeping only the diagonal of E[x x^T], its square is
sum_col E[x_col^2] * sum_row (W - W')_row,col^2. So E[x_col^2], the mean square of each input
column, is how much the error in that column costs (llama.cpp's imatrix keeps the same number).

`activation_stats` runs the model over a calibration text, from an empty cache in windows,
with a graph hook that adds each matrix product's input x^2 to its weight's running sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from corelm.models.base import Hook, Model, Segment
from corelm.models.graph import Op


def _recording_hook(sums: dict[str, np.ndarray], counts: dict[str, int], gram: bool) -> Hook:
    """A graph hook adding each matrix product's input x^2, by column (or x^T x, when gram), to its weight's sums."""

    def hook(op: Op, x: np.ndarray | None, y: np.ndarray, seconds: float) -> None:
        if op.kind != "matmul" or x is None:
            return
        rows = x.astype(np.float64)
        sq = rows.T @ rows if gram else np.einsum("ij,ij->j", rows, rows)
        name = op.tensor
        sums[name] = sums[name] + sq if name in sums else sq
        counts[name] = counts.get(name, 0) + rows.shape[0]

    return hook


def activation_stats(
    model: Model,
    ids: Sequence[int],
    window: int = 512,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    gram: bool = False,
) -> dict[str, np.ndarray]:
    """Mean x^2 per input column [k] (gram: mean x x^T [k, k], SparseGPT's Hessian) of every matrix `model`
    multiplies, keyed by weight name,
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
    hook = _recording_hook(sums, counts, gram)
    for i, start in enumerate(starts):
        chunk = tokens[start : start + window]
        model.forward_batch(chunk, [Segment(model.new_cache(len(chunk)), 0, len(chunk))], all_logits=True, hook=hook)
        if progress:
            progress(i + 1, len(starts))
    return {name: (s / counts[name]).astype(np.float32) for name, s in sums.items()}
