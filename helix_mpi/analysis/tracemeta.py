"""A trace file's metadata and events, read and checked: the root attributes as `TraceMeta`
(refused with one line when they are unusable) and the event chunks, with rows outside the
trace's ranks, steps and layers refused before any figure is computed from them.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..trace import TraceError, attribute, json_attribute, marked_complete, open_trace, read_events
from .events import RunShape, shape_of

if TYPE_CHECKING:
    from ..config import Layout, RunConfig

SUMMARY_CHUNK = 1 << 18  # events per read (144 B each: ~38 MB)


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
        from ..config import ModelConfig

        return shape_of(self.world_size, int(self.run["batch"]), int(self.run["layers"]),
                        ModelConfig.from_dict(self.model))


# --- configuration objects from their to_dict() (as a trace's `config` attribute records them) ---
def layout_from_dict(data: dict[str, Any]) -> Layout:
    """Layout from Layout.to_dict(); enum fields (strategy) are rebuilt from their text, keys that
    are not fields are ignored. KeyError names the first missing field without a default."""
    from ..config import Layout

    kwargs = {}
    for field in dataclasses.fields(Layout):
        if field.name in data:
            default = field.default
            value = data[field.name]
            kwargs[field.name] = type(default)(value) if isinstance(default, enum.Enum) else value
        elif field.default is dataclasses.MISSING:
            raise KeyError(field.name)
    return Layout(**kwargs)


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    """RunConfig from RunConfig.to_dict() (a key that is not a field raises TypeError)."""
    from ..config import RunConfig

    return RunConfig(**data)


_REQUIRED_CONFIG = {"run": ("batch", "layers", "precision"), "model": ("num_layers",), "layout": ()}
_POSITIVE_INTEGERS = {"run": ("batch", "layers"), "model": ("num_layers",), "layout": ("kvp", "tpa", "tpf")}


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
    from ..config import ConfigError, ModelConfig, RunConfig

    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        ModelConfig.from_dict(config["model"])
        run_config_from_dict({k: v for k, v in config["run"].items() if k in run_fields})
        layout = config["layout"]
        layout_from_dict({"strategy": config.get("strategy", "helix"), **layout})
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
    import h5py

    path = str(path)
    config = json_attribute(file, path, "config")
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
    memory = json_attribute(file, path, "memory", False)
    if memory is not None:
        _check_memory(memory, path)
    topology = json_attribute(file, path, "topology", False) or {}
    if not isinstance(topology.get("name", ""), str):
        raise TraceError(f"{path}: attribute 'topology' has a name that is not text")
    return TraceMeta(path=path, config=config, topology=topology,
                     world_size=int(world), events=int(file["events"].shape[0]), kv_steps=int(kv_steps),
                     complete=marked_complete(file), memory=memory,
                     replayed_from=json_attribute(file, path, "replayed_from", False))


# Largest plausible values: times of a run (31 years), bytes and FLOPs of one op, ranks in a group.
EVENT_NUMBER_LIMITS = {"start_s": 1e9, "end_s": 1e9, "host_start_s": 1e9, "host_end_s": 1e9, "bytes": 1e24,
                       "flops": 1e27, "group_size": 2**24, "requests": 2**31, "tokens": 1e15, "experts_hit": 2**24,
                       "pairs": 1e15}
SHAPE_FIELDS = ("bytes", "flops", "group_size", "requests", "tokens", "experts_hit", "pairs")  # what ops are timed from


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
    for field, limit in EVENT_NUMBER_LIMITS.items():
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
