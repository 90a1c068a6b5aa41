"""The `helix-mpi` command (a thin click group; the work lives in the modules it calls)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from .launcher import RELAUNCHED_ENV, JobEnd, default_numba_cache, relaunch, strip_np_option, under_mpiexec
from .outputs import OutputError

EXIT_BAD_INPUT = 2
ABORT_GRACE_S = 0.5  # a failing rank waits this long before MPI_Abort kills every rank


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"helix-mpi: error: {self.message}", err=True)


def _user_errors():
    from .config import ConfigError
    from .serving import ServingError
    from .topology import TopologyError
    from .trace import TraceError
    from .workload import WorkloadError

    return (ConfigError, TopologyError, TraceError, WorkloadError, ServingError, OutputError)


def _emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=None, default=float) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="helix_mpi")
def cli() -> None:
    """Emulate Helix parallelism for long-context LLM decoding on MPI ranks, and analyse the traces."""


def model_options(fn):
    for option in reversed([
        click.option("--model", "model_spec", default="tiny", show_default=True,
                     help="preset name, or a .toml / Hugging Face config.json path"),
        click.option("--kvp", type=int, help="KV parallelism (default: N / TPA)"),
        click.option("--tpa", type=int, help="attention TP (default: largest divisor of K dividing N)"),
        click.option("--ep", type=int, help="MoE expert parallelism (default: largest divisor of N and E)"),
        click.option("--strategy", type=click.Choice(["helix", "tp", "kvp", "dp-ep"]), default="helix",
                     show_default=True, help="Helix or a baseline (tp, Medha-style kvp, DP attention + EP)"),
        click.option("--batch", type=int, default=1, show_default=True, help="requests decoded together"),
        click.option("--context", type=int, default=256, show_default=True, help="tokens already cached"),
        click.option("--topology", default="gb200-nvl72", show_default=True, help="topology name or TOML path"),
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
        click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table"),
    ]):
        fn = option(fn)
    return fn


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
        click.option("--kv-capacity", type=int, metavar="TOKENS",
                     help="KV tokens each rank may hold (default: the HBM its weight shards leave, full model)"),
        click.option("--kv-transfer", type=click.Choice(["scale_out", "nvlink", "none"]), default="scale_out",
                     show_default=True, help="link of the prefill pool -> decode KV copy (charged to queue time)"),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@model_options
@workload_options
@click.option("-n", "--np", "ranks", type=int, help="ranks; when not started by mpiexec, relaunch under it")
@click.option("--steps", type=int, default=4, show_default=True, help="decode steps")
@click.option("--layers", type=int, help="layers to emulate (default 2; with --workload all of the model's)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of all synthetic tensors")
@click.option("--key-scale", type=float, default=1.0, hidden=True, help="scale of initial keys (tests)")
@click.option("-o", "--output", default="helix-run.h5", show_default=True, help="HDF5 trace to write")
@click.option("--save-tensors", is_flag=True, help="also store weights, caches, inputs and outputs")
@click.option("--check/--no-check", default=None, help="compare with the NumPy reference (default: if it fits)")
@click.option("--fail-at", hidden=True, help="STEP:RANK: raise on that rank at that step (tests)")
@click.option("--storage", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="host storage of weights and KV cache (bf16: half the memory, upcast in the kernels)")
@click.option("--force", is_flag=True, help="run even when the estimated host memory exceeds what is available")
def run(model_spec, kvp, tpa, ep, strategy, batch, context, topology, precision, kv_precision, comm, cuda_graphs,
        hopb, a2a_chunk, tokens_per_block, as_json, ranks, steps, layers, seed, key_scale, output, save_tensors, check,
        fail_at, storage, force, **serving) -> None:
    """Emulate decode steps of a model under Helix on MPI ranks and write an HDF5 trace.

    With --workload, serve a request trace instead: requests join the batch at their (scaled)
    arrival on the modeled clock, decode their output tokens and leave, freeing their KV."""
    if ranks is not None and ranks < 1:
        raise UserError(f"-n/--np must be >= 1, got {ranks}")
    failure = _parse_fail_at(fail_at)
    if serving["workload"] is None and layers is None:
        layers = 2
    settings = dict(model_spec=model_spec, kvp=kvp, tpa=tpa, ep=ep, strategy=strategy, batch=batch, context=context,
                    steps=steps, layers=layers, tokens_per_block=tokens_per_block, seed=seed, precision=precision,
                    kv_precision=kv_precision, comm=comm, cuda_graphs=cuda_graphs, hopb=hopb, a2a_chunk=a2a_chunk,
                    storage=storage, key_scale=key_scale, topology=topology)
    if ranks is not None and ranks > 1 and not under_mpiexec():
        try:  # refuse bad input here, in one line, before starting any rank
            from .outputs import check_writable

            resolved = _resolve_run(world_size=ranks, **settings)
            if serving["workload"] is not None:
                _refuse_fixed_batch_flags(save_tensors)
                _resolve_serving(*resolved, serving)
            elif not force:
                _guard_host_memory(*resolved[:3], check, save_tensors)
            check_writable(output, create_folders=True)
        except _user_errors() as exc:
            raise UserError(str(exc)) from None
        sys.exit(_report_job_end(relaunch(ranks, strip_np_option(sys.argv[1:])), output))
    from mpi4py import MPI

    _interrupt_on_sigterm()
    comm = MPI.COMM_WORLD
    is_root = comm.Get_rank() == 0
    try:
        if ranks is not None and ranks != comm.Get_size():
            raise UserError(f"-n {ranks} but mpiexec started {comm.Get_size()} ranks: drop -n or make them equal")
        model, layout, run_config, topo = _resolve_run(world_size=comm.Get_size(), **settings)
        if serving["workload"] is None and not force and not os.environ.get(RELAUNCHED_ENV):  # else checked
            _guard_host_memory(model, layout, run_config, check, save_tensors, comm)
        if serving["workload"] is not None:
            _refuse_fixed_batch_flags(save_tensors)
            outcome = _run_serving(comm, model, layout, run_config, topo, serving, output, check, failure,
                                   is_root and not as_json)
        else:
            from .runner import run_emulation

            with _progress(is_root and not as_json, steps) as advance:
                outcome = run_emulation(comm, model, layout, run_config, topo, output, save_tensors, check, advance,
                                        failure)
    except OutputError as exc:  # only rank 0 writes: it stops every rank
        click.echo(f"helix-mpi: error: {exc}", err=True)
        sys.stderr.flush()
        comm.Abort(EXIT_BAD_INPUT)
    except (*_user_errors(), UserError) as exc:  # every rank sees the same bad input; rank 0 says it
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
        (_print_serving_run if serving["workload"] is not None else _print_run)(outcome, layout, model, as_json)
        if outcome.reference_error is not None and outcome.reference_error > outcome.summary["reference_tolerance"]:
            sys.exit(1)


def _guard_host_memory(model, layout, run_config, check, save_tensors: bool, comm=None) -> None:
    """Refuse (ConfigError, one line) a fixed-batch run whose ranks on this machine need more host
    memory than it has available. Under mpiexec every rank checks its own machine's share and all
    ranks refuse if any does."""
    from .config import ConfigError
    from .hostmem import available_bytes, estimate_run, refusal, will_check

    memory = estimate_run(model, layout, run_config, will_check(model, run_config, check) or save_tensors)
    here = list(range(layout.world_size))
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        here = node.allgather(comm.Get_rank())
        node.Free()
    available = available_bytes()
    reason = None if available is None else refusal(memory.ranks(here), available, run_config)
    reasons = [reason] if comm is None else comm.allgather(reason)
    refused = [r for r in reasons if r is not None]
    if refused:
        raise ConfigError(refused[0])


def _report_job_end(end: JobEnd, output: str) -> int:
    """After a relaunched job: one line saying how it ended, unless it ended well or a rank has
    already said why it stopped; returns the exit code (128 + signal when interrupted)."""
    from .outputs import is_locked
    from .trace import settle_partial

    if end.code == 0 and end.failure is None:  # it finished (perhaps just as it was interrupted)
        return 0
    if end.reported and end.interrupted is None:
        return end.code
    trace = "no trace was written by this run" if is_locked(output) else settle_partial(output)
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


def _resolve_run(world_size, model_spec, kvp, tpa, ep, strategy, batch, context, steps, layers, tokens_per_block,
                 seed, precision, hopb, a2a_chunk, key_scale, topology, storage="fp32", kv_precision="fp8",
                 comm="trtllm", cuda_graphs=True):
    """Model, layout, run config and topology from the flags, validated for `world_size` ranks
    (layers None: every layer of the model, as --workload runs default to)."""
    from .config import RunConfig, check_run_fits_model, load_model, make_layout, validate_layout
    from .topology import load_topology

    model = load_model(model_spec)
    layout = make_layout(model, world_size, kvp, tpa, strategy, ep)
    validate_layout(model, layout, world_size)
    layers = model.num_layers if layers is None else layers
    run_config = RunConfig(batch=batch, context=context, steps=steps, layers=layers,
                           tokens_per_block=tokens_per_block, seed=seed, precision=precision,
                           kv_precision=kv_precision, comm=comm, cuda_graphs=cuda_graphs, hopb=hopb,
                           a2a_chunk=a2a_chunk, storage=storage, key_scale=key_scale)
    check_run_fits_model(model, run_config)
    return model, layout, run_config, load_topology(topology)


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


def _resolve_serving(model, layout, run_config, topo, serving: dict):
    """(workload, ServingSetup) from the flags; the scheduler's checks run here (one line if bad)."""
    from .serving import Scheduler, ServingSetup

    workload = _load_workload(serving)
    setup = ServingSetup(model, layout, topo, run_config.implementation(), run_config.hopb, run_config.tokens_per_block,
                         serving["max_batch"], serving["kv_transfer"], kv_capacity_tokens=serving["kv_capacity"])
    Scheduler(workload, setup)  # refuses requests that can never fit
    return workload, setup


