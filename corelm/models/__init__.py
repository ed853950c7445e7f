"""Architectures (one file each, found and imported here) and loading a model from a GGUF file or a
Hugging Face folder. The loader asks the registered architectures (base.ARCHITECTURES) which one
reads a file; it knows none of them by name."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from corelm import hub, kernels
from corelm.formats import ModelFileError
from corelm.formats.gguf import GGUFFile, load_gguf
from corelm.formats.hf import is_hf_dir, load_hf_tensors, read_json, sentence_transformers_settings
from corelm.kernels import Weight, WeightType
from corelm.models import adapter as adapters
from corelm.models.base import ARCHITECTURES, Model, ModelConfig, as_weight, head_of_hf, to_f32
from corelm.models.parallel import TensorParallel
from corelm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "graph", "adapter"):
        importlib.import_module(f"{__name__}.{_module.name}")  # each registers its architecture


def architecture_of(gguf_arch: str = "", hf_model_type: str = "") -> type[Model] | None:
    """The registered architecture reading this GGUF architecture name or HF model type."""
    for cls in ARCHITECTURES:
        if gguf_arch in cls.gguf_archs or hf_model_type in cls.hf_model_types:
            return cls
    return None


def _unsupported(where: Path, name: str, kind: str) -> ModelFileError:
    known = ", ".join(sorted(n for cls in ARCHITECTURES for n in getattr(cls, kind)))
    return ModelFileError(f"{where}: unsupported architecture {name!r} (supported: {known})")


KERNEL_TYPES = {int(t) for t in WeightType if not t.packed or t.sparse}  # the types files hold
# load(..., quant=NAME): every matrix whose rows fit the type's blocks is converted while loading
QUANT_NAMES = {t.name.lower(): t for t in WeightType.gguf_types()}


def _progress(items, desc: str, total: int, nbytes: int):
    """A progress bar over tensors, for models big enough to take a while (>= 256 MiB)."""
    return tqdm(items, desc=desc, total=total, unit="tensor", leave=False, disable=nbytes < 256 << 20)


def _quant_type(quant: str | None) -> WeightType | None:
    if quant is None:
        return None
    if quant.lower() not in QUANT_NAMES:
        raise ValueError(f"unknown quant {quant!r}; choose one of {', '.join(QUANT_NAMES)}")
    return QUANT_NAMES[quant.lower()]


def _maybe_quantize(w: Weight, quant: WeightType | None) -> Weight:
    if quant is None or w.type == quant or w.k % quant.block_size:
        return w
    return Weight.from_float(w.to_float(), quant)


# ---- Hugging Face folders ----


def pack_for_kernels(model: Model) -> Model:
    """Interleave matrices into their types' 16-row layouts (kernels.WeightType's *_X16) when the active
    path has kernels for them, all of them in arrays of the process's own (never the file's mapping).

    Matrices used only for embedding lookups stay as they are (a lookup reads one row)."""
    packing, lookup_only = kernels.packing_pays(), model.lookup_only_weights()
    # A sparse matrix gets its zeros back where the active path has no native kernel for its layout (the
    # reference would decode every group on each product) - said in the log.
    slow = {t for t in WeightType if t.sparse and not kernels.sparse_pays(t)}
    for name, w in model.w.items():
        if isinstance(w, Weight) and w.type in slow:
            log.info("%s: no %s kernel on this path; decoded to dense %s", name, w.type.name, w.type.base.name)
            model.w[name] = w.unpacked()
    if packing:
        streamed = [n for n, w in model.w.items() if isinstance(w, Weight) and n not in lookup_only]
        _into_arenas(model.w, streamed)
    return model


# Bytes per arena. Filling one 1.1 GB array took 0.2-3.7 s on the Zen 4 VMs (2 MB pages, the host backing
# them), 64 MB arrays 0.16-0.20 s with 97% of the same pages large (16 MB: 87%).
_ARENA_BYTES = 64 << 20


def _into_arenas(weights: dict[str, Any], names: list[str]) -> None:
    """Packs these matrices one by one straight into arrays of about _ARENA_BYTES (a larger matrix alone),
    in order, and holds them as their views, each 64-byte aligned.

    numpy asks Linux to back an array of 4 MB or more with 2 MB pages; a matrix of its own under 4 MB, or a
    view of the file (a sparse layout is stored as the kernels read it), gets 4 KB ones, and the kernels stream
    the weights faster from the large pages. Decode on Zen 4, 1 / 2 threads (benchmarks/versions.py against
    separate arrays): SmolLM2-135M Q4_1, every matrix under 4 MB, 1.21x / 1.01-1.05x (two runs); TinyLlama-shape
    Q8_0_S16 files, whose matrices had been views of the file, 50% zeros 1.11x / 1.08x, 70% 1.08x / 1.05x."""
    line = 64  # each matrix starts on a cache line
    sizes = [-(-weights[n].nbytes // line) * line for n in names]  # packing keeps a matrix's bytes
    start = 0
    while start < len(names):
        end, total = start + 1, sizes[start]
        while end < len(names) and total + sizes[end] <= _ARENA_BYTES:
            total += sizes[end]
            end += 1
        arena = np.empty(total + line, np.uint8)
        offset = -arena.ctypes.data % line
        for name, size in zip(names[start:end], sizes[start:end], strict=True):
            w = weights[name]
            weights[name] = w.packed(out=arena[offset : offset + w.nbytes].reshape(w.n, -1))
            offset += size
        start = end


def _hf_name_table(names: dict[str, str], n_layer: int) -> dict[str, str]:
    table = {}
    for hf, gg in names.items():
        if "{i}" in hf:
            table.update({hf.format(i=i): gg.format(i=i) for i in range(n_layer)})
        else:
            table[hf] = gg
    return table


def _split(
    model: Model, ranks: tuple[int, int], quant: WeightType | None, release: Callable[[str], None] | None = None
) -> Model:
    """Rank ranks[0]'s share (of ranks[1]) of a model whose weights are still the whole file's:
    its slices of the split tensors, each quantized to `quant` and packed for the kernels right
    after slicing, then `release`d (the file's pages of that tensor leave this process's memory),
    so no rank converts or holds more than its share plus one tensor."""
    cls, config = type(model), model.config
    tp = TensorParallel.plan(cls, config, model.w, *ranks, quant=None if quant is None else int(quant))
    packing, lookup_only = kernels.packing_pays(), model.lookup_only_weights()
    local = {}
    for name, w in model.w.items():
        if isinstance(w, Weight) and w.type.sparse:  # split by rows and columns: the dense layout
            w = w.unpacked()
        part = tp.take(name, w)
        if isinstance(part, Weight):
            part = _maybe_quantize(part, quant)
            if packing and name not in lookup_only:
                part = part.packed()
            if release is not None and part is not w:
                release(name)  # a view of the file faults back only the pages it reads
        local[name] = part
    share = cls(tp.local_config(config), local)
    share.parallel = tp
    return share


def load_hf(
    folder: Path, quant: str | None = None, ranks: tuple[int, int] | None = None
) -> tuple[Model, Tokenizer | None]:
    cfg = read_json(folder / "config.json")
    model_type = str(cfg.get("model_type"))
    cls = architecture_of(hf_model_type=model_type)
    if cls is None:
        raise _unsupported(folder, model_type, "hf_model_types")
    try:
        config = cls.config_from_hf(cfg)
        config.head, config.labels = head_of_hf(cfg)
        adapter = adapters.BottleneckAdapter.from_hf_config(cfg)
    except KeyError as e:
        raise ModelFileError(f"{folder}/config.json: missing {e}") from e
    except ValueError as e:
        raise ModelFileError(f"{folder}/{e}" if str(e).startswith("config.json") else f"{folder}: {e}") from e
    names = dict(cls.hf_names)
    if adapter is not None:
        if not cls.hf_adapter_paths:
            raise ModelFileError(f"{folder}: bottleneck adapters on {model_type} models are not supported")
        config.adapter = adapter[0]
        names |= adapters.hf_names(cls.hf_adapter_paths, adapter[1])
    qtype = _quant_type(quant)
    table = _hf_name_table(names, config.n_layer)
    transposed = cls.hf_transposed
    prefixes = ("", *cls.hf_prefixes)
    tensors = load_hf_tensors(folder)
    weights: dict[str, Any] = {}
    for hf_name, (dtype, array) in _progress(
        tensors.items(), "loading", len(tensors), sum(a.nbytes for _, a in tensors.values())
    ):
        name = next((table[n] for n in _hf_spellings(hf_name, prefixes) if n in table), None)
        if name is None:
            log.debug("ignoring tensor %s", hf_name)
            continue
        if array.ndim == 2:
            if name.split(".", 2)[-1] in transposed:  # blk.N.<name>
                array = np.ascontiguousarray(to_f32(dtype, array).T)
                dtype = "F32"
            weights[name] = _maybe_quantize(as_weight(dtype, array), None if ranks else qtype)
        else:
            weights[name] = to_f32(dtype, array).reshape(-1)
    _drop_unused_head(weights, config)
    tokenizer = Tokenizer.from_hf_dir(folder) if (folder / "tokenizer.json").is_file() else None
    for key, value in sentence_transformers_settings(folder).items():
        setattr(config, key, value)
    model = cls(config, weights)
    if ranks:
        model = _split(model, ranks, qtype)
    return pack_for_kernels(model), tokenizer


def _hf_spellings(name: str, prefixes: tuple[str, ...]) -> list[str]:
    """A parameter name with each of the architecture's prefixes added or removed."""
    return [name] + [p + name for p in prefixes if p] + [name[len(p) :] for p in prefixes if p and name.startswith(p)]


