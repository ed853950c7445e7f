"""`corelm finetune --method adapter`: AdapterHub's bottleneck adapters (Pfeiffer, Houlsby), and
corelm's runtime running them.

`adapters` 1.3.0 requires transformers 4.57, so these tests run in an environment of their own
(the `finetune-adapter` extra; .ci/run's second step); where `adapters` is missing they skip.
corelm's runtime equals `adapters`' torch models on every family it fine-tunes (hidden states /
logits), fine-tuning lowers the loss and hands back folders (and GGUF files) whose predictions and
logits are the torch model's, resume is exact, and bad adapters fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

adapters = pytest.importorskip(
    "adapters", reason="needs AdapterHub's adapters (pip install '.[finetune-adapter]')", exc_type=ImportError
)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_finetune import FAST, data_files, finetune, losses, minilm, phrasebank_slice, tiny_models  # noqa: E402

import corelm  # noqa: E402
from corelm.formats import ModelFileError  # noqa: E402
from corelm.models import load_model  # noqa: E402
from corelm.models.base import Segment  # noqa: E402

pytestmark = pytest.mark.adapter
CONFIGS = {"pfeiffer": adapters.SeqBnConfig, "houlsby": adapters.DoubleSeqBnConfig}
FAMILIES = {
    "bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96),
    "roberta": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                    pad_token_id=1, max_position_embeddings=66),
    "distilbert": dict(dim=64, n_layers=2, n_heads=2, hidden_dim=96),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=2),
    "llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, rms_norm_eps=1e-5),
    "qwen2": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=96, rms_norm_eps=1e-5),
}  # fmt: skip
DECODERS = ("gpt2", "llama", "qwen2")


def adapter_model(family: str, kind: str, folder: Path):
    """A random `family` model with a `kind` adapter whose weights (and the norms) are far from their
    near-identity start, saved by `adapters`; the torch model (eval)."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(family, vocab_size=100, **FAMILIES[family])
    auto = transformers.AutoModelForCausalLM if family in DECODERS else transformers.AutoModel
    model = auto.from_config(config).eval()
    adapters.init(model)
    model.add_adapter("corelm", config=CONFIGS[kind](reduction_factor=4))
    model.set_active_adapters("corelm")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name or "norm" in name.lower() or ".ln" in name:
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind", CONFIGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_equals_adapters(family: str, kind: str, tmp_path: Path) -> None:
    """corelm's graph places the adapter where `adapters` does: the same hidden states (encoders) or
    logits (decoders), and not the model without its adapter."""
    model = adapter_model(family, kind, tmp_path)
    ids = [int(t) for t in np.random.default_rng(1).integers(3, 100, 11)]

    def torch_out() -> np.ndarray:
        with torch.no_grad():
            out = model(torch.tensor([ids]))
        return (out.logits if family in DECODERS else out.last_hidden_state)[0].numpy()

    want = torch_out()
    model.set_active_adapters(None)
    without = torch_out()
    if family in DECODERS:
        got = corelm.load(tmp_path).logits(ids)
    else:
        m, _ = load_model(tmp_path)
        got = m.hidden_states(np.array(ids, np.int32), [Segment(None, 0, len(ids))])[0].copy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert np.abs(without - want).max() > 0.1  # the adapter matters


# ---- fine-tuning (test_finetune's tiny models and data) ----


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return data_files(tmp_path_factory.mktemp("data"))


def test_token_classification_bert_houlsby(models, files, tmp_path: Path) -> None:
    out = tmp_path / "ner"
    s = finetune("--task", "token-classification", "--model", models["bert"], "--train", files["conll_train"],
                 "--eval", files["conll_test"], "--test", files["conll_test"], "--out", out, "--epochs", "4",
                 "--batch", "8", "--lr", "3e-2", "--method", "adapter", "--adapter-config", "houlsby",
                 "--reduction-factor", "8", *FAST)  # fmt: skip
    curve = losses(out)
    assert np.mean(curve[-3:]) < 0.5 * np.mean(curve[:3])
    assert s["trainable_parameters"] < s["parameters"] / 5
    assert s["runtime_check"] == {"examples": 16, "same_predictions": 16, "equal": True, "ids_differ": 0}
    model, _ = load_model(out)
    assert model.config.adapter is not None and model.config.adapter.places == ("attn", "ffn")
    assert model.w["blk.1.adapter_attn_down.weight"].n == 64 // 8


