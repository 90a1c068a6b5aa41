"""Dense per-rank layer kernels: RMSNorm, RoPE, SwiGLU (column shard), linear (row shard).

Pure NumPy (no MPI). These are O(B*H) or GEMV/GEMM at decode batch sizes; NumPy/BLAS is at
memory speed for them. BLAS threading is whatever the process set (OPENBLAS_NUM_THREADS=1 per
rank is recommended when ranks are oversubscribed).
"""
from __future__ import annotations

import numpy as np

__all__ = ["rms_norm", "apply_rope", "swiglu", "linear", "rope_inv_freq"]


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


def linear(x, w):
    """x [B,n] @ w [n,m] -> [B,m] float32 (BLAS sgemv/sgemm)."""
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    return np.dot(x, w)


def swiglu(x, w_gate, w_up):
    """silu(x @ w_gate) * (x @ w_up). x [B,H], w_gate/w_up [H,f] (a column shard, any f)."""
    g = linear(x, w_gate)                   # [B,f]
    u = linear(x, w_up)                     # [B,f]
    with np.errstate(over="ignore"):        # exp(-g) -> inf for g << 0 gives silu -> -0, fine
        silu = g / (np.float32(1.0) + np.exp(-g))
    return (silu * u).astype(np.float32, copy=False)