def _drop_unused_head(weights: dict[str, Any], config: ModelConfig) -> None:
    """A classifier's dense layer without the classifier (BERT's pooler in a plain BertModel) is
    never used: leave it out. A classifier the config does not describe is an error."""
    if "cls.output.weight" not in weights:
        config.head, config.labels = "", []
        for name in ("cls.weight", "cls.bias"):
            weights.pop(name, None)
    elif config.head and weights["cls.output.weight"].n != len(config.labels):
        outputs = weights["cls.output.weight"].n
        raise ModelFileError(f"the classifier has {outputs} outputs but the config names {len(config.labels)} labels")
    elif not config.head:
        raise ModelFileError("the weights hold a classifier but config.json names no *Classification architecture")


# ---- GGUF ----


def _gguf_weight(t, quant: WeightType | None) -> Weight | np.ndarray:
    if len(t.shape) == 1:
        flat = t.data.reshape(-1)
        if t.type == int(WeightType.F32):
            return flat.view(np.float32)
        return gguf.dequantize(flat, gguf.GGMLQuantizationType(t.type)).astype(np.float32).reshape(-1)
    if len(t.shape) != 2:
        raise ModelFileError(f"tensor {t.name!r} has shape {t.shape}; expected a matrix")
    n, k = t.shape
    if t.type in KERNEL_TYPES:
        return _maybe_quantize(Weight(t.data, WeightType(t.type), n, k), quant)
    # A type with no native kernel (IQ*, Q2_K, Q3_K, Q8_K, ...: anything outside WeightType):
    # dequantize once at load.
    qtype = gguf.GGMLQuantizationType(t.type)
    dense = gguf.dequantize(t.data, qtype).astype(np.float32).reshape(n, k)
    target = quant or (WeightType.Q8_0 if k % 32 == 0 else WeightType.F32)
    log.info("%s: %s has no native kernel yet; converted to %s", t.name, qtype.name, target.name)
    return Weight.from_float(dense, target)


