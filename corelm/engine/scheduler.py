"""Continuous batching: an Engine steps every active sequence of a pool of KV slots together.

    engine = Engine(model, tokenizer, slots=4, ctx=2048)
    seq = engine.add(Request(prompt_ids, max_tokens=64, params=SamplingParams(seed=1)))
    while engine.busy:
        for seq, event in engine.step():   # Delta(text, logprobs) ... then Done(finish_reason, stats)
            ...

The Engine has no thread of its own: LLM.stream drives one with a single slot (Engine.run, a
batch of one), the server's scheduler thread drives one with --parallel slots. Either way,
sampling, stop tokens and strings, logprobs and finish reasons are this file's.

A step is ONE Model.forward_batch call and ONE native sampling call. Each active sequence
contributes a segment to the forward pass: a decoding sequence its last sampled token (one
row), a new sequence a chunk of its prompt (at most `prefill_chunk` prompt rows per step over
all new sequences, so a long prompt is split over several steps and the running sequences
still get a token every step). Every sequence that needs a token gets a row of the batch's
logits, and corelm._C.sample draws all of them at once, each row with its own parameters,
penalty window, logit bias and random state (seeded per request: a seed reproduces).

KV slots are allocated once (`slots` caches of `ctx` tokens). Requests beyond the free slots
wait in order. A slot remembers which token ids its cache holds, also after its sequence ends:
that is the prefix cache. A new prompt takes the free slot sharing its longest prefix and skips
those tokens' prefill (a free slot's KV is reused in place); if an active slot shares a longer
prefix, its rows are copied instead of recomputed. The last prompt token is always computed,
as its logits give the first token. Keys and values at a position depend only on the tokens up
to it, so a reused prefix gives the same logits as a recomputed one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from corelm.engine.constrain import Constraint, Grammar, apply_masks
from corelm.engine.kv_cache import KVCache
from corelm.engine.sampling import SamplingParams, sample
from corelm.engine.stops import StopStrings
from corelm.models.base import Model, Segment
from corelm.tokenizer import StreamDecoder, Tokenizer

# ---- what a caller sends and receives ----


@dataclass
class Request:
    """One generation: the prompt's token ids and how to continue it."""

    prompt: list[int]
    max_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    stops: list[str] = field(default_factory=list)  # generation ends before the first of these strings
    stop_ids: frozenset[int] = frozenset()  # stop tokens besides the tokenizer's EOS / EOT ids
    ignore_eos: bool = False  # no token stops generation (only max_tokens, a stop string or the context)
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's logprob and the top k
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    grammar: Grammar | None = None  # constrained decoding: only tokens the grammar allows (engine/constrain.py)


@dataclass
class GenerationStats:
    """One sequence's counts and timings (LLM.last_stats, `corelm run --verbose`)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    generated_tokens: int = 0
    prefill_seconds: float = 0.0  # from its first step to the logits of its last prompt token
    decode_seconds: float = 0.0  # from then to its last token
    finish_reason: str = ""  # "stop", "length"

    @property
    def prefill_tps(self) -> float:
        computed = self.prompt_tokens - self.cached_tokens
        return computed / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        # The first token comes from the prefill's logits; later ones each cost a decode step.
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds and steps else 0.0


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely tokens, best first
    offset: int = 0  # where the token's text starts in the generated text


@dataclass
class Delta:
    text: str
    logprobs: list[TokenLogprob] | None  # the tokens whose text this delta completes


@dataclass
class Done:
    finish_reason: str  # "stop" or "length"
    stats: GenerationStats


Event = Delta | Done


class StepError(RuntimeError):
    """A step failed (a bug, not bad input): the sequences it carried are ended, their slots free."""

    def __init__(self, sequences: list[Generation], message: str) -> None:
        super().__init__(message)
        self.sequences = sequences


# ---- the engine's side ----


@dataclass(eq=False)
class _Slot:
    cache: KVCache
    tokens: list[int] = field(default_factory=list)  # the ids whose keys/values the cache holds, in order
    last_used: int = 0  # when it was last given out (Engine._admitted): the least recently used goes first


@dataclass(eq=False)
class Generation:
    """A request inside the Engine: the handle add() returns."""

    request: Request
    stats: GenerationStats
    decoder: StreamDecoder | None  # None: a model without a tokenizer, whose text is "<id>" per token
    stops: StopStrings
    history: list[int]  # prompt + generated ids (what the penalties look at)
    slot: _Slot | None = None
    rng: int = 0  # the sampler's random state (splitmix64), set from the seed when it starts
    done: bool = False
    last: int = 0  # the last sampled token, fed in the next step
    started: float = 0.0  # perf_counter of its first step
    prefilled: float = 0.0  # perf_counter when its prompt's logits came
    decoded: int = 0  # characters of text decoded so far
    emitted: int = 0  # characters of text sent (the rest is held back for stop strings)
    pending_lp: deque[tuple[int, int, TokenLogprob]] = field(default_factory=deque)  # (start, end, lp) not yet sent
    constraint: Constraint | None = None  # the request's grammar, at this sequence's position

    @property
    def tokens(self) -> list[int]:
        """The generated token ids so far."""
        return self.history[len(self.request.prompt) :]

    @property
    def cached(self) -> int:
        """Tokens of this sequence in its slot's KV cache."""
        return len(self.slot.tokens) if self.slot else 0

    def piece(self, token: int) -> str:
        return self.decoder.push(token) if self.decoder else f"<{token}>"

    def tail(self) -> str:
        return self.decoder.flush() if self.decoder else ""


