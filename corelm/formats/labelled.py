"""Labelled data for classifiers and taggers: what `corelm eval` (and fine-tuning) read.

- Texts with a label: CSV / TSV with a header naming a text column (text, sentence) and a
  label column (label); JSONL lines {"text": ..., "label": ...}; or `sentence@label` lines
  (Financial PhraseBank). The format follows the file's extension (.csv, .tsv, .jsonl) and
  the first line; latin-1 is accepted where a file is not UTF-8 (some PhraseBank files).
- Tagged sentences: CoNLL-style files, one `word ... tag` per line (the tag is the last
  column), a blank line between sentences, `-DOCSTART-` lines skipped.

Anything malformed is a LabelledDataError naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path


class LabelledDataError(ValueError):
    """A labelled file that cannot be read; the message names the file and line."""


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def word_spans(self) -> list[tuple[int, int]]:
        """Each word's [start, end) in `text`."""
        spans, pos = [], 0
        for w in self.words:
            spans.append((pos, pos + len(w)))
            pos += len(w) + 1
        return spans


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LabelledDataError(f"{path}: cannot read: {e.strerror or e}") from e
    if not raw.strip():
        raise LabelledDataError(f"{path}: the file is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # never fails; PhraseBank's older splits are latin-1


def read_conll(path: str | PathLike[str]) -> list[TaggedSentence]:
    """Sentences of a CoNLL-style file (word ... tag per line)."""
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    columns = 0
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append(TaggedSentence(words, tags))
                words, tags = [], []
            continue
        if len(parts) < 2:
            raise LabelledDataError(f"{path}:{lineno}: expected 'word ... tag', got {line.strip()!r}")
        if columns and len(parts) != columns:
            raise LabelledDataError(f"{path}:{lineno}: {len(parts)} columns where earlier lines have {columns}")
        columns = len(parts)
        tag = parts[-1]
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise LabelledDataError(f"{path}:{lineno}: tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
        words.append(parts[0])
        tags.append(tag)
    if words:
        sentences.append(TaggedSentence(words, tags))
    if not sentences:
        raise LabelledDataError(f"{path}: no sentences")
    return sentences


def read_texts_with_labels(path: str | PathLike[str]) -> list[tuple[str, str]]:
    """(text, label) pairs of a CSV / TSV / JSONL / sentence@label file."""
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl(path, text)
    elif suffix in (".csv", ".tsv") or "\t" in text.split("\n", 1)[0]:
        rows = _table(path, text, "\t" if suffix == ".tsv" or "\t" in text.split("\n", 1)[0] else ",")
    else:
        rows = _at_lines(path, text)
    if not rows:
        raise LabelledDataError(f"{path}: no labelled texts")
    return rows


def _jsonl(path: Path, text: str) -> list[tuple[str, str]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelledDataError(f"{path}:{lineno}: not JSON: {e.msg}") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or "label" not in obj:
            raise LabelledDataError(f'{path}:{lineno}: expected {{"text": "...", "label": ...}}')
        rows.append((obj["text"], str(obj["label"])))
    return rows


def _table(path: Path, text: str, delimiter: str) -> list[tuple[str, str]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    text_col = next((header.index(n) for n in ("text", "sentence") if n in header), None)
    if text_col is None or "label" not in header:
        raise LabelledDataError(f"{path}:1: the header needs a 'text' (or 'sentence') and a 'label' column")
    label_col = header.index("label")
    rows = []
    for lineno, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise LabelledDataError(f"{path}:{lineno}: {len(row)} columns, the header has {len(header)}")
        rows.append((row[text_col].strip(), row[label_col].strip()))
    return rows


def _at_lines(path: Path, text: str) -> list[tuple[str, str]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sentence, at, label = line.rpartition("@")
        if not at or not sentence.strip() or not label.strip():
            raise LabelledDataError(f"{path}:{lineno}: expected 'sentence@label', got {line.strip()[:60]!r}")
        rows.append((sentence.strip(), label.strip()))
    return rows
