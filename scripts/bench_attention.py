#!/usr/bin/env python
"""Benchmark helix_mpi.kernels.partial_attention against the host roofline, one core.

Cases: K/V stored as float32 and as bf16 (uint16 bits, upcast inside the kernel), batch 1 and 8,
G = Qh/Kh = 1, 4, 8, 16 query heads per KV head (16: Llama-3.1-405B's 128 over 8), D = 128,
contexts 16K and 64K (every request full).
Cases whose float32 K+V would exceed 1 GiB run with fewer KV heads (the table says so), which
keeps the process under ~3 GB.

Counting, per case (s = 4 bytes per element for float32 storage, 2 for bf16):
    bytes = K + V + q + out + lse = 2*B*Kh*T*D*s + 2*B*Qh*D*4 + B*Qh*4
            (K and V are read from memory once: every K/V row serves all G heads of its group)
    FLOPs = 4*B*Qh*T*D   (q.k: 2*D per score; p.v: 2*D per score)
The online softmax (max, subtract, exp, sum, rescale: ~20 operations per score with the
polynomial exp, i.e. ~8% of the 4*D = 512 FLOPs per score at D = 128) is NOT counted: a faster
roofline, so a lower (conservative) ratio.

Host roofline, measured in the same run, interleaved with the kernel's repeats so all three see
the same machine state (the machine is shared):
    R = read bandwidth: a single-thread read of a float32 buffer of the case's K+V bytes (same
        size, so the same cache level), the fastest of three readers: a vectorised Numba sum (one
        sequential stream), BLAS sgemv ones[1,r] @ buf[r,1024] (reads 4-8 rows at once: on this
        VM several concurrent streams read up to ~1.4x faster than one) and NumPy's a.sum();
    F = one core's SGEMM FLOP/s: NumPy float32 matmul 512x512x512 (BLAS, 1 thread; compute-bound:
        3 MiB of operands for 268 MFLOP).
    roofline time = max(bytes / R, FLOPs / F); ratio_vs_roofline = roofline time / kernel time
    (the median over repeats of the ratio within each repeat; 1.0 = at the roofline).
Diagnosis of a miss, per case: incache_vs_sgemm = the kernel's FLOP/s on an L2-sized cache
(INCACHE_BATCH requests of one KV head and INCACHE_TOKENS tokens, same G and dtype) / F,
interleaved with F as above: its compute speed without DRAM traffic (meaningful where compute
matters, G >= 4: at G = 1 a call is short enough for Python's call overhead to weigh); and
kernel_gbps / read_gbps: how close the streaming kernel comes to the read bandwidth; and
kernel_vs_one_stream (column /1strm) = kernel_gbps / one_stream_gbps, the Numba reader's rate
alone: how close it comes to one sequential stream (the kernel reads one K/V head at a time).
Last line: JSON (per-case medians; min and median ratio over all cases, per dtype and per G;
median kernel_vs_one_stream per G).
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
from numba import njit  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.kernels import compiled  # noqa: E402
from helix_mpi.kernels import from_bf16, partial_attention, to_bf16  # noqa: E402

MAX_KV_BYTES = 2**30          # float32 K+V of one case
READ_COLS = 1024              # row length of the sgemv reader
SGEMM_N = 512                 # SGEMM probe: n x n @ n x n float32
SGEMM_CALLS = 4               # matmuls per SGEMM sample (~8 ms)
INCACHE_TOKENS = 512          # in-cache probe: 4 requests x 1 KV head x 512 tokens (K+V: 2 MiB
INCACHE_BATCH = 4             # fp32, 1 MiB bf16 at D = 128: one core's L2 here)
INCACHE_CALLS = 20            # kernel calls per in-cache sample


# ----------------------------------------------------------------------------- host roofline
@njit(cache=True, fastmath=True)
def _numba_read(a):
    # a [N] float32: a vectorised sum (reassociation lets LLVM keep several vector accumulators)
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i]
    return s


def _seconds(fn, calls=1):
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


class HostRoofline:
    """Same-run probes of one core: read bandwidth over nbytes, and SGEMM FLOP/s."""

    def __init__(self, nbytes):
        n = -(-max(nbytes // 4, 1) // READ_COLS) * READ_COLS
        self.buf = np.ones(n, np.float32)                      # [N] float32, ~nbytes
        self.rows = self.buf.reshape(-1, READ_COLS)            # [N/READ_COLS, READ_COLS]
        self.ones = np.ones(self.rows.shape[0], np.float32)    # [N/READ_COLS]
        rng = np.random.default_rng(1)
        self.a = rng.random((SGEMM_N, SGEMM_N), dtype=np.float32)
        self.b = rng.random((SGEMM_N, SGEMM_N), dtype=np.float32)
        self.c = np.empty((SGEMM_N, SGEMM_N), np.float32)
        self.read_seconds(), self.sgemm_flops()                # warm-up (and compile)

    def read_seconds(self):
        """Seconds to read the buffer once: the fastest of three single-thread readers."""
        return min(self.read_probes())

    def read_probes(self):
        """Seconds to read the buffer once by each reader: one sequential stream (the vectorised
        Numba sum), BLAS sgemv (4-8 rows, i.e. streams, at once), NumPy's sum."""
        return (_seconds(lambda: _numba_read(self.buf)), _seconds(lambda: self.ones @ self.rows),
                _seconds(self.buf.sum))

    def sgemm_flops(self):
        """FLOP/s of one core's BLAS SGEMM on compute-bound (L2-resident) operands."""
        t = _seconds(lambda: np.matmul(self.a, self.b, out=self.c), SGEMM_CALLS)
        return 2 * SGEMM_N**3 / t


