"""Text <-> token ids, on top of Hugging Face `tokenizers`.

GGUF vocabularies are converted so that ids match llama.cpp's tokenizer (src/llama-vocab.cpp):
"llama" (SentencePiece), "gpt2" (byte-level BPE) and "bert" (WordPiece) models are supported.
Encoders frame a text with their special tokens ([CLS] ... [SEP], <s> ... </s>) through the
tokenizer's post-processor (encode_batch(template=True)); decoders get BOS as the vocabulary says.
Tokenizer.gguf_metadata() goes the other way, describing any supported tokenizer with llama.cpp's tokenizer.* GGUF keys.
"""

from __future__ import annotations

import codecs
import json
import re
import threading
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from corelm.formats.gguf import load_gguf

# llama.cpp token types (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizers of llama.cpp's llm_tokenizer_bpe (src/llama-vocab.cpp), keyed by the
# tokenizer.ggml.pre names that select them. Each is a list of regexes applied one after another
# (each splits the pieces the one before left, keeping what it does not match as pieces of their
# own, as llama.cpp's unicode_regex_split does), with llama.cpp's ignore_merges flag and its
# default for adding BOS. Unknown names raise, as they do in llama.cpp. llama.cpp runs a regex
# with \p{..} classes on a copy of the text where each character stands for its category, so its
# \p{Lu}, \p{Ll}, \p{Lt}, \p{Lm} and \p{Lo} all mean \p{L}: the regexes here say \p{L} where
# llama.cpp's say those. Its hand-written splitters (unicode.cpp) are written here as the regexes
# they implement. Every entry is checked against llama.cpp's own ids (tests/golden/
# pretokenizers_llamacpp.json: the byte-level ones on SmolLM2's vocabulary, the others on a BPE
# form of llama.cpp's llama-spm vocabulary).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_JAIS2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)"
    r"|\s{1,2}(?!\S)|\s{1}"
)
_DEEPSEEK3 = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!" + '"' + r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_PORO = r" ?[^(\s|.,!?…。，、।۔،)]+"
_SEED_CODER = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
_BAILINGMOE = (
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)
_UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_EXAONE_MOE = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)
# llama.cpp's stand-in for \p{Lu}-style classes: (?=[\p{L}])([^a-z]) is a letter other than a-z.
_UPPER, _LOWER = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))"
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_MINICPM5 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_DEEPSEEK_LLM = (
    "[\r\n]",
    "\\s?[A-Za-z\u00b5À-ÖØ-öø-ƺƼ-ƿ\u01c4-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-\u03f5Ϸ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼ\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149ⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿ\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",
    r"\s+$",
    "[一-龥ࠀ-一가-\ud7ff]+",
    r"\p{N}+",
)
_SPARK2_5 = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!" + '"' + r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
    r"\p{N}",
)
# Letters with marks, then an optional contraction (tiktoken-style; llama.cpp's \p{Lu}... are \p{L}).
_WORD = rf"[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}\p{{M}}]+{_CONTRACTIONS}?"
_YOUTU = (
    "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\u3040-ゟ゠-ヿ]+",
    _WORD + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
# Digit runs cut into threes from the right: llama.cpp's AFMoE splitter (also its stand-in for
# Tiny Aya's "\d{1,3}(?=(?:\d{3})*\b)"), as a run split by a zero-width lookahead.
_DIGITS_IN_THREES = (r"\p{N}+", r"(?=(?:\p{N}{3})+(?!\p{N}))")
_TINY_AYA = (*_DIGITS_IN_THREES, _WORD + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_AFMOE = (
    *_DIGITS_IN_THREES,
    "[一-鿿㐀-䶿豈-\ufaff\u3040-ゟ゠-ヿ･-ﾟ⼀-\u2fdfเ-\u0e7f\u0e80-\u0effក-\u17ffက-႟ꩠ-ꩿꧠ-\ua9ff가-\ud7afᄀ-ᇿ]+",
    _DEEPSEEK3[2],
)
_UPPER_M, _LOWER_M = r"((?=[\p{L}\p{M}])([^a-z]))", r"((?=[\p{L}\p{M}])([^A-Z]))"
_GRANITE_EMB_MULTI = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER_M}*{_LOWER_M}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER_M}+{_LOWER_M}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Kimi K2: llama.cpp's hand-written splitter (unicode.cpp) - Han runs, then letter runs without
# Han (no marks), contractions, digits in threes, and llama-3's punctuation and space rules.
_HAN = "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002ebef\uf900-\ufaff\U0002f800-\U0002fa1f"
_KIMI_K2 = (
    rf"[{_HAN}]+|[^\r\n\p{{L}}\p{{N}}]?(?:(?![{_HAN}])\p{{L}})+{_CONTRACTIONS}?|\p{{N}}{{1,3}}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CHAMELEON = (
    r"<sentinel:[0-9]+>",
    r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\t\n]|    |  )",
    r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]",
    _GPT2,
)
_LINES = r"[^\n]+|[\n]+"  # SentencePiece-style BPE: merges run over whole lines


