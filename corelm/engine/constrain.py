"""Constrained decoding: a grammar (a JSON schema, "any JSON object", a Lark grammar or a regex)
decides which tokens may come next, and the sampler draws only among them.

The grammars run on llguidance (the Rust engine behind Guidance, from PyPI, no dependencies of
its own: a core dependency of corelm). It was chosen over xgrammar and
outlines-core by `python -m benchmarks.constrained` (figures in the README): the cheapest mask
per token on both vocabularies measured, grammars compiled in milliseconds, recursion (any JSON
object, nested schemas) and Lark grammars, and an install that pulls nothing else in (xgrammar's
wheel requires torch, transformers and triton; outlines-core compiles each schema to a regex
index over the whole vocabulary, slow for large schemas and unable to express recursion).

    grammar = Grammar.json_schema({"type": "object", ...})     # or json_object(), lark(...), regex(...)
    c = grammar.matcher(tokenizer)                               # one per sequence
    c.fill(mask_row); ...sample...; c.advance(token)

The Engine gives each constrained sequence a Constraint and masks its row of logits before the
batch's one native sampling call (see Engine._sample); sequences without one cost nothing.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from corelm.tokenizer import Tokenizer

# Compact JSON (no free whitespace): a small model cannot then loop on spaces and newlines, and
# the text is the shortest. Fixed separators ", " would cost a token per item for nothing.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

INSTALL_HINT = "structured output needs llguidance (a dependency of corelm): pip install llguidance"


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return llguidance


_LL_TOKENIZERS: weakref.WeakKeyDictionary[Tokenizer, Any] = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def lltokenizer(tok: Tokenizer) -> Any:
    """llguidance's view of a corelm tokenizer, made once per tokenizer (10 ms for 2k tokens,
    ~1 s for SmolLM2's 49k). It reads the same Hugging Face tokenizer object corelm encodes with
    (GGUF vocabularies are converted to one), so token bytes, byte fallback and SentencePiece's
    leading space agree with corelm's decoding (a token of the lone byte 0xFF cannot be
    represented: llguidance reserves that byte, and no UTF-8 text holds it)."""
    ll = _llguidance()
    with _LL_LOCK:
        held = _LL_TOKENIZERS.get(tok)
        if held is None:
            eos = sorted(tok.eos_ids) or None
            held = _LL_TOKENIZERS[tok] = ll.LLTokenizer(tok._hf.to_str(), n_vocab=tok.vocab_size, eos_token=eos)
        return held


@dataclass(frozen=True)
class Grammar:
    """A grammar in llguidance's serialized form; make one with a constructor below."""

    source: str  # llguidance's grammar JSON
    kind: str  # "json_schema", "json_object", "lark", "regex" (for messages)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> Grammar:
        """Text that is one JSON value valid under `schema` (a dict or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
        ll = _llguidance()
        try:
            g = ll.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except ValueError as e:
            raise ValueError(f"invalid JSON schema: {e}") from None
        return cls._checked(g, "json_schema")

    @classmethod
    def json_object(cls) -> Grammar:
        """Text that is one JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def lark(cls, grammar: str) -> Grammar:
        """A Lark grammar, as llguidance reads it (`start: ...`; %json {...} embeds a schema)."""
        return cls._checked(_llguidance().LLMatcher.grammar_from_lark(grammar), "lark")

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """Text matching a regular expression (whole)."""
        return cls._checked(_llguidance().LLMatcher.grammar_from_regex(pattern), "regex")

    @classmethod
    def _checked(cls, g: str, kind: str) -> Grammar:
        is_error, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(g)
        if is_error:  # the first line: "1(11): Expected token ')' ..." (then the line quoted, a caret)
            first = messages[0].strip().splitlines()[0] if messages and messages[0].strip() else "rejected"
            raise ValueError(f"invalid {kind.replace('_', ' ')} grammar: {first}")
        return cls(g, kind)

    def matcher(self, tok: Tokenizer) -> Constraint:
        return Constraint(self, tok)


class Constraint:
    """One sequence's position in a grammar: which tokens may come next, advanced by each token.
    Used by the Engine's thread only."""

    def __init__(self, grammar: Grammar, tok: Tokenizer) -> None:
        ll = _llguidance()
        self.grammar = grammar
        self.vocab_size = tok.vocab_size
        self._m = ll.LLMatcher(lltokenizer(tok), grammar.source, log_level=0)
        if self._m.is_error():
            raise ValueError(f"invalid {grammar.kind.replace('_', ' ')} grammar: {self._m.get_error()}")

    @property
    def words(self) -> int:
        """int32 words of a mask row: one bit per token."""
        return (self.vocab_size + 31) // 32

    def fill(self, row: np.ndarray) -> None:
        """Write the allowed-token bitmask (int32, C-contiguous) into `row`. A model's logits may
        be wider than its tokenizer's vocabulary (padded rows): those tokens are never allowed."""
        if row.size == self.words:
            self._m.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)
            return
        own = np.zeros(self.words, np.int32)
        self._m.unsafe_compute_mask_ptr(own.ctypes.data, own.nbytes)
        n = min(row.size, own.size)
        row[:n] = own[:n]
        row[n:] = 0

    def advance(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self._m.get_error()}")

    @property
    def finished(self) -> bool:
        """No token may follow (the grammar is complete and allows nothing more)."""
        return self._m.is_stopped()

    @property
    def complete(self) -> bool:
        """The text so far is a whole sentence of the grammar (it may stop here)."""
        return self._m.is_accepting()


def apply_masks(logits: np.ndarray, rows: list[int], masks: np.ndarray) -> None:
    """Set logits[rows[i], t] to -inf where bit t of masks[i] is clear (in place; float32).

    Branch-free: each refused token's bit becomes the float32 bit pattern of -inf (0xFF800000),
    an allowed one 0.0, and the row is added to it (~45 us for a row of 49k tokens; numpy's
    boolean indexing takes ~400)."""
    vocab = logits.shape[1]
    refused = np.unpackbits((~masks).view(np.uint8), axis=1, count=vocab, bitorder="little")
    add = np.multiply(refused, np.uint32(0xFF800000), dtype=np.uint32).view(np.float32)
    for j, r in enumerate(rows):
        np.add(logits[r], add[j], out=logits[r])
