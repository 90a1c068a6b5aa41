"""`python -m helix_mpi` (how the launcher starts each rank: `python -m mpi4py -m helix_mpi run ...`).

The garbage collector is paused while the rank imports and initialises; `run` resumes it once its
kernels are loaded, every other command before it starts (startup.pause_gc)."""
from .startup import pause_gc

pause_gc()
from .cli import main  # noqa: E402

main()
