"""`corelm eval`: a classifier's or tagger's quality on a labelled file, with the field's metrics.

Sequence classifiers (corelm classify): accuracy, per-class precision / recall / F1 / support with
macro and weighted averages (scikit-learn's classification_report), and the confusion matrix
(text; --png draws it). Token classifiers (corelm tag) on a CoNLL-style file: the entity-level
report of seqeval (micro / macro / weighted F1, as CoNLL scores NER) and the token-level report
per BIO tag. The model sees each sentence's words joined by spaces; its entities are mapped back
onto the words (B- on an entity's first word, I- on the rest), so the scores are the file's own
words, whatever the tokenizer.

Labels: a file's labels must be the model's (compared case-insensitively), or integers that index
the model's labels (SST-2's 0 / 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from corelm.argtypes import positive_int, threads
from corelm.formats.labelled import TaggedSentence, read_conll, read_texts_with_labels
from corelm.models import QUANT_NAMES

BATCH = 64  # texts per call: one progress-bar step


def _metrics_libraries():
    try:
        import seqeval.metrics
        import sklearn.metrics
    except ImportError as e:
        raise ValueError(f"corelm eval needs scikit-learn and seqeval: pip install 'corelm[eval]' ({e.name})") from e
    return sklearn.metrics, seqeval.metrics


def _map_labels(gold: list[str], labels: list[str], path: str) -> list[str]:
    by_name = {name.lower(): name for name in labels}
    if all(g.lower() in by_name for g in gold):
        return [by_name[g.lower()] for g in gold]
    if all(g.isdigit() and int(g) < len(labels) for g in gold):
        return [labels[int(g)] for g in gold]
    unknown = sorted({g for g in gold if g.lower() not in by_name})
    raise ValueError(f"{path}: labels {', '.join(unknown[:5])} are not the model's ({', '.join(labels)})")


def evaluate_classifier(llm, path: str, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    sk, _ = _metrics_libraries()
    rows = read_texts_with_labels(path)[:limit]
    gold = _map_labels([label for _, label in rows], llm.labels, path)
    texts = [text for text, _ in rows]
    predicted: list[str] = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(texts), BATCH), desc="classifying", unit="batch", disable=not progress):
        predicted += [label for label, _ in llm.classify(texts[start : start + BATCH])]
    seconds = time.perf_counter() - t0
    labels = llm.labels
    report = sk.classification_report(gold, predicted, labels=labels, output_dict=True, zero_division=0)
    return {
        "task": "sequence-classification",
        "file": str(path),
        "examples": len(rows),
        "accuracy": float(sk.accuracy_score(gold, predicted)),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "report": report,
        "report_text": sk.classification_report(gold, predicted, labels=labels, digits=4, zero_division=0),
        "labels": labels,
        "confusion": sk.confusion_matrix(gold, predicted, labels=labels).tolist(),
        "seconds": seconds,
    }


def word_tags(sentence: TaggedSentence, entities) -> list[str]:
    """The BIO tag of each word from entities' character spans: B- on the first word an entity
    covers, I- on the others, O elsewhere."""
    tags = ["O"] * len(sentence.words)
    for e in entities:
        inside = [i for i, (s, t) in enumerate(sentence.word_spans()) if s < e.end and t > e.start]
        for j, i in enumerate(inside):
            tags[i] = ("B-" if j == 0 else "I-") + e.label
    return tags


def evaluate_tagger(llm, path: str, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    sk, sq = _metrics_libraries()
    sentences = read_conll(path)[:limit]
    gold = [s.tags for s in sentences]
    predicted: list[list[str]] = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(sentences), BATCH), desc="tagging", unit="batch", disable=not progress):
        batch = sentences[start : start + BATCH]
        predicted += [word_tags(s, ents) for s, ents in zip(batch, llm.tag([s.text for s in batch]), strict=True)]
    seconds = time.perf_counter() - t0
    entity_report = sq.classification_report(gold, predicted, output_dict=True, zero_division=0)
    flat_gold = [t for tags in gold for t in tags]
    flat_pred = [t for tags in predicted for t in tags]
    tags = sorted(set(flat_gold) | set(flat_pred), key=lambda t: (t == "O", t[2:], t))
    return {
        "task": "token-classification",
        "file": str(path),
        "examples": len(sentences),
        "entity_micro_f1": float(entity_report["micro avg"]["f1-score"]),
        "entity_report": {k: {m: float(v) for m, v in d.items()} for k, d in entity_report.items()},
        "entity_report_text": sq.classification_report(gold, predicted, digits=4, zero_division=0),
        "token_accuracy": float(sk.accuracy_score(flat_gold, flat_pred)),
        "token_report_text": sk.classification_report(flat_gold, flat_pred, labels=tags, digits=4, zero_division=0),
        "seconds": seconds,
    }


def confusion_png(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, matrix = result["labels"], np.array(result["confusion"])
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color="black")
    ax.set_title(f"accuracy {result['accuracy']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_eval(args: argparse.Namespace) -> int:
    import corelm

    _metrics_libraries()  # fail before loading the model
    llm = corelm.load(args.model, threads=args.threads, quant=args.quant)
    show = not args.json and sys.stderr.isatty()
    if "classify" in llm.capabilities:
        result = evaluate_classifier(llm, args.file, args.limit, show)
        if args.png:
            confusion_png(result, args.png)
    elif "tag" in llm.capabilities:
        result = evaluate_tagger(llm, args.file, args.limit, show)
    else:
        raise ValueError(f"{args.model}: this model has no classification head to evaluate (it can: embed)")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if not k.endswith("_text")}, indent=2))
        return 0
    print(f"{result['task']} on {result['file']}: {result['examples']} examples, {result['seconds']:.1f} s")
    if result["task"] == "sequence-classification":
        print(f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}\n")
        print(result["report_text"])
        width = max(len(label) for label in result["labels"])
        print("confusion matrix (rows: true, columns: predicted)")
        print(" " * (width + 2) + " ".join(f"{label[:8]:>8}" for label in result["labels"]))
        for label, row in zip(result["labels"], result["confusion"], strict=True):
            print(f"{label:>{width}}  " + " ".join(f"{v:>8}" for v in row))
    else:
        print(f"entity-level micro F1 {result['entity_micro_f1']:.4f} (seqeval)\n")
        print(result["entity_report_text"])
        print(f"token level (accuracy {result['token_accuracy']:.4f})")
        print(result["token_report_text"])
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `eval` on the `corelm` command's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="accuracy / F1 of a classifier or tagger on a labelled file",
        description="Score a sequence classifier (accuracy, per-class precision/recall/F1, confusion matrix) "
        "or a token classifier (entity-level seqeval report and per-tag token report) on a labelled file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("model", metavar="MODEL", help="a .gguf file or a Hugging Face folder with a classifier")
    p.add_argument("-f", "--file", required=True, help="CSV/TSV/JSONL text,label or sentence@label; CoNLL for taggers")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="score the first N examples only")
    p.add_argument("--png", default=None, help="draw the confusion matrix (classifiers) to this PNG file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("-t", "--threads", type=threads, default=None, help="threads (default: physical cores)")
    p.add_argument("--quant", choices=list(QUANT_NAMES), default=None, help="quantize while loading")
    p.set_defaults(func=cmd_eval)
    return p
