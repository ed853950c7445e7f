"""Encoders (BERT, RoBERTa, DistilBERT) and task heads (encoders' and decoders') against transformers,
embeddings / classification / tagging through the API, GGUF round trips, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import VOCAB, build_decoder_head, build_encoder  # noqa: E402
from support import data_file  # noqa: E402

import corelm  # noqa: E402
from corelm.formats.gguf_write import write_gguf  # noqa: E402
from corelm.kernels import WeightType  # noqa: E402
from corelm.models import load_model  # noqa: E402
from corelm.models.base import Segment  # noqa: E402

LENGTHS = [5, 17, 9]  # a batch of three sequences; transformers sees them right-padded


def random_batch(pad: int, lo: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(lo, VOCAB, n).astype(np.int32) for n in LENGTHS]


def hf_padded(model, seqs: list[np.ndarray], pad: int):
    ids = torch.full((len(seqs), max(LENGTHS)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.from_numpy(s.astype(np.int64))
        mask[i, : len(s)] = 1
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def unpad(batch: np.ndarray) -> np.ndarray:
    return np.concatenate([batch[i, :n] for i, n in enumerate(LENGTHS)])


def corelm_step(model, seqs: list[np.ndarray]):
    segments = [Segment(model.new_cache(len(s)) if model.config.causal else None, 0, len(s)) for s in seqs]
    return model.hidden_states(np.concatenate(seqs), segments)


def assert_close(got: np.ndarray, want: np.ndarray, what: str, tol: float = 1e-3) -> None:
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("head", ["", "sequence", "token"])
@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_encoder_matches_transformers(kind: str, head: str, tmp_path: Path) -> None:
    """Hidden states and classifier logits of a padded batch equal transformers' on the real rows."""
    hf = build_encoder(kind, head, tmp_path)
    model, _ = load_model(tmp_path)
    pad = 1 if kind == "roberta" else 0
    seqs = random_batch(pad)
    out = hf_padded(hf, seqs, pad)
    h, step = corelm_step(model, seqs)
    assert_close(h, unpad(out.hidden_states[-1].numpy()), "hidden states")
    if head:
        want = out.logits.numpy()
        assert_close(model.classifier_logits(h, step), unpad(want) if head == "token" else want, "logits")
        assert model.config.labels == list(hf.config.id2label.values())


@pytest.mark.parametrize("head", ["sequence", "token"])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-hd64", "qwen2", "qwen3", "mistral-swa8", "phi3-partial-rope"])
def test_decoder_heads_match_transformers(name: str, head: str, tmp_path: Path) -> None:
    """*ForSequenceClassification pools the last non-pad token; *ForTokenClassification every token."""
    hf = build_decoder_head(name, head, tmp_path)
    model, _ = load_model(tmp_path)
    seqs = random_batch(pad=0, lo=1)
    want = hf_padded(hf, seqs, pad=0).logits.numpy()
    h, step = corelm_step(model, seqs)
    assert_close(model.classifier_logits(h, step), unpad(want) if head == "token" else want, "logits")


BIDIRECTIONAL = ["gpt2", "llama-gqa-hd64", "qwen2", "qwen3", "phi3-partial-rope"]


@pytest.mark.parametrize("head", ["sequence", "token"])
@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_bidirectional_decoder_heads_match_transformers(name: str, head: str, tmp_path: Path) -> None:
    """A decoder saved with config.json "is_causal": false (transformers' switch: every token sees
    the whole sequence, padding aside) runs both ways in corelm, without a KV cache, as in torch."""
    hf = build_decoder_head(name, head, tmp_path, bidirectional=True)
    model, _ = load_model(tmp_path)
    assert model.config.bidirectional and not model.config.causal and model.config.decoder
    seqs = random_batch(pad=0, lo=1)
    want = hf_padded(hf, seqs, pad=0).logits.numpy()
    h, step = corelm_step(model, seqs)
    assert_close(model.classifier_logits(h, step), unpad(want) if head == "token" else want, "logits")
    if head == "token":  # the first token's tags change with the last token
        changed = [s.copy() for s in seqs]
        changed[1][-1] = 1 + changed[1][-1] % (VOCAB - 1)
        first = slice(LENGTHS[0], LENGTHS[0] + 1)
        before = model.classifier_logits(*corelm_step(model, seqs))[first]
        assert not np.allclose(model.classifier_logits(*corelm_step(model, changed))[first], before)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-hd64"])
