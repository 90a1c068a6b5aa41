"""The schedule rules: stream clocks, op placement, and when a collective starts.

Each rank has a compute and a comm stream. An op starts when its stream is free, its dependencies
have finished and the layer has started; a collective starts when its last member is ready (start =
max over members, as SimGrid SMPI folds communication). The same code serves the emulator (one
rank per process; the max is an MPI all-reduce), the analytic model and replay (all N ranks in one
array; the max is taken per group by `GroupMax`), so they agree exactly.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..axes import Axis, Stream
from ..config import Layout
from ..mesh import group_colors

GroupMaxFn = Callable[[tuple[Axis, ...], np.ndarray], np.ndarray]


class GroupMax:
    """Per-group max of ready times [N] or [N, ...]: the ranks of one communicator start a
    collective together. The analytic stand-in for the emulator's MPI all-reduce of ready times."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self._members: dict[tuple[Axis, ...], tuple[np.ndarray, np.ndarray]] = {}

    def members(self, axes: tuple[Axis, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(ranks [G, size] of each group, group of each rank [N])."""
        if axes not in self._members:
            _, group_of = np.unique(group_colors(self.layout, axes), return_inverse=True)
            order = np.argsort(group_of, kind="stable")
            self._members[axes] = (order.reshape(group_of.max() + 1, -1), group_of)
        return self._members[axes]

    def group_sizes(self, axes: tuple[Axis, ...]) -> np.ndarray:
        """Ranks in each group of `axes` [G]."""
        members, _ = self.members(axes)
        return np.full(len(members), members.shape[1])

    def __call__(self, axes: tuple[Axis, ...], ready: np.ndarray) -> np.ndarray:
        members, group_of = self.members(axes)
        return ready[members].max(axis=1)[group_of]


class StreamClocks:
    """Free times [n] of the two streams of n ranks, in modeled seconds."""

    def __init__(self, n: int):
        self.free = {Stream.COMPUTE: np.zeros(n), Stream.COMM: np.zeros(n)}

    def now(self) -> np.ndarray:
        return np.maximum(self.free[Stream.COMPUTE], self.free[Stream.COMM])


class LayerSchedule:
    """Places the ops of one layer plan, in plan order, on the stream clocks."""

    def __init__(self, clocks: StreamClocks, layer_start: np.ndarray, group_max: GroupMaxFn):
        self.clocks, self.layer_start, self.group_max = clocks, layer_start, group_max
        self.ends: dict[int, np.ndarray] = {}

    def ready(self, op) -> np.ndarray:
        """When `op` may start on each rank (its stream free, its dependencies done, its group ready)."""
        ready = np.maximum(self.clocks.free[op.stream], self.layer_start)
        for dep in op.deps:
            ready = np.maximum(ready, self.ends[dep])
        if op.is_collective and op.group_size > 1:
            ready = self.group_max(op.group, ready)
        return ready

    def place(self, index: int, op, duration: np.ndarray | float,
              not_before: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Place op `index`; `not_before`: when its input exists elsewhere (a stage receive starts
        when its sender's send starts)."""
        ready = self.ready(op)
        if not_before is not None:
            ready = np.maximum(ready, not_before)
        end = ready + duration
        self.finish(index, op.stream, end)
        return ready, end

    def finish(self, index: int, stream: Stream, end: np.ndarray) -> None:
        """Record that op `index` on `stream` ends at `end` (closed forms place several ops at once)."""
        self.clocks.free[stream] = end
        self.ends[index] = end

    def layer_end(self) -> np.ndarray:
        return np.max(np.stack(list(self.ends.values())), axis=0)


def place_layer(clocks: StreamClocks, group_max: GroupMaxFn, ops: list, durations: np.ndarray
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) [N] of every op of one layer whose plan (rank 0's `ops`; every rank has the same
    op list) takes `durations` [ops, N] seconds, starting when every stream of a rank is free."""
    schedule = LayerSchedule(clocks, clocks.now(), group_max)
    return [schedule.place(index, op, durations[index]) for index, op in enumerate(ops)]


# --- closed forms of the attention -> all-to-all chain (KVP > 1) ------------------------------------
def uniform_chain_end(t: np.ndarray, ta: np.ndarray, tc: np.ndarray | float, batches: np.ndarray,
                      hopb: bool) -> np.ndarray:
    """End [n] of the per-request chain attention_b -> all_to_all_b, b = 0..B-1, as LayerSchedule
    places it, when every request of a rank class takes the same time. t [C, n]: when each class's
    compute stream is free; ta [C]: one request's attention; tc: one all-to-all (it starts when
    every member's attention is done).
    HOP-B: e_b = max(e_(b-1), max_c t_c + (b+1) ta_c) + tc, whose maximum over the (convex) unrolled
    terms sits at b = 0 or b = B-1:  e = max(max_c(t_c + ta_c) + B tc, max_c(t_c + B ta_c) + tc).
    Without: attention b waits for all-to-all b-1:  e = max_c(t_c + ta_c) + tc + (B-1)(max ta + tc)."""
    first = (t + ta[:, None]).max(axis=0)
    if hopb:
        return np.maximum(first + batches * tc, (t + batches * ta[:, None]).max(axis=0) + tc)
    return first + tc + (batches - 1) * (ta.max() + tc)


def chunked_chain_span(ta_c: np.ndarray, tc_c: np.ndarray, ta_r: np.ndarray, tc_r: np.ndarray,
                       full: np.ndarray, has_rem: np.ndarray, hopb: bool) -> np.ndarray:
    """Span [n] of the chain when requests are exchanged in chunks: F = `full` chunks taking ta_c
    (attention) and tc_c (all-to-all), then a remainder chunk (ta_r, tc_r) where `has_rem`.
    HOP-B: max(ta_c + F tc_c + tc_r, F ta_c + tc_c + tc_r, F ta_c + ta_r + tc_r) (the last term only
    with a remainder); without: F (ta_c + tc_c) + ta_r + tc_r."""
    if hopb:
        span = np.maximum(ta_c + full * tc_c + tc_r, full * ta_c + tc_c + tc_r)
        return np.where(has_rem, np.maximum(span, full * ta_c + ta_r + tc_r), span)
    return full * (ta_c + tc_c) + ta_r + tc_r


def ragged_chain_ends(att: np.ndarray, x_s: np.ndarray, c0: np.ndarray, m0: np.ndarray, hopb: bool,
                      kvp_max: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ends of the last attention [N] and of the last all-to-all [N] of a chain of C exchanges
    (one per request, or per chunk of requests) that take different times: att [N, C] attention
    seconds, x_s [N, C] (or [N, 1]) each all-to-all, c0 / m0 [N] the compute / comm stream clocks
    before the chain, kvp_max the max over each rank's KVP group. With S_b = x_0 + ... + x_b:
      HOP-B:    A_b = C0 + sum_{j<=b} t_att_j;   X_b = max(X_{b-1}, G(A_b)) + x_b, X_-1 = G(M0)
                => X_b = S_b + max(G(M0), cummax_{j<=b} (G(A_j) - S_{j-1}))
      no HOP-B: A_b = X_{b-1} + t_att_b (b >= 1);  X_b = X_{b-1} + G(t_att_b) + x_b
    (after an all-to-all every member of the group is at the same time, so G(X + a) = X + G(a))."""
    x = np.broadcast_to(x_s, att.shape)
    sums = np.cumsum(x, axis=1)  # S_b [N, C]
    before = sums - x  # S_{b-1}
    if hopb:
        ends = np.cumsum(np.concatenate([c0[:, None], att], axis=1), axis=1)[:, 1:]  # A_b [N, C]
        top = np.maximum(np.maximum.accumulate(kvp_max(ends) - before, axis=1)[:, -1], kvp_max(m0))
        return ends[:, -1], top + sums[:, -1]
    first = np.maximum(kvp_max(m0), kvp_max(c0 + att[:, 0])) + x[:, 0]  # X_0
    steps = kvp_max(att[:, 1:]) + x[:, 1:]  # X_b - X_{b-1}, b >= 1
    a2a = np.concatenate([first[:, None], first[:, None] + np.cumsum(steps, axis=1)], axis=1)  # X_b [N, C]
    last_att = c0 + att[:, 0] if att.shape[1] == 1 else a2a[:, -2] + att[:, -1]
    return last_att, a2a[:, -1]
