"""Figures of a run from its events (emulated trace or analytic simulation alike), vectorised.

`RunShape` says what the figures need besides the events; `EventStats` folds event chunks into
per-op, per-step and per-key sums (nothing per event is kept), and `summary(shape)` turns them
into TTL, throughput, the per-op table, exposed communication and collective bandwidths. Times
are seconds unless a name says otherwise (`_us` microseconds), bytes are bytes, bandwidths
`_gbps` are GB/s = 1e9 bytes/s (nccl-tests). No trace file is read here (no h5py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..costmodel import busbw
from .codes import Vocabulary, grow, sum_by

GB = 1e9
US = 1e6  # microseconds per second
BY_KEYS = ("op", "layer", "rank", "step")
_KEY_FIELDS = ("op", "stream", "collective", "group")  # what identifies an op row of the table


@dataclass(frozen=True)
class RunShape:
    """What the figures need to know about the run besides its events."""

    world_size: int
    batch: int
    layers: int  # emulated layers
    model_layers: int  # layers of the full model (TTL scales the emulated ones to it)
    # kind of every layer of the full model (True = MoE) when the model mixes dense and MoE
    # layers: the TTL then scales each kind's mean emulated layer time by its count
    layer_kinds: tuple[bool, ...] | None = None
    tail: bool = False  # each step ends with the LM head and sampling (recorded as layer `layers`)

    def layer_weights(self) -> np.ndarray:
        """Weight of each emulated layer in the full model's TTL [layers], then 1 for the tail."""
        return np.concatenate([self._weights(), [1.0] if self.tail else []])

    def _weights(self) -> np.ndarray:
        even = np.full(self.layers, self.model_layers / self.layers)
        if not self.layer_kinds or len(set(self.layer_kinds)) == 1:
            return even
        emulated = np.array(self.layer_kinds[:self.layers])
        weights = np.zeros(self.layers)
        missing = 0
        for kind in (False, True):
            in_model, in_run = self.layer_kinds.count(kind), int((emulated == kind).sum())
            if in_run:
                weights[emulated == kind] = in_model / in_run
            else:
                missing += in_model
        return weights + missing / self.layers  # a kind not emulated: spread over the emulated layers


def shape_of(world_size: int, batch: int, layers: int, model) -> RunShape:
    """RunShape of a run of `model` (a ModelConfig)."""
    kinds = tuple(model.is_moe_layer(layer) for layer in range(model.num_layers))
    return RunShape(world_size, batch, layers, model.num_layers, kinds, model.vocab_size > 0)


def step_times(events: np.ndarray) -> np.ndarray:
    """Modeled seconds of each decode step [T] (the emulated layers): successive step ends."""
    steps = events["step"]
    ends = np.zeros(steps.max() + 1)
    np.maximum.at(ends, steps, events["end_s"])
    return step_times_from_ends(ends)


def step_times_from_ends(ends: np.ndarray) -> np.ndarray:
    """Step durations [T] from the modeled end of every step [T] (step 0 starts at 0)."""
    return np.diff(np.concatenate([[0.0], ends]))


def ttl_seconds(layer_ends: np.ndarray, shape: RunShape) -> float:
    """Token-to-token latency of the full model from the modeled end of every layer of every step
    [T, L] (the tail last): each layer's mean time weighted by how many of the model's layers it
    stands for, plus the tail; without per-layer ends ([T]), the mean step time scaled."""
    layer_ends = np.asarray(layer_ends, dtype=float)
    weights = shape.layer_weights()
    complete = ~np.isnan(layer_ends).any(axis=1) if layer_ends.ndim == 2 else None
    if layer_ends.ndim == 2 and layer_ends.shape[1] == len(weights) and complete.any():
        return float(layer_times_from_ends(layer_ends)[complete].mean(axis=0) @ weights)
    step_ends = np.nanmax(layer_ends, axis=1) if layer_ends.ndim == 2 else layer_ends
    return float(step_times_from_ends(step_ends).mean()) * shape.model_layers / shape.layers


def layer_times_from_ends(layer_ends: np.ndarray) -> np.ndarray:
    """Modeled seconds of each layer of each step [T, L] from their ends: successive ends (a
    missing end, NaN, gives NaN times where it is used)."""
    flat = layer_ends.reshape(-1)
    previous = np.concatenate([[0.0], np.fmax.accumulate(flat)[:-1]])
    return (flat - previous).reshape(layer_ends.shape)


