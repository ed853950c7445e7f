"""Prefix cache: time to first token of a request whose long system prompt the server has seen.

    python -m benchmarks.prefix_cache [MODEL] --system-tokens 500 --rounds 5

Starts `corelm serve` (as benchmarks/load_test.py does). Each round takes a new system prompt
of about --system-tokens tokens (consecutive text of tinyshakespeare.txt, a different part each
round) and sends two streaming completions one after the other: the system prompt and a first
question (cold: the whole prompt is prefilled), then the same system prompt and another
question (warm: its keys and values come from the slot the first one left). Reports the median
time to first token of each, their ratio, and the prompt tokens /metrics counts as cached.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import corelm
from benchmarks.load_test import Server, one_request
from corelm.llm import DEFAULT_MODEL

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "tinyshakespeare.txt"
QUESTIONS = ("\n\nFIRST CITIZEN:\nWhat says the king?", "\n\nSECOND CITIZEN:\nWho comes here?")


def system_prompts(model: str, tokens: int, rounds: int) -> list[str]:
    """`rounds` different texts of about `tokens` tokens each (cut on the model's own tokens)."""
    tok = corelm.load(model).tokenizer
    assert tok is not None
    text = CORPUS.read_text()
    out = []
    for r in range(rounds):
        ids = tok.encode(text[r * 8 * tokens : (r + 1) * 8 * tokens], add_bos=False)  # ~8 characters a token, or fewer
        out.append(tok.decode(ids[:tokens]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="default: corelm's own model")
    ap.add_argument("--system-tokens", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=4, help="tokens generated per request")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024, help="slot context (past a small model's own, for timing)")
    args = ap.parse_args(argv)
    systems = system_prompts(args.model, args.system_tokens, args.rounds)
    server = Server(args.model, args.threads, parallel=2, queue=4, ctx=args.ctx)
    cold, warm, cached = [], [], []
    try:
        one_request(server.port, "Warm up", args.max_tokens, timeout=600)
        for system in systems:
            _, ttft, _ = one_request(server.port, system + QUESTIONS[0], args.max_tokens, timeout=600)
            cold.append(ttft)
            before = server.metrics()["corelm_prompt_tokens_cached_total"]
            _, ttft, _ = one_request(server.port, system + QUESTIONS[1], args.max_tokens, timeout=600)
            warm.append(ttft)
            cached.append(server.metrics()["corelm_prompt_tokens_cached_total"] - before)
    finally:
        server.stop()
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"model {Path(args.model).name}, system prompt {args.system_tokens} tokens, {args.threads} threads")
    print(f"time to first token, median of {args.rounds}: first request {c * 1000:.1f} ms, second {w * 1000:.1f} ms")
    reused = statistics.median(cached)
    print(f"second request {c / w:.1f}x faster; prompt tokens reused per second request: {reused:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