def _run_serving(comm, model, layout, run_config, topo, serving: dict, output, check, failure, show: bool):
    from .runner import run_serving

    workload, setup = _resolve_serving(model, layout, run_config, topo, serving)
    with _progress(show, len(workload), "requests served", absolute=True) as advance:
        return run_serving(comm, model, layout, run_config, topo, workload, setup, output, check, advance, failure)


class _progress:
    """Click's progress bar on rank 0 (stderr), nothing elsewhere: one unit per call, or with
    `absolute` the callback gets the units done so far."""

    def __init__(self, enabled: bool, length: int, label: str = "decode steps", absolute: bool = False):
        enabled = enabled and sys.stderr.isatty()  # a rank under mpiexec writes to a pipe: no bar, no label
        self.bar = click.progressbar(length=length, label=label, file=sys.stderr) if enabled else None
        self.absolute = absolute

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.__enter__()
        if self.absolute:
            return lambda done: self.bar.update(done - self.bar.pos)
        return lambda step: self.bar.update(1)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _memory_text(memory) -> str:
    gb = 1e9
    verdict = "fits" if memory["fits"] else "DOES NOT FIT"
    return (f"per-GPU memory (busiest rank): weights {memory['max_weights_bytes'] / gb:.2f} GB + KV "
            f"{memory['max_kv_bytes'] / gb:.2f} GB = {memory['max_total_bytes'] / gb:.2f} GB of "
            f"{memory['hbm_bytes'] / gb:.0f} GB HBM: {verdict}; KV read per step {memory['kv_read_s'] * 1e3:.3f} ms")


