"""Collective algorithms, one named class each (as ASTRA-sim keeps one class per algorithm).

An algorithm times one collective of nccl-tests size S over n ranks with a latency term and a
bandwidth term. Its parameters come from the topology file (`spec`: vendor specs and NCCL's tuning
constants) or, on a calibrated topology, from a fit to the measured tables (`fitted`; see
`calibration.fits`); `costmodel.collective_seconds` picks the measured table itself where it has
the rank count and size (`table`), and otherwise the algorithm the library would choose.

Forms (f = bytes each rank moves per byte of S, the nccl-tests busbw factor: all-reduce
2(n-1)/n, others (n-1)/n; steps = 2(n-1) for all-reduce, n-1 otherwise):
- `Ring`:   t = base + steps * step_latency + f S / bus_bandwidth
- `Nvls`:   t = base + nvls_latency + S / nvls_bandwidth      (NVLink SHARP: the switch reduces and
            multicasts, so a rank moves ~S each way whatever n; NCCL's latency for it is one constant)
- `Direct`: t = base + (n-1) * peer_latency + (n-1)/n S / bus_bandwidth   (all-to-all: every peer at once)
- `SymmetricMulticast`: t = latency + S / nvls_bandwidth, independent of n (NCCL 2.27's
            symmetric-memory kernels: every rank reduces through the switch's multicast with one
            load-reduce per element, so neither steps nor peers add latency)
- `OneKernelAllToAll`: TensorRT-LLM's NVLink all-to-all kernel (one launch for all peers)
  t = base + (n-1) * peer_latency + (n-1)/n S / bus_bandwidth, fitted to its MoE dispatch kernel,
  the only all-to-all measured across the whole NVL72 rack.
Any collective over one rank costs exactly 0 (costmodel).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, ALL_TO_ALL = "all_reduce", "all_gather", "reduce_scatter", "all_to_all"


def bus_factor(op: str, n):
    """nccl-tests busbw factor: bytes each rank moves per byte of `size`."""
    n = np.asarray(n, dtype=float)
    return 2 * (n - 1) / n if op == ALL_REDUCE else (n - 1) / n


def ring_steps(op: str, n):
    """Ring steps: 2(n-1) for all-reduce (reduce-scatter + all-gather), n-1 otherwise."""
    n = np.asarray(n, dtype=float)
    return 2 * (n - 1) if op == ALL_REDUCE else n - 1


@dataclass(frozen=True)
class Ring:
    name = "ring"
    base_s: float
    step_s: float
    bus_bytes_per_s: float

    def seconds(self, op: str, size, n):
        return self.base_s + ring_steps(op, n) * self.step_s + bus_factor(op, n) * size / self.bus_bytes_per_s


@dataclass(frozen=True)
class Nvls:
    name = "nvls"
    base_s: float
    latency_s: float
    bytes_per_s: float  # algorithm bandwidth (S / t at large S), independent of n

    def seconds(self, op: str, size, n):
        return self.base_s + self.latency_s + np.asarray(size, dtype=float) / self.bytes_per_s


@dataclass(frozen=True)
class SymmetricMulticast:
    name = "symmetric_multicast"
    latency_s: float
    bytes_per_s: float  # algorithm bandwidth, as NVLS

    def seconds(self, op: str, size, n):
        return self.latency_s + np.asarray(size, dtype=float) / self.bytes_per_s + 0.0 * np.asarray(n, dtype=float)


@dataclass(frozen=True)
class Direct:
    name = "direct"
    base_s: float
    peer_s: float
    bus_bytes_per_s: float

    def seconds(self, op: str, size, n):
        n = np.asarray(n, dtype=float)
        return self.base_s + (n - 1) * self.peer_s + (n - 1) / n * size / self.bus_bytes_per_s


@dataclass(frozen=True)
class OneKernelAllToAll(Direct):
    name = "one_kernel_all_to_all"


def fit_terms(op: str, algorithm: str, sizes: np.ndarray, ranks: np.ndarray) -> tuple[list, tuple[str, ...]]:
    """Features (multiplying [base, per-step latency, 1 / bandwidth]) of measured points."""
    ones = np.ones(len(sizes))
    if algorithm == Ring.name:
        return [ones, ring_steps(op, ranks), bus_factor(op, ranks) * sizes], ("base_s", "step_s", "s_per_bus_byte")
    return [ones, ranks - 1.0, (ranks - 1.0) / ranks * sizes], ("base_s", "peer_s", "s_per_bus_byte")