class EngineStats:
    """Counters for /metrics. Written by the thread that steps the engine; read by anyone."""

    WINDOW = 10.0  # seconds over which tokens/s is measured

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.prompt_tokens = 0  # prompt tokens prefilled (computed)
        self.cached_prompt_tokens = 0  # prompt tokens taken from the prefix cache instead
        self.generated_tokens = 0
        self.forward_calls = 0
        self.batched_steps = 0  # forward_batch calls that carried two or more sequences
        self.max_batch_sequences = 0
        self.max_batch_rows = 0
        self.busy_seconds = 0.0  # inside forward_batch
        self.sample_seconds = 0.0  # inside the native sampler
        self.finished = 0
        self.cancelled = 0
        self.failed = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens generated in that step)
        self._lock = threading.Lock()

    def step(self, sequences: int, rows: int, generated: int, forward: float, sampling: float) -> None:
        now = time.monotonic()
        self.forward_calls += 1
        self.batched_steps += sequences > 1
        self.max_batch_sequences = max(self.max_batch_sequences, sequences)
        self.max_batch_rows = max(self.max_batch_rows, rows)
        self.busy_seconds += forward
        self.sample_seconds += sampling
        self.generated_tokens += generated
        with self._lock:
            self._recent.append((now, generated))
            while self._recent and self._recent[0][0] < now - self.WINDOW:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        """Tokens generated per second over the last WINDOW seconds."""
        now = time.monotonic()
        with self._lock:
            total = sum(n for t, n in self._recent if t >= now - self.WINDOW)
        span = min(self.WINDOW, now - self.started)
        return total / span if span > 0 else 0.0


