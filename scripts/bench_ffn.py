#!/usr/bin/env python
"""Benchmark the FFN and projection kernels (helix_mpi.kernels linear, swiglu) against the host
roofline, one core, at decode batches.

Cases: weight shards one rank holds (Llama-3.1 70B / 405B widths over 8 ranks), stored as
float32 (BLAS sgemv at batch 1, the compiled GEMM of kernels/jit/layers.py at 2-16 rows) and as bf16
(uint16 bits, the Numba GEMM up to 16 rows of x, BLAS on upcast panels above), batch 1, 8 and 16
(16 = the largest batch of the Numba path); and SwiGLU (gate and up shards) at batch 1 and 8.

Counting, per case (s = 4 bytes per weight for float32, 2 for bf16):
    linear x [B,n] @ w [n,m]:   bytes = n*m*s + B*n*4 + B*m*4      FLOPs = 2*B*n*m
    swiglu x [B,H], w_gate/w_up [H,f]:
                                bytes = 2*H*f*s + B*H*4 + B*f*4    FLOPs = 4*B*H*f
(weights are read from memory once; silu and the product, ~5*B*f operations, are not counted.)

Host roofline, measured in the same run, interleaved with the kernel's repeats (see
bench_attention.py, which holds the probes): R = single-thread read bandwidth over a float32
buffer of the case's weight bytes, F = one core's SGEMM FLOP/s (512^3 float32 matmul, 1 thread).
roofline time = max(bytes / R, FLOPs / F); ratio_vs_roofline = roofline time / kernel time
(median over repeats of the ratio within each repeat). Also reported (column "blas"): BLAS
`x @ w` on the float32 weights, as a ratio against the same roofline; and (column "incache",
linear only) the kernel's FLOP/s on a ~1 MiB weight slice that stays in L2 / F: its compute speed
without memory traffic. Last line: JSON (medians:
per case, and over all cases, fp32 and bf16 cases, and batch 1 vs batch 8-16).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_attention import (HostRoofline, _seconds, measure_vs_roofline,  # noqa: E402
                             ratio_summary)
from helix_mpi.kernels import compiled  # noqa: E402
from helix_mpi.kernels import linear, swiglu, to_bf16  # noqa: E402

# (name, rows, cols): shards a rank holds (llama-3.1-70b/405b widths over 8 ranks)
LINEAR_SHAPES = [("w_gate 70b/8", 8192, 3584), ("w_down 70b/8", 3584, 8192),
                 ("wq 405b tpa8", 16384, 2048), ("w_up 405b/8", 16384, 6656)]
SWIGLU_SHAPES = [("swiglu 70b/8", 8192, 3584), ("swiglu 405b/8", 16384, 6656)]


def linear_counts(B, n, m, elem_bytes):
    return n * m * elem_bytes + B * n * 4 + B * m * 4, 2 * B * n * m


def swiglu_counts(B, H, f, elem_bytes):
    return 2 * H * f * elem_bytes + B * H * 4 + B * f * 4, 4 * B * H * f


def weights(rng, rows, cols, dtype):
    """Weight shard [rows, cols] ~ N(0, 1/rows), float32 or bf16 bits."""
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w *= np.float32(rows ** -0.5)
    return to_bf16(w) if dtype == "bf16" else w


INCACHE_BYTES = 2**20        # in-cache probe: a weight slice of ~1 MiB (L2-resident)
INCACHE_CALLS = 20


def incache_vs_sgemm(fn, rows, cols, dtype, batch, repeats, roof, rng):
    """Median over repeats of (FLOP/s of fn(x, w) on an L2-resident weight slice with the same
    columns) / (SGEMM FLOP/s): the kernel's compute speed without memory traffic."""
    w = weights(rng, max(16, INCACHE_BYTES // (4 * cols)), cols, dtype)
    x = rng.standard_normal((batch, w.shape[0]), dtype=np.float32)
    flops = 2 * batch * w.shape[0] * cols
    fn(x, w)
    ratios = []
    for _ in range(repeats):
        t = _seconds(lambda: fn(x, w), INCACHE_CALLS)
        ratios.append(flops / t / roof.sgemm_flops())
    return round(statistics.median(ratios), 3)


def linear_case(name, rows, cols, dtype, batch, repeats, rng):
    w = weights(rng, rows, cols, dtype)
    x = rng.standard_normal((batch, rows), dtype=np.float32)
    nbytes, flops = linear_counts(batch, rows, cols, w.itemsize)
    roof = HostRoofline(w.nbytes)
    res = measure_vs_roofline(lambda: linear(x, w), roof, nbytes, flops, repeats)
    if dtype == "fp32":   # BLAS x @ w on the same weights, against the same roofline
        blas = measure_vs_roofline(lambda: np.dot(x, w), roof, nbytes, flops, repeats)
        res["blas_ratio_vs_roofline"] = blas["ratio_vs_roofline"]
    res["incache_vs_sgemm"] = incache_vs_sgemm(linear, rows, cols, dtype, batch, repeats, roof, rng)
    return {"op": "linear", "weights": name, "shape": [rows, cols], "dtype": dtype,
            "batch": batch, **res}


def swiglu_case(name, H, f, dtype, batch, repeats, rng):
    wg = weights(rng, H, f, dtype)
    wu = weights(rng, H, f, dtype)
    x = rng.standard_normal((batch, H), dtype=np.float32)
    nbytes, flops = swiglu_counts(batch, H, f, wg.itemsize)
    roof = HostRoofline(wg.nbytes + wu.nbytes)
    res = measure_vs_roofline(lambda: swiglu(x, wg, wu), roof, nbytes, flops, repeats)
    return {"op": "swiglu", "weights": name, "shape": [H, f], "dtype": dtype, "batch": batch,
            **res}


def print_row(c):
    rows, cols = c["shape"]
    print(f"{c['op']:>6} {c['weights']:>14} {rows:>6}x{cols:<6} {c['dtype']:>5} {c['batch']:>3} "
          f"{c['bytes'] / 1e6:>7.0f} {c['kernel_ms']:>8.2f} {c['kernel_gbps']:>7.2f} "
          f"{c['kernel_gflops']:>7.1f} {c['read_gbps']:>6.2f} {c['sgemm_gflops']:>6.1f} "
          f"{c['bound']:>7} {c['ratio_vs_roofline']:>6.2f}"
          f"{c['blas_ratio_vs_roofline'] if 'blas_ratio_vs_roofline' in c else '':>6} "
          f"{c.get('incache_vs_sgemm', ''):>7}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--swiglu-batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--kernels", choices=("aot", "jit"), default="aot",
                    help="the precompiled library (what ranks run; built if missing) or Numba's JIT")
    args = ap.parse_args()
    compiled.use(args.kernels)
    print(f"kernels: {args.kernels}")
    rng = np.random.default_rng(0)
    hdr = (f"{'op':>6} {'weights':>14} {'shape':>13} {'dtype':>5} {'B':>3} {'MB':>7} "
           f"{'kern ms':>8} {'GB/s':>7} {'GFLOP/s':>7} {'read':>6} {'sgemm':>6} {'bound':>7} "
           f"{'ratio':>6} {'blas':>5} {'incache':>7}")
    print(hdr)
    print("-" * len(hdr))
    cases = []
    for dtype in args.dtypes.split(","):
        for name, rows, cols in LINEAR_SHAPES:
            for batch in map(int, args.batches.split(",")):
                cases.append(linear_case(name, rows, cols, dtype, batch, args.repeats, rng))
                print_row(cases[-1])
        for name, H, f in SWIGLU_SHAPES:
            for batch in map(int, args.swiglu_batches.split(",")):
                cases.append(swiglu_case(name, H, f, dtype, batch, args.repeats, rng))
                print_row(cases[-1])
    print(json.dumps({"kernels": args.kernels, "cases": cases, **ratio_summary(cases, {
        "fp32": lambda c: c["dtype"] == "fp32", "bf16": lambda c: c["dtype"] == "bf16",
        "batch1": lambda c: c["batch"] == 1, "batch8_16": lambda c: c["batch"] > 1})}))


if __name__ == "__main__":
    main()
