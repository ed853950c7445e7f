"""`corelm roofline`: where each op of a model stands against this machine's limits.

Two ceilings bound every op: memory bandwidth (bytes it must move / measured read GB/s)
and multiply-add throughput (the kernel path's measured peak on data in cache). An op's
arithmetic intensity (FLOPs per byte) says which one binds: decode's matrix-vector products
sit far left (bandwidth-bound: every weight is read once per token), prefill's
matrix-matrix products far right (compute-bound). For each op kind we report time share,
bytes, FLOPs, achieved GB/s and GFLOP/s, the binding ceiling and the fraction of it reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from corelm import _C
from corelm.analysis.kernel_bench import numbered, using
from corelm.engine.sampling import Sampler, SamplingParams
from corelm.kernels import timed_isas
from corelm.models.base import Hook, Model, Segment
from corelm.models.graph import Op


@dataclass
class OpStats:
    kind: str
    calls: int = 0
    seconds: float = 0.0
    bytes: float = 0.0
    flops: float = 0.0


@dataclass
class Profile:
    ops: dict[str, OpStats] = field(default_factory=dict)
    total_seconds: float = 0.0

    def add(self, kind: str, seconds: float, nbytes: float, flops: float) -> None:
        s = self.ops.setdefault(kind, OpStats(kind))
        s.calls += 1
        s.seconds += seconds
        s.bytes += nbytes
        s.flops += flops


# What each op of a graph costs: its kind in the report, bytes moved, FLOPs per element.
_ROWWISE = {
    "rmsnorm": ("norm", 4),
    "layernorm": ("norm", 7),
    "glu": ("activation", 6),
    "add_vector": ("add/mul", 1),
    "copy": ("copy", 0),
    "select": ("copy", 0),
    "rope": ("rope", 3),
}


def profile_hook(profile: Profile, n_past: int) -> Hook:
    """A graph hook adding each op's time, bytes and FLOPs to `profile`, for a step of one
    sequence whose first row is at position n_past."""

    def hook(op: Op, x: np.ndarray | None, y: np.ndarray, seconds: float) -> None:
        m = y.shape[0]
        if op.kind == "matmul":
            w = op.weight
            assert w is not None
            profile.add(
                f"matmul {w.type.name}",
                seconds,
                w.nbytes + (x.nbytes if x is not None else 0) + y.nbytes,
                2.0 * m * w.n * w.k,
            )
        elif op.kind == "attention":
            hq, hkv, d = op.spec["heads"], op.spec["kv_heads"], op.spec["head_dim"]
            keys = m * n_past + m * (m + 1) / 2  # causal: row i sees n_past + i + 1 keys
            kv_bytes = 2 * hkv * (n_past + m) * d * 4
            profile.add("attention", seconds, kv_bytes + 2 * y.nbytes, 4.0 * hq * d * keys)
        elif op.kind == "embed":
            w = op.weight
            assert w is not None
            profile.add("embedding", seconds, y.nbytes * (w.nbytes / (w.n * w.k * 4)) + y.nbytes, 0.0)
        else:
            kind, flops = _ROWWISE[op.kind]
            profile.add(kind, seconds, (x.nbytes if x is not None else 0) + y.nbytes, flops * y.size)

    return hook


def machine_ceilings(threads: int, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Read bandwidth and each path's in-cache multiply-add peak (int8 and float kernels)."""
    from corelm.analysis.kernel_bench import BENCH_TYPES, PEAK_COLS, PEAK_ROWS, _run, make_weight, read_bandwidth

    rng = np.random.default_rng(0)
    small = rng.standard_normal((PEAK_COLS, 2048)).astype(np.float32)
    peaks = {}
    for isa in timed_isas():
        progress(f"multiply-add peak of the {isa} kernels")
        with using(isa=isa):
            peaks[isa] = {
                t.name: _run("peak", make_weight(small, t), PEAK_ROWS, threads, 3).gflops for t in BENCH_TYPES
            }
    progress(f"read bandwidth, {threads} thread(s)")
    return {"threads": threads, "read_gbs": read_bandwidth(threads), "peak_gflops": peaks, "isa": _C.isa()}


def _peak_for(kind: str, ceilings: dict) -> float:
    peaks = ceilings["peak_gflops"][ceilings["isa"]]
    for t in sorted(peaks, key=len, reverse=True):  # Q4_0_X16 before Q4_0
        if kind.endswith(t):
            return peaks[t]
    return peaks["F32"]  # attention, norms and the rest run float32 arithmetic


