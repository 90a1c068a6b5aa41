"""Analytic decode-only serving of a trace with continuous batching, at full model size.

No MPI and no data: every decode step is timed by the same plan and clocks as `analytic.layer_time`
(DESIGN.md section 2), for the ragged batch the scheduler holds at that step.

Model (all times in modeled seconds):
- Prefill runs elsewhere (a prefill pool). A request waits in a FIFO queue from its arrival until
  its KV fits in HBM (and, if given, until fewer than `max_batch` requests are held). Admission
  happens at step boundaries, strictly FIFO (the head blocks the requests behind it). On
  admission the request reserves the HBM of its *final* KV (input + output tokens) on every rank,
  so a running request never runs out of memory.
- KV transfer: after admission its prompt KV is copied into the decode ranks. Every rank receives
  its own shard (its round-robin tokens x its KV heads x all layers) concurrently over its own
  link: t = latency + max-shard bytes / bandwidth, over the scale-out NIC (`kv_transfer =
  "scale_out"`, prefill outside the NVLink domain, the default), over NVLink ("nvlink", prefill
  inside the domain) or free ("none"). The transfer is charged to the request's queue time, never
  to a decode step: the request joins the batch at the first step boundary after it completes.
- Decode: each step decodes one token of every request in the batch; the step takes
  model.num_layers * layer_time(kv_lengths [N, B]), where kv_lengths are each rank's tokens of
  each request *including the step's new token*. Request b's token p lives on KVP rank
  (p // tokens_per_block) % KVP, counted from its own position 0 (kvcache.tokens_held). A request
  leaves after `output_tokens` steps and frees its KV. Requests arriving during a step join at
  the next step.

Metrics: TTL (time-to-token) of a request = (end of its last step - start of its first step) /
output_tokens, i.e. the mean time between its tokens; queue time = start of its first step -
arrival; tokens/s/GPU = generated tokens / makespan / N; KV imbalance = max / mean over KVP ranks
of the batch's KV tokens at a step, reported as the median over steps whose mean context exceeds
`long_context_tokens`.

`LayerTimer` is a vectorised closed form of `analytic.layer_time` for the Helix dense plan (which
builds Python plans for every rank and takes ~0.35 s for 64 ranks x 100 requests);
tests/test_workload.py checks that both agree to 1e-12 on random ragged batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .axes import Axis, Stream
from .clock import LayerSchedule, StreamClocks, op_duration
from .config import PRECISION_BYTES, Layout, ModelConfig, Strategy, validate_layout
from .costmodel import compute_time
from .mesh import coordinates, group_colors
from .plan import Op, OpName, all_to_all_index, attention_index, layer_plan
from .sharding import rank_shard
from .topology import Topology
from .workload import Workload

KV_TRANSFER = ("scale_out", "nvlink", "none")
LONG_CONTEXT_TOKENS = 100_000  # "long" contexts for the KV-imbalance figure
MAX_SAMPLES = 1000  # points kept in each time series


class ServingError(ValueError):
    """A serving setup that cannot run; the message is one line: what and how to fix it."""


# --- memory -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryModel:
    """HBM use of one GPU (the fullest rank) for a dense GQA model under a layout."""

    hbm_bytes: float  # capacity, bytes
    weight_bytes: float  # all layers' weight shards, bytes (max over ranks)
    kv_bytes_per_token: float  # bytes per KV token a rank holds: 2 (K,V) x local KV heads x D x precision x layers

    @property
    def capacity_tokens(self) -> int:
        """KV tokens a rank can hold next to its weights."""
        return max(0, math.floor((self.hbm_bytes - self.weight_bytes) / self.kv_bytes_per_token))

    def used_bytes(self, tokens_held: float) -> float:
        return self.weight_bytes + tokens_held * self.kv_bytes_per_token


def _check_dense_gqa(model: ModelConfig) -> None:
    if model.mla is not None or model.moe is not None:
        raise ServingError(f"serving models dense GQA models only; {model.name} has MLA or MoE layers")


def weight_bytes_per_gpu(model: ModelConfig, layout: Layout, precision: str) -> float:
    """Bytes of the weight shards the fullest rank holds, all layers (embeddings not modeled).

    Exact shards (sharding.rank_shard): W_Q/W_K/W_V of its heads (under Helix replicated over the
    KVP ranks of its TPA group), W_O rows of the heads it combines, W_gate/W_up/W_down of its FFN
    columns, two RMSNorm vectors. For KVP = 1 this is the layer's weights / N x layers.
    """
    _check_dense_gqa(model)
    H, D = model.hidden_size, model.head_dim
    per_rank = []
    for rank in range(layout.world_size):
        s = rank_shard(model, layout, rank)
        qkv = H * (len(s.q_heads) + 2 * len(s.kv_heads)) * D
        per_rank.append(qkv + len(s.combine_heads) * D * H + 3 * H * len(s.ffn_cols) + 2 * H)
    return max(per_rank) * PRECISION_BYTES[precision] * model.num_layers


def kv_bytes_per_token_per_gpu(model: ModelConfig, layout: Layout, precision: str) -> float:
    """Bytes one KV token costs the rank that holds it: K and V of its KV heads, all layers."""
    _check_dense_gqa(model)
    kv_heads = max(len(rank_shard(model, layout, r).kv_heads) for r in range(layout.world_size))
    return 2.0 * kv_heads * model.head_dim * PRECISION_BYTES[precision] * model.num_layers


def memory_model(model: ModelConfig, layout: Layout, precision: str, topo: Topology) -> MemoryModel:
    return MemoryModel(topo.gpu.hbm_bytes, weight_bytes_per_gpu(model, layout, precision),
                       kv_bytes_per_token_per_gpu(model, layout, precision))


def hbm_bytes_per_gpu(model: ModelConfig, layout: Layout, precision: str, tokens_held: float,
                      topo: Topology) -> float:
    """Weights + KV bytes of a rank holding `tokens_held` KV tokens."""
    return memory_model(model, layout, precision, topo).used_bytes(tokens_held)


def tokens_held_batch(lengths: np.ndarray, kvp: int, tokens_per_block: int) -> np.ndarray:
    """kvcache.tokens_held for many requests at once: tokens of each request per KVP rank [KVP, B]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rounds, rest = np.divmod(lengths, tokens_per_block * kvp)
    first = np.arange(kvp, dtype=np.int64)[:, None] * tokens_per_block  # first offset of each rank's block
    return rounds * tokens_per_block + np.clip(rest - first, 0, tokens_per_block)


