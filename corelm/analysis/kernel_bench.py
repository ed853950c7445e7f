"""`corelm bench kernels`: what each kernel path achieves against this machine's limits.

GEMV (decode) streams a weight matrix larger than the caches once per call, so its figure
is GB/s of weights read, set beside the read-bandwidth probe. GEMM (prefill) is bound by
multiply-add throughput: GFLOP/s (2 flops per multiply-add). Each path's "peak" is its
GEMM rate on a problem that stays in cache (see PEAK_ROWS), where memory does not limit it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from corelm import _C
from corelm.kernels import Weight, WeightType, matmul, timed_isas

# The packed (_X16) layouts are what models use where the path has kernels for them (models.pack_for_kernels).
BENCH_TYPES = (
    WeightType.Q4_K_X16,
    WeightType.Q5_K_X16,
    WeightType.Q6_K_X16,
    WeightType.Q5_1_X16,
    WeightType.Q5_0_X16,
    WeightType.Q4_1_X16,
    WeightType.Q4_0_X16,
    WeightType.Q8_0_X16,
    WeightType.BF16_X16,
    WeightType.F16_X16,
    WeightType.Q4_0,
    WeightType.Q8_0,
    WeightType.BF16,
    WeightType.F16,
    WeightType.F32,
)


# The peak measurement: PEAK_ROWS activation rows (enough to amortise each weight load) times a
# PEAK_COLS x 2048 weight, small enough to stay in cache, big enough to keep every thread busy.
PEAK_ROWS, PEAK_COLS = 256, 1024


def make_weight(x: np.ndarray, wtype: WeightType) -> Weight:
    """x as a `wtype` matrix (packed types: quantized to their base type, then interleaved)."""
    if wtype.packed:
        return Weight.from_float(x, wtype.base).packed()
    return Weight.from_float(x, wtype)


@dataclass
class KernelResult:
    kind: str  # "gemv", "gemm" or "peak"
    type: str
    isa: str
    threads: int
    shape: tuple[int, int, int]  # m, n, k
    seconds: float
    gbs: float  # weight bytes streamed per second
    gflops: float


def median_seconds(fn: Callable[[], object], reps: int, min_time: float = 0.2) -> float:
    """Median wall time of fn over at least `reps` runs (more while under min_time)."""
    fn()  # warm: page faults, thread wake-up, scratch buffers
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_time and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextmanager
def using(isa: str | None = None, threads: int | None = None):
    """Temporarily select a kernel path and/or thread count."""
    old_isa, old_threads = _C.isa(), _C.num_threads()
    try:
        if isa is not None:
            _C.set_isa(isa)
        if threads is not None:
            _C.set_num_threads(threads)
        yield
    finally:
        _C.set_isa(old_isa)
        _C.set_num_threads(old_threads)


def read_bandwidth(threads: int, size_mib: int = 1024, reps: int = 5) -> float:
    """This machine's read bandwidth in GB/s at `threads` (best of 1 and 8 streams per thread)."""
    with using(threads=threads):
        return max(_C.read_bandwidth(size_mib << 20, reps, streams) for streams in (1, 8))


def _run(kind: str, w: Weight, m: int, threads: int, reps: int, seed: int = 0) -> KernelResult:
    x = np.random.default_rng(seed).standard_normal((m, w.k)).astype(np.float32)
    out = np.empty((m, w.n), np.float32)
    with using(threads=threads):
        s = median_seconds(lambda: matmul(x, w, out=out), reps)
    return KernelResult(
        kind, w.type.name, _C.isa(), threads, (m, w.n, w.k), s, w.nbytes / s / 1e9, 2.0 * m * w.n * w.k / s / 1e9
    )


def numbered(progress: Callable[[str], None], total: int) -> Callable[[str], None]:
    """`progress` with each message numbered "[i/total]", i counting the calls."""
    count = 0

    def step(what: str) -> None:
        nonlocal count
        count += 1
        progress(f"[{count}/{total}] {what}")

    return step


