"""Analytic timing of a configuration: the same plans and clocks as the emulator, for all N
ranks at once, with no MPI and no data (`helix-mpi model`)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .axes import Axis
from .clock import LayerSchedule, StreamClocks, op_duration
from .config import Layout, ModelConfig, RunConfig, Strategy
from .kvcache import tokens_held
from .mesh import coordinates, group_colors
from .plan import Op, dp_requests, layer_plan, op_collective_fields, op_dep_fields
from .sharding import rank_shard
from .topology import Topology
from .trace import EVENT_DTYPE


def local_kv_lengths(layout: Layout, run: RunConfig, rank: int, step: int) -> np.ndarray:
    """Tokens [b] a rank holds per request at `step`, including that step's new token (dp-ep: for
    the requests it owns, whole)."""
    if layout.strategy is Strategy.DP_EP:
        return np.full(len(dp_requests(run.batch, layout.world_size, rank)), run.context + step + 1, dtype=np.int64)
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


class _Plans:
    """Every rank's plan, op durations and event rows (times aside) for one step, built once per
    kind of layer."""

    def __init__(self, model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], precision: str,
                 hopb: bool, topo: Topology, a2a_chunk: int = 1):
        self.args = (model, layout, kv_lengths, precision, hopb, topo)
        self.a2a_chunk = a2a_chunk
        self.cache: dict[bool, tuple[list, np.ndarray]] = {}
        self.rows: dict[bool, np.ndarray] = {}

    def __call__(self, layer: int) -> tuple[list[list[Op]], np.ndarray]:
        model, layout, kv_lengths, precision, hopb, topo = self.args
        kind = model.is_moe_layer(layer)
        if kind not in self.cache:
            classes = [self._class_key(r) for r in range(layout.world_size)]
            first = {key: classes.index(key) for key in dict.fromkeys(classes)}  # one plan per class of ranks
            built = {key: layer_plan(model, layout, r, layer, kv_lengths[r], precision, hopb, self.a2a_chunk)
                     for key, r in first.items()}
            timed = {key: np.array([op_duration(op, topo, precision) for op in plan]) for key, plan in built.items()}
            plans = [built[key] for key in classes]
            durations = np.stack([timed[key] for key in classes], axis=1)  # [ops, N]
            self.cache[kind] = (plans, durations)
        return self.cache[kind]

    def _class_key(self, rank: int) -> tuple:
        """Ranks with equal shard shapes and KV lengths have the same plan (as the sweep's shard classes)."""
        model, layout, kv_lengths = self.args[:3]
        s = rank_shard(model, layout, rank)
        shape = tuple(len(part) for part in (s.q_heads, s.kv_heads, s.combine_heads, s.ffn_cols, s.experts,
                                            s.expert_cols, s.shared_cols))
        return shape + (tuple(s.a2a_splits.tolist()), np.asarray(kv_lengths[rank]).tobytes())

    def template(self, layer: int) -> np.ndarray:
        """Event rows [ops, N] of a layer of this kind, every field but step, layer and times."""
        kind = self.args[0].is_moe_layer(layer)
        if kind not in self.rows:
            plans, _ = self(layer)
            self.rows[kind] = _template_rows(plans)
        return self.rows[kind]


def _template_rows(plans: list[list[Op]]) -> np.ndarray:
    """Rows [ops, N] of one layer plan on every rank (rank r's plan in column r)."""
    ops, n = len(plans[0]), len(plans)
    rows = np.zeros((ops, n), dtype=EVENT_DTYPE)
    rows["rank"] = np.arange(n, dtype=np.int32)
    rows["index"] = np.arange(ops, dtype=np.int32)[:, None]
    first = plans[0]
    rows["request"] = np.array([op.request for op in first])[:, None]
    deps = np.array([op_dep_fields(op) for op in first], dtype=np.int32).reshape(ops, 2)
    rows["dep0"], rows["dep1"] = deps[:, :1], deps[:, 1:]
    rows["op"] = np.array([op.name.value for op in first], dtype="S24")[:, None]
    rows["stream"] = np.array([op.stream.value for op in first], dtype="S8")[:, None]
    fields = [op_collective_fields(op) for op in first]
    rows["collective"] = np.array([f[0] for f in fields], dtype="S16")[:, None]
    rows["group"] = np.array([f[1] for f in fields], dtype="S16")[:, None]
    rows["group_size"] = np.array([f[2] for f in fields])[:, None]
    rows["bytes"] = np.array([[op_collective_fields(plan[i])[3] for plan in plans] for i in range(ops)])
    rows["flops"] = np.array([[plan[i].flops for plan in plans] for i in range(ops)])
    return rows


def _place_layer(clocks: StreamClocks, group_max: "_GroupMax", plans: list[list[Op]],
                 durations: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    schedule = LayerSchedule(clocks, clocks.now(), group_max)
    return [schedule.place(index, op, durations[index]) for index, op in enumerate(plans[0])]


def simulate_layers(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> Iterator[np.ndarray]:
    """Events (trace dtype, host times 0) of every op of every rank, one layer of one step at a
    time (memory bounded by one layer's rows however large the batch)."""
    n = layout.world_size
    clocks, group_max = StreamClocks(n), _GroupMax(layout)
    for step in range(run.steps):
        lengths = [local_kv_lengths(layout, run, r, step) for r in range(n)]
        plans_of = _Plans(model, layout, lengths, run.precision, run.hopb, topo, run.a2a_chunk)
        for layer in range(run.layers):
            plans, durations = plans_of(layer)
            placed = _place_layer(clocks, group_max, plans, durations)
            rows = plans_of.template(layer).copy()
            rows["step"], rows["layer"] = step, layer
            rows["start_s"] = np.stack([start for start, _ in placed])
            rows["end_s"] = np.stack([end for _, end in placed])
            yield rows.reshape(-1)


def simulate(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> np.ndarray:
    """Events (trace dtype, host times 0) of every op of every rank, layer and step."""
    return np.concatenate(list(simulate_layers(model, layout, run, topo)))


def step_time(model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], precision: str, hopb: bool,
              topo: Topology, layers: int | None = None, a2a_chunk: int = 1) -> float:
    """Modeled seconds of one decode step over the first `layers` layers (default: all), given
    every rank's local KV tokens per request (ragged batches allowed). Layers of the same kind
    take the same time once a step is under way, so each kind is timed once and multiplied."""
    layers = model.num_layers if layers is None else layers
    plans_of = _Plans(model, layout, kv_lengths, precision, hopb, topo, a2a_chunk)
    group_max, total = _GroupMax(layout), 0.0
    kinds = [model.is_moe_layer(layer) for layer in range(layers)]
    for kind in set(kinds):
        clocks = StreamClocks(layout.world_size)
        plans, durations = plans_of(kinds.index(kind))
        _place_layer(clocks, group_max, plans, durations)
        total += kinds.count(kind) * float(clocks.now().max())
    return total


def layer_time(model: ModelConfig, layout: Layout, kv_lengths: np.ndarray, precision: str, hopb: bool,
               topo: Topology) -> float:
    """Modeled seconds of one layer of the first kind, kv_lengths [N, B] (kept for serving)."""
    return step_time(model, layout, list(kv_lengths), precision, hopb, topo, layers=1)
