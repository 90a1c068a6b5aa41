#!/usr/bin/env python
"""How fast one core reads memory as one sequential stream and as several parts at once.

Why (kernels/tiling.py WAYS): the attention kernel once read its K and V caches one row after the
other; a core's prefetchers stream several pages at once faster than one. Readers, over one
float32 buffer of --mb MB (beyond the caches), each a vectorised Numba sum:
    parts=1: the buffer in order (one sequential stream);
    parts=P: the buffer cut into P equal parts, summed together element by element (P streams);
and BLAS sgemv ones[1,r] @ buf[r,1024] (reads 4-8 rows at once), the roofline's fastest reader in
bench_attention.py. Medians of interleaved repeats (each repeat runs every reader once, so all
see the same machine state). Last line: JSON (GB/s per reader, and each / parts=1).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402


# Vectorised sums of parts [P, N/P] float32, the P parts element by element (P streams at once);
# one function per P, the parts named explicitly (LLVM vectorises the loop only then)
@njit(cache=True, fastmath=True)
def _sum_1(a):
    total = np.float32(0.0)
    for j in range(a.shape[1]):
        total += a[0, j]
    return total


@njit(cache=True, fastmath=True)
def _sum_2(a):
    total = np.float32(0.0)
    for j in range(a.shape[1]):
        total += a[0, j] + a[1, j]
    return total


@njit(cache=True, fastmath=True)
def _sum_4(a):
    total = np.float32(0.0)
    for j in range(a.shape[1]):
        total += a[0, j] + a[1, j] + a[2, j] + a[3, j]
    return total


@njit(cache=True, fastmath=True)
def _sum_8(a):
    total = np.float32(0.0)
    for j in range(a.shape[1]):
        total += a[0, j] + a[1, j] + a[2, j] + a[3, j] + a[4, j] + a[5, j] + a[6, j] + a[7, j]
    return total


SUMS = {1: _sum_1, 2: _sum_2, 4: _sum_4, 8: _sum_8}


def _seconds(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=512, help="buffer size, MB (beyond the caches)")
    ap.add_argument("--parts", default="1,2,4,8", help="of 1, 2, 4, 8")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    buf = np.ones((args.mb << 20) // 4, np.float32)  # [N]
    rows = buf.reshape(-1, 1024)                       # [N/1024, 1024]
    ones = np.ones((1, rows.shape[0]), np.float32)
    readers = {f"parts={p}": (lambda v=buf.reshape(p, -1), f=SUMS[p]: f(v)) for p in map(int, args.parts.split(","))}
    readers["sgemv"] = lambda: ones @ rows
    for read in readers.values():
        read()  # compile, touch
    seconds = {name: [] for name in readers}
    for _ in range(args.repeats):
        for name, read in readers.items():
            seconds[name].append(_seconds(read))
    gbps = {name: buf.nbytes / statistics.median(t) / 1e9 for name, t in seconds.items()}
    one = gbps[next(iter(readers))]
    for name, rate in gbps.items():
        print(f"{name:>8}: {rate:6.1f} GB/s  ({rate / one:.2f} x the first)")
    print(json.dumps({"mb": args.mb, "gbps": {k: round(v, 2) for k, v in gbps.items()},
                      "vs_first": {k: round(v / one, 2) for k, v in gbps.items()}}))


if __name__ == "__main__":
    main()
