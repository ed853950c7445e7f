"""Sparse against dense, side by side: TinyLlama-1.1B shape (random weights), Q8_0.

    python -m benchmarks.sparse --threads 1 2 --reps 3

Makes, from bench-models/tinyllama/hf (benchmarks/models.py builds it), with `corelm sparsify`
(magnitude; the speed does not depend on which weights go):

    dense      50% unstructured, --dense: Q8_0 with its zeros (what a dense model costs)
    50%        50% unstructured, Q8_0_S16
    70%        70% unstructured, Q8_0_S16
    2:4        2:4, Q8_0_24
    block 50%  whole tiles of 16 x 32, Q8_0_B16

then measures corelm on each and llama.cpp on the dense file, at every thread count: prefill of a
512-token prompt and 128 greedy decode steps, each run its own process (benchmarks/runners.py),
the variants interleaved within each repetition. Prints a Markdown table (median of --reps) with
each variant's ratio to corelm dense and to llama.cpp, and writes sparse.json next to the models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.compare import llama_python, measure
from benchmarks.models import make_hf_folder

ROOT = Path(__file__).resolve().parents[1]
# name -> sparsify arguments
VARIANTS: dict[str, dict] = {
    "dense": {"sparsity": 0.5, "dense": True},
    "50%": {"sparsity": 0.5},
    "70%": {"sparsity": 0.7},
    "2:4": {"pattern": "2:4"},
    "block 50%": {"sparsity": 0.5, "pattern": "block"},
}
WEIGHTS = {"dense": "Q8_0", "50%": "Q8_0_S16", "70%": "Q8_0_S16", "2:4": "Q8_0_24", "block 50%": "Q8_0_B16"}


def make_files(out: Path) -> dict[str, Path]:
    from corelm.quantize.sparsify import sparsify_model

    hf = out / "tinyllama" / "hf"
    if not (hf / "model.safetensors").exists():
        hf = make_hf_folder("tinyllama", out)
    files = {}
    for name, kw in VARIANTS.items():
        path = out / f"tinyllama-sparse-{name.replace('%', '').replace(':', '').replace(' ', '-')}.gguf"
        if not path.exists():
            print(f"making {path.name} ...", file=sys.stderr, flush=True)
            sparsify_model(hf, path, type="q8_0", progress=False, **kw)
        files[name] = path
    return files


def table(results: dict, threads: list[int]) -> str:
    def med(key: str, t: int, what: str) -> float | None:
        vals = [r[what] for r in results[key][str(t)] if what in r]
        return statistics.median(vals) if vals else None

    def cells(key: str, what: str, base: str | None = None) -> str:
        out = []
        for t in threads:
            v, b = med(key, t, what), med(base, t, what) if base else None
            out.append("-" if v is None else f"{v / b:.2f}x" if base and b else f"{v:.1f}")
        return " / ".join(out)

    lines = [
        f"TinyLlama-1.1B shape, Q8_0, tokens/s (median; threads {' / '.join(map(str, threads))})",
        "",
        "| runtime | weights | file MiB | prefill 512 | decode 128 | prefill vs dense | decode vs dense"
        " | prefill vs llama.cpp | decode vs llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in results:
        runtime, name = key.split(":", 1)
        mib = results[key]["mib"]
        lines.append(
            f"| {runtime} | {name} ({WEIGHTS[name]}) | {mib:.0f} | {cells(key, 'pp')} | {cells(key, 'tg')}"
            f" | {cells(key, 'pp', 'corelm:dense')} | {cells(key, 'tg', 'corelm:dense')}"
            f" | {cells(key, 'pp', 'llama.cpp:dense')} | {cells(key, 'tg', 'llama.cpp:dense')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-models")
    ap.add_argument("--no-llama", action="store_true", help="corelm only")
    args = ap.parse_args(argv)
    files = make_files(args.out)
    plan = [(f"corelm:{name}", sys.executable, "corelm", path) for name, path in files.items()]
    if not args.no_llama:
        plan.append(("llama.cpp:dense", llama_python(ROOT / "bench-env"), "llama.cpp", files["dense"]))
    results: dict = {key: {"mib": path.stat().st_size / 2**20} for key, _, _, path in plan}
    for t in args.threads:
        for key, *_ in plan:
            results[key][str(t)] = []
        for rep in range(args.reps):
            for key, py, runtime, path in plan:
                print(f"threads {t}, run {rep + 1}/{args.reps}: {key}", file=sys.stderr, flush=True)
                results[key][str(t)].append(measure(py, runtime, path, t, args.prompt, args.gen))
    (args.out / "sparse.json").write_text(json.dumps(results, indent=2))
    print(table(results, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
