"""The emulator: every rank executes its layer plans on real sharded data with real MPI
collectives, and charges each op the time the modeled hardware would take on its virtual clocks.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from mpi4py import MPI

from . import kernels
from .kernels import compiled
from .axes import Axis
from .collectives import (all_gather, all_reduce_sum, all_to_all_heads, all_to_all_rows, group_max, quiet_barrier,
                          quiet_bcast, sleep_until)
from .config import Layout, ModelConfig, RunConfig
from . import synth
from .kvcache import ShardedKVCache, initial_kv, owned_positions, storage_dtype, tokens_held
from .mesh import RankMesh
from .families import family
from .model import feed_forward, ffn_input, moe_forward, next_step_input, route, swiglu_mlp
from .costmodel import SOURCES
from .gpuops import KernelKind, total_bytes, total_flops
from .plan import (Op, layer_plan, op_collective_fields, op_shape_fields, rank_requests, tail_plan,
                   op_dep_fields)
from .blockshare import share_blocks
from .sharding import PRIVATE_BLOCKS, BlockSource, initial_input, layer_weights, rank_shard, weight_blocks
from .strategies import rules_for
from .timing import LayerSchedule, StreamClocks, TimeModel
from .topology import Topology
from .trace import EVENT_DTYPE

_STAGE_TAG, _OUTPUT_TAG = 11, 12  # MPI tags of stage-to-stage activations and of the step's output
StepSink = Callable[[int, np.ndarray, np.ndarray], None]  # (step, events of all ranks, kv tokens [N])


@dataclass
class EmulationResult:
    """What rank 0 returns (other ranks return the same arrays for their own checks)."""

    inputs: np.ndarray | None  # [T, B, H] input of layer 0 at each step (rank 0, when kept)
    outputs: np.ndarray | None  # [T, B, H] output of the last layer at each step (rank 0, when kept)
    positions: np.ndarray  # [T] global position of each step's new token
    step_times: np.ndarray  # [T] modeled seconds of each step (emulated layers)
    host_seconds: float  # wall time of the decode loop on this machine
    routing: dict = field(default_factory=dict)  # MoE layer -> (experts [T, B, k], weights [T, B, k])


@dataclass(frozen=True)
class StepBatch:
    """The requests a rank decodes in one step."""

    ids: np.ndarray  # [b] request ids (the `request` column of per-request ops in traces)
    positions: np.ndarray  # [b] global position of each request's new token
    appends: np.ndarray  # [b] bool: this rank stores the request's new token (its KVP owner)


@dataclass
class _LayerState:
    """Activations of one layer on one rank while its plan executes."""

    x: np.ndarray  # [B, H] residual stream (full on every rank)
    q: np.ndarray | None = None  # [B, Qh, D]
    attention: np.ndarray | None = None  # [B, Qh, W] attention output when nothing is exchanged
    partials: list = field(default_factory=list)  # per chunk: [c, Qh, W+1] out and lse, FIFO
    received: list = field(default_factory=list)  # per request: [KVP, n, W+1]
    partial_sum: np.ndarray | None = None  # [B, H] this rank's term of a sum over ranks
    g: np.ndarray | None = None  # [B, H] FFN input (dp-ep MoE)
    routing: tuple | None = None  # (experts [B, k], weights [B, k])
    dispatch: tuple | None = None  # dp-ep: (rows [n, H+2], token of each sent row, sent, received counts)


class _RowLog:
    """Rank 0's copy of every step's inputs and outputs [T, B, H], allocated once."""

    def __init__(self, steps: int, batch: int, hidden: int):
        self.inputs = np.zeros((steps, batch, hidden), dtype=np.float32)
        self.outputs = np.zeros((steps, batch, hidden), dtype=np.float32)

    def add(self, step: int, x_in: np.ndarray, x_out: np.ndarray) -> None:
        self.inputs[step], self.outputs[step] = x_in, x_out


def warm_up_kernels(comm: MPI.Comm, storage: str = "fp32") -> None:
    """Ready the compiled kernels, rank 0 first while the others wait (docs/design.md 6): if this
    machine has no precompiled library for these kernel sources, ranks 0 and 1 build it (once,
    with Numba: `_build_library`), then every rank loads it without importing Numba
    (kernels/compiled.py). Under HELIX_MPI_KERNELS=jit, Numba compiles (or loads from its cache)
    the kernels of the storage the run keeps its weights and KV in, rank 0 first."""
    def compile_all() -> None:
        x = np.ones((1, 4), np.float32)
        q = np.ones((1, 2, 4), np.float32)
        kv = np.ones((1, 1, 2, 4), np.float32)
        w = np.ones((4, 2), np.float32)
        if storage == "bf16":
            kv, w = kernels.to_bf16(kv), kernels.to_bf16(w)
        w.flags.writeable = False  # weights are read-only (sharding.BlockSource): a type of their own to Numba
        if storage == "bf16":
            kernels.from_bf16(w)  # MLA's absorbed up-projections, upcast for NumPy
        kernels.rms_norm(x, None, 1e-5)
        kernels.rms_norm(x, np.ones(4, np.float32), 1e-5)
        kernels.apply_rope(q, np.zeros(1, np.int64), 10000.0)
        out, lse = kernels.partial_attention(q, kv, kv, np.ones(1, np.int64))
        kernels.combine(out[None], lse[None])
        kernels.swiglu(x, w, w)
        kernels.linear(x, w)
        initial_kv(0, 0, range(1), 1, 1, 4, range(1), np.zeros(1, np.int64))
        synth.matrix_block(0, "warm-up", (2, 2), (0, 2), (0, 2), bf16=storage == "bf16")
    if comm.Get_size() > 1:
        missing = quiet_bcast(comm, compiled.missing_library() if comm.Get_rank() == 0 else None)
        if missing is not None:
            _build_library(comm, missing)
    if comm.Get_rank() == 0:
        compiled.prepare(build=True)  # builds alone if the shared build failed (and reports why)
        compile_all()
    quiet_barrier(comm)  # the others sleep meanwhile: spinning, they took the cores from rank 0's build
    if comm.Get_rank() != 0:
        compiled.prepare(build=False)
        compile_all()


_BUILD_TAG = 7301  # rank 1's half of the kernel library, sent to rank 0


def _build_library(comm: MPI.Comm, folder) -> None:
    """Ranks 0 and 1 compile half the kernel variants each (one process takes ~20 s: the two
    attention variants ~7 s each, kernels/aot.py), rank 1 sending its half (LLVM bitcode) to rank
    0, which links them and writes the library into `folder`. Rank 1 helps where it would build
    that very library (same kernel sources, CPU and llvmlite: the folder's name), else sends
    nothing and rank 0 compiles both halves. Both wait for each other asleep; a failure leaves no
    library, and rank 0's `compiled.prepare` then builds alone and reports it."""
    from .kernels import aot

    rank = comm.Get_rank()
    if rank == 1:
        half = None
        try:
            if aot.library_folder(compiled.cache_root()).name == folder.name:
                half = aot.compile_share(1, 2)
        except Exception:  # noqa: BLE001 - rank 0 compiles it (and reports the error)
            half = None
        sleep_until(comm.isend(half, dest=0, tag=_BUILD_TAG).Test)
    elif rank == 0:
        try:
            mine = aot.compile_share(0, 2)
        except Exception:  # noqa: BLE001 - prepare() builds alone and reports it
            mine = None
        sleep_until(lambda: comm.Iprobe(source=1, tag=_BUILD_TAG))
        helped = comm.recv(source=1, tag=_BUILD_TAG)
        if mine is not None:
            try:
                aot.link_library(folder, [mine, helped or aot.compile_share(1, 2)])
            except Exception:  # noqa: BLE001 - as above
                pass


class Emulator:
    """One rank's share of a decode run under any strategy (Helix or a baseline)."""

    def __init__(self, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology, mesh: RankMesh,
                 fail_at: tuple[int, int] | None = None, keep_rows: bool = True, share_weights: bool = False):
        self._setup(model, layout, run, topo, mesh, fail_at, share_weights)
        self.keep_rows = keep_rows  # rank 0 keeps every step's inputs and outputs (reference check, tensors)
        self.requests = rank_requests(layout, run.batch, mesh.rank)
        self.caches = [self._initial_cache(layer) if layer in self.layers_run else None for layer in range(run.layers)]

    def _setup(self, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology, mesh: RankMesh,
               fail_at: tuple[int, int] | None, share_weights: bool) -> None:
        """What every emulator needs: the rank's shard, its weights, its clocks. With `share_weights`
        (collective over mesh.comm), blocks that several ranks of one machine hold alike are
        generated once into the machine's shared memory (blockshare.py); else each rank generates
        all of its own."""
        self.model, self.layout, self.run, self.topo, self.mesh = model, layout, run, topo, mesh
        self.fail_at = fail_at  # (step, rank): raise there, to test that a failing rank stops the job
        self.shard = rank_shard(model, layout, mesh.rank)
        self.family = family(model)  # the attention family's math (GQA, MLA)
        self.kvp_rank = mesh.coord(Axis.KVP)
        rules = rules_for(layout)
        self.data_parallel = rules.data_parallel  # each rank decodes its own requests
        self.pipelined = rules.pipelined  # each stage of ranks runs its own layers
        self.layers_run = rules.rank_layers(layout, mesh.rank, run.layers)
        self.blocks = self._weight_source(share_weights)
        self.weights = [layer_weights(model, run.seed, layer, self.shard, run.storage, self.blocks)
                        if layer in self.layers_run else None for layer in range(run.layers)]
        self.not_before: float | None = None  # a stage receive starts no earlier than its send
        self.clocks, self.timer = StreamClocks(1), TimeModel(topo, run.implementation())
        self.step_events: list[tuple] = []
        self.routing_log: dict[int, list] = {}  # MoE layer -> per step (experts [b, k], weights [b, k])
        self.keep_rows = True  # keep what the reference check needs (the routing of MoE layers, ...)

    def _weight_source(self, share_weights: bool) -> BlockSource:
        if not share_weights:
            return PRIVATE_BLOCKS
        wanted = weight_blocks(self.model, self.run.seed, self.layers_run, self.shard, self.run.storage)
        return share_blocks(self.mesh.comm, wanted)

    def release_weights(self) -> None:
        """Drop the weights and free the machine's shared window, if any: collective over the
        machine's ranks then (each calls it once its decode is done). The emulator can not decode
        after it."""
        self.weights = None
        self.blocks.free()

    def _initial_cache(self, layer: int) -> ShardedKVCache:
        run, model, layout = self.run, self.model, self.layout
        positions = owned_positions(run.context, self.kvp_rank, layout.kvp, run.tokens_per_block)
        fam = family(model)
        k, v = initial_kv(run.seed, layer, self.requests, fam.cache_heads(model), run.context, fam.cache_width(model),
                          self.shard.kv_heads, positions, run.key_scale, with_values=fam.with_values)
        capacity = int(tokens_held(run.context + run.steps, layout.kvp, run.tokens_per_block)[self.kvp_rank])
        return ShardedKVCache(k, v, capacity, storage_dtype(run.storage))

    # --- the decode loop -------------------------------------------------------------------
    def decode(self, sink: StepSink | None = None) -> EmulationResult:
        """Every decode step. What grows with the steps is allocated up front (step times) or kept
        only when asked (`keep_rows`: inputs and outputs on rank 0), so memory stays flat."""
        run, model = self.run, self.model
        x = initial_input(model, run.seed, run.batch)[self.requests.start:self.requests.stop]
        kept = _RowLog(run.steps, run.batch, model.hidden_size) if self.keep_rows and self.mesh.rank == 0 else None
        step_times = np.zeros(run.steps)
        quiet_barrier(self.mesh.comm)  # ranks done with their data first sleep: the others get the cores
        self.host_t0 = time.perf_counter()
        ids = np.arange(self.requests.start, self.requests.stop)
        for step in range(run.steps):
            position = run.context + step
            if self.fail_at == (step, self.mesh.rank):
                raise RuntimeError(f"injected failure at step {step} (--fail-at)")
            owner = (position // run.tokens_per_block) % self.layout.kvp == self.kvp_rank
            batch = StepBatch(ids, np.full(len(ids), position, dtype=np.int64), np.full(len(ids), owner))
            if self.pipelined:
                self._align_clocks()
            step_start = float(self.clocks.now()[0])
            x_in = self._whole_batch(x) if self.keep_rows else None  # a collective under dp-ep: every rank
            self.step_events = []
            for layer in self.layers_run:
                x = self._layer(step, layer, x, batch)
            self._tail(step, batch)
            if self.pipelined:
                x = self._last_stage_output(x)
            x_out = self._whole_batch(x) if self.keep_rows else None
            if kept is not None:
                kept.add(step, x_in, x_out)
            step_times[step] = self._step_end() - step_start
            self._flush_step(step, sink)
            x = next_step_input(x, model)
        host_seconds = time.perf_counter() - self.host_t0
        positions = np.arange(run.context, run.context + run.steps, dtype=np.int64)
        inputs, outputs = (kept.inputs, kept.outputs) if kept is not None else (None, None)
        return EmulationResult(inputs, outputs, positions, step_times, host_seconds,
                               self._whole_routing() if self.keep_rows else {})

    # --- pipeline stages ---------------------------------------------------------------------
    def _align_clocks(self) -> None:
        """Every stage starts a step when the previous one has ended everywhere (the last stage's
        sampled token feeds the first stage; without micro-batches the stages take turns)."""
        start = self.mesh.comm.allreduce(float(self.clocks.now()[0]), op=MPI.MAX)
        for stream in self.clocks.free:
            self.clocks.free[stream][:] = start

    def _step_end(self) -> float:
        """When the step ended: on this rank, or on the last rank to finish under pipeline stages."""
        end = float(self.clocks.now()[0])
        return self.mesh.comm.allreduce(end, op=MPI.MAX) if self.pipelined else end

    def _last_stage_output(self, x: np.ndarray) -> np.ndarray:
        """The last stage's output [B, H] on the first stage's ranks (the next step's input and
        rank 0's record; a host transfer, not timed: the modeled step ends with the last stage)."""
        n, stages, rank = self.layout.world_size // self.layout.pp, self.layout.pp, self.mesh.rank
        if rank >= (stages - 1) * n:
            self.mesh.comm.send(x, dest=rank % n, tag=_OUTPUT_TAG)
        if rank < n:
            x = self.mesh.comm.recv(source=(stages - 1) * n + rank, tag=_OUTPUT_TAG)
        return x

    def _whole_routing(self) -> dict:
        """The routing of every MoE layer for the whole batch, [T, B, k] (dp-ep: gathered; pipeline
        stages: each stage's layers, gathered on rank 0)."""
        routing, log = {}, self.routing_log
        if self.pipelined:  # a host-only gather: every rank of a stage routed its layers alike
            parts = self.mesh.comm.gather(log, root=0) or [log]
            log = {layer: steps for part in parts for layer, steps in part.items()}
        for layer, per_step in log.items():
            experts = np.stack([self._whole_batch(e) for e, _ in per_step])
            weights = np.stack([self._whole_batch(w) for _, w in per_step])
            routing[layer] = (experts, weights)
        return routing

    def _whole_batch(self, x: np.ndarray) -> np.ndarray:
        """The full [B, H] batch on rank 0 (dp-ep ranks hold only their requests; host-only gather)."""
        if not self.data_parallel:
            return x
        parts = self.mesh.comm.gather(x, root=0)
        return np.concatenate(parts) if parts is not None else x

    def _layer(self, step: int, layer: int, x: np.ndarray, batch: StepBatch) -> np.ndarray:
        kv_lengths = self._held(layer) + batch.appends  # local tokens per request incl. the new one
        plan = layer_plan(self.model, self.layout, self.mesh.rank, layer, kv_lengths, self.timer.impl,
                          self.run.hopb, self.run.a2a_chunk, self.run.layers)
        state = _LayerState(x=x.copy())
        return self._run_plan(step, layer, plan, state, batch).x

    def _run_plan(self, step: int, layer: int, plan: list, state, batch: StepBatch):
        """Execute a plan's ops (their data effect on `state`), charge each its modeled time."""
        schedule = self.schedule = LayerSchedule(self.clocks, self.clocks.now(), self._group_max)
        for index, op in enumerate(plan):
            host_start = time.perf_counter() - self.host_t0
            op = self._execute(op, state, layer, batch) or op
            host_end = time.perf_counter() - self.host_t0
            seconds, source = self.timer.op_timing(op)
            not_before, self.not_before = self.not_before, None
            start, end = schedule.place(index, op, np.array([seconds]), not_before)
            request = int(batch.ids[op.request]) if op.request >= 0 else -1
            self._record(step, layer, index, op, request, float(start[0]), float(end[0]), host_start, host_end,
                         source, len(batch.ids))
        return state

    def _tail(self, step: int, batch: StepBatch) -> None:
        """The step's LM head, logits gather and sampling (recorded as layer `layers`). Time only:
        the emulated next-step input is RMSNorm of the last layer's output (README), so the LM
        head's math is not run; its kernels and gather are charged as `helix-mpi model` charges them."""
        plan = tail_plan(self.model, self.layout, self.mesh.rank, len(batch.ids), self.timer.impl)
        if plan:
            self._run_plan(step, self.run.layers, plan, None, batch)

    # --- the KV cache of the batch (a serving emulator keeps it in slots instead) -------------
    def _held(self, layer: int) -> np.ndarray:
        """Local KV tokens [b] of each request before the step's new token."""
        return self.caches[layer].lengths

    def _held_tokens(self) -> int:
        """Local KV tokens of the whole batch in the rank's first layer (the trace's /kv_tokens)."""
        return int(self.caches[self.layers_run.start].lengths.sum())

    def _store(self, layer: int, k: np.ndarray, v: np.ndarray | None, appends: np.ndarray) -> None:
        """Append the new tokens k, v [b, Kh, W] this rank owns (one position per step: all or none)."""
        if appends.any():
            self.caches[layer].append(k, v)

    def _attend(self, layer: int, q: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Partial attention of the requests `rows` over the local shard."""
        cache = self.caches[layer]
        return self._attention_kernel(q[rows], cache.k[rows], None if cache.v is None else cache.v[rows],
                                      cache.lengths[rows])

    def _attention_kernel(self, q: np.ndarray, k: np.ndarray, v: np.ndarray | None,
                          lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q [b, Qh, W], k, v [b, Kh, C, W], lengths [b] -> (out [b, Qh, D or L], lse [b, Qh])."""
        return self.family.partial_attention(q, k, v, lengths, self.model)

    def _group_max(self, axes, ready: np.ndarray) -> np.ndarray:
        return np.array([group_max(self.mesh.group(axes), float(ready[0]))])

    # --- op execution: each returns nothing, or the op with its data-dependent cost -----------
    def _execute(self, op: Op, state: _LayerState, layer: int, batch: StepBatch) -> Op | None:
        return getattr(self, "_op_" + op.name.value)(op, state, layer, batch)

    def _op_qkv(self, op, state, layer, batch):
        state.q, k, v = self.family.project(state.x, self.weights[layer].attn, batch.positions, self.model)
        self._store(layer, k, v, batch.appends)

    def _op_attention(self, op, state, layer, batch):
        rows = slice(None) if op.request < 0 else slice(op.request, op.request + op.requests)
        out, lse = self._attend(layer, state.q, rows)
        if op.request < 0:
            state.attention = out
        else:  # [c, Qh, W+1] out and lse of the chunk's requests
            state.partials.append(np.concatenate([out, lse[..., None]], axis=2))

    def _op_all_to_all(self, op, state, layer, batch):
        chunk = state.partials.pop(0)  # [c, Qh, W+1], split by heads over the KVP group
        requests, heads, width = chunk.shape
        send = np.ascontiguousarray(chunk.transpose(1, 0, 2)).reshape(heads, requests * width)
        received = all_to_all_heads(self.mesh.group(op.group), send, self.shard.a2a_splits)  # [KVP, n, c*(W+1)]
        state.received.append(received.reshape(len(received), -1, requests, width).transpose(0, 2, 1, 3))

    def _op_combine_out_proj(self, op, state, layer, batch):
        w = self.weights[layer].attn
        if state.attention is not None:
            combined = state.attention
        else:
            received = np.concatenate(state.received, axis=1)  # [KVP, B, n, W+1]
            combined, _ = kernels.combine(np.ascontiguousarray(received[..., :-1]),
                                          np.ascontiguousarray(received[..., -1]))  # [B, n, W]
        state.partial_sum = self.family.output(combined, w)
        self._add_if_residual(op, state)

    @staticmethod
    def _add_if_residual(op: Op, state: _LayerState) -> None:
        """A compute op whose result is not summed over ranks adds it to the residual at once."""
        if op.residual:
            state.x = state.x + state.partial_sum

    def _op_all_reduce_attn(self, op, state, layer, batch):
        state.partial_sum = all_reduce_sum(self.mesh.group(op.group), state.partial_sum)
        self._add_if_residual(op, state)

    def _op_ffn(self, op, state, layer, batch):
        state.partial_sum = feed_forward(state.x, self.weights[layer].ffn, self.model)
        self._add_if_residual(op, state)

    def _op_moe(self, op, state, layer, batch):
        w, moe = self.weights[layer].ffn, self.model.moe
        state.g = ffn_input(state.x, w, self.model)
        experts, weights = state.routing = route(state.g, w.router, moe)
        if self.keep_rows:
            self.routing_log.setdefault(layer, []).append(state.routing)
        if not any(k.kind is KernelKind.MOE for k in op.kernels):  # routed experts after a dispatch
            state.partial_sum = swiglu_mlp(state.g, w.shared) if w.shared is not None else np.zeros_like(state.g)
            return None
        state.partial_sum = moe_forward(state.g, w, experts, weights)
        held = np.isin(experts, np.asarray(self.shard.experts))
        return self._with_routing(op, len(np.unique(experts[held])), int(held.sum()))

    def _with_routing(self, op: Op, hit: int, pairs: int) -> Op:
        """The MoE op with the experts the real routing hit and the (token, expert) rows it made."""
        kernels = [dataclasses.replace(k, hit=float(hit), pairs=float(pairs)) if k.kind is KernelKind.MOE else k
                   for k in op.kernels]
        return dataclasses.replace(op, kernels=tuple(kernels), flops=total_flops(kernels),
                                   hbm_bytes=total_bytes(kernels))

    def _op_all_reduce_ffn(self, op, state, layer, batch):
        state.partial_sum = all_reduce_sum(self.mesh.group(op.group), state.partial_sum)
        self._add_if_residual(op, state)  # else the EP group's sum, gathered next

    def _op_all_gather_ep(self, op, state, layer, batch):
        state.partial_sum = all_gather(self.mesh.group(op.group), state.partial_sum).sum(axis=0)
        self._add_if_residual(op, state)

    def _op_all_to_all_dispatch(self, op, state, layer, batch):
        experts, weights = state.routing
        per_rank = self.model.moe.n_routed_experts // self.layout.ep
        tokens, slots = np.nonzero(np.ones_like(experts, dtype=bool))  # every (token, slot) pair
        chosen = experts[tokens, slots]
        order = np.argsort(chosen // per_rank, kind="stable")  # grouped by destination rank
        rows = np.concatenate([state.g[tokens], chosen[:, None].astype(np.float32),
                               weights[tokens, slots][:, None]], axis=1)[order]  # [n, H+2]
        counts = np.bincount(chosen // per_rank, minlength=self.layout.ep)
        received, received_counts = all_to_all_rows(self.mesh.group(op.group), rows, counts)
        state.dispatch = (received, tokens[order], counts, received_counts)

    def _op_experts(self, op, state, layer, batch):
        received = state.dispatch[0]
        w, H = self.weights[layer].ffn, self.model.hidden_size
        ids = received[:, H].astype(np.int64)
        out = np.zeros((len(received), H), dtype=np.float32)
        for expert in np.unique(ids):
            mask = ids == expert
            out[mask] = received[mask, H + 1][:, None] * swiglu_mlp(np.ascontiguousarray(received[mask, :H]),
                                                                  w.experts[int(expert)])
        state.dispatch = (out, *state.dispatch[1:])
        return self._with_routing(op, len(np.unique(ids)), len(ids))

    def _op_stage_send(self, op, state, layer, batch):
        """The activations, and when the send starts, to the same rank of the next stage."""
        ready = float(self.schedule.ready(op)[0])
        self.mesh.comm.send((state.x, ready), dest=op.peer, tag=_STAGE_TAG)

    def _op_stage_recv(self, op, state, layer, batch):
        """The previous stage's activations; the receive starts no earlier than their send."""
        state.x, self.not_before = self.mesh.comm.recv(source=op.peer, tag=_STAGE_TAG)

    def _op_lm_head(self, op, state, layer, batch):
        """Time only (see `_tail`)."""

    _op_logits_gather = _op_sampling = _op_lm_head

    def _op_all_to_all_combine(self, op, state, layer, batch):
        out, tokens, sent_counts, received_counts = state.dispatch
        returned, _ = all_to_all_rows(self.mesh.group(op.group), out, received_counts, sent_counts)
        np.add.at(state.partial_sum, tokens, returned)
        self._add_if_residual(op, state)

    # --- events --------------------------------------------------------------------------
    def _record(self, step: int, layer: int, index: int, op: Op, request: int, start: float, end: float,
                host_start: float, host_end: float, source: int, batch: int) -> None:
        self.step_events.append((self.mesh.rank, step, layer, request, index, *op_dep_fields(op),
                                 op.name.value, op.stream.value, *op_collective_fields(op), op.flops,
                                 *op_shape_fields(op, batch), SOURCES[source], start, end, host_start, host_end))

    def _flush_step(self, step: int, sink: StepSink | None) -> None:
        events = np.array(self.step_events, dtype=EVENT_DTYPE)
        held = self._held_tokens()
        gathered = self.mesh.comm.gather((events, held), root=0)
        if sink is not None and gathered is not None:
            all_events = np.concatenate([e for e, _ in gathered])
            sink(step, all_events, np.array([h for _, h in gathered], dtype=np.int64))
