"""Whole-model decode under each CPU's decode tuning (kernel_table.h's DecodeTuning), in one run.

    python -m benchmarks.decode_tuning bench-models/tinyllama-sparse-dense.gguf bench-models/tinyllama-sparse-50.gguf

For each model and thread count, one process loads the model and decodes --steps tokens greedily
under Intel's tuning (4 Q8_0_S16 row groups at once, prefetch 2 KB ahead), Zen 4's (one group, no
prefetch ahead except Q6_K) and Zen 5's (one group, prefetch 8 KB ahead except Q8_0_X16), switched with
_C._decode_tuning between runs and interleaved; prints the median tokens/s of --reps and each
tuning's ratio to Intel's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TUNINGS = {"Intel": (2048, 4, True), "Zen 4": (0, 1, True), "Zen 5": (8192, 1, False)}  # _C._decode_tuning's
PROMPT = 16


def measure(path: str, threads: int, steps: int, reps: int) -> dict[str, float]:
    import numpy as np

    import corelm
    from corelm import _C

    llm = corelm.load(path, threads=threads, ctx=PROMPT + steps + 1)
    m = llm.model
    prompt = np.random.default_rng(2).integers(100, llm.config.vocab_size, PROMPT).astype(np.int32)

    def decode(n: int) -> float:
        cache = m.new_cache(PROMPT + n + 1)
        logits = m.forward(prompt, 0, cache)
        tok = np.zeros(1, np.int32)
        t0 = time.perf_counter()
        for pos in range(PROMPT, PROMPT + n):
            tok[0] = int(logits[0].argmax())
            logits = m.forward(tok, pos, cache)
        return n / (time.perf_counter() - t0)

    decode(4)  # warm up
    runs: dict[str, list[float]] = {name: [] for name in TUNINGS}
    for _ in range(reps):
        for name, tuning in TUNINGS.items():
            _C._decode_tuning(*tuning)
            runs[name].append(decode(steps))
    return {name: statistics.median(r) for name, r in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.reps)))
        return 0
    print("| model | threads | " + " | ".join(f"{name} tuning tok/s" for name in TUNINGS) + " |")
    print("|---|---|" + "---|" * len(TUNINGS))
    for t in args.threads:
        for model in args.models:
            cmd = [sys.executable, "-m", "benchmarks.decode_tuning", str(model), "--one", str(model), str(t)]
            cmd += ["--steps", str(args.steps), "--reps", str(args.reps)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            cells = [f"{r[name]:.1f} ({r[name] / r['Intel']:.2f}x)" for name in TUNINGS]
            print(f"| {model.name} | {t} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
