#!/usr/bin/env python
"""Benchmark bf16 storage (uint16 bits, upcast in the kernel) against float32 storage.

Three parts, everything single-threaded, medians of interleaved repeats (each repeat times every
variant once, so all see the same machine state):

1. Bytes per token per layer of the KV cache, fp32 vs bf16 (GQA 2 * K_local * D * bytes with
   K_local = ceil(Kh / TPA); MLA one latent of kv_lora_rank + rope dims), checked against the
   nbytes of caches actually allocated.
2. partial_attention on a float32 cache and on the same cache stored as bf16 (the float32 cache
   is from_bf16 of the bf16 one, so outputs must agree to float32 rounding): time, bandwidth of
   the bytes each actually reads, the STREAM-like read (`a.sum()` over a float32 array of that
   many bytes, as in bench_attention.py), the ratio to it, the FMA rate, and bf16's speed-up.
   Also a fastmath Numba sum of the same bytes ("fast read"): NumPy's a.sum() is not always at
   memory speed (BLAS sgemv has been seen reading faster than it), so both are reported.
3. linear (GEMV/GEMM at decode batches) on float32 weights (BLAS sgemv at batch 1, the Numba
   GEMM of kernels/jit/layers.py at 2-16 rows) and bf16 weights (the Numba GEMM),
   the naive `x @ from_bf16(w)` (convert, then BLAS), and NumPy reads of the fp32 and bf16
   bytes; weight bandwidth in bytes of the stored matrix per second and weights per second.

Last line: JSON.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/numba_cache")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.kernels import from_bf16, linear, partial_attention, swiglu, to_bf16  # noqa: E402

@njit(cache=True, fastmath=True)
def fast_read(a):
    """Sum of a float32 array with a vectorised (fastmath) loop: a read at memory speed
    (docs/design.md section 6), where NumPy's pairwise a.sum() may be slower than memory."""
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i]
    return s


# (name, rows, cols): weight shards one rank holds (as in bench_ffn.py)
GEMV_SHAPES = [("w_gate 70b/8", 8192, 3584), ("w_down 70b/8", 3584, 8192),
               ("wq 405b tpa8", 16384, 2048), ("w_up 405b/8", 16384, 6656)]


def interleaved_medians(fns, repeats):
    """{name: median seconds}; every repeat runs each fn once, after one warm-up call each."""
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


