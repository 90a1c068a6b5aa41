"""Single-process tests of helix_mpi.kernels against straightforward float64 NumPy references.

Tolerances: kernels compute in float32 (eps = 1.19e-7). A length-n float32 sum has worst-case
relative error ~ n*eps, typical ~ sqrt(n)*eps; with the unit-scale random data used here the
observed errors are ~1e-6, so atol/rtol of 1e-4..1e-5 are stated per test with their reason.
"""
import math
import os

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from helix_mpi.kernels import (TILE, apply_rope, combine, linear, partial_attention, rms_norm,
                               swiglu)


# ----------------------------------------------------------------------------- references
def ref_attention(q, k, v, lengths):
    """float64 softmax attention with GQA; empty -> out 0, lse -inf."""
    B, Qh, D = q.shape
    Kh = k.shape[1]
    G = Qh // Kh
    out = np.zeros((B, Qh, D))
    lse = np.full((B, Qh), -np.inf)
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        kk = np.repeat(k[b, :, :n].astype(np.float64), G, axis=0)  # [Qh,n,D]
        vv = np.repeat(v[b, :, :n].astype(np.float64), G, axis=0)
        s = np.einsum("hd,htd->ht", q[b].astype(np.float64), kk) / math.sqrt(D)
        mx = s.max(axis=1, keepdims=True)
        e = np.exp(s - mx)
        out[b] = np.einsum("ht,htd->hd", e, vv) / e.sum(axis=1, keepdims=True)
        lse[b] = mx[:, 0] + np.log(e.sum(axis=1))
    return out, lse


def ref_rope(x, pos, theta):
    x = x.astype(np.float64)
    D = x.shape[-1]
    h = D // 2
    inv = theta ** (-np.arange(h, dtype=np.float64) * 2 / D)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv  # [B,h]
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def make_kv(rng, B, Kh, G, D, C, qscale=1.0):
    q = (rng.standard_normal((B, Kh * G, D)) * qscale).astype(np.float32)
    k = rng.standard_normal((B, Kh, C, D)).astype(np.float32)
    v = rng.standard_normal((B, Kh, C, D)).astype(np.float32)
    return q, k, v


def assert_lse_close(lse, ref, atol):
    assert lse.dtype == np.float32
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(lse[fin], ref[fin], atol=atol, rtol=0)


# ----------------------------------------------------------------------------- rms_norm
def test_rms_norm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4096)).astype(np.float32) * 5
    w = rng.standard_normal(4096).astype(np.float32)
    ref = x.astype(np.float64) / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-5)
    # mean accumulated in float64, scaling in float32: a few ulps -> rtol 1e-5
    np.testing.assert_allclose(rms_norm(x, None, 1e-5), ref, rtol=1e-5, atol=1e-6)
    y = rms_norm(x, w, 1e-5)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, ref * w, rtol=1e-5, atol=1e-6)
    # all-zero row: eps keeps it finite
    assert np.all(rms_norm(np.zeros((1, 8), np.float32), None, 1e-6) == 0)


