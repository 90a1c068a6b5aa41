"""Analytic timing of a configuration: the same plans and clocks as the emulator, for all N
ranks at once, with no MPI and no data (`helix-mpi model`)."""
from __future__ import annotations

import numpy as np

from .axes import Axis
from .clock import LayerSchedule, StreamClocks, op_duration
from .config import Layout, ModelConfig, RunConfig
from .kvcache import tokens_held
from .mesh import coordinates, group_colors
from .plan import helix_layer_plan, op_collective_fields, op_dep_fields
from .topology import Topology
from .trace import EVENT_DTYPE


def local_kv_lengths(layout: Layout, run: RunConfig, rank: int, step: int) -> np.ndarray:
    """Tokens [B] a rank holds at `step`, including that step's new token."""
    held = tokens_held(run.context + step + 1, layout.kvp, run.tokens_per_block)
    return np.full(run.batch, held[coordinates(layout, rank)[Axis.KVP]], dtype=np.int64)


class _GroupMax:
    """Per-group max of ready times [N] (the analytic stand-in for the MPI all-reduce)."""

    def __init__(self, layout: Layout):
        self.layout, self.colors = layout, {}

    def __call__(self, axes: tuple[Axis, ...], ready: np.ndarray) -> np.ndarray:
        if axes not in self.colors:
            self.colors[axes] = group_colors(self.layout, axes)
        colors = self.colors[axes]
        group_ready = np.full(colors.max() + 1, -np.inf)
        np.maximum.at(group_ready, colors, ready)
        return group_ready[colors]


def simulate(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> np.ndarray:
    """Events (trace dtype, host times 0) of every op of every rank, layer and step."""
    n = layout.world_size
    clocks, group_max = StreamClocks(n), _GroupMax(layout)
    ranks = np.arange(n, dtype=np.int32)
    rows = []
    for step in range(run.steps):
        plans = [helix_layer_plan(model, layout, r, local_kv_lengths(layout, run, r, step), run.precision,
                                  run.hopb) for r in range(n)]
        durations = np.array([[op_duration(plan[i], topo, run.precision) for plan in plans]
                              for i in range(len(plans[0]))])  # [ops, N]
        for layer in range(run.layers):
            schedule = LayerSchedule(clocks, clocks.now(), group_max)
            for index, op in enumerate(plans[0]):
                start, end = schedule.place(index, op, durations[index])
                rows.append(_event_rows(ranks, step, layer, index, [plan[index] for plan in plans], start, end))
    return np.concatenate(rows)


def layer_time(model: ModelConfig, layout: Layout, kv_lengths: np.ndarray, precision: str, hopb: bool,
               topo: Topology) -> float:
    """Modeled seconds of one layer given every rank's local KV tokens per request kv_lengths [N, B]
    (ragged batches allowed). Layers end with a world-wide all-reduce, so every layer of a step
    takes the same time: a decode step of L layers takes L * layer_time."""
    n = layout.world_size
    plans = [helix_layer_plan(model, layout, r, kv_lengths[r], precision, hopb) for r in range(n)]
    clocks = StreamClocks(n)
    schedule = LayerSchedule(clocks, clocks.now(), _GroupMax(layout))
    for index, op in enumerate(plans[0]):
        schedule.place(index, op, np.array([op_duration(plan[index], topo, precision) for plan in plans]))
    return float(schedule.layer_end().max())


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
