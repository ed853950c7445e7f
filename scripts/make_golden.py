"""Golden vectors from llama.cpp (through llama-cpp-python) for the real stories260K model.

    python scripts/make_golden.py                      # writes tests/golden/stories260K_llamacpp.json
    python scripts/make_golden.py --keep-quantized DIR # also keeps llama.cpp's Q8_0 / Q4_0 files in DIR

Runs only where llama_cpp is importable (never in CI). For the F32 file and for Q8_0 / Q4_0
files quantized by llama.cpp itself it records, per prompt: llama.cpp's prompt token ids
(BOS added), a pure greedy continuation (argmax of the raw logits after each eval, no sampler),
and the top-10 logits after the prompt and after 8 greedy tokens. llama.cpp runs with an F32
KV cache and without flash attention, so the F32 vectors are a float32 reference. The
quantized files are not committed: tests/test_golden.py regenerates them with `quantize`
below and checks their sha256 against the one recorded here.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "data" / "models" / "stories260K" / "stories260K.gguf"
OUT = ROOT / "tests" / "golden" / "stories260K_llamacpp.json"
PROMPTS = ["Once upon a time", "Lily wanted to", "The little dog"]
N_GEN = 48
TOP_K = 10
PROBES = (0, 8)  # logits recorded after the prompt plus this many greedy tokens
N_CTX = 256
SEED = 1234
N_THREADS = 1
FTYPES = ("Q8_0", "Q4_0")
_QUIET = None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quantize(src: Path, dst: Path, ftype: str, nthread: int = N_THREADS) -> None:
    """Quantize `src` to `dst` with llama.cpp's default parameters and ftype LLAMA_FTYPE_MOSTLY_<ftype>."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {ftype}) failed with {rc}")


def tensor_types(path: Path) -> dict[str, list[str]]:
    """GGML type name -> the tensors stored in it (read back with the gguf package); "blk.*.x"
    stands for the tensor x of every layer when all layers store it in the same type."""
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    per_pattern: dict[str, set[str]] = {}
    for name, tname in types.items():
        if name.startswith("blk."):
            per_pattern.setdefault("blk.*." + name.split(".", 2)[2], set()).add(tname)
    out: dict[str, set[str]] = {}
    for name, tname in types.items():
        pattern = "blk.*." + name.split(".", 2)[2] if name.startswith("blk.") else name
        out.setdefault(tname, set()).add(pattern if len(per_pattern.get(pattern, ())) == 1 else name)
    return {k: sorted(v) for k, v in sorted(out.items())}


def to_json(obj, indent: str = "") -> str:
    """JSON with objects one key a line and lists on one line (small and diff-friendly)."""
    if isinstance(obj, dict):
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, separators=(", ", ": "))


def top_logits(logits: np.ndarray, k: int = TOP_K) -> dict[str, list]:
    ids = np.argsort(-logits, kind="stable")[:k]
    return {"ids": [int(i) for i in ids], "values": [round(float(logits[i]), 6) for i in ids]}


def run_llamacpp(path: Path) -> list[dict]:
    """Per prompt: token ids, greedy continuation, top-k logits at the probe positions."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        seed=SEED,
        logits_all=False,
        flash_attn=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32)  # a copy

    results = []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=True)
        llm.reset()
        llm.eval(ids)
        logits = last_logits()
        generated: list[int] = []
        probes = []
        for step in range(N_GEN):
            if step in PROBES:
                probes.append({"n_generated": step, **top_logits(logits)})
            token = int(np.argmax(logits))
            generated.append(token)
            if step < N_GEN - 1:
                llm.eval([token])
                logits = last_logits()
        results.append(
            {
                "prompt": prompt,
                "prompt_ids": [int(i) for i in ids],
                "greedy_ids": generated,
                "greedy_text": llm.detokenize(generated).decode("utf-8", errors="replace"),
                "top_logits": probes,
            }
        )
    llm.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep-quantized", type=Path, metavar="DIR", help="write llama.cpp's quantized files here")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama_cpp is not importable: this script needs llama-cpp-python")

    global _QUIET
    _QUIET = llama_cpp.llama_log_callback(lambda *_: None)  # kept alive: llama.cpp calls it later
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))
    golden = {
        "model": args.model.name,
        "model_sha256": sha256(args.model),
        "llama_cpp_version": llama_cpp.__version__,
        "settings": {
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "seed": SEED,
            "kv_cache": "F32",
            "flash_attn": False,
            "add_bos": True,
            "greedy": "argmax of llama_get_logits_ith(ctx, -1) after each eval; no sampler",
            "n_gen": N_GEN,
            "top_k": TOP_K,
            "probes": "top_logits[i] = logits after the prompt plus greedy_ids[:n_generated]",
        },
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {"F32": (args.model, None)}
        for ftype in FTYPES:
            dst = Path(tmp) / f"{args.model.stem}-{ftype}.gguf"
            quantize(args.model, dst, ftype)
            files[ftype] = (dst, sha256(dst))
        for name, (path, digest) in files.items():
            t0 = time.perf_counter()
            entry = {"file_sha256": digest or golden["model_sha256"], "tensor_types": tensor_types(path)}
            entry["prompts"] = run_llamacpp(path)
            golden["variants"][name] = entry
            print(f"{name}: {time.perf_counter() - t0:.2f} s; {entry['prompts'][0]['greedy_text']!r}")
            if args.keep_quantized and digest:
                args.keep_quantized.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, args.keep_quantized / path.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(golden) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
