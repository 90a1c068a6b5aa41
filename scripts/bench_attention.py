#!/usr/bin/env python
"""Benchmark helix_mpi.kernels.partial_attention against memory speed and plain NumPy.

For GQA Kh=8, Qh=64 (G=8), D=128 at contexts 16K/64K/128K and batch 1 and 8, reports the
effective KV-read bandwidth (bytes of K and V read per second, median of repeats after a
warm-up), a STREAM-like single-thread read of the same number of bytes in the same run
(numpy `a.sum()` over a float32 array of KV size, repeats interleaved with the kernel's so
both see the same machine state), their ratio, and the speed-up over a straightforward NumPy
implementation (batched matmul + softmax). To stay under ~6 GB, cases whose K+V would exceed
2 GiB run with fewer KV heads (G stays 8); the table says so. Last line: JSON.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.kernels import partial_attention  # noqa: E402

MAX_KV_BYTES = 2 * 2**30


def numpy_attention(q, k, v, lengths):
    """Straightforward NumPy partial attention (matmul + softmax), same outputs."""
    B, Qh, D = q.shape
    Kh = k.shape[1]
    G = Qh // Kh
    out = np.zeros((B, Qh, D), np.float32)
    lse = np.full((B, Qh), -np.inf, np.float32)
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        qg = q[b].reshape(Kh, G, D)
        s = np.matmul(qg, k[b, :, :n].transpose(0, 2, 1)) / np.float32(math.sqrt(D))  # [Kh,G,n]
        m = s.max(axis=-1, keepdims=True)
        e = np.exp(s - m)
        z = e.sum(axis=-1, keepdims=True)
        out[b] = (np.matmul(e, v[b, :, :n]) / z).reshape(Qh, D)
        lse[b] = (m + np.log(z)).reshape(Qh)
    return out, lse


def timeit(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_case(ctx, batch, kh, G, D, repeats, np_repeats, rng):
    Qh = kh * G
    shape = (batch, kh, ctx, D)
    k = rng.random(shape, dtype=np.float32) - np.float32(0.5)
    v = rng.random(shape, dtype=np.float32) - np.float32(0.5)
    q = rng.standard_normal((batch, Qh, D), dtype=np.float32)
    lengths = np.full(batch, ctx, np.int64)
    kv_bytes = k.nbytes + v.nbytes
    stream = np.ones(kv_bytes // 4, np.float32)

    out, lse = partial_attention(q, k, v, lengths)  # warm-up (and compile)
    stream.sum()
    t_kern, t_stream = [], []
    for _ in range(repeats):
        t_kern.append(timeit(lambda: partial_attention(q, k, v, lengths)))
        t_stream.append(timeit(lambda: stream.sum()))
    del stream
    ro, rl = numpy_attention(q, k, v, lengths)  # warm-up + cross-check
    err = float(np.abs(out - ro).max())
    t_np = [timeit(lambda: numpy_attention(q, k, v, lengths)) for _ in range(np_repeats)]
    tk, ts, tn = (statistics.median(x) for x in (t_kern, t_stream, t_np))
    return {
        "context": ctx, "batch": batch, "kv_heads": kh, "q_heads": Qh, "head_dim": D,
        "kv_bytes": kv_bytes,
        "kernel_ms": round(tk * 1e3, 3),
        "kv_gbps": round(kv_bytes / tk / 1e9, 3),
        "stream_gbps": round(kv_bytes / ts / 1e9, 3),
        "ratio_vs_stream": round(ts / tk, 3),
        "numpy_ms": round(tn * 1e3, 3),
        "speedup_vs_numpy": round(tn / tk, 3),
        "max_abs_err_vs_numpy": err,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="16384,65536,131072")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--group", type=int, default=8, help="query heads per KV head")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--numpy-repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = []
    hdr = (f"{'context':>8} {'batch':>5} {'Kh':>3} {'Qh':>4} {'KV MB':>8} {'kern ms':>9} "
           f"{'kv GB/s':>8} {'stream':>7} {'ratio':>6} {'numpy ms':>9} {'speedup':>8}")
    print(hdr)
    print("-" * len(hdr))
    for ctx in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            kh = args.kv_heads
            while kh > 1 and 2 * batch * kh * ctx * args.head_dim * 4 > MAX_KV_BYTES:
                kh //= 2
            c = run_case(ctx, batch, kh, args.group, args.head_dim, args.repeats,
                         args.numpy_repeats, rng)
            note = "" if kh == args.kv_heads else f"  (KV heads reduced {args.kv_heads}->{kh})"
            print(f"{ctx:>8} {batch:>5} {kh:>3} {c['q_heads']:>4} {c['kv_bytes'] / 1e6:>8.0f} "
                  f"{c['kernel_ms']:>9.2f} {c['kv_gbps']:>8.2f} {c['stream_gbps']:>7.2f} "
                  f"{c['ratio_vs_stream']:>6.2f} {c['numpy_ms']:>9.1f} "
                  f"{c['speedup_vs_numpy']:>8.2f}{note}", flush=True)
            cases.append(c)
    print(json.dumps({"cases": cases}))


if __name__ == "__main__":
    main()
