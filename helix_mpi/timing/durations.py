"""How long an op takes: the only caller of the cost model (`helix_mpi.costmodel`).

`TimeModel` holds what fixes an op's duration besides the op itself: the modeled machine (its
topology and measured tables) and the implementation (precisions, communication library, CUDA
graphs). A compute op takes the sum of its kernels' times (they run back to back on its stream);
a collective the time of the algorithm its library would use. Every consumer (emulator, analytic
model, sweep, serving, replay) gets its durations here, one op at a time or vectorised over
arrays of shapes, so they cannot disagree. Each duration also says what timed it: the source of
its longest kernel (`costmodel.SOURCES`: measured table, fitted physics, or spec roofline).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import Implementation
from ..costmodel import Collective, collective_seconds, kernel_latency, kernel_seconds
from ..mesh import stage_crosses, stage_crossings
from ..topology import Topology


OP_MEMO_SIZE = 4096  # ops remembered by one TimeModel (a layer plan has ~10-40)


@dataclass(frozen=True)
class TimeModel:
    """Durations of plan ops on one modeled machine under one implementation."""

    topo: Topology
    impl: Implementation
    # what-if studies only: scale the latency part (the time at size 0) of all-to-alls and of the
    # other collectives; divide the rest of every kernel's time (beyond its fixed latency) by
    # hbm_scale and the rest of every collective's by nvlink_scale
    a2a_latency_scale: float = 1.0
    reduce_latency_scale: float = 1.0
    hbm_scale: float = 1.0
    nvlink_scale: float = 1.0
    # durations already computed for arrays of batches (the sweep times the same kernels for many layouts)
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    # (seconds, source) of single ops already timed: the emulator and replay time the same ops at
    # every step (only the attention op's KV length changes); bounded, so long runs stay flat
    op_memo: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def precision(self) -> str:
        return self.impl.precision

    def op_timing(self, op) -> tuple[float, int]:
        """(seconds, source) of one plan op (remembered: evaluating the cost model takes ~1.6 ms,
        `scripts/bench_overhead.py`)."""
        try:
            return self.op_memo[op]
        except KeyError:
            pass
        except TypeError:  # a shape field holds an array: not hashable, timed each time
            return self._op_timing(op)
        if len(self.op_memo) >= OP_MEMO_SIZE:
            self.op_memo.clear()
        timing = self.op_memo[op] = self._op_timing(op)
        return timing

    def _op_timing(self, op) -> tuple[float, int]:
        if op.is_stage_transfer:
            crosses = stage_crosses(op.into_stage, op.stage_ranks, self.topo.fabric.domain_size)
            seconds, source = self.send_timing(op.nbytes, crosses)
            return float(seconds), int(source)
        if op.is_collective:
            seconds, source = self.collective_timing(op.collective, op.nbytes, op.group_size, op.group_stride)
            return float(seconds), int(source)
        seconds, source = self.kernels_timing(op.kernels)
        return float(seconds), int(source)

    def op_seconds(self, op) -> float:
        return self.op_timing(op)[0]

    def ops_seconds(self, ops: list) -> np.ndarray:
        """Seconds [len(ops)] of a list of ops (e.g. the same op index on every rank)."""
        return np.array([self.op_timing(op)[0] for op in ops])

    def ops_timing(self, ops: list) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, source codes) [len(ops)] of a list of ops."""
        timings = [self.op_timing(op) for op in ops]
        return np.array([t[0] for t in timings]), np.array([t[1] for t in timings], dtype=np.int64)

    def kernels_timing(self, kernels) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, source of the longest kernel) of kernels run back to back; their shape fields
        may be arrays (one element per batch, rank or request)."""
        total, longest, source = 0.0, None, None
        for kernel in kernels:
            seconds, origin = kernel_seconds(kernel, self.topo, self.impl.cuda_graphs)
            if self.hbm_scale != 1.0:
                latency = kernel_latency(kernel, self.topo)
                seconds = latency + (seconds - latency) / self.hbm_scale
            total = total + seconds
            if longest is None:
                longest, source = seconds, np.asarray(origin)
            else:
                source = np.where(seconds > longest, origin, source)
                longest = np.maximum(longest, seconds)
        return (np.asarray(total, float), source) if kernels else (np.asarray(0.0), np.asarray(0))

    def kernels_seconds(self, kernels) -> np.ndarray:
        return self.kernels_timing(kernels)[0]

    def remembered(self, key, compute):
        """compute(), remembered under `key` (hashable: kernel shapes and a batch array's bytes)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def collective_timing(self, kind: Collective | str, nbytes, group_size, stride=1) -> tuple[np.ndarray, np.ndarray]:
        seconds, source = collective_seconds(kind, nbytes, group_size, self.topo, self.impl.comm, stride)
        scale = self.a2a_latency_scale if Collective(kind) is Collective.ALL_TO_ALL else self.reduce_latency_scale
        if scale != 1.0 or self.nvlink_scale != 1.0:
            latency, _ = collective_seconds(kind, 0.0, group_size, self.topo, self.impl.comm, stride)
            seconds = scale * latency + (seconds - latency) / self.nvlink_scale
        return seconds, source

    def collective_seconds(self, kind: Collective | str, nbytes, group_size, stride=1) -> np.ndarray:
        """Seconds of a collective of nccl-tests size `nbytes` over `group_size` ranks `stride` apart
        (arrays broadcast)."""
        return self.collective_timing(kind, nbytes, group_size, stride)[0]

    def send_timing(self, nbytes, across_domains: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, source) of one point-to-point send of `nbytes` to a peer (pipeline stages),
        modeled as a 2-rank all-to-all in which each rank sends that much to the other: over
        NVLink, or over the scale-out network when the peer is in another NVLink domain."""
        stride = self.topo.fabric.domain_size if across_domains else 1
        return self.collective_timing(Collective.ALL_TO_ALL, 2 * np.asarray(nbytes, float), 2, stride)

    def send_seconds(self, nbytes, across_domains: bool = False):
        return self.send_timing(nbytes, across_domains)[0]

    def pipeline_sends_seconds(self, stages: int, stage_ranks: int, nbytes) -> np.ndarray:
        """The stages - 1 stage-to-stage sends of one step: over NVLink, or over the scale-out
        network for those that leave an NVLink domain (`mesh.stage_crossings`)."""
        crossing = stage_crossings(stages, stage_ranks, self.topo.fabric.domain_size)
        return ((stages - 1 - crossing) * self.send_seconds(nbytes)
                + crossing * self.send_seconds(nbytes, across_domains=True)) * np.ones(np.shape(nbytes))
