"""Flash-decoding partial attention over a local KV shard, and the exact LSE combine.

Pure functions (no MPI). Single-threaded Numba: each MPI rank is one process.

Numba flags: we use fastmath *without* the ``nnan``/``ninf`` flags, because the online softmax
legitimately handles -inf (empty shards) and we must never let LLVM assume it away. Reassociation
(``reassoc``) and contraction (``contract``) are what let LLVM vectorise the dot products and
row updates (docs/design.md section 6: strict serial float sums run at a third of memory speed).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .bf16 import bf16_to_f32, is_bf16

__all__ = ["partial_attention", "combine", "TILE"]

# Safe fastmath subset: no 'nnan' / 'ninf' (we rely on -inf semantics at the edges).
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Tokens per tile: scores of one tile for the G query heads of a KV head live in a [G, TILE]
# buffer (8 x 128 x 4 B = 4 KiB, L1-resident), so every K and V row is streamed once.
TILE = 128


# Software prefetch distance, in tokens: two tiles ahead (K+V of two tiles = 256 KiB at D=128,
# well inside L2). Measured on a 2-core Xeon VM: without it the hardware prefetcher does not
# overlap the DRAM stream with the FMA work and compute time adds to memory time (0.65x STREAM).
_PF = 2 * TILE


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Prefetch (read, high locality) the cache line holding arr.data[idx] (flat element index)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        # i8* so that one declaration serves every dtype (float32 and uint16 caches in one module)
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


def _line_elems(a):
    """Elements of a's dtype per 64 B cache line (a compile-time constant in Numba)."""
    return 64 // a.itemsize


@overload(_line_elems, inline="always")
def _line_elems_ol(a):
    n = 512 // a.dtype.bitwidth  # 16 for float32, 32 for uint16
    return lambda a: n


@njit(cache=True, inline="always")
def _prefetch_rows(a, row, nrows, D):
    # a [C,D] C-contiguous: prefetch rows row..row+nrows-1 (contiguous), one call per 64 B line
    base = row * D
    for j in range(0, nrows * D, _line_elems(a)):
        _prefetch(a, base + j)


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)


@njit(cache=True, fastmath=_FM, inline="always")
def _exp_neg_inplace(x, n, ebits, ef):
    # x[:n] <- exp(x[:n]) for x <= 0, vectorisable (math.exp is a scalar libm call without
    # SVML: ~12 ns each, which alone would cap attention below memory speed).
    # Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, degree-6 Taylor/Horner for e^r
    # (rel. error < 2e-7), 2^k assembled from exponent bits in ebits (int32) read back through
    # ef (a float32 view of the same buffer) in a second loop. x < -87 is clamped (e^-87 ~ 1.6e-38:
    # negligible next to the running max term, which is 1). Returns sum of the results.
    for t in range(n):
        xv = max(x[t], np.float32(-87.0))
        kf = np.floor(xv * _LOG2E + np.float32(0.5))
        r = xv - kf * _LN2_HI
        r = r - kf * _LN2_LO
        p = np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        x[t] = p
        ebits[t] = (np.int32(kf) + np.int32(127)) << np.int32(23)
    tot = np.float32(0.0)
    for t in range(n):
        e = x[t] * ef[t]
        x[t] = e
        tot += e
    return tot


@njit(cache=True, fastmath=_FM, inline="always")
def _write_empty_shard(out, lse, b, h0, G, D):
    # An empty shard: out 0 and lse -inf for the G heads [h0, h0+G) of request b.
    for g in range(G):
        lse[b, h0 + g] = -np.inf
        for d in range(D):
            out[b, h0 + g, d] = 0.0


@njit(cache=True, fastmath=_FM, inline="always")
def _start_group(q, b, h0, G, D, scale, qs, acc, l, m):
    # Pre-scaled queries of one KV group qs [G,D]; running state acc [G,D], l [G], m [G] reset.
    for g in range(G):
        for d in range(D):
            qs[g, d] = q[b, h0 + g, d] * scale
            acc[g, d] = 0.0
        l[g] = 0.0
        m[g] = 0.0  # overwritten on the first tile (first=True)


