"""What-if replay: re-time a recorded trace's ops on another hardware model, with no MPI and no data.

For every (step, layer) the per-rank op sequence is rebuilt from the event rows (ordered by
`index`: stream, deps dep0/dep1, collective, group, group_size, bytes), every op gets a new
duration from the timing engine (compute: its kernels, rebuilt with the plan functions from the
run's config and the shapes the events record; collectives: their kind, size and group size;
`--nvlink-scale` / `--hbm-scale` divide what lies beyond each one's fixed latency), and the ops are placed with
timing.LayerSchedule on StreamClocks for all ranks at once, a collective starting at the max of
its group's ready times. That is the emulator's own arithmetic, so a replay onto the recorded
topology with the recorded HOP-B setting reproduces the modeled times bit for bit.

HOP-B changes dependencies only: without it, the attention of request b > 0 also waits for the
all-to-all of request b - 1 (the collective "all_to_all" op of that request in the same layer
plan, i.e. plan.all_to_all_index(b - 1) in the Helix plan); with it, it does not.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator

import numpy as np

from . import __version__
from .analysis.events import step_times_from_ends, ttl_seconds
from .analysis.tracemeta import (TraceMeta, iter_event_chunks, layout_from_dict, read_kv_tokens, read_meta,
                                 run_config_from_dict)
from .axes import Axis, Stream
from .config import ConfigError, Layout, ModelConfig, RunConfig
from .costmodel import Collective
from .gpuops import KernelKind
from .mesh import group_colors
from .plan import Op, OpName, layer_plan, tail_plan
from .sharding import shard_classes
from .strategies import rules_for
from .timing import GroupMax, LayerSchedule, StreamClocks, TimeModel
from .topology import (BUILTIN_TOPOLOGY_DIR, PRECISIONS, FabricSpec, GpuSpec, ScaleOutSpec, Topology,
                       load_calibration)
from .trace import TraceError, TraceWriter, open_trace, root_attributes

A2A = Collective.ALL_TO_ALL.value.encode()
COPIED_ATTRS_SKIP = ("schema_version", "complete", "config", "topology", "replayed_from", "memory")


# --- hardware ------------------------------------------------------------------------------------
def topology_from_dict(data: dict[str, Any]) -> Topology:
    """The Topology recorded in a trace (Topology.to_dict(), SI units), exactly as it was, with its
    measured tables reloaded from their recorded folder (or, if moved, the built-in one of that name)."""
    try:
        gpu = dict(data["gpu"])
        gpu["flops_per_s"] = MappingProxyType(dict(gpu["flops_per_s"]))
        calibration = _recorded_calibration(data.get("calibration"))
        topo = Topology(name=data["name"], description=data.get("description", ""), source=data.get("source", ""),
                        gpu=GpuSpec(**gpu), fabric=FabricSpec(**data["fabric"]),
                        scale_out=ScaleOutSpec(**data["scale_out"]), calibration=calibration,
                        racks=_recorded_racks(data.get("racks")))
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"the trace's topology attribute is incomplete ({exc}): pass --topology") from None
    _check_recorded_topology(topo)
    return topo


def _recorded_racks(racks) -> int | None:
    if racks is None:
        return None
    if isinstance(racks, bool) or not isinstance(racks, int) or racks < 1:
        raise ValueError(f"racks = {racks!r}")
    return racks


_POSITIVE_CONSTANTS = ("hbm_bytes", "hbm_bytes_per_s", "flops_per_s", "domain_size", "link_bytes_per_s",
                       "nvls_efficiency", "bytes_per_s")


def _check_recorded_topology(topo: Topology) -> None:
    """Every constant of a recorded topology is a finite number, > 0 for capacities, bandwidths
    and rates, >= 0 for latencies; NVLS availability a boolean; a rate for every precision."""
    if not isinstance(topo.fabric.nvls_available, bool) or set(topo.gpu.flops_per_s) != set(PRECISIONS):
        raise TraceError("the trace's topology attribute is malformed (fabric.nvls_available, "
                         "gpu.flops_per_s): pass --topology")
    values = [(f"gpu.flops_per_s.{k}", "flops_per_s", v) for k, v in topo.gpu.flops_per_s.items()]
    for part, spec in (("gpu", topo.gpu), ("fabric", topo.fabric), ("scale_out", topo.scale_out)):
        values += [(f"{part}.{f.name}", f.name, getattr(spec, f.name)) for f in dataclasses.fields(spec)
                   if f.name not in ("name", "flops_per_s", "nvls_available")]
    for label, name, value in values:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value < 0 or (name in _POSITIVE_CONSTANTS and value == 0):
            raise TraceError(f"the trace's topology attribute has {label} = {value!r}: pass --topology")


def _recorded_calibration(directory: str | None):
    if not directory:
        return None
    path = Path(directory)
    if not path.is_dir():
        path = BUILTIN_TOPOLOGY_DIR / "calibration" / path.name
    if not path.is_dir():
        raise TraceError(f"the trace's calibration tables ({directory}) are not on this machine: pass --topology")
    return load_calibration(path)


def scaled_name(topo: Topology, nvlink_scale: float = 1.0, hbm_scale: float = 1.0) -> Topology:
    """`topo` named after the what-if scales applied to it (the timing engine applies them)."""
    if nvlink_scale <= 0 or hbm_scale <= 0:
        raise ValueError(f"scales must be > 0, got --nvlink-scale {nvlink_scale} --hbm-scale {hbm_scale}")
    if nvlink_scale == 1.0 and hbm_scale == 1.0:
        return topo
    note = ", ".join(f"{name} x{scale:g}" for name, scale in (("NVLink", nvlink_scale), ("HBM", hbm_scale))
                     if scale != 1.0)
    return dataclasses.replace(topo, name=f"{topo.name} ({note})", description=f"{topo.description} ({note})")


def recorded_configs(meta: TraceMeta) -> tuple[ModelConfig, Layout, RunConfig]:
    """The model, layout and run configuration a trace records, rebuilt from their dicts (TraceError,
    one line, when this version cannot use them)."""
    model = ModelConfig.from_dict(meta.model)
    try:
        layout = layout_from_dict(meta.layout)
    except (KeyError, TypeError) as exc:
        raise TraceError(f"the trace's layout {meta.layout} is incomplete ({exc})") from None
    try:
        run = run_config_from_dict(meta.run)
    except (TypeError, ConfigError) as exc:
        raise TraceError(f"the trace's run config is not usable here ({exc})") from None
    return model, layout, run


def parse_group(text: str) -> tuple[Axis, ...]:
    """'kvp*tpa' -> (Axis.KVP, Axis.TPA); 'self' or '' -> ()."""
    if text in ("", "self"):
        return ()
    try:
        return tuple(Axis(name) for name in text.split("*"))
    except ValueError:
        raise TraceError(f"collective group {text!r} names an unknown mesh axis "
                         f"(known: {', '.join(a.value for a in Axis)})") from None


# --- durations -----------------------------------------------------------------------------------
class OpDurations:
    """Modeled seconds of a layer's recorded ops on one rank: the layer's plan is rebuilt with
    `plan.layer_plan` (or `plan.tail_plan`) from the run's config and the shapes the events record
    (requests, KV tokens of each attention op, MoE experts hit), and timed by the timing engine,
    exactly as the emulator timed it. Cached per (rank class, layer kind, shapes)."""

    def __init__(self, model: ModelConfig, layout: Layout, run: RunConfig, timer: TimeModel):
        self.model, self.layout, self.run, self.timer = model, layout, run, timer
        self.rank_class, _ = shard_classes(model, layout)
        self.cache: dict[tuple, np.ndarray] = {}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Seconds [ops] of one rank's rows of one layer, in plan order."""
        rank, layer = int(rows["rank"][0]), int(rows["layer"][0])
        attention = rows["op"] == OpName.ATTENTION.value.encode()
        key = (int(self.rank_class[rank]), self._kind(layer), tuple(rows["op"].tolist()), int(rows["requests"][0]),
               tuple(map(tuple, np.stack([rows["request"], rows["requests"], rows["tokens"]], 1)[attention].tolist())),
               tuple(rows["experts_hit"].tolist()), tuple(rows["pairs"].tolist()))
        if key not in self.cache:
            ops = self._plan(rows, rank, layer, attention)
            self.cache[key] = np.array([self.timer.op_timing(op)[0] for op in ops])
        return self.cache[key]

    def _kind(self, layer: int):
        return "tail" if layer >= self.run.layers else self.model.is_moe_layer(layer)

    def _plan(self, rows: np.ndarray, rank: int, layer: int, attention: np.ndarray) -> list[Op]:
        batch = int(rows["requests"][0])
        if layer >= self.run.layers:
            ops = tail_plan(self.model, self.layout, rank, batch, self.timer.impl)
        else:
            kv = np.ones(batch, dtype=np.int64)
            ops = layer_plan(self.model, self.layout, rank, layer, kv, self.timer.impl, True, self.run.a2a_chunk,
                             self.run.layers)
        names = [op.name.value.encode() for op in ops]
        if names != list(rows["op"]):
            raise TraceError(f"step {rows['step'][0]} layer {layer} rank {rank}: the recorded ops are not the plan "
                             f"of this configuration (helix_mpi {__version__}): cannot re-time them")
        return [self._recorded_shape(op, row) for op, row in zip(ops, rows)]

    @staticmethod
    def _recorded_shape(op: Op, row) -> Op:
        """The op with the KV tokens and MoE routing its event recorded."""
        kernels = []
        for kernel in op.kernels:
            if kernel.kind in (KernelKind.ATTENTION, KernelKind.MLA):
                kernel = dataclasses.replace(kernel, tokens=float(row["tokens"]))
            elif kernel.kind is KernelKind.MOE:
                kernel = dataclasses.replace(kernel, hit=float(row["experts_hit"]), pairs=float(row["pairs"]))
            kernels.append(kernel)
        return dataclasses.replace(op, kernels=tuple(kernels))


