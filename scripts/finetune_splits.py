"""Held-out splits for the fine-tuning measurements in docs/finetune.md, the same on every machine.

Financial PhraseBank comes as one file per agreement level (`sentence@label` lines, latin-1): this
writes OUT/phrasebank-LEVEL-{train,test}.txt (UTF-8, same format) from a shuffle with a fixed seed,
--test-fraction of the sentences held out. With --conll-subset N it also writes the first N
sentences of CoNLL-2003's train split as OUT/conll-train-N.txt (for the slower decoder runs).

    python scripts/finetune_splits.py --out /tmp/splits
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "labelled"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write the splits to")
    p.add_argument("--level", default="AllAgree", help="PhraseBank agreement level (AllAgree, 75Agree, ...)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conll-subset", type=int, default=None, metavar="N")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = (DATA / "financial_phrasebank" / f"Sentences_{a.level}.txt").read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    random.Random(a.seed).shuffle(lines)
    n_test = round(len(lines) * a.test_fraction)
    for name, part in (("train", lines[n_test:]), ("test", lines[:n_test])):
        path = out / f"phrasebank-{a.level}-{name}.txt"
        path.write_text("\n".join(part) + "\n", encoding="utf-8")
        print(f"{path}: {len(part)} sentences")
    if a.conll_subset:
        blocks = (DATA / "conll2003" / "train.txt").read_text(encoding="utf-8").split("\n\n")
        sentences = [b for b in blocks if b.strip() and not b.startswith("-DOCSTART-")][: a.conll_subset]
        path = out / f"conll-train-{a.conll_subset}.txt"
        path.write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
        print(f"{path}: {len(sentences)} sentences")


if __name__ == "__main__":
    main()
