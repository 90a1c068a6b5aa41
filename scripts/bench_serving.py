#!/usr/bin/env python
"""Trace-driven decode serving: Helix (KVP x TPA on 64 GPUs) vs a TP-like layout (KVP=1, TPA=8).

Replays the first N requests of the Mooncake conversation trace with contexts scaled (x8 by
default: median ~55K, max ~965K tokens) through helix_mpi.serving (analytic continuous batching,
no MPI). Prints a table (TTL p50/p99, tokens/s/GPU, max batch, KV imbalance, queue time) and a
final JSON line. Note: tokens/s/GPU follows the trace's offered load when the system keeps up.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.config import ConfigError, Layout, Strategy, load_model  # noqa: E402
from helix_mpi.serving import KV_TRANSFER, ServingError, serve  # noqa: E402
from helix_mpi.topology import TopologyError, load_topology  # noqa: E402
from helix_mpi.workload import WorkloadError, load_workload  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = REPO / ".." / "shared" / "data" / "mooncake" / "conversation_trace.jsonl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="Mooncake .jsonl or Azure .csv trace")
    p.add_argument("--first", type=int, default=200, help="requests to replay (default 200)")
    p.add_argument("--context-scale", type=float, default=8.0, help="prompt length multiplier (default 8)")
    p.add_argument("--model", default="llama-3.1-405b", help="model preset or config file (dense GQA)")
    p.add_argument("--topology", default="gb200-nvl72")
    p.add_argument("--precision", default="fp4", choices=["fp4", "fp8", "bf16"])
    p.add_argument("--kvp", type=int, default=8, help="Helix KVP (default 8)")
    p.add_argument("--tpa", type=int, default=8, help="Helix TPA and the TP-like layout's TP (default 8)")
    p.add_argument("--tokens-per-block", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=None, help="cap on requests held (default: HBM only)")
    p.add_argument("--kv-transfer", default="scale_out", choices=KV_TRANSFER)
    p.add_argument("--no-hopb", action="store_true", help="disable HOP-B for Helix")
    return p.parse_args(argv)


def layouts(args: argparse.Namespace) -> list[tuple[str, Layout]]:
    helix = Layout(kvp=args.kvp, tpa=args.tpa, tpf=args.kvp * args.tpa)
    tp = Layout(kvp=1, tpa=args.tpa, tpf=args.tpa, strategy=Strategy.TP)
    return [(f"helix KVP={args.kvp} TPA={args.tpa}", helix), (f"TP-like KVP=1 TPA={args.tpa}", tp)]


def row(name: str, gpus: int, r: dict, wall_s: float) -> str:
    return (f"{name:<24} {gpus:>4} {r['ttl_p50'] * 1e3:>9.2f} {r['ttl_p99'] * 1e3:>9.2f} "
            f"{r['tokens_per_s_per_gpu']:>10.1f} {r['max_batch']:>6} {r['kv_imbalance']:>8.4f} "
            f"{r['queue_mean_s'] * 1e3:>9.1f} {r['steps']:>6} {wall_s:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        workload = load_workload(args.trace, first=args.first, context_scale=args.context_scale)
        model, topo = load_model(args.model), load_topology(args.topology)
        inputs = sorted(r.input_tokens for r in workload.requests)
        print(f"workload: {workload.source}: {len(workload)} requests over {workload.duration_s:.1f} s, "
              f"context median {inputs[len(inputs) // 2]:,} max {inputs[-1]:,} tokens, "
              f"{workload.output_tokens:,} tokens to decode")
        print(f"model {model.name}, {topo.name}, {args.precision}, tokens_per_block {args.tokens_per_block}, "
              f"KV transfer {args.kv_transfer}, max batch {args.max_batch or 'HBM'}")
        print(f"{'layout':<24} {'GPUs':>4} {'TTL p50ms':>9} {'TTL p99ms':>9} {'tok/s/GPU':>10} {'maxB':>6} "
              f"{'KVimbal':>8} {'queue ms':>9} {'steps':>6} {'wall s':>6}")
        summary = {"trace": workload.source, "model": model.name, "topology": topo.name, "precision": args.precision}
        for name, layout in layouts(args):
            start = time.perf_counter()
            result = serve(workload, model, layout, topo, precision=args.precision,
                           hopb=not args.no_hopb, tokens_per_block=args.tokens_per_block,
                           max_batch=args.max_batch, kv_transfer=args.kv_transfer)
            wall = time.perf_counter() - start
            print(row(name, layout.world_size, result, wall), flush=True)
            key = "helix" if layout.strategy is Strategy.HELIX else "tp"
            summary[key] = {k: v for k, v in result.items() if not hasattr(v, "shape")} | {
                "gpus": layout.world_size, "kvp": layout.kvp, "tpa": layout.tpa, "sim_wall_s": wall}
    except (WorkloadError, ServingError, ConfigError, TopologyError) as exc:
        print(f"bench_serving: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
