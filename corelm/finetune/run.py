"""`corelm finetune` from start to end: check, load, train, score, export, check corelm's runtime.

The order matters: everything that can fail on bad input (the arguments, the output folder, the
model's kind, every data file and its labels, the checkpoint) fails before the model loads; the
exported folder is checked by loading it in corelm and comparing its predictions on the test data
with the torch model's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import corelm
from corelm.analysis import metrics
from corelm.finetune import data
from corelm.finetune import model as models
from corelm.finetune.loop import (
    BEST,
    CHECKPOINT,
    Data,
    Ranks,
    Settings,
    evaluate,
    fit,
    load_checkpoint,
    say,
    word_tags,
)
from corelm.train.data import check_output_dir
from corelm.train.trainer import resolve_dtype

DEFAULT_LR = {"full": 5e-5, "lora": 5e-4, "adalora": 5e-4, "adapter": 1e-3}
DEFAULT_MAX_LEN = 256
_CURVE: tuple[str, ...] = (
    "task",
    "method",
    "epochs",
    "batch",
    "grad_accum",
    "lr",
    "warmup",
    "weight_decay",
    "max_len",
    "seed",
)
_CURVE += ("dtype", "lora_r", "lora_alpha", "lora_dropout", "adapter_config", "reduction_factor", "bucket", "world")
_CURVE += ("bidirectional",)
_ADAPTER_ONLY = ("adapter_config", "reduction_factor")  # (checkpoints before adapters lack them)
_SAVED_DEFAULTS = {"bidirectional": False}  # what checkpoints from before a setting existed ran with
_LM_CHECK = 8  # causal LM: test examples whose logits corelm must reproduce


def _settings(args: argparse.Namespace, ranks: Ranks) -> Settings:
    dtype, why = resolve_dtype(args.dtype)
    say(f"compute: {dtype} ({why})")
    return Settings(
        task=args.task,
        method=args.method,
        epochs=args.epochs,
        batch=args.batch,
        grad_accum=args.grad_accum,
        lr=args.lr or DEFAULT_LR[args.method],
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        max_len=args.max_len or DEFAULT_MAX_LEN,
        seed=args.seed,
        dtype=dtype,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        adapter_config=args.adapter_config,
        reduction_factor=args.reduction_factor,
        bucket=not args.no_bucket,
        world=ranks.world,
        bidirectional=args.bidirectional,
    )


def _check_resume(s: Settings, ckpt: dict[str, Any], labels: list[str], digest: str) -> None:
    saved = ckpt["settings"]
    keys = [k for k in _CURVE if s.method == "adapter" or k not in _ADAPTER_ONLY]
    changed = [k for k in keys if saved.get(k, _SAVED_DEFAULTS.get(k)) != getattr(s, k)]
    if changed:
        diffs = ", ".join(f"{k} {saved.get(k)!r} -> {getattr(s, k)!r}" for k in changed)
        raise ValueError(f"--resume: the settings differ from the checkpoint's ({diffs}); give the same ones")
    if ckpt["labels"] != labels:
        raise ValueError("--resume: the training file's labels differ from the checkpoint's")
    if ckpt["data_digest"] != digest:
        raise ValueError("--resume: the training data differ from the checkpoint's (its tokens changed)")


def _digest(examples: list[data.Example]) -> str:
    import hashlib

    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.ids, e.labels]).encode())
    return h.hexdigest()[:16]


def _corelm_predictions(llm, task: str, rows: list[Any], labels: list[str]) -> list[Any]:
    """corelm's own predictions on `rows`: a label per text, or word tags per sentence (the tag of
    each word's first token, as the torch side scores them)."""
    if task == "sequence-classification":
        return [label for label, _ in llm.classify([text for text, _ in rows])]
    texts = [s.text for s in rows]
    tags: list[Any] = []
    # token probabilities: what llm.tag computes before merging tokens into entities
    for row, encoded, probs in zip(rows, llm.encode(texts), llm.token_probabilities(texts), strict=True):
        _, first = data.align_tags([tuple(o) for o in encoded.offsets], row, [0] * len(row.words))
        tags.append(word_tags(first, probs.argmax(-1).tolist(), labels))
    return tags


