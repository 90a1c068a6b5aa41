"""Sweep and Pareto commands, registered on the `helix-mpi` group by cli.py. Only click lives
here: the work is in sweep.py (enumerate and time) and pareto.py (frontiers, ratios, plot)."""
from __future__ import annotations

from typing import Any

import click

from .cliutil import emit, one_line_errors
from .config import ANALYTIC_DEFAULT_CONTEXT, ANALYTIC_DEFAULT_MODEL
from .units import TOKENS

_STRATEGY_HELP = "comma-separated subset of helix,helix-no-hopb,tp,pp-tp,kvp,dp-ep"


def _one_line_errors():
    """Bad model/topology/option/file: one line `helix-mpi: error: ...`, exit 2."""
    from .sweep import SweepFileError

    return one_line_errors(SweepFileError, ValueError, writes=True)


def _spec(model_spec, context, topology, max_gpus, max_batch, precision, strategies, tokens_per_block,
          a2a_latency_scale, reduce_latency_scale, a2a_chunk, comm="trtllm", racks=None):
    from .config import load_model
    from .sweep import SweepSpec, WhatIf, max_gpus_for
    from .topology import load_topology

    names = tuple(s.strip() for s in strategies.split(",") if s.strip())
    whatif = WhatIf(a2a_latency_scale, reduce_latency_scale, a2a_chunk)
    topo = load_topology(topology, racks)
    return SweepSpec(load_model(model_spec), topo, context, precision, max_gpus_for(topo, max_gpus, "--max-gpus"),
                     max_batch, names, tokens_per_block, whatif, comm=comm)


def _sweep_text(summary: dict[str, Any], output: str) -> str:
    racks = f" x {summary['racks']} racks" if summary.get("racks") else ""
    lines = [f"{summary['model']} at {summary['context']:,} tokens on {summary['topology']}{racks}, "
             f"{summary['precision']}, 1..{summary['max_gpus']} GPUs",
             f"{summary['layouts']:,} layouts, {summary['configs']:,} configurations timed in "
             f"{summary['seconds']:.2f} s ({summary['configs_per_s']:,.0f}/s), {summary['fitting']:,} fit in HBM",
             f"{'strategy':14s} {'configs':>8s} {'min TTL ms':>11s} {'max tok/s/GPU':>14s}"]
    for series, row in summary["series"].items():
        ttl = f"{row['min_ttl_s'] * 1e3:11.3f}" if row["min_ttl_s"] else f"{'-':>11s}"
        gpu = f"{row['max_tokens_per_s_per_gpu']:14.2f}" if row["max_tokens_per_s_per_gpu"] else f"{'-':>14s}"
        why = f"  none: {row['why_none']}" if row.get("why_none") else ""
        lines.append(f"{series:14s} {row['configs']:8d} {ttl} {gpu}{why}")
    lines.append(f"sweep: {output}")
    return "\n".join(lines)


@click.command()
@click.option("--model", "model_spec", default=ANALYTIC_DEFAULT_MODEL, show_default=True,
              help="preset name (helix-mpi models), or a .toml / Hugging Face config.json path")
@click.option("--context", type=TOKENS, default=ANALYTIC_DEFAULT_CONTEXT, show_default=True,
              help="tokens already cached per request (1M = 1,000,000)")
@click.option("--topology", default="gb200-nvl72", show_default=True, help="topology name or TOML path")
@click.option("--racks", type=int, help="NVLink domains (racks; nodes of a DGX) joined by the scale-out network; bounds the GPUs (default: the topology file's, else unbounded)")
@click.option("--max-gpus", type=int, help="sweep every GPU count 1..this (default: every GPU of the racks, else 72)")
@click.option("--max-batch", type=int, default=4096, show_default=True,
              help="largest batch (concurrent requests); every batch up to 1024, then steps of 2%")
@click.option("--precision", type=click.Choice(["fp4", "fp8", "bf16"]), default="fp4", show_default=True,
              help="modeled precision of weights and KV cache")
@click.option("--strategies", default="helix,helix-no-hopb,tp,pp-tp,kvp,dp-ep", show_default=True, help=_STRATEGY_HELP)
@click.option("--tokens-per-block", type=int, default=16, show_default=True, help="KV round robin block")
@click.option("--a2a-latency-scale", type=float, default=1.0, show_default=True,
              help="WHAT-IF: multiply every all-to-all's fixed latency (its modeled time at 0 bytes)")
@click.option("--reduce-latency-scale", type=float, default=1.0, show_default=True,
              help="WHAT-IF: multiply the fixed latency of all-reduce, all-gather and reduce-scatter")