def summarize(events: np.ndarray, shape: RunShape) -> dict[str, Any]:
    """TTL, throughput, per-op breakdown, exposed communication and collective bandwidths."""
    stats = EventStats()
    stats.add(events)
    return stats.summary(shape)


class EventStats:
    """Running sums over event chunks; `summary(shape)` turns them into the figures."""

    def __init__(self, by: str = "op"):
        if by not in BY_KEYS:
            raise ValueError(f"--by must be one of {', '.join(BY_KEYS)}, got {by!r}")
        self.by = by
        self.events = 0
        self.steps = 0  # steps seen (largest step + 1); the per-step arrays below have room for more
        self.step_end = np.zeros(0)  # [>= T] modeled end of each step, s
        self.compute_s = 0.0  # busy seconds summed over ranks and steps
        self.comm_s = 0.0
        self.modeled_end_s = 0.0
        self.host_end_s = 0.0
        self.op_keys = Vocabulary(_KEY_FIELDS)
        self.op_sums = np.zeros((0, 4))  # per op key: count, seconds, bytes, flops
        self.op_group_size = np.zeros(0, dtype=np.int64)
        self.key_sums = np.zeros((0, 4))  # per --by value: events, compute s, comm s, comm bytes
        self.rank_busy = np.zeros((0, 2))  # per rank: compute s, comm s (summed over steps)
        self.layer_span = np.full((0, 0, 2), np.nan)  # [>= T, L, (min start, max end)] for --by layer
        self.source_seconds: dict[tuple[int, str], float] = {}  # (op key, what timed it) -> busy seconds

    def add(self, chunk: np.ndarray) -> None:
        if len(chunk) == 0:
            return
        self.events += len(chunk)
        duration = chunk["end_s"] - chunk["start_s"]
        is_comm = chunk["stream"] == b"comm"
        self.compute_s += float(duration[~is_comm].sum())
        self.comm_s += float(duration[is_comm].sum())
        self.modeled_end_s = max(self.modeled_end_s, float(chunk["end_s"].max()))
        self.host_end_s = max(self.host_end_s, float(chunk["host_end_s"].max()))
        self._reserve(int(chunk["step"].max()) + 1, int(chunk["layer"].max()) + 1)
        self._add_step_ends(chunk)
        ranks = chunk["rank"].astype(np.int64)
        self.rank_busy = grow(self.rank_busy, int(ranks.max()) + 1)
        for column, weights in enumerate((np.where(is_comm, 0.0, duration), np.where(is_comm, duration, 0.0))):
            self.rank_busy[:, column] += sum_by(ranks, len(self.rank_busy), weights)
        self._add_ops(chunk, duration)
        self._add_layer_spans(chunk)
        if self.by != "op":
            self._add_by_key(chunk, duration, is_comm)

    def _reserve(self, steps: int, layers: int) -> None:
        """Room for `steps` steps and `layers` layers in the per-step arrays; the room for steps
        doubles when it runs out, so a long run copies them a few times, not at every step."""
        if steps > len(self.step_end) or layers > self.layer_span.shape[1]:
            capacity = max(steps, 2 * len(self.step_end)) if steps > len(self.step_end) else len(self.step_end)
            width = max(layers, self.layer_span.shape[1])
            self.step_end = grow(self.step_end, capacity)
            grown = np.full((capacity, width, 2), np.nan)
            grown[:self.layer_span.shape[0], :self.layer_span.shape[1]] = self.layer_span
            self.layer_span = grown
        self.steps = max(self.steps, steps)

    def _add_step_ends(self, chunk: np.ndarray) -> None:
        """Max end per step; rows of a step come in long runs, so reduce runs first (fast)."""
        steps = chunk["step"]
        run_starts = np.flatnonzero(np.concatenate([[True], steps[1:] != steps[:-1]]))
        np.maximum.at(self.step_end, steps[run_starts], np.maximum.reduceat(chunk["end_s"], run_starts))

    def _add_ops(self, chunk: np.ndarray, duration: np.ndarray) -> None:
        codes = self.op_keys.encode(chunk)
        self._add_sources(chunk, codes, duration)
        size = len(self.op_keys.keys)
        new_from = len(self.op_group_size)
        self.op_sums = grow(self.op_sums, size)
        self.op_group_size = grow(self.op_group_size, size)
        for column, weights in enumerate((None, duration, chunk["bytes"], chunk["flops"])):
            self.op_sums[:, column] += sum_by(codes, size, weights)
        for code in range(new_from, size):  # group size of a new op key: from its first row
            self.op_group_size[code] = chunk["group_size"][np.argmax(codes == code)]

    def _add_sources(self, chunk: np.ndarray, codes: np.ndarray, duration: np.ndarray) -> None:
        """Busy seconds per (op key, source): what timed them (table, fitted physics, spec)."""
        if "source" not in (chunk.dtype.names or ()):
            return
        sources = chunk["source"]
        for source in np.unique(sources):
            same = sources == source
            sums = np.bincount(codes[same], weights=duration[same])
            for code in np.flatnonzero(sums):
                key = (int(code), source.decode())
                self.source_seconds[key] = self.source_seconds.get(key, 0.0) + float(sums[code])

    def time_sources(self, code: int | None = None) -> dict[str, float]:
        """Share of modeled busy time timed by each source (of op key `code`, or of every op)."""
        totals: dict[str, float] = {}
        for (key, source), seconds in self.source_seconds.items():
            if code is None or key == code:
                totals[source] = totals.get(source, 0.0) + seconds
        whole = sum(totals.values())
        return {source: seconds / whole for source, seconds in sorted(totals.items())} if whole > 0 else {}

    def _add_by_key(self, chunk: np.ndarray, duration: np.ndarray, is_comm: np.ndarray) -> None:
        keys = chunk[self.by].astype(np.int64)
        size = int(keys.max()) + 1
        self.key_sums = grow(self.key_sums, size)
        comm_bytes = np.where(is_comm, chunk["bytes"], 0.0)
        for column, weights in enumerate((None, np.where(is_comm, 0.0, duration),
                                          np.where(is_comm, duration, 0.0), comm_bytes)):
            self.key_sums[:size, column] += sum_by(keys, size, weights)

    def _add_layer_spans(self, chunk: np.ndarray) -> None:
        steps, layers = chunk["step"].astype(np.int64), chunk["layer"].astype(np.int64)
        flat = self.layer_span.reshape(-1, 2)  # a view
        cell = steps * self.layer_span.shape[1] + layers
        touched = np.unique(cell)
        flat[touched[np.isnan(flat[touched, 0])]] = (np.inf, -np.inf)  # cells seen for the first time
        np.minimum.at(flat[:, 0], cell, chunk["start_s"])
        np.maximum.at(flat[:, 1], cell, chunk["end_s"])

    def _ttl(self, shape: RunShape, step_time: float) -> float:
        return ttl_seconds(self.layer_span[:self.steps, :, 1], shape)

    # --- figures --------------------------------------------------------------------------
    def summary(self, shape: RunShape) -> dict[str, Any]:
        if self.events == 0:
            raise ValueError("no events to summarize")
        per_step = step_times_from_ends(self.step_end[:self.steps])
        n_steps = len(per_step)
        rank_steps = shape.world_size * n_steps
        step_time = float(per_step.mean())
        ttl = self._ttl(shape, step_time)
        compute_busy, comm_busy = self.compute_s / rank_steps, self.comm_s / rank_steps
        exposed_comm, waiting = self._exposure(shape.world_size, float(per_step.sum()), n_steps, step_time,
                                               compute_busy)
        ops = self._op_rows(rank_steps)
        summary = {
            "world_size": shape.world_size,
            "batch": shape.batch,
            "steps": n_steps,
            "layers_emulated": shape.layers,
            "model_layers": shape.model_layers,
            "events": self.events,
            "step_time_s": step_time,
            "ttl_s": ttl,
            "tokens_per_s_per_user": 1.0 / ttl if ttl > 0 else math.inf,
            "tokens_per_s_per_gpu": shape.batch / ttl / shape.world_size if ttl > 0 else math.inf,
            "compute_busy_s": compute_busy,  # per rank per step
            "comm_busy_s": comm_busy,
            "exposed_comm_s": exposed_comm,
            "hidden_comm_s": max(comm_busy - exposed_comm, 0.0),
            "waiting_s": waiting,  # neither computing nor communicating: waiting for busier ranks
            "ops": ops,
            "time_sources": self.time_sources(),  # share of modeled op time: measured table, fitted, spec
            "collectives": _collective_rows(ops),
            "host_seconds": self.host_end_s,
            "modeled_seconds": self.modeled_end_s,
        }
        if self.by != "op":
            summary["by"] = {"key": self.by, "rows": self._key_rows(shape, n_steps, per_step)}
        return summary

    def _exposure(self, world_size: int, total_s: float, n_steps: int, step_time: float,
                  compute_busy: float) -> tuple[float, float]:
        """(exposed comm, waiting) per rank per step. A rank's step time not spent computing is
        exposed communication up to its own communication time; the rest is waiting for busier
        ranks (load imbalance: dp-ep ranks with fewer requests). So exposed <= comm always."""
        busy = np.zeros((world_size, 2))
        busy[:min(world_size, len(self.rank_busy))] = self.rank_busy[:world_size]
        idle = np.maximum(total_s - busy[:, 0], 0.0)  # per rank, over all steps
        exposed = float(np.minimum(idle, busy[:, 1]).mean()) / n_steps
        return exposed, max(step_time - compute_busy - exposed, 0.0)

    def _op_rows(self, rank_steps: int) -> list[dict[str, Any]]:
        rows = []
        names = [key[0] for key, code in zip(self.op_keys.keys, range(len(self.op_keys.keys)))
                 if not (key[2] and self.op_group_size[code] <= 1)]
        for code, (op, stream, collective, group) in enumerate(self.op_keys.keys):
            if collective and self.op_group_size[code] <= 1:
                continue  # a collective over one rank moves nothing and costs nothing: not a row
            count, seconds, nbytes, flops = self.op_sums[code]
            name = f"{op}[{group}]" if names.count(op) > 1 else op  # one op over several groups
            row = {"op": op, "name": name, "stream": stream, "count": int(count),
                   "seconds_per_step": seconds / rank_steps,
                   "mean_s": seconds / count, "bytes": nbytes / count, "flops": flops / count,
                   "time_sources": self.time_sources(code)}
            if collective:
                row.update(_bandwidths(collective, nbytes, seconds, int(self.op_group_size[code])))
                row.update(collective=collective, group=group, group_size=int(self.op_group_size[code]),
                           bytes_per_step=nbytes / rank_steps)
            rows.append(row)
        rows.sort(key=lambda r: -r["seconds_per_step"])
        return rows

    def _key_rows(self, shape: RunShape, n_steps: int, per_step: np.ndarray) -> list[dict[str, Any]]:
        """Rows per step, layer or rank; busy times and bytes per rank per step within the row."""
        divisor = {"step": shape.world_size, "layer": shape.world_size * n_steps, "rank": n_steps}[self.by]
        rows = []
        for value in np.flatnonzero(self.key_sums[:, 0]):
            events, compute, comm, comm_bytes = self.key_sums[value]
            row = {self.by: int(value), "events": int(events), "compute_s": compute / divisor,
                   "comm_s": comm / divisor, "comm_bytes": comm_bytes / divisor}
            if self.by == "step":
                row["step_time_s"] = float(per_step[value])
            if self.by == "layer":
                spans = self.layer_span[:self.steps, value]
                row["layer_time_s"] = float(np.nanmean(spans[:, 1] - spans[:, 0]))
            rows.append(row)
        return rows


