"""The Python API: `corelm.load(path)` returns an `LLM` that generates, streams and chats, and
embeds, classifies and tags texts (encoders, and decoders with a classification head)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, overload

import numpy as np

from corelm import _C
from corelm.engine.chat import FALLBACK_STOPS, render_chat
from corelm.engine.constrain import Grammar
from corelm.engine.kv_cache import KV_DTYPES
from corelm.engine.sampling import SamplingParams
from corelm.engine.scheduler import Delta, Engine, GenerationStats, Request
from corelm.kernels import Weight
from corelm.models import load_model
from corelm.models.base import Model, Segment, Step
from corelm.tokenizer import Encoded, Tokenizer

log = logging.getLogger(__name__)
DEFAULT_MAX_CTX = 4096  # the default cache size is the model's context, capped here
# corelm's own small model, trained by `corelm train` on Shakespeare (see data/MODEL_CARD.md).
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default.gguf"
ROWS_PER_STEP = 4096  # texts are embedded / classified in forward passes of about this many tokens


@dataclass(frozen=True)
class Entity:
    """A tagged span: consecutive tokens of one entity type (B-/I- tags merged, as transformers'
    aggregation "simple"); score is the mean probability of its tokens' tags."""

    label: str
    text: str
    start: int  # character offsets in the text: text[start:end]
    end: int
    score: float


