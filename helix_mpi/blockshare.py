"""Weight blocks that several ranks of one machine hold alike, generated once and kept once in
MPI shared memory.

Every synthetic block is a pure function of its `synth.BlockSpec`, so ranks asking for equal
specs hold equal blocks: under Helix the attention weights are sharded over TPA only, so the KVP
ranks of one TPA shard hold the same attention blocks; norms, MLA's down-projections and the MoE
router are held by every rank. `share_blocks(comm, wanted)`, collective over `comm`:

1. the ranks of one machine (`Split_type(COMM_TYPE_SHARED)`) allgather the specs they want;
2. `plan_sharing` (the same on every rank) gives each spec wanted by 2+ of them a place in one
   `MPI.Win.Allocate_shared` window and splits its rows among those ranks, each filling its part
   (`synth.fill_block_rows` on a view of the window); a barrier;
3. each rank's shared blocks are read-only views into the window (`NodeSharedBlocks.get`); a
   block that one rank alone wants is generated privately, as without sharing.

The values are those of private generation bit for bit (the same fill functions, row by row).
A rank that fails while filling raises, and the job's failure handling (cli: MPI_Abort) stops
the ranks waiting at the barrier. The window lives until `free()`, collective over the machine's
ranks. mpi4py is imported only when a window is made: `hostmem` uses `plan_sharing` before MPI
starts.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import synth
from .sharding import PRIVATE_BLOCKS
from .strategies.base import even_splits

ALIGNMENT = 64  # bytes: every shared block starts on a cache line


@dataclass(frozen=True)
class SharedBlock:
    """One block's place in the machine's window and who fills which of its rows."""

    spec: synth.BlockSpec
    offset: int  # bytes from the window's start
    holders: tuple[int, ...]  # machine ranks holding it, ascending (2 or more)
    row_splits: tuple[int, ...]  # [holders + 1] rows of the block each holder fills, in turn

    def rows_filled_by(self, machine_rank: int) -> range:
        """Rows (from the block's first) that `machine_rank` fills; empty if it does not hold the block."""
        if machine_rank not in self.holders:
            return range(0)
        k = self.holders.index(machine_rank)
        return range(self.row_splits[k], self.row_splits[k + 1])


@dataclass(frozen=True)
class SharingPlan:
    """The blocks that 2+ ranks of one machine want, placed in one window of `window_bytes`."""

    blocks: dict[synth.BlockSpec, SharedBlock]
    window_bytes: int  # the window's size (blocks padded to ALIGNMENT)

    def shared_bytes(self, specs: Sequence[synth.BlockSpec]) -> int:
        """Bytes of the distinct blocks in `specs` (one rank's) that it maps from the window."""
        return sum(spec.nbytes for spec in dict.fromkeys(specs) if spec in self.blocks)

    def private_bytes(self, specs: Sequence[synth.BlockSpec]) -> int:
        """Bytes of the distinct blocks in `specs` (one rank's) that it generates for itself."""
        return sum(spec.nbytes for spec in dict.fromkeys(specs) if spec not in self.blocks)


def plan_sharing(wanted: Sequence[Sequence[synth.BlockSpec]]) -> SharingPlan:
    """The plan of one machine from the specs each of its ranks wants (`wanted[machine rank]`):
    blocks in order of first appearance (rank by rank), so every rank computes the same plan."""
    holders: dict[synth.BlockSpec, list[int]] = {}
    for rank, specs in enumerate(wanted):
        for spec in dict.fromkeys(specs):  # a rank holds each distinct block once
            holders.setdefault(spec, []).append(rank)
    blocks, offset = {}, 0
    for spec, ranks in holders.items():
        if len(ranks) < 2:
            continue
        splits = even_splits(spec.block_shape[0], len(ranks))
        blocks[spec] = SharedBlock(spec, offset, tuple(ranks), tuple(int(s) for s in splits))
        offset += -(-spec.nbytes // ALIGNMENT) * ALIGNMENT
    return SharingPlan(blocks, offset)


class NodeSharedBlocks:
    """A `sharding.BlockSource`: the plan's blocks are read-only views into the machine's window,
    any other block is generated privately. `free()` releases the window (collective over the
    machine's ranks; the views must not be used after it)."""

    def __init__(self, plan: SharingPlan, wanted: Sequence[synth.BlockSpec], window: Any = None,
                 memory: np.ndarray | None = None):
        self.plan, self.wanted = plan, list(wanted)
        self._window, self._memory = window, memory  # memory: [window_bytes] uint8 over the window

    @property
    def shared_bytes(self) -> int:
        """Bytes of this rank's blocks mapped from the window (the machine keeps them once)."""
        return self.plan.shared_bytes(self.wanted)

    @property
    def private_bytes(self) -> int:
        """Bytes of this rank's blocks generated in its own memory."""
        return self.plan.private_bytes(self.wanted)

    def get(self, spec: synth.BlockSpec) -> np.ndarray:
        shared = self.plan.blocks.get(spec)
        if shared is None:
            return PRIVATE_BLOCKS.get(spec)
        view = _block_view(self._memory, shared)
        view.flags.writeable = False
        return view

    def free(self) -> None:
        """Release the window (collective over the machine's ranks; nothing when none was made)."""
        self._memory = None
        if self._window is not None:
            self._window.Free()
            self._window = None


def share_blocks(comm: Any, wanted: Sequence[synth.BlockSpec]) -> NodeSharedBlocks:
    """Collective over `comm`: the blocks each rank wants (`wanted`), those wanted by 2+ ranks of a
    machine generated once into that machine's shared window (module docstring)."""
    from mpi4py import MPI

    from .collectives import quiet_barrier

    quiet_barrier(comm)  # ranks still starting up keep the cores; then the collectives below are quick
    machine = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        plan = plan_sharing(machine.allgather(list(wanted)))
        if not plan.blocks:
            return NodeSharedBlocks(plan, wanted)
        window = MPI.Win.Allocate_shared(plan.window_bytes if machine.Get_rank() == 0 else 0, 1, comm=machine)
        buffer, _ = window.Shared_query(0)
        memory = np.frombuffer(buffer, dtype=np.uint8, count=plan.window_bytes)  # [window_bytes]
        _fill_shared(plan, machine, window, memory)
        return NodeSharedBlocks(plan, wanted, window, memory)
    finally:
        machine.Free()


def _fill_shared(plan: SharingPlan, machine: Any, window: Any, memory: np.ndarray) -> None:
    """Each rank fills its rows of the blocks it holds, then every rank sees every row (MPI's
    unified-memory pattern for shared windows: Sync, barrier, Sync within a passive epoch)."""
    from mpi4py import MPI

    from .collectives import quiet_barrier

    me = machine.Get_rank()
    window.Lock_all(MPI.MODE_NOCHECK)
    for shared in plan.blocks.values():
        rows = shared.rows_filled_by(me)
        if len(rows):
            synth.fill_block_rows(shared.spec, _block_view(memory, shared)[rows.start:rows.stop], rows)
    window.Sync()
    quiet_barrier(machine)
    window.Sync()
    window.Unlock_all()


def _block_view(memory: np.ndarray, shared: SharedBlock) -> np.ndarray:
    """The block's bytes of the window as its array [r1 - r0, c1 - c0] (spec.dtype)."""
    spec = shared.spec
    raw = memory[shared.offset:shared.offset + spec.nbytes]
    return raw.view(spec.dtype).reshape(spec.block_shape)
