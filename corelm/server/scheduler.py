"""Continuous batching: one thread owns the model and steps every active sequence together.

    handler threads ──submit(Job)──▶ waiting (bounded) ──admit──▶ active (one KV slot each)
          ▲                                                           │
          └──────── job.events: Delta ... Done / Failed ◀── step ─────┘

A step is ONE Model.forward_batch call. Each active sequence contributes a segment to it:
a decoding sequence its last sampled token (one row), a new sequence a chunk of its prompt
(at most `prefill_chunk` prompt rows per step over all new sequences, so a long prompt is
split over several steps and the running sequences still get a token every step). Requests
that arrive while others generate join at the next step. The KV caches are a pool of
`parallel` KVCache objects of `ctx` tokens, allocated once; a slot is returned to the pool
as soon as its sequence finishes or its client goes away (Job.cancel).

Each sequence has its own Sampler (seeded when the request gives a seed), StreamDecoder and
StopStrings, so text, stop strings and logprobs come out exactly as LLM.stream makes them.

Embeddings, classification and tagging (Task, from submit_task) run on this same thread:
the native kernels share one thread pool, and this thread is the only one that calls the
model, so no lock is needed and the two kinds of work never overlap. A task is cut into
units of consecutive inputs of at most `prefill_chunk` tokens while sequences are
generating (TASK_ROWS_IDLE when none are), and the loop runs one generation step, then one
unit of the task at the head of the queue, which then goes to the back (round robin), then
a step again: a large batch of texts slows generation by about one prefill chunk per token
but never stops it, and generation never starves the batch. A model that cannot generate gets no KV slots at all
(generate=False); its scheduler only ever runs tasks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corelm.engine.sampling import Sampler, SamplingParams
from corelm.engine.stops import StopStrings
from corelm.llm import ROWS_PER_STEP
from corelm.models.base import Model, Segment
from corelm.tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger(__name__)

TASK_ROWS_IDLE = ROWS_PER_STEP  # tokens per task unit while nothing generates (LLM.embed's batch size)
TASK_KINDS = ("embed", "classify", "tag")


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its bound."""


# ---- what a handler thread sends and receives ----


@dataclass
class Job:
    """One generation request, as the scheduler sees it."""

    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    stops: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's logprob and the top k
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False

    def next_event(self, timeout: float) -> Delta | Done | Failed | None:
        try:
            return self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return None


@dataclass
class Task:
    """An embeddings / classify / tag request: run(start, stop) does inputs [start, stop) and
    returns their results; the scheduler calls it over consecutive ranges until all are done."""

    kind: str  # one of TASK_KINDS (for /metrics)
    lengths: list[int]  # tokens of each input, as the model sees them
    run: Callable[[int, int], Any]
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    done: int = 0  # inputs done so far (scheduler thread only)
    results: list[Any] = field(default_factory=list)  # run's return values, in order

    def next_event(self, timeout: float) -> TaskDone | Failed | None:
        try:
            return self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return None


@dataclass
class TaskDone:
    results: list[Any]  # what each Task.run call returned, in input order


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
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str


# ---- the scheduler's side ----


@dataclass
class _Seq:
    job: Job
    slot: int
    sampler: Sampler
    decoder: StreamDecoder
    stops: StopStrings
    history: list[int]  # prompt + generated ids (what the penalties look at)
    cached: int = 0  # tokens of this sequence in its KV cache
    generated: int = 0
    last: int = 0  # the last sampled token, fed in the next step
    decoded: int = 0  # characters of text decoded so far
    emitted: int = 0  # characters of text sent (the rest is held back for stop strings)
    pending_lp: deque = field(default_factory=deque)  # (start, end, TokenLogprob) not yet sent


class SchedulerStats:
    """Counters for /metrics. Written by the scheduler thread only; read by anyone."""

    WINDOW = 10.0  # seconds over which tokens/s is measured

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.forward_calls = 0
        self.batched_steps = 0  # forward_batch calls that carried two or more sequences
        self.max_batch_sequences = 0
        self.max_batch_rows = 0
        self.busy_seconds = 0.0
        self.finished = 0
        self.cancelled = 0
        self.failed = 0
        self.task_requests: Counter[str] = Counter({k: 0 for k in TASK_KINDS})  # finished, by kind
        self.task_tokens: Counter[str] = Counter({k: 0 for k in TASK_KINDS})  # their input tokens
        self.task_units = 0
        self.task_seconds = 0.0
        self.task_failed = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens generated in that step)
        self._lock = threading.Lock()

    def step(self, sequences: int, rows: int, generated: int, seconds: float) -> None:
        now = time.monotonic()
        self.forward_calls += 1
        self.batched_steps += sequences > 1
        self.max_batch_sequences = max(self.max_batch_sequences, sequences)
        self.max_batch_rows = max(self.max_batch_rows, rows)
        self.busy_seconds += seconds
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


