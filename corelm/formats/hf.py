"""Hugging Face model folders: config.json, one or sharded *.safetensors, tokenizer files."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from corelm.formats import ModelFileError
from corelm.formats.safetensors import read_safetensors


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return data


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def load_hf_tensors(folder: str | PathLike[str]) -> dict[str, tuple[str, np.ndarray]]:
    """All tensors of the folder's safetensors files (sharded through the index, or single)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFileError(f"{index}: no weight_map")
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{folder}: no *.safetensors files (PyTorch .bin checkpoints are not supported)")
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for name in files:
        shard = folder / name
        if not shard.is_file():
            raise ModelFileError(f"{folder}: the index names {name}, which is missing")
        tensors.update(read_safetensors(shard))
    return tensors


# sentence-transformers pooling modes corelm runs (1_Pooling/config.json key -> ModelConfig.pooling)
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}


def sentence_transformers_settings(folder: Path) -> dict[str, Any]:
    """How a sentence-transformers folder turns token states into one vector: {"pooling": mean |
    cls | last, "normalize": bool, "max_tokens": its max_seq_length (0: none)}; {} for a folder
    without modules.json. Modules corelm cannot reproduce raise ModelFileError."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        kinds = {str(m["type"]).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as e:
        raise ModelFileError(f"{modules_file}: cannot read the module list: {e}") from e
    unknown = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unknown:
        raise ModelFileError(f"{modules_file}: sentence-transformers modules {', '.join(unknown)} are not supported")
    settings: dict[str, Any] = {"pooling": "mean", "normalize": "Normalize" in kinds, "max_tokens": 0}
    if "Pooling" in kinds:
        pooling = read_json(folder / kinds["Pooling"] / "config.json")
        modes = [key for key, on in pooling.items() if key.startswith("pooling_mode_") and on]
        if len(modes) != 1 or modes[0] not in _ST_POOLING:
            raise ModelFileError(
                f"{folder / kinds['Pooling']}: pooling {', '.join(modes) or 'none'} is not supported "
                f"(supported: one of {', '.join(_ST_POOLING)})"
            )
        settings["pooling"] = _ST_POOLING[modes[0]]
    bert_config = folder / "sentence_bert_config.json"
    if bert_config.is_file():
        settings["max_tokens"] = int(read_json(bert_config).get("max_seq_length") or 0)
    return settings