class _Pre(NamedTuple):
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole token is that token, merges or not
    add_bos: bool = False  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token
    # False: SentencePiece-style BPE on raw UTF-8 with <0xNN> byte tokens (llama.cpp's
    # byte_encode = false) instead of GPT-2's byte-to-character map.
    byte_level: bool = True
    escape_spaces: bool = False  # spaces become "▁" before splitting (escape_whitespaces)
    bos_always: bool = False  # BOS even where the file says not to (llama.cpp's Gemma 4 override)


_BPE_PRE: dict[str, _Pre] = {
    **dict.fromkeys(
        "gpt-2 phi-2 mpt olmo jais trillion granite-docling exaone4 jina-es jina-de jina-v2-es jina-v2-de gigachat "
        "a.x-4.0 mellum modern-bert jina-v1-en jina-v2-code roberta-bpe".split(),
        _Pre((_GPT2,)),
    ),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
        _Pre((r"\p{N}", _GPT2)),
    ),
    **dict.fromkeys(
        ("llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
        _Pre((_LLAMA3,), ignore_merges=True, add_bos=True),
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe", "chatglm-bpe"), _Pre((_LLAMA3,))),
    **dict.fromkeys(("glm4", "glm5"), _Pre((_LLAMA3,), ignore_merges=True)),
    **dict.fromkeys(
        ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open", "grok-2"),
        _Pre((_QWEN2,)),
    ),
    "qwen35": _Pre((_QWEN35,)),
    "jais-2": _Pre((_JAIS2,)),
    "default": _Pre((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    "falcon": _Pre((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    "deepseek-coder": _Pre(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}")),
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), _Pre(_DEEPSEEK3)),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), _Pre((_PORO,))),
    "viking": _Pre((_PORO, r"\p{N}")),
    "seed-coder": _Pre((_SEED_CODER,)),
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), _Pre((_BAILINGMOE,))),
    "ufakzeka": _Pre((_UFAKZEKA,)),
    "laguna": _Pre((r"[^\n]+|[\n]+", _QWEN2)),
    "exaone-moe": _Pre((_EXAONE_MOE,)),
    "minicpm5": _Pre((r"\p{N}{1,3}", _MINICPM5), ignore_merges=True),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _Pre((_GPT4O,))),
    "tekken": _Pre((_TEKKEN,), ignore_merges=True, add_bos=True),
    # Digits in runs, then split into threes from the right: a zero-width split (the lookahead).
    "superbpe": _Pre((r"\p{N}+", r"(?=(\d{3})+(?!\d))")),
    "deepseek-llm": _Pre(_DEEPSEEK_LLM),
    "spark2_5": _Pre(_SPARK2_5),
    "youtu": _Pre(_YOUTU, ignore_merges=True),
    **dict.fromkeys(("tiny_aya", "cohere2moe"), _Pre(_TINY_AYA)),
    "afmoe": _Pre(_AFMOE),
    "granite-embed-multi-97m": _Pre((_GRANITE_EMB_MULTI,), ignore_merges=True),
    "kimi-k2": _Pre((_KIMI_K2,)),
    "chameleon": _Pre(_CHAMELEON, add_bos=True),
    # llama.cpp also takes a word of only newlines whole when the vocabulary has it (its gemma4
    # rule); Gemma 4's merges already build each run of 1-31 newlines into its token and split
    # longer runs as llama.cpp does (checked on its vocabulary), so no rule is written for it here.
    **dict.fromkeys(
        ("gemma4", "granite-embed-multi-311m"),
        _Pre((_LINES,), byte_level=False, escape_spaces=True, bos_always=True),
    ),
    "sarvam-moe": _Pre((_LINES,), byte_level=False, escape_spaces=True),
    "whitespace": _Pre((r"\S+",), byte_level=False),
}
# tokenizer.json pre-tokenizer regexes -> the tokenizer.ggml.pre name llama.cpp's converter writes.
# Hugging Face files spell the contractions case-insensitively, llama.cpp spells out both cases;
# GPT-2's own regex ends in "|\s+", which llama.cpp drops (an "Isolated" split keeps unmatched text
# as a piece of its own anyway).
_CASED = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_CASELESS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_PRE_OF_REGEX = {
    _GPT2: "gpt-2",
    _GPT2 + r"|\s+": "gpt-2",
    _LLAMA3: "llama-bpe",
    _LLAMA3.replace(_CASED, _CASELESS): "llama-bpe",
    _QWEN2: "qwen2",
    _QWEN2.replace(_CASED, _CASELESS): "qwen2",
}

# Token texts llama.cpp treats as end of generation (and so as control tokens) whatever their
# type. Left out: its per-model exceptions (gpt-oss, gemma4), and "</s>", which it lists for
# paddleocr but which is ordinary text in Qwen2's vocabulary; where "</s>" is EOS, the
# metadata says so.
_EOG_NAMES = frozenset(
    {
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
        "<end_of_utterance>",
        "<｜end▁of▁sentence｜>",
    }
)


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, as a char -> byte map."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