def _check_runtime(out: Path, merged, task: str, rows, examples, predicted, labels) -> dict[str, Any]:
    """Load DIR in corelm and compare: the same predictions (classifiers) or logits (causal LM)."""
    llm = corelm.load(out)
    if task == "causal-lm":
        worst = 0.0
        for e in examples[:_LM_CHECK]:
            with torch.no_grad():
                want = merged(torch.tensor([e.ids])).logits[0].float().numpy()
            worst = max(worst, float(np.abs(llm.logits(e.ids) - want).max()))
        return {"examples": min(len(examples), _LM_CHECK), "max_abs_logit_diff": worst, "equal": worst < 1e-3}
    got = _corelm_predictions(llm, task, rows, labels)
    ids_differ = 0
    if task == "token-classification":
        enc = llm.encode([s.text for s in rows])
        ids_differ = sum(list(a.ids) != b.ids for a, b in zip(enc, examples, strict=True))
    same = sum(g == p for g, p in zip(got, predicted, strict=True))
    return {"examples": len(rows), "same_predictions": same, "equal": same == len(rows), "ids_differ": ids_differ}


def _usage(out: Path, task: str, gguf: Path | None) -> list[str]:
    if task == "token-classification":
        return [f'corelm tag {out} "Peter Blackburn flew to Brussels"', f"corelm eval {out} -f TEST_FILE"]
    if task == "sequence-classification":
        return [f'corelm classify {out} "Operating profit rose 10%"', f"corelm eval {out} -f TEST_FILE"]
    return [f'corelm run {gguf} -p "..."', f"corelm chat {gguf}", f"corelm serve {gguf}"]


def _method_note(method: str) -> str:
    if method == "adapter":
        return " (the bottleneck adapter runs in corelm; llama.cpp does not load its blk.N.adapter_* tensors)"
    return ""


