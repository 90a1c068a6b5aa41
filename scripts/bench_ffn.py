#!/usr/bin/env python
"""Benchmark the FFN and projection kernels (GEMV-shaped at decode batches) against memory speed.

For each weight shape (a TPF shard of Llama FFN/projection matrices) and batch 1 and 8: the
weight-read bandwidth of helix_mpi.kernels.linear (bytes of W per second, median of repeats),
a STREAM-like single-thread read of the same bytes (`a.sum()` over a float32 array of W's size),
and NumPy's BLAS `x @ W`, all in the same run, interleaved. Last line: JSON.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.kernels import linear, swiglu  # noqa: E402

REPEATS = 7
# (name, rows, cols): shards a rank holds (llama-3.1-70b/405b widths over 8 ranks)
SHAPES = [("w_gate 70b/8", 8192, 3584), ("w_down 70b/8", 3584, 8192), ("wq 405b tpa8", 16384, 2048),
          ("w_up 405b/8", 16384, 6656)]


def _median_seconds(fn) -> float:
    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def measure(rows: int, cols: int, batch: int) -> dict:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    x = rng.standard_normal((batch, rows), dtype=np.float32)
    stream = np.empty(rows * cols, dtype=np.float32)
    stream.fill(1.0)
    linear(x, w), x @ w, stream.sum()  # warm-up
    t_kernel = _median_seconds(lambda: linear(x, w))
    t_blas = _median_seconds(lambda: x @ w)
    t_stream = _median_seconds(lambda: stream.sum())
    nbytes = w.nbytes
    return {"batch": batch, "weight_gbps": nbytes / t_kernel / 1e9, "blas_gbps": nbytes / t_blas / 1e9,
            "stream_gbps": nbytes / t_stream / 1e9, "ratio_vs_stream": t_stream / t_kernel,
            "ratio_vs_blas": t_blas / t_kernel}


def main() -> None:
    cases = []
    print(f"{'weights':16s} {'shape':>13s} {'B':>2s} {'kernel GB/s':>11s} {'BLAS GB/s':>9s} {'read GB/s':>9s}"
          f" {'vs read':>7s} {'vs BLAS':>7s}")
    for name, rows, cols in SHAPES:
        for batch in (1, 8):
            row = measure(rows, cols, batch) | {"weights": name, "shape": [rows, cols]}
            cases.append(row)
            print(f"{name:16s} {rows:6d}x{cols:<6d} {batch:2d} {row['weight_gbps']:11.2f} {row['blas_gbps']:9.2f}"
                  f" {row['stream_gbps']:9.2f} {row['ratio_vs_stream']:7.2f} {row['ratio_vs_blas']:7.2f}")
    g = np.ones((8, 8192), np.float32)
    wg = np.ones((8192, 3584), np.float32)
    t_swiglu = _median_seconds(lambda: swiglu(g, wg, wg))
    print(f"swiglu 70b/8 batch 8: {2 * wg.nbytes / t_swiglu / 1e9:.2f} GB/s of gate+up weights")
    print(json.dumps({"cases": cases, "swiglu_gbps": 2 * wg.nbytes / t_swiglu / 1e9}))


if __name__ == "__main__":
    main()
