"""Analytic sweep of every layout and batch of each strategy: the Helix paper's simulation study.

For every GPU count up to `max_gpus`, every valid layout of each strategy (Helix KVP x TPA with
TPF x EP, with and without HOP-B; TP; PP x TP; KVP-only; DP-attention + EP) is timed at every
batch of a fine grid, with the plan (`plan.layer_plan`) and cost model (`costmodel`) of the
emulator, and kept only if its busiest GPU's weights + KV cache fit in HBM.

How it stays fast and still "the same plan":
- per layout, ranks with identical shard shapes and KV lengths form a *shard class*; the plan of
  one representative rank per class is built with `layer_plan` at batch 1 and 2, once per layer
  kind (dense, MoE);
- whole-batch ops have FLOPs, HBM bytes and collective sizes affine in the batch, so two plans
  give every batch (exact: all are integers or halves); MoE ops, whose expected experts hit is
  nonlinear, are recomputed with `plan.moe_cost` / `plan.dp_ep_expert_cost` on the batch array;
- the per-request attention -> all-to-all chain (KVP > 1) has a closed form, derived from the
  clock rules of `clock.LayerSchedule` (see `_chain_end`);
- every collective with more than one member ends at the same time on every rank in these plans
  (the all-reduce over all N, or a TPF all-reduce followed by an EP all-gather over all groups), so
  the layer time is a sum of per-class compute spans and collective times, maximised over classes
  at each collective. `tests/test_sweep.py` checks all of it against `analytic.step_time` and
  `helix-mpi model` (relative 1e-9).

PP x TP is not in the plan: it is modeled here on top of TP plans (`pp_send_time`, docs/sweep.md).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .axes import Axis
from .config import (ACTIVATION_BYTES, PRECISION_BYTES, PRECISIONS, ConfigError, Layout, ModelConfig, Strategy,
                     validate_layout)
from .costmodel import Collective, collective_time, compute_time
from .kvcache import tokens_held
from .mesh import coordinates
from .plan import (Op, OpName, dp_ep_expert_cost, expected_moe_load, ffn_weight_elements, kv_elements_per_token,
                   layer_plan, moe_cost, out_weight_elements, qkv_weight_elements)
from .sharding import RankShard, even_splits, rank_shard
from .topology import Topology

SCHEMA = "helix_mpi.sweep/1"
HELIX, HELIX_NO_HOPB, TP, PP_TP, KVP, DP_EP = "helix", "helix-no-hopb", "tp", "pp-tp", "kvp", "dp-ep"
SERIES = (HELIX, HELIX_NO_HOPB, TP, PP_TP, KVP, DP_EP)
BASELINES = (TP, PP_TP, KVP, DP_EP)
_STRATEGY_OF = {HELIX: Strategy.HELIX, HELIX_NO_HOPB: Strategy.HELIX, TP: Strategy.TP, PP_TP: Strategy.TP,
                KVP: Strategy.KVP, DP_EP: Strategy.DP_EP}
DENSE_BATCH_LIMIT = 1024  # every batch 1..1024 is on the grid; beyond, steps of BATCH_GROWTH
BATCH_GROWTH = 1.02

CONFIG_DTYPE = np.dtype([
    ("strategy", "S16"),  # one of SERIES
    ("gpus", "<i4"),  # N = KVP x TPA (x PP)
    ("kvp", "<i4"), ("tpa", "<i4"), ("tpf", "<i4"), ("ep", "<i4"), ("pp", "<i4"),
    ("batch", "<i8"),  # concurrent requests (dp-ep: N x per-GPU batch; pp-tp: PP x micro-batch)
    ("hopb", "?"),
    ("ttl_s", "<f8"),  # token-to-token latency, s
    ("tokens_per_s_per_user", "<f8"),  # 1 / TTL
    ("tokens_per_s_per_gpu", "<f8"),  # batch / TTL / gpus
    ("memory_bytes", "<f8"),  # busiest GPU: weights + KV cache at the modeled precision
])


# --- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class WhatIf:
    """Departures from the plan and the topology file, for what-if studies only (defaults: none)."""

    a2a_latency_scale: float = 1.0  # multiplies the topology's a2a_base_us and a2a_step_us
    reduce_latency_scale: float = 1.0  # multiplies ring_base/step_us and nvls_base/step_us
    a2a_chunk: int = 1  # requests per attention kernel + all-to-all under KVP: 1 = plan, 0 = whole batch

    def __post_init__(self) -> None:
        for name in ("a2a_latency_scale", "reduce_latency_scale"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.a2a_chunk, int) or self.a2a_chunk < 0:
            raise ConfigError(f"--a2a-chunk must be an integer >= 0 (0: whole batch), got {self.a2a_chunk!r}")

    @property
    def is_plan(self) -> bool:
        return self == WhatIf()

    def describe(self) -> str:
        parts = [f"a2a latency x{self.a2a_latency_scale:.3g}" if self.a2a_latency_scale != 1 else "",
                 f"ring/NVLS latency x{self.reduce_latency_scale:.3g}" if self.reduce_latency_scale != 1 else "",
                 {1: "", 0: "one all-to-all per batch"}.get(self.a2a_chunk,
                                                            f"{self.a2a_chunk} requests per all-to-all")]
        return ", ".join(p for p in parts if p) or "plan"


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep: one model at one context on one topology."""

    model: ModelConfig
    topo: Topology
    context: int  # tokens already cached per request (S)
    precision: str = "fp4"
    max_gpus: int = 72
    max_batch: int = 4096  # concurrent requests
    strategies: tuple[str, ...] = SERIES
    tokens_per_block: int = 16  # KV round robin block, as `helix-mpi model`
    whatif: WhatIf = WhatIf()

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("max_gpus", "max_batch", "tokens_per_block"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.context < 0:
            raise ConfigError(f"--context must be >= 0, got {self.context}")
        unknown = [s for s in self.strategies if s not in SERIES]
        if unknown or not self.strategies:
            name = unknown[0] if unknown else "(none)"
            raise ConfigError(f"unknown strategy {name!r}: choose among {', '.join(SERIES)}")

    @property
    def tokens(self) -> int:
        """KV tokens per request during the timed step: the context plus the new token (as `model`)."""
        return self.context + 1

    def timing_topology(self) -> Topology:
        return whatif_topology(self.topo, self.whatif)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "topology": self.topo.to_dict(), "context": self.context,
                "precision": self.precision, "max_gpus": self.max_gpus, "max_batch": self.max_batch,
                "strategies": list(self.strategies), "tokens_per_block": self.tokens_per_block,
                "whatif": dataclasses.asdict(self.whatif)}


