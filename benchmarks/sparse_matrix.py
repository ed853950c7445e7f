"""One matrix, sparse against dense: the kernels alone, without a model around them.

    python -m benchmarks.sparse_matrix --threads 1 2 --rows 1 512

TinyLlama's FFN shape (5632 x 2048) as dense Q8_0 (16-row layout), Q8_0_S16 at 50% and 70% zeros
and Q8_0_24 (2:4), random weights. With one activation row, 16 copies of each matrix are used in
turn so that the weights stream from memory as in decode; with more rows (a prompt) one copy.
`--copies 1` keeps one-row GEMVs on one copy too, which stays in the last-level cache: then the
kernels' own speed shows, without memory's (a sparse kernel as fast per 16 x 32 block at 50% as at
70% zeros is bound by its instructions, not its bytes).
The layouts are interleaved within every repetition (a noisy machine slows them alike); prints
the median ms per matrix and the ratio to dense.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from corelm import _C
from corelm.kernels import Weight, WeightType, matmul
from corelm.quantize.sparsify import prune

N, K = 5632, 2048
COPIES = 16  # 16 x 11.5 MB dense: more than any cache here


def q8_0(zeros: float, seed: int, two_of_four: bool = False, tiles: bool = False) -> Weight:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    if two_of_four:
        w = prune(w, 0.5, (2, 4), None)
    if tiles:  # whole tiles of 16 x 32, `zeros` of each 16 rows
        w = prune(w, zeros, "block", None)
    else:
        w[rng.random((N, K)) < zeros] = 0
    return Weight.from_float(w, WeightType.Q8_0)


LAYOUTS = {
    "dense Q8_0": lambda seed: q8_0(0.0, seed).packed(),
    "Q8_0_S16 50%": lambda seed: q8_0(0.5, seed).sparse(),
    "Q8_0_S16 70%": lambda seed: q8_0(0.7, seed).sparse(),
    "Q8_0_24 2:4": lambda seed: q8_0(0.0, seed, two_of_four=True).sparse(WeightType.Q8_0_24),
    "Q8_0_B16 block 50%": lambda seed: q8_0(0.5, seed, tiles=True).sparse(WeightType.Q8_0_B16),
}


def measure(rows: int, threads: int, reps: int, weights: dict[str, list[Weight]]) -> dict[str, float]:
    """Median seconds per matrix of each layout."""
    x = np.random.default_rng(0).standard_normal((rows, K)).astype(np.float32)
    out = np.empty((rows, N), np.float32)
    times: dict[str, list[float]] = {name: [] for name in weights}
    _C.set_num_threads(threads)
    for _ in range(reps):
        for name, copies in weights.items():
            used = copies if rows == 1 else copies[:1]
            if rows == 1 and len(used) < COPIES:
                # From cache: the other layouts evicted this one, so one untimed pass brings it back,
                # and the timed passes make COPIES products, as from memory.
                for w in used:
                    matmul(x, w, out=out)
                used = used * (COPIES // len(used))
            t0 = time.perf_counter()
            for w in used:
                matmul(x, w, out=out)
            times[name].append((time.perf_counter() - t0) / len(used))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 512], help="activation rows (1: decode)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--copies", type=int, default=COPIES, help=f"GEMV matrices in turn ({COPIES}: memory; 1: cache)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    if args.copies < 1:
        ap.error("--copies must be at least 1")
    print("making the matrices ...", file=sys.stderr, flush=True)
    weights = {name: [make(seed) for seed in range(args.copies)] for name, make in LAYOUTS.items()}
    results = []
    for rows in args.rows:
        for t in args.threads:
            print(f"{rows} row(s), {t} thread(s) ...", file=sys.stderr, flush=True)
            results.append({"rows": rows, "threads": t, "seconds": measure(rows, t, args.reps, weights)})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{N} x {K}, {args.copies} copies, ms per matrix (median of {args.reps}; ratio to dense)\n")
    print("| rows | threads | " + " | ".join(LAYOUTS) + " |")
    print("|---|---|" + "---|" * len(LAYOUTS))
    for r in results:
        dense = r["seconds"]["dense Q8_0"]
        cells = [f"{s * 1e3:.3f} ({dense / s:.2f}x)" for s in r["seconds"].values()]
        print(f"| {r['rows']} | {r['threads']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
