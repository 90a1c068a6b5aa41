"""The explicit 16-lane micro-kernels (helix_mpi/kernels/jit/simd.py) against NumPy in float64.

Each block writes only its own tile (the rest of the output is checked untouched), handles row
lengths that are not a multiple of 16 (masked tails) and bf16 operands widened on load; the
kernels built on them (partial_attention over every G path, linear at decode batches) match a
float64 reference; and on an AVX-512 host the attention and linear kernels use 512-bit FMAs.
"""
import re

import numpy as np
import pytest
from llvmlite import binding
from numba import njit

from helix_mpi.kernels import from_bf16, linear, partial_attention, to_bf16
from helix_mpi.kernels.jit import simd as S
from test_kernels import ref_attention  # the float64 reference of every kernel test

RNG = np.random.default_rng(16)
WIDTHS = (128, 20, 5)       # full chunks only, a masked tail, a tail alone


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _operand(shape, dtype):
    """(array passed to the block, its float32 value): bf16 bits or float32."""
    a = _rand(*shape)
    if dtype == "bf16":
        bits = to_bf16(a)
        return bits, from_bf16(bits)
    return a, a


@njit
def _scores_4x4_then_1x1(qs, kk, s):
    S.score_block_4x4(qs, 1, kk, 2, 1, s, 3)   # s[1:5, 3:7] = qs[1:5] . kk[2:6]
    S.score_block_1x1(qs, 0, kk, 9, 1, s, 0)   # s[0, 0] = qs[0] . kk[9]
    S.score_block_2x8(qs, 4, kk, 1, 3, s, 1)   # s[4:6, 1:9] = qs[4:6] . kk[1:24:3] (strided rows)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("D", WIDTHS)
def test_score_block_tile_only(dtype, D):
    qs = _rand(6, D)
    kk, kf = _operand((24, D), dtype)
    s = np.full((6, 10), 7.0, np.float32)
    _scores_4x4_then_1x1(qs, kk, s)
    ref = np.full((6, 10), 7.0)
    ref[1:5, 3:7] = qs[1:5].astype(np.float64) @ kf[2:6].T.astype(np.float64)
    ref[0, 0] = qs[0].astype(np.float64) @ kf[9].astype(np.float64)
    ref[4:6, 1:9] = qs[4:6].astype(np.float64) @ kf[1:24:3].T.astype(np.float64)
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)


