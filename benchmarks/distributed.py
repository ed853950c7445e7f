"""Tensor parallelism over MPI: what crosses the link per token, a throughput model, and the
all-reduce measured on this machine (docs/distributed.md explains the model).

    python -m benchmarks.distributed model                      # the modelled table (no MPI needed)
    mpirun -n 2 python -m benchmarks.distributed allreduce      # latency / bandwidth of one all-reduce

Per decoded token a Llama-shaped model split over N ranks makes 2 all-reduces per layer (after
attn_output and ffn_down) and one after the token embedding, each of n_embd float32 values per
token, and gathers n_vocab / N logits per rank on rank 0. Decode reads every weight once per
token, split N ways; the model takes the ranks' compute and the link's time as additive (corelm
does not overlap them: each all-reduce ends a block).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_params: float  # all weights


SHAPES = {
    "tinyllama": Shape("TinyLlama-1.1B", 22, 2048, 32000, 1.1e9),
    "7b": Shape("Llama-2 7B", 32, 4096, 32000, 6.74e9),
    "70b": Shape("Llama-2 70B", 80, 8192, 32000, 69.0e9),
}
BYTES_PER_WEIGHT = {"q4_0": 4.5 / 8, "q8_0": 8.5 / 8, "f16": 2.0}


@dataclass(frozen=True)
class Link:
    name: str
    gbit_s: float
    latency_s: float  # one small message, one hop


LINKS = {
    "10G": Link("10 Gbit/s Ethernet (TCP)", 10, 25e-6),
    "100G": Link("100 Gbit/s (RDMA: InfiniBand / RoCE)", 100, 3e-6),
}


def allreduce_seconds(n: int, nbytes: float, link: Link) -> float:
    """One all-reduce of `nbytes` over n ranks: latency of recursive doubling (log2 n steps) plus a
    ring's bandwidth term (each rank sends and receives 2 (n-1)/n of the data)."""
    if n == 1:
        return 0.0
    return math.ceil(math.log2(n)) * link.latency_s + 2 * (n - 1) / n * nbytes / (link.gbit_s / 8 * 1e9)


def gather_seconds(n: int, nbytes: float, link: Link) -> float:
    """Rank 0 receives (n-1)/n of `nbytes` (the logits)."""
    if n == 1:
        return 0.0
    return link.latency_s * math.ceil(math.log2(n)) + (n - 1) / n * nbytes / (link.gbit_s / 8 * 1e9)


def decode_model(s: Shape, n: int, link: Link, weight_bytes: float, mem_gb_s: float, rows: int = 1) -> dict:
    """Modelled seconds per decode step of `rows` sequences on n hosts (one rank each)."""
    act = rows * s.n_embd * 4
    reduces = 2 * s.n_layer + 1
    comm = reduces * allreduce_seconds(n, act, link) + gather_seconds(n, rows * s.n_vocab * 4, link)
    compute = s.n_params * weight_bytes / n / (mem_gb_s * 1e9)
    return {
        "allreduces": reduces,
        "bytes_per_allreduce": act,
        "bytes_sent_per_rank": reduces * 2 * (n - 1) / n * act + (rows * s.n_vocab * 4 / n if n > 1 else 0),
        "compute_s": compute,
        "comm_s": comm,
        "tokens_per_s": rows / (compute + comm),
    }


