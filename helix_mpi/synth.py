"""Counter-based synthetic tensors: every element is a pure function of (seed, tensor name, index).

A rank generates only its own shard, and every element has the same value whatever the rank
count, so sharded runs and the single-rank reference see identical weights and caches without
the whole model ever existing on one rank. The counter hash is SplitMix64 (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014) applied to key + flat index
(the compiled loops: kernels/jit/fill.py).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .kernels.compiled import kernel


def tensor_key(seed: int, name: str) -> np.uint64:
    """64-bit key of one named tensor under one seed."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def rows(seed: int, name: str, row_starts: np.ndarray, row_length: int, scale: float = 1.0,
         offset: float = 0.0, bf16: bool = False) -> np.ndarray:
    """[R, row_length]: element c of row r has flat index row_starts[r] + c. float32, or with
    `bf16` rounded to bf16 (uint16) one row at a time."""
    key, starts = tensor_key(seed, name), np.ascontiguousarray(row_starts, dtype=np.int64)
    if bf16:  # through one float32 row of scratch [row_length]: no float32 copy of the tensor
        out = np.empty((len(starts), row_length), dtype=np.uint16)
        kernel("fill_rows_bf16")(key, starts, out, np.empty(row_length, np.float32), float(scale), float(offset))
    else:
        out = np.empty((len(starts), row_length), dtype=np.float32)
        kernel("fill_rows")(key, starts, out, float(scale), float(offset))
    return out


def matrix_block(seed: int, name: str, shape: tuple[int, int], row_range: tuple[int, int],
                 col_range: tuple[int, int], scale: float = 1.0, offset: float = 0.0,
                 bf16: bool = False) -> np.ndarray:
    """Block [r0:r1, c0:c1] of a virtual [R, C] matrix, float32 (or bf16 storage)."""
    (r0, r1), (c0, c1) = row_range, col_range
    starts = np.arange(r0, r1, dtype=np.int64) * shape[1] + c0
    return rows(seed, name, starts, c1 - c0, scale, offset, bf16)


def vector(seed: int, name: str, length: int, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    return rows(seed, name, np.zeros(1, dtype=np.int64), length, scale, offset)[0]
