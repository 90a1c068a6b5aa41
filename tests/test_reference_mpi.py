"""Sharded Helix decode equals the unsharded NumPy reference, under real mpiexec.

Tolerance: helix_mpi.runner.REFERENCE_TOLERANCE = 1e-4 relative to the largest output magnitude
(fp32 emulator vs float64 reference; see the comment there for why)."""
from __future__ import annotations

import json

import pytest
from mpi4py import MPI

from cases import CASES, check_case
from conftest import TESTS, run_mpi


def test_single_rank_on_comm_self():
    """The same test body as under mpiexec, on COMM_SELF in this process."""
    result = check_case(MPI.COMM_SELF, CASES[0])
    assert result["error"] < 1e-5


@pytest.mark.mpich
@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_every_layout_matches_reference(ranks):
    expected = {c.name for c in CASES if c.ranks == ranks}
    done = run_mpi(ranks, [str(TESTS / "cases.py")])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {r["case"] for r in report["results"]} == expected
    for result in report["results"]:
        assert result["error"] <= 1e-4, result
