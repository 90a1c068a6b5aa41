"""One emulation run on a communicator: build the mesh, decode, write the trace, check the result.

Callable from the CLI (COMM_WORLD under mpiexec, or a 1-rank job) and from tests (COMM_SELF or
COMM_WORLD), so the same code path is tested both ways.
"""
from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .analysis import shape_of, summarize
from .config import Layout, ModelConfig, RunConfig, check_run_fits_model, validate_layout
from .emulator import EmulationResult, Emulator, warm_up_kernels
from .memory import memory_report
from .mesh import RankMesh
from .reference import reference_decode, reference_tensors, relative_error
from .sharding import DenseFFNWeights
from .topology import Topology
from .trace import TraceWriter

# Sharded fp32 against the float64 reference: each output element is a sum of O(H + F) fp32
# products per layer, rounded at ~6e-8 relative; the errors stay random-signed, so the observed
# relative error is ~1e-6 after a few layers and steps. 1e-4 leaves ~100x margin for longer sums
# and reordered reductions while still catching any wrong head, token, shard or position.
REFERENCE_TOLERANCE = 1e-4
# Reference check by default only when the unsharded float64 model fits comfortably in memory.
AUTO_CHECK_MAX_BYTES = 2 << 30


@dataclass
class RunOutcome:
    result: EmulationResult
    summary: dict[str, Any] | None  # rank 0 only
    reference_error: float | None  # rank 0 only, when checked
    trace_path: Path | None


def reference_bytes(model: ModelConfig, run: RunConfig) -> int:
    """float64 bytes of the unsharded weights and KV caches the reference needs."""
    H, Q, K, D, F = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim, model.ffn_size
    per_layer = H * (Q + 2 * K) * D + Q * D * H + 3 * H * F + 2 * run.batch * K * (run.context + run.steps) * D
    return 8 * run.layers * per_layer * 2


def _arrays(weights: Any) -> dict[str, np.ndarray]:
    """The array fields of a weights dataclass (None fields skipped)."""
    return {f.name: getattr(weights, f.name) for f in dataclasses.fields(weights)
            if isinstance(getattr(weights, f.name), np.ndarray)}


def versions() -> dict[str, str]:
    import h5py
    import mpi4py
    import numba
    from mpi4py import MPI

    return {"helix_mpi": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "h5py": h5py.__version__, "mpi4py": mpi4py.__version__,
            "mpi": MPI.Get_library_version().splitlines()[0].strip()}


def trace_attributes(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> dict[str, Any]:
    return {
        "memory": json.dumps(run_memory(model, layout, run, topo)),
        "config": json.dumps({"model": model.to_dict(), "layout": layout.to_dict(), "run": run.to_dict(),
                              "strategy": layout.strategy.value}),
        "topology": json.dumps(topo.to_dict()),
        "versions": json.dumps(versions()),
        "world_size": layout.world_size,
    }


def run_memory(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology) -> dict[str, Any]:
    """Modeled per-GPU memory of the full model at the end of the run."""
    return memory_report(model, layout, run.batch, run.context + run.steps, run.precision, topo, run.tokens_per_block)


def run_emulation(comm: Any, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology,
                  output: str | Path | None = None, save_tensors: bool = False,
                  check: bool | None = None, progress: Any = None,
                  fail_at: tuple[int, int] | None = None) -> RunOutcome:
    """Run on `comm`; rank 0 writes the trace and (optionally) checks against the reference."""
    validate_layout(model, layout, comm.Get_size())
    check_run_fits_model(model, run)
    if check is None:
        check = reference_bytes(model, run) <= AUTO_CHECK_MAX_BYTES
    is_root = comm.Get_rank() == 0
    mesh = RankMesh.build(comm, layout)
    warm_up_kernels(comm)
    emulator = Emulator(model, layout, run, topo, mesh, fail_at)
    writer = TraceWriter(output, trace_attributes(model, layout, run, topo), layout.world_size) \
        if (is_root and output is not None) else None
    events = []

    def sink(step: int, step_events: np.ndarray, kv_tokens: np.ndarray) -> None:
        events.append(step_events)
        if writer is not None:
            writer.append_step(step_events, kv_tokens)
        if progress is not None:
            progress(step)

    try:
        result = emulator.decode(sink if is_root else None)
        summary = error = None
        if is_root:
            all_events = np.concatenate(events)
            summary = summarize(all_events, shape_of(layout.world_size, run.batch, run.layers, model))
            summary["host_seconds"] = result.host_seconds
            summary["memory"] = run_memory(model, layout, run, topo)
            if check or save_tensors:
                tensors = reference_tensors(model, run)
                if check:
                    _, expected = reference_decode(model, tensors, run.steps, run.context)
                    error = relative_error(result.outputs, expected)
                    summary["reference_error"] = error
                    summary["reference_tolerance"] = REFERENCE_TOLERANCE
                if writer is not None and save_tensors:
                    _write_tensors(writer, model, tensors, result)
            if writer is not None:
                writer.write_group("summary", {}, {"json": json.dumps(summary)})
                path = writer.finish()
                summary["trace"] = str(path)
    finally:
        mesh.free()
    return RunOutcome(result, summary, error, Path(output) if (is_root and output) else None)


def _write_tensors(writer: TraceWriter, model: ModelConfig, tensors: Any, result: EmulationResult) -> None:
    """/tensors: everything needed to recompute the run independently (README, 'Saved tensors')."""
    for layer, w in enumerate(tensors.weights):
        prefix = f"tensors/weights/layer_{layer}"
        writer.write_group(prefix, _arrays(w.attn) | {"ffn_norm": w.ffn.ffn_norm})
        if isinstance(w.ffn, DenseFFNWeights):
            writer.write_group(prefix, _arrays(w.ffn.mlp))
        else:
            writer.write_group(prefix, {"router": w.ffn.router})
            for expert, mlp in w.ffn.experts.items():
                writer.write_group(f"{prefix}/experts/{expert}", _arrays(mlp))
            if w.ffn.shared is not None:
                writer.write_group(f"{prefix}/shared", _arrays(w.ffn.shared))
        cache = {"k": tensors.k_init[layer]} if model.mla is None else {"latent": tensors.k_init[layer]}
        if model.mla is None:
            cache["v"] = tensors.v_init[layer]
        writer.write_group(f"tensors/kv_init/layer_{layer}", cache)
    for layer, (experts, weights) in result.routing.items():
        writer.write_group(f"tensors/routing/layer_{layer}", {"experts": experts, "weights": weights})
    writer.write_group("tensors", {"inputs": result.inputs, "outputs": result.outputs,
                                   "positions": result.positions},
                       {"model": json.dumps(model.to_dict())})
