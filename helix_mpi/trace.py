"""HDF5 traces, schema version 2 (documented in docs/trace-format.md).

Rank 0 writes one file per run through a temporary name (`NAME.partial`), appends events as
steps complete (bounded memory), and renames it to NAME only after setting `complete = True`.
Readers refuse files that are not complete traces of a known schema with one clear line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 2  # 2: op shapes (requests, tokens, experts hit) and what timed each op
PARTIAL_SUFFIX = ".partial"

# One row per op per rank per layer per step.
EVENT_DTYPE = np.dtype([
    ("rank", "<i4"),
    ("step", "<i4"),
    ("layer", "<i4"),
    ("request", "<i4"),  # request index for per-request ops, -1 for whole-batch ops
    ("index", "<i4"),  # position of the op in its layer plan
    ("dep0", "<i4"),  # plan index of a dependency beyond stream order, -1 if none
    ("dep1", "<i4"),  # a second one, -1 if none
    ("op", "S24"),  # plan.OpName value
    ("stream", "S8"),  # compute | comm
    ("collective", "S16"),  # costmodel.Collective value, "" for compute ops
    ("group", "S16"),  # mesh axes of a collective, e.g. "kvp", "kvp*tpa"; "" for compute
    ("group_size", "<i4"),
    ("bytes", "<f8"),  # compute: HBM bytes; collective: nccl-tests size (per-rank buffer)
    ("flops", "<f8"),
    ("requests", "<i4"),  # requests the op processes (the batch, or a chunk's under KVP)
    ("tokens", "<f8"),  # attention: mean local KV tokens of those requests; else 0
    ("experts_hit", "<f8"),  # MoE: routed experts whose weights were read (real routing); else 0
    ("pairs", "<f8"),  # MoE: (token, expert) rows computed; else 0
    ("source", "S8"),  # what timed the op: table (measured), fitted (physics fitted to tables), spec
    ("start_s", "<f8"),  # modeled start, seconds from the start of the run
    ("end_s", "<f8"),
    ("host_start_s", "<f8"),  # wall time on this machine, seconds from the start of the run
    ("host_end_s", "<f8"),
])


class TraceError(ValueError):
    """A file that is not a readable helix_mpi trace; the message is one line."""


class TraceWriter:
    """Rank 0's incremental writer. The file is opened only while a step is appended, so between
    steps it is always a consistent HDF5 file marked `complete = False` under `NAME.partial`: a
    run killed at any point leaves a readable partial trace. `finish()` marks it complete and
    renames it to NAME."""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any], world_size: int, chunk: int = 65536):
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.finished = False
        with h5py.File(self.partial_path, "w") as file:
            file.attrs["schema_version"] = SCHEMA_VERSION
            file.attrs["complete"] = False
            for key, value in attrs.items():
                file.attrs[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            file.create_dataset("events", shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE, chunks=(chunk,),
                                compression="gzip", compression_opts=1)
            file.create_dataset("kv_tokens", shape=(0, world_size), maxshape=(None, world_size), dtype="<i8",
                                chunks=(256, world_size))

    def _open(self) -> h5py.File:
        return h5py.File(self.partial_path, "a")

    def append_step(self, events: np.ndarray, kv_tokens: np.ndarray) -> None:
        """Append one decode step: all ranks' events and KV tokens held per rank [N]."""
        self.append_steps(events, np.asarray(kv_tokens)[None])

    def append_steps(self, events: np.ndarray, kv_tokens: np.ndarray) -> None:
        """Append whole decode steps at once: their events and KV tokens per rank [steps, N]."""
        with self._open() as file:
            dataset, kv = file["events"], file["kv_tokens"]
            n = dataset.shape[0]
            dataset.resize((n + len(events),))
            dataset[n:] = events
            m = kv.shape[0]
            kv.resize((m + len(kv_tokens), kv.shape[1]))
            kv[m:] = kv_tokens

    def write_group(self, name: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> None:
        with self._open() as file:
            group = file.require_group(name)
            for key, array in arrays.items():
                group.create_dataset(key, data=array)
            for key, value in (attrs or {}).items():
                group.attrs[key] = value

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        with self._open() as file:
            for key, value in attrs.items():
                file.attrs[key] = value

    def finish(self) -> Path:
        """Mark complete and rename to the final name."""
        self.set_attrs({"complete": True})
        os.replace(self.partial_path, self.path)
        self.finished = True
        return self.path

    def abandon(self) -> Path:
        """An unfinished trace stays under its `.partial` name with complete = False."""
        return self.partial_path

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def open_trace(path: str | os.PathLike, allow_incomplete: bool = False) -> h5py.File:
    """Open a trace for reading, or raise TraceError with one line saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such file")
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        reason = "truncated or corrupt HDF5 file" if h5py.is_hdf5(path) else "not an HDF5 file"
        raise TraceError(f"{path}: {reason} ({str(exc).split(';')[0].strip()})") from None
    try:
        version = file.attrs.get("schema_version")
        if version is None:
            raise TraceError(f"{path}: HDF5 file without a schema_version attribute: not a helix_mpi trace")
        if int(version) != SCHEMA_VERSION:
            raise TraceError(
                f"{path}: trace schema version {int(version)} is not supported (this helix_mpi reads "
                f"version {SCHEMA_VERSION}): use the helix_mpi version that wrote it"
            )
        if not allow_incomplete and not bool(file.attrs.get("complete", False)):
            raise TraceError(f"{path}: trace is incomplete (its run did not finish); results would be partial")
        if "events" not in file or file["events"].dtype != EVENT_DTYPE:
            raise TraceError(f"{path}: /events is missing or has an unexpected layout")
    except TraceError:
        file.close()
        raise
    return file


def read_attr_json(file: h5py.File, key: str) -> Any:
    return json.loads(file.attrs[key])


def read_events(file: h5py.File, chunk: int = 1 << 20):
    """Yield the events in chunks of structured rows (bounded memory on huge traces)."""
    events = file["events"]
    for start in range(0, events.shape[0], chunk):
        yield events[start:start + chunk]