def test_bidirectional_decoder_gguf_round_trip_and_no_generation(name: str, tmp_path: Path) -> None:
    """The GGUF keeps the switch (corelm.attention.bidirectional) and the logits; neither the folder
    nor the file generates text."""
    from corelm.formats.gguf import load_gguf
    from corelm.models.base import BIDIRECTIONAL_KEY

    build_decoder_head(name, "token", tmp_path, bidirectional=True)
    model, _ = load_model(tmp_path)
    path = write_gguf(model, tmp_path / "m.gguf")
    assert load_gguf(path).metadata[BIDIRECTIONAL_KEY] is True
    again, _ = load_model(path)
    assert again.config.bidirectional and (again.config.head, again.config.labels) == ("token", model.config.labels)
    seqs = random_batch(pad=0, lo=1)
    want = model.classifier_logits(*corelm_step(model, seqs))
    np.testing.assert_allclose(again.classifier_logits(*corelm_step(again, seqs)), want, atol=1e-5)
    for m in (model, again):
        llm = corelm.LLM(m, None)
        assert llm.capabilities == {"embed", "tag"} and "bidirectional decoder" in repr(llm)
        with pytest.raises(ValueError, match="cannot generate: it attends both ways"):
            llm.logits([1, 2, 3])
        with pytest.raises(ValueError, match="bidirectional decoder .* cannot generate text"):
            m.forward(np.array([1, 2, 3], np.int32), 0, m.new_cache(8))
    # a causal decoder's file has no such key
    build_decoder_head(name, "token", tmp_path / "causal")
    causal_path = write_gguf(load_model(tmp_path / "causal")[0], tmp_path / "c.gguf")
    assert BIDIRECTIONAL_KEY not in load_gguf(causal_path).metadata


# ---- the API on folders with a real (trained) tokenizer ----

TEXT = data_file("corpora", "tinystories_sample.txt")


@pytest.fixture(scope="module")
def story() -> str:
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is missing")
    return TEXT.read_text(encoding="utf-8")


