"""Side-by-side speed of corelm, llama.cpp, CTranslate2 and transformers on the same models.

    python -m benchmarks.compare --models tinyllama gpt2 qwen2.5-0.5b --threads 1 2 --reps 3

Builds the benchmark models (benchmarks/models.py) if missing, converts the HF folders for
CTranslate2 (int8), then measures every runtime at every thread count, interleaving the
runtimes within each repetition so drifting machine load hits all of them alike. Each
measurement is its own process (benchmarks/runners.py). Prints a Markdown table with
corelm's ratios to each rival, and writes JSON and a PNG chart next to the models.

llama.cpp comes from llama-cpp-python; when it is not importable here, it is built into
bench-env/ with this CPU's features named and AMX off (see ../shared/PEERS.md: a native
build dies on some AMX machines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import corelm
from benchmarks.models import CONFIGS, make_ggufs, make_hf_folder

ROOT = Path(__file__).resolve().parents[1]
GGUF_TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")


def llama_python(env_dir: Path) -> str:
    """A python that can import llama_cpp: this one, or one built into env_dir."""
    if subprocess.run([sys.executable, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return sys.executable
    py = env_dir / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    if subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode != 0:
        f = corelm.info()["features"]
        on = lambda flag: "ON" if flag else "OFF"  # noqa: E731
        cmake_args = " ".join(
            [
                "-DGGML_NATIVE=OFF",
                "-DGGML_AVX=ON",
                f"-DGGML_AVX2={on(f.get('avx2'))}",
                f"-DGGML_FMA={on(f.get('fma'))}",
                f"-DGGML_F16C={on(f.get('f16c'))}",
                "-DGGML_BMI2=ON",
                f"-DGGML_AVX_VNNI={on(f.get('avx_vnni'))}",
                f"-DGGML_AVX512={on(f.get('avx512f'))}",
                f"-DGGML_AVX512_VNNI={on(f.get('avx512_vnni'))}",
                f"-DGGML_AVX512_BF16={on(f.get('avx512_bf16'))}",
                "-DGGML_AMX_TILE=OFF",
                "-DGGML_AMX_INT8=OFF",
                "-DGGML_AMX_BF16=OFF",
            ]
        )
        print(f"building llama-cpp-python into {env_dir} (8-14 minutes on 2 cores)...", file=sys.stderr)
        env = {**os.environ, "CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        subprocess.run([str(py), "-m", "pip", "install", "numpy", "llama-cpp-python==0.3.36"], check=True, env=env)
    return str(py)


def convert_ct2(hf: Path, out: Path) -> Path:
    if not (out / "model.bin").exists():
        subprocess.run(
            [
                sys.executable,
                "-c",
                (
                    "import ctranslate2, sys; ctranslate2.converters.TransformersConverter(sys.argv[1], "
                    "load_as_float16=True).convert(sys.argv[2], quantization='int8', force=True)"
                ),
                str(hf),
                str(out),
            ],
            check=True,
        )
    return out


def measure(python: str, runtime: str, path: Path, threads: int, p: int, n: int) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [python, "-m", "benchmarks.runners", runtime, str(path), str(threads), str(p), str(n)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=3600,
    )
    if proc.returncode != 0:
        print(f"  {runtime} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def markdown(results: dict, threads: list[int]) -> str:
    lines = []
    for model, rows in results.items():
        lines += [
            f"**{model}** (tokens/s, median; threads {' / '.join(map(str, threads))})",
            "",
            "| runtime | weights | prefill | decode | corelm prefill ratio | corelm decode ratio |",
            "|---|---|---|---|---|---|",
        ]

        def med(key: str, t: int, what: str, rows: dict = rows) -> float | None:
            vals = [r[what] for r in rows.get(key, {}).get(str(t), []) if what in r]
            return statistics.median(vals) if vals else None

        for key in rows:
            runtime, weights = key.split(":")
            cells = {
                what: " / ".join(f"{med(key, t, what):.1f}" if med(key, t, what) else "-" for t in threads)
                for what in ("pp", "tg")
            }
            ours = {"llama.cpp": f"corelm:{weights}", "ctranslate2": "corelm:q8_0"}.get(runtime, "corelm:q8_0")
            if runtime == "corelm":
                rp = rt = ""
            else:
                rp = " / ".join(ratio(med(ours, t, "pp"), med(key, t, "pp")) for t in threads)
                rt = " / ".join(ratio(med(ours, t, "tg"), med(key, t, "tg")) for t in threads)
                rp, rt = f"{rp} ({ours.split(':')[1]})", f"{rt} ({ours.split(':')[1]})"
            lines.append(f"| {runtime} | {weights} | {cells['pp']} | {cells['tg']} | {rp} | {rt} |")
        lines.append("")
    return "\n".join(lines)


def chart(results: dict, threads: list[int], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
        return
    models = list(results)
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.2 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        rows = results[model]
        for j, what in enumerate(("pp", "tg")):
            ax = axes[i][j]
            keys = list(rows)
            t = max(threads)
            vals = [statistics.median([r[what] for r in rows[k].get(str(t), []) if what in r] or [0]) for k in keys]
            colors = ["tab:red" if k.startswith("corelm") else "tab:gray" for k in keys]
            ax.barh(keys, vals, color=colors)
            ax.set_title(f"{model}: {'prefill' if what == 'pp' else 'decode'} tok/s, {t} threads")
            ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-p", "--prompt", type=int, default=512)
    ap.add_argument("-n", "--gen", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-models")
    ap.add_argument(
        "--runtimes",
        nargs="+",
        default=["corelm", "llama.cpp", "ctranslate2", "transformers-fp32", "transformers-bf16"],
    )
    ap.add_argument("--types", nargs="+", default=list(GGUF_TYPES), choices=GGUF_TYPES)
    ap.add_argument("--report", default="compare", help="name of the JSON / PNG / Markdown files written in --out")
    args = ap.parse_args()

    llama_py = llama_python(ROOT / "bench-env") if "llama.cpp" in args.runtimes else ""
    results: dict = {}
    for model in args.models:
        if not (args.out / model / "hf" / "model.safetensors").exists():
            make_hf_folder(model, args.out)
        ggufs = make_ggufs(model, args.out, args.types)
        plan = []  # (key, python, runtime, path)
        for rt in args.runtimes:
            if rt in ("corelm", "llama.cpp"):
                plan += [
                    (f"{rt}:{t}", llama_py if rt == "llama.cpp" else sys.executable, rt, ggufs[t]) for t in args.types
                ]
            elif rt == "ctranslate2":
                plan.append(
                    (
                        "ctranslate2:int8",
                        sys.executable,
                        rt,
                        convert_ct2(args.out / model / "hf", args.out / model / "ct2-int8"),
                    )
                )
            else:
                plan.append((f"{rt.split('-')[0]}:{rt.split('-')[1]}", sys.executable, rt, args.out / model / "hf"))
        results[model] = {key: {} for key, *_ in plan}
        for t in args.threads:
            for rep in range(args.reps):
                for key, py, rt, path in plan:
                    t0 = time.time()
                    r = measure(py, rt, path, t, args.prompt, args.gen)
                    results[model][key].setdefault(str(t), []).append(r)
                    print(f"{model} {key} t={t} rep={rep}: {r} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    info = corelm.info()
    report = {
        "machine": {
            "cpu": info["cpu"],
            "features": [f for f, on in info["features"].items() if on],
            "cores": info["physical_cores"],
            "corelm_isa": info["isa"],
        },
        "prompt_tokens": args.prompt,
        "gen_tokens": args.gen,
        "results": results,
    }
    (args.out / f"{args.report}.json").write_text(json.dumps(report, indent=2))
    chart(results, args.threads, args.out / f"{args.report}.png")
    text = (
        f"CPU: {info['cpu']} ({info['physical_cores']} cores; {' '.join(report['machine']['features'])})\n\n"
        + markdown(results, args.threads)
    )
    (args.out / f"{args.report}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
