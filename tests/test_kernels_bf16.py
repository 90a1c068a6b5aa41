"""bf16 storage (uint16 bits) for the KV cache and the weights: conversions and kernels.

Tolerances:
- Conversions are exact bit-level properties (no tolerance): from_bf16 appends 16 zero bits,
  to_bf16 is round-to-nearest-even, checked exhaustively over all 2^16 bf16 values and the
  float32 values next to every rounding boundary, plus a hypothesis property (relative error
  <= 2^-8 = half a bf16 ulp, for normal numbers).
- partial_attention on bf16 caches is compared with the float32 kernel on from_bf16(caches).
  The upcast is exact and the bf16 kernel performs the same float32 operations in the same order,
  so the results are in practice bitwise equal; we assert 1e-6 absolute (a few float32 ulps of
  the O(1) outputs) so that a different vectorisation choice by LLVM (reassociated float32 sums)
  would still pass, and we also check against the float64 reference at test_kernels.py's 2e-5.
- linear/swiglu on bf16 weights sum the n products in a different order than BLAS does on
  from_bf16(w). Both are float32 sums; their error is of order eps * sum_i |x_i w_ij| (eps =
  1.19e-7; the worst-case bound n*eps is never approached with random signs). We assert
  |y - y64| <= 1e-5 * sum_i |x_i w_ij| against a float64 reference on the same upcast weights:
  ~100x the observed error, and far below the O(1) relative error of any indexing mistake.
"""
import math
import os
import tracemalloc

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helix_mpi.kernels import (TILE, from_bf16, is_bf16, linear, partial_attention, swiglu,
                               to_bf16)
from helix_mpi.kernels import tiling

EPS_BF16_HALF = 2.0 ** -8   # half a bf16 ulp, relative (7 stored mantissa bits)
OUT_ATOL = 1e-6             # bf16 kernel vs float32 kernel on the upcast cache (see docstring)
REF_ATOL = 2e-5             # vs float64 reference, as in test_kernels.py
LIN_REL = 1e-5              # linear/swiglu: times sum_i |x_i w_ij| (see docstring)


def f32_bits(u32):
    return np.asarray(u32, np.uint32).view(np.float32)


# ----------------------------------------------------------------------------- conversions
def test_is_bf16():
    assert is_bf16(np.zeros(3, np.uint16))
    assert not is_bf16(np.zeros(3, np.float32))
    assert not is_bf16(np.zeros(3, np.int16))
    assert not is_bf16([1, 2])


def test_round_trip_exact_for_every_bf16_value():
    u = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f = from_bf16(u)
    assert f.dtype == np.float32 and f.shape == u.shape
    np.testing.assert_array_equal(f.view(np.uint32), u.astype(np.uint32) << 16)  # exact upcast
    nan = np.isnan(f)
    assert nan.sum() == 2 * 127                                  # 0x7F81..0x7FFF, 0xFF81..0xFFFF
    np.testing.assert_array_equal(to_bf16(f)[~nan], u[~nan])     # exact values map to themselves
    back = to_bf16(f[nan])
    assert np.isnan(from_bf16(back)).all()
    np.testing.assert_array_equal(back >> 15, u[nan] >> 15)      # sign kept


def test_ties_round_to_even_and_neighbours_to_nearest():
    # every finite, non-max bf16 value u: the float32 halfway to u+1, and one float32 ulp either
    # side of it (for negative u, "u+1" is the next value of larger magnitude: same rule)
    u = np.arange(1 << 16, dtype=np.uint32)
    u = u[((u & 0x7FFF) < 0x7F7F)]                               # finite and u+1 finite
    mid = (u << 16) | 0x8000
    tie = to_bf16(f32_bits(mid)).astype(np.uint32)
    np.testing.assert_array_equal(tie, np.where(u & 1, u + 1, u))  # ties go to the even one
    np.testing.assert_array_equal(to_bf16(f32_bits(mid - 1)), u)   # just below half: down
    np.testing.assert_array_equal(to_bf16(f32_bits(mid + 1)), u + 1)  # just above half: up
    # the rounding carries into the exponent: 1.9921875 * 2^k halfway to 2^(k+1) (odd -> up)
    assert from_bf16(to_bf16(np.float32(1.99609375)))[()] == 2.0