class LLM:
    """A loaded model with its tokenizer. Calls are serialised: one object is safe to share
    between threads (each call runs alone, with all the cores)."""

    def __init__(
        self, model: Model, tokenizer: Tokenizer | None, ctx: int | None = None, kv_dtype: str = "float32"
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.ctx = int(ctx) if ctx is not None else min(model.config.ctx, DEFAULT_MAX_CTX)
        if self.ctx < 1:
            raise ValueError(f"ctx must be positive, got {ctx}")
        if self.ctx > model.config.ctx and model.config.causal:
            log.warning(
                "a context of %d tokens is beyond the %d this model was trained on: text past position %d may degrade",
                self.ctx,
                model.config.ctx,
                model.config.ctx,
            )
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"KV cache dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
        self.kv_dtype = kv_dtype
        self._engine: Engine | None = None  # made by the first generation: one KV slot of ctx tokens
        self.last_stats = GenerationStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        c, w = self.config, self.model.w
        matrices = [x for x in w.values() if isinstance(x, Weight)]
        params = sum(x.n * x.k for x in matrices) + sum(x.size for x in w.values() if isinstance(x, np.ndarray))
        size = sum(x.data.nbytes for x in matrices) + sum(x.nbytes for x in w.values() if isinstance(x, np.ndarray))
        types = Counter(x.type.base.name for x in matrices)
        kinds = ", ".join(f"{n} {t}" for t, n in types.most_common())
        info = _C.info()
        kind = c.kind
        head = f", {c.head} classifier of {len(c.labels)} labels" if c.head else ""
        return (
            f"<corelm.LLM {c.arch} {kind}{head}: {_count(params)} parameters, {size / 2**20:.1f} MiB "
            f"(matrices: {kinds}), context {self.ctx} (trained {c.ctx}), {info['threads']} threads, "
            f"{info['isa']} kernels>"
        )

    @property
    def config(self):
        return self.model.config

    @property
    def capabilities(self) -> frozenset[str]:
        """What this model can do: "generate" (decoders with a language-model head), "embed" (every
        model: pooled hidden states), "classify" (a sequence classifier), "tag" (a token classifier)."""
        c, caps = self.config, {"embed"}
        if c.causal and ("output.weight" in self.model.w or (c.tied_embeddings and not c.head)):
            caps.add("generate")
        if c.head:
            caps.add("classify" if c.head == "sequence" else "tag")
        return frozenset(caps)

    @property
    def labels(self) -> list[str]:
        """The classifier's labels, in the order of its outputs ([] without a classifier)."""
        return list(self.config.labels)

    def _require(self, capability: str) -> None:
        if capability not in self.capabilities:
            can = ", ".join(sorted(self.capabilities))
            why = ": it attends both ways" if capability == "generate" and self.config.bidirectional else ""
            raise ValueError(f"this {self.config.arch} {self.config.kind} cannot {capability}{why} (it can: {can})")

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
        self._require("generate")
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
                f"the prompt has {len(ids)} tokens; the context holds {self.ctx} "
                "(a larger one: -c N on the command line, ctx= in corelm.load)"
            )
        return [int(i) for i in ids]

    def stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        logit_bias: Mapping[int, float] | None = None,
        json_schema: Mapping[str, Any] | str | None = None,
        json_object: bool = False,
        grammar: str | Grammar | None = None,
    ) -> Iterator[str]:
        """Yields text pieces as they are generated (never half a UTF-8 character).

        prompt: text (BOS added as the model's metadata says) or token ids.
        max_tokens: most tokens generated (a full context ends generation earlier, with a warning).
        temperature: 0 is greedy; top_k (0: off), top_p (1: off) and min_p (0: off) filter the
            untempered distribution first, as llama.cpp does.
        repeat_penalty (1: off) divides the positive logits (multiplies the negative ones) of the
            last repeat_last_n tokens (0: all of them); presence_penalty and frequency_penalty
            subtract from them as OpenAI's do.
        seed: the same seed gives the same text (None: a random one).
        stop: generation ends before the first of these strings (not included in the text);
            stop_ids: tokens that end it besides the model's EOS / EOT (ignore_eos: none does).
        logit_bias: token id -> a number added to its logit (-100 bans it in practice).
        Structured output (at most one; needs llguidance, see corelm.engine.constrain):
        json_schema: a JSON schema (dict or JSON text): the text is one JSON value valid under it;
        json_object: the text is one JSON object;
        grammar: a Lark grammar (llguidance's dialect: `start: ...`, regexes as /.../, %json {...})
            or a prepared corelm.engine.constrain.Grammar (Grammar.regex(...) for a regex).
        The JSON is compact (no whitespace between tokens) and complete unless max_tokens or a stop
        string cut it short (LLM.last_stats.finish_reason is then "length" or "stop").
        """
        self._require("generate")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be >= 0, got {repeat_last_n}")
        constraint = _grammar(json_schema, json_object, grammar)
        if constraint is not None:
            self._tok()  # a clear error for a model without a tokenizer
        ids = self._prompt_ids(prompt)
        room = self.ctx - len(ids) + 1  # the last token sampled needs no room in the cache
        if max_tokens > room:
            log.warning(
                "max_tokens=%d: a prompt of %d tokens leaves room for %d in the %d-token context, "
                "generation stops there (a larger context: -c N on the command line, ctx= in corelm.load)",
                max_tokens,
                len(ids),
                room,
                self.ctx,
            )
        params = SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            repeat_last_n=repeat_last_n,
            seed=seed,
        )
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        bias = {int(t): float(b) for t, b in (logit_bias or {}).items()}
        for t in bias:
            if not 0 <= t < self.config.vocab_size:
                raise ValueError(f"logit_bias: token id {t} out of range [0, {self.config.vocab_size})")
        request = Request(
            ids,
            max_tokens,
            params,
            stops,
            frozenset(int(i) for i in stop_ids),
            ignore_eos,
            logit_bias=bias,
            grammar=constraint,
        )
        return self._stream(request)

    def _stream(self, request: Request) -> Iterator[str]:
        """A batch of one on this LLM's engine. Its one slot keeps the keys and values of the last
        sequence, so a prompt that starts the same way (a chat's earlier turns, a system prompt)
        computes only what is new."""
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.model, self.tokenizer, 1, self.ctx, self.kv_dtype, prefill_chunk=self.ctx)
            seq = self._engine.add(request)
            self.last_stats = seq.stats
            for event in self._engine.run(seq):
                if isinstance(event, Delta) and event.text:
                    yield event.text

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        logit_bias: Mapping[int, float] | None = None,
        json_schema: Mapping[str, Any] | str | None = None,
        json_object: bool = False,
        grammar: str | Grammar | None = None,
    ) -> str:
        """The generated text: `stream`'s pieces joined (see `stream` for every parameter).

        >>> llm.generate("Once upon a time", max_tokens=32, temperature=0, seed=1)
        >>> json.loads(llm.generate("A person as JSON: ", json_schema={"type": "object", ...}))
        """
        return "".join(self.stream(prompt, **_options(locals())))

    def chat(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int = 128,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        logit_bias: Mapping[int, float] | None = None,
        json_schema: Mapping[str, Any] | str | None = None,
        json_object: bool = False,
        grammar: str | Grammar | None = None,
    ) -> str:
        """The reply to OpenAI-style messages ([{"role": "user", "content": "Hi"}, ...]), rendered
        with the model's chat template; the parameters are `stream`'s."""
        return "".join(self.stream_chat(messages, **_options(locals())))

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int = 128,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        logit_bias: Mapping[int, float] | None = None,
        json_schema: Mapping[str, Any] | str | None = None,
        json_object: bool = False,
        grammar: str | Grammar | None = None,
    ) -> Iterator[str]:
        """`chat`, streamed. A model without a chat template gets corelm's plain format and
        stops where a next turn would start (FALLBACK_STOPS: a turn marker or a blank line)."""
        options = _options(locals())
        ids = self.chat_ids(messages)
        if self._tok().chat_template is None:
            options["stop"] = [*([stop] if isinstance(stop, str) else stop or []), *FALLBACK_STOPS]
        return self.stream(ids, **options)

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt token ids of `messages`, as `chat` renders them (the model's template)."""
        tok = self._tok()
        bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        text = render_chat(tok.chat_template, messages, bos_token=bos, eos_token=eos)
        # The template writes BOS itself when the model wants one (as transformers assumes).
        return tok.encode(text, add_bos=False if tok.chat_template else None)

    # ---- embeddings and classifiers ----

    @property
    def max_tokens(self) -> int:
        """The longest text (in tokens, special tokens included) embedded or classified whole;
        longer ones are cut: the sentence-transformers max_seq_length, else the context."""
        c = self.config
        return min(c.max_tokens or c.ctx, c.ctx if not c.causal else self.ctx)

    def encode(self, texts: Sequence[str], truncate: bool = True) -> list[Encoded]:
        """Token ids and character spans as embed / classify / tag see them: framed by the
        encoder's special tokens ([CLS] ... [SEP]) or BOS-first for decoders, cut to max_tokens
        (truncate=False: a text that does not fit is a ValueError)."""
        if isinstance(texts, str):
            raise TypeError("expected a list of texts (wrap a single text in a list)")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, not str")
        limit = self.max_tokens
        encoded = self._tok().encode_batch(texts, limit if truncate else limit + 1, template=not self.config.decoder)
        for i, e in enumerate(encoded):
            if not e.ids:
                raise ValueError(f"text {i} is empty and this model adds no tokens of its own to it")
            if len(e.ids) > limit:
                raise ValueError(f"text {i} has more than {limit} tokens (pass truncate=True to cut it)")
            if max(e.ids) >= self.config.vocab_size:
                raise ValueError(
                    f"text {i} has token id {max(e.ids)}, beyond the model's {self.config.vocab_size}: "
                    "the tokenizer does not belong to this model"
                )
        return encoded

    def _hidden_batches(self, encoded: list[Encoded]) -> Iterator[tuple[list[int], np.ndarray, Step]]:
        """Hidden states of all texts, a few thousand tokens per forward pass, texts of similar
        length together: yields (indices of the texts, hidden states [rows, C], step)."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        start = 0
        while start < len(order):
            stop, rows = start, 0
            while stop < len(order) and (stop == start or rows + len(encoded[order[stop]].ids) <= ROWS_PER_STEP):
                rows += len(encoded[order[stop]].ids)
                stop += 1
            batch = order[start:stop]
            tokens = np.concatenate([np.asarray(encoded[i].ids, np.int32) for i in batch])
            lengths = [len(encoded[i].ids) for i in batch]
            causal = self.config.causal
            segments = [Segment(self.model.new_cache(n) if causal else None, 0, n) for n in lengths]
            h, step = self.model.hidden_states(tokens, segments)
            yield batch, h, step
            start = stop

    def embed(self, texts: str | Sequence[str], normalize: bool | None = None, truncate: bool = True) -> np.ndarray:
        """One float32 vector per text, [len(texts), n_embd] (or [n_embd] for one string): hidden
        states pooled as the model's sentence-transformers config says (mean for encoders without
        one, the last token for decoders), scaled to unit length if normalize (default: the
        model's config, which is True unless a sentence-transformers folder says otherwise)."""
        single = isinstance(texts, str)
        encoded = self.encode(_text_list(texts), truncate)
        c = self.config
        out = np.empty((len(encoded), c.n_embd), np.float32)
        with self._lock:
            for batch, h, step in self._hidden_batches(encoded):
                out[batch] = self.model.pool(h, step, c.default_pooling)
        if c.normalize if normalize is None else normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out

    def class_probabilities(self, texts: Sequence[str], truncate: bool = True) -> np.ndarray:
        """Softmax over the sequence classifier's labels, [len(texts), len(labels)]."""
        self._require("classify")
        encoded = self.encode(texts, truncate)
        out = np.empty((len(encoded), len(self.config.labels)), np.float32)
        with self._lock:
            for batch, h, step in self._hidden_batches(encoded):
                out[batch] = _softmax(self.model.classifier_logits(h, step))
        return out

    def classify(self, texts: str | Sequence[str], truncate: bool = True) -> list[tuple[str, float]]:
        """The most probable label of each text and its probability: [(label, score), ...]."""
        probs = self.class_probabilities(_text_list(texts), truncate)
        return [(self.config.labels[int(p.argmax())], float(p.max())) for p in probs]

    @overload
    def tag(self, text: str, truncate: bool = True) -> list[Entity]: ...  # type: ignore[overload-overlap]
    @overload
    def tag(self, text: Sequence[str], truncate: bool = True) -> list[list[Entity]]: ...

    def tag(self, text: str | Sequence[str], truncate: bool = True) -> list[Entity] | list[list[Entity]]:
        """Entities of a text (a list of them for a list of texts), from a token classifier's BIO
        tags, merged as transformers' token-classification pipeline with aggregation "simple"."""
        texts = _text_list(text)
        encoded = self.encode(texts, truncate)
        probs = self._token_probabilities(encoded)
        result = [_entities(t, e, p, self.config.labels) for t, e, p in zip(texts, encoded, probs, strict=True)]
        return result[0] if isinstance(text, str) else result

    def token_probabilities(self, texts: Sequence[str], truncate: bool = True) -> list[np.ndarray]:
        """Softmax over the token classifier's labels for every token of each text, as encode()
        tokenizes it (framing tokens included): one [tokens, labels] array per text."""
        return self._token_probabilities(self.encode(texts, truncate))

    def _token_probabilities(self, encoded: list[Encoded]) -> list[np.ndarray]:
        self._require("tag")
        out: list[np.ndarray] = [np.empty((0, len(self.config.labels)), np.float32)] * len(encoded)
        with self._lock:
            for batch, h, step in self._hidden_batches(encoded):
                probs = _softmax(self.model.classifier_logits(h, step))
                for i, rows in zip(batch, step.rows, strict=True):
                    out[i] = probs[rows]
        return out


def _options(scope: dict[str, Any]) -> dict[str, Any]:
    """A generation method's own parameters (its locals() at entry), less self and the input,
    to pass on to `stream`."""
    return {k: v for k, v in scope.items() if k not in ("self", "prompt", "messages")}


def _grammar(
    json_schema: Mapping[str, Any] | str | None, json_object: bool, grammar: str | Grammar | None
) -> Grammar | None:
    """The one constraint a generation call asked for, or None."""
    chosen = (("json_schema", json_schema is not None), ("json_object", json_object), ("grammar", grammar is not None))
    given = [name for name, on in chosen if on]
    if len(given) > 1:
        raise ValueError(f"give at most one of json_schema, json_object and grammar (got {', '.join(given)})")
    if json_schema is not None:
        return Grammar.json_schema(json_schema if isinstance(json_schema, str) else dict(json_schema))
    if json_object:
        return Grammar.json_object()
    if isinstance(grammar, str):
        return Grammar.lark(grammar)
    return grammar


def _count(n: int) -> str:
    """135M, 4.6M, 2.1B, 512K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _text_list(texts: str | Sequence[str]) -> list[str]:
    """One text as a list of one; a sequence of texts as a list."""
    return [texts] if isinstance(texts, str) else list(texts)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _entities(text: str, encoded: Encoded, probs: np.ndarray, labels: list[str]) -> list[Entity]:
    """Tokens' best tags grouped into entities: a B- tag or a change of type starts a new group;
    tokens the framing added (empty spans) are skipped; groups tagged O are dropped."""
    groups: list[tuple[str, list[int]]] = []  # (type, token rows)
    for row, (start, end) in enumerate(encoded.offsets):
        if start == end:
            continue
        tag = labels[int(probs[row].argmax())]
        bi, kind = (tag[0], tag[2:]) if tag[:2] in ("B-", "I-") else ("I", tag)
        if groups and groups[-1][0] == kind and bi != "B":
            groups[-1][1].append(row)
        else:
            groups.append((kind, [row]))
    entities = []
    for kind, rows in groups:
        if kind == "O":
            continue
        start, end = encoded.offsets[rows[0]][0], encoded.offsets[rows[-1]][1]
        score = float(np.mean([probs[r].max() for r in rows]))
        entities.append(Entity(kind, text[start:end], start, end, score))
    return entities


def load(
    path: str | PathLike[str] | None = None,
    threads: int | None = None,
    ctx: int | None = None,
    quant: str | None = None,
    kv_dtype: str = "float32",
    distributed: bool | None = None,
) -> LLM:
    """Load a GGUF file or a Hugging Face folder; with no path, corelm's own small default model.

    threads: size of corelm's thread pool (default: the physical cores; under mpirun, each rank's
    share of them);
    ctx: KV-cache size in tokens (default: the model's context, at most 4096);
    quant: quantize weights while loading (corelm.models.QUANT_NAMES: "q8_0", "q4_k", "q4_0", "bf16", ...);
    distributed: split the model over the ranks of an MPI job (docs/distributed.md); None (default):
    when mpirun started more than one rank. Then only rank 0 returns from this call: the other
    ranks run its steps until it exits, and end their process there.
    """
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"corelm's default model is missing from this install ({DEFAULT_MODEL})")
        path = DEFAULT_MODEL
    if threads is not None:
        _C.set_num_threads(int(threads))
    model, tokenizer = load_model(path, quant=quant, distributed=distributed)
    return LLM(model, tokenizer, ctx=ctx, kv_dtype=kv_dtype)
