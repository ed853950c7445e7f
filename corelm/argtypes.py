"""argparse value types shared by the command-line front ends: a bad value is one clear line
naming the option (argparse writes "argument -t/--threads: expected ..."), before any model loads."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)

# More threads than this many per CPU are refused: they only take turns on the cores (999 threads
# ran at 0.2 tok/s). Up to it they are allowed (with a warning past one per CPU, see too_many_threads).
THREADS_PER_CPU = 4


def _number(text: str, kind: type[T], ok: Callable[[T], bool], wanted: str) -> T:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def count(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")


def probability(text: str) -> float:
    """A number in [0, 1] (min-p)."""
    return _number(text, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def top_p(text: str) -> float:
    """A probability mass in (0, 1]: 1 keeps every token."""
    return _number(text, float, lambda v: 0 < v <= 1, "a number above 0 and at most 1")


def cpus() -> int:
    return os.cpu_count() or 1


def threads(text: str) -> int:
    limit = THREADS_PER_CPU * cpus()
    wanted = f"1 to {limit} threads ({THREADS_PER_CPU} x the {cpus()} CPUs)"
    return _number(text, int, lambda v: 1 <= v <= limit, wanted)


def use_threads(n: int | None) -> None:
    """Size the thread pool for a command's -t: n threads, or the default (physical cores) for None."""
    if n is not None:
        from corelm import _C

        _C.set_num_threads(n)


def too_many_threads(n: int | None) -> str | None:
    """A warning when n threads are more than the CPUs (allowed, but slower: they take turns)."""
    if n is not None and n > cpus():
        return f"{n} threads on {cpus()} CPUs: threads take turns on the cores, which is slower than one per CPU"
    return None


def thread_list(text: str) -> list[int]:
    """Thread counts to sweep, e.g. 1,2: each one as `threads` checks it."""
    values = [threads(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2 - got {text!r}")
    return values


def port(text: str) -> int:
    return _number(text, int, lambda v: 0 <= v <= 65535, "a port from 0 to 65535 (0 picks a free one)")


def seed(text: str) -> int | None:
    """A random seed >= 0; -1 means a random one (None), as in llama.cpp."""
    value = _number(text, int, lambda v: v >= -1, "a seed >= 0, or -1 for a random one")
    return None if value == -1 else value


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0", "'": "'", '"': '"', "a": "\a", "b": "\b"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", re.DOTALL)


def escaped(text: str) -> str:
    r"""Text with backslash escapes resolved, as llama.cpp's -e: \n \t \r \\ \" \' \0 \xNN \uNNNN
    (any other backslash stays as typed)."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code[0] in "xu" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, m.group(0))

    return _ESCAPE.sub(one, text)
