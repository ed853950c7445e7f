"""`corelm train`: the whole pipeline on a tiny model (a few seconds), exact resume, the
exported Hugging Face folder and GGUF against transformers, and bad input refused up front."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from support import data_file, subprocess_kwargs

import corelm
from corelm.train import add_parser

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# tiny model, ~300-token vocabulary, 8 x 64 tokens a step: ~25 ms a step on one thread
SETTINGS = ["--batch", "8", "--seq-len", "64", "--warmup", "5", "--lr", "3e-3", "--threads", "1"]
TINY = ["--config", "tiny", "--vocab-size", "300", *SETTINGS]


def train(*argv: str):
    """Run `corelm train ARGV` as the CLI does, but let exceptions through."""
    parser = argparse.ArgumentParser(prog="corelm")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", *map(str, argv)])
    from corelm.train.trainer import train as run

    return run(args)


def losses(out) -> list[dict]:
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 6 KB of Shakespeare, cut at a line end."""
    text = data_file("corpora", "tinyshakespeare.txt").read_text(encoding="utf-8")[:6000]
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """One full 40-step run with the default (auto) compute type."""
    out = tmp_path_factory.mktemp("run")
    summary = train("--corpus", corpus, "--out", out, "--steps", 40, "--eval-every", 20, *TINY)
    return out, summary


# ---- the pipeline ----


