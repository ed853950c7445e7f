"""The `corelm` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import corelm
from corelm import argtypes, chat_cli
from corelm.argtypes import count, positive_int
from corelm.models import QUANT_NAMES


def _model_info(path: str) -> dict:
    """A model file's matrices: type, shape, bytes, and for the sparse ones the fraction of zeros."""
    from corelm import hub
    from corelm.formats.gguf import load_gguf
    from corelm.kernels import Weight, WeightType
    from corelm.models import KERNEL_TYPES, load_model

    resolved = hub.resolve(path)
    if resolved.is_file():
        f = load_gguf(resolved)
        arch = f.architecture
        weights = {
            name: Weight(t.data, WeightType(t.type), *t.shape)
            for name, t in f.tensors.items()
            if len(t.shape) == 2 and t.type in KERNEL_TYPES
        }
    else:
        model, _ = load_model(resolved, distributed=False)
        arch = type(model).__name__
        weights = {name: w.unpacked() for name, w in model.w.items() if isinstance(w, Weight)}
    tensors = {}
    for name, w in weights.items():
        entry: dict = {"type": w.type.name, "shape": [w.n, w.k], "bytes": w.nbytes}
        if w.type.sparse:
            entry["zeros"] = 1 - w.stored / (w.n * w.k)
        tensors[name] = entry
    return {"path": str(path), "architecture": arch, "tensors": tensors}


def _print_model_info(m: dict) -> None:
    tensors = m["tensors"]
    kinds: dict[str, int] = {}
    for t in tensors.values():
        kinds[t["type"]] = kinds.get(t["type"], 0) + 1
    total = sum(t["bytes"] for t in tensors.values())
    print(f"model:    {m['path']}: {m['architecture']}, {len(tensors)} matrices, {total / 2**20:.2f} MiB")
    print("types:    " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])))
    sparse = {name: t for name, t in tensors.items() if "zeros" in t}
    if not sparse:
        print("sparse:   none (every matrix stores its zeros)")
        return
    values = sum(t["shape"][0] * t["shape"][1] for t in sparse.values())
    zeros = sum(t["zeros"] * t["shape"][0] * t["shape"][1] for t in sparse.values()) / values
    print(f"sparse:   {len(sparse)} sparse matrices, {100 * zeros:.1f}% zeros left out of them:")
    for name, t in sparse.items():
        n, k = t["shape"]
        print(f"  {name:32} {t['type']:9} {n:6} x {k:<6} zeros {100 * t['zeros']:5.1f}%  {t['bytes'] / 2**20:8.2f} MiB")


def cmd_info(args: argparse.Namespace) -> int:
    info = corelm.info()
    model = _model_info(args.model) if args.model else None
    if args.json:
        print(json.dumps({**info, "model": model} if model else info, indent=2))
        return 0
    if model:
        _print_model_info(model)
        return 0
    print(f"corelm {corelm.__version__}")
    print(f"CPU:      {info['cpu'] or 'unknown'}")
    print(f"cores:    {info['physical_cores']} physical, {info['threads']} threads in the pool")
    print("features: " + " ".join(name for name, on in info["features"].items() if on))
    missing = [name for name, on in info["features"].items() if not on]
    if missing:
        print("absent:   " + " ".join(missing))
    print(f"paths:    {', '.join(info['supported_isas'])} (active: {info['isa']}; CORELM_ISA forces one)")
    rows = info["tile_min_rows"]
    if "amx" in info["supported_isas"]:
        print(f"AMX:      tile kernels for products of {rows}+ activation rows (prefill, batched decode); one row")
        print("          (single-stream decode) stays on AVX-512: a tile would run 15 of its 16 rows empty")
    elif info["features"].get("amx_tile"):
        print("AMX:      the CPU has it but Linux refused tile permission: AVX-512 runs instead")
    elif "amx-emu" in info["supported_isas"]:
        print("AMX:      not on this CPU; amx-emu runs the tile kernels on an exact emulator (for tests, not speed)")
    tuning = info["decode_tuning"]
    ahead = tuning["prefetch_bytes"]
    prefetch = f"prefetch {ahead // 1024} KB ahead" if ahead else "leave prefetching to the CPU (Q6_K excepted)"
    if ahead and not tuning["prefetch_q8_0"]:
        prefetch += " (Q8_0 excepted)"
    groups = tuning["sparse_groups"]
    print(f"decode:   one-row GEMVs {prefetch}; Q8_0_S16 streams {groups} row group(s) at once (for this CPU)")
    pages = info["huge_pages"]
    if pages in ("always", "madvise"):
        print(f"memory:   weights in 2 MB pages (transparent huge pages: {pages})")
    else:
        print(f"memory:   weights in 4 KB pages (transparent huge pages: {pages}); with 'madvise' in")
        print("          /sys/kernel/mm/transparent_hugepage/enabled they get 2 MB ones (decode up to 1.2x faster)")
    print("kernels:")
    for kernel, path in info["kernels"].items():
        print(f"  {kernel:14} {path}")
    return 0


log = logging.getLogger("corelm")
DEFAULT_N_PREDICT = 256  # tokens generated without -n (fewer when the context has less room)


def _load(args: argparse.Namespace) -> corelm.LLM:
    warning = argtypes.too_many_threads(args.threads)
    if warning:
        log.warning("%s", warning)
    return corelm.load(args.model, threads=args.threads, ctx=args.ctx, quant=args.quant)


def _prompt(args: argparse.Namespace) -> str:
    """run's prompt: -p TEXT, -p - (stdin) or -f FILE; one final newline of a file is dropped, as llama.cpp does."""
    if args.file is not None:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    elif args.prompt == "-":
        text = sys.stdin.read()
    else:
        return args.prompt
    return text[:-1] if text.endswith("\n") else text


def _sampling(args: argparse.Namespace) -> dict:
    return dict(
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        seed=args.seed,
        stop=args.stop or None,
        ignore_eos=args.ignore_eos,
    )


def cmd_run(args: argparse.Namespace) -> int:
    prompt = _prompt(args)
    llm = _load(args)
    ids = llm.tokenize(prompt)
    n = args.n_predict if args.n_predict is not None else min(DEFAULT_N_PREDICT, llm.ctx - len(ids) + 1)
    pieces = llm.stream(ids, max_tokens=max(n, 0), **_sampling(args))  # checks everything before any output
    if args.json:
        text = "".join(pieces)
        s, info = llm.last_stats, corelm.info()
        result = {
            "prompt": prompt,
            "text": text,
            "finish_reason": s.finish_reason,
            "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens},
            "timings": {
                "prefill_seconds": s.prefill_seconds,
                "decode_seconds": s.decode_seconds,
                "prefill_tokens_per_s": s.prefill_tps,
                "decode_tokens_per_s": s.decode_tps,
            },
            "isa": info["isa"],
            "threads": info["threads"],
            "ctx": llm.ctx,
        }
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(prompt, end="", flush=True)
    for piece in pieces:
        print(piece, end="", flush=True)
    print()
    print(chat_cli.speed_line(llm), file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    return chat_cli.run(_load(args), args.system, args.n_predict, _sampling(args))


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a .gguf file, a Hugging Face model folder or hf://ORG/REPO[/FILE.gguf] (default: corelm's own model)",
    )
    p.add_argument("-t", "--threads", type=argtypes.threads, default=None, help=THREADS_HELP)
    p.add_argument(
        "-c", "--ctx", type=positive_int, default=None, help="context size in tokens (default: the model's, <= 4096)"
    )
    p.add_argument(
        "--quant",
        choices=list(QUANT_NAMES),
        default=None,
        help="quantize the weights while loading",
    )
    p.add_argument(
        "-n",
        "--n-predict",
        type=count,
        default=None,
        help=f"maximum tokens to generate (default {DEFAULT_N_PREDICT}, or the room left in the context)",
    )
    p.add_argument(
        "--temp", type=argtypes.non_negative_float, default=0.8, help="temperature; 0 = greedy (default 0.8)"
    )
    p.add_argument("--top-k", type=count, default=40, help="keep the k most likely tokens; 0 = off (default 40)")
    p.add_argument("--top-p", type=argtypes.top_p, default=0.95, help="nucleus sampling mass; 1 = off (default 0.95)")
    p.add_argument(
        "--min-p", type=argtypes.probability, default=0.05, help="drop tokens below min-p x the top probability"
    )
    p.add_argument(
        "--repeat-penalty", type=argtypes.positive_float, default=1.0, help="penalise recent tokens; 1 = off"
    )
    p.add_argument(
        "--seed",
        type=argtypes.seed,
        default=None,
        help="random seed, for repeatable sampling (-1: random, the default)",
    )
    p.add_argument(
        "--stop",
        type=argtypes.escaped,
        action="append",
        default=[],
        help=r"stop before this text (repeatable; escapes such as \n and \t work)",
    )
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")


