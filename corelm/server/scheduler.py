"""The server's model thread: it owns an Engine (corelm/engine/scheduler.py: continuous batching,
sampling, stops, the prefix cache) and runs embedding, classification and tagging tasks between
its steps.

    handler threads ──submit(Job)──▶ inbox ──▶ Engine (waiting ─▶ active, one KV slot each)
          ▲                                                           │
          └──────── job.events: Delta ... Done / Failed ◀── step ─────┘

Requests that arrive while others generate join the batch at the next step. A slot is free
again as soon as its sequence finishes or its client goes away (Job.cancel).

Embeddings, classification and tagging (Task, from submit_task) run on this same thread:
the native kernels share one thread pool, and this thread is the only one that calls the
model, so no lock is needed and the two kinds of work never overlap. A task is cut into
units of consecutive inputs of at most `prefill_chunk` tokens while sequences are
generating (TASK_ROWS_IDLE when none are), and the loop runs one generation step, then one
unit of the task at the head of the queue, which then goes to the back (round robin), then
a step again: a large batch of texts slows generation by about one prefill chunk per token
but never stops it, and generation never starves the batch. A model that cannot generate gets
no KV slots at all (generate=False); its scheduler only ever runs tasks.
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

from corelm.engine.scheduler import Delta, Done, Engine, EngineStats, Generation, Request, StepError
from corelm.llm import ROWS_PER_STEP
from corelm.models.base import Model
from corelm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TASK_ROWS_IDLE = ROWS_PER_STEP  # tokens per task unit while nothing generates (LLM.embed's batch size)
TASK_KINDS = ("embed", "classify", "tag")


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its bound."""


# ---- what a handler thread sends and receives ----


@dataclass
class Job:
    """One generation request and the queue its events go to."""

    request: Request
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
class Failed:
    message: str


# ---- the scheduler's side ----


class TaskStats:
    """Counters of tasks for /metrics. Written by the scheduler thread only; read by anyone."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter({k: 0 for k in TASK_KINDS})  # finished, by kind
        self.tokens: Counter[str] = Counter({k: 0 for k in TASK_KINDS})  # their input tokens
        self.units = 0
        self.seconds = 0.0
        self.failed = 0


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
        if parallel < 1 or queue_size < 0:
            raise ValueError(f"need parallel >= 1 and queue >= 0; got {parallel}, {queue_size}")
        self.engine = Engine(model, tokenizer, parallel if generate else 0, ctx, kv_dtype, prefill_chunk)
        self.queue_size = queue_size
        self.inbox: deque[Job] = deque()  # submitted, not yet handed to the engine
        self.jobs: dict[Generation, Job] = {}  # the engine's sequences (waiting or running) and their jobs
        self.tasks: deque[Task] = deque()  # the first one runs next
        self.task_capacity = parallel + queue_size  # tasks held (running or waiting); more: QueueFull
        self.task_stats = TaskStats()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="corelm-scheduler", daemon=True)

    @property
    def stats(self) -> EngineStats:
        """The engine's generation counters."""
        return self.engine.stats

    @property
    def parallel(self) -> int:
        return len(self.engine.slots)

    @property
    def kv_bytes(self) -> int:
        return self.engine.kv_bytes

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
            if not self.parallel:
                raise RuntimeError("this scheduler has no KV slots: the model cannot generate")
            waiting = self.queue_depth()
            if self.running() + waiting >= self.parallel and waiting >= self.queue_size:
                raise QueueFull(f"all {self.parallel} slots are busy and {waiting} requests are waiting")
            self.inbox.append(job)
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
        return len(self.inbox) + len(self.engine.waiting)

    def tasks_queued(self) -> int:
        return len(self.tasks)

    def running(self) -> int:
        return len(self.engine.active)

    # ---- the scheduler thread ----

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self.inbox or self.engine.busy or self.tasks):
                    self._cv.wait()
                if self._stopping:
                    held: list[Job | Task] = [*self.jobs.values(), *self.inbox, *self.tasks]
                    for job in held:
                        job.events.put(Failed("the server is shutting down"))
                    return
                while self.inbox:
                    job = self.inbox.popleft()
                    try:
                        self.jobs[self.engine.add(job.request)] = job
                    except ValueError as e:  # openai_api checks prompts against the context first
                        job.events.put(Failed(str(e)))
                for seq in [s for s, j in self.jobs.items() if j.cancelled]:
                    self.engine.cancel(seq)
                    del self.jobs[seq]
                if any(t.cancelled for t in self.tasks):
                    self.tasks = deque(t for t in self.tasks if not t.cancelled)
                task = self.tasks[0] if self.tasks else None
            if self.engine.busy:
                self._step()
            if task is not None:
                more = self._work(task, self.engine.prefill_chunk if self.engine.active else TASK_ROWS_IDLE)
                with self._cv:  # only this thread removes tasks: the first is still this one
                    self.tasks.popleft()
                    if more:
                        self.tasks.append(task)  # round robin: the next task's turn

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except StepError as e:  # a bug, not bad input (requests are validated): fail these, keep serving
            log.exception("a generation step failed")
            for seq in e.sequences:
                self.jobs.pop(seq).events.put(Failed(str(e)))
            return
        for seq, event in events:
            job = self.jobs[seq]
            job.events.put(event)
            if isinstance(event, Done):
                del self.jobs[seq]

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
        stats = self.task_stats
        try:
            task.results.append(task.run(start, stop))
        except Exception as e:  # a bug, not bad input (requests are validated): fail this task, keep serving
            log.exception("%s task failed", task.kind)
            task.events.put(Failed(f"internal error: {e}"))
            stats.failed += 1
            return False
        stats.units += 1
        stats.seconds += time.perf_counter() - t0
        task.done = stop
        if stop < len(task.lengths):
            return True
        stats.requests[task.kind] += 1
        stats.tokens[task.kind] += sum(task.lengths)
        task.events.put(TaskDone(task.results))
        return False