# ----------------------------------------------------------------------------- rope
@pytest.mark.parametrize("D", [64, 128])
def test_rope_matches_reference_large_positions(D):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, D)).astype(np.float32)
    pos = np.array([0, 7, 1_000_003, 3_999_999], np.int64)
    y = apply_rope(x, pos, 500000.0)
    assert y.dtype == np.float32
    # angles in float64, cos/sin and products in float32: error ~ few eps * |x| -> atol 1e-5
    np.testing.assert_allclose(y, ref_rope(x, pos, 500000.0), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(apply_rope(x, np.zeros(4, np.int64), 1e4), x)  # pos 0 = identity


def test_rope_norm_and_relative_position():
    rng = np.random.default_rng(2)
    D = 128
    q = rng.standard_normal((1, 1, D)).astype(np.float32)
    k = rng.standard_normal((1, 1, D)).astype(np.float32)
    # rotation preserves norms (float32 rounding: rtol 1e-5)
    for p in (5, 123_456, 2_000_000):
        y = apply_rope(q, np.array([p]), 10000.0)
        np.testing.assert_allclose(np.linalg.norm(y), np.linalg.norm(q), rtol=1e-5)

    # q(p).k(p') depends only on p - p'
    def dot(p, pp):
        return float(np.dot(apply_rope(q, np.array([p]), 1e4)[0, 0].astype(np.float64),
                            apply_rope(k, np.array([pp]), 1e4)[0, 0].astype(np.float64)))
    base = dot(10, 3)
    scale = float(np.linalg.norm(q) * np.linalg.norm(k))
    for off in (1000, 1_000_000, 3_000_000):
        # float32 cos/sin of large float64 angles: ~eps relative to |q||k| -> 1e-5 * |q||k|
        assert abs(dot(10 + off, 3 + off) - base) <= 1e-5 * scale


# ----------------------------------------------------------------------------- attention
ATT_ATOL = 2e-5  # out is a convex combination of N(0,1) v's; observed ~1e-6 (float32 sums of
                 # <= 1000 terms, relative error << n*eps)
LSE_ATOL = 2e-5  # lse = m + log(l): rounding of the scores (|s| ~ few) and of l


@pytest.mark.parametrize("G", [1, 3, 4])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("B", [1, 3])
def test_partial_attention_matches_reference(G, D, B):
    rng = np.random.default_rng(100 * G + D + B)
    Kh = 2
    C = 2 * TILE + 37  # not a multiple of the tile, nor of the 4-token register block
    q, k, v = make_kv(rng, B, Kh, G, D, C)
    lengths = np.array([C, 0, 1][:B] if B == 3 else [C - 5], np.int64)
    out, lse = partial_attention(q, k, v, lengths)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    assert out.shape == (B, Kh * G, D) and lse.shape == (B, Kh * G)
    ro, rl = ref_attention(q, k, v, lengths)
    np.testing.assert_allclose(out, ro, atol=ATT_ATOL, rtol=0)
    assert_lse_close(lse, rl, LSE_ATOL)


@pytest.mark.parametrize("G", [1, 8])
def test_partial_attention_long_shard(G):
    # K + V beyond tiling.STREAMED_KV_BYTES in float32 at D = 128 (as the real models): P.V walks
    # each tile in chunks of tiling.PV_CHUNK slots (at G = 8 through all 4 column groups), then a
    # short last tile; the chunks must not change the result.
    from helix_mpi.kernels.tiling import STREAMED_KV_BYTES

    rng = np.random.default_rng(9 + G)
    D = 128
    C = STREAMED_KV_BYTES // (2 * D * 4) + 37
    q, k, v = make_kv(rng, 1, 1, G, D, C)
    lengths = np.array([C], np.int64)
    out, lse = partial_attention(q, k, v, lengths)
    ro, rl = ref_attention(q, k, v, lengths)
    np.testing.assert_allclose(out, ro, atol=ATT_ATOL, rtol=0)
    assert_lse_close(lse, rl, LSE_ATOL)


def test_partial_attention_ragged_and_empty():
    rng = np.random.default_rng(7)
    B, Kh, G, D, C = 5, 2, 4, 64, 300
    q, k, v = make_kv(rng, B, Kh, G, D, C)
    lengths = np.array([0, 1, 2, TILE, 299], np.int64)
    out, lse = partial_attention(q, k, v, lengths)
    ro, rl = ref_attention(q, k, v, lengths)
    np.testing.assert_allclose(out, ro, atol=ATT_ATOL, rtol=0)
    assert_lse_close(lse, rl, LSE_ATOL)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))
    # length 1: out is exactly that token's v row (per kv head)
    np.testing.assert_allclose(out[1], np.repeat(v[1, :, 0], G, axis=0), atol=1e-6)
    # all empty
    o0, l0 = partial_attention(q, k, v, np.zeros(B, np.int64))
    assert np.all(o0 == 0) and np.all(np.isneginf(l0)) and not np.isnan(o0).any()


def test_partial_attention_large_logits():
    # q scaled so scores reach ~ +-1e4: the online softmax must subtract the running max.
    rng = np.random.default_rng(8)
    B, Kh, G, D, C = 2, 2, 4, 128, 3 * TILE + 5
    q, k, v = make_kv(rng, B, Kh, G, D, C, qscale=1.0)
    q *= np.float32(1e4 * math.sqrt(D) / np.abs(np.einsum("bhd,bkcd->bhkc", q, k)).max() * 2)
    lengths = np.array([C, 777 % C], np.int64)
    out, lse = partial_attention(q, k, v, lengths)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    ro, rl = ref_attention(q, k, v, lengths)
    assert np.abs(rl).max() > 5e3
    # scores of magnitude 1e4 carry float32 rounding ~1e4*eps ~ 1e-3 absolute, which enters the
    # exponents: softmax weights are then accurate to ~1e-3 relative -> out atol 5e-3, lse
    # relative 1e-6 (|lse| ~ 1e4).
    np.testing.assert_allclose(out, ro, atol=5e-3, rtol=0)
    np.testing.assert_allclose(lse, rl, rtol=1e-6, atol=0)


def test_partial_attention_rejects_bad_shapes():
    q = np.zeros((1, 6, 64), np.float32)
    kv = np.zeros((1, 4, 8, 64), np.float32)
    with pytest.raises(ValueError):
        partial_attention(q, kv, kv, np.array([8]))  # 6 % 4 != 0
    with pytest.raises(ValueError):
        partial_attention(np.zeros((1, 8, 64), np.float32), kv, kv, np.array([9]))  # > C


# ----------------------------------------------------------------------------- combine
def shard_and_combine(q, k, v, lengths, bounds):
    """Split every request's sequence at `bounds` (list of P+1 cut points) into P shards."""
    outs, lses = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        ks = np.ascontiguousarray(k[:, :, lo:hi])
        vs = np.ascontiguousarray(v[:, :, lo:hi])
        ln = np.clip(lengths - lo, 0, hi - lo).astype(np.int64)
        o, l = partial_attention(q, ks, vs, ln)
        outs.append(o)
        lses.append(l)
    return combine(np.stack(outs), np.stack(lses))


