"""RankMesh: world rank -> (kvp, tpa) for attention and (tpf, ep) for the FFN.

Rank order: r = tpa * KVP + kvp (a KVP group is KVP consecutive ranks) and r = ep * TPF + tpf.
The coordinate arithmetic is pure (no MPI); `RankMesh.build(comm, layout)` adds the
sub-communicators, made once with Split and passed explicitly to whoever needs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .axes import ATTENTION_AXES, FFN_AXES, Axis
from .config import Layout


def stage_ranks(layout: Layout) -> int:
    """Ranks of one pipeline stage (all of them without stages)."""
    return layout.world_size // layout.pp


def stage_of(layout: Layout, rank: int) -> int:
    """Pipeline stage of a world rank: stages are blocks of consecutive ranks."""
    return rank // stage_ranks(layout) if layout.pp > 1 else 0


def coordinates(layout: Layout, rank: int) -> dict[Axis, int]:
    """Mesh coordinates of a world rank on every axis (within its pipeline stage)."""
    if layout.pp > 1:
        rank %= stage_ranks(layout)
    return {
        Axis.KVP: rank % layout.kvp,
        Axis.TPA: rank // layout.kvp,
        Axis.TPF: rank % layout.tpf,
        Axis.EP: rank // layout.tpf,
    }


def axis_size(layout: Layout, axis: Axis) -> int:
    return {Axis.KVP: layout.kvp, Axis.TPA: layout.tpa, Axis.TPF: layout.tpf, Axis.EP: layout.ep}[axis]


def group_size(layout: Layout, axes: tuple[Axis, ...]) -> int:
    size = 1
    for axis in axes:
        size *= axis_size(layout, axis)
    return size


def group_stride(layout: Layout, axes: tuple[Axis, ...]) -> int:
    """Rank distance between neighbours of the group over `axes` (module docstring's rank order):
    1 when the group holds its phase's fastest axis (KVP, TPF), else that axis's size (a TPA group
    is KVP apart, an EP group TPF apart). Placement follows: `costmodel.ranks_per_domain`."""
    if not axes:
        return 1
    stride = 1
    for axis in _phase_axes(axes):
        if axis in axes:
            return stride
        stride *= axis_size(layout, axis)
    return stride


def stage_crosses(stage: int, stage_ranks: int, domain_size: int) -> bool:
    """Whether the send into pipeline stage `stage` (>= 1) leaves an NVLink domain: stages of
    `stage_ranks` consecutive ranks, domains of `domain_size`; it does when the stage's first rank,
    stage * stage_ranks, opens a new domain."""
    return (stage * stage_ranks) % domain_size == 0


def stage_crossings(stages: int, stage_ranks: int, domain_size: int) -> int:
    """Stage-to-stage sends of one step that leave an NVLink domain (`stage_crosses`)."""
    return sum(1 for j in range(1, stages) if stage_crosses(j, stage_ranks, domain_size))


def _phase_axes(axes: tuple[Axis, ...]) -> tuple[Axis, ...]:
    if set(axes) <= set(ATTENTION_AXES):
        return ATTENTION_AXES
    if set(axes) <= set(FFN_AXES):
        return FFN_AXES
    raise ValueError(f"a group mixes attention and FFN axes: {axes}")


def group_color(layout: Layout, rank: int, axes: tuple[Axis, ...]) -> int:
    """Ranks with the same color share the group over `axes` (same coords on the other axes)."""
    coords = coordinates(layout, rank)
    color = stage_of(layout, rank)  # groups never span pipeline stages
    for axis in _phase_axes(axes):
        if axis not in axes:
            color = color * axis_size(layout, axis) + coords[axis]
    return color


def group_key(layout: Layout, rank: int, axes: tuple[Axis, ...]) -> int:
    """Rank within the group over `axes` (first axis fastest)."""
    coords = coordinates(layout, rank)
    key, stride = 0, 1
    for axis in axes:
        key += coords[axis] * stride
        stride *= axis_size(layout, axis)
    return key


def group_colors(layout: Layout, axes: tuple[Axis, ...]) -> np.ndarray:
    """Color of every world rank for `axes` [N] (used by the analytic model's clocks)."""
    return np.array([group_color(layout, r, axes) for r in range(layout.world_size)], dtype=np.int64)


@dataclass
class RankMesh:
    """This rank's place in the layout and its sub-communicators (built once, passed explicitly)."""

    layout: Layout
    rank: int
    comm: Any  # the job's communicator (COMM_WORLD, COMM_SELF or a sub-communicator)
    _groups: dict[tuple[Axis, ...], Any] = field(default_factory=dict)

    @classmethod
    def build(cls, comm: Any, layout: Layout) -> "RankMesh":
        mesh = cls(layout=layout, rank=comm.Get_rank(), comm=comm)
        for axes in ((Axis.KVP,), (Axis.TPA,), ATTENTION_AXES, (Axis.TPF,), (Axis.EP,), FFN_AXES):
            color = group_color(layout, mesh.rank, axes)
            mesh._groups[axes] = comm.Split(color, group_key(layout, mesh.rank, axes))
        return mesh

    def coord(self, axis: Axis) -> int:
        return coordinates(self.layout, self.rank)[axis]

    def group(self, axes: tuple[Axis, ...]) -> Any:
        return self._groups[axes]

    def free(self) -> None:
        for sub in self._groups.values():
            sub.Free()
        self._groups.clear()
