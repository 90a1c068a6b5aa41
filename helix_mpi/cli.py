"""The `helix-mpi` command (a thin click group; the work lives in the modules it calls)."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click

from . import startup
from .cliutil import EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT, DoesNotFitError, UserError, emit, user_error_types
from .launcher import RELAUNCHED_ENV, JobEnd, default_numba_cache, relaunch, strip_np_option, under_mpiexec
from .outputs import OutputError

ABORT_GRACE_S = 0.5  # a failing rank waits this long before MPI_Abort kills every rank
LOCK_SETTLE_S = 3.0  # after mpiexec returns, how long its aborted ranks may take to exit and free the lock


class _Commands(dict):
    """The commands by name; a name not defined in this module registers the trace, sweep, advise
    and calibration commands first (their modules import h5py, the sweep and matplotlib helpers:
    the ranks of `run` never need them)."""

    def __missing__(self, name: str) -> Any:
        _register_commands()
        return dict.__getitem__(self, name)


class _Group(click.Group):
    """A click group whose other modules' commands are registered on first lookup."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands)

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in self.commands:
            _register_commands()
        return self.commands.get(name)

    def list_commands(self, ctx: Any) -> list[str]:
        _register_commands()
        return super().list_commands(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="helix_mpi")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Emulate Helix parallelism for long-context LLM decoding on MPI ranks, and analyse the traces."""
    if ctx.invoked_subcommand != "run":  # `run` resumes it after its start-up (startup.pause_gc)
        startup.resume_gc()


def _analytic_defaults() -> tuple[str, int]:
    """(model, context) shared by `model`, `sweep` and `advise`."""
    from .config import ANALYTIC_DEFAULT_CONTEXT, ANALYTIC_DEFAULT_MODEL

    return ANALYTIC_DEFAULT_MODEL, ANALYTIC_DEFAULT_CONTEXT


def model_options(model_default: str = "tiny", context_default: int = 256):
    """Options shared by `run` and `model` (their defaults differ: `run` emulates a tiny model on
    this machine, `model` answers for the full-size model at the sweep's defaults)."""
    from .units import TOKENS

    def decorate(fn):
        return _model_options(fn, model_default, context_default, TOKENS)
    return decorate


def _model_options(fn, model_default: str, context_default: int, tokens_type):
    for option in reversed([
        click.option("--model", "model_spec", default=model_default, show_default=True,
                     help="preset name (helix-mpi models), or a .toml / Hugging Face config.json path"),
        click.option("--kvp", type=int, help="KV parallelism (default: the fastest layout, see --tpa)"),
        click.option("--tpa", type=int, help="attention TP; with no --kvp/--tpa/--ep the fastest valid layout of the "
                                             "strategy by the analytic model is used (Helix: KVP >= 2)"),
        click.option("--ep", type=int, help="MoE expert parallelism (default: the fastest layout, see --tpa)"),
        click.option("--strategy", type=click.Choice(["helix", "tp", "kvp", "dp-ep", "pp"]), default="helix",
                     show_default=True, help="Helix or a baseline (tp, Medha-style kvp, DP attention + EP, pipeline "
                                             "stages: pp)"),
        click.option("--pp", type=int, help="pipeline stages of consecutive layers (--strategy pp); each stage's "
                                            "ranks are TP, or Helix with --kvp >= 2"),
        click.option("--batch", type=int, default=1, show_default=True, help="requests decoded together"),
        click.option("--context", type=tokens_type, default=context_default, show_default=True,
                     help="tokens already cached (suffixes: 1M = 1,000,000, 128K = 128,000, 128Ki = 131,072)"),
        click.option("--topology", default="gb200-nvl72", show_default=True, help="topology name or TOML path"),
        click.option("--racks", type=int, help="NVLink domains (racks; nodes of a DGX) of the modeled cluster: the "
                                               "GPUs must fit in them (default: the topology file's, else unbounded)"),
        click.option("--precision", type=click.Choice(["fp4", "fp8", "fp8_block", "bf16"]), default="fp4",
                     show_default=True, help="modeled precision of the weights (fp4 = NVFP4; fp8_block = FP8 with "
                                             "128x128 block scales, as DeepSeek-V3/R1 checkpoints)"),
        click.option("--kv-precision", type=click.Choice(["fp8", "bf16", "fp4"]), default="fp8", show_default=True,
                     help="modeled precision of the KV cache (fp8 as deployed with NVFP4 weights)"),
        click.option("--comm", type=click.Choice(["trtllm", "nccl"]), default="trtllm", show_default=True,
                     help="modeled collectives: TensorRT-LLM's custom all-reduce and one-kernel all-to-all, or NCCL"),
        click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
                     help="modeled kernels launched from CUDA graphs (else one by one from the host)"),
        click.option("--hopb/--no-hopb", default=True, show_default=True,
                     help="overlap request b's all-to-all with request b+1's attention"),
        click.option("--a2a-chunk", type=int, default=0, show_default=True,
                     help="requests per KVP all-to-all: 0 the whole batch at once (TensorRT-LLM's Helix kernel), "
                          "1 one per request (HOP-B as in the paper)"),
        click.option("--tokens-per-block", type=int, default=16, show_default=True,
                     help="KV round robin block (decode steps per KVP rank)"),
        click.option("--allow-overflow", is_flag=True,
                     help="a configuration that does not fit in HBM is reported but exits 0 (run: runs anyway); "
                          "default: exit code 3"),
        click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table"),
    ]):
        fn = option(fn)
    return fn


def _tokens_type():
    from .units import TOKENS

    return TOKENS


