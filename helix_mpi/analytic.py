"""Analytic timing of a configuration: the emulator's plans on all N ranks at once, timed by the
timing engine, with no MPI and no data (`helix-mpi model`)."""
from __future__ import annotations

import numpy as np

from .axes import Axis
from .config import Layout, ModelConfig, RunConfig, Strategy
from .kvcache import tokens_held
from .mesh import coordinates
from .plan import Op, dp_requests, layer_plan, op_collective_fields, op_dep_fields
from .timing import GroupMax, StreamClocks, TimeModel, layer_kinds, place_layer
from .topology import Topology
from .trace import EVENT_DTYPE


def local_kv_lengths(layout: Layout, run: RunConfig, rank: int, step: int) -> np.ndarray:
    """Tokens [b] a rank holds per request at `step`, including that step's new token (dp-ep: for
    the requests it owns, whole)."""
    if layout.strategy is Strategy.DP_EP:
        return np.full(len(dp_requests(run.batch, layout.world_size, rank)), run.context + step + 1, dtype=np.int64)
    held = tokens_held(run.context + step + 1, layout.kvp, run.tokens_per_block)
    return np.full(run.batch, held[coordinates(layout, rank)[Axis.KVP]], dtype=np.int64)


class _Plans:
    """Every rank's plan and op durations [ops, N] for one step, built once per kind of layer."""

    def __init__(self, model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], hopb: bool,
                 timer: TimeModel, a2a_chunk: int = 1):
        self.model, self.layout, self.kv_lengths, self.hopb = model, layout, kv_lengths, hopb
        self.timer, self.a2a_chunk = timer, a2a_chunk
        self.cache: dict[bool, tuple[list, np.ndarray]] = {}

    def __call__(self, layer: int) -> tuple[list[list[Op]], np.ndarray]:
        kind = self.model.is_moe_layer(layer)
        if kind not in self.cache:
            plans = [layer_plan(self.model, self.layout, r, layer, self.kv_lengths[r], self.timer.precision,
                                self.hopb, self.a2a_chunk) for r in range(self.layout.world_size)]
            durations = np.array([self.timer.ops_seconds([plan[i] for plan in plans]) for i in range(len(plans[0]))])
            self.cache[kind] = (plans, durations)
        return self.cache[kind]


def simulate(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> np.ndarray:
    """Events (trace dtype, host times 0) of every op of every rank, layer and step."""
    n, timer = layout.world_size, TimeModel(topo, run.precision)
    clocks, group_max = StreamClocks(n), GroupMax(layout)
    ranks = np.arange(n, dtype=np.int32)
    rows = []
    for step in range(run.steps):
        lengths = [local_kv_lengths(layout, run, r, step) for r in range(n)]
        plans_of = _Plans(model, layout, lengths, run.hopb, timer, run.a2a_chunk)
        for layer in range(run.layers):
            plans, durations = plans_of(layer)
            for index, (start, end) in enumerate(place_layer(clocks, group_max, plans[0], durations)):
                rows.append(_event_rows(ranks, step, layer, index, [plan[index] for plan in plans], start, end))
    return np.concatenate(rows)


def step_time(model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], precision: str, hopb: bool,
              topo: Topology, layers: int | None = None, a2a_chunk: int = 1) -> float:
    """Modeled seconds of one decode step over the first `layers` layers (default: all), given
    every rank's local KV tokens per request (ragged batches allowed). Layers of the same kind
    take the same time once a step is under way, so each kind is timed once and multiplied."""
    plans_of = _Plans(model, layout, kv_lengths, hopb, TimeModel(topo, precision), a2a_chunk)
    group_max, total = GroupMax(layout), 0.0
    for first, count in layer_kinds(model, layers):
        clocks = StreamClocks(layout.world_size)
        plans, durations = plans_of(first)
        place_layer(clocks, group_max, plans[0], durations)
        total += count * float(clocks.now().max())
    return total


def layer_time(model: ModelConfig, layout: Layout, kv_lengths: np.ndarray, precision: str, hopb: bool,
               topo: Topology) -> float:
    """Modeled seconds of one layer of the first kind, kv_lengths [N, B] (kept for serving)."""
    return step_time(model, layout, list(kv_lengths), precision, hopb, topo, layers=1)


def _event_rows(ranks: np.ndarray, step: int, layer: int, index: int, ops: list, start: np.ndarray,
                end: np.ndarray) -> np.ndarray:
    rows = np.zeros(len(ranks), dtype=EVENT_DTYPE)
    op = ops[0]
    rows["rank"], rows["step"], rows["layer"], rows["request"], rows["index"] = ranks, step, layer, op.request, index
    rows["dep0"], rows["dep1"] = op_dep_fields(op)
    rows["op"], rows["stream"] = op.name.value, op.stream.value
    rows["collective"], rows["group"], rows["group_size"], _ = op_collective_fields(op)
    rows["bytes"] = [op_collective_fields(o)[3] for o in ops]
    rows["flops"] = [o.flops for o in ops]
    rows["start_s"], rows["end_s"] = start, end
    return rows
