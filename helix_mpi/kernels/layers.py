"""Dense per-rank layer kernels: RMSNorm, RoPE, SwiGLU (column shard), linear (row shard).

NumPy (no MPI). These are O(B*H) or GEMV/GEMM at decode batch sizes; NumPy/BLAS is at
memory speed for them. BLAS threading is whatever the process set (OPENBLAS_NUM_THREADS=1 per
rank is recommended when ranks are oversubscribed).

bf16 weights (uint16 bits, see bf16.py) go through a single-threaded Numba GEMV/GEMM at decode
batch sizes (BLAS has no bf16 on the CPU): it streams the weight matrix once from memory, 8 rows
at a time, upcasting in registers. Float32 weights take the BLAS path exactly as before.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .bf16 import bf16_to_f32, from_bf16, is_bf16

__all__ = ["rms_norm", "apply_rope", "swiglu", "linear", "rope_inv_freq"]

# Same fastmath subset as attention.py (no nnan/ninf): reassociation lets LLVM vectorise.
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
_RB = 8      # weight rows upcast and applied together (8 FMAs per load/store of the output)
# Above this many rows of x (prefill, not decode) the product is compute-bound and BLAS on
# upcast panels of _PANEL_ELEMS weights (1 MiB of float32, L2-resident) is faster.
_GEMM_MAX_ROWS = 16
_PANEL_ELEMS = 1 << 18


def rms_norm(x, weight=None, eps=1e-6):
    """x [B,H] -> x / sqrt(mean(x^2) + eps) * weight, float32 [B,H].

    The mean of squares is accumulated in float64 (exact enough for any H); the scaling is
    applied in float32.
    """
    x = np.asarray(x, dtype=np.float32)
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)   # [B,1] float64
    inv = (1.0 / np.sqrt(ms + eps)).astype(np.float32)
    y = x * inv
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float32)
    return y.astype(np.float32, copy=False)


def rope_inv_freq(D, theta):
    """inv_freq [D/2] float64: theta^(-2i/D)."""
    if D % 2:
        raise ValueError(f"RoPE needs an even head size, got {D}")
    return np.power(float(theta), -np.arange(0, D // 2, dtype=np.float64) * 2.0 / D)


def apply_rope(x, positions, theta=10000.0):
    """Llama rotate-half RoPE. x [B,nh,D], positions [B] int64 (global token positions).

    Angles pos * theta^(-2i/D) in float64 (positions reach millions), cos/sin cast to float32.
    out[..., :D/2] = x1 cos - x2 sin, out[..., D/2:] = x2 cos + x1 sin.
    """
    x = np.asarray(x, dtype=np.float32)
    B, nh, D = x.shape
    pos = np.asarray(positions, dtype=np.int64).reshape(B)
    ang = pos.astype(np.float64)[:, None] * rope_inv_freq(D, theta)[None, :]   # [B,D/2]
    cos = np.cos(ang).astype(np.float32)[:, None, :]                           # [B,1,D/2]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    h = D // 2
    x1 = x[..., :h]
    x2 = x[..., h:]
    out = np.empty_like(x)
    out[..., :h] = x1 * cos - x2 * sin
    out[..., h:] = x2 * cos + x1 * sin
    return out


@njit(cache=True, fastmath=_FM)
def _linear_bf16_kernel(x, w, out):
    # x [B,n] float32, w [n,m] uint16 bf16 bits, out [B,m] float32 (overwritten): out = x @ w.
    # Row blocks of _RB weight rows are streamed in order (sequential reads of w: each element
    # comes from memory once); for each pair of batch rows, one sweep over the m columns upcasts
    # the block's column d in registers and does out[b, d] += sum_r x[b, i0+r] * w[i0+r, d] for
    # both rows (_RB FMAs per load/store of out). With B > 2 the block (_RB x m x 2 bytes) is read
    # again from L2 by the next pair. The r loops have a constant trip count and are unrolled by
    # LLVM, which vectorises the d loops (zero-extend + shift + FMA). No row views are taken in
    # the loops (each would cost Numba an atomic refcount update).
    B, n = x.shape
    m = w.shape[1]
    xa = np.empty(_RB, np.float32)
    xb = np.empty(_RB, np.float32)
    for b in range(B):
        for d in range(m):
            out[b, d] = 0.0
    i0 = 0
    while i0 + _RB <= n:
        b = 0
        while b + 1 < B:
            for r in range(_RB):
                xa[r] = x[b, i0 + r]
                xb[r] = x[b + 1, i0 + r]
            for d in range(m):
                sa = out[b, d]
                sb = out[b + 1, d]
                for r in range(_RB):
                    y = bf16_to_f32(w[i0 + r, d])
                    sa += xa[r] * y
                    sb += xb[r] * y
                out[b, d] = sa
                out[b + 1, d] = sb
            b += 2
        if b < B:  # odd B: last batch row alone
            for r in range(_RB):
                xa[r] = x[b, i0 + r]
            for d in range(m):
                sa = out[b, d]
                for r in range(_RB):
                    sa += xa[r] * bf16_to_f32(w[i0 + r, d])
                out[b, d] = sa
        i0 += _RB
    while i0 < n:  # last rows (n % _RB), one at a time
        for b in range(B):
            a0 = x[b, i0]
            for d in range(m):
                out[b, d] += a0 * bf16_to_f32(w[i0, d])
        i0 += 1


def _linear_bf16(x, w):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"shape mismatch: x {x.shape} @ w {w.shape}")
    n, m = w.shape
    x2 = np.ascontiguousarray(x.reshape(math.prod(x.shape[:-1]), n))
    w = np.ascontiguousarray(w)
    if x2.shape[0] <= _GEMM_MAX_ROWS:
        out = np.empty((x2.shape[0], m), np.float32)
        _linear_bf16_kernel(x2, w, out)
    else:  # prefill-sized batch: compute-bound, BLAS on upcast row panels (never a full copy)
        out = np.zeros((x2.shape[0], m), np.float32)
        step = max(1, _PANEL_ELEMS // max(m, 1))
        for i in range(0, n, step):
            out += x2[:, i:i + step] @ from_bf16(w[i:i + step])
    return out.reshape(x.shape[:-1] + (m,))


def linear(x, w):
    """x [B,n] @ w [n,m] -> [B,m] float32 (BLAS sgemv/sgemm).

    w may be bf16 storage (uint16 bits, see bf16.py): the result equals x @ from_bf16(w) up to
    float32 summation order. Up to 16 rows of x (decode) a Numba kernel upcasts w in registers
    while streaming it once; more rows (prefill) use BLAS on upcast panels of 256K weights.
    """
    if is_bf16(w):
        return _linear_bf16(x, w)
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    return np.dot(x, w)


def swiglu(x, w_gate, w_up):
    """silu(x @ w_gate) * (x @ w_up). x [B,H], w_gate/w_up [H,f] (a column shard, any f).

    w_gate / w_up may be bf16 storage (uint16), see linear."""
    g = linear(x, w_gate)                   # [B,f]
    u = linear(x, w_up)                     # [B,f]
    with np.errstate(over="ignore"):        # exp(-g) -> inf for g << 0 gives silu -> -0, fine
        silu = g / (np.float32(1.0) + np.exp(-g))
    return (silu * u).astype(np.float32, copy=False)
