"""Time real MPI collectives on this machine (for `helix-mpi collectives --measure`)."""
from __future__ import annotations

import time

import numpy as np

REPEATS = 5


def measure_collective(op: str, sizes: list[int], ranks: int) -> tuple[bool, list[float]]:
    """Median seconds of each size over COMM_WORLD; returns (is rank 0, medians)."""
    from mpi4py import MPI

    from .config import ConfigError

    comm = MPI.COMM_WORLD
    if comm.Get_size() != ranks:
        raise ConfigError(f"--measure needs --ranks equal to the mpiexec ranks ({comm.Get_size()}), got {ranks}")
    medians = []
    for size in sizes:
        count = max(size // 4, comm.Get_size())
        count -= count % comm.Get_size()
        send = np.ones(count, dtype=np.float32)
        recv = np.empty_like(send)
        samples = []
        for _ in range(REPEATS):
            comm.Barrier()
            t0 = time.perf_counter()
            if op == "all_reduce":
                comm.Allreduce(send, recv)
            elif op == "all_to_all":
                comm.Alltoall(send, recv)
            elif op == "all_gather":
                comm.Allgather(send[: count // comm.Get_size()], recv)
            else:
                comm.Reduce_scatter_block(send, recv[: count // comm.Get_size()])
            samples.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        medians.append(float(np.median(samples)))
    return comm.Get_rank() == 0, medians
