"""Numba loops of the bf16 conversions (the wrappers and the storage convention: kernels/bf16.py)."""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["to_bf16_flat", "from_bf16_flat"]


@njit(cache=True)
def to_bf16_flat(bits, out):
    # bits [n] float32 bit patterns (uint32 view) -> out [n] uint16, round to nearest even
    for i in range(bits.shape[0]):
        u = bits[i]
        if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):       # NaN: keep it a NaN
            r = (u >> np.uint32(16)) | np.uint32(0x0040)
        else:                                                           # round to nearest even
            r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out[i] = np.uint16(r)


@njit(cache=True)
def from_bf16_flat(u, out_bits):
    # u [n] uint16 -> out_bits [n] uint32 (the float32 bit patterns, exact)
    for i in range(u.shape[0]):
        out_bits[i] = np.uint32(u[i]) << np.uint32(16)
