"""`python -m helix_mpi` (how the launcher starts each rank: `python -m mpi4py -m helix_mpi run ...`).

The garbage collector is paused while the rank imports and initialises; `run` resumes it once its
kernels are loaded, every other command before it starts (startup.pause_gc).

HELIX_MPI_PROFILE=DIR: each rank writes cProfile statistics of its whole life, imports included,
to DIR/rank-R.prof (`python -m pstats DIR/rank-0.prof`).
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

    _profiler = cProfile.Profile()
    try:
        _profiler.runcall(_main)
    finally:
        os.makedirs(_profile_dir, exist_ok=True)
        _profiler.dump_stats(os.path.join(_profile_dir, f"rank-{_rank()}.prof"))
else:
    _main()
