"""`corelm compare`: corelm's named intermediates against transformers', through the graph hook."""

from __future__ import annotations

import numpy as np
import pytest
from hf_models import VOCAB, build_encoder, build_hf_model
from support import run_cli

import corelm
from corelm.analysis.compare import compare
from corelm.formats.gguf_write import write_gguf
from corelm.kernels import Weight

pytest.importorskip("torch")

IDS = [int(i) for i in np.random.default_rng(1).integers(0, VOCAB, size=24)]


@pytest.mark.parametrize("name", ["llama-gqa-hd64", "gpt2"])
def test_every_checkpoint_matches_transformers(name, tmp_path):
    build_hf_model(name, tmp_path)
    points = compare(corelm.load(tmp_path).model, tmp_path, IDS)
    names = [p.op for p in points]
    # linear layers, every block's end, the final hidden state and the logits are all compared
    assert {"blk.0.ffn_up" if name != "gpt2" else "blk.0.attn_qkv", "blk.0.ffn_down", "output_norm", "output"} <= set(
        names
    )
    assert [p.reference for p in points if p.reference.startswith("hidden")] == [
        f"hidden_states[{i}]" for i in range(3)
    ]
    worst = max(points, key=lambda p: p.relative)
    assert worst.relative < 1e-4, worst


def test_an_encoder_compares_too(tmp_path):
    build_encoder("bert", "", tmp_path)
    points = compare(corelm.load(tmp_path).model, tmp_path, [2, *IDS[:10], 3])
    assert {"blk.0.attn_q", "blk.1.attn_v", "select"} <= {p.op for p in points}
    assert max(p.relative for p in points) < 1e-4


def test_the_first_divergence_is_the_broken_op(tmp_path):
    build_hf_model("llama-gqa-hd64", tmp_path)
    model = corelm.load(tmp_path).model
    w = model.w["blk.1.ffn_up.weight"]
    dense = w.to_float()
    dense[:, :8] *= 1.5  # a wrong weight in layer 1's up projection
    model.w["blk.1.ffn_up.weight"] = Weight.from_float(dense, w.type.base).packed()
    model.reset_graph()
    points = compare(model, tmp_path, IDS)
    past = [p for p in points if p.relative > 1e-3]
    assert past[0].op == "blk.1.ffn_up"
    assert all(p.relative < 1e-4 for p in points[: points.index(past[0])])


def test_cli_compares_a_gguf_with_its_source_folder(tmp_path, capsys):
    folder = tmp_path / "hf"
    build_hf_model("gpt2", folder)
    gguf_path = write_gguf(corelm.load(folder).model, tmp_path / "m.gguf")
    assert run_cli("compare", str(gguf_path), str(folder), "--ids", "5,17,200,3,99") == 0
    out = capsys.readouterr().out
    assert "blk.1.attn_qkv" in out and "hidden_states[2]" in out and "past tolerance" not in out