def _layout_text(layout) -> str:
    return f"KVP={layout.kvp} TPA={layout.tpa} TPF={layout.tpf} EP={layout.ep}"


def _print_run(outcome, layout, model, as_json: bool) -> None:
    from .analysis import format_summary

    summary = outcome.summary
    summary["layout"] = layout.to_dict()
    summary["model"] = model.name
    text = [f"{layout.strategy.value} on {layout.world_size} ranks: {_layout_text(layout)}  model {model.name}",
            format_summary(summary)]
    if outcome.reference_error is not None:
        ok = outcome.reference_error <= summary["reference_tolerance"]
        text.append(f"reference check: max relative error {outcome.reference_error:.2e} "
                    f"(tolerance {summary['reference_tolerance']:.0e}) {'OK' if ok else 'FAILED'}")
    if outcome.trace_path:
        text.append(f"trace: {outcome.trace_path}")
    _emit(summary, as_json, "\n".join(text))


@cli.command("model")
@model_options
@workload_options
@click.option("--gpus", "-g", type=int, default=8, show_default=True, help="GPUs N")
@click.option("--layers", type=int, help="layers to time (default: all of the model)")
@click.option("--steps", type=int, default=1, show_default=True, help="decode steps (context grows by one each)")
def model_command(model_spec, kvp, tpa, ep, strategy, batch, context, topology, precision, kv_precision, comm,
                  cuda_graphs, hopb, a2a_chunk, tokens_per_block, as_json, gpus, layers, steps, **serving) -> None:
    """Analytic time of one configuration: same plan and cost model as the emulator, no MPI, no data.

    With --workload, serve a request trace at full model size (continuous batching, analytic)."""
    if serving["workload"] is not None:
        _refuse_fixed_batch_flags(False)
        _model_serving(model_spec, kvp, tpa, ep, strategy, topology, precision, hopb, tokens_per_block, as_json,
                       gpus, serving, a2a_chunk, kv_precision, comm, cuda_graphs)
        return
    from .analysis import EventStats, format_summary, shape_of
    from .analytic import simulate_layers
    from .memory import memory_report
    from .config import RunConfig, load_model, make_layout, validate_layout
    from .topology import load_topology

    try:
        model = load_model(model_spec)
        if gpus < 1:
            raise UserError(f"--gpus must be >= 1, got {gpus}")
        layout = make_layout(model, gpus, kvp, tpa, strategy, ep)
        validate_layout(model, layout, gpus)
        run_config = RunConfig(batch=batch, context=context, steps=steps, layers=layers or model.num_layers,
                               tokens_per_block=tokens_per_block, precision=precision, kv_precision=kv_precision,
                               comm=comm, cuda_graphs=cuda_graphs, hopb=hopb, a2a_chunk=a2a_chunk)
        topo = load_topology(topology)
    except _user_errors() as exc:
        raise UserError(str(exc)) from None
    stats = EventStats()  # one layer's events at a time: bounded memory at batch 4096 on 72 GPUs
    for rows in simulate_layers(model, layout, run_config, topo):
        stats.add(rows)
    summary = stats.summary(shape_of(gpus, batch, run_config.layers, model))
    memory = memory_report(model, layout, batch, context + steps, precision, topo, tokens_per_block, kv_precision)
    summary.update(strategy=strategy, layout=layout.to_dict(), model=model.name, topology=topo.name,
                   precision=precision, context=context, hopb=hopb, memory=memory, fits=memory["fits"],
                   kv_bytes_per_gpu=memory["max_kv_bytes"], kv_read_s=memory["kv_read_s"])
    summary.pop("host_seconds", None)
    header = (f"{strategy} on {gpus} GPUs of {topo.name}: {_layout_text(layout)}  "
              f"{model.name} at {context} tokens, {precision}, HOP-B {'on' if hopb else 'off'}")
    _emit(summary, as_json, header + "\n" + format_summary(summary) + "\n" + _memory_text(memory))


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
    except (ValueError, *_user_errors()) as exc:
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
                   cuda_graphs: bool = True) -> None:
    """`model --workload`: helix_mpi.serving.serve at full model size."""
    from .config import RunConfig, load_model, make_layout, validate_layout
    from .serving import scalar_metrics, serve
    from .topology import load_topology

    try:
        if gpus < 1:
            raise UserError(f"--gpus must be >= 1, got {gpus}")
        model = load_model(model_spec)
        layout = make_layout(model, gpus, kvp, tpa, strategy, ep)
        validate_layout(model, layout, gpus)
        topo = load_topology(topology)
        run_config = RunConfig(tokens_per_block=tokens_per_block, precision=precision, kv_precision=kv_precision,
                               comm=comm, cuda_graphs=cuda_graphs, hopb=hopb, layers=1, a2a_chunk=a2a_chunk)
        workload, setup = _resolve_serving(model, layout, run_config, topo, serving)
        metrics = serve(workload, model, layout, topo, setup.impl, hopb, tokens_per_block, setup.max_batch,
                        setup.kv_transfer, kv_capacity_tokens=setup.kv_capacity_tokens, a2a_chunk=a2a_chunk)
    except _user_errors() as exc:
        raise UserError(str(exc)) from None
    data = scalar_metrics(metrics)
    data.update(strategy=strategy, layout=layout.to_dict(), model=model.name, topology=topo.name,
                precision=precision, hopb=hopb, workload=workload.source)
    header = (f"{strategy} on {gpus} GPUs of {topo.name}: {_layout_text(layout)}  {model.name}, {precision}, "
              f"HOP-B {'on' if hopb else 'off'} (analytic, full model)")
    _emit(data, as_json, "\n".join([header, _workload_text(workload), _serving_text(metrics)]))


