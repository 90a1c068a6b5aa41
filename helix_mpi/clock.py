"""Virtual clocks: each rank has a compute and a comm stream (DESIGN.md section 3).

An op starts when its stream is free and its dependencies have finished; a collective starts
when its last member is ready (start = max over members, as SimGrid SMPI folds communication).
The same code serves the emulator (one rank per process; the max is an MPI all-reduce) and the
analytic model (all N ranks in one array; the max is taken per group), so both agree exactly.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .axes import Axis, Stream
from .costmodel import collective_time, compute_time
from .plan import Op
from .topology import Topology

GroupMax = Callable[[tuple[Axis, ...], np.ndarray], np.ndarray]


def op_duration(op: Op, topo: Topology, precision: str) -> float:
    """Modeled seconds of one op: roofline for compute, the collective formula for comm."""
    if op.is_collective:
        return float(collective_time(op.collective, op.nbytes, op.group_size, topo))
    return float(compute_time(op.flops, op.hbm_bytes, topo, precision))


class StreamClocks:
    """Free times [n] of the two streams of n ranks, in modeled seconds."""

    def __init__(self, n: int):
        self.free = {Stream.COMPUTE: np.zeros(n), Stream.COMM: np.zeros(n)}

    def now(self) -> np.ndarray:
        return np.maximum(self.free[Stream.COMPUTE], self.free[Stream.COMM])


class LayerSchedule:
    """Places the ops of one layer plan, in plan order, on the stream clocks."""

    def __init__(self, clocks: StreamClocks, layer_start: np.ndarray, group_max: GroupMax):
        self.clocks, self.layer_start, self.group_max = clocks, layer_start, group_max
        self.ends: dict[int, np.ndarray] = {}

    def place(self, index: int, op: Op, duration: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        ready = np.maximum(self.clocks.free[op.stream], self.layer_start)
        for dep in op.deps:
            ready = np.maximum(ready, self.ends[dep])
        if op.is_collective and op.group_size > 1:
            ready = self.group_max(op.group, ready)
        end = ready + duration
        self.clocks.free[op.stream] = end
        self.ends[index] = end
        return ready, end

    def layer_end(self) -> np.ndarray:
        return np.max(np.stack(list(self.ends.values())), axis=0)