def _bandwidths(collective: str, nbytes: float, seconds: float, group_size: int) -> dict[str, float]:
    """nccl-tests algbw and busbw (GB/s) of a collective from summed sizes and times."""
    if seconds <= 0:
        return {"algbw_gbps": 0.0, "busbw_gbps": 0.0}
    try:
        bus = float(busbw(collective, nbytes, seconds, group_size))
    except ValueError:  # a collective this version's cost model does not know: algbw only
        bus = math.nan
    return {"algbw_gbps": nbytes / seconds / GB, "busbw_gbps": bus / GB}


def _collective_rows(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (collective, group): count, mean size, time, algbw and busbw."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for op in ops:
        if "collective" not in op:
            continue
        row = rows.setdefault((op["collective"], op["group"]), {
            "collective": op["collective"], "group": op["group"], "group_size": op["group_size"],
            "ops": [], "count": 0, "total_bytes": 0.0, "total_s": 0.0, "seconds_per_step": 0.0,
            "bytes_per_step": 0.0})
        row["ops"].append(op["op"])
        row["count"] += op["count"]
        row["total_bytes"] += op["bytes"] * op["count"]
        row["total_s"] += op["mean_s"] * op["count"]
        row["seconds_per_step"] += op["seconds_per_step"]
        row["bytes_per_step"] += op["bytes_per_step"]
    out = []
    for row in rows.values():
        total_bytes, total_s = row.pop("total_bytes"), row.pop("total_s")
        row.update(mean_bytes=total_bytes / row["count"], mean_s=total_s / row["count"])
        row.update(_bandwidths(row["collective"], total_bytes, total_s, row["group_size"]))
        out.append(row)
    return sorted(out, key=lambda r: -r["seconds_per_step"])
