"""corelm's own default model, shipped in the package."""

from __future__ import annotations

import json
from pathlib import Path

from support import greedy_ids, subprocess_kwargs

import corelm
from corelm.llm import DEFAULT_MODEL

GOLDEN = Path(__file__).parent / "golden" / "default_model_transformers.json"


def test_default_model_is_small_and_loads():
    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size < 11e6
    llm = corelm.load()
    assert llm.config.arch == "llama" and llm.tokenizer is not None
    text = llm.generate("ROMEO:", max_tokens=60, temperature=0.8, seed=1)
    # 60 tokens of verse: longer than 60 characters, printable apart from its line breaks.
    assert len(text) > 60 and text.replace("\n", "").isprintable(), text


def test_default_model_greedy_matches_transformers():
    """Greedy tokens of the shipped F16 GGUF against transformers' on the fp32 HF folder the training
    wrote (recorded by scripts/make_default_model.py)."""
    golden = json.loads(GOLDEN.read_text())
    llm = corelm.load()
    ids = llm.tokenize(golden["prompt"])
    n = len(golden["transformers_greedy"])
    ours = greedy_ids(llm.model, ids, n)
    assert golden["gguf_agrees_for"] == n
    assert ours == golden["transformers_greedy"]


def test_cli_run_without_model(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "corelm.cli", "run", "-p", "ROMEO:", "-n", "20", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        **subprocess_kwargs(),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout) > 20
