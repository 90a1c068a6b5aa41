"""One emulation run on a communicator: build the mesh, decode, write the trace, check the result.

Callable from the CLI (COMM_WORLD under mpiexec, or a 1-rank job) and from tests (COMM_SELF or
COMM_WORLD), so the same code path is tested both ways.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, startup
from .collectives import quiet_bcast
from .config import Layout, ModelConfig, RunConfig, check_run_fits_model, validate_layout
from .emulator import EmulationResult, Emulator, warm_up_kernels
from .serving_emulator import ServingEmulator, ServingResult, request_input, request_kv
from .hostmem import AUTO_CHECK_MAX_BYTES, reference_bytes, will_check
from .memory import memory_report
from .mesh import RankMesh
from .families import family
from .serving import Scheduler, ServingSetup, scalar_metrics
from .kvcache import round_to_storage
from .sharding import DenseFFNWeights, full_layer_weights, rounded_weights
from .topology import Topology
from .trace import TraceWriter
from .workload import Workload

# Sharded fp32 against the float64 reference: each output element is a sum of O(H + F) fp32
# products per layer, rounded at ~6e-8 relative; the errors stay random-signed, so the observed
# relative error is ~1e-6 after a few layers and steps. 1e-4 leaves ~100x margin for longer sums
# and reordered reductions while still catching any wrong head, token, shard or position.
REFERENCE_TOLERANCE = 1e-4


@dataclass
class RunOutcome:
    result: EmulationResult
    summary: dict[str, Any] | None  # rank 0 only
    reference_error: float | None  # rank 0 only, when checked
    trace_path: Path | None


def _arrays(weights: Any) -> dict[str, np.ndarray]:
    """The array fields of a weights dataclass (None fields skipped)."""
    return {f.name: getattr(weights, f.name) for f in dataclasses.fields(weights)
            if isinstance(getattr(weights, f.name), np.ndarray)}


def versions() -> dict[str, str]:
    """Of the packages behind a trace; `kernels`: which machine code ran them (kernels.compiled)."""
    from importlib.metadata import version

    import h5py
    import mpi4py
    from mpi4py import MPI

    from .kernels.compiled import backend

    return {"helix_mpi": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": version("numba"), "h5py": h5py.__version__, "mpi4py": mpi4py.__version__,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(), "kernels": backend().name}


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
    return memory_report(model, layout, run.batch, run.context + run.steps, run.precision, topo, run.tokens_per_block,
                         run.kv_precision)


def share_calibration(comm: Any, topo: Topology) -> None:
    """Rank 0 reads the topology's measured tables and fits their physical models (calibration:
    0.2-0.3 s of CPU, one process) and sends them (0.9 MB) to every other rank, which would otherwise
    redo it in its first decode step (72 ranks: some 20 s of CPU). The values are the same bit for
    bit (pickled floats and arrays), so no modeled time changes."""
    calibration = getattr(topo, "calibration", None)
    if calibration is None or comm.Get_size() == 1:
        return
    holders = (calibration.tables, calibration.fits, calibration.fits.collectives)
    values = [_computed_properties(h) for h in holders] if comm.Get_rank() == 0 else None
    for holder, computed in zip(holders, quiet_bcast(comm, values)):  # the others sleep meanwhile
        for name, value in computed.items():
            holder.__dict__.setdefault(name, value)  # where functools.cached_property keeps its value


def _computed_properties(holder: Any) -> dict[str, Any]:
    """Every functools.cached_property of `holder`, computed (those that fail are left to fail later)."""
    values = {}
    for name, attribute in vars(type(holder)).items():
        if isinstance(attribute, functools.cached_property):
            try:
                values[name] = getattr(holder, name)
            except Exception:  # noqa: BLE001 - the rank that needs it raises it then, as before
                pass
    return values


KERNELS_PHASE = "readying the compiled kernels (built once per machine by ranks 0 and 1, kept in NUMBA_CACHE_DIR)"


def _phase(phase: Any, text: str) -> None:
    if phase is not None:
        phase(text)


def run_emulation(comm: Any, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology,
                  output: str | Path | None = None, save_tensors: bool = False,
                  check: bool | None = None, progress: Any = None,
                  fail_at: tuple[int, int] | None = None, phase: Any = None,
                  share_weights: bool = True) -> RunOutcome:
    """Run on `comm`; rank 0 writes the trace and (optionally) checks against the reference.
    `phase(text)` (rank 0's callback) hears the start-up steps. `share_weights`: blocks that
    several ranks of one machine hold alike are generated once into its shared memory
    (blockshare.py); no result or modeled time depends on it."""
    validate_layout(model, layout, comm.Get_size())
    check_run_fits_model(model, run)
    skipped = None
    if check is None:
        need = reference_bytes(model, run)
        check = will_check(model, run, None)
        if not check:
            skipped = (f"the unsharded float64 reference would need {need / 1e9:.1f} GB (automatic up to "
                       f"{AUTO_CHECK_MAX_BYTES / 1e9:.1f} GB): --check runs it anyway")
    is_root = comm.Get_rank() == 0
    if is_root:
        from .analysis import EventStats, shape_of
    mesh = RankMesh.build(comm, layout)
    share_calibration(comm, topo)
    startup.mark("mesh")
    _phase(phase, KERNELS_PHASE)
    warm_up_kernels(comm, run.storage)
    startup.mark("kernels")
    startup.resume_gc()
    _phase(phase, f"building weights and KV caches ({run.layers} layers, batch {run.batch}, context {run.context:,})")
    emulator = Emulator(model, layout, run, topo, mesh, fail_at, keep_rows=check or save_tensors,
                        share_weights=share_weights)
    writer = TraceWriter(output, trace_attributes(model, layout, run, topo), layout.world_size) \
        if (is_root and output is not None) else None
    startup.mark("data")
    stats, buffered = (EventStats() if is_root else None), _StepBuffer(writer)  # rank 0's memory stays flat
    first_step_done: list[float] = []

    def sink(step: int, step_events: np.ndarray, kv_tokens: np.ndarray) -> None:
        if not first_step_done:
            first_step_done.append(time.time())
        stats.add(step_events)
        buffered.add(step_events, kv_tokens)
        if progress is not None:
            progress(step)

    try:
        result = emulator.decode(sink if is_root else None)
        # every rank, before anything that only rank 0 does can fail; not in `finally`: after a
        # failure the other ranks may never reach the window's collective free (the job is stopped)
        emulator.release_weights()
        decode_start = startup.wall_of_perf_counter(emulator.host_t0)
        startup.mark("wait", decode_start)  # the barrier before the first step: every rank ready
        startup_summary = startup.report(comm, decode_start, first_step_done[0] if first_step_done else None)
        buffered.flush()
        summary = error = None
        if is_root:
            summary = stats.summary(shape_of(layout.world_size, run.batch, run.layers, model))
            summary["host_seconds"] = result.host_seconds
            summary["startup"] = startup_summary
            summary["memory"] = run_memory(model, layout, run, topo)
            if skipped:
                summary["reference_skipped"] = skipped
            if check or save_tensors:
                from .reference import reference_decode, reference_tensors, relative_error

                tensors = reference_tensors(model, run)
                if check:
                    _, expected = reference_decode(model, tensors, run.steps, run.context, run.storage)
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
        _release(writer)
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
        cache = {family(model).cache_key: tensors.k_init[layer]}
        if family(model).with_values:
            cache["v"] = tensors.v_init[layer]
        writer.write_group(f"tensors/kv_init/layer_{layer}", cache)
    for layer, (experts, weights) in result.routing.items():
        writer.write_group(f"tensors/routing/layer_{layer}", {"experts": experts, "weights": weights})
    writer.write_group("tensors", {"inputs": result.inputs, "outputs": result.outputs,
                                   "positions": result.positions},
                       {"model": json.dumps(model.to_dict())})


# --- trace-driven serving ------------------------------------------------------------------------------
# Check served runs against the reference by default when its work is small: the float64
# reference decodes every request alone, reading its whole cache once per token and layer.
AUTO_CHECK_MAX_SERVED_READS = 2e8


@dataclass
class ServingOutcome:
    result: ServingResult
    summary: dict[str, Any] | None  # rank 0 only: event figures + serving metrics
    metrics: dict[str, Any] | None  # rank 0 only: Scheduler.metrics (arrays included)
    reference_error: float | None  # rank 0 only, when checked
    trace_path: Path | None


def served_reference_reads(model: ModelConfig, run: RunConfig, workload: Workload) -> float:
    """Cache elements the per-request float64 reference reads (tokens x steps x layers x width)."""
    fam = family(model)
    width = fam.cache_heads(model) * fam.cache_width(model) * (2 if fam.with_values else 1)
    return float(sum(r.output_tokens * (r.input_tokens + r.output_tokens) for r in workload.requests)
                 * width * run.layers)


def reference_serving(model: ModelConfig, run: RunConfig, workload: Workload,
                      inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """float64 outputs [T_r, H] of every served request r (position in the workload), each decoded
    alone over its own prompt (the request's synthetic tensors), step t fed inputs[r][t].

    Teacher forcing: fed its own previous output instead, the float64 chain drifts from the fp32
    one by ~1.6x per token (the synthetic model amplifies rounding through every step), past any
    fixed tolerance after ~20 tokens; fed the emulator's inputs, every step is compared alone, and
    `serving_error` checks separately that each input is the normed previous output."""
    from .reference import reference_layer

    weights = [rounded_weights(full_layer_weights(model, run.seed, layer), run.storage)
               for layer in range(run.layers)]
    heads = range(family(model).cache_heads(model))
    outputs = {}
    for r, request in enumerate(workload.requests):
        prompt = np.arange(request.input_tokens, dtype=np.int64)
        kv = [request_kv(model, run.seed, request.index, layer, heads, prompt, run.key_scale)
              for layer in range(run.layers)]
        k = [np.asarray(round_to_storage(k_l[None], run.storage), np.float64) for k_l, _ in kv]  # [1, K, S, W]
        v = [None if v_l is None else np.asarray(round_to_storage(v_l[None], run.storage), np.float64)
             for _, v_l in kv]
        rows = []
        for t, x_t in enumerate(inputs[r]):
            x = np.asarray(x_t[None], np.float64)  # [1, H]
            for layer, w in enumerate(weights):
                x, k[layer], v[layer] = reference_layer(x, w, k[layer], v[layer], request.input_tokens + t, model,
                                                        run.storage)
            rows.append(x[0])
        outputs[r] = np.stack(rows)
    return outputs


def serving_error(model: ModelConfig, run: RunConfig, workload: Workload, result: ServingResult,
                  expected: dict[int, np.ndarray]) -> float:
    """Largest relative error (reference.relative_error, per request) of: the outputs against the
    reference, the first input against the request's synthetic input, every later input against
    the float64 RMSNorm of the request's previous output (so no request ever got another's state)."""
    from .reference import relative_error

    if set(result.outputs) != set(expected):
        raise RuntimeError(f"served {len(result.outputs)} requests, expected {len(expected)}")
    errors = []
    for r, request in enumerate(workload.requests):
        inputs, outputs = result.inputs[r], result.outputs[r]
        previous = np.asarray(outputs[:-1], np.float64)
        normed = previous / np.sqrt(np.mean(previous * previous, axis=-1, keepdims=True) + model.norm_eps)
        chain = np.concatenate([request_input(model, run.seed, request.index)[None], normed])  # [T_r, H]
        errors += [relative_error(outputs, expected[r]), relative_error(inputs, chain)]
    return max(errors)


def serving_attributes(model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology,
                       workload: Workload, setup: ServingSetup) -> dict[str, Any]:
    """Root attributes of a serving trace (`config` is rewritten with the run's batch and steps at the end)."""
    attrs = trace_attributes(model, layout, run, topo)
    attrs.pop("memory")
    attrs["workload"] = json.dumps({"source": workload.source, "requests": len(workload),
                                    "max_batch": setup.max_batch, "kv_transfer": setup.kv_transfer,
                                    "kv_capacity_tokens": setup.kv_capacity_tokens})
    return attrs


def run_serving(comm: Any, model: ModelConfig, layout: Layout, run: RunConfig, topo: Topology,
                workload: Workload, setup: ServingSetup, output: str | Path | None = None,
                check: bool | None = None, progress: Any = None,
                fail_at: tuple[int, int] | None = None, phase: Any = None,
                share_weights: bool = True) -> ServingOutcome:
    """Serve `workload` on `comm` (ServingEmulator); rank 0 writes the trace and checks the outputs.
    `share_weights`: as in `run_emulation`."""
    validate_layout(model, layout, comm.Get_size())
    check_run_fits_model(model, run)
    skipped = None
    if check is None:
        reads = served_reference_reads(model, run, workload)
        check = reads <= AUTO_CHECK_MAX_SERVED_READS
        if not check:
            skipped = (f"the per-request float64 reference would read {reads:.3g} cache values (automatic up to "
                       f"{AUTO_CHECK_MAX_SERVED_READS:.0e}): --check runs it anyway")
    is_root = comm.Get_rank() == 0
    if is_root:
        from .analysis import EventStats
    scheduler = Scheduler(workload, setup)
    mesh = RankMesh.build(comm, layout)
    share_calibration(comm, topo)
    _phase(phase, KERNELS_PHASE)
    warm_up_kernels(comm, run.storage)
    startup.resume_gc()
    _phase(phase, f"building weights ({run.layers} layers) and serving {len(workload)} requests")
    emulator = ServingEmulator(model, layout, run, topo, mesh, scheduler, fail_at, share_weights)
    writer = TraceWriter(output, serving_attributes(model, layout, run, topo, workload, setup),
                         layout.world_size) if (is_root and output is not None) else None
    stats, buffered = (EventStats() if is_root else None), _StepBuffer(writer)

    def sink(step: int, step_events: np.ndarray, kv_tokens: np.ndarray) -> None:
        stats.add(step_events)
        buffered.add(step_events, kv_tokens)
        if progress is not None:
            progress(scheduler.finished)

    try:
        result = emulator.serve(sink if is_root else None, keep_outputs=bool(check))
        emulator.release_weights()  # every rank, before anything that only rank 0 does can fail
        summary = metrics = error = None
        if is_root:
            metrics = scheduler.metrics()
            summary = _serving_summary(stats, model, layout, run, result, metrics)
            if skipped:
                summary["reference_skipped"] = skipped
            if check:
                expected = reference_serving(model, run, workload, result.inputs)
                error = serving_error(model, run, workload, result, expected)
                summary["reference_error"], summary["reference_tolerance"] = error, REFERENCE_TOLERANCE
            buffered.flush()
            if writer is not None:
                _write_serving(writer, model, layout, run, scheduler.step_log(), metrics, summary)
                summary["trace"] = str(writer.finish())
    finally:
        _release(writer)
        mesh.free()
    return ServingOutcome(result, summary, metrics, error, Path(output) if (is_root and output) else None)


def _release(writer: TraceWriter | None) -> None:
    """A run that stops early keeps its partial trace and frees the output for the next run."""
    if writer is not None and not writer.finished:
        writer.abandon()


class _StepBuffer:
    """Steps appended to the trace 65,536 events (or `seconds` of wall time) at a time: steps
    are small, and each append rewrites the dataset's last compressed chunk, so per-step appends
    would cost more than the emulation. A killed run's partial trace lacks at most the buffered
    steps; memory stays bounded by `rows` events."""

    def __init__(self, writer: TraceWriter | None, rows: int = 65536, seconds: float = 1.0):
        self.writer, self.rows, self.seconds = writer, rows, seconds
        self.events: list[np.ndarray] = []
        self.kv: list[np.ndarray] = []
        self.last_flush = time.monotonic()

    def add(self, events: np.ndarray, kv_tokens: np.ndarray) -> None:
        if self.writer is None:
            return
        self.events.append(events)
        self.kv.append(kv_tokens)
        if sum(len(e) for e in self.events) >= self.rows or time.monotonic() - self.last_flush >= self.seconds:
            self.flush()

    def flush(self) -> None:
        """All buffered steps in one append."""
        self.last_flush = time.monotonic()
        if self.writer is None or not self.kv:
            return
        self.writer.append_steps(np.concatenate(self.events), np.stack(self.kv))
        self.events, self.kv = [], []


def _serving_summary(stats: Any, model: ModelConfig, layout: Layout, run: RunConfig,
                     result: ServingResult, metrics: dict[str, Any]) -> dict[str, Any]:
    """Event figures (per-op breakdown over all steps) + the serving scalars, which win."""
    from .analysis import shape_of

    summary = stats.summary(shape_of(layout.world_size, metrics["max_batch"], run.layers, model))
    for key in ("ttl_s", "tokens_per_s_per_user", "batch"):  # figures of a fixed batch: not a served trace's
        summary.pop(key, None)
    summary.update(scalar_metrics(metrics))
    summary.update(host_seconds=result.host_seconds, steps_per_host_s=result.steps / max(result.host_seconds, 1e-12),
                   kv_slots=result.slots, kv_tokens_left=result.kv_tokens_left)
    return summary


def _write_serving(writer: TraceWriter, model: ModelConfig, layout: Layout, run: RunConfig,
                   steps: dict[str, np.ndarray], metrics: dict[str, Any], summary: dict[str, Any]) -> None:
    """/serving/requests/* [R], /serving/steps/* [T] (kv_tokens [T, N]), root attribute `serving`."""
    writer.write_group("serving/requests", {k: np.asarray(v) for k, v in summary["per_request"].items()})
    writer.write_group("serving/steps", steps)
    scalars = {k: v for k, v in summary.items() if k not in ("per_request", "series", "ops", "collectives")}
    config = dataclasses.replace(run, batch=int(metrics["max_batch"]), steps=int(metrics["steps"]),
                                 context=int(metrics["input_tokens"].max()))  # the longest prompt
    writer.set_attrs({"serving": json.dumps(scalars, default=float),
                      "config": json.dumps({"model": model.to_dict(), "layout": layout.to_dict(),
                                            "run": config.to_dict(), "strategy": layout.strategy.value})})
    writer.write_group("summary", {}, {"json": json.dumps(summary, default=float)})
