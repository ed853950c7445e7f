#!/usr/bin/env python
"""Quality of corelm's weight types on a real model: perplexity and KL divergence from F32,
measured by corelm and by llama.cpp (through llama-cpp-python) on the same files.

    python scripts/quality_table.py                       # stories260K on tinystories_sample.txt, ctx 128
    python scripts/quality_table.py --keep /tmp/quality   # keep the quantized files

Every file is made by `corelm quantize` from the F32 GGUF (F32 itself is re-written by it too).
corelm's figures come from corelm.analysis.perplexity (llama.cpp's perplexity method). llama.cpp's
are computed here the same way from llama-cpp-python's logits (Llama(logits_all=True)): its own
tokenization of the text, the same windows (first token replaced by BOS, each window from an
empty cache), the same scored positions, and KL divergence from llama.cpp's own F32 logits (float32,
no float16 storage). Prints Markdown tables to paste into the README.

The calibration texts for `q4_0 --optimize --calib` are never the evaluation text: stories260K.md
(the model card: mostly the model's own sample stories) and the start of tinyshakespeare.txt
(another domain entirely).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corelm.analysis.perplexity import (  # noqa: E402
    _mean_err,
    load_base,
    log_softmax,
    n_windows,
    perplexity_file,
    read_text,
    windows,
)
from corelm.quantize import quantize_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MODEL = DATA / "models" / "stories260K" / "stories260K.gguf"
TEXT = DATA / "corpora" / "tinystories_sample.txt"
CARD = DATA / "models" / "stories260K" / "stories260K.md"
SHAKESPEARE = DATA / "corpora" / "tinyshakespeare.txt"

# (label, --type, quantize_model keyword arguments)
VARIANTS = [
    ("F32", "f32", {}),
    ("Q8_0", "q8_0", {}),
    ("Q6_K", "q6_k", {}),
    ("Q5_0", "q5_0", {}),
    ("Q4_K_M", "q4_k_m", {}),
    ("Q4_0", "q4_0", {}),
    # every matrix in Q4_0 (output too): where the error-minimising scales are compared
    ("Q4_0 --pure", "q4_0", {"pure": True}),
    ("Q4_0 --pure --optimize", "q4_0", {"pure": True, "optimize": True}),
    ("Q4_0 --pure --optimize --calib stories260K.md", "q4_0", {"pure": True, "optimize": True, "calib": CARD}),
    ("Q4_0 --pure --optimize --calib tinyshakespeare", "q4_0", {"pure": True, "optimize": True, "calib": SHAKESPEARE}),
]


def llama_cpp_logprobs(path: Path, text: str, ctx: int, chunks: int | None) -> tuple[list[int], list[np.ndarray]]:
    """llama.cpp's tokens of `text` and, per window, float32 log-softmax at the scored positions."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, verbose=False, n_threads=1)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    n = n_windows(len(tokens), ctx, chunks)
    first = ctx // 2
    out = []
    for win in windows(np.array(tokens), ctx, n, llm.token_bos() if add_bos else None):
        llm.reset()  # eval() then drops the whole KV cache: each window starts empty
        llm.eval(win.tolist())
        out.append(log_softmax(np.array(llm.scores[first : ctx - 1], dtype=np.float32)))
    llm.close()
    return tokens, out