def collective_seconds(rows: np.ndarray, timer: TimeModel) -> np.ndarray:
    """Modeled seconds [n] of collective event rows (kind, size, group size)."""
    seconds = np.zeros(len(rows))
    kinds = rows["collective"]
    for kind in np.unique(kinds):
        try:
            collective = Collective(kind.decode())
        except ValueError:
            raise TraceError(f"collective {kind.decode()!r} is not known to this cost model") from None
        same = kinds == kind
        seconds[same] = timer.collective_seconds(collective, rows["bytes"][same], rows["group_size"][same])
    return seconds


# --- one layer -------------------------------------------------------------------------------------
def _layer_grid(rows: np.ndarray, ranks: np.ndarray, where: str) -> np.ndarray:
    """A layer's rows sorted by (index, rank) as a grid [ops, n] over the `ranks` that run it (all
    of them, or one pipeline stage's); refuses ragged plans."""
    world = len(ranks)
    if len(rows) % world:
        raise TraceError(f"{where}: {len(rows)} events are not the same op list on all {world} ranks "
                         "(run `helix-mpi validate`)")
    grid = rows.reshape(-1, world)
    if not (np.all(grid["rank"] == ranks) and np.all(grid["index"] == np.arange(len(grid))[:, None])):
        raise TraceError(f"{where}: ranks do not share one op list indexed 0..n-1 (run `helix-mpi validate`)")
    return grid


