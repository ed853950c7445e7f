"""Architectures in their own files over Llama (Qwen3, Mistral, Phi-3), beyond test_models.py's
checks against transformers (HF folder and GGUF, prefill and cached decode, quantized): batched
steps, the sliding window's GGUF key, clear refusals, and llama.cpp reading the files corelm writes."""

from __future__ import annotations

import numpy as np
import pytest
from hf_models import build_hf_model, hf_logits
from support import stories260k
from test_batch import assert_batched_equals_alone
from test_models import IDS, assert_logits_close

import corelm
from corelm.formats.gguf import load_gguf
from corelm.formats.gguf_write import write_gguf
from corelm.models import architecture_of
from corelm.models.llama import Llama
from corelm.models.mistral import Mistral
from corelm.models.phi3 import Phi3

NEW = ("qwen3", "mistral-swa8", "phi3-partial-rope")
NEW_CLASSES = ["Qwen3", "Mistral", "Phi3"]
HF_CONFIG = dict(vocab_size=64, num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=96,
                 max_position_embeddings=128)  # fmt: skip


@pytest.fixture(scope="module", params=NEW)
def hf_folder(request, tmp_path_factory):
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp(request.param)
    build_hf_model(request.param, folder)
    return request.param, folder


def test_batched_step_of_two_sequences_equals_each_alone(hf_folder):
    """Two sequences longer than Mistral's window: one step prefills both, then batched decode
    steps; every logit row equals the same sequence run alone."""
    prompts = [np.array(IDS[:23], np.int32), np.array(IDS[23:], np.int32)]
    assert_batched_equals_alone(corelm.load(hf_folder[1]).model, prompts, decode_steps=4)


def test_gguf_keeps_the_window_and_the_head_norms(hf_folder, tmp_path):
    name, folder = hf_folder
    path = write_gguf(corelm.load(folder).model, tmp_path / f"{name}.gguf")
    f, config = load_gguf(path), corelm.load(path).config
    if name == "mistral-swa8":  # llama.cpp's key under its architecture name, read back
        assert (f.architecture, f.metadata["llama.attention.sliding_window"], config.sliding_window) == ("llama", 8, 8)
    if name == "qwen3":
        assert f.tensors["blk.1.attn_k_norm.weight"].shape == (48,) and config.head_dim == 48
    if name == "phi3-partial-rope":
        assert (f.metadata["phi3.rope.dimension_count"], config.rope_dim) == (24, 24)


def test_qwen3_gguf_with_wrong_head_norm_is_refused(tmp_path):
    pytest.importorskip("torch")
    build_hf_model("qwen3", tmp_path)
    model = corelm.load(tmp_path).model
    model.w["blk.0.attn_q_norm.weight"] = np.ones(32, np.float32)
    path = write_gguf(model, tmp_path / "bad.gguf")
    with pytest.raises(corelm.ModelFileError, match="attn_q_norm.weight is 32, the config implies 48"):
        corelm.load(path)


# ---- config readers ----


def test_model_types_find_their_files():
    assert [architecture_of(hf_model_type=t).__name__ for t in ("qwen3", "mistral", "phi3")] == NEW_CLASSES
    assert [architecture_of(gguf_arch=a).__name__ for a in ("qwen3", "phi3", "llama")] == ["Qwen3", "Phi3", "Llama"]


def test_mistral_window_null_means_full_attention():
    assert Mistral.config_from_hf({**HF_CONFIG, "model_type": "mistral", "sliding_window": None}).sliding_window == 0
    assert Mistral.config_from_hf({**HF_CONFIG, "model_type": "mistral", "sliding_window": 16}).sliding_window == 16
    with pytest.raises(ValueError, match="sliding-window attention"):  # Llama itself still refuses one
        Llama.config_from_hf({**HF_CONFIG, "model_type": "llama", "sliding_window": 16})


def test_phi3_long_rope_is_refused_clearly():
    factors = {"short_factor": [1.0] * 16, "long_factor": [2.0] * 16, "original_max_position_embeddings": 64}
    for kind in ("longrope", "su"):
        cfg = {**HF_CONFIG, "model_type": "phi3", "rope_scaling": {"type": kind, **factors}}
        with pytest.raises(ValueError, match=f"Phi-3 rope scaling '{kind}' is not supported"):
            Phi3.config_from_hf(cfg)
    plain = Phi3.config_from_hf({**HF_CONFIG, "model_type": "phi3", "rope_scaling": None, "sliding_window": 32})
    assert (plain.arch, plain.rope_dim, plain.sliding_window) == ("phi3", 32, 32)


# ---- llama.cpp reads what corelm writes ----


@pytest.mark.parametrize("name", NEW)
def test_llama_cpp_runs_the_written_gguf_to_the_same_logits(name, tmp_path):
    """The GGUF corelm writes (with stories260K's 512-token vocabulary, which llama.cpp needs)
    gives llama.cpp's logits. llama.cpp ignores a `llama` file's sliding window, so for Mistral
    only the rows before the window fills are compared; corelm honours it (test_models.py)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    pytest.importorskip("torch")
    tok = corelm.load(stories260k()).tokenizer
    ids = [1, *(3 + i % 509 for i in IDS[1:])]
    ref = hf_logits(build_hf_model(name, tmp_path, vocab=512), ids)
    path = write_gguf(corelm.load(tmp_path).model, tmp_path / "m.gguf", tok.gguf_metadata(vocab_size=512))
    ours = corelm.load(path).logits(ids)
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, logits_all=True, flash_attn=False, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)  # fmt: skip
    try:
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)], np.float32)
    finally:
        llm.close()
    rows = 8 if name == "mistral-swa8" else len(ids)
    assert_logits_close(ours, ref)
    assert_logits_close(theirs[:rows], ours[:rows])
