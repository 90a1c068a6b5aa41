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
