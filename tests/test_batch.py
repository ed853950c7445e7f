"""Batched steps over several sequences, and a decode loop that allocates nothing per token."""

from __future__ import annotations

import tracemalloc

import numpy as np

from corelm.kernels import Weight, WeightType
from corelm.models.base import ModelConfig, Segment
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


def test_batched_step_equals_separate_steps():
    model = random_llama()
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 4096, n).astype(np.int32) for n in (5, 1, 9)]
    # Separately: prefill each prompt, then one decode step each.
    solo_caches = [model.new_cache(32) for _ in prompts]
    solo = [model.forward(p, 0, c).copy() for p, c in zip(prompts, solo_caches, strict=True)]
    # Batched: the three prefills as one step (different lengths), then a batched decode step.
    caches = [model.new_cache(32) for _ in prompts]
    segs = [Segment(c, 0, len(p)) for c, p in zip(caches, prompts, strict=True)]
    batched = model.forward_batch(np.concatenate(prompts), segs).copy()
    np.testing.assert_allclose(batched, np.concatenate(solo), rtol=1e-4, atol=1e-4)
    nxt = np.array([7, 8, 9], np.int32)
    solo_next = [
        model.forward(nxt[i : i + 1], len(p), c).copy()
        for i, (p, c) in enumerate(zip(prompts, solo_caches, strict=True))
    ]
    segs = [Segment(c, len(p), 1) for c, p in zip(caches, prompts, strict=True)]
    np.testing.assert_allclose(model.forward_batch(nxt, segs), np.concatenate(solo_next), rtol=1e-4, atol=1e-4)


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
