"""Shared test helpers: real `mpiexec` launches with a timeout (never a hang)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# One Numba cache for the whole session (in-process kernels and every mpiexec rank).
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="helix_numba_"))

from helix_mpi.kernels import compiled  # noqa: E402
from helix_mpi.launcher import mpiexec_path, rank_environment  # noqa: E402

# Kernels called in this process run Numba's JIT (the code the kernel tests check against float64
# references); ranks started by the tests run the precompiled library, which rank 0 of the first
# run builds into the session's NUMBA_CACHE_DIR (tests/test_aot.py checks it against the JIT).
compiled.use("jit")

TESTS = Path(__file__).resolve().parent
MPI_TIMEOUT_S = 240


def run_mpi(ranks: int, args: list[str], timeout: float = MPI_TIMEOUT_S, module: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """mpiexec -n RANKS python -m mpi4py (SCRIPT | -m MODULE) ARGS; an uncaught error on any
    rank aborts all of them, and the timeout turns a hang into a failure."""
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "mpi4py"]
    command += (["-m"] if module else []) + args
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=rank_environment(env), cwd=TESTS.parent)


def run_cli(args: list[str], timeout: float = MPI_TIMEOUT_S, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user types it (stdout and stderr are pipes)."""
    command = [str(Path(sys.executable).parent / "helix-mpi"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=rank_environment({**os.environ, **(env or {})}), cwd=cwd)


def call_cli(args: list[str]) -> subprocess.CompletedProcess:
    """`helix-mpi ARGS` in this process (helix_mpi.cli.main, which turns click's usage errors and
    UserErrors into one line and an exit code): fast enough for hundreds of generated cases. Any
    other exception propagates, and fails the test, as the traceback a user would see."""
    from helix_mpi.cli import main

    stdout, stderr, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv, code = ["helix-mpi", *args], 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def mpi():
    return run_mpi
