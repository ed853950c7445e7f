"""One measurement of one runtime, run in its own process so thread settings and memory
never leak between runtimes:

    python -m benchmarks.runners RUNTIME MODEL_PATH THREADS PROMPT_TOKENS GEN_TOKENS

prints one JSON line {"pp": tokens/s, "tg": tokens/s}. pp: one forward pass over a prompt
of random token ids; tg: greedy decode steps after a 16-token prompt (the first generated
token, which comes from the prompt's logits, is not counted as a decode step).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

PROMPT_FOR_DECODE = 16


def _tokens(vocab: int, n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(100, vocab, n).tolist()


def run_corelm(path: str, threads: int, p: int, n: int) -> dict:
    import corelm

    llm = corelm.load(path, threads=threads, ctx=max(p, PROMPT_FOR_DECODE + n) + 1)
    m, vocab = llm.model, llm.config.vocab_size
    m.forward(np.array(_tokens(vocab, 8, 9), np.int32), 0, m.new_cache(16))  # warm up
    t0 = time.perf_counter()
    m.forward(np.array(_tokens(vocab, p, 1), np.int32), 0, m.new_cache(p))
    pp = p / (time.perf_counter() - t0)
    cache = m.new_cache(PROMPT_FOR_DECODE + n + 1)
    logits = m.forward(np.array(_tokens(vocab, PROMPT_FOR_DECODE, 2), np.int32), 0, cache)
    tok = np.zeros(1, np.int32)
    t0 = time.perf_counter()
    for pos in range(PROMPT_FOR_DECODE, PROMPT_FOR_DECODE + n):
        tok[0] = int(logits[0].argmax())
        logits = m.forward(tok, pos, cache)
    return {"pp": pp, "tg": n / (time.perf_counter() - t0)}


def run_llamacpp(path: str, threads: int, p: int, n: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=max(p, PROMPT_FOR_DECODE + n) + 8,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        n_ubatch=512,
        verbose=False,
        logits_all=False,
    )
    vocab = llm.n_vocab()
    llm.eval(_tokens(vocab, 8, 9))
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(_tokens(vocab, p, 1))
    pp = p / (time.perf_counter() - t0)
    llm.reset()
    llm.eval(_tokens(vocab, PROMPT_FOR_DECODE, 2))

    def last_argmax() -> int:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(vocab,)).argmax())

    t0 = time.perf_counter()
    for _ in range(n):
        llm.eval([last_argmax()])
    return {"pp": pp, "tg": n / (time.perf_counter() - t0)}


def run_ctranslate2(path: str, threads: int, p: int, n: int) -> dict:
    import ctranslate2

    gen = ctranslate2.Generator(path, device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1)
    with open(os.path.join(path, "vocabulary.json")) as f:
        vocab_list = json.load(f)

    def words(ids: list[int]) -> list[str]:
        return [vocab_list[i] for i in ids]

    gen.forward_batch([words(_tokens(len(vocab_list), 8, 9))])
    t0 = time.perf_counter()
    gen.forward_batch([words(_tokens(len(vocab_list), p, 1))])
    pp = p / (time.perf_counter() - t0)
    prompt = words(_tokens(len(vocab_list), PROMPT_FOR_DECODE, 2))
    t0 = time.perf_counter()
    gen.forward_batch([prompt])
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen.generate_batch(
        [prompt], max_length=n + 1, min_length=n + 1, sampling_topk=1, include_prompt_in_result=False, end_token=[]
    )
    # generate_batch includes the prompt's forward pass; the n decode steps are the rest.
    return {"pp": pp, "tg": n / max(time.perf_counter() - t0 - prefill, 1e-9)}


def run_transformers(path: str, threads: int, p: int, n: int, dtype: str) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    vocab = model.config.vocab_size
    with torch.no_grad():
        model(torch.tensor([_tokens(vocab, 8, 9)]))
        t0 = time.perf_counter()
        model(torch.tensor([_tokens(vocab, p, 1)]))
        pp = p / (time.perf_counter() - t0)
        out = model(torch.tensor([_tokens(vocab, PROMPT_FOR_DECODE, 2)]), use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        t0 = time.perf_counter()
        for _ in range(n):
            out = model(logits.argmax(-1, keepdim=True), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
    return {"pp": pp, "tg": n / (time.perf_counter() - t0)}


RUNNERS = {
    "corelm": run_corelm,
    "llama.cpp": run_llamacpp,
    "ctranslate2": run_ctranslate2,
    "transformers-fp32": lambda *a: run_transformers(*a, dtype="float32"),
    "transformers-bf16": lambda *a: run_transformers(*a, dtype="bfloat16"),
}

if __name__ == "__main__":
    runtime, path, threads, p, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps(RUNNERS[runtime](path, threads, p, n)))
