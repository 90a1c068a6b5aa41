"""Host memory of an emulation on this machine, estimated before any rank allocates (the memory
guard of `helix-mpi run`).

Per rank: the weight shards of the emulated layers and the KV cache shards at their final length
(context + steps), in the storage of --storage (fp32 4 B, bf16 2 B per element), plus the scratch
of one layer's initial cache while it is generated (float32, and its bf16 rounding), plus the
runtime (Python, NumPy, Numba, h5py, MPI). Rank 0 also holds the float64 reference when it
checks or saves tensors. Weight blocks that several ranks of one machine hold alike are counted
once per machine when the run shares them (blockshare.py, the default): the same plan the ranks
follow, from the same dry pass over their weights. Compared with what the machine can still give
(MemAvailable, or the cgroup's limit when lower). Checked against the peak private memory of
8-rank runs of `tiny` at 4M tokens (scripts/bench_hostmem.py): estimated 6.9 GB (fp32) and 5.9 GB
(bf16), measured 5.8 and 4.2 GB; one Llama-3.1-405B layer on 72 ranks, KVP=9 TPA=8: estimated
14.1 GB, measured 11.8 GB (Pss: the 0.6 GB they share counted once; scripts/bench_scale.py), and
with private weights 18.9 GB against 16.2 GB. The estimate errs high: a guard should not let a
run swap.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .axes import Axis
from .config import Layout, ModelConfig, RunConfig
from .kvcache import tokens_held
from .mesh import coordinates
from .plan import dp_requests, ffn_weight_elements, kv_elements_per_token, out_weight_elements, qkv_weight_elements
from .blockshare import plan_sharing
from .sharding import TRIVIAL_LAYOUT, RankShard, rank_shard, weight_blocks
from .strategies import rules_for

# One rank's interpreter, libraries and compiled kernels: 69-73 MB of private memory measured per
# rank with Numba imported, 32-55 MB since ranks load the precompiled kernels instead (tiny, 8 ranks,
# scripts/bench_hostmem.py, 2026-12-02); 75 MB is kept as a margin. The libraries' code pages
# (175-195 MB resident per rank, of which the rest is shared) are counted once per machine.
RUNTIME_PRIVATE_BYTES = 75e6
SHARED_LIBRARY_BYTES = 130e6
AUTO_CHECK_MAX_BYTES = 2 << 30  # check against the reference by default when it fits in this
STORAGE_BYTES = {"fp32": 4, "bf16": 2}
GB = 1e9


@dataclass(frozen=True)
class HostMemory:
    """Peak host bytes of the ranks of one machine [n] by part, and what the machine keeps once."""

    weights: np.ndarray  # [n] weight blocks each rank keeps in its own memory (emulated layers)
    kv: np.ndarray  # [n] KV cache shards at their final length
    scratch: np.ndarray  # [n] one layer's initial cache while it is generated (float32 + bf16 rounding)
    reference: np.ndarray  # [n] float64 reference (rank 0, with --check or --save-tensors)
    shared_weights: float = 0.0  # weight blocks 2+ of its ranks hold alike, kept once in shared memory

    @property
    def per_rank(self) -> np.ndarray:
        return self.weights + self.kv + self.scratch + self.reference + RUNTIME_PRIVATE_BYTES

    @property
    def total(self) -> float:
        return float(self.per_rank.sum()) + self.shared_weights + SHARED_LIBRARY_BYTES


def weight_elements(model: ModelConfig, shard: RankShard, layers: int | range) -> int:
    """Weights a rank holds for the first `layers` layers, or the layers of a range (a pipeline
    stage's), norms and biases aside."""
    attention = qkv_weight_elements(model, shard) + out_weight_elements(model, shard)
    held = range(layers) if isinstance(layers, int) else layers
    return sum(attention + ffn_weight_elements(model, shard, layer) for layer in held)


def cache_elements(model: ModelConfig, layout: Layout, run: RunConfig, rank: int) -> int:
    """KV elements of one layer on a rank when every request holds context + steps tokens."""
    shard = rank_shard(model, layout, rank)
    tokens = run.context + run.steps
    if rules_for(layout).data_parallel:
        requests, held = len(dp_requests(run.batch, layout.world_size, rank)), tokens
    else:
        requests = run.batch
        held = int(tokens_held(tokens, layout.kvp, run.tokens_per_block)[coordinates(layout, rank)[Axis.KVP]])
    return requests * held * kv_elements_per_token(model, shard)


def reference_bytes(model: ModelConfig, run: RunConfig) -> float:
    """Peak bytes of the unsharded float64 reference (reference.py): the float32 tensors it is
    given, the float64 caches and the copy each appended token makes, one layer's float64 weights,
    and the GQA repeat of one layer's K and V for every query head."""
    full = rank_shard(model, TRIVIAL_LAYOUT, 0)
    weights = weight_elements(model, full, run.layers)
    cache = run.batch * (run.context + run.steps) * kv_elements_per_token(model, full)  # one layer
    repeat = model.group_size if model.mla is None else 1
    return 4.0 * (weights + run.layers * cache) + 8.0 * (2 * run.layers * cache + weights / run.layers
                                                          + repeat * cache)


def will_check(model: ModelConfig, run: RunConfig, check: bool | None) -> bool:
    """--check/--no-check, or by default whether the float64 reference fits comfortably."""
    return check if check is not None else reference_bytes(model, run) <= AUTO_CHECK_MAX_BYTES


def estimate_run(model: ModelConfig, layout: Layout, run: RunConfig, with_reference: bool,
                 machine_ranks: Sequence[int] | None = None, share_weights: bool = True) -> HostMemory:
    """Peak host memory of the ranks of a fixed-batch emulation that run on one machine
    (`machine_ranks`, world ranks; default: all of them), in that order; with `share_weights`,
    the blocks 2+ of them hold alike counted once (`shared_weights`)."""
    ranks = list(range(layout.world_size)) if machine_ranks is None else list(machine_ranks)
    held = [rules_for(layout).rank_layers(layout, r, run.layers) for r in ranks]  # a stage's layers under pp
    wanted = [weight_blocks(model, run.seed, layers, rank_shard(model, layout, r), run.storage)
              for r, layers in zip(ranks, held)]
    plan = plan_sharing(wanted if share_weights else [])
    weights = np.array([plan.private_bytes(specs) for specs in wanted], dtype=float)
    cache = np.array([cache_elements(model, layout, run, r) for r in ranks], dtype=float)
    reference = np.array([reference_bytes(model, run) if with_reference and r == 0 else 0.0 for r in ranks])
    scratch = cache * (4.0 + (2.0 if run.storage == "bf16" else 0.0))
    layers_held = np.array([len(layers) for layers in held], dtype=float)
    return HostMemory(weights, cache * layers_held * STORAGE_BYTES[run.storage], scratch, reference,
                      float(plan.window_bytes))


def available_bytes() -> float | None:
    """What this machine can still give: MemAvailable, or the cgroup's limit left when lower;
    None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(float(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = float(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(float(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def refusal(memory: HostMemory, available: float, run: RunConfig) -> str | None:
    """One line when the run needs more than is available (None when it fits): needed vs
    available, and the flags that would shrink it."""
    if memory.total <= available:
        return None
    busiest = int(np.argmax(memory.per_rank))
    parts = {"KV cache": memory.kv, "its float32 generation": memory.scratch, "weights": memory.weights,
             "float64 reference": memory.reference}
    shown = " + ".join(f"{name} {part[busiest] / GB:.2f}" for name, part in parts.items()
                       if part[busiest] >= 0.01 * memory.per_rank[busiest])
    shared = f", and {memory.shared_weights / GB:.1f} GB of weights they share" if memory.shared_weights else ""
    return (f"this run needs about {memory.total / GB:.1f} GB of host memory ({len(memory.per_rank)} ranks, "
            f"the largest {memory.per_rank[busiest] / GB:.2f} GB: {shown} GB{shared}) but this machine has "
            f"{available / GB:.1f} GB available: use {_shrinking_flags(memory, run)}, or --force to run anyway")


def _shrinking_flags(memory: HostMemory, run: RunConfig) -> str:
    flags = []
    if run.storage == "fp32":
        flags.append("--storage bf16")
    if run.layers > 1:
        flags.append(f"fewer --layers (now {run.layers})")
    if memory.kv.sum() >= memory.weights.sum() + memory.shared_weights:
        flags.append(f"a smaller --context (now {run.context})")
        if run.batch > 1:
            flags.append(f"a smaller --batch (now {run.batch})")
    if memory.reference.sum() > 0.25 * memory.total:
        flags.append("--no-check")
    return ", ".join(flags) if flags else "fewer or smaller layers"
