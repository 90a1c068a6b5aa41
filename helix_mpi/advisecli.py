"""`helix-mpi advise`, registered on the group by cli.py. Only click lives here: the work is in
advise.py (on sweep.run_sweep, pareto.frontier and serving.simulate)."""
from __future__ import annotations

import click

from .advise import ADVISE_SERIES
from .cliutil import UserError, emit, user_error_types
from .config import ANALYTIC_DEFAULT_CONTEXT, ANALYTIC_DEFAULT_MODEL
from .units import format_count


@click.command()
@click.option("--model", "model_spec", default=ANALYTIC_DEFAULT_MODEL, show_default=True,
              help="preset name (helix-mpi models), or a .toml / Hugging Face config.json path")
@click.option("--context", default=format_count(ANALYTIC_DEFAULT_CONTEXT), show_default=True,
              help="tokens per request: 1M (= 1,000,000), or quantiles p50:64K,p99:1M, or a trace file "
                   "(traces/*.jsonl|csv: its p50/p90/p99 of input + output tokens); sized for the largest")
@click.option("--context-scale", type=float, default=1.0, show_default=True,
              help="with a trace file for --context: multiply its prompt lengths")
@click.option("--topology", default="gb200-nvl72", show_default=True, help="topology name or TOML path")
@click.option("--precision", type=click.Choice(["fp4", "fp8", "bf16"]), default="fp4", show_default=True,
              help="modeled precision of the weights")
@click.option("--kv-precision", type=click.Choice(["fp8", "bf16", "fp4"]), default="fp8", show_default=True,
              help="modeled precision of the KV cache")
@click.option("--comm", type=click.Choice(["trtllm", "nccl"]), default="trtllm", show_default=True,
              help="modeled collectives library")
@click.option("--ttl-max", type=float, metavar="SECONDS", help="target: token-to-token latency at most this")
@click.option("--min-throughput", type=float, metavar="TOKENS_PER_S_PER_GPU",
              help="target: at least this many tokens/s per GPU")
@click.option("--racks", type=int, help="NVLink domains (racks; nodes of a DGX) joined by the scale-out network "
                                      "(default: the topology file's, else one)")
@click.option("--gpus-max", type=int, help="consider 1..this many GPUs (default: every GPU of the racks, else 72)")
@click.option("--objective", type=click.Choice(["throughput", "ttl", "gpus"]),
              help="what 'best' maximises among the configurations meeting the target (default: throughput "
                   "with --ttl-max, else ttl)")
@click.option("--strategies", default=",".join(ADVISE_SERIES), show_default=True,
              help="comma-separated subset of helix,tp,pp-tp,kvp,dp-ep (helix-no-hopb also accepted)")
@click.option("--top", type=int, default=3, show_default=True, help="layouts listed per strategy")
@click.option("--max-batch", type=int, default=4096, show_default=True, help="largest batch considered")
@click.option("--a2a-chunk", type=int, default=0, show_default=True,
              help="requests per KVP all-to-all: 0 the whole batch (TensorRT-LLM), 1 per request (HOP-B)")
@click.option("--workload", metavar="FILE",
              help="instead: find the fewest GPUs serving this request trace with --ttl-slo (analytic serving)")
@click.option("--ttl-slo", type=float, metavar="SECONDS", help="with --workload: p99 TTL target and SLO-aware admission")
@click.option("--queue-max", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="with --workload: bounded queueing = p99 admission wait at most this")
@click.option("--first", type=int, metavar="N", help="with --workload: only its first N requests")
@click.option("--time-scale", type=float, default=1.0, show_default=True, help="with --workload: multiply arrivals")
@click.option("--output-scale", type=float, default=1.0, show_default=True,
              help="with --workload: multiply output lengths")
@click.option("--layouts-per-count", type=int, default=2, show_default=True,
              help="with --workload: layouts simulated per GPU count (the sweep's best)")
@click.option("--csv", "csv_path", metavar="FILE", help="write the Pareto frontier (all strategies) as CSV")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def advise(model_spec, context, context_scale, topology, precision, kv_precision, comm, ttl_max, min_throughput,
           racks, gpus_max, objective, strategies, top, max_batch, a2a_chunk, workload, ttl_slo, queue_max, first,
           time_scale, output_scale, layouts_per_count, csv_path, as_json, quiet) -> None:
    """Which layout to deploy: sweep every layout of every strategy (analytic) and answer with the
    best configuration meeting a target (--ttl-max, --min-throughput, --gpus-max), how it compares
    with the best non-Helix one, a ranked table per strategy and the Pareto frontier.

    With --workload FILE --ttl-slo S: the fewest GPUs (and the layout) serving the trace with p99
    TTL <= S and bounded queueing (SLO-aware admission, analytic serving at full model size)."""
    from .advise import (AdviseError, Target, advice_text, check_strategies, frontier_csv, parse_context,
                         workload_advice_text)
    from .advise import advise as run_advise
    from .advise import advise_workload
    from .config import Implementation, load_model
    from .progress import Progress
    from .sweep import SweepSpec, WhatIf, candidates, max_gpus_for
    from .topology import load_topology

    try:
        model = load_model(model_spec)
        topo = load_topology(topology, racks)
        gpus_max = max_gpus_for(topo, gpus_max, "--gpus-max")
        impl = Implementation(precision, kv_precision, comm)
        names = check_strategies(strategies)
        if gpus_max < 1 or top < 1 or max_batch < 1 or layouts_per_count < 1:
            raise UserError("--gpus-max, --top, --max-batch and --layouts-per-count must be >= 1")
        if workload is not None:
            if ttl_slo is None:
                raise UserError("--workload needs --ttl-slo SECONDS (the p99 TTL to serve it within)")
            from .workload import load_workload

            trace = load_workload(workload, first=first, context_scale=context_scale, time_scale=time_scale,
                                  output_scale=output_scale)
            with Progress(0, "advise", enabled=not quiet) as progress:
                result = advise_workload(trace, model, topo, ttl_slo, gpus_max, impl,
                                         tuple(n for n in names if n != "helix-no-hopb"), queue_max,
                                         layouts_per_count, a2a_chunk=a2a_chunk,
                                         progress=progress.phase if not quiet else None)
            emit(result.to_dict(), as_json, workload_advice_text(result))
            return
        if ttl_slo is not None:
            raise UserError("--ttl-slo goes with --workload; for a fixed context use --ttl-max")
        spec_context = parse_context(context, context_scale)
        target = Target(ttl_max, min_throughput, objective)
        total = len(candidates(SweepSpec(model, topo, spec_context.design, precision, gpus_max, max_batch, names,
                                         whatif=WhatIf(a2a_chunk=a2a_chunk), kv_precision=kv_precision, comm=comm)))
        with Progress(total, "timing layouts", enabled=not quiet) as progress:
            result = run_advise(model, topo, spec_context, target, gpus_max, impl, names, top, max_batch,
                                a2a_chunk=a2a_chunk, progress=progress.by_count)
        if csv_path:
            frontier_csv(result, csv_path)
    except (*user_error_types(), AdviseError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {getattr(exc, 'filename', '') or csv_path}: {exc.strerror}") from None
    data = result.to_dict()
    if csv_path:
        data["csv"] = csv_path
    text = advice_text(result) + (f"\nfrontier CSV: {csv_path}" if csv_path else "")
    emit(data, as_json, text)


def register(group: click.Group) -> None:
    group.add_command(advise)

