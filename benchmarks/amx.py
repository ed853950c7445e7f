"""The AMX tile kernels against the AVX-512 kernels, side by side on the same matrices.

    python -m benchmarks.amx --threads 1 2 --reps 5 [--model MODEL.gguf]

GEMM 512 x 2048 . 2048 x 5632 (a TinyLlama feed-forward in prefill) and the same weights with 8
activation rows (batched decode of 8 sequences) for each weight type models use in prefill; with
--model, also `corelm bench MODEL` (pp512, tg128) on each path. Each path runs in its own process
(CORELM_ISA), the paths interleaved within each repetition so drifting load hits both alike.
Prints a Markdown table with the AMX / AVX-512 ratios. Without an AMX CPU (or with Linux refusing
tile permission) only the AVX-512 column is measured: the targets of issue 14 are checked on an
AMX Xeon.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from corelm import _C

TYPES = ("Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16")
SHAPES = {"gemm": (512, 5632, 2048), "batch8": (8, 5632, 2048)}  # m, n, k


def worker(types: list[str], threads: int) -> dict:
    """GFLOP/s of each (shape, type) on the path CORELM_ISA selected; runs in its own process."""
    import numpy as np

    from corelm.analysis.kernel_bench import make_weight, median_seconds, using
    from corelm.kernels import WeightType, matmul

    rng = np.random.default_rng(0)
    out: dict[str, float] = {"isa": _C.isa()}  # type: ignore[dict-item]
    for name in types:
        w = make_weight(rng.standard_normal((5632, 2048)).astype(np.float32), WeightType[name + "_X16"])
        for shape, (m, n, k) in SHAPES.items():
            x = rng.standard_normal((m, k)).astype(np.float32)
            y = np.empty((m, n), np.float32)
            with using(threads=threads):
                s = median_seconds(lambda x=x, w=w, y=y: matmul(x, w, out=y), 3)
            out[f"{shape} {name}"] = 2.0 * m * n * k / s / 1e9
    return out


def run_worker(isa: str, types: list[str], threads: int) -> dict:
    env = dict(os.environ, CORELM_ISA=isa)
    code = f"import json, benchmarks.amx as b; print(json.dumps(b.worker({types!r}, {threads})))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_model(isa: str, model: str, threads: int) -> dict:
    env = dict(os.environ, CORELM_ISA=isa)
    cmd = [sys.executable, "-m", "corelm", "bench", model, "-t", str(threads), "-r", "1", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout)["results"]
    return {f"model {r['test']}": r["tokens_per_s"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=3, help="repetitions (separate processes); the median is shown")
    ap.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    ap.add_argument("--model", default=None, help="also `corelm bench MODEL` (pp512 / tg128) on each path")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    isas = [isa for isa in ("avx512", "amx") if isa in _C.supported_isas()]
    if "avx512" not in isas:
        sys.exit("benchmarks.amx: this CPU has no AVX-512, the path AMX is compared with")
    if "amx" not in isas:
        print("this CPU (or Linux) does not run AMX: measuring the AVX-512 path alone", file=sys.stderr)
    samples: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.reps):
        for t in args.threads:
            for isa in isas:  # interleaved: each repetition measures every path
                print(f"rep {rep + 1}/{args.reps}, {t} thread(s), {isa}", file=sys.stderr)
                row = run_worker(isa, args.types, t)
                if args.model:
                    row |= run_model(isa, args.model, t)
                samples.setdefault((isa, t), []).append(row)
    medians = {
        key: {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "isa"} for key, rows in samples.items()
    }
    if args.json:
        print(json.dumps({f"{isa} {t}": m for (isa, t), m in medians.items()}, indent=2))
        return
    keys = list(medians[("avx512", args.threads[0])])
    print("| measure (GFLOP/s; model rows tokens/s) | threads | AVX-512 | AMX | AMX / AVX-512 |")
    print("|---|---:|---:|---:|---:|")
    for k in keys:
        for t in args.threads:
            base = medians[("avx512", t)][k]
            amx = medians.get(("amx", t), {}).get(k)
            cells = f"{amx:.1f} | {amx / base:.2f}x" if amx else "- | -"
            print(f"| {k} | {t} | {base:.1f} | {cells} |")


if __name__ == "__main__":
    main()
