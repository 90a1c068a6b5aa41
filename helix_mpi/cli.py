"""The `helix-mpi` command (a thin click group; the work lives in the modules it calls)."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from .launcher import default_numba_cache, relaunch, strip_np_option, under_mpiexec

EXIT_BAD_INPUT = 2


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"helix-mpi: error: {self.message}", err=True)


def _user_errors():
    from .config import ConfigError
    from .topology import TopologyError
    from .trace import TraceError

    return (ConfigError, TopologyError, TraceError)


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
        click.option("--precision", type=click.Choice(["fp4", "fp8", "bf16"]), default="fp4", show_default=True,
                     help="modeled precision of weights and KV cache"),
        click.option("--hopb/--no-hopb", default=True, show_default=True,
                     help="overlap request b's all-to-all with request b+1's attention"),
        click.option("--tokens-per-block", type=int, default=16, show_default=True,
                     help="KV round robin block (decode steps per KVP rank)"),
        click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table"),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@model_options
@click.option("-n", "--np", "ranks", type=int, help="ranks; when not started by mpiexec, relaunch under it")
@click.option("--steps", type=int, default=4, show_default=True, help="decode steps")
@click.option("--layers", type=int, default=2, show_default=True, help="layers to emulate")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of all synthetic tensors")
@click.option("--key-scale", type=float, default=1.0, hidden=True, help="scale of initial keys (tests)")
@click.option("-o", "--output", default="helix-run.h5", show_default=True, help="HDF5 trace to write")
@click.option("--save-tensors", is_flag=True, help="also store weights, caches, inputs and outputs")
@click.option("--check/--no-check", default=None, help="compare with the NumPy reference (default: if it fits)")
@click.option("--fail-at", hidden=True, help="STEP:RANK: raise on that rank at that step (tests)")
def run(model_spec, kvp, tpa, ep, strategy, batch, context, topology, precision, hopb, tokens_per_block, as_json,
        ranks, steps, layers, seed, key_scale, output, save_tensors, check, fail_at) -> None:
    """Emulate decode steps of a model under Helix on MPI ranks and write an HDF5 trace."""
    if ranks is not None and ranks < 1:
        raise UserError(f"-n/--np must be >= 1, got {ranks}")
    failure = _parse_fail_at(fail_at)
    settings = dict(model_spec=model_spec, kvp=kvp, tpa=tpa, ep=ep, strategy=strategy, batch=batch, context=context, steps=steps,
                    layers=layers, tokens_per_block=tokens_per_block, seed=seed, precision=precision, hopb=hopb,
                    key_scale=key_scale, topology=topology)
    if ranks is not None and ranks > 1 and not under_mpiexec():
        try:  # refuse bad input here, in one line, before starting any rank
            _resolve_run(world_size=ranks, **settings)
        except _user_errors() as exc:
            raise UserError(str(exc)) from None
        code, interrupted = relaunch(ranks, strip_np_option(sys.argv[1:]))
        if interrupted:
            click.echo(f"helix-mpi: interrupted; the partial trace is kept as {output}.partial "
                       "(complete = False)", err=True)
        sys.exit(code)
    from mpi4py import MPI

    _interrupt_on_sigterm()
    comm = MPI.COMM_WORLD
    is_root = comm.Get_rank() == 0
    try:
        if ranks is not None and ranks != comm.Get_size():
            raise UserError(f"-n {ranks} but mpiexec started {comm.Get_size()} ranks: drop -n or make them equal")
        model, layout, run_config, topo = _resolve_run(world_size=comm.Get_size(), **settings)
        from .runner import run_emulation

        with _progress(is_root and not as_json, steps) as advance:
            outcome = run_emulation(comm, model, layout, run_config, topo, output, save_tensors, check, advance,
                                    failure)
    except (*_user_errors(), UserError) as exc:  # every rank sees the same bad input; rank 0 says it
        if is_root:
            click.echo(f"helix-mpi: error: {exc.message if isinstance(exc, UserError) else exc}", err=True)
        _exit_all_ranks(comm, EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the trace on disk is consistent between steps
        if is_root:
            click.echo(f"helix-mpi: interrupted; the partial trace is kept as {output}.partial "
                       "(complete = False)", err=True)
        sys.stderr.flush()
        comm.Abort(130)
    except Exception as exc:  # any other failure on any rank stops every rank now
        sys.stderr.write(f"helix-mpi: rank {comm.Get_rank()} failed: {type(exc).__name__}: {exc}\n")
        if os.environ.get("HELIX_MPI_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
    if is_root:
        _print_run(outcome, layout, model, as_json)
        if outcome.reference_error is not None and outcome.reference_error > outcome.summary["reference_tolerance"]:
            sys.exit(1)


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
                 seed, precision, hopb, key_scale, topology):
    """Model, layout, run config and topology from the flags, validated for `world_size` ranks."""
    from .config import RunConfig, check_run_fits_model, load_model, make_layout, validate_layout
    from .topology import load_topology

    model = load_model(model_spec)
    layout = make_layout(model, world_size, kvp, tpa, strategy, ep)
    validate_layout(model, layout, world_size)
    run_config = RunConfig(batch=batch, context=context, steps=steps, layers=layers,
                           tokens_per_block=tokens_per_block, seed=seed, precision=precision, hopb=hopb,
                           key_scale=key_scale)
    check_run_fits_model(model, run_config)
    return model, layout, run_config, load_topology(topology)


class _progress:
    """Click's progress bar over decode steps on rank 0 (stderr), nothing elsewhere."""

    def __init__(self, enabled: bool, steps: int):
        self.bar = click.progressbar(length=steps, label="decode steps", file=sys.stderr) if enabled else None

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.__enter__()
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
@click.option("--gpus", "-g", type=int, default=8, show_default=True, help="GPUs N")
@click.option("--layers", type=int, help="layers to time (default: all of the model)")
@click.option("--steps", type=int, default=1, show_default=True, help="decode steps (context grows by one each)")
def model_command(model_spec, kvp, tpa, ep, strategy, batch, context, topology, precision, hopb, tokens_per_block,
                  as_json, gpus, layers, steps) -> None:
    """Analytic time of one configuration: same plan and cost model as the emulator, no MPI, no data."""
    from .analysis import format_summary, shape_of, summarize
    from .analytic import simulate
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
                               tokens_per_block=tokens_per_block, precision=precision, hopb=hopb)
        topo = load_topology(topology)
    except _user_errors() as exc:
        raise UserError(str(exc)) from None
    events = simulate(model, layout, run_config, topo)
    summary = summarize(events, shape_of(gpus, batch, run_config.layers, model))
    memory = memory_report(model, layout, batch, context + steps, precision, topo, tokens_per_block)
    summary.update(strategy=strategy, layout=layout.to_dict(), model=model.name, topology=topo.name,
                   precision=precision, context=context, hopb=hopb, memory=memory, fits=memory["fits"],
                   kv_bytes_per_gpu=memory["max_kv_bytes"], kv_read_s=memory["kv_read_s"])
    summary.pop("host_seconds", None)
    header = (f"{strategy} on {gpus} GPUs of {topo.name}: {_layout_text(layout)}  "
              f"{model.name} at {context} tokens, {precision}, HOP-B {'on' if hopb else 'off'}")
    _emit(summary, as_json, header + "\n" + format_summary(summary) + "\n" + _memory_text(memory))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def topologies(as_json: bool) -> None:
    """List the hardware topologies (topologies/*.toml) with their key constants."""
    from .topology import list_topologies, load_topology

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


def _register_commands() -> None:
    from . import sweepcli, tracecli

    tracecli.register(cli)
    sweepcli.register(cli)


_register_commands()


def main() -> None:
    os.environ.setdefault("NUMBA_CACHE_DIR", default_numba_cache())
    cli(prog_name="helix-mpi")
