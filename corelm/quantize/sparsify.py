"""`corelm sparsify`: prune a model's linear layers, then write it through `corelm quantize`.

    corelm sparsify model.gguf model-50.gguf --sparsity 0.5
    corelm sparsify model.gguf model-24.gguf --pattern 2:4 --method wanda --calib text.txt --type q8_0
    corelm sparsify model.gguf model-50-dense.gguf --sparsity 0.5 --type q8_0 --dense

Each pruned matrix W [n, k] (y = x W^T) loses, in every output row, the weights of lowest score:

    magnitude   score = |W[i, j]|
    wanda       score = |W[i, j]| * ||x_j||_2, x_j the j-th input column over the --calib text
                (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"); the norms are
                calibrate.activation_stats' mean x^2 per column (square root: the L2 norm up to a
                factor the same for every column, so the same ranking)
    sparsegpt   score = W[i, j]^2 / [H^-1]_jj^2, and each removal's error is spread over the columns
                not yet pruned through H^-1, H = the mean x x^T over the --calib text (Frantar &
                Alistarh 2023, "SparseGPT"; sparsegpt() below). The statistics are the dense
                model's, gathered in one pass, not layer by layer after the earlier layers' pruning.

and the pattern says which weights compete:

    unstructured  each row keeps its k - floor(sparsity * k) highest scores
    N:M           each group of M consecutive weights along the input dimension keeps its N highest
                  (sparsity 1 - N/M; a last group shorter than M keeps at most N)
    block         whole tiles of 16 rows x 32 columns (BLOCK_TILE: the block of a 16-row group the
                  kernels skip) compete by their summed scores: each group of 16 rows keeps its
                  k/32 - floor(sparsity * k/32) highest tiles

Which tensors are pruned is RECIPE's (printed by --help). The pruned model is written in --type by
convert.write_model, as `corelm quantize` writes it; pruned matrices whose type has a sparse layout
(q8_0: Q8_0_24 for 2:4, Q8_0_B16 for block, Q8_0_S16 for any other pattern; docs/sparsity.md) are stored in it, without
their zeros - smaller, and faster to decode - unless --dense asks for a plain GGUF (zeros stored as
zeros) that llama.cpp loads too. Pruned zeros stay exact zeros in
f32/f16/bf16 and in the types without an offset (q8_0, q6_k, q5_0, q4_0: code 0 times the scale);
types with a per-block minimum (q4_1, q5_1, q4_k, q5_k) store them as the nearest code.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from corelm import hub
from corelm.argtypes import threads, use_threads
from corelm.kernels import PACK_ROWS, SPARSE_LAYOUTS, Weight, WeightType
from corelm.models import load_model
from corelm.quantize.convert import QuantizeReport, _calibration, _check_paths, _input_bytes, check_type, write_model

PATTERNS = ("unstructured", "2:4", "4:8", "block")  # the named ones; any N:M with 0 < N < M is accepted
# None: unstructured; (N, M); "block": tiles of BLOCK_TILE
Pattern = tuple[int, int] | Literal["block"] | None
BLOCK_TILE = (PACK_ROWS, 32)  # rows x columns: one block of a 16-row group (Q8_0_B16 stores or skips it whole)
METHODS = ("magnitude", "wanda", "sparsegpt")

# (regular expression on the tensor name, pruned?, why): the first match decides; matrices only
# (norms and biases are vectors and are never pruned).
RECIPE: list[tuple[str, bool, str]] = [
    (r"(token|position)_embd\.weight", False, "embeddings: a lookup, not a product"),
    (r"token_types\.weight", False, "token-type embeddings (BERT)"),
    (r"output\.weight", False, "the output matrix: every logit depends on all of it"),
    (r"blk\.\d+\..*adapter_.*", False, "bottleneck adapters: small, trained on top of the model"),
    (r"blk\.\d+\.(attn|ffn)_\w+\.weight", True, "attention and feed-forward linear layers"),
    (r".*", False, "anything else (classifier heads, pooling)"),
]


def recipe_table() -> str:
    return "\n".join(f"  {'prune' if prune else 'keep '}  {pat:34s} {why}" for pat, prune, why in RECIPE)


def pruned(name: str) -> bool:
    """Whether RECIPE prunes the matrix `name`."""
    for pattern, prune, _ in RECIPE:
        if re.fullmatch(pattern, name):
            return prune
    return False


def parse_pattern(pattern: str) -> Pattern:
    """None for unstructured, "block", or (N, M) of an N:M pattern; ValueError for anything else."""
    if pattern == "unstructured":
        return None
    if pattern == "block":
        return "block"
    m = re.fullmatch(r"(\d+):(\d+)", pattern)
    if m is None:
        raise ValueError(f"unknown --pattern {pattern!r}; choose unstructured, block or N:M (e.g. 2:4, 4:8)")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise ValueError(f"--pattern {pattern}: N:M needs 0 < N < M (keep N of every M weights)")
    return n, mm


def check_args(sparsity: float | None, pattern: str, method: str, calib: str | PathLike[str] | None) -> float:
    """The sparsity to prune to, or a one-line ValueError; checked before any model is loaded."""
    nm = parse_pattern(pattern)
    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "magnitude" and calib is None:
        raise ValueError(f"--method {method} needs --calib TEXT (the activations it weighs the weights by)")
    if calib is not None and method == "magnitude":
        raise ValueError("--calib is used by --method wanda and sparsegpt only")
    if calib is not None and not Path(calib).is_file():
        raise ValueError(f"--calib {calib}: no such file")
    if isinstance(nm, tuple):
        implied = 1 - nm[0] / nm[1]
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise ValueError(f"--pattern {pattern} means sparsity {implied:g}; drop --sparsity or give {implied:g}")
        return implied
    if sparsity is None:
        raise ValueError(f"--sparsity is required with --pattern {pattern}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity:g}")
    return sparsity


def tile_sums(scores: np.ndarray) -> np.ndarray:
    """[ceil(n / 16), ceil(k / 32)]: the scores [n, k] summed over each BLOCK_TILE (the last ones partial)."""
    (n, k), (tr, tc) = scores.shape, BLOCK_TILE
    padded = np.zeros((-(-n // tr) * tr, -(-k // tc) * tc), dtype=np.float64)
    padded[:n, :k] = scores
    return padded.reshape(padded.shape[0] // tr, tr, padded.shape[1] // tc, tc).sum(axis=(1, 3))


def lowest_tiles(tiles: np.ndarray, count: int, shape: tuple[int, int]) -> np.ndarray:
    """Boolean [n, k] (shape): True in the `count` lowest tiles of each row of `tiles` (of equal ones the later)."""
    drop = np.zeros(tiles.shape, dtype=bool)
    if count:
        order = np.argsort(-tiles, axis=1, kind="stable")  # highest first, the earlier on ties
        np.put_along_axis(drop, order[:, tiles.shape[1] - count :], True, axis=1)
    return np.repeat(np.repeat(drop, BLOCK_TILE[0], axis=0), BLOCK_TILE[1], axis=1)[: shape[0], : shape[1]]


def prune_mask(scores: np.ndarray, sparsity: float, nm: Pattern) -> np.ndarray:
    """Boolean keep-mask [n, k] for the scores [n, k]: per row the highest k - floor(sparsity k)
    (unstructured), per group of M along a row the highest N, or per 16 rows the highest
    k/32 - floor(sparsity k/32) tiles of 16 x 32 (block); of equal scores the earlier column is kept."""
    n, k = scores.shape
    if nm == "block":
        tiles = tile_sums(scores)
        return ~lowest_tiles(tiles, int(np.floor(sparsity * tiles.shape[1] + 1e-9)), (n, k))
    if nm is None:
        drop = int(np.floor(sparsity * k + 1e-9))
        keep = np.ones((n, k), dtype=bool)
        if drop:
            idx = np.argsort(-scores, axis=1, kind="stable")[:, k - drop :]  # highest first: drop the tail
            np.put_along_axis(keep, idx, False, axis=1)
        return keep
    nk, m = nm
    groups = -(-k // m)
    padded = np.full((n, groups * m), -np.inf, dtype=np.float64)  # padding scores lowest: dropped first
    padded[:, :k] = scores
    g = padded.reshape(n, groups, m)
    order = np.argsort(-g, axis=2, kind="stable")  # highest first, earlier column on ties
    keep = np.zeros_like(g, dtype=bool)
    np.put_along_axis(keep, order[:, :, :nk], True, axis=2)
    return keep.reshape(n, groups * m)[:, :k] & np.isfinite(padded[:, :k])


def prune(w: np.ndarray, sparsity: float, nm: Pattern = None, col_norm: np.ndarray | None = None) -> np.ndarray:
    """`w` [n, k] with its lowest-scoring weights set to zero: |w| (magnitude) or |w| * col_norm
    (Wanda, col_norm [k] the input columns' L2 norms)."""
    scores = np.abs(w.astype(np.float64))
    if col_norm is not None:
        scores = scores * np.asarray(col_norm, dtype=np.float64)[None, :]
    return np.where(prune_mask(scores, sparsity, nm), w, 0).astype(np.float32)


def sparsegpt(
    w: np.ndarray, gram: np.ndarray, sparsity: float, nm: Pattern = None, block: int = 128, damp=0.01
) -> np.ndarray:
    """`w` [n, k] pruned with SparseGPT's error compensation (Frantar & Alistarh 2023): columns left to right
    in blocks of `block`, each weight's removal error spread over the columns not yet pruned through the
    inverse Hessian of the layer's input (gram = mean x x^T [k, k], dampened by `damp` x its mean diagonal),
    so the product x w^T moves as little as the calibration inputs can tell. Which weights go: per row the
    lowest w^2 / [H^-1]_jj^2 - of each block (unstructured: floor(sparsity k) over the row, spread over the
    blocks), of each group of M (N:M, chosen when the group is reached, after the updates before it) or,
    summed over tiles of 16 rows x 32 columns, the lowest floor(sparsity k/32) tiles of each 16 rows, chosen
    before the first block (block)."""
    W = w.astype(np.float64)
    n, k = W.shape
    whole = BLOCK_TILE[1] if nm == "block" else nm[1] if nm is not None else 1
    block = max(whole, block // whole * whole)  # blocks of whole groups or tiles
    H = np.array(gram, dtype=np.float64)
    dead = np.diag(H) == 0  # columns no input ever reached
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * np.mean(np.diag(H)) * np.eye(k)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper factor of H^-1: H^-1 = U^T U
    rows = np.arange(n)[:, None]
    if nm == "block":  # the tiles are chosen once, over whole rows: a block of columns holds too few to choose from
        tiles = tile_sums(W**2 / np.diag(U)[None, :] ** 2)
        tile_drop = lowest_tiles(tiles, int(np.floor(sparsity * tiles.shape[1] + 1e-9)), W.shape)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Ui = W[:, i1:i2].copy(), U[i1:i2, i1:i2]
        Q1, Err1 = np.zeros_like(W1), np.zeros_like(W1)
        drop = np.zeros_like(W1, dtype=bool)
        if nm is None:
            count = int(np.floor(sparsity * i2 + 1e-9)) - int(np.floor(sparsity * i1 + 1e-9))
            if count:
                score = W1**2 / np.diag(Ui)[None, :] ** 2
                drop[rows, np.argsort(score, axis=1, kind="stable")[:, :count]] = True
        elif nm == "block":
            drop = tile_drop[:, i1:i2].copy()
        for i in range(i2 - i1):
            if isinstance(nm, tuple) and (i1 + i) % nm[1] == 0:  # a new group of M: drop its M - N lowest now
                j = min(i + nm[1], i2 - i1)
                score = W1[:, i:j] ** 2 / np.diag(Ui)[None, i:j] ** 2
                lowest = np.argsort(score, axis=1, kind="stable")[:, : max(0, j - i - nm[0])]
                drop[rows, i + lowest] = True
            q = np.where(drop[:, i], 0.0, W1[:, i])
            err = (W1[:, i] - q) / Ui[i, i]
            W1[:, i:] -= np.outer(err, Ui[i, i:])
            Q1[:, i], Err1[:, i] = q, err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W.astype(np.float32)


@dataclass
class SparsifyReport:
    quantize: QuantizeReport
    sparsity: float
    pattern: str
    method: str
    pruned: dict[str, float] = field(default_factory=dict)  # matrix -> fraction of zeros after pruning
    kept: list[str] = field(default_factory=list)  # matrices left dense
    stored_sparse: int = 0  # pruned matrices stored in a sparse layout
    dense: bool = False  # --dense: every matrix with its zeros
    no_stats: list[str] = field(default_factory=list)  # wanda / sparsegpt: matrices the text never reached (magnitude)
    seconds: float = 0.0


def sparsify_model(
    src: str | PathLike[str],
    out: str | PathLike[str],
    sparsity: float | None = None,
    pattern: str = "unstructured",
    method: str = "magnitude",
    calib: str | PathLike[str] | None = None,
    calib_tokens: int = 2048,
    type: str = "f32",
    pure: bool = False,
    progress: bool = True,
    dense: bool = False,
) -> SparsifyReport:
    """Prune the model at `src` (see the module docstring) and write it to `out` as a GGUF of `type`, the
    pruned matrices in their type's sparse layout where it has one (unless `dense`)."""
    t0 = time.perf_counter()
    level = check_args(sparsity, pattern, method, calib)
    nm = parse_pattern(pattern)
    recipe = check_type(type)
    if calib_tokens < 1:
        raise ValueError(f"--calib-tokens must be positive, got {calib_tokens}")
    src, out = hub.resolve(src), Path(out)
    _check_paths(src, out)
    model, tokenizer = load_model(src, distributed=False)
    qreport = QuantizeReport(str(src), str(out), type.lower(), False, _input_bytes(src), 0)
    report = SparsifyReport(qreport, level, pattern, method, dense=dense)
    stats: dict[str, np.ndarray] = {}
    if method != "magnitude":
        assert calib is not None
        stats, qreport.calib_tokens = _calibration(
            model, tokenizer, Path(calib), calib_tokens, progress, gram=method == "sparsegpt"
        )
    weights = dict(model.w)
    for name, t in tqdm(list(model.w.items()), desc="pruning", unit="tensor", leave=False, disable=not progress):
        if not isinstance(t, Weight):
            continue
        if not pruned(name):
            report.kept.append(name)
            continue
        w = t.unpacked().to_float()
        if method != "magnitude" and name not in stats:
            report.no_stats.append(name)
        if method == "sparsegpt" and name in stats and level > 0:
            p = sparsegpt(w, stats[name], level, nm)
        else:
            p = prune(w, level, nm, np.sqrt(stats[name]) if method == "wanda" and name in stats else None)
        report.pruned[name] = float(np.mean(p == 0))
        weights[name] = Weight.from_float(p, WeightType.F32) if level > 0 else t
    before = Counter(t.unpacked().type.name for t in model.w.values() if isinstance(t, Weight))
    model.w = weights
    # 2:4 and block get the layouts whose products skip the zeros; anything else the one that takes any zeros.
    skipping: dict[Pattern, WeightType] = {(2, 4): WeightType.Q8_0_24, "block": WeightType.Q8_0_B16}
    layout = skipping.get(nm, WeightType.Q8_0_S16)
    sparse = {} if dense or level == 0 else dict.fromkeys(report.pruned, layout)
    write_model(model, tokenizer, src, out, recipe, qreport, pure=pure, progress=progress, sparse=sparse)
    report.stored_sparse = sum(n for name, n in qreport.types_after.items() if WeightType[name].sparse)
    qreport.types_before = before  # the input's types, not the pruned F32 copies'
    qreport.calibrated = len(report.pruned) - len(report.no_stats) if method != "magnitude" else 0
    report.seconds = qreport.seconds = time.perf_counter() - t0
    return report


def format_report(r: SparsifyReport) -> str:
    from corelm.quantize.convert import format_report as format_quantize

    q = format_quantize(r.quantize).replace("corelm quantize:", "corelm sparsify:", 1)
    zeros = list(r.pruned.values())
    lines = [
        q,
        f"  pruning:  {r.method}, {r.pattern}, sparsity {r.sparsity:g}: {len(r.pruned)} matrices pruned "
        + (f"(zeros {min(zeros):.4f}-{max(zeros):.4f})" if zeros else "")
        + f", {len(r.kept)} kept dense ({', '.join(r.kept[:4])}{', ...' if len(r.kept) > 4 else ''})",
    ]
    if r.pruned and r.dense:
        lines.append("  stored:   with their zeros (--dense: a plain GGUF, which llama.cpp loads too)")
    elif r.pruned and not r.stored_sparse:
        have = ", ".join(t.name.lower() for t in sorted(SPARSE_LAYOUTS))
        lines.append(f"  stored:   with their zeros (a plain GGUF; --type {have} has a sparse layout)")
    elif r.stored_sparse:
        lines.append(f"  stored:   {r.stored_sparse} pruned matrices without their zeros (corelm's sparse layout)")
    if r.no_stats:
        lines.append(f"  note: the calibration text never reached {len(r.no_stats)} matrices; pruned by magnitude")
    return "\n".join(lines)


_EPILOG = f"""\
which matrices are pruned (first match wins):
{recipe_table()}

methods (per output row):
  magnitude   drop the weights of smallest |w|
  wanda       drop the smallest |w| x ||x||, ||x|| each input column's L2 norm over --calib
  sparsegpt   drop the smallest w^2 / [H^-1]_jj^2 and move the rest to make up for it, H = x^T x
              over --calib (SparseGPT: slower; one k x k matrix per layer input in memory)

patterns:
  unstructured  any floor(sparsity x k) weights of each row of k
  N:M           N of each M consecutive weights along the input dimension kept (2:4, 4:8, ...);
                the sparsity is 1 - N/M (--sparsity may be left out)
  block         whole tiles of 16 rows x 32 columns, scored by their sum: floor(sparsity x k/32)
                tiles of each 16 rows (worse quality than unstructured at the same sparsity; the
                kernels skip the tiles, so prefill gains as much as decode)

The output is a GGUF in --type (corelm quantize's names and rules). With --type q8_0 the pruned
matrices are stored without their zeros (docs/sparsity.md) - 2:4 as Q8_0_24 (positions and kept codes:
products skip the zeros), block as Q8_0_B16 (a bitmap and the kept tiles: products skip them), any
other pattern as Q8_0_S16 (a bitmask and the kept codes):
the file is smaller and decodes faster, and only corelm loads it. --dense writes every matrix with
its zeros: a plain GGUF that llama.cpp loads too (for comparing).

examples:
  corelm sparsify corelm/data/default.gguf /tmp/d-50.gguf --sparsity 0.5
  corelm sparsify corelm/data/default.gguf /tmp/d-24.gguf --pattern 2:4 --method wanda \\
      --calib ../shared/data/corpora/tinyshakespeare.txt --type q8_0
"""


def cmd_sparsify(args: argparse.Namespace) -> int:
    check_args(args.sparsity, args.pattern, args.method, args.calib)  # before loading anything
    use_threads(args.threads)
    report = sparsify_model(
        args.input,
        args.output,
        args.sparsity,
        pattern=args.pattern,
        method=args.method,
        calib=args.calib,
        calib_tokens=args.calib_tokens,
        type=args.type,
        pure=args.pure,
        progress=not args.quiet,
        dense=args.dense,
    )
    print(format_report(report), file=sys.stdout)
    return 0


def add_parser(subparsers: argparse._SubParsersAction, type_names: list[str]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sparsify",
        help="prune a model's linear layers (magnitude, Wanda or SparseGPT; unstructured or N:M) and write a GGUF",
        description="Set the lowest-scoring weights of INPUT's linear layers to zero and write OUTPUT, a GGUF "
        "file whose matrices are in --type (as corelm quantize writes them).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument(
        "input", metavar="INPUT", help="a .gguf file, a Hugging Face model folder or hf://ORG/REPO[/FILE.gguf]"
    )
    p.add_argument("output", metavar="OUTPUT", help="the GGUF file to write")
    p.add_argument(
        "--sparsity", type=float, default=None, metavar="S", help="fraction of each row set to zero, in [0, 1)"
    )
    p.add_argument(
        "--pattern",
        default="unstructured",
        type=str.lower,
        help="unstructured (default), 2:4, 4:8, N:M or block (16 x 32 tiles)",
    )
    p.add_argument("--method", default="magnitude", type=str.lower, help="magnitude (default), wanda or sparsegpt")
    p.add_argument(
        "--calib", default=None, metavar="TEXT", help="wanda, sparsegpt: the text whose activations weigh the weights"
    )
    p.add_argument(
        "--calib-tokens", type=int, default=2048, metavar="N", help="--calib: use its first N tokens (default 2048)"
    )
    p.add_argument("--type", default="f32", type=str.lower, choices=type_names, help="weight type (default f32)")
    p.add_argument("--pure", action="store_true", help="every matrix in the type itself (as corelm quantize --pure)")
    p.add_argument(
        "--dense", action="store_true", help="store the zeros: a plain GGUF llama.cpp loads (not smaller or faster)"
    )
    p.add_argument("-t", "--threads", type=threads, default=None, help="threads (default: physical cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sparsify)
    return p
