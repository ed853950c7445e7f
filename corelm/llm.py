"""The Python API: `corelm.load(path)` returns an `LLM` that generates, streams and chats."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from corelm import _C
from corelm.engine.chat import render_chat
from corelm.engine.generate import GenerationStats, generate_tokens
from corelm.engine.sampling import Sampler, SamplingParams
from corelm.engine.stops import StopStrings
from corelm.models import load_model
from corelm.models.base import Model
from corelm.tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger(__name__)
DEFAULT_MAX_CTX = 4096  # the default cache size is the model's context, capped here
# corelm's own small model, trained by `corelm train` on Shakespeare (see data/MODEL_CARD.md).
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default.gguf"


class LLM:
    """A loaded model with its tokenizer. Calls are serialised: one object is safe to share
    between threads (each call runs alone, with all the cores)."""

    def __init__(
        self, model: Model, tokenizer: Tokenizer | None, ctx: int | None = None, kv_dtype: str = "float32"
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.ctx = int(ctx) if ctx else min(model.config.ctx, DEFAULT_MAX_CTX)
        if self.ctx < 1:
            raise ValueError(f"ctx must be positive, got {ctx}")
        self.cache = model.new_cache(self.ctx, kv_dtype)
        self.last_stats = GenerationStats()
        self._lock = threading.Lock()

    @property
    def config(self):
        return self.model.config

    # ---- text <-> ids ----

    def _tok(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids instead of text")
        return self.tokenizer

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of `text` (BOS as the model's metadata says, unless add_bos is given)."""
        return self._tok().encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok().decode(list(ids))

    # ---- evaluation ----

    def _check_ids(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("expected a non-empty list of token ids")
        bad = arr[(arr < 0) | (arr >= self.config.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} out of range [0, {self.config.vocab_size})")
        return arr.astype(np.int32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 logits [len(ids), vocab] at every position, from an empty context (no state kept)."""
        arr = self._check_ids(ids)
        cache = self.model.new_cache(len(arr))
        with self._lock:
            return self.model.forward(arr, 0, cache, all_logits=True).copy()

    # ---- generation ----

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(self._check_ids(prompt))
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.ctx:
            raise ValueError(
                f"the prompt has {len(ids)} tokens; the context holds {self.ctx} (pass a larger ctx= to corelm.load)"
            )
        return [int(i) for i in ids]

    def stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
    ) -> Iterator[str]:
        """Yields text pieces as they are generated (never half a UTF-8 character).

        Generation ends at a stop token (the model's EOS/EOT ids and `stop_ids`, unless
        ignore_eos), at `max_tokens`, at a full context, or before the first stop string.
        """
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        ids = self._prompt_ids(prompt)
        params = SamplingParams(
            temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty, seed=seed
        )
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        eos = self.tokenizer.eos_ids if self.tokenizer else frozenset()
        stop_set = frozenset(eos) | frozenset(int(i) for i in stop_ids)
        return self._stream(ids, max_tokens, Sampler(params), stops, stop_set, ignore_eos)

    def _stream(
        self,
        ids: list[int],
        max_tokens: int,
        sampler: Sampler,
        stops: list[str],
        stop_set: frozenset[int],
        ignore_eos: bool,
    ) -> Iterator[str]:
        with self._lock:
            self.last_stats = stats = GenerationStats()
            decoder = StreamDecoder(self._tok(), skip_special=True) if self.tokenizer else None
            held = StopStrings(stops)  # holds back text that could be the start of a stop string
            for token in generate_tokens(self.model, self.cache, ids, max_tokens, sampler, stop_set, ignore_eos, stats):
                text = held.push(decoder.push(token) if decoder else f"<{token}>")
                if text:
                    yield text
                if held.stopped:
                    stats.finish_reason = "stop"
                    return
            tail = held.flush(decoder.flush() if decoder else "")
            if tail:
                yield tail

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> str:
        """The generated text (see `stream` for the parameters)."""
        return "".join(self.stream(prompt, **kwargs))

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        """Reply to OpenAI-style messages, rendered with the model's chat template."""
        return "".join(self.stream_chat(messages, **kwargs))

    def stream_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[str]:
        tok = self._tok()
        bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        text = render_chat(tok.chat_template, messages, bos_token=bos, eos_token=eos)
        # The template writes BOS itself when the model wants one (as transformers assumes).
        ids = tok.encode(text, add_bos=False if tok.chat_template else None)
        return self.stream(ids, **kwargs)


def load(
    path: str | PathLike[str] | None = None,
    threads: int | None = None,
    ctx: int | None = None,
    quant: str | None = None,
    kv_dtype: str = "float32",
) -> LLM:
    """Load a GGUF file or a Hugging Face folder; with no path, corelm's own small default model.

    threads: size of corelm's thread pool (default: the physical cores);
    ctx: KV-cache size in tokens (default: the model's context, at most 4096);
    quant: quantize weights while loading (corelm.models.QUANT_NAMES: "q8_0", "q4_k", "q4_0", "bf16", ...).
    """
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"corelm's default model is missing from this install ({DEFAULT_MODEL})")
        path = DEFAULT_MODEL
    if threads is not None:
        _C.set_num_threads(int(threads))
    model, tokenizer = load_model(path, quant=quant)
    return LLM(model, tokenizer, ctx=ctx, kv_dtype=kv_dtype)
