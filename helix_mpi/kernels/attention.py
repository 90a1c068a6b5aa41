"""Flash-decoding partial attention over a local KV shard, and the exact LSE combine.

Pure functions (no MPI). `partial_attention` checks and prepares the arrays and runs the
single-threaded compiled kernel (kernels/jit/attention.py; precompiled or Numba's, see
kernels/compiled.py): each MPI rank is one process.
"""
from __future__ import annotations

import math

import numpy as np

from .bf16 import is_bf16
from .compiled import kernel
from .tiling import TILE, attention_work_floats

__all__ = ["partial_attention", "combine", "TILE"]

def _as_cache(a):
    """C-contiguous uint16 (bf16 bits) kept as is, anything else as C-contiguous float32."""
    if is_bf16(a):
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a, dtype=np.float32)


def partial_attention(q, k_cache, v_cache, lengths):
    """Flash-decoding attention of one decode step over a local KV shard.

    q [B,Qh,D]; k_cache, v_cache [B,Kh,C,D]; lengths [B] int64 (request b uses its first
    lengths[b] <= C cached tokens). GQA: query head h reads KV head h // (Qh // Kh).
    Returns out [B,Qh,D] float32 (softmax(q.k/sqrt(D)) @ v) and lse [B,Qh] float32 (natural
    log of sum_j exp(score_j)). Empty shard: out 0, lse -inf.
    Inputs are converted to C-contiguous float32 only if they are not already (no copy then).

    bf16 storage: k_cache and/or v_cache may be uint16 arrays of bf16 bits (see bf16.py); they
    are upcast inside the kernel while streaming (no float32 copy of the cache: K blocks of 8
    rows into an L1 buffer when the heads share vector lanes, else in registers like V), so the
    result equals that of the float32 caches from_bf16(k_cache), from_bf16(v_cache).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    k_cache = _as_cache(k_cache)
    v_cache = _as_cache(v_cache)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    B, Qh, D = q.shape
    Bk, Kh, C, Dk = k_cache.shape
    if v_cache.shape != k_cache.shape or Bk != B or Dk != D:
        raise ValueError(f"shape mismatch: q {q.shape}, k {k_cache.shape}, v {v_cache.shape}")
    if Kh == 0 or Qh % Kh:
        raise ValueError(f"Qh={Qh} must be a multiple of Kh={Kh}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
    if B and (lengths.min() < 0 or lengths.max() > C):
        raise ValueError(f"lengths must lie in [0, {C}]")
    out = np.empty((B, Qh, D), np.float32)
    lse = np.empty((B, Qh), np.float32)
    work = np.empty(attention_work_floats(Qh // Kh, D), np.float32)
    kernel("attention")(q, k_cache, v_cache, lengths, np.float32(1.0 / math.sqrt(D)), out, lse, work)
    return out, lse


def combine(outs, lses):
    """Exact log-sum-exp combine of P partial attentions.

    outs [P,B,h,D], lses [P,B,h] -> out [B,h,D] float32, lse [B,h] float32 with
    L = log sum_i exp(L_i), O = sum_i exp(L_i - L) O_i. Partials with L_i = -inf contribute
    nothing (even if their O_i is garbage); if all are -inf: out 0, lse -inf, no NaN.
    Computed in float64 (the arrays are tiny: independent of the context length).
    """
    outs = np.asarray(outs, dtype=np.float64)
    lses = np.asarray(lses, dtype=np.float64)
    if outs.shape[:-1] != lses.shape:
        raise ValueError(f"shape mismatch: outs {outs.shape}, lses {lses.shape}")
    valid = np.isfinite(lses)                              # [P,B,h]
    mx = np.max(np.where(valid, lses, -np.inf), axis=0)    # [B,h]
    any_valid = np.isfinite(mx)
    mx_safe = np.where(any_valid, mx, 0.0)
    w = np.where(valid, np.exp(np.where(valid, lses, 0.0) - mx_safe), 0.0)  # [P,B,h]
    wsum = w.sum(axis=0)                                   # [B,h], >= 1 where any_valid
    wsafe = np.where(any_valid, wsum, 1.0)
    o = np.einsum("pbh,pbhd->bhd", w, np.where(valid[..., None], outs, 0.0)) / wsafe[..., None]
    lse = np.where(any_valid, mx_safe + np.log(wsafe), -np.inf)
    return o.astype(np.float32), lse.astype(np.float32)
