"""corelm quantize writes what llama.cpp's llama-quantize writes: the same type for every tensor
(mixes and fallbacks) and the same bytes (k-quant and 32-block quantizers), for every --type, on
the real stories260K and on a random Llama and a random GPT-2 whose widths k-quants fit. The reference is
tests/golden/quantize_llamacpp.json (scripts/make_golden_quantize.py, llama-cpp-python)."""

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from support import random_gpt2_gguf, random_llama_gguf, stories260k

import corelm
from corelm.kernels import Weight, WeightType
from corelm.quantize import quantize_model
from corelm.quantize.recipes import more_bits

GOLDEN = json.loads((Path(__file__).parent / "golden" / "quantize_llamacpp.json").read_text())
TYPES = sorted(GOLDEN["random_llama"])


def tensors(path: Path) -> dict[str, list[str]]:
    r = gguf.GGUFReader(path)
    return {t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()] for t in r.tensors}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k")
    return {
        "stories260K": stories260k(),
        "random_llama": random_llama_gguf(tmp / "llama.gguf"),
        "random_gpt2": random_gpt2_gguf(tmp / "gpt2.gguf"),
    }


@pytest.mark.parametrize("label", ["stories260K", "random_llama", "random_gpt2"])
@pytest.mark.parametrize("qtype", TYPES)
def test_same_types_and_bytes_as_llama_cpp(inputs, tmp_path, label, qtype):
    out = tmp_path / f"{qtype}.gguf"
    quantize_model(inputs[label], out, qtype, progress=False)
    ours, ref = tensors(out), GOLDEN[label][qtype]
    assert sorted(ours) == sorted(ref)
    types = {n: (ours[n][0], ref[n][0]) for n in ref if ours[n][0] != ref[n][0]}
    assert not types, f"types differ (corelm, llama.cpp): {types}"
    differ = [n for n in ref if ours[n][1] != ref[n][1]]
    assert not differ, f"{len(differ)} tensors' bytes differ from llama.cpp's, e.g. {differ[:3]}"
    m = corelm.load(out)  # and corelm runs it
    assert np.isfinite(m.logits([1, 2, 3])).all()


def test_mix_gives_more_bits_where_llama_cpp_does():
    assert [i for i in range(8) if more_bits(i, 8)] == [0, 3, 6, 7]
    assert [i for i in range(22) if more_bits(i, 22)] == [0, 1, 4, 7, 10, 13, 16, 19, 20, 21]
    types = {n: t for n, (t, _) in GOLDEN["random_llama"]["q4_k_m"].items()}
    assert {types[f"blk.{i}.attn_v.weight"] for i in (0, 3, 6, 7)} == {"Q6_K"}
    assert {types[f"blk.{i}.ffn_down.weight"] for i in (1, 2, 4, 5)} == {"Q4_K"}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"


@pytest.mark.parametrize("wtype", [WeightType.Q4_K, WeightType.Q5_K, WeightType.Q6_K])
def test_kquant_error_below_the_32_block_types(wtype):
    """k-quants' searched scales: lower error than the 32-block type of about the same size."""
    x = (np.random.default_rng(1).standard_t(5, size=(64, 1024)) * 0.05).astype(np.float32)
    err = {t: np.sqrt(((Weight.from_float(x, t).to_float() - x) ** 2).mean()) for t in (wtype, WeightType.Q4_0,
           WeightType.Q5_0, WeightType.Q8_0)}  # fmt: skip
    peer = {WeightType.Q4_K: WeightType.Q4_0, WeightType.Q5_K: WeightType.Q5_0, WeightType.Q6_K: WeightType.Q5_0}
    assert err[wtype] < 0.9 * err[peer[wtype]]
    assert err[WeightType.Q8_0] < err[wtype]


@pytest.mark.parametrize("wtype", [WeightType.Q4_K, WeightType.Q5_K, WeightType.Q6_K])
def test_kquant_zero_and_constant_rows(wtype):
    x = np.zeros((3, 512), np.float32)
    x[1] = 0.25
    x[2, :256] = -3.0
    y = Weight.from_float(x, wtype).to_float()
    assert np.isfinite(y).all() and np.abs(y[0]).max() == 0
    np.testing.assert_allclose(y, x, atol=0.02 * 3)


@pytest.mark.parametrize("quant", ["q6_k", "q5_k", "q4_k", "q5_0"])
def test_quantize_while_loading(inputs, tmp_path, quant):
    """load(..., quant=) to the k-quants and Q5_0 holds the bytes `corelm quantize --pure` writes
    (interleaved where the path has the kernels), so both give the same logits."""
    q = corelm.load(inputs["random_llama"], quant=quant)
    assert q.model.w["blk.0.ffn_up.weight"].type.base.name == quant.upper()
    out = tmp_path / f"{quant}.gguf"
    recipe = {"q5_k": "q5_k_m", "q4_k": "q4_k_m"}.get(quant, quant)  # a mix's --pure is its base type
    quantize_model(inputs["random_llama"], out, recipe, pure=True, progress=False)
    ids = [1, 5, 9, 200, 301, 7]
    a, b = corelm.load(out).logits(ids), q.logits(ids)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
