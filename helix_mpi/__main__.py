"""`python -m helix_mpi` (how the launcher starts each rank: `python -m mpi4py -m helix_mpi run ...`).

The garbage collector is paused while the rank imports and initialises; `run` resumes it once its
kernels are loaded, every other command before it starts (startup.pause_gc).

HELIX_MPI_PROFILE=DIR: each rank writes cProfile statistics of its whole life, imports included,
to DIR/rank-R.prof (`python -m pstats DIR/rank-0.prof`). Its clock is the wall clock; with
HELIX_MPI_PROFILE_CLOCK=cpu it is the rank's CPU time (oversubscribed ranks: the wall time of a
function counts the rank's waits for a core too).
"""
import os

from .startup import pause_gc


def _rank() -> str:
    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        if name in os.environ:
            return os.environ[name]
    return "0"


def _main() -> None:
    from .cli import main

    main()


pause_gc()
_profile_dir = os.environ.get("HELIX_MPI_PROFILE")
if _profile_dir:
    import cProfile

    if os.environ.get("HELIX_MPI_PROFILE_CLOCK", "wall") == "cpu":
        import time

        _profiler = cProfile.Profile(time.process_time)
    else:
        _profiler = cProfile.Profile()
    try:
        _profiler.runcall(_main)
    finally:
        os.makedirs(_profile_dir, exist_ok=True)
        _profiler.dump_stats(os.path.join(_profile_dir, f"rank-{_rank()}.prof"))
else:
    _main()