def test_specials():
    x = np.array([np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max,
                  -np.finfo(np.float32).max, 3.3895314e38], np.float32)
    y = from_bf16(to_bf16(x))
    assert y[0] == np.inf and y[1] == -np.inf
    assert y[2] == 0 and not np.signbit(y[2]) and y[3] == 0 and np.signbit(y[3])
    assert y[4] == np.inf and y[5] == -np.inf      # beyond the largest bf16 + half ulp: inf
    assert y[6] == 3.3895314e38                    # largest finite bf16 (0x7F7F)
    # NaNs whose payload lies only in the low 16 bits must not truncate to inf
    nans = f32_bits([0x7F800001, 0xFF800001, 0x7FC00000, 0x7FFFFFFF, 0xFFC12345])
    r = to_bf16(nans)
    assert np.isnan(from_bf16(r)).all()
    np.testing.assert_array_equal(r >> 15, [0, 1, 0, 0, 1])
    # subnormals: bf16 has float32's exponent range, so they stay (rounded) subnormals
    tiny = f32_bits([0x00000001, 0x00008000, 0x00018000, 0x00010000])
    np.testing.assert_array_equal(to_bf16(tiny), [0, 0, 2, 1])


def test_shapes_dtypes_and_copies():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, ::2]   # non-contiguous float64
    u = to_bf16(a)
    assert u.dtype == np.uint16 and u.shape == (2, 2, 4) and u.flags.c_contiguous
    np.testing.assert_array_equal(from_bf16(u), a.astype(np.float32))  # small ints are exact
    assert from_bf16(u[:, 1]).shape == (2, 4)
    assert to_bf16(np.float32(1.5)).shape == () and from_bf16(np.uint16(0x3FC0)) == 1.5
    assert to_bf16(np.zeros((0, 5), np.float32)).shape == (0, 5)
    with pytest.raises(TypeError):
        from_bf16(np.zeros(3, np.float32))


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_to_bf16_rounding_property(x):
    x = np.float32(x)
    u = to_bf16(np.array([x]))[0]
    r = np.float64(from_bf16(u))
    xd = np.float64(x)
    if abs(xd) >= 3.3895313892515355e38 + 2.0 ** 119:  # max bf16 + half ulp (tie, odd): inf
        assert np.isinf(r) and np.sign(r) == np.sign(xd)
        return
    assert np.isfinite(r)
    if abs(xd) >= 2.0 ** -126:                          # normal: half a bf16 ulp, relative
        assert abs(r - xd) <= EPS_BF16_HALF * abs(xd)
    else:                                               # subnormal: half a bf16 ulp, absolute
        assert abs(r - xd) <= 2.0 ** -134
    # nearest: no neighbouring bf16 is closer (ties: even mantissa)
    for nb in (int(u) - 1, int(u) + 1):
        if 0 <= nb < (1 << 16) and (nb & 0x7FFF) <= 0x7F7F and (nb >> 15) == (int(u) >> 15):
            dn = abs(np.float64(from_bf16(np.uint16(nb))) - xd)
            assert abs(r - xd) < dn or (abs(r - xd) == dn and int(u) % 2 == 0)


def test_conversion_speed_at_least_1_gbps():
    a = np.random.default_rng(0).standard_normal(1 << 23).astype(np.float32)   # 32 MiB
    to_bf16(a[:16]), from_bf16(to_bf16(a[:16]))                                # compile
    import time
    u = to_bf16(a)
    best_to = best_from = 1e9
    for _ in range(3):
        t = time.perf_counter()
        to_bf16(a)
        best_to = min(best_to, time.perf_counter() - t)
        t = time.perf_counter()
        from_bf16(u)
        best_from = min(best_from, time.perf_counter() - t)
    assert a.nbytes / best_to > 1e9, f"to_bf16 {a.nbytes / best_to / 1e9:.2f} GB/s"
    assert u.nbytes / best_from > 1e9 / 2, f"from_bf16 {u.nbytes / best_from / 1e9:.2f} GB/s"


# ----------------------------------------------------------------------------- attention
def ref_attention(q, k, v, lengths):
    """float64 softmax attention with GQA; empty -> out 0, lse -inf (as in test_kernels.py)."""
    B, Qh, D = q.shape
    G = Qh // k.shape[1]
    out = np.zeros((B, Qh, D))
    lse = np.full((B, Qh), -np.inf)
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        kk = np.repeat(k[b, :, :n].astype(np.float64), G, axis=0)
        vv = np.repeat(v[b, :, :n].astype(np.float64), G, axis=0)
        s = np.einsum("hd,htd->ht", q[b].astype(np.float64), kk) / math.sqrt(D)
        mx = s.max(axis=1, keepdims=True)
        e = np.exp(s - mx)
        out[b] = np.einsum("ht,htd->hd", e, vv) / e.sum(axis=1, keepdims=True)
        lse[b] = mx[:, 0] + np.log(e.sum(axis=1))
    return out, lse