def test_combine_equals_full_attention_with_empty_shards():
    rng = np.random.default_rng(9)
    B, Kh, G, D, C = 3, 2, 3, 64, 400
    q, k, v = make_kv(rng, B, Kh, G, D, C)
    lengths = np.array([400, 150, 0], np.int64)
    bounds = [0, 100, 100, 250, 333, 400]  # shard 1 empty for all; request 1 empty past 150
    o, l = shard_and_combine(q, k, v, lengths, bounds)
    ro, rl = ref_attention(q, k, v, lengths)
    np.testing.assert_allclose(o, ro, atol=ATT_ATOL, rtol=0)  # combine is float64: adds nothing
    assert_lse_close(l, rl, LSE_ATOL)
    assert np.all(o[2] == 0) and not np.isnan(o).any()


def test_combine_all_empty_and_garbage_outputs():
    P, B, h, D = 4, 2, 3, 8
    outs = np.full((P, B, h, D), np.nan, np.float32)  # ignored when lse = -inf
    lses = np.full((P, B, h), -np.inf, np.float32)
    o, l = combine(outs, lses)
    assert o.dtype == np.float32 and l.dtype == np.float32
    assert np.all(o == 0) and np.all(np.isneginf(l))
    outs[1] = 1.0
    lses[1] = 2.5
    o, l = combine(outs, lses)
    assert np.all(o == 1.0) and np.all(l == 2.5)


def test_combine_two_partials_exact():
    o = np.array([[[[1.0, 0.0]]], [[[0.0, 1.0]]]], np.float32)  # [2,1,1,2]
    l = np.array([[[0.0]], [[math.log(3.0)]]], np.float32)
    co, cl = combine(o, l)
    np.testing.assert_allclose(cl, math.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(co[0, 0], [0.25, 0.75], rtol=1e-6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_combine_random_splits_property(data):
    G = data.draw(st.sampled_from([1, 2, 4]), label="G")
    B = data.draw(st.integers(1, 3), label="B")
    C = data.draw(st.integers(1, 300), label="C")
    lengths = np.array(data.draw(st.lists(st.integers(0, C), min_size=B, max_size=B)), np.int64)
    cuts = sorted(data.draw(st.lists(st.integers(0, C), min_size=0, max_size=6), label="cuts"))
    bounds = [0] + cuts + [C]  # repeated cuts -> empty shards
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    rng = np.random.default_rng(seed)
    q, k, v = make_kv(rng, B, 2, G, 32, C, qscale=2.0)
    o, l = shard_and_combine(q, k, v, lengths, bounds)
    ro, rl = ref_attention(q, k, v, lengths)
    assert not np.isnan(o).any() and not np.isnan(l).any()
    np.testing.assert_allclose(o, ro, atol=ATT_ATOL, rtol=0)
    assert_lse_close(l, rl, LSE_ATOL)


# ----------------------------------------------------------------------------- swiglu, linear
@pytest.mark.parametrize("f", [1, 37, 256])  # uneven column shards of F allowed
def test_swiglu(f):
    rng = np.random.default_rng(f)
    B, H = 3, 512
    x = rng.standard_normal((B, H)).astype(np.float32)
    wg = (rng.standard_normal((H, f)) / math.sqrt(H)).astype(np.float32)
    wu = (rng.standard_normal((H, f)) / math.sqrt(H)).astype(np.float32)
    g = x.astype(np.float64) @ wg
    ref = g / (1 + np.exp(-g)) * (x.astype(np.float64) @ wu)
    y = swiglu(x, wg, wu)
    assert y.dtype == np.float32 and y.shape == (B, f)
    # dot products of length H=512 of O(1) terms: float32 error ~ sqrt(H)*eps ~ 3e-6 -> 1e-4
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    # column shards concatenate to the full result
    if f == 256:
        parts = [swiglu(x, wg[:, a:b], wu[:, a:b]) for a, b in [(0, 100), (100, 101), (101, 256)]]
        np.testing.assert_allclose(np.concatenate(parts, axis=1), y, atol=1e-6)
    # extreme gate values: no overflow warnings turned into NaN
    big = swiglu(np.full((1, H), 100.0, np.float32), -wg.__abs__(), wu)
    assert np.isfinite(big).all()


@pytest.mark.parametrize("B", [1, 5, 16])
def test_linear_and_row_shards(B):
    rng = np.random.default_rng(B)
    n, m = 768, 300
    x = rng.standard_normal((B, n)).astype(np.float32)
    w = rng.standard_normal((n, m)).astype(np.float32)
    ref = x.astype(np.float64) @ w
    y = linear(x, w)
    assert y.dtype == np.float32 and y.shape == (B, m)
    # |ref| ~ sqrt(n) ~ 28; float32 dot of length 768: ~sqrt(n)*eps*28 -> atol 1e-3
    np.testing.assert_allclose(y, ref, atol=1e-3, rtol=0)
    # row shards summed (what the all-reduce does) equal the full product
    cuts = [0, 250, 251, 768]
    s = sum(linear(x[:, a:b], w[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))
    np.testing.assert_allclose(s, ref, atol=1e-3, rtol=0)