def measure_vs_roofline(kernel, roof, nbytes, flops, repeats):
    """Time kernel() against the roofline, interleaved: dict of medians and the ratio."""
    kernel()
    t_kern, ratios, read_gbps, sgemm, stream_gbps = [], [], [], [], []
    for _ in range(repeats):
        tk = _seconds(kernel)
        probes = roof.read_probes()
        tr = min(probes)
        stream_gbps.append(roof.buf.nbytes / probes[0] / 1e9)
        f = roof.sgemm_flops()
        bw = roof.buf.nbytes / tr
        t_roof = max(nbytes / bw, flops / f)
        t_kern.append(tk)
        ratios.append(t_roof / tk)
        read_gbps.append(bw / 1e9)
        sgemm.append(f / 1e9)
    tk = statistics.median(t_kern)
    bw, f = statistics.median(read_gbps), statistics.median(sgemm)
    return {
        "bytes": int(nbytes), "flops": int(flops),
        "kernel_ms": round(tk * 1e3, 3),
        "kernel_gbps": round(nbytes / tk / 1e9, 3),
        "kernel_gflops": round(flops / tk / 1e9, 2),
        "read_gbps": round(bw, 3),
        "one_stream_gbps": round(statistics.median(stream_gbps), 3),  # the sequential reader alone
        "sgemm_gflops": round(f, 2),
        "bound": "memory" if nbytes / bw >= flops / f else "compute",
        "ratio_vs_roofline": round(statistics.median(ratios), 3),
    }


def ratio_summary(cases, groups):
    """min and median ratio_vs_roofline over all cases and over each named subset of them."""
    out = {}
    for name, keep in {"all": lambda c: True, **groups}.items():
        r = [c["ratio_vs_roofline"] for c in cases if keep(c)]
        if r:
            out[f"min_ratio_{name}"] = min(r)
            out[f"median_ratio_{name}"] = statistics.median(r)
    out["min_ratio_vs_roofline"] = out.pop("min_ratio_all")
    out["median_ratio_vs_roofline"] = out.pop("median_ratio_all")
    return out


# ----------------------------------------------------------------------------- attention
def numpy_attention(q, k, v, lengths):
    """Straightforward NumPy partial attention (matmul + softmax), float32 caches."""
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


def attention_counts(B, Qh, Kh, T, D, elem_bytes):
    """(bytes, FLOPs) of one decode step of partial attention (see the module docstring)."""
    nbytes = 2 * B * Kh * T * D * elem_bytes + 2 * B * Qh * D * 4 + B * Qh * 4
    return nbytes, 4 * B * Qh * T * D


def make_cache(rng, shape, dtype):
    """Uniform [-0.5, 0.5) K or V cache [B,Kh,T,D], float32 or bf16 bits."""
    a = rng.random(shape, dtype=np.float32)
    a -= np.float32(0.5)
    return to_bf16(a) if dtype == "bf16" else a


def incache_vs_sgemm(dtype, G, D, repeats, roof, rng):
    """Median over repeats of (kernel FLOP/s on an L2-resident cache) / (SGEMM FLOP/s)."""
    shape = (INCACHE_BATCH, 1, INCACHE_TOKENS, D)
    k, v = make_cache(rng, shape, dtype), make_cache(rng, shape, dtype)
    q = rng.standard_normal((INCACHE_BATCH, G, D), dtype=np.float32)
    lengths = np.full(INCACHE_BATCH, INCACHE_TOKENS, np.int64)
    flops = attention_counts(INCACHE_BATCH, G, 1, INCACHE_TOKENS, D, k.itemsize)[1]
    partial_attention(q, k, v, lengths)
    ratios = []
    for _ in range(repeats):
        t = _seconds(lambda: partial_attention(q, k, v, lengths), INCACHE_CALLS)
        ratios.append(flops / t / roof.sgemm_flops())
    return round(statistics.median(ratios), 3)