def make_bf16_kv(rng, B, Kh, G, D, C):
    q = rng.standard_normal((B, Kh * G, D)).astype(np.float32)
    k = to_bf16(rng.standard_normal((B, Kh, C, D)))
    v = to_bf16(rng.standard_normal((B, Kh, C, D)))
    return q, k, v


def check_attention(q, k, v, lengths):
    out, lse = partial_attention(q, k, v, lengths)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    kf = from_bf16(k) if is_bf16(k) else k
    vf = from_bf16(v) if is_bf16(v) else v
    o32, l32 = partial_attention(q, kf, vf, lengths)           # float32 kernel, upcast caches
    np.testing.assert_allclose(out, o32, atol=OUT_ATOL, rtol=0)
    assert np.array_equal(np.isneginf(lse), np.isneginf(l32))
    fin = np.isfinite(l32)
    np.testing.assert_allclose(lse[fin], l32[fin], atol=OUT_ATOL, rtol=0)
    ro, rl = ref_attention(q, kf, vf, lengths)
    np.testing.assert_allclose(out, ro, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(lse[fin], rl[fin], atol=REF_ATOL, rtol=0)
    return out, lse


@pytest.mark.parametrize("G", [1, 2, 3, 4, 8])  # 2, 4: bf16 dot products, float32 heads in lanes
@pytest.mark.parametrize("D", [64, 128])
def test_attention_bf16_equals_float32_on_upcast(G, D):
    rng = np.random.default_rng(10 * G + D)
    B, Kh, C = 3, 2, 2 * TILE + 37          # not a multiple of the tile nor of the 4-row block
    q, k, v = make_bf16_kv(rng, B, Kh, G, D, C)
    check_attention(q, k, v, np.array([C, C - 5, 130], np.int64))


def test_attention_bf16_ragged_and_empty():
    rng = np.random.default_rng(3)
    B, Kh, G, D, C = 6, 2, 4, 64, 300
    q, k, v = make_bf16_kv(rng, B, Kh, G, D, C)
    lengths = np.array([0, 1, 2, 3, TILE, 299], np.int64)
    out, lse = check_attention(q, k, v, lengths)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))
    # length 1: out is exactly that token's (upcast) v row
    np.testing.assert_allclose(out[1], np.repeat(from_bf16(v[1, :, 0]), G, axis=0), atol=1e-6)
    o0, l0 = partial_attention(q, k, v, np.zeros(B, np.int64))
    assert np.all(o0 == 0) and np.all(np.isneginf(l0)) and not np.isnan(o0).any()


def test_attention_mixed_bf16_k_float32_v_and_same_array():
    rng = np.random.default_rng(4)
    q, k, v = make_bf16_kv(rng, 2, 2, 3, 32, 70)
    lengths = np.array([70, 33], np.int64)
    check_attention(q, k, from_bf16(v), lengths)
    check_attention(q, from_bf16(k), v, lengths)
    check_attention(q, k, k, lengths)        # MLA passes one latent cache as both K and V