_BYTE_OF_CHAR = _byte_level_chars()


class Tokenizer:
    """Text <-> token ids, backed by a Hugging Face `tokenizers.Tokenizer` object."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eos_ids: frozenset[int]
    add_bos: bool
    chat_template: str | None

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        *,
        byte_level: bool,
        strip_leading_space: bool,
        bos_id: int | None,
        eos_id: int | None,
        eos_ids: frozenset[int],
        add_bos: bool,
        chat_template: str | None = None,
    ) -> None:
        """Wrap `hf`; `byte_level` selects GPT-2 byte decoding, else SentencePiece-style
        ('▁' is a space, <0xNN> is a byte); `strip_leading_space` mirrors a decoder that drops
        the space SentencePiece put in front of the text."""
        self._hf = hf
        self._byte_level = byte_level
        self._strip_leading_space = strip_leading_space
        self._special_ids = frozenset(i for i, t in hf.get_added_tokens_decoder().items() if t.special)
        # encode_special_tokens is a setting of the shared hf object, so flipping it per call
        # must not interleave between threads.
        self._lock = threading.Lock()
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eos_ids = eos_ids
        self.add_bos = add_bos
        self.chat_template = chat_template
        # tokenizer.* metadata: as loaded from GGUF, else built by gguf_metadata() on first use;
        # _gguf_types holds the GGUF (type, element type) of each key read from a file.
        self._gguf_meta: dict[str, Any] | None = None
        self._gguf_types: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]] = {}
        self._framing: tokenizers.Tokenizer | None = None  # a copy that truncates, for encode_batch

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of `text`, with BOS first if `add_bos` (default: the vocabulary's own choice).

        special=True parses control tokens written in the text (llama.cpp's parse_special);
        user-defined tokens are always parsed, as in llama.cpp and Hugging Face."""
        with self._lock:
            self._hf.encode_special_tokens = not special
            ids = self._hf.encode(text, add_special_tokens=False).ids
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise ValueError("BOS requested but this vocabulary has no BOS token")
            ids.insert(0, self.bos_id)
        return ids

    def encode_batch(self, texts: list[str], max_tokens: int, template: bool) -> list[Encoded]:
        """Ids and character spans of each text, at most max_tokens each (longer texts are cut,
        as transformers and sentence-transformers cut them). template=True frames each text with
        the tokenizer's post-processor ([CLS] ... [SEP]), as encoders are trained; False puts BOS
        first where the vocabulary wants it, as encode() does. Special tokens in the text are
        parsed; special tokens added by the framing have the span (0, 0)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        with self._lock:
            if self._framing is None:
                self._framing = tokenizers.Tokenizer.from_str(self._hf.to_str())
            self._framing.enable_truncation(max_tokens)
            encodings = self._framing.encode_batch(texts, add_special_tokens=template)
        out = [Encoded(e.ids, e.offsets) for e in encodings]
        if not template and self.add_bos:
            if self.bos_id is None:
                raise ValueError("BOS requested but this vocabulary has no BOS token")
            out = [Encoded([self.bos_id, *e.ids][:max_tokens], [(0, 0), *e.offsets][:max_tokens]) for e in out]
        return out

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Text of `ids`; skip_special drops control tokens such as BOS and EOS."""
        return self._hf.decode(ids, skip_special_tokens=skip_special)

    def token_text(self, id: int) -> str:
        """The vocabulary entry of one token as stored (e.g. "<s>", "▁Hello", "Ġworld")."""
        text = self._hf.id_to_token(id)
        if text is None:
            raise ValueError(f"token id {id} is out of range (vocabulary size {self.vocab_size})")
        return text

    def token_bytes(self, id: int) -> bytes:
        """Raw bytes of one token (before the leading-space strip that decode() applies)."""
        text = self._hf.id_to_token(id)
        if text is None:
            raise ValueError(f"token id {id} is out of range (vocabulary size {self.vocab_size})")
        if self._byte_level:
            try:
                return bytes(_BYTE_OF_CHAR[c] for c in text)
            except KeyError:  # e.g. an added token with a raw space: the ByteLevel decoder keeps it as is
                return text.encode()
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            return bytes([int(text[3:5], 16)])
        return text.replace("▁", " ").encode()

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        """Build from GGUF metadata (key -> python value), reproducing llama.cpp's tokenization."""
        kind = meta.get("tokenizer.ggml.model")
        if kind not in ("llama", "gpt2", "gemma4", "whitespace", "bert"):
            raise ValueError(f"unsupported GGUF tokenizer model {kind!r}")
        tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
        if not tokens:
            raise ValueError("GGUF metadata has no tokenizer.ggml.tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError("tokenizer.ggml.tokens has duplicate tokens")
        types = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)

        if kind == "bert":
            return _wordpiece_from_gguf(meta, tokens, types)
        if kind == "llama":
            space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
            scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
            unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
            hf = _spm_tokenizer(vocab, scores, tokens[unk] if unk < len(tokens) else None, space_prefix)
            default_bos, default_eos, default_add_bos = 1, 2, True
            byte_level = bos_always = False
        else:
            # llama.cpp's "gemma4" model is BPE with the gemma4 pre-tokenizer whatever the file says;
            # its "whitespace" model drops whitespace (and may lowercase) before the pre-tokenizer.
            pre = "gemma4" if kind == "gemma4" else meta.get("tokenizer.ggml.pre", "default")
            if pre not in _BPE_PRE:
                raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre)")
            spec = _BPE_PRE[pre]
            words_only = kind == "whitespace"
            lowercase = words_only and bool(meta.get("tokenizer.ggml.normalizer.lowercase", False))
            hf = _bpe_tokenizer(vocab, meta.get("tokenizer.ggml.merges") or [], spec, words_only, lowercase)
            space_prefix = False
            default_bos, default_eos, default_add_bos = None, None, spec.add_bos
            byte_level, bos_always = spec.byte_level, spec.bos_always

        eog = {vocab[name] for name in _EOG_NAMES if name in vocab}
        # llama.cpp strips whitespace after Phi-3's special tokens (as Phi-3's own tokenizer.json does).
        name = str(meta.get("general.name", "")).lower()
        phi3 = "phi-3" in name or "phi3" in name
        hf.add_tokens(
            [
                AddedToken(
                    tokens[i],
                    special=types[i] != _USER_DEFINED or i in eog,
                    normalized=False,
                    rstrip=phi3 and tokens[i] not in ("<unk>", "<s>", "<|endoftext|>"),
                )
                for i in range(len(tokens))
                if types[i] in (_UNKNOWN, _CONTROL, _USER_DEFINED) or i in eog
            ]
        )

        eos_id = meta.get("tokenizer.ggml.eos_token_id", default_eos)
        eog |= {meta.get("tokenizer.ggml.eot_token_id"), meta.get("tokenizer.ggml.eom_token_id"), eos_id}  # type: ignore[arg-type]  # None dropped below
        bos_id = meta.get("tokenizer.ggml.bos_token_id", default_bos)
        if meta.get("tokenizer.ggml.add_eos_token") and bos_id is not None and eos_id is not None:
            # An encoder's framing (RoBERTa's <s> ... </s>), used by encode_batch(template=True).
            hf.post_processor = processors.TemplateProcessing(
                single=f"{tokens[bos_id]} $A {tokens[eos_id]}",
                special_tokens=[(tokens[bos_id], bos_id), (tokens[eos_id], eos_id)],
            )
        tok = cls(
            hf,
            byte_level=byte_level,
            strip_leading_space=space_prefix,
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=frozenset(eog - {None}),
            add_bos=bos_always or bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos)),
            chat_template=meta.get("tokenizer.chat_template"),
        )
        tok._gguf_meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
        return tok

    @classmethod
    def from_gguf(cls, path: str | PathLike[str]) -> Tokenizer:
        """Build from the tokenizer stored in a GGUF file."""
        file = load_gguf(path)
        tok = cls.from_gguf_metadata(file.metadata)
        tok._gguf_types = {
            k: (gguf.GGUFValueType(t), None if item is None else gguf.GGUFValueType(item))
            for k, (t, item) in file.types.items()
            if k.startswith("tokenizer.")
        }
        return tok

    @classmethod
    def from_hf_dir(cls, path: str | PathLike[str]) -> Tokenizer:
        """Build from a Hugging Face folder: tokenizer.json, plus tokenizer_config.json (BOS, EOS,
        add_bos_token, chat_template) and generation_config.json (eos_token_id) when present."""
        path = Path(path)
        hf = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        # Saved truncation or padding (GPT-2's file truncates to 50 tokens) would corrupt prompts.
        hf.no_truncation()
        hf.no_padding()
        config = _read_json(path / "tokenizer_config.json")
        generation = _read_json(path / "generation_config.json")

        decoder = json.loads(hf.decoder.__getstate__()) if hf.decoder else {}
        parts = decoder.get("decoders", [decoder])
        kinds = {d.get("type") for d in parts}
        if not kinds & {"ByteLevel", "ByteFallback", "WordPiece"}:
            raise ValueError(f"unsupported tokenizer.json decoder {sorted(map(str, kinds))}")

        bos_id = _token_id(hf, config.get("bos_token"))
        eos_id = _token_id(hf, config.get("eos_token"))
        generation_eos = generation.get("eos_token_id")
        if not isinstance(generation_eos, list):
            generation_eos = [generation_eos]
        eos_ids = frozenset(i for i in [eos_id, *generation_eos] if i is not None)
        if eos_id is None and eos_ids:
            eos_id = generation_eos[0]
        add_bos = config.get("add_bos_token")
        if add_bos is None:
            # Llama 3 style: BOS comes from tokenizer.json's post-processor, the config says nothing.
            add_bos = bos_id is not None and hf.encode("", add_special_tokens=True).ids[:1] == [bos_id]
        template = config.get("chat_template")
        if template is None and (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        return cls(
            hf,
            byte_level="ByteLevel" in kinds,
            strip_leading_space=any(d.get("type") == "Strip" and d.get("start", 0) > 0 for d in parts),
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=eos_ids,
            add_bos=bool(add_bos),
            chat_template=template if isinstance(template, str) else None,
        )

    def gguf_metadata(self, vocab_size: int | None = None) -> dict[str, Any]:
        """This tokenizer as llama.cpp's tokenizer.* GGUF keys (key -> python value), such that
        Tokenizer.from_gguf_metadata() and llama.cpp tokenize as this tokenizer does.

        Built from GGUF (from_gguf, from_gguf_metadata): its tokenizer.* keys, unchanged. Loaded
        from a Hugging Face folder: the keys llama.cpp's convert_hf_to_gguf.py writes, with
        tokenizer.ggml.model "gpt2" (byte-level BPE; tokenizer.ggml.pre from the pre-tokenizer
        regex: "gpt-2", "llama-bpe" or "qwen2") or "llama" (SentencePiece-style BPE with byte
        fallback; a token's score is minus the rank of the first merge that makes it, or below
        every merge if none does, so llama.cpp's highest-score-first merging follows the merge
        order). Extra end-of-generation ids that llama.cpp would not find by name go in
        tokenizer.ggml.eot_token_id / eom_token_id. Raises ValueError for tokenizer.json parts that
        llama.cpp cannot reproduce (an unknown pre-tokenizer regex, add_prefix_space, a normalizer
        other than NFC for byte-level BPE, a model other than BPE).

        `vocab_size` pads the token list to the model's embedding rows (config.json vocab_size)
        with "[PAD{id}]" tokens of type UNUSED (5), as the converter does.

        Value types: str, bool, int, float, list[str], list[int], list[float]. In a GGUF file the
        ints are UINT32 except tokenizer.ggml.token_type (an INT32 array); tokenizer.ggml.scores
        is a FLOAT32 array. gguf_fields() returns the same keys with their GGUF types; note that
        llama.cpp also reads general.name (Phi-3's strip-after-special-tokens), which is not a
        tokenizer.* key and so is not included.
        """
        if self._gguf_meta is None:
            self._gguf_meta = self._hf_gguf_metadata()
        meta = {k: list(v) if isinstance(v, list) else v for k, v in self._gguf_meta.items()}
        tokens = meta["tokenizer.ggml.tokens"]
        if vocab_size is not None and vocab_size != len(tokens):
            if vocab_size < len(tokens):
                raise ValueError(f"vocab_size {vocab_size} is smaller than the vocabulary ({len(tokens)} tokens)")
            pad = range(len(tokens), vocab_size)
            tokens += [f"[PAD{i}]" for i in pad]
            if "tokenizer.ggml.token_type" in meta:
                meta["tokenizer.ggml.token_type"] += [_UNUSED] * len(pad)
            if "tokenizer.ggml.scores" in meta:
                meta["tokenizer.ggml.scores"] += [-1000.0] * len(pad)
        return meta

    def gguf_fields(
        self, vocab_size: int | None = None
    ) -> list[tuple[str, Any, gguf.GGUFValueType, gguf.GGUFValueType | None]]:
        """gguf_metadata() as (key, value, type, element type or None) tuples, the arguments of
        gguf.GGUFWriter.add_key_value:

            for field in tok.gguf_fields():
                writer.add_key_value(*field)

        Keys read from a GGUF file keep the file's types; others follow the converter: str ->
        STRING, bool -> BOOL, int -> UINT32, float -> FLOAT32, and arrays of STRING, INT32
        (token_type) or FLOAT32 (scores). Empty arrays are left out (GGUF cannot store them)."""
        fields = []
        for key, value in self.gguf_metadata(vocab_size).items():
            if isinstance(value, list) and not value:
                continue
            vtype, sub_type = self._gguf_types.get(key) or _gguf_type(value)
            fields.append((key, value, vtype, sub_type))
        return fields

    def _hf_gguf_metadata(self) -> dict[str, Any]:
        """tokenizer.* metadata for a tokenizer.json tokenizer (see gguf_metadata)."""
        config = json.loads(self._hf.to_str())
        model = config["model"]
        if model.get("type") == "WordPiece":
            return self._wordpiece_gguf_metadata(config)
        if model.get("type") != "BPE":
            raise ValueError(f"GGUF metadata needs a BPE tokenizer.json model, not {model.get('type')!r}")
        for option in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(option):
                raise ValueError(f"llama.cpp has no equivalent of the BPE option {option}={model[option]!r}")
        added = self._hf.get_added_tokens_decoder()
        text = {i: t for t, i in model["vocab"].items()}
        text |= {i: t.content for i, t in added.items()}
        unk = model.get("unk_token")
        unk_id = self._hf.token_to_id(unk) if unk else None
        merges = [_merge_pair(m) for m in model["merges"]]

        tokens, types = [], []
        for i in range(max(text) + 1):
            if i not in text:
                tokens.append(f"[PAD{i}]")
                types.append(_UNUSED)
                continue
            token = text[i]
            if i == unk_id and not self._byte_level:
                types.append(_UNKNOWN)
            elif i in added:
                types.append(_CONTROL if added[i].special else _USER_DEFINED)
                # llama.cpp matches user-defined tokens in the raw text, where spaces are spaces.
                if not added[i].special and added[i].normalized and not self._byte_level:
                    token = token.replace("▁", " ")
            elif not self._byte_level and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                types.append(_BYTE)
            else:
                types.append(_NORMAL)
            tokens.append(token)

        meta: dict[str, Any]
        if self._byte_level:
            normalizer = config.get("normalizer")
            if normalizer is not None and normalizer.get("type") != "NFC":
                raise ValueError(f"llama.cpp has no equivalent of the tokenizer.json normalizer {normalizer}")
            for a, _ in merges:
                if " " in a[1:]:
                    raise ValueError(f"merge left part {a!r} has a space, which GGUF's 'a b' merges cannot hold")
            meta = {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.pre": _bpe_pre_name(config.get("pre_tokenizer")),
                "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.token_type": types,
                "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges],
            }
        else:
            if not model.get("byte_fallback"):
                raise ValueError("a SentencePiece-style tokenizer.json needs byte_fallback for llama.cpp")
            first_rank: dict[str, int] = {}
            for rank, (a, b) in enumerate(merges):
                first_rank.setdefault(a + b, rank)
            # Tokens no merge makes (characters, bytes, specials) rank after every merge.
            meta = {
                "tokenizer.ggml.model": "llama",
                "tokenizer.ggml.pre": "default",
                "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.scores": [-float(first_rank.get(t, len(merges) + i)) for i, t in enumerate(tokens)],
                "tokenizer.ggml.token_type": types,
                "tokenizer.ggml.add_space_prefix": _spm_space_prefix(config),
            }
            if unk_id is not None:
                meta["tokenizer.ggml.unknown_token_id"] = unk_id

        if self.bos_id is not None:
            meta["tokenizer.ggml.bos_token_id"] = self.bos_id
        if self.eos_id is not None:
            meta["tokenizer.ggml.eos_token_id"] = self.eos_id
        # llama.cpp finds end-of-generation tokens by name; others go in its two spare keys (a
        # third would be lost).
        extra = sorted(i for i in self.eos_ids - {self.eos_id} if i >= len(tokens) or tokens[i] not in _EOG_NAMES)
        for key, i in zip(("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"), extra, strict=False):
            meta[key] = i
        meta["tokenizer.ggml.add_bos_token"] = self.add_bos
        if self.frames_with_eos():  # an encoder's <s> ... </s>: llama.cpp's add_bos + add_eos
            meta["tokenizer.ggml.add_bos_token"] = meta["tokenizer.ggml.add_eos_token"] = True
        if self.chat_template is not None:
            meta["tokenizer.chat_template"] = self.chat_template
        return meta

    def frames_with_eos(self) -> bool:
        """Whether the post-processor frames a text as BOS ... EOS (RoBERTa's <s> ... </s>)."""
        if self.bos_id is None or self.eos_id is None or self._hf.post_processor is None:
            return False
        framed = self._hf.encode("a", add_special_tokens=True).ids
        return framed[:1] == [self.bos_id] and framed[-1:] == [self.eos_id]

    def _wordpiece_gguf_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        """llama.cpp's "bert" vocabulary (what its converter writes for BERT): word-initial pieces
        get a leading "▁", continuation pieces lose their "##"; the framing tokens by id."""
        normalizer = config.get("normalizer") or {}
        if normalizer.get("type") != "BertNormalizer" or not normalizer.get("lowercase", True):
            raise ValueError("llama.cpp's WordPiece lowercases: only uncased BERT vocabularies can be written to GGUF")
        prefix = config["model"].get("continuing_subword_prefix", "##")
        added = self._hf.get_added_tokens_decoder()
        text = {i: t for t, i in config["model"]["vocab"].items()} | {i: t.content for i, t in added.items()}
        tokens, types = [], []
        for i in range(max(text) + 1):
            token = text.get(i, f"[PAD{i}]")
            if i in added or i not in text:
                tokens.append(token)
                types.append(_CONTROL if i in added else _UNUSED)
            else:
                tokens.append(token[len(prefix) :] if token.startswith(prefix) else "▁" + token)
                types.append(_NORMAL)
        meta: dict[str, Any] = {
            "tokenizer.ggml.model": "bert",
            "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.token_type_count": 2,
        }
        framed = self._hf.encode("a", add_special_tokens=True).ids
        ids = {
            "unknown_token_id": self._hf.token_to_id(config["model"].get("unk_token", "[UNK]")),
            "cls_token_id": framed[0] if len(framed) > 2 else None,
            "seperator_token_id": framed[-1] if len(framed) > 2 else None,  # llama.cpp's spelling
            "padding_token_id": self._hf.token_to_id("[PAD]"),
            "mask_token_id": self._hf.token_to_id("[MASK]"),
        }
        meta |= {f"tokenizer.ggml.{k}": v for k, v in ids.items() if v is not None}
        return meta


class Encoded(NamedTuple):
    """A tokenized text: ids and each token's character span [start, end) in the text."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class StreamDecoder:
    """Turns a stream of token ids into text pieces, never emitting half a UTF-8 character."""

    def __init__(self, tok: Tokenizer, *, skip_special: bool = False) -> None:
        """Decode ids of `tok`; pieces joined equal tok.decode(ids, skip_special)."""
        self._tok = tok
        self._skip = tok._special_ids if skip_special else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = tok._strip_leading_space

    def push(self, id: int) -> str:
        """Text completed by this token ('' while a UTF-8 character is incomplete)."""
        if id in self._skip:
            return ""
        return self._emit(self._utf8.decode(self._tok.token_bytes(id)))

    def flush(self) -> str:
        """Text still held back: a trailing incomplete UTF-8 sequence, as U+FFFD."""
        return self._emit(self._utf8.decode(b"", final=True))

    def _emit(self, text: str) -> str:
        # decode() drops one space at the very start of the text, so the stream must too.
        if self._strip and text:
            self._strip = False
            return text.removeprefix(" ")
        return text


def _spm_tokenizer(
    vocab: dict[str, int], scores: list[float], unk: str | None, add_space_prefix: bool
) -> tokenizers.Tokenizer:
    """A BPE model that merges like llama.cpp's llm_tokenizer_spm (highest-scoring token first,
    byte fallback), built the way transformers' LlamaConverter does."""
    model = models.BPE(vocab=vocab, merges=_spm_merges(vocab, scores), unk_token=unk, fuse_unk=True, byte_fallback=True)
    hf = tokenizers.Tokenizer(model)
    space = [normalizers.Replace(" ", "▁")]
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), *space] if add_space_prefix else space)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    hf.decoder = decoders.Sequence([*steps, decoders.Strip(" ", 1, 0)] if add_space_prefix else steps)
    return hf


