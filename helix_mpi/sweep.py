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
  clock rules of `timing.LayerSchedule` (`timing.BatchLayerTime`);
- every collective with more than one member ends at the same time on every rank in these plans
  (the all-reduce over all N, or a TPF all-reduce followed by an EP all-gather over all groups), so
  the layer time is a sum of per-class compute spans and collective times, maximised over classes
  at each collective. `tests/test_sweep.py` checks all of it against `analytic.step_time` and
  `helix-mpi model` (relative 1e-9).

PP x TP (series pp-tp) is the pipeline strategy (`strategies/pp.py`) with TP stages: its stage's plan
is timed as above and the PP - 1 stage sends by `TimeModel.pipeline_sends_seconds`, as `helix-mpi
model --strategy pp` places them; with PP micro-batches in flight (docs/sweep.md).
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

from .config import (PRECISION_BYTES, ConfigError, Implementation, Layout, ModelConfig, validate_layout)
from .gpuops import ACTIVATION_BYTES
from .plan import ffn_weight_elements, kv_elements_per_token, out_weight_elements, qkv_weight_elements
from .sharding import RankShard, even_splits, rank_shard, shard_classes as rank_classes
from .strategies import rules_for, rules_of
from .timing import BatchLayerTime, TailTime, TimeModel, layer_kinds
from .topology import Topology

SCHEMA = "helix_mpi.sweep/1"
HELIX, HELIX_NO_HOPB, TP, PP_TP, KVP, DP_EP = "helix", "helix-no-hopb", "tp", "pp-tp", "kvp", "dp-ep"
SERIES = (HELIX, HELIX_NO_HOPB, TP, PP_TP, KVP, DP_EP)
BASELINES = (TP, PP_TP, KVP, DP_EP)
_STRATEGY_OF = {HELIX: "helix", HELIX_NO_HOPB: "helix", TP: "tp", PP_TP: "pp", KVP: "kvp", DP_EP: "dp-ep"}
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

    a2a_latency_scale: float = 1.0  # multiplies every all-to-all's fixed latency (its time at 0 bytes)
    reduce_latency_scale: float = 1.0  # the same for all-reduce, all-gather and reduce-scatter
    a2a_chunk: int = 0  # requests per attention kernel + all-to-all under KVP: 0 = whole batch, 1 = per request

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
                 {0: "", 1: "one all-to-all per request"}.get(self.a2a_chunk,
                                                            f"{self.a2a_chunk} requests per all-to-all")]
        return ", ".join(p for p in parts if p) or "plan"


DEFAULT_MAX_GPUS = 72  # GPU counts swept without --racks: one NVL72 rack


