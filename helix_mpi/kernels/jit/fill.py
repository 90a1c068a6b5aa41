"""Numba loops of the counter-based synthetic tensors (the names and keys: helix_mpi/synth.py).

Element c of row r is a pure function of (key, row_starts[r] + c): SplitMix64 (Steele, Lea &
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014) of key + (index+1)*golden.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .bf16 import to_bf16_flat

__all__ = ["fill_rows", "fill_rows_bf16"]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _uniform(z):
    """Uniform in [-1, 1) from SplitMix64's output function of z = key + (index+1)*golden (uint64
    arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (2.0 / 9007199254740992.0) - 1.0


@njit(cache=True)
def _row_counter(key, start):
    """z of element 0 of a row starting at index `start`; element c has z + c*golden."""
    return key + (np.uint64(start) + np.uint64(1)) * _GOLDEN


@njit(cache=True)
def fill_rows(key, row_starts, out, scale, offset):
    """out[r, c] = offset + scale * u(row_starts[r] + c); key uint64, row_starts [R] int64,
    out [R, M] float32, scale and offset float64. The counter advances by one addition per
    element (a 64-bit multiply per element costs ~1/4 of the loop: vpmullq runs on one port)."""
    for r in range(out.shape[0]):
        z = _row_counter(key, row_starts[r])
        for c in range(out.shape[1]):
            out[r, c] = offset + scale * _uniform(z)
            z += _GOLDEN


@njit(cache=True)
def fill_rows_bf16(key, row_starts, out, row, scale, offset):
    """out[r, c] = bf16 (kernels.bf16 rounding) of the float32 that fill_rows would store; out
    [R, M] uint16, through row [M] float32 of scratch (no float32 copy of the tensor)."""
    bits = row.view(np.uint32)
    for r in range(out.shape[0]):
        z = _row_counter(key, row_starts[r])
        for c in range(out.shape[1]):
            row[c] = offset + scale * _uniform(z)
            z += _GOLDEN
        to_bf16_flat(bits, out[r])