def _deps(plan: np.ndarray, hopb: bool | None) -> list[tuple[int, ...]]:
    """Dependencies of every op of a layer plan (rank 0's rows [ops]); HOP-B changes only the
    attention -> previous request's all-to-all edges. hopb None keeps the recorded deps."""
    deps = [tuple(int(d) for d in (row["dep0"], row["dep1"]) if d >= 0) for row in plan]
    if hopb is None:
        return deps
    all_to_all = {int(row["request"]): int(row["index"]) for row in plan if row["collective"] == A2A}
    for i, row in enumerate(plan):
        request = int(row["request"])
        if not row["op"].endswith(b"attention") or request < 1 or (request - 1) not in all_to_all:
            continue
        edge = all_to_all[request - 1]
        kept = tuple(d for d in deps[i] if d != edge)
        deps[i] = kept if hopb else kept + (edge,)
        if len(deps[i]) > 2:
            raise TraceError(f"op {row['op'].decode()} would need {len(deps[i])} dependencies; traces store 2")
    return deps


def _plan_ops(plan: np.ndarray, deps: list[tuple[int, ...]]) -> list[Op]:
    """plan.Op objects for LayerSchedule from rank 0's rows of one layer [ops]."""
    ops = []
    for row, op_deps in zip(plan, deps):
        kind = row["collective"].decode()
        try:
            stream = Stream(row["stream"].decode())
        except ValueError:
            raise TraceError(f"unknown stream {row['stream'].decode()!r} in op {row['op'].decode()}") from None
        ops.append(Op(name=row["op"].decode(), stream=stream, request=int(row["request"]), deps=op_deps,
                      collective=Collective(kind) if kind else None,
                      group=parse_group(row["group"].decode()) if kind else (), group_size=int(row["group_size"])))
    return ops


