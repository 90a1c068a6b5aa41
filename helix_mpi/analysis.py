"""Figures of a run from its events (emulated trace or analytic simulation alike), vectorised."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .costmodel import Collective, busbw
from .plan import OpName

GB = 1e9


@dataclass(frozen=True)
class RunShape:
    """What the figures need to know about the run besides its events."""

    world_size: int
    batch: int
    layers: int  # emulated layers
    model_layers: int  # layers of the full model (TTL scales the emulated ones to it)


_COLLECTIVE_OF = {
    OpName.ALL_TO_ALL.value: Collective.ALL_TO_ALL,
    OpName.ALL_REDUCE_ATTN.value: Collective.ALL_REDUCE,
    OpName.ALL_REDUCE_FFN.value: Collective.ALL_REDUCE,
}


def step_times(events: np.ndarray) -> np.ndarray:
    """Modeled seconds of each decode step [T] (the emulated layers): successive step ends."""
    steps = events["step"]
    ends = np.zeros(steps.max() + 1)
    np.maximum.at(ends, steps, events["end_s"])
    return np.diff(np.concatenate([[0.0], ends]))


def summarize(events: np.ndarray, shape: RunShape) -> dict[str, Any]:
    """TTL, throughput, per-op breakdown, exposed communication and collective bandwidths."""
    per_step = step_times(events)
    step_time = float(per_step.mean())
    ttl = step_time * shape.model_layers / shape.layers
    n_steps = len(per_step)
    duration = events["end_s"] - events["start_s"]
    is_comm = events["stream"] == b"comm"
    compute_busy = float(duration[~is_comm].sum()) / (shape.world_size * n_steps)  # per rank per step
    comm_busy = float(duration[is_comm].sum()) / (shape.world_size * n_steps)
    exposed_comm = max(step_time - compute_busy, 0.0)
    return {
        "world_size": shape.world_size,
        "batch": shape.batch,
        "steps": n_steps,
        "layers_emulated": shape.layers,
        "model_layers": shape.model_layers,
        "step_time_s": step_time,
        "ttl_s": ttl,
        "tokens_per_s_per_user": 1.0 / ttl,
        "tokens_per_s_per_gpu": shape.batch / ttl / shape.world_size,
        "compute_busy_s": compute_busy,
        "comm_busy_s": comm_busy,
        "exposed_comm_s": exposed_comm,
        "hidden_comm_s": max(comm_busy - exposed_comm, 0.0),
        "ops": _per_op(events, duration, shape.world_size * n_steps),
        "host_seconds": float(events["host_end_s"].max()) if len(events) else 0.0,
        "modeled_seconds": float(events["end_s"].max()) if len(events) else 0.0,
    }


def _per_op(events: np.ndarray, duration: np.ndarray, rank_steps: int) -> list[dict[str, Any]]:
    """One row per op name: count, modeled seconds per rank per step, and collective bandwidths."""
    names, inverse = np.unique(events["op"], return_inverse=True)
    rows = []
    for i, name in enumerate(names):
        mask = inverse == i
        text = name.decode()
        mean_time = float(duration[mask].mean())
        row = {
            "op": text,
            "stream": events["stream"][mask][0].decode(),
            "count": int(mask.sum()),
            "seconds_per_step": float(duration[mask].sum()) / rank_steps,
            "mean_s": mean_time,
            "bytes": float(events["bytes"][mask].mean()),
            "flops": float(events["flops"][mask].mean()),
        }
        if text in _COLLECTIVE_OF:
            size = float(events["bytes"][mask].mean())
            n = int(events["group_size"][mask][0])
            row["group"] = events["group"][mask][0].decode()
            row["group_size"] = n
            row["algbw_gbps"] = size / mean_time / GB if mean_time > 0 else 0.0
            row["busbw_gbps"] = float(busbw(_COLLECTIVE_OF[text], size, mean_time, n)) / GB if mean_time > 0 else 0.0
        rows.append(row)
    rows.sort(key=lambda r: -r["seconds_per_step"])
    return rows


def format_summary(summary: dict[str, Any]) -> str:
    """A readable table for the terminal."""
    lines = [
        f"ranks {summary['world_size']}  batch {summary['batch']}  steps {summary['steps']}  "
        f"layers {summary['layers_emulated']} of {summary['model_layers']}",
        f"modeled step time (emulated layers) {summary['step_time_s'] * 1e6:10.2f} us",
        f"token-to-token latency (full model) {summary['ttl_s'] * 1e3:10.3f} ms",
        f"tokens/s/user {summary['tokens_per_s_per_user']:10.2f}    tokens/s/GPU {summary['tokens_per_s_per_gpu']:10.2f}",
        f"per rank per step: compute {summary['compute_busy_s'] * 1e6:.2f} us, comm {summary['comm_busy_s'] * 1e6:.2f} us"
        f" (exposed {summary['exposed_comm_s'] * 1e6:.2f} us, hidden {summary['hidden_comm_s'] * 1e6:.2f} us)",
        "",
        f"{'op':18s} {'stream':7s} {'us/step':>10s} {'mean us':>9s} {'bytes':>12s} {'algbw GB/s':>11s} {'busbw GB/s':>11s}",
    ]
    for row in summary["ops"]:
        bw = (f"{row['algbw_gbps']:11.1f} {row['busbw_gbps']:11.1f}" if "algbw_gbps" in row else f"{'':11s} {'':11s}")
        lines.append(f"{row['op']:18s} {row['stream']:7s} {row['seconds_per_step'] * 1e6:10.2f} "
                     f"{row['mean_s'] * 1e6:9.2f} {row['bytes']:12.0f} {bw}")
    if summary.get("host_seconds"):
        lines.append("")
        lines.append(f"host wall time {summary['host_seconds']:.3f} s for {summary['modeled_seconds'] * 1e3:.3f} ms "
                     "of modeled time")
    return "\n".join(lines)
