#!/usr/bin/env python
"""The compiled micro-kernels alone, on L1-resident operands, against one core's SGEMM.

bench_attention.py and bench_ffn.py time whole kernels streaming from memory. This times the
register-tiled blocks they are made of (helix_mpi/kernels/jit/simd.py) with every operand in L1,
called in a compiled loop, against the same SGEMM probe (512^3 float32, one core) measured
interleaved in the same run: does a block keep the core's vector units busy (ratio ~1), so that
a whole kernel's miss lies in how its arithmetic overlaps its reads, not in the arithmetic?

Blocks (D = 128, as the 405B/70B/8B models):
- scores as the attention kernel computes them (tiling.heads_in_lanes): heads in lanes, all G heads
  of a KV group x 8 tokens from 8 K rows (G = 16: two blocks of 4 tokens; bf16: the 8 rows are
  first widened into an L1 buffer), or for bf16 K below G = 8 dot products of 4 heads x 4 tokens
  over rows widened in registers;
- P.V: G heads x 64 tokens of V rows (32 KiB in float32) into G accumulator rows;
- decode GEMM: B batch rows x 32 weight rows of 256 columns (32 KiB in float32).
FLOPs: 2 per multiply-add. Medians of interleaved repeats. Last line: JSON.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_attention import SGEMM_CALLS, SGEMM_N, _seconds  # noqa: E402 - the same SGEMM probe
from helix_mpi.kernels import to_bf16  # noqa: E402
from helix_mpi.kernels.jit import simd as S  # noqa: E402
from helix_mpi.kernels.tiling import heads_in_lanes  # noqa: E402 - which score blocks the kernel uses

D = 128
PV_TOKENS = 64      # V rows of a P.V call: 64 x 128 float32 = 32 KiB (L1 here: 48 KiB)
GEMM_ROWS = 32      # weight rows of a GEMM call: 32 x 256 float32 = 32 KiB
GEMM_COLS = 256
CALLS = 20000       # block calls per timed sample


@njit(fastmath=True, inline="always")
def _score_block(qp, kr, s):
    G = s.shape[0]
    if G == 4:
        S.bcast_score_block_4x8(qp, kr, 0, 1, s, 0)
    elif G == 8:
        S.bcast_score_block_8x8(qp, kr, 0, 1, s, 0)
    else:
        S.bcast_score_block_16x4(qp, kr, 0, 1, s, 0)
        S.bcast_score_block_16x4(qp, kr, 4, 1, s, 4)


@njit(fastmath=True)
def _scores(qp, kk, s, calls):
    # qp [G*D/16, 16] packed queries, kk [8, D] float32 K rows, s [G, 8]
    S.wide_vectors()
    for _ in range(calls):
        _score_block(qp, kk, s)


@njit(fastmath=True)
def _scores_dot(qs, kk, s, calls):
    # qs [G, D] queries (G a multiple of 4), kk [8, D] K rows widened in registers: dot products of
    # 4 heads x 4 tokens, as the attention kernel scores bf16 K below tiling.MIN_LANES_GROUP_BF16
    S.wide_vectors()
    for _ in range(calls):
        for t in range(0, 8, 4):
            for g0 in range(0, s.shape[0], 4):
                S.score_block_4x4(qs, g0, kk, t, 1, s, t)


@njit(fastmath=True)
def _scores_bf16(qp, kk, kbuf, s, calls):
    # kk [8, D] bf16 K rows, widened into kbuf [8, D] first, as the attention kernel does
    S.wide_vectors()
    for _ in range(calls):
        S.widen_rows(kk, 0, 1, 8, kbuf)
        _score_block(qp, kbuf, s)


@njit(fastmath=True)
def _pv(p, vv, acc, calls):
    # acc [G, D] += p [G, PV_TOKENS] @ vv [PV_TOKENS, D] (8 ways of 8 rows: slot k at row k)
    S.wide_vectors()
    G = acc.shape[0]
    for _ in range(calls):
        for g0 in range(0, G, 8 if G % 8 == 0 else 4):
            if G % 8 == 0:
                S.pv_block_8x2(p, g0, 0, PV_TOKENS, vv, 0, 8, 1, acc)
            else:
                S.pv_block_4x4(p, g0, 0, PV_TOKENS, vv, 0, 8, 1, acc)


@njit(fastmath=True)
def _gemm(xt, w, out, calls):
    # out [B, m] += x [B, n] @ w [n, m], x given transposed: xt [n, B]
    S.wide_vectors()
    B = out.shape[0]
    for _ in range(calls):
        if B == 16:
            S.gemm_block_16x1(xt, 0, 0, GEMM_ROWS, w, out, 0)
        elif B == 8:
            S.gemm_block_8x2(xt, 0, 0, GEMM_ROWS, w, out, 0)
        else:
            S.gemm_block_4x4(xt, 0, 0, GEMM_ROWS, w, out, 0)


def _cases(rng):
    """[(name, dtype, fn(calls), FLOPs per call, tokens per call or 0)]."""
    cases = []
    for dtype in ("fp32", "bf16"):
        def store(a):
            return to_bf16(a) if dtype == "bf16" else a
        for G in (4, 8, 16):
            qp = rng.random((G * D // 16, 16), dtype=np.float32)
            kk, kbuf, s = store(rng.random((8, D), dtype=np.float32)), np.zeros((8, D), np.float32), np.zeros((G, 8), np.float32)
            if dtype == "fp32":
                score, how = (lambda c, a=(qp, kk, s): _scores(*a, c)), "lanes"
            elif heads_in_lanes(G, D, 2):
                score, how = (lambda c, a=(qp, kk, kbuf, s): _scores_bf16(*a, c)), "lanes"
            else:
                qs = rng.random((G, D), dtype=np.float32)
                score, how = (lambda c, a=(qs, kk, s): _scores_dot(*a, c)), "dot"
            cases.append((f"scores G={G} {how}", dtype, score, 2 * G * 8 * D, 8))
        for G in (4, 8):
            p = rng.random((G, PV_TOKENS), dtype=np.float32) * np.float32(0.01)
            vv, acc = store(rng.random((PV_TOKENS, D), dtype=np.float32)), np.zeros((G, D), np.float32)
            cases.append((f"P.V G={G}", dtype, lambda c, a=(p, vv, acc): _pv(*a, c), 2 * G * PV_TOKENS * D, PV_TOKENS))
        for B in (4, 8, 16):
            xt = rng.random((GEMM_ROWS, B), dtype=np.float32) * np.float32(0.01)
            w, out = store(rng.random((GEMM_ROWS, GEMM_COLS), dtype=np.float32)), np.zeros((B, GEMM_COLS), np.float32)
            cases.append((f"GEMM B={B}", dtype, lambda c, a=(xt, w, out): _gemm(*a, c), 2 * B * GEMM_ROWS * GEMM_COLS, 0))
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = _cases(rng)
    for _, _, fn, _, _ in cases:
        fn(1)                                                   # compile
    sq = rng.random((SGEMM_N, SGEMM_N), dtype=np.float32)
    times = [[] for _ in cases]
    sgemm = []
    for _ in range(args.repeats):
        for i, (_, _, fn, _, _) in enumerate(cases):
            times[i].append(_seconds(lambda: fn(CALLS)) / CALLS)
        sgemm.append(2 * SGEMM_N ** 3 / _seconds(lambda: sq @ sq, SGEMM_CALLS))
    F = statistics.median(sgemm)
    print(f"one core's SGEMM: {F / 1e9:.1f} GFLOP/s (median of {args.repeats}, "
          f"{min(sgemm) / 1e9:.0f}-{max(sgemm) / 1e9:.0f})")
    print(f"{'block':>18} {'dtype':>5} {'ns/call':>8} {'ns/token':>8} {'GFLOP/s':>8} {'/sgemm':>7}")
    rows = []
    for (name, dtype, _, flops, tokens), t in zip(cases, times):
        sec = statistics.median(t)
        rate = flops / sec
        rows.append({"block": name, "dtype": dtype, "ns_per_call": round(sec * 1e9, 1),
                     "ns_per_token": round(sec * 1e9 / tokens, 2) if tokens else None,
                     "gflops": round(rate / 1e9, 1), "vs_sgemm": round(rate / F, 3)})
        per_token = f"{sec * 1e9 / tokens:8.2f}" if tokens else f"{'-':>8}"
        print(f"{name:>18} {dtype:>5} {sec * 1e9:8.1f} {per_token} {rate / 1e9:8.1f} {rate / F:7.2f}")
    print(json.dumps({"sgemm_gflops": round(F / 1e9, 1), "blocks": rows,
                      "median_vs_sgemm": round(statistics.median(r["vs_sgemm"] for r in rows), 3)}))


if __name__ == "__main__":
    main()
