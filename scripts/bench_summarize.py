#!/usr/bin/env python
"""Benchmark `helix-mpi summarize` on a synthetic 10-million-event trace.

Builds the trace in a temporary folder with TraceWriter, one decode step at a time (bounded
memory): the events of one real step come from the analytic model (helix_mpi.analytic.simulate,
the emulator's own plans and clocks: Llama-3.1-405B, 126 layers, 72 GPUs of a GB200 NVL72,
batch 3, 1M-token context), then are repeated with shifted times for as many steps as needed.
Then it times analysis.summarize_trace (what `helix-mpi summarize` runs) in a fresh child process,
so the peak resident memory reported is that of summarizing alone (imports included).
Prints a table, then one JSON line: {"events", "seconds", "events_per_s", "peak_rss_mb", ...}.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.analytic import simulate  # noqa: E402
from helix_mpi.config import MODEL_PRESETS, RunConfig, make_layout  # noqa: E402
from helix_mpi.kvcache import tokens_held  # noqa: E402
from helix_mpi.mesh import coordinates  # noqa: E402
from helix_mpi.topology import load_topology  # noqa: E402
from helix_mpi.trace import TraceWriter  # noqa: E402
from helix_mpi.axes import Axis  # noqa: E402

HOST_SLOWDOWN = 500.0  # synthetic host time = modeled time x this (an emulator on a laptop)


def one_step(model_name: str, gpus: int, batch: int, context: int):
    """Events of one decode step of all ranks, in the emulator's file order (rank, layer, index)."""
    model = MODEL_PRESETS[model_name]
    layout = make_layout(model, gpus, None, None)
    run = RunConfig(batch=batch, context=context, steps=1, layers=model.num_layers)
    topo = load_topology("gb200-nvl72")
    events = simulate(model, layout, run, topo)
    events = events[np.lexsort((events["index"], events["layer"], events["rank"]))]
    held = tokens_held(context + 1, layout.kvp, run.tokens_per_block)
    kv = np.array([held[coordinates(layout, r)[Axis.KVP]] * batch for r in range(gpus)], dtype=np.int64)
    attrs = {"config": {"model": model.to_dict(), "layout": layout.to_dict(), "run": run.to_dict(),
                        "strategy": "helix"},
             "topology": topo.to_dict(), "versions": {"helix_mpi": "bench"}, "world_size": gpus}
    return events, kv, attrs, run


def build_trace(path: Path, target_events: int, model_name: str, gpus: int, batch: int, context: int) -> dict:
    started = time.perf_counter()
    events, kv, attrs, run = one_step(model_name, gpus, batch, context)
    steps = math.ceil(target_events / len(events))
    attrs["config"]["run"]["steps"] = steps
    span = float(events["end_s"].max())  # modeled seconds of one step
    with TraceWriter(path, attrs, gpus) as writer:
        for step in range(steps):
            rows = events.copy()
            rows["step"] = step
            rows["start_s"] += step * span
            rows["end_s"] += step * span
            rows["host_start_s"] = rows["start_s"] * HOST_SLOWDOWN
            rows["host_end_s"] = rows["end_s"] * HOST_SLOWDOWN
            writer.append_step(rows, kv)
        writer.finish()
    return {"events": steps * len(events), "steps": steps, "events_per_step": len(events),
            "build_s": time.perf_counter() - started, "file_mb": path.stat().st_size / 1e6}


def child(path: str) -> None:
    """Time summarize_trace alone (imports excluded) and print its figures as JSON."""
    from helix_mpi.analysis import summarize_trace

    started = time.perf_counter()
    summary = summarize_trace(path)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "events": summary["events"], "ttl_s": summary["ttl_s"]}))


def time_summarize(path: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                          check=True)
    wall = time.perf_counter() - started
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: kB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events to write (whole steps)")
    parser.add_argument("--model", default="llama-3.1-405b")
    parser.add_argument("--gpus", type=int, default=72)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--context", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the trace here and keep it (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    with tempfile.TemporaryDirectory(prefix="helix_bench_") as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "synthetic.h5"
        built = build_trace(path, args.events, args.model, args.gpus, args.batch, args.context)
        timed = time_summarize(path)
    rate = built["events"] / timed["seconds"]
    print(f"{'events':>12s} {'steps':>6s} {'file MB':>8s} {'build s':>8s} {'summarize s':>12s} "
          f"{'events/s':>12s} {'process s':>10s} {'peak RSS MB':>12s}")
    print(f"{built['events']:12,d} {built['steps']:6d} {built['file_mb']:8.1f} {built['build_s']:8.1f} "
          f"{timed['seconds']:12.2f} {rate:12,.0f} {timed['process_s']:10.2f} {timed['peak_rss_mb']:12.1f}")
    print(json.dumps({"events": built["events"], "seconds": round(timed["seconds"], 3),
                      "events_per_s": round(rate), "peak_rss_mb": round(timed["peak_rss_mb"], 1),
                      "file_mb": round(built["file_mb"], 1), "process_s": round(timed["process_s"], 3),
                      "model": args.model, "gpus": args.gpus, "batch": args.batch}))


if __name__ == "__main__":
    main()
