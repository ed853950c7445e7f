"""Run by tests/test_distributed.py under `mpirun -n N python mpi_worker.py SPEC`, and imported by
it for the single-process reference: the same computations either way.

SPEC is JSON: {"model": path, "out": path.npz, "mode": "logits" | "engine" | "loop", "quant": ...}.
Every rank loads the model split over the ranks; only rank 0 returns from corelm.load, computes
and writes `out`; the other ranks follow its steps and exit when it does.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import corelm
from corelm.engine.sampling import SamplingParams
from corelm.engine.scheduler import Engine, Request

N_IDS, N_PREFILL = 40, 25


def ids_for(llm: corelm.LLM) -> list[int]:
    return [int(i) for i in np.random.default_rng(0).integers(0, llm.config.vocab_size, size=N_IDS)]


def logits(llm: corelm.LLM) -> dict[str, np.ndarray]:
    """Logits of a whole prompt, of a prefill then cached decode steps, and greedy text."""
    ids = ids_for(llm)
    cache = llm.model.new_cache(N_IDS)
    rows = [llm.model.forward(np.array(ids[:N_PREFILL]), 0, cache, all_logits=True).copy()]
    for pos in range(N_PREFILL, N_IDS):
        rows.append(llm.model.forward(np.array([ids[pos]]), pos, cache).copy())
    greedy = llm.generate(ids[:6], max_tokens=24, temperature=0, ignore_eos=True)
    return {"full": llm.logits(ids), "decode": np.concatenate(rows), "text": np.array(greedy)}


def engine(llm: corelm.LLM) -> dict[str, np.ndarray]:
    """Continuous batching: 4 requests over 3 slots (one waits), the last sharing a running
    sequence's prompt (its keys and values are copied from that slot: the prefix cache)."""
    ids = ids_for(llm)
    eng = Engine(llm.model, llm.tokenizer, slots=3, ctx=96, prefill_chunk=16)
    greedy, sampled = SamplingParams(temperature=0), SamplingParams(temperature=0.8, seed=5)
    prompts = [(ids[:20], greedy), (ids[5:12], sampled), (ids[10:40], greedy)]
    seqs = [eng.add(Request(p, max_tokens=16, params=s, ignore_eos=True)) for p, s in prompts]
    for _ in range(3):  # the first sequence's prompt is in its slot after these steps
        eng.step()
    seqs.append(eng.add(Request(ids[:20] + ids[30:34], max_tokens=16, params=greedy, ignore_eos=True)))
    while eng.busy:
        eng.step()
    return {"tokens": np.array([s.tokens for s in seqs]), "cached": np.array([s.stats.cached_tokens for s in seqs])}


def main() -> None:
    spec = json.loads(sys.argv[1])
    llm = corelm.load(spec["model"], quant=spec.get("quant"), threads=spec.get("threads", 1))  # rank 0 only goes on
    if spec["mode"] == "loop":  # until killed
        print("generating", flush=True)
        while True:
            llm.generate(ids_for(llm)[:8], max_tokens=32, temperature=0, ignore_eos=True)
    result = logits(llm) if spec["mode"] == "logits" else engine(llm)
    group = llm.model.group
    ranks = group.stats() if group is not None else []
    np.savez(spec["out"], ranks=np.array(json.dumps(ranks)), **result)


if __name__ == "__main__":
    main()
