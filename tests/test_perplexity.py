"""`corelm perplexity`: llama.cpp's method checked against numpy on LLM.logits, and KL divergence
from a saved base."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from support import data_file, run_cli, stories260k

import corelm
from corelm.analysis.perplexity import perplexity, perplexity_file, read_text

CTX = 32


@pytest.fixture(scope="module")
def stories():
    return stories260k()


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """The first ~1 KB of the TinyStories sample: 7 windows of 32 tokens."""
    full = data_file("corpora", "tinystories_sample.txt").read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(full[:1000] + "\n", encoding="utf-8")
    return path


def test_ppl_equals_numpy_on_llm_logits(stories, text):
    llm = corelm.load(stories)
    tokens = llm.tokenize(read_text(text), special=False)
    assert tokens[0] == llm.tokenizer.bos_id
    n = len(tokens) // CTX
    nll = []
    for i in range(n):
        window = tokens[i * CTX : (i + 1) * CTX]
        window[0] = llm.tokenizer.bos_id  # llama.cpp puts BOS first in every window
        logits = llm.logits(window).astype(np.float64)
        for pos in range(CTX // 2, CTX - 1):  # the second half predicts the next token
            row = logits[pos]
            lse = row.max() + np.log(np.exp(row - row.max()).sum())
            nll.append(lse - row[tokens[i * CTX + pos + 1]])
    expected = math.exp(np.mean(nll))

    r = perplexity_file(stories, text, ctx=CTX)
    assert r.chunks == n and r.count == n * (CTX - 1 - CTX // 2) == len(nll)
    assert r.ppl == pytest.approx(expected, rel=1e-5)
    nll = np.array(nll)
    err = math.sqrt(((nll**2).mean() - nll.mean() ** 2) / (len(nll) - 1)) * expected
    assert r.ppl_err == pytest.approx(err, rel=1e-4)
    assert r.chunk_ppl[-1] == pytest.approx(r.ppl)

    # batch only changes how the windows are grouped: 7 tokens per pass, several windows per pass
    for batch in (7, 3 * CTX):
        assert perplexity_file(stories, text, ctx=CTX, batch=batch).ppl == pytest.approx(r.ppl, rel=1e-4)
    assert perplexity_file(stories, text, ctx=CTX, chunks=2).count == 2 * (CTX - 1 - CTX // 2)


def test_kld_against_itself_is_zero(stories, text, tmp_path):
    base = tmp_path / "base.npz"
    a = perplexity_file(stories, text, ctx=CTX, save_logits=base)
    with np.load(base) as f:
        assert f["logprobs"].dtype == np.float16 and f["logprobs"].shape == (a.chunks, CTX - 1 - CTX // 2, 512)
    b = perplexity_file(stories, text, kld_base=base)  # ctx comes from the base
    k = b.kld
    assert b.ctx == CTX and b.ppl == pytest.approx(a.ppl) and k.ppl_base == pytest.approx(a.ppl, rel=1e-6)
    assert abs(k.kld_mean) < 1e-5 and k.kld_max < 1e-4  # float16 storage of the base: 0 to ~1e-6
    assert k.same_top == 1.0 and abs(k.dp_mean) < 1e-6 and k.ln_ppl_ratio == pytest.approx(0, abs=1e-6)


def test_kld_q8_0_small_and_positive(stories, text, tmp_path):
    base = tmp_path / "base.npz"
    perplexity_file(stories, text, ctx=CTX, save_logits=base)
    q8 = perplexity_file(stories, text, quant="q8_0", kld_base=base).kld
    q4 = perplexity_file(stories, text, quant="q4_0", kld_base=base).kld
    assert 1e-5 < q8.kld_mean < 0.01 and q8.same_top > 0.9
    assert q8.kld_min >= -1e-6 and q8.kld_median <= q8.kld_percentiles["99.0"] <= q8.kld_max
    assert q4.kld_mean > 5 * q8.kld_mean  # 4 bits lose more than 8


def test_base_from_other_ctx_or_text_is_refused(stories, text, tmp_path):
    base = tmp_path / "base.npz"
    perplexity_file(stories, text, ctx=CTX, save_logits=base)
    with pytest.raises(ValueError, match="made with --ctx 32, this run uses --ctx 16"):
        perplexity_file(stories, text, ctx=16, kld_base=base)
    other = tmp_path / "other.txt"
    other.write_text("Hello. " + text.read_text())
    with pytest.raises(ValueError, match="another tokenization"):
        perplexity_file(stories, other, kld_base=base)
    perplexity_file(stories, text, ctx=CTX, chunks=2, save_logits=tmp_path / "two.npz")
    with pytest.raises(ValueError, match="holds 2 windows; this run asks for 3"):
        perplexity_file(stories, text, chunks=3, kld_base=tmp_path / "two.npz")
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a corelm --save-logits file"):
        perplexity_file(stories, text, kld_base=tmp_path / "x.npz")
    with pytest.raises(ValueError, match="needs at least 2048"):
        perplexity_file(stories, text, ctx=1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.npz", "other.txt", "two.npz", "x.npz"]


def test_json_last_line(stories, text, capsys, tmp_path):
    assert run_cli("perplexity", str(stories), "--file", str(text), "--ctx", str(CTX), "--json") == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["ppl"] > 1 and result["ctx"] == CTX and result["kld"] is None
    # text mode: llama.cpp's running values and final line
    base = str(tmp_path / "b")
    assert run_cli("perplexity", str(stories), "-f", str(text), "-c", str(CTX), "--save-logits", base) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1]") and f"Final estimate: PPL = {result['ppl']:.4f} +/- " in out
    assert run_cli("perplexity", str(stories), "-f", str(text), "--kld-base", base, "--quant", "q8_0") == 0
    out = capsys.readouterr().out
    assert "Mean    KLD:" in out and "Same top p:" in out and "99.0%   KLD:" in out
    assert run_cli("perplexity", str(stories), "-f", str(tmp_path / "missing.txt")) == 1
    assert capsys.readouterr().err.strip() == f"corelm: error: {tmp_path / 'missing.txt'}: no such file"


def test_direct_api_on_token_ids(stories):
    """perplexity() takes ids; without bos_id the windows are used as they are."""
    llm = corelm.load(stories)
    ids = np.random.default_rng(0).integers(3, 512, size=4 * CTX)
    r = perplexity(llm.model, ids, ctx=CTX)
    assert r.chunks == 4 and not r.add_bos and r.ppl > 1
    with pytest.raises(ValueError, match="token ids must be in"):
        perplexity(llm.model, [0, 1, 512] * CTX, ctx=CTX)