def _row(
    op: str,
    calls: int,
    seconds: float,
    profile: Profile,
    tokens: int,
    nbytes: float = 0.0,
    flops: float = 0.0,
    bound: str = "python",
    attainable: float = 0.0,
    fraction: float = 0.0,
) -> dict:
    return dict(
        op=op,
        calls=calls,
        # The ops, timed in other passes, can add up to more than the plain step (tiny ops carry
        # the timer's own cost): then they are the whole, and nothing is outside native code.
        share=seconds / max(profile.total_seconds, _op_seconds(profile)),
        ms_per_token=1e3 * seconds / tokens,
        bytes=nbytes,
        flops=flops,
        gbs=nbytes / seconds / 1e9 if seconds else 0.0,
        gflops=flops / seconds / 1e9 if seconds else 0.0,
        intensity=flops / nbytes if nbytes else 0.0,
        bound=bound,
        attainable_gflops=attainable,
        fraction=fraction,
    )


def analyse(profile: Profile, ceilings: dict, tokens: int) -> list[dict]:
    """One row per op kind (plus the time outside native code), with its ceiling and fraction."""
    rows = []
    bw = ceilings["read_gbs"]
    for s in sorted(profile.ops.values(), key=lambda s: -s.seconds):
        if s.kind == "sampling":  # numpy on the host: no kernel ceiling applies
            rows.append(_row(s.kind, s.calls, s.seconds, profile, tokens, s.bytes))
            continue
        peak = _peak_for(s.kind, ceilings)
        intensity = s.flops / s.bytes if s.bytes else 0.0
        memory_bound = intensity * bw < peak
        achieved = (s.bytes / bw if memory_bound else s.flops / peak) / 1e9  # seconds at the ceiling
        rows.append(
            _row(
                s.kind,
                s.calls,
                s.seconds,
                profile,
                tokens,
                s.bytes,
                s.flops,
                "memory" if memory_bound else "compute",
                intensity * bw if memory_bound else peak,
                achieved / s.seconds if s.seconds else 0.0,
            )
        )
    outside = max(profile.total_seconds - _op_seconds(profile), 0.0)
    rows.append(_row("outside native code", 0, outside, profile, tokens))
    return rows


def _steps(
    model: Model, prompt: np.ndarray, n: int, hook_at: Callable[[int], Hook | None], sampling: Profile | None = None
) -> tuple[float, float]:
    """Prefill `prompt`, then n sampled single-token steps, the step at position p with hook
    hook_at(p); sampling time goes to `sampling` when given. -> wall seconds of prefill, decode."""
    cache = model.new_cache(len(prompt) + n + 1)
    t0 = time.perf_counter()
    logits = model.forward_batch(prompt, [Segment(cache, 0, len(prompt))], hook=hook_at(0))
    prefill_seconds = time.perf_counter() - t0
    sampler = Sampler(SamplingParams(temperature=0.8, seed=0))
    token = np.zeros(1, np.int32)
    t0 = time.perf_counter()
    for pos in range(len(prompt), len(prompt) + n):
        ts = time.perf_counter()
        token[0] = sampler(logits[0])
        if sampling is not None:
            sampling.add("sampling", time.perf_counter() - ts, logits.nbytes, 0.0)
        logits = model.forward_batch(token, [Segment(cache, pos, 1)], hook=hook_at(pos))
    return prefill_seconds, time.perf_counter() - t0


PROFILE_REPS = 3  # plain and hooked passes of profile_model


def profile_model(
    llm,
    prompt_tokens: int = 128,
    decode_tokens: int = 16,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, tuple[Profile, int]]:
    """Profiles of one prefill of prompt_tokens and of decode_tokens single-token steps (+ sampling).

    The totals come from plain steps; the op times from the same steps run again with the
    per-op hook (its Python calls cost time of their own, outside the ops' times). The time
    outside native code is the difference of the two, so each is taken PROFILE_REPS times, plain and
    hooked runs interleaved, and the fastest of each kept: on a shared machine interference only
    ever adds time, and one slow run would otherwise show up as time spent in Python."""
    model, vocab = llm.model, llm.config.vocab_size
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab, prompt_tokens).astype(np.int32)
    progress("warm-up prefill")
    model.forward(prompt, 0, model.new_cache(prompt_tokens))  # warm up: buffers grown, pages touched
    best: dict[str, Profile] = {}
    totals: dict[str, list[float]] = {"prefill": [], "decode": []}
    for rep in range(1, PROFILE_REPS + 1):
        prefill, decode = Profile(), Profile()
        of = f"({rep}/{PROFILE_REPS})"
        progress(f"prefill of {prompt_tokens} tokens and {decode_tokens} decode steps, timed whole {of}")
        seconds = _steps(model, prompt, decode_tokens, lambda pos: None, decode)
        for phase, t in zip(("prefill", "decode"), seconds, strict=True):
            totals[phase].append(t)
        progress(f"the same steps, each op timed {of}")
        _steps(model, prompt, decode_tokens, _hooks(prefill, decode))
        for phase, prof in (("prefill", prefill), ("decode", decode)):
            if phase not in best or _op_seconds(prof) < _op_seconds(best[phase]):
                best[phase] = prof
    for phase, prof in best.items():
        prof.total_seconds = min(totals[phase])
    return {"prefill": (best["prefill"], prompt_tokens), "decode": (best["decode"], decode_tokens)}


