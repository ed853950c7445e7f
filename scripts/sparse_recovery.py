#!/usr/bin/env python
"""What sparse fine-tuning wins back: a model pruned by `corelm sparsify` (Wanda), then fine-tuned with its
masks fixed (`corelm finetune --task causal-lm --method full` on the pruned file), against the dense model
fine-tuned the same way (training on text like the evaluated text lowers perplexity by itself: the
dense run says how much of the gain is that).

    python scripts/sparse_recovery.py --model .../SmolLM2-135M-Instruct.Q4_1.gguf

Evaluation: the text's first --chunks windows of --ctx tokens (perplexity, and KLD against the dense
F32 model's logits), as scripts/sparsity_table.py. Wanda's calibration: the text's last 20,000
characters. Training: --train-chars characters after the evaluated part (never evaluated), cut into
JSONL {"text": ...} pieces of --piece-chars. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corelm.analysis.perplexity import perplexity_file, read_text  # noqa: E402
from corelm.quantize import quantize_model  # noqa: E402
from corelm.quantize.sparsify import sparsify_model  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "corpora" / "tinyshakespeare.txt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--train-chars", type=int, default=60000)
    ap.add_argument("--piece-chars", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="keep the files in this folder")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="corelm-recovery-"))
    work.mkdir(parents=True, exist_ok=True)
    text = read_text(args.text)
    calib = work / "calib.txt"
    calib.write_text(text[-20000:], encoding="utf-8")
    start = 4 * args.ctx * args.chunks * 4  # well past the evaluated windows (~4 characters a token)
    train_text = text[start : start + args.train_chars]
    train = work / "train.jsonl"
    with open(train, "w", encoding="utf-8") as fh:
        for i in range(0, len(train_text), args.piece_chars):
            fh.write(json.dumps({"text": train_text[i : i + args.piece_chars]}) + "\n")

    dense = work / "dense-f32.gguf"
    pruned = work / "pruned-f32.gguf"
    base = work / "dense-logprobs.npz"
    quantize_model(args.model, dense, "f32", progress=False)
    sparsify_model(args.model, pruned, args.sparsity, pattern=args.pattern, method="wanda", calib=calib,
                   type="f32", dense=True, progress=False)  # fmt: skip

    def finetune(model: Path, out: Path) -> Path:
        cmd = [sys.executable, "-m", "corelm", "finetune", "--task", "causal-lm", "--model", str(model),
               "--method", "full", "--train", str(train), "--out", str(out), "--epochs", str(args.epochs),
               "--lr", str(args.lr), "--batch", "4", "--max-len", str(args.ctx), "--gguf-type", "q8_0",
               "--threads", str(args.threads), "--fp32", "--quiet"]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return out

    dense_tuned, tuned = finetune(dense, work / "dense-tuned"), finetune(pruned, work / "tuned")

    print("| model | file size | PPL | KLD vs dense F32 | same top token |")
    print("|---|---|---|---|---|")
    for label, path, kw in (
        ("dense F32", dense, {"save_logits": base}),
        ("dense, fine-tuned the same way, F32", dense_tuned, {"kld_base": base}),
        (f"Wanda {args.pattern} {args.sparsity:g}, F32", pruned, {"kld_base": base}),
        ("the same, sparse fine-tuned, F32", tuned, {"kld_base": base}),
        ("the same, sparse fine-tuned, Q8_0 stored sparse", tuned / "model.gguf", {"kld_base": base}),
    ):
        r = perplexity_file(path, args.text, ctx=args.ctx, chunks=args.chunks, **kw)
        size = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else path.stat().st_size
        kld = f"{r.kld.kld_mean:.5f} ± {r.kld.kld_err:.5f}" if r.kld else "-"
        same = f"{100 * r.kld.same_top:.2f}%" if r.kld else "-"
        print(f"| {label} | {size / 2**20:.1f} MiB | {r.ppl:.4f} ± {r.ppl_err:.4f} | {kld} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
