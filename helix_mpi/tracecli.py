"""Trace analysis commands (summarize, ...), registered on the `helix-mpi` group by cli.py."""
from __future__ import annotations

import click

from .cli import UserError, _emit, _user_errors


@click.command()
@click.argument("trace_path", metavar="TRACE")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def summarize(trace_path: str, as_json: bool) -> None:
    """TTL, tokens/s, per-op breakdown and exposed communication of a trace."""
    from .analysis import RunShape, format_summary, summarize as summarize_events
    from .trace import open_trace, read_attr_json, read_events

    import numpy as np

    try:
        with open_trace(trace_path) as file:
            config = read_attr_json(file, "config")
            events = np.concatenate(list(read_events(file))) if file["events"].shape[0] else None
            kv_tokens = file["kv_tokens"][...]
    except _user_errors() as exc:
        raise UserError(str(exc)) from None
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{trace_path}: unreadable trace ({exc})") from None
    if events is None:
        raise UserError(f"{trace_path}: trace has no events")
    run, layout, model = config["run"], config["layout"], config["model"]
    world = layout["kvp"] * layout["tpa"]
    summary = summarize_events(events, RunShape(world, run["batch"], run["layers"], model["num_layers"]))
    last = kv_tokens[-1]
    summary["kv_tokens_per_rank"] = last.tolist()
    summary["kv_imbalance_max_over_mean"] = float(last.max() / last.mean()) if last.mean() > 0 else 1.0
    text = format_summary(summary) + (f"\nKV tokens per rank at the last step: min {last.min()} max {last.max()} "
                                      f"(max/mean {summary['kv_imbalance_max_over_mean']:.3f})")
    _emit(summary, as_json, text)



def register(group: click.Group) -> None:
    group.add_command(summarize)
