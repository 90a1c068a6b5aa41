#!/usr/bin/env python
"""Trace-driven decode serving: analytic Helix vs TP for DeepSeek-R1 at 1M-token contexts, and the
emulator's decode steps per second serving the same requests on 8 MPI ranks.

1. Analytic (helix_mpi.serving.serve: full model size, no MPI, no data): the first 200 requests of
   the Mooncake conversation trace with prompts x8.29 (the longest, 120,633 tokens, becomes
   1,000,048; median ~74K), DeepSeek-R1 on gb200-nvl72 at fp4, KV transfer over the scale-out NIC,
   batch limited by HBM only. Helix (TPA = 1, KVP = N) and TP on 64 and 8 GPUs, Helix on 72.
   Table: TTL p50/p99, tokens/s/GPU, largest batch held, KV imbalance (max/mean over ranks, median
   over steps whose mean context exceeds 100K tokens), mean queue time. tokens/s/GPU follows the
   trace's offered load whenever a layout keeps up with it. Figure: host seconds of each layout's
   simulation (`sim_wall_s`, and `sim_cpu_s` the process's CPU seconds, which a busy machine
   inflates less; target <= 2 s).
2. Analytic, the whole trace (12,031 requests, prompts unscaled): DeepSeek-R1 Helix on 8 GPUs
   (KVP = 8, TPA = 1, EP = 8), as `helix-mpi model --model deepseek-r1 --gpus 8 --kvp 8 --tpa 1
   --ep 8 --workload traces/mooncake_conversation.jsonl.gz` serves it. Figure: host seconds of the
   simulation (`full_trace.sim_wall_s`; target <= 30 s) and decode steps per host second.
   `--no-full-trace` skips it.
3. Emulated (`helix-mpi run -n 8 --workload ...`: real math and MPI, tiny model, every layer): the
   same 200 requests at emulation size (prompts x0.01, outputs x0.05, arrivals x1e-4 so they arrive
   while the tiny model decodes, at most 16 at once), checked against the float64 reference.
   Figure: emulated decode steps per host second of the serving loop.

Final line: one JSON object with all three (`analytic_wall_s` / `analytic_cpu_s`: the 200-request
seconds per layout; `full_trace`: the whole trace's `sim_wall_s` and `sim_cpu_s`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.config import ConfigError, Implementation, load_model, make_layout, validate_layout  # noqa: E402
from helix_mpi.launcher import rank_environment  # noqa: E402
from helix_mpi.serving import KV_TRANSFER, ServingError, serve  # noqa: E402
from helix_mpi.topology import TopologyError, load_topology  # noqa: E402
from helix_mpi.workload import WorkloadError, load_workload  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = REPO / "traces" / "mooncake_conversation.jsonl.gz"  # scripts/derive_traces.py
LAYOUTS = (("Helix", "helix", 64), ("TP", "tp", 64), ("Helix", "helix", 8), ("TP", "tp", 8), ("Helix", "helix", 72))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="Mooncake .jsonl or Azure .csv trace")
    p.add_argument("--first", type=int, default=200, help="requests to replay (default 200)")
    p.add_argument("--context-scale", type=float, default=8.29, help="prompt multiplier (default 8.29: max ~1M)")
    p.add_argument("--model", default="deepseek-r1", help="model preset or config file")
    p.add_argument("--topology", default="gb200-nvl72")
    p.add_argument("--precision", default="fp4", choices=["fp4", "fp8", "bf16"])
    p.add_argument("--tokens-per-block", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=None, help="cap on requests held (default: HBM only)")
    p.add_argument("--kv-transfer", default="scale_out", choices=KV_TRANSFER)
    p.add_argument("--ranks", type=int, default=8, help="ranks of the emulated run (default 8)")
    p.add_argument("--emulate-model", default="tiny", help="model of the emulated run (default tiny)")
    p.add_argument("--emulate-scales", default="0.01,0.05,0.0001",
                   help="context,output,time scales of the emulated run (default 0.01,0.05,0.0001)")
    p.add_argument("--emulate-max-batch", type=int, default=16)
    p.add_argument("--no-emulate", action="store_true", help="analytic figures only")
    p.add_argument("--no-full-trace", action="store_true", help="skip the whole trace (12,031 requests)")
    return p.parse_args(argv)


def analytic_rows(args: argparse.Namespace) -> tuple[str, list[dict]]:
    workload = load_workload(args.trace, first=args.first, context_scale=args.context_scale)
    model, topo = load_model(args.model), load_topology(args.topology)
    inputs = sorted(r.input_tokens for r in workload.requests)
    print(f"workload: {workload.source}: {len(workload)} requests over {workload.duration_s:.1f} s, prompts "
          f"median {inputs[len(inputs) // 2]:,} max {inputs[-1]:,} tokens, {workload.output_tokens:,} to decode")
    print(f"model {model.name}, {topo.name}, {args.precision}, tokens_per_block {args.tokens_per_block}, "
          f"KV transfer {args.kv_transfer}, max batch {args.max_batch or 'HBM'}; analytic, full model")
    print(f"{'layout':<35} {'TTL p50 ms':>10} {'TTL p99 ms':>10} {'tok/s/GPU':>9} {'max B':>6} {'KV imbal':>8} "
          f"{'queue ms':>9} {'steps':>6} {'sim s':>5} {'cpu s':>5}")
    rows = []
    for name, strategy, gpus in LAYOUTS:
        layout = make_layout(model, gpus, None, None, strategy)
        validate_layout(model, layout, gpus)
        start, cpu = time.perf_counter(), time.process_time()
        r = serve(workload, model, layout, topo, Implementation(args.precision), tokens_per_block=args.tokens_per_block,
                  max_batch=args.max_batch, kv_transfer=args.kv_transfer)
        label = f"{name} {gpus} GPUs (KVP={layout.kvp} TPA={layout.tpa} EP={layout.ep})"
        row = {"layout": label, "strategy": strategy, "gpus": gpus, "sim_wall_s": time.perf_counter() - start,
               "sim_cpu_s": time.process_time() - cpu}
        row.update({k: v for k, v in r.items() if not hasattr(v, "shape")})
        print(f"{label:<35} {r['ttl_p50'] * 1e3:>10.2f} {r['ttl_p99'] * 1e3:>10.2f} {r['tokens_per_s_per_gpu']:>9.2f} "
              f"{r['max_batch']:>6} {r['kv_imbalance']:>8.4f} {r['queue_mean_s'] * 1e3:>9.1f} {r['steps']:>6} "
              f"{row['sim_wall_s']:>5.2f} {row['sim_cpu_s']:>5.2f}", flush=True)
        rows.append(row)
    return workload.source, rows


def full_trace(args: argparse.Namespace) -> dict:
    """The whole trace, unscaled, on Helix KVP=8 TPA=1 EP=8: host seconds of `serve`."""
    workload = load_workload(args.trace)
    model, topo = load_model(args.model), load_topology(args.topology)
    layout = make_layout(model, 8, 8, 1, "helix", ep=8)
    validate_layout(model, layout, 8)
    start, cpu = time.perf_counter(), time.process_time()
    r = serve(workload, model, layout, topo, Implementation(args.precision), tokens_per_block=args.tokens_per_block,
              max_batch=args.max_batch, kv_transfer=args.kv_transfer)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {"requests": r["requests"], "steps": r["steps"], "generated_tokens": r["generated_tokens"],
              "layout": "Helix 8 GPUs (KVP=8 TPA=1 EP=8)", "sim_wall_s": wall, "sim_cpu_s": cpu,
              "steps_per_s": r["steps"] / wall,
              "ttl_p50": r["ttl_p50"], "ttl_p99": r["ttl_p99"], "makespan_s": r["makespan_s"]}
    print(f"whole trace: {r['requests']:,} requests, {r['steps']:,} decode steps on {result['layout']}: "
          f"{wall:.1f} s, {cpu:.1f} s of CPU ({result['steps_per_s']:,.0f} steps/s); "
          f"TTL p50 {r['ttl_p50'] * 1e3:.2f} ms, "
          f"p99 {r['ttl_p99'] * 1e3:.2f} ms", flush=True)
    return result


def emulate(args: argparse.Namespace) -> dict:
    """`helix-mpi run -n RANKS --workload ...`: its JSON summary (steps_per_host_s and the check)."""
    context, output, arrivals = (float(x) for x in args.emulate_scales.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(Path(sys.executable).parent / "helix-mpi"), "run", "-n", str(args.ranks), "--model",
                   args.emulate_model, "--workload", args.trace, "--first", str(args.first), "--context-scale",
                   str(context), "--output-scale", str(output), "--time-scale", str(arrivals), "--max-batch",
                   str(args.emulate_max_batch), "--check", "--json", "-o", str(Path(tmp) / "served.h5")]
        done = subprocess.run(command, capture_output=True, text=True, env=rank_environment())
    if done.returncode != 0:
        raise RuntimeError(f"emulated run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    keep = ("world_size", "requests", "generated_tokens", "steps", "mean_batch", "max_batch", "host_seconds",
            "steps_per_host_s", "ttl_p50", "ttl_p99", "reference_error", "reference_tolerance")
    result = {k: summary[k] for k in keep} | {"model": args.emulate_model, "scales": args.emulate_scales}
    print(f"emulated: {args.emulate_model} on {result['world_size']} ranks, {result['requests']} requests "
          f"(scales {args.emulate_scales}): {result['steps']} decode steps (mean batch {result['mean_batch']:.1f}) "
          f"in {result['host_seconds']:.1f} s = {result['steps_per_host_s']:.2f} steps/s; reference error "
          f"{result['reference_error']:.2e}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source, rows = analytic_rows(args)
        whole = None if args.no_full_trace else full_trace(args)
        emulated = None if args.no_emulate else emulate(args)
    except (WorkloadError, ServingError, ConfigError, TopologyError, RuntimeError) as exc:
        print(f"bench_serving: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"trace": source, "model": args.model, "topology": args.topology, "analytic": rows,
                      "analytic_wall_s": {row["layout"]: row["sim_wall_s"] for row in rows},
                      "analytic_cpu_s": {row["layout"]: row["sim_cpu_s"] for row in rows}, "full_trace": whole,
                      "emulated": emulated,
                      "steps_per_s": emulated["steps_per_host_s"] if emulated else None}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
