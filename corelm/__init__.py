"""corelm: fast LLM inference on ordinary CPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from corelm import _C
except ImportError as e:  # a source checkout that was never built (or whose build is gone)
    if e.name not in ("corelm", "corelm._C"):
        raise
    raise ImportError(
        f"corelm's native module _C is not built in {Path(__file__).resolve().parent}: run `pip install -e .` "
        "in the source checkout (it builds the C++ core), or run from another folder to import an installed corelm"
    ) from e
from corelm import distributed as _distributed
from corelm.formats import ModelFileError
from corelm.llm import LLM, load

if _distributed.launched_ranks() > 1:  # mpirun: by default each rank's pool is its share of this host's cores
    _C.set_num_threads(_distributed.default_threads())

__version__ = "0.1.0"


def info() -> dict[str, Any]:
    """The CPU model, its features, the thread count, the kernel path each op takes, and ``huge_pages``:
    Linux's transparent huge page mode ("always", "madvise", "never"; "unknown" elsewhere). A model's
    weights are streamed from 2 MB pages unless it is "never" (models._into_arenas)."""
    return {**_C.info(), "huge_pages": _huge_pages()}


def _huge_pages() -> str:
    try:
        modes = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split()
    except OSError:
        return "unknown"
    chosen = [m.strip("[]") for m in modes if m.startswith("[")]
    return chosen[0] if chosen else "unknown"


def set_num_threads(n: int) -> None:
    """Size corelm's thread pool (``n < 1``: one thread per physical core)."""
    _C.set_num_threads(n)


__all__ = ["LLM", "ModelFileError", "info", "load", "set_num_threads", "__version__"]