class Scheduler:
    def __init__(
        self,
        model: Model,
        tokenizer: Tokenizer,
        parallel: int,
        ctx: int,
        queue_size: int,
        kv_dtype: str = "float32",
        prefill_chunk: int = 512,
        generate: bool = True,
    ) -> None:
        """generate=False (a model without a language-model head): no KV slots, tasks only;
        `parallel` then only bounds the tasks held (see submit_task)."""
        if parallel < 1 or ctx < 2 or queue_size < 0 or prefill_chunk < 1:
            raise ValueError(
                f"need parallel >= 1, ctx >= 2, queue >= 0 and prefill chunk >= 1; got "
                f"{parallel}, {ctx}, {queue_size}, {prefill_chunk}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.ctx = ctx
        self.queue_size = queue_size
        self.prefill_chunk = prefill_chunk
        self.caches = [model.new_cache(ctx, kv_dtype) for _ in range(parallel if generate else 0)]  # the slot pool
        self.free = list(range(len(self.caches)))[::-1]
        self.waiting: deque[Job] = deque()
        self.active: list[_Seq] = []
        self.tasks: deque[Task] = deque()  # the first one runs next
        self.task_capacity = parallel + queue_size  # tasks held (running or waiting); more: QueueFull
        self.stats = SchedulerStats()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="corelm-scheduler", daemon=True)

    @property
    def parallel(self) -> int:
        return len(self.caches)

    @property
    def kv_bytes(self) -> int:
        return sum(c.nbytes for c in self.caches)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ---- called from handler threads ----

    def submit(self, job: Job) -> None:
        """Queue a job; raises QueueFull when the waiting queue is at its bound."""
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if not self.caches:
                raise RuntimeError("this scheduler has no KV slots: the model cannot generate")
            busy = len(self.active) + len(self.waiting) >= self.parallel
            if busy and len(self.waiting) >= self.queue_size:
                raise QueueFull(f"all {self.parallel} slots are busy and {len(self.waiting)} requests are waiting")
            self.waiting.append(job)
            self._cv.notify()

    def submit_task(self, task: Task) -> None:
        """Queue an embeddings / classify / tag task; raises QueueFull past task_capacity."""
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self.tasks) >= self.task_capacity:
                raise QueueFull(f"{len(self.tasks)} embedding, classification or tagging requests are queued")
            self.tasks.append(task)
            self._cv.notify()

    def cancel(self, job: Job | Task) -> None:
        """The client went away (or the request is over): drop the job or task before the next
        step, freeing its slot. A no-op for one that has finished."""
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    def queue_depth(self) -> int:
        return len(self.waiting)

    def tasks_queued(self) -> int:
        return len(self.tasks)

    def running(self) -> int:
        return len(self.active)

    # ---- the scheduler thread ----

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self.active or self.waiting or self.tasks):
                    self._cv.wait()
                if self._stopping:
                    for job in [s.job for s in self.active] + list(self.waiting) + list(self.tasks):
                        job.events.put(Failed("the server is shutting down"))
                    return
                self._reap()
                self._admit()
                task = self.tasks[0] if self.tasks else None
            if self.active:
                self._step()
            if task is not None:
                more = self._work(task, self.prefill_chunk if self.active else TASK_ROWS_IDLE)
                with self._cv:  # only this thread removes tasks: the first is still this one
                    self.tasks.popleft()
                    if more:
                        self.tasks.append(task)  # round robin: the next task's turn

    def _reap(self) -> None:
        for seq in [s for s in self.active if s.job.cancelled]:
            self._release(seq)
            self.stats.cancelled += 1
        gone = sum(j.cancelled for j in self.waiting)
        if gone:
            self.waiting = deque(j for j in self.waiting if not j.cancelled)
            self.stats.cancelled += gone
        if any(t.cancelled for t in self.tasks):
            self.tasks = deque(t for t in self.tasks if not t.cancelled)

    def _work(self, task: Task, budget: int) -> bool:
        """Run the task's next inputs, about `budget` tokens of them (at least one input); False
        when the task is over (done, failed or cancelled)."""
        if task.cancelled:
            return False
        start = stop = task.done
        rows = 0
        while stop < len(task.lengths) and (stop == start or rows + task.lengths[stop] <= budget):
            rows += task.lengths[stop]
            stop += 1
        t0 = time.perf_counter()
        try:
            task.results.append(task.run(start, stop))
        except Exception as e:  # a bug, not bad input (requests are validated): fail this task, keep serving
            log.exception("%s task failed", task.kind)
            task.events.put(Failed(f"internal error: {e}"))
            self.stats.task_failed += 1
            return False
        self.stats.task_units += 1
        self.stats.task_seconds += time.perf_counter() - t0
        task.done = stop
        if stop < len(task.lengths):
            return True
        self.stats.task_requests[task.kind] += 1
        self.stats.task_tokens[task.kind] += sum(task.lengths)
        task.events.put(TaskDone(task.results))
        return False

    def _admit(self) -> None:
        while self.free and self.waiting:
            job = self.waiting.popleft()
            seq = _Seq(
                job=job,
                slot=self.free.pop(),
                sampler=Sampler(job.params),
                decoder=StreamDecoder(self.tokenizer, skip_special=True),
                stops=StopStrings(job.stops),
                history=list(job.prompt),
            )
            self.active.append(seq)

    def _release(self, seq: _Seq) -> None:
        self.active.remove(seq)
        self.free.append(seq.slot)

    def _step(self) -> None:
        tokens: list[int] = []
        segments: list[Segment] = []
        stepped: list[tuple[_Seq, bool]] = []  # (sequence, whether its row's logits are sampled)
        budget = self.prefill_chunk
        for seq in self.active:
            cache = self.caches[seq.slot]
            left = len(seq.job.prompt) - seq.cached
            if left > 0:  # (part of) the prompt
                n = min(left, budget)
                if n == 0:
                    continue  # waits for the next step's prefill budget
                budget -= n
                tokens += seq.job.prompt[seq.cached : seq.cached + n]
                segments.append(Segment(cache, seq.cached, n))
                stepped.append((seq, n == left))
                self.stats.prompt_tokens += n
            else:
                tokens.append(seq.last)
                segments.append(Segment(cache, seq.cached, 1))
                stepped.append((seq, True))
            seq.cached += segments[-1].length
        t0 = time.perf_counter()
        try:
            logits = self.model.forward_batch(np.asarray(tokens, dtype=np.int32), segments)
        except Exception as e:  # a bug, not bad input (requests are validated): fail these, keep serving
            log.exception("forward_batch failed")
            for seq, _ in stepped:
                self._fail(seq, f"internal error: {e}")
            return
        seconds = time.perf_counter() - t0
        generated = 0
        for row, (seq, sample) in zip(logits, stepped, strict=True):
            if sample:
                try:
                    generated += self._advance(seq, row)
                except Exception as e:  # a bug: end this sequence, keep the others going
                    log.exception("sampling or decoding failed")
                    self._fail(seq, f"internal error: {e}")
        self.stats.step(len(segments), len(tokens), generated, seconds)

    def _fail(self, seq: _Seq, message: str) -> None:
        seq.job.events.put(Failed(message))
        if seq in self.active:
            self._release(seq)
        self.stats.failed += 1

    def _advance(self, seq: _Seq, logits: np.ndarray) -> int:
        """Sample a sequence's next token from its logits row and send its text; 1 if a token was made."""
        job = seq.job
        if job.logit_bias:
            biased = logits.copy()
            biased[list(job.logit_bias)] += np.asarray(list(job.logit_bias.values()), dtype=np.float32)
            token = seq.sampler(biased, seq.history)
        else:
            token = seq.sampler(logits, seq.history)
        if token in self.tokenizer.eos_ids and not job.ignore_eos:
            self._finish(seq, "stop")
            return 0
        seq.history.append(token)
        seq.generated += 1
        seq.last = token
        piece = seq.decoder.push(token)
        if job.logprobs is not None:
            lp = _logprob(logits, token, job.logprobs, offset=seq.decoded)
            seq.pending_lp.append((seq.decoded, seq.decoded + len(piece), lp))
        seq.decoded += len(piece)
        text = seq.stops.push(piece)
        if seq.stops.stopped:
            self._send(seq, text, final=True)
            self._finish(seq, "stop")
        elif seq.generated >= job.max_tokens or seq.cached >= self.ctx:
            self._send(seq, text + seq.stops.flush(seq.decoder.flush()), final=True)
            self._finish(seq, "length")
        else:
            self._send(seq, text, final=False)
        return 1

    def _send(self, seq: _Seq, text: str, final: bool) -> None:
        seq.emitted += len(text)
        lps = None
        if seq.job.logprobs is not None:
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
            seq.job.events.put(Delta(text, lps))

    def _finish(self, seq: _Seq, reason: str) -> None:
        if reason == "stop" and not seq.stops.stopped:  # a stop token: send what was held back
            self._send(seq, seq.stops.flush(seq.decoder.flush()), final=True)
        seq.job.events.put(Done(reason, len(seq.job.prompt), seq.generated))
        self._release(seq)
        self.stats.finished += 1


def _logprob(logits: np.ndarray, token: int, k: int, offset: int) -> TokenLogprob:
    """Log-probabilities from the model's own distribution (before penalties and temperature)."""
    z = logits.astype(np.float64)
    z = z - z.max()
    lse = np.log(np.exp(z).sum())
    top: list[tuple[int, float]] = []
    if k > 0:
        ids = np.argpartition(-z, k - 1)[:k] if k < z.size else np.arange(z.size)
        ids = ids[np.argsort(-z[ids], kind="stable")]
        top = [(int(i), float(z[i] - lse)) for i in ids]
    return TokenLogprob(token, float(z[token] - lse), top, offset)
