"""Closed-form time model for compute kernels and NCCL-style collectives.

Pure functions of a :class:`~helix_mpi.topology.Topology`; no MPI. Inputs
``nbytes``/``nranks`` (and ``flops``/``hbm_bytes``) may be numpy arrays and
broadcast; scalar inputs give a Python float. All results are in seconds.

The collective formulas follow the latency + bandwidth ("alpha-beta") form that
NCCL itself uses to choose algorithms (NVIDIA/nccl ``src/graph/tuning.cc``:
time = baseLat + nsteps * hwLat + nBytes / bw), with the bandwidth factors
that nccl-tests documents for busbw (``doc/PERFORMANCE.md``).

``nbytes`` is always the nccl-tests "size": the all-reduce buffer, the full
all-gather output, the full reduce-scatter input, or the per-rank total
all-to-all send buffer.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

import numpy as np

from .topology import Topology

GIGA = 1e9  # tables report GB/s = 1e9 bytes/s, as nccl-tests does


class Collective(str, Enum):
    ALL_REDUCE = "all_reduce"
    ALL_TO_ALL = "all_to_all"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"


def _output(value: np.ndarray) -> Any:
    """Python float for 0-d results, ndarray otherwise."""
    return float(value) if np.ndim(value) == 0 else value


# --- compute ----------------------------------------------------------------
def compute_time(flops, hbm_bytes, topo: Topology, precision: str):
    """Roofline time of one kernel.

    t = max(flops / peak_flops[precision], hbm_bytes / hbm_bandwidth) + launch_overhead

    (Williams, Waterman & Patterson, "Roofline", CACM 2009; peaks are dense
    tensor-core FLOP/s from the topology file).
    """
    if precision not in topo.gpu.flops_per_s:
        known = ", ".join(topo.gpu.flops_per_s)
        raise ValueError(f"unknown precision {precision!r}; known: {known}")
    flops, hbm_bytes = np.asarray(flops, float), np.asarray(hbm_bytes, float)
    if np.any(flops < 0) or np.any(hbm_bytes < 0):
        raise ValueError("flops and hbm_bytes must be >= 0")
    math_s = flops / topo.gpu.flops_per_s[precision]
    memory_s = hbm_bytes / topo.gpu.hbm_bytes_per_s
    return _output(np.maximum(math_s, memory_s) + topo.gpu.launch_overhead_s)


# --- collectives: shared geometry --------------------------------------------
def _ring_steps(op: Collective, n: np.ndarray) -> np.ndarray:
    """Ring steps: 2(n-1) for all-reduce (reduce-scatter + all-gather), n-1 otherwise."""
    return 2 * (n - 1) if op is Collective.ALL_REDUCE else n - 1


def _bus_factor(op: Collective, n) -> np.ndarray:
    """nccl-tests busbw factor: bytes each rank moves per byte of ``size``."""
    n = np.asarray(n, float)
    return 2 * (n - 1) / n if op is Collective.ALL_REDUCE else (n - 1) / n


def ranks_per_domain(n, stride, domain_size: int) -> np.ndarray:
    """Ranks of a group in one NVLink domain, its n ranks `stride` apart in a rank numbering that
    fills domain after domain (ranks 0..D-1 are domain 0, as mpiexec packs them by node): a KVP
    group (stride 1) is packed, a TPA group (stride KVP) has min(n, D // KVP) ranks per domain, and
    one rank per domain once the stride reaches D."""
    n, stride = np.asarray(n, float), np.asarray(stride, float)
    return np.minimum(n, np.maximum(np.floor(domain_size / stride), 1.0))


def _domain_count(n: np.ndarray, topo: Topology) -> np.ndarray:
    """NVLink domains spanned, ranks packed domain by domain."""
    return np.ceil(n / topo.fabric.domain_size)


# --- ring (all-reduce, all-gather, reduce-scatter) --------------------------
def _ring_time(op: Collective, size: np.ndarray, n: np.ndarray, topo: Topology) -> np.ndarray:
    """Ring collective.

    Inside one NVLink domain (n <= D):
        t = ring_base + s * ring_step + f * size / link_bw
    with s = 2(n-1), f = 2(n-1)/n for all-reduce and s = n-1, f = (n-1)/n
    for all-gather / reduce-scatter.

    Across m = ceil(n/D) domains (n > D): the ring crosses the scale-out
    network; as in NCCL's tuning model, s_net = 2(m-1) (all-reduce) or m-1
    of the steps pay the scale-out latency instead of the NVLink step, and
    every ring link carries the same traffic, so the slowest hop sets the
    pace: bandwidth = min(link_bw, scale_out_bw).
        t = ring_base + (s - s_net) * ring_step + s_net * net_latency
            + f * size / min(link_bw, scale_out_bw)
    """
    fabric, net = topo.fabric, topo.scale_out
    steps = _ring_steps(op, n)
    net_steps = _ring_steps(op, _domain_count(n, topo))
    latency = fabric.ring_base_s + (steps - net_steps) * fabric.ring_step_s + net_steps * net.latency_s
    spans = n > fabric.domain_size
    bandwidth = np.where(spans, min(fabric.link_bytes_per_s, net.bytes_per_s), fabric.link_bytes_per_s)
    return latency + _bus_factor(op, n) * size / bandwidth


# --- NVLS (all-reduce only) ----------------------------------------------------
def _nvls_time(size: np.ndarray, n: np.ndarray, topo: Topology) -> np.ndarray:
    """NVLink SHARP all-reduce: the NVSwitch reduces and multicasts.

        t = nvls_base + (n-1) * nvls_step + size / (link_bw * nvls_efficiency)

    Each rank pushes its whole buffer into the switch once and receives the
    reduced buffer once, so it moves ~size bytes per direction instead of the
    ring's 2(n-1)/n * size. This is why NCCL's tuning model doubles the NVLS
    all-reduce bus bandwidth (``intraBw *= 2`` next to ``nvlsEfficiency`` in
    tuning.cc) and why its NVLS latency is one constant (hwLat NVLS entry).
    NVLS works inside one NVLink domain only: +inf where n > D or NVLS is
    unavailable.
    """
    fabric = topo.fabric
    t = fabric.nvls_base_s + (n - 1) * fabric.nvls_step_s
    t = t + size / (fabric.link_bytes_per_s * fabric.nvls_efficiency)
    usable = fabric.nvls_available & (n <= fabric.domain_size)
    return np.where(usable, t, np.inf)


# --- all-to-all ----------------------------------------------------------------
def _all_to_all_time(size: np.ndarray, n: np.ndarray, topo: Topology) -> np.ndarray:
    """Direct all-to-all over NVSwitch (every rank sends size/n to each peer).

    Inside one domain (n <= D):
        t = a2a_base + (n-1) * a2a_step + (n-1)/n * size / link_bw
    Across domains (n > D), a rank has D-1 peers on NVLink and n-D peers
    behind the scale-out network; both links work concurrently, so
        t = a2a_base + (n-1) * a2a_step + net_latency
            + max((D-1)/n * size / link_bw, (n-D)/n * size / scale_out_bw)
    """
    fabric, net = topo.fabric, topo.scale_out
    local_peers = np.minimum(n, fabric.domain_size) - 1
    remote_peers = n - 1 - local_peers
    latency = fabric.a2a_base_s + (n - 1) * fabric.a2a_step_s + np.where(remote_peers > 0, net.latency_s, 0.0)
    nvlink_s = local_peers / n * size / fabric.link_bytes_per_s
    network_s = remote_peers / n * size / net.bytes_per_s
    return latency + np.maximum(nvlink_s, network_s)


# --- public API --------------------------------------------------------------------
def _validated(nbytes, nranks) -> tuple[np.ndarray, np.ndarray]:
    size = np.asarray(nbytes, float)
    n = np.asarray(nranks)
    if not np.issubdtype(n.dtype, np.integer) and not np.all(np.mod(n, 1) == 0):
        raise ValueError(f"nranks must be whole numbers, got {nranks!r}")
    n = n.astype(float)
    if np.any(n < 1):
        raise ValueError(f"nranks must be >= 1, got {nranks!r}")
    if np.any(size < 0):
        raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
    return size, n


def _all_reduce_time(size, n, topo: Topology, algorithm: str | None) -> np.ndarray:
    if algorithm == "ring":
        return _ring_time(Collective.ALL_REDUCE, size, n, topo)
    nvls = _nvls_time(size, n, topo)
    if algorithm == "nvls":
        if np.any(np.isinf(nvls) & (n > 1)):
            raise ValueError(
                f"NVLS all-reduce needs nvls_available and nranks <= domain_size ({topo.fabric.domain_size}) "
                f"on topology {topo.name!r}; use algorithm='ring' or None"
            )
        return nvls
    if algorithm is None:
        return np.minimum(_ring_time(Collective.ALL_REDUCE, size, n, topo), nvls)
    raise ValueError(f"unknown all_reduce algorithm {algorithm!r}; use None, 'ring' or 'nvls'")


def collective_time(op, nbytes, nranks, topo: Topology, algorithm: str | None = None):
    """Modeled duration (s) of one collective; exactly 0.0 when nranks == 1.

    ``op`` is a :class:`Collective` or its string value. ``algorithm``:
    all_reduce accepts None (fastest of ring and NVLS), "ring" or "nvls";
    all_gather / reduce_scatter accept None or "ring"; all_to_all accepts
    None or "direct". Formulas are in ``_ring_time``, ``_nvls_time`` and
    ``_all_to_all_time``.
    """
    op = Collective(op)
    size, n = _validated(nbytes, nranks)
    if op is Collective.ALL_REDUCE:
        t = _all_reduce_time(size, n, topo, algorithm)
    elif op is Collective.ALL_TO_ALL:
        if algorithm not in (None, "direct"):
            raise ValueError(f"unknown all_to_all algorithm {algorithm!r}; use None or 'direct'")
        t = _all_to_all_time(size, n, topo)
    else:
        if algorithm not in (None, "ring"):
            raise ValueError(f"unknown {op.value} algorithm {algorithm!r}; use None or 'ring'")
        t = _ring_time(op, size, n, topo)
    return _output(np.where(n == 1, 0.0, t))


def algbw(nbytes, time_s):
    """Algorithm bandwidth, bytes/s: size / time (nccl-tests). 0 where time is 0."""
    size, t = np.asarray(nbytes, float), np.asarray(time_s, float)
    safe = np.where(t > 0, t, 1.0)
    return _output(np.where(t > 0, size / safe, 0.0))


def busbw(op, nbytes, time_s, nranks):
    """Bus bandwidth, bytes/s: algbw * factor, the nccl-tests convention
    (doc/PERFORMANCE.md): all_reduce 2(n-1)/n; all_gather, reduce_scatter and
    all_to_all (n-1)/n. Comparable to the link bandwidth for any n."""
    return _output(np.asarray(algbw(nbytes, time_s)) * _bus_factor(Collective(op), nranks))


def collective_table(op, sizes, nranks: int, topo: Topology, algorithm: str | None = None) -> list[dict]:
    """nccl-tests style rows: bytes, time_s, algbw and busbw (GB/s = 1e9 B/s)."""
    op = Collective(op)
    rows = []
    for size in sizes:
        size = parse_size(size) if isinstance(size, str) else int(size)
        t = collective_time(op, size, nranks, topo, algorithm)
        rows.append({
            "bytes": size,
            "time_s": t,
            "algbw": algbw(size, t) / GIGA,
            "busbw": busbw(op, size, t, nranks) / GIGA,
        })
    return rows


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'8K' -> 8192, '1M' -> 1048576, '4096' -> 4096 (binary units, as nccl-tests -b/-e)."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return int(text)
    match = _SIZE_PATTERN.match(str(text))
    if not match:
        raise ValueError(f"cannot parse size {text!r}; use an integer with optional K, M, G or T suffix, e.g. 8K")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


# === the calibrated model: measured tables, fitted physics, spec ====================================
# Every duration below comes with its source, per element: what timed it.
SPEC, FITTED, TABLE = 0, 1, 2
SOURCES = ("spec", "fitted", "table")
_FALLBACK_DTYPES = {"fp4": ("fp4", "fp8", "bf16"), "fp8": ("fp8", "fp8_block", "bf16"),
                    "fp8_block": ("fp8_block", "fp8", "bf16"), "bf16": ("bf16",)}
_PEAK_OF = {"fp4": "fp4", "fp8": "fp8", "fp8_block": "fp8", "bf16": "bf16"}


def _roofline(flops, nbytes, topo: Topology, precision: str, kernels=1.0):
    """Spec model of a kernel: max(FLOPs / peak, bytes / HBM bandwidth) + a launch gap per kernel."""
    math_s = np.asarray(flops, float) / topo.gpu.flops_per_s[_PEAK_OF.get(precision, "bf16")]
    memory_s = np.asarray(nbytes, float) / topo.gpu.hbm_bytes_per_s
    return np.maximum(math_s, memory_s) + kernels * topo.gpu.launch_overhead_s


def _choose(table_s, inside, fitted):
    """The measured value where inside the table, else `fitted()` (computed only when needed)."""
    if np.all(inside):
        return table_s, np.full(np.shape(table_s), TABLE)
    return np.where(inside, table_s, fitted()), np.where(inside, TABLE, FITTED)


def _efficiency(parallel, fit) -> np.ndarray:
    """Fraction of its bandwidth a kernel of `parallel` work units reaches (at least one unit: an
    empty kernel still runs)."""
    return fit.efficiency(np.maximum(np.asarray(parallel, dtype=float), 1.0))


def _gemm_seconds(k, topo: Topology):
    from .calibration.fits import gemm_features, gemm_work_units

    cal = topo.calibration
    dtype = next((d for d in _FALLBACK_DTYPES[k.dtype] if cal is not None and d in cal.tables.gemm), None)
    if dtype is None:
        return _roofline(k.flops, k.hbm_bytes, topo, k.dtype), SPEC
    fit = cal.fits.gemm[dtype]
    units = gemm_work_units(k.n, k.k, dtype)
    fitted = lambda: fit(gemm_features(k.m, k.n, k.k, dtype, _efficiency(units, fit)))  # noqa: E731
    seconds, source = _choose(*cal.tables.gemm[dtype](k.m, k.n, k.k), fitted)
    if k.fused_quant and dtype != "bf16" and "bf16" in cal.fits.gemm:
        floor = cal.fits.gemm["bf16"].coefficients[0]
        quantize = max(fit.coefficients[0] - floor, 0.0)  # the standalone activation quantization kernel
        seconds = np.maximum(seconds - quantize, floor)
    return seconds, source


def _attention_seconds(k, topo: Topology):
    from .calibration.fits import attention_features, decode_work_units

    cal = topo.calibration
    fits = {} if cal is None else cal.fits.attention
    dtype = k.kv_dtype if k.kv_dtype in fits else ("fp8" if "fp8" in fits else None)
    if dtype is None:
        return _roofline(k.flops, k.hbm_bytes, topo, "bf16"), SPEC
    fit = fits[dtype]  # fp4 KV (no measured kernel): the fp8 kernel's physics at fp4 bytes
    units = decode_work_units(k.batch, k.kv_heads, k.tokens)
    fitted = lambda: fit(attention_features(k.batch, k.q_heads, k.kv_heads, k.head_dim, k.tokens,  # noqa: E731
                                            k.kv_dtype, _efficiency(units, fit)))
    grid = cal.tables.attention.get(k.kv_dtype, {}).get((int(k.q_heads), int(k.kv_heads), int(k.head_dim)))
    if grid is None:
        return fitted(), FITTED
    return _choose(*grid(k.batch, k.tokens), fitted)


def _mla_seconds(k, topo: Topology):
    from .calibration.fits import decode_work_units, mla_features

    cal = topo.calibration
    fits = {} if cal is None else cal.fits.mla
    dtype = k.kv_dtype if k.kv_dtype in fits else ("fp8" if "fp8" in fits else None)
    if dtype is None:
        return _roofline(k.flops, k.hbm_bytes, topo, "bf16"), SPEC
    fit = fits[dtype]
    units = decode_work_units(k.batch, 1.0, k.tokens)
    fitted = lambda: fit(mla_features(k.batch, k.heads, k.tokens, k.kv_dtype, k.latent, k.rope,  # noqa: E731
                                      _efficiency(units, fit)))
    grid = cal.tables.mla.get(k.kv_dtype, {}).get(int(k.heads)) if (k.latent, k.rope) == (512, 64) else None
    if grid is None:
        return fitted(), FITTED
    return _choose(*grid(k.batch, k.tokens), fitted)


_MOE_TABLE_DTYPES = {"bf16": ("bf16",), "fp8": ("fp8",), "fp8_block": ("fp8_block",), "fp4": ("nvfp4",)}


def _moe_seconds(k, topo: Topology):
    from .calibration.fits import moe_features
    from .gpuops import GEMM_DTYPES

    cal = topo.calibration
    fit = None if cal is None else cal.fits.moe
    if fit is None:
        return _roofline(k.flops, k.hbm_bytes, topo, k.dtype), SPEC
    fitted = lambda: fit(moe_features(k.hit, k.pairs, k.hidden, k.inter, GEMM_DTYPES[k.dtype], k.tokens,  # noqa: E731
                                      k.topk))
    key = (int(k.hidden), int(round(k.inter * k.tp)), int(k.topk), int(k.experts), int(round(k.tp)), int(round(k.ep)))
    for dtype in _MOE_TABLE_DTYPES[k.dtype]:
        grid = cal.tables.moe.get(dtype, {}).get(key)
        if grid is not None:
            return _choose(*grid(k.tokens), fitted)
    return fitted(), FITTED


def _elementwise_seconds(k, topo: Topology):
    cal = topo.calibration
    if cal is None or cal.fits.shortest_kernel_s is None or "bf16" not in cal.fits.gemm:
        return _roofline(k.flops, k.hbm_bytes, topo, "bf16", k.count), SPEC
    per_byte = cal.fits.gemm["bf16"].coefficients[1]  # a streaming kernel's achieved seconds per byte
    return k.count * cal.fits.shortest_kernel_s + k.nbytes * per_byte, FITTED


def kernel_latency(kernel, topo: Topology) -> float:
    """The fixed part of a kernel's time (what remains when it moves no data): the fitted t0 of its
    kind on a calibrated topology, the launch overhead per kernel on the spec roofline."""
    cal = topo.calibration
    count = getattr(kernel, "count", 1.0)
    if cal is None:
        return count * topo.gpu.launch_overhead_s
    kind = kernel.kind.value
    if kind == "elementwise" and cal.fits.shortest_kernel_s is not None:
        return count * cal.fits.shortest_kernel_s
    fits = {"gemm": cal.fits.gemm.get(getattr(kernel, "dtype", ""), None), "moe": cal.fits.moe,
            "attention": cal.fits.attention.get(getattr(kernel, "kv_dtype", ""), None),
            "mla": cal.fits.mla.get(getattr(kernel, "kv_dtype", ""), None)}
    fit = fits.get(kind)
    return fit.coefficients[0] if fit is not None else count * topo.gpu.launch_overhead_s


_KERNEL_TIMERS = {"gemm": _gemm_seconds, "attention": _attention_seconds, "mla": _mla_seconds,
                  "moe": _moe_seconds, "elementwise": _elementwise_seconds}


def kernel_seconds(kernel, topo: Topology, cuda_graphs: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, source) of one GPU kernel (`gpuops`), arrays if its shape is. Inside a measured
    table: interpolated (TABLE); outside it: the physics fitted to the table (FITTED), never
    faster than reading its bytes at the spec HBM bandwidth; on a
    topology without tables: the roofline (SPEC). Without CUDA graphs a kernel takes at least the
    host's launch time (kernels shorter than it leave the GPU idle)."""
    seconds, source = _KERNEL_TIMERS[kernel.kind.value](kernel, topo)
    if np.any(source == FITTED):  # no fit may read HBM faster than the GPU's spec bandwidth
        floor = np.asarray(kernel.hbm_bytes, float) / topo.gpu.hbm_bytes_per_s
        seconds = np.where(source == FITTED, np.maximum(seconds, floor), seconds)
    if not cuda_graphs:
        seconds = np.maximum(seconds, getattr(kernel, "count", 1.0) * topo.gpu.host_launch_s)
    return seconds, source


def collective_seconds(op, nbytes, nranks, topo: Topology, comm: str = "nccl",
                       stride=1) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, source) of one collective (exactly 0 over one rank) whose ranks are `stride`
    apart (placement: `ranks_per_domain`; 1 for a packed group).

    comm "nccl": nccl-tests' measured table where it has the rank count and size; otherwise the
    algorithm NCCL would pick among the fitted ones (all-reduce, all-gather, reduce-scatter: the
    faster of ring and NVLS; all-to-all: direct). comm "trtllm": the all-reduce is TensorRT-LLM's
    custom kernel where measured (its AUTO strategy falls back to NCCL when NCCL is faster, and
    beyond the measured rank counts), the all-to-all its one-kernel NVLink all-to-all where the
    system has it measured; everything else as NCCL. A topology without tables: the spec formulas.
    """
    op = Collective(op).value
    size, n = _validated(nbytes, nranks)
    local = ranks_per_domain(n, stride, topo.fabric.domain_size)
    in_size = np.where(n > local, _local_size(op, size, n, local), size)
    if topo.calibration is None:
        seconds, source = np.asarray(collective_time(op, size, n, topo), float), np.full(np.shape(size * n), SPEC)
        spread = local < np.minimum(n, topo.fabric.domain_size)  # a strided group: hierarchical as below
        if np.any(spread):
            inner = np.where(local > 1, collective_time(op, in_size, local, topo), 0.0)
            seconds = np.where(spread, _across_domains(op, size, n, local, inner, topo), seconds)
    else:
        seconds, source = _in_domain_seconds(op, in_size, local, topo, comm)
        seconds = np.where(local > 1, seconds, 0.0)  # one rank per domain: only the network part
        seconds = np.where(n > local, _across_domains(op, size, n, local, seconds, topo), seconds)
    one = n == 1
    return np.where(one, 0.0, seconds), np.where(one, SPEC, source)


def _in_domain_seconds(op: str, size, n, topo: Topology, comm: str):
    seconds, source = _nccl_seconds(op, size, n, topo)
    if comm == "trtllm":
        seconds, source = _trtllm_seconds(op, size, n, topo, seconds, source)
    return seconds, source


def _local_size(op: str, size, n, local):
    """nccl-tests size of the in-domain part of a collective spanning domains (hierarchical: the
    all-reduce runs in full inside each domain; an all-to-all's local share stays on NVLink)."""
    return size * local / n if op == "all_to_all" else size


def _across_domains(op: str, size, n, local, in_domain, topo: Topology):
    """A collective whose n ranks span m = n / local NVLink domains, as NCCL's hierarchical
    algorithms run it: the in-domain part (`in_domain`) plus a ring over the m domains on the
    scale-out network carrying 1 / local of the data per GPU (one NIC per GPU, each moving its
    slice), e.g. all-reduce = reduce-scatter and all-gather inside the domain, all-reduce across.
    An all-to-all's remote share goes over the network after the in-domain exchange's fixed cost
    (NCCL's cross-node all-to-all is grouped sends through the network proxy: its latency adds to
    the kernel's, so a group spread over domains is never cheaper than the same group packed); an
    all-reduce takes the faster of the ring and NCCL's tree across domains."""
    from .collective_algorithms import Ring

    m = np.ceil(n / local)
    net = topo.scale_out
    ring = Ring(0.0, net.latency_s, net.bytes_per_s)
    if op == "all_to_all":
        remote = ring.seconds(op, size * (n - local) / n * m / np.maximum(m - 1, 1), m)
        return in_domain + remote
    across = ring.seconds(op, size / local, m)
    if op == "all_reduce":  # NCCL's tree: 2 log2(m) network steps, each moving the slice up and down
        tree = 2 * np.ceil(np.log2(np.maximum(m, 2))) * net.latency_s + 2 * size / local / net.bytes_per_s
        across = np.minimum(across, tree)
    return in_domain + across


def _nccl_algorithms(op: str, topo: Topology) -> list:
    from .collective_algorithms import Direct, Nvls, Ring

    fits = topo.calibration.fits.collectives
    fit = fits.nccl.get(op)
    if fit is None:
        return []
    base, latency, per_byte = fit.coefficients
    if op == "all_to_all":
        return [Direct(base, latency, 1 / per_byte)]
    algorithms = [Ring(base, latency, 1 / per_byte)]
    if topo.fabric.nvls_available and op in fits.nvls_bandwidth:
        algorithms.append(Nvls(base, topo.fabric.nvls_base_s, fits.nvls_bandwidth[op]))
    return algorithms


def _nccl_seconds(op: str, size: np.ndarray, n: np.ndarray, topo: Topology):
    algorithms = _nccl_algorithms(op, topo)
    if not algorithms:
        return np.asarray(collective_time(op, size, n, topo), float), np.full(np.broadcast(size, n).shape, SPEC)
    fitted = np.min([a.seconds(op, size, n) for a in algorithms], axis=0)
    seconds, source = np.broadcast_to(fitted, np.broadcast(size, n).shape).copy(), np.full(np.shape(fitted), FITTED)
    for ranks, grid in topo.calibration.tables.nccl.get(op, {}).items():
        measured, inside = grid(size)
        inside = inside & (n == ranks)
        seconds, source = np.where(inside, measured, seconds), np.where(inside, TABLE, source)
    return seconds, source


def _staging(size, cal) -> np.ndarray:
    """What a decode step's custom all-reduce does beyond the measured kernel (which reduces a
    buffer already in its IPC workspace): the copy of the input into that workspace (one short
    kernel moving 2 x size) and the fused residual add + RMSNorm (2 x size more)."""
    fits = cal.fits
    if fits.shortest_kernel_s is None or "bf16" not in fits.gemm:
        return 0.0
    return fits.shortest_kernel_s + 4.0 * np.asarray(size, float) * fits.gemm["bf16"].coefficients[1]


def _symmetric_all_reduce(size, n, topo: Topology):
    """TensorRT-LLM's all-reduce beyond its custom kernels (over 8 ranks or 4 MiB): AUTO returns NCCL_SYMMETRIC
    (cpp/tensorrt_llm/common/customAllReduceUtils.h), NCCL 2.27's symmetric-memory kernels, which
    reduce through the NVSwitch multicast (`SymmetricMulticast`: latency independent of n).
    Assumed: their fixed cost is the custom one-shot kernel's at 8 ranks (public figures agree:
    "under 8 us" on 4 GB200 GPUs and a fixed cost "just over 3 us" on 8 B200, NVIDIA/nccl-tests
    issue 333); their bandwidth is NVLS's, fitted to the measured tables."""
    from .calibration.fits import TRTLLM_ALL_REDUCE_MAX_RANKS
    from .collective_algorithms import Ring, SymmetricMulticast

    cal = topo.calibration
    fit = cal.fits.collectives.trtllm_all_reduce
    bandwidth = cal.fits.collectives.nvls_bandwidth.get("all_reduce")
    if fit is None or bandwidth is None or not topo.fabric.nvls_available:
        return None
    latency = float(Ring(*fit.coefficients[:2], 1 / fit.coefficients[2]).seconds("all_reduce", 0.0,
                                                                                TRTLLM_ALL_REDUCE_MAX_RANKS))
    return SymmetricMulticast(latency, bandwidth).seconds("all_reduce", size, n) + _staging(size, cal)


def _trtllm_seconds(op: str, size, n, topo: Topology, nccl_s, nccl_source):
    from .calibration.fits import TRTLLM_ALL_REDUCE_MAX_BYTES, TRTLLM_ALL_REDUCE_MAX_RANKS
    from .collective_algorithms import Ring

    cal = topo.calibration
    if op == "all_reduce":  # AUTO: the custom kernel where it applies and is faster, else NCCL
        seconds, source = nccl_s, nccl_source
        fit = cal.fits.collectives.trtllm_all_reduce
        if fit is not None:
            custom = Ring(*fit.coefficients[:2], 1 / fit.coefficients[2]).seconds(op, size, n) + _staging(size, cal)
            better = (n <= TRTLLM_ALL_REDUCE_MAX_RANKS) & (size <= TRTLLM_ALL_REDUCE_MAX_BYTES) & (custom < seconds)
            seconds, source = np.where(better, custom, seconds), np.where(better, FITTED, source)
        for ranks, grid in cal.tables.trtllm_allreduce.items():
            measured, inside = grid(size)
            measured = measured + _staging(size, cal)
            better = inside & (n == ranks) & (size <= TRTLLM_ALL_REDUCE_MAX_BYTES) & (measured < nccl_s)
            seconds, source = np.where(better, measured, seconds), np.where(better, TABLE, source)
        symmetric = _symmetric_all_reduce(size, n, topo)
        if symmetric is not None:
            custom = (n <= TRTLLM_ALL_REDUCE_MAX_RANKS) & (size <= TRTLLM_ALL_REDUCE_MAX_BYTES)
            better = ~custom & (n > 2) & (symmetric < seconds)  # NVLS needs more than 2 ranks
            seconds, source = np.where(better, symmetric, seconds), np.where(better, FITTED, source)
        return seconds, source
    fit = cal.fits.collectives.one_kernel_all_to_all
    if op == "all_to_all" and fit is not None:
        from .collective_algorithms import OneKernelAllToAll

        base, peer, per_byte = fit.coefficients
        seconds = OneKernelAllToAll(base, peer, 1 / per_byte).seconds(op, size, n)
        return np.broadcast_to(seconds, np.shape(nccl_s)).copy(), np.full(np.shape(nccl_s), FITTED)
    return nccl_s, nccl_source
