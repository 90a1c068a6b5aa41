"""The entry points the kernel wrappers call, with every argument type they call them with.

One table for both ways of running them: Numba's JIT dispatches on the types by itself; the
ahead-of-time library (kernels/aot.py) compiles one C-callable function per row of types. Arrays
are C-contiguous; scalars are passed by value.
"""
from __future__ import annotations

from numba import types

from .attention import attention_kernel
from .bf16 import from_bf16_flat, to_bf16_flat
from .fill import fill_rows, fill_rows_bf16
from .layers import linear_kernel

F32, F64, I64, U16, U32, U64 = (types.float32, types.float64, types.int64, types.uint16, types.uint32,
                                types.uint64)
STORAGE = (F32, U16)  # KV caches and weights: float32, or bf16 bits (kernels/bf16.py)


def array(dtype, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C")


def _attention(k, v):
    # q, k, v, lengths, scale, out, lse, work (the scratch: tiling.attention_work_floats)
    return (array(F32, 3), array(k, 4), array(v, 4), array(I64, 1), F32, array(F32, 3), array(F32, 2),
            array(F32, 1))


# name -> (Numba kernel, argument types of each variant compiled ahead of time; other types, such
# as a float32 K cache with a bf16 V cache, run through Numba's JIT)
ENTRIES = {
    "attention": (attention_kernel, [_attention(c, c) for c in STORAGE]),
    "linear": (linear_kernel, [(array(F32, 2), array(w, 2), array(F32, 2)) for w in STORAGE]),  # xt, w, out
    "to_bf16": (to_bf16_flat, [(array(U32, 1), array(U16, 1))]),
    "from_bf16": (from_bf16_flat, [(array(U16, 1), array(U32, 1))]),
    "fill_rows": (fill_rows, [(U64, array(I64, 1), array(F32, 2), F64, F64)]),
    "fill_rows_bf16": (fill_rows_bf16, [(U64, array(I64, 1), array(U16, 2), array(F32, 1), F64, F64)]),
}
