"""Numba kernel of the decode-batch projection (the wrapper is kernels/layers.linear).

Single-threaded GEMM on simd.gemm_block: it streams the weight matrix once from memory, 16 rows
at a time, bf16 upcast in registers. It allocates nothing (kernels/aot.py compiles it ahead of
time into code that needs no Numba runtime).
"""
from __future__ import annotations

from numba import njit

from ..tiling import WEIGHT_ROWS_PER_BLOCK as _RB
from .simd import (gemm_block_1x4, gemm_block_2x4, gemm_block_4x4, gemm_block_8x2, gemm_block_16x1,
                   wide_vectors)

__all__ = ["linear_kernel"]


@njit(cache=True)
def linear_kernel(xt, w, out):
    # xt [n,B] float32 (x transposed, see simd.gemm_block), w [n,m] float32 or uint16 bf16 bits,
    # out [B,>=m] float32 (overwritten): out[:, :m] = x @ w (wider rows: see layers._gemm). w is
    # streamed once, in blocks of _RB rows (_RB x m: 114-229 KiB at m = 3584, L2-resident while
    # every batch row uses it); the next block is prefetched meanwhile. In a block, up to 16 batch
    # rows x 16 (or 8 x 32) columns of out stay in registers across the _RB rows (simd).
    wide_vectors()
    n, B = xt.shape
    out[:] = 0.0
    for i0 in range(0, n, _RB):
        nr = min(_RB, n - i0)
        ahead = _RB if i0 + 2 * _RB <= n else 0
        b = 0
        while b + 16 <= B:
            gemm_block_16x1(xt, b, i0, nr, w, out, ahead)
            ahead = 0
            b += 16
        while b + 8 <= B:
            gemm_block_8x2(xt, b, i0, nr, w, out, ahead)
            ahead = 0          # the block is in cache for the next batch rows
            b += 8
        while b + 4 <= B:
            gemm_block_4x4(xt, b, i0, nr, w, out, ahead)
            ahead = 0
            b += 4
        while b + 2 <= B:
            gemm_block_2x4(xt, b, i0, nr, w, out, ahead)
            ahead = 0
            b += 2
        if b < B:
            gemm_block_1x4(xt, b, i0, nr, w, out, ahead)
