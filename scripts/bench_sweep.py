#!/usr/bin/env python
"""Benchmark of the analytic sweep: configurations timed per second on this machine.

Runs the full sweep (every layout of every strategy on 1..72 GPUs, every batch up to 4096) for
deepseek-r1 and llama-3.1-405b at 1M tokens on gb200-nvl72, FP4, and prints per model the
layouts, the configurations timed (before the HBM filter), those that fit, the wall time and the
rate. A configuration is one (layout, batch) pair: its TTL is computed with the plan and cost
model and its memory checked. Last line: JSON {"configs", "seconds", "configs_per_s"} (totals).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.config import load_model  # noqa: E402
from helix_mpi.sweep import SweepSpec, run_sweep, shard_classes  # noqa: E402
from helix_mpi.topology import load_topology  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deepseek-r1,llama-3.1-405b")
    parser.add_argument("--context", type=int, default=1_000_000)
    parser.add_argument("--topology", default="gb200-nvl72")
    parser.add_argument("--max-gpus", type=int, default=72)
    parser.add_argument("--max-batch", type=int, default=4096)
    args = parser.parse_args()
    topo = load_topology(args.topology)
    print(f"{'model':16s} {'layouts':>8s} {'configs':>9s} {'fit HBM':>8s} {'seconds':>8s} {'configs/s':>10s}")
    total_configs, total_s = 0, 0.0
    for name in args.models.split(","):
        shard_classes.cache_clear()  # cold: every model pays its own plan and shard building
        spec = SweepSpec(load_model(name), topo, args.context, "fp4", args.max_gpus, args.max_batch)
        start = time.perf_counter()
        result = run_sweep(spec)
        seconds = time.perf_counter() - start
        total_configs, total_s = total_configs + result.timed, total_s + seconds
        print(f"{name:16s} {result.layouts:8d} {result.timed:9d} {len(result.configs):8d} {seconds:8.2f} "
              f"{result.timed / seconds:10.0f}")
    print(json.dumps({"configs": total_configs, "seconds": round(total_s, 3),
                      "configs_per_s": round(total_configs / total_s)}))


if __name__ == "__main__":
    main()
