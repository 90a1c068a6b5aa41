"""Analytic timing of a configuration: the emulator's plans on all N ranks at once, timed by the
timing engine, with no MPI and no data (`helix-mpi model`)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .config import Implementation, Layout, ModelConfig, RunConfig
from .costmodel import SOURCES
from .plan import Op, OpName, layer_plan, op_collective_fields, op_dep_fields, op_shape_fields, tail_plan
from .sharding import rank_shard, shard_key
from .strategies import rules_for
from .timing import (GroupMax, LayerSchedule, PipelineSends, StreamClocks, TailTime, TimeModel, layer_kinds,
                     place_layer)
from .topology import Topology
from .trace import EVENT_DTYPE


def local_kv_lengths(layout: Layout, run: RunConfig, rank: int, step: int) -> np.ndarray:
    """Tokens [b] a rank holds per request at `step`, including that step's new token (dp-ep: for
    the requests it owns, whole)."""
    rules = rules_for(layout)
    held = rules.kv_tokens(run.context + step + 1, layout, rank, run.tokens_per_block)
    return np.full(len(rules.requests(run.batch, layout, rank)), held, dtype=np.int64)


class _Plans:
    """Every rank's plan, op durations and sources [ops, N] for one step, built and timed once per
    kind of layer and class of ranks (equal shard shapes and KV lengths give equal plans)."""

    def __init__(self, model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], hopb: bool,
                 timer: TimeModel, a2a_chunk: int = 0):
        self.model, self.layout, self.kv_lengths, self.hopb = model, layout, kv_lengths, hopb
        self.timer, self.a2a_chunk = timer, a2a_chunk
        self.classes = [self._class_key(r) for r in range(layout.world_size)]
        self.first = {key: self.classes.index(key) for key in dict.fromkeys(self.classes)}
        self.cache: dict[bool, tuple[list, np.ndarray, np.ndarray]] = {}
        self.rows: dict[bool, np.ndarray] = {}

    def _class_key(self, rank: int) -> tuple:
        shard = rank_shard(self.model, self.layout, rank)
        return shard_key(shard) + (shard.a2a_splits.tobytes(), np.asarray(self.kv_lengths[rank]).tobytes())

    def __call__(self, layer: int) -> tuple[list[list[Op]], np.ndarray, np.ndarray]:
        """(plans, durations [ops, N], sources [ops, N]) of a layer of `layer`'s kind."""
        kind = self.model.is_moe_layer(layer)
        if kind not in self.cache:
            built = {key: layer_plan(self.model, self.layout, r, layer, self.kv_lengths[r], self.timer.impl,
                                     self.hopb, self.a2a_chunk) for key, r in self.first.items()}
            self.cache[kind] = self._expand(built)
        return self.cache[kind]

    def tail(self) -> tuple[list[list[Op]], np.ndarray, np.ndarray]:
        """The same for the step's tail (LM head and sampling): plans empty for a model without one."""
        built = {key: tail_plan(self.model, self.layout, r, len(self.kv_lengths[r]), self.timer.impl)
                 for key, r in self.first.items()}
        return self._expand(built)

    def _expand(self, built: dict) -> tuple[list[list[Op]], np.ndarray, np.ndarray]:
        keys = list(built)
        plans = [built[key] for key in keys]
        if not plans[0]:
            return [built[key] for key in self.classes], np.zeros((0, len(self.classes))), np.zeros((0, 0))
        durations, sources = _timings(self.timer, plans)  # [ops, classes]
        column = np.array([keys.index(key) for key in self.classes])
        return [built[key] for key in self.classes], durations[:, column], sources[:, column]

    def template(self, layer: int | None) -> np.ndarray:
        """Event rows [ops, N] of a layer of this kind (None: the tail), every field but step,
        layer and times."""
        kind = None if layer is None else self.model.is_moe_layer(layer)
        if kind not in self.rows:
            plans, _, sources = self.tail() if layer is None else self(layer)
            self.rows[kind] = _template_rows(plans, sources, [len(k) for k in self.kv_lengths])
        return self.rows[kind]


def _timings(timer: TimeModel, plans: list[list[Op]]) -> tuple[np.ndarray, np.ndarray]:
    """(durations, sources) [ops, plans] of plans that have the same op list."""
    per_op = [timer.ops_timing([plan[i] for plan in plans]) for i in range(len(plans[0]))]
    return np.array([t[0] for t in per_op]), np.array([t[1] for t in per_op])


def _template_rows(plans: list[list[Op]], sources: np.ndarray, batches: list[int]) -> np.ndarray:
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
    shapes = np.array([[op_shape_fields(plan[i], b) for plan, b in zip(plans, batches)] for i in range(ops)])
    rows["requests"], rows["tokens"] = shapes[..., 0], shapes[..., 1]
    rows["experts_hit"], rows["pairs"] = shapes[..., 2], shapes[..., 3]
    rows["source"] = np.array([[SOURCES[code] for code in row] for row in sources], dtype="S8").reshape(ops, n)
    return rows


