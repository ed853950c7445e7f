"""`corelm quantize`: a GGUF file or Hugging Face folder -> a GGUF file of another weight type.

Which matrix gets which type is recipes.py's (llama.cpp's rules, mixes and fallbacks included);
the summary lists the matrices that took a fallback type. Vectors (norms, biases) are always F32.
The output keeps the tokenizer (Tokenizer.gguf_metadata(): vocabulary, merges, special-token
ids, add-BOS flag, chat template) and the architecture metadata (write_gguf writes the
hyperparameters from the model config; other keys of a GGUF input, such as general.*, are
copied), so llama.cpp and corelm load it as they load the input.

The file is written to OUTPUT.tmp and renamed when complete: a failure at any point leaves no
OUTPUT (and no .tmp) behind.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from corelm import hub
from corelm.formats import ModelFileError
from corelm.formats.gguf_write import write_gguf
from corelm.kernels import PACK_ROWS, SPARSE_LAYOUTS, Weight, WeightType
from corelm.models import load_model
from corelm.models.base import Model
from corelm.quantize import recipes
from corelm.quantize.calibrate import activation_stats
from corelm.quantize.q4_0_opt import quantize_q4_0_optimized
from corelm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_FLOAT_TYPES = (WeightType.F32, WeightType.F16, WeightType.BF16)
# Keys of a GGUF input that describe the old file, not the model: never copied.
_FILE_KEYS = ("general.alignment", "general.file_type", "general.quantization_version")


class UnsupportedTypeError(ValueError):
    """A --type corelm does not write; the message lists the ones it does."""


def check_type(name: str) -> str:
    """The recipe name of a --type (case-insensitive), or a clear error."""
    key = name.lower()
    if not recipes.is_known(key):
        raise UnsupportedTypeError(f"unknown --type {name!r}; choose one of {', '.join(recipes.TYPE_NAMES)}")
    return key


@dataclass
class QuantizeReport:
    """What `quantize_model` did: sizes, tensor types before and after, what stayed as it was."""

    input: str
    output: str
    type: str
    optimize: bool
    input_bytes: int  # on disk (GGUF file, or the folder's safetensors files)
    output_bytes: int
    types_before: Counter = field(default_factory=Counter)  # matrices by type name
    types_after: Counter = field(default_factory=Counter)
    fallbacks: list[tuple[str, int, int, str, str]] = field(default_factory=list)  # (name, rows, cols, wanted, got)
    requantized_from: Counter = field(default_factory=Counter)  # quantized inputs re-quantized
    vectors: int = 0
    calib_tokens: int = 0
    calibrated: int = 0  # matrices weighted by activation statistics
    tokenizer: bool = True
    seconds: float = 0.0


def _input_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def _check_paths(src: Path, out: Path) -> None:
    if not src.exists():
        raise ModelFileError(f"{src}: no such file or folder")
    if out.exists() and out.is_dir():
        raise ValueError(f"{out}: is a folder; give the output .gguf file's path")
    if out.exists() and src.is_file() and out.resolve() == src.resolve():
        raise ValueError(f"{out}: the output would overwrite the input; choose another name")
    parent = out.parent
    if not parent.is_dir():
        raise ValueError(f"{out}: cannot write there: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: cannot write there: folder {parent} is not writable")


def _metadata(model: Model, tokenizer: Tokenizer | None, recipe: str, src: Path) -> tuple[dict[str, Any], str]:
    """Metadata to write beside what write_gguf writes itself, and the model's name."""
    source: dict[str, Any] = dict(getattr(model, "metadata", None) or {})
    name = str(source.get("general.name") or src.stem or src.name)
    probe = gguf.GGUFWriter(None, model.config.arch)  # the keys write_gguf writes from the config
    probe.add_name(name)
    type(model).write_gguf_keys(probe, model.config)
    written = set(probe.kv_data[0])
    meta: dict[str, Any] = {}
    for key, value in source.items():
        if key in written or key in _FILE_KEYS or key.startswith(("tokenizer.", "split.")):
            continue
        if isinstance(value, list) and (not value or isinstance(value[0], list)):
            continue  # GGUF cannot hold empty or nested arrays written this way
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**31) <= value < 2**32:
            log.warning("not copying %s = %d (does not fit 32 bits)", key, value)
            continue
        meta[key] = value
    if tokenizer is not None:
        meta.update(tokenizer.gguf_metadata(vocab_size=model.config.vocab_size))
    meta["general.file_type"] = int(recipes.FILE_TYPES[recipe])
    if recipe not in ("f32", "f16", "bf16"):
        meta["general.quantization_version"] = gguf.GGML_QUANT_VERSION
    return meta, name


