"""corelm.tokenizer against llama.cpp's tokenizer test vectors and Hugging Face's GPT-2, and
Tokenizer.gguf_metadata() round trips (through llama.cpp itself when llama-cpp-python is installed)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers

from corelm.tokenizer import StreamDecoder, Tokenizer

DATA = Path(os.environ.get("CORELM_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
TOKENIZERS = DATA / "tokenizers"
needs_data = pytest.mark.skipif(not TOKENIZERS.is_dir(), reason=f"test data not found at {DATA} (set CORELM_DATA)")

# GGUF vocabulary -> folder; Llama 3 and Qwen2 are in their own folder with their own .inp/.out.
VOCABS = {
    "gpt-2": "llama.cpp-vocab",
    "llama-spm": "llama.cpp-vocab",
    "phi-3": "llama.cpp-vocab",
    "llama-bpe": "llama.cpp-vocab-over4MiB",
    "qwen2": "llama.cpp-vocab-over4MiB",
}
BYTE_LEVEL = ("gpt-2", "llama-bpe", "qwen2")
MULTIBYTE = "naïve café, Größe; 日本語のテキスト; 한국어; emoji 🦙🚀👨‍👩‍👧 ✅; Ελληνικά"


def gguf_path(name: str) -> Path:
    return TOKENIZERS / VOCABS.get(name, "llama.cpp-vocab") / f"ggml-vocab-{name}.gguf"


def read_cases(gguf: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs, split as llama.cpp's tests/test-tokenizer-0.cpp splits them."""
    # Bytes, not read_text(): newline translation would turn a "\r" case into "\n".
    texts = Path(f"{gguf}.inp").read_bytes().decode().split("\n__ggml_vocab_test__\n")
    if texts[-1] == "":  # the file ends with a separator
        texts.pop()
    lines = Path(f"{gguf}.out").read_bytes().decode().splitlines()
    ids = [[int(i) for i in line.split()] for line in lines]
    assert len(texts) == len(ids), f"{gguf}: {len(texts)} inputs but {len(ids)} outputs"
    return list(zip(texts, ids, strict=True))


