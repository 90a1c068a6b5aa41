"""Numba loops of the counter-based synthetic tensors (the names and keys: helix_mpi/synth.py).

Element c of row r is a pure function of (key, row_starts[r] + c): SplitMix64 (Steele, Lea &
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014) of key + (index+1)*golden.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .bf16 import to_bf16_flat

__all__ = ["fill_rows", "fill_rows_bf16"]


@njit(cache=True)
def _uniform(key, index):
    """Uniform in [-1, 1) from SplitMix64 of key + (index+1)*golden (uint64 arithmetic wraps)."""
    z = key + (index + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (2.0 / 9007199254740992.0) - 1.0


@njit(cache=True)
def fill_rows(key, row_starts, out, scale, offset):
    """out[r, c] = offset + scale * u(row_starts[r] + c); key uint64, row_starts [R] int64,
    out [R, M] float32, scale and offset float64."""
    for r in range(out.shape[0]):
        base = np.uint64(row_starts[r])
        for c in range(out.shape[1]):
            out[r, c] = offset + scale * _uniform(key, base + np.uint64(c))


@njit(cache=True)
def fill_rows_bf16(key, row_starts, out, row, scale, offset):
    """out[r, c] = bf16 (kernels.bf16 rounding) of the float32 that fill_rows would store; out
    [R, M] uint16, through row [M] float32 of scratch (no float32 copy of the tensor)."""
    bits = row.view(np.uint32)
    for r in range(out.shape[0]):
        base = np.uint64(row_starts[r])
        for c in range(out.shape[1]):
            row[c] = offset + scale * _uniform(key, base + np.uint64(c))
        to_bf16_flat(bits, out[r])