def run_case(dtype, ctx, batch, kh, G, D, repeats, rng):
    Qh = kh * G
    shape = (batch, kh, ctx, D)
    k = make_cache(rng, shape, dtype)
    v = make_cache(rng, shape, dtype)
    q = rng.standard_normal((batch, Qh, D), dtype=np.float32)
    lengths = np.full(batch, ctx, np.int64)
    nbytes, flops = attention_counts(batch, Qh, kh, ctx, D, k.itemsize)
    roof = HostRoofline(k.nbytes + v.nbytes)
    res = measure_vs_roofline(lambda: partial_attention(q, k, v, lengths), roof, nbytes, flops,
                              repeats)
    res["kernel_vs_one_stream"] = round(res["kernel_gbps"] / res["one_stream_gbps"], 3)
    res["incache_vs_sgemm"] = incache_vs_sgemm(dtype, G, D, repeats, roof, rng)
    del roof
    out, _ = partial_attention(q, k, v, lengths)
    if dtype == "bf16":
        k, v = from_bf16(k), from_bf16(v)
    ref, _ = numpy_attention(q, k, v, lengths)
    return {"dtype": dtype, "context": ctx, "batch": batch, "kv_heads": kh, "q_heads": Qh,
            "group": G, "head_dim": D, **res,
            "max_abs_err_vs_numpy": float(np.abs(out - ref).max())}


def kv_heads_within_budget(kv_heads, batch, ctx, D):
    kh = kv_heads
    while kh > 1 and 2 * batch * kh * ctx * D * 4 > MAX_KV_BYTES:
        kh //= 2
    return kh


def print_row(c, note):
    print(f"{c['dtype']:>5} {c['context']:>7} {c['batch']:>3} {c['group']:>2} {c['kv_heads']:>3} "
          f"{c['bytes'] / 1e6:>8.0f} {c['kernel_ms']:>9.2f} {c['kernel_gbps']:>8.2f} "
          f"{c['kernel_gflops']:>7.1f} {c['read_gbps']:>7.2f} {c['sgemm_gflops']:>7.1f} "
          f"{c['bound']:>7} {c['ratio_vs_roofline']:>6.2f} "
          f"{c['kernel_gbps'] / c['read_gbps']:>6.2f} {c['kernel_vs_one_stream']:>6.2f} "
          f"{c['incache_vs_sgemm']:>7.2f}{note}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--contexts", default="16384,65536")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--groups", default="1,4,8,16", help="query heads per KV head")
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--kernels", choices=("aot", "jit"), default="aot",
                    help="the precompiled library (what ranks run; built if missing) or Numba's JIT")
    args = ap.parse_args()
    compiled.use(args.kernels)
    print(f"kernels: {args.kernels}")
    rng = np.random.default_rng(0)
    hdr = (f"{'dtype':>5} {'context':>7} {'B':>3} {'G':>2} {'Kh':>3} {'MB':>8} {'kern ms':>9} "
           f"{'GB/s':>8} {'GFLOP/s':>7} {'read':>7} {'sgemm':>7} {'bound':>7} {'ratio':>6} "
           f"{'/read':>6} {'/1strm':>6} {'incache':>7}")
    print(hdr)
    print("-" * len(hdr))
    cases = []
    for dtype in args.dtypes.split(","):
        for ctx in map(int, args.contexts.split(",")):
            for batch in map(int, args.batches.split(",")):
                for G in map(int, args.groups.split(",")):
                    kh = kv_heads_within_budget(args.kv_heads, batch, ctx, args.head_dim)
                    c = run_case(dtype, ctx, batch, kh, G, args.head_dim, args.repeats, rng)
                    note = "" if kh == args.kv_heads else f"  (Kh {args.kv_heads}->{kh})"
                    print_row(c, note)
                    cases.append(c)
    streams = {f"median_kernel_vs_one_stream_G{g}": statistics.median(
        c["kernel_vs_one_stream"] for c in cases if c["group"] == g) for g in sorted({c["group"] for c in cases})}
    print(json.dumps({"kernels": args.kernels, "cases": cases, **streams, **ratio_summary(cases, {
        "fp32": lambda c: c["dtype"] == "fp32", "bf16": lambda c: c["dtype"] == "bf16",
        **{f"G{g}": (lambda c, g=g: c["group"] == g) for g in sorted({c["group"] for c in cases})}})}))


if __name__ == "__main__":
    main()
