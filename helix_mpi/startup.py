"""Where each rank's start-up time goes, from its process start to the first decode step.

Each rank marks the end of each start-up phase (`mark(name)`: wall time and this process's CPU
time); after the decode, every rank hands its marks to rank 0 in one gather (`report`), which
gives per phase the slowest rank's wall seconds, the median rank's, and the CPU seconds all ranks
spent in it. On an oversubscribed machine (72 ranks on 2 cores) the phases' CPU summed over all
ranks, divided by the cores, bounds the wall time from below: the rest is waiting (for a core,
for MPI, for the slowest rank at a collective).

The clock starts when the launcher started the ranks (HELIX_MPI_START, set by `helix-mpi run -n N`)
or, under the user's own mpiexec, at the earliest rank's process start. Wall times are
`time.time()`, comparable between ranks of one machine. This module imports nothing heavy: ranks
load it before NumPy.
"""
from __future__ import annotations

import os
import time
from typing import Any

START_ENV = "HELIX_MPI_START"  # wall time (time.time()) at which the launcher started the ranks
PROCESS = "python"  # the first phase: interpreter start, imports and argument parsing before `run`

_marks: list[tuple[str, float, float]] = []  # (phase that ends here, time.time(), time.process_time())


def process_start_time() -> float | None:
    """time.time() at which this process started (Linux: /proc, 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, after comm
        with open("/proc/uptime") as uptime:
            now_since_boot = float(uptime.read().split()[0])
        return time.time() - (now_since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


_gc_paused: list[bool] = []


def pause_gc() -> None:
    """Pause the cyclic garbage collector while a rank imports and initialises (NumPy, Numba and
    its typing registries allocate many long-lived objects: 8-12% less CPU, measured); `resume_gc`
    ends it. Start-up creates no cyclic garbage worth collecting."""
    import gc

    if gc.isenabled():
        gc.disable()
        _gc_paused.append(True)


def resume_gc() -> None:
    """Undo `pause_gc` (nothing if it did not pause the collector)."""
    import gc

    if _gc_paused:
        _gc_paused.clear()
        gc.enable()


def mark(phase: str, at: float | None = None) -> None:
    """`phase` ends now on this rank, or at wall time `at` (its CPU time then unknown: None)."""
    _marks.append((phase, time.time() if at is None else at, time.process_time() if at is None else None))


def reset() -> None:
    """Forget the marks (a second run in the same process, tests)."""
    _marks.clear()


def wall_of_perf_counter(value: float) -> float:
    """A time.perf_counter() reading as time.time()."""
    return value + (time.time() - time.perf_counter())


def rank_phases() -> dict[str, Any]:
    """This rank's phases: [(name, wall s, CPU s)], from its process start when known."""
    started = process_start_time()
    phases, wall, cpu = [], started, 0.0
    for name, at, cpu_at in _marks:
        if wall is not None:
            phases.append((name, at - wall, None if cpu_at is None else cpu_at - cpu))
        wall, cpu = at, cpu if cpu_at is None else cpu_at
    return {"process_start": started, "phases": phases, "cpu_s": cpu}


def report(comm: Any, decode_start: float, first_step_end: float | None) -> dict[str, Any] | None:
    """Rank 0: every rank's phases summarised (collective: every rank calls it once); others None.
    `decode_start`: wall time at which rank 0 began the first decode step (every rank was ready);
    `first_step_end`: wall time at which rank 0 had the first step's events."""
    every = comm.gather(rank_phases(), root=0)
    reset()  # a later run in this process reports its own phases
    if every is None:
        return None
    starts = [r["process_start"] for r in every if r["process_start"] is not None]
    launched = os.environ.get(START_ENV)
    origin = float(launched) if launched else (min(starts) if starts else None)
    summary: dict[str, Any] = {"ranks": len(every), "clock": "launcher" if launched else "first process start"}
    if origin is not None:
        summary["clock_start"] = origin  # time.time()
        summary["time_to_first_step_s"] = decode_start - origin
        if first_step_end is not None:
            summary["first_step_done_s"] = first_step_end - origin
        if starts:
            summary["last_process_start_s"] = max(starts) - origin
    summary["phases"] = _phase_table(every)
    summary["cpu_s"] = sum(r["cpu_s"] for r in every)
    return summary


def _phase_table(every: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per phase, in the order rank 0 went through them: wall max/median over ranks, CPU sum and max."""
    names = [name for name, _, _ in every[0]["phases"]]
    table = []
    for name in names:
        walls = sorted(w for r in every for n, w, _ in r["phases"] if n == name)
        cpus = [c for r in every for n, _, c in r["phases"] if n == name and c is not None]
        table.append({"phase": name, "wall_max_s": walls[-1], "wall_median_s": walls[len(walls) // 2],
                      "cpu_sum_s": sum(cpus) if cpus else None, "cpu_max_s": max(cpus) if cpus else None})
    return table