def _workload_text(workload) -> str:
    return f"workload: {workload.source}: {len(workload)} requests arriving over {workload.duration_s:.4g} s"


def _serving_text(m: dict) -> str:
    """The serving figures (Scheduler.metrics) for the terminal."""
    ms = 1e3
    imbalance = "n/a (no long contexts)"
    if m["long_context_steps"]:
        imbalance = (f"{m['kv_imbalance']:.4f} (median over {m['long_context_steps']} steps with contexts "
                     f"> 100K tokens; worst {m['kv_imbalance_max']:.4f})")
    return "\n".join([
        f"served {m['requests']} requests: {m['generated_tokens']:,} tokens in {m['steps']:,} decode steps, "
        f"makespan {m['makespan_s']:.4g} s (modeled)",
        f"TTL p50 / p90 / p99          {m['ttl_p50'] * ms:.4g} / {m['ttl_p90'] * ms:.4g} / {m['ttl_p99'] * ms:.4g} ms",
        f"queue mean / p99             {m['queue_mean_s'] * ms:.4g} / {m['queue_p99_s'] * ms:.4g} ms "
        f"(KV transfer mean {m['kv_transfer_mean_s'] * ms:.4g} ms)",
        f"tokens/s/GPU {m['tokens_per_s_per_gpu']:.4g}   batch max {m['max_batch']} mean {m['mean_batch']:.3g}   "
        f"KV capacity {m['kv_capacity_tokens_per_gpu']:,} tokens/GPU",
        f"KV imbalance (max/mean over ranks) {imbalance}",
    ])


