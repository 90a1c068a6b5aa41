"""Decode-only serving of a request trace with continuous batching.

One scheduler (`Scheduler`) serves both modes, so they make the same decisions:
- analytic (`serve`, `helix-mpi model --workload`): full model size, no MPI, no data; every step is
  timed by `timing.StepTimer`, a vectorised `analytic.step_time` (same plans and clocks, docs/design.md
  section 2) for the ragged batch held at that step; any model (GQA or MLA, dense or MoE) and any
  strategy (helix, tp, kvp, dp-ep). The steps between two changes of the batch (a request joins or
  leaves) are timed together (`Scheduler.run_steps`: the same records, bit for bit, as one step at
  a time, which is how the emulator and `exact=True` run);
- emulated (`runner.run_serving`, `helix-mpi run --workload`): every rank runs the same scheduler
  and the emulator times each step on real data.

Model (all times in modeled seconds):
- Prefill runs elsewhere (a prefill pool). A request waits in a FIFO queue from its arrival until
  its KV fits (and, if given, until fewer than `max_batch` requests are held). Admission happens
  at step boundaries, strictly FIFO (the head blocks the requests behind it). On admission the
  request reserves the KV of its *final* length (input + output tokens) on every rank that will
  hold part of it, so a running request never runs out of memory. Capacity (`kv_capacity`):
  the HBM each rank has left next to its weight shards (memory.py, full model at the modeled
  precision), in KV tokens of that rank; `kv_capacity_tokens` overrides it (emulation size).
- Placement: request r's token p lives on KVP rank (p // tokens_per_block) % KVP, counted from its
  own position 0 (kvcache.tokens_held), on every TPA replica; under dp-ep a request lives whole on
  one rank, chosen at admission: the rank with the fewest reserved tokens where it fits.
- SLO-aware admission (`ttl_slo`, `--ttl-slo S`): a waiting request is admitted only while the
  predicted step time of the batch it would join stays within the SLO: the analytic step timer
  (`timing.StepTimer`, the step time `model --workload` uses) of every held request plus this one,
  each at its *final* length (input + output tokens), so the batch stays within the SLO for the
  requests' whole lifetime unless a later admission is also predicted to fit. The head of the
  queue then waits (strict FIFO); a request is always admitted into an empty batch (alone it
  cannot do better). The emulator uses the same prediction, so both modes admit alike.
- KV transfer: after admission its prompt KV is copied into the decode ranks. Every rank receives
  its own shard (its tokens x its KV heads or latent x all layers) concurrently over its own
  link: t = latency + max-shard bytes / bandwidth, over the scale-out NIC (`kv_transfer =
  "scale_out"`, prefill outside the NVLink domain, the default), over NVLink ("nvlink", prefill
  inside the domain) or free ("none"). The transfer is charged to the request's queue time, never
  to a decode step: the request joins the batch at the first step boundary after it completes.
- Decode: each step decodes one token of every request in the batch, in admission order; it
  takes step_time(kv_lengths), each rank's tokens of each of its requests *including the step's
  new token*. A request leaves after `output_tokens` steps and frees its KV. Requests arriving
  during a step join at the next step; with nothing to decode the clock jumps to the next event.

Metrics (`Scheduler.metrics`, computed by `serving_figures` from the per-request and per-step records,
which is also how `helix-mpi summarize` recomputes them from a served trace): TTL (time-to-token) of a request = (end of its last step - start of
its first step) / output_tokens, i.e. the mean time between its tokens; queue time = start of its
first step - arrival; first token = end of its first step; admission wait = admission - arrival (queue time without the KV
transfer: what the capacity and the SLO held it back); tokens/s/GPU = generated tokens /
makespan / N; KV imbalance = max / mean over ranks of the KV tokens they hold at a step, reported
as the median over steps whose mean context exceeds `long_context_tokens`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .axes import Axis
from .config import Implementation, Layout, ModelConfig, validate_layout
from .memory import rank_memory
from .mesh import coordinates
from .strategies import rules_for
from .timing import StepTimer, TimeModel
from .topology import Topology
from .workload import Workload

KV_TRANSFER = ("scale_out", "nvlink", "none")
LONG_CONTEXT_TOKENS = 100_000  # "long" contexts for the KV-imbalance figure
MAX_SAMPLES = 1000  # points kept in each time series
STEP_ELEMENTS = 1 << 16  # steps timed together x max(requests, ranks): bounds a run's arrays


class ServingError(ValueError):
    """A serving setup that cannot run; the message is one line: what and how to fix it."""


class DoesNotFit(ServingError):
    """The weights, or the longest request's KV, do not fit in a GPU's memory (exit code 3)."""


# --- memory (memory.py) ------------------------------------------------------------------------
@dataclass(frozen=True)
class KVCapacity:
    """Per-rank HBM budget of the full model under a layout (from memory.rank_memory)."""

    hbm_bytes: float  # capacity of one GPU
    weight_bytes: np.ndarray  # [N] weight shards of all layers
    kv_bytes_per_token: np.ndarray  # [N] bytes of one KV token the rank holds (its KV heads or latent, all layers)
    tokens: np.ndarray  # [N] KV tokens the rank may hold (HBM left by its weights, or the override)


def kv_capacity(model: ModelConfig, layout: Layout, precision: str, topo: Topology,
                tokens: int | None = None, kv_precision: str | None = None) -> KVCapacity:
    """Per-rank budget; `tokens` overrides the HBM-derived capacity (KV tokens per rank)."""
    n, dp = layout.world_size, rules_for(layout).data_parallel
    # one KV token on every rank: one request per rank under dp-ep, else KVP tokens in blocks of 1
    batch, length = (n, 1) if dp else (1, layout.kvp)
    per_rank = [rank_memory(model, layout, r, batch, length, precision, 1, kv_precision) for r in range(n)]
    weights = np.array([m["weights_bytes"] for m in per_rank])
    per_token = np.array([m["kv_bytes"] for m in per_rank])
    left = np.floor(np.maximum(topo.gpu.hbm_bytes - weights, 0) / per_token).astype(np.int64)
    held = left if tokens is None else np.full(n, tokens, dtype=np.int64)
    return KVCapacity(topo.gpu.hbm_bytes, weights, per_token, held)


def tokens_held_batch(lengths: np.ndarray, kvp: int, tokens_per_block: int) -> np.ndarray:
    """kvcache.tokens_held for many requests at once: tokens of each request per KVP rank [KVP, B]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rounds, rest = np.divmod(lengths, tokens_per_block * kvp)
    first = np.arange(kvp, dtype=np.int64)[:, None] * tokens_per_block  # first offset of each rank's block
    return rounds * tokens_per_block + np.minimum(np.maximum(rest - first, 0), tokens_per_block)


