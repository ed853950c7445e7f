"""`corelm perplexity`: perplexity and KL divergence the way llama.cpp's perplexity tool computes them.

The method (llama.cpp tools/perplexity/perplexity.cpp, perplexity() and kl_divergence()):
  1. the text file is read whole, one trailing newline dropped (as llama.cpp's -f does), and
     tokenized with BOS when the model's vocabulary adds one, control-token text not parsed;
  2. the tokens are cut into n = len // ctx non-overlapping windows of ctx tokens (--chunks
     caps n; the rest is not used); at least 2 windows are needed;
  3. each window is evaluated from an empty cache, its first token replaced by BOS when the
     model adds BOS;
  4. only the second half is scored: the logits at positions ctx/2 .. ctx-2 predict the tokens
     at ctx/2+1 .. ctx-1, i.e. ctx - 1 - ctx/2 tokens per window;
  5. PPL = exp(mean NLL), reported ± ppl * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1)).

--save-logits FILE stores, for every scored position, the full log-softmax over the vocabulary
as float16 (2 bytes x vocab per position: 255 x 32000 x 2 = 16 MB per 512-token window of a
32000-token vocabulary, the size of llama.cpp's --kl-divergence-base file; it is built in
memory, and --kld-base reads it whole into memory), with the token ids, ctx,
the exact NLL and the top-1 token of every position, in an .npz file. --kld-base FILE reads it
back and compares this model with it, position by position: KL(base || this), the NLL of both,
the probability of the right token, and whether both put the same token on top; the summary
has llama.cpp's figures (mean KLD ± its uncertainty, percentiles, Same top p). The base is
renormalised after float16 rounding, so the KLD of a model against its own file is 0 to about
1e-6, not exactly; every vocabulary term is summed (llama.cpp skips base log-probabilities
below -16). A base made from another text, tokenizer or ctx is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from corelm.argtypes import positive_int, threads, use_threads
from corelm.models import QUANT_NAMES
from corelm.models.base import Model, Segment

BASE_FORMAT = "corelm-logprobs"
BASE_VERSION = 1
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0, 0.1)


def read_text(path: str | PathLike[str]) -> str:
    """The text of a UTF-8 file, without one trailing newline (llama.cpp's -f drops it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as UTF-8 text: {e}") from e
    return text[:-1] if text.endswith("\n") else text


def n_windows(n_tokens: int, ctx: int, chunks: int | None = None) -> int:
    """How many windows of ctx tokens llama.cpp scores (raises if fewer than 2 fit)."""
    if ctx < 4:
        raise ValueError(f"--ctx must be at least 4, got {ctx}")
    if n_tokens < 2 * ctx:
        raise ValueError(
            f"the text has {n_tokens} tokens; perplexity with a context of {ctx} needs at least {2 * ctx} "
            f"(2 windows): use a longer text or a smaller --ctx"
        )
    n = n_tokens // ctx
    if chunks is not None:
        if chunks < 1:
            raise ValueError(f"--chunks must be positive, got {chunks}")
        n = min(n, chunks)
    return n


def windows(tokens: np.ndarray, ctx: int, n: int, bos_id: int | None) -> np.ndarray:
    """[n, ctx] token windows as evaluated: the first of each replaced by BOS when bos_id is given."""
    w = np.asarray(tokens[: n * ctx], dtype=np.int32).reshape(n, ctx).copy()
    if bos_id is not None:
        w[:, 0] = bos_id
    return w


def scored_logits(model: Model, wins: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """For each window, float32 logits [ctx - 1 - ctx/2, vocab] at positions ctx/2 .. ctx-2.

    batch >= ctx: batch // ctx windows per forward pass (one GEMM, each window its own cache);
    batch < ctx: each window in steps of `batch` tokens over one cache."""
    n, ctx = wins.shape
    first = ctx // 2
    if batch >= ctx:
        per = batch // ctx
        for i in range(0, n, per):
            group = wins[i : i + per]
            segs = [Segment(model.new_cache(ctx), 0, ctx) for _ in group]
            logits = model.forward_batch(group.reshape(-1), segs, all_logits=True)
            for j in range(len(group)):
                yield logits[j * ctx + first : (j + 1) * ctx - 1].copy()
        return
    for win in wins:
        cache = model.new_cache(ctx)
        rows = []
        for start in range(0, ctx, batch):
            logits = model.forward(win[start : start + batch], start, cache, all_logits=True)
            lo, hi = max(first, start), min(ctx - 1, start + batch)
            if lo < hi:
                rows.append(logits[lo - start : hi - start].copy())
        yield np.concatenate(rows)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of float32 logits (sums in float64, as llama.cpp's log_softmax)."""
    m = logits.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return logits - lse


def _mean_err(x: np.ndarray) -> tuple[float, float]:
    """Mean and its uncertainty as llama.cpp computes them: sqrt((E[x^2] - E[x]^2) / (n - 1))."""
    x = np.asarray(x, np.float64)
    mean = float(x.mean())
    var = float((x * x).mean() - mean * mean)
    return mean, math.sqrt(var / (len(x) - 1)) if var > 0 and len(x) > 1 else 0.0


@dataclass
class KLDResult:
    """This model against a saved base, per scored token, summarised as llama.cpp reports it."""

    ppl_base: float
    ln_ppl_ratio: float  # mean ln(PPL(Q)/PPL(base)) = mean(nll - nll_base)
    ln_ppl_ratio_err: float
    ppl_cor: float  # correlation of the per-token NLLs
    kld_mean: float
    kld_err: float
    kld_max: float
    kld_median: float
    kld_min: float
    kld_percentiles: dict[str, float]  # "99.9", "99.0", ... -> value
    dp_mean: float  # mean of p(right token) - p_base(right token)
    dp_err: float
    dp_rms: float
    same_top: float  # fraction of positions whose argmax agrees
    same_top_err: float


@dataclass
class PerplexityResult:
    ppl: float
    ppl_err: float
    nll: float  # mean NLL
    count: int  # tokens scored
    chunks: int
    ctx: int
    n_tokens: int  # tokens in the text
    batch: int
    add_bos: bool
    chunk_ppl: list[float] = field(default_factory=list)  # running PPL after each window (llama.cpp's [i]x)
    kld: KLDResult | None = None
    seconds: float = 0.0
    # per scored token, in order (not in the JSON): NLL, and KL divergence from the base if any
    token_nll: np.ndarray | None = field(default=None, repr=False)
    token_kld: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["token_nll"], d["token_kld"]
        return d


def _kld_result(nll: np.ndarray, nll_base: np.ndarray, kld: np.ndarray, dp: np.ndarray, same: np.ndarray) -> KLDResult:
    ratio, ratio_err = _mean_err(nll - nll_base)
    kld_mean, kld_err = _mean_err(kld)
    dp_mean, dp_err = _mean_err(dp)
    p_top = float(same.mean())
    n = len(same)
    cor = float(np.corrcoef(nll, nll_base)[0, 1]) if nll.std() > 0 and nll_base.std() > 0 else 1.0
    return KLDResult(
        ppl_base=math.exp(float(nll_base.mean())),
        ln_ppl_ratio=ratio,
        ln_ppl_ratio_err=ratio_err,
        ppl_cor=cor,
        kld_mean=kld_mean,
        kld_err=kld_err,
        kld_max=float(kld.max()),
        kld_median=float(np.median(kld)),
        kld_min=float(kld.min()),
        kld_percentiles={f"{q:.1f}": float(np.percentile(kld, q)) for q in PERCENTILES},
        dp_mean=dp_mean,
        dp_err=dp_err,
        dp_rms=float(np.sqrt((dp.astype(np.float64) ** 2).mean())),
        same_top=p_top,
        same_top_err=math.sqrt(p_top * (1 - p_top) / (n - 1)) if n > 1 else 0.0,
    )


def load_base(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """A --save-logits file, checked for its format and version."""
    try:
        with np.load(path, allow_pickle=False) as f:
            base = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a --save-logits file: {e}") from e
    base["path"] = np.array(str(path))
    if str(base.get("format", "")) != BASE_FORMAT:
        raise ValueError(f"{path}: not a corelm --save-logits file (no format={BASE_FORMAT!r})")
    if int(base["version"]) != BASE_VERSION:
        raise ValueError(f"{path}: format version {int(base['version'])}; this corelm reads version {BASE_VERSION}")
    return base


def check_base(base: dict[str, np.ndarray], path: Any, tokens: np.ndarray, ctx: int, vocab: int, n: int) -> None:
    """Refuse a base made from other tokens, ctx or vocabulary, or with fewer windows."""
    if int(base["ctx"]) != ctx:
        raise ValueError(f"--kld-base {path} was made with --ctx {int(base['ctx'])}, this run uses --ctx {ctx}")
    if int(base["vocab_size"]) != vocab:
        raise ValueError(f"--kld-base {path} has a vocabulary of {int(base['vocab_size'])}, this model {vocab}")
    bt = base["tokens"]
    if len(bt) != len(tokens) or not np.array_equal(bt, tokens):
        diff = np.flatnonzero(bt[: len(tokens)] != tokens[: len(bt)])
        where = int(diff[0]) if diff.size else min(len(bt), len(tokens))
        raise ValueError(
            f"--kld-base {path} was made from another tokenization ({len(bt)} tokens, this text gives "
            f"{len(tokens)}; first difference at token {where}): use the same text file and a model with "
            "the same tokenizer"
        )
    if n > base["logprobs"].shape[0]:
        raise ValueError(f"--kld-base {path} holds {base['logprobs'].shape[0]} windows; this run asks for {n}")


def perplexity(
    model: Model,
    tokens: list[int] | np.ndarray,
    ctx: int = 512,
    chunks: int | None = None,
    batch: int | None = None,
    bos_id: int | None = None,
    save_logits: str | PathLike[str] | None = None,
    kld_base: str | PathLike[str] | dict[str, np.ndarray] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    """llama.cpp's perplexity of `model` over `tokens` (BOS already in front when the model adds
    one; pass its id as bos_id, and each window's first token is replaced by it). See the module
    docstring; progress(i, n, running_ppl) is called after each window."""
    t0 = time.perf_counter()
    tokens = np.asarray(tokens, dtype=np.int32)
    vocab = model.config.vocab_size
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"token ids must be in [0, {vocab})")
    base = None
    if kld_base is not None:
        base = kld_base if isinstance(kld_base, dict) else load_base(kld_base)
        kld_base = base.get("path", kld_base)  # type: ignore[assignment]  # the file it came from
        if chunks is None:
            chunks = int(base["logprobs"].shape[0])
    n = n_windows(len(tokens), ctx, chunks)
    if base is not None:
        check_base(base, kld_base, tokens, ctx, vocab, n)
    batch = ctx if batch is None else batch
    if batch < 1:
        raise ValueError(f"--batch must be positive, got {batch}")
    wins = windows(tokens, ctx, n, bos_id)
    first = ctx // 2
    targets = tokens[: n * ctx].reshape(n, ctx)[:, first + 1 :]  # [n, ctx - 1 - first]

    nll = np.empty(targets.shape, np.float64)
    chunk_ppl = []
    saved: dict[str, list[np.ndarray]] | None = {"logprobs": [], "top1": []} if save_logits is not None else None
    kstats: dict[str, list[np.ndarray]] = {"nll_base": [], "kld": [], "dp": [], "same": []}
    for i, logits in enumerate(scored_logits(model, wins, batch)):
        lp = log_softmax(logits)  # [m, vocab]
        rows = np.arange(lp.shape[0])
        nll[i] = -lp[rows, targets[i]].astype(np.float64)
        top1 = logits.argmax(axis=-1)
        if saved is not None:
            saved["logprobs"].append(lp.astype(np.float16))
            saved["top1"].append(top1.astype(np.int32))
        if base is not None:
            lb = base["logprobs"][i].astype(np.float32)
            lb -= np.log(np.exp(lb.astype(np.float64)).sum(axis=-1, keepdims=True)).astype(np.float32)
            pb = np.exp(lb)
            kstats["kld"].append((pb * (lb - lp)).sum(axis=-1, dtype=np.float64))
            kstats["nll_base"].append(base["nll"][i].astype(np.float64))
            kstats["dp"].append(np.exp(-nll[i]) - np.exp(-kstats["nll_base"][-1]))
            kstats["same"].append(top1 == base["top1"][i])
        chunk_ppl.append(math.exp(float(nll[: i + 1].mean())))
        if progress:
            progress(i + 1, n, chunk_ppl[-1])

    flat = nll.reshape(-1)
    mean, err = _mean_err(flat)
    result = PerplexityResult(
        ppl=math.exp(mean),
        ppl_err=err * math.exp(mean),
        nll=mean,
        count=flat.size,
        chunks=n,
        ctx=ctx,
        n_tokens=len(tokens),
        batch=batch,
        add_bos=bos_id is not None,
        chunk_ppl=chunk_ppl,
        token_nll=flat,
    )
    if base is not None:
        nll_base, kld, dp, same = (np.concatenate(kstats[k]) for k in ("nll_base", "kld", "dp", "same"))
        result.kld = _kld_result(flat, nll_base, kld, dp, same)
        result.token_kld = kld
    if saved is not None and save_logits is not None:
        _save_base(
            save_logits,
            format=np.array(BASE_FORMAT),
            version=np.int32(BASE_VERSION),
            ctx=np.int32(ctx),
            vocab_size=np.int32(vocab),
            add_bos=np.int8(bos_id is not None),
            tokens=tokens,
            logprobs=np.stack(saved["logprobs"]),
            nll=nll.astype(np.float32),
            top1=np.stack(saved["top1"]),
        )
    result.seconds = time.perf_counter() - t0
    return result


def _save_base(path: str | PathLike[str], **arrays: Any) -> None:
    """np.savez to path.tmp, renamed when complete (never a half-written file at path)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def perplexity_file(
    model_path: str | PathLike[str],
    text_path: str | PathLike[str],
    ctx: int | None = None,
    quant: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    **kwargs: Any,
) -> PerplexityResult:
    """perplexity() of the model at `model_path` (GGUF or HF folder) on a text file; ctx None:
    512, or the --kld-base file's."""
    from corelm.models import load_model

    if kwargs.get("kld_base") is not None:
        kwargs["kld_base"] = load_base(kwargs["kld_base"])
    if ctx is None:
        ctx = int(kwargs["kld_base"]["ctx"]) if kwargs.get("kld_base") is not None else 512
    text = read_text(text_path)
    model, tokenizer = load_model(model_path, quant=quant)
    if tokenizer is None:
        raise ValueError(f"{model_path}: the model has no tokenizer, so it cannot read a text file")
    if ctx > model.config.ctx:
        print(f"warning: --ctx {ctx} is beyond the model's trained context of {model.config.ctx}", file=sys.stderr)
    tokens = tokenizer.encode(text, special=False)  # BOS as the vocabulary says
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    return perplexity(model, tokens, ctx=ctx, bos_id=bos, progress=progress, **kwargs)


# ---- the command ----


def format_result(r: PerplexityResult) -> str:
    lines = [
        f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_err:.5f}",
        f"({r.count} tokens scored in {r.chunks} windows of {r.ctx}, {r.n_tokens} tokens in the text, "
        f"{r.seconds:.1f} s)",
    ]
    k = r.kld
    if k is None:
        return "\n".join(lines)
    ratio = r.ppl / k.ppl_base
    lines += [
        "",
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {r.ppl:10.6f} ± {r.ppl_err:10.6f}",
        f"Mean PPL(base)                : {k.ppl_base:10.6f}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * k.ppl_cor:6.2f}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {k.ln_ppl_ratio:10.6f} ± {k.ln_ppl_ratio_err:10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {ratio:10.6f} ± {ratio * k.ln_ppl_ratio_err:10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {r.ppl - k.ppl_base:10.6f}",
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {k.kld_mean:10.6f} ± {k.kld_err:10.6f}",
        f"Maximum KLD: {k.kld_max:10.6f}",
        *(f"{q:>4}%   KLD: {k.kld_percentiles[q]:10.6f}" for q in ("99.9", "99.0", "95.0", "90.0")),
        f"Median  KLD: {k.kld_median:10.6f}",
        *(f"{q:>4}%   KLD: {k.kld_percentiles[q]:10.6f}" for q in ("10.0", "5.0", "1.0", "0.1")),
        f"Minimum KLD: {k.kld_min:10.6f}",
        "",
        "====== Token probability statistics ======",
        f"Mean    Δp: {100 * k.dp_mean:6.3f} ± {100 * k.dp_err:5.3f} %",
        f"RMS Δp    : {100 * k.dp_rms:6.3f} %",
        f"Same top p: {100 * k.same_top:6.3f} ± {100 * k.same_top_err:5.3f} %",
    ]
    return "\n".join(lines)


def cmd_perplexity(args: argparse.Namespace) -> int:
    use_threads(args.threads)

    def show(i: int, n: int, ppl: float) -> None:
        if args.json:
            print(f"\rperplexity: window {i}/{n}, PPL {ppl:.4f}", end="\n" if i == n else "", file=sys.stderr)
        else:
            print(f"[{i}]{ppl:.4f},", end="\n" if i == n else "", flush=True)

    result = perplexity_file(
        args.model,
        args.file,
        ctx=args.ctx,
        quant=args.quant,
        progress=show,
        chunks=args.chunks,
        batch=args.batch,
        save_logits=args.save_logits,
        kld_base=args.kld_base,
    )
    if args.json:
        print(json.dumps(result.to_json()))  # one line, the last one: {"ppl": ..., ...}
    else:
        print(format_result(result))
        if args.save_logits:
            print(f"log-probabilities of {result.count} positions saved to {args.save_logits}")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `perplexity` on the `corelm` command's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "perplexity",
        help="perplexity of a model on a text file, and KL divergence from a saved base (as llama.cpp)",
        description="Perplexity of MODEL on the text in --file, computed as llama.cpp's perplexity tool "
        "does: windows of --ctx tokens from an empty cache, BOS first, the second half of each scored. "
        "--save-logits / --kld-base compare two models (e.g. a quantized one with its F32 source) by KL "
        "divergence over the same positions, as llama.cpp's --kl-divergence.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument(
        "model", metavar="MODEL", help="a .gguf file, a Hugging Face model folder or hf://ORG/REPO[/FILE.gguf]"
    )
    p.add_argument("-f", "--file", required=True, metavar="TEXT", help="UTF-8 text to score")
    p.add_argument("-c", "--ctx", type=positive_int, default=None, help="window length (default 512, or the base's)")
    p.add_argument("--chunks", type=positive_int, default=None, metavar="N", help="score at most N windows")
    p.add_argument(
        "-b",
        "--batch",
        type=positive_int,
        default=None,
        metavar="B",
        help="tokens per forward pass: >= ctx runs B/ctx windows at once, < ctx splits a window (default ctx)",
    )
    p.add_argument("--json", action="store_true", help='print the result as JSON (its last line: {"ppl": ...})')
    p.add_argument("--save-logits", default=None, metavar="FILE", help="save log-probabilities (.npz) as a KLD base")
    p.add_argument("--kld-base", default=None, metavar="FILE", help="KL divergence from a --save-logits file")
    p.add_argument("-t", "--threads", type=threads, default=None, help="threads (default: physical cores)")
    p.add_argument("--quant", choices=list(QUANT_NAMES), default=None, help="quantize while loading")
    p.set_defaults(func=cmd_perplexity)
    return p
