"""corelm against llama.cpp's golden vectors for the real stories260K model
(tests/golden/stories260K_llamacpp.json, written by scripts/make_golden.py).

F32 must agree exactly: prompt token ids, 48 greedy tokens, top-10 logits (ids as sets,
values within 1e-3 of the largest |logit|), on every kernel path. The Q8_0 / Q4_0 files are
llama.cpp's own quantizations; they are not committed, so those tests run only where
llama_cpp is importable: they quantize again into a temp dir, check the file's sha256 against
the golden one, and compare with looser bounds (llama.cpp stores the scale of its 8-bit
activation blocks as fp16 and feeds F16 weights fp16 activations; corelm keeps both in fp32).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from support import data_file, greedy_ids

import corelm

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "stories260K_llamacpp.json").read_text())
N_GEN = GOLDEN["settings"]["n_gen"]
PROMPTS = [p["prompt"] for p in GOLDEN["variants"]["F32"]["prompts"]]


def model_path() -> Path:
    path = data_file("models", "stories260K", "stories260K.gguf")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != GOLDEN["model_sha256"]:
        pytest.fail(f"{path} has sha256 {digest}; the golden vectors were made from {GOLDEN['model_sha256']}")
    return path


def golden(variant: str, prompt: str) -> dict:
    return next(p for p in GOLDEN["variants"][variant]["prompts"] if p["prompt"] == prompt)


def greedy(llm: corelm.LLM, ids: list[int]) -> list[int]:
    return greedy_ids(llm.model, ids, N_GEN)


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def probe_logits(llm: corelm.LLM, ref: dict, probe: dict) -> np.ndarray:
    """corelm's logits at the probe's position: after the prompt and the first n greedy tokens."""
    return llm.logits(ref["prompt_ids"] + ref["greedy_ids"][: probe["n_generated"]])[-1]


def top(logits: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in np.argsort(-logits, kind="stable")[:k]]


# ---- F32: the float32 reference, exact agreement ----


@pytest.fixture(scope="module")
def f32_llm():
    return corelm.load(model_path())


@pytest.mark.parametrize("prompt", PROMPTS)
def test_f32_prompt_ids(f32_llm, prompt):
    assert f32_llm.tokenize(prompt, add_bos=True) == golden("F32", prompt)["prompt_ids"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_f32_greedy(f32_llm, prompt, isa):
    ref = golden("F32", prompt)
    got = greedy(f32_llm, ref["prompt_ids"])
    assert got == ref["greedy_ids"], f"first difference at generated token {agreement(got, ref['greedy_ids'])}"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_f32_top_logits(f32_llm, prompt, isa):
    ref = golden("F32", prompt)
    for probe in ref["top_logits"]:
        logits = probe_logits(f32_llm, ref, probe)
        where = f"{prompt!r} after {probe['n_generated']} generated tokens"
        assert set(top(logits, len(probe["ids"]))) == set(probe["ids"]), where
        tol = 1e-3 * float(np.abs(logits).max())
        np.testing.assert_allclose(logits[probe["ids"]], probe["values"], rtol=0, atol=tol, err_msg=where)


# ---- Q8_0 / Q4_0: llama.cpp's own quantizations (need llama_cpp to regenerate the files) ----


def _make_golden_module():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """ftype -> corelm.LLM of the file llama.cpp quantizes now (the same bytes as the golden one)."""
    source = model_path()
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama_cpp is not importable: the Q8_0/Q4_0 files are regenerated with llama.cpp"
    )
    make_golden = _make_golden_module()
    cache: dict[str, corelm.LLM] = {}

    def get(ftype: str) -> corelm.LLM:
        if ftype not in cache:
            dst = tmp_path_factory.mktemp("golden") / f"stories260K-{ftype}.gguf"
            make_golden.quantize(source, dst, ftype)
            want = GOLDEN["variants"][ftype]["file_sha256"]
            if make_golden.sha256(dst) != want:
                pytest.skip(
                    f"llama_cpp {llama_cpp.__version__} quantizes {ftype} to different bytes than the golden file "
                    f"(sha256 {want}, llama_cpp {GOLDEN['llama_cpp_version']}): rerun scripts/make_golden.py"
                )
            cache[ftype] = corelm.load(dst)
        return cache[ftype]

    return get


# Bounds for the quantized files. What corelm achieved when they were written (3 prompts x 2 probes):
# Q8_0 and Q4_0 both agree on all 48 greedy tokens, on top-1 and on the top-10 set everywhere; top-5
# sets agree except once (Q8_0, "Once upon a time", ranks 5 and 6 swap: a 0.04 gap); logit values
# differ by at most 0.83% (Q8_0) / 0.70% (Q4_0) of the largest |logit| (0.12 on logits up to ~18).
QUANT_BOUNDS = {
    # ftype: (greedy tokens that must agree, top-k compared, least overlap, value tolerance / max|logit|)
    "Q8_0": (32, 1, 1, 0.02),
    "Q4_0": (8, 5, 3, 0.02),
}


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_quantized_close_to_llamacpp(quantized, ftype, prompt):
    llm = quantized(ftype)
    n_agree, k, min_overlap, rel_tol = QUANT_BOUNDS[ftype]
    ref = golden(ftype, prompt)
    assert llm.tokenize(prompt, add_bos=True) == ref["prompt_ids"]
    got = greedy(llm, ref["prompt_ids"])
    assert agreement(got, ref["greedy_ids"]) >= n_agree, (got, ref["greedy_ids"])
    for probe in ref["top_logits"]:
        logits = probe_logits(llm, ref, probe)
        where = f"{ftype} {prompt!r} after {probe['n_generated']} generated tokens"
        assert top(logits, 1) == probe["ids"][:1], where
        assert len(set(top(logits, k)) & set(probe["ids"][:k])) >= min_overlap, where
        tol = rel_tol * float(np.abs(logits).max())
        np.testing.assert_allclose(logits[probe["ids"]], probe["values"], rtol=0, atol=tol, err_msg=where)
