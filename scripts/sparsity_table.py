#!/usr/bin/env python
"""Quality of pruned models: perplexity and KL divergence from the dense F32 model for each
sparsity x pattern x method x weight type, with dense quantized files beside them.

    python scripts/sparsity_table.py                      # corelm's default model on tinyshakespeare
    python scripts/sparsity_table.py --types f32 --keep /tmp/sparse

Every file is made by `corelm sparsify` (corelm.quantize.sparsify) or, for the dense rows, by
`corelm quantize` from the model as given (q8_0's pruned matrices in their sparse layouts, so the
file sizes are what is stored); figures from corelm.analysis.perplexity (llama.cpp's method), KLD
against the dense F32 file's logits. Wanda's calibration text is the evaluation file's last
--calib-chars characters, written to a temporary file: never the evaluated windows (those are the
file's start). "minus magnitude": the paired difference of the per-token KLD
between a method and magnitude at the same sparsity, pattern and type (mean ± its standard error).
Prints a Markdown table to paste into the README.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from corelm.analysis.perplexity import perplexity_file, read_text  # noqa: E402
from corelm.kernels import WeightType  # noqa: E402
from corelm.quantize import quantize_model  # noqa: E402
from corelm.quantize.sparsify import sparsify_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MODEL = ROOT / "corelm" / "data" / "default.gguf"
TEXT = DATA / "corpora" / "tinyshakespeare.txt"

# (sparsity or None for the pattern's own, pattern)
PRUNINGS = [
    (0.3, "unstructured"),
    (0.5, "unstructured"),
    (0.7, "unstructured"),
    (None, "2:4"),
    (0.3, "block"),
    (0.5, "block"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=MODEL, help="the model (default: corelm/data/default.gguf)")
    ap.add_argument("--text", type=Path, default=TEXT, help="evaluation text (default: tinyshakespeare.txt)")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--types", nargs="+", default=["f32", "q8_0"], help="weight types of the pruned files")
    ap.add_argument("--dense", nargs="*", default=["q8_0", "q4_0", "q4_k_m"], help="dense rows beside F32")
    patterns = sorted({p for _, p in PRUNINGS})
    ap.add_argument("--patterns", nargs="+", default=patterns, choices=patterns, help="patterns (default: all)")
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"], help="magnitude first")
    ap.add_argument("--calib-chars", type=int, default=20000, help="wanda, sparsegpt: the text's last N characters")
    ap.add_argument("--keep", type=Path, default=None, help="keep the files in this folder")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="corelm-sparsity-"))
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.txt"
    calib.write_text(read_text(args.text)[-args.calib_chars :], encoding="utf-8")
    base = work / "f32-logprobs.npz"
    stem = args.model.stem

    head = "| weights | pattern | method | sparsity | file size | PPL | KLD vs dense F32 | KLD 99th pct |"
    print(head + " same top token | minus magnitude (paired ΔKLD) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    previous: dict[str, np.ndarray] = {}

    def row(label: str, pattern: str, method: str, sparsity: str, path: Path, nbytes: int) -> None:
        """Measure one file and print its row; a wanda row is paired with the magnitude row before it."""
        first = not base.exists()
        kw = {"save_logits": base} if first else {"kld_base": base}
        r = perplexity_file(path, args.text, ctx=args.ctx, chunks=args.chunks, **kw)
        if first or r.kld is None:
            kld = p99 = same = "-"
        else:
            k = r.kld
            kld = f"{k.kld_mean:.5f} ± {k.kld_err:.5f}"
            p99 = f"{k.kld_percentiles['99.0']:.4f}"
            same = f"{100 * k.same_top:.2f}%"
        size = f"{nbytes / 1024:.1f} KiB"
        paired = ""
        if method == "magnitude" and r.token_kld is not None:
            previous["magnitude"] = r.token_kld
        elif method != "magnitude" and r.token_kld is not None and "magnitude" in previous:
            d = r.token_kld - previous["magnitude"]
            paired = f"{d.mean():+.5f} ± {d.std(ddof=1) / math.sqrt(len(d)):.5f}"
        ppl = f"{r.ppl:.4f} ± {r.ppl_err:.4f}"
        print(f"| {label} | {pattern} | {method} | {sparsity} | {size} | {ppl} | {kld} | {p99} | {same} | {paired} |")
        sys.stdout.flush()

    for t in ["f32", *args.dense]:
        path = work / f"{stem}-dense-{t}.gguf"
        rep = quantize_model(args.model, path, t, progress=False)
        row(t.upper(), "dense", "-", "0", path, rep.output_bytes)
    for t in args.types:
        for sparsity, pattern in [(s, p) for s, p in PRUNINGS if p in args.patterns]:
            for method in args.methods:
                path = work / f"{stem}-{t}-{pattern.replace(':', 'of')}-{sparsity}-{method}.gguf"
                rep = sparsify_model(
                    args.model,
                    path,
                    sparsity,
                    pattern=pattern,
                    method=method,
                    calib=calib if method != "magnitude" else None,
                    type=t,
                    progress=False,
                )
                # q8_0's pruned matrices are stored in a sparse layout: name it, the size is its own
                after = rep.quantize.types_after
                layouts = "/".join(name for name in sorted(after) if WeightType[name].sparse)
                label = f"{t.upper()} as {layouts}" if layouts else t.upper()
                row(label, pattern, method, f"{rep.sparsity:g}", path, rep.quantize.output_bytes)
                if args.keep is None:
                    path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