def whatif_topology(topo: Topology, whatif: WhatIf) -> Topology:
    """The topology with its collective latency terms scaled as the what-if asks."""
    if whatif.a2a_latency_scale == 1.0 and whatif.reduce_latency_scale == 1.0:
        return topo
    f, a, r = topo.fabric, whatif.a2a_latency_scale, whatif.reduce_latency_scale
    fabric = dataclasses.replace(f, a2a_base_s=f.a2a_base_s * a, a2a_step_s=f.a2a_step_s * a,
                                 ring_base_s=f.ring_base_s * r, ring_step_s=f.ring_step_s * r,
                                 nvls_base_s=f.nvls_base_s * r, nvls_step_s=f.nvls_step_s * r)
    return dataclasses.replace(topo, fabric=fabric, name=f"{topo.name} ({whatif.describe()})")


def batch_grid(max_batch: int) -> np.ndarray:
    """Every batch 1..1024, then steps of 2 % up to max_batch [n] int64."""
    dense = np.arange(1, min(max_batch, DENSE_BATCH_LIMIT) + 1)
    if max_batch <= DENSE_BATCH_LIMIT:
        return dense.astype(np.int64)
    steps = int(np.ceil(np.log(max_batch / DENSE_BATCH_LIMIT) / np.log(BATCH_GROWTH)))
    sparse = np.round(DENSE_BATCH_LIMIT * BATCH_GROWTH ** np.arange(1, steps + 1))
    return np.unique(np.concatenate([dense, np.minimum(sparse, max_batch)])).astype(np.int64)


