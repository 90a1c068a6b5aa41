#!/usr/bin/env python
"""What one core reaches when it streams memory and computes at once: the attention kernel's ceiling.

bench_attention.py judges the kernel against max(bytes / R, FLOPs / F), which assumes the core
overlaps its reads and its arithmetic perfectly. This measures how far a loop that does nothing
else gets: it streams a float32 buffer of --mb MB the way the attention kernel's blocks read a
tile (8 rows at once, one from each of 8 parts of the buffer, kernels/tiling.py WAYS), and does
NF fused multiply-adds (16 lanes, 32 FLOP each, 16 independent accumulators) on every 64-byte
vector it loads. NF = 0 only sums the vectors (R, the read rate); the same loop over an
L1-resident buffer gives its arithmetic alone. Per NF: FLOP per byte = NF / 2, the streamed time,
and ratio = max(bytes / R, FLOPs / F) / streamed time, F = one core's SGEMM (512^3 float32, as
in bench_attention.py; the loop's own FMA rate in L1 may exceed it, and the ratio 1). The
attention kernel does 4*G*D FLOPs per 2*D elements of K and V: G / 2 FLOP per byte in float32 (G = 4: 2, G = 8: 4, G = 16: 8) and G FLOP per byte in bf16.
Medians of interleaved repeats. Last line: JSON.
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
from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_attention import SGEMM_CALLS, SGEMM_N, _seconds  # noqa: E402 - the same SGEMM probe
from helix_mpi.kernels.tiling import WAYS  # noqa: E402 - rows read at once
from helix_mpi.kernels.jit.simd import (LANES, _F32, _I32, _I64, _VF, _Acc, _fma, _i64,  # noqa: E402
                                        _load, _Mat, _mark_wide, _splat)

ROW = 128       # floats per row (D = 128: 8 vectors)


def _make_stream(nf):
    """Numba intrinsic stream(buf [8*L, ROW], L) -> float32: for each block b < L, rows w*L + b
    (w < 8) vector by vector, nf FMAs per vector loaded (nf = 0: one add)."""
    @intrinsic
    def stream(typingctx, buf, L):
        def codegen(context, builder, signature, args):
            _mark_wide(builder)
            m = _Mat(context, builder, signature.args[0], args[0])
            length = _i64(context, builder, signature.args[1], args[1])
            acc = _Acc(builder, 16)
            for i in range(16):
                acc.set(i, ir.Constant(_VF, None))
            # none is 1.0: LLVM would turn fma(x, 1.0, acc) into an add
            coef = [_splat(builder, ir.Constant(_F32, 1.0 + 1e-7 * (i + 1)), _VF) for i in range(16)]
            with cgutils.for_range(builder, length) as blk:
                rows = [builder.add(builder.mul(ir.Constant(_I64, w), length), blk.index) for w in range(WAYS)]
                with cgutils.for_range(builder, ir.Constant(_I64, ROW // LANES)) as chunk:
                    col = builder.mul(chunk.index, ir.Constant(_I64, LANES))
                    for w in range(WAYS):
                        x = _load(builder, m, rows[w], col)
                        if nf == 0:
                            acc.set(w, builder.fadd(x, acc.get(w)))
                        for f in range(nf):
                            j = (w * nf + f) % 16
                            acc.set(j, _fma(builder, x, coef[f % 16], acc.get(j)))
            total = acc.get(0)
            for i in range(1, 16):
                total = builder.fadd(total, acc.get(i))
            return builder.extract_element(total, ir.Constant(_I32, 0))
        return types.float32(buf, L), codegen
    return stream


def _make_runner(nf):
    block = _make_stream(nf)

    @njit
    def run(buf, L, reps):
        total = np.float32(0.0)
        for _ in range(reps):
            total += block(buf, L)
        return total
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="streamed buffer, MB (beyond the caches)")
    ap.add_argument("--fmas", default="0,4,8,16,32", help="FMAs per 64-byte vector (0 first: the read rate)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    nfs = [int(n) for n in args.fmas.split(",")]
    if nfs[0] != 0:
        sys.exit("error: --fmas must start with 0 (the read rate every ratio uses); e.g. --fmas 0,8")
    L = (args.mb << 20) // (4 * ROW * WAYS)
    big = np.ones((WAYS * L, ROW), np.float32)
    small = np.ones((WAYS * 8, ROW), np.float32)        # 32 KiB: in L1
    small_reps = L // 8
    runners = {nf: _make_runner(nf) for nf in nfs}
    for run in runners.values():
        run(small, 8, 1)
    sq = np.ones((SGEMM_N, SGEMM_N), np.float32)
    times = {nf: ([], []) for nf in nfs}
    sgemm = []
    for _ in range(args.repeats):
        for nf, run in runners.items():
            times[nf][0].append(_seconds(lambda: run(big, L, 1)))
            times[nf][1].append(_seconds(lambda: run(small, 8, small_reps)))
        sgemm.append(2 * SGEMM_N ** 3 / _seconds(lambda: sq @ sq, SGEMM_CALLS))
    F = statistics.median(sgemm)
    read_s = statistics.median(times[0][0])
    R = big.nbytes / read_s
    print(f"one core: read {R / 1e9:.1f} GB/s (8 rows at once), SGEMM {F / 1e9:.1f} GFLOP/s")
    print(f"{'FMAs/64B':>8} {'FLOP/B':>6} {'stream ms':>9} {'L1 ms':>7} {'L1 GFLOP/s':>10} {'ratio':>6}")
    cases = []
    for nf in nfs:
        streamed, in_l1 = (statistics.median(t) for t in times[nf])
        flops = big.size / LANES * nf * 2 * LANES
        ratio = max(big.nbytes / R, flops / F) / streamed
        cases.append({"fmas_per_vector": nf, "flop_per_byte": nf / 2, "streamed_ms": round(streamed * 1e3, 2),
                      "l1_ms": round(in_l1 * 1e3, 2), "l1_gflops": round(flops / in_l1 / 1e9, 1),
                      "ratio_vs_roofline": round(ratio, 3)})
        print(f"{nf:>8} {nf / 2:>6.1f} {streamed * 1e3:>9.1f} {in_l1 * 1e3:>7.1f} "
              f"{flops / in_l1 / 1e9:>10.0f} {ratio:>6.2f}")
    print(json.dumps({"read_gbps": round(R / 1e9, 2), "sgemm_gflops": round(F / 1e9, 1), "cases": cases}))


if __name__ == "__main__":
    main()