@njit(cache=True, fastmath=_FM, inline="always")
def _finish_group(out, lse, b, h0, G, D, acc, l, m):
    # out = acc / l, lse = m + log(l) for the G heads of one KV group.
    for g in range(G):
        inv = np.float32(1.0) / l[g]
        lse[b, h0 + g] = m[g] + np.float32(math.log(l[g]))
        for d in range(D):
            out[b, h0 + g, d] = acc[g, d] * inv


@njit(cache=True, fastmath=_FM)
def _attn_kernel(q, k, v, lengths, scale, out, lse):
    # q [B,Qh,D], k/v [B,Kh,C,D], lengths [B] int64, out [B,Qh,D] (written), lse [B,Qh] (written)
    B, Qh, D = q.shape
    Kh = k.shape[1]
    G = Qh // Kh
    qs = np.empty((G, D), np.float32)        # pre-scaled queries of one KV group
    s = np.empty((G, TILE), np.float32)      # scores, then probabilities, of one tile
    acc = np.empty((G, D), np.float32)       # rescaled running sum of p * v
    m = np.empty(G, np.float32)              # running max of scores
    l = np.empty(G, np.float32)              # running sum of exp(score - m)
    ebits = np.empty(TILE, np.int32)         # exponent bits scratch of _exp_neg_inplace
    ef = ebits.view(np.float32)
    for b in range(B):
        n = lengths[b]
        for kh in range(Kh):
            h0 = kh * G
            if n <= 0:
                _write_empty_shard(out, lse, b, h0, G, D)
                continue
            _start_group(q, b, h0, G, D, scale, qs, acc, l, m)
            kk = k[b, kh]  # [C,D]
            vv = v[b, kh]  # [C,D]
            first = True
            for t0 in range(0, n, TILE):
                tn = min(TILE, n - t0)
                # --- scores s[g,t] = qs[g] . k[t0+t]. Register block: 4 tokens x 2 heads = 8
                # independent dot products per d sweep (hides FMA latency; 6 loads per 8 FMAs).
                # 4 K rows (2 KiB) stay in L1 while all G heads use them: each K row is read from
                # memory once. The same rows of the next tile are prefetched meanwhile.
                t = 0
                while t + 3 < tn:
                    if t0 + _PF + t + 3 < n:
                        _prefetch_rows(kk, t0 + _PF + t, 4, D)
                    k0 = kk[t0 + t]
                    k1 = kk[t0 + t + 1]
                    k2 = kk[t0 + t + 2]
                    k3 = kk[t0 + t + 3]
                    g = 0
                    while g + 1 < G:
                        qa = qs[g]
                        qb = qs[g + 1]
                        a0 = np.float32(0.0)
                        a1 = np.float32(0.0)
                        a2 = np.float32(0.0)
                        a3 = np.float32(0.0)
                        b0 = np.float32(0.0)
                        b1 = np.float32(0.0)
                        b2 = np.float32(0.0)
                        b3 = np.float32(0.0)
                        for d in range(D):
                            x = qa[d]
                            y = qb[d]
                            a0 += x * k0[d]
                            a1 += x * k1[d]
                            a2 += x * k2[d]
                            a3 += x * k3[d]
                            b0 += y * k0[d]
                            b1 += y * k1[d]
                            b2 += y * k2[d]
                            b3 += y * k3[d]
                        s[g, t] = a0
                        s[g, t + 1] = a1
                        s[g, t + 2] = a2
                        s[g, t + 3] = a3
                        s[g + 1, t] = b0
                        s[g + 1, t + 1] = b1
                        s[g + 1, t + 2] = b2
                        s[g + 1, t + 3] = b3
                        g += 2
                    if g < G:  # odd G: last head alone
                        qa = qs[g]
                        a0 = np.float32(0.0)
                        a1 = np.float32(0.0)
                        a2 = np.float32(0.0)
                        a3 = np.float32(0.0)
                        for d in range(D):
                            x = qa[d]
                            a0 += x * k0[d]
                            a1 += x * k1[d]
                            a2 += x * k2[d]
                            a3 += x * k3[d]
                        s[g, t] = a0
                        s[g, t + 1] = a1
                        s[g, t + 2] = a2
                        s[g, t + 3] = a3
                    t += 4
                while t < tn:  # tile tail (< 4 tokens)
                    k0 = kk[t0 + t]
                    for g in range(G):
                        qa = qs[g]
                        a0 = np.float32(0.0)
                        for d in range(D):
                            a0 += qa[d] * k0[d]
                        s[g, t] = a0
                    t += 1
                # --- online softmax: one exp per score, one scalar exp per (tile, head).
                for g in range(G):
                    sg = s[g]
                    mx = sg[0]
                    for t in range(1, tn):
                        mx = max(mx, sg[t])
                    if first:
                        m_new = mx
                        alpha = np.float32(0.0)
                    else:
                        m_new = max(m[g], mx)
                        alpha = np.float32(math.exp(m[g] - m_new))
                    for t in range(tn):
                        sg[t] = sg[t] - m_new
                    rs = _exp_neg_inplace(sg, tn, ebits, ef)
                    l[g] = l[g] * alpha + rs
                    m[g] = m_new
                    if not first and alpha != 1.0:
                        ag = acc[g]
                        for d in range(D):
                            ag[d] *= alpha
                first = False
                # --- acc[g] += sum_t p[g,t] v[t0+t]: 2 heads x 4 tokens per d sweep (8 FMAs per
                # 4 V loads + 2 acc load/stores). Each V row read from memory once.
                t = 0
                while t + 3 < tn:
                    if t0 + _PF + t + 3 < n:
                        _prefetch_rows(vv, t0 + _PF + t, 4, D)
                    v0 = vv[t0 + t]
                    v1 = vv[t0 + t + 1]
                    v2 = vv[t0 + t + 2]
                    v3 = vv[t0 + t + 3]
                    g = 0
                    while g + 1 < G:
                        aa = acc[g]
                        ab = acc[g + 1]
                        p0 = s[g, t]
                        p1 = s[g, t + 1]
                        p2 = s[g, t + 2]
                        p3 = s[g, t + 3]
                        r0 = s[g + 1, t]
                        r1 = s[g + 1, t + 1]
                        r2 = s[g + 1, t + 2]
                        r3 = s[g + 1, t + 3]
                        for d in range(D):
                            x0 = v0[d]
                            x1 = v1[d]
                            x2 = v2[d]
                            x3 = v3[d]
                            aa[d] += p0 * x0 + p1 * x1 + p2 * x2 + p3 * x3
                            ab[d] += r0 * x0 + r1 * x1 + r2 * x2 + r3 * x3
                        g += 2
                    if g < G:
                        aa = acc[g]
                        p0 = s[g, t]
                        p1 = s[g, t + 1]
                        p2 = s[g, t + 2]
                        p3 = s[g, t + 3]
                        for d in range(D):
                            aa[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d]
                    t += 4
                while t < tn:
                    v0 = vv[t0 + t]
                    for g in range(G):
                        aa = acc[g]
                        p0 = s[g, t]
                        for d in range(D):
                            aa[d] += p0 * v0[d]
                    t += 1
            _finish_group(out, lse, b, h0, G, D, acc, l, m)