def max_gpus_for(topo: Topology, requested: int | None, flag: str) -> int:
    """The GPU counts to sweep, 1..this: `requested` (the `flag` a user gave), else every GPU of the
    topology's racks, else DEFAULT_MAX_GPUS; refused in one line beyond the racks."""
    max_gpus = requested if requested is not None else topo.cluster_gpus or DEFAULT_MAX_GPUS
    topo.check_gpus(max_gpus, f"GPUs ({flag})")
    return max_gpus


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep: one model at one context on one topology."""

    model: ModelConfig
    topo: Topology
    context: int  # tokens already cached per request (S)
    precision: str = "fp4"  # weights
    max_gpus: int = 72
    max_batch: int = 4096  # concurrent requests
    strategies: tuple[str, ...] = SERIES
    tokens_per_block: int = 16  # KV round robin block, as `helix-mpi model`
    whatif: WhatIf = WhatIf()
    kv_precision: str = "fp8"
    comm: str = "trtllm"
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        self.implementation()  # validates the precisions and the collectives library
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

    def implementation(self) -> Implementation:
        return Implementation(self.precision, self.kv_precision, self.comm, self.cuda_graphs)

    @functools.cached_property
    def time_model(self) -> TimeModel:
        """The timing engine's model of this sweep's machine, with the what-if latency scales (one
        per sweep: it remembers the kernels it has timed over the batch grid)."""
        return TimeModel(self.topo, self.implementation(), self.whatif.a2a_latency_scale,
                         self.whatif.reduce_latency_scale)

    @property
    def machine_name(self) -> str:
        return self.topo.name if self.whatif.is_plan else f"{self.topo.name} ({self.whatif.describe()})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "topology": self.topo.to_dict(), "context": self.context,
                "precision": self.precision, "max_gpus": self.max_gpus, "max_batch": self.max_batch,
                "strategies": list(self.strategies), "tokens_per_block": self.tokens_per_block,
                "whatif": dataclasses.asdict(self.whatif), "implementation": self.implementation().to_dict()}


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
    """One layout of one strategy (series); pp > 1 only for pp-tp: `layout` is the pipeline layout
    (strategy pp), or, as advise rebuilds rows, the layout of one stage."""

    series: str
    layout: Layout
    pp: int = 1

    @property
    def hopb(self) -> bool:
        return self.series == HELIX

    @property
    def stage(self) -> Layout:
        """The layout of one pipeline stage's ranks (the layout itself without stages)."""
        return rules_for(self.layout).stage_layout(self.layout)

    @property
    def gpus(self) -> int:
        return self.stage.world_size * self.pp

    @property
    def per_gpu_batch(self) -> bool:
        """dp-ep: the grid is over each GPU's own requests."""
        return rules_for(self.layout).data_parallel


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _valid(model: ModelConfig, layout: Layout) -> bool:
    try:
        validate_layout(model, layout, layout.world_size)
    except ConfigError:
        return False
    return True


def _layouts(series: str, model: ModelConfig, n: int) -> list[tuple[Layout, int]]:
    """(layout, pp) of one series on n GPUs, as its strategy enumerates them (`strategies/`; Helix
    and KVP-only need KVP >= 2, KVP = 1 being TP); pp-tp: stages of a TP layout."""
    return [(layout, layout.pp) for layout in rules_of(_STRATEGY_OF[series]).sweep_layouts(model, n)]


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


@functools.lru_cache(maxsize=4096)
def shard_classes(model: ModelConfig, layout: Layout, tokens: int, tokens_per_block: int) -> tuple[ShardClass, ...]:
    """The distinct (shard shape, KV length) classes of a layout's ranks, first rank of each
    (cached: Helix with and without HOP-B, and what-if sweeps, share layouts)."""
    held = rules_for(layout).kv_tokens_of_ranks(tokens, layout, tokens_per_block)
    rank_class, first = rank_classes(model, layout, held)
    return tuple(ShardClass(rank, int(np.sum(rank_class == c)), int(held[rank]), rank_shard(model, layout, rank))
                 for c, rank in enumerate(first))


def class_memory(model: ModelConfig, cls: ShardClass, layers: Iterable[int], precision: str,
                 kv_precision: str | None = None) -> tuple[float, float]:
    """(weight bytes, KV bytes per request held) of one class over `layers`: memory.rank_memory's
    formula restricted to a layer range (a PP stage)."""
    shard, wb, layers = cls.shard, PRECISION_BYTES[precision], list(layers)
    attention = qkv_weight_elements(model, shard) + out_weight_elements(model, shard)
    moe = sum(model.is_moe_layer(layer) for layer in layers)  # layers of a kind hold the same FFN weights
    first = {model.is_moe_layer(layer): layer for layer in reversed(layers)}
    weights = len(layers) * attention + sum(
        count * ffn_weight_elements(model, shard, first[kind]) for kind, count in ((True, moe), (False, len(layers) - moe))
        if count)
    kvb = PRECISION_BYTES[kv_precision or precision]
    return weights * wb, cls.held * kv_elements_per_token(model, shard) * len(layers) * kvb