def load_gguf_model(
    path: Path, quant: str | None = None, ranks: tuple[int, int] | None = None
) -> tuple[Model, Tokenizer | None]:
    f: GGUFFile = load_gguf(path)
    arch = f.architecture
    cls = architecture_of(gguf_arch=arch)
    if cls is None:
        raise _unsupported(path, arch, "gguf_archs")
    if "token_embd.weight" not in f.tensors:
        raise ModelFileError(f"{path}: no token_embd.weight tensor")
    qtype = _quant_type(quant)
    try:
        weights: dict[str, Any] = {}
        for name, t in _progress(f.tensors.items(), "loading", len(f.tensors), f.path.stat().st_size):
            # A rank quantizes its slices only (below): its matrices stay views of the file until then.
            weights[name] = _gguf_weight(t, None if ranks and t.type in KERNEL_TYPES else qtype)
        config = cls.config_from_gguf(f.metadata, arch, weights)
        config.adapter = adapters.BottleneckAdapter.from_gguf(f.metadata)
        tokenizer = Tokenizer.from_gguf_metadata(f.metadata) if "tokenizer.ggml.model" in f.metadata else None
        model = cls(config, weights)
    except ModelFileError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:  # metadata that makes no sense
        raise ModelFileError(f"{path}: {type(e).__name__}: {e}") from e
    _check_shapes(model, path)
    if ranks:
        try:
            model = _split(model, ranks, qtype, release=lambda name: f.release([name]))
        except ValueError as e:
            raise ModelFileError(f"{path}: {e}") from e
    model.metadata = f.metadata
    pack_for_kernels(model)
    # Tensors now held as packed copies no longer need their file pages resident.
    f.release([n for n, t in f.tensors.items() if isinstance(model.w.get(n), Weight) and model.w[n].data is not t.data])
    return model, tokenizer


