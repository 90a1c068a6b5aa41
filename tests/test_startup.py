"""Start-up: the phases each rank reports, what ranks import, what they share, how they start."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import call_cli, run_cli, run_mpi
from helix_mpi import launcher, startup

RANK_PHASES = ["python", "mpi_init", "imports", "arrive", "layout", "mesh", "kernels", "data", "wait"]


def test_phases_are_the_times_between_marks():
    startup.reset()
    startup.mark("a")
    time.sleep(0.05)
    startup.mark("b")
    startup.mark("c", time.time() + 1.0)  # a wall time given: its CPU is unknown
    mine = startup.rank_phases()
    startup.reset()
    names = [name for name, _, _ in mine["phases"]]
    assert names == (["a", "b", "c"] if mine["process_start"] is not None else ["b", "c"])
    walls = {name: wall for name, wall, _ in mine["phases"]}
    cpus = {name: cpu for name, _, cpu in mine["phases"]}
    assert walls["b"] >= 0.05 and cpus["b"] < walls["b"] and cpus["c"] is None
    assert 0.9 < walls["c"] < 1.5


@pytest.mark.mpich
def test_run_json_reports_every_phase_of_every_rank(tmp_path):
    done = run_cli(["run", "-n", "2", "--steps", "2", "-q", "--json", "-o", str(tmp_path / "t.h5")])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)["startup"]
    assert report["ranks"] == 2 and report["clock"] == "launcher"
    assert [p["phase"] for p in report["phases"]] == RANK_PHASES
    assert 0 < report["time_to_first_step_s"] < report["first_step_done_s"]
    assert all(0 <= p["wall_median_s"] <= p["wall_max_s"] < report["time_to_first_step_s"] for p in report["phases"])
    assert all(p["cpu_sum_s"] is None or 0 <= p["cpu_max_s"] <= p["cpu_sum_s"] for p in report["phases"])
    assert report["cpu_s"] > 0


def test_ranks_import_neither_the_analysis_commands_nor_plotting():
    """What a rank of `run` imports: cli, then runner (cli.run imports it after MPI_Init)."""
    code = ("import sys, helix_mpi.cli, helix_mpi.runner; "
            "print(' '.join(sorted(m for m in sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    for module in ("helix_mpi.advise", "helix_mpi.advisecli", "helix_mpi.sweep", "helix_mpi.sweepcli",
                   "helix_mpi.tracecli", "helix_mpi.calibcli", "helix_mpi.pareto", "helix_mpi.analysis",
                   "helix_mpi.reference", "helix_mpi.plots", "matplotlib", "scipy"):
        assert module not in loaded, module


def test_commands_of_other_modules_are_found_on_first_lookup():
    from helix_mpi.cli import cli

    assert cli.commands["sweep"].name == "sweep"  # registered on demand
    assert {"advise", "summarize", "calibrate", "run", "model"} <= set(cli.list_commands(None))
    assert call_cli(["summarize", "--help"]).returncode == 0


def test_other_commands_run_with_the_garbage_collector_on():
    startup.pause_gc()
    try:
        assert not gc.isenabled()
        assert call_cli(["models", "--json"]).returncode == 0
        assert gc.isenabled()
    finally:
        startup.resume_gc()
        gc.enable()


SHARE = """
import pickle
from mpi4py import MPI
from helix_mpi.runner import _computed_properties, share_calibration
from helix_mpi.topology import load_topology

comm = MPI.COMM_WORLD
topo = load_topology("gb200-nvl72")
fits = topo.calibration.fits
share_calibration(comm, topo)
if comm.Get_rank() == 1:
    assert "gemm" in vars(fits) and "nccl" in vars(fits.collectives) and "gemm" in vars(topo.calibration.tables)
    received = pickle.dumps([_computed_properties(fits), _computed_properties(fits.collectives)])
    for holder in (fits, fits.collectives):  # fitted here, from scratch
        for name in list(vars(holder)):
            if name not in ("tables", "collectives"):
                del holder.__dict__[name]
    assert pickle.dumps([_computed_properties(fits), _computed_properties(fits.collectives)]) == received
    print("same")
"""


@pytest.mark.mpich
def test_rank_0_shares_the_calibration_fits_unchanged():
    done = run_mpi(2, ["-c", SHARE])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["same"]


def test_launcher_settings_for_a_fast_mpi_init():
    env = launcher.rank_environment({"PATH": "/usr/bin"}, launcher.OPEN_MPI)
    assert env["OMPI_MCA_btl"] == "^ofi"
    assert launcher.rank_environment({"OMPI_MCA_btl": "self,tcp"}, launcher.OPEN_MPI)["OMPI_MCA_btl"] == "self,tcp"
    assert "OMPI_MCA_btl" not in launcher.rank_environment({"PATH": "/usr/bin"}, launcher.MPICH)


def test_launcher_writes_the_package_bytecode_once():
    import importlib.util

    import helix_mpi.cli

    if not os.access(os.path.dirname(helix_mpi.cli.__file__), os.W_OK):
        pytest.skip("read-only install")
    assert launcher.compile_bytecode()
    assert os.path.exists(importlib.util.cache_from_source(helix_mpi.cli.__file__))


QUIET_BCAST = """
from mpi4py import MPI
from helix_mpi.collectives import quiet_bcast
for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
    rank, last = comm.Get_rank(), comm.Get_size() - 1
    for value in (None, "x" * 100000, {"a": [1, 2.5]}):
        assert quiet_bcast(comm, value if rank == 0 else "not sent") == value, rank
    assert quiet_bcast(comm, rank * 7 + 1, root=last) == last * 7 + 1
print("ok")
"""


@pytest.mark.mpich
def test_quiet_bcast_is_a_bcast():
    """The broadcast whose waiting ranks sleep (ranks wait in it while rank 0 fits the calibration
    and looks for the kernel library): same values as comm.bcast, any root, on COMM_SELF too."""
    done = run_mpi(3, ["-c", QUIET_BCAST])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok"] * 3
