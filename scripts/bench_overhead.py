#!/usr/bin/env python
"""Orchestration overhead of the emulator on 8 ranks.

Runs `helix-mpi run -n 8` and reads its trace: for every (rank, step, layer), the host wall time
of the layer (first op start to last op end) against the sum of its ops' host times (kernels and
the MPI collectives themselves). The difference is what the emulator adds: building the plan,
agreeing collective start times (a tiny MPI max per collective), recording events. Then, in the
same run, the same collectives are timed bare (helix-mpi collectives --measure). Last line: JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

BIN = Path(sys.executable).parent


def run_trace(args: argparse.Namespace, path: Path) -> None:
    command = [str(BIN / "helix-mpi"), "run", "-n", str(args.ranks), "--model", args.model, "--context",
               str(args.context), "--batch", str(args.batch), "--steps", str(args.steps), "--layers", "2",
               "--no-check", "-o", str(path), "--json"]
    subprocess.run(command, check=True, capture_output=True)


def layer_figures(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        events = f["events"][...]
    events = events[events["step"] > 0]  # the first step warms caches
    key = (events["rank"].astype(np.int64) * 1_000_000 + events["step"] * 1_000 + events["layer"])
    order = np.argsort(key, kind="stable")
    key, events = key[order], events[order]
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], key])))
    wall = np.maximum.reduceat(events["host_end_s"], starts) - np.minimum.reduceat(events["host_start_s"], starts)
    busy = np.add.reduceat(events["host_end_s"] - events["host_start_s"], starts)
    comm = events["stream"] == b"comm"
    comm_busy = np.add.reduceat(np.where(comm, events["host_end_s"] - events["host_start_s"], 0.0), starts)
    overhead = (wall - busy) / wall
    return {"layer_wall_ms": float(np.median(wall) * 1e3), "ops_ms": float(np.median(busy) * 1e3),
            "mpi_in_ops_ms": float(np.median(comm_busy) * 1e3), "overhead_fraction": float(np.median(overhead))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--model", default="small")
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_trace(args, Path(tmp) / "t.h5")
        figures = layer_figures(Path(tmp) / "t.h5")
    print(f"{args.ranks} ranks, {args.model}, context {args.context}, batch {args.batch} (medians over layer steps)")
    print(f"host wall per layer step   {figures['layer_wall_ms']:8.3f} ms")
    print(f"sum of its ops             {figures['ops_ms']:8.3f} ms (MPI collectives inside ops "
          f"{figures['mpi_in_ops_ms']:.3f} ms)")
    print(f"orchestration overhead     {figures['overhead_fraction'] * 100:8.1f} %")
    print(json.dumps(figures | vars(args)))


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
