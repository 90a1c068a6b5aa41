"""Dense per-rank layer kernels: RMSNorm, RoPE, SwiGLU (column shard), linear (row shard).

NumPy (no MPI). These are O(B*H) or GEMV/GEMM at decode batch sizes; NumPy/BLAS is at
memory speed for them. BLAS threading is whatever the process set (OPENBLAS_NUM_THREADS=1 per
rank is recommended when ranks are oversubscribed).

bf16 weights (uint16 bits, see bf16.py) go through a single-threaded Numba GEMM instead of BLAS
(which has no bf16 on the CPU): it streams the weight matrix once, row block by row block,
upcasting 4 rows x 512 columns at a time into an L1 buffer. Float32 weights take the BLAS path
exactly as before.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .bf16 import bf16_to_f32, is_bf16

__all__ = ["rms_norm", "apply_rope", "swiglu", "linear", "rope_inv_freq"]

# Same fastmath subset as attention.py (no nnan/ninf): reassociation lets LLVM vectorise.
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
_RB = 4      # weight rows upcast and applied together (4 FMAs per load/store of the output)
_CB = 512    # columns per chunk: 4 x 512 float32 = 8 KiB of upcast weights, L1-resident


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
    # Row blocks of _RB weight rows are streamed in order (sequential reads of w, each element
    # read and upcast once); per chunk of _CB columns the block is upcast into wb, then every
    # batch row b gets out[b, chunk] += sum_r x[b, i0+r] * wb[r] (_RB FMAs per out load/store,
    # two batch rows per sweep share the wb loads). out [B,m] stays in L1/L2 at decode sizes.
    B, n = x.shape
    m = w.shape[1]
    wb = np.empty((_RB, _CB), np.float32)
    for b in range(B):
        for j in range(m):
            out[b, j] = 0.0
    i0 = 0
    while i0 < n:
        rn = min(_RB, n - i0)
        for c0 in range(0, m, _CB):
            cn = min(_CB, m - c0)
            for r in range(rn):
                src = w[i0 + r, c0:c0 + cn]
                dst = wb[r]
                for d in range(cn):
                    dst[d] = bf16_to_f32(src[d])
            if rn == _RB:
                w0 = wb[0]
                w1 = wb[1]
                w2 = wb[2]
                w3 = wb[3]
                b = 0
                while b + 1 < B:
                    xa = x[b]
                    xb = x[b + 1]
                    a0 = xa[i0]
                    a1 = xa[i0 + 1]
                    a2 = xa[i0 + 2]
                    a3 = xa[i0 + 3]
                    e0 = xb[i0]
                    e1 = xb[i0 + 1]
                    e2 = xb[i0 + 2]
                    e3 = xb[i0 + 3]
                    oa = out[b, c0:c0 + cn]
                    ob = out[b + 1, c0:c0 + cn]
                    for d in range(cn):
                        y0 = w0[d]
                        y1 = w1[d]
                        y2 = w2[d]
                        y3 = w3[d]
                        oa[d] += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3
                        ob[d] += e0 * y0 + e1 * y1 + e2 * y2 + e3 * y3
                    b += 2
                if b < B:
                    xa = x[b]
                    a0 = xa[i0]
                    a1 = xa[i0 + 1]
                    a2 = xa[i0 + 2]
                    a3 = xa[i0 + 3]
                    oa = out[b, c0:c0 + cn]
                    for d in range(cn):
                        oa[d] += a0 * w0[d] + a1 * w1[d] + a2 * w2[d] + a3 * w3[d]
            else:  # last rows (n % _RB), one at a time
                for r in range(rn):
                    wr = wb[r]
                    for b in range(B):
                        a0 = x[b, i0 + r]
                        ob = out[b, c0:c0 + cn]
                        for d in range(cn):
                            ob[d] += a0 * wr[d]
        i0 += rn


def _linear_bf16(x, w):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (1, 2) or w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"shape mismatch: x {x.shape} @ w {w.shape}")
    x2 = np.ascontiguousarray(x.reshape(-1, w.shape[0]))
    out = np.empty((x2.shape[0], w.shape[1]), np.float32)
    _linear_bf16_kernel(x2, np.ascontiguousarray(w), out)
    return out.reshape(x.shape[:-1] + (w.shape[1],))


def linear(x, w):
    """x [B,n] @ w [n,m] -> [B,m] float32 (BLAS sgemv/sgemm).

    w may be bf16 storage (uint16 bits, see bf16.py): then a Numba kernel upcasts it while
    streaming it once (result equals x @ from_bf16(w) up to float32 summation order).
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