def _spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """A SentencePiece vocabulary's merges, from its scores as transformers' SentencePieceExtractor
    makes them: every split of a piece into two pieces is a merge, ranked by the piece's score."""
    ranked = []
    for piece, i in vocab.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        pairs = sorted((vocab[a], vocab[b], a, b) for a, b in splits if a in vocab and b in vocab)
        ranked += [(-scores[i], a, b) for _, _, a, b in pairs]
    ranked.sort(key=lambda m: m[0])
    return [(a, b) for _, a, b in ranked]


def _wordpiece_from_gguf(meta: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    """llama.cpp's WPM vocabulary as a WordPiece tokenizer framed [CLS] ... [SEP].

    llama.cpp's converter stores word-initial pieces with a leading "▁" and continuation pieces
    without BERT's "##" (its "phantom space" form); the HF spelling is restored here. Like
    llama.cpp's WPM, it lowercases and splits punctuation and CJK characters into words."""

    spelled = [t[1:] if t.startswith("▁") else t if (ty == _CONTROL or t.startswith("[")) else "##" + t
               for t, ty in zip(tokens, types, strict=True)]  # fmt: skip
    vocab: dict[str, int] = {}
    for i, t in enumerate(spelled):
        vocab.setdefault(t, i)
    unk = meta.get("tokenizer.ggml.unknown_token_id", 100)
    cls_id = meta.get("tokenizer.ggml.cls_token_id", meta.get("tokenizer.ggml.bos_token_id", 101))
    sep_id = meta.get("tokenizer.ggml.seperator_token_id", meta.get("tokenizer.ggml.eos_token_id", 102))
    for name, i in (("unknown", unk), ("cls", cls_id), ("separator", sep_id)):
        if not 0 <= i < len(tokens):
            raise ValueError(f"tokenizer.ggml.{name} token id {i} is out of range")
    hf = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=spelled[unk], max_input_chars_per_word=100))
    hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    hf.add_special_tokens([spelled[i] for i, ty in enumerate(types) if ty == _CONTROL])
    cls_text, sep_text = spelled[cls_id], spelled[sep_id]
    hf.post_processor = processors.TemplateProcessing(
        single=f"{cls_text} $A {sep_text}",
        pair=f"{cls_text} $A {sep_text} $B:1 {sep_text}:1",
        special_tokens=[(cls_text, cls_id), (sep_text, sep_id)],
    )
    tok = Tokenizer(
        hf,
        byte_level=False,
        strip_leading_space=False,
        bos_id=cls_id,
        eos_id=sep_id,
        eos_ids=frozenset({sep_id}),
        add_bos=False,
    )
    tok._gguf_meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    return tok


