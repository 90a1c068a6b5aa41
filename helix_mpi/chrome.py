"""Chrome trace-event JSON (opened by https://ui.perfetto.dev and chrome://tracing).

Format: the "Trace Event Format" (JSON object with `traceEvents`). Every op is a complete event
(`ph: "X"`) with `ts` and `dur` in microseconds; one process per rank (pid = rank) and one thread
per stream (tid 0 compute, 1 comm), named by metadata events (`ph: "M"`, process_name /
thread_name). Times are rounded to whole nanoseconds first (Perfetto stores integer ns), and
ts/dur are printed from those integers, so ops that follow each other on a stream never
partially overlap after rounding: every track is properly nested (here: sequential).
The file is written chunk by chunk, so huge traces need no more memory than one chunk.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from .analysis.select import Selection, check_selection, iter_selected
from .analysis.tracemeta import TraceMeta, read_meta
from .costmodel import busbw
from .outputs import exclusive_output, write_failure
from .trace import open_trace

STREAM_TIDS = {"compute": 0, "comm": 1}
CLOCKS = {"modeled": ("start_s", "end_s"), "host": ("host_start_s", "host_end_s")}


def export_chrome(path: str | Path, output: str | Path, selection: Selection = Selection(), clock: str = "modeled",
                  progress: Callable[[int], None] | None = None) -> int:
    """Write the selected events of a trace as Chrome trace JSON; returns the number of ops written."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    with open_trace(path) as file:
        meta = read_meta(file, path)
        check_selection(selection, meta)
        with exclusive_output(output) as partial:  # renamed to `output` only once complete
            try:
                with open(partial, "w", encoding="utf-8") as out:
                    return _write_events(out, file, meta, selection, clock, progress)
            except OSError as exc:
                raise write_failure(output, exc) from None


def _write_events(out: TextIO, file, meta: TraceMeta, selection: Selection, clock: str,
                  progress: Callable[[int], None] | None) -> int:
    _write_header(out, meta, clock)
    first, written = _write_metadata(out, meta, selection), 0
    for rows in iter_selected(file, meta.path, selection):
        out.write(("" if first else ",\n") + ",\n".join(_event_json(rows, clock)))
        first, written = False, written + len(rows)
        if progress is not None:
            progress(len(rows))
    out.write("\n]}\n")
    return written


def _write_header(out: TextIO, meta: TraceMeta, clock: str) -> None:
    other = {"trace": meta.path, "clock": clock, "strategy": meta.strategy, "model": meta.model.get("name"),
             "layout": meta.layout, "topology": meta.topology.get("name"), "run": meta.run}
    out.write('{"displayTimeUnit": "ns", "otherData": ' + json.dumps(other) + ',\n"traceEvents": [\n')


def _write_metadata(out: TextIO, meta: TraceMeta, selection: Selection) -> bool:
    """Process and thread names (and sort order) of every selected rank; returns True if none."""
    ranks = selection.ranks if selection.ranks is not None else range(meta.world_size)
    events = []
    for rank in ranks:
        rank = int(rank)
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
        for stream, tid in STREAM_TIDS.items():
            events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": stream}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": rank, "tid": tid,
                           "args": {"sort_index": tid}})
    out.write(",\n".join(json.dumps(e) for e in events))
    return not events


def _microseconds(ns: int) -> str:
    """Exact decimal microseconds of a whole number of nanoseconds (e.g. 1234 -> '1.234')."""
    return f"{ns // 1000}.{ns % 1000:03d}"


def _event_json(rows: np.ndarray, clock: str) -> list[str]:
    """One complete event per row (text), args carrying the op's fields."""
    start_field, end_field = CLOCKS[clock]
    start_ns = np.rint(rows[start_field] * 1e9).astype(np.int64)
    dur_ns = np.maximum(np.rint(rows[end_field] * 1e9).astype(np.int64) - start_ns, 0)
    host_us = rows["host_start_s"] * 1e6
    host_dur_us = (rows["host_end_s"] - rows["host_start_s"]) * 1e6
    bus = _busbw_gbps(rows)
    texts = []
    for i, row in enumerate(rows.tolist()):
        (rank, step, layer, request, index, dep0, dep1, op, stream, collective, group, group_size, nbytes, flops,
         *_) = row
        stream, collective = stream.decode(), collective.decode()
        args: dict[str, Any] = {"step": step, "layer": layer, "index": index, "bytes": nbytes}
        if request >= 0:
            args["request"] = request
        deps = [d for d in (dep0, dep1) if d >= 0]
        if deps:
            args["deps"] = deps
        if collective:
            args.update(collective=collective, group=group.decode(), group_size=group_size,
                        busbw_gbps=round(float(bus[i]), 6))
        else:
            args["flops"] = flops
        args.update(host_start_us=round(float(host_us[i]), 3), host_dur_us=round(float(host_dur_us[i]), 3))
        texts.append(
            f'{{"name": {json.dumps(op.decode())}, "cat": "{stream}", "ph": "X", '
            f'"ts": {_microseconds(int(start_ns[i]))}, "dur": {_microseconds(int(dur_ns[i]))}, '
            f'"pid": {rank}, "tid": {STREAM_TIDS.get(stream, 2)}, "args": {json.dumps(args)}}}')
    return texts


def _busbw_gbps(rows: np.ndarray) -> np.ndarray:
    """busbw of every collective row in GB/s (0 for compute rows and zero-time collectives)."""
    out = np.zeros(len(rows))
    seconds = rows["end_s"] - rows["start_s"]
    for kind in np.unique(rows["collective"]):
        if not kind:
            continue
        same = rows["collective"] == kind
        try:
            out[same] = busbw(kind.decode(), rows["bytes"][same], seconds[same], rows["group_size"][same]) / 1e9
        except ValueError:  # a collective this cost model does not know
            out[same] = np.nan
    return np.nan_to_num(out)
