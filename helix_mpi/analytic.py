"""Analytic timing of a configuration: the emulator's plans on all N ranks at once, timed by the
timing engine, with no MPI and no data (`helix-mpi model`)."""
from __future__ import annotations

import numpy as np

from .axes import Axis
from .config import Implementation, Layout, ModelConfig, RunConfig, Strategy
from .kvcache import tokens_held
from .mesh import coordinates
from .costmodel import SOURCES
from .plan import Op, dp_requests, layer_plan, op_collective_fields, op_dep_fields, op_shape_fields, tail_plan
from .timing import GroupMax, StreamClocks, TailTime, TimeModel, layer_kinds, place_layer
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
                 timer: TimeModel, a2a_chunk: int = 0):
        self.model, self.layout, self.kv_lengths, self.hopb = model, layout, kv_lengths, hopb
        self.timer, self.a2a_chunk = timer, a2a_chunk
        self.cache: dict[bool, tuple[list, np.ndarray, np.ndarray]] = {}

    def __call__(self, layer: int) -> tuple[list[list[Op]], np.ndarray, np.ndarray]:
        """(plans, durations [ops, N], sources [ops, N]) of a layer of `layer`'s kind."""
        kind = self.model.is_moe_layer(layer)
        if kind not in self.cache:
            plans = [layer_plan(self.model, self.layout, r, layer, self.kv_lengths[r], self.timer.impl,
                                self.hopb, self.a2a_chunk) for r in range(self.layout.world_size)]
            self.cache[kind] = (plans, *_timings(self.timer, plans))
        return self.cache[kind]


def _timings(timer: TimeModel, plans: list[list[Op]]) -> tuple[np.ndarray, np.ndarray]:
    """(durations, sources) [ops, N] of every rank's plan (all plans have the same op list)."""
    per_op = [timer.ops_timing([plan[i] for plan in plans]) for i in range(len(plans[0]))]
    return np.array([t[0] for t in per_op]), np.array([t[1] for t in per_op])


def tail_plans(model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], impl: Implementation
               ) -> list[list[Op]]:
    """Every rank's tail plan (LM head and sampling) for the requests it decodes."""
    return [tail_plan(model, layout, r, len(kv_lengths[r]), impl) for r in range(layout.world_size)]


def simulate(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> np.ndarray:
    """Events (trace dtype, host times 0) of every op of every rank, layer and step; the step's
    tail (LM head, sampling) is recorded as layer `run.layers`, after the last emulated layer."""
    n, timer = layout.world_size, TimeModel(topo, run.implementation())
    clocks, group_max = StreamClocks(n), GroupMax(layout)
    ranks = np.arange(n, dtype=np.int32)
    rows = []
    for step in range(run.steps):
        lengths = [local_kv_lengths(layout, run, r, step) for r in range(n)]
        plans_of = _Plans(model, layout, lengths, run.hopb, timer, run.a2a_chunk)
        layers = [plans_of(layer) for layer in range(run.layers)]
        tails = tail_plans(model, layout, lengths, timer.impl)
        if tails[0]:
            layers.append((tails, *_timings(timer, tails)))
        for layer, (plans, durations, sources) in enumerate(layers):
            for index, (start, end) in enumerate(place_layer(clocks, group_max, plans[0], durations)):
                rows.append(_event_rows(ranks, step, layer, index, [plan[index] for plan in plans], start, end,
                                        sources[index], [len(k) for k in lengths]))
    return np.concatenate(rows)


def step_time(model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], impl: Implementation, hopb: bool,
              topo: Topology, layers: int | None = None, a2a_chunk: int = 0, tail: bool = True) -> float:
    """Modeled seconds of one decode step over the first `layers` layers (default: all), plus its
    tail (LM head and sampling) unless `tail` is False, given every rank's local KV tokens per
    request (ragged batches allowed). Layers of the same kind take the same time once a step is
    under way, so each kind is timed once and multiplied."""
    timer = TimeModel(topo, impl)
    plans_of = _Plans(model, layout, kv_lengths, hopb, timer, a2a_chunk)
    group_max, total = GroupMax(layout), 0.0
    for first, count in layer_kinds(model, layers):
        clocks = StreamClocks(layout.world_size)
        plans, durations, _ = plans_of(first)
        place_layer(clocks, group_max, plans[0], durations)
        total += count * float(clocks.now().max())
    if tail:
        total += float(TailTime(model, layout, timer)(max(len(k) for k in kv_lengths))[0])
    return total


def layer_time(model: ModelConfig, layout: Layout, kv_lengths: np.ndarray, impl: Implementation, hopb: bool,
               topo: Topology) -> float:
    """Modeled seconds of one layer of the first kind, kv_lengths [N, B] (kept for serving)."""
    return step_time(model, layout, list(kv_lengths), impl, hopb, topo, layers=1, tail=False)


def _event_rows(ranks: np.ndarray, step: int, layer: int, index: int, ops: list, start: np.ndarray,
                end: np.ndarray, sources: np.ndarray, batches: list[int]) -> np.ndarray:
    rows = np.zeros(len(ranks), dtype=EVENT_DTYPE)
    op = ops[0]
    rows["rank"], rows["step"], rows["layer"], rows["request"], rows["index"] = ranks, step, layer, op.request, index
    rows["dep0"], rows["dep1"] = op_dep_fields(op)
    rows["op"], rows["stream"] = op.name.value, op.stream.value
    rows["collective"], rows["group"], rows["group_size"], _ = op_collective_fields(op)
    rows["bytes"] = [op_collective_fields(o)[3] for o in ops]
    rows["flops"] = [o.flops for o in ops]
    shapes = np.array([op_shape_fields(o, b) for o, b in zip(ops, batches)])
    rows["requests"], rows["tokens"], rows["experts_hit"], rows["pairs"] = shapes.T
    rows["source"] = [SOURCES[code] for code in sources]
    rows["start_s"], rows["end_s"] = start, end
    return rows