def peak_memory(model: ModelConfig, classes: tuple[ShardClass, ...], requests: np.ndarray, precision: str,
                pp: int = 1, kv_precision: str | None = None) -> np.ndarray:
    """Busiest GPU's weights + KV bytes [n] when each GPU holds `requests` [n] requests' KV (every
    PP stage holds its layers of all requests in flight)."""
    bounds = even_splits(model.num_layers, pp)
    peak = np.zeros(len(requests))
    for stage in range(pp):
        layers = range(int(bounds[stage]), int(bounds[stage + 1]))
        for cls in classes:
            weights, kv = class_memory(model, cls, layers, precision, kv_precision)
            peak = np.maximum(peak, weights + requests * kv)
    return peak


def candidate_ttl(spec: SweepSpec, cand: Candidate, classes: tuple[ShardClass, ...], batches: np.ndarray) -> np.ndarray:
    """Token-to-token latency [n] of a candidate at each grid batch (per-GPU batch under dp-ep,
    micro-batch under pp-tp), seconds: every layer in sequence (+ PP - 1 stage sends)."""
    timer = spec.time_model
    ttl = TailTime(spec.model, cand.stage, timer)(batches)  # LM head and sampling, once per step
    for first, count in layer_kinds(spec.model):
        layer = BatchLayerTime(spec.model, cand.stage, classes, first, cand.hopb, timer, spec.whatif.a2a_chunk)
        ttl = ttl + count * layer(batches)
    if cand.pp > 1:  # PP - 1 stage-to-stage sends of the micro-batch's activations
        ttl = ttl + timer.pipeline_sends_seconds(cand.pp, cand.stage.world_size,
                                                 batches.astype(np.float64) * spec.model.hidden_size * ACTIVATION_BYTES)
    return ttl


