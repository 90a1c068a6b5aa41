"""bfloat16 storage without a bfloat16 dtype: ``np.uint16`` arrays holding the upper 16 bits of
the IEEE float32 (sign, 8 exponent bits, 7 mantissa bits).

Storage only: kernels upcast (exactly: append 16 zero bits) and compute in float32. Halving the
bytes of the KV cache and of the weights halves what a decode step must stream from memory.

- ``to_bf16(a)``: float32 -> uint16, round to nearest, ties to even; +-inf stay inf, finite
  values beyond the largest bf16 (3.3895e38) round to inf as IEEE rounding does, NaN stays NaN
  (quiet bit set, sign and top payload bits kept). Relative error <= 2^-8 for normal values.
- ``from_bf16(u)``: uint16 -> float32, exact.
- ``is_bf16(a)``: True for a uint16 NumPy array (the one convention used by every kernel).
- ``bf16_to_f32(u)``: the scalar upcast for use inside Numba kernels (vectorises to a zero-extend
  and a shift).

Both conversions are single-threaded Numba loops over a flat view (no temporaries).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["to_bf16", "from_bf16", "is_bf16", "bf16_to_f32", "BF16_DTYPE"]

BF16_DTYPE = np.dtype(np.uint16)


@intrinsic
def bf16_to_f32(typingctx, u):
    """Numba scalar: bf16 bits (any integer type; the low 16 bits are used) -> float32, exact."""
    if not isinstance(u, types.Integer):
        return None
    sig = types.float32(u)

    def codegen(context, builder, signature, args):
        i16 = ir.IntType(16)
        i32 = ir.IntType(32)
        v = args[0]
        if v.type.width > 16:
            v = builder.trunc(v, i16)
        w = builder.shl(builder.zext(v, i32), ir.Constant(i32, 16))
        return builder.bitcast(w, ir.FloatType())

    return sig, codegen


@njit(cache=True)
def _to_bf16_flat(bits, out):
    # bits: float32 bit patterns (uint32 view), out: uint16, same length
    for i in range(bits.shape[0]):
        u = bits[i]
        if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):       # NaN: keep it a NaN
            r = (u >> np.uint32(16)) | np.uint32(0x0040)
        else:                                                           # round to nearest even
            r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out[i] = np.uint16(r)


@njit(cache=True)
def _from_bf16_flat(u, out_bits):
    for i in range(u.shape[0]):
        out_bits[i] = np.uint32(u[i]) << np.uint32(16)


def is_bf16(a) -> bool:
    """True if ``a`` is a bf16-storage array (a NumPy array of dtype uint16)."""
    return isinstance(a, np.ndarray) and a.dtype == BF16_DTYPE


def to_bf16(a) -> np.ndarray:
    """float32 (anything castable to it; float64 is first rounded to float32) -> uint16 bf16 bits,
    round to nearest even, same shape, C-contiguous."""
    a = np.asarray(a, dtype=np.float32)
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(a.shape, BF16_DTYPE)
    _to_bf16_flat(flat.view(np.uint32), out.reshape(-1))
    return out


def from_bf16(u) -> np.ndarray:
    """uint16 bf16 bits -> float32 (exact), same shape, C-contiguous."""
    u = np.asarray(u)
    if u.dtype != BF16_DTYPE:
        raise TypeError(f"from_bf16 expects uint16 bf16 bits, got {u.dtype}")
    flat = np.ascontiguousarray(u).reshape(-1)
    out = np.empty(u.shape, np.float32)
    _from_bf16_flat(flat, out.reshape(-1).view(np.uint32))
    return out