# ----------------------------------------------------------------------------- bf16 caches
# K/V caches stored as bf16 (uint16 bits, see bf16.py) take a separate kernel, so the float32
# kernel above is untouched. Same tiling, online softmax and register blocking, but each block
# of 4 K (or V) rows is first upcast into a [4,D] float32 buffer (2 KiB, L1) that all G heads then
# read: every bf16 row is read from memory once and converted once. The hot loops index 2-D
# arrays directly instead of taking row views: a row view costs Numba an atomic incref/decref
# (NRT calls) per block, which at half the bytes per token would be a large share of the time.
def _upcast_rows(src, r0, nr, dst):
    raise NotImplementedError  # Numba-only (overloaded below)


@overload(_upcast_rows, inline="always")
def _upcast_rows_ol(src, r0, nr, dst):
    # dst[:nr] <- float32 of src[r0:r0+nr] (src [C,D] uint16 bf16 bits or float32 for a mixed
    # pair, e.g. bf16 K with float32 V)
    if src.dtype == types.uint16:
        def impl(src, r0, nr, dst):
            for r in range(nr):
                for d in range(src.shape[1]):
                    dst[r, d] = bf16_to_f32(src[r0 + r, d])
        return impl
    if src.dtype == types.float32:
        def impl(src, r0, nr, dst):
            for r in range(nr):
                for d in range(src.shape[1]):
                    dst[r, d] = src[r0 + r, d]
        return impl
    return None