class Retimer:
    """Places every layer of every step on all ranks' clocks, in order."""

    def __init__(self, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology, hopb: bool | None,
                 nvlink_scale: float = 1.0, hbm_scale: float = 1.0):
        self.world, self.hopb = layout.world_size, hopb
        self.timer = TimeModel(topo, run.implementation(), hbm_scale=hbm_scale, nvlink_scale=nvlink_scale)
        self.durations = OpDurations(model, layout, run, self.timer)
        rules = rules_for(layout)
        self.clocks, self.group_max = StreamClocks(self.world), GroupMax(rules.stage_layout(layout))
        self.pipelined, self.stage_ranks = rules.pipelined, self.world // layout.pp
        self.sent = np.zeros(self.world)  # pipeline stages: when each rank's last stage send started
        self.checked_groups: set[tuple[Axis, ...]] = set()
        self.layout = layout

    def step(self, rows: np.ndarray) -> np.ndarray:
        """The step's rows (any order) with new start_s, end_s, dep0, dep1 (same order)."""
        order = np.lexsort((rows["rank"], rows["index"], rows["layer"]))
        ordered = rows[order]
        if self.pipelined:  # every stage starts the step when the previous step ended everywhere
            start = self.clocks.now().max()
            for stream in self.clocks.free:
                self.clocks.free[stream][:] = start
        starts = np.flatnonzero(np.diff(ordered["layer"])) + 1
        for begin, end in zip(np.r_[0, starts], np.r_[starts, len(ordered)]):
            self._layer(ordered[begin:end])  # views: updated in place
        out = np.empty_like(rows)
        out[order] = ordered
        return out

    def _seconds(self, grid: np.ndarray) -> np.ndarray:
        """Durations [ops, n] of a layer's grid of rows."""
        seconds = np.stack([self.durations(grid[:, column]) for column in range(grid.shape[1])], axis=1)
        comm = grid["collective"] != b""
        seconds[comm] = collective_seconds(grid[comm], self.timer)
        return seconds

    def _layer(self, rows: np.ndarray) -> None:
        where = f"step {rows['step'][0]} layer {rows['layer'][0]}"
        ranks = np.unique(rows["rank"])  # all, or the pipeline stage that runs the layer
        if not self.pipelined and len(ranks) != self.world:
            raise TraceError(f"{where}: {len(ranks)} of the {self.world} ranks record this layer "
                             "(run `helix-mpi validate`)")
        grid = _layer_grid(rows, ranks, where)
        durations = self._seconds(grid)
        deps = _deps(grid[:, 0], self.hopb)
        ops = _plan_ops(grid[:, 0], deps)
        clocks = StreamClocks(len(ranks))  # the stage's clocks (group_max sees stage-local ranks)
        for stream in clocks.free:
            clocks.free[stream] = self.clocks.free[stream][ranks]
        schedule = LayerSchedule(clocks, clocks.now(), self.group_max)
        for index, op in enumerate(ops):
            self._check_group(op, where)
            receive = op.name == OpName.STAGE_RECV.value
            start, end = schedule.place(index, op, durations[index],
                                        self.sent[ranks - self.stage_ranks] if receive else None)
            if op.name == OpName.STAGE_SEND.value:
                self.sent[ranks] = start
            grid["start_s"][index], grid["end_s"][index] = start, end
            grid["dep0"][index], grid["dep1"][index] = (list(op.deps) + [-1, -1])[:2]
        for stream in clocks.free:
            self.clocks.free[stream][ranks] = clocks.free[stream]

    def _check_group(self, op: Op, where: str) -> None:
        """A collective's group, rebuilt from its axes and the layout, must have its recorded size."""
        if not op.is_collective or op.group_size <= 1 or op.group in self.checked_groups:
            return
        sizes = np.bincount(group_colors(self.layout, op.group))
        if not np.all(sizes == op.group_size):
            raise TraceError(f"{where}: group {'*'.join(a.value for a in op.group)} of the layout has "
                             f"{sizes.max()} ranks but op {op.name} records {op.group_size}")
        self.checked_groups.add(op.group)