def workload_options(fn):
    """Trace-driven serving (helix_mpi.serving): shared by `run` (emulated) and `model` (analytic)."""
    for option in reversed([
        click.option("--workload", type=str, metavar="FILE",
                     help="serve this request trace (Mooncake .jsonl/.json or Azure .csv) with continuous "
                          "batching instead of a fixed batch"),
        click.option("--first", type=int, metavar="N", help="serve only the first N requests (after the window)"),
        click.option("--start", "start_s", type=float, metavar="S", help="window start, trace seconds"),
        click.option("--end", "end_s", type=float, metavar="S", help="window end (exclusive), trace seconds"),
        click.option("--context-scale", type=float, default=1.0, show_default=True,
                     help="multiply prompt lengths (x8.29 takes the first 200 Mooncake requests to 1M tokens)"),
        click.option("--output-scale", type=float, default=1.0, show_default=True,
                     help="multiply output lengths (at least 1 token each)"),
        click.option("--time-scale", type=float, default=1.0, show_default=True,
                     help="multiply arrival times (e.g. 0.001 so requests arrive while a tiny model decodes)"),
        click.option("--max-batch", type=int, help="cap on requests held at once (default: KV capacity only)"),
        click.option("--ttl-slo", type=float, metavar="SECONDS",
                     help="SLO-aware admission: admit a waiting request only while the predicted step time "
                          "stays within this TTL (e.g. 0.02)"),
        click.option("--kv-capacity", type=_tokens_type(), metavar="TOKENS",
                     help="KV tokens each rank may hold (default: the HBM its weight shards leave, full model)"),
        click.option("--kv-transfer", type=click.Choice(["scale_out", "nvlink", "none"]), default="scale_out",
                     show_default=True, help="link of the prefill pool -> decode KV copy (charged to queue time)"),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@model_options()
@workload_options
@click.option("-n", "--np", "ranks", type=int, help="ranks; when not started by mpiexec, relaunch under it")
@click.option("--steps", type=int, default=4, show_default=True, help="decode steps")
@click.option("--layers", type=int, help="layers to emulate (default: 2, or enough to include one MoE layer; "
                                         "with --workload all of the model's)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of all synthetic tensors")
@click.option("--key-scale", type=float, default=1.0, hidden=True, help="scale of initial keys (tests)")
@click.option("-o", "--output", default="helix-run.h5", show_default=True, help="HDF5 trace to write")
@click.option("--save-tensors", is_flag=True, help="also store weights, caches, inputs and outputs")
@click.option("--check/--no-check", default=None, help="compare with the NumPy reference (default: if it fits)")
@click.option("--fail-at", hidden=True, help="STEP:RANK: raise on that rank at that step (tests)")
@click.option("--storage", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="host storage of weights and KV cache (bf16: half the memory, upcast in the kernels)")
@click.option("--force", is_flag=True, help="run even when the estimated host memory exceeds what is available")
@click.option("--shared-weights/--private-weights", default=True, show_default=True,
              help="weight blocks that several ranks of one machine hold alike: generated once into MPI shared "
                   "memory, or by every rank for itself (no result or modeled time changes)")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr (start-up phases, steps or requests done)")
def run(model_spec, kvp, tpa, ep, strategy, pp, batch, context, topology, racks, precision, kv_precision, comm, cuda_graphs,
        hopb, a2a_chunk, tokens_per_block, allow_overflow, as_json, ranks, steps, layers, seed, key_scale, output,
        save_tensors, check, fail_at, storage, force, shared_weights, quiet, **serving) -> None:
    """Emulate decode steps of a model under Helix on MPI ranks and write an HDF5 trace.

    With --workload, serve a request trace instead: requests join the batch at their (scaled)
    arrival on the modeled clock, decode their output tokens and leave, freeing their KV."""
    if ranks is not None and ranks < 1:
        raise UserError(f"-n/--np must be >= 1, got {ranks}")
    failure = _parse_fail_at(fail_at)
    settings = dict(model_spec=model_spec, kvp=kvp, tpa=tpa, ep=ep, strategy=strategy, pp=pp, batch=batch, context=context,
                    steps=steps, layers=layers, tokens_per_block=tokens_per_block, seed=seed, precision=precision,
                    kv_precision=kv_precision, comm=comm, cuda_graphs=cuda_graphs, hopb=hopb, a2a_chunk=a2a_chunk,
                    storage=storage, key_scale=key_scale, topology=topology, racks=racks,
                    allow_overflow=allow_overflow)
    if ranks is not None and ranks > 1 and not under_mpiexec():
        try:  # refuse bad input here, in one line, before starting any rank
            from .kernels.compiled import mode
            from .outputs import check_writable

            mode()  # HELIX_MPI_KERNELS names a backend
            if serving["workload"] is not None:
                _refuse_fixed_batch_flags(save_tensors)
            resolved = _resolve_run(world_size=ranks, serving=serving, **settings)
            if serving["workload"] is None and not force:
                _guard_host_memory(resolved.model, resolved.layout, resolved.run_config, check, save_tensors,
                                   shared_weights)
            check_writable(output, create_folders=True)
        except DoesNotFitError:
            raise
        except user_error_types() as exc:
            raise UserError(str(exc)) from None
        sys.exit(_report_job_end(relaunch(ranks, strip_np_option(sys.argv[1:]), announce=not quiet), output))
    startup.reset()  # an earlier run in this process (tests)
    startup.mark(startup.PROCESS)
    from mpi4py import MPI

    startup.mark("mpi_init")
    _interrupt_on_sigterm()
    comm = MPI.COMM_WORLD
    is_root = comm.Get_rank() == 0
    show = is_root and not quiet
    try:
        from . import runner  # noqa: F401 - NumPy, Numba, the emulator: every rank needs them

        startup.mark("imports")
        if comm.Get_size() > 1:
            from .collectives import quiet_barrier

            quiet_barrier(comm)  # every rank here before the first blocking collective, those
            # waiting asleep: the ranks still starting get the cores (spinning, they took them)
        startup.mark("arrive")
        from .kernels.compiled import mode

        mode()  # HELIX_MPI_KERNELS names a backend (under the user's own mpiexec)
        if ranks is not None and ranks != comm.Get_size():
            raise UserError(f"-n {ranks} but mpiexec started {comm.Get_size()} ranks: drop -n or make them equal")
        if serving["workload"] is not None:
            _refuse_fixed_batch_flags(save_tensors)
        resolved = _resolve_run(world_size=comm.Get_size(), serving=serving, layout_by=_resolve_on_rank_0(comm),
                                **settings)
        if serving["workload"] is None and not force and not os.environ.get(RELAUNCHED_ENV):  # else checked
            _guard_host_memory(resolved.model, resolved.layout, resolved.run_config, check, save_tensors,
                               shared_weights, comm)
        startup.mark("layout")
        if show:
            _announce_start(comm.Get_size(), resolved)
        if serving["workload"] is not None:
            outcome = _run_serving(comm, resolved, output, check, failure, show, shared_weights)
        else:
            from .progress import Progress
            from .runner import run_emulation

            with Progress(steps, "decode steps", enabled=show) as progress:
                outcome = run_emulation(comm, resolved.model, resolved.layout, resolved.run_config, resolved.topo,
                                        output, save_tensors, check, progress.per_call, failure, progress.phase,
                                        shared_weights)
    except OutputError as exc:  # only rank 0 writes: it stops every rank
        click.echo(f"helix-mpi: error: {exc}", err=True)
        sys.stderr.flush()
        comm.Abort(EXIT_BAD_INPUT)
    except DoesNotFitError as exc:  # every rank computes the same memory; rank 0 says it
        if is_root:
            exc.show()
        _exit_all_ranks(comm, EXIT_DOES_NOT_FIT)
    except (*user_error_types(), UserError) as exc:  # every rank sees the same bad input; rank 0 says it
        if is_root:
            click.echo(f"helix-mpi: error: {exc.message if isinstance(exc, UserError) else exc}", err=True)
        _exit_all_ranks(comm, EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the trace on disk is consistent between steps
        if is_root and not os.environ.get(RELAUNCHED_ENV):  # else the parent says it
            from .trace import settle_partial

            click.echo(f"helix-mpi: interrupted; {settle_partial(output)}", err=True)
        sys.stderr.flush()
        if not is_root:  # let rank 0 finish a trace append it may be in
            time.sleep(ABORT_GRACE_S)
        comm.Abort(130)
    except Exception as exc:  # any other failure on any rank stops every rank now
        sys.stderr.write(f"helix-mpi: rank {comm.Get_rank()} failed: {type(exc).__name__}: {exc}\n")
        if os.environ.get("HELIX_MPI_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.flush()
        if comm.Get_rank() != 0:  # let rank 0 finish a trace append it may be in (milliseconds)
            time.sleep(ABORT_GRACE_S)
        comm.Abort(1)
    if is_root:
        (_print_serving_run if serving["workload"] is not None else _print_run)(outcome, resolved, as_json)
        if outcome.reference_error is not None and outcome.reference_error > outcome.summary["reference_tolerance"]:
            sys.exit(1)


def _guard_host_memory(model, layout, run_config, check, save_tensors: bool, shared_weights: bool,
                       comm=None) -> None:
    """Refuse (ConfigError, one line) a fixed-batch run whose ranks on this machine need more host
    memory than it has available. Under mpiexec every rank checks its own machine's share and all
    ranks refuse if any does."""
    from .config import ConfigError
    from .hostmem import available_bytes, estimate_run, refusal, will_check

    here, first_here = list(range(layout.world_size)), True
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        here, first_here = node.allgather(comm.Get_rank()), node.Get_rank() == 0
        node.Free()
    available, reason = available_bytes(), None
    if first_here and available is not None:  # one rank per machine estimates its ranks' memory
        memory = estimate_run(model, layout, run_config, will_check(model, run_config, check) or save_tensors,
                              here, shared_weights)
        reason = refusal(memory, available, run_config)
    reasons = [reason] if comm is None else comm.allgather(reason)
    refused = [r for r in reasons if r is not None]
    if refused:
        raise ConfigError(refused[0])


def _held_by_another_run(output: str, settle_s: float = LOCK_SETTLE_S) -> bool:
    """Whether the lock of `output` is still held once this job's ranks are gone: mpiexec may
    return while its aborted ranks are still exiting (rank 0 holding the lock), so a lock held
    for `settle_s` after the job ended belongs to another run writing the same output."""
    from .outputs import is_locked

    deadline = time.monotonic() + settle_s
    while is_locked(output):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def _report_job_end(end: JobEnd, output: str) -> int:
    """After a relaunched job: one line saying how it ended, unless it ended well or a rank has
    already said why it stopped; returns the exit code (128 + signal when interrupted)."""
    from .trace import settle_partial

    if end.code == 0 and end.failure is None:  # it finished (perhaps just as it was interrupted)
        return 0
    if end.reported and end.interrupted is None:
        return end.code
    trace = "no trace was written by this run" if _held_by_another_run(output) else settle_partial(output)
    if end.interrupted is not None:
        line, code = f"helix-mpi: interrupted; {trace}", 128 + end.interrupted
    elif end.failure is not None:
        line, code = f"{end.failure}; {trace}", end.code or 1
    elif end.lost is not None:
        rank, signum = end.lost
        line, code = (f"helix-mpi: rank {rank} was lost: killed by {_signal_name(signum)} (the out-of-memory killer "
                      f"and kill -9 send SIGKILL); every rank was stopped; {trace}"), end.code or 1
    else:
        click.echo("".join(end.mpi_errors), err=True, nl=False)  # nothing else tells what happened
        line, code = f"helix-mpi: the MPI job failed (mpiexec exit code {end.code}); {trace}", end.code
    click.echo(line, err=True)
    return code


def _signal_name(signum: int) -> str:
    import signal

    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"


def _resolve_on_rank_0(comm):
    """layouts.resolve_layout computed once, on rank 0, and broadcast (72 ranks on a few cores would
    otherwise each time every candidate layout); an error raised there is raised on every rank."""
    from .collectives import quiet_bcast
    from .layouts import resolve_layout

    def resolve(*args):
        if comm.Get_size() == 1:
            return resolve_layout(*args)
        result = None
        if comm.Get_rank() == 0:
            try:
                result = resolve_layout(*args)
            except Exception as exc:  # noqa: BLE001 - every rank re-raises it below
                result = exc
        result = quiet_bcast(comm, result)  # the others sleep while rank 0 times the layouts
        if isinstance(result, Exception):
            raise result
        return result
    return resolve


def _announce_start(ranks: int, resolved) -> None:
    """Rank 0's first lines on stderr: ranks up (since the launcher started them), notes."""
    from .launcher import START_ENV

    started = os.environ.get(START_ENV)
    since = f" after {time.time() - float(started):.1f} s" if started else ""
    click.echo(f"helix-mpi: {ranks} rank{'s' if ranks > 1 else ''} up{since}", err=True)
    for note in resolved.notes:
        click.echo(f"helix-mpi: note: {note}", err=True)
    sys.stderr.flush()


def _parse_fail_at(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        step, rank = (int(part) for part in text.split(":"))
    except ValueError:
        raise UserError(f"--fail-at must be STEP:RANK with two integers, got {text!r}") from None
    return step, rank


def _interrupt_on_sigterm() -> None:
    """SIGTERM (what mpiexec forwards when it is stopped) behaves like Ctrl-C."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _exit_all_ranks(comm, code: int, wait_s: float = 5.0) -> None:
    """Exit every rank with `code` once all have reached here (so rank 0's message is out first);
    if some rank does not arrive within `wait_s`, abort the job instead of hanging."""
    import time

    from mpi4py import MPI

    sys.stdout.flush()
    sys.stderr.flush()
    request, deadline = comm.Ibarrier(), time.monotonic() + wait_s
    while not request.Test():
        if time.monotonic() > deadline:
            comm.Abort(code)
        time.sleep(0.005)
    MPI.Finalize()
    os._exit(code)


@dataclass
class Resolved:
    """Everything a run needs from its flags, checked (one line each when something is wrong)."""

    model: Any
    layout: Any
    run_config: Any
    topo: Any
    choice: Any = None  # layouts.LayoutChoice when no layout flag was given
    notes: list = field(default_factory=list)  # one-line remarks for the user (layers emulated, ...)
    workload: Any = None  # with --workload
    setup: Any = None  # serving.ServingSetup with --workload


HOST_SHARE = 0.5  # the default layers may take at most this share of the machine's memory for weights


def host_memory_bytes() -> float:
    """Physical memory of this machine (inf when unknown)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def default_layers(model, storage: str = "fp32", host_bytes: float | None = None) -> tuple[int, str | None]:
    """(layers `run` emulates by default, why a kind is missing or None): 2, or enough to include the
    first MoE layer (DeepSeek-R1's first 3 are dense: 4) so that every kind of layer is emulated,
    unless the weights of those layers (all ranks together, at the host `storage`) would take more
    than half of this machine's memory: then the dense layers only, and the reason."""
    from .config import layer_parameters

    layers = min(2, model.num_layers)
    if model.moe is None or model.moe.first_dense_layers >= model.num_layers:
        return layers, None
    wanted = max(layers, model.moe.first_dense_layers + 1)
    per_element = 2 if storage == "bf16" else 4
    need = sum(layer_parameters(model, layer) for layer in range(wanted)) * per_element
    host = host_memory_bytes() if host_bytes is None else host_bytes
    if need <= HOST_SHARE * host:
        return wanted, None
    kept = min(layers, model.moe.first_dense_layers)
    return kept, (f"{wanted} layers (one MoE) would need {need / 1e9:.0f} GB of host memory for their weights at "
                  f"{storage}, this machine has {host / 1e9:.0f} GB")


def layer_kinds_note(model, layers: int, why: str | None = None) -> str | None:
    """What the TTL extrapolates when the emulated layers (0..layers-1) miss a kind of layer."""
    if model.moe is None or layers >= model.num_layers:
        return None
    kinds = [model.is_moe_layer(layer) for layer in range(model.num_layers)]
    if any(kinds[:layers]) or not any(kinds):
        return None
    moe_layers = sum(kinds)
    return (f"the {layers} emulated layers are all dense{f' ({why})' if why else ''}: the TTL counts {model.name}'s "
            f"{moe_layers} MoE layers as the mean emulated (dense) layer; --layers {model.moe.first_dense_layers + 1} "
            "emulates one MoE layer")


def _resolve_run(world_size, model_spec, kvp, tpa, ep, strategy, batch, context, steps, layers, tokens_per_block,
                 seed, precision, hopb, a2a_chunk, key_scale, topology, storage="fp32", kv_precision="fp8",
                 comm="trtllm", cuda_graphs=True, allow_overflow=False, serving: dict | None = None,
                 layout_by=None, racks=None, pp=None, analytic: bool = False) -> Resolved:
    """Model, layout, run config and topology from the flags, validated for `world_size` ranks.
    Layers None: `default_layers`, or every layer of the model for a served trace. With no layout
    flag, the fastest valid layout (layouts.choose_layout; `layout_by` replaces layouts.resolve_layout,
    e.g. by `_resolve_on_rank_0`)."""
    from .config import ConfigError, RunConfig, check_run_fits_model, load_model, validate_layout
    from .layouts import resolve_layout
    from .strategies import check_stage_layers
    from .topology import load_topology

    served = serving is not None and serving.get("workload") is not None
    if served and strategy == "pp" and not analytic:
        raise ConfigError("run --workload under pipeline stages (--strategy pp) is not emulated: serve the trace "
                          "analytically with helix-mpi model --workload, or use helix, tp, kvp or dp-ep")
    model = load_model(model_spec)
    why_dense = None
    if layers is None:  # pipeline stages: every layer, so the stage sends count once each in the TTL
        layers, why_dense = (model.num_layers, None) if served or strategy == "pp" else default_layers(model, storage)
    run_config = RunConfig(batch=batch, context=context, steps=steps, layers=layers,
                           tokens_per_block=tokens_per_block, seed=seed, precision=precision,
                           kv_precision=kv_precision, comm=comm, cuda_graphs=cuda_graphs, hopb=hopb,
                           a2a_chunk=a2a_chunk, storage=storage, key_scale=key_scale)
    check_run_fits_model(model, run_config)
    topo = load_topology(topology, racks)
    topo.check_gpus(world_size, "ranks")
    workload = _load_workload(serving) if served else None
    choice_batch, choice_context, basis = batch, context, None
    if workload is not None:  # a served trace: one request at its median length
        choice_batch, choice_context = 1, _median_context(workload)
        basis = f"one request at the trace's median length, {choice_context:,} tokens"
    layout, choice = (layout_by or resolve_layout)(model, world_size, kvp, tpa, ep, strategy, choice_batch,
                                                   choice_context, topo, run_config.implementation(), hopb, a2a_chunk,
                                                   tokens_per_block, basis, pp)
    validate_layout(model, layout, world_size)
    check_stage_layers(layout, layers)
    resolved = Resolved(model, layout, run_config, topo, choice, workload=workload)
    note = layer_kinds_note(model, layers, why_dense)
    if note:
        resolved.notes.append(note)
    if served:
        resolved.setup = _serving_setup(resolved, serving)
    else:
        from .memory import memory_report

        memory = memory_report(model, layout, batch, context + steps, precision, topo, tokens_per_block, kv_precision)
        if not memory["fits"]:
            text = overflow_text(memory, layout, batch, context + steps)
            if not allow_overflow:
                raise DoesNotFitError(text + " (--allow-overflow runs it anyway)")
            resolved.notes.append(text)
    return resolved


def _median_context(workload) -> int:
    import numpy as np

    return int(np.median([r.input_tokens + r.output_tokens for r in workload.requests]))


def overflow_text(memory: dict, layout, batch: int, tokens: int) -> str:
    """One line: the configuration does not fit in HBM, by how much, and what would make it fit."""
    gb, hbm = 1e9, memory["hbm_bytes"]
    per_rank = memory["per_rank"]
    text = (f"DOES NOT FIT: {layout.strategy.value} on {layout.world_size} GPUs ({_layout_text(layout)}) needs "
            f"{memory['max_total_bytes'] / gb:.2f} GB on its busiest GPU (weights {memory['max_weights_bytes'] / gb:.2f}"
            f" GB + KV {memory['max_kv_bytes'] / gb:.2f} GB) of {hbm / gb:.0f} GB HBM at batch {batch}, "
            f"{tokens:,} tokens")
    if memory["max_weights_bytes"] > hbm:
        return text + ": the weights alone do not fit: more GPUs or a lower --precision"
    if layout.strategy.value != "dp-ep":  # every rank holds every request's shard: KV grows with the batch
        fit = min(int((hbm - r["weights_bytes"]) // (r["kv_bytes"] / batch)) if r["kv_bytes"] else batch
                  for r in per_rank)
        if fit >= 1:
            return text + f": at most {fit} request{'s' if fit > 1 else ''} fit: a smaller --batch or more GPUs"
        hint = "" if layout.strategy.value == "helix" else ", --strategy helix (KVP shards the KV)"
        return text + f": one request's KV does not fit: more GPUs{hint} or a shorter --context"
    return text + ": a smaller --batch or more GPUs"


def _refuse_fixed_batch_flags(save_tensors: bool) -> None:
    """--batch, --context, --steps and --save-tensors describe a fixed batch: not a served trace."""
    ctx = click.get_current_context()
    given = [f"--{name}" for name in ("batch", "context", "steps")
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if save_tensors:
        given.append("--save-tensors")
    if given:
        raise UserError(f"{', '.join(given)} cannot be used with --workload (the trace sets every request's "
                        f"context and length): drop {'it' if len(given) == 1 else 'them'}")


def _load_workload(serving: dict):
    from .workload import load_workload

    return load_workload(serving["workload"], start_s=serving["start_s"], end_s=serving["end_s"],
                         first=serving["first"], context_scale=serving["context_scale"],
                         output_scale=serving["output_scale"], time_scale=serving["time_scale"])


def _serving_setup(resolved: Resolved, serving: dict):
    """ServingSetup from the flags; the scheduler's checks run here (one line if bad; a trace that
    cannot fit in HBM: DoesNotFitError, exit 3)."""
    from .serving import DoesNotFit, Scheduler, ServingSetup

    run_config = resolved.run_config
    setup = ServingSetup(resolved.model, resolved.layout, resolved.topo, run_config.implementation(), run_config.hopb,
                         run_config.tokens_per_block, serving["max_batch"], serving["kv_transfer"],
                         kv_capacity_tokens=serving["kv_capacity"], ttl_slo=serving["ttl_slo"],
                         a2a_chunk=run_config.a2a_chunk)
    try:
        Scheduler(resolved.workload, setup)  # refuses requests that can never fit
    except DoesNotFit as exc:
        raise DoesNotFitError(f"DOES NOT FIT: {exc}") from None
    return setup


def _run_serving(comm, resolved: Resolved, output, check, failure, show: bool, shared_weights: bool):
    from .progress import Progress
    from .runner import run_serving

    with Progress(len(resolved.workload), "requests served", enabled=show) as progress:
        return run_serving(comm, resolved.model, resolved.layout, resolved.run_config, resolved.topo,
                           resolved.workload, resolved.setup, output, check, progress.absolute, failure,
                           progress.phase, shared_weights)


def _memory_text(memory) -> str:
    gb = 1e9
    verdict = "fits" if memory["fits"] else "DOES NOT FIT"
    return (f"per-GPU memory (busiest rank): weights {memory['max_weights_bytes'] / gb:.2f} GB + KV "
            f"{memory['max_kv_bytes'] / gb:.2f} GB = {memory['max_total_bytes'] / gb:.2f} GB of "
            f"{memory['hbm_bytes'] / gb:.0f} GB HBM: {verdict}; KV read per step {memory['kv_read_s'] * 1e3:.3f} ms")


def _layout_text(layout) -> str:
    return f"KVP={layout.kvp} TPA={layout.tpa} TPF={layout.tpf} EP={layout.ep}"


def _layout_lines(choice) -> list[str]:
    """'layout: which and why' when the layout was chosen among several (or fell back)."""
    if choice is None or not (choice.ranked or "fallback" in choice.reason):
        return []
    return [f"layout: {choice.reason}"]


def _reference_line(outcome, summary: dict, served: bool = False) -> list[str]:
    if outcome.reference_error is not None:
        ok = outcome.reference_error <= summary["reference_tolerance"]
        what = "reference check (every request alone, float64)" if served else "reference check"
        return [f"{what}: max relative error {outcome.reference_error:.2e} "
                f"(tolerance {summary['reference_tolerance']:.0e}) {'OK' if ok else 'FAILED'}"]
    if summary.get("reference_skipped"):
        return [f"reference check: skipped: {summary['reference_skipped']}"]
    return []


def _print_run(outcome, resolved: Resolved, as_json: bool) -> None:
    from .analysis import exchange_label, format_summary

    summary = outcome.summary
    layout, model = resolved.layout, resolved.model
    summary.update(layout=layout.to_dict(), model=model.name, strategy=layout.strategy.value)
    if resolved.choice is not None:
        summary["layout_choice"] = resolved.choice.to_dict()
    if resolved.notes:
        summary["notes"] = list(resolved.notes)
    text = []
    memory = summary.get("memory") or {}
    if memory and not memory.get("fits", True):
        text.append(overflow_text(memory, layout, resolved.run_config.batch,
                                  resolved.run_config.context + resolved.run_config.steps) + " (--allow-overflow)")
    exchange = exchange_label(layout.strategy.value, layout.kvp, resolved.run_config.hopb,
                              resolved.run_config.a2a_chunk)
    text += [f"{layout.strategy.value} on {layout.world_size} ranks: {_layout_text(layout)}  model {model.name}"
             + (f", {exchange}" if exchange else ""), *_layout_lines(resolved.choice), format_summary(summary)]
    text += _reference_line(outcome, summary)
    if outcome.trace_path:
        text.append(f"trace: {outcome.trace_path}")
    emit(summary, as_json, "\n".join(text))


@cli.command("model")
@model_options(*_analytic_defaults())
@workload_options
@click.option("--gpus", "-g", type=int, default=8, show_default=True, help="GPUs N")
@click.option("--layers", type=int, help="layers to time (default: all of the model)")
@click.option("--steps", type=int, default=1, show_default=True, help="decode steps (context grows by one each)")
def model_command(model_spec, kvp, tpa, ep, strategy, pp, batch, context, topology, racks, precision, kv_precision, comm,
                  cuda_graphs, hopb, a2a_chunk, tokens_per_block, allow_overflow, as_json, gpus, layers, steps,
                  **serving) -> None:
    """Analytic time of one configuration: same plan and cost model as the emulator, no MPI, no data.
    Defaults are the sweep's and advise's (DeepSeek-R1 at 1M tokens on GB200 NVL72, fp4). A
    configuration that does not fit in HBM says so on the first line and exits 3.

    With --workload, serve a request trace at full model size (continuous batching, analytic)."""
    if serving["workload"] is not None:
        _refuse_fixed_batch_flags(False)
        _model_serving(model_spec, kvp, tpa, ep, strategy, topology, precision, hopb, tokens_per_block, as_json,
                       gpus, serving, a2a_chunk, kv_precision, comm, cuda_graphs, racks, pp)
        return
    from .analysis import EventStats, exchange_label, format_summary, shape_of
    from .analytic import simulate_layers
    from .config import RunConfig, load_model, validate_layout
    from .layouts import resolve_layout
    from .memory import memory_report
    from .strategies import check_stage_layers
    from .topology import load_topology

    try:
        model = load_model(model_spec)
        if gpus < 1:
            raise UserError(f"--gpus must be >= 1, got {gpus}")
        run_config = RunConfig(batch=batch, context=context, steps=steps, layers=layers or model.num_layers,
                               tokens_per_block=tokens_per_block, precision=precision, kv_precision=kv_precision,
                               comm=comm, cuda_graphs=cuda_graphs, hopb=hopb, a2a_chunk=a2a_chunk)
        topo = load_topology(topology, racks)
        topo.check_gpus(gpus, "GPUs (--gpus)")
        layout, choice = resolve_layout(model, gpus, kvp, tpa, ep, strategy, batch, context, topo,
                                        run_config.implementation(), hopb, a2a_chunk, tokens_per_block, None, pp)
        validate_layout(model, layout, gpus)
        check_stage_layers(layout, run_config.layers)
    except user_error_types() as exc:
        raise UserError(str(exc)) from None
    stats = EventStats()  # one layer's events at a time: bounded memory at batch 4096 on 72 GPUs
    for rows in simulate_layers(model, layout, run_config, topo):
        stats.add(rows)
    summary = stats.summary(shape_of(gpus, batch, run_config.layers, model))
    memory = memory_report(model, layout, batch, context + steps, precision, topo, tokens_per_block, kv_precision)
    summary.update(strategy=strategy, layout=layout.to_dict(), model=model.name, topology=topo.name,
                   precision=precision, context=context, hopb=hopb, a2a_chunk=a2a_chunk, memory=memory,
                   fits=memory["fits"], kv_bytes_per_gpu=memory["max_kv_bytes"], kv_read_s=memory["kv_read_s"])
    if choice is not None:
        summary["layout_choice"] = choice.to_dict()
    summary.pop("host_seconds", None)
    exchange = exchange_label(strategy, layout.kvp, hopb, a2a_chunk)
    overflow = None if memory["fits"] else overflow_text(memory, layout, batch, context + steps)
    lines = [overflow] if overflow else []
    lines += [f"{strategy} on {gpus} GPUs of {topo.name}: {_layout_text(layout)}  {model.name} at {context:,} tokens, "
              f"{precision}" + (f", {exchange}" if exchange else ""), *_layout_lines(choice),
              format_summary(summary), _memory_text(memory)]
    emit(summary, as_json, "\n".join(lines))
    if overflow:
        if as_json:
            click.echo(f"helix-mpi: {overflow}", err=True)
        if not allow_overflow:
            sys.exit(EXIT_DOES_NOT_FIT)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def models(as_json: bool) -> None:
    """List the model presets (--model NAME): parameters, layers, attention, MoE, vocabulary."""
    from .config import MODEL_PRESETS, model_facts

    rows = [model_facts(model) for model in MODEL_PRESETS.values()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'name':21s} {'params':>7s} {'layers':>6s}  {'attention':31s} {'MoE':45s} {'vocab':>7s}")
    for r in rows:
        click.echo(f"{r['name']:21s} {_params_text(r['params']):>7s} {r['layers']:6d}  {r['attention_text']:31s} "
                   f"{r['moe_text']:45s} {r['vocab']:7d}")
    click.echo("(or --model path/to/config.json or .toml with Hugging Face field names; README 'Using it')")


def _params_text(count: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.{1 if count < 100 * scale else 0}f}{suffix}"
    return str(count)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--fits", "fits_of", metavar="TOPOLOGY",
              help="instead, the physics fitted to this topology's measured tables (what times kernels and "
                   "collectives outside them)")
def topologies(as_json: bool, fits_of: str | None) -> None:
    """List the hardware topologies (topologies/*.toml) with their key constants."""
    from .topology import list_topologies, load_topology

    if fits_of is not None:
        from .calibcli import print_fits

        print_fits(load_topology(fits_of), as_json)
        return
    rows = [load_topology(name) for name in list_topologies()]
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in rows]))
        return
    click.echo(f"{'name':14s} {'GPUs/domain':>11s} {'HBM GB':>7s} {'HBM TB/s':>8s} {'NVLink GB/s':>11s} "
               f"{'fp4 PF':>7s} {'NVLS':>5s}  description")
    for t in rows:
        click.echo(f"{t.name:14s} {t.fabric.domain_size:11d} {t.gpu.hbm_bytes / 1e9:7.0f} "
                   f"{t.gpu.hbm_bytes_per_s / 1e12:8.2f} {t.fabric.link_bytes_per_s / 1e9:11.0f} "
                   f"{t.gpu.flops_per_s['fp4'] / 1e15:7.1f} {'yes' if t.fabric.nvls_available else 'no':>5s}  "
                   f"{t.description}")


@cli.command()
@click.option("--topology", default="gb200-nvl72", show_default=True, help="topology name or TOML path")
@click.option("--op", type=click.Choice(["all_reduce", "all_to_all", "all_gather", "reduce_scatter"]),
              default="all_reduce", show_default=True)
@click.option("--ranks", type=int, default=8, show_default=True, help="ranks in the collective")
@click.option("--sizes", default="8K,64K,1M,16M,256M,1G", show_default=True, help="comma-separated sizes (K=1024)")
@click.option("--algorithm", type=click.Choice(["ring", "nvls"]), help="force an all-reduce algorithm")
@click.option("--measure", is_flag=True, help="under mpiexec, also time the real MPI collective here")
@click.option("--json", "as_json", is_flag=True, help="print JSON rows")
def collectives(topology, op, ranks, sizes, algorithm, measure, as_json) -> None:
    """nccl-tests-style table (size, time, algbw, busbw) of the modeled collective."""
    from .costmodel import Collective, collective_table, parse_size
    from .topology import load_topology

    try:
        topo = load_topology(topology)
        size_list = [parse_size(s.strip()) for s in sizes.split(",") if s.strip()]
        if ranks < 1:
            raise UserError(f"--ranks must be >= 1, got {ranks}")
        rows = collective_table(Collective(op), size_list, ranks, topo, algorithm)
    except (ValueError, *user_error_types()) as exc:
        raise UserError(str(exc)) from None
    is_root = True
    if measure:
        from .measure import measure_collective

        is_root, measured = measure_collective(op, size_list, ranks)
        for row, seconds in zip(rows, measured):
            row["measured_s"] = seconds
    if not is_root:
        return
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"# {op} on {ranks} ranks of {topo.name} (modeled{', and measured here' if measure else ''})")
    click.echo(f"{'bytes':>12s} {'time us':>10s} {'algbw GB/s':>11s} {'busbw GB/s':>11s}"
               + (f" {'measured us':>12s}" if measure else ""))
    for row in rows:
        line = f"{row['bytes']:12d} {row['time_s'] * 1e6:10.2f} {row['algbw']:11.2f} {row['busbw']:11.2f}"
        if measure:
            line += f" {row['measured_s'] * 1e6:12.1f}"
        click.echo(line)


def _model_serving(model_spec, kvp, tpa, ep, strategy, topology, precision, hopb, tokens_per_block, as_json, gpus,
                   serving: dict, a2a_chunk: int = 0, kv_precision: str = "fp8", comm: str = "trtllm",
                   cuda_graphs: bool = True, racks: int | None = None, pp: int | None = None) -> None:
    """`model --workload`: helix_mpi.serving.serve at full model size (pipeline stages too)."""
    from .analysis import exchange_label
    from .serving import format_serving, scalar_metrics, serve

    try:
        if gpus < 1:
            raise UserError(f"--gpus must be >= 1, got {gpus}")
        resolved = _resolve_run(gpus, model_spec, kvp, tpa, ep, strategy, 1, 0, 1, None, tokens_per_block, 0, precision,
                                hopb, a2a_chunk, 1.0, topology, kv_precision=kv_precision, comm=comm,
                                cuda_graphs=cuda_graphs, serving=serving, racks=racks, pp=pp, analytic=True)
        setup, layout, model, topo = resolved.setup, resolved.layout, resolved.model, resolved.topo
        metrics = serve(resolved.workload, model, layout, topo, setup.impl, hopb, tokens_per_block, setup.max_batch,
                        setup.kv_transfer, kv_capacity_tokens=setup.kv_capacity_tokens, a2a_chunk=a2a_chunk,
                        ttl_slo=setup.ttl_slo)
    except DoesNotFitError:
        raise
    except user_error_types() as exc:
        raise UserError(str(exc)) from None
    data = scalar_metrics(metrics)
    data.update(strategy=strategy, layout=layout.to_dict(), model=model.name, topology=topo.name,
                precision=precision, hopb=hopb, a2a_chunk=a2a_chunk, workload=resolved.workload.source)
    if resolved.choice is not None:
        data["layout_choice"] = resolved.choice.to_dict()
    exchange = exchange_label(strategy, layout.kvp, hopb, a2a_chunk)
    header = (f"{strategy} on {gpus} GPUs of {topo.name}: {_layout_text(layout)}  {model.name}, {precision}"
              + (f", {exchange}" if exchange else "") + " (analytic, full model)")
    emit(data, as_json, "\n".join([header, *_layout_lines(resolved.choice), _workload_text(resolved.workload),
                                   format_serving(metrics)]))


def _workload_text(workload) -> str:
    return f"workload: {workload.source}: {len(workload)} requests arriving over {workload.duration_s:.4g} s"


def _print_serving_run(outcome, resolved: Resolved, as_json: bool) -> None:
    from .serving import format_serving

    summary, layout, model = outcome.summary, resolved.layout, resolved.model
    summary.update(layout=layout.to_dict(), model=model.name, strategy=layout.strategy.value)
    if resolved.choice is not None:
        summary["layout_choice"] = resolved.choice.to_dict()
    if resolved.notes:
        summary["notes"] = list(resolved.notes)
    text = [f"{layout.strategy.value} on {layout.world_size} ranks: {_layout_text(layout)}  model {model.name}, "
            f"{summary['layers_emulated']} of {summary['model_layers']} layers emulated",
            *_layout_lines(resolved.choice),
            format_serving(outcome.metrics),
            f"host: {summary['steps']:,} emulated steps in {summary['host_seconds']:.3g} s = "
            f"{summary['steps_per_host_s']:.1f} steps/s; {summary['kv_slots']} KV slots on rank 0"]
    text += _reference_line(outcome, summary, served=True)
    if outcome.trace_path:
        text.append(f"trace: {outcome.trace_path}")
    emit(summary, as_json, "\n".join(text))


_registered: list[bool] = []


def _register_commands() -> None:
    """The commands of the other CLI modules, registered once, when first looked up (_Group)."""
    if _registered:
        return
    _registered.append(True)
    from . import advisecli, calibcli, sweepcli, tracecli

    tracecli.register(cli)
    sweepcli.register(cli)
    advisecli.register(cli)
    calibcli.register(cli)


def main() -> None:
    """Entry point: click's own usage errors (unknown option, bad choice) also become one line."""
    os.environ.setdefault("NUMBA_CACHE_DIR", default_numba_cache())
    try:
        cli.main(prog_name="helix-mpi", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # bare `helix-mpi`: its help
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"helix-mpi: error: {exc.format_message()}{hint}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("helix-mpi: aborted", err=True)
        sys.exit(130)