def _pack(qs):
    # the layout of kernels/tiling.py: min(G, 4) heads per vector, G / min(G, 4) vectors per segment
    G, D = qs.shape
    per_vector = min(G, 4)
    vectors, seg = G // per_vector, 16 // per_vector
    qp = np.empty((vectors * D // seg, 16), np.float32)
    for h in range(G):
        r, lane_group = divmod(h, per_vector)
        for d in range(D):
            qp[(d // seg) * vectors + r, lane_group * seg + d % seg] = qs[h, d]
    return qp


@njit
def _bcast_all(qp2, qp4, qp8, qp16, kk, s2, s4, s8, s16, stride):
    # s[:, 2:10] = q . kk[1 + j*stride] (j < 8), s[:, 12] = q . kk[11]
    S.bcast_score_block_2x8(qp2, kk, 1, stride, s2, 2)
    S.bcast_score_block_2x1(qp2, kk, 11, 1, s2, 12)
    S.bcast_score_block_4x8(qp4, kk, 1, stride, s4, 2)
    S.bcast_score_block_4x1(qp4, kk, 11, 1, s4, 12)
    S.bcast_score_block_8x8(qp8, kk, 1, stride, s8, 2)
    S.bcast_score_block_8x1(qp8, kk, 11, 1, s8, 12)
    S.bcast_score_block_16x4(qp16, kk, 1, stride, s16, 2)
    S.bcast_score_block_16x4(qp16, kk, 1 + 4 * stride, stride, s16, 6)
    S.bcast_score_block_16x1(qp16, kk, 11, 1, s16, 12)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("stride", [1, 2])
def test_heads_in_lanes_score_blocks(dtype, stride):
    D = 32
    kk, kf = _operand((16, D), dtype)
    qs = {G: _rand(G, D) for G in (2, 4, 8, 16)}
    s = {G: np.full((G, 16), 7.0, np.float32) for G in qs}
    _bcast_all(*(_pack(qs[G]) for G in (2, 4, 8, 16)), kk, *(s[G] for G in (2, 4, 8, 16)), stride)
    for G, q in qs.items():
        ref = np.full((G, 16), 7.0)
        ref[:, 2:10] = q.astype(np.float64) @ kf[1:1 + 8 * stride:stride].T.astype(np.float64)
        ref[:, 12] = q.astype(np.float64) @ kf[11].astype(np.float64)
        np.testing.assert_allclose(s[G], ref, rtol=1e-5, atol=1e-5, err_msg=f"G={G}")


@njit
def _pv(s, vv, acc):
    S.pv_block_8x2(s, 0, 1, 5, vv, 2, 8, 1, acc)    # acc[0:8] += s[0:8, 1:6] @ vv[2:7]
    S.pv_block_1x4(s, 9, 0, 3, vv, 0, 8, 1, acc)    # acc[9] += s[9, 0:3] @ vv[0:3]
    S.pv_block_2x4(s, 12, 0, 11, vv, 1, 1, 2, acc)  # 8 ways: slot k at row 1 + k // 8 + (k % 8) * 2


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("D", WIDTHS + (40,))
def test_pv_block(dtype, D):
    s = _rand(14, 11)
    vv, vf = _operand((17, D), dtype)
    acc = _rand(14, D)
    ref = acc.astype(np.float64)
    ref[0:8] += s[0:8, 1:6].astype(np.float64) @ vf[2:7].astype(np.float64)
    ref[9] += s[9, 0:3].astype(np.float64) @ vf[0:3].astype(np.float64)
    rows = [1 + k // 8 + (k % 8) * 2 for k in range(11)]
    ref[12:14] += s[12:14, 0:11].astype(np.float64) @ vf[rows].astype(np.float64)
    _pv(s, vv, acc)
    np.testing.assert_allclose(acc, ref, rtol=1e-5, atol=1e-5)


@njit
def _gemm(xt, w, out):
    S.gemm_block_16x1(xt, 0, 0, 3, w, out, 3)  # out[0:16] += x[0:16, 0:3] @ w[0:3]
    S.gemm_block_4x4(xt, 16, 1, 6, w, out, 0)  # out[16:20] += x[16:20, 1:7] @ w[1:7]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("m", (96, 20, 5))
def test_gemm_block(dtype, m):
    x = _rand(21, 8)
    w, wf = _operand((8, m), dtype)
    out = _rand(21, m)
    ref = out.astype(np.float64)
    ref[0:16] += x[0:16, 0:3].astype(np.float64) @ wf[0:3].astype(np.float64)
    ref[16:20] += x[16:20, 1:7].astype(np.float64) @ wf[1:7].astype(np.float64)
    _gemm(np.ascontiguousarray(x.T), w, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@njit
def _row_max(s, row, n):
    return S.row_max(s, row, n)


@pytest.mark.parametrize("n", (1, 5, 16, 17, 40))
def test_row_max(n):
    s = _rand(3, 40)
    s[1, :n] = -np.inf
    s[1, n // 2] = 2.5
    s[1, n:] = 100.0                          # past n: never read
    assert _row_max(s, 1, n) == np.float32(2.5)
    s[1, :n] = -np.inf
    assert _row_max(s, 1, n) == -np.inf


@njit
def _widen(src, r0, stride, n, dst):
    S.widen_rows(src, r0, stride, n, dst)


@pytest.mark.parametrize("D", WIDTHS)
@pytest.mark.parametrize("stride", [1, 2])
def test_widen_rows(D, stride):
    bits, f = _operand((8, D), "bf16")
    dst = np.full((4, D), 9.0, np.float32)
    _widen(bits, 2, stride, 3, dst)
    np.testing.assert_array_equal(dst[:3], f[2:2 + 3 * stride:stride])
    np.testing.assert_array_equal(dst[3], 9.0)


@pytest.mark.parametrize("G", (1, 2, 3, 4, 6, 8, 16))
@pytest.mark.parametrize("D", (64, 20))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_attention_every_g_path(G, D, dtype):
    # G | 16 with D % 16 == 0: heads in lanes; else the dot-product blocks (4x4, 2x8, 1x8)
    # 300 = 8 ways x 37 rows (tiles of 128, 128 and 40 slots) + 4 (an ordinary tile: token tails of
    # every block); 13 = 8 x 1 + 5; 5: no gathered tile; 256 = 8 x 32: no ordinary tile
    B, Kh, C = 4, 2, 300
    q = _rand(B, Kh * G, D)
    k, kf = _operand((B, Kh, C, D), dtype)
    v, vf = _operand((B, Kh, C, D), dtype)
    lengths = np.array([C, 13, 5, 256], np.int64)
    out, lse = partial_attention(q, k, v, lengths)
    ref_out, ref_lse = ref_attention(q, kf, vf, lengths)
    np.testing.assert_allclose(out, ref_out, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(lse, ref_lse, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rows", (1, 2, 3, 8, 13, 16, 17))
@pytest.mark.parametrize("m", (96, 37, 1024))   # 1024: rows 4 KiB apart, padded at 16 rows
def test_linear_decode_batches(rows, m):
    x = _rand(rows, 70)
    w = _rand(70, m)
    ref = x.astype(np.float64) @ w.astype(np.float64)
    out = linear(x, w)
    assert out.shape == (rows, m) and out.flags.c_contiguous   # MPI sends it as one buffer
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(linear(x, to_bf16(w)),
                               x.astype(np.float64) @ from_bf16(to_bf16(w)).astype(np.float64),
                               rtol=1e-4, atol=1e-4)
    wide = _rand(70, 2 * m)[:, ::2]           # a strided view: BLAS path, same result
    np.testing.assert_allclose(linear(x, wide), x.astype(np.float64) @ wide.astype(np.float64),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.skipif("+avx512f" not in binding.get_host_cpu_features().flatten(),
                    reason="the host has no AVX-512")
def test_kernels_use_512_bit_fmas():
    from helix_mpi.kernels.jit.entries import ENTRIES

    for name in ("attention", "linear"):
        kernel, variants = ENTRIES[name]
        # a fresh, uncached compile of the signatures the precompiled library is built for
        options = {k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")}
        fresh = njit(**options)(kernel.py_func)
        for sig in variants:
            fresh.compile(sig)
            asm = fresh.inspect_asm(sig)
            assert len(re.findall(r"vfmadd\w*ps\s[^\n]*zmm", asm)) >= 16, (kernel, sig)