def test_attention_bf16_reads_the_cache_in_place():
    # no float32 copy of the cache: NumPy-side peak allocation stays far below its float32 size
    rng = np.random.default_rng(5)
    B, Kh, G, D, C = 1, 4, 2, 128, 4096
    q, k, v = make_bf16_kv(rng, B, Kh, G, D, C)
    lengths = np.array([C], np.int64)
    partial_attention(q, k, v, lengths)      # compile first
    tracemalloc.start()
    try:
        partial_attention(q, k, v, lengths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < from_bf16(k).nbytes // 16, peak


def test_attention_bf16_rejects_bad_shapes():
    q = np.zeros((1, 8, 64), np.float32)
    kv = np.zeros((1, 4, 8, 64), np.uint16)
    with pytest.raises(ValueError):
        partial_attention(q, kv, kv, np.array([9]))                  # > C
    with pytest.raises(ValueError):
        partial_attention(q, kv, kv[:, :, :4], np.array([4]))        # k/v shape mismatch


# ----------------------------------------------------------------------------- linear, swiglu
def assert_linear_close(y, x, wf):
    ref = x.astype(np.float64) @ wf.astype(np.float64)
    bound = LIN_REL * (np.abs(x).astype(np.float64) @ np.abs(wf).astype(np.float64))
    assert y.dtype == np.float32 and y.shape == ref.shape
    err = np.abs(y - ref)
    assert np.all(err <= bound + 1e-30), float((err / (bound + 1e-30)).max())


@pytest.mark.parametrize("B", [1, 2, 3, 8, 16, 17, 40])
def test_linear_bf16_equals_float32_on_upcast(B):
    # n not a multiple of the 8-row block, m not a multiple of the vector width; odd and even
    # B; B above 16 takes the panel (BLAS) path
    rng = np.random.default_rng(B)
    n, m = 771, 300
    x = rng.standard_normal((B, n)).astype(np.float32)
    w = to_bf16(rng.standard_normal((n, m)))
    wf = from_bf16(w)
    y = linear(x, w)
    assert_linear_close(y, x, wf)
    assert_linear_close(linear(x, wf), x, wf)                    # the float32 path, same bound
    # row shards summed (what the all-reduce does) equal the full product
    cuts = [0, 250, 251, 771]
    s = sum(linear(x[:, a:b], w[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))
    assert_linear_close(s.astype(np.float32), x, wf)


def test_linear_bf16_shapes():
    rng = np.random.default_rng(1)
    w = to_bf16(rng.standard_normal((9, 5)))
    x = rng.standard_normal(9).astype(np.float32)
    assert linear(x, w).shape == (5,)
    assert_linear_close(linear(x[None], w), x[None], from_bf16(w))
    x3 = rng.standard_normal((2, 3, 9)).astype(np.float32)
    np.testing.assert_allclose(linear(x3, w), linear(x3.reshape(6, 9), w).reshape(2, 3, 5),
                               rtol=0, atol=0)
    assert linear(np.zeros((0, 9), np.float32), w).shape == (0, 5)
    np.testing.assert_array_equal(linear(np.ones((2, 0), np.float32), np.zeros((0, 4), np.uint16)),
                                  np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        linear(np.zeros((2, 8), np.float32), w)
    # vector-width remainders in the column loop, rows around the 8-row block
    for n, m in ((tiling.WEIGHT_ROWS_PER_BLOCK, 7), (tiling.WEIGHT_ROWS_PER_BLOCK + 1, 8), (2 * tiling.WEIGHT_ROWS_PER_BLOCK - 1, 17), (16, 257)):
        w2 = to_bf16(rng.standard_normal((n, m)))
        x2 = rng.standard_normal((3, n)).astype(np.float32)
        assert_linear_close(linear(x2, w2), x2, from_bf16(w2))


@pytest.mark.parametrize("f", [1, 37, 256])
def test_swiglu_bf16(f):
    rng = np.random.default_rng(f)
    B, H = 3, 512
    x = rng.standard_normal((B, H)).astype(np.float32)
    wg = to_bf16(rng.standard_normal((H, f)) / math.sqrt(H))
    wu = to_bf16(rng.standard_normal((H, f)) / math.sqrt(H))
    y = swiglu(x, wg, wu)
    y32 = swiglu(x, from_bf16(wg), from_bf16(wu))
    assert y.dtype == np.float32 and y.shape == (B, f)
    # gate and up are each within LIN_REL * sum|x w| (|.| ~ 0.8 sqrt(H) / sqrt(H) ~ 1 here, so
    # ~1e-5 absolute); silu and the product keep that order: 1e-4 as in test_kernels.py
    np.testing.assert_allclose(y, y32, atol=1e-4, rtol=1e-4)
    g = x.astype(np.float64) @ from_bf16(wg)
    ref = g / (1 + np.exp(-g)) * (x.astype(np.float64) @ from_bf16(wu))
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    big = swiglu(np.full((1, H), 100.0, np.float32), to_bf16(-np.abs(from_bf16(wg))), wu)
    assert np.isfinite(big).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_linear_bf16_random_shapes_property(data):
    B = data.draw(st.integers(1, 20), label="B")
    n = data.draw(st.integers(1, 40), label="n")
    m = data.draw(st.integers(1, 600), label="m")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = rng.standard_normal((B, n)).astype(np.float32)
    w = to_bf16(rng.standard_normal((n, m)))
    assert_linear_close(linear(x, w), x, from_bf16(w))
