"""How far ahead one-row GEMVs should prefetch on this CPU: every 16-row weight layout, every distance.

    python -m benchmarks.prefetch_distance --threads 1 2

TinyLlama's FFN shape (5632 x 2048), random weights, one activation row (decode), 16 copies of each
matrix used in turn so the weights stream from memory. Each distance is set with _C._decode_tuning
(0: no prefetching; Q6_K then still fetches 2 KB ahead; Q8_0_X16 prefetches here even where the CPU's
tuning leaves it out) and the distances are interleaved within
every repetition; prints the median microseconds per matrix and each distance's speed-up over 0.
What it measured chose the tuning in csrc/core/dispatch.cpp (the figures: csrc/kernels/x86/groups.h).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks import sparse_matrix
from benchmarks.sparse_matrix import COPIES, K, N
from corelm import _C
from corelm.kernels import Weight, WeightType, matmul


def _dense(t: WeightType) -> Callable[[int], Weight]:
    def make(seed: int) -> Weight:
        w = np.random.default_rng(seed).standard_normal((N, K)).astype(np.float32)
        return Weight.from_float(w, t).packed()

    return make


# The dense 16-row layouts, then benchmarks/sparse_matrix.py's sparse ones (each made from a seed).
LAYOUTS: dict[str, Callable[[int], Weight]] = {
    **{
        f"{t.name}_X16": _dense(t)
        for t in (WeightType.Q8_0, WeightType.Q4_0, WeightType.Q4_1, WeightType.Q4_K, WeightType.Q6_K)
    },
    **{name: make for name, make in sparse_matrix.LAYOUTS.items() if name != "dense Q8_0"},
}


def measure(weights: dict[str, list[Weight]], distances: list[int], reps: int) -> dict[str, dict[int, float]]:
    """Median seconds per matrix, per layout and distance."""
    x = np.random.default_rng(0).standard_normal((1, K)).astype(np.float32)
    out = np.empty((1, N), np.float32)
    times: dict[str, dict[int, list[float]]] = {name: {d: [] for d in distances} for name in weights}
    for _ in range(reps):
        for name, copies in weights.items():
            for d in distances:
                _C._decode_tuning(prefetch_bytes=d, prefetch_q8_0=True)
                t0 = time.perf_counter()
                for w in copies:
                    matmul(x, w, out=out)
                times[name][d].append((time.perf_counter() - t0) / len(copies))
    return {name: {d: statistics.median(t) for d, t in per.items()} for name, per in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--distances", type=int, nargs="+", default=[0, 2048, 4096, 8192, 12288], help="bytes ahead")
    ap.add_argument("--reps", type=int, default=11)
    args = ap.parse_args(argv)
    if 0 not in args.distances:
        ap.error("--distances must include 0 (the baseline)")
    print("making the matrices ...", file=sys.stderr, flush=True)
    weights = {name: [make(seed) for seed in range(COPIES)] for name, make in LAYOUTS.items()}
    tuning = _C._decode_tuning()
    print(f"{N} x {K}, one row; us per matrix (median of {args.reps}; speed-up over no prefetch)")
    print(f"this CPU's tuning: {tuning}\n")
    try:
        for t in args.threads:
            _C.set_num_threads(t)
            result = measure(weights, args.distances, args.reps)
            print(f"{t} thread(s)\n\n| layout | " + " | ".join(f"{d} B" for d in args.distances) + " |")
            print("|---|" + "---|" * len(args.distances))
            for name, per in result.items():
                cells = [f"{s * 1e6:.0f} ({per[0] / s:.2f}x)" for s in per.values()]
                print(f"| {name} | " + " | ".join(cells) + " |")
            print()
    finally:
        _C._decode_tuning(**tuning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
