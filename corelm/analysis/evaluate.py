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

from tqdm import tqdm

from corelm.analysis import metrics
from corelm.argtypes import positive_int, threads
from corelm.formats.labelled import TaggedSentence, read_conll, read_texts_with_labels
from corelm.models import QUANT_NAMES

BATCH = 64  # texts per call: one progress-bar step


def _map_labels(gold: list[str], labels: list[str], path: str) -> list[str]:
    by_name = {name.lower(): name for name in labels}
    if all(g.lower() in by_name for g in gold):
        return [by_name[g.lower()] for g in gold]
    if all(g.isdigit() and int(g) < len(labels) for g in gold):
        return [labels[int(g)] for g in gold]
    unknown = sorted({g for g in gold if g.lower() not in by_name})
    raise ValueError(f"{path}: labels {', '.join(unknown[:5])} are not the model's ({', '.join(labels)})")


def evaluate_classifier(llm, path: str, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    rows = read_texts_with_labels(path)[:limit]
    gold = _map_labels([label for _, label in rows], llm.labels, path)
    texts = [text for text, _ in rows]
    predicted: list[str] = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(texts), BATCH), desc="classifying", unit="batch", disable=not progress):
        predicted += [label for label, _ in llm.classify(texts[start : start + BATCH])]
    seconds = time.perf_counter() - t0
    result = metrics.classification(gold, predicted, llm.labels)
    return {"task": "sequence-classification", "file": str(path), **result, "seconds": seconds}


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
    sentences = read_conll(path)[:limit]
    gold = [s.tags for s in sentences]
    predicted: list[list[str]] = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(sentences), BATCH), desc="tagging", unit="batch", disable=not progress):
        batch = sentences[start : start + BATCH]
        predicted += [word_tags(s, ents) for s, ents in zip(batch, llm.tag([s.text for s in batch]), strict=True)]
    seconds = time.perf_counter() - t0
    result = metrics.tagging(gold, predicted)
    return {"task": "token-classification", "file": str(path), **result, "seconds": seconds}


def cmd_eval(args: argparse.Namespace) -> int:
    import corelm

    metrics.libraries()  # fail before loading the model
    llm = corelm.load(args.model, threads=args.threads, quant=args.quant)
    show = not args.json and sys.stderr.isatty()
    if "classify" in llm.capabilities:
        result = evaluate_classifier(llm, args.file, args.limit, show)
        if args.png and not metrics.confusion_png(result, args.png):
            raise ValueError("--png needs matplotlib: pip install 'corelm[eval]'")
    elif "tag" in llm.capabilities:
        result = evaluate_tagger(llm, args.file, args.limit, show)
    else:
        raise ValueError(f"{args.model}: this model has no classification head to evaluate (it can: embed)")
    if args.json:
        print(json.dumps(metrics.public(result), indent=2))
        return 0
    print(f"{result['task']} on {result['file']}: {result['examples']} examples, {result['seconds']:.1f} s")
    print(metrics.report_text(result), end="")
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
