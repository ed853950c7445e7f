"""The KV cache: keys and values of every layer for positions 0 .. capacity-1."""

from __future__ import annotations

import numpy as np

KV_DTYPES = ("float32", "float16")


class KVCache:
    """Per layer, keys and values as [kv_heads, capacity, head_dim] (the attention kernel's layout).

    One allocation up front; `write` copies a step's keys/values in place, so decoding
    allocates nothing. float16 halves the memory at a small precision cost.
    """

    def __init__(self, n_layer: int, n_head_kv: int, capacity: int, head_dim: int, dtype: str = "float32") -> None:
        if dtype not in KV_DTYPES:
            raise ValueError(f"KV cache dtype must be float32 or float16, got {dtype!r}")
        self.capacity = capacity
        self.data = np.zeros((n_layer, 2, n_head_kv, capacity, head_dim), dtype=dtype)  # [L, k/v, H, T, D]

    def keys(self, layer: int) -> np.ndarray:
        return self.data[layer, 0]

    def values(self, layer: int) -> np.ndarray:
        return self.data[layer, 1]

    def write(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store k, v [T, kv_heads, head_dim] at positions pos .. pos+T-1."""
        t = k.shape[0]
        if pos + t > self.capacity:
            raise ValueError(f"context full: positions {pos}..{pos + t} exceed the cache capacity {self.capacity}")
        self.data[layer, 0, :, pos : pos + t] = k.transpose(1, 0, 2)
        self.data[layer, 1, :, pos : pos + t] = v.transpose(1, 0, 2)

    def copy_prefix(self, source: KVCache, n: int) -> None:
        """Keys and values of positions 0 .. n-1 from another cache (the engine's prefix cache)."""
        self.data[:, :, :, :n] = source.data[:, :, :, :n]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes
