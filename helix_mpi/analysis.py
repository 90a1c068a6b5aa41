"""Figures of a run from its events (emulated trace or analytic simulation alike), vectorised.

Two entry points share one accumulator (EventStats), so they agree by construction:
- `summarize(events, RunShape)`: events already in memory (the runner, `helix-mpi model`);
- `summarize_trace(path)`: a trace file streamed chunk by chunk, with bounded memory (nothing
  per event is kept: every chunk is folded into per-op, per-step and per-key sums).

Also here: trace metadata (TraceMeta), KV-cache and memory figures, `compare`, event selection
by step/layer/rank ranges, and `validate_trace`. Times are seconds unless a name says otherwise
(`_us` microseconds), bytes are bytes, bandwidths `_gbps` are GB/s = 1e9 bytes/s (nccl-tests).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
from numpy.lib.recfunctions import repack_fields

from .costmodel import busbw
from .trace import SCHEMA_VERSION, TraceError, attribute, marked_complete, open_trace, read_events

GB = 1e9
US = 1e6  # microseconds per second
SUMMARY_CHUNK = 1 << 18  # events per read (144 B each: ~38 MB)
BY_KEYS = ("op", "layer", "rank", "step")


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


# --- string columns as small integer codes -------------------------------------------------
_KEY_FIELDS = ("op", "stream", "collective", "group")  # what identifies an op row of the table


def _as_words(rows: np.ndarray, fields: tuple[str, ...]) -> np.ndarray:
    """The bytes of some fields of structured rows [n] as uint64 words [n, w] (one packed copy)."""
    packed = repack_fields(rows[list(fields)])
    width = packed.dtype.itemsize
    raw = packed.view(np.uint8).reshape(len(rows), width)
    if width % 8:
        raw = np.concatenate([raw, np.zeros((len(rows), 8 - width % 8), dtype=np.uint8)], axis=1)
    return raw.view("<u8")


_HASH_BASE = 0x9E3779B97F4A7C15  # odd 64-bit constant (2**64 / golden ratio)


def _unique_rows(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row index of each distinct row, inverse [n]) of a uint64 matrix [n, w]; exact.

    A polynomial hash (sum of word_j * base**j modulo 2**64, one integer matmul) makes one
    sortable uint64 per row, much faster than sorting byte strings. Every row is then compared
    word by word with its group's first row; on a hash collision an exact row-wise unique runs."""
    powers = np.array([pow(_HASH_BASE, j, 1 << 64) for j in range(words.shape[1])], dtype=np.uint64)
    _, first, inverse = np.unique(words @ powers, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    representative = words[first]
    if not all(np.array_equal(representative[:, j][inverse], words[:, j]) for j in range(words.shape[1])):
        _, first, inverse = np.unique(words, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


class Vocabulary:
    """Global integer codes of distinct tuples of bytes fields, stable across chunks."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields, self.keys, self.codes = fields, [], {}

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        """Code [n] of every row of the chunk."""
        first, inverse = _unique_rows(_as_words(chunk, self.fields))
        lookup = np.array([self._code(tuple(chunk[f][i].decode() for f in self.fields)) for i in first],
                          dtype=np.int64)
        return lookup[inverse]

    def _code(self, key: tuple[str, ...]) -> int:
        if key not in self.codes:
            self.codes[key] = len(self.keys)
            self.keys.append(key)
        return self.codes[key]


def _grow(array: np.ndarray, length: int, fill: float = 0.0) -> np.ndarray:
    """`array` extended along axis 0 to at least `length` rows with `fill`."""
    if len(array) >= length:
        return array
    extra = np.full((length - len(array),) + array.shape[1:], fill, dtype=array.dtype)
    return np.concatenate([array, extra])


def _sum_by(codes: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(codes, weights=weights, minlength=size).astype(float)


# --- the accumulator ------------------------------------------------------------------------
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
        self.rank_busy = _grow(self.rank_busy, int(ranks.max()) + 1)
        for column, weights in enumerate((np.where(is_comm, 0.0, duration), np.where(is_comm, duration, 0.0))):
            self.rank_busy[:, column] += _sum_by(ranks, len(self.rank_busy), weights)
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
            self.step_end = _grow(self.step_end, capacity)
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
        self.op_sums = _grow(self.op_sums, size)
        self.op_group_size = _grow(self.op_group_size, size)
        for column, weights in enumerate((None, duration, chunk["bytes"], chunk["flops"])):
            self.op_sums[:, column] += _sum_by(codes, size, weights)
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
        self.key_sums = _grow(self.key_sums, size)
        comm_bytes = np.where(is_comm, chunk["bytes"], 0.0)
        for column, weights in enumerate((None, np.where(is_comm, 0.0, duration),
                                          np.where(is_comm, duration, 0.0), comm_bytes)):
            self.key_sums[:size, column] += _sum_by(keys, size, weights)

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


# --- trace files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceMeta:
    """The root attributes of a trace that the tools need, parsed and checked."""

    path: str
    config: dict[str, Any]
    topology: dict[str, Any]
    world_size: int
    events: int
    kv_steps: int  # rows of /kv_tokens
    complete: bool
    memory: dict[str, Any] | None
    replayed_from: Any

    @property
    def run(self) -> dict[str, Any]:
        return self.config["run"]

    @property
    def model(self) -> dict[str, Any]:
        return self.config["model"]

    @property
    def layout(self) -> dict[str, Any]:
        return self.config["layout"]

    @property
    def strategy(self) -> str:
        return str(self.config.get("strategy") or self.layout.get("strategy") or "helix")

    @property
    def shape(self) -> RunShape:
        from .config import ModelConfig

        return shape_of(self.world_size, int(self.run["batch"]), int(self.run["layers"]),
                        ModelConfig.from_dict(self.model))


_REQUIRED_CONFIG = {"run": ("batch", "layers", "precision"), "model": ("num_layers",), "layout": ()}
_POSITIVE_INTEGERS = {"run": ("batch", "layers"), "model": ("num_layers",), "layout": ("kvp", "tpa", "tpf")}


def _attr_json(file, path: str, key: str, required: bool = True) -> Any:
    """A root attribute holding a JSON object, parsed (None when absent and not required)."""
    if key not in file.attrs:
        if required:
            raise TraceError(f"{path}: root attribute '{key}' is missing: not a complete helix_mpi trace")
        return None
    value = attribute(file, key)
    try:
        value = json.loads(value) if isinstance(value, (str, bytes)) else value
    except (ValueError, RecursionError):
        raise TraceError(f"{path}: root attribute '{key}' is not valid JSON") from None
    if not isinstance(value, dict):
        raise TraceError(f"{path}: root attribute '{key}' is not a JSON object")
    return value


def _check_config(config: dict[str, Any], path: str) -> None:
    """The sections and the numbers the tools compute with (one line for the first problem)."""
    for section, keys in _REQUIRED_CONFIG.items():
        if not isinstance(config.get(section), dict):
            raise TraceError(f"{path}: attribute 'config' lacks its '{section}' section")
        missing = [k for k in keys if k not in config[section]]
        if missing:
            raise TraceError(f"{path}: attribute 'config' lacks {section}.{missing[0]}")
    for section, keys in _POSITIVE_INTEGERS.items():
        for key in keys:
            value = config[section].get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TraceError(f"{path}: attribute 'config' has {section}.{key} = {value!r}: not a positive integer")
    from .config import ConfigError, Layout, ModelConfig, RunConfig, Strategy

    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        ModelConfig.from_dict(config["model"])
        RunConfig(**{k: v for k, v in config["run"].items() if k in run_fields})
        layout = config["layout"]
        Layout(layout["kvp"], layout["tpa"], layout["tpf"], layout.get("ep", 1),
               Strategy(layout.get("strategy", config.get("strategy", "helix"))))
        if not (isinstance(layout.get("ep", 1), int) and layout.get("ep", 1) >= 1):
            raise ConfigError(f"layout.ep = {layout['ep']!r}")
        if not isinstance(config["run"].get("hopb", True), bool):
            raise ConfigError(f"run.hopb = {config['run']['hopb']!r} is not true or false")
        if not isinstance(config["run"].get("context", 0), int) or not isinstance(config.get("strategy", ""), str):
            raise ConfigError("run.context must be an integer and strategy a name")
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"{path}: attribute 'config' is unusable ({' '.join(str(exc).split())})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_memory(memory: dict[str, Any], path: str) -> None:
    """The `memory` attribute: numbers where the tools compute with them."""
    per_rank = memory.get("per_rank", [])
    rows_ok = isinstance(per_rank, list) and all(
        isinstance(row, dict) and all(_is_number(row.get(key, 0)) for key in ("rank", "weights_bytes", "kv_bytes"))
        for row in per_rank)
    totals = ("max_weights_bytes", "max_kv_bytes", "max_total_bytes", "kv_read_s", "hbm_bytes")
    if not rows_ok or not all(_is_number(memory.get(key, 0)) for key in totals) or \
            not isinstance(memory.get("fits", True), bool):
        raise TraceError(f"{path}: attribute 'memory' is malformed (numbers expected in per_rank and the totals)")


def read_meta(file, path: str | Path) -> TraceMeta:
    """Parse the root attributes of an open trace, or raise TraceError with one line."""
    path = str(path)
    config = _attr_json(file, path, "config")
    _check_config(config, path)
    kv = file.get("kv_tokens")
    if not isinstance(kv, h5py.Dataset) or kv.ndim != 2 or kv.dtype.kind not in "iu":
        raise TraceError(f"{path}: dataset /kv_tokens is missing or not [steps, ranks] integers")
    kv_steps, kv_ranks = kv.shape
    world = attribute(file, "world_size", kv_ranks)
    if not isinstance(world, (int, np.integer)) or isinstance(world, (bool, np.bool_)) or world != kv_ranks \
            or world < 1:
        raise TraceError(f"{path}: attribute world_size = {world!r} does not match the {kv_ranks} columns of "
                         "/kv_tokens")
    memory = _attr_json(file, path, "memory", False)
    if memory is not None:
        _check_memory(memory, path)
    topology = _attr_json(file, path, "topology", False) or {}
    if not isinstance(topology.get("name", ""), str):
        raise TraceError(f"{path}: attribute 'topology' has a name that is not text")
    return TraceMeta(path=path, config=config, topology=topology,
                     world_size=int(world), events=int(file["events"].shape[0]), kv_steps=int(kv_steps),
                     complete=marked_complete(file), memory=memory,
                     replayed_from=_attr_json(file, path, "replayed_from", False))


# Largest plausible values: times of a run (31 years), bytes and FLOPs of one op, ranks in a group.
_NUMBER_FIELDS = {"start_s": 1e9, "end_s": 1e9, "host_start_s": 1e9, "host_end_s": 1e9, "bytes": 1e24, "flops": 1e27,
                  "group_size": 2**24, "requests": 2**31, "tokens": 1e15, "experts_hit": 2**24, "pairs": 1e15}
_SHAPE_FIELDS = ("bytes", "flops", "group_size", "requests", "tokens", "experts_hit", "pairs")  # what ops are timed from


def check_event_rows(rows: np.ndarray, meta: TraceMeta) -> None:
    """Refuse events whose rank, step or layer lies outside the trace (a corrupt file) before any
    figure is computed from them (TraceError, one line)."""
    layers = int(meta.run["layers"])  # layer `layers` holds the step's tail (LM head, sampling)
    bad = ((rows["rank"] < 0) | (rows["rank"] >= meta.world_size) | (rows["step"] < 0)
           | (rows["step"] >= meta.kv_steps) | (rows["layer"] < 0) | (rows["layer"] > layers))
    if bad.any():
        row = rows[int(np.argmax(bad))]
        raise TraceError(f"{meta.path}: an event has rank {row['rank']}, step {row['step']}, layer {row['layer']}, "
                         f"outside the trace's {meta.world_size} ranks, {meta.kv_steps} steps and {layers} layers (+ tail): "
                         "a corrupt file (`helix-mpi validate` lists its problems)")
    for field, limit in _NUMBER_FIELDS.items():
        bad = ~np.isfinite(rows[field]) | (rows[field] < 0) | (rows[field] > limit)
        if bad.any():
            raise TraceError(f"{meta.path}: an event has {field} = {rows[field][int(np.argmax(bad))]}, outside "
                             f"0..{limit:g}: a corrupt file (`helix-mpi validate` lists its problems)")


def iter_event_chunks(file, path: str | Path, chunk: int = SUMMARY_CHUNK,
                      meta: TraceMeta | None = None) -> Iterator[np.ndarray]:
    """Event chunks of an open trace; a read error (truncated data) becomes a TraceError, and so
    do rows outside the trace's ranks, steps and layers when `meta` is given."""
    iterator = read_events(file, chunk)
    while True:
        try:
            rows = next(iterator)
        except StopIteration:
            return
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise TraceError(f"{path}: events are unreadable (truncated or corrupt file: "
                             f"{str(exc).splitlines()[0]})") from None
        if meta is not None:
            check_event_rows(rows, meta)
        yield rows


def count_events(path: str | Path) -> int:
    """Events in a trace file, 0 if it cannot be read (callers that read it then say why)."""
    try:
        with open_trace(path, allow_incomplete=True) as file:
            return int(file["events"].shape[0])
    except (TraceError, OSError, RuntimeError, KeyError):
        return 0


def read_kv_tokens(file, path: str | Path) -> np.ndarray:
    try:
        return file["kv_tokens"][...]
    except (OSError, RuntimeError, KeyError) as exc:
        raise TraceError(f"{path}: /kv_tokens is unreadable ({str(exc).splitlines()[0]})") from None


def summarize_trace(path: str | Path, by: str = "op", chunk: int = SUMMARY_CHUNK,
                    progress: Any = None, allow_interrupted: bool = False) -> dict[str, Any]:
    """summarize() of a whole trace file, streamed in chunks, plus its configuration, the KV
    cache per rank and the memory figures when the trace has them. With `allow_interrupted`, a
    trace whose run was interrupted (`complete = False`, as a killed run leaves it) is read too
    and the summary says `"complete": false`; a file without the attribute is still refused."""
    stats = EventStats(by)
    with open_trace(path, allow_incomplete=allow_interrupted) as file:
        if "complete" not in file.attrs:
            raise TraceError(f"{path}: root attribute 'complete' is missing: an incomplete or foreign file, not a helix_mpi trace")
        complete = marked_complete(file)
        meta = read_meta(file, path)
        for rows in iter_event_chunks(file, path, chunk, meta):
            stats.add(rows)
            if progress is not None:
                progress(len(rows))
        kv_tokens = read_kv_tokens(file, path)
        served = served_figures(file, path, meta) if "serving" in file else None
    if stats.events == 0:
        raise TraceError(f"{path}: trace has no events")
    summary = stats.summary(meta.shape)
    if served is not None:  # what `run --workload` printed, from the same records and the same code
        for key in ("ttl_s", "tokens_per_s_per_user", "batch"):  # a fixed batch's figures: not a served trace's
            summary.pop(key, None)
        summary.update(served)
        summary["serving"] = served
    summary["complete"] = complete
    summary.update(describe_run(meta))
    summary.update(kv_figures(meta, kv_tokens))
    if summary.get("by", {}).get("key") == "rank" and "kv" in summary:
        for row in summary["by"]["rows"]:
            row["kv_tokens"] = summary["kv"]["tokens_per_rank"][row["rank"]]
    if meta.memory is not None:
        summary["memory"] = memory_figures(meta.memory)
    if meta.replayed_from is not None:
        summary["replayed_from"] = meta.replayed_from
    return summary


def served_figures(file, path: str | Path, meta: TraceMeta) -> dict[str, Any]:
    """The serving figures of a served trace (`/serving/requests`, `/serving/steps`), computed by
    serving.serving_figures as `run --workload` computed them; scalars only (JSON)."""
    from .serving import LONG_CONTEXT_TOKENS, serving_figures

    try:
        requests = {name: file["serving/requests"][name][...] for name in file["serving/requests"]}
        steps = {name: file["serving/steps"][name][...] for name in file["serving/steps"]}
    except (OSError, KeyError) as exc:
        raise TraceError(f"{path}: /serving is unreadable ({str(exc).splitlines()[0]})") from None
    stored = _attr_json(file, str(path), "serving", False) or {}
    old = "mean_context" not in steps  # traces written before it was recorded
    if old:
        steps["mean_context"] = np.zeros(len(steps["start_s"]))
    capacity = {k: stored[k] for k in ("hbm_weight_bytes_per_gpu", "kv_capacity_tokens_per_gpu", "kv_tokens_at_end")
                if k in stored}
    figures = serving_figures(requests, steps, meta.world_size, LONG_CONTEXT_TOKENS, capacity,
                              stored.get("ttl_slo_s"), stored.get("slo_held_steps", 0))
    if old:
        for key in ("kv_imbalance", "kv_imbalance_max", "long_context_steps"):
            figures[key] = stored.get(key, figures[key])
    scalars = {k: v for k, v in figures.items() if not isinstance(v, np.ndarray)}
    workload = _attr_json(file, str(path), "workload", False) or {}
    scalars["workload"] = workload.get("source", "?")
    return scalars


def describe_run(meta: TraceMeta) -> dict[str, Any]:
    """The configuration facts a reader wants next to the figures."""
    return {"trace": meta.path, "strategy": meta.strategy, "model": meta.model.get("name", "?"),
            "layout": {k: v for k, v in meta.layout.items() if k != "strategy"},
            "topology": meta.topology.get("name", "?"), "precision": meta.run["precision"],
            "kv_precision": meta.run.get("kv_precision", meta.run["precision"]), "comm": meta.run.get("comm"),
            "hopb": meta.run.get("hopb"), "a2a_chunk": meta.run.get("a2a_chunk"), "context": meta.run.get("context")}


# --- KV cache and memory ---------------------------------------------------------------------
def kv_bytes_per_token_per_layer(model: dict[str, Any], layout: dict[str, Any], precision: str) -> float:
    """Cache bytes one rank stores per token per layer at the modeled precision (the plan's count:
    K and V of its KV heads, duplicated ones included, or MLA's latent)."""
    from .config import PRECISION_BYTES, Layout, ModelConfig, Strategy
    from .plan import kv_elements_per_token
    from .sharding import rank_shard

    config = ModelConfig.from_dict(model)
    shape = Layout(**{k: layout[k] for k in ("kvp", "tpa", "tpf")}, ep=layout.get("ep", 1),
                   strategy=Strategy(layout.get("strategy", "helix")))
    return kv_elements_per_token(config, rank_shard(config, shape, 0)) * PRECISION_BYTES[precision]


def kv_figures(meta: TraceMeta, kv_tokens: np.ndarray) -> dict[str, Any]:
    """KV tokens and bytes per rank at the last step (all layers of the full model)."""
    if kv_tokens.size == 0:
        return {}
    last = kv_tokens[-1].astype(float)
    try:
        per_token = kv_bytes_per_token_per_layer(meta.model, meta.layout,
                                                 meta.run.get("kv_precision", meta.run["precision"]))
    except (KeyError, TypeError):
        per_token = math.nan
    per_rank = last * per_token * meta.shape.model_layers
    mean = float(last.mean())
    imbalance = float(last.max() / mean) if mean > 0 else 1.0
    return {
        "kv": {"tokens_per_rank": kv_tokens[-1].tolist(), "bytes_per_rank": per_rank.tolist(),
               "bytes_per_token_per_layer": per_token, "max_bytes": float(per_rank.max()),
               "mean_bytes": float(per_rank.mean()), "imbalance_max_over_mean": imbalance},
        "kv_tokens_per_rank": kv_tokens[-1].tolist(),  # kept for scripts of earlier versions
        "kv_imbalance_max_over_mean": imbalance,
    }


def memory_figures(memory: dict[str, Any]) -> dict[str, Any]:
    """The trace's `memory` attribute plus the largest per-rank totals."""
    per_rank = memory.get("per_rank") or []
    totals = [r.get("weights_bytes", 0.0) + r.get("kv_bytes", 0.0) for r in per_rank]
    out = dict(memory)
    if per_rank:
        out.update(max_weights_bytes=max(r.get("weights_bytes", 0.0) for r in per_rank),
                   max_kv_bytes=max(r.get("kv_bytes", 0.0) for r in per_rank), max_total_bytes=max(totals))
    return out


# --- compare ---------------------------------------------------------------------------------
COMPARED = (  # key, label, unit scale, unit
    ("ttl_s", "token-to-token latency", 1e3, "ms"),
    ("tokens_per_s_per_user", "tokens/s/user", 1.0, ""),
    ("tokens_per_s_per_gpu", "tokens/s/GPU", 1.0, ""),
    ("step_time_s", "step time (emulated layers)", US, "us"),
    ("compute_busy_s", "compute per rank per step", US, "us"),
    ("comm_busy_s", "comm per rank per step", US, "us"),
    ("exposed_comm_s", "exposed comm", US, "us"),
    ("hidden_comm_s", "hidden comm", US, "us"),
    ("kv_max_bytes", "KV cache, largest rank", 1e-6, "MB"),
    ("modeled_seconds", "modeled time", 1e3, "ms"),
    ("host_seconds", "host wall time", 1.0, "s"),
)
COMPARED_CONFIG = ("strategy", "model", "world_size", "layout", "topology", "precision", "hopb", "batch",
                   "context", "steps", "layers_emulated")


def compare_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Side by side: metrics of A and B, ratios B/A, per-op seconds per step, config differences."""
    for s in (a, b):
        s["kv_max_bytes"] = s.get("kv", {}).get("max_bytes", math.nan)
    metrics = {key: {"a": a.get(key), "b": b.get(key), "ratio": _ratio(a.get(key), b.get(key))}
               for key, *_ in COMPARED}
    ops_a = {r.get("name", r["op"]): r["seconds_per_step"] for r in a["ops"]}
    ops_b = {r.get("name", r["op"]): r["seconds_per_step"] for r in b["ops"]}
    ops = {op: {"a": ops_a.get(op), "b": ops_b.get(op), "ratio": _ratio(ops_a.get(op), ops_b.get(op))}
           for op in list(ops_a) + [o for o in ops_b if o not in ops_a]}
    config = {key: {"a": a.get(key), "b": b.get(key), "same": a.get(key) == b.get(key)} for key in COMPARED_CONFIG}
    return {"a": a["trace"], "b": b["trace"], "config": config, "metrics": metrics, "ops_seconds_per_step": ops,
            "ratios": {key: value["ratio"] for key, value in metrics.items()}}


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0 or math.isnan(a):
        return None
    return b / a


# --- text --------------------------------------------------------------------------------------
def human_bytes(value: float) -> str:
    """Decimal units (as NVIDIA spec sheets): 1.5 GB = 1.5e9 bytes."""
    if value is None or math.isnan(value):
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def format_summary(summary: dict[str, Any], served: bool = False) -> str:
    """A readable table for the terminal (`served`: the per-op part only; the serving figures,
    serving.format_serving, replace the fixed-batch TTL of a served trace)."""
    if served:
        return "\n".join([_busy_text(summary, "per rank per decode step (mean)"), "", *_format_ops(summary)])
    head = [
        f"ranks {summary['world_size']}  batch {summary['batch']}  steps {summary['steps']}  "
        f"layers {summary['layers_emulated']} of {summary['model_layers']}",
        f"{step_time_label(summary['layers_emulated'], summary['model_layers']):35s} "
        f"{summary['step_time_s'] * US:10.2f} us",
        f"token-to-token latency (full model) {summary['ttl_s'] * 1e3:10.3f} ms",
        f"tokens/s/user {summary['tokens_per_s_per_user']:10.2f}    tokens/s/GPU {summary['tokens_per_s_per_gpu']:10.2f}",
        _busy_text(summary),
        "",
    ]
    return "\n".join(head + _format_ops(summary))


def _format_ops(summary: dict[str, Any]) -> list[str]:
    """The per-op table, the share of each timing source, the collectives and the host time."""
    lines = [
        f"{'op':22s} {'stream':7s} {'us/step':>10s} {'mean us':>9s} {'bytes':>12s} {'algbw GB/s':>11s} "
        f"{'busbw GB/s':>11s}  timed by",
    ]
    for row in summary["ops"]:
        bw = (f"{row['algbw_gbps']:11.3f} {row['busbw_gbps']:11.3f}" if "algbw_gbps" in row else f"{'':11s} {'':11s}")
        lines.append(f"{row.get('name', row['op']):22s} {row['stream']:7s} {row['seconds_per_step'] * US:10.2f} "
                     f"{row['mean_s'] * US:9.2f} {row['bytes']:12.0f} {bw}  {_sources_text(row.get('time_sources'))}")
    if summary.get("time_sources"):
        lines += ["", f"modeled op time timed by: {_sources_text(summary['time_sources'], full=True)} "
                      "(table: measured tables; fitted: physics fitted to them; spec: roofline of spec sheets)"]
    if summary.get("collectives"):
        lines += ["", _format_collectives(summary["collectives"])]
    if summary.get("host_seconds"):
        modeled = summary["modeled_seconds"]
        slowdown = f" (x{summary['host_seconds'] / modeled:,.0f})" if modeled > 0 else ""
        lines += ["", f"host wall time {summary['host_seconds']:.3f} s for {modeled * 1e3:.3f} ms "
                      f"of modeled time{slowdown}"]
    return lines


def step_time_label(layers: int, model_layers: int) -> str:
    """'modeled step time (all 61 layers)', or '(2 of 4 layers)' when a run emulates fewer."""
    which = f"all {model_layers} layers" if layers == model_layers else f"{layers} of {model_layers} layers"
    return f"modeled step time ({which})"


def _busy_text(summary: dict[str, Any], label: str = "per rank per step") -> str:
    text = (f"{label}: compute {summary['compute_busy_s'] * US:.2f} us, comm {summary['comm_busy_s'] * US:.2f}"
            f" us (exposed {summary['exposed_comm_s'] * US:.2f} us, hidden {summary['hidden_comm_s'] * US:.2f} us)")
    if summary.get("waiting_s", 0.0) > 1e-3 * summary["step_time_s"]:
        text += f", waiting for busier ranks {summary['waiting_s'] * US:.2f} us"
    return text


def exchange_label(strategy: str, kvp: int, hopb: bool | None, a2a_chunk: int | None) -> str:
    """How the KVP all-to-all is issued, only where there is one (Helix with KVP > 1): HOP-B means
    nothing for TP or DP+EP (no all-to-all of partials), nor for KVP-only (nothing overlapped)."""
    if strategy != "helix" or kvp <= 1:
        return ""
    if not a2a_chunk:
        return "one all-to-all per layer for the batch"
    per = "one all-to-all per request" if a2a_chunk == 1 else f"one all-to-all per {a2a_chunk} requests"
    return f"{per}, HOP-B {'on' if hopb else 'off'}" if hopb is not None else per


def _sources_text(shares: dict[str, float] | None, full: bool = False) -> str:
    """'table 61 %, fitted 39 %' (dominant first), or the one source when an op has one."""
    if not shares:
        return ""
    ordered = sorted(shares.items(), key=lambda item: -item[1])
    if len(ordered) == 1 and not full:
        return ordered[0][0]
    return ", ".join(f"{source} {share * 100:.{1 if full else 0}f} %" for source, share in ordered)


def _format_collectives(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'collective':12s} {'group':9s} {'ranks':>5s} {'count':>7s} {'size B':>10s} {'mean us':>9s} "
             f"{'B/rank/step':>11s} {'algbw GB/s':>11s} {'busbw GB/s':>11s}"]
    for r in rows:
        lines.append(f"{r['collective']:12s} {r['group']:9s} {r['group_size']:5d} {r['count']:7d} "
                     f"{r['mean_bytes']:10.0f} {r['mean_s'] * US:9.2f} {r['bytes_per_step']:11.0f} "
                     f"{r['algbw_gbps']:11.3f} {r['busbw_gbps']:11.3f}")
    return "\n".join(lines)


def format_trace_summary(summary: dict[str, Any]) -> str:
    """format_summary plus the run description, KV cache, memory and the --by table."""
    layout = " ".join(f"{k.upper()}={v}" for k, v in summary["layout"].items())
    exchange = exchange_label(summary["strategy"], int(summary["layout"].get("kvp", 1)), summary.get("hopb"),
                              summary.get("a2a_chunk"))
    where = (f"context {summary.get('context')}" if not summary.get("serving")
             else f"served trace {summary['serving'].get('workload', '?')}")
    lines = [f"{summary['trace']}: {summary['strategy']} on {summary['world_size']} ranks ({layout}), "
             f"model {summary['model']}, {summary['topology']}, {summary['precision']}"
             + (f", {exchange}" if exchange else "") + f", {where}, {summary['events']:,} events"]
    if summary.get("serving"):
        from .serving import format_serving

        lines += [format_serving(summary["serving"]), format_summary(summary, served=True)]
    else:
        lines.append(format_summary(summary))
    if summary.get("kv"):
        lines += ["", _format_kv(summary["kv"], summary.get("kv_precision", summary["precision"]), summary["model_layers"])]
    if summary.get("memory"):
        lines.append(_format_memory(summary["memory"]))
    if summary.get("by"):
        lines += ["", format_by_table(summary["by"])]
    if summary.get("replayed_from"):
        lines.append(f"replayed from {json.dumps(summary['replayed_from'])}")
    return "\n".join(lines)


def _format_kv(kv: dict[str, Any], precision: str, layers: int) -> str:
    tokens = np.asarray(kv["tokens_per_rank"])
    return (f"KV cache per rank at the last step ({human_bytes(kv['bytes_per_token_per_layer'])} per token per layer "
            f"at {precision}, {layers} layers): tokens min {tokens.min()} max {tokens.max()}, bytes max "
            f"{human_bytes(kv['max_bytes'])} mean {human_bytes(kv['mean_bytes'])}, "
            f"imbalance max/mean {kv['imbalance_max_over_mean']:.3f}")


def _format_memory(memory: dict[str, Any]) -> str:
    fits = {True: "fits", False: "DOES NOT FIT"}.get(memory.get("fits"), "?")
    if "max_total_bytes" not in memory:
        return f"memory: HBM {human_bytes(memory.get('hbm_bytes', math.nan))} per GPU: {fits}"
    return (f"memory per rank (largest): weights {human_bytes(memory.get('max_weights_bytes', math.nan))} + KV "
            f"{human_bytes(memory.get('max_kv_bytes', math.nan))} = {human_bytes(memory['max_total_bytes'])} of "
            f"{human_bytes(memory.get('hbm_bytes', math.nan))} HBM: {fits}")


def format_by_table(by: dict[str, Any]) -> str:
    key = by["key"]
    extra = {"step": ("step_time_s", "step us"), "layer": ("layer_time_s", "layer us"),
             "rank": ("kv_tokens", "KV tokens")}[key]
    lines = [f"{key:>6s} {'events':>9s} {'compute us':>11s} {'comm us':>10s} {'comm B':>10s} {extra[1]:>10s}"
             f"   (per rank per step)"]
    for row in by["rows"]:
        value = row.get(extra[0], math.nan)
        shown = f"{value * US:10.2f}" if extra[0].endswith("_s") else f"{value:10d}"
        lines.append(f"{row[key]:6d} {row['events']:9d} {row['compute_s'] * US:11.2f} {row['comm_s'] * US:10.2f} "
                     f"{row['comm_bytes']:10.0f} {shown}")
    return "\n".join(lines)


def format_compare(result: dict[str, Any]) -> str:
    lines = [f"A: {result['a']}", f"B: {result['b']}", "",
             f"{'':28s} {'A':>22s} {'B':>22s}"]
    for key, value in result["config"].items():
        mark = "" if value["same"] else "   <- differs"
        lines.append(f"{key:28s} {_cell(value['a']):>22s} {_cell(value['b']):>22s}{mark}")
    lines += ["", f"{'metric':28s} {'A':>14s} {'B':>14s} {'B/A':>8s}"]
    for key, label, scale, unit in COMPARED:
        m = result["metrics"][key]
        lines.append(f"{(label + (f' ({unit})' if unit else '')):28s} {_number(m['a'], scale):>14s} "
                     f"{_number(m['b'], scale):>14s} {_ratio_text(m['ratio']):>8s}")
    lines += ["", f"{'op (us per rank per step)':28s} {'A':>14s} {'B':>14s} {'B/A':>8s}"]
    for op, m in result["ops_seconds_per_step"].items():
        lines.append(f"{op:28s} {_number(m['a'], US):>14s} {_number(m['b'], US):>14s} {_ratio_text(m['ratio']):>8s}")
    ttl = result["metrics"]["ttl_s"]["ratio"]
    if ttl:
        lines += ["", f"B's token-to-token latency is {ttl:.3f}x A's "
                      f"({'B faster' if ttl < 1 else 'A faster' if ttl > 1 else 'equal'})"]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "-" if value is None else str(value)


def _number(value: Any, scale: float) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return f"{value * scale:,.3f}" if abs(value * scale) < 1e6 else f"{value * scale:.4g}"


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"


# --- selection by step / layer / rank ranges ---------------------------------------------------
def parse_ranges(text: str | None) -> np.ndarray | None:
    """'0-1' -> [0, 1]; '0,3' -> [0, 3]; '0-2,7' -> [0, 1, 2, 7]; None or 'all' -> None (everything)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    values: set[int] = set()
    for part in text.split(","):
        bounds = part.strip().split("-")
        try:
            low, high = (int(bounds[0]), int(bounds[-1])) if len(bounds) in (1, 2) else (None, None)
        except ValueError:
            low = high = None
        if low is None or low < 0 or high < low:
            raise ValueError(f"cannot parse range {part.strip()!r} in {text!r}: use e.g. 0-3 or 0,2,5")
        values.update(range(low, high + 1))
    return np.array(sorted(values), dtype=np.int64)


@dataclass(frozen=True)
class Selection:
    """Which events to keep (None: all); each field is sorted indices."""

    steps: np.ndarray | None = None
    layers: np.ndarray | None = None
    ranks: np.ndarray | None = None

    def mask(self, rows: np.ndarray) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        for field, wanted in (("step", self.steps), ("layer", self.layers), ("rank", self.ranks)):
            if wanted is not None:
                keep &= np.isin(rows[field], wanted)
        return keep

    def describe(self) -> str:
        parts = [f"{name} {_compact(values)}" for name, values in
                 (("steps", self.steps), ("layers", self.layers), ("ranks", self.ranks)) if values is not None]
        return ", ".join(parts) or "all events"


def _compact(values: np.ndarray) -> str:
    if len(values) > 1 and np.all(np.diff(values) == 1):
        return f"{values[0]}-{values[-1]}"
    return ",".join(str(v) for v in values)


def iter_selected(file, path: str | Path, selection: Selection, chunk: int = SUMMARY_CHUNK) -> Iterator[np.ndarray]:
    """Chunks of the selected events (bounded memory)."""
    for rows in iter_event_chunks(file, path, chunk, read_meta(file, path)):
        kept = rows[selection.mask(rows)]
        if len(kept):
            yield kept


def check_selection(selection: Selection, meta: TraceMeta) -> None:
    """Refuse ranges outside the trace with one line saying what the trace has."""
    limits = (("--steps", selection.steps, meta.kv_steps), ("--layers", selection.layers, meta.shape.layers),
              ("--ranks", selection.ranks, meta.world_size))
    for flag, values, count in limits:
        if values is not None and values.max() >= count:
            raise ValueError(f"{flag} {_compact(values)} is outside the trace, which has 0-{count - 1}")


# --- validate ------------------------------------------------------------------------------------
def _ids(rows: np.ndarray, mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(rank, step, layer, index) of the masked rows, to name examples of a problem."""
    picked = rows[mask]
    return list(zip(*(picked[f].tolist() for f in ("rank", "step", "layer", "index"))))


class _EventChecks:
    """Running checks of event chunks: times, per-stream overlaps, per-step event counts, deps."""

    EXAMPLES = 3

    def __init__(self, world_size: int, steps: int):
        self.world_size, self.steps = world_size, steps  # steps: rows of /kv_tokens
        self.streams = Vocabulary(("stream",))
        self.counts = np.zeros((0, max(world_size, 1)), dtype=np.int64)  # [steps, ranks]
        self.last_end = np.full(0, -np.inf)  # per (rank, stream) track: latest end so far
        self.found: dict[str, list] = {}  # problem kind -> [count, examples]
        self.events = 0

    def add(self, rows: np.ndarray) -> None:
        self.events += len(rows)
        self._flag("end before start", _ids(rows, ~(rows["end_s"] >= rows["start_s"])))
        self._flag("host end before host start", _ids(rows, ~(rows["host_end_s"] >= rows["host_start_s"])))
        self._flag("negative or non-finite modeled start",
                   _ids(rows, ~(np.isfinite(rows["start_s"]) & (rows["start_s"] >= 0))))
        for field in _SHAPE_FIELDS:
            limit = _NUMBER_FIELDS[field]
            self._flag(f"{field} negative, non-finite or above {limit:g}",
                       _ids(rows, ~(np.isfinite(rows[field]) & (rows[field] >= 0) & (rows[field] <= limit))))
        bad_rank = (rows["rank"] < 0) | (rows["rank"] >= self.world_size) | (rows["step"] < 0)
        self._flag("rank outside 0..world_size-1 or negative step", _ids(rows, bad_rank))
        beyond = ~bad_rank & (rows["step"] >= self.steps)
        self._flag(f"step beyond the {self.steps} rows of /kv_tokens", _ids(rows, beyond))
        bad_rank |= beyond
        bad_dep = np.zeros(len(rows), dtype=bool)
        for dep in ("dep0", "dep1"):
            bad_dep |= (rows[dep] < -1) | (rows[dep] >= rows["index"])
        self._flag("dependency on an op that is not earlier in its layer plan", _ids(rows, bad_dep))
        good = rows[~bad_rank]
        self._count(good)
        self._overlaps(good)

    def _flag(self, kind: str, examples: list) -> None:
        if examples:
            entry = self.found.setdefault(kind, [0, []])
            entry[0] += len(examples)
            entry[1].extend(examples[:self.EXAMPLES - len(entry[1])])

    def _count(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        steps = rows["step"].astype(np.int64)
        self.counts = _grow(self.counts, int(steps.max()) + 1)
        cells = np.bincount(steps * self.world_size + rows["rank"], minlength=self.counts.size)
        self.counts += cells[:self.counts.size].reshape(self.counts.shape)

    def _overlaps(self, rows: np.ndarray) -> None:
        """Per rank and stream, sorted by start: every op must start after the previous one ends."""
        if len(rows) == 0:
            return
        streams = self.streams.encode(rows)
        track = rows["rank"].astype(np.int64) * 64 + streams
        order = np.lexsort((rows["start_s"], track))
        track, start, end = track[order], rows["start_s"][order], rows["end_s"][order]
        self.last_end = _grow(self.last_end, int(track.max()) + 1, -np.inf)
        first = np.concatenate([[True], track[1:] != track[:-1]])
        previous_end = np.where(first, self.last_end[track], np.concatenate([[-np.inf], end[:-1]]))
        self._flag("overlapping ops on one rank's stream", _ids(rows[order], start < previous_end))
        np.maximum.at(self.last_end, track, end)

    def problems(self, kv_steps: int, kv_ranks: int) -> list[str]:
        out = [f"{count} event(s) with {kind}, e.g. (rank, step, layer, index) = {', '.join(map(str, examples))}"
               for kind, (count, examples) in self.found.items()]
        if self.events == 0:
            return out + ["/events is empty"]
        return out + self._step_problems() + self._kv_problems(kv_steps, kv_ranks)

    def _step_problems(self) -> list[str]:
        present = np.flatnonzero(self.counts.sum(axis=1))
        out = []
        missing = np.setdiff1d(np.arange(len(self.counts)), present)
        if len(missing):
            out.append(f"steps are not contiguous: no events for step(s) {_compact(missing[:10])} "
                       f"of 0-{len(self.counts) - 1}")
        uneven = [s for s in present if len(set(self.counts[s])) > 1]
        for step in uneven[:self.EXAMPLES]:
            counts = self.counts[step]
            expected = int(np.bincount(counts).argmax())
            odd = np.flatnonzero(counts != expected)
            out.append(f"step {step}: ranks have different numbers of events (most have {expected}; "
                       + ", ".join(f"rank {r} has {counts[r]}" for r in odd[:4]) + ")")
        if len(uneven) > self.EXAMPLES:
            out.append(f"... and {len(uneven) - self.EXAMPLES} more step(s) with uneven event counts")
        return out

    def _kv_problems(self, kv_steps: int, kv_ranks: int) -> list[str]:
        out = []
        if kv_steps != len(self.counts):
            out.append(f"/kv_tokens has {kv_steps} row(s) but the events have {len(self.counts)} step(s)")
        if kv_ranks != self.world_size:
            out.append(f"/kv_tokens has {kv_ranks} column(s) but world_size is {self.world_size}")
        return out


def validate_trace(path: str | Path, chunk: int = SUMMARY_CHUNK) -> tuple[dict[str, Any], list[str]]:
    """(facts, problems) of a trace; problems is empty for a valid trace. Files that are not
    traces at all (not HDF5, truncated, unknown schema) raise TraceError instead."""
    problems: list[str] = []
    with open_trace(path, allow_incomplete=True) as file:
        if not marked_complete(file):
            problems.append("trace is incomplete (attribute 'complete' is missing or false): its run did not finish")
        try:
            meta = read_meta(file, path)
        except TraceError as exc:
            return {"events": int(file["events"].shape[0])}, problems + [str(exc).split(": ", 1)[-1]]
        facts = {"events": meta.events, "steps": meta.kv_steps, "ranks": meta.world_size,
                 "schema_version": SCHEMA_VERSION, "complete": meta.complete}
        checks = _EventChecks(meta.world_size, meta.kv_steps)
        try:
            for rows in iter_event_chunks(file, path, chunk):
                checks.add(rows)
        except TraceError as exc:  # unreadable events: nothing more can be checked
            return facts, problems + [str(exc).split(": ", 1)[-1]]
        kv_shape = file["kv_tokens"].shape
    return facts, problems + checks.problems(kv_shape[0], kv_shape[1])
