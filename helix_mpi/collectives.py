"""Thin wrappers over mpi4py buffer collectives used by the emulator (real data, real MPI)."""
from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI


def all_to_all_heads(comm: MPI.Comm, send: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Split send [Qh, W] by head boundaries `splits` [P+1] over the P ranks of `comm`.

    Returns recv [P, n_mine, W]: the rows of my heads from every member, in member order.
    """
    members, me = comm.Get_size(), comm.Get_rank()
    width = send.shape[1]
    counts = np.diff(splits) * width
    n_mine = int(splits[me + 1] - splits[me])
    recv = np.empty((members, n_mine, width), dtype=np.float32)
    recv_counts = np.full(members, n_mine * width)
    recv_displs = np.arange(members) * n_mine * width
    comm.Alltoallv([np.ascontiguousarray(send), (counts, splits[:-1] * width), MPI.FLOAT],
                   [recv, (recv_counts, recv_displs), MPI.FLOAT])
    return recv


def all_to_all_rows(comm: MPI.Comm, rows: np.ndarray, send_counts: np.ndarray,
                    recv_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Send consecutive blocks of rows [n, W] (send_counts[j] rows to member j); returns the rows
    received [m, W] in member order and how many came from each member (exchanged if not given)."""
    width = rows.shape[1]
    send_counts = np.asarray(send_counts, dtype=np.int64)
    if recv_counts is None:
        recv_counts = np.empty_like(send_counts)
        comm.Alltoall(send_counts, recv_counts)
    recv_counts = np.asarray(recv_counts, dtype=np.int64)
    received = np.empty((int(recv_counts.sum()), width), dtype=np.float32)
    send_displs = np.concatenate([[0], np.cumsum(send_counts)[:-1]]) * width
    recv_displs = np.concatenate([[0], np.cumsum(recv_counts)[:-1]]) * width
    comm.Alltoallv([np.ascontiguousarray(rows, dtype=np.float32), (send_counts * width, send_displs), MPI.FLOAT],
                   [received, (recv_counts * width, recv_displs), MPI.FLOAT])
    return received, recv_counts


def all_gather(comm: MPI.Comm, array: np.ndarray) -> np.ndarray:
    """[members, *array.shape]: every member's array, in member order."""
    out = np.empty((comm.Get_size(), *array.shape), dtype=array.dtype)
    comm.Allgather(np.ascontiguousarray(array), out)
    return out


def all_reduce_sum(comm: MPI.Comm, array: np.ndarray) -> np.ndarray:
    """Sum of `array` over the members of `comm` (in place; returns it)."""
    if comm.Get_size() > 1:
        comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
    return array


def group_max(comm: MPI.Comm, value: float) -> float:
    """Largest `value` over the members (how a collective's modeled start is agreed)."""
    buf = np.array([value], dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
    return float(buf[0])


def quiet_barrier(comm: MPI.Comm, max_poll_s: float = 0.02) -> None:
    """A barrier whose early ranks sleep between tests instead of spinning in MPI's progress loop:
    with more ranks than cores, spinning ranks take the cores from those still working. The sleeps
    grow from 1 ms to `max_poll_s` (with 5 ms polls, 70 ranks waiting while two built the kernel
    library: that phase took 22.9 s and 40 s of CPU in all; with the growing sleeps 14.9 s and 26 s,
    scripts/bench_scale.py)."""
    sleep_until(comm.Ibarrier().Test, max_poll_s)


def quiet_bcast(comm: MPI.Comm, value, root: int = 0, max_poll_s: float = 0.02):
    """comm.bcast(value, root) (a picklable object) whose waiting ranks sleep between tests, as in
    quiet_barrier: its size, then its pickle, each in one non-blocking broadcast."""
    import pickle

    is_root = comm.Get_rank() == root
    payload = np.frombuffer(pickle.dumps(value), np.uint8) if is_root else None
    size = np.array([payload.size if is_root else 0], np.int64)
    sleep_until(comm.Ibcast(size, root=root).Test, max_poll_s)
    buffer = payload.copy() if is_root else np.empty(int(size[0]), np.uint8)
    sleep_until(comm.Ibcast(buffer, root=root).Test, max_poll_s)
    return value if is_root else pickle.loads(buffer.tobytes())


def sleep_until(ready, max_poll_s: float = 0.02) -> None:
    """Call ready() (a request's Test, an Iprobe: it drives MPI's progress) until it is true,
    sleeping between calls from 1 ms growing to `max_poll_s`."""
    pause = 0.001
    while not ready():
        time.sleep(pause)
        pause = min(pause * 1.5, max_poll_s)
