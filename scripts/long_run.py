#!/usr/bin/env python
"""Long run: many decode steps on 8 ranks, memory at start (after warm-up) and at the end.

Starts `helix-mpi run -n 8 --steps N`, samples every rank's private memory (Private_Clean +
Private_Dirty of /proc/PID/smaps_rollup, Linux) once a second, reads how many steps the partial
trace holds, and reports the ranks' memory when the run has passed `--warmup` steps and at its
last sample, then validates the finished trace. Last line: JSON.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ranks", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "long.h5"
        command = [str(BIN / "helix-mpi"), "run", "-n", str(args.ranks), "--steps", str(args.steps), "--context", "256",
                   "--no-check", "--json", "-o", str(trace)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        start_mb = end_mb = None
        started = time.monotonic()
        while process.poll() is None:
            time.sleep(1.0)
            pids = rank_pids()
            if not pids:
                continue
            memory = [private_mb(pid) for pid in pids]
            if start_mb is None and steps_on_disk(Path(str(trace) + ".partial")) >= args.warmup:
                start_mb = memory
            end_mb = memory
        seconds = time.monotonic() - started
        ok = process.returncode == 0 and trace.exists()
        valid = subprocess.run([str(BIN / "helix-mpi"), "validate", str(trace)], capture_output=True, text=True)
        with h5py.File(trace, "r") as f:
            events, steps = int(f["events"].shape[0]), int(f["kv_tokens"].shape[0])
    total_start, total_end = sum(start_mb or [0]), sum(end_mb or [0])
    print(f"{args.ranks} ranks, {steps} steps, {events:,} events in {seconds:.0f} s; trace valid: "
          f"{valid.returncode == 0}")
    print(f"private memory after {args.warmup} steps: {total_start:.0f} MB in all, max rank {max(start_mb or [0]):.0f} MB")
    print(f"private memory at the end:          {total_end:.0f} MB in all, max rank {max(end_mb or [0]):.0f} MB")
    print(f"growth: {total_end - total_start:+.1f} MB; per rank: "
          + " ".join(f"{b - a:+.1f}" for a, b in zip(start_mb or [], end_mb or [])))
    print(json.dumps({"ok": ok, "steps": steps, "events": events, "seconds": seconds, "valid": valid.returncode == 0,
                      "start_private_mb": total_start, "end_private_mb": total_end,
                      "growth_mb": total_end - total_start}))


if __name__ == "__main__":
    main()
