"""Trace-driven serving on real ranks: `ServingEmulator` (one rank's share of continuous batching
of a request trace, `serving.py`'s scheduler on the emulator's plans) and `SlotKVPool` (the KV
shards of the requests a rank serves, one reusable slot per request)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from . import synth
from .collectives import quiet_barrier
from .config import Layout, ModelConfig, RunConfig
from .emulator import Emulator, StepBatch, StepSink
from .families import empty_partials, family
from .kvcache import kvp_owner, owned_positions, storage_dtype, to_storage
from .mesh import RankMesh
from .model import next_step_input
from .serving import Scheduler, emulated_layer_weights
from .sharding import UNIT
from .topology import Topology


def request_input(model: ModelConfig, seed: int, request: int) -> np.ndarray:
    """Input of layer 0 at a served request's first decode step [H], unit variance; keyed by the
    request's row in its trace file, so it does not depend on the batch it joins."""
    return synth.vector(seed, f"request{request}.x0", model.hidden_size, UNIT)


def request_kv(model: ModelConfig, seed: int, request: int, layer: int, kv_heads: range, positions: np.ndarray,
               key_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """A served request's prompt KV (post-RoPE keys, values; MLA: the latent cache and None) at the
    given KV heads and positions, [Kh, n, W] each, as a prefill pool would have computed it.

    Element [h, p, d] of the request's virtual cache [K, S, W] is a pure function of (seed, request,
    layer, p, h, d), position-major: it does not depend on the prompt length S."""
    fam = family(model)
    heads, width = fam.cache_heads(model), fam.cache_width(model)
    h = np.asarray(kv_heads, dtype=np.int64)[:, None]
    p = np.asarray(positions, dtype=np.int64)[None, :]
    starts = ((p * heads + h) * width).reshape(-1)
    shape = (len(kv_heads), p.shape[1], width)
    name = f"request{request}.layer{layer}"
    k = synth.rows(seed, name + ".k_init", starts, width, UNIT * key_scale).reshape(shape)
    v = synth.rows(seed, name + ".v_init", starts, width, UNIT).reshape(shape) if fam.with_values else None
    return k, v


class SlotKVPool:
    """The KV shards of the requests a rank serves: one slot per request holding, per layer,
    k, v [Kh, C, W] (v None for MLA) and the tokens held. A leaving request's slot goes back to the
    free list and the next request to join reuses it (no allocation once the pool is warm)."""

    def __init__(self, layers: int, heads: int, width: int, capacity: int, with_values: bool,
                 dtype: type = np.float32):
        self.shape = (heads, max(capacity, 1), width)
        self.layers, self.with_values, self.dtype = layers, with_values, dtype
        self.k: list[list[np.ndarray]] = [[] for _ in range(layers)]  # [layer][slot] -> [Kh, C, W]
        self.v: list[list[np.ndarray | None]] = [[] for _ in range(layers)]
        self.lengths = np.zeros((layers, 0), dtype=np.int64)  # [layers, slots]
        self.free: list[int] = []
        self.taken = 0  # requests that have taken a slot so far

    @property
    def slots(self) -> int:
        return self.lengths.shape[1]

    def take(self, k_init: list[np.ndarray], v_init: list[np.ndarray | None]) -> int:
        """A slot filled with one request's shard per layer, k_init[l], v_init[l] [Kh, n, W]."""
        if not self.free:
            for layer in range(self.layers):
                self.k[layer].append(np.zeros(self.shape, dtype=self.dtype))
                self.v[layer].append(np.zeros(self.shape, dtype=self.dtype) if self.with_values else None)
            self.lengths = np.concatenate([self.lengths, np.zeros((self.layers, 1), dtype=np.int64)], axis=1)
            self.free.append(self.slots - 1)
        slot = self.free.pop()
        for layer in range(self.layers):
            held = k_init[layer].shape[1]
            self.k[layer][slot][:, :held] = to_storage(k_init[layer], self.dtype)
            if self.with_values:
                self.v[layer][slot][:, :held] = to_storage(v_init[layer], self.dtype)
            self.lengths[layer, slot] = held
        self.taken += 1
        return slot

    def release(self, slot: int) -> None:
        self.lengths[:, slot] = 0
        self.free.append(slot)

    def append(self, layer: int, slots: np.ndarray, k: np.ndarray, v: np.ndarray | None, mask: np.ndarray) -> None:
        """Store the new token k, v [b, Kh, W] of the requests in `slots` [b] where mask [b] is set."""
        k = to_storage(np.ascontiguousarray(k), self.dtype)
        v = None if v is None else to_storage(np.ascontiguousarray(v), self.dtype)
        for b in np.flatnonzero(mask):
            slot, at = slots[b], self.lengths[layer, slots[b]]
            self.k[layer][slot][:, at] = k[b]
            if self.with_values:
                self.v[layer][slot][:, at] = v[b]
            self.lengths[layer, slot] = at + 1

    def view(self, layer: int, slot: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(k [1, Kh, C, W], v or None, lengths [1]) of one slot, as the attention kernel takes them."""
        v = self.v[layer][slot]
        return self.k[layer][slot][None], None if v is None else v[None], self.lengths[layer, slot:slot + 1]


@dataclass
class ServingResult:
    """What a serving rank returns (outputs on rank 0 only, when kept)."""

    inputs: dict  # request -> [T_r, H] input of layer 0 at each of its steps
    outputs: dict  # request -> [T_r, H] output of the last layer at each of its steps
    steps: int
    host_seconds: float  # wall time of the serving loop on this machine
    slots: int  # KV slots this rank allocated
    requests_served: int  # requests that took a slot on this rank
    kv_tokens_left: int  # KV tokens still held when the last request left (0: all freed)


class ServingEmulator(Emulator):
    """One rank's share of trace-driven decode serving (serving.py, module docstring).

    Every rank runs the same Scheduler on the same clock, so all agree on each step's batch. A
    request joining the batch gets a KV slot on every rank holding part of it, filled with its
    synthetic prompt KV (the rank's round-robin positions and KV heads; under dp-ep the whole
    request on its owner); it decodes one token per step at its own position (RoPE per request)
    and its slots are freed when it leaves. Modeled time: each step starts on every rank at the
    same emulated time (the max over ranks of the previous step's end); the serving clock
    advances by the step's emulated time, each layer weighted to the full model
    (serving.emulated_layer_weights).
    """

    def __init__(self, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology, mesh: RankMesh,
                 scheduler: Scheduler, fail_at: tuple[int, int] | None = None, share_weights: bool = False):
        self._setup(model, layout, run, topo, mesh, fail_at, share_weights)
        self.scheduler = scheduler
        fam = self.family
        self.pool = SlotKVPool(run.layers, len(self.shard.kv_heads), fam.cache_width(model), scheduler.max_held(mesh.rank),
                               fam.with_values, storage_dtype(run.storage))
        self.slot_of: dict[int, int] = {}  # request -> slot
        self.x: dict[int, np.ndarray] = {}  # request -> [H] input of layer 0 at its next step
        self.slots = np.zeros(0, dtype=np.int64)  # [b] slots of the step's local requests
        # full-model weight of each emulated layer [layers], then the tail's, charged once per step
        self.layer_weight = np.concatenate([emulated_layer_weights(model, run.layers), [1.0]])

    def serve(self, sink: StepSink | None = None, keep_outputs: bool = False) -> ServingResult:
        sched, comm = self.scheduler, self.mesh.comm
        kept: dict[int, list] = {}  # request -> [(input [H], output [H]) per step]
        now, emulated, step = sched.first_arrival, 0.0, 0
        quiet_barrier(comm)  # ranks done with their data first sleep: the others get the cores
        self.host_t0 = time.perf_counter()
        while not sched.done:
            if self.fail_at == (step, self.mesh.rank):
                raise RuntimeError(f"injected failure at step {step} (--fail-at)")
            start, requests = sched.next_step(now)
            local = requests if not self.data_parallel else requests[sched.owner[requests] == self.mesh.rank]
            batch = self._join(local)
            x_in = np.array([self.x[r] for r in local], np.float32).reshape(len(local), self.model.hidden_size)
            ends, x = self._step(step, x_in, batch, emulated)  # ends [layers + 1], x [b, H]
            now = start + float(np.diff(np.concatenate([[emulated], ends])) @ self.layer_weight)
            emulated = float(ends[-1])
            if keep_outputs:
                self._keep(kept, local, x_in, x)
            self.x.update(zip(map(int, local), next_step_input(x, self.model)))
            finished = sched.end_step(requests, start, now)
            self._flush_step(step, sink)
            self._leave(finished)
            step += 1
        host_seconds = time.perf_counter() - self.host_t0
        inputs = {r: np.stack([i for i, _ in rows]) for r, rows in kept.items()}
        outputs = {r: np.stack([o for _, o in rows]) for r, rows in kept.items()}
        return ServingResult(inputs, outputs, step, host_seconds,
                             self.pool.slots, self.pool.taken, int(self.pool.lengths.sum()))

    def _join(self, local: np.ndarray) -> StepBatch:
        """Slots for the local requests that join now; the step's positions and owned appends."""
        sched, run = self.scheduler, self.run
        for r in map(int, local):
            if r not in self.slot_of:
                index = int(sched.index[r])
                held = self._positions_held(int(sched.input[r]))
                kv = [request_kv(self.model, run.seed, index, layer, self.shard.kv_heads, held, run.key_scale)
                      for layer in range(run.layers)]
                self.slot_of[r] = self.pool.take([k for k, _ in kv], [v for _, v in kv])
                self.x[r] = request_input(self.model, run.seed, index)
        self.slots = np.array([self.slot_of[int(r)] for r in local], dtype=np.int64)
        positions = sched.input[local] + sched.generated[local]  # [b] the new token's position
        appends = kvp_owner(positions, run.tokens_per_block, self.layout.kvp) == self.kvp_rank
        return StepBatch(local, positions, appends)

    def _positions_held(self, prompt: int) -> np.ndarray:
        """Prompt positions this rank holds: its round-robin blocks (the whole prompt under dp-ep)."""
        return owned_positions(prompt, self.kvp_rank, self.layout.kvp, self.run.tokens_per_block)

    def _step(self, step: int, x: np.ndarray, batch: StepBatch, start: float) -> tuple[np.ndarray, np.ndarray]:
        """All emulated layers and the tail from the common start; returns (global end of each
        [layers + 1], x)."""
        for stream in self.clocks.free:
            self.clocks.free[stream][:] = start
        self.step_events, self.routing_log = [], {}
        ends = np.empty(self.run.layers + 1)
        for layer in range(self.run.layers):
            x = self._layer(step, layer, x, batch)
            ends[layer] = self.clocks.now()[0]
        self._tail(step, batch)
        ends[-1] = self.clocks.now()[0]  # the tail (LM head, sampling) ends the step
        self.mesh.comm.Allreduce(MPI.IN_PLACE, ends, op=MPI.MAX)
        return ends, x

    def _keep(self, kept: dict, local: np.ndarray, x_in: np.ndarray, x_out: np.ndarray) -> None:
        """Rank 0 keeps every request's input and output rows (dp-ep: gathered from the owners)."""
        parts = [(local, x_in, x_out)] if self.mesh.rank == 0 else []
        if self.data_parallel:  # a collective: every rank takes part
            parts = self.mesh.comm.gather((local, x_in, x_out), root=0) or []
        for ids, rows_in, rows_out in parts:
            for r, row_in, row_out in zip(ids, rows_in, rows_out):
                kept.setdefault(int(r), []).append((row_in, row_out))

    def _leave(self, finished: np.ndarray) -> None:
        for r in map(int, finished):
            if r in self.slot_of:
                self.pool.release(self.slot_of.pop(r))
                del self.x[r]

    # --- the KV cache of the batch: slots --------------------------------------------------------
    def _held(self, layer: int) -> np.ndarray:
        return self.pool.lengths[layer, self.slots]

    def _held_tokens(self) -> int:
        return int(self.pool.lengths[0, self.slots].sum())

    def _store(self, layer: int, k: np.ndarray, v: np.ndarray | None, appends: np.ndarray) -> None:
        self.pool.append(layer, self.slots, k, v, appends)

    def _attend(self, layer: int, q: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        rows = range(len(q))[rows]
        parts = [self._attention_kernel(q[b:b + 1], *self.pool.view(layer, self.slots[b])) for b in rows]
        if not parts:  # a dp-ep rank with no request this step
            return empty_partials(self.model, q.shape[1])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
