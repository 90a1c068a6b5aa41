"""Layer times in closed form, vectorised: the schedule rules of `schedule.LayerSchedule` applied to
many batches at once (the sweep) or to ragged batches (serving), without placing ops one by one.

Both start from real plans (`plan.layer_plan`) of one representative rank per class of ranks with
equal shard shapes, and take every duration from the same `TimeModel` as the exact path, so they
equal `analytic.step_time` (checked in tests/test_sweep.py and tests/test_workload.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..axes import Axis, Stream
from ..config import Layout, ModelConfig
from ..gpuops import ACTIVATION_BYTES, KernelKind, expected_hits
from ..mesh import stage_ranks
from ..plan import Op, OpName, all_to_all_index, attention_index, layer_plan, tail_plan
from ..sharding import shard_classes
from .durations import TimeModel
from .schedule import (GroupMax, LayerSchedule, StreamClocks, chunked_chain_span, ragged_chain_ends,
                       uniform_chain_end)


# --- many batches, uniform KV per class (the sweep) --------------------------------------------------
class BatchLayerTime:
    """Time of one kind of layer (dense or MoE) of one layout over an array of batches, from the
    plans of one rank per class at batch 1 and 2 (`classes`: objects with the class's first `rank`,
    its KV tokens `held` per request and its `shard`, as `sweep.ShardClass`).

    - every kernel shape field and collective size of a whole-batch op is affine in the batch, so
      two plans give every batch (exact: all are integers or halves); the expected experts hit by
      MoE kernels, nonlinear, are recomputed from their token count;
    - the per-request attention -> all-to-all chain (KVP > 1) is `schedule.uniform_chain_end`, or
      `schedule.chunked_chain_span` when `a2a_chunk` requests share an exchange (0: the batch);
    - every collective with more than one member ends at the same time on every rank in these plans
      (the all-reduce over all N, or a TPF all-reduce followed by an EP all-gather over all groups),
      so the layer time is a sum of per-class compute spans and collective times, maximised over
      classes at each collective.
    """

    def __init__(self, model: ModelConfig, layout: Layout, classes: tuple, layer: int, hopb: bool,
                 timer: TimeModel, a2a_chunk: int = 0):
        self.model, self.layout, self.classes, self.layer = model, layout, classes, layer
        self.hopb, self.timer, self.a2a_chunk = hopb, timer, a2a_chunk
        self.moe_layer = model.is_moe_layer(layer)
        self.plans = [[self._plan(cls, batch) for cls in classes] for batch in (1, 2)]
        names = {tuple(op.name for op in plan) for plan in self.plans[0]}
        if len(names) != 1:
            raise AssertionError(f"shard classes of {layout} have different plans: {names}")

    def _plan(self, cls, batch: int) -> list[Op]:
        key = ("plan", self.model, self.layout, cls.rank, self.model.is_moe_layer(self.layer), cls.held, batch,
               self.hopb, self.a2a_chunk)
        ops = self.timer.remembered(key, lambda: layer_plan(
            self.model, self.layout, cls.rank, self.layer, np.full(batch, cls.held, dtype=np.int64), self.timer.impl,
            self.hopb, self.a2a_chunk))
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
                other = self.plans[1][0][index].nbytes
                duration = self.timer.remembered(
                    ("collective", op.collective, op.nbytes, other, op.group_size, op.group_stride, self._key(b)),
                    lambda: self.timer.collective_seconds(op.collective, op.nbytes + (b - 1) * (other - op.nbytes),
                                                          op.group_size, op.group_stride))
                t = (t.max(axis=0, keepdims=True) if op.group_size > 1 else t) + duration
            else:
                t = t + np.array([self._compute(c, index, b) for c in range(len(self.classes))])
            index += 1
        return t.max(axis=0)

    def _compute(self, c: int, index: int, b: np.ndarray) -> np.ndarray:
        """Seconds [n] of compute op `index` of class c at each batch."""
        op1, op2 = self.plans[0][c][index], self.plans[1][c][index]
        return self.timer.remembered(
            ("kernels", op1.kernels, op2.kernels, self._key(b)),
            lambda: self.timer.kernels_seconds([with_expected_load(k1.extrapolated(k2, b))
                                                for k1, k2 in zip(op1.kernels, op2.kernels)]) * np.ones(len(b)))

    @staticmethod
    def _key(b: np.ndarray) -> bytes:
        return b.tobytes()

    def _chain(self, t: np.ndarray, index: int, b: np.ndarray) -> np.ndarray:
        attn = [plan[index] for plan in self.plans[0]]
        a2a = self.plans[0][0][index + 1]
        if self.a2a_chunk == 1:
            ta = np.array([self.timer.op_seconds(op) for op in attn])
            return uniform_chain_end(t, ta, self.timer.op_seconds(a2a), b, self.hopb)
        c = b if self.a2a_chunk == 0 else np.minimum(self.a2a_chunk, b)
        full, rem = b // c, b % c

        def attention(k: np.ndarray) -> np.ndarray:  # the slowest class's attention of k requests
            return np.max([self.timer.remembered(("chunk", op.kernels[0], self._key(k)), lambda op=op: self.timer.
                                                 kernels_seconds([replace(op.kernels[0], batch=k)]) * np.ones(len(k)))
                           for op in attn], axis=0)

        def exchange(k: np.ndarray) -> np.ndarray:
            return self.timer.remembered(
                ("exchange", a2a.collective, a2a.nbytes, a2a.group_size, a2a.group_stride, self._key(k)),
                lambda: self.timer.collective_seconds(a2a.collective, k * a2a.nbytes, a2a.group_size,
                                                      a2a.group_stride) * np.ones(len(k)))

        has_rem = rem > 0
        ta_r = np.where(has_rem, attention(np.maximum(rem, 1)), 0.0)
        tc_r = np.where(has_rem, exchange(rem), 0.0)
        span = chunked_chain_span(attention(c), exchange(c), ta_r, tc_r, full, has_rem, self.hopb)
        return t.max(axis=0) + span  # start: the latest class's


def with_expected_load(kernel):
    """A MoE kernel with the experts hit and pairs expected for its (array of) token counts."""
    if kernel.kind is not KernelKind.MOE:
        return kernel
    hit, pairs = expected_hits(kernel.experts / kernel.ep, kernel.experts, kernel.topk, kernel.tokens)
    return replace(kernel, hit=hit, pairs=pairs)


# --- ragged batches, every rank, over runs of steps (serving) ----------------------------------------
class StepKV:
    """Each rank's KV tokens in K consecutive decode steps of one batch, summed the way the ragged
    step timer reads them. Given explicitly here (one step: local lengths [N, B], or under dp-ep N
    arrays [b_r], each rank its own requests); `serving` supplies runs of steps in which every
    request gains one token per step.

    - `chunk_sums(chunks)`: tokens [N, C, K] each rank holds of the requests of each chunk
      (first request, requests) at each step;
    - dp-ep only: `rank_sizes` [N] requests per rank and `rank_sums()` [N, K] their tokens.
    Sums are exact (integers below 2**53), so sum / count is bit for bit the mean the exact path takes.
    """

    def __init__(self, kv_lengths: np.ndarray | list[np.ndarray]):
        self.steps = 1
        if isinstance(kv_lengths, list):
            self._ranks = [np.asarray(k, dtype=float) for k in kv_lengths]
            self.rank_sizes = np.array([len(k) for k in self._ranks])
            self.batch = int(self.rank_sizes.max())
        else:
            self._kv = np.asarray(kv_lengths, dtype=float)  # [N, B]
            self.rank_sizes, self.batch = None, self._kv.shape[1]

    def chunk_sums(self, chunks: list[tuple[int, int]]) -> np.ndarray:
        return np.stack([self._kv[:, first:first + count].sum(axis=1) for first, count in chunks], axis=1)[:, :, None]

    def rank_sums(self) -> np.ndarray:
        return np.array([np.add.reduce(k) if len(k) else 0.0 for k in self._ranks])[:, None]


@dataclass(frozen=True)
class _BatchPlan:
    """A layer plan for one batch size, as the ragged timer needs it."""

    ops: list  # (index, op) of the plan of rank class 0, in plan order
    durations: dict  # index -> seconds [N, 1] of every op that does not depend on KV lengths
    chunks: list  # (first request, requests) of each attention -> all-to-all exchange (KVP > 1), else []
    hopb: bool  # chain overlapped (attention of chunk k does not wait for all-to-all k-1)
    attention: list  # (kernel with tokens 0, ranks [n]): classes whose attention kernels differ only in tokens
    exchanges: np.ndarray | None  # seconds [N, C, 1] of each all-to-all of the chain

    @property
    def chain(self) -> bool:
        return bool(self.chunks)

    @property
    def chunk_sizes(self) -> np.ndarray:
        return np.array([count for _, count in self.chunks], dtype=float)


class RaggedLayerTime:
    """analytic.step_time of one layer for ragged batches, vectorised over ranks, requests and runs
    of steps (`steps`: the K steps of a `StepKV` at once, each rank's clocks [N, K]).

    Every op is placed by the same LayerSchedule as the exact path, from plans cached per batch
    size and per class of ranks with equal shard shapes, except the per-request chain of KVP > 1,
    solved in closed form by `schedule.ragged_chain_ends` (for any exchange granularity: one chunk
    of the whole batch, single requests or chunks of k). Attention kernels are timed on the real KV
    lengths (the mean over each exchange's requests in the chain, over the batch otherwise, as the
    plan does). Under dp-ep every rank has its own requests: each op's duration on a rank is that of
    the plan for the rank's own batch size.
    """

    def __init__(self, model: ModelConfig, layout: Layout, hopb: bool, timer: TimeModel, layer: int = 0,
                 a2a_chunk: int = 0, attention_memo: dict | None = None):
        self.model, self.layer, self.n, self.a2a_chunk = model, layer, layout.world_size, a2a_chunk
        self.layout, self.hopb, self.timer = layout, hopb, timer
        self.group_max = GroupMax(layout)
        # attention seconds of the current steps, shared by the layer kinds of one StepTimer (dense and
        # MoE layers run the same attention kernel on the same KV lengths)
        self.attention_memo = {} if attention_memo is None else attention_memo
        self.rank_class, self.class_rank = shard_classes(model, layout)
        self.members = [np.flatnonzero(self.rank_class == c) for c in range(len(self.class_rank))]
        self._cache: dict[int, _BatchPlan] = {}
        self._rank_durations: dict[bytes, dict] = {}  # dp-ep: per-rank batch sizes -> op durations [N, 1]

    def _plans(self, batch: int) -> list[list[Op]]:
        kv = np.ones(batch, dtype=np.int64)
        return [layer_plan(self.model, self.layout, r, self.layer, kv, self.timer.impl, self.hopb, self.a2a_chunk)
                for r in self.class_rank]

    def _batch_plan(self, batch: int) -> _BatchPlan:
        if batch not in self._cache:
            plans = self._plans(batch)
            ops = list(enumerate(plans[0]))
            attention = [[op for op in plan if op.name is OpName.ATTENTION] for plan in plans]
            if not all(attention):
                raise RuntimeError("plan.layer_plan has no attention op: update timing.RaggedLayerTime")
            chunks = [(op.request, op.requests) for _, op in ops if op.name is OpName.ATTENTION and op.request >= 0]
            if chunks and not all(plans[0][attention_index(k)].name is OpName.ATTENTION and plans[0][
                    all_to_all_index(k)].name is OpName.ALL_TO_ALL for k in range(len(chunks))):
                raise RuntimeError("plan.layer_plan changed shape: update timing.RaggedLayerTime")
            if chunks and (chunks[0][0] != 0 or sum(count for _, count in chunks) != batch):
                raise RuntimeError("plan.layer_plan's exchanges do not cover the batch: update timing.RaggedLayerTime")
            hopb = len(chunks) < 2 or not plans[0][attention_index(1)].deps
            durations = {i: np.array([self._op_seconds(p[i]) for p in plans])[self.rank_class]
                         for i, op in ops if op.name is not OpName.ATTENTION}
            groups: dict = {}  # classes whose kernels differ only in tokens are timed in one call
            for kernels, ranks in zip(attention, self.members):
                groups.setdefault(replace(kernels[0].kernels[0], tokens=0.0), []).append(ranks)
            groups = [(kernel, np.concatenate(members)) for kernel, members in groups.items()]
            exchanges = np.stack([durations[all_to_all_index(k)] for k in range(len(chunks))], axis=1)[:, :, None] \
                if chunks else None
            self._cache[batch] = _BatchPlan(ops, {i: d[:, None] for i, d in durations.items()}, chunks, hopb, groups,
                                            exchanges)
        return self._cache[batch]

    def _op_seconds(self, op: Op) -> float:
        """TimeModel.op_seconds, remembered by what times the op: shard classes and layer kinds
        share most ops (projections, exchanges, all-reduces) at each batch size."""
        key = ("op", op.collective, op.nbytes, op.group_size, op.group_stride) if op.is_collective else \
            ("op", op.kernels)
        return self.timer.remembered(key, lambda: self.timer.op_seconds(op))

    def _attention_s(self, plan: _BatchPlan, tokens: np.ndarray, batch=None) -> np.ndarray:
        """Seconds [N, ..., K] of each rank's attention kernel at `tokens` [N, ..., K] (and `batch`
        requests, default its plan's), one group of classes at a time: each has its own measured shape."""
        out = np.zeros(tokens.shape)
        for kernel, ranks in plan.attention:
            here = None if batch is None else batch[ranks]
            key = (kernel, ranks.tobytes(), tokens[ranks].tobytes(), None if here is None else here.tobytes())
            if key not in self.attention_memo:
                self.attention_memo[key] = self._kernel_steps(kernel, tokens[ranks], here)
            out[ranks] = self.attention_memo[key]
        return out

    def _kernel_steps(self, kernel, tokens: np.ndarray, batch: np.ndarray | None) -> np.ndarray:
        """Seconds [..., K] of `kernel` at tokens [..., K] (batch [..., K]), step k equal to one call
        at step k alone: a measured table is interpolated along one axis when only one coordinate
        varies within the call, so a step whose tokens are all equal while its batch sizes vary is
        timed alone (rare: exchanges of unequal size whose requests hold equal shares)."""
        def seconds(t, b):
            shaped = replace(kernel, tokens=t) if b is None else replace(kernel, tokens=t, batch=b)
            return self.timer.kernels_seconds([shaped]) * np.ones(np.shape(t))
        if batch is None or np.all(batch == batch.flat[0]):
            return seconds(tokens, batch)
        flat = tokens.reshape(-1, tokens.shape[-1])
        alone = np.all(flat == flat[:1], axis=0)  # [K] steps whose tokens are all equal
        if not alone.any():
            return seconds(tokens, batch)
        out = np.zeros(tokens.shape)
        if not alone.all():
            out[..., ~alone] = seconds(tokens[..., ~alone], batch[..., ~alone])
        for k in np.flatnonzero(alone):
            out[..., k] = seconds(tokens[..., k], batch[..., k])
        return out

    def _chain_times(self, plan: _BatchPlan, kv: StepKV) -> tuple[np.ndarray, np.ndarray]:
        """(attention [N, C, K], all-to-all [N, C, 1]) seconds of each exchange of the chain at each step."""
        sizes = plan.chunk_sizes[:, None]  # [C, 1]
        means = kv.chunk_sums(plan.chunks) / sizes  # [N, C, K]
        att = self._attention_s(plan, means, np.broadcast_to(sizes, means.shape))
        return att, plan.exchanges

    def _kvp_max(self, values: np.ndarray) -> np.ndarray:
        return self.group_max((Axis.KVP,), values)

    def __call__(self, kv_lengths: np.ndarray | list[np.ndarray]) -> float:
        """Modeled seconds of one layer for local KV lengths [N, B], or N arrays [b_r] (dp-ep)."""
        return float(self.steps(StepKV(kv_lengths))[0])

    def steps(self, kv: StepKV) -> np.ndarray:
        """Modeled seconds [K] of one layer at each of the K steps of `kv`."""
        if kv.rank_sizes is not None:
            return self._per_rank_batches(kv)
        plan = self._batch_plan(kv.batch)
        clocks = _column_clocks(self.n)
        schedule = LayerSchedule(clocks, clocks.now(), self.group_max)
        chain_end = all_to_all_index(len(plan.chunks) - 1) if plan.chain else 0
        for index, op in plan.ops:
            if 0 < index <= chain_end:
                if index == 1:
                    c0 = np.repeat(np.maximum(clocks.free[Stream.COMPUTE], schedule.layer_start), kv.steps, axis=1)
                    m0 = np.repeat(np.maximum(clocks.free[Stream.COMM], schedule.layer_start), kv.steps, axis=1)
                    att, x = self._chain_times(plan, kv)
                    last_att, last_a2a = ragged_chain_ends(att, x, c0, m0, plan.hopb, self._kvp_max)
                    schedule.finish(attention_index(len(plan.chunks) - 1), Stream.COMPUTE, last_att)
                    schedule.finish(chain_end, Stream.COMM, last_a2a)
                continue
            if op.name is OpName.ATTENTION:
                duration = self._attention_s(plan, kv.chunk_sums([(0, kv.batch)])[:, 0] / kv.batch)
            else:
                duration = plan.durations[index]
            schedule.place(index, op, duration)
        return _layer_ends(schedule, self.n, kv.steps)

    def _per_rank_batches(self, kv: StepKV) -> np.ndarray:
        """One layer at K steps when rank r holds its own b_r requests (no per-request chain: KVP = 1)."""
        sizes = kv.rank_sizes
        mean = kv.rank_sums() / np.maximum(sizes, 1)[:, None]  # [N, K]; 0 on a rank without requests
        plans = {int(b): self._batch_plan(int(b)) for b in np.unique(sizes)}
        reference = plans[int(sizes[0])]
        attention = np.zeros(mean.shape)
        for b, plan in plans.items():
            ranks = sizes == b
            attention[ranks] = self._attention_s(plan, mean)[ranks]
        durations = self._rank_durations.get(sizes.tobytes())
        if durations is None:
            if any(p.chain or [op.name for _, op in p.ops] != [op.name for _, op in reference.ops]
                   for p in plans.values()):
                raise RuntimeError("plan.layer_plan depends on the batch size: update timing.RaggedLayerTime")
            durations = {index: np.array([plans[b].durations[index][r, 0] for r, b in enumerate(sizes)])[:, None]
                         for index, op in reference.ops if op.name is not OpName.ATTENTION}
            self._rank_durations[sizes.tobytes()] = durations
        clocks = _column_clocks(self.n)
        schedule = LayerSchedule(clocks, clocks.now(), self.group_max)
        for index, op in reference.ops:
            schedule.place(index, op, attention if op.name is OpName.ATTENTION else durations[index])
        return _layer_ends(schedule, self.n, kv.steps)


def _column_clocks(n: int) -> StreamClocks:
    """Stream clocks [n, 1] of n ranks, which broadcast over the steps of a run."""
    clocks = StreamClocks(n)
    clocks.free = {stream: free[:, None] for stream, free in clocks.free.items()}
    return clocks


def _layer_ends(schedule: LayerSchedule, n: int, steps: int) -> np.ndarray:
    """End [K] of a layer placed for K steps at once: its last op on its slowest rank."""
    end = np.zeros((n, steps))
    for ends in schedule.ends.values():
        end = np.maximum(end, ends)
    return end.max(axis=0)


def layer_kinds(model: ModelConfig, layers: int | None = None) -> list[tuple[int, int]]:
    """(first layer, count) of each kind of layer (dense, MoE) among the first `layers` (default:
    all): layers of one kind take the same time once a step is under way."""
    kinds = [model.is_moe_layer(layer) for layer in range(model.num_layers if layers is None else layers)]
    return [(kinds.index(kind), kinds.count(kind)) for kind in sorted(set(kinds))]


class TailTime:
    """Seconds of the tail of a step (final norm, LM head, logits gather, sampling: `plan.tail_plan`)
    at an array of batches. Every rank runs the same tail ops in sequence (the gather's members are
    symmetric), so its time is the sum of their durations, from the plans at batch 1 and 2."""

    def __init__(self, model: ModelConfig, layout: Layout, timer: TimeModel):
        self.timer = timer
        self.plans = [tail_plan(model, layout, 0, batch, timer.impl) for batch in (1, 2)]
        self._one: dict[float, np.ndarray] = {}  # tail at one batch (serving asks for the same few again and again)

    def __call__(self, batches) -> np.ndarray:
        b = np.atleast_1d(np.asarray(batches, dtype=np.float64))
        if len(b) == 1:
            if float(b[0]) not in self._one:
                self._one[float(b[0])] = self._times(b)
            return self._one[float(b[0])].copy()
        return self._times(b)

    def _times(self, b: np.ndarray) -> np.ndarray:
        total = np.zeros(len(b))
        for op1, op2 in zip(*self.plans):
            if op1.is_collective:
                size = op1.nbytes + (b - 1) * (op2.nbytes - op1.nbytes)
                total = total + self.timer.collective_seconds(op1.collective, size, op1.group_size, op1.group_stride)
            else:
                total = total + self.timer.kernels_seconds([k1.extrapolated(k2, b) for k1, k2 in
                                                            zip(op1.kernels, op2.kernels)])
        return total


class StepTimer:
    """analytic.step_time for ragged batches: one RaggedLayerTime per kind of layer (dense, MoE),
    each timed once and multiplied by its count, as step_time does, plus the step's tail. Times one
    step (`__call__`) or the K steps of a `StepKV` at once (`steps`)."""

    def __init__(self, model: ModelConfig, layout: Layout, hopb: bool, timer: TimeModel, layers: int | None = None,
                 a2a_chunk: int = 0):
        self.attention_memo: dict = {}
        self.stages = PipelineSends(model, layout, timer)
        layout = self.stages.stage_layout
        self.parts = [(count, RaggedLayerTime(model, layout, hopb, timer, first, a2a_chunk, self.attention_memo))
                      for first, count in layer_kinds(model, layers)]
        self.tail = TailTime(model, layout, timer)

    def __call__(self, kv_lengths: np.ndarray | list[np.ndarray]) -> float:
        """Modeled seconds of one decode step for local KV lengths [N, B], or N arrays (dp-ep)."""
        return float(self.steps(StepKV(kv_lengths))[0])

    def steps(self, kv: StepKV) -> np.ndarray:
        """Modeled seconds [K] of each of the K decode steps of `kv`."""
        self.attention_memo.clear()  # these steps' KV lengths
        kv = self.stages.first_stage(kv)
        layers = sum(count * timer.steps(kv) for count, timer in self.parts)
        return layers + float(self.tail(kv.batch)[0]) + self.stages(kv.batch)


class PipelineSends:
    """What pipeline stages add to a step (strategies/pp.py): every stage runs its layers on the
    stage layout, one after the other, so a step is the layers of the stage layout, the tail, and
    the PP - 1 stage-to-stage sends of the activations [B, H] (over the network where a send leaves
    an NVLink domain: `TimeModel.pipeline_sends_seconds`). Every stage's ranks hold the same KV
    tokens (for their own layers), so the first stage's ranks stand for all. Nothing without stages."""

    def __init__(self, model: ModelConfig, layout: Layout, timer: TimeModel):
        from ..strategies import rules_for

        self.pp, self.ranks = layout.pp, stage_ranks(layout)
        self.stage_layout = rules_for(layout).stage_layout(layout)
        self._send = lambda batch: timer.pipeline_sends_seconds(layout.pp, self.ranks,
                                                                batch * model.hidden_size * ACTIVATION_BYTES)

    def __call__(self, batch: int) -> float:
        return float(self._send(batch)) if self.pp > 1 else 0.0

    def first_stage(self, kv):
        """`kv` ([N, B] lengths, a StepKV or serving's run of steps) restricted to the first stage."""
        if self.pp == 1:
            return kv
        if isinstance(kv, (np.ndarray, list)):
            return kv[:self.ranks]
        return _FirstRanks(kv, self.ranks)


class _FirstRanks:
    """A StepKV's sums of its first `ranks` ranks only."""

    def __init__(self, kv, ranks: int):
        self._kv, self._ranks = kv, ranks
        self.steps, self.batch, self.rank_sizes = kv.steps, kv.batch, None

    def chunk_sums(self, chunks: list[tuple[int, int]]) -> np.ndarray:
        return self._kv.chunk_sums(chunks)[:self._ranks]
