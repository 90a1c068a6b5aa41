"""HDF5 traces, schema version 2 (documented in docs/trace-format.md).

Rank 0 writes one file per run through a temporary name (`NAME.partial`), appends events as
steps complete (bounded memory), and renames it to NAME only after setting `complete = True`.
Readers refuse files that are not complete traces of a known schema with one clear line.
h5py is imported when a trace is first opened, read or written, not with this module: the `run`
ranks import the writer long before rank 0 writes its first step.
"""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .outputs import OutputLock, check_room, partial_path, write_failure

if TYPE_CHECKING:
    import h5py

SCHEMA_VERSION = 2  # 2: op shapes (requests, tokens, experts hit) and what timed each op
# Rows per compressed chunk of /events: each append rewrites the last, partly filled chunk, so
# small chunks keep appends cheap and the writer's buffers small on long runs.
EVENT_CHUNK_ROWS = 8192

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
    renames it to NAME. The writer holds NAME's lock (outputs.OutputLock) from start to end, so a
    second run with the same output refuses; a write that fails (disk full, file-size limit)
    removes the partial file and raises OutputError (one line)."""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any], world_size: int,
                 chunk: int = EVENT_CHUNK_ROWS):
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.finished = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(self.path, exc) from None
        self.lock = OutputLock(self.path)
        self.chunk, self.rows = chunk, 0

        def create(file: h5py.File) -> None:
            file.attrs["schema_version"] = SCHEMA_VERSION
            file.attrs["complete"] = False
            for key, value in attrs.items():
                file.attrs[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            file.create_dataset("events", shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE, chunks=(chunk,),
                                compression="gzip", compression_opts=1)
            file.create_dataset("kv_tokens", shape=(0, world_size), maxshape=(None, world_size), dtype="<i8",
                                chunks=(256, world_size))

        self._write(create, "w")

    def _write(self, action: Callable[[h5py.File], None], mode: str = "a", nbytes: int = 0) -> None:
        """Open the partial file, apply `action` (writing about `nbytes` of data), close it;
        SIGINT/SIGTERM wait until it is closed."""
        try:
            check_room(self.partial_path, nbytes)
        except OSError as exc:  # nothing written: the partial trace stays consistent
            self.lock.release()
            kept = self.partial_path.exists() and mode == "a"
            note = f"the partial trace is kept as {self.partial_path} (complete = False)" if kept else ""
            raise write_failure(self.path, exc, note) from None
        import h5py

        try:
            with interrupts_deferred(), h5py.File(self.partial_path, mode) as file:
                action(file)
        except (OSError, RuntimeError) as exc:  # h5py raises either for a failed write
            self.partial_path.unlink(missing_ok=True)  # possibly cut mid-write: never leave it
            self.lock.release()
            raise write_failure(self.path, exc) from None

    @property
    def last_chunk_bytes(self) -> int:
        """Bytes of the partly filled last chunk of /events, which an append rewrites."""
        return (self.rows % self.chunk) * EVENT_DTYPE.itemsize

    def append_step(self, events: np.ndarray, kv_tokens: np.ndarray) -> None:
        """Append one decode step: all ranks' events and KV tokens held per rank [N]."""
        self.append_steps(events, np.asarray(kv_tokens)[None])

    def append_steps(self, events: np.ndarray, kv_tokens: np.ndarray) -> None:
        """Append whole decode steps at once: their events and KV tokens per rank [steps, N]."""
        def append(file: h5py.File) -> None:
            dataset, kv = file["events"], file["kv_tokens"]
            n = dataset.shape[0]
            dataset.resize((n + len(events),))
            dataset[n:] = events
            m = kv.shape[0]
            kv.resize((m + len(kv_tokens), kv.shape[1]))
            kv[m:] = kv_tokens

        self._write(append, nbytes=events.nbytes + kv_tokens.nbytes + self.last_chunk_bytes)
        self.rows += len(events)

    def write_group(self, name: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> None:
        def write(file: h5py.File) -> None:
            group = file.require_group(name)
            for key, array in arrays.items():
                group.create_dataset(key, data=array)
            for key, value in (attrs or {}).items():
                group.attrs[key] = value

        self._write(write, nbytes=sum(np.asarray(a).nbytes for a in arrays.values()))

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        def write(file: h5py.File) -> None:
            for key, value in attrs.items():
                file.attrs[key] = value

        self._write(write)

    def finish(self) -> Path:
        """Mark complete, flush to disk and rename to the final name."""
        self.set_attrs({"complete": True})
        try:
            with open(self.partial_path, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self.partial_path, self.path)
        except OSError as exc:
            self.partial_path.unlink(missing_ok=True)
            raise write_failure(self.path, exc) from None
        finally:
            self.lock.release()
        self.finished = True
        return self.path

    def abandon(self) -> Path:
        """An unfinished trace stays under its `.partial` name with complete = False; the lock goes."""
        self.lock.release()
        return self.partial_path

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.finished:
            self.abandon()


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are handled when it ends (in the main
    thread; elsewhere signals are not delivered to Python code anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda number, frame: pending.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            signal.raise_signal(pending[0])


def open_trace(path: str | os.PathLike, allow_incomplete: bool = False) -> h5py.File:
    """Open a trace for reading, or raise TraceError with one line saying what is wrong."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such file")
    probe_hdf5(path)
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        reason = "truncated or corrupt HDF5 file" if h5py.is_hdf5(path) else "not an HDF5 file"
        raise TraceError(f"{path}: {reason} ({str(exc).split(';')[0].strip()})") from None
    try:
        version = attribute(file, "schema_version")
        if version is None:
            raise TraceError(f"{path}: HDF5 file without a schema_version attribute: not a helix_mpi trace")
        if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
            raise TraceError(f"{path}: schema_version {version!r} is not an integer: not a helix_mpi trace")
        if version != SCHEMA_VERSION:
            raise TraceError(
                f"{path}: trace schema version {int(version)} is not supported (this helix_mpi reads "
                f"version {SCHEMA_VERSION}): use the helix_mpi version that wrote it"
            )
        if not allow_incomplete and not marked_complete(file):
            raise TraceError(f"{path}: trace is incomplete (its run did not finish); results would be partial")
        events = file.get("events")
        if not isinstance(events, h5py.Dataset) or events.dtype != EVENT_DTYPE or events.ndim != 1:
            raise TraceError(f"{path}: /events is missing or has an unexpected layout")
    except BaseException:
        file.close()
        raise
    return file


def marked_complete(file: h5py.File) -> bool:
    """The root attribute `complete` is a boolean true (anything else is not)."""
    value = attribute(file, "complete", False)
    return isinstance(value, (bool, np.bool_)) and bool(value)


def attribute(file: h5py.File, key: str, default: Any = None) -> Any:
    """A root attribute's value (`default` when absent). Its stored type is checked before its
    value is read: a damaged type (say a string turned into a sequence) can crash the HDF5 library
    when the value is read, so such an attribute raises TraceError instead."""
    from h5py import h5t

    if key not in file.attrs:
        return default
    stored = file.attrs.get_id(key)
    # classes of HDF5 datatype a root attribute may have: numbers, booleans (an enum) and strings
    if stored.get_type().get_class() not in (h5t.INTEGER, h5t.FLOAT, h5t.ENUM, h5t.STRING) or stored.shape != ():
        raise TraceError(f"{file.filename}: root attribute '{key}' has an unexpected type: a damaged trace")
    return file.attrs[key]


def root_attributes(file: h5py.File) -> dict[str, Any]:
    """Every root attribute, each read as `attribute` does."""
    return {key: attribute(file, key) for key in file.attrs}


PROBE_TIMEOUT_S = 10.0


def probe_hdf5(path: str | os.PathLike) -> None:
    """Read the file's root attributes, /kv_tokens and the ends of /events in a forked child
    first: damaged HDF5 metadata can crash or hang the HDF5 library, which no exception reports.
    TraceError (one line) if the child dies of a signal or does not finish in time; any ordinary
    error is left to the caller's own reading, which reports it."""
    if not hasattr(os, "fork"):
        return
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _PROBED:
        _PROBED[key] = _probe_in_child(path)
    if _PROBED[key]:
        raise TraceError(f"{path}: damaged HDF5 file: {_PROBED[key]}")


_PROBED: dict[tuple, str] = {}  # (path, mtime, size) -> "" or what reading it does to HDF5


def _probe_in_child(path: str | os.PathLike) -> str:
    pid = os.fork()
    if pid == 0:  # the child: read, then leave without running any exit handler
        faulthandler.disable()  # its crash is the answer, not something to report
        try:
            _read_headers(path)
        finally:
            os._exit(0)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while not (finished := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "reading it does not finish (the HDF5 library loops on it)"
        time.sleep(0.002)
    if os.WIFSIGNALED(finished[1]):
        return f"reading it crashes the HDF5 library ({signal.Signals(os.WTERMSIG(finished[1])).name})"
    return ""


def _read_headers(path: str | os.PathLike, rows: int = EVENT_CHUNK_ROWS) -> None:
    import h5py

    with h5py.File(path, "r") as file:
        root_attributes(file)
        kv, events = file.get("kv_tokens"), file.get("events")
        if isinstance(kv, h5py.Dataset) and kv.dtype.kind in "iu":
            kv[...]
        if isinstance(events, h5py.Dataset) and events.dtype == EVENT_DTYPE and events.ndim == 1:
            events[:rows], events[-rows:]


def json_attribute(file: h5py.File, path: str, key: str, required: bool = True) -> Any:
    """A root attribute holding a JSON object, parsed (None when absent and not required); the
    one reader of the JSON attributes (config, topology, memory, serving, workload, replayed_from)."""
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


def read_events(file: h5py.File, chunk: int = 1 << 20):
    """Yield the events in chunks of structured rows (bounded memory on huge traces)."""
    events = file["events"]
    for start in range(0, events.shape[0], chunk):
        yield events[start:start + chunk]


def settle_partial(path: str | os.PathLike) -> str:
    """After a run that stopped early: keep NAME.partial if it is a consistent trace, remove it
    if it was cut mid-write (a rank killed while writing); returns what was left, for one line."""
    partial = partial_path(path)
    if not partial.is_file():
        return "no trace was written"
    try:
        probe_hdf5(partial)
        state = partial_state(partial)
    except TraceError as exc:
        state = str(exc).split(": ", 1)[-1]
    if state == "complete":  # stopped between marking it complete and renaming it
        os.replace(partial, path)
        return f"the trace is complete: {path}"
    if state == "partial":
        return f"the partial trace is kept as {partial} (complete = False)"
    partial.unlink(missing_ok=True)
    return f"the partial trace was cut mid-write and is removed ({state})"


def partial_state(partial: str | os.PathLike) -> str:
    """'partial' (readable, complete = False, one /kv_tokens row per step with events), 'complete',
    or what is wrong with it."""
    import h5py

    try:
        with h5py.File(partial, "r") as file:
            if attribute(file, "schema_version") != SCHEMA_VERSION:
                return "no schema version"
            events, kv = file["events"], file["kv_tokens"]
            if events.dtype != EVENT_DTYPE or kv.ndim != 2:
                return "unexpected datasets"
            steps = np.unique(events.fields("step")[...])
            kv[...]
            if not np.array_equal(steps, np.arange(kv.shape[0])):
                return f"{len(steps)} steps of events but {kv.shape[0]} rows of /kv_tokens"
            return "complete" if marked_complete(file) else "partial"
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # TraceError is a ValueError
        return f"unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
