"""Explicit 16-lane float32 micro-kernels for the attention and linear kernels (Numba intrinsics).

Why not leave it to LLVM's loop vectoriser: it vectorises one innermost loop at a time, so a dot
product over D = 128 ends in a horizontal sum per score (as much shuffle work as FMA work), and
on this AVX-512 host it picks 256-bit registers (LLVM's default tuning for Intel server cores
prefers ymm), i.e. half the FMA width. The blocks below are GEMM-style register tiles written in
LLVM IR with <16 x float> values (zmm registers under AVX-512; LLVM splits them into 2 ymm or
4 xmm on smaller ISAs, same results):

- ``score_block_NGxNT(qs, g0, kk, r0, stride, s, t)``: s[g0+g, t+j] = qs[g0+g, :] .
  kk[r0+j*stride, :] for g < NG heads, j < NT tokens (stride 1: consecutive rows; else rows of NT
  parts of the sequence, read at once): NG*NT vector accumulators over 16-lane chunks of D,
  reduced together by a shuffle tree (15 adds for 16 sums instead of 16 separate horizontal sums).
- ``pv_block_NGxNC(s, g0, t, n, vv, r0, step, stride, acc)``: acc[g0+g, :] += sum_{k<n} s[g0+g,
  t+k] * vv[row(k), :], row(k) = r0 + (k >> 3) * step + (k & 7) * stride (a tile of 8 ways:
  step 8, stride 1 is row r0 + k): NG heads x NC 16-lane chunks of D held in registers across
  the n tokens.
- ``bcast_score_block_GxNT(qp, kk, r0, stride, s, t)``: the same scores for all G heads of a
  group (G divides 16) with the heads in the vector lanes (up to 4 heads per vector, so that one
  broadcast K segment feeds G/4 FMAs), so no horizontal sum per score (see
  _make_bcast_score_block).
- ``gemm_block_NBxNC(xt, b0, i0, nrows, w, out, ahead)``: out[b0+b, :m] += sum_{r<nrows}
  xt[i0+r, b0+b] * w[i0+r, :] (w [n,m]; out [B,>=m], its columns past m untouched): NB batch rows
  x NC 16-lane column chunks in registers across nrows weight rows; if ahead > 0, w rows
  ``ahead`` further down are prefetched meanwhile.
  xt [n,B] is x transposed: the NB values one weight row needs share a cache line (rows of x
  itself lie n*4 bytes apart, a multiple of 4 KiB for usual widths: 16 of them evict each other
  from one L1 set).

Every array is 2-D C-contiguous; the ``kk`` / ``vv`` / ``w`` operand may be float32 or uint16
bf16 bits (see bf16.py), widened to float32 in registers as loaded (zero-extend, shift left 16).
A row length that is not a multiple of 16 is handled by masked loads and stores (lanes past the
end read 0 and are not written), so there is no scalar tail code. ``wide_vectors()`` marks the
calling kernel so that LLVM's own vectoriser may use 512-bit registers too; ``row_max`` and
``widen_rows`` are the vector row max and bf16 -> float32 copy of (strided) rows the attention
kernel needs.

Numba's on-disk cache of a kernel is keyed on the kernel's own source file, not on this module:
helix-mpi's default NUMBA_CACHE_DIR is therefore one folder per hash of every kernels/*.py source
(launcher.default_numba_cache); with a NUMBA_CACHE_DIR of your own, empty it after editing this module.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..tiling import HEADS_PER_VECTOR

# plus the *_block_* instances at the end of the module
__all__ = ["wide_vectors", "row_max", "widen_rows"]

LANES = 16
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VF = ir.VectorType(_F32, LANES)            # <16 x float>
_VI16 = ir.VectorType(ir.IntType(16), LANES)
_VI32 = ir.VectorType(_I32, LANES)
_VMASK = ir.VectorType(ir.IntType(1), LANES)
_I8P = ir.IntType(8).as_pointer()
_WIDE_ATTRS = ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"')


def _mark_wide(builder):
    # llvmlite's FunctionAttributes only knows keyword attributes; these string attributes are
    # valid LLVM IR. They lift the 256-bit preference of LLVM's Intel server tuning.
    for a in _WIDE_ATTRS:
        set.add(builder.function.attributes, a)


@intrinsic
def wide_vectors(typingctx):
    """Numba: let LLVM use 512-bit vectors in the calling function (no-op without AVX-512)."""
    def codegen(context, builder, signature, args):
        _mark_wide(builder)
        return context.get_dummy_value()
    return types.void(), codegen


# ----------------------------------------------------------------------------- IR helpers
class _Mat:
    """A 2-D C-contiguous Numba array seen from LLVM: element pointer and row length."""

    def __init__(self, context, builder, aryty, value):
        ary = context.make_array(aryty)(context, builder, value)
        self.b = builder
        self.data = ary.data
        self.nrows = builder.extract_value(ary.shape, 0)      # i64
        self.ncols = builder.extract_value(ary.shape, 1)      # i64
        self.bf16 = aryty.dtype == types.uint16

    def ptr(self, row, col):
        """i8* to element [row, col] (row, col: i64 values)."""
        b = self.b
        return b.bitcast(b.gep(self.data, [b.add(b.mul(row, self.ncols), col)]), _I8P)


def _intrinsic_fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _splat(builder, scalar, vecty):
    v = builder.insert_element(ir.Constant(vecty, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_VI32, [0] * LANES))


def _lane_mask(builder, remaining):
    """<16 x i1>: lane < remaining (i64; <= 0 gives an all-false mask)."""
    iota = ir.Constant(ir.VectorType(_I64, LANES), list(range(LANES)))
    return builder.icmp_signed("<", iota, _splat(builder, remaining, ir.VectorType(_I64, LANES)))


def _load(builder, mat, row, col, mask=None):
    """<16 x float> of mat[row, col:col+16], bf16 widened to float32. With a mask, lanes off
    it read 0 and touch no memory; mask None: all 16 lanes (a plain vector load)."""
    p = mat.ptr(row, col)
    vty, align = (_VI16, 2) if mat.bf16 else (_VF, 4)
    if mask is None:
        x = builder.load(builder.bitcast(p, vty.as_pointer()), typ=vty, align=align)
    else:
        fn = _intrinsic_fn(builder, f"llvm.masked.load.{'v16i16' if mat.bf16 else 'v16f32'}.p0",
                           vty, [_I8P, _I32, _VMASK, vty])
        x = builder.call(fn, [p, ir.Constant(_I32, align), mask, ir.Constant(vty, None)])
    if mat.bf16:
        x = builder.shl(builder.zext(x, _VI32), _splat(builder, ir.Constant(_I32, 16), _VI32))
        x = builder.bitcast(x, _VF)
    return x


def _store(builder, mat, row, col, mask, value):
    """mat[row, col:col+16] <- value (float32 mat; only the lanes of mask unless it is None)."""
    p = mat.ptr(row, col)
    if mask is None:
        builder.store(value, builder.bitcast(p, _VF.as_pointer()), align=4)
        return
    fn = _intrinsic_fn(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                       [_VF, _I8P, _I32, _VMASK])
    builder.call(fn, [value, p, ir.Constant(_I32, 4), mask])


def _column_groups(builder, ncols, nchunks, body):
    """Emit body(cols, masks) over groups of nchunks 16-lane chunks covering ncols (i64)
    columns: a loop over the full groups with masks [None]*nchunks (plain loads and stores),
    then, if columns remain, one group with lane masks (lanes past ncols: all-false)."""
    width = ir.Constant(_I64, nchunks * LANES)
    nfull = builder.sdiv(ncols, width)

    def cols_at(base):
        return [builder.add(base, ir.Constant(_I64, c * LANES)) for c in range(nchunks)]

    with cgutils.for_range(builder, nfull) as grp:
        body(cols_at(builder.mul(grp.index, width)), [None] * nchunks)
    base = builder.mul(nfull, width)
    with builder.if_then(builder.icmp_signed("<", base, ncols)):
        cols = cols_at(base)
        body(cols, [_lane_mask(builder, builder.sub(ncols, c)) for c in cols])


def _prefetch(builder, ptr):
    """Software prefetch (read, into all cache levels) of the line holding i8* ptr."""
    fn = _intrinsic_fn(builder, "llvm.prefetch.p0", ir.VoidType(), [_I8P, _I32, _I32, _I32])
    builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _fma(builder, a, b, c):
    fn = _intrinsic_fn(builder, "llvm.fma.v16f32", _VF, [_VF, _VF, _VF])
    return builder.call(fn, [a, b, c])


def _scalar(builder, mat, row, col):
    """float32 scalar mat[row, col] (a float32 matrix)."""
    p = builder.bitcast(mat.ptr(row, col), _F32.as_pointer())
    return builder.load(p, typ=_F32, align=4)


def _strided_rows(builder, r0, stride, n):
    """[r0 + j * stride for j < n] (i64 values)."""
    return [builder.add(r0, builder.mul(stride, ir.Constant(_I64, j))) for j in range(n)]


def _way_row(builder, r0, step, stride, k):
    """i64 row of item k of a tile that interleaves 8 ways (attention.py's `_row`): way k & 7
    starts at r0 + (k & 7) * stride, its items `step` rows apart (step 8, stride 1: row r0 + k)."""
    seven, three = ir.Constant(_I64, 7), ir.Constant(_I64, 3)
    return builder.add(builder.add(r0, builder.mul(builder.ashr(k, three), step)),
                       builder.mul(builder.and_(k, seven), stride))


def _i64(context, builder, ty, value):
    return context.cast(builder, value, ty, types.int64)


def _chunks(builder, ncols):
    """i64: number of 16-lane chunks covering ncols."""
    return builder.sdiv(builder.add(ncols, ir.Constant(_I64, LANES - 1)), ir.Constant(_I64, LANES))


class _Acc:
    """Vector accumulators kept in allocas of the entry block (promoted to registers by LLVM)."""

    def __init__(self, builder, n):
        self.b = builder
        self.slots = [cgutils.alloca_once(builder, _VF) for _ in range(n)]

    def get(self, i):
        return self.b.load(self.slots[i], typ=_VF)

    def set(self, i, v):
        self.b.store(v, self.slots[i])


def _reduce_lanes(builder, vecs, labels, width=LANES):
    """Sum the lane groups of several <16 x float> at once. Lanes of vecs[v] form groups of
    ``width`` consecutive lanes named labels[v][k]. Pairs of vectors are merged by halves
    (2 shuffles + 1 add give two vectors' groups at half width); a last single vector is folded
    within itself. Returns [(vector, {label: lane holding the group's sum})]."""
    vecs, labels = list(vecs), [list(lab) for lab in labels]
    while width > 1 and len(vecs) > 1:
        if len(vecs) % 2:
            vecs.append(ir.Constant(_VF, None))
            labels.append([None] * (LANES // width))
        half = width // 2
        lo = [k * width + i for k in range(LANES // width) for i in range(half)]
        hi = [k * width + half + i for k in range(LANES // width) for i in range(half)]
        lo_idx = ir.Constant(_VI32, lo + [LANES + j for j in lo])
        hi_idx = ir.Constant(_VI32, hi + [LANES + j for j in hi])
        vecs = [builder.fadd(builder.shuffle_vector(x, y, lo_idx),
                             builder.shuffle_vector(x, y, hi_idx))
                for x, y in zip(vecs[::2], vecs[1::2])]
        labels = [lx + ly for lx, ly in zip(labels[::2], labels[1::2])]
        width = half
    results = []
    for v, lab in zip(vecs, labels):
        bases = [k * width for k in range(len(lab))]
        w = width
        while w > 1:
            half = w // 2
            perm = list(range(LANES))
            for base in bases:
                for i in range(half):
                    perm[base + i] = base + half + i
            v = builder.fadd(v, builder.shuffle_vector(v, v, ir.Constant(_VI32, perm)))
            w = half
        results.append((v, {name: base for name, base in zip(lab, bases) if name is not None}))
    return results


def _store_lanes(builder, mat, row, col, v, lanes):
    """mat[row, col:col+len(lanes)] <- lanes of v (mat float32)."""
    n = len(lanes)
    p = builder.bitcast(mat.ptr(row, col), _F32.as_pointer())
    if n == 1:
        builder.store(builder.extract_element(v, ir.Constant(_I32, lanes[0])), p, align=4)
        return
    vt = ir.VectorType(_F32, n)
    part = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), lanes))
    builder.store(part, builder.bitcast(p, vt.as_pointer()), align=4)


def _store_scores(builder, out, g0, t, results):
    """out[g0+h, t+j] <- the sum labelled (h, j), for every labelled lane of results (the tokens
    j of one head in one vector are consecutive by construction)."""
    for v, where in results:
        for h in sorted({h for h, _ in where}):
            js = sorted(j for hh, j in where if hh == h)
            assert js == list(range(js[0], js[0] + len(js)))
            _store_lanes(builder, out, builder.add(g0, ir.Constant(_I64, h)),
                         builder.add(t, ir.Constant(_I64, js[0])), v, [where[h, j] for j in js])


def _vmax(builder, a, b):
    # lane-wise max as x86 maxps computes it (b where either is NaN): no NaN special-casing
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


@intrinsic
def row_max(typingctx, s, row, n):
    """Numba: max(s[row, :n]) of a float32 [R,C] matrix (n >= 1), 16 lanes at a time (LLVM does
    not vectorise a float max reduction without the no-NaN flag, which these kernels avoid)."""
    sig = types.float32(s, row, n)

    def codegen(context, builder, signature, args):
        _mark_wide(builder)
        m = _Mat(context, builder, signature.args[0], args[0])
        row_, n_ = (_i64(context, builder, signature.args[i], args[i]) for i in (1, 2))
        ninf = _splat(builder, ir.Constant(_F32, float("-inf")), _VF)
        best = _Acc(builder, 1)
        best.set(0, ninf)
        fn = _intrinsic_fn(builder, "llvm.masked.load.v16f32.p0", _VF, [_I8P, _I32, _VMASK, _VF])
        with cgutils.for_range(builder, _chunks(builder, n_)) as loop:
            col = builder.mul(loop.index, ir.Constant(_I64, LANES))
            mask = _lane_mask(builder, builder.sub(n_, col))
            x = builder.call(fn, [m.ptr(row_, col), ir.Constant(_I32, 4), mask, ninf])
            best.set(0, _vmax(builder, x, best.get(0)))
        v = best.get(0)
        width = LANES
        while width > 1:
            width //= 2
            perm = [(i + width) % LANES for i in range(LANES)]
            v = _vmax(builder, v, builder.shuffle_vector(v, v, ir.Constant(_VI32, perm)))
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return sig, codegen


@intrinsic
def widen_rows(typingctx, src, r0, stride, nrows, dst):
    """Numba: dst[i, :] = float32 of src[r0 + i * stride, :] for i < nrows (src bf16 bits or
    float32)."""
    sig = types.void(src, r0, stride, nrows, dst)

    def codegen(context, builder, signature, args):
        _mark_wide(builder)
        tys = signature.args
        a = _Mat(context, builder, tys[0], args[0])
        d = _Mat(context, builder, tys[4], args[4])
        r0_, stride_, n_ = (_i64(context, builder, tys[i], args[i]) for i in (1, 2, 3))
        with cgutils.for_range(builder, n_) as row:
            def copy(cols, masks):
                x = _load(builder, a, builder.add(r0_, builder.mul(row.index, stride_)), cols[0], masks[0])
                _store(builder, d, row.index, cols[0], masks[0], x)
            _column_groups(builder, a.ncols, 1, copy)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- score block
def _make_score_block(NG, NT):
    @intrinsic
    def score_block(typingctx, qs, g0, kk, r0, stride, s, t):
        sig = types.void(qs, g0, kk, r0, stride, s, t)

        def codegen(context, builder, signature, args):
            _mark_wide(builder)
            tys = signature.args
            q = _Mat(context, builder, tys[0], args[0])
            k = _Mat(context, builder, tys[2], args[2])
            out = _Mat(context, builder, tys[5], args[5])
            g0_, r0_, stride_, t_ = (_i64(context, builder, tys[i], args[i]) for i in (1, 3, 4, 6))
            rows = _strided_rows(builder, r0_, stride_, NT)
            acc = _Acc(builder, NG * NT)
            for i in range(NG * NT):
                acc.set(i, ir.Constant(_VF, None))
            def chunk(cols, masks):
                col, mask = cols[0], masks[0]
                krows = [_load(builder, k, rows[j], col, mask) for j in range(NT)]
                for g in range(NG):
                    qv = _load(builder, q, builder.add(g0_, ir.Constant(_I64, g)), col, mask)
                    for j in range(NT):
                        acc.set(g * NT + j, _fma(builder, qv, krows[j], acc.get(g * NT + j)))
            _column_groups(builder, q.ncols, 1, chunk)
            labels = [[(g, j)] for g in range(NG) for j in range(NT)]
            results = _reduce_lanes(builder, [acc.get(i) for i in range(NG * NT)], labels)
            _store_scores(builder, out, g0_, t_, results)
            return context.get_dummy_value()

        return sig, codegen

    return score_block


def _make_bcast_score_block(G, NT):
    """Scores of all G heads (G divides 16) x NT tokens, vectorised across heads: GR =
    min(G, HEADS_PER_VECTOR) heads share one query vector, lane h*seg + i (seg = 16/GR) of query
    vector r accumulating q[r*GR + h, d] k[t, d] for d = i mod seg; the NQ = G/GR query vectors of a
    segment share one load of each K segment k[t, c*seg : (c+1)*seg], broadcast from memory to the
    GR lane groups. qp [NQ*D/seg, 16]: qp[c*NQ + r, h*seg + i] = q[r*GR + h, c*seg + i]. One K
    load feeds NQ FMAs (at G = 8: 2; one 8-byte segment per FMA with 8 heads in a vector kept the
    loads, not the FMAs, the limit), and no horizontal sum per score: log2(seg) merge levels at
    the end. NQ*NT accumulators (<= 16)."""
    GR = min(G, HEADS_PER_VECTOR)
    NQ, seg = G // GR, LANES // GR
    assert NQ * NT <= 16

    @intrinsic
    def bcast_score_block(typingctx, qp, kk, r0, stride, s, t):
        sig = types.void(qp, kk, r0, stride, s, t)

        def codegen(context, builder, signature, args):
            _mark_wide(builder)
            tys = signature.args
            q = _Mat(context, builder, tys[0], args[0])
            k = _Mat(context, builder, tys[1], args[1])
            out = _Mat(context, builder, tys[4], args[4])
            r0_, stride_, t_ = (_i64(context, builder, tys[i], args[i]) for i in (2, 3, 5))
            rows = _strided_rows(builder, r0_, stride_, NT)
            acc = _Acc(builder, NQ * NT)          # acc[r * NT + j]: query vector r, token j
            for i in range(NQ * NT):
                acc.set(i, ir.Constant(_VF, None))
            spread = ir.Constant(_VI32, [i % seg for i in range(LANES)])
            segments = builder.sdiv(q.nrows, ir.Constant(_I64, NQ))
            with cgutils.for_range(builder, segments) as loop:
                qrow = builder.mul(loop.index, ir.Constant(_I64, NQ))
                qv = [builder.load(builder.bitcast(q.ptr(builder.add(qrow, ir.Constant(_I64, r)),
                                                         ir.Constant(_I64, 0)), _VF.as_pointer()),
                                   typ=_VF, align=4) for r in range(NQ)]
                col = builder.mul(loop.index, ir.Constant(_I64, seg))
                for j in range(NT):
                    kseg = _load_segment(builder, k, rows[j], col, seg)
                    kb = builder.shuffle_vector(kseg, kseg, spread)
                    for r in range(NQ):
                        acc.set(r * NT + j, _fma(builder, qv[r], kb, acc.get(r * NT + j)))
            labels = [[(r * GR + h, j) for h in range(GR)] for r in range(NQ) for j in range(NT)]
            results = _reduce_lanes(builder, [acc.get(i) for i in range(NQ * NT)], labels, seg)
            _store_scores(builder, out, ir.Constant(_I64, 0), t_, results)
            return context.get_dummy_value()

        return sig, codegen

    return bcast_score_block


def _load_segment(builder, mat, row, col, seg):
    """<seg x float> of mat[row, col:col+seg] (bf16 widened; attention.py passes float32 rows)."""
    p = mat.ptr(row, col)
    segty = ir.VectorType(_F32, seg)
    if not mat.bf16:
        return builder.load(builder.bitcast(p, segty.as_pointer()), typ=segty, align=4)
    u16, i32 = ir.VectorType(ir.IntType(16), seg), ir.VectorType(_I32, seg)
    u = builder.load(builder.bitcast(p, u16.as_pointer()), typ=u16, align=2)
    return builder.bitcast(builder.shl(builder.zext(u, i32), ir.Constant(i32, [16] * seg)), segty)


# ----------------------------------------------------------------------------- rank-1 tiles
class _Rank1Tile:
    """acc[rows, cols] += scalar_at(i, k) * stream[row_k, cols] summed over streamed rows k, the
    len(rows) x len(cols) accumulator vectors held in `regs` (registers) meanwhile: P V (scalars:
    probabilities, stream: V rows) and the GEMM (scalars: x columns, stream: W rows)."""

    def __init__(self, builder, regs, acc, rows, cols, masks, stream, scalar_at):
        self.b, self.regs, self.acc, self.rows = builder, regs, acc, rows
        self.cols, self.masks, self.stream, self.scalar_at = cols, masks, stream, scalar_at
        nc = len(cols)
        for i, row in enumerate(rows):
            for c in range(nc):
                regs.set(i * nc + c, _load(builder, acc, row, cols[c], masks[c]))

    def add_row(self, k, srow):
        """Accumulate streamed row srow (i64) as item k (i64) of the scalars."""
        b, nc = self.b, len(self.cols)
        vs = [_load(b, self.stream, srow, self.cols[c], self.masks[c]) for c in range(nc)]
        for i in range(len(self.rows)):
            x = _splat(b, self.scalar_at(i, k), _VF)
            for c in range(nc):
                self.regs.set(i * nc + c, _fma(b, x, vs[c], self.regs.get(i * nc + c)))

    def store(self):
        nc = len(self.cols)
        for i, row in enumerate(self.rows):
            for c in range(nc):
                _store(self.b, self.acc, row, self.cols[c], self.masks[c], self.regs.get(i * nc + c))


def _rank1_tile(builder, tile, n, stream_row, prefetch=None):
    """tile (_Rank1Tile) over the n rows stream_row(k), k < n; prefetch(srow) is called per row."""
    with cgutils.for_range(builder, n) as k:
        srow = stream_row(k.index)
        tile.add_row(k.index, srow)
        if prefetch is not None:
            prefetch(srow)
    tile.store()


def _rank1_tile_8_ways(builder, tile, n, r0, step, stride):
    """tile (_Rank1Tile) over the rows of a tile of 8 ways (_way_row): blocks of 8 items, one per
    way, unrolled, so that the 8 rows' offsets are computed once (recomputing row(k) for every item
    took ~15 integer instructions per 16 FMAs at 8 heads), then the last n % 8 items."""
    offsets = _strided_rows(builder, ir.Constant(_I64, 0), stride, 8)
    blocks = builder.ashr(n, ir.Constant(_I64, 3))
    with cgutils.for_range(builder, blocks) as blk:
        base = builder.add(r0, builder.mul(blk.index, step))
        k0 = builder.shl(blk.index, ir.Constant(_I64, 3))
        for w in range(8):
            tile.add_row(builder.add(k0, ir.Constant(_I64, w)), builder.add(base, offsets[w]))
    done = builder.shl(blocks, ir.Constant(_I64, 3))
    with cgutils.for_range(builder, builder.sub(n, done)) as j:
        k = builder.add(done, j.index)
        tile.add_row(k, _way_row(builder, r0, step, stride, k))
    tile.store()


# ----------------------------------------------------------------------------- P V block
def _make_pv_block(NG, NC):
    @intrinsic
    def pv_block(typingctx, s, g0, t, n, vv, r0, step, stride, acc):
        sig = types.void(s, g0, t, n, vv, r0, step, stride, acc)

        def codegen(context, builder, signature, args):
            _mark_wide(builder)
            tys = signature.args
            p = _Mat(context, builder, tys[0], args[0])
            v = _Mat(context, builder, tys[4], args[4])
            a = _Mat(context, builder, tys[8], args[8])
            g0_, t_, n_, r0_, step_, stride_ = (_i64(context, builder, tys[i], args[i]) for i in (1, 2, 3, 5, 6, 7))
            regs = _Acc(builder, NG * NC)
            rows = [builder.add(g0_, ir.Constant(_I64, g)) for g in range(NG)]
            def group(cols, masks):
                tile = _Rank1Tile(builder, regs, a, rows, cols, masks, v,
                                  lambda g, k: _scalar(builder, p, rows[g], builder.add(t_, k)))
                _rank1_tile_8_ways(builder, tile, n_, r0_, step_, stride_)
            _column_groups(builder, a.ncols, NC, group)
            return context.get_dummy_value()

        return sig, codegen

    return pv_block


# ----------------------------------------------------------------------------- GEMM block
def _make_gemm_block(NB, NC):
    @intrinsic
    def gemm_block(typingctx, xt, b0, i0, nrows, w, out, ahead):
        sig = types.void(xt, b0, i0, nrows, w, out, ahead)

        def codegen(context, builder, signature, args):
            _mark_wide(builder)
            tys = signature.args
            xm = _Mat(context, builder, tys[0], args[0])
            wm = _Mat(context, builder, tys[4], args[4])
            om = _Mat(context, builder, tys[5], args[5])
            b0_, i0_, nr_, ahead_ = (_i64(context, builder, tys[i], args[i]) for i in (1, 2, 3, 6))
            regs = _Acc(builder, NB * NC)
            brows = [builder.add(b0_, ir.Constant(_I64, b)) for b in range(NB)]

            def prefetch(wrow, cols):
                with builder.if_then(builder.icmp_signed(">", ahead_, ir.Constant(_I64, 0))):
                    for c in range(0, NC, 2 if wm.bf16 else 1):   # one per 64 B line
                        _prefetch(builder, wm.ptr(builder.add(wrow, ahead_), cols[c]))

            def group(cols, masks):
                tile = _Rank1Tile(builder, regs, om, brows, cols, masks, wm,
                                  lambda b, r: _scalar(builder, xm, builder.add(i0_, r), brows[b]))
                _rank1_tile(builder, tile, nr_, lambda r: builder.add(i0_, r),
                            lambda wrow: prefetch(wrow, cols))
            _column_groups(builder, wm.ncols, NC, group)   # out may be wider (padded rows)
            return context.get_dummy_value()

        return sig, codegen

    return gemm_block


# Instances used by attention.py and layers.py: (heads x tokens), (heads x chunks),
# (batch rows x chunks). At most 16 accumulators: 32 zmm registers leave room for the operands.
score_block_4x4 = _make_score_block(4, 4)
score_block_4x1 = _make_score_block(4, 1)
score_block_2x8 = _make_score_block(2, 8)
score_block_2x1 = _make_score_block(2, 1)
score_block_1x8 = _make_score_block(1, 8)
score_block_1x1 = _make_score_block(1, 1)
bcast_score_block_16x4 = _make_bcast_score_block(16, 4)
bcast_score_block_16x1 = _make_bcast_score_block(16, 1)
bcast_score_block_8x8 = _make_bcast_score_block(8, 8)
bcast_score_block_8x1 = _make_bcast_score_block(8, 1)
bcast_score_block_4x8 = _make_bcast_score_block(4, 8)
bcast_score_block_4x1 = _make_bcast_score_block(4, 1)
bcast_score_block_2x8 = _make_bcast_score_block(2, 8)
bcast_score_block_2x1 = _make_bcast_score_block(2, 1)
pv_block_8x2 = _make_pv_block(8, 2)
pv_block_4x4 = _make_pv_block(4, 4)
pv_block_2x4 = _make_pv_block(2, 4)
pv_block_1x4 = _make_pv_block(1, 4)
gemm_block_16x1 = _make_gemm_block(16, 1)
gemm_block_8x2 = _make_gemm_block(8, 2)
gemm_block_4x4 = _make_gemm_block(4, 4)
gemm_block_2x4 = _make_gemm_block(2, 4)
gemm_block_1x4 = _make_gemm_block(1, 4)
