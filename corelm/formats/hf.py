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