def _print_serving_run(outcome, layout, model, as_json: bool) -> None:
    summary = outcome.summary
    summary.update(layout=layout.to_dict(), model=model.name, strategy=layout.strategy.value)
    text = [f"{layout.strategy.value} on {layout.world_size} ranks: {_layout_text(layout)}  model {model.name}, "
            f"{summary['layers_emulated']} of {summary['model_layers']} layers emulated",
            _serving_text(outcome.metrics),
            f"host: {summary['steps']:,} emulated steps in {summary['host_seconds']:.3g} s = "
            f"{summary['steps_per_host_s']:.1f} steps/s; {summary['kv_slots']} KV slots on rank 0"]
    if outcome.reference_error is not None:
        ok = outcome.reference_error <= summary["reference_tolerance"]
        text.append(f"reference check (every request alone, float64): max relative error "
                    f"{outcome.reference_error:.2e} (tolerance {summary['reference_tolerance']:.0e}) "
                    f"{'OK' if ok else 'FAILED'}")
    if outcome.trace_path:
        text.append(f"trace: {outcome.trace_path}")
    _emit(summary, as_json, "\n".join(text))


def _register_commands() -> None:
    from . import calibcli, sweepcli, tracecli

    tracecli.register(cli)
    sweepcli.register(cli)
    calibcli.register(cli)


_register_commands()


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
