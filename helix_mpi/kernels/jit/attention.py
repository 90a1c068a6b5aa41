"""Numba kernel of the flash-decoding partial attention (the wrapper is kernels/attention.py).

Per KV group and tile of TILE tokens: scores (simd.py micro-kernels: the G query heads in the
lanes of 16-wide vectors, up to 4 per vector, when G divides 16 (bf16 K: and G >= 8,
tiling.heads_in_lanes), else register tiles of dot products), an online
softmax (vectorised exp), then P.V with up to 8 heads x 32 columns of the output in registers.
A tile gathers its tokens from WAYS = 8 parts of the sequence (tiling.py), so that the blocks of 8
K and V rows the micro-kernels read come from 8 pages at once.
The kernel allocates nothing: its scratch arrays come from the caller (so that it can be
compiled ahead of time into code that needs no Numba runtime, kernels/aot.py).

Numba flags: we use fastmath *without* the ``nnan``/``ninf`` flags, because the online softmax
legitimately handles -inf (empty shards) and we must never let LLVM assume it away. Reassociation
(``reassoc``) and contraction (``contract``) are what let LLVM vectorise the softmax loops
(docs/design.md section 6: strict serial float sums run at a third of memory speed).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload
from numba.np.arrayobj import populate_array

from ..tiling import (HEADS_PER_VECTOR, L1_V_BYTES, PV_CHUNK, STREAMED_KV_BYTES, TILE, WAYS,
                      heads_in_lanes)
from .simd import (bcast_score_block_2x1, bcast_score_block_2x8, bcast_score_block_4x1,
                   bcast_score_block_4x8, bcast_score_block_8x1, bcast_score_block_8x8,
                   bcast_score_block_16x1, bcast_score_block_16x4, pv_block_1x4, pv_block_2x4,
                   pv_block_4x4, pv_block_8x2, row_max, score_block_1x1, score_block_1x8,
                   score_block_2x1, score_block_2x8, score_block_4x1, score_block_4x4,
                   wide_vectors, widen_rows)

__all__ = ["attention_kernel"]

# Safe fastmath subset: no 'nnan' / 'ninf' (we rely on -inf semantics at the edges).
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}



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


def _k_rows(kk, r0, stride, nrows, kbuf):
    raise NotImplementedError  # Numba-only (overloaded below)


@overload(_k_rows, inline="always")
def _k_rows_ol(kk, r0, stride, nrows, kbuf):
    # (float32 [R,D] matrix, first row, row stride) holding K rows r0 + i*stride, i < nrows: the
    # cache itself if it is float32, else those rows widened once into kbuf [>= nrows, D] (then
    # read by every head)
    if kk.dtype == types.float32:
        return lambda kk, r0, stride, nrows, kbuf: (kk, r0, stride)

    def impl(kk, r0, stride, nrows, kbuf):
        widen_rows(kk, r0, stride, nrows, kbuf)
        return kbuf, 0, 1
    return impl


@njit(cache=True, inline="always")
def _row(base, step, stride, t):
    # cache row of slot t of a tile that interleaves 8 ways: way t & 7 starts at base + (t & 7) *
    # stride and advances `step` rows per 8 slots (step 8, stride 1: row base + t; simd._way_row)
    return base + (t >> 3) * step + (t & 7) * stride


@njit(cache=True, inline="always")
def _pack_heads(qs, qp):
    # qp [G*D/16, 16] <- qs [G,D], GR = min(G, 4) heads per vector (tiling.HEADS_PER_VECTOR), NQ
    # = G/GR vectors per K segment of seg = 16/GR floats: qp[c*NQ + r, h*seg + i] = qs[r*GR + h,
    # c*seg + i]. GR as a literal (G >= 4: 4, G = 2: 2) lets LLVM unroll the segment copies (with
    # GR known only at run time they cost ~4x as much, a prototype measured: once per KV group).
    if qs.shape[0] >= HEADS_PER_VECTOR:
        _pack_heads_by(qs, qp, HEADS_PER_VECTOR)
    else:
        _pack_heads_by(qs, qp, 2)


@njit(cache=True, inline="always")
def _pack_heads_by(qs, qp, GR):
    G, D = qs.shape
    NQ, seg = G // GR, 16 // GR
    for c in range(D // seg):
        for r in range(NQ):
            dst = qp[c * NQ + r]
            for h in range(GR):
                src = qs[r * GR + h]
                for i in range(seg):
                    dst[h * seg + i] = src[c * seg + i]


@njit(cache=True, inline="always")
def _bcast_scores_tile(qp, kk, kbuf, base, step, stride, tn, s):
    # s[:, :tn] = q @ K[rows of the tile's slots].T for the G heads packed in qp [G*D/16,16]
    # (_pack_heads, simd): blocks of 8 slots (one row of each way; G = 16: two blocks of 4),
    # every score in a vector lane, no per-score horizontal sum.
    G = s.shape[0]
    t = 0
    while t + 8 <= tn:
        kr, r0, rs = _k_rows(kk, _row(base, step, stride, t), stride, 8, kbuf)
        if G == 8:
            bcast_score_block_8x8(qp, kr, r0, rs, s, t)
        elif G == 4:
            bcast_score_block_4x8(qp, kr, r0, rs, s, t)
        elif G == 16:
            bcast_score_block_16x4(qp, kr, r0, rs, s, t)
            bcast_score_block_16x4(qp, kr, r0 + 4 * rs, rs, s, t + 4)
        else:
            bcast_score_block_2x8(qp, kr, r0, rs, s, t)
        t += 8
    for t in range(t, tn):
        kr, r0, rs = _k_rows(kk, _row(base, step, stride, t), 1, 1, kbuf)
        if G == 8:
            bcast_score_block_8x1(qp, kr, r0, rs, s, t)
        elif G == 4:
            bcast_score_block_4x1(qp, kr, r0, rs, s, t)
        elif G == 16:
            bcast_score_block_16x1(qp, kr, r0, rs, s, t)
        else:
            bcast_score_block_2x1(qp, kr, r0, rs, s, t)


@njit(cache=True, inline="always")
def _dot_scores_tile(qs, kk, base, step, stride, tn, s):
    # s[:, :tn] = qs @ K[rows of the tile's slots].T; qs [G,D] pre-scaled queries, kk [C,D],
    # s [G,TILE]. Any G and D: dot products along D (16 lanes, masked tail), NG heads x NT slots
    # at a time (a block of 4 or 8 slots stays within one group of 8 ways: rows r0 + j*stride),
    # summed by one shuffle tree per block. Slot blocks outer, head blocks inner: a block of K
    # rows stays in L1 while every head of the group uses it.
    G = qs.shape[0]
    t = 0
    if G % 4 == 0:
        while t + 4 <= tn:
            r0 = _row(base, step, stride, t)
            for g0 in range(0, G, 4):
                score_block_4x4(qs, g0, kk, r0, stride, s, t)
            t += 4
        for t in range(t, tn):
            for g0 in range(0, G, 4):
                score_block_4x1(qs, g0, kk, _row(base, step, stride, t), 1, s, t)
    elif G % 2 == 0:
        while t + 8 <= tn:
            r0 = _row(base, step, stride, t)
            for g0 in range(0, G, 2):
                score_block_2x8(qs, g0, kk, r0, stride, s, t)
            t += 8
        for t in range(t, tn):
            for g0 in range(0, G, 2):
                score_block_2x1(qs, g0, kk, _row(base, step, stride, t), 1, s, t)
    else:
        while t + 8 <= tn:
            r0 = _row(base, step, stride, t)
            for g in range(G):
                score_block_1x8(qs, g, kk, r0, stride, s, t)
            t += 8
        for t in range(t, tn):
            for g in range(G):
                score_block_1x1(qs, g, kk, _row(base, step, stride, t), 1, s, t)


@overload(heads_in_lanes, inline="always")
def _heads_in_lanes_ol(G, D, k_itemsize=4):
    return heads_in_lanes  # the plain-Python rule of tiling.py compiles as it is


@njit(cache=True, inline="always")
def _pv_chunk(n, vv):
    # slots per P.V chunk (tiling.PV_CHUNK) for a group of n tokens of V rows vv [C,D]: whole tiles
    # when a tile's V rows fit in L1 or the group's K + V (as many bytes again) in L2
    row_bytes = vv.shape[1] * vv.itemsize
    if TILE * row_bytes <= L1_V_BYTES or 2 * n * row_bytes <= STREAMED_KV_BYTES:
        return TILE
    return PV_CHUNK


@njit(cache=True, inline="always")
def _pv_tile(s, vv, base, step, stride, tn, acc, chunk):
    # acc[g, :] += sum_t s[g, t] * vv[row of slot t, :] for t < tn; s [G,TILE], vv [C,D],
    # acc [G,D]. Up to 8 heads x 32 columns of acc stay in registers while V rows stream past,
    # chunk by chunk of `chunk` slots (a multiple of 8, _pv_chunk): slot t0 + k of a chunk is at
    # row r0 + (k >> 3) * step + (k & 7) * stride with r0 = base + (t0 >> 3) * step.
    G = acc.shape[0]
    for t0 in range(0, tn, chunk):
        n = min(chunk, tn - t0)
        r0 = base + (t0 >> 3) * step
        if G % 8 == 0:
            for g0 in range(0, G, 8):
                pv_block_8x2(s, g0, t0, n, vv, r0, step, stride, acc)
        elif G % 4 == 0:
            for g0 in range(0, G, 4):
                pv_block_4x4(s, g0, t0, n, vv, r0, step, stride, acc)
        elif G % 2 == 0:
            for g0 in range(0, G, 2):
                pv_block_2x4(s, g0, t0, n, vv, r0, step, stride, acc)
        else:
            for g in range(G):
                pv_block_1x4(s, g, t0, n, vv, r0, step, stride, acc)


@njit(cache=True, fastmath=_FM, inline="always")
def _softmax_tile(s, tn, first, m, l, acc, ebits, ef):
    # Online softmax of one tile: s[g, :tn] <- exp(s - m_new), l and m updated, acc rescaled by
    # exp(m_old - m_new). One vectorised exp per score, one scalar exp per (tile, head).
    for g in range(s.shape[0]):
        sg = s[g]
        mx = row_max(s, g, tn)
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
            for d in range(acc.shape[1]):
                acc[g, d] *= alpha


@njit(cache=True, inline="always")
def _tile(qs, qp, kk, vv, kbuf, base, step, stride, tn, first, s, m, l, acc, ebits, ef, lanes, chunk):
    # One tile of tn slots (rows: _row(base, step, stride, t)): scores, online softmax, P.V.
    if lanes:
        _bcast_scores_tile(qp, kk, kbuf, base, step, stride, tn, s)
    else:
        _dot_scores_tile(qs, kk, base, step, stride, tn, s)
    _softmax_tile(s, tn, first, m, l, acc, ebits, ef)
    _pv_tile(s, vv, base, step, stride, tn, acc, chunk)


@njit(cache=True, inline="always")
def _carve(work, offset, n):
    # work[offset:offset+n], and the next offset on a 64-byte boundary (tiling.attention_work_floats)
    return work[offset:offset + n], offset + (n + 15) // 16 * 16


@intrinsic
def _as_matrix(typingctx, flat, ncols):
    """Numba: a 1-D C-contiguous array seen as a C-contiguous [len // ncols, ncols] matrix (ncols >
    0). Numba's own reshape calls a helper of its runtime, which precompiled code cannot (aot.py)."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
        return None
    matrix = flat.copy(ndim=2, layout="C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(matrix)(context, builder)
        cols = context.cast(builder, args[1], signature.args[1], types.intp)
        rows = builder.sdiv(builder.extract_value(src.shape, 0), cols)
        itemsize = src.itemsize
        populate_array(dst, data=src.data, shape=[rows, cols], strides=[builder.mul(cols, itemsize), itemsize],
                       itemsize=itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, matrix, dst._getvalue())

    return matrix(flat, ncols), codegen


@njit(cache=True, fastmath=_FM)
def attention_kernel(q, k, v, lengths, scale, out, lse, work):
    # q [B,Qh,D] float32; k/v [B,Kh,C,D] float32 or uint16 bf16 bits (each independently: the
    # simd blocks widen bf16 rows in registers as they load them); lengths [B] int64;
    # out [B,Qh,D] (written), lse [B,Qh] (written); work [tiling.attention_work_floats(G, D)]
    # float32 scratch, carved into: qs [G,D] pre-scaled queries of one KV group, s [G,TILE] scores
    # then probabilities of one tile, acc [G,D] rescaled running sum of p * v, m [G] running max
    # of scores, l [G] running sum of exp(score - m), ebits [TILE] int32 exponent bits of
    # _exp_neg_inplace, qp [D*G/16,16] the queries with heads in lanes (0 rows when unused),
    # kbuf [8,D] bf16 K rows widened once.
    wide_vectors()
    B, Qh, D = q.shape
    Kh = k.shape[1]
    G = Qh // Kh
    lanes = heads_in_lanes(G, D, k.itemsize)
    qs, o = _carve(work, 0, G * D)
    s, o = _carve(work, o, G * TILE)
    acc, o = _carve(work, o, G * D)
    m, o = _carve(work, o, G)
    l, o = _carve(work, o, G)
    ef, o = _carve(work, o, TILE)
    qp, o = _carve(work, o, D * G if lanes else 0)
    kbuf, o = _carve(work, o, 8 * D)
    qs, s, acc, ebits = _as_matrix(qs, D), _as_matrix(s, TILE), _as_matrix(acc, D), ef.view(np.int32)
    qp, kbuf = _as_matrix(qp, 16), _as_matrix(kbuf, D)
    for b in range(B):
        n = lengths[b]
        for kh in range(Kh):
            h0 = kh * G
            if n <= 0:
                _write_empty_shard(out, lse, b, h0, G, D)
                continue
            _start_group(q, b, h0, G, D, scale, qs, acc, l, m)
            if lanes:
                _pack_heads(qs, qp)
            kk = k[b, kh]  # [C,D]
            vv = v[b, kh]  # [C,D]
            chunk = _pv_chunk(n, vv)
            # The first WAYS * L tokens in tiles gathered from WAYS parts of L rows (each block of
            # 8 slots reads one row of every part: WAYS pages stream at once, which one core reads
            # ~1.4x faster than one sequential stream, docs/design.md section 6); the last
            # n % WAYS tokens in one ordinary tile. The softmax does not depend on the order.
            L = n // WAYS
            rows = TILE // WAYS  # of each part per gathered tile
            gathered = (L + rows - 1) // rows
            for i in range(gathered + (1 if n > WAYS * L else 0)):  # one call site: _tile is inlined
                if i < gathered:
                    base, step, stride, tn = i * rows, 1, L, WAYS * min(rows, L - i * rows)
                else:
                    base, step, stride, tn = WAYS * L, WAYS, 1, n - WAYS * L
                _tile(qs, qp, kk, vv, kbuf, base, step, stride, tn, i == 0, s, m, l, acc, ebits, ef, lanes,
                      chunk)
            _finish_group(out, lse, b, h0, G, D, acc, l, m)