def test_sequence_classification_gpt2_pfeiffer(models, files, tmp_path: Path) -> None:
    out = tmp_path / "cls"
    s = finetune("--task", "sequence-classification", "--model", models["gpt2"], "--train", files["csv_train"],
                 "--test", files["csv_test"], "--out", out, "--epochs", "3", "--batch", "8", "--method", "adapter",
                 "--lr", "1e-2", *FAST)  # fmt: skip
    curve = losses(out)
    assert np.mean(curve[-3:]) < np.mean(curve[:3])
    assert s["runtime_check"]["equal"] and s["runtime_check"]["examples"] == 16
    config = json.loads((out / "config.json").read_text())
    assert list(config["adapters"]["adapters"]) == ["corelm"]
    assert corelm.load(out).config.adapter.places == ("ffn",)


@pytest.mark.parametrize("kind", CONFIGS)
def test_causal_lm_llama_export(kind: str, models, files, tmp_path: Path) -> None:
    """Chat SFT through an adapter: the folder's logits in corelm equal transformers' + adapters', and
    the GGUF (adapter tensors and corelm.adapter.* keys beside llama's) gives the same logits."""
    out = tmp_path / kind
    s = finetune("--task", "causal-lm", "--model", models["llama"], "--train", files["chat"], "--eval", files["chat"],
                 "--out", out, "--epochs", "3", "--batch", "4", "--method", "adapter", "--adapter-config", kind,
                 "--lr", "1e-2", "--gguf-type", "f32", *FAST)  # fmt: skip
    history = [e["eval"]["loss"] for e in s["epochs"]]
    assert history[-1] < history[0]
    check = s["runtime_check"]
    assert check["equal"] and check["max_abs_logit_diff"] < 1e-3
    folder = corelm.load(out)
    ids = folder.tokenize("<|user|>where did ben go<|endoftext|><|assistant|>")
    gguf_model = corelm.load(out / "model.gguf")
    assert gguf_model.config.adapter == folder.config.adapter
    np.testing.assert_allclose(gguf_model.logits(ids), folder.logits(ids), atol=1e-4)
    assert gguf_model.generate("<|user|>where did anna go<|endoftext|><|assistant|>", max_tokens=4, temperature=0)


def test_resume_is_exact(models, files, tmp_path: Path) -> None:
    common = ["--task", "token-classification", "--model", models["bert"], "--train", files["conll_train"],
              "--epochs", "2", "--batch", "4", "--lr", "1e-3", "--no-export", "--method", "adapter", *FAST]  # fmt: skip
    finetune(*common, "--out", tmp_path / "one")
    assert finetune(*common, "--out", tmp_path / "two", "--stop-after", "5") is None
    finetune(*common, "--out", tmp_path / "two", "--resume")
    assert losses(tmp_path / "two") == losses(tmp_path / "one")
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(".adapters.corelm." in k for k in a)
    with pytest.raises(ValueError, match="adapter_config 'pfeiffer' -> 'houlsby'"):
        finetune(*common, "--out", tmp_path / "two", "--resume", "--adapter-config", "houlsby")


# ---- adapters corelm does not run: one clear line ----


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ln_after": True}, "ln_after=True"),
        ({"is_parallel": True}, "is_parallel=True"),
        ({"non_linearity": "tanh"}, "non_linearity 'tanh'"),
        ({"architecture": "lora"}, "not a bottleneck adapter"),
    ],
)
def test_unsupported_adapter_config(change: dict, message: str, tmp_path: Path) -> None:
    adapter_model("bert", "pfeiffer", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    section = config["adapters"]
    (key,) = section["config_map"]
    section["config_map"][key] |= change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=message):
        load_model(tmp_path)


def test_missing_adapter_tensor(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    adapter_model("gpt2", "houlsby", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["transformer.h.1.output_adapters.adapters.corelm.adapter_up.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing tensors: blk.1.adapter_ffn_up.weight"):
        load_model(tmp_path)


# ---- a real model (slow) ----


@pytest.mark.slow
def test_minilm_phrasebank_adapter(tmp_path: Path) -> None:
    train, test = phrasebank_slice(tmp_path)
    s = finetune("--task", "sequence-classification", "--model", minilm(), "--train", train, "--test", test,
                 "--epochs", "3", "--method", "adapter", "--out", tmp_path / "fpb", "--quiet")  # fmt: skip
    assert s["test"]["accuracy"] > 0.7
    assert s["runtime_check"]["equal"]
