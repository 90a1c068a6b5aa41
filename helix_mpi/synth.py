"""Counter-based synthetic tensors: every element is a pure function of (seed, tensor name, index).

A rank generates only its own shard, and every element has the same value whatever the rank
count, so sharded runs and the single-rank reference see identical weights and caches without
the whole model ever existing on one rank. The counter hash is SplitMix64 (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014) applied to key + flat index.
"""
from __future__ import annotations

import hashlib

import numpy as np
from numba import njit

from .kernels.bf16 import _to_bf16_flat

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def tensor_key(seed: int, name: str) -> np.uint64:
    """64-bit key of one named tensor under one seed."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


@njit(cache=True)
def _uniform(key, index):
    """Uniform in [-1, 1) from SplitMix64 of key + (index+1)*golden (uint64 arithmetic wraps)."""
    z = key + (index + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (2.0 / 9007199254740992.0) - 1.0


@njit(cache=True)
def _fill_rows(key, row_starts, out, scale, offset):
    """out[r, c] = offset + scale * u(row_starts[r] + c); out [R, M] float32."""
    for r in range(out.shape[0]):
        base = np.uint64(row_starts[r])
        for c in range(out.shape[1]):
            out[r, c] = offset + scale * _uniform(key, base + np.uint64(c))


@njit(cache=True)
def _fill_rows_bf16(key, row_starts, out, scale, offset):
    """out[r, c] = bf16 (kernels.bf16 rounding) of the float32 that _fill_rows would store; out
    [R, M] uint16, through one float32 row of scratch (no float32 copy of the tensor)."""
    row = np.empty(out.shape[1], dtype=np.float32)  # [M]
    bits = row.view(np.uint32)
    for r in range(out.shape[0]):
        base = np.uint64(row_starts[r])
        for c in range(out.shape[1]):
            row[c] = offset + scale * _uniform(key, base + np.uint64(c))
        _to_bf16_flat(bits, out[r])


def rows(seed: int, name: str, row_starts: np.ndarray, row_length: int, scale: float = 1.0,
         offset: float = 0.0, bf16: bool = False) -> np.ndarray:
    """[R, row_length]: element c of row r has flat index row_starts[r] + c. float32, or with
    `bf16` rounded to bf16 (uint16) one row at a time."""
    key, starts = tensor_key(seed, name), np.ascontiguousarray(row_starts, dtype=np.int64)
    out = np.empty((len(starts), row_length), dtype=np.uint16 if bf16 else np.float32)
    (_fill_rows_bf16 if bf16 else _fill_rows)(key, starts, out, float(scale), float(offset))
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