def _check_shapes(model: Model, path: Path) -> None:
    """Tensor shapes must agree with the config, or a kernel call would be asked for nonsense: the
    architecture's expected shapes, and n_embd for any other norm."""
    c = model.config
    expected = type(model).expected_shapes(c)
    for name, w in model.w.items():
        shape = expected.get(name, (c.n_embd,) if name.endswith("norm.weight") else None)
        have = (w.n, w.k) if isinstance(w, Weight) else tuple(np.shape(w))
        if shape is not None and have != shape:
            size, implied = "x".join(map(str, have)), "x".join(map(str, shape))
            raise ModelFileError(f"{path}: tensor {name} is {size}, the config implies {implied}")


def load_model(
    path: str | PathLike[str],
    quant: str | None = None,
    distributed: bool | None = None,
    ranks: tuple[int, int] | None = None,
) -> tuple[Model, Tokenizer | None]:
    """A model and its tokenizer (None when the file has none) from a GGUF file or an HF folder
    (or a hub name, hf://ORG/REPO[/FILE.gguf]: corelm/hub.py).

    distributed: split the model over the MPI ranks of the job (corelm.distributed: rank 0 gets a
    model whose steps run on every rank; on the other ranks this call serves rank 0's steps and
    then ends the process). None: when mpirun started more than one rank. ranks (rank, size):
    just load that rank's share (what each rank does; no MPI)."""
    path = hub.resolve(path)
    if distributed is None:
        from corelm.distributed import launched_ranks

        distributed = launched_ranks() > 1
    if distributed and ranks is None:
        from corelm.distributed import load_distributed

        return load_distributed(path, quant)
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ModelFileError(f"{path}: not a GGUF file (expected a .gguf file or a Hugging Face folder)")
        return load_gguf_model(path, quant, ranks)
    if is_hf_dir(path):
        return load_hf(path, quant, ranks)
    if path.is_dir():
        raise ModelFileError(f"{path}: a folder without config.json is not a Hugging Face model folder")
    raise ModelFileError(f"{path}: no such file or folder")