def stream(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    decoder = StreamDecoder(tok, skip_special=skip_special)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.fixture(scope="session")
def load() -> Callable[[str], Tokenizer]:
    """GGUF vocabulary name -> Tokenizer, built once per session (the big ones take seconds)."""
    return functools.cache(lambda name: Tokenizer.from_gguf(gguf_path(name)))


@needs_data
@pytest.mark.parametrize(
    "name",
    [*VOCABS, "bert-bge"],
)
def test_ids_match_llama_cpp(name: str, load: Callable[[str], Tokenizer]) -> None:
    """Every case of the vocabulary's .inp/.out (46 each); like test-tokenizer-0: no BOS, and
    control tokens in the text are not parsed."""
    tok, cases = load(name), read_cases(gguf_path(name))
    wrong = [
        (text, want, got) for text, want in cases if (got := tok.encode(text, add_bos=False, special=False)) != want
    ]
    assert not wrong, f"{len(wrong)} of {len(cases)} cases differ, e.g. {wrong[:3]}"


# llama.cpp's own source tree carries more vocabularies with test vectors than ../shared/data
# (gemma-4, qwen35, deepseek-*, command-r, falcon, mpt, refact, starcoder, ...): .ci/run unpacks
# them from llama-cpp-python's source package and points CORELM_LLAMA_CPP_MODELS at the folder.
LLAMA_CPP_MODELS = Path(os.environ.get("CORELM_LLAMA_CPP_MODELS", "/nonexistent"))
SOURCE_VOCABS = sorted(p.name.removesuffix(".inp") for p in LLAMA_CPP_MODELS.glob("ggml-vocab-*.gguf.inp"))


@pytest.mark.skipif("CORELM_LLAMA_CPP_MODELS" not in os.environ, reason="CORELM_LLAMA_CPP_MODELS is not set")
def test_the_llama_cpp_models_folder_holds_the_vectors() -> None:
    # Where the folder is named (CI), an empty one is a failed download, not a reason to skip.
    assert len(SOURCE_VOCABS) >= 15, f"{LLAMA_CPP_MODELS}: {len(SOURCE_VOCABS)} vocabularies with test vectors"


@pytest.mark.skipif(not SOURCE_VOCABS, reason="no llama.cpp models/ folder (set CORELM_LLAMA_CPP_MODELS)")
@pytest.mark.parametrize("vocab", SOURCE_VOCABS)
def test_ids_match_llama_cpp_source_vectors(vocab: str) -> None:
    path = LLAMA_CPP_MODELS / vocab
    tok, cases = Tokenizer.from_gguf(path), read_cases(path)
    wrong = [
        (text, want, got) for text, want in cases if (got := tok.encode(text, add_bos=False, special=False)) != want
    ]
    assert not wrong, f"{len(wrong)} of {len(cases)} cases differ, e.g. {wrong[:3]}"


@needs_data
@pytest.mark.parametrize("name", VOCABS)
def test_decode_round_trips(name: str, load: Callable[[str], Tokenizer]) -> None:
    """Exact for SentencePiece too: decode drops exactly the one space that encode adds."""
    tok = load(name)
    for text, _ in read_cases(gguf_path(name)):
        assert tok.decode(tok.encode(text, add_bos=False)) == text


@needs_data
@pytest.mark.parametrize(
    ("name", "bos", "eos", "eos_ids", "add_bos", "has_template"),
    [
        ("gpt-2", 50256, 50256, {50256}, False, False),
        ("llama-spm", 1, 2, {2}, True, False),
        ("phi-3", 1, 32000, {32000, 32007}, True, True),  # <|endoftext|>, <|end|>
        ("llama-bpe", 128000, 128001, {128001, 128009}, True, False),  # <|eot_id|>
        ("qwen2", 151643, 151643, {151643, 151645}, False, True),  # <|im_end|>
    ],
)
def test_metadata(
    name: str,
    bos: int,
    eos: int,
    eos_ids: set[int],
    add_bos: bool,
    has_template: bool,
    load: Callable[[str], Tokenizer],
) -> None:
    """llama-bpe has no add_bos_token key: llama.cpp adds BOS by default for that pre-tokenizer."""
    tok = load(name)
    assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.add_bos) == (bos, eos, eos_ids, add_bos)
    assert (tok.chat_template is not None) == has_template
    assert tok.encode("Hi") == [bos] * add_bos + tok.encode("Hi", add_bos=False)


@needs_data
@pytest.mark.parametrize(
    ("name", "text", "parsed", "control", "plain"),
    [
        ("gpt-2", "a<|endoftext|>", [64, 50256], {50256}, "a"),
        # SentencePiece adds its leading space after each special token, as llama.cpp does.
        ("llama-spm", "Hello<s>world", [15043, 1, 3186], {1}, "Hello world"),
        # llama.cpp strips the whitespace after Phi-3's special tokens.
        ("phi-3", "<|user|>\nHello<|end|>\n", [32010, 15043, 32007], {32010, 32007}, "Hello"),
        (
            "llama-bpe",
            "<|start_header_id|>user<|end_header_id|>",
            [128006, 882, 128007],
            {128006, 128007},
            "user",
        ),
        (
            "qwen2",
            "<|im_start|>user\nhi<|im_end|>",
            [151644, 872, 198, 6023, 151645],
            {151644, 151645},
            "user\nhi",
        ),
    ],
)
def test_special_tokens(
    name: str, text: str, parsed: list[int], control: set[int], plain: str, load: Callable[[str], Tokenizer]
) -> None:
    """special=True parses control tokens written in the text; special=False leaves them as text."""
    tok = load(name)
    assert tok.encode(text, add_bos=False) == parsed
    assert not control & set(tok.encode(text, add_bos=False, special=False))
    assert tok.decode(parsed, skip_special=True) == plain