# --- layouts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One layout of one strategy (series); pp > 1 only for pp-tp (stages of a TP layout)."""

    series: str
    layout: Layout
    pp: int = 1

    @property
    def hopb(self) -> bool:
        return self.series == HELIX

    @property
    def gpus(self) -> int:
        return self.layout.world_size * self.pp

    @property
    def per_gpu_batch(self) -> bool:
        """dp-ep: the grid is over each GPU's own requests."""
        return self.layout.strategy is Strategy.DP_EP


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _valid(model: ModelConfig, layout: Layout) -> bool:
    try:
        validate_layout(model, layout, layout.world_size)
    except ConfigError:
        return False
    return True


def _layouts(series: str, model: ModelConfig, n: int) -> list[tuple[Layout, int]]:
    """(layout, pp) of one series on n GPUs; Helix and KVP-only need KVP >= 2 (KVP = 1 is TP)."""
    K, moe = model.num_kv_heads, model.moe
    if series in (HELIX, HELIX_NO_HOPB):
        eps = [e for e in _divisors(n) if moe and moe.n_routed_experts % e == 0] if moe else [1]
        return [(Layout(n // tpa, tpa, n // ep, ep, Strategy.HELIX), 1)
                for tpa in _divisors(n) if K % tpa == 0 and n // tpa >= 2 for ep in eps]
    if series == KVP:
        return [(Layout(n // tpa, tpa, tpa, 1, Strategy.KVP), 1)
                for tpa in _divisors(n) if K % tpa == 0 and n // tpa >= 2]
    if series == TP:
        return [(Layout(1, n, n, 1, Strategy.TP), 1)]
    if series == PP_TP:
        return [(Layout(1, t, t, 1, Strategy.TP), n // t) for t in _divisors(n) if 2 <= n // t <= model.num_layers]
    return [(Layout(1, 1, 1, n, Strategy.DP_EP), 1)]


def candidates(spec: SweepSpec) -> list[Candidate]:
    """Every valid layout of the requested strategies on 1..max_gpus GPUs."""
    return [Candidate(series, layout, pp)
            for n in range(1, spec.max_gpus + 1) for series in spec.strategies
            for layout, pp in _layouts(series, spec.model, n) if _valid(spec.model, layout)]


# --- shard classes and memory --------------------------------------------------------------------
@dataclass(frozen=True)
class ShardClass:
    """Ranks of a layout with identical shard shapes and KV tokens per request."""

    rank: int  # representative rank
    count: int
    held: int  # KV tokens per request on these ranks, incl. the new one (dp-ep: whole requests)
    shard: RankShard = field(compare=False)


def _shard_key(shard: RankShard, held: int) -> tuple[int, ...]:
    return (len(shard.q_heads), len(shard.kv_heads), len(shard.combine_heads), len(shard.ffn_cols),
            len(shard.experts), len(shard.expert_cols), len(shard.shared_cols), held)


@functools.lru_cache(maxsize=4096)
def shard_classes(model: ModelConfig, layout: Layout, tokens: int, tokens_per_block: int) -> tuple[ShardClass, ...]:
    """The distinct (shard shape, KV length) classes of a layout's ranks, first rank of each
    (cached: Helix with and without HOP-B, and what-if sweeps, share layouts)."""
    dp = layout.strategy is Strategy.DP_EP
    held = None if dp else tokens_held(tokens, layout.kvp, tokens_per_block)
    found: dict[tuple[int, ...], list] = {}
    for rank in range(layout.world_size):
        shard = rank_shard(model, layout, rank)
        h = tokens if dp else int(held[coordinates(layout, rank)[Axis.KVP]])
        entry = found.setdefault(_shard_key(shard, h), [rank, 0, h, shard])
        entry[1] += 1
    return tuple(ShardClass(*entry) for entry in found.values())


def class_memory(model: ModelConfig, cls: ShardClass, layers: Iterable[int], precision: str) -> tuple[float, float]:
    """(weight bytes, KV bytes per request held) of one class over `layers`: memory.rank_memory's
    formula restricted to a layer range (a PP stage)."""
    shard, wb, layers = cls.shard, PRECISION_BYTES[precision], list(layers)
    attention = qkv_weight_elements(model, shard) + out_weight_elements(model, shard)
    weights = sum(attention + ffn_weight_elements(model, shard, layer) for layer in layers)
    return weights * wb, cls.held * kv_elements_per_token(model, shard) * len(layers) * wb


def peak_memory(model: ModelConfig, classes: tuple[ShardClass, ...], requests: np.ndarray, precision: str,
                pp: int = 1) -> np.ndarray:
    """Busiest GPU's weights + KV bytes [n] when each GPU holds `requests` [n] requests' KV (every
    PP stage holds its layers of all requests in flight)."""
    bounds = even_splits(model.num_layers, pp)
    peak = np.zeros(len(requests))
    for stage in range(pp):
        layers = range(int(bounds[stage]), int(bounds[stage + 1]))
        for cls in classes:
            weights, kv = class_memory(model, cls, layers, precision)
            peak = np.maximum(peak, weights + requests * kv)
    return peak


# --- closed-form layer time ----------------------------------------------------------------------
def _chain_end(t: np.ndarray, ta: np.ndarray, tc: float, batches: np.ndarray, hopb: bool) -> np.ndarray:
    """End [n] of the per-request chain attention_b -> all_to_all_b, b = 0..B-1, as LayerSchedule
    places it. t [C, n]: when each class's compute stream is free; ta [C]: one request's attention;
    tc: one all-to-all (it starts when every member's attention is done).
    HOP-B: e_b = max(e_(b-1), max_c t_c + (b+1) ta_c) + tc, whose maximum over the (convex) unrolled
    terms sits at b = 0 or b = B-1:  e = max(max_c(t_c + ta_c) + B tc, max_c(t_c + B ta_c) + tc).
    Without: attention b waits for all-to-all b-1:  e = max_c(t_c + ta_c) + tc + (B-1)(max ta + tc)."""
    first = (t + ta[:, None]).max(axis=0)
    if hopb:
        return np.maximum(first + batches * tc, (t + batches * ta[:, None]).max(axis=0) + tc)
    return first + tc + (batches - 1) * (ta.max() + tc)


def _chunked_chain_end(t: np.ndarray, attn: list[Op], a2a: Op, batches: np.ndarray, hopb: bool, chunk: int,
                       topo: Topology, precision: str) -> np.ndarray:
    """What-if (not the plan): requests exchanged `chunk` at a time (0: the whole batch), one
    attention kernel and one all-to-all per chunk; full chunks of c, then a remainder r.
    HOP-B: e = t + max(ta_c + F tc_c + tc_r, F ta_c + tc_c + tc_r, F ta_c + ta_r + tc_r) (F full
    chunks; the last term only when r > 0); without: e = t + F (ta_c + tc_c) + ta_r + tc_r.
    Attention per chunk is the slowest class's; start t is the latest class's."""
    c = batches if chunk == 0 else np.minimum(chunk, batches)
    full, rem = batches // c, batches % c

    def attention(k: np.ndarray) -> np.ndarray:
        return np.max([compute_time(k * op.flops, k * op.hbm_bytes, topo, precision) for op in attn], axis=0)

    def exchange(k: np.ndarray) -> np.ndarray:
        return collective_time(a2a.collective, k * a2a.nbytes, a2a.group_size, topo) * np.ones(len(k))

    ta_c, tc_c = attention(c), exchange(c)
    has_rem = rem > 0
    ta_r, tc_r = np.where(has_rem, attention(rem), 0.0), np.where(has_rem, exchange(rem), 0.0)
    if hopb:
        span = np.maximum(ta_c + full * tc_c + tc_r, full * ta_c + tc_c + tc_r)
        span = np.where(has_rem, np.maximum(span, full * ta_c + ta_r + tc_r), span)
    else:
        span = full * (ta_c + tc_c) + ta_r + tc_r
    return t.max(axis=0) + span


class LayerKind:
    """Time of one kind of layer (dense or MoE) of one layout over a batch array, from the plans of
    one rank per shard class at batch 1 and 2."""

    def __init__(self, spec: SweepSpec, layout: Layout, classes: tuple[ShardClass, ...], layer: int, hopb: bool,
                 topo: Topology):
        self.spec, self.layout, self.classes, self.layer = spec, layout, classes, layer
        self.hopb, self.topo = hopb, topo
        self.moe_layer = spec.model.is_moe_layer(layer)
        self.plans = [[self._plan(cls, batch) for cls in classes] for batch in (1, 2)]
        names = {tuple(op.name for op in plan) for plan in self.plans[0]}
        if len(names) != 1:
            raise AssertionError(f"shard classes of {layout} have different plans: {names}")

    def _plan(self, cls: ShardClass, batch: int) -> list[Op]:
        ops = layer_plan(self.spec.model, self.layout, cls.rank, self.layer, np.full(batch, cls.held, dtype=np.int64),
                         self.spec.precision, self.hopb)
        return [op for op in ops if op.request <= 0]  # request 0 stands for every request of the chain

    def time(self, batches: np.ndarray) -> np.ndarray:
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
                duration = collective_time(op.collective, size, op.group_size, self.topo)
                t = (t.max(axis=0, keepdims=True) if op.group_size > 1 else t) + duration
            else:
                t = t + np.array([self._compute(c, index, b) for c in range(len(self.classes))])
            index += 1
        return t.max(axis=0)

    def _compute(self, c: int, index: int, b: np.ndarray) -> np.ndarray:
        op1, op2 = self.plans[0][c][index], self.plans[1][c][index]
        model, cls, wb = self.spec.model, self.classes[c], PRECISION_BYTES[self.spec.precision]
        if op1.name is OpName.MOE and self.moe_layer and self.layout.strategy is not Strategy.DP_EP:
            flops, nbytes = moe_cost(model, cls.shard, b, *expected_moe_load(model, len(cls.shard.experts), b), wb)
        elif op1.name is OpName.EXPERTS:  # dp-ep: the held experts' load from every rank's tokens
            tokens = b * self.layout.world_size
            load = expected_moe_load(model, len(cls.shard.experts), tokens)
            flops, nbytes = dp_ep_expert_cost(model, cls.shard, *load, wb)
        else:  # affine in the batch: exact from batch 1 and 2
            flops = op1.flops + (b - 1) * (op2.flops - op1.flops)
            nbytes = op1.hbm_bytes + (b - 1) * (op2.hbm_bytes - op1.hbm_bytes)
        return compute_time(flops, nbytes, self.topo, self.spec.precision) * np.ones(len(b))

    def _chain(self, t: np.ndarray, index: int, b: np.ndarray) -> np.ndarray:
        attn = [plan[index] for plan in self.plans[0]]
        a2a = self.plans[0][0][index + 1]
        chunk = self.spec.whatif.a2a_chunk
        if chunk == 1:
            ta = np.array([compute_time(op.flops, op.hbm_bytes, self.topo, self.spec.precision) for op in attn])
            tc = collective_time(a2a.collective, a2a.nbytes, a2a.group_size, self.topo)
            return _chain_end(t, ta, tc, b, self.hopb)
        return _chunked_chain_end(t, attn, a2a, b, self.hopb, chunk, self.topo, self.spec.precision)


def pp_send_time(micro_batch: np.ndarray, model: ModelConfig, topo: Topology) -> np.ndarray:
    """One stage-to-stage activation send of micro_batch x H bf16 values, modeled as a 2-rank direct
    all-to-all in which each rank sends that much to the other:
    a2a_base + a2a_step + B H 2 / link_bw (seconds [n])."""
    nbytes = micro_batch * model.hidden_size * ACTIVATION_BYTES
    return collective_time(Collective.ALL_TO_ALL, 2 * nbytes, 2, topo) * np.ones(len(micro_batch))


def layer_counts(model: ModelConfig) -> dict[bool, int]:
    """Layers of each kind: {is_moe: count}."""
    kinds = [model.is_moe_layer(layer) for layer in range(model.num_layers)]
    return {kind: kinds.count(kind) for kind in set(kinds)}


def candidate_ttl(spec: SweepSpec, cand: Candidate, classes: tuple[ShardClass, ...], batches: np.ndarray) -> np.ndarray:
    """Token-to-token latency [n] of a candidate at each grid batch (per-GPU batch under dp-ep,
    micro-batch under pp-tp), seconds: every layer in sequence (+ PP - 1 stage sends)."""
    topo = spec.timing_topology()
    ttl = np.zeros(len(batches))
    for kind, count in layer_counts(spec.model).items():
        first = next(layer for layer in range(spec.model.num_layers) if spec.model.is_moe_layer(layer) == kind)
        ttl = ttl + count * LayerKind(spec, cand.layout, classes, first, cand.hopb, topo).time(batches)
    if cand.pp > 1:
        ttl = ttl + (cand.pp - 1) * pp_send_time(batches.astype(np.float64), spec.model, topo)
    return ttl


# --- the sweep ---------------------------------------------------------------------------------
def evaluate(spec: SweepSpec, cand: Candidate, grid: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows of the configurations that fit in HBM, configurations timed) of one candidate."""
    per_unit = cand.layout.world_size if cand.per_gpu_batch else cand.pp  # requests per grid step
    batches = grid[grid * per_unit <= spec.max_batch]
    if len(batches) == 0:
        return np.zeros(0, CONFIG_DTYPE), 0
    classes = shard_classes(spec.model, cand.layout, spec.tokens, spec.tokens_per_block)
    held_requests = batches if cand.per_gpu_batch else batches * cand.pp  # requests whose KV each GPU holds
    memory = peak_memory(spec.model, classes, held_requests.astype(np.float64), spec.precision, cand.pp)
    ttl = candidate_ttl(spec, cand, classes, batches)
    fits = memory <= spec.topo.gpu.hbm_bytes
    rows = np.zeros(int(fits.sum()), CONFIG_DTYPE)
    layout = cand.layout
    rows["strategy"], rows["gpus"], rows["pp"], rows["hopb"] = cand.series, cand.gpus, cand.pp, cand.hopb
    rows["kvp"], rows["tpa"], rows["tpf"], rows["ep"] = layout.kvp, layout.tpa, layout.tpf, layout.ep
    rows["batch"] = batches[fits] * per_unit
    rows["ttl_s"], rows["memory_bytes"] = ttl[fits], memory[fits]
    rows["tokens_per_s_per_user"] = 1.0 / ttl[fits]
    rows["tokens_per_s_per_gpu"] = rows["batch"] / ttl[fits] / cand.gpus
    return rows, len(batches)


@dataclass(frozen=True)
class SweepResult:
    spec: SweepSpec
    configs: np.ndarray  # CONFIG_DTYPE rows that fit in HBM
    layouts: int  # candidates (layouts x series) enumerated
    timed: int  # configurations timed (layouts x batches), before the memory filter
    seconds: float  # wall time of the sweep on this machine

    def summary(self) -> dict[str, Any]:
        per_series = {}
        for series in self.spec.strategies:
            rows = self.configs[self.configs["strategy"] == series.encode()]
            found = len(rows) > 0
            per_series[series] = {
                "configs": int(len(rows)),
                "min_ttl_s": float(rows["ttl_s"].min()) if found else None,
                "max_tokens_per_s_per_gpu": float(rows["tokens_per_s_per_gpu"].max()) if found else None}
        return {"model": self.spec.model.name, "context": self.spec.context,
                "topology": self.spec.timing_topology().name,
                "precision": self.spec.precision, "max_gpus": self.spec.max_gpus, "layouts": self.layouts,
                "configs": self.timed, "fitting": int(len(self.configs)), "seconds": self.seconds,
                "configs_per_s": self.timed / self.seconds if self.seconds > 0 else None,
                "whatif": dataclasses.asdict(self.spec.whatif), "series": per_series}


def nothing_fits(spec: SweepSpec, timed: int) -> str:
    """Why no configuration fits, in one line: one request's KV cache against the HBM of the GPUs."""
    model = spec.model
    full = rank_shard(model, Layout(kvp=1, tpa=1, tpf=1), 0)
    cache = spec.tokens * kv_elements_per_token(model, full) * model.num_layers * PRECISION_BYTES[spec.precision]
    hbm = spec.topo.gpu.hbm_bytes / 1e9
    return (f"none of the {timed:,} configurations fits in the {hbm:,.0f} GB of HBM of a GPU: "
            f"one request's KV cache at {spec.context:,} tokens is {cache / 1e9:,.1f} GB ({model.name}, "
            f"{spec.precision}), at best {cache / spec.max_gpus / 1e9:,.1f} GB per GPU over {spec.max_gpus} GPUs: use "
            "a shorter --context, a larger --max-gpus or a lower --precision")


def run_sweep(spec: SweepSpec, progress: Callable[[int], None] | None = None) -> SweepResult:
    """Time every candidate at every grid batch; keep what fits. `progress(k)`: k more layouts done."""
    start = time.perf_counter()
    grid = batch_grid(spec.max_batch)
    found = candidates(spec)
    rows, timed = [np.zeros(0, CONFIG_DTYPE)], 0
    for cand in found:
        fitting, count = evaluate(spec, cand, grid)
        rows.append(fitting)
        timed += count
        if progress is not None:
            progress(1)
    return SweepResult(spec, np.concatenate(rows), len(found), timed, time.perf_counter() - start)


# --- HDF5 ----------------------------------------------------------------------------------------
class SweepFileError(ValueError):
    """Not a readable sweep file; one line."""


def write_sweep(path: str | os.PathLike, result: SweepResult, frontiers: dict[str, np.ndarray]) -> None:
    """/configs (every fitting configuration), /frontier/<series> (its Pareto points), root attrs
    `schema`, `spec` and `summary` (JSON). The HDF5 file is built in memory (a few MB) and written
    in one go under NAME.partial, renamed when complete (outputs.exclusive_output: a second writer
    of the same file refuses; a failed write, such as a full disk, leaves nothing)."""
    import io

    import h5py

    from .outputs import exclusive_output, write_failure

    image = io.BytesIO()
    with h5py.File(image, "w") as file:
        file.attrs["schema"] = SCHEMA
        file.attrs["spec"] = json.dumps(result.spec.to_dict())
        file.attrs["summary"] = json.dumps(result.summary())
        file.create_dataset("configs", data=result.configs, compression="gzip", shuffle=True)
        group = file.create_group("frontier")
        for series, rows in frontiers.items():
            group.create_dataset(series, data=rows)
    with exclusive_output(path) as partial:
        try:
            partial.write_bytes(image.getbuffer())
        except OSError as exc:
            raise write_failure(path, exc) from None


@dataclass(frozen=True)
class SweepFile:
    configs: np.ndarray
    frontiers: dict[str, np.ndarray]
    spec: dict[str, Any]
    summary: dict[str, Any]


def read_sweep(path: str | os.PathLike) -> SweepFile:
    import h5py

    if not Path(path).is_file():
        raise SweepFileError(f"{path}: no such file (write one with `helix-mpi sweep -o {path}`)")
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("schema") != SCHEMA:
                raise SweepFileError(f"{path}: not a helix-mpi sweep file (schema {file.attrs.get('schema')!r})")
            fronts = {name: file["frontier"][name][...] for name in file["frontier"]}
            return SweepFile(file["configs"][...], fronts, json.loads(file.attrs["spec"]),
                             json.loads(file.attrs["summary"]))
    except OSError as exc:
        raise SweepFileError(f"{path}: not a readable HDF5 file ({exc})") from None