def llama_cpp_stats(tokens: list[int], lps: list[np.ndarray], base: list[np.ndarray] | None, ctx: int) -> dict:
    first = ctx // 2
    tok = np.asarray(tokens)
    nll, kld = [], []
    for i, lp in enumerate(lps):
        target = tok[i * ctx + first + 1 : (i + 1) * ctx]
        nll.append(-lp[np.arange(len(target)), target].astype(np.float64))
        if base is not None:
            pb = np.exp(base[i].astype(np.float64))
            kld.append((pb * (base[i] - lp)).sum(axis=-1))
    mean, err = _mean_err(np.concatenate(nll))
    stats = {"ppl": math.exp(mean), "ppl_err": err * math.exp(mean)}
    if base is not None:
        stats["kld"] = _mean_err(np.concatenate(kld))
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=MODEL, help="F32 GGUF (default: stories260K)")
    ap.add_argument("--text", type=Path, default=TEXT, help="evaluation text (default: tinystories_sample.txt)")
    ap.add_argument("--ctx", type=int, default=128, help="window length (default 128: the text gives 14 windows)")
    ap.add_argument("--chunks", type=int, default=None, help="at most this many windows")
    ap.add_argument("--keep", type=Path, default=None, help="keep the quantized files in this folder")
    ap.add_argument("--no-llama-cpp", action="store_true", help="corelm's figures only")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="corelm-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    use_llama = not args.no_llama_cpp
    if use_llama:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama_cpp is not importable: corelm's figures only", file=sys.stderr)
            use_llama = False
    text = read_text(args.text)
    rows = []
    try:
        base_npz = work / "f32-logprobs.npz"
        llama_base = None
        plain_q4 = None
        for label, qtype, kw in VARIANTS:
            path = work / f"{args.model.stem}-{label.split()[0].lower()}{'-' + str(len(rows)) if kw else ''}.gguf"
            t0 = time.perf_counter()
            report = quantize_model(args.model, path, qtype, progress=False, **kw)
            q_seconds = time.perf_counter() - t0
            if label == "F32":
                r = perplexity_file(path, args.text, ctx=args.ctx, chunks=args.chunks, save_logits=base_npz)
                base_info = load_base(base_npz)
            else:
                r = perplexity_file(path, args.text, ctx=args.ctx, chunks=args.chunks, kld_base=base_npz)
            row = {"label": label, "bytes": report.output_bytes, "corelm": r, "seconds": q_seconds}
            row["types"] = ", ".join(f"{n} {t}" for t, n in report.types_after.most_common())
            if label == "Q4_0 --pure":
                plain_q4 = r
            if plain_q4 is not None and r is not plain_q4 and r.token_kld is not None and "optimize" in label:
                d = r.token_kld - plain_q4.token_kld
                row["paired"] = (float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))))
            if use_llama:
                tokens, lps = llama_cpp_logprobs(path, text, args.ctx, r.chunks)
                row["same_tokens"] = np.array_equal(np.asarray(tokens), base_info["tokens"])
                if llama_base is None:
                    llama_base = lps
                    row["llama"] = llama_cpp_stats(tokens, lps, None, args.ctx)
                else:
                    row["llama"] = llama_cpp_stats(tokens, lps, llama_base, args.ctx)
            rows.append(row)
            print(f"... {label}: PPL {r.ppl:.4f}", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    r0 = rows[0]["corelm"]
    print(
        f"\n{args.model.name} on {args.text.name}: {r0.n_tokens} tokens, {r0.chunks} windows of {args.ctx} "
        f"({r0.count} tokens scored, llama.cpp's method); KLD from F32 over the same positions.\n"
    )
    head = "| weights | file size | PPL (corelm) |"
    head += " PPL (llama.cpp) |" if use_llama else ""
    head += " KLD vs F32 (corelm) |" + (" KLD vs F32 (llama.cpp) |" if use_llama else "")
    head += " KLD 99th pct | same top token | ΔKLD vs Q4_0 --pure (paired) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        r = row["corelm"]
        cells = [row["label"], f"{row['bytes'] / 1024:.1f} KiB", f"{r.ppl:.4f} ± {r.ppl_err:.4f}"]
        if use_llama:
            cells.append(f"{row['llama']['ppl']:.4f}")
        if r.kld is None:
            cells += ["-"] * (2 if use_llama else 1) + ["-", "-", "-"]
        else:
            k = r.kld
            cells.append(f"{k.kld_mean:.5f} ± {k.kld_err:.5f}")
            if use_llama:
                cells.append(f"{row['llama']['kld'][0]:.5f}")
            cells += [f"{k.kld_percentiles['99.0']:.4f}", f"{100 * k.same_top:.2f}%"]
            cells.append(f"{row['paired'][0]:+.5f} ± {row['paired'][1]:.5f}" if "paired" in row else "-")
        print("| " + " | ".join(cells) + " |")
    print("\nMatrix types per file (llama.cpp's rules, fallbacks included):")
    for row in rows:
        print(f"- {row['label']}: {row['types']}")
    if use_llama:
        same = all(row.get("same_tokens") for row in rows)
        print(f"llama.cpp's tokenization of the text {'equals' if same else 'DIFFERS from'} corelm's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
