"""The emulator: every rank executes its layer plans on real sharded data with real MPI
collectives, and charges each op the time the modeled hardware would take on its virtual clocks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from mpi4py import MPI

from . import kernels
from .axes import Axis
from .clock import LayerSchedule, StreamClocks, op_duration
from .collectives import all_reduce_sum, all_to_all_heads, group_max
from .config import Layout, ModelConfig, RunConfig
from .kvcache import ShardedKVCache, initial_kv, owned_positions, tokens_held
from .mesh import RankMesh
from .model import feed_forward, next_step_input, project_output, project_qkv
from .plan import Op, OpName, helix_layer_plan, op_collective_fields, op_dep_fields
from .sharding import helix_shard, initial_input, layer_weights
from .topology import Topology
from .trace import EVENT_DTYPE

StepSink = Callable[[int, np.ndarray, np.ndarray], None]  # (step, events of all ranks, kv tokens [N])


@dataclass
class EmulationResult:
    """What rank 0 returns (other ranks return the same arrays for their own checks)."""

    inputs: np.ndarray  # [T, B, H] input of layer 0 at each step
    outputs: np.ndarray  # [T, B, H] output of the last layer at each step
    positions: np.ndarray  # [T] global position of each step's new token
    step_times: np.ndarray  # [T] modeled seconds of each step (emulated layers)
    host_seconds: float  # wall time of the decode loop on this machine


@dataclass
class _LayerState:
    """Activations of one layer on one rank while its plan executes."""

    x: np.ndarray  # [B, H] residual stream (full on every rank)
    q: np.ndarray | None = None  # [B, Qh, D]
    partials: list = field(default_factory=list)  # per request: [Qh, D+1] out and lse
    received: list = field(default_factory=list)  # per request: [KVP, n, D+1]
    partial_sum: np.ndarray | None = None  # [B, H] this rank's term of an all-reduce


def warm_up_kernels(comm: MPI.Comm) -> None:
    """Compile (or load from Numba's cache) on rank 0 first while the others wait (DESIGN.md 6)."""
    def compile_all() -> None:
        x = np.ones((1, 4), np.float32)
        q = np.ones((1, 2, 4), np.float32)
        kv = np.ones((1, 1, 2, 4), np.float32)
        kernels.rms_norm(x, None, 1e-5)
        kernels.rms_norm(x, np.ones(4, np.float32), 1e-5)
        kernels.apply_rope(q, np.zeros(1, np.int64), 10000.0)
        out, lse = kernels.partial_attention(q, kv, kv, np.ones(1, np.int64))
        kernels.combine(out[None], lse[None])
        kernels.swiglu(x, np.ones((4, 2), np.float32), np.ones((4, 2), np.float32))
        initial_kv(0, 0, 1, 1, 1, 4, range(1), np.zeros(1, np.int64))
    if comm.Get_rank() == 0:
        compile_all()
    comm.Barrier()
    if comm.Get_rank() != 0:
        compile_all()


class HelixEmulator:
    """One rank's share of a Helix decode run (dense GQA model)."""

    def __init__(self, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology, mesh: RankMesh):
        self.model, self.layout, self.run, self.topo, self.mesh = model, layout, run, topo, mesh
        self.shard = helix_shard(model, layout, mesh.rank)
        self.kvp_rank = mesh.coord(Axis.KVP)
        self.weights = [layer_weights(model, run.seed, layer, self.shard) for layer in range(run.layers)]
        self.caches = [self._initial_cache(layer) for layer in range(run.layers)]
        self.clocks = StreamClocks(1)
        self.step_events: list[tuple] = []

    def _initial_cache(self, layer: int) -> ShardedKVCache:
        run, model, layout = self.run, self.model, self.layout
        positions = owned_positions(run.context, self.kvp_rank, layout.kvp, run.tokens_per_block)
        k, v = initial_kv(run.seed, layer, run.batch, model.num_kv_heads, run.context, model.head_dim,
                          self.shard.kv_heads, positions, run.key_scale)
        capacity = int(tokens_held(run.context + run.steps, layout.kvp, run.tokens_per_block)[self.kvp_rank])
        return ShardedKVCache(k, v, capacity)

    # --- the decode loop -------------------------------------------------------------------
    def decode(self, sink: StepSink | None = None) -> EmulationResult:
        run, model = self.run, self.model
        x = initial_input(model, run.seed, run.batch)
        inputs, outputs, step_times = [], [], []
        self.mesh.comm.Barrier()
        self.host_t0 = time.perf_counter()
        for step in range(run.steps):
            position = run.context + step
            step_start = float(self.clocks.now()[0])
            inputs.append(x)
            self.step_events = []
            for layer in range(run.layers):
                x = self._layer(step, layer, x, position)
            outputs.append(x)
            step_times.append(float(self.clocks.now()[0]) - step_start)
            self._flush_step(step, sink)
            x = next_step_input(x, model)
        host_seconds = time.perf_counter() - self.host_t0
        positions = np.arange(run.context, run.context + run.steps, dtype=np.int64)
        return EmulationResult(np.stack(inputs), np.stack(outputs), positions, np.array(step_times), host_seconds)

    def _layer(self, step: int, layer: int, x: np.ndarray, position: int) -> np.ndarray:
        cache = self.caches[layer]
        owner_appends = (position // self.run.tokens_per_block) % self.layout.kvp == self.kvp_rank
        kv_lengths = cache.lengths + (1 if owner_appends else 0)  # local tokens incl. the new one
        plan = helix_layer_plan(self.model, self.layout, self.mesh.rank, kv_lengths, self.run.precision,
                                self.run.hopb)
        schedule = LayerSchedule(self.clocks, self.clocks.now(), self._group_max)
        state = _LayerState(x=x.copy())
        for index, op in enumerate(plan):
            host_start = time.perf_counter() - self.host_t0
            self._execute(op, state, layer, position, owner_appends)
            host_end = time.perf_counter() - self.host_t0
            start, end = schedule.place(index, op, op_duration(op, self.topo, self.run.precision))
            self._record(step, layer, index, op, float(start[0]), float(end[0]), host_start, host_end)
        return state.x

    def _group_max(self, axes, ready: np.ndarray) -> np.ndarray:
        return np.array([group_max(self.mesh.group(axes), float(ready[0]))])

    # --- op execution --------------------------------------------------------------------
    def _execute(self, op: Op, state: _LayerState, layer: int, position: int, owner_appends: bool) -> None:
        w, model = self.weights[layer], self.model
        if op.name is OpName.QKV:
            positions = np.full(len(state.x), position, dtype=np.int64)
            state.q, k, v = project_qkv(state.x, w, positions, model)
            if owner_appends:
                self.caches[layer].append(k, v)
        elif op.name is OpName.ATTENTION:
            b, cache = op.request, self.caches[layer]
            out, lse = kernels.partial_attention(state.q[b:b + 1], cache.k[b:b + 1], cache.v[b:b + 1],
                                                 cache.lengths[b:b + 1])
            state.partials.append(np.concatenate([out[0], lse[0][:, None]], axis=1))  # [Qh, D+1]
        elif op.name is OpName.ALL_TO_ALL:
            send = state.partials[op.request]
            state.received.append(all_to_all_heads(self.mesh.group(op.group), send, self.shard.a2a_splits))
        elif op.name is OpName.COMBINE_OUT_PROJ:
            received = np.stack(state.received, axis=1)  # [KVP, B, n, D+1]
            outs = np.ascontiguousarray(received[..., :-1])
            lses = np.ascontiguousarray(received[..., -1])
            combined, _ = kernels.combine(outs, lses)  # [B, n, D]
            state.partial_sum = project_output(combined, w)
        elif op.name in (OpName.ALL_REDUCE_ATTN, OpName.ALL_REDUCE_FFN):
            state.x = state.x + all_reduce_sum(self.mesh.group(op.group), state.partial_sum)
        elif op.name is OpName.FFN:
            state.partial_sum = feed_forward(state.x, w, model)
        else:  # pragma: no cover - a plan op without an executor is a programming error
            raise NotImplementedError(f"no executor for op {op.name}")

    # --- events --------------------------------------------------------------------------
    def _record(self, step: int, layer: int, index: int, op: Op, start: float, end: float,
                host_start: float, host_end: float) -> None:
        self.step_events.append((self.mesh.rank, step, layer, op.request, index, *op_dep_fields(op),
                                 op.name.value, op.stream.value, *op_collective_fields(op), op.flops,
                                 start, end, host_start, host_end))

    def _flush_step(self, step: int, sink: StepSink | None) -> None:
        events = np.array(self.step_events, dtype=EVENT_DTYPE)
        held = int(self.caches[0].lengths.sum())
        gathered = self.mesh.comm.gather((events, held), root=0)
        if sink is not None and gathered is not None:
            all_events = np.concatenate([e for e, _ in gathered])
            sink(step, all_events, np.array([h for _, h in gathered], dtype=np.int64))