@click.option("--a2a-chunk", type=int, default=0, show_default=True,
              help="requests per attention kernel + all-to-all under KVP: 0 the whole batch at once "
                   "(TensorRT-LLM's Helix kernel), 1 one per request (HOP-B as in the paper)")
@click.option("--comm", type=click.Choice(["trtllm", "nccl"]), default="trtllm", show_default=True,
              help="modeled collectives: TensorRT-LLM's custom all-reduce and all-to-all (NCCL's symmetric "
                   "kernels beyond them), or NCCL's classic algorithms only")
@click.option("-o", "--output", default="sweep.h5", show_default=True, help="HDF5 file to write")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def sweep(model_spec, context, topology, racks, max_gpus, max_batch, precision, strategies, tokens_per_block,
          a2a_latency_scale, reduce_latency_scale, a2a_chunk, comm, output, as_json, quiet) -> None:
    """Time every layout of each strategy at every batch (analytic, same plan and cost model as the
    emulator), keep what fits in HBM, and save the configurations and each strategy's Pareto frontier."""
    from .outputs import check_writable
    from .pareto import frontiers
    from .progress import Progress
    from .sweep import candidates, nothing_fits, run_sweep, write_sweep

    with _one_line_errors():
        spec = _spec(model_spec, context, topology, max_gpus, max_batch, precision, strategies, tokens_per_block,
                     a2a_latency_scale, reduce_latency_scale, a2a_chunk, comm, racks)
        check_writable(output)
        with Progress(len(candidates(spec)), "timing layouts", enabled=not quiet) as progress:
            result = run_sweep(spec, progress.by_count)
        if len(result.configs) == 0:
            raise ValueError(nothing_fits(spec, result.timed))
        write_sweep(output, result, frontiers(result.configs))
    summary = result.summary()
    summary["output"] = output
    emit(summary, as_json, _sweep_text(summary, output))


def _ratio_rows(ratios: dict[str, Any]) -> list[str]:
    from .pareto import ratio_text

    lines = [ratio_text(ratios)]
    for suffix, label in (("", "HOP-B"), ("_no_hopb", "no HOP-B")):
        details = ratios.get("details" + suffix)
        if not details or "note" in details:
            lines += [f"[{label}] {details['note']}"] if details else []
            continue
        t = details["throughput"]
        lines.append(f"[{label}] throughput gain at TTL {t['ttl_s'] * 1e3:.3f} ms: " + _config_text(t["helix"])
                     + "  vs  " + _config_text(t["baseline"]))
        m = details["min_ttl"]
        lines.append(f"[{label}] min TTL {m['helix']['ttl_s'] * 1e3:.3f} ms: " + _config_text(m["helix"])
                     + f"  vs  {m['baseline']['ttl_s'] * 1e3:.3f} ms: " + _config_text(m["baseline"]))
    return lines


def _config_text(row: dict[str, Any]) -> str:
    return (f"{row['strategy']} N={row['gpus']} KVP={row['kvp']} TPA={row['tpa']} TPF={row['tpf']} EP={row['ep']} "
            f"PP={row['pp']} B={row['batch']}")


@click.command()
@click.argument("sweep_file")
@click.option("-o", "--output", default="pareto.png", show_default=True, help="PNG of the frontiers")
@click.option("--json", "as_json", is_flag=True, help="print the key ratios as one JSON object")
def pareto(sweep_file, output, as_json) -> None:
    """Pareto frontiers of a sweep (tokens/s/GPU vs tokens/s/user) and Helix's gains over the best
    baseline: throughput and batch at equal TTL, minimum TTL, with and without HOP-B."""
    from .pareto import frontiers, key_ratios, plot_frontiers
    from .sweep import read_sweep

    with _one_line_errors():
        data = read_sweep(sweep_file)
        ratios = key_ratios(data.configs)
        fronts = frontiers(data.configs)
        s = data.summary
        title = (f"{s['model']}, {s['context']:,} tokens, {s['topology']}, {s['precision']}: "
                 f"Pareto frontiers, 1..{s['max_gpus']} GPUs")
        plot_frontiers(fronts, output, title, ratios)
    ratios.update(sweep=sweep_file, figure=output, frontier_points={k: len(v) for k, v in fronts.items()})
    emit(ratios, as_json, "\n".join(_ratio_rows(ratios) + [f"figure: {output}"]))


def register(group: click.Group) -> None:
    """Add this module's commands to the group."""
    group.add_command(sweep)
    group.add_command(pareto)