class Engine:
    """Continuous batching over a pool of KV slots (see the module docstring). Not thread-safe:
    one thread adds, steps and cancels."""

    def __init__(
        self,
        model: Model,
        tokenizer: Tokenizer | None,
        slots: int,
        ctx: int,
        kv_dtype: str = "float32",
        prefill_chunk: int = 512,
    ) -> None:
        """`slots` KV caches of `ctx` tokens each; at most `prefill_chunk` prompt tokens per step.
        slots=0 makes an engine that cannot take requests (the server of a model that only embeds)."""
        if slots < 0 or ctx < 2 or prefill_chunk < 1:
            raise ValueError(f"need slots >= 0, ctx >= 2 and prefill chunk >= 1; got {slots}, {ctx}, {prefill_chunk}")
        self.model = model
        self.tokenizer = tokenizer
        self.ctx = ctx
        self.prefill_chunk = prefill_chunk
        self.slots = [_Slot(model.new_cache(ctx, kv_dtype)) for _ in range(slots)]
        self.waiting: deque[Generation] = deque()
        self.active: list[Generation] = []
        self.stats = EngineStats()
        self._admitted = 0  # requests given a slot so far (the clock of _Slot.last_used)
        self._stop_ids = tokenizer.eos_ids if tokenizer else frozenset()

    @property
    def kv_bytes(self) -> int:
        return sum(s.cache.nbytes for s in self.slots)

    @property
    def busy(self) -> bool:
        """Whether a step has work: sequences running or waiting for a slot."""
        return bool(self.active or self.waiting)

    def add(self, request: Request) -> Generation:
        """Queue a request; it starts at the next step that has a free slot for it."""
        if not self.slots:
            raise RuntimeError("this engine has no KV slots: the model cannot generate")
        if not 0 < len(request.prompt) < self.ctx:
            raise ValueError(f"the prompt has {len(request.prompt)} tokens; it needs 1 to {self.ctx - 1}")
        seq = Generation(
            request=request,
            stats=GenerationStats(prompt_tokens=len(request.prompt)),
            decoder=StreamDecoder(self.tokenizer, skip_special=True) if self.tokenizer else None,
            stops=StopStrings(request.stops),
            history=list(request.prompt),
        )
        if request.grammar is not None:
            if self.tokenizer is None:
                raise ValueError("constrained decoding needs the model's tokenizer")
            seq.constraint = request.grammar.matcher(self.tokenizer)
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Generation) -> None:
        """End a sequence now (its client went away), freeing its slot; no event follows. The
        keys and values it computed stay in the slot for a later prompt. A no-op once done."""
        if seq.done:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        else:
            self._release(seq)
        seq.done = True
        self.stats.cancelled += 1

    def run(self, seq: Generation) -> Iterator[Event]:
        """Step until `seq` is done, yielding its events: a batch of one for a caller that owns
        the engine (events of other sequences would be lost, so there must be none). Closing
        the iterator early cancels the sequence."""
        if any(s is not seq for s in [*self.active, *self.waiting]):
            raise RuntimeError("Engine.run needs an engine with no other sequences")
        try:
            while not seq.done:
                for _, event in self.step():
                    yield event
        finally:
            self.cancel(seq)

    # ---- a step ----

    def step(self) -> list[tuple[Generation, Event]]:
        """Admit waiting requests to free slots, run one forward pass over every active sequence
        and sample the next token of each that has its logits. Returns the events, in order."""
        events: list[tuple[Generation, Event]] = []
        self._admit(events)
        if not self.active:
            return events
        tokens: list[int] = []
        segments: list[Segment] = []
        fed: list[tuple[Generation, list[int]]] = []  # (sequence, the tokens it feeds this step)
        budget = self.prefill_chunk
        now = time.perf_counter()
        for seq in self.active:
            assert seq.slot is not None
            prompt, cached = seq.request.prompt, seq.cached
            if cached < len(prompt):  # (the rest of) the prompt
                n = min(len(prompt) - cached, budget)
                if n == 0:
                    continue  # waits for the next step's prefill budget
                budget -= n
                new = prompt[cached : cached + n]
                seq.started = seq.started or now
            else:
                new = [seq.last]
            tokens += new
            segments.append(Segment(seq.slot.cache, cached, len(new)))
            fed.append((seq, new))
        stepped = [seq for seq, _ in fed]
        try:
            t0 = time.perf_counter()
            logits = self.model.forward_batch(np.asarray(tokens, dtype=np.int32), segments)
            t1 = time.perf_counter()
            rows: list[int] = []  # the rows whose logits give a sequence its next token
            for i, (seq, new) in enumerate(fed):
                assert seq.slot is not None
                prefilling = seq.cached < len(seq.request.prompt)
                seq.slot.tokens += new
                if prefilling:
                    self.stats.prompt_tokens += len(new)
                    if seq.cached == len(seq.request.prompt):
                        seq.prefilled = t1
                        seq.stats.prefill_seconds = t1 - seq.started
                if seq.cached >= len(seq.request.prompt):
                    rows.append(i)
            sampled = self._sample(logits, rows, [fed[i][0] for i in rows])
            t2 = time.perf_counter()
            generated = 0
            for i, token in zip(rows, sampled.tolist(), strict=True):
                generated += self._advance(fed[i][0], token, logits[i], t1, events)
        except Exception as e:
            for seq in stepped:
                if not seq.done:
                    self._release(seq)
                    seq.done = True
                    self.stats.failed += 1
            raise StepError(stepped, f"internal error: {e}") from e
        self.stats.step(len(segments), len(tokens), generated, t1 - t0, t2 - t1)
        return events

    def _sample(self, logits: np.ndarray, rows: list[int], seqs: list[Generation]) -> np.ndarray:
        """One native call: the next token of each sequence from its row of logits."""
        constrained = [i for i, s in enumerate(seqs) if s.constraint is not None]
        if constrained or len(rows) < logits.shape[0]:
            logits = logits[rows]  # a copy: the model's own logits stay for the logprobs
        if constrained:
            masks = np.empty((len(constrained), (logits.shape[1] + 31) // 32), np.int32)
            for j, i in enumerate(constrained):
                seqs[i].constraint.fill(masks[j])  # type: ignore[union-attr]
            apply_masks(logits, constrained, masks)
        rng = np.array([s.rng for s in seqs], np.uint64)
        reqs = [s.request for s in seqs]
        tokens = sample(logits, [r.params for r in reqs], [s.history for s in seqs], [r.logit_bias for r in reqs], rng)
        for s, state in zip(seqs, rng.tolist(), strict=True):
            s.rng = state
        return tokens

    def _admit(self, events: list[tuple[Generation, Event]]) -> None:
        """Give free slots to waiting requests, in order, each the slot that saves it the most prefill."""
        while self.waiting:
            seq = self.waiting[0]
            if seq.request.max_tokens <= 0:  # nothing to generate: done without a slot
                self.waiting.popleft()
                self._finish(seq, "length", events)
                continue
            free = [s for s in self.slots if not any(a.slot is s for a in self.active)]
            if not free:
                return
            self.waiting.popleft()
            prompt = seq.request.prompt
            limit = len(prompt) - 1  # the last prompt token is always computed: its logits give the first token
            # The free slot with the longest shared prefix; among equals the least recently used,
            # so the prefixes used most recently stay longest.
            slot = max(free, key=lambda s: (_shared(s.tokens, prompt, limit), -s.last_used))
            reuse = _shared(slot.tokens, prompt, limit)
            donor = max(self.slots, key=lambda s: _shared(s.tokens, prompt, limit))
            copy = _shared(donor.tokens, prompt, limit)
            if copy > reuse:  # another slot (a running sequence's) holds more of it: copy its rows
                slot.cache.copy_prefix(donor.cache, copy)
                slot.tokens = prompt[:copy]
                reuse = copy
            else:
                del slot.tokens[reuse:]
            self._admitted += 1
            slot.last_used = self._admitted
            seq.slot = slot
            seq.rng = seq.request.params.rng_state()
            seq.stats.cached_tokens = reuse
            self.stats.cached_prompt_tokens += reuse
            self.active.append(seq)

    def _release(self, seq: Generation) -> None:
        """Free the sequence's slot; the slot keeps the ids of the keys/values it holds."""
        if seq in self.active:
            self.active.remove(seq)

    def _advance(self, seq: Generation, token: int, logits: np.ndarray, now: float, events: list) -> int:
        """Take a sequence's sampled token and send its text; 1 if the token counts as generated."""
        req = seq.request
        if seq.constraint is not None:
            seq.constraint.advance(token)
        if (token in self._stop_ids or token in req.stop_ids) and not req.ignore_eos:
            self._finish(seq, "stop", events)
            return 0
        seq.history.append(token)
        seq.stats.generated_tokens += 1
        seq.stats.decode_seconds = now - seq.prefilled
        seq.last = token
        piece = seq.piece(token)
        if req.logprobs is not None:
            lp = _logprob(logits, token, req.logprobs, offset=seq.decoded)
            seq.pending_lp.append((seq.decoded, seq.decoded + len(piece), lp))
        seq.decoded += len(piece)
        text = seq.stops.push(piece)
        if seq.stops.stopped:
            self._send(seq, text, True, events)
            self._finish(seq, "stop", events)
        elif seq.constraint is not None and seq.constraint.finished:  # the grammar allows nothing more
            self._send(seq, text, False, events)
            self._finish(seq, "stop", events)
        elif seq.stats.generated_tokens >= req.max_tokens or seq.cached >= self.ctx:
            self._send(seq, text + seq.stops.flush(seq.tail()), True, events)
            self._finish(seq, "length", events)
        else:
            self._send(seq, text, False, events)
        return 1

    def _send(self, seq: Generation, text: str, final: bool, events: list) -> None:
        seq.emitted += len(text)
        lps = None
        if seq.request.logprobs is not None:
            # A token goes out with the delta that completes its text; at the end, every token
            # whose text was (partly) sent, but none of those cut off by a stop string.
            lps = []
            while seq.pending_lp and (
                seq.pending_lp[0][1] <= seq.emitted or (final and seq.pending_lp[0][0] < seq.emitted)
            ):
                lps.append(seq.pending_lp.popleft()[2])
            if final and not seq.stops.stopped:
                lps += [lp for _, _, lp in seq.pending_lp]
        if text or lps:
            events.append((seq, Delta(text, lps)))

    def _finish(self, seq: Generation, reason: str, events: list) -> None:
        if reason == "stop" and not seq.stops.stopped:  # a stop token: send what was held back
            self._send(seq, seq.stops.flush(seq.tail()), True, events)
        seq.stats.finish_reason = reason
        seq.done = True
        events.append((seq, Done(reason, seq.stats)))
        self._release(seq)
        self.stats.finished += 1


def _shared(held: list[int], prompt: list[int], limit: int) -> int:
    """How many leading ids of `prompt` (at most `limit`) `held` starts with."""
    n = 0
    for a, b in zip(held, prompt[:limit], strict=False):
        if a != b:
            break
        n += 1
    return n


def _logprob(logits: np.ndarray, token: int, k: int, offset: int) -> TokenLogprob:
    """Log-probabilities from the model's own distribution (before bias, penalties and temperature)."""
    z = logits.astype(np.float64)
    z = z - z.max()
    lse = np.log(np.exp(z).sum())
    top: list[tuple[int, float]] = []
    if k > 0:
        ids = np.argpartition(-z, k - 1)[:k] if k < z.size else np.arange(z.size)
        ids = ids[np.argsort(-z[ids], kind="stable")]
        top = [(int(i), float(z[i] - lse)) for i in ids]
    return TokenLogprob(token, float(z[token] - lse), top, offset)