def emulated_layer_weights(model: ModelConfig, layers: int) -> np.ndarray:
    """Weight [layers] of each emulated layer in a full-model step: the count of its kind (dense or
    MoE) in the model over its count among the emulated layers; a kind not emulated is spread
    evenly. All ones when every layer is emulated."""
    kinds = np.array([model.is_moe_layer(layer) for layer in range(model.num_layers)])
    emulated, weights, missing = kinds[:layers], np.zeros(layers), 0.0
    for kind in (False, True):
        in_model, in_run = int((kinds == kind).sum()), int((emulated == kind).sum())
        if in_run:
            weights[emulated == kind] = in_model / in_run
        else:
            missing += in_model
    return weights + missing / layers


# --- the scheduler ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServingSetup:
    """Everything fixed for one simulation."""

    model: ModelConfig
    layout: Layout
    topo: Topology
    impl: Implementation = Implementation()  # precisions, collectives library, CUDA graphs
    hopb: bool = True
    tokens_per_block: int = 16  # KV round robin block, tokens
    max_batch: int | None = None  # cap on requests held (decoding or receiving KV); None = KV capacity only
    kv_transfer: str = "scale_out"  # link of the prefill -> decode KV copy: scale_out, nvlink or none
    long_context_tokens: int = LONG_CONTEXT_TOKENS
    kv_capacity_tokens: int | None = None  # KV tokens per rank; None = the HBM left by the weights
    ttl_slo: float | None = None  # seconds: SLO-aware admission (module docstring); None = off
    a2a_chunk: int = 0  # requests per KVP all-to-all (of the step timer that predicts under the SLO)

    def __post_init__(self) -> None:
        if not isinstance(self.impl, Implementation):
            raise ServingError(f"impl must be an Implementation, got {self.impl!r}")
        if not isinstance(self.tokens_per_block, int) or self.tokens_per_block < 1:
            raise ServingError(f"tokens_per_block must be an integer >= 1, got {self.tokens_per_block!r}")
        for name in ("max_batch", "kv_capacity_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ServingError(f"{name} must be an integer >= 1 or None, got {value!r}")
        if self.ttl_slo is not None and (isinstance(self.ttl_slo, bool) or not isinstance(self.ttl_slo, (int, float))
                                         or not math.isfinite(self.ttl_slo) or self.ttl_slo <= 0):
            raise ServingError(f"--ttl-slo must be a number of seconds > 0, got {self.ttl_slo!r}")
        if self.kv_transfer not in KV_TRANSFER:
            raise ServingError(f"kv_transfer must be one of {', '.join(KV_TRANSFER)}, got {self.kv_transfer!r}")
        validate_layout(self.model, self.layout, self.layout.world_size)

    @property
    def data_parallel(self) -> bool:
        return rules_for(self.layout).data_parallel


@dataclass
class _Log:
    """Per-step records, in blocks of consecutive steps (joined into arrays by `step_log`)."""

    start: list = field(default_factory=list)  # [K] blocks
    end: list = field(default_factory=list)
    batch: list = field(default_factory=list)
    kv: list = field(default_factory=list)  # [K, N] KV tokens held per rank, new tokens included
    mean_context: list = field(default_factory=list)
    slo_held: int = 0  # steps at which the SLO held the head of the queue back

    def add(self, start: np.ndarray, end: np.ndarray, batch: int, kv: np.ndarray, mean_context: np.ndarray) -> None:
        """Record K steps: start, end [K], requests per step, kv [K, N], mean context [K]."""
        self.start.append(start)
        self.end.append(end)
        self.batch.append(np.full(len(start), batch, dtype=np.int64))
        self.kv.append(kv)
        self.mean_context.append(mean_context)


def _joined(blocks: list, dtype, width: int | None = None) -> np.ndarray:
    if not blocks:
        return np.zeros((0,) if width is None else (0, width), dtype=dtype)
    return np.concatenate(blocks).astype(dtype, copy=False)


class _StepRun:
    """The KV lengths of K consecutive decode steps of one batch, in which every request gains one
    token per step (`timing.StepKV`: sums per rank and per exchange chunk, or per dp-ep rank).
    Built from the lengths at the first step (new token included): under the KV round robin the
    token at position p joins KVP rank (p // tokens_per_block) % KVP, so step j's holdings are the
    first step's plus the ranks of positions L .. L + j - 1 of each request, counted by bincount."""

    def __init__(self, scheduler: "Scheduler", requests: np.ndarray, lengths: np.ndarray, steps: int):
        self.scheduler, self.requests, self.lengths, self.steps = scheduler, requests, lengths, steps
        self.rank_sizes, self.batch = None, len(requests)
        if scheduler.setup.data_parallel:
            owners = scheduler.owner[requests]
            n = scheduler.layout.world_size
            self.rank_sizes = np.bincount(owners, minlength=n)
            self.batch = int(self.rank_sizes.max())
            self._rank_first = np.bincount(owners, weights=lengths, minlength=n).astype(np.int64)  # [N]
        self._sums: dict = {}

    def chunk_sums(self, chunks: list[tuple[int, int]]) -> np.ndarray:
        """Tokens [N, C, K] each rank holds of each chunk's requests at each step."""
        key = tuple(chunks)
        if key not in self._sums:
            self._sums[key] = self._per_kvp(chunks)[self.scheduler.kvp_of_rank].astype(float)
        return self._sums[key]

    def _per_kvp(self, chunks: list[tuple[int, int]]) -> np.ndarray:
        """Tokens [KVP, C, K] each KVP rank holds of each chunk's requests at each step."""
        layout, tpb = self.scheduler.layout, self.scheduler.setup.tokens_per_block
        kvp, k, c = layout.kvp, self.steps, len(chunks)
        firsts = np.array([first for first, _ in chunks])
        first = np.add.reduceat(tokens_held_batch(self.lengths, kvp, tpb), firsts, axis=1)  # [KVP, C]
        if k == 1:
            return first[:, :, None]
        chunk = np.repeat(np.arange(c), [count for _, count in chunks])  # [B]
        positions = self.lengths[None, :] + np.arange(k - 1)[:, None]  # [K-1, B] tokens added after step 0
        rank = (positions // tpb) % kvp
        index = (np.arange(k - 1)[:, None] * kvp + rank) * c + chunk[None, :]
        added = np.bincount(index.ravel(), minlength=(k - 1) * kvp * c).reshape(k - 1, kvp, c)
        held = np.concatenate([np.zeros((1, kvp, c), dtype=np.int64), np.cumsum(added, axis=0)]) + first[None]
        return held.transpose(1, 2, 0)  # [KVP, C, K]

    def rank_sums(self) -> np.ndarray:
        """dp-ep: tokens [N, K] of each rank's own requests at each step."""
        return (self._rank_first[:, None] + self.rank_sizes[:, None] * np.arange(self.steps)[None, :]).astype(float)

    def rank_tokens(self) -> np.ndarray:
        """KV tokens [K, N] each rank holds at each step (the step log)."""
        if self.rank_sizes is not None:
            return self.rank_sums().T.astype(np.int64)
        return self.chunk_sums([(0, self.batch)])[:, 0].T.astype(np.int64)

    def mean_context(self) -> np.ndarray:
        """Mean tokens [K] of the batch's requests at each step."""
        return (int(self.lengths.sum()) + self.batch_requests * np.arange(self.steps)) / self.batch_requests

    @property
    def batch_requests(self) -> int:
        return len(self.requests)


class Scheduler:
    """FIFO continuous batching under the KV capacity (module docstring). Deterministic: every
    emulated rank runs its own copy on the same clock values and takes the same decisions."""

    def __init__(self, workload: Workload, setup: ServingSetup):
        self.setup, self.layout = setup, setup.layout
        self.capacity = kv_capacity(setup.model, setup.layout, setup.impl.precision, setup.topo, setup.kv_capacity_tokens,
                                    setup.impl.kv_precision)
        reqs = workload.requests
        self.index = np.array([r.index for r in reqs], dtype=np.int64)  # row of the trace file
        self.arrival = np.array([r.arrival_s for r in reqs], dtype=float)
        self.input = np.array([r.input_tokens for r in reqs], dtype=np.int64)
        self.output = np.array([r.output_tokens for r in reqs], dtype=np.int64)
        n = self.layout.world_size
        self.kvp_of_rank = np.array([coordinates(self.layout, r)[Axis.KVP] for r in range(n)])
        self.owner = np.full(len(reqs), -1, dtype=np.int64)  # dp-ep: the rank holding the request
        self.reserved = np.zeros(n, dtype=np.int64)  # KV tokens reserved per rank
        self.generated = np.zeros(len(reqs), dtype=np.int64)
        self.admitted, self.transfer = np.full(len(reqs), np.nan), np.zeros(len(reqs))
        self.first_start, self.first_token, self.finish = (np.full(len(reqs), np.nan) for _ in range(3))
        self.pending: list[tuple[float, int]] = []  # (join time, request) admitted, KV in transfer
        self.active: list[int] = []  # in the batch, in admission order
        self.head, self.finished = 0, 0
        self.held_by_slo = False  # the last admission attempt stopped at the SLO
        self._step_guess = math.inf  # seconds of the last step timed (sizes the next run's first block)
        self.log = _Log()
        self._check_fits(workload)
        self._predict = None
        if setup.ttl_slo is not None:
            self._predict = StepTimer(setup.model, setup.layout, setup.hopb, TimeModel(setup.topo, setup.impl),
                                      a2a_chunk=setup.a2a_chunk)

    # --- placement -------------------------------------------------------------------------
    def held(self, requests: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """KV tokens [N, b] each rank holds of each request when it is `lengths` tokens long."""
        if self.setup.data_parallel:
            return np.where(np.arange(self.layout.world_size)[:, None] == self.owner[requests], lengths, 0)
        return tokens_held_batch(lengths, self.layout.kvp, self.setup.tokens_per_block)[self.kvp_of_rank]

    def max_held(self, rank: int) -> int:
        """Most KV tokens `rank` may ever hold of one request of the workload (slot size)."""
        final = self.input + self.output
        if self.setup.data_parallel:
            return int(final.max())
        kvp = coordinates(self.layout, rank)[Axis.KVP]
        return int(tokens_held_batch(final, self.layout.kvp, self.setup.tokens_per_block)[kvp].max())

    def _check_fits(self, workload: Workload) -> None:
        cap = self.capacity
        if cap.tokens.min() < 1:
            raise DoesNotFit(f"the weights need {cap.weight_bytes.max() / 1e9:.1f} GB per GPU, more than its "
                               f"{cap.hbm_bytes / 1e9:.1f} GB of HBM: use more ranks or a lower precision")
        final = self.input + self.output
        if self.setup.data_parallel:
            need, room = final, int(cap.tokens.max())
        else:
            per_kvp = tokens_held_batch(final, self.layout.kvp, self.setup.tokens_per_block)  # [KVP, R]
            need, room = per_kvp.max(axis=0), int(cap.tokens.min())
        worst = int(np.argmax(need))
        source = "--kv-capacity" if self.setup.kv_capacity_tokens else "the HBM its weight shards leave"
        if need[worst] > room:
            raise DoesNotFit(
                f"request {workload.requests[worst].index} needs {need[worst]} KV tokens per GPU but a GPU "
                f"holds at most {room} ({source}): use more KVP ranks, a smaller context scale or a "
                "larger KV capacity")

    def _place(self, r: int) -> int | None:
        """Owner of request r (-1: every rank holds its shard), or None if it does not fit now."""
        cap, final = self.capacity.tokens, self.input[r] + self.output[r]
        if self.setup.data_parallel:
            fits = np.flatnonzero(self.reserved + final <= cap)
            return int(fits[np.argmin(self.reserved[fits])]) if len(fits) else None
        need = self.held(np.array([r]), np.array([final]))[:, 0]
        return -1 if (self.reserved + need <= cap).all() else None

    def _transfer_s(self, r: int) -> float:
        """Seconds to copy request r's prompt KV into its ranks (module docstring)."""
        setup = self.setup
        if setup.kv_transfer == "none":
            return 0.0
        shard = self.held(np.array([r]), self.input[r:r + 1])[:, 0] * self.capacity.kv_bytes_per_token  # [N] bytes
        if setup.kv_transfer == "scale_out":
            return float(setup.topo.scale_out.latency_s + shard.max() / setup.topo.scale_out.bytes_per_s)
        return float(setup.topo.fabric.a2a_base_s + shard.max() / setup.topo.fabric.link_bytes_per_s)

    # --- the loop ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.finished == len(self.arrival)

    @property
    def first_arrival(self) -> float:
        return float(self.arrival[0])

    def _admit(self, now: float) -> None:
        cap = self.setup.max_batch
        self.held_by_slo = False
        while self.head < len(self.arrival) and self.arrival[self.head] <= now and (
                cap is None or len(self.active) + len(self.pending) < cap):
            r = self.head
            owner = self._place(r)
            if owner is None:
                break  # strict FIFO: the head waits for memory, and so does everyone behind it
            if self._predict is not None and not self._within_slo(r, owner):
                self.log.slo_held += 1
                self.held_by_slo = True
                break  # the head waits until the batch has room under the SLO
            self.owner[r] = owner
            self.reserved += self.held(np.array([r]), self.input[r:r + 1] + self.output[r:r + 1])[:, 0]
            self.admitted[r], self.transfer[r] = now, self._transfer_s(r)
            self.pending.append((now + self.transfer[r], r))
            self.head += 1

    def _within_slo(self, r: int, owner: int) -> bool:
        """Whether the batch with request r added (every held request at its final length) is
        predicted to step within the SLO; always true into an empty batch."""
        held = self.active + [q for _, q in self.pending]
        if not held:
            return True
        requests = np.array(held + [r], dtype=np.int64)
        final = self.input[requests] + self.output[requests]
        previous, self.owner[r] = self.owner[r], owner
        try:
            if self.setup.data_parallel:
                owners = self.owner[requests]
                kv = [final[owners == rank] for rank in range(self.layout.world_size)]
            else:
                kv = self.held(requests, final)
            return self._predict(kv) <= self.setup.ttl_slo
        finally:
            self.owner[r] = previous

    def next_step(self, now: float) -> tuple[float, np.ndarray]:
        """(start, requests [B] in batch order) of the next decode step at or after `now`."""
        while True:
            self._admit(now)
            self.active += [r for t, r in self.pending if t <= now]
            self.pending = [(t, r) for t, r in self.pending if t > now]
            if self.active:
                return now, np.array(self.active, dtype=np.int64)
            events = [t for t, _ in self.pending]
            if self.head < len(self.arrival) and self.arrival[self.head] > now:
                events.append(float(self.arrival[self.head]))
            if not events:
                raise RuntimeError("serving loop stalled: nothing running, nothing admissible")
            now = min(events)  # idle: jump to the next join or arrival

    def lengths(self, requests: np.ndarray) -> np.ndarray:
        """Tokens [B] in each request's KV during the step, its new token included."""
        return self.input[requests] + self.generated[requests] + 1

    def kv_lengths(self, requests: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Each rank's local KV tokens per request for the step timer: [N, B], or under dp-ep a
        list of N arrays (each rank its own requests, in batch order)."""
        lengths = self.lengths(requests)
        if not self.setup.data_parallel:
            return self.held(requests, lengths)
        owners = self.owner[requests]
        return [lengths[owners == rank] for rank in range(self.layout.world_size)]

    def end_step(self, requests: np.ndarray, start: float, end: float) -> np.ndarray:
        """Record the step [start, end) of `requests`; returns those that finished (their KV is freed)."""
        lengths = self.lengths(requests)
        self.log.add(np.array([start]), np.array([end]), len(requests), self.held(requests, lengths).sum(axis=1)[None],
                     np.array([float(lengths.mean())]))
        return self._advance(requests, start, end, 1)

    def run_steps(self, now: float, timer: StepTimer) -> float:
        """Decode the steps from `now` up to the next change of the batch (the analytic loop, which
        takes the same decisions as calling next_step / end_step at every step); returns their end.

        From the first step the batch stays as it is until a request finishes (the last step of the
        run) or a pending KV transfer completes (the run ends at the first step boundary at or after
        it): so the steps are timed together, `StepTimer.steps` over the run's KV lengths, and their
        ends accumulated one by one as the step loop would. A head of the queue arriving during the
        run is admitted at the end of that step, as next_step would, and only adds a pending join; a
        head already held back (memory, max_batch or the SLO) stays held until a request finishes,
        and the SLO counts each step boundary at which it held it."""
        start, requests = self.next_step(now)
        limit = int((self.output[requests] - self.generated[requests]).min())  # steps until the first finishes
        join, arrival = self._events(start)
        held_from = -1 if self.held_by_slo else None  # the SLO holds the head from the end of this step on
        lengths = self.lengths(requests)
        done, clock, first_end, width = 0, start, math.nan, max(len(requests), self.layout.world_size)
        event = min(join, arrival)
        block = limit if math.isinf(event) else int(min((event - start) / self._step_guess, limit)) + 2
        stop = False
        while done < limit and not stop:
            steps = max(1, min(block, limit - done, STEP_ELEMENTS // width))
            run = _StepRun(self, requests, lengths + done, steps)
            ends = np.cumsum(np.concatenate(([clock], timer.steps(run))))  # [K + 1] one addition per step, in order
            take, scan = steps, 0
            while True:
                # the first step from `scan` on that ends at or after the next event
                i = scan + int(np.searchsorted(ends[1 + scan:], min(join, arrival), side="left"))
                if i >= steps:
                    break
                boundary = float(ends[1 + i])
                if join <= boundary or done + i + 1 == limit:  # a join, or requests leave first (end_step)
                    take, stop = i + 1, True
                    break
                self._admit(boundary)  # the head arrived during step i
                join, arrival = self._events(boundary)
                if join <= boundary:  # admitted with a transfer of no time: it joins at once
                    take, stop = i + 1, True
                    self.log.slo_held -= self.held_by_slo  # the next run's next_step checks the head here again
                    break
                held_from = done + i if self.held_by_slo else held_from
                scan = i + 1
            self.log.add(ends[:take], ends[1:take + 1], len(requests), run.rank_tokens()[:take],
                         run.mean_context()[:take])
            self._step_guess = float(ends[1] - ends[0])
            first_end = float(ends[1]) if done == 0 else first_end
            done, clock = done + take, float(ends[take])
            block *= 2
        if held_from is not None:
            self.log.slo_held += done - 2 - held_from  # the boundaries inside the run after it, checked again
        self._advance(requests, start, first_end, done)
        return clock

    def _events(self, now: float) -> tuple[float, float]:
        """(first pending join, arrival of the head of the queue if after `now`, else inf: a head
        already arrived is held back until a request finishes)."""
        join = min((t for t, _ in self.pending), default=math.inf)
        waiting = self.head < len(self.arrival) and self.arrival[self.head] > now
        return join, float(self.arrival[self.head]) if waiting else math.inf

    def _advance(self, requests: np.ndarray, start: float, first_end: float, steps: int) -> np.ndarray:
        """After `steps` steps of `requests` starting at `start` (the first ending at `first_end`):
        the requests that finished at the last one (their KV is freed)."""
        end = float(self.log.end[-1][-1])
        new = requests[self.generated[requests] == 0]
        self.first_start[new], self.first_token[new] = start, first_end
        self.generated[requests] += steps
        finished = requests[self.generated[requests] == self.output[requests]]
        self.finish[finished] = end
        final = self.input[finished] + self.output[finished]
        self.reserved -= self.held(finished, final).sum(axis=1)
        self.finished += len(finished)
        self.active = [r for r in self.active if self.generated[r] < self.output[r]]
        return finished

    # --- metrics -------------------------------------------------------------------------------
    def metrics(self) -> dict:
        """Scalars (the keys scripts use) and per-request / per-step arrays (module docstring)."""
        ttl = (self.finish - self.first_start) / self.output  # mean seconds between a request's tokens
        queue = self.first_start - self.arrival
        requests = {"request_index": self.index, "input_tokens": self.input, "output_tokens": self.output,
                    "arrival_s": self.arrival, "admitted_s": self.admitted, "first_token_s": self.first_token,
                    "last_token_s": self.finish, "queue_s": queue, "ttl_s": ttl, "kv_transfer_s": self.transfer}
        cap = self.capacity
        capacity = {"hbm_weight_bytes_per_gpu": float(cap.weight_bytes.max()),
                    "kv_capacity_tokens_per_gpu": int(cap.tokens.min()), "kv_tokens_at_end": int(self.reserved.sum())}
        return serving_figures(requests, self.step_log(), self.layout.world_size, self.setup.long_context_tokens,
                               capacity, self.setup.ttl_slo, self.log.slo_held)

    def step_log(self) -> dict[str, np.ndarray]:
        """Every step, not subsampled (for traces): start, end [T], batch [T], KV tokens per rank [T, N]."""
        log = self.log
        return {"start_s": _joined(log.start, np.float64), "end_s": _joined(log.end, np.float64),
                "batch": _joined(log.batch, np.int64), "kv_tokens": _joined(log.kv, np.int64, self.layout.world_size),
                "mean_context": _joined(log.mean_context, np.float64)}


def serving_figures(requests: dict[str, np.ndarray], steps: dict[str, np.ndarray], world_size: int,
                    long_context_tokens: int = LONG_CONTEXT_TOKENS, capacity: dict[str, Any] | None = None,
                    ttl_slo: float | None = None, slo_held: int = 0) -> dict[str, Any]:
    """Every serving figure from the records: per request (`request_index, input_tokens,
    output_tokens, arrival_s, admitted_s, first_token_s, last_token_s, queue_s, ttl_s,
    kv_transfer_s`) and per step (`start_s, end_s, batch, kv_tokens [T, N], mean_context`). The one
    definition: `Scheduler.metrics` (run and model) and `summarize` of a served trace call it."""
    ttl, queue, output = requests["ttl_s"], requests["queue_s"], requests["output_tokens"]
    transfer, arrival = requests["kv_transfer_s"], requests["arrival_s"]
    wait = requests["admitted_s"] - arrival  # waiting for capacity or the SLO, before the KV transfer
    kv = np.asarray(steps["kv_tokens"], dtype=np.int64).reshape(len(steps["start_s"]), world_size)  # [steps, N]
    mean_kv = kv.mean(axis=1)
    imbalance = np.where(mean_kv > 0, kv.max(axis=1) / np.where(mean_kv > 0, mean_kv, 1), 1.0)
    long = np.asarray(steps["mean_context"]) > long_context_tokens
    makespan = float(requests["last_token_s"].max() - arrival.min())
    figures = {
        "requests": len(arrival),
        "generated_tokens": int(output.sum()),
        "steps": len(steps["start_s"]),
        "makespan_s": makespan,
        "ttl_p50": float(np.percentile(ttl, 50)),
        "ttl_p90": float(np.percentile(ttl, 90)),
        "ttl_p99": float(np.percentile(ttl, 99)),
        "queue_mean_s": float(queue.mean()),
        "queue_p99_s": float(np.percentile(queue, 99)),
        "admission_wait_mean_s": float(wait.mean()),
        "admission_wait_p99_s": float(np.percentile(wait, 99)),
        "kv_transfer_mean_s": float(transfer.mean()),
        "tokens_per_s_per_gpu": float(output.sum() / makespan / world_size) if makespan > 0 else math.inf,
        "max_batch": int(np.max(steps["batch"])),
        "mean_batch": float(np.mean(steps["batch"])),
        "mean_step_s": float(np.mean(np.asarray(steps["end_s"]) - np.asarray(steps["start_s"]))),
        "kv_imbalance": float(np.median(imbalance[long])) if long.any() else float("nan"),
        "kv_imbalance_max": float(imbalance[long].max()) if long.any() else float("nan"),
        "long_context_steps": int(long.sum()),
        "ttl_slo_s": ttl_slo,
        "ttl_slo_met": None if ttl_slo is None else bool(np.percentile(ttl, 99) <= ttl_slo),
        "slo_held_steps": int(slo_held),
    }
    figures.update(capacity or {})
    figures.update({k: np.asarray(v) for k, v in requests.items()})  # per request [R]
    figures.update({  # per step, subsampled to at most MAX_SAMPLES points
        "time_s": _subsample(np.asarray(steps["start_s"])),  # step start times
        "batch_size": _subsample(np.asarray(steps["batch"])),  # requests per step
        "kv_tokens_per_rank": _subsample(kv),  # [samples, N] KV tokens per rank
        "kv_imbalance_per_step": _subsample(imbalance),
    })
    return figures


def format_serving(m: dict[str, Any]) -> str:
    """The serving figures for the terminal (run, model and summarize print the same lines)."""
    ms = 1e3
    imbalance = "n/a (no long contexts)"
    if m["long_context_steps"]:
        imbalance = (f"{m['kv_imbalance']:.4f} (median over {m['long_context_steps']} steps with contexts "
                     f"> 100K tokens; worst {m['kv_imbalance_max']:.4f})")
    lines = [
        f"served {m['requests']} requests: {m['generated_tokens']:,} tokens in {m['steps']:,} decode steps, "
        f"makespan {m['makespan_s']:.4g} s (modeled)",
        f"TTL p50 / p90 / p99          {m['ttl_p50'] * ms:.4g} / {m['ttl_p90'] * ms:.4g} / {m['ttl_p99'] * ms:.4g} ms",
        f"queue mean / p99             {m['queue_mean_s'] * ms:.4g} / {m['queue_p99_s'] * ms:.4g} ms "
        f"(KV transfer mean {m['kv_transfer_mean_s'] * ms:.4g} ms)",
        f"tokens/s/GPU {m['tokens_per_s_per_gpu']:.4g}   batch max {m['max_batch']} mean {m['mean_batch']:.3g}   "
        f"KV capacity {m['kv_capacity_tokens_per_gpu']:,} tokens/GPU",
        f"KV imbalance (max/mean over ranks) {imbalance}",
    ]
    if m.get("ttl_slo_s") is not None:
        verdict = "met" if m["ttl_slo_met"] else "MISSED"
        lines.append(f"TTL SLO {m['ttl_slo_s'] * ms:.4g} ms (admission held the queue at {m['slo_held_steps']:,} "
                     f"steps): p99 {m['ttl_p99'] * ms:.4g} ms, {verdict}; admission wait p99 "
                     f"{m['admission_wait_p99_s'] * ms:.4g} ms")
    return "\n".join(lines)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar serving figures; `per_request` and `series` hold the arrays as lists (JSON)."""
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}
    per_request = ("request_index", "input_tokens", "output_tokens", "arrival_s", "admitted_s", "first_token_s",
                   "last_token_s", "queue_s", "ttl_s", "kv_transfer_s")
    series = ("time_s", "batch_size", "kv_tokens_per_rank", "kv_imbalance_per_step")
    scalars["per_request"] = {k: metrics[k].tolist() for k in per_request}
    scalars["series"] = {k: metrics[k].tolist() for k in series}
    return scalars


def _subsample(values: np.ndarray, limit: int = MAX_SAMPLES) -> np.ndarray:
    if len(values) <= limit:
        return values
    return values[np.linspace(0, len(values) - 1, limit).round().astype(np.int64)]


def serve(workload: Workload, model: ModelConfig, layout: Layout, topo: Topology,
          impl: Implementation = Implementation(), hopb: bool = True, tokens_per_block: int = 16, max_batch: int | None = None,
          kv_transfer: str = "scale_out", exact: bool = False,
          long_context_tokens: int = LONG_CONTEXT_TOKENS, kv_capacity_tokens: int | None = None,
          a2a_chunk: int = 0, ttl_slo: float | None = None) -> dict:
    """Simulate decode-only continuous batching of `workload` at full model size (Scheduler.metrics).

    exact=True times steps with analytic.step_time (slow: for checks) instead of timing.StepTimer.
    ttl_slo: SLO-aware admission (module docstring).
    """
    setup = ServingSetup(model, layout, topo, impl, hopb, tokens_per_block, max_batch, kv_transfer,
                         long_context_tokens, kv_capacity_tokens, ttl_slo, a2a_chunk)
    scheduler = simulate(workload, setup, exact)
    return scheduler.metrics()


def simulate(workload: Workload, setup: ServingSetup, exact: bool = False,
             give_up: Callable[[Scheduler, float], bool] | None = None) -> Scheduler:
    """The analytic serving loop; `give_up(scheduler, now)`, checked after every run of steps (at
    every change of the batch; after every step with exact=True), may stop it early (then
    `scheduler.done` is False; searches use it to drop a layout whose queue grows: a condition that
    stays true once true, as advise's count of late requests, stops the same simulations)."""
    scheduler = Scheduler(workload, setup)
    now = scheduler.first_arrival
    if exact:  # one step at a time, each timed by analytic.step_time
        timer = _exact_timer(setup, setup.a2a_chunk)
        while not scheduler.done:
            start, batch = scheduler.next_step(now)
            now = start + timer(scheduler.kv_lengths(batch))
            scheduler.end_step(batch, start, now)
            if give_up is not None and give_up(scheduler, now):
                break
        return scheduler
    timer = StepTimer(setup.model, setup.layout, setup.hopb, TimeModel(setup.topo, setup.impl),
                      a2a_chunk=setup.a2a_chunk)
    while not scheduler.done:
        now = scheduler.run_steps(now, timer)
        if give_up is not None and give_up(scheduler, now):
            break
    return scheduler


def _exact_timer(setup: ServingSetup, a2a_chunk: int = 0) -> Callable:
    from .analytic import step_time

    def timer(kv: np.ndarray | list[np.ndarray]) -> float:
        return step_time(setup.model, setup.layout, list(kv), setup.impl, setup.hopb, setup.topo,
                         a2a_chunk=a2a_chunk)
    return timer