def _bpe_tokenizer(
    vocab: dict[str, int], merges: list[str], spec: _Pre, words_only: bool = False, lowercase: bool = False
) -> tokenizers.Tokenizer:
    """A BPE model that splits words with llama.cpp's regexes for the vocabulary: byte-level
    (GPT-2's byte map), or on raw UTF-8 with <0xNN> byte tokens for the characters the vocabulary
    lacks. words_only drops whitespace first (llama.cpp's "whitespace" tokenizer model)."""
    # llama.cpp splits at the first space after the first character, so a left part that is
    # itself a space survives.
    pairs = [(m[: m.find(" ", 1)], m[m.find(" ", 1) + 1 :]) for m in merges]
    model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges, byte_fallback=not spec.byte_level)
    hf = tokenizers.Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in spec.regexes]
    if words_only:
        splits.insert(0, pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"))
    normalize: list[normalizers.Normalizer] = [normalizers.Lowercase()] if lowercase else []
    if spec.escape_spaces:
        normalize.append(normalizers.Replace(" ", "▁"))
    if normalize:
        hf.normalizer = normalizers.Sequence(normalize)
    if spec.byte_level:
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        hf.decoder = decoders.ByteLevel()
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence(splits)
        space = [decoders.Replace("▁", " ")] if spec.escape_spaces else []
        hf.decoder = decoders.Sequence([*space, decoders.ByteFallback(), decoders.Fuse()])
    return hf


def _bpe_pre_name(pre: dict[str, Any] | None) -> str:
    """The tokenizer.ggml.pre name of a byte-level tokenizer.json pre_tokenizer."""
    steps = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre]
    *split, last = steps or [None]
    if last and last.get("type") == "ByteLevel" and not last.get("add_prefix_space", True):
        if not split and last.get("use_regex", True):
            return "gpt-2"
        if split == [{"type": "Digits", "individual_digits": True}] and last.get("use_regex", True):
            return "smollm"  # each digit alone, then GPT-2's regex (SmolLM, StarCoder)
        step = (split[0] or {}) if len(split) == 1 and not last.get("use_regex", True) else {}
        regex = (step.get("pattern") or {}).get("Regex")
        if step.get("type") == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            if regex in _PRE_OF_REGEX:
                return _PRE_OF_REGEX[regex]
    raise ValueError(f"no llama.cpp pre-tokenizer (tokenizer.ggml.pre) matches the tokenizer.json pre_tokenizer {pre}")