def finetune(args: argparse.Namespace) -> dict[str, Any] | None:
    ranks = Ranks()
    threads = args.threads or max(1, corelm.info()["physical_cores"] // ranks.local_world)
    torch.set_num_threads(threads)
    try:
        return _finetune(args, ranks, threads)
    finally:
        ranks.close()


def _finetune(args: argparse.Namespace, ranks: Ranks, threads: int) -> dict[str, Any] | None:
    t_start = time.perf_counter()
    task, out = args.task, Path(args.out)
    # ---- everything that can be wrong with the input, before the model loads ----
    if ranks.main:
        check_output_dir(out)
    source = models.inspect_source(args.model, task, args.bidirectional)
    ckpt = load_checkpoint(out / CHECKPOINT) if args.resume else None
    if ckpt is None and (out / CHECKPOINT).exists():
        raise ValueError(f"{out} already holds a run ({CHECKPOINT}): pass --resume to continue it, or another --out")
    train_rows = data.read_examples(task, args.train, args.limit)
    eval_rows = data.read_examples(task, args.eval, args.limit) if args.eval else None
    test_rows = data.read_examples(task, args.test, args.limit) if args.test else None
    labels = data.label_set(task, train_rows) if task != "causal-lm" else []
    if len(labels) == 1:
        raise ValueError(f"{args.train}: only one label ({labels[0]}): nothing to learn")
    for path, rows in ((args.eval, eval_rows), (args.test, test_rows)):
        if rows is not None and task != "causal-lm":
            data.check_labels(task, path, rows, labels)
    s = _settings(args, ranks)
    if args.stop_after and ckpt and args.stop_after <= ckpt["step"]:
        raise ValueError(f"--stop-after {args.stop_after}: the checkpoint is already at step {ckpt['step']}")

    # ---- the model and the tokens ----
    what = f"{source.model_type} {'GGUF ' + source.gguf_file if source.gguf_file else 'folder ' + str(source.folder)}"
    both_ways = ", attending both ways" if s.bidirectional else ""
    say(f"loading {what} for {task} ({s.method}{both_ways})")
    model, tokenizer = models.load(source, task, labels, s.seed, s.bidirectional)
    masks = models.sparsity_masks(model)
    if masks:
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        how = "after every step" if s.method == "full" else "in the merged update"
        say(f"a pruned model: {len(masks)} matrices keep their zeros ({100 * (1 - kept):.1f}% of them), {how}")
    max_ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_ctx and s.max_len > max_ctx:
        raise ValueError(f"--max-len {s.max_len} exceeds the model's {max_ctx} positions")
    train = data.encode(task, tokenizer, train_rows, labels, s.max_len, args.train)
    evals = data.encode(task, tokenizer, eval_rows, labels, s.max_len, args.eval) if eval_rows else None
    tests = data.encode(task, tokenizer, test_rows, labels, s.max_len, args.test) if test_rows else None
    if not any(e.weight for e in train):
        raise ValueError(f"{args.train}: no tokens to learn from (all cut off by --max-len {s.max_len}?)")
    digest = _digest(train)
    if ckpt:
        _check_resume(s, ckpt, labels, digest)
    micro = math.ceil(len(train) / (s.batch * ranks.world))
    total_steps = math.ceil(micro / s.grad_accum) * s.epochs
    model = models.wrap(model, task, s.method, s.lora_r, s.lora_alpha, s.lora_dropout, total_steps,
                        s.adapter_config, s.reduction_factor)  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_tokens = sum(len(e.ids) for e in train)
    say(
        f"{len(train):,} training examples ({n_tokens:,} tokens), {len(labels) or 'no'} labels; "
        f"{n_train / 1e6:.2f}M of {n_params / 1e6:.1f}M parameters train; {total_steps} steps of "
        f"{s.batch * ranks.world * s.grad_accum} examples; threads {threads} x {ranks.world} process(es)"
    )

    # ---- training ----
    d = Data(train, eval_rows, evals, labels, tokenizer.pad_token_id)
    extra = {"labels": labels, "data_digest": digest}
    show = not args.quiet and sys.stderr.isatty()
    result = fit(model, s, d, out, ranks, ckpt, args.stop_after, extra, show, masks)
    if not result["finished"]:
        say(f"stopped after step {result['step']} of {result['total_steps']}; continue with --resume")
        return None
    if not ranks.main:
        return None

    # ---- the best epoch, merged, scored in fp32 on --test, exported ----
    best = result["best"]
    if best is not None and (out / BEST).is_file():
        model.load_state_dict(torch.load(out / BEST, map_location="cpu", weights_only=True)["model"])
        say(f"best epoch: {best['epoch']} (of {s.epochs}) on {args.eval}")
    final = models.merged(model)
    models.apply_masks(final, masks)  # LoRA's merged update too: the export keeps the pruned zeros
    final.eval()
    summary: dict[str, Any] = {}
    report_lines = []
    test_result, predicted = None, None
    if tests is not None and test_rows is not None:
        test_result, predicted = evaluate(final, task, test_rows, tests, labels, 2 * s.batch, False, d.pad_id)
        say(f"test ({args.test}): {metrics.headline(test_result)}")
        report_lines.append(f"test: {args.test}\n\n{metrics.report_text(test_result)}")
        if not args.json:
            print(metrics.report_text(test_result))
    outputs: dict[str, Any] = {}
    runtime = None
    if not args.no_export:
        models.save_folder(final, tokenizer, out)
        outputs["folder"] = str(out)
        gguf = None
        if task == "causal-lm":
            from corelm.quantize import quantize_model

            gguf = out / "model.gguf"
            quantize_model(out, gguf, args.gguf_type, progress=False, keep_sparse=bool(masks))
            outputs["gguf"] = str(gguf)
        if task == "sequence-classification" and test_result is not None:
            png = out / "confusion.png"
            if metrics.confusion_png(test_result, str(png)):
                outputs["confusion_png"] = str(png)
        check_rows = test_rows if test_rows is not None else eval_rows
        check_examples = tests if tests is not None else evals
        if check_rows is None and task == "causal-lm":
            check_rows, check_examples = train_rows, train
        if check_rows is not None and check_examples is not None:
            if predicted is None or tests is None:
                _, predicted = evaluate(final, task, check_rows, check_examples, labels, 2 * s.batch, False, d.pad_id)
            runtime = _check_runtime(out, final, task, check_rows, check_examples, predicted, labels)
            verdict = "equal" if runtime["equal"] else "DIFFERENT"
            say(f"corelm's runtime on the exported folder: {verdict} ({json.dumps(runtime)})")
        outputs["usage"] = _usage(out, task, gguf)

    summary = {
        "task": task,
        "method": s.method,
        "sparse_matrices": len(masks),
        "model": str(args.model),
        "labels": labels,
        "settings": dataclasses.asdict(s),
        "threads": threads,
        "parameters": n_params,
        "trainable_parameters": n_train,
        "train_examples": len(train),
        "steps": result["step"],
        "train_seconds": round(result["seconds"], 2),
        "tokens_per_s": round(result["tokens"] / max(result["seconds"], 1e-9), 1),
        "epochs": result["history"],
        "best_epoch": best["epoch"] if best else s.epochs,
        "test": metrics.public(test_result) if test_result else None,
        "runtime_check": runtime,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
        "outputs": outputs,
        "command": shlex.join(sys.argv),
    }
    (out / "finetune_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if report_lines:
        (out / "report.txt").write_text("\n".join(report_lines), encoding="utf-8")
    if outputs.get("usage"):
        say(f"wrote {out}{_method_note(s.method)}; use it with:\n  " + "\n  ".join(outputs["usage"]))
    return summary
