"""Fine-tuning data without torch: reading and checking the files, tokenizing, the batch plan.

The files are read with corelm.formats.labelled (CoNLL, CSV / TSV / JSONL, sentence@label), so a
malformed line fails here, naming the file and line, before any model loads. Tokenizing takes a
Hugging Face fast tokenizer (anything with __call__ returning offsets); it is the only
tokenizer-specific part, and it works from character offsets so that any tokenizer (WordPiece,
byte-level BPE, SentencePiece) aligns the same way.

An Example is what the loop trains on: token ids and one label per token (-100 where there is no
loss) for tagging and causal LM, or one label for sequence classification.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corelm.formats.labelled import LabelledDataError, TaggedSentence, read_conll, read_texts_with_labels

IGNORE = -100  # label of tokens without loss (transformers' and torch's ignore_index)
BUCKET_BATCHES = 50  # bucketing sorts pools of this many batches by length


@dataclass
class Example:
    ids: list[int]
    labels: list[int] | int  # per token (tagging, causal LM) or one class
    first_piece: list[int] = field(default_factory=list)  # tagging: each word's first token (-1: cut off)

    @property
    def weight(self) -> int:
        """How many terms this example adds to the loss."""
        if isinstance(self.labels, int):
            return 1
        return sum(1 for y in self.labels if y != IGNORE)


# ---- reading ----


def read_examples(task: str, path: str, limit: int | None = None) -> list[Any]:
    """The raw examples of a file: TaggedSentence, (text, label) or a causal-LM record."""
    p = Path(path)
    if not p.is_file():
        raise LabelledDataError(f"{path}: no such file")
    if task == "token-classification":
        rows: list[Any] = read_conll(p)
    elif task == "sequence-classification":
        rows = read_texts_with_labels(p)
    else:
        rows = read_lm_records(p)
    return rows[:limit] if limit else rows


def read_lm_records(path: Path) -> list[dict[str, Any]]:
    """JSONL lines of {"text": str} or {"messages": [{"role": str, "content": str}, ...]} with at
    least one assistant turn."""
    raw = path.read_bytes()
    if not raw.strip():
        raise LabelledDataError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = raw[: e.start].count(b"\n") + 1
        raise LabelledDataError(f"{path}:{at}: not UTF-8 text") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelledDataError(f"{path}:{lineno}: not JSON: {e.msg}") from None
        if isinstance(obj, dict) and isinstance(obj.get("text"), str) and obj["text"].strip():
            records.append({"text": obj["text"], "line": lineno})
            continue
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(messages, list) or not messages:
            raise LabelledDataError(f'{path}:{lineno}: expected {{"text": "..."}} or {{"messages": [...]}}')
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise LabelledDataError(f'{path}:{lineno}: each message needs a "role" and a "content" string')
        if not any(m["role"] == "assistant" for m in messages):
            raise LabelledDataError(f"{path}:{lineno}: no assistant message to learn from")
        records.append({"messages": messages, "line": lineno})
    if not records:
        raise LabelledDataError(f"{path}: no records")
    return records


def label_set(task: str, rows: list[Any]) -> list[str]:
    """The labels of a training file, in a fixed order: O first, then B-/I- by entity type for tags;
    sorted (numerically when all are integers) for classes."""
    if task == "token-classification":
        tags = {t for s in rows for t in s.tags}
        return sorted(tags, key=lambda t: (t != "O", t[2:], t))
    labels = {label for _, label in rows}
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def check_labels(task: str, path: str, rows: list[Any], labels: list[str]) -> None:
    """Every label of an --eval / --test file must be one training saw: else an error at its line."""
    known = set(labels)
    if task == "token-classification":
        unknown = next((t for s in rows for t in s.tags if t not in known), None)
    else:
        unknown = next((label for _, label in rows if label not in known), None)
    if unknown is None:
        return
    where = _line_with(Path(path), unknown, task)
    raise LabelledDataError(f"{where}: label {unknown!r} is not among the training file's ({', '.join(labels)})")


def _line_with(path: Path, label: str, task: str) -> str:
    """file:line of the first line whose label field is `label`, or the file alone."""
    ends = ("@" + label, "," + label, "\t" + label, f',"{label}"')
    in_json = re.compile(r'"label"\s*:\s*"?' + re.escape(label) + r'"?\s*[,}]')
    for lineno, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
        s = line.rstrip()
        if task == "token-classification":
            hit = s.split()[-1:] == [label]
        else:
            hit = s.endswith(ends) or in_json.search(s) is not None
        if hit:
            return f"{path}:{lineno}"
    return str(path)


# ---- tokenizing ----


def _word_of_chars(sentence: TaggedSentence) -> list[int]:
    """For each character of sentence.text, the index of its word (-1 for the spaces)."""
    owner = [-1] * len(sentence.text)
    for w, (start, end) in enumerate(sentence.word_spans()):
        owner[start:end] = [w] * (end - start)
    return owner


def align_tags(offsets: list[tuple[int, int]], sentence: TaggedSentence, tag_ids: list[int]) -> tuple[list, list]:
    """Token labels and each word's first token from a tokenization's character offsets: a token
    belongs to the word of its first non-space character; a word's first token carries its tag, its
    other tokens and the special tokens (empty spans) get IGNORE. Words whose tokens were cut off
    have first token -1."""
    owner = _word_of_chars(sentence)
    labels, first = [], [-1] * len(sentence.words)
    for t, (start, end) in enumerate(offsets):
        word = next((owner[c] for c in range(start, min(end, len(owner))) if owner[c] >= 0), -1)
        if word >= 0 and first[word] < 0:
            first[word] = t
            labels.append(tag_ids[word])
        else:
            labels.append(IGNORE)
    return labels, first


def encode_tagged(tokenizer, sentences: list[TaggedSentence], labels: list[str], max_len: int) -> list[Example]:
    index = {t: i for i, t in enumerate(labels)}
    enc = tokenizer([s.text for s in sentences], truncation=True, max_length=max_len, return_offsets_mapping=True)
    out = []
    for s, ids, offsets in zip(sentences, enc["input_ids"], enc["offset_mapping"], strict=True):
        token_labels, first = align_tags([tuple(o) for o in offsets], s, [index.get(t, 0) for t in s.tags])
        out.append(Example(list(ids), token_labels, first))
    return out


def encode_texts(tokenizer, rows: list[tuple[str, str]], labels: list[str], max_len: int) -> list[Example]:
    index = {label: i for i, label in enumerate(labels)}
    enc = tokenizer([text for text, _ in rows], truncation=True, max_length=max_len)
    return [Example(list(ids), index[label]) for ids, (_, label) in zip(enc["input_ids"], rows, strict=True)]


def assistant_spans(tokenizer, messages: list[dict[str, str]], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered by the model's chat template, and the character spans of the
    assistant turns in it (each reply with whatever the template closes it with)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{where}: the model has no chat template, so it cannot learn from messages (use text)")

    def render(msgs: list[dict[str, str]], prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(through) and through.startswith(before)):
            raise ValueError(
                f"{where}: the chat template renders a conversation's start differently from the whole, "
                "so the assistant turns cannot be located"
            )
        spans.append((len(before), len(through)))
    return full, spans


def encode_lm(tokenizer, records: list[dict[str, Any]], max_len: int, path: str) -> list[Example]:
    """Token ids with labels equal to them where there is loss (the loop shifts them by one)."""
    out = []
    eos = tokenizer.eos_token_id
    for r in records:
        if "text" in r:
            ids = list(tokenizer(r["text"])["input_ids"])
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            ids = ids[:max_len]
            out.append(Example(ids, [IGNORE, *ids[1:]]))  # the first token is never predicted
            continue
        text, spans = assistant_spans(tokenizer, r["messages"], f"{path}:{r['line']}")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])[:max_len]
        labels = [
            tok if any(a <= start < b for a, b in spans) else IGNORE
            for tok, (start, _) in zip(ids, enc["offset_mapping"], strict=False)
        ]
        out.append(Example(ids, [IGNORE, *labels[1:]]))
    return out


def encode(task: str, tokenizer, rows: list[Any], labels: list[str], max_len: int, path: str) -> list[Example]:
    if task == "token-classification":
        return encode_tagged(tokenizer, rows, labels, max_len)
    if task == "sequence-classification":
        return encode_texts(tokenizer, rows, labels, max_len)
    return encode_lm(tokenizer, rows, max_len, path)


# ---- the batch plan ----


def batch_plan(lengths: list[int], batch: int, seed: int, epoch: int, bucket: bool = True) -> list[list[int]]:
    """The batches of one epoch, as example indices: shuffled with a seed that depends on the epoch
    only (so a resumed run draws the same batches); with bucketing, pools of BUCKET_BATCHES batches
    are sorted by length before being cut, so each batch holds examples of similar length, and the
    batches are then shuffled."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not bucket:
        return [order[i : i + batch] for i in range(0, len(order), batch)]
    pool = batch * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches
