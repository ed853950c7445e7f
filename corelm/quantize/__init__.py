"""Writing models in other weight types: `corelm quantize INPUT OUTPUT.gguf --type T`.

    corelm quantize model_dir/ model-q8_0.gguf --type q8_0
    corelm quantize model.gguf model-q4_0.gguf --type q4_0 --optimize --calib some-text.txt

convert.py does the work (which tensor gets which type, metadata, the atomic write);
q4_0_opt.py is the error-minimising Q4_0 quantizer behind --optimize and calibrate.py the
activation statistics that weight it.
"""

from __future__ import annotations

import argparse
import sys

from corelm.argtypes import threads, use_threads
from corelm.quantize.convert import QuantizeReport, UnsupportedTypeError, format_report, quantize_model
from corelm.quantize.recipes import TYPE_NAMES

__all__ = ["QuantizeReport", "UnsupportedTypeError", "add_parsers", "cmd_quantize", "quantize_model"]

_EPILOG = """\
types (which matrix gets what follows llama.cpp's llama-quantize, so the files match):
  f32, f16, bf16     every matrix in that type
  q8_0, q4_0         GGUF's 32-weight blocks: 8-bit / 4-bit codes with an fp16 scale
  q4_1, q5_0, q5_1   32-weight blocks with 4/5-bit codes (and a min for _1)
  q6_k               256-weight super-blocks, 6-bit codes, 16 sub-block scales
  q4_k_m, q5_k_m     llama.cpp's mixes: Q4_K (Q5_K) everywhere except output.weight, and
                     attn_v (or a fused attn_qkv) / ffn_down of the first and last eighth of
                     the layers and every third layer between, in Q6_K
  Quantized types put output.weight (the token embedding when tied) in Q6_K, except q8_0;
  position_embd keeps its type;
  --pure keeps every matrix in the type itself. Matrices whose rows a k-quant's 256-blocks do
  not divide fall back as llama.cpp's do (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0); rows no block
  fits keep their type (listed in the summary). Norms and biases are always F32.
  The tokenizer, special tokens, chat template and architecture metadata are kept; llama.cpp
  and corelm load the output as they load the input.

--optimize (q4_0 only): each block's scale is searched (both signs, a grid around max/-8, the
best scale for the rounded codes solved exactly) to minimise the block's squared error, weighted
per column by the mean square of the activations that column meets on the --calib text (run
through the input model; without --calib every column counts the same). The output is plain
Q4_0 - same size, same kernels, same speed, loads anywhere Q4_0 does - with lower error.

The output is written to OUTPUT.tmp and renamed when complete: a failed run leaves no file.

examples:
  corelm quantize ../shared/data/models/stories260K/stories260K.gguf /tmp/s-q8_0.gguf --type q8_0
  corelm quantize my-hf-model/ my-model-q4_k_m.gguf --type q4_k_m
  corelm quantize my-hf-model/ my-model-q4_0.gguf --type q4_0 --optimize --calib calib.txt
"""


def cmd_quantize(args: argparse.Namespace) -> int:
    use_threads(args.threads)
    report = quantize_model(
        args.input,
        args.output,
        args.type,
        optimize=args.optimize,
        pure=args.pure,
        calib=args.calib,
        calib_tokens=args.calib_tokens,
        progress=not args.quiet,
    )
    print(format_report(report), file=sys.stdout)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `quantize` on the `corelm` command's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "quantize",
        help="write a model as a GGUF file of another weight type (q4_k_m, q8_0, f16, ...)",
        description="Convert INPUT (a .gguf file or a Hugging Face folder) to OUTPUT, a GGUF file whose "
        "matrices are in --type. Prints a summary: sizes before and after, tensor types, fallbacks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument(
        "input", metavar="INPUT", help="a .gguf file, a Hugging Face model folder or hf://ORG/REPO[/FILE.gguf]"
    )
    p.add_argument("output", metavar="OUTPUT", help="the GGUF file to write")
    p.add_argument(
        "--type",
        required=True,
        type=str.lower,
        choices=TYPE_NAMES,
        help="weight type or llama.cpp mix (see below)",
    )
    p.add_argument("--pure", action="store_true", help="every matrix in the type itself (no Q6_K output, no mix)")
    p.add_argument("--optimize", action="store_true", help="q4_0: error-minimising block scales (same layout)")
    p.add_argument("--calib", default=None, metavar="TEXT", help="--optimize: weigh errors by activations on TEXT")
    p.add_argument(
        "--calib-tokens", type=int, default=2048, metavar="N", help="--calib: use its first N tokens (default 2048)"
    )
    p.add_argument("-t", "--threads", type=threads, default=None, help="threads (default: physical cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quantize)
    from corelm.quantize.sparsify import add_parser as add_sparsify_parser

    add_sparsify_parser(subparsers, TYPE_NAMES)
    return p
