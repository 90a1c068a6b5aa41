"""Selection of events by step, layer and rank ranges (`--steps 0-3 --ranks 0,2`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .tracemeta import SUMMARY_CHUNK, TraceMeta, iter_event_chunks, read_meta


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
        parts = [f"{name} {compact_ranges(values)}" for name, values in
                 (("steps", self.steps), ("layers", self.layers), ("ranks", self.ranks)) if values is not None]
        return ", ".join(parts) or "all events"


def compact_ranges(values: np.ndarray) -> str:
    """Sorted indices as text: '2-5' when consecutive, else '0,3,7'."""
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
            raise ValueError(f"{flag} {compact_ranges(values)} is outside the trace, which has 0-{count - 1}")
