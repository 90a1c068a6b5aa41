#!/usr/bin/env python
"""Which Open MPI settings keep many busy-polling ranks on few cores from starving each other.

Launches N ranks (default 72) where rank 0 does a fixed NumPy job (~0.4 s alone) while the others
wait in a Barrier, then every rank does a 1 MB Allreduce; once with the settings helix-mpi uses
(`mpi_yield_when_idle=1`: waiting ranks yield the core) and once with `yield_when_idle=0` (they
spin). Prints rank 0's job time and the Allreduce time under each, then a final JSON line.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helix_mpi.launcher import mpiexec_path, rank_environment  # noqa: E402

RANK_CODE = """
import time, json, numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
a = np.random.default_rng(0).standard_normal(4_000_000)
comm.Barrier()
t0 = time.perf_counter()
if comm.rank == 0:
    for _ in range(20):
        a = np.sort(a)[::-1].copy()
job = time.perf_counter() - t0
comm.Barrier()
buf = np.ones(262144, np.float32)
t0 = time.perf_counter()
for _ in range(5):
    comm.Allreduce(MPI.IN_PLACE, buf)
reduce = (time.perf_counter() - t0) / 5
if comm.rank == 0:
    print(json.dumps({"job_s": job, "allreduce_1mb_s": reduce}))
"""


def measure(ranks: int, yield_when_idle: str) -> dict:
    env = rank_environment()
    env["OMPI_MCA_mpi_yield_when_idle"] = yield_when_idle
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, "-c", RANK_CODE]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=72)
    args = parser.parse_args()
    alone = measure(1, "1")
    rows = {"alone (1 rank)": alone, "yield_when_idle=1 (helix-mpi)": measure(args.ranks, "1"),
            "yield_when_idle=0 (spin)": measure(args.ranks, "0")}
    print(f"{args.ranks} ranks on {os.cpu_count()} cores")
    for name, row in rows.items():
        print(f"{name:30s} rank 0 job {row['job_s']:7.2f} s   1 MB all-reduce {row['allreduce_1mb_s'] * 1e3:8.1f} ms")
    print(json.dumps({"ranks": args.ranks, "cores": os.cpu_count(), **{k.split(" ")[0]: v for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
