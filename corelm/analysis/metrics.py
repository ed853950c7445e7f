"""The field's metrics on a model's predictions, one layout for `corelm eval` (corelm's runtime) and
`corelm finetune` (the torch model): seqeval's entity-level report and scikit-learn's per-tag token
report for taggers; accuracy, per-class precision / recall / F1 and the confusion matrix for
classifiers; perplexity for causal LMs. scikit-learn and seqeval are imported when first used."""

from __future__ import annotations

import math
from typing import Any


def libraries():
    try:
        import seqeval.metrics
        import sklearn.metrics
    except ImportError as e:
        raise ValueError(f"scoring needs scikit-learn and seqeval: pip install 'corelm[eval]' ({e.name})") from e
    return sklearn.metrics, seqeval.metrics


def tagging(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    sk, sq = libraries()
    entity = sq.classification_report(gold, predicted, output_dict=True, zero_division=0)
    flat_gold = [t for tags in gold for t in tags]
    flat_pred = [t for tags in predicted for t in tags]
    tags = sorted(set(flat_gold) | set(flat_pred), key=lambda t: (t == "O", t[2:], t))
    return {
        "examples": len(gold),
        "entity_micro_f1": float(entity["micro avg"]["f1-score"]),
        "entity_report": {k: {m: float(v) for m, v in d.items()} for k, d in entity.items()},
        "entity_report_text": sq.classification_report(gold, predicted, digits=4, zero_division=0),
        "token_accuracy": float(sk.accuracy_score(flat_gold, flat_pred)),
        "token_report_text": sk.classification_report(flat_gold, flat_pred, labels=tags, digits=4, zero_division=0),
    }


def classification(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    sk, _ = libraries()
    report = sk.classification_report(gold, predicted, labels=labels, output_dict=True, zero_division=0)
    return {
        "examples": len(gold),
        "accuracy": float(sk.accuracy_score(gold, predicted)),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "report": report,
        "report_text": sk.classification_report(gold, predicted, labels=labels, digits=4, zero_division=0),
        "labels": labels,
        "confusion": sk.confusion_matrix(gold, predicted, labels=labels).tolist(),
    }


def language_model(loss_sum: float, tokens: int) -> dict[str, Any]:
    loss = loss_sum / max(tokens, 1)
    return {"tokens": tokens, "loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def score(result: dict[str, Any]) -> float:
    """One number to choose the best epoch by (higher is better)."""
    if "entity_micro_f1" in result:
        return result["entity_micro_f1"]
    if "accuracy" in result:
        return result["accuracy"]
    return -result["loss"]


def headline(result: dict[str, Any]) -> str:
    if "entity_micro_f1" in result:
        return f"entity micro F1 {result['entity_micro_f1']:.4f}, token accuracy {result['token_accuracy']:.4f}"
    if "accuracy" in result:
        return f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}"
    return f"loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f} ({result['tokens']} tokens)"


def report_text(result: dict[str, Any]) -> str:
    """The full report, as `corelm eval` prints it."""
    lines = [headline(result), ""]
    if "entity_micro_f1" in result:
        lines += ["entity level (seqeval)", result["entity_report_text"]]
        lines += [f"token level (accuracy {result['token_accuracy']:.4f})", result["token_report_text"]]
    elif "accuracy" in result:
        lines.append(result["report_text"])
        width = max(len(label) for label in result["labels"])
        lines.append("confusion matrix (rows: true, columns: predicted)")
        lines.append(" " * (width + 2) + " ".join(f"{label[:8]:>8}" for label in result["labels"]))
        for label, row in zip(result["labels"], result["confusion"], strict=True):
            lines.append(f"{label:>{width}}  " + " ".join(f"{v:>8}" for v in row))
    return "\n".join(lines).rstrip() + "\n"


def confusion_png(result: dict[str, Any], path: str) -> bool:
    """Draw a classifier's confusion matrix to a PNG file (False when matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, matrix = result["labels"], result["confusion"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(matrix[i][j])), ha="center", va="center", color="black")
    ax.set_title(f"accuracy {result['accuracy']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its text renderings (for JSON)."""
    return {k: v for k, v in result.items() if not k.endswith("_text")}
