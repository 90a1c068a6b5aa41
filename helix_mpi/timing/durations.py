"""How long an op takes: the only caller of the cost model (`helix_mpi.costmodel`).

`TimeModel` holds what fixes an op's duration besides the op itself: the topology and the modeled
precision. Every consumer (emulator, analytic model, sweep, serving, replay) gets its durations
here, one op at a time or vectorised over arrays of sizes, so they cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..costmodel import Collective, collective_time, compute_time
from ..topology import Topology


@dataclass(frozen=True)
class TimeModel:
    """Durations of plan ops on one modeled machine."""

    topo: Topology
    precision: str  # modeled precision of weights and KV cache

    def op_seconds(self, op) -> float:
        """Modeled seconds of one plan op: roofline for compute, the collective formula for comm."""
        if op.is_collective:
            return float(self.collective_seconds(op.collective, op.nbytes, op.group_size))
        return float(self.compute_seconds(op.flops, op.hbm_bytes))

    def ops_seconds(self, ops: list) -> np.ndarray:
        """Seconds [len(ops)] of a list of ops (e.g. the same op index on every rank)."""
        return np.array([self.op_seconds(op) for op in ops])

    def compute_seconds(self, flops, hbm_bytes):
        """Seconds of a compute op from its FLOPs and HBM bytes (arrays broadcast)."""
        return compute_time(flops, hbm_bytes, self.topo, self.precision)

    def collective_seconds(self, kind: Collective | str, nbytes, group_size):
        """Seconds of a collective of nccl-tests size `nbytes` over `group_size` ranks (arrays broadcast)."""
        return collective_time(kind, nbytes, group_size, self.topo)

    def send_seconds(self, nbytes):
        """One point-to-point send of `nbytes` to a peer in the NVLink domain (pipeline stages),
        modeled as a 2-rank direct all-to-all in which each rank sends that much to the other."""
        return collective_time(Collective.ALL_TO_ALL, 2 * np.asarray(nbytes, float), 2, self.topo)