def _texts(args: argparse.Namespace) -> list[str]:
    """The texts of an embed / classify / tag command: arguments, or the lines of --file (- is stdin)."""
    if args.file is None:
        if not args.texts:
            raise ValueError("give texts as arguments or -f FILE (one text per line; - reads stdin)")
        return list(args.texts)
    if args.texts:
        raise ValueError("give texts as arguments or -f FILE, not both")
    raw = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    texts = [line for line in raw.splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{args.file}: no texts (one per line)")
    return texts


def cmd_embed(args: argparse.Namespace) -> int:
    texts = _texts(args)
    llm = corelm.load(args.model, threads=args.threads, quant=args.quant)
    vectors = llm.embed(texts, normalize=False if args.no_normalize else None)
    if args.npy:
        import numpy as np

        np.save(args.npy, vectors)
        print(f"{len(texts)} vectors of {vectors.shape[1]} written to {args.npy}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors, strict=True)]))
    elif not args.npy:
        for text, v in zip(texts, vectors, strict=True):
            head = " ".join(f"{x:+.4f}" for x in v[:6])
            print(f"[{head} ... ] ({len(v)} dims)  {text[:60]}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    texts = _texts(args)
    llm = corelm.load(args.model, threads=args.threads, quant=args.quant)
    probs = llm.class_probabilities(texts)
    labels = llm.labels
    if args.json:
        rows = [
            {
                "text": t,
                "label": labels[int(p.argmax())],
                "score": float(p.max()),
                "scores": dict(zip(labels, map(float, p), strict=True)),
            }
            for t, p in zip(texts, probs, strict=True)
        ]
        print(json.dumps(rows))
        return 0
    for text, p in zip(texts, probs, strict=True):
        print(f"{labels[int(p.argmax())]}\t{p.max():.4f}\t{text}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    texts = _texts(args)
    llm = corelm.load(args.model, threads=args.threads, quant=args.quant)
    tagged = llm.tag(texts)
    if args.json:
        print(
            json.dumps(
                [{"text": t, "entities": [e.__dict__ for e in ents]} for t, ents in zip(texts, tagged, strict=True)]
            )
        )
        return 0
    for text, entities in zip(texts, tagged, strict=True):
        print(text)
        for e in entities:
            print(f"  {e.label:<8} {e.text!r} [{e.start}:{e.end}] {e.score:.4f}")
    return 0


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Where long measurements say each step: stderr, one line a step ("[3/17] Q4_0: GEMV ..."),
    unless --json (a script reads the result; its log stays quiet)."""
    if args.json:
        return lambda s: None
    return lambda s: print(f"... {s}", file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from corelm.distributed import launched_ranks

    # Under mpirun the pool already is this rank's share of the cores.
    threads = args.threads or [corelm.info()["threads" if launched_ranks() > 1 else "physical_cores"]]
    progress = _progress(args)
    if args.model == "kernels":
        from corelm.analysis.kernel_bench import bench_kernels, format_report

        sweep = args.threads or sorted({1, corelm.info()["physical_cores"]})
        report = bench_kernels(sweep, reps=args.reps, progress=progress)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0
    from corelm.analysis.model_bench import bench_model, format_model_report

    report = bench_model(args.model, args.prompt_tokens, args.gen_tokens, threads, args.reps, args.quant, progress)
    print(json.dumps(report, indent=2) if args.json else format_model_report(report))
    return 0


def cmd_roofline(args: argparse.Namespace) -> int:
    from corelm.analysis.roofline import format_report, roofline

    threads = args.threads or corelm.info()["physical_cores"]
    report = roofline(args.model, threads, args.prompt_tokens, args.gen_tokens, args.png, _progress(args))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.png:
        print(f"chart written to {args.png}", file=sys.stderr)
    return 0


THREADS_HELP = (
    f"threads (default: the physical cores; at most {argtypes.THREADS_PER_CPU} per CPU, more than one per CPU "
    "is slower and warned about)"
)
VERBOSE_HELP = "more logging (-vv: debug, and tracebacks)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corelm",
        description="Fast LLM inference on ordinary CPUs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `corelm COMMAND --help` for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"corelm {corelm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "info",
        help="CPU features found and the kernel path each op takes; or a model's matrices",
        description="Report the CPU model, the instruction-set features found, the "
        "thread count and which kernel path (ref, avx2, avx512) each op uses. With MODEL: its "
        "matrices by type, and which are sparse (corelm sparsify) with their fraction of zeros.",
    )
    p.add_argument("model", nargs="?", default=None, metavar="MODEL", help="a .gguf file or model folder to describe")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "run",
        help="generate text from a prompt",
        description="Generate a continuation of PROMPT and stream it to stdout; a line of "
        "speed figures goes to stderr.",
    )
    _model_args(p)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("-p", "--prompt", help="the prompt text (- reads it from stdin)")
    prompt.add_argument("-f", "--file", default=None, help="read the prompt from this UTF-8 file (- is stdin)")
    p.add_argument("--json", action="store_true", help="print one JSON object: the text, usage and timings")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "chat",
        help="interactive chat using the model's chat template (/help inside lists its commands)",
        description="Chat with the model: each line you type is a user message; replies are "
        "rendered with the model's own chat template (or a plain fallback, whose replies end at a blank "
        "line or a turn marker). The oldest turns are dropped when the context fills (-c sets its size). "
        "Commands: /help, /reset, /system TEXT, /save FILE, /load FILE, /exit. Ctrl-C stops a reply.",
    )
    _model_args(p)
    p.add_argument("--system", default=None, help="a system message to start the conversation")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "bench",
        help="prefill/decode tokens per second of a model, or `bench kernels`",
        description="`corelm bench MODEL`: prefill (pp, a p-token prompt) and decode (tg, n tokens) tokens/s "
        "like llama-bench, median and spread over repetitions, with load time and peak memory. "
        "`corelm bench kernels`: GEMV GB/s and GEMM GFLOP/s per weight type beside this machine's "
        "read bandwidth and each kernel path's peak.",
    )
    p.add_argument("model", help="a .gguf file, a Hugging Face folder, hf://ORG/REPO[/FILE.gguf], or `kernels`")
    p.add_argument("-p", "--prompt-tokens", type=positive_int, default=512, help="prompt length for pp (default 512)")
    p.add_argument("-n", "--gen-tokens", type=positive_int, default=128, help="tokens generated for tg (default 128)")
    p.add_argument(
        "-t",
        "--threads",
        type=argtypes.thread_list,
        default=None,
        help="thread counts to sweep, e.g. 1,2 (default: the physical cores)",
    )
    p.add_argument("-r", "--reps", type=positive_int, default=3, help="repetitions per measurement (median is shown)")
    p.add_argument(
        "--quant",
        choices=list(QUANT_NAMES),
        default=None,
        help="quantize the weights while loading",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_bench)
    for name, func, what in (
        ("embed", cmd_embed, "one vector per text (pooled as the model's sentence-transformers config says)"),
        ("classify", cmd_classify, "the label of each text and its probability (a sequence classifier)"),
        ("tag", cmd_tag, "the entities in each text: label, text, character span, score (a token classifier)"),
    ):
        p = sub.add_parser(
            name,
            help=what,
            description=f"{name.capitalize()}: {what}. Texts are the arguments, or the lines of -f FILE.",
        )
        p.add_argument(
            "model", metavar="MODEL", help="a .gguf file, a Hugging Face folder or hf://ORG/REPO[/FILE.gguf]"
        )
        p.add_argument("texts", nargs="*", metavar="TEXT", help="texts (or use -f)")
        p.add_argument("-f", "--file", default=None, help="a UTF-8 file of texts, one per line (- reads stdin)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("-t", "--threads", type=argtypes.threads, default=None, help=THREADS_HELP)
        p.add_argument("--quant", choices=list(QUANT_NAMES), default=None, help="quantize the weights while loading")
        if name == "embed":
            p.add_argument("--no-normalize", action="store_true", help="leave the vectors' lengths as they come")
            p.add_argument("--npy", default=None, metavar="FILE", help="save the vectors as a .npy array")
        p.set_defaults(func=func)

    from corelm.analysis.compare import add_parser as add_compare_parser
    from corelm.analysis.evaluate import add_parsers as add_eval_parsers
    from corelm.analysis.perplexity import add_parsers as add_perplexity_parsers
    from corelm.finetune import add_parser as add_finetune_parser
    from corelm.quantize import add_parsers as add_quantize_parsers
    from corelm.server import add_parser as add_serve_parser
    from corelm.train import add_parser as add_train_parser

    add_serve_parser(sub)
    add_train_parser(sub)
    add_finetune_parser(sub)
    add_quantize_parsers(sub)
    add_perplexity_parsers(sub)
    add_eval_parsers(sub)
    add_compare_parser(sub)

    p = sub.add_parser(
        "roofline",
        help="this machine's limits, and where each op of a model stands against them",
        description="Measure the read bandwidth and each kernel path's peak multiply-add rate; with a model, "
        "profile a decode step and a prefill by op kind (matmul by weight type, attention, norms, rope, "
        "activations, sampling, time outside native code): time share, bytes, FLOPs, GB/s, GFLOP/s, the "
        "ceiling that binds and the fraction of it reached. --png draws the roofline chart.",
    )
    p.add_argument(
        "model", nargs="?", default=None, help="a .gguf file, HF folder or hf://ORG/REPO[/FILE.gguf] (optional)"
    )
    p.add_argument("-t", "--threads", type=argtypes.threads, default=None, help=THREADS_HELP)
    p.add_argument(
        "-p", "--prompt-tokens", type=positive_int, default=128, help="prefill length profiled (default 128)"
    )
    p.add_argument("-n", "--gen-tokens", type=positive_int, default=16, help="decode steps profiled (default 16)")
    p.add_argument("--png", default=None, help="write the roofline chart to this PNG file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_roofline)
    for p in sub.choices.values():  # -v / -vv after the command too (`corelm run -v ...`)
        try:
            p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        except argparse.ArgumentError:
            pass  # the command has a -v of its own
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input: one clear line, no traceback (-vv shows it)
        if args.verbose >= 2:
            raise
        print(f"corelm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
