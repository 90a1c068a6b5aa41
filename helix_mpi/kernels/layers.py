"""Dense per-rank layer kernels: RMSNorm, RoPE, SwiGLU (column shard), linear (row shard).

NumPy and the compiled GEMM (kernels/compiled.py; no MPI). RMSNorm, RoPE and SiLU are O(B*H);
the projections are GEMV/GEMM at decode batch sizes. BLAS threading is whatever the process set (OPENBLAS_NUM_THREADS=1 per
rank is recommended when ranks are oversubscribed).

Projections at decode batches (2-16 rows of x; 1-16 for bf16 weights, which BLAS cannot read)
go through a single-threaded compiled GEMM (jit/layers.linear_kernel on simd.gemm_block): it
streams the weight matrix once from memory, 16 rows at a time, bf16 upcast in registers. One row of float32
(sgemv) and prefill-sized batches use BLAS.
"""
from __future__ import annotations

import math

import numpy as np

from .bf16 import from_bf16, is_bf16
from .compiled import kernel

__all__ = ["rms_norm", "apply_rope", "swiglu", "linear", "rope_inv_freq"]

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


def _gemm(x2, w):
    """x2 [B,n] (B <= 16) @ w [n,m] through the compiled GEMM -> [B,m] float32.

    At 16 rows the kernel keeps 16 output rows as accumulators between blocks of weight rows
    (simd.gemm_block_16x1); rows a multiple of 4 KiB apart (m = 1024, 2048, 8192, ...) all fall in
    one set of the core's L1 cache (12 ways here) and evict each other, so it then writes rows
    padded by one cache line and the result is copied out (B*m floats, against n*m weights read;
    the README's Performance section gives what that changed)."""
    B, m = x2.shape[0], w.shape[1]
    aliased = B >= 16 and (m * 4) % 4096 == 0
    out = np.empty((B, m + 16 if aliased else m), np.float32)
    kernel("linear")(np.ascontiguousarray(x2.T), w, out)
    return np.ascontiguousarray(out[:, :m]) if aliased else out


def _linear_bf16(x, w):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"shape mismatch: x {x.shape} @ w {w.shape}")
    n, m = w.shape
    x2 = np.ascontiguousarray(x.reshape(math.prod(x.shape[:-1]), n))
    w = np.ascontiguousarray(w)
    if x2.shape[0] <= _GEMM_MAX_ROWS:
        out = _gemm(x2, w)
    else:  # prefill-sized batch: compute-bound, BLAS on upcast row panels (never a full copy)
        out = np.zeros((x2.shape[0], m), np.float32)
        step = max(1, _PANEL_ELEMS // max(m, 1))
        for i in range(0, n, step):
            out += x2[:, i:i + step] @ from_bf16(w[i:i + step])
    return out.reshape(x.shape[:-1] + (m,))


def linear(x, w):
    """x [B,n] @ w [n,m] -> [B,m] float32.

    Decode batches (2 to 16 rows of x) of a C-contiguous float32 w use the compiled kernel
    jit/layers.linear_kernel (w streamed once, register-blocked: measured 3x faster than BLAS
    sgemm at 8 rows on one core, scripts/bench_ffn.py); one row (sgemv, at memory speed) or more than 16 use
    BLAS. w may be bf16 storage (uint16 bits, see bf16.py): the result equals x @ from_bf16(w) up
    to float32 summation order. Up to 16 rows of x the compiled kernel upcasts w in registers while
    streaming it once; more rows (prefill) use BLAS on upcast panels of 256K weights.
    """
    if is_bf16(w):
        return _linear_bf16(x, w)
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 2 and x.ndim >= 1 and x.shape[-1] == w.shape[0] and w.flags.c_contiguous:
        rows = math.prod(x.shape[:-1])
        if 2 <= rows <= _GEMM_MAX_ROWS:
            out = _gemm(x.reshape(rows, w.shape[0]), w)
            return out.reshape(x.shape[:-1] + (w.shape[1],))
    return np.dot(x, w)


def swiglu(x, w_gate, w_up):
    """silu(x @ w_gate) * (x @ w_up). x [B,H], w_gate/w_up [H,f] (a column shard, any f).

    w_gate / w_up may be bf16 storage (uint16), see linear."""
    g = linear(x, w_gate)                   # [B,f]
    u = linear(x, w_up)                     # [B,f]
    with np.errstate(over="ignore"):        # exp(-g) -> inf for g << 0 gives silu -> -0, fine
        silu = g / (np.float32(1.0) + np.exp(-g))
    return (silu * u).astype(np.float32, copy=False)
