"""Timeline (Gantt) charts of traces: one lane per rank and stream, modeled time on the x axis.

Matplotlib with the Agg canvas (no display, no pyplot global state). Only the selected events
are read (chunk by chunk) and drawn; bars of one op name share a colour across lanes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .analysis.events import US
from .analysis.select import Selection, check_selection, iter_selected
from .analysis.tracemeta import TraceMeta, read_meta
from .trace import open_trace

MAX_TIMELINE_EVENTS = 200_000  # beyond this a PNG is unreadable anyway: narrow the selection
STREAMS = ("compute", "comm")
RANK_PITCH = 2.6  # y distance between ranks; lanes are 1 apart, bars 0.8 high
MAX_LAYER_LABELS = 40


def read_selection(path: str | Path, selection: Selection,
                   limit: int = MAX_TIMELINE_EVENTS) -> tuple[TraceMeta, np.ndarray]:
    """The trace's metadata and its selected events (refused above `limit` events)."""
    with open_trace(path) as file:
        meta = read_meta(file, path)
        check_selection(selection, meta)
        chunks, total = [], 0
        for rows in iter_selected(file, path, selection):
            total += len(rows)
            if total > limit:
                raise ValueError(f"{total:,}+ events selected ({selection.describe()}); a timeline draws at most "
                                 f"{limit:,}: narrow --steps/--layers/--ranks")
            chunks.append(rows)
    if not chunks:
        raise ValueError(f"no events match {selection.describe()}")
    return meta, np.concatenate(chunks)


def _op_order(events: np.ndarray) -> list[bytes]:
    """Op names in plan order (by their smallest index), so legends read like the plan."""
    names = np.unique(events["op"])
    first_index = [events["index"][events["op"] == name].min() for name in names]
    return [name for _, name in sorted(zip(first_index, names.tolist()))]


def _lanes(events: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """y position [n] of every event: its rank's block, then its stream's lane."""
    rank_position = np.searchsorted(ranks, events["rank"])
    stream_lane = np.where(events["stream"] == b"comm", 1, 0)
    return rank_position * RANK_PITCH + stream_lane


def plot_timeline(meta: TraceMeta, events: np.ndarray, output: str | Path, selection: Selection = Selection(),
                  clock: str = "modeled") -> Path:
    """Draw the events as a Gantt chart per rank and stream; x is microseconds of `clock` time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    start_field, end_field = ("host_start_s", "host_end_s") if clock == "host" else ("start_s", "end_s")
    ranks = np.unique(events["rank"])
    y = _lanes(events, ranks)
    start_us = events[start_field] * US
    width_us = (events[end_field] - events[start_field]) * US
    fig = Figure(figsize=(14, min(40.0, 1.8 + 0.42 * 2 * len(ranks))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _palette(len(_op_order(events)))
    for color, name in zip(colors, _op_order(events)):
        mask = events["op"] == name
        is_comm = bool(np.any(events["stream"][mask] == b"comm"))
        ax.barh(y[mask], width_us[mask], left=start_us[mask], height=0.8, color=color, label=name.decode(),
                edgecolor="black" if is_comm else "white", linewidth=0.4, hatch="//" if is_comm else None)
    _mark_layers(ax, events, start_field)
    ax.set_yticks([i * RANK_PITCH + lane for i in range(len(ranks)) for lane in (0, 1)],
                  [f"rank {r} {s}" for r in ranks for s in STREAMS], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{clock} time (us)")
    ax.set_title(_title(meta, selection, clock), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="op")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(output, dpi=110, bbox_inches="tight")
    return Path(output)


def _palette(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _mark_layers(ax, events: np.ndarray, start_field: str) -> None:
    """A dotted line where each (step, layer) begins, labelled when there are few of them."""
    cells = events["step"].astype(np.int64) * (int(events["layer"].max()) + 1) + events["layer"]
    unique, inverse = np.unique(cells, return_inverse=True)
    starts = np.full(len(unique), np.inf)
    np.minimum.at(starts, inverse, events[start_field])
    first_rows = np.unique(inverse, return_index=True)[1]
    for start, row in zip(starts, first_rows):
        ax.axvline(start * US, color="grey", linestyle=":", linewidth=0.8)
        if len(unique) <= MAX_LAYER_LABELS:
            ax.text(start * US, -0.9, f" s{events['step'][row]} L{events['layer'][row]}", fontsize=7,
                    color="dimgrey", va="bottom")


def _title(meta: TraceMeta, selection: Selection, clock: str) -> str:
    layout = " ".join(f"{k.upper()}={v}" for k, v in meta.layout.items() if k != "strategy")
    hopb = "on" if meta.run.get("hopb") else "off"
    return (f"{Path(meta.path).name}: {meta.strategy} on {meta.world_size} ranks ({layout}), {meta.model.get('name')}, "
            f"{meta.topology.get('name')}, {meta.run['precision']}, HOP-B {hopb}\n"
            f"{selection.describe()} ({clock} time; hatched = communication)")
