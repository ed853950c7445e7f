"""corelm.tokenizer against llama.cpp's tokenizer test vectors and Hugging Face's GPT-2."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    [
        *VOCABS,
        pytest.param(
            "bert-bge",
            marks=pytest.mark.skip(reason="bert-bge is WordPiece, which corelm does not support"),
        ),
    ],
)
def test_ids_match_llama_cpp(name: str, load: Callable[[str], Tokenizer]) -> None:
    """Every case of the vocabulary's .inp/.out (46 each); like test-tokenizer-0: no BOS, and
    control tokens in the text are not parsed."""
    tok, cases = load(name), read_cases(gguf_path(name))
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
def test_wordpiece_gguf_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer model 'bert'"):
        Tokenizer.from_gguf(gguf_path("bert-bge"))


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
RANDOM_TEXT = st.text(st.characters(exclude_characters="\ufffd▁"), max_size=60)


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


@needs_data
def test_hf_dir_sentencepiece(tmp_path: Path, load: Callable[[str], Tokenizer]) -> None:
    """A Llama-2-style folder (Replace/ByteFallback/Fuse/Strip decoder), made by saving the
    converted llama-spm vocabulary, loads back with the same ids and text."""
    spm = load("llama-spm")
    spm._hf.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 13]}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}")
    tok = Tokenizer.from_hf_dir(tmp_path)
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
    meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["[UNK]"]}
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer model 'bert'"):
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