@needs_data
@pytest.mark.parametrize("name", VOCABS)
def test_token_bytes(name: str, load: Callable[[str], Tokenizer]) -> None:
    tok = load(name)
    ids = tok.encode(MULTIBYTE, add_bos=False)
    prefix = "" if name in BYTE_LEVEL else " "  # SentencePiece's leading space
    assert b"".join(tok.token_bytes(i) for i in ids) == (prefix + MULTIBYTE).encode()
    with pytest.raises(ValueError, match="out of range"):
        tok.token_bytes(tok.vocab_size)


@needs_data
def test_token_bytes_known_tokens(load: Callable[[str], Tokenizer]) -> None:
    spm, gpt2 = load("llama-spm"), load("gpt-2")
    assert (spm.token_bytes(13), spm.token_bytes(15043), spm.token_bytes(1)) == (
        b"\n",  # <0x0A>
        b" Hello",  # ▁Hello
        b"<s>",
    )
    assert (gpt2.token_bytes(220), gpt2.token_bytes(447)) == (b" ", b"\xe2\x80")  # Ġ, âĢ


@needs_data
@pytest.mark.parametrize("name", VOCABS)
def test_stream_decoder_multibyte(name: str, load: Callable[[str], Tokenizer]) -> None:
    tok = load(name)
    ids = tok.encode(MULTIBYTE)  # with BOS where the vocabulary adds it
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(stream(tok, ids, skip_special=True)) == tok.decode(ids, skip_special=True)


@needs_data
@pytest.mark.parametrize("name", ["gpt-2", "llama-spm"])
def test_stream_decoder_holds_back_partial_characters(name: str, load: Callable[[str], Tokenizer]) -> None:
    """Both split 🦙 into byte tokens, so pushes must return '' until the emoji is complete."""
    tok = load(name)
    pieces = stream(tok, tok.encode("🦙", add_bos=False))
    assert len(pieces) > 3
    assert pieces[-2:] == ["🦙", ""]
    assert set(pieces[:-2]) == {""}


# "\ufffd" would legitimately appear in the output; "▁" decodes to a space in SentencePiece.
# codec="utf-8" keeps out lone surrogates, which are not text (tokenizers rejects them).
RANDOM_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\ufffd▁"), max_size=60)


@needs_data
@pytest.mark.parametrize("name", ["gpt-2", "llama-spm"])
@settings(max_examples=150, deadline=None)
@given(text=RANDOM_TEXT)
def test_stream_decoder_random_text(name: str, text: str, load: Callable[[str], Tokenizer]) -> None:
    tok = load(name)
    ids = tok.encode(text, special=False)
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert tok.decode(ids, skip_special=True) == text


@needs_data
def test_hf_dir_gpt2_matches_gguf(load: Callable[[str], Tokenizer]) -> None:
    hf, gguf = Tokenizer.from_hf_dir(TOKENIZERS / "gpt2"), load("gpt-2")
    texts = [text for text, _ in read_cases(gguf_path("gpt-2"))] + [MULTIBYTE, "a<|endoftext|>b"]
    for text in texts:
        assert hf.encode(text) == gguf.encode(text), text
        assert hf.encode(text, special=False) == gguf.encode(text, special=False), text
    assert (hf.vocab_size, hf.bos_id, hf.eos_id, hf.eos_ids, hf.add_bos) == (
        gguf.vocab_size,
        gguf.bos_id,
        gguf.eos_id,
        gguf.eos_ids,
        gguf.add_bos,
    )


def save_spm_folder(spm: Tokenizer, folder: Path, metaspace: bool = False) -> Path:
    """A Llama-2-style Hugging Face folder made by saving the converted llama-spm vocabulary:
    spaces become '▁' in the normalizer (Prepend + Replace), or with `metaspace` in a Metaspace
    pre-tokenizer as newer Llama files have it."""
    folder.mkdir(exist_ok=True)
    config = json.loads(spm._hf.to_str())
    if metaspace:
        config["normalizer"] = None
        config["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    (folder / "tokenizer.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 13]}))
    (folder / "chat_template.jinja").write_text("{{ bos_token }}")
    return folder


