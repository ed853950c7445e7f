"""The native batched sampler (corelm._C.sample via corelm.engine.sampling.sample) against a plain
numpy reference of the same chain: bias, penalties, then top-k / top-p / min-p on the untempered
distribution, then temperature and a draw."""

from __future__ import annotations

import numpy as np
import pytest

from corelm import _C
from corelm.engine.sampling import SamplingParams, sample


def reference_kept(z: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Ids the filters keep, as corelm/engine/sampling.py documents them (no ties in z)."""
    ids = np.argsort(-z, kind="stable")
    if 0 < p.top_k < z.size:
        ids = ids[: p.top_k]
    probs = np.exp(z[ids].astype(np.float64) - z[ids[0]])
    probs /= probs.sum()
    if p.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
        ids, probs = ids[:keep], probs[:keep]
    if p.min_p > 0:
        ids = ids[probs >= p.min_p * probs[0]]
    return ids


def reference_penalized(z: np.ndarray, history: list[int], p: SamplingParams, bias: dict[int, float]) -> np.ndarray:
    z = z.astype(np.float32).copy()
    for i, v in bias.items():
        z[i] += v
    ids, counts = np.unique(np.asarray(history[-p.repeat_last_n :], np.int64), return_counts=True)
    vals = z[ids]
    vals = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
    z[ids] = vals - counts * p.frequency_penalty - p.presence_penalty
    return z


def draws(z: np.ndarray, p: SamplingParams, n: int, seed: int = 0) -> np.ndarray:
    """n tokens drawn from one row of logits: n rows of one call, each with its own state."""
    rng = np.arange(seed, seed + n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return sample(np.tile(z, (n, 1)), [p] * n, [[]] * n, [{}] * n, rng)


def test_greedy_is_argmax_exactly():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 1000)).astype(np.float32)
    logits[3, [10, 500]] = 9.0  # equal maxima: the first one, as np.argmax
    ids = sample(logits, [SamplingParams(temperature=0)] * 64, [[]] * 64, [{}] * 64, np.zeros(64, np.uint64))
    np.testing.assert_array_equal(ids, logits.argmax(axis=1))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0),
        SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
        SamplingParams(temperature=2.0, top_k=40, top_p=0.95, min_p=0.05),  # the defaults' chain
        SamplingParams(temperature=0.7, top_k=7, top_p=0.5, min_p=0.0),
    ],
    ids=["top_k", "top_p", "min_p", "all", "k_then_p"],
)
@pytest.mark.parametrize("vocab", [300, 50257])
def test_draws_stay_in_the_reference_kept_set(params, vocab):
    rng = np.random.default_rng(vocab)
    z = (rng.standard_normal(vocab) * 3).astype(np.float32)
    z[-3:] = z.max() + np.array([0.5, 1.0, 1.5], np.float32)  # the best in the tail after the last 64-chunk
    kept = set(reference_kept(z, params).tolist())
    got = draws(z, params, 400)
    assert set(got.tolist()) <= kept


def test_frequencies_follow_the_tempered_kept_set():
    z = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -4.0], np.float32)
    p = SamplingParams(temperature=0.7, top_k=5, top_p=0.95, min_p=0.05)
    kept = reference_kept(z, p)
    w = np.exp((z[kept] - z[kept].max()) / 0.7)
    expected = np.zeros(z.size)
    expected[kept] = w / w.sum()
    n = 40000
    freq = np.bincount(draws(z, p, n), minlength=z.size) / n
    np.testing.assert_allclose(freq, expected, atol=0.01)


def test_penalties_and_bias_match_the_reference():
    rng = np.random.default_rng(3)
    z = rng.standard_normal(500).astype(np.float32)
    history = rng.integers(0, 500, 100).tolist()
    p = SamplingParams(temperature=0, repeat_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2, repeat_last_n=32)
    bias = {int(z.argmin()): 100.0, int(z.argmax()): -100.0}
    (got,) = sample(z[None], [p], [history], [bias], np.zeros(1, np.uint64))
    assert got == int(reference_penalized(z, history, p, bias).argmax())


def test_rows_are_independent_and_seeds_repeat():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((3, 200)).astype(np.float32)
    params = [SamplingParams(temperature=1.0, seed=s) for s in (1, 2, 3)]
    states = np.array([p.rng_state() for p in params], np.uint64)
    batch = sample(logits, params, [[]] * 3, [{}] * 3, states.copy())
    alone = [sample(logits[i : i + 1], [params[i]], [[]], [{}], states[i : i + 1].copy())[0] for i in range(3)]
    np.testing.assert_array_equal(batch, alone)
    first, again = states.copy(), states.copy()
    a = [sample(logits, params, [[]] * 3, [{}] * 3, first).tolist() for _ in range(20)]
    b = [sample(logits, params, [[]] * 3, [{}] * 3, again).tolist() for _ in range(20)]
    assert a == b and len({tuple(r) for r in a}) > 1  # the state advances, and the same seed repeats it


def call(**change):
    """_C.sample on two rows of 10 logits, with some arguments changed."""
    args = {
        "logits": np.zeros((2, 10), np.float32),
        "temperature": np.ones(2, np.float32),
        "top_k": np.zeros(2, np.int32),
        "top_p": np.ones(2, np.float32),
        "min_p": np.zeros(2, np.float32),
        "repeat_penalty": np.ones(2, np.float32),
        "presence_penalty": np.zeros(2, np.float32),
        "frequency_penalty": np.zeros(2, np.float32),
        "recent": np.zeros(0, np.int32),
        "recent_offsets": np.zeros(3, np.int64),
        "bias_ids": np.zeros(0, np.int32),
        "bias_values": np.zeros(0, np.float32),
        "bias_offsets": np.zeros(3, np.int64),
        "rng": np.zeros(2, np.uint64),
    }
    args.update(change)
    return _C.sample(**args)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"logits": np.zeros((2, 10), np.float64)}, TypeError, "logits must have dtype float32"),
        ({"logits": np.zeros(10, np.float32)}, ValueError, "logits must be 2-D"),
        ({"top_p": np.ones(3, np.float32)}, ValueError, "top_p must be 1-D with 2 elements"),
        ({"top_k": np.zeros(2, np.int64)}, TypeError, "top_k must have dtype int32"),
        ({"top_p": np.array([1, 0], np.float32)}, ValueError, r"top_p must be above 0.*row 1"),
        ({"min_p": np.array([2, 0], np.float32)}, ValueError, "min_p must be from 0 to 1"),
        ({"repeat_penalty": np.array([0, 1], np.float32)}, ValueError, "repeat_penalty must be positive"),
        ({"temperature": np.array([np.nan, 1], np.float32)}, ValueError, "temperature must be a number"),
        ({"recent": np.array([3], np.int32)}, ValueError, "recent_offsets must start at 0 and end at len"),
        (
            {"recent": np.array([10], np.int32), "recent_offsets": np.array([0, 1, 1], np.int64)},
            ValueError,
            "recent holds token id 10, out of range",
        ),
        (
            {"bias_ids": np.array([1], np.int32), "bias_values": np.zeros(0, np.float32)},
            ValueError,
            "bias_values must be 1-D with 1 elements",
        ),
        ({"rng": np.zeros(2, np.uint64)[::-1]}, ValueError, "rng must be C-contiguous"),
        ({"rng": np.zeros(2, np.int64)}, TypeError, "rng must have dtype uint64"),
    ],
)
def test_bad_inputs_are_named(change, error, match):
    with pytest.raises(error, match=match):
        call(**change)
    assert call().shape == (2,)
