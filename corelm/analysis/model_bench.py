"""`corelm bench MODEL`: prefill and decode tokens/s, as llama-bench's pp and tg.

pp: one forward pass over a prompt of p random tokens from an empty cache.
tg: n single-token forward passes (each on the previous step's argmax), after a 16-token
prompt, as rivals measure decode. Reported as the median over repetitions, with the spread.
Encoders (and classifiers without a language-model head) have pp only: one forward pass over
p tokens as one sequence (at most the model's positions).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from os import PathLike

import numpy as np

from corelm import _C
from corelm.llm import LLM, load
from corelm.models.base import Segment


@dataclass
class ModelBenchResult:
    model: str
    threads: int
    test: str  # "pp512" / "tg128"
    tokens_per_s: float  # median
    min_tokens_per_s: float
    max_tokens_per_s: float
    reps: int
    collective_ms_per_token: float | None = None  # tensor parallel: rank 0's time in all-reduce / gather


def _prefill_seconds(llm: LLM, tokens: np.ndarray) -> float:
    t0 = time.perf_counter()
    if "generate" in llm.capabilities:  # as llama-bench: the last token's logits included
        llm.model.forward(tokens, 0, llm.model.new_cache(len(tokens)))
    else:
        cache = llm.model.new_cache(len(tokens)) if llm.config.causal else None
        llm.model.hidden_states(tokens, [Segment(cache, 0, len(tokens))])
    return time.perf_counter() - t0


def _decode_seconds(llm: LLM, prompt: np.ndarray, n: int) -> float:
    cache = llm.model.new_cache(len(prompt) + n)
    logits = llm.model.forward(prompt, 0, cache)
    token = np.zeros(1, np.int32)
    t0 = time.perf_counter()
    for pos in range(len(prompt), len(prompt) + n):
        token[0] = int(logits[0].argmax())
        logits = llm.model.forward(token, pos, cache)
    return time.perf_counter() - t0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_model(
    path: str | PathLike[str],
    prompt_tokens: int = 512,
    gen_tokens: int = 128,
    threads: Sequence[int] = (2,),
    reps: int = 3,
    quant: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """Load once, then measure pp/tg at each thread count; a JSON-ready dict."""
    t0 = time.perf_counter()
    llm = load(path, quant=quant)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vocab = llm.config.vocab_size
    if not llm.config.causal:
        prompt_tokens = min(prompt_tokens, llm.config.ctx)
    if "generate" not in llm.capabilities:
        gen_tokens = 0  # nothing to decode
    group = llm.model.group  # tensor parallel over MPI ranks (corelm.distributed), or None
    results = []
    for t in threads:
        (group.set_num_threads if group else _C.set_num_threads)(t)
        for test, n in (("pp", prompt_tokens), ("tg", gen_tokens)):
            if n <= 0:
                continue
            rates = []
            for r in range(reps + 1):  # the first run warms caches and pages, and is dropped
                progress(f"{test}{n}, {t} thread(s), " + (f"run {r}/{reps}" if r else "warm-up run"))
                if group and r == 1:
                    group.stats(reset=True)
                if test == "pp":
                    s = _prefill_seconds(llm, rng.integers(0, vocab, n).astype(np.int32))
                else:
                    s = _decode_seconds(llm, rng.integers(0, vocab, 16).astype(np.int32), n)
                if r:
                    rates.append(n / s)
            median = statistics.median(rates)
            result = ModelBenchResult(str(path), t, f"{test}{n}", median, min(rates), max(rates), reps)
            if group:  # decode's prompt steps included: 16 of every n + 16 tokens
                tokens = reps * (n if test == "pp" else n + 16)
                result.collective_ms_per_token = 1e3 * group.stats()[0]["collective_seconds"] / tokens
            results.append(result)
    weights_bytes = sum(getattr(w, "nbytes", 0) for w in llm.model.w.values())
    report = {
        "model": str(path),
        "arch": llm.config.arch,
        "isa": _C.isa(),
        "load_seconds": load_s,
        "peak_rss_mib": peak_rss_mib(),
        "weights_mib": weights_bytes / 2**20,
        "results": [asdict(r) for r in results],
    }
    if group:  # every rank's memory: its share of the weights, what it holds resident
        report["ranks"] = group.stats()
    return report


def format_model_report(report: dict) -> str:
    ranks = report.get("ranks", [])
    lines = [
        f"{report['model']} ({report['arch']}, {report['weights_mib']:.1f} MiB of weights, path {report['isa']})",
        f"load {report['load_seconds']:.2f} s, peak resident memory {report['peak_rss_mib']:.0f} MiB",
    ]
    if ranks:
        lines.append(f"tensor parallel over {len(ranks)} ranks (threads: per rank):")
        for r in ranks:
            lines.append(
                f"  rank {r['rank']}: {r['weights_mib']:.1f} MiB of weights, resident {r['rss_mib']:.0f} MiB "
                f"(peak {r['peak_rss_mib']:.0f} MiB)"
            )
    header = f"{'test':>8} {'threads':>7} {'tok/s':>9} {'min':>9} {'max':>9}"
    lines += ["", header + (f" {'comm ms/tok':>12}" if ranks else "")]
    for r in report["results"]:
        line = (
            f"{r['test']:>8} {r['threads']:>7} {r['tokens_per_s']:>9.2f} {r['min_tokens_per_s']:>9.2f} "
            f"{r['max_tokens_per_s']:>9.2f}"
        )
        if r.get("collective_ms_per_token") is not None:
            line += f" {r['collective_ms_per_token']:>12.3f}"
        lines.append(line)
    return "\n".join(lines)