@needs_data
def test_hf_dir_sentencepiece(tmp_path: Path, load: Callable[[str], Tokenizer]) -> None:
    """A Llama-2-style folder (Replace/ByteFallback/Fuse/Strip decoder), made by saving the
    converted llama-spm vocabulary, loads back with the same ids and text."""
    spm = load("llama-spm")
    tok = Tokenizer.from_hf_dir(save_spm_folder(spm, tmp_path))
    assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.add_bos) == (1, 2, {2, 13}, True)
    assert tok.chat_template == "{{ bos_token }}"
    for text in [text for text, _ in read_cases(gguf_path("llama-spm"))] + [MULTIBYTE]:
        ids = tok.encode(text)
        assert ids == spm.encode(text)
        assert "".join(stream(tok, ids)) == tok.decode(ids) == spm.decode(ids)


def test_spm_merges_follow_scores() -> None:
    """The higher-scoring of two overlapping merges wins, as in llama.cpp's llm_tokenizer_spm."""
    tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab"]
    for scores, want in (([-1.0] * 6 + [-2.0, -3.0], ["▁a", "b"]), ([-1.0] * 7 + [-0.5], ["▁", "ab"])):
        meta = {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores,
        }
        tok = Tokenizer.from_gguf_metadata(meta)
        ids = tok.encode("ab", add_bos=False)
        assert [tokens[i] for i in ids] == want
        assert tok.decode(ids) == "ab"


def test_unknown_tokenizer_model() -> None:
    meta = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["[UNK]"]}
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer model 't5'"):
        Tokenizer.from_gguf_metadata(meta)


def test_missing_tokens() -> None:
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama"})


def test_unknown_pre_tokenizer() -> None:
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nonesuch", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(ValueError, match="'nonesuch'"):
        Tokenizer.from_gguf_metadata(meta)


def test_bos_requested_without_bos_token() -> None:
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": ["a"]}
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.encode("a") == [0]
    with pytest.raises(ValueError, match="no BOS"):
        tok.encode("a", add_bos=True)


# ---- gguf_metadata(): tokenizer.* GGUF keys, read back by from_gguf_metadata and llama.cpp

# The tokenizer.json pre-tokenizer regexes of Llama 3 and Qwen2 as their Hugging Face files spell them.
HF_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
HF_QWEN2 = HF_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
SPECIAL_TEXT = {  # text with special tokens in it, per vocabulary (as in test_special_tokens)
    "gpt-2": "a<|endoftext|>b",
    "llama-spm": "Hello<s>world</s> <unk>",
    "phi-3": "<|user|>\nHello<|end|>\n",
    "llama-bpe": "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "qwen2": "<|im_start|>user\nhi<|im_end|>",
    # Newlines after punctuation and digit groups: the regexes split these differently.
    "trained": "a<sep>b<|endoftext|>c<pad> <sep>\n\nMENENIUS:\nWhat work's, my countrymen, in hand? In 1599,\n12345",
}


def texts_for(source: str) -> list[str]:
    """llama.cpp's test strings of a vocabulary (gpt-2's for a trained one), plus special tokens."""
    name = {"hf-gpt2": "gpt-2", "hf-spm": "llama-spm"}.get(source, source)
    if name not in VOCABS:
        return [text for text, _ in read_cases(gguf_path("gpt-2"))] + [MULTIBYTE, SPECIAL_TEXT["trained"]]
    return [text for text, _ in read_cases(gguf_path(name))] + [MULTIBYTE, SPECIAL_TEXT[name]]


def assert_same_tokenizer(got: Tokenizer, want: Tokenizer, texts: list[str]) -> None:
    """Same ids (the vocabulary's own BOS choice; control tokens parsed and not) and settings."""
    for text in texts:
        for special in (True, False):
            assert got.encode(text, special=special) == want.encode(text, special=special), (text, special)
    assert (got.vocab_size, got.bos_id, got.eos_id, got.eos_ids, got.add_bos, got.chat_template) == (
        want.vocab_size,
        want.bos_id,
        want.eos_id,
        want.eos_ids,
        want.add_bos,
        want.chat_template,
    )


