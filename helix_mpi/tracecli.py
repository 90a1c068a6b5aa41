"""Trace commands (summarize, compare, timeline, export, replay, validate), registered on the
`helix-mpi` group by cli.py. Only click lives here: the work is in analysis, replay, chrome, plots.

Every command reports a file that is not a readable trace (not HDF5, truncated, incomplete,
unknown schema) and every bad option value as one line `helix-mpi: error: ...`, exit code 2.
"""
from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from .cliutil import UserError, cannot_write_text, emit, user_error_types

PROGRESS_MIN_EVENTS = 2_000_000  # show a progress bar (on a terminal) from this many events


@contextmanager
def _one_line_errors(*traces: str) -> Iterator[None]:
    """Turn bad input (trace, topology, option values, unwritable output) into a UserError; an
    error of the HDF5 library while reading `traces` says they are corrupt."""
    try:
        yield
    except user_error_types() as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:  # option values refused by the logic (ranges, scales, paths)
        raise UserError(str(exc)) from None
    except KeyError as exc:
        raise UserError(f"unreadable trace: missing {exc}") from None
    except Exception as exc:
        if _raised_by_hdf5(exc):
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{' or '.join(traces) or 'the trace'}: truncated or corrupt HDF5 file, it cannot be "
                            f"read ({detail})") from None
        if not isinstance(exc, OSError):
            raise
        raise UserError(cannot_write_text(exc)) from None


def _raised_by_hdf5(exc: BaseException) -> bool:
    """Whether h5py (the HDF5 library) raised it: damaged files surface as OSError, RuntimeError or
    TypeError from inside h5py, wherever the damage is first read."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and ("/h5py/" in frames[-1].filename or frames[-1].filename.startswith("h5py/"))


@contextmanager
def _progress(path: str, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar over events on stderr, for big traces on a terminal only."""
    from .analysis.tracemeta import count_events

    total = count_events(path)
    if total < PROGRESS_MIN_EVENTS or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _selection(steps: str | None, layers: str | None, ranks: str | None, default_steps: str | None = None):
    from .analysis.select import Selection, parse_ranges

    parsed = {}
    for flag, text in (("steps", steps if steps is not None else default_steps), ("layers", layers), ("ranks", ranks)):
        try:
            parsed[flag] = parse_ranges(text)
        except ValueError as exc:
            raise UserError(f"--{flag}: {exc}") from None
    return Selection(**parsed)


def selection_options(fn):
    for option in reversed([
        click.option("--steps", help="decode steps to keep, e.g. 0-1 or 0,3 (default: all)"),
        click.option("--layers", help="layers to keep, e.g. 0 or 0-1 (default: all)"),
        click.option("--ranks", help="ranks to keep, e.g. 0-3 or 0,5 (default: all)"),
        click.option("--clock", type=click.Choice(["modeled", "host"]), default="modeled", show_default=True,
                     help="time axis: modeled hardware time or this machine's wall time"),
    ]):
        fn = option(fn)
    return fn


@click.command()
@click.argument("trace_path", metavar="TRACE")
@click.option("--by", type=click.Choice(["op", "layer", "rank", "step"]), default="op", show_default=True,
              help="also break the figures down per layer, rank or step")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def summarize(trace_path: str, by: str, as_json: bool) -> None:
    """TTL, tokens/s, time per op, exposed comm, collective bandwidths, KV cache per rank."""
    from .analysis.summary import summarize_trace
    from .analysis.text import format_trace_summary

    with _one_line_errors(trace_path), _progress(trace_path, "summarize") as progress:
        summary = summarize_trace(trace_path, by=by, progress=progress, allow_interrupted=True)
    if not summary["complete"]:
        click.echo(f"helix-mpi: warning: {trace_path} is incomplete (its run was interrupted): the figures cover "
                   f"the {summary['steps']} steps it holds", err=True)
    emit(summary, as_json, format_trace_summary(summary))


@click.command()
@click.argument("trace_a", metavar="A")
@click.argument("trace_b", metavar="B")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def compare(trace_a: str, trace_b: str, as_json: bool) -> None:
    """Two runs side by side (e.g. Helix vs TP, HOP-B on vs off) with ratios B/A."""
    from .analysis.summary import compare_summaries, summarize_trace
    from .analysis.text import format_compare

    with _one_line_errors(trace_a, trace_b):
        result = compare_summaries(summarize_trace(trace_a), summarize_trace(trace_b))
    emit(result, as_json, format_compare(result))