def test_loss_falls(run):
    out, summary = run
    rows = losses(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < first - 0.5, f"loss went from {first:.3f} to {last:.3f}"
    assert summary["final_val_loss"] < np.log(300), "validation loss no better than uniform"


def test_outputs(run, corpus):
    out, summary = run
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert (out / "model.gguf").read_bytes()[:4] == b"GGUF"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 300 and config["tie_word_embeddings"]
    assert config["hidden_size"] % 32 == 0 and config["intermediate_size"] % 32 == 0
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["bos_token"] == tok_config["eos_token"] == "<|endoftext|>" and tok_config["add_bos_token"]
    on_disk = json.loads((out / "train_summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["steps"] == 40 and summary["tokens_seen"] == 40 * 8 * 64
    assert summary["dtype"] in ("bf16", "fp32") and summary["parameters"] > 0
    assert summary["val_perplexity"] == pytest.approx(np.exp(summary["final_val_loss"]))
    assert summary["final_train_loss"] == pytest.approx(np.mean([r["loss"] for r in losses(out)[-10:]]))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["format"] == "corelm-train-checkpoint"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_tokenizer_agrees_everywhere(run, corpus):
    """transformers, corelm on the folder and corelm on the GGUF tokenize alike, BOS first."""
    out, _ = run
    text = corpus.read_text()[-500:]
    ours = corelm.load(out).tokenize(text)
    assert ours[0] == 0 and len(ours) > 50
    assert corelm.load(out / "model.gguf").tokenize(text) == ours
    assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ours
    assert corelm.load(out).detokenize(ours[1:]) == text


def test_exports_match_transformers(run, corpus):
    out, _ = run
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_llm, gguf_llm = corelm.load(out), corelm.load(out / "model.gguf")
    ids = hf_llm.tokenize(corpus.read_text()[-800:])[:100]
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].float().numpy()
    scale = np.abs(ref).max()
    for llm, tol in ((hf_llm, 1e-3), (gguf_llm, 0.03)):  # fp32 folder; Q8_0 weights and int8 activations
        err = np.abs(llm.logits(ids) - ref).max()
        assert err <= tol * scale, f"max |diff| {err:.3g} > {tol} x logit scale {scale:.3g}"
    # Greedy first token after the prompt length whose top-2 margin is widest (no near-ties).
    top2 = np.sort(ref, axis=-1)[:, -2:]
    n = 10 + int(np.argmax(top2[10:, 1] - top2[10:, 0])) + 1
    assert top2[n - 1, 1] - top2[n - 1, 0] > 0.06 * scale
    expected = int(ref[n - 1].argmax())
    assert expected != 0, "the widest-margin prediction is <|endoftext|>: pick another text"
    for llm in (hf_llm, gguf_llm):
        assert llm.generate(ids[:n], max_tokens=1, temperature=0) == llm.detokenize([expected])


def test_given_tokenizer_and_json_config(run, corpus, tmp_path):
    out, _ = run
    config = tmp_path / "one_layer.json"
    fields = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    config.write_text(json.dumps({**fields, "max_position_embeddings": 64, "model_type": "llama"}))
    new = tmp_path / "new"
    tokenizer = ["--tokenizer", out / "tokenizer.json"]
    train("--corpus", corpus, "--out", new, "--config", config, *tokenizer, "--steps", 3, *SETTINGS)
    assert (new / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()
    saved = json.loads((new / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1 and saved["vocab_size"] == 300 and saved["max_position_embeddings"] == 64
    assert corelm.load(new / "model.gguf").tokenize("ROMEO:") == corelm.load(out).tokenize("ROMEO:")


# ---- resume ----


@pytest.mark.parametrize("dtype", ["fp32", "auto"])
def test_resume_continues_the_same_curve(corpus, tmp_path, dtype):
    """Interrupted after step 13 (last checkpoint) and resumed == one uninterrupted run."""
    common = ["--corpus", corpus, "--steps", 20, "--eval-every", 5, "--dtype", dtype, *TINY]
    straight = train("--out", tmp_path / "straight", *common)
    out = tmp_path / "resumed"
    train("--out", out, *common, "--stop-after", 13)
    assert [r["step"] for r in losses(out)] == list(range(1, 14))
    assert not (out / "model.safetensors").exists()
    # A step logged after the last checkpoint (the process died before the next one) is dropped.
    with open(out / "losses.jsonl", "a") as f:
        f.write(json.dumps({"step": 14, "loss": 99.0, "lr": 0.0}) + "\n")
    resumed = train("--corpus", corpus, "--out", out, "--resume")  # settings come from the checkpoint
    a, b = losses(tmp_path / "straight"), losses(out)
    assert [r["step"] for r in b] == list(range(1, 21))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
    assert resumed["final_val_loss"] == pytest.approx(straight["final_val_loss"], rel=1e-6)
    assert resumed["tokens_seen"] == straight["tokens_seen"]


def test_resume_refuses_another_corpus(corpus, tmp_path):
    out = tmp_path / "run"
    train("--corpus", corpus, "--out", out, "--steps", 10, "--eval-every", 5, "--stop-after", 5, *TINY)
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1])
    with pytest.raises(ValueError, match="not the one the checkpoint was trained on"):
        train("--corpus", other, "--out", out, "--resume")
    with pytest.raises(ValueError, match="differs from the checkpoint's model"):
        train("--corpus", corpus, "--out", out, "--resume", "--config", "small")


# ---- bad input: refused before any training ----


def _bad_cases(tmp_path, corpus):
    def text_file(name: str, content: bytes):
        path = tmp_path / name
        path.write_bytes(content)
        return path

    blocker = text_file("blocker", b"a file where a folder should be")
    json_config = text_file("bad.json", json.dumps({"hidden_size": 64, "hiden_layers": 2}).encode())
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    narrow = text_file("narrow.json", json.dumps({**shape, "hidden_size": 48}).encode())
    narrow_ff = text_file("ff.json", json.dumps({**shape, "intermediate_size": 100}).encode())
    partial = text_file("partial.json", json.dumps({"hidden_size": 64}).encode())
    small = text_file("small.txt", b"To be or not to be.\n" * 20)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "checkpoint.pt").write_bytes(b"x")
    return [
        (FileNotFoundError, "no such file", ["--corpus", tmp_path / "missing.txt"]),
        (ValueError, "is empty", ["--corpus", text_file("empty.txt", b" \n\n")]),
        (ValueError, "looks binary", ["--corpus", text_file("bin.txt", b"hello\0world" * 100)]),
        (ValueError, "not UTF-8", ["--corpus", text_file("latin1.txt", "café crème\n".encode("latin-1") * 100)]),
        (ValueError, "training needs at least", ["--corpus", small, "--vocab-size", 257]),
        (ValueError, r"supports only \d+ tokens but --vocab-size is 5000", ["--corpus", corpus, "--vocab-size", 5000]),
        (ValueError, "too small", ["--corpus", corpus, "--vocab-size", 100]),
        (OSError, "cannot write to the output folder", ["--corpus", corpus, "--out", blocker / "sub"]),
        (ValueError, "exceeds the model's context", ["--corpus", corpus, "--seq-len", 1000]),
        (ValueError, "unknown LlamaConfig field.*hiden_layers", ["--corpus", corpus, "--config", json_config]),
        (ValueError, "hidden_size 48 is not a multiple of 32", ["--corpus", corpus, "--config", narrow]),
        (ValueError, "intermediate_size 100 is not a multiple of 32", ["--corpus", corpus, "--config", narrow_ff]),
        (ValueError, "missing num_hidden_layers", ["--corpus", corpus, "--config", partial]),
        (ValueError, "not a preset", ["--corpus", corpus, "--config", "huge"]),
        (ValueError, "already holds a training run", ["--corpus", corpus, "--out", existing]),
        (FileNotFoundError, "no checkpoint to resume from", ["--corpus", corpus, "--resume"]),
    ]


def test_bad_input_is_refused_before_training(corpus, tmp_path, monkeypatch):
    from corelm.train import trainer

    def no_training(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(trainer, "fit", no_training)
    for i, (error, message, argv) in enumerate(_bad_cases(tmp_path, corpus)):
        out = tmp_path / f"out{i}"
        argv = [*TINY, "--steps", 10, "--out", out, *argv]  # later options win
        with pytest.raises(error, match=message):
            train(*argv)
        assert not (out / "tokenizer.json").exists() and not (out / "losses.jsonl").exists()


def test_cli_prints_a_one_line_error(tmp_path, capsys):
    from corelm import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--corpus" in capsys.readouterr().out
    code = cli.main(["train", "--corpus", str(tmp_path / "none.txt"), "--out", str(tmp_path / "out")])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"corelm: error: corpus {tmp_path / 'none.txt'}: no such file")


def test_import_and_help_do_not_import_torch():
    code = (
        "import argparse, sys\n"
        "from corelm.train import add_parser\n"
        "p = argparse.ArgumentParser(prog='corelm'); add_parser(p.add_subparsers())\n"
        "try:\n    p.parse_args(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **subprocess_kwargs())
    assert result.returncode == 0, result.stderr
    assert "--resume" in result.stdout and "--gguf-type" in result.stdout
