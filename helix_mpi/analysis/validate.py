"""`validate_trace`: every problem of a trace file, listed (times, overlaps on a stream, per-step
event counts, dependencies, /kv_tokens), where the other tools stop at the first."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..trace import SCHEMA_VERSION, TraceError, marked_complete, open_trace
from .codes import Vocabulary, grow
from .select import compact_ranges
from .tracemeta import EVENT_NUMBER_LIMITS, SHAPE_FIELDS, SUMMARY_CHUNK, iter_event_chunks, read_meta


def _ids(rows: np.ndarray, mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(rank, step, layer, index) of the masked rows, to name examples of a problem."""
    picked = rows[mask]
    return list(zip(*(picked[f].tolist() for f in ("rank", "step", "layer", "index"))))


class _EventChecks:
    """Running checks of event chunks: times, per-stream overlaps, per-step event counts, deps."""

    EXAMPLES = 3

    def __init__(self, world_size: int, steps: int, stages: int = 1):
        self.world_size, self.steps = world_size, steps  # steps: rows of /kv_tokens
        # pipeline stages: a stage's ranks record only its layers, so counts agree within a stage
        self.stages = stages if stages >= 1 and world_size % stages == 0 else 1
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
        for field in SHAPE_FIELDS:
            limit = EVENT_NUMBER_LIMITS[field]
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
        self.counts = grow(self.counts, int(steps.max()) + 1)
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
        self.last_end = grow(self.last_end, int(track.max()) + 1, -np.inf)
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
            out.append(f"steps are not contiguous: no events for step(s) {compact_ranges(missing[:10])} "
                       f"of 0-{len(self.counts) - 1}")
        blocks = self.counts.reshape(len(self.counts), self.stages, -1)  # [steps, stages, ranks of a stage]
        uneven = [s for s in present if (blocks[s] != blocks[s][:, :1]).any()]
        for step in uneven[:self.EXAMPLES]:
            out.append(self._uneven_text(step, blocks[step]))
        if len(uneven) > self.EXAMPLES:
            out.append(f"... and {len(uneven) - self.EXAMPLES} more step(s) with uneven event counts")
        return out

    def _uneven_text(self, step: int, blocks: np.ndarray) -> str:
        """Which ranks of `step` differ from most ranks of their stage ([stages, ranks of a stage])."""
        odd = []
        for stage, counts in enumerate(blocks):
            expected = int(np.bincount(counts).argmax())
            odd += [(stage * len(counts) + r, int(counts[r]), expected) for r in np.flatnonzero(counts != expected)]
        where = "ranks of a pipeline stage" if self.stages > 1 else "ranks"
        return (f"step {step}: {where} have different numbers of events ("
                + ", ".join(f"rank {r} has {c}, most have {e}" for r, c, e in odd[:4]) + ")")

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
        stages = meta.layout.get("pp", 1) if isinstance(meta.layout, dict) else 1
        checks = _EventChecks(meta.world_size, meta.kv_steps, stages if isinstance(stages, int) else 1)
        try:
            for rows in iter_event_chunks(file, path, chunk):
                checks.add(rows)
        except TraceError as exc:  # unreadable events: nothing more can be checked
            return facts, problems + [str(exc).split(": ", 1)[-1]]
        kv_shape = file["kv_tokens"].shape
    return facts, problems + checks.problems(kv_shape[0], kv_shape[1])
