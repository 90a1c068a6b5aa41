"""Which machine code runs the kernels: the precompiled library or Numba's JIT.

`kernel(name)` is the entry point `name` of jit/entries.py, callable with NumPy arrays. The
backend is chosen once per process, by HELIX_MPI_KERNELS:
- `auto` (default): the precompiled library (kernels/aot.py) when this machine has one for these
  kernel sources (no Numba import), else Numba's JIT (its on-disk cache, NUMBA_CACHE_DIR);
- `aot`: the precompiled library, built first if missing (needs Numba in this process);
- `jit`: always Numba's JIT.
`prepare(build=True)` (rank 0 of a run, before the others) builds the library where `auto` would
fall back to the JIT; `missing_library()` says beforehand whether it would (a run then splits the
build between ranks 0 and 1, emulator.warm_up_kernels). The library lives under NUMBA_CACHE_DIR
(else helix-mpi's default cache).
"""
from __future__ import annotations

import os
from pathlib import Path

BACKEND_ENV = "HELIX_MPI_KERNELS"
MODES = ("auto", "aot", "jit")

_chosen: list = []  # [backend] once chosen
_loaded: dict = {}  # library folder -> aot.Library loaded into this process (loaded once)


class KernelBackendError(ValueError):
    """HELIX_MPI_KERNELS names no backend (bad input: one line)."""


class JitBackend:
    """Numba's JIT: each entry is the Numba dispatcher itself."""

    name = "jit"

    def entry(self, name: str):
        from .jit.entries import ENTRIES

        return ENTRIES[name][0]


class AotBackend:
    """The precompiled library of this machine."""

    name = "aot"

    def __init__(self, library):
        self.library = library

    def entry(self, name: str):
        return self.library.entry(name)


def kernel(name: str):
    """The compiled entry point `name` (see jit/entries.py) of this process's backend."""
    return backend().entry(name)


def backend():
    if not _chosen:
        _chosen.append(_choose(build=mode() == "aot"))
    return _chosen[0]


def prepare(build: bool = True) -> str:
    """Choose this process's backend now (building the library if `build` and the mode allows
    it); returns its name, 'aot' or 'jit'."""
    if not _chosen:
        _chosen.append(_choose(build))
    return _chosen[0].name


def missing_library() -> Path | None:
    """The folder of this machine's library when this process would have to build it (no backend
    chosen yet, HELIX_MPI_KERNELS auto or aot, and no complete library there), else None."""
    if _chosen or mode() == "jit":
        return None
    try:
        _library(build=False)
    except FileNotFoundError as missing:
        return Path(missing.args[0])
    except Exception:  # noqa: BLE001 - not loadable for another reason: prepare() reports it
        return None
    return None


def use(name: str) -> str:
    """Make this process run `name` ('jit', or 'aot': built first if missing, errors raised) from
    now on; returns the previous backend's name ('' if none was chosen yet). For tests and
    benchmarks."""
    previous = _chosen[0].name if _chosen else ""
    if name not in ("aot", "jit"):
        raise ValueError(f"unknown kernel backend {name!r}: use aot or jit")
    _chosen[:] = [JitBackend() if name == "jit" else AotBackend(_library(build=True))]
    return previous


def mode() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise KernelBackendError(f"{BACKEND_ENV}={value!r}: use one of {', '.join(MODES)} (or unset it)")
    return value


def cache_root() -> Path:
    """NUMBA_CACHE_DIR (helix-mpi's launcher sets one per kernel version), else the default."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    from ..launcher import default_numba_cache

    return Path(default_numba_cache())


def _choose(build: bool):
    """The library if this machine has one (else built first, if `build`), else Numba's JIT."""
    if mode() == "jit":
        return JitBackend()
    try:
        return AotBackend(_library(build))
    except FileNotFoundError:  # not built, and not to be built here
        return JitBackend()
    except Exception as exc:  # noqa: BLE001 - a platform Numba's cfuncs do not cover: its JIT still runs
        import sys

        print(f"helix-mpi: warning: could not precompile the kernels ({type(exc).__name__}: {exc}); "
              f"using Numba's JIT (set {BACKEND_ENV}=jit to skip the attempt)", file=sys.stderr)
        return JitBackend()


def _library(build: bool):
    """This machine's library, loaded once per process (built first if it is missing or incomplete
    and `build`)."""
    from . import aot

    folder = aot.library_folder(cache_root())
    if folder not in _loaded:
        try:
            _loaded[folder] = aot.Library(folder)
        except OSError:  # not built yet, or half written by a builder that died
            if not build:
                raise FileNotFoundError(folder) from None
            _loaded[folder] = aot.Library(aot.build(folder))
    return _loaded[folder]