# --- the trace --------------------------------------------------------------------------------------
def iter_steps(file, path: str | Path, meta=None) -> Iterator[np.ndarray]:
    """All ranks' rows of one step at a time (rows of a step are contiguous: one append per step)."""
    carry, seen = None, set()
    for rows in iter_event_chunks(file, path, meta=meta):
        if carry is not None:
            rows = np.concatenate([carry, rows])
        cuts = np.flatnonzero(np.diff(rows["step"])) + 1
        pieces = np.split(rows, cuts)
        for piece in pieces[:-1]:
            yield _fresh_step(piece, seen, path)
        carry = pieces[-1]
    if carry is not None and len(carry):
        yield _fresh_step(carry, seen, path)


def _fresh_step(rows: np.ndarray, seen: set, path: str | Path) -> np.ndarray:
    step = int(rows["step"][0])
    if step in seen:
        raise TraceError(f"{path}: events of step {step} are not contiguous (run `helix-mpi validate`)")
    seen.add(step)
    return rows


@dataclass
class ReplayResult:
    path: Path
    source_topology: str
    topology: str
    hopb: bool
    source_ttl_s: float
    ttl_s: float
    source_step_time_s: float
    step_time_s: float
    events: int

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        out["ttl_ratio"] = self.ttl_s / self.source_ttl_s if self.source_ttl_s > 0 else None
        return out


