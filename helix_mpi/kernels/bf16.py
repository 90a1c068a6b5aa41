"""bfloat16 storage without a bfloat16 dtype: ``np.uint16`` arrays holding the upper 16 bits of
the IEEE float32 (sign, 8 exponent bits, 7 mantissa bits).

Storage only: kernels upcast (exactly: append 16 zero bits) and compute in float32. Halving the
bytes of the KV cache and of the weights halves what a decode step must stream from memory.

- ``to_bf16(a)``: float32 -> uint16, round to nearest, ties to even; +-inf stay inf, finite
  values beyond the largest bf16 (3.3895e38) round to inf as IEEE rounding does, NaN stays NaN
  (quiet bit set, sign and top payload bits kept). Relative error <= 2^-8 for normal values.
- ``from_bf16(u)``: uint16 -> float32, exact.
- ``is_bf16(a)``: True for a uint16 NumPy array (the one convention used by every kernel).

Both conversions are single-threaded compiled loops over a flat view (jit/bf16.py; no
temporaries).
"""
from __future__ import annotations

import numpy as np

from .compiled import kernel

__all__ = ["to_bf16", "from_bf16", "is_bf16", "BF16_DTYPE"]

BF16_DTYPE = np.dtype(np.uint16)


def is_bf16(a) -> bool:
    """True if ``a`` is a bf16-storage array (a NumPy array of dtype uint16)."""
    return isinstance(a, np.ndarray) and a.dtype == BF16_DTYPE


def to_bf16(a) -> np.ndarray:
    """float32 (anything castable to it; float64 is first rounded to float32) -> uint16 bf16 bits,
    round to nearest even, same shape, C-contiguous."""
    a = np.asarray(a, dtype=np.float32)
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(a.shape, BF16_DTYPE)
    kernel("to_bf16")(flat.view(np.uint32), out.reshape(-1))
    return out


def from_bf16(u) -> np.ndarray:
    """uint16 bf16 bits -> float32 (exact), same shape, C-contiguous."""
    u = np.asarray(u)
    if u.dtype != BF16_DTYPE:
        raise TypeError(f"from_bf16 expects uint16 bf16 bits, got {u.dtype}")
    flat = np.ascontiguousarray(u).reshape(-1)
    out = np.empty(u.shape, np.float32)
    kernel("from_bf16")(flat, out.reshape(-1).view(np.uint32))
    return out