def save_hf_tokenizer(folder: Path, kind: str, text: str) -> None:
    """Train a tokenizer for the folder and save it as transformers does (tokenizer.json + config)."""
    from hf_models import train_tokenizer

    tok = train_tokenizer(kind, folder, text)
    specials = (
        dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>")
        if kind == "roberta"
        else dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    )
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(folder)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_embed_equals_mean_pooled_transformers(kind: str, tmp_path: Path, story: str) -> None:
    hf = build_encoder(kind, "", tmp_path)
    save_hf_tokenizer(tmp_path, kind, story)
    texts = ["Once upon a time", "", "Lily and Ben went to the park to play with a big red ball.", "Hi!"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = ((states * mask).sum(1) / mask.sum(1)).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    llm = corelm.load(tmp_path)
    assert [e.ids for e in llm.encode(texts)] == [ids[: int(m.sum())] for ids, m in zip(
        batch["input_ids"].tolist(), batch["attention_mask"], strict=True)]  # fmt: skip
    got = llm.embed(texts)
    assert got.shape == (4, hf.config.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(llm.embed(texts[2]), got[2], atol=1e-6)  # one string -> one vector
    assert not np.allclose(np.linalg.norm(llm.embed(texts, normalize=False), axis=1), 1.0)


def test_classify_and_tag_equal_transformers_pipelines(tmp_path: Path, story: str) -> None:
    seq_dir, tok_dir = tmp_path / "seq", tmp_path / "tok"
    seq_dir.mkdir(), tok_dir.mkdir()
    texts = ["Lily saw a big dog in the park.", "Ben was sad.", "The sun was hot and the sky was blue today."]
    seq_model = build_encoder("bert", "sequence", seq_dir, seed=1)
    save_hf_tokenizer(seq_dir, "bert", story)
    classifier = transformers.pipeline("text-classification", model=seq_model, tokenizer=str(seq_dir))
    llm = corelm.load(seq_dir)
    assert llm.capabilities == {"embed", "classify"}
    for (label, score), want in zip(llm.classify(texts), classifier(texts), strict=True):
        assert label == want["label"] and score == pytest.approx(want["score"], abs=1e-5)

    tok_model = build_encoder("bert", "token", tok_dir, seed=2)
    with torch.no_grad():  # confident, varied tags, so that entities form
        tok_model.classifier.weight.mul_(40)
    tok_model.save_pretrained(tok_dir)
    save_hf_tokenizer(tok_dir, "bert", story)
    tagger = transformers.pipeline(
        "token-classification", model=tok_model, tokenizer=str(tok_dir), aggregation_strategy="simple"
    )
    llm = corelm.load(tok_dir)
    assert llm.capabilities == {"embed", "tag"}
    for text, entities, want in zip(texts, llm.tag(texts), tagger(texts), strict=True):
        spans = [(w["entity_group"], w["start"], w["end"]) for w in want]
        assert [(e.label, e.start, e.end) for e in entities] == spans
        assert [e.text for e in entities] == [text[w["start"] : w["end"]] for w in want]
        np.testing.assert_allclose([e.score for e in entities], [w["score"] for w in want], atol=1e-5)
    assert sum(len(e) for e in llm.tag(texts)) > 0, "the test should see entities"
    probs = llm.token_probabilities(texts)  # per token, framing included: what tag() merges
    assert [p.shape for p in probs] == [(len(e.ids), len(llm.labels)) for e in llm.encode(texts)]
    assert all(np.allclose(p.sum(axis=1), 1) for p in probs)


def test_decoder_embeds_and_classifies(tmp_path: Path) -> None:
    gpt2 = data_file("tokenizers", "gpt2", "tokenizer.json")
    if not gpt2.is_file():
        pytest.skip(f"{gpt2} is missing")
    build_decoder_head("gpt2", "sequence", tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(gpt2.read_bytes())
    with pytest.raises(ValueError, match="does not belong to this model"):
        corelm.load(tmp_path).embed(["hello world"])  # GPT-2's 50257 ids, a model of 384
    build_decoder_head("gpt2", "sequence", tmp_path, vocab=50257)
    llm = corelm.load(tmp_path)
    assert llm.capabilities == {"embed", "classify"}  # no LM head: it cannot generate
    probs = llm.class_probabilities(["hello world", "a"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1)
    e = llm.embed(["hello world", "a"])
    assert e.shape == (2, llm.config.n_embd) and np.allclose(np.linalg.norm(e, axis=1), 1)
    with pytest.raises(ValueError, match="cannot generate"):
        llm.generate("hello")


# ---- GGUF ----


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("head", ["", "sequence", "token"])
def test_gguf_round_trip(kind: str, head: str, tmp_path: Path, story: str) -> None:
    """Written as llama.cpp's bert layout and read back: same outputs (F32), close ones (Q8_0),
    same tokenizer framing."""
    build_encoder(kind, head, tmp_path)
    save_hf_tokenizer(tmp_path, kind, story)
    llm = corelm.load(tmp_path)
    texts = ["Once upon a time there was a girl.", "Ben ran.", "", "The end"]
    want = llm.embed(texts)
    for wtype, tol in ((WeightType.F32, 1e-5), (WeightType.Q8_0, 2e-2)):
        path = write_gguf(llm.model, tmp_path / f"m-{wtype.name}.gguf", llm.tokenizer.gguf_metadata(), wtype)
        other = corelm.load(path)
        assert [e.ids for e in other.encode(texts)] == [e.ids for e in llm.encode(texts)]
        np.testing.assert_allclose(other.embed(texts), want, atol=tol)
        assert other.capabilities == llm.capabilities and other.labels == llm.labels
        if head == "sequence":
            np.testing.assert_allclose(other.class_probabilities(texts), llm.class_probabilities(texts), atol=tol)


def test_wordpiece_gguf_vocabulary_frames_like_llama_cpp() -> None:
    path = data_file("tokenizers", "llama.cpp-vocab", "ggml-vocab-bert-bge.gguf")
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    from corelm.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(path)
    (framed,) = tok.encode_batch(["Hello world!"], 512, template=True)
    assert framed.ids == [101, 7592, 2088, 999, 102] and framed.offsets[0] == framed.offsets[-1] == (0, 0)
    again = Tokenizer.from_gguf_metadata(tok.gguf_metadata())
    assert again.encode_batch(["Hello world!"], 512, template=True)[0].ids == framed.ids


# ---- bad input ----


def test_encoder_bad_input(tmp_path: Path, story: str) -> None:
    build_encoder("bert", "", tmp_path)
    save_hf_tokenizer(tmp_path, "bert", story)
    llm = corelm.load(tmp_path)
    assert llm.capabilities == {"embed"}
    long = "the " * 1000
    assert llm.embed([long]).shape == (1, 64)  # cut to the 256 positions, as transformers cuts
    assert len(llm.encode([long])[0].ids) == llm.max_tokens == 256
    with pytest.raises(ValueError, match="more than 256 tokens"):
        llm.embed([long], truncate=False)
    with pytest.raises(ValueError, match="cannot classify"):
        llm.classify(["hello"])
    with pytest.raises(ValueError, match="cannot tag"):
        llm.tag("hello")
    with pytest.raises(ValueError, match="cannot generate"):
        llm.generate("hello")
    with pytest.raises(ValueError, match="cannot generate"):
        llm.logits([1, 2])
    with pytest.raises(TypeError, match="text 1 is int"):
        llm.embed(["a", 3])
    assert llm.embed([]).shape == (0, 64)


def test_classifier_without_labels_in_config_is_refused(tmp_path: Path) -> None:
    build_encoder("bert", "sequence", tmp_path)
    config = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(config.replace("BertForSequenceClassification", "BertModel"))
    with pytest.raises(ValueError, match="names no \\*Classification architecture"):
        load_model(tmp_path)


# ---- the command line: embed / classify / tag / eval, and labelled files ----


def cli(*args: str):
    from test_cli import corelm as run

    return run(*args)


def test_cli_embed_classify_tag_eval(tmp_path: Path, story: str) -> None:
    import json

    seq_dir, tok_dir = tmp_path / "seq", tmp_path / "tok"
    seq_dir.mkdir(), tok_dir.mkdir()
    build_encoder("bert", "sequence", seq_dir, seed=1)
    save_hf_tokenizer(seq_dir, "bert", story)
    tagger = build_encoder("bert", "token", tok_dir, seed=2)
    with torch.no_grad():
        tagger.classifier.weight.mul_(40)
    tagger.save_pretrained(tok_dir)
    save_hf_tokenizer(tok_dir, "bert", story)
    texts = ["Lily saw a big dog.", "Ben was sad."]

    r = cli("embed", str(seq_dir), *texts, "--json")
    assert r.returncode == 0, r.stderr
    got = np.array([row["embedding"] for row in json.loads(r.stdout)])
    np.testing.assert_allclose(got, corelm.load(seq_dir).embed(texts), atol=1e-6)
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    r = cli("classify", str(seq_dir), "-f", str(tmp_path / "texts.txt"), "--json")
    assert r.returncode == 0, r.stderr
    want = corelm.load(seq_dir).classify(texts)
    assert [(row["label"], pytest.approx(row["score"], abs=1e-6)) for row in json.loads(r.stdout)] == want
    r = cli("tag", str(tok_dir), *texts, "--json")
    assert r.returncode == 0 and [row["text"] for row in json.loads(r.stdout)] == texts
    for args, message in (
        (("classify", str(tok_dir), "x"), "cannot classify (it can: embed, tag)"),
        (("embed", str(seq_dir)), "give texts as arguments or -f FILE"),
        (("embed", str(seq_dir), "-t", "0", "x"), "-t/--threads"),
    ):
        r = cli(*args)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)

    # eval: metrics equal scikit-learn's / seqeval's on the same predictions
    labelled = tmp_path / "news.txt"
    news = {"Lily saw a big dog.": "positive", "Ben was sad.": "negative", "The sky was blue.": "neutral"}
    labelled.write_text("".join(f"{text}@{label}\n" for text, label in news.items()))
    r = cli("eval", str(seq_dir), "-f", str(labelled), "--json", "--png", str(tmp_path / "cm.png"))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    predicted = [label for label, _ in corelm.load(seq_dir).classify(list(news))]
    assert result["accuracy"] == pytest.approx(np.mean([p == g for p, g in zip(predicted, news.values(), strict=True)]))
    assert sum(map(sum, result["confusion"])) == 3 and (tmp_path / "cm.png").stat().st_size > 1000
    conll = tmp_path / "ner.txt"
    conll.write_text("-DOCSTART- O\n\nLily B-PER\nsaw O\nBen B-PER\n.\tO\n\nThe O\npark B-LOC\n")
    r = cli("eval", str(tok_dir), "-f", str(conll))
    assert r.returncode == 0, r.stderr
    assert "entity micro F1" in r.stdout and "B-PER" in r.stdout and "weighted avg" in r.stdout
    conll.write_text("Lily B-PER\nsaw\n")
    r = cli("eval", str(tok_dir), "-f", str(conll))
    assert r.returncode != 0 and f"{conll}:2: expected 'word ... tag'" in r.stderr


def test_labelled_files_name_the_bad_line(tmp_path: Path) -> None:
    from corelm.formats.labelled import LabelledDataError, read_conll, read_texts_with_labels

    cases = {
        "a.csv": ("text,label\nhello,pos\nbad line with, too, many\n", "a.csv:3: 3 columns, the header has 2"),
        "b.tsv": ("sentence\tscore\nhi\t1\n", "b.tsv:1: the header needs a 'text'"),
        "c.jsonl": ('{"text": "a", "label": 1}\n{"text": 2}\n', 'c.jsonl:2: expected {"text"'),
        "d.txt": ("good@positive\nno label here\n", "d.txt:2: expected 'sentence@label'"),
        "e.txt": ("", "e.txt: the file is empty"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(LabelledDataError, match=message.replace("{", r"\{")):
            read_texts_with_labels(tmp_path / name)
    (tmp_path / "f.conll").write_text("Lily B-PER\nsaw X-Y\n")
    with pytest.raises(LabelledDataError, match="f.conll:2: tag 'X-Y' is not BIO"):
        read_conll(tmp_path / "f.conll")
    (tmp_path / "g.txt").write_bytes("caf\xe9@neutral\n".encode("latin-1"))  # PhraseBank's older files
    assert read_texts_with_labels(tmp_path / "g.txt") == [("café", "neutral")]
    sst2 = data_file("labelled", "sst2", "dev.tsv")
    if sst2.is_file():
        rows = read_texts_with_labels(sst2)
        assert len(rows) > 800 and {label for _, label in rows} == {"0", "1"}


def test_bench_an_encoder(tmp_path: Path) -> None:
    """`corelm bench` on an encoder measures its forward pass (pp) and says nothing of decoding."""
    from corelm.analysis.model_bench import bench_model

    build_encoder("bert", "sequence", tmp_path)
    report = bench_model(tmp_path, prompt_tokens=1000, gen_tokens=8, threads=[1], reps=1)
    assert [r["test"] for r in report["results"]] == ["pp256"]  # cut to the model's 256 positions
    assert report["results"][0]["tokens_per_s"] > 0


@pytest.mark.parametrize("head", ["sequence", "token"])
@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_decoder_head_gguf_round_trip(name: str, head: str, tmp_path: Path) -> None:
    """A decoder's classifier is written as llama.cpp's cls.output with its labels and read back."""
    build_decoder_head(name, head, tmp_path)
    model, _ = load_model(tmp_path)
    again, _ = load_model(write_gguf(model, tmp_path / "m.gguf"))
    assert (again.config.head, again.config.labels) == (model.config.head, model.config.labels)
    seqs = random_batch(pad=0, lo=1)
    want = model.classifier_logits(*corelm_step(model, seqs))
    np.testing.assert_allclose(again.classifier_logits(*corelm_step(again, seqs)), want, atol=1e-5)


def test_every_kernel_path(isa: str, tmp_path: Path) -> None:
    """The encoder on each path this CPU runs (ref, avx2, avx512: the `isa` fixture), F32 and Q8_0."""
    hf = build_encoder("roberta", "token", tmp_path)
    seqs = random_batch(pad=1)
    want = unpad(hf_padded(hf, seqs, pad=1).logits.numpy())
    for quant, tol in ((None, 1e-3), ("q8_0", 3e-2)):
        model, _ = load_model(tmp_path, quant=quant)
        assert_close(model.classifier_logits(*corelm_step(model, seqs)), want, f"{isa} {quant or 'f32'} logits", tol)