# --- the sweep ---------------------------------------------------------------------------------
def evaluate(spec: SweepSpec, cand: Candidate, grid: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows of the configurations that fit in HBM, configurations timed) of one candidate."""
    per_unit = cand.stage.world_size if cand.per_gpu_batch else cand.pp  # requests per grid step
    batches = grid[grid * per_unit <= spec.max_batch]
    if len(batches) == 0:
        return np.zeros(0, CONFIG_DTYPE), 0
    classes = shard_classes(spec.model, cand.stage, spec.tokens, spec.tokens_per_block)
    held_requests = batches if cand.per_gpu_batch else batches * cand.pp  # requests whose KV each GPU holds
    memory = peak_memory(spec.model, classes, held_requests.astype(np.float64), spec.precision, cand.pp,
                         spec.kv_precision)
    fits = memory <= spec.topo.gpu.hbm_bytes  # a prefix of the grid: memory grows with the batch
    if not fits.any():
        return np.zeros(0, CONFIG_DTYPE), len(batches)
    # every candidate is timed on the whole grid, so a kernel timed once serves every layout that has it
    ttl = candidate_ttl(spec, cand, classes, grid)[:len(batches)][fits]
    rows = np.zeros(int(fits.sum()), CONFIG_DTYPE)
    layout = cand.layout
    rows["strategy"], rows["gpus"], rows["pp"], rows["hopb"] = cand.series, cand.gpus, cand.pp, cand.hopb
    rows["kvp"], rows["tpa"], rows["tpf"], rows["ep"] = layout.kvp, layout.tpa, layout.tpf, layout.ep
    rows["batch"] = batches[fits] * per_unit
    rows["ttl_s"], rows["memory_bytes"] = ttl, memory[fits]
    rows["tokens_per_s_per_user"] = 1.0 / ttl
    rows["tokens_per_s_per_gpu"] = rows["batch"] / ttl / cand.gpus
    return rows, len(batches)


@dataclass(frozen=True)
class SweepResult:
    spec: SweepSpec
    configs: np.ndarray  # CONFIG_DTYPE rows that fit in HBM
    layouts: int  # candidates (layouts x series) enumerated
    timed: int  # configurations timed (layouts x batches), before the memory filter
    seconds: float  # wall time of the sweep on this machine
    why_none: dict[str, str] = field(default_factory=dict)  # series with no fitting configuration -> why

    def summary(self) -> dict[str, Any]:
        per_series = {}
        for series in self.spec.strategies:
            rows = self.configs[self.configs["strategy"] == series.encode()]
            found = len(rows) > 0
            per_series[series] = {
                "configs": int(len(rows)),
                "min_ttl_s": float(rows["ttl_s"].min()) if found else None,
                "max_tokens_per_s_per_gpu": float(rows["tokens_per_s_per_gpu"].max()) if found else None}
            if not found:
                per_series[series]["why_none"] = self.why_none.get(series, "no fitting configuration")
        return {"model": self.spec.model.name, "context": self.spec.context,
                "topology": self.spec.machine_name, "racks": self.spec.topo.racks,
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
    done: dict[tuple, tuple[np.ndarray, int]] = {}  # candidates with identical plans are timed once
    smallest: dict[str, tuple[float, Candidate]] = {}  # series -> least memory of a layout with nothing fitting
    fitted: set[str] = set()
    for cand in found:
        # Helix with and without HOP-B have one plan when the batch is exchanged at once
        key = (cand.layout, cand.pp, cand.hopb and spec.whatif.a2a_chunk != 0)
        if key in done:
            fitting, count = done[key][0].copy(), done[key][1]
            fitting["strategy"], fitting["hopb"] = cand.series, cand.hopb
        else:
            fitting, count = done.setdefault(key, evaluate(spec, cand, grid))
        rows.append(fitting)
        timed += count
        if len(fitting):
            fitted.add(cand.series)
        elif cand.series not in fitted and count:
            need = _least_memory(spec, cand)
            if cand.series not in smallest or need < smallest[cand.series][0]:
                smallest[cand.series] = (need, cand)
        if progress is not None:
            progress(1)
    why = {series: _why_none(spec, series, [c for c in found if c.series == series], smallest.get(series))
           for series in spec.strategies if series not in fitted}
    return SweepResult(spec, np.concatenate(rows), len(found), timed, time.perf_counter() - start, why)


def _least_memory(spec: SweepSpec, cand: Candidate) -> float:
    """Busiest GPU's bytes of a candidate at its smallest batch (one request per GPU under dp-ep,
    one micro-batch of one request under pp-tp)."""
    classes = shard_classes(spec.model, cand.stage, spec.tokens, spec.tokens_per_block)
    held = np.array([1.0 if cand.per_gpu_batch else float(cand.pp)])
    return float(peak_memory(spec.model, classes, held, spec.precision, cand.pp, spec.kv_precision)[0])


def _why_none(spec: SweepSpec, series: str, cands: list[Candidate],
              smallest: tuple[float, Candidate] | None) -> str:
    """One line: why a series has no configuration that fits (shown by `sweep` and `advise`)."""
    gpus = f"1..{spec.max_gpus} GPUs"
    if not cands:
        if series == DP_EP and spec.model.moe is None:
            return f"{spec.model.name} is dense: DP attention + EP needs MoE experts"
        if series in (HELIX, HELIX_NO_HOPB, KVP):
            return f"no valid layout with KVP >= 2 on {gpus} (KVP = 1 is plain TP)"
        return f"no valid layout on {gpus}"
    if smallest is None:
        return f"every layout's smallest batch exceeds --max-batch {spec.max_batch}"
    need, cand = smallest
    layout = cand.layout
    return (f"nothing fits in {spec.topo.gpu.hbm_bytes / 1e9:.0f} GB of HBM: the least any layout needs is "
            f"{need / 1e9:.1f} GB per GPU ({cand.gpus} GPUs, KVP={layout.kvp} TPA={layout.tpa} TPF={layout.tpf} "
            f"EP={layout.ep} PP={cand.pp}, one request) at {spec.context:,} tokens: more GPUs (--max-gpus), "
            f"a shorter context or a lower precision")


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