# ----------------------------------------------------------------------------- 1. bytes
def kv_bytes_table():
    rows = []
    for kh, d, tpa in ((8, 128, 1), (8, 128, 2), (8, 128, 8)):
        k_local = -(-kh // tpa)
        fp32, bf16 = 2 * k_local * d * 4, 2 * k_local * d * 2
        # measured: nbytes of a [1, K_local, C, D] K and V cache of C tokens, per token
        C = 64
        kf = np.zeros((1, k_local, C, d), np.float32)
        kb = to_bf16(kf)
        assert 2 * kf.nbytes // C == fp32 and 2 * kb.nbytes // C == bf16
        rows.append({"cache": f"GQA Kh={kh} D={d} TPA={tpa} (K_local={k_local})",
                     "fp32_bytes": fp32, "bf16_bytes": bf16})
    lat = 512 + 64   # MLA (DeepSeek-V3): kv_lora_rank + qk_rope_head_dim, one latent per token
    rows.append({"cache": "MLA latent 512+64", "fp32_bytes": lat * 4, "bf16_bytes": lat * 2})
    return rows


# ----------------------------------------------------------------------------- 2. attention
def attention_case(ctx, batch, kh, G, D, repeats, rng):
    shape = (batch, kh, ctx, D)
    kb = to_bf16(rng.random(shape, dtype=np.float32) - np.float32(0.5))
    vb = to_bf16(rng.random(shape, dtype=np.float32) - np.float32(0.5))
    kf, vf = from_bf16(kb), from_bf16(vb)     # the same values in float32 storage
    q = rng.standard_normal((batch, kh * G, D), dtype=np.float32)
    lengths = np.full(batch, ctx, np.int64)
    fp32_bytes, bf16_bytes = kf.nbytes + vf.nbytes, kb.nbytes + vb.nbytes
    read32 = np.ones(fp32_bytes // 4, np.float32)
    read16 = np.ones(bf16_bytes // 4, np.float32)
    o32, l32 = partial_attention(q, kf, vf, lengths)
    o16, l16 = partial_attention(q, kb, vb, lengths)
    diff = float(max(np.abs(o16 - o32).max(), np.abs(l16 - l32).max()))
    t = interleaved_medians({
        "fp32": lambda: partial_attention(q, kf, vf, lengths),
        "bf16": lambda: partial_attention(q, kb, vb, lengths),
        "read_fp32": read32.sum, "read_bf16": read16.sum,
        "fast_fp32": lambda: fast_read(read32), "fast_bf16": lambda: fast_read(read16)}, repeats)
    fma = 2 * batch * kh * G * ctx * D       # q.k and p.v multiply-adds
    return {
        "context": ctx, "batch": batch, "kv_heads": kh, "q_heads": kh * G, "head_dim": D,
        "fp32_kv_bytes": fp32_bytes, "bf16_kv_bytes": bf16_bytes,
        "fp32_ms": round(t["fp32"] * 1e3, 3), "bf16_ms": round(t["bf16"] * 1e3, 3),
        "fp32_gbps": round(fp32_bytes / t["fp32"] / 1e9, 3),
        "bf16_gbps": round(bf16_bytes / t["bf16"] / 1e9, 3),
        "stream_fp32_gbps": round(fp32_bytes / t["read_fp32"] / 1e9, 3),
        "stream_bf16_gbps": round(bf16_bytes / t["read_bf16"] / 1e9, 3),
        "fast_read_fp32_gbps": round(fp32_bytes / t["fast_fp32"] / 1e9, 3),
        "fast_read_bf16_gbps": round(bf16_bytes / t["fast_bf16"] / 1e9, 3),
        "bf16_ratio_vs_fast_read": round(t["fast_bf16"] / t["bf16"], 3),
        "fp32_ratio_vs_stream": round(t["read_fp32"] / t["fp32"], 3),
        "bf16_ratio_vs_stream": round(t["read_bf16"] / t["bf16"], 3),
        "fp32_gfma_s": round(fma / t["fp32"] / 1e9, 2), "bf16_gfma_s": round(fma / t["bf16"] / 1e9, 2),
        "bf16_speedup": round(t["fp32"] / t["bf16"], 3),
        "max_abs_diff_bf16_vs_fp32": diff,
    }


# ----------------------------------------------------------------------------- 3. GEMV
def gemv_case(rows, cols, batch, repeats, rng):
    wb = to_bf16(rng.standard_normal((rows, cols), dtype=np.float32))
    wf = from_bf16(wb)
    x = rng.standard_normal((batch, rows), dtype=np.float32)
    read32 = np.ones(wf.nbytes // 4, np.float32)
    read16 = np.ones(wb.nbytes // 4, np.float32)
    y16, y32 = linear(x, wb), linear(x, wf)
    scale = float((np.abs(x) @ np.abs(wf)).max())
    t = interleaved_medians({
        "fp32": lambda: linear(x, wf), "bf16": lambda: linear(x, wb),
        "naive": lambda: x @ from_bf16(wb),
        "read_fp32": read32.sum, "read_bf16": read16.sum,
        "fast_bf16": lambda: fast_read(read16)}, repeats)
    n = rows * cols
    return {
        "batch": batch, "shape": [rows, cols],
        "bf16_ms": round(t["bf16"] * 1e3, 3), "fp32_ms": round(t["fp32"] * 1e3, 3),
        "naive_ms": round(t["naive"] * 1e3, 3),
        "bf16_gbps": round(wb.nbytes / t["bf16"] / 1e9, 3),
        "fp32_gbps": round(wf.nbytes / t["fp32"] / 1e9, 3),
        "read_bf16_gbps": round(wb.nbytes / t["read_bf16"] / 1e9, 3),
        "read_fp32_gbps": round(wf.nbytes / t["read_fp32"] / 1e9, 3),
        "fast_read_bf16_gbps": round(wb.nbytes / t["fast_bf16"] / 1e9, 3),
        "bf16_gweights_s": round(n / t["bf16"] / 1e9, 3),
        "fp32_gweights_s": round(n / t["fp32"] / 1e9, 3),
        "naive_gweights_s": round(n / t["naive"] / 1e9, 3),
        "bf16_ratio_vs_read": round(t["read_bf16"] / t["bf16"], 3),
        "bf16_speedup_vs_fp32": round(t["fp32"] / t["bf16"], 3),
        "bf16_speedup_vs_naive": round(t["naive"] / t["bf16"], 3),
        "max_rel_diff_vs_fp32": float(np.abs(y16 - y32).max() / scale),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="16384,65536")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--group", type=int, default=8, help="query heads per KV head")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--max-kv-gib", type=float, default=1.0,
                    help="fp32 K+V size cap per case; KV heads are halved to fit (G stays)")
    ap.add_argument("--gemv-batches", default="1,8,16")
    ap.add_argument("--gemv-shapes", type=int, default=len(GEMV_SHAPES),
                    help="use the first N weight shapes")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    print("KV cache bytes per token per layer (K+V)")
    table = kv_bytes_table()
    for r in table:
        print(f"  {r['cache']:<36s} fp32 {r['fp32_bytes']:>6d} B   bf16 {r['bf16_bytes']:>6d} B")

    print("\npartial_attention: fp32 cache vs the same cache in bf16 (GB/s of bytes read)")
    hdr = (f"{'context':>8} {'B':>2} {'Kh':>3} {'fp32 ms':>8} {'bf16 ms':>8} {'fp32':>6} {'bf16':>6} "
           f"{'rd32':>6} {'rd16':>6} {'fast16':>6} {'r32':>5} {'r16':>5} {'GFMA32':>6} {'GFMA16':>6} "
           f"{'speedup':>7}")
    print(hdr)
    attn = []
    for ctx in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            kh = args.kv_heads
            while kh > 1 and 2 * batch * kh * ctx * args.head_dim * 4 > args.max_kv_gib * 2**30:
                kh //= 2
            c = attention_case(ctx, batch, kh, args.group, args.head_dim, args.repeats, rng)
            attn.append(c)
            print(f"{ctx:>8} {batch:>2} {kh:>3} {c['fp32_ms']:>8.2f} {c['bf16_ms']:>8.2f} "
                  f"{c['fp32_gbps']:>6.2f} {c['bf16_gbps']:>6.2f} {c['stream_fp32_gbps']:>6.2f} "
                  f"{c['stream_bf16_gbps']:>6.2f} {c['fast_read_bf16_gbps']:>6.2f} "
                  f"{c['fp32_ratio_vs_stream']:>5.2f} "
                  f"{c['bf16_ratio_vs_stream']:>5.2f} {c['fp32_gfma_s']:>6.1f} {c['bf16_gfma_s']:>6.1f} "
                  f"{c['bf16_speedup']:>7.2f}", flush=True)

    print("\nlinear: weight GB/s (bytes of the stored matrix) and G weights/s")
    hdr = (f"{'weights':14s} {'B':>2} {'bf16':>6} {'fp32':>6} {'rd16':>6} {'rd32':>6} {'fast16':>6} | "
           f"{'Gw/s bf16':>9} {'fp32':>6} {'naive':>6} | {'vs rd16':>7} {'vs fp32':>7} {'vs naive':>8}")
    print(hdr)
    gemv = []
    for name, rows, cols in GEMV_SHAPES[:args.gemv_shapes]:
        for batch in map(int, args.gemv_batches.split(",")):
            c = gemv_case(rows, cols, batch, args.repeats, rng) | {"weights": name}
            gemv.append(c)
            print(f"{name:14s} {batch:>2} {c['bf16_gbps']:>6.2f} {c['fp32_gbps']:>6.2f} "
                  f"{c['read_bf16_gbps']:>6.2f} {c['read_fp32_gbps']:>6.2f} "
                  f"{c['fast_read_bf16_gbps']:>6.2f} | "
                  f"{c['bf16_gweights_s']:>9.2f} {c['fp32_gweights_s']:>6.2f} "
                  f"{c['naive_gweights_s']:>6.2f} | {c['bf16_ratio_vs_read']:>7.2f} "
                  f"{c['bf16_speedup_vs_fp32']:>7.2f} {c['bf16_speedup_vs_naive']:>8.2f}",
                  flush=True)

    g32 = np.ones((8, 8192), np.float32)
    wg = (np.random.default_rng(1).standard_normal((8192, 3584), dtype=np.float32) * 0.01)
    wgb = to_bf16(wg)
    wg = from_bf16(wgb)
    t = interleaved_medians({"fp32": lambda: swiglu(g32, wg, wg),
                             "bf16": lambda: swiglu(g32, wgb, wgb)}, args.repeats)
    sw = {"batch": 8, "shape": [8192, 3584],
          "fp32_gbps": round(2 * wg.nbytes / t["fp32"] / 1e9, 3),
          "bf16_gbps": round(2 * wgb.nbytes / t["bf16"] / 1e9, 3),
          "bf16_speedup": round(t["fp32"] / t["bf16"], 3)}
    print(f"\nswiglu 70b/8 batch 8: fp32 {sw['fp32_gbps']:.2f} GB/s, bf16 {sw['bf16_gbps']:.2f} GB/s "
          f"of gate+up weights, bf16 speed-up {sw['bf16_speedup']:.2f}")
    print(json.dumps({"kv_bytes_per_token_per_layer": table, "attention": attn, "linear": gemv,
                      "swiglu": sw}))


if __name__ == "__main__":
    main()