def _hooks(prefill: Profile, decode: Profile) -> Callable[[int], Hook | None]:
    """The per-op hook of each step: the prefill's ops to one profile, the decode steps' to the other."""
    return lambda pos: profile_hook(prefill if pos == 0 else decode, pos)


def _op_seconds(profile: Profile) -> float:
    return sum(s.seconds for s in profile.ops.values())


def format_rows(title: str, rows: list[dict]) -> str:
    lines = [
        title,
        f"{'op':22} {'share':>6} {'ms/tok':>8} {'GB/s':>7} {'GFLOP/s':>8} {'FLOP/B':>7} "
        f"{'bound':>8} {'of ceiling':>10}",
    ]
    for r in rows:
        frac = f"{100 * r['fraction']:.0f}%" if r["bound"] in ("memory", "compute") else "-"
        lines.append(
            f"{r['op']:22} {100 * r['share']:>5.1f}% {r['ms_per_token']:>8.3f} {r['gbs']:>7.1f} "
            f"{r['gflops']:>8.1f} {r['intensity']:>7.2f} {r['bound']:>8} {frac:>10}"
        )
    return "\n".join(lines)


def plot(path: str, ceilings: dict, analyses: dict[str, list[dict]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--png needs matplotlib: pip install matplotlib") from e
    fig, ax = plt.subplots(figsize=(9, 6))
    ai = np.logspace(-2, 3, 200)
    bw = ceilings["read_gbs"]
    colors = {
        "Q8_0": "tab:blue",
        "Q4_0": "tab:green",
        "F32": "tab:gray",
        "BF16": "tab:orange",
        "F16": "tab:purple",
        "Q8_0_X16": "navy",
        "Q4_0_X16": "darkgreen",
    }
    for t, peak in ceilings["peak_gflops"][ceilings["isa"]].items():
        ax.plot(
            ai,
            np.minimum(ai * bw, peak),
            color=colors.get(t, "k"),
            lw=1,
            alpha=0.7,
            label=f"{t} kernels: {peak:.0f} GFLOP/s peak",
        )
    markers = {"decode": "o", "prefill": "s"}
    for phase, rows in analyses.items():
        for r in rows:
            if r["gflops"] > 0 and r["intensity"] > 0:
                ax.scatter(r["intensity"], r["gflops"], marker=markers.get(phase, "x"), s=30 + 300 * r["share"])
                ax.annotate(
                    f"{phase}: {r['op']}",
                    (r["intensity"], r["gflops"]),
                    fontsize=7,
                    xytext=(4, 2),
                    textcoords="offset points",
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(
        f"corelm roofline: {ceilings['read_gbs']:.1f} GB/s read, {ceilings['threads']} threads, path {ceilings['isa']}"
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def roofline(
    model_path: str | None,
    threads: int,
    prompt_tokens: int = 128,
    decode_tokens: int = 16,
    png: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """The machine's ceilings and, with a model, its ops against them; `progress` is told each
    step as "[i/n] what" (they take seconds each)."""
    progress = numbered(progress, len(timed_isas()) + 1 + (2 + 2 * PROFILE_REPS if model_path else 0))
    with using(threads=threads):
        ceilings = machine_ceilings(threads, progress)
        report: dict = {"ceilings": ceilings, "phases": {}}
        if model_path:
            from corelm.llm import load

            progress(f"loading {model_path}")
            llm = load(model_path, threads=threads)
            for phase, (prof, tokens) in profile_model(llm, prompt_tokens, decode_tokens, progress).items():
                report["phases"][phase] = analyse(prof, ceilings, tokens)
                report["phases"][phase + "_tokens_per_s"] = tokens / prof.total_seconds
    if png:
        plot(png, ceilings, {k: v for k, v in report["phases"].items() if isinstance(v, list)})
    return report


def format_report(report: dict) -> str:
    c = report["ceilings"]
    lines = [
        f"read bandwidth: {c['read_gbs']:.1f} GB/s at {c['threads']} thread(s)",
        "peak multiply-add rate (in-cache GEMM, GFLOP/s):",
    ]
    for isa, peaks in c["peak_gflops"].items():
        lines.append(f"  {isa:7} " + "  ".join(f"{t} {v:.0f}" for t, v in peaks.items()))
    for phase in ("decode", "prefill"):
        if phase in report["phases"]:
            lines += [
                "",
                format_rows(
                    f"{phase} ({report['phases'][phase + '_tokens_per_s']:.1f} tokens/s)", report["phases"][phase]
                ),
            ]
    return "\n".join(lines)