def cmd_model(args: argparse.Namespace) -> None:
    print(f"decode, batch {args.rows}, {args.type} weights, {args.mem:.0f} GB/s memory bandwidth per host, 1 rank/host")
    links = LINKS
    if args.link:  # a link of one's own: latency (us) and bandwidth (GB/s), e.g. measured with `allreduce`
        latency_us, gb_s = args.link
        links = {"own": Link(f"{gb_s} GB/s, {latency_us} us", gb_s * 8, latency_us * 1e-6)}
    for key in args.shapes:
        s = SHAPES[key]
        wb = BYTES_PER_WEIGHT[args.type]
        single = decode_model(s, 1, LINKS["10G"], wb, args.mem, args.rows)
        print(f"\n{s.name}: {s.n_params * wb / 1e9:.1f} GB of weights; 1 host {single['tokens_per_s']:.1f} tok/s")
        print(f"  {'hosts':>5} {'link':>5} {'KB/all-reduce':>13} {'KB sent/tok':>11} {'compute ms':>10} "
              f"{'comm ms':>8} {'tok/s':>7} {'speed-up':>8}")  # fmt: skip
        for n in (2, 4, 8):
            for lk in links:
                m = decode_model(s, n, links[lk], wb, args.mem, args.rows)
                kb, sent = m["bytes_per_allreduce"] / 1024, m["bytes_sent_per_rank"] / 1024
                print(
                    f"  {n:>5} {lk:>5} {kb:>13.1f} {sent:>11.0f} "
                    f"{m['compute_s'] * 1e3:>10.2f} {m['comm_s'] * 1e3:>8.2f} {m['tokens_per_s']:>7.1f} "
                    f"{m['tokens_per_s'] / single['tokens_per_s']:>7.2f}x"
                )


def _native_graph(width: int, ops: int):
    """A graph of one embedding and `ops` all_reduce ops on a [1, width] buffer: corelm's own
    all-reduce, called from C++ inside one step as a model's are."""
    from corelm.kernels import Weight, WeightType
    from corelm.models.graph import GraphBuilder

    g = GraphBuilder({"token_embd.weight": Weight.from_float(np.ones((1, width), np.float32), WeightType.F32)})
    g.embed("token_embd", "x")
    for i in range(ops):
        g._add("all_reduce", f"all_reduce.{i}", "x", width)
    g.select("x", "y")
    return g.build(1)


def cmd_allreduce(args: argparse.Namespace) -> None:
    """MPI_Allreduce of float32 buffers: corelm's all_reduce op (native, inside a graph step) and
    the same call from Python through mpi4py (what a per-layer Python callback would cost)."""
    from corelm import distributed

    group = distributed.Group()
    comm = group.comm
    if comm.rank == 0:
        print(f"{comm.size} ranks; MPI_Allreduce of float32, median of {args.reps} rounds (us per all-reduce)")
        print(f"{'bytes':>9} {'native op':>10} {'mpi4py':>8} {'GB/s (ring bytes, native)':>26}")
    token = np.zeros(1, np.int32)
    for nbytes in (8 << 10, 16 << 10, 32 << 10, 128 << 10, 1 << 20, 4 << 20):
        x = np.ones(nbytes // 4, np.float32)
        y = np.empty_like(x)
        reps = max(10, min(2000, (64 << 20) // nbytes))
        graph = _native_graph(nbytes // 4, reps)
        native, python = [], []
        for _ in range(args.reps):
            comm.Barrier()
            t0 = time.perf_counter()
            graph.native.run(token, [(None, 0, 1)], True, len(graph.ops), None)
            native.append((time.perf_counter() - t0) / reps)
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                comm.Allreduce(x, y)
            python.append((time.perf_counter() - t0) / reps)
        t, tp = float(np.median(native)), float(np.median(python))
        moved = 2 * (comm.size - 1) / comm.size * nbytes
        if comm.rank == 0:
            print(f"{nbytes:>9} {t * 1e6:>10.1f} {tp * 1e6:>8.1f} {moved / t / 1e9:>26.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="modelled decode throughput over hosts and links")
    m.add_argument("--shapes", nargs="*", default=["7b", "70b"], choices=list(SHAPES))
    m.add_argument("--type", default="q4_0", choices=list(BYTES_PER_WEIGHT))
    m.add_argument("--mem", type=float, default=100.0, help="memory bandwidth per host, GB/s (default 100)")
    m.add_argument("--rows", type=int, default=1, help="sequences decoded together (default 1)")
    m.add_argument("--link", type=float, nargs=2, metavar=("LATENCY_US", "GB_S"), help="one link instead of 10G/100G")
    a = sub.add_parser("allreduce", help="time MPI_Allreduce (run under mpirun)")
    a.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    (cmd_model if args.cmd == "model" else cmd_allreduce)(args)


if __name__ == "__main__":
    main()
