"""Batched steps over several sequences, and a decode loop that allocates nothing per token."""

from __future__ import annotations

import tracemalloc

import numpy as np

from corelm.kernels import Weight, WeightType
from corelm.models.base import Model, ModelConfig, Segment
from corelm.models.llama import Llama


def random_llama(n_embd=256, n_ff=1024, vocab=4096, layers=2, seed=0) -> Llama:
    rng = np.random.default_rng(seed)
    c = ModelConfig(
        arch="llama",
        vocab_size=vocab,
        n_layer=layers,
        n_embd=n_embd,
        n_head=4,
        n_head_kv=2,
        n_ff=n_ff,
        ctx=256,
        norm_eps=1e-5,
    )
    hd = c.head_dim

    def mat(n, k):
        return Weight.from_float((rng.standard_normal((n, k)) * 0.05).astype(np.float32), WeightType.Q8_0)

    w = {
        "token_embd.weight": mat(vocab, n_embd),
        "output_norm.weight": np.ones(n_embd, np.float32),
        "output.weight": mat(vocab, n_embd),
    }
    for i in range(layers):
        p = f"blk.{i}."
        w.update(
            {
                p + "attn_norm.weight": np.ones(n_embd, np.float32),
                p + "ffn_norm.weight": np.ones(n_embd, np.float32),
                p + "attn_q.weight": mat(4 * hd, n_embd),
                p + "attn_k.weight": mat(2 * hd, n_embd),
                p + "attn_v.weight": mat(2 * hd, n_embd),
                p + "attn_output.weight": mat(n_embd, 4 * hd),
                p + "ffn_gate.weight": mat(n_ff, n_embd),
                p + "ffn_up.weight": mat(n_ff, n_embd),
                p + "ffn_down.weight": mat(n_embd, n_ff),
            }
        )
    return Llama(c, w)


def assert_batched_equals_alone(model: Model, prompts: list[np.ndarray], decode_steps: int = 1) -> None:
    """The prompts prefilled in one step (different lengths), then batched decode steps: every
    sequence's logits equal those of the same sequence run alone."""
    solo_caches = [model.new_cache(64) for _ in prompts]
    solo = [model.forward(p, 0, c).copy() for p, c in zip(prompts, solo_caches, strict=True)]
    caches = [model.new_cache(64) for _ in prompts]
    segs = [Segment(c, 0, len(p)) for c, p in zip(caches, prompts, strict=True)]
    batched = model.forward_batch(np.concatenate(prompts), segs).copy()
    np.testing.assert_allclose(batched, np.concatenate(solo), rtol=1e-4, atol=1e-4)
    for step in range(decode_steps):
        nxt = np.arange(len(prompts), dtype=np.int32) + 7 + step
        pos = [len(p) + step for p in prompts]
        alone = [model.forward(nxt[j : j + 1], pos[j], solo_caches[j]).copy() for j in range(len(prompts))]
        segs = [Segment(c, q, 1) for c, q in zip(caches, pos, strict=True)]
        np.testing.assert_allclose(model.forward_batch(nxt, segs), np.concatenate(alone), rtol=1e-4, atol=1e-4)


def test_batched_step_equals_separate_steps():
    rng = np.random.default_rng(1)
    assert_batched_equals_alone(random_llama(), [rng.integers(0, 4096, n).astype(np.int32) for n in (5, 1, 9)])


def test_decode_allocates_nothing_per_token():
    model = random_llama(n_embd=512, n_ff=2048, vocab=8192)
    cache = model.new_cache(64)
    logits = model.forward(np.arange(4, dtype=np.int32), 0, cache)
    token = np.zeros(1, np.int32)
    for pos in range(4, 6):  # warm up: the workspace for one-row steps is made here
        token[0] = int(logits[0].argmax())
        logits = model.forward(token, pos, cache)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for pos in range(6, 30):
            token[0] = int(logits[0].argmax())
            logits = model.forward(token, pos, cache)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One step's activations would be > 8 KB (ffn 2048 floats, logits 8192 floats = 32 KB).
    assert peak - base < 8 * 1024, f"decode steps allocated up to {peak - base} bytes"