def _calibration(
    model: Model, tokenizer: Tokenizer | None, calib: Path, max_tokens: int, show: bool, gram: bool = False
):
    if tokenizer is None:
        raise ValueError("--calib needs a model with a tokenizer (the input has none)")
    try:
        text = calib.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--calib {calib}: cannot read it as UTF-8 text: {e}") from e
    chars = 8 * max_tokens  # tokenize a prefix (growing it as needed), not a whole large file
    ids = tokenizer.encode(text[:chars], special=False)
    while len(ids) < max_tokens and chars < len(text):
        chars *= 2
        ids = tokenizer.encode(text[:chars], special=False)
    ids = ids[:max_tokens]
    window = min(512, model.config.ctx)
    bar = tqdm(total=-(-len(ids) // window), desc="calibrating", unit="window", leave=False, disable=not show)
    try:
        stats = activation_stats(model, ids, window=window, progress=lambda i, n: bar.update(1), gram=gram)
    finally:
        bar.close()
    return stats, len(ids)


def _convert(w: Weight, wtype: WeightType, importance: np.ndarray | None, optimize: bool) -> Weight:
    if optimize and wtype == WeightType.Q4_0:
        return quantize_q4_0_optimized(w.to_float(), importance)
    if w.type == wtype:
        return w
    return Weight.from_float(w.to_float(), wtype)


def quantize_model(
    src: str | PathLike[str],
    out: str | PathLike[str],
    type: str,
    optimize: bool = False,
    pure: bool = False,
    calib: str | PathLike[str] | None = None,
    calib_tokens: int = 2048,
    progress: bool = True,
    keep_sparse: bool = False,
) -> QuantizeReport:
    """Write the model at `src` (GGUF file or Hugging Face folder) to `out` as GGUF with its
    matrices in `type` (see the module docstring for which tensors get what).

    keep_sparse: the matrices of a pruned model (sparse_layout_of) are stored without their zeros where
    their type is the layout's (q8_0), as corelm sparsify stores them (a sparse fine-tune's export).

    pure: every matrix in the type's base type (no Q6_K output matrix, no mix).
    optimize (q4_0 only): choose each block's scale to minimise the squared error, weighted
    by the mean square of each column's activations over the first `calib_tokens` tokens of
    the text file `calib` when given (corelm/quantize/q4_0_opt.py); same Q4_0 layout."""
    t0 = time.perf_counter()
    recipe = check_type(type)
    src, out = hub.resolve(src), Path(out)
    if optimize and recipe != "q4_0":
        raise ValueError(f"--optimize applies to q4_0 only, not {type}")
    if calib is not None and not optimize:
        raise ValueError("--calib is used by --optimize; add --optimize")
    if calib is not None and not Path(calib).is_file():
        raise ValueError(f"--calib {calib}: no such file")
    if calib_tokens < 1:
        raise ValueError(f"--calib-tokens must be positive, got {calib_tokens}")
    _check_paths(src, out)
    model, tokenizer = load_model(src, distributed=False)
    report = QuantizeReport(str(src), str(out), type.lower(), optimize, _input_bytes(src), 0)
    meta, name = _metadata(model, tokenizer, recipe, src)  # before the long part: fails early
    stats: dict[str, np.ndarray] = {}
    if calib is not None:
        stats, report.calib_tokens = _calibration(model, tokenizer, Path(calib), calib_tokens, progress)
    sparse: dict[str, WeightType] = {}
    if keep_sparse and recipe.upper() in {t.name for t in SPARSE_LAYOUTS}:  # else nothing is stored sparse
        for tname, t in model.w.items():
            layout = sparse_layout_of(t.unpacked().to_float()) if isinstance(t, Weight) else None
            if layout is not None:
                sparse[tname] = layout
    write_model(
        model,
        tokenizer,
        src,
        out,
        recipe,
        report,
        pure=pure,
        optimize=optimize,
        stats=stats,
        progress=progress,
        sparse=sparse,
    )
    report.seconds = time.perf_counter() - t0
    return report


# A matrix with this many exact zeros was pruned: trained weights have next to none.
PRUNED_ZEROS = 0.2


def sparse_layout_of(w: np.ndarray) -> WeightType | None:
    """The sparse layout a pruned matrix [n, k] keeps its zeros out with (Q8_0_24 when 2:4, Q8_0_B16 when
    PRUNED_ZEROS of its 16 x 32 tiles are zero, Q8_0_S16 for any other pattern), or None when it is not
    PRUNED_ZEROS zeros."""
    n, k = w.shape
    if n % PACK_ROWS or np.count_nonzero(w) > (1 - PRUNED_ZEROS) * w.size:
        return None
    if k % 4 == 0 and (np.count_nonzero(w.reshape(n, k // 4, 4), axis=2) <= 2).all():
        return WeightType.Q8_0_24
    if k % 32 == 0 and np.mean(~w.reshape(n // PACK_ROWS, PACK_ROWS, k // 32, 32).any(axis=(1, 3))) >= PRUNED_ZEROS:
        return WeightType.Q8_0_B16
    return WeightType.Q8_0_S16


def write_model(
    model: Model,
    tokenizer: Tokenizer | None,
    src: Path,
    out: Path,
    recipe: str,
    report: QuantizeReport,
    pure: bool = False,
    optimize: bool = False,
    stats: dict[str, np.ndarray] | None = None,
    progress: bool = True,
    sparse: dict[str, WeightType] | None = None,
) -> None:
    """Write the loaded `model` (read from `src`) to `out` with its matrices in `recipe`'s types,
    filling in `report`; quantize_model's second half, shared with `corelm sparsify` (which hands
    it a model whose matrices it has pruned, and maps in `sparse` those to store without their zeros to
    the sparse layout, used where their type is its base)."""
    sparse = sparse or {}
    stats = stats or {}
    report.tokenizer = tokenizer is not None
    meta, name = _metadata(model, tokenizer, recipe, src)
    weights: dict[str, Any] = {}
    items = list(model.w.items())
    n_layers, tied = model.config.n_layer, "output.weight" not in model.w
    for tname, t in tqdm(items, desc="quantizing", unit="tensor", leave=False, disable=not progress):
        if not isinstance(t, Weight):
            weights[tname] = np.asarray(t, dtype=np.float32)
            report.vectors += 1
            continue
        w = t.unpacked()  # GGUF layout (the loader may have interleaved it for the kernels)
        report.types_before[w.type.name] += 1
        wanted = w.type if recipes.kept(tname) else recipes.tensor_type(recipe, tname, w.k, n_layers, tied, pure)
        wtype = recipes.fit(wanted, w.k)
        if wtype != wanted:
            report.fallbacks.append((tname, w.n, w.k, wanted.name, wtype.name))
        if w.type not in _FLOAT_TYPES and wtype not in _FLOAT_TYPES and w.type != wtype:
            report.requantized_from[w.type.name] += 1
        importance = stats.get(tname) if optimize and wtype == WeightType.Q4_0 else None
        report.calibrated += importance is not None
        weights[tname] = _convert(w, wtype, importance, optimize)
        if tname in sparse and wtype == sparse[tname].base and w.n % PACK_ROWS == 0:
            weights[tname] = weights[tname].sparse(sparse[tname])
        report.types_after[weights[tname].type.name] += 1

    quantized = copy.copy(model)  # same config and architecture, the new weights
    quantized.w = weights
    write_gguf(quantized, out, tokenizer_metadata=meta, name=name, progress=progress)
    report.output_bytes = out.stat().st_size


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_report(r: QuantizeReport) -> str:
    kind = r.type.upper()
    if r.optimize:
        kind += " (error-minimising scales" + (", activation-weighted)" if r.calibrated else ")")
    lines = [
        f"corelm quantize: {r.input} -> {r.output} as {kind} in {r.seconds:.1f} s",
        f"  size:     {_mib(r.input_bytes)} -> {_mib(r.output_bytes)}"
        + (f" ({100 * r.output_bytes / r.input_bytes:.1f}% of the input)" if r.input_bytes else ""),
        "  matrices: before "
        + ", ".join(f"{n} {t}" for t, n in r.types_before.most_common())
        + "; after "
        + ", ".join(f"{n} {t}" for t, n in r.types_after.most_common()),
        f"  vectors:  {r.vectors} F32 (norms, biases)",
    ]
    if r.fallbacks:
        lines.append(f"  fallbacks ({len(r.fallbacks)}: rows the type's blocks do not divide, as llama.cpp does):")
        lines += [f"    {name} ({n} x {k}): {got}, not {wanted}" for name, n, k, wanted, got in r.fallbacks]
    if r.requantized_from:
        lines.append(
            "  note: re-quantized from already quantized weights ("
            + ", ".join(f"{n} {t}" for t, n in r.requantized_from.items())
            + "): errors add up; quantize from an F32/F16/BF16 source when you can"
        )
    if r.calib_tokens:
        lines.append(f"  calibration: {r.calib_tokens} tokens; {r.calibrated} matrices activation-weighted")
    if not r.tokenizer:
        lines.append("  note: the input has no tokenizer, so neither has the output (llama.cpp needs one)")
    return "\n".join(lines)