def replay_trace(source: str | Path, output: str | Path, topo: Topology | None = None, hopb: bool | None = None,
                 nvlink_scale: float = 1.0, hbm_scale: float = 1.0,
                 progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Re-time `source` on `topo` (default: the trace's own) scaled by the factors, with HOP-B
    on/off (default: as recorded), and write a new complete trace to `output`."""
    if Path(output).resolve() == Path(source).resolve():
        raise ValueError(f"-o {output} is the source trace: choose another output path")
    with open_trace(source) as file:
        meta = read_meta(file, source)
        base = topo if topo is not None else topology_from_dict(meta.topology)
        target = scaled_name(base, nvlink_scale, hbm_scale)
        recorded_hopb = bool(meta.run.get("hopb", True))
        retimer = Retimer(*recorded_configs(meta), target, None if hopb is None or hopb == recorded_hopb else hopb,
                          nvlink_scale, hbm_scale)
        kv_tokens = read_kv_tokens(file, source)
        attrs = _replay_attrs(file, meta, source, target, recorded_hopb if hopb is None else hopb)
        writer = TraceWriter(output, attrs, meta.world_size)
        try:
            ends = _write_steps(file, source, retimer, writer, kv_tokens, progress)
            writer.finish()
        finally:
            if not writer.finished:  # a replay that failed half-way leaves nothing behind
                writer.abandon().unlink(missing_ok=True)
    old_ends, new_ends = ends
    return ReplayResult(Path(output), meta.topology.get("name", "?"), target.name,
                        recorded_hopb if hopb is None else hopb, ttl_seconds(old_ends, meta.shape),
                        ttl_seconds(new_ends, meta.shape), float(step_times_from_ends(np.nanmax(old_ends, axis=1)).mean()),
                        float(step_times_from_ends(np.nanmax(new_ends, axis=1)).mean()), meta.events)


def _write_steps(file, source, retimer: Retimer, writer: TraceWriter, kv_tokens: np.ndarray,
                 progress) -> tuple[np.ndarray, np.ndarray]:
    """Re-time and append every step; returns the (recorded, new) modeled end of every layer of
    every step [T, L]."""
    old_ends, new_ends = [], []
    for count, rows in enumerate(iter_steps(file, source, read_meta(file, source))):
        step = int(rows["step"][0])
        if step != count or step >= len(kv_tokens):
            raise TraceError(f"{source}: step {step} is out of order or has no /kv_tokens row "
                             "(run `helix-mpi validate`)")
        new = retimer.step(rows)
        writer.append_step(new, kv_tokens[step])
        old_ends.append(_layer_ends(rows))
        new_ends.append(_layer_ends(new))
        if progress is not None:
            progress(len(rows))
    if not new_ends:
        raise TraceError(f"{source}: trace has no events")
    width = max(len(e) for e in old_ends)
    pad = [np.concatenate([e, np.full(width - len(e), np.nan)]) for e in old_ends + new_ends]
    return np.array(pad[:len(old_ends)]), np.array(pad[len(old_ends):])


def _layer_ends(rows: np.ndarray) -> np.ndarray:
    """Modeled end of each layer of one step's rows [L]."""
    ends = np.full(int(rows["layer"].max()) + 1, np.nan)
    np.fmax.at(ends, rows["layer"], rows["end_s"])
    return ends


def _replay_attrs(file, meta, source, target: Topology, hopb: bool) -> dict[str, Any]:
    """Root attributes of the replayed trace: the source's, with config/topology updated."""
    attrs = {key: _plain(value) for key, value in root_attributes(file).items() if key not in COPIED_ATTRS_SKIP}
    config = json.loads(json.dumps(meta.config))
    config["run"]["hopb"] = hopb
    attrs["config"] = json.dumps(config)
    attrs["topology"] = json.dumps(target.to_dict())
    attrs["replayed_from"] = json.dumps({"path": os.path.abspath(source), "topology": meta.topology.get("name"),
                                         "hopb": meta.run.get("hopb"), "helix_mpi": __version__})
    if meta.memory is not None:
        attrs["memory"] = json.dumps(_memory_on(meta.memory, target))
    return attrs


def _memory_on(memory: dict[str, Any], topo: Topology) -> dict[str, Any]:
    """The memory figures with the new GPU's HBM capacity (bytes per rank do not change)."""
    out = dict(memory)
    out["hbm_bytes"] = topo.gpu.hbm_bytes
    totals = [r.get("weights_bytes", 0.0) + r.get("kv_bytes", 0.0) for r in memory.get("per_rank", [])]
    out["fits"] = bool(all(t <= topo.gpu.hbm_bytes for t in totals))
    return out


def _plain(value: Any) -> Any:
    """HDF5 attribute value as a Python scalar or str (what TraceWriter stores unchanged)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value