def _spm_space_prefix(config: dict[str, Any]) -> bool:
    """tokenizer.ggml.add_space_prefix of a SentencePiece-style tokenizer.json, whose spaces
    become '▁' in its normalizer (Prepend + Replace) or in a Metaspace pre-tokenizer."""
    normalizer, pre = config.get("normalizer"), config.get("pre_tokenizer")
    steps = [normalizer]
    if normalizer and normalizer.get("type") == "Sequence":
        steps = normalizer.get("normalizers") or []
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    if pre is None and steps in ([replace], [{"type": "Prepend", "prepend": "▁"}, replace]):
        return len(steps) == 2
    if normalizer is None and pre and pre.get("type") == "Metaspace" and pre.get("replacement") == "▁":
        if not pre.get("split", True):  # older files: add_prefix_space instead of prepend_scheme
            scheme = pre.get("prepend_scheme") or ("always" if pre.get("add_prefix_space", True) else "never")
            return scheme != "never"
    raise ValueError(f"llama.cpp has no equivalent of the tokenizer.json normalizer {normalizer} / pre_tokenizer {pre}")


def _merge_pair(merge: str | list[str]) -> tuple[str, str]:
    """(left, right) of a tokenizer.json merge, given as a pair or as "left right"."""
    if isinstance(merge, str):  # split as llama.cpp does: a left part may be a lone space
        k = merge.find(" ", 1)
        if k < 0:
            raise ValueError(f"tokenizer.json merge {merge!r} is not two tokens")
        return merge[:k], merge[k + 1 :]
    return merge[0], merge[1]


def _gguf_type(value: Any) -> tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]:
    """GGUF (type, element type) of a python metadata value, as llama.cpp's converter writes it."""
    t = gguf.GGUFValueType
    if isinstance(value, list):
        element = value[0]
        if isinstance(element, int) and not isinstance(element, bool):
            return t.ARRAY, t.INT32  # token_type
        return t.ARRAY, _gguf_type(element)[0]
    if isinstance(value, bool):
        return t.BOOL, None
    if isinstance(value, int):
        return t.UINT32, None
    if isinstance(value, float):
        return t.FLOAT32, None
    if isinstance(value, str):
        return t.STRING, None
    raise ValueError(f"no GGUF type for {type(value).__name__} metadata")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_id(hf: tokenizers.Tokenizer, token: str | dict[str, Any] | None) -> int | None:
    """Id of a tokenizer_config.json token, given as text or as a serialized AddedToken."""
    if isinstance(token, dict):
        token = token.get("content")
    return hf.token_to_id(token) if token else None