def write_vocab_gguf(tok: Tokenizer, path: Path) -> Path:
    """A vocabulary-only GGUF (no tensors), as llama.cpp's own ggml-vocab-*.gguf files are."""
    writer = gguf.GGUFWriter(path, "llama")
    for field in tok.gguf_fields():
        writer.add_key_value(*field)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def train_bpe(pre: str, vocab_size: int = 300) -> tokenizers.Tokenizer:
    """A byte-level BPE trained on a few KB of Shakespeare and numbers, split with `pre`'s regex as its
    Hugging Face files do (Llama 3: ignore_merges; Qwen2: NFC normalizer)."""
    hf = tokenizers.Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    if pre == "gpt-2":
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        regex = {"llama-bpe": HF_LLAMA3, "qwen2": HF_QWEN2}[pre]
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre == "qwen2":
        hf.normalizer = normalizers.NFC()
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = (DATA / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:8000]
    text += " ".join(str(37 * i) for i in range(400))  # so that there are merges of digits
    hf.train_from_iterator([text], trainer)
    hf.add_tokens([AddedToken("<sep>", special=False, normalized=False)])
    return hf


def save_hf_folder(config: dict, folder: Path) -> Path:
    """tokenizer.json (as a dict) plus a minimal tokenizer_config.json."""
    (folder / "tokenizer.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    settings = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": "{% for m in messages %}{{ m.content }}<|endoftext|>{% endfor %}",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


@needs_data
@pytest.mark.parametrize("name", VOCABS)
def test_gguf_metadata_of_gguf_round_trips(name: str, load: Callable[[str], Tokenizer]) -> None:
    """A GGUF vocabulary gives back its own tokenizer.* keys, which rebuild the same tokenizer."""
    tok = load(name)
    meta = tok.gguf_metadata()
    assert meta["tokenizer.ggml.model"] == ("gpt2" if name in BYTE_LEVEL else "llama")
    assert all(key.startswith("tokenizer.") for key in meta)
    assert len(meta["tokenizer.ggml.tokens"]) == len(meta["tokenizer.ggml.token_type"]) == tok.vocab_size
    if name == "phi-3":
        # llama.cpp strips the whitespace after Phi-3's special tokens because general.name says
        # "phi3"; that key is not tokenizer.* metadata, so whoever writes the GGUF writes it.
        meta["general.name"] = "Phi3"
    assert_same_tokenizer(Tokenizer.from_gguf_metadata(meta), tok, texts_for(name))
    meta["tokenizer.ggml.tokens"].append("changed")  # a copy: the tokenizer's own is untouched
    assert len(tok.gguf_metadata()["tokenizer.ggml.tokens"]) == tok.vocab_size


@needs_data
def test_gguf_metadata_of_hf_gpt2_is_llama_cpps(load: Callable[[str], Tokenizer]) -> None:
    """Hugging Face GPT-2 gives exactly the keys of llama.cpp's converted gpt-2 vocabulary
    (plus add_bos_token, which llama.cpp's file leaves to the default, false)."""
    hf = Tokenizer.from_hf_dir(TOKENIZERS / "gpt2")
    meta = hf.gguf_metadata()
    assert meta == {**load("gpt-2").gguf_metadata(), "tokenizer.ggml.add_bos_token": False}
    # ...and gguf_fields() gives them the types of llama.cpp's file.
    types = [(key, vtype, sub_type) for key, _, vtype, sub_type in hf.gguf_fields()]
    want = [(key, vtype, sub_type) for key, _, vtype, sub_type in load("gpt-2").gguf_fields()]
    assert types == [*want, ("tokenizer.ggml.add_bos_token", gguf.GGUFValueType.BOOL, None)]
    assert_same_tokenizer(Tokenizer.from_gguf_metadata(meta), hf, texts_for("gpt-2"))


@needs_data
def test_gguf_metadata_of_hf_sentencepiece(tmp_path: Path, load: Callable[[str], Tokenizer]) -> None:
    """The Llama-2-style folder gives llama.cpp's llama-spm tokens and types; its scores (minus
    the rank of the merge that first makes each token) rebuild the very same merges, and ids
    match llama.cpp's. The extra EOS id from generation_config.json (13) goes in eot_token_id."""
    spm = load("llama-spm")
    tok = Tokenizer.from_hf_dir(save_spm_folder(spm, tmp_path))
    meta, llama_cpp_meta = tok.gguf_metadata(), spm.gguf_metadata()
    for key in ("model", "pre", "tokens", "token_type", "bos_token_id", "eos_token_id", "unknown_token_id"):
        assert meta[f"tokenizer.ggml.{key}"] == llama_cpp_meta[f"tokenizer.ggml.{key}"], key
    assert (meta["tokenizer.ggml.add_space_prefix"], meta["tokenizer.ggml.add_bos_token"]) == (True, True)
    assert meta["tokenizer.ggml.eot_token_id"] == 13
    assert meta["tokenizer.chat_template"] == "{{ bos_token }}"
    scores = meta["tokenizer.ggml.scores"]
    assert all(isinstance(score, float) for score in scores)
    first, second = json.loads(tok._hf.to_str())["model"]["merges"][:2]
    assert (scores[tok._hf.token_to_id("".join(first))], scores[tok._hf.token_to_id("".join(second))]) == (0.0, -1.0)

    back = Tokenizer.from_gguf_metadata(meta)
    assert json.loads(back._hf.to_str())["model"]["merges"] == json.loads(tok._hf.to_str())["model"]["merges"]
    assert_same_tokenizer(back, tok, texts_for("llama-spm"))
    for text, want in read_cases(gguf_path("llama-spm")):
        assert back.encode(text, add_bos=False, special=False) == want

    # A Metaspace pre-tokenizer (newer Llama files) describes the same llama.cpp tokenizer.
    metaspace = Tokenizer.from_hf_dir(save_spm_folder(spm, tmp_path / "metaspace", metaspace=True))
    assert metaspace.gguf_metadata() == meta


@needs_data
@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_gguf_metadata_of_trained_bpe(pre: str, tmp_path: Path) -> None:
    """A byte-level BPE trained here (vocabulary 300, plus a user-defined <sep>) round-trips,
    with the pre-tokenizer recognised from its Hugging Face form."""
    tok = Tokenizer.from_hf_dir(save_hf_folder(json.loads(train_bpe(pre).to_str()), tmp_path))
    meta = tok.gguf_metadata()
    assert meta["tokenizer.ggml.pre"] == pre
    types = dict(zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"], strict=True))
    assert (types["<|endoftext|>"], types["<pad>"], types["<sep>"], types["Ġ"]) == (3, 3, 4, 1)
    assert (len(types), len(meta["tokenizer.ggml.merges"])) == (301, 300 - 256 - 2)
    assert_same_tokenizer(Tokenizer.from_gguf_metadata(meta), tok, texts_for("trained"))


@needs_data
def test_gguf_metadata_fills_gaps_and_pads(tmp_path: Path) -> None:
    """An id missing from tokenizer.json becomes "[PAD{id}]" of type UNUSED (5), as in llama.cpp's
    converter; vocab_size pads the list to a model's embedding rows the same way."""
    config = json.loads(train_bpe("gpt-2").to_str())
    config["added_tokens"] = [t for t in config["added_tokens"] if t["special"]]  # ids left: 0..299
    model = config["model"]
    used = {part for merge in model["merges"] for part in merge}
    gap, text = max((i, t) for t, i in model["vocab"].items() if t not in used and i < 299)
    del model["vocab"][text]
    model["merges"] = [m for m in model["merges"] if m[0] + m[1] != text]
    tok = Tokenizer.from_hf_dir(save_hf_folder(config, tmp_path))
    meta = tok.gguf_metadata()
    assert (meta["tokenizer.ggml.tokens"][gap], meta["tokenizer.ggml.token_type"][gap]) == (f"[PAD{gap}]", 5)
    back = Tokenizer.from_gguf_metadata(meta)
    for text in texts_for("trained"):
        assert back.encode(text) == tok.encode(text), text

    padded = tok.gguf_metadata(vocab_size=320)
    assert padded["tokenizer.ggml.tokens"][-1] == "[PAD319]"
    assert padded["tokenizer.ggml.token_type"][300:] == [5] * 20
    assert Tokenizer.from_gguf_metadata(padded).encode(MULTIBYTE) == tok.encode(MULTIBYTE)
    with pytest.raises(ValueError, match="smaller"):
        tok.gguf_metadata(vocab_size=299)


@needs_data
@pytest.mark.parametrize(
    "pre_tokenizer",
    [
        pre_tokenizers.ByteLevel(add_prefix_space=True),
        pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(use_regex=False)]),
        pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\p{L}+"), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
        ),
    ],
    ids=["add_prefix_space", "whitespace", "other-regex"],
)
def test_gguf_metadata_rejects_unknown_pre_tokenizers(pre_tokenizer: object, tmp_path: Path) -> None:
    hf = train_bpe("gpt-2")
    hf.pre_tokenizer = pre_tokenizer
    tok = Tokenizer.from_hf_dir(save_hf_folder(json.loads(hf.to_str()), tmp_path))
    with pytest.raises(ValueError, match="pre_tokenizer"):
        tok.gguf_metadata()