def simulate_layers(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> Iterator[np.ndarray]:
    """Events (trace dtype, host times 0) of every op of every rank, one layer of one step at a
    time (memory bounded by one layer's rows however large the batch); the step's tail (LM head,
    sampling) is recorded as layer `run.layers`, after the last emulated layer."""
    if rules_for(layout).pipelined:
        yield from _simulate_stages(model, layout, run, topo)
        return
    n, timer = layout.world_size, TimeModel(topo, run.implementation())
    clocks, group_max = StreamClocks(n), GroupMax(layout)
    for step in range(run.steps):
        lengths = [local_kv_lengths(layout, run, r, step) for r in range(n)]
        plans_of = _Plans(model, layout, lengths, run.hopb, timer, run.a2a_chunk)
        tail = plans_of.tail()
        layers = [(layer, plans_of(layer)) for layer in range(run.layers)]
        layers += [(None, tail)] if tail[0][0] else []
        for layer, (plans, durations, _) in layers:
            placed = place_layer(clocks, group_max, plans[0], durations)
            rows = plans_of.template(layer).copy()
            rows["step"], rows["layer"] = step, run.layers if layer is None else layer
            rows["start_s"] = np.stack([start for start, _ in placed])
            rows["end_s"] = np.stack([end for _, end in placed])
            yield rows.reshape(-1)


def _simulate_stages(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> Iterator[np.ndarray]:
    """`simulate_layers` under pipeline stages: each stage's ranks place their layers' plans on
    their clocks (groups never span stages); a stage receive starts no earlier than the previous
    stage's send, and every stage starts a step when the previous step has ended everywhere."""
    rules, timer = rules_for(layout), TimeModel(topo, run.implementation())
    n = layout.world_size // layout.pp
    group_max = GroupMax(rules.stage_layout(layout))  # stage-local ranks
    clocks = [StreamClocks(n) for _ in range(layout.pp)]
    for step in range(run.steps):
        start = max(float(c.now().max()) for c in clocks)
        for stage_clocks in clocks:
            for stream in stage_clocks.free:
                stage_clocks.free[stream][:] = start
        lengths = [local_kv_lengths(layout, run, r, step) for r in range(layout.world_size)]
        sent = None  # [n] when the previous stage's send starts on each of its ranks
        for stage in range(layout.pp):
            ranks = range(stage * n, (stage + 1) * n)
            layers = [(layer, [layer_plan(model, layout, r, layer, lengths[r], timer.impl, run.hopb, run.a2a_chunk,
                                          run.layers) for r in ranks]) for layer in rules.stage_layers(layout, stage,
                                                                                                       run.layers)]
            if stage == layout.pp - 1:
                tail = [tail_plan(model, layout, r, len(lengths[r]), timer.impl) for r in ranks]
                layers += [(run.layers, tail)] if tail[0] else []
            for layer, plans in layers:
                rows, sent = _place_stage_layer(clocks[stage], group_max, timer, plans, sent,
                                                [len(lengths[r]) for r in ranks])
                rows["rank"] += stage * n
                rows["step"], rows["layer"] = step, layer
                yield rows.reshape(-1)


def _place_stage_layer(clocks: StreamClocks, group_max: GroupMax, timer: TimeModel, plans: list[list[Op]],
                       sent: np.ndarray | None, batches: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Event rows [ops, n] of one layer of one stage placed on its clocks, and when its send (if
    any) starts [n] (else `sent` as it was)."""
    durations, sources = _timings(timer, plans)
    schedule = LayerSchedule(clocks, clocks.now(), group_max)
    rows = _template_rows(plans, sources, batches)
    for index, op in enumerate(plans[0]):
        receiving = op.name is OpName.STAGE_RECV
        start, end = schedule.place(index, op, durations[index], sent if receiving else None)
        rows["start_s"][index], rows["end_s"][index] = start, end
        if op.name is OpName.STAGE_SEND:
            sent = start
    return rows, sent


def simulate(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> np.ndarray:
    """Events of every op of every rank, layer and step (`simulate_layers`, concatenated)."""
    return np.concatenate(list(simulate_layers(model, layout, run, topo)))


def step_time(model: ModelConfig, layout: Layout, kv_lengths: list[np.ndarray], impl: Implementation, hopb: bool,
              topo: Topology, layers: int | None = None, a2a_chunk: int = 0, tail: bool = True) -> float:
    """Modeled seconds of one decode step over the first `layers` layers (default: all), plus its
    tail (LM head and sampling) unless `tail` is False, given every rank's local KV tokens per
    request (ragged batches allowed). Layers of the same kind take the same time once a step is
    under way, so each kind is timed once and multiplied. Under pipeline stages: the stage layout's
    layers, and with the tail the stage sends (`timing.PipelineSends`)."""
    timer = TimeModel(topo, impl)
    stages = PipelineSends(model, layout, timer)
    layout, kv_lengths = stages.stage_layout, stages.first_stage(kv_lengths)
    plans_of = _Plans(model, layout, kv_lengths, hopb, timer, a2a_chunk)
    group_max, total = GroupMax(layout), 0.0
    for first, count in layer_kinds(model, layers):
        clocks = StreamClocks(layout.world_size)
        plans, durations, _ = plans_of(first)
        place_layer(clocks, group_max, plans[0], durations)
        total += count * float(clocks.now().max())
    if tail:
        batch = max(len(k) for k in kv_lengths)
        total += float(TailTime(model, layout, timer)(batch)[0]) + stages(batch)  # a whole step: its stage sends too
    return total


def layer_time(model: ModelConfig, layout: Layout, kv_lengths: np.ndarray, impl: Implementation, hopb: bool,
               topo: Topology) -> float:
    """Modeled seconds of one layer of the first kind, kv_lengths [N, B] (kept for serving)."""
    return step_time(model, layout, list(kv_lengths), impl, hopb, topo, layers=1, tail=False)