# --- fast layer time ------------------------------------------------------------------------------
class _GroupMax:
    """Per-group max of ready times [N] or [N, B] (ranks sharing a color form a group)."""

    def __init__(self, layout: Layout):
        self.layout, self.cache = layout, {}

    def members(self, axes: tuple[Axis, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(members [G, size] of each group, group of each rank [N])."""
        if axes not in self.cache:
            _, group_of = np.unique(group_colors(self.layout, axes), return_inverse=True)
            order = np.argsort(group_of, kind="stable")
            self.cache[axes] = (order.reshape(group_of.max() + 1, -1), group_of)
        return self.cache[axes]

    def __call__(self, axes: tuple[Axis, ...], ready: np.ndarray) -> np.ndarray:
        members, group_of = self.members(axes)
        return ready[members].max(axis=1)[group_of]


@dataclass(frozen=True)
class _BatchPlan:
    """A layer plan for one batch size, as the timer needs it."""

    ops: list  # (index, op) of the plan of rank class 0, in plan order
    durations: dict  # index -> seconds [N] of every op that does not depend on KV lengths
    chain: bool  # per-request attention / all-to-all chain at indices 1 .. 2B (KVP > 1)
    hopb: bool  # chain overlapped (attention b does not wait for all-to-all b-1)
    zero_attention: tuple  # (FLOPs [N], bytes [N]) of the batched attention op at 0 tokens


class LayerTimer:
    """analytic.layer_time for many ragged batches, vectorised over ranks and requests.

    Every op is placed by the same LayerSchedule as analytic.layer_time, from plans cached per
    batch size and per class of ranks with equal shard shapes, except the per-request chain of
    KVP > 1 (attention b on the compute stream, its all-to-all in the KVP group on the comm
    stream), solved in closed form (G = max over the KVP group, C0/M0 = stream clocks before it):
      HOP-B:    A_b = C0 + sum_{j<=b} t_att_j;   X_b = max(X_{b-1}, G(A_b)) + t_a2a, X_-1 = G(M0)
                => X_b = max(G(M0), cummax_{j<=b} (G(A_j) - j t_a2a)) + (b+1) t_a2a
      no HOP-B: A_b = X_{b-1} + t_att_b (b >= 1);  X_b = X_{b-1} + G(t_att_b) + t_a2a
    Attention FLOPs and bytes are affine in the KV length (probed from the plan at 0 and 1 token).
    """

    def __init__(self, model: ModelConfig, layout: Layout, precision: str, hopb: bool, topo: Topology,
                 layer: int = 0):
        self.model, self.layout, self.precision, self.hopb, self.topo = model, layout, precision, hopb, topo
        self.layer, self.n = layer, layout.world_size
        self.group_max = _GroupMax(layout)
        self.rank_class, self.class_rank = self._rank_classes()
        costs = [[self._attention_op(self._plans(1, tokens)[c]) for c in range(len(self.class_rank))]
                 for tokens in (0, 1)]
        self.att_flops0, self.att_bytes0 = self._per_rank([o.flops for o in costs[0]]), self._per_rank(
            [o.hbm_bytes for o in costs[0]])
        self.att_flops1 = self._per_rank([b.flops - a.flops for a, b in zip(*costs)])  # FLOPs per token
        self.att_bytes1 = self._per_rank([b.hbm_bytes - a.hbm_bytes for a, b in zip(*costs)])  # bytes per token
        self._cache: dict[int, _BatchPlan] = {}

    def _rank_classes(self) -> tuple[np.ndarray, list[int]]:
        """Class of each rank [N] (equal shard shapes) and one representative rank per class."""
        keys: dict[tuple, int] = {}
        rank_class = np.empty(self.n, dtype=np.int64)
        for r in range(self.n):
            s = rank_shard(self.model, self.layout, r)
            key = tuple(len(x) for x in (s.q_heads, s.kv_heads, s.combine_heads, s.ffn_cols, s.experts,
                                         s.expert_cols, s.shared_cols))
            rank_class[r] = keys.setdefault(key, len(keys))
        return rank_class, [int(np.flatnonzero(rank_class == c)[0]) for c in range(len(keys))]

    def _per_rank(self, per_class: list[float]) -> np.ndarray:
        return np.array(per_class, dtype=float)[self.rank_class][:, None]  # [N, 1]

    def _plans(self, batch: int, tokens: int = 0) -> list[list[Op]]:
        kv = np.full(batch, tokens, dtype=np.int64)
        return [layer_plan(self.model, self.layout, r, self.layer, kv, self.precision, self.hopb)
                for r in self.class_rank]

    @staticmethod
    def _attention_op(plan: list[Op]) -> Op:
        found = [op for op in plan if op.name is OpName.ATTENTION]
        if not found:
            raise RuntimeError("plan.layer_plan has no attention op: update serving.LayerTimer (or use exact=True)")
        return found[0]

    def _batch_plan(self, batch: int) -> _BatchPlan:
        if batch not in self._cache:
            plans = self._plans(batch)
            ops = list(enumerate(plans[0]))
            chain = ops[1][1].request >= 0
            if chain and not all(plans[0][attention_index(b)].name is OpName.ATTENTION and plans[0][
                    all_to_all_index(b)].name is OpName.ALL_TO_ALL for b in range(batch)):
                raise RuntimeError("plan.layer_plan changed shape: update serving.LayerTimer (or use exact=True)")
            hopb = not chain or batch == 1 or not plans[0][attention_index(1)].deps
            durations = {i: np.array([op_duration(p[i], self.topo, self.precision) for p in plans])[self.rank_class]
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
        att = np.asarray(compute_time(self.att_flops0 + self.att_flops1 * kv, self.att_bytes0 + self.att_bytes1 * kv,
                                      self.topo, self.precision))  # [N, B]
        x_s = plan.durations[all_to_all_index(0)][:, None]  # [N, 1]
        if plan.hopb:
            ends = np.cumsum(np.concatenate([c0[:, None], att], axis=1), axis=1)[:, 1:]  # A_b [N, B]
            shift = np.arange(att.shape[1]) * x_s  # b * t_a2a
            top = np.maximum(np.maximum.accumulate(self._kvp_max(ends) - shift, axis=1)[:, -1], self._kvp_max(m0))
            return ends[:, -1], top + (shift[:, -1] + x_s[:, 0])
        first = (np.maximum(self._kvp_max(m0), self._kvp_max(c0 + att[:, 0])) + x_s[:, 0])[:, None]  # X_0
        steps = np.stack([self._kvp_max(att[:, 1:]), np.broadcast_to(x_s, att[:, 1:].shape)], axis=2)
        a2a = np.cumsum(np.concatenate([first, steps.reshape(self.n, -1)], axis=1), axis=1)[:, ::2]  # X_b [N, B]
        last_att = c0 + att[:, 0] if att.shape[1] == 1 else a2a[:, -2] + att[:, -1]
        return last_att, a2a[:, -1]

    def _batched_attention_s(self, plan: _BatchPlan, kv: np.ndarray) -> np.ndarray:
        """Seconds [N] of the one attention op over the whole batch (no chain)."""
        tokens = kv.sum(axis=1)
        flops = plan.zero_attention[0] + self.att_flops1[:, 0] * tokens
        nbytes = plan.zero_attention[1] + self.att_bytes1[:, 0] * tokens
        return np.asarray(compute_time(flops, nbytes, self.topo, self.precision))

    def __call__(self, kv_lengths: np.ndarray) -> float:
        """Modeled seconds of one layer for local KV lengths [N, B] (as analytic.layer_time)."""
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
                    schedule.ends[attention_index(batch - 1)] = clocks.free[Stream.COMPUTE] = last_att
                    schedule.ends[chain_end] = clocks.free[Stream.COMM] = last_a2a
                continue
            duration = self._batched_attention_s(plan, kv) if op.name is OpName.ATTENTION else plan.durations[index]
            schedule.place(index, op, duration)
        return float(schedule.layer_end().max())


# --- the serving loop ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServingSetup:
    """Everything fixed for one simulation."""

    model: ModelConfig
    layout: Layout
    topo: Topology
    precision: str = "fp4"
    hopb: bool = True
    tokens_per_block: int = 16  # KV round robin block, tokens
    max_batch: int | None = None  # cap on requests held (decoding or receiving KV); None = HBM only
    kv_transfer: str = "scale_out"  # link of the prefill -> decode KV copy: scale_out, nvlink or none
    long_context_tokens: int = LONG_CONTEXT_TOKENS

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_BYTES:
            raise ServingError(f"precision must be one of {', '.join(PRECISION_BYTES)}, got {self.precision!r}")
        if not isinstance(self.tokens_per_block, int) or self.tokens_per_block < 1:
            raise ServingError(f"tokens_per_block must be an integer >= 1, got {self.tokens_per_block!r}")
        if self.max_batch is not None and (not isinstance(self.max_batch, int) or self.max_batch < 1):
            raise ServingError(f"max_batch must be an integer >= 1 or None, got {self.max_batch!r}")
        if self.kv_transfer not in KV_TRANSFER:
            raise ServingError(f"kv_transfer must be one of {', '.join(KV_TRANSFER)}, got {self.kv_transfer!r}")
        if self.layout.strategy is Strategy.DP_EP:
            raise ServingError("serving models helix, tp and kvp layouts; dp-ep needs an MoE model")
        validate_layout(self.model, self.layout, self.layout.world_size)
        _check_dense_gqa(self.model)


def kv_transfer_s(setup: ServingSetup, shard_tokens: np.ndarray, memory: MemoryModel) -> np.ndarray:
    """Seconds to copy each request's prompt KV into the decode ranks; shard_tokens [KVP, R]."""
    if setup.kv_transfer == "none":
        return np.zeros(shard_tokens.shape[1])
    shard_bytes = shard_tokens.max(axis=0) * memory.kv_bytes_per_token  # the largest shard sets the pace
    if setup.kv_transfer == "scale_out":
        return setup.topo.scale_out.latency_s + shard_bytes / setup.topo.scale_out.bytes_per_s
    return setup.topo.fabric.a2a_base_s + shard_bytes / setup.topo.fabric.link_bytes_per_s


class _Requests:
    """Per-request arrays (index = position in the workload)."""

    def __init__(self, workload: Workload, setup: ServingSetup, memory: MemoryModel):
        reqs = workload.requests
        self.arrival = np.array([r.arrival_s for r in reqs])
        self.input = np.array([r.input_tokens for r in reqs], dtype=np.int64)
        self.output = np.array([r.output_tokens for r in reqs], dtype=np.int64)
        kvp, tpb = setup.layout.kvp, setup.tokens_per_block
        self.final_held = tokens_held_batch(self.input + self.output, kvp, tpb)  # [KVP, R] tokens reserved
        self.transfer = kv_transfer_s(setup, tokens_held_batch(self.input, kvp, tpb), memory)
        self.generated = np.zeros(len(reqs), dtype=np.int64)
        self.first_start = np.full(len(reqs), np.nan)
        self.finish = np.full(len(reqs), np.nan)


def _check_fits(reqs: _Requests, memory: MemoryModel, workload: Workload) -> None:
    if memory.capacity_tokens < 1:
        raise ServingError(f"the weights need {memory.weight_bytes / 1e9:.1f} GB per GPU, more than its "
                           f"{memory.hbm_bytes / 1e9:.1f} GB of HBM: use more ranks or a lower precision")
    need = reqs.final_held.max(axis=0)
    worst = int(np.argmax(need))
    if need[worst] > memory.capacity_tokens:
        raise ServingError(
            f"request {workload.requests[worst].index} needs {need[worst]} KV tokens per GPU but only "
            f"{memory.capacity_tokens} fit next to the weights: use more KVP ranks or a smaller context scale"
        )


@dataclass
class _Trace:
    """Per-step records (lists, turned into arrays at the end)."""

    start: list
    duration: list
    batch: list
    kv: list  # [KVP] tokens per KVP rank
    mean_context: list
    reserved_at_end: int = -1  # KV tokens still reserved when the last request left (0 if all freed)


def serve(workload: Workload, model: ModelConfig, layout: Layout, topo: Topology, precision: str = "fp4",
          hopb: bool = True, tokens_per_block: int = 16, max_batch: int | None = None,
          kv_transfer: str = "scale_out", exact: bool = False,
          long_context_tokens: int = LONG_CONTEXT_TOKENS) -> dict:
    """Simulate decode-only continuous batching of `workload`; metrics as in the module docstring.

    exact=True times steps with analytic.layer_time (slow: for checks) instead of LayerTimer.
    """
    setup = ServingSetup(model, layout, topo, precision, hopb, tokens_per_block, max_batch, kv_transfer,
                         long_context_tokens)
    memory = memory_model(model, layout, precision, topo)
    reqs = _Requests(workload, setup, memory)
    _check_fits(reqs, memory, workload)
    if exact:
        from .analytic import layer_time as exact_layer_time

        def timer(kv: np.ndarray) -> float:
            return exact_layer_time(model, layout, kv, precision, hopb, topo)
    else:
        timer = LayerTimer(model, layout, precision, hopb, topo)  # type: ignore[assignment]
    trace = _run(setup, reqs, memory, timer)
    return _metrics(setup, reqs, trace, memory)


def _run(setup: ServingSetup, reqs: _Requests, memory: MemoryModel, timer: Callable) -> _Trace:
    """The event loop: admit (FIFO), join after the KV transfer, step, free finished requests."""
    total = len(reqs.arrival)
    kvp_of_rank = np.array([coordinates(setup.layout, r)[Axis.KVP] for r in range(setup.layout.world_size)])
    reserved = np.zeros(setup.layout.kvp, dtype=np.int64)  # KV tokens reserved per KVP rank
    pending: list[tuple[float, int]] = []  # (join time, request) admitted, KV in transfer
    active: list[int] = []
    trace = _Trace([], [], [], [], [])
    now, head, done = float(reqs.arrival[0]), 0, 0
    while done < total:
        while head < total and reqs.arrival[head] <= now and (
                setup.max_batch is None or len(active) + len(pending) < setup.max_batch):
            if (reserved + reqs.final_held[:, head]).max() > memory.capacity_tokens:
                break  # strict FIFO: the head waits for memory, and so does everyone behind it
            reserved += reqs.final_held[:, head]
            pending.append((now + reqs.transfer[head], head))
            head += 1
        active += [i for t, i in pending if t <= now]
        pending = [(t, i) for t, i in pending if t > now]
        if not active:  # idle: jump to the next join or arrival
            events = [t for t, _ in pending]
            events += [reqs.arrival[head]] if head < total and reqs.arrival[head] > now else []
            if not events:
                raise RuntimeError("serving loop stalled: nothing running, nothing admissible")
            now = float(min(events))
            continue
        idx = np.array(active)
        lengths = reqs.input[idx] + reqs.generated[idx] + 1  # tokens in each request's KV, new one included
        held = tokens_held_batch(lengths, setup.layout.kvp, setup.tokens_per_block)  # [KVP, B]
        step_s = setup.model.num_layers * timer(held[kvp_of_rank])
        new = idx[reqs.generated[idx] == 0]
        reqs.first_start[new] = now
        trace.start.append(now)
        trace.duration.append(step_s)
        trace.batch.append(len(idx))
        trace.kv.append(held.sum(axis=1))
        trace.mean_context.append(float(lengths.mean()))
        now += step_s
        reqs.generated[idx] += 1
        finished = idx[reqs.generated[idx] == reqs.output[idx]]
        reqs.finish[finished] = now
        reserved -= reqs.final_held[:, finished].sum(axis=1)
        done += len(finished)
        active = [i for i in active if reqs.generated[i] < reqs.output[i]]
    trace.reserved_at_end = int(reserved.sum())
    return trace


def _subsample(values: np.ndarray, limit: int = MAX_SAMPLES) -> np.ndarray:
    if len(values) <= limit:
        return values
    return values[np.linspace(0, len(values) - 1, limit).round().astype(np.int64)]


def _metrics(setup: ServingSetup, reqs: _Requests, trace: _Trace, memory: MemoryModel) -> dict:
    ttl = (reqs.finish - reqs.first_start) / reqs.output  # mean seconds between a request's tokens
    queue = reqs.first_start - reqs.arrival
    kv = np.array(trace.kv, dtype=np.int64).reshape(len(trace.kv), setup.layout.kvp)  # [steps, KVP]
    mean_kv = kv.mean(axis=1)
    imbalance = np.where(mean_kv > 0, kv.max(axis=1) / np.where(mean_kv > 0, mean_kv, 1), 1.0)
    long = np.array(trace.mean_context) > setup.long_context_tokens
    makespan = float(reqs.finish.max() - reqs.arrival.min())
    steps_t = np.array(trace.start)
    return {
        "requests": len(reqs.arrival),
        "generated_tokens": int(reqs.output.sum()),
        "steps": len(trace.start),
        "makespan_s": makespan,
        "ttl_p50": float(np.percentile(ttl, 50)),
        "ttl_p90": float(np.percentile(ttl, 90)),
        "ttl_p99": float(np.percentile(ttl, 99)),
        "queue_mean_s": float(queue.mean()),
        "queue_p99_s": float(np.percentile(queue, 99)),
        "kv_transfer_mean_s": float(reqs.transfer.mean()),
        "tokens_per_s_per_gpu": float(reqs.output.sum() / makespan / setup.layout.world_size),
        "max_batch": int(max(trace.batch)),
        "mean_step_s": float(np.mean(trace.duration)),
        "kv_imbalance": float(np.median(imbalance[long])) if long.any() else float("nan"),
        "kv_imbalance_max": float(imbalance[long].max()) if long.any() else float("nan"),
        "long_context_steps": int(long.sum()),
        "hbm_weight_bytes_per_gpu": memory.weight_bytes,
        "kv_capacity_tokens_per_gpu": memory.capacity_tokens,
        "kv_tokens_at_end": trace.reserved_at_end,
        "ttl_s": ttl,  # [R] per request, seconds
        "queue_s": queue,  # [R]
        "time_s": _subsample(steps_t),  # step start times [<= MAX_SAMPLES]
        "batch_size": _subsample(np.array(trace.batch)),  # requests per step
        "kv_tokens_per_rank": _subsample(kv),  # [samples, KVP] KV tokens per KVP rank
        "kv_imbalance_per_step": _subsample(imbalance),
    }