def tokenizer_from(source: str, folder: Path, load: Callable[[str], Tokenizer]) -> Tokenizer:
    """A GGUF vocabulary by name, "hf-gpt2", "hf-spm" (the Llama-2-style folder) or "trained-{pre}"."""
    if source in VOCABS:
        return load(source)
    if source == "hf-gpt2":
        return Tokenizer.from_hf_dir(TOKENIZERS / "gpt2")
    if source == "hf-spm":
        return Tokenizer.from_hf_dir(save_spm_folder(load("llama-spm"), folder))
    return Tokenizer.from_hf_dir(
        save_hf_folder(json.loads(train_bpe(source.removeprefix("trained-")).to_str()), folder)
    )


@needs_data
@pytest.mark.parametrize("source", ["llama-spm", "hf-spm", "trained-llama-bpe"])
def test_vocab_only_gguf_round_trips(source: str, tmp_path: Path, load: Callable[[str], Tokenizer]) -> None:
    """gguf_fields() written with gguf.GGUFWriter (general.architecture only, no tensors) reads back
    as the same tokenizer, every key with the value and type it was given (for a GGUF vocabulary:
    those of its file)."""
    tok = tokenizer_from(source, tmp_path, load)
    back = Tokenizer.from_gguf(write_vocab_gguf(tok, tmp_path / "vocab.gguf"))
    assert_same_tokenizer(back, tok, texts_for(source))
    assert back.gguf_fields() == tok.gguf_fields()


@needs_data
@pytest.mark.parametrize(
    "source", ["llama-spm", "hf-gpt2", "hf-spm", "trained-gpt-2", "trained-llama-bpe", "trained-qwen2"]
)
def test_llama_cpp_reads_written_gguf(source: str, tmp_path: Path, load: Callable[[str], Tokenizer]) -> None:
    """llama.cpp itself (llama-cpp-python, vocabulary only) loads the written GGUF and tokenizes as
    we do, adding BOS by the vocabulary's own choice."""
    llama_cpp = pytest.importorskip("llama_cpp")
    tok = tokenizer_from(source, tmp_path, load)
    path = write_vocab_gguf(tok, tmp_path / "vocab.gguf")
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert (model.n_vocab(), model.token_bos(), model.token_eos()) == (tok.vocab_size, tok.bos_id, tok.eos_id)
    for text in texts_for(source):
        for special in (True, False):
            assert model.tokenize(text.encode(), add_bos=True, special=special) == tok.encode(text, special=special)
