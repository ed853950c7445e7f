"""The `corelm` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import corelm


def _threads_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2 - got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be positive, got {text!r}")
    return values


def cmd_info(args: argparse.Namespace) -> int:
    info = corelm.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"corelm {corelm.__version__}")
    print(f"CPU:      {info['cpu'] or 'unknown'}")
    print(f"cores:    {info['physical_cores']} physical, {info['threads']} threads in the pool")
    print("features: " + " ".join(name for name, on in info["features"].items() if on))
    missing = [name for name, on in info["features"].items() if not on]
    if missing:
        print("absent:   " + " ".join(missing))
    print(f"paths:    {', '.join(info['supported_isas'])} (active: {info['isa']}; CORELM_ISA forces one)")
    print("kernels:")
    for kernel, path in info["kernels"].items():
        print(f"  {kernel:14} {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.model != "kernels":
        print("corelm bench: only `corelm bench kernels` exists in this version", file=sys.stderr)
        return 2
    from corelm.analysis.kernel_bench import bench_kernels, format_report

    threads = args.threads or sorted({1, corelm.info()["physical_cores"]})
    report = bench_kernels(threads, reps=args.reps,
                           progress=lambda s: print(f"... {s}", file=sys.stderr, flush=True))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corelm", description="Fast LLM inference on ordinary CPUs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `corelm COMMAND --help` for a command's options.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="CPU features found and the kernel path each op takes",
                       description="Report the CPU model, the instruction-set features found, the "
                                   "thread count and which kernel path (ref, avx2, avx512) each op uses.")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="benchmark kernels (`corelm bench kernels`)",
                       description="`corelm bench kernels`: GEMV GB/s and GEMM GFLOP/s per weight type "
                                   "and thread count, beside this machine's measured read bandwidth and "
                                   "each kernel path's peak multiply-add rate.")
    p.add_argument("model", help="`kernels`")
    p.add_argument("-t", "--threads", type=_threads_list, default=None,
                   help="thread counts to sweep, e.g. 1,2 (default: 1 and the physical cores)")
    p.add_argument("-r", "--reps", type=int, default=5, help="repetitions per measurement (median is shown)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
