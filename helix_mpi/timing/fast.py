"""Layer times in closed form, vectorised: the schedule rules of `schedule.LayerSchedule` applied to
many batches at once (the sweep) or to ragged batches (serving), without placing ops one by one.

Both start from real plans (`plan.layer_plan`) of one representative rank per class of ranks with
equal shard shapes, and take every duration from the same `TimeModel` as the exact path, so they
equal `analytic.step_time` (checked in tests/test_sweep.py and tests/test_workload.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..axes import Axis, Stream
from ..config import PRECISION_BYTES, Layout, ModelConfig, Strategy
from ..plan import (Op, OpName, all_to_all_index, attention_index, dp_ep_expert_cost, expected_moe_load,
                    layer_plan, moe_cost)
from ..sharding import shard_classes
from .durations import TimeModel
from .schedule import (GroupMax, LayerSchedule, StreamClocks, chunked_chain_span, ragged_chain_ends,
                       uniform_chain_end)


# --- many batches, uniform KV per class (the sweep) --------------------------------------------------
class BatchLayerTime:
    """Time of one kind of layer (dense or MoE) of one layout over an array of batches, from the
    plans of one rank per class at batch 1 and 2 (`classes`: objects with the class's first `rank`,
    its KV tokens `held` per request and its `shard`, as `sweep.ShardClass`).

    - whole-batch ops have FLOPs, HBM bytes and collective sizes affine in the batch, so two plans
      give every batch (exact: all are integers or halves); MoE ops, whose expected experts hit is
      nonlinear, are recomputed with `plan.moe_cost` / `plan.dp_ep_expert_cost` on the batch array;
    - the per-request attention -> all-to-all chain (KVP > 1) is `schedule.uniform_chain_end`, or
      `schedule.chunked_chain_span` when `a2a_chunk` requests share an exchange (0: the batch);
    - every collective with more than one member ends at the same time on every rank in these plans
      (the all-reduce over all N, or a TPF all-reduce followed by an EP all-gather over all groups),
      so the layer time is a sum of per-class compute spans and collective times, maximised over
      classes at each collective.
    """

    def __init__(self, model: ModelConfig, layout: Layout, classes: tuple, layer: int, hopb: bool,
                 timer: TimeModel, a2a_chunk: int = 1):
        self.model, self.layout, self.classes, self.layer = model, layout, classes, layer
        self.hopb, self.timer, self.a2a_chunk = hopb, timer, a2a_chunk
        self.moe_layer = model.is_moe_layer(layer)
        self.plans = [[self._plan(cls, batch) for cls in classes] for batch in (1, 2)]
        names = {tuple(op.name for op in plan) for plan in self.plans[0]}
        if len(names) != 1:
            raise AssertionError(f"shard classes of {layout} have different plans: {names}")

    def _plan(self, cls, batch: int) -> list[Op]:
        ops = layer_plan(self.model, self.layout, cls.rank, self.layer, np.full(batch, cls.held, dtype=np.int64),
                         self.timer.precision, self.hopb)
        return [op for op in ops if op.request <= 0]  # request 0 stands for every request of the chain

    def __call__(self, batches: np.ndarray) -> np.ndarray:
        """Seconds [n] of one layer at each batch (per-GPU batch under dp-ep)."""
        b = batches.astype(np.float64)
        t = np.zeros((len(self.classes), len(b)))
        plan1, index = self.plans[0][0], 0
        while index < len(plan1):
            op = plan1[index]
            if op.name is OpName.ATTENTION and op.request == 0:  # the per-request chain (KVP > 1)
                t = self._chain(t, index, b)[None, :]  # every member leaves the last all-to-all together
                index += 2
                continue
            if op.is_collective:
                size = op.nbytes + (b - 1) * (self.plans[1][0][index].nbytes - op.nbytes)
                duration = self.timer.collective_seconds(op.collective, size, op.group_size)
                t = (t.max(axis=0, keepdims=True) if op.group_size > 1 else t) + duration
            else:
                t = t + np.array([self._compute(c, index, b) for c in range(len(self.classes))])
            index += 1
        return t.max(axis=0)

    def _compute(self, c: int, index: int, b: np.ndarray) -> np.ndarray:
        op1, op2 = self.plans[0][c][index], self.plans[1][c][index]
        model, shard, wb = self.model, self.classes[c].shard, PRECISION_BYTES[self.timer.precision]
        if op1.name is OpName.MOE and self.moe_layer and self.layout.strategy is not Strategy.DP_EP:
            flops, nbytes = moe_cost(model, shard, b, *expected_moe_load(model, len(shard.experts), b), wb)
        elif op1.name is OpName.EXPERTS:  # dp-ep: the held experts' load from every rank's tokens
            load = expected_moe_load(model, len(shard.experts), b * self.layout.world_size)
            flops, nbytes = dp_ep_expert_cost(model, shard, *load, wb)
        else:  # affine in the batch: exact from batch 1 and 2
            flops = op1.flops + (b - 1) * (op2.flops - op1.flops)
            nbytes = op1.hbm_bytes + (b - 1) * (op2.hbm_bytes - op1.hbm_bytes)
        return self.timer.compute_seconds(flops, nbytes) * np.ones(len(b))

    def _chain(self, t: np.ndarray, index: int, b: np.ndarray) -> np.ndarray:
        attn = [plan[index] for plan in self.plans[0]]
        a2a = self.plans[0][0][index + 1]
        if self.a2a_chunk == 1:
            ta = np.array([self.timer.op_seconds(op) for op in attn])
            return uniform_chain_end(t, ta, self.timer.op_seconds(a2a), b, self.hopb)
        c = b if self.a2a_chunk == 0 else np.minimum(self.a2a_chunk, b)
        full, rem = b // c, b % c

        def attention(k: np.ndarray) -> np.ndarray:  # the slowest class's attention of k requests
            return np.max([self.timer.compute_seconds(k * op.flops, k * op.hbm_bytes) for op in attn], axis=0)

        def exchange(k: np.ndarray) -> np.ndarray:
            return self.timer.collective_seconds(a2a.collective, k * a2a.nbytes, a2a.group_size) * np.ones(len(k))

        has_rem = rem > 0
        ta_r, tc_r = np.where(has_rem, attention(rem), 0.0), np.where(has_rem, exchange(rem), 0.0)
        span = chunked_chain_span(attention(c), exchange(c), ta_r, tc_r, full, has_rem, self.hopb)
        return t.max(axis=0) + span  # start: the latest class's


# --- one ragged batch, every rank (serving) -----------------------------------------------------------
@dataclass(frozen=True)
class _BatchPlan:
    """A layer plan for one batch size, as the ragged timer needs it."""

    ops: list  # (index, op) of the plan of rank class 0, in plan order
    durations: dict  # index -> seconds [N] of every op that does not depend on KV lengths
    chain: bool  # per-request attention / all-to-all chain at indices 1 .. 2B (KVP > 1)
    hopb: bool  # chain overlapped (attention b does not wait for all-to-all b-1)
    zero_attention: tuple  # (FLOPs [N], bytes [N]) of the batched attention op at 0 tokens


class RaggedLayerTime:
    """analytic.step_time of one layer for many ragged batches, vectorised over ranks and requests.

    Every op is placed by the same LayerSchedule as the exact path, from plans cached per batch
    size and per class of ranks with equal shard shapes, except the per-request chain of KVP > 1,
    solved in closed form by `schedule.ragged_chain_ends`. Attention FLOPs and bytes are affine in
    the KV length (probed from the plan at 0 and 1 token). Under dp-ep every rank has its own
    requests (a list of N arrays of different lengths): each op's duration on a rank is that of the
    plan for the rank's own batch size.
    """

    def __init__(self, model: ModelConfig, layout: Layout, hopb: bool, timer: TimeModel, layer: int = 0):
        self.model, self.layout, self.hopb, self.timer = model, layout, hopb, timer
        self.layer, self.n = layer, layout.world_size
        self.group_max = GroupMax(layout)
        self.rank_class, self.class_rank = shard_classes(model, layout)
        costs = [[self._attention_op(self._plans(1, tokens)[c]) for c in range(len(self.class_rank))]
                 for tokens in (0, 1)]
        self.att_flops0, self.att_bytes0 = self._per_rank([o.flops for o in costs[0]]), self._per_rank(
            [o.hbm_bytes for o in costs[0]])
        self.att_flops1 = self._per_rank([b.flops - a.flops for a, b in zip(*costs)])  # FLOPs per token
        self.att_bytes1 = self._per_rank([b.hbm_bytes - a.hbm_bytes for a, b in zip(*costs)])  # bytes per token
        self._cache: dict[int, _BatchPlan] = {}

    def _per_rank(self, per_class: list[float]) -> np.ndarray:
        return np.array(per_class, dtype=float)[self.rank_class][:, None]  # [N, 1]

    def _plans(self, batch: int, tokens: int = 0) -> list[list[Op]]:
        kv = np.full(batch, tokens, dtype=np.int64)
        return [layer_plan(self.model, self.layout, r, self.layer, kv, self.timer.precision, self.hopb)
                for r in self.class_rank]

    @staticmethod
    def _attention_op(plan: list[Op]) -> Op:
        found = [op for op in plan if op.name is OpName.ATTENTION]
        if not found:
            raise RuntimeError("plan.layer_plan has no attention op: update timing.RaggedLayerTime")
        return found[0]

    def _batch_plan(self, batch: int) -> _BatchPlan:
        if batch not in self._cache:
            plans = self._plans(batch)
            ops = list(enumerate(plans[0]))
            chain = ops[1][1].request >= 0
            if chain and not all(plans[0][attention_index(b)].name is OpName.ATTENTION and plans[0][
                    all_to_all_index(b)].name is OpName.ALL_TO_ALL for b in range(batch)):
                raise RuntimeError("plan.layer_plan changed shape: update timing.RaggedLayerTime")
            hopb = not chain or batch == 1 or not plans[0][attention_index(1)].deps
            durations = {i: self.timer.ops_seconds([p[i] for p in plans])[self.rank_class]
                         for i, op in ops if op.name is not OpName.ATTENTION}
            attention = [self._attention_op(p) for p in plans]
            zero = (self._per_rank([o.flops for o in attention])[:, 0],
                    self._per_rank([o.hbm_bytes for o in attention])[:, 0])
            self._cache[batch] = _BatchPlan(ops, durations, chain, hopb, zero)
        return self._cache[batch]

    def _kvp_max(self, values: np.ndarray) -> np.ndarray:
        return self.group_max((Axis.KVP,), values)

    def _chain(self, plan: _BatchPlan, c0: np.ndarray, m0: np.ndarray, kv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ends of the last attention [N] and of the last all-to-all [N] of the batch."""
        att = np.asarray(self.timer.compute_seconds(self.att_flops0 + self.att_flops1 * kv,
                                                    self.att_bytes0 + self.att_bytes1 * kv))  # [N, B]
        x_s = plan.durations[all_to_all_index(0)][:, None]  # [N, 1]
        return ragged_chain_ends(att, x_s, c0, m0, plan.hopb, self._kvp_max)

    def _batched_attention_s(self, plan: _BatchPlan, kv: np.ndarray) -> np.ndarray:
        """Seconds [N] of the one attention op over the whole batch (no chain)."""
        tokens = kv.sum(axis=1)
        flops = plan.zero_attention[0] + self.att_flops1[:, 0] * tokens
        nbytes = plan.zero_attention[1] + self.att_bytes1[:, 0] * tokens
        return np.asarray(self.timer.compute_seconds(flops, nbytes))

    def __call__(self, kv_lengths: np.ndarray | list[np.ndarray]) -> float:
        """Modeled seconds of one layer for local KV lengths [N, B], or N arrays [b_r] (dp-ep)."""
        if isinstance(kv_lengths, list):
            return self._per_rank_batches(kv_lengths)
        kv = np.asarray(kv_lengths)
        batch = kv.shape[1]
        plan = self._batch_plan(batch)
        clocks = StreamClocks(self.n)
        schedule = LayerSchedule(clocks, clocks.now(), self.group_max)
        chain_end = all_to_all_index(batch - 1) if plan.chain else 0
        for index, op in plan.ops:
            if 0 < index <= chain_end:
                if index == 1:
                    c0 = np.maximum(clocks.free[Stream.COMPUTE], schedule.layer_start)
                    m0 = np.maximum(clocks.free[Stream.COMM], schedule.layer_start)
                    last_att, last_a2a = self._chain(plan, c0, m0, kv)
                    schedule.finish(attention_index(batch - 1), Stream.COMPUTE, last_att)
                    schedule.finish(chain_end, Stream.COMM, last_a2a)
                continue
            duration = self._batched_attention_s(plan, kv) if op.name is OpName.ATTENTION else plan.durations[index]
            schedule.place(index, op, duration)
        return float(schedule.layer_end().max())

    def _per_rank_batches(self, kv_lengths: list[np.ndarray]) -> float:
        """One layer when rank r holds its own b_r requests (no per-request chain: KVP = 1)."""
        sizes = np.array([len(k) for k in kv_lengths])
        tokens = np.array([float(np.sum(k)) for k in kv_lengths])
        plans = {int(b): self._batch_plan(int(b)) for b in np.unique(sizes)}
        reference = plans[int(sizes[0])]
        if any(p.chain or [op.name for _, op in p.ops] != [op.name for _, op in reference.ops]
               for p in plans.values()):
            raise RuntimeError("plan.layer_plan depends on the batch size: update timing.RaggedLayerTime")
        clocks = StreamClocks(self.n)
        schedule = LayerSchedule(clocks, clocks.now(), self.group_max)
        for index, op in reference.ops:
            if op.name is OpName.ATTENTION:
                flops = np.array([plans[b].zero_attention[0][r] for r, b in enumerate(sizes)])
                nbytes = np.array([plans[b].zero_attention[1][r] for r, b in enumerate(sizes)])
                duration = np.asarray(self.timer.compute_seconds(flops + self.att_flops1[:, 0] * tokens,
                                                                 nbytes + self.att_bytes1[:, 0] * tokens))
            else:
                duration = np.array([plans[b].durations[index][r] for r, b in enumerate(sizes)])
            schedule.place(index, op, duration)
        return float(schedule.layer_end().max())


def layer_kinds(model: ModelConfig, layers: int | None = None) -> list[tuple[int, int]]:
    """(first layer, count) of each kind of layer (dense, MoE) among the first `layers` (default:
    all): layers of one kind take the same time once a step is under way."""
    kinds = [model.is_moe_layer(layer) for layer in range(model.num_layers if layers is None else layers)]
    return [(kinds.index(kind), kinds.count(kind)) for kind in sorted(set(kinds))]


class StepTimer:
    """analytic.step_time for ragged batches: one RaggedLayerTime per kind of layer (dense, MoE),
    each timed once and multiplied by its count, as step_time does."""

    def __init__(self, model: ModelConfig, layout: Layout, hopb: bool, timer: TimeModel, layers: int | None = None):
        self.parts = [(count, RaggedLayerTime(model, layout, hopb, timer, first))
                      for first, count in layer_kinds(model, layers)]

    def __call__(self, kv_lengths: np.ndarray | list[np.ndarray]) -> float:
        """Modeled seconds of one decode step for local KV lengths [N, B], or N arrays (dp-ep)."""
        return sum(count * timer(kv_lengths) for count, timer in self.parts)