@click.command()
@click.argument("trace_path", metavar="TRACE")
@click.option("-o", "--output", required=True, help="PNG (or any matplotlib format) to write")
@selection_options
def timeline(trace_path: str, output: str, steps: str | None, layers: str | None, ranks: str | None,
             clock: str) -> None:
    """Gantt chart per rank and stream (compute, comm); default: the first decode step."""
    from .plots import plot_timeline, read_selection

    selection = _selection(steps, layers, ranks, default_steps="0")
    with _one_line_errors(trace_path):
        meta, events = read_selection(trace_path, selection)
        path = plot_timeline(meta, events, output, selection, clock)
    click.echo(f"timeline of {len(events):,} events ({selection.describe()}): {path}")


@click.command()
@click.argument("trace_path", metavar="TRACE")
@click.option("--format", "fmt", type=click.Choice(["chrome"]), default="chrome", show_default=True,
              help="chrome: trace-event JSON for ui.perfetto.dev and chrome://tracing")
@click.option("-o", "--output", required=True, help="JSON file to write")
@selection_options
def export(trace_path: str, fmt: str, output: str, steps: str | None, layers: str | None, ranks: str | None,
           clock: str) -> None:
    """Chrome trace-event JSON: one process per rank, one thread per stream, ts/dur in us."""
    from .chrome import export_chrome

    selection = _selection(steps, layers, ranks)
    with _one_line_errors(trace_path):
        with _progress(trace_path, "export") as progress:
            count = export_chrome(trace_path, output, selection, clock, progress)
    click.echo(f"{count:,} ops ({selection.describe()}) written to {output}: open it in https://ui.perfetto.dev")


@click.command()
@click.argument("trace_path", metavar="TRACE")
@click.option("--topology", help="topology name or TOML path (default: the one recorded in the trace)")
@click.option("--nvlink-scale", type=float, default=1.0, show_default=True, help="multiply NVLink bandwidth")
@click.option("--hbm-scale", type=float, default=1.0, show_default=True, help="multiply HBM bandwidth")
@click.option("--hopb/--no-hopb", default=None, help="overlap all-to-alls with attention (default: as recorded)")
@click.option("-o", "--output", required=True, help="new HDF5 trace to write")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def replay(trace_path: str, topology: str | None, nvlink_scale: float, hbm_scale: float, hopb: bool | None,
           output: str, as_json: bool) -> None:
    """Re-time a trace's ops on another hardware model (no MPI, no data) into a new trace."""
    from .replay import replay_trace
    from .topology import load_topology

    with _one_line_errors(trace_path):
        topo = load_topology(topology) if topology else None
        with _progress(trace_path, "replay") as progress:
            result = replay_trace(trace_path, output, topo, hopb, nvlink_scale, hbm_scale, progress)
    emit(result.to_dict(), as_json, _replay_text(trace_path, result))


def _replay_text(source: str, r: Any) -> str:
    ratio = r.ttl_s / r.source_ttl_s if r.source_ttl_s > 0 else float("nan")
    return "\n".join([
        f"replayed {source} ({r.source_topology}) onto {r.topology}, HOP-B {'on' if r.hopb else 'off'}: "
        f"{r.path} ({r.events:,} events)",
        f"modeled step time (emulated layers) {r.source_step_time_s * 1e6:10.2f} us -> {r.step_time_s * 1e6:10.2f} us",
        f"token-to-token latency (full model) {r.source_ttl_s * 1e3:10.4f} ms -> {r.ttl_s * 1e3:10.4f} ms "
        f"(x{ratio:.4f})",
    ])


@click.command()
@click.argument("trace_path", metavar="TRACE")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def validate(trace_path: str, as_json: bool) -> None:
    """Check schema, completeness, times, stream overlaps and per-step consistency (exit 0 or 2)."""
    from .analysis.validate import validate_trace

    with _one_line_errors(trace_path):
        facts, problems = validate_trace(trace_path)
    if as_json:
        emit({"trace": trace_path, "ok": not problems, "problems": problems, **facts}, True, "")
    elif not problems:
        click.echo(f"OK: {trace_path}: {facts['events']:,} events, {facts['steps']} steps, {facts['ranks']} ranks, "
                   f"schema version {facts['schema_version']}")
    if len(problems) == 1:
        raise UserError(f"{trace_path}: {problems[0]}")
    if problems:
        for problem in problems:
            click.echo(f"  - {problem}", err=True)
        raise UserError(f"{trace_path} is not a valid trace: {len(problems)} problems (listed above)")


def register(group: click.Group) -> None:
    for command in (summarize, compare, timeline, export, replay, validate):
        group.add_command(command)