def bench_kernels(
    threads: Sequence[int],
    types: Sequence[WeightType] = BENCH_TYPES,
    reps: int = 5,
    gemv_shape: tuple[int, int] = (32000, 2048),
    gemm_shape: tuple[int, int, int] = (512, 5632, 2048),
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """Bandwidth probe, per-path peaks, GEMV and GEMM figures; a JSON-ready dict."""
    rng = np.random.default_rng(0)
    results: list[KernelResult] = []
    bandwidth = {}
    isas = timed_isas()
    progress = numbered(progress, len(threads) + len(types) * (1 + len(threads) + len(isas)))
    for t in threads:
        progress(f"read bandwidth, {t} thread(s)")
        bandwidth[t] = read_bandwidth(t)
    for wtype in types:
        progress(f"{wtype.name}: quantizing test matrices")
        n, k = gemv_shape
        big = make_weight(rng.standard_normal((n, k)).astype(np.float32), wtype)
        m, n2, k2 = gemm_shape
        gemm_w = big if (n2, k2) == (n, k) else make_weight(rng.standard_normal((n2, k2)).astype(np.float32), wtype)
        small = make_weight(rng.standard_normal((PEAK_COLS, 2048)).astype(np.float32), wtype)
        for t in threads:
            progress(f"{wtype.name}: GEMV / GEMM, {t} thread(s)")
            results.append(_run("gemv", big, 1, t, reps))
            results.append(_run("gemm", gemm_w, m, t, max(1, reps // 2)))
        for isa in isas:
            with using(isa=isa):
                progress(f"{wtype.name}: in-cache peak on {isa}")
                results.append(_run("peak", small, PEAK_ROWS, max(threads), max(1, reps // 2)))
    return {
        "cpu": _C.info()["cpu"],
        "features": [f for f, on in _C.info()["features"].items() if on],
        "isa": _C.isa(),
        "read_bandwidth_gbs": bandwidth,
        "results": [asdict(r) for r in results],
    }


def format_report(report: dict) -> str:
    """Human-readable tables of a bench_kernels report."""
    lines = [f"CPU: {report['cpu']}   features: {' '.join(report['features'])}   path: {report['isa']}", ""]
    lines.append(
        "read bandwidth: "
        + ", ".join(f"{t} thread(s) {gbs:.1f} GB/s" for t, gbs in report["read_bandwidth_gbs"].items())
    )
    lines.append("")
    rows = [r for r in report["results"] if r["kind"] == "gemv"]
    if rows:
        m, n, k = rows[0]["shape"]
        lines.append(f"GEMV {n}x{k} (decode: weights streamed once per call)")
        lines.append(f"{'type':6} {'threads':>7} {'GB/s':>7} {'% of probe':>10} {'ms':>8}")
        for r in rows:
            frac = 100 * r["gbs"] / report["read_bandwidth_gbs"][r["threads"]]
            lines.append(f"{r['type']:6} {r['threads']:>7} {r['gbs']:>7.1f} {frac:>9.0f}% {r['seconds'] * 1e3:>8.2f}")
        lines.append("")
    rows = [r for r in report["results"] if r["kind"] == "gemm"]
    if rows:
        m, n, k = rows[0]["shape"]
        lines.append(f"GEMM {m}x{k} . {k}x{n} (prefill)")
        lines.append(f"{'type':6} {'threads':>7} {'GFLOP/s':>8} {'ms':>8}")
        for r in rows:
            lines.append(f"{r['type']:6} {r['threads']:>7} {r['gflops']:>8.1f} {r['seconds'] * 1e3:>8.1f}")
        lines.append("")
    rows = [r for r in report["results"] if r["kind"] == "peak"]
    if rows:
        m, n, k = rows[0]["shape"]
        lines.append(
            f"Peak multiply-add rate per path (GEMM {m}x{k} . {k}x{n}, in cache, {rows[0]['threads']} thread(s))"
        )
        isas = list(dict.fromkeys(r["isa"] for r in rows))
        lines.append(f"{'type':6} " + " ".join(f"{isa + ' GFLOP/s':>16}" for isa in isas))
        for wtype in dict.fromkeys(r["type"] for r in rows):
            cells = {r["isa"]: r["gflops"] for r in rows if r["type"] == wtype}
            lines.append(f"{wtype:6} " + " ".join(f"{cells.get(isa, float('nan')):>16.1f}" for isa in isas))
    return "\n".join(lines)
