#!/usr/bin/env python
"""Long run (soak): many decode steps on 8 ranks, each rank's memory after warm-up and at the end.

Starts `helix-mpi run -n 8 --steps N --no-check`, samples the private memory of its own ranks
(Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, Linux) once a second, reads how many
steps the partial trace holds, and reports every rank's memory when the run has passed `--warmup`
steps and at its last sample, the growth per rank against `--limit-mb`, then validates the
finished trace. Last line: JSON.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

from procmem import private_mb, rank_pids

BIN = Path(sys.executable).parent


def steps_on_disk(partial: Path) -> int:
    try:
        with h5py.File(partial, "r") as f:
            return int(f["kv_tokens"].shape[0])
    except (OSError, KeyError):
        return 0


def sample(process: subprocess.Popen, trace: Path, warmup: int, ranks: int) -> tuple[dict, dict, float]:
    """Memory of every rank (pid -> MB) once warm and at the last sample with all ranks alive and the
    run still writing steps; wall seconds of the run."""
    warm, last, started = {}, {}, time.monotonic()
    while process.poll() is None:
        time.sleep(1.0)
        memory = {pid: private_mb(pid) for pid in rank_pids(parent=process.pid)}
        if len(memory) != ranks or min(memory.values()) == 0 or not Path(f"{trace}.partial").exists():
            continue
        if not warm and steps_on_disk(Path(f"{trace}.partial")) >= warmup:
            warm = memory
        last = memory
    return warm, last, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--limit-mb", type=float, default=5.0, help="growth per rank allowed after warm-up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "long.h5"
        command = [str(BIN / "helix-mpi"), "run", "-n", str(args.ranks), "--steps", str(args.steps), "--context", "256",
                   "--no-check", "--json", "-o", str(trace)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        warm, last, seconds = sample(process, trace, args.warmup, args.ranks)
        ok = process.returncode == 0 and trace.exists()
        valid = subprocess.run([str(BIN / "helix-mpi"), "validate", str(trace)], capture_output=True, text=True)
        with h5py.File(trace, "r") as f:
            events, steps = int(f["events"].shape[0]), int(f["kv_tokens"].shape[0])
    growth = [last[pid] - warm[pid] for pid in sorted(warm) if pid in last]
    flat = bool(growth) and max(growth) <= args.limit_mb
    print(f"{args.ranks} ranks, {steps} steps, {events:,} events in {seconds:.0f} s; trace valid: {valid.returncode == 0}")
    print(f"private memory after {args.warmup} steps: {sum(warm.values()):.0f} MB in all, max rank "
          f"{max(warm.values(), default=0):.0f} MB")
    print(f"private memory at the end:          {sum(last.values()):.0f} MB in all, max rank "
          f"{max(last.values(), default=0):.0f} MB")
    print("growth per rank (MB): " + " ".join(f"{g:+.2f}" for g in growth)
          + f"; max {max(growth, default=float('nan')):+.2f} (limit {args.limit_mb:g}): {'OK' if flat else 'FAILED'}")
    print(json.dumps({"ok": ok, "steps": steps, "events": events, "seconds": seconds, "valid": valid.returncode == 0,
                      "start_private_mb": sum(warm.values()), "end_private_mb": sum(last.values()),
                      "growth_per_rank_mb": growth, "max_growth_mb": max(growth, default=None), "flat": flat}))


if __name__ == "__main__":
    main()
