"""Bottleneck adapters in corelm's graph without AdapterHub's `adapters` (which needs transformers
4.57; tests/test_finetune_adapter.py checks corelm against it in that environment): random BERT,
GPT-2 and Llama folders get adapter tensors and config.json's "adapters" section as `adapters`
writes them, and corelm's hidden states / logits, from the folder and from the GGUF it writes,
equal a torch reference that adds the adapters to transformers' model with forward hooks, written
from the equations in corelm/models/adapter.py's docstring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import build_encoder, build_hf_model  # noqa: E402

import corelm  # noqa: E402
from corelm.models import load_model  # noqa: E402
from corelm.models.base import Segment  # noqa: E402
from corelm.quantize import quantize_model  # noqa: E402

F = torch.nn.functional
# adapters' SeqBnConfig / DoubleSeqBnConfig, as config.json's config_map holds them
KINDS = {
    "pfeiffer": dict(mh_adapter=False, output_adapter=True, original_ln_before=True, non_linearity="relu"),
    "houlsby": dict(mh_adapter=True, output_adapter=True, original_ln_before=False, non_linearity="swish"),
}
COMMON = dict(original_ln_after=True, residual_before_ln=True, adapter_residual_before_ln=False, ln_before=False,
              ln_after=False, is_parallel=False, scaling=1.0, use_gating=False, phm_layer=False)  # fmt: skip
# family -> block path, then where a block keeps its adapter layers and its sublayers' output projections
LAYOUT = {
    "bert": ("encoder.layer.{i}", {"attn": "attention.output.adapters", "ffn": "output.adapters"},
             {"attn": "attention.output.dense", "ffn": "output.dense"}),
    "gpt2": ("transformer.h.{i}", {"attn": "attention_adapters.adapters", "ffn": "output_adapters.adapters"},
             {"attn": "attn.c_proj", "ffn": "mlp.c_proj"}),
    "llama": ("model.layers.{i}", {"attn": "attention_adapters.adapters", "ffn": "output_adapters.adapters"},
              {"attn": "self_attn.o_proj", "ffn": "mlp.down_proj"}),
}  # fmt: skip


def with_adapter(family: str, kind: str, folder: Path):
    """A random `family` folder plus a `kind` adapter in every block (random, far from identity);
    the torch model with the adapter added by hooks."""
    if family == "bert":
        model = build_encoder("bert", "", folder)
    else:
        model = build_hf_model("gpt2" if family == "gpt2" else "llama-gqa-hd64", folder)
    conf = {**COMMON, **KINDS[kind]}
    cfg = json.loads((folder / "config.json").read_text())
    cfg["adapters"] = {"adapters": {"corelm": "c0"}, "config_map": {"c0": conf}}
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(1)
    n_embd, n_layer = model.config.hidden_size, model.config.num_hidden_layers
    act = F.relu if conf["non_linearity"] == "relu" else F.silu
    block_path, paths, sublayers = LAYOUT[family]
    tensors = {}
    places = [p for p, key in (("attn", "mh_adapter"), ("ffn", "output_adapter")) if conf[key]]
    for i in range(n_layer):
        for place in places:
            down, up = torch.nn.Linear(n_embd, n_embd // 4), torch.nn.Linear(n_embd // 4, n_embd)
            with torch.no_grad():
                for p in (*down.parameters(), *up.parameters()):
                    p.normal_(0, 0.3)
            block = block_path.format(i=i)
            prefix = f"{block}.{paths[place]}.corelm."
            tensors |= {prefix + "adapter_down.0.weight": down.weight, prefix + "adapter_down.0.bias": down.bias,
                        prefix + "adapter_up.weight": up.weight, prefix + "adapter_up.bias": up.bias}  # fmt: skip

            def a(h, down=down, up=up):
                return up(act(down(h)))

            name = f"{block}.{sublayers[place]}"
            if not conf["original_ln_before"]:  # Houlsby: the sublayer's output s becomes s + a(s)
                model.get_submodule(name).register_forward_hook(lambda m, args, s, a=a: s + a(s))
            elif family == "bert":  # Pfeiffer, post-LN: LN(y) becomes LN(y + a(LN(y)))
                model.get_submodule(f"{block}.output.LayerNorm").register_forward_hook(
                    lambda m, args, out, a=a: F.layer_norm(
                        args[0] + a(out), m.normalized_shape, m.weight, m.bias, m.eps
                    )  # fmt: skip
                )
            else:  # Pfeiffer, pre-LN: the block's output y becomes y + a(y)
                model.get_submodule(block).register_forward_hook(lambda m, args, y, a=a: _on_first(y, a))
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors") | {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return model


def _on_first(y, a):
    if isinstance(y, tuple):
        return (y[0] + a(y[0]), *y[1:])
    return y + a(y)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", LAYOUT)
def test_adapter_graph_equals_reference(family: str, kind: str, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    model = with_adapter(family, kind, folder)
    ids = [int(t) for t in np.random.default_rng(2).integers(5, 300, 13)]
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    want = (out.last_hidden_state if family == "bert" else out.logits)[0].numpy()
    gguf = tmp_path / "model.gguf"
    quantize_model(folder, gguf, "f32", progress=False)
    for path in (folder, gguf):
        m, _ = load_model(path)
        assert m.config.adapter is not None
        assert m.config.adapter.activation == ("relu" if kind == "pfeiffer" else "silu")
        if family == "bert":
            got = m.hidden_states(np.array(ids, np.int32), [Segment(None, 0, len(ids))])[0].copy()
        else:
            got = corelm.load(path).logits(ids)
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())), err_msg=str(path))


def test_adapter_gguf_keeps_float_adapters(tmp_path: Path) -> None:
    """A q8_0 GGUF keeps the adapter tensors in float (their bottleneck rows are rarely whole blocks)
    and says what they are in corelm.adapter.* keys."""
    folder = tmp_path / "hf"
    folder.mkdir()
    with_adapter("llama", "houlsby", folder)
    gguf = tmp_path / "q8.gguf"
    quantize_model(folder, gguf, "q8_0", progress=False)
    m, _ = load_model(gguf)
    assert m.metadata["corelm.adapter.places"] == ["attn", "ffn"]
    assert m.w["blk.0.adapter_ffn_up.weight"].unpacked().type.name == "F32"
    assert m.w["blk.0.attn_q.weight"].unpacked().type.name == "Q8_0"