@njit(cache=True, fastmath=_FM)
def _attn_kernel_bf16(q, k, v, lengths, scale, out, lse):
    # q [B,Qh,D] float32, k/v [B,Kh,C,D] uint16 bf16 bits (or one of them float32), lengths [B]
    # int64, out [B,Qh,D] (written), lse [B,Qh] (written). Same math as _attn_kernel.
    B, Qh, D = q.shape
    Kh = k.shape[1]
    G = Qh // Kh
    qs = np.empty((G, D), np.float32)
    s = np.empty((G, TILE), np.float32)
    acc = np.empty((G, D), np.float32)
    m = np.empty(G, np.float32)
    l = np.empty(G, np.float32)
    ebits = np.empty(TILE, np.int32)
    ef = ebits.view(np.float32)
    kb = np.empty((4, D), np.float32)        # upcast K rows of one register block
    vb = np.empty((4, D), np.float32)        # upcast V rows of one register block
    tm = np.empty(G, np.float32)             # max score of the current tile, per head
    for b in range(B):
        n = lengths[b]
        for kh in range(Kh):
            h0 = kh * G
            if n <= 0:
                _write_empty_shard(out, lse, b, h0, G, D)
                continue
            _start_group(q, b, h0, G, D, scale, qs, acc, l, m)
            kk = k[b, kh]  # [C,D]
            vv = v[b, kh]  # [C,D]
            first = True
            for t0 in range(0, n, TILE):
                tn = min(TILE, n - t0)
                for g in range(G):
                    tm[g] = -np.inf
                # --- scores: 4 tokens x 2 heads per d sweep, as in _attn_kernel; the tile max
                # is kept on the fly (a separate serial max pass cost ~10% of the kernel)
                t = 0
                while t + 3 < tn:
                    if t0 + _PF + t + 3 < n:
                        _prefetch_rows(kk, t0 + _PF + t, 4, D)
                    _upcast_rows(kk, t0 + t, 4, kb)
                    g = 0
                    while g + 1 < G:
                        a0 = np.float32(0.0)
                        a1 = np.float32(0.0)
                        a2 = np.float32(0.0)
                        a3 = np.float32(0.0)
                        b0 = np.float32(0.0)
                        b1 = np.float32(0.0)
                        b2 = np.float32(0.0)
                        b3 = np.float32(0.0)
                        for d in range(D):
                            x = qs[g, d]
                            y = qs[g + 1, d]
                            a0 += x * kb[0, d]
                            a1 += x * kb[1, d]
                            a2 += x * kb[2, d]
                            a3 += x * kb[3, d]
                            b0 += y * kb[0, d]
                            b1 += y * kb[1, d]
                            b2 += y * kb[2, d]
                            b3 += y * kb[3, d]
                        s[g, t] = a0
                        s[g, t + 1] = a1
                        s[g, t + 2] = a2
                        s[g, t + 3] = a3
                        s[g + 1, t] = b0
                        s[g + 1, t + 1] = b1
                        s[g + 1, t + 2] = b2
                        s[g + 1, t + 3] = b3
                        tm[g] = max(tm[g], max(max(a0, a1), max(a2, a3)))
                        tm[g + 1] = max(tm[g + 1], max(max(b0, b1), max(b2, b3)))
                        g += 2
                    if g < G:
                        a0 = np.float32(0.0)
                        a1 = np.float32(0.0)
                        a2 = np.float32(0.0)
                        a3 = np.float32(0.0)
                        for d in range(D):
                            x = qs[g, d]
                            a0 += x * kb[0, d]
                            a1 += x * kb[1, d]
                            a2 += x * kb[2, d]
                            a3 += x * kb[3, d]
                        s[g, t] = a0
                        s[g, t + 1] = a1
                        s[g, t + 2] = a2
                        s[g, t + 3] = a3
                        tm[g] = max(tm[g], max(max(a0, a1), max(a2, a3)))
                    t += 4
                while t < tn:
                    _upcast_rows(kk, t0 + t, 1, kb)
                    for g in range(G):
                        a0 = np.float32(0.0)
                        for d in range(D):
                            a0 += qs[g, d] * kb[0, d]
                        s[g, t] = a0
                        tm[g] = max(tm[g], a0)
                    t += 1
                # --- online softmax (as in _attn_kernel)
                for g in range(G):
                    sg = s[g]
                    mx = tm[g]
                    if first:
                        m_new = mx
                        alpha = np.float32(0.0)
                    else:
                        m_new = max(m[g], mx)
                        alpha = np.float32(math.exp(m[g] - m_new))
                    for t in range(tn):
                        sg[t] = sg[t] - m_new
                    rs = _exp_neg_inplace(sg, tn, ebits, ef)
                    l[g] = l[g] * alpha + rs
                    m[g] = m_new
                    if not first and alpha != 1.0:
                        for d in range(D):
                            acc[g, d] *= alpha
                first = False
                # --- acc[g] += sum_t p[g,t] v[t0+t]: 2 heads x 4 tokens per d sweep
                t = 0
                while t + 3 < tn:
                    if t0 + _PF + t + 3 < n:
                        _prefetch_rows(vv, t0 + _PF + t, 4, D)
                    _upcast_rows(vv, t0 + t, 4, vb)
                    g = 0
                    while g + 1 < G:
                        p0 = s[g, t]
                        p1 = s[g, t + 1]
                        p2 = s[g, t + 2]
                        p3 = s[g, t + 3]
                        r0 = s[g + 1, t]
                        r1 = s[g + 1, t + 1]
                        r2 = s[g + 1, t + 2]
                        r3 = s[g + 1, t + 3]
                        for d in range(D):
                            x0 = vb[0, d]
                            x1 = vb[1, d]
                            x2 = vb[2, d]
                            x3 = vb[3, d]
                            acc[g, d] += p0 * x0 + p1 * x1 + p2 * x2 + p3 * x3
                            acc[g + 1, d] += r0 * x0 + r1 * x1 + r2 * x2 + r3 * x3
                        g += 2
                    if g < G:
                        p0 = s[g, t]
                        p1 = s[g, t + 1]
                        p2 = s[g, t + 2]
                        p3 = s[g, t + 3]
                        for d in range(D):
                            acc[g, d] += (p0 * vb[0, d] + p1 * vb[1, d] + p2 * vb[2, d]
                                          + p3 * vb[3, d])
                    t += 4
                while t < tn:
                    _upcast_rows(vv, t0 + t, 1, vb)
                    for g in range(G):
                        p0 = s[g, t]
                        for d in range(D):
                            acc[g, d] += p0 * vb[0, d]
                    t += 1
            _finish_group(out, lse, b, h0, G, D, acc, l, m)


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
    are upcast row by row inside the kernel while streaming (no float32 copy of the cache), so
    the result equals that of the float32 caches from_bf16(k_cache), from_bf16(v_cache).
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
    kernel = _attn_kernel_bf16 if k_cache.dtype != np.float32 or v_cache.dtype != np.float32 \
        else _attn_kernel
    kernel(q, k_cache, v_cache, lengths, np.float32(1.0 / math.sqrt(D)), out, lse)
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
