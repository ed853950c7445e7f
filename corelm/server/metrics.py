"""/metrics in Prometheus' text format (version 0.0.4)."""

from __future__ import annotations

import threading
from collections import Counter

from corelm.server.scheduler import Scheduler


class HttpStats:
    """Responses by route and status code, counted by the handler threads."""

    def __init__(self) -> None:
        self.responses: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def count(self, route: str, status: int) -> None:
        with self._lock:
            self.responses[route, status] += 1

    def snapshot(self) -> list[tuple[tuple[str, int], int]]:
        with self._lock:
            return sorted(self.responses.items())


def render(scheduler: Scheduler, http: HttpStats) -> str:
    s, t = scheduler.stats, scheduler.task_stats
    out: list[str] = []

    def metric(name: str, kind: str, help: str, value: float | None = None, samples=()) -> None:
        out.append(f"# HELP {name} {help}")
        out.append(f"# TYPE {name} {kind}")
        if value is not None:
            out.append(f"{name} {_num(value)}")
        for labels, v in samples:
            out.append(f"{name}{{{labels}}} {_num(v)}")

    metric(
        "corelm_http_requests_total",
        "counter",
        "HTTP responses by route and status code.",
        samples=[(f'route="{route}",code="{code}"', n) for (route, code), n in http.snapshot()],
    )
    metric("corelm_prompt_tokens_total", "counter", "Prompt tokens prefilled.", s.prompt_tokens)
    metric(
        "corelm_prompt_tokens_cached_total",
        "counter",
        "Prompt tokens not prefilled: their keys and values came from the prefix cache.",
        s.cached_prompt_tokens,
    )
    metric("corelm_generation_tokens_total", "counter", "Tokens generated.", s.generated_tokens)
    metric(
        "corelm_generation_tokens_per_second",
        "gauge",
        f"Tokens generated per second over the last {s.WINDOW:g} seconds, all sequences together.",
        s.tokens_per_second(),
    )
    metric("corelm_requests_running", "gauge", "Sequences holding a KV-cache slot.", scheduler.running())
    metric("corelm_queue_depth", "gauge", "Requests waiting for a slot.", scheduler.queue_depth())
    metric("corelm_queue_capacity", "gauge", "Requests that may wait before new ones get 503.", scheduler.queue_size)
    metric("corelm_slots", "gauge", "KV-cache slots (--parallel).", scheduler.parallel)
    metric("corelm_requests_finished_total", "counter", "Generations that ran to a stop or length.", s.finished)
    metric("corelm_requests_cancelled_total", "counter", "Generations ended because the client went away.", s.cancelled)
    metric("corelm_requests_failed_total", "counter", "Generations ended by an internal error.", s.failed)
    metric("corelm_forward_batch_calls_total", "counter", "Model.forward_batch calls (one per step).", s.forward_calls)
    metric(
        "corelm_batched_steps_total",
        "counter",
        "forward_batch calls that carried two or more sequences.",
        s.batched_steps,
    )
    metric(
        "corelm_batch_sequences_max", "gauge", "Most sequences seen in one forward_batch call.", s.max_batch_sequences
    )
    metric("corelm_batch_rows_max", "gauge", "Most token rows seen in one forward_batch call.", s.max_batch_rows)
    metric("corelm_busy_seconds_total", "counter", "Seconds spent inside forward_batch.", s.busy_seconds)
    metric(
        "corelm_sampling_seconds_total",
        "counter",
        "Seconds spent sampling (one native call per step).",
        s.sample_seconds,
    )
    metric(
        "corelm_task_requests_total",
        "counter",
        "Embedding (/v1/embeddings), classify and tag requests answered, by task.",
        samples=[(f'task="{k}"', n) for k, n in sorted(t.requests.items())],
    )
    metric(
        "corelm_task_input_tokens_total",
        "counter",
        "Input tokens of the answered embedding, classify and tag requests, by task.",
        samples=[(f'task="{k}"', n) for k, n in sorted(t.tokens.items())],
    )
    metric("corelm_task_queue_depth", "gauge", "Embedding, classify and tag requests held.", scheduler.tasks_queued())
    metric("corelm_task_units_total", "counter", "Forward passes run for those requests.", t.units)
    metric("corelm_task_seconds_total", "counter", "Seconds spent on those requests' forward passes.", t.seconds)
    metric("corelm_task_failed_total", "counter", "Those requests ended by an error.", t.failed)
    return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if isinstance(v, int | bool) or float(v).is_integer() else f"{v:.6g}"
