"""Two versions of corelm side by side on the same models: did a change speed up or slow down?

    git worktree add ../corelm-before REV && cmake -S ../corelm-before -B ../corelm-before/build -G Ninja \\
        -Dpybind11_DIR=$(python -m pybind11 --cmakedir) && ninja -C ../corelm-before/build \\
        && cp ../corelm-before/build/_C*.so ../corelm-before/corelm/
    python -m benchmarks.versions --before ../corelm-before MODEL.gguf [MODEL.gguf ...] --threads 2 --reps 3

`corelm bench MODEL -p 512 -n 128` under each version, each run its own process, the versions
interleaved within each repetition; the before version is imported from its source tree (python -S
keeps this environment's editable install from shadowing it). Prints a Markdown table of the
medians and the after / before ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import statistics
import subprocess
import sys
from pathlib import Path


def bench(cmd: list[str], env: dict[str, str], cwd: Path, model: str, threads: int) -> dict[str, float]:
    args = ["bench", str(Path(model).resolve()), "-p", "512", "-n", "128", "-t", str(threads), "-r", "1", "--json"]
    out = subprocess.run(cmd + args, env=dict(os.environ, **env), cwd=cwd, capture_output=True, text=True, check=True)
    return {r["test"]: r["tokens_per_s"] for r in json.loads(out.stdout)["results"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="GGUF files")
    ap.add_argument("--before", type=Path, required=True, help="a corelm source tree with its _C built into corelm/")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    packages = os.pathsep.join([str(args.before.resolve()), *site.getsitepackages()])
    before = args.before.resolve()
    # Each runs from its own tree's folder, so `-m corelm` finds that tree's package first.
    versions = {
        "before": ([sys.executable, "-S", "-m", "corelm"], {"PYTHONPATH": packages}, before),
        "after": ([sys.executable, "-m", "corelm"], {}, Path.cwd()),
    }
    runs: dict[tuple[str, str, str], list[float]] = {}
    for rep in range(args.reps):
        for model in args.models:
            for name, (cmd, env, cwd) in versions.items():
                print(f"rep {rep + 1}/{args.reps}: {Path(model).name}, {name}", file=sys.stderr, flush=True)
                for test, rate in bench(cmd, env, cwd, model, args.threads).items():
                    runs.setdefault((model, test, name), []).append(rate)
    print(f"| model | test | before | after | after / before |  ({args.threads} threads, median of {args.reps})")
    print("|---|---|---:|---:|---:|")
    for model in args.models:
        for test in ("pp512", "tg128"):
            before = statistics.median(runs[(model, test, "before")])
            after = statistics.median(runs[(model, test, "after")])
            print(f"| {Path(model).name} | {test} | {before:.1f} | {after:.1f} | {after / before:.2f}x |")


if __name__ == "__main__":
    main()
