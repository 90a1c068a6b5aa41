"""Progress under -n and mpiexec: rank 0 says what it is doing (start-up phases, steps or requests
done, rate, ETA) on stderr, as lines through a pipe and as a live bar on a terminal."""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

from conftest import run_cli, run_mpi
from helix_mpi.progress import Progress

EVERY_UPDATE = {"HELIX_MPI_PROGRESS_S": "0"}


@pytest.mark.mpich
def test_run_n_8_through_a_pipe_prints_phases_and_progress_lines(tmp_path):
    done = run_cli(["run", "-n", "8", "--steps", "4", "-o", str(tmp_path / "t.h5")], env=EVERY_UPDATE)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    order = ["starting 8 ranks", "8 ranks up after", "readying the compiled kernels", "building weights",
             "decode steps 1/4 (25%)", "decode steps 4/4 (100%)"]
    positions = [next(i for i, line in enumerate(lines) if needle in line) for needle in order]
    assert positions == sorted(positions), lines
    assert all(line.startswith("helix-mpi: ") for line in lines), lines
    steps = [line for line in lines if "decode steps" in line]
    assert len(steps) == 4  # once per step, from rank 0 only
    assert re.search(r"decode steps 2/4 \(50%\), [0-9.]+/s, ETA [0-9.]+ s", steps[1]), steps
    assert "done in" in steps[-1]
    assert "\r" not in done.stderr  # lines, not a bar, through a pipe


def test_quiet_and_json_stdout_stay_clean(tmp_path):
    done = run_cli(["run", "-n", "2", "--steps", "2", "-q", "--json", "-o", str(tmp_path / "t.h5")], env=EVERY_UPDATE)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    json.loads(done.stdout)  # stdout is the JSON alone


@pytest.mark.mpich
def test_under_the_users_own_mpiexec_rank_0_reports(tmp_path):
    done = run_mpi(2, ["helix_mpi", "run", "--steps", "3", "-o", str(tmp_path / "t.h5")], module=True,
                   env={**os.environ, **EVERY_UPDATE})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("decode steps 3/3 (100%)") == 1 and "2 ranks up" in done.stderr


def test_served_requests_progress(tmp_path):
    sample = str(Path(__file__).resolve().parent.parent / "traces" / "azure_conv_sample.csv")
    done = run_cli(["run", "-n", "2", "--workload", sample, "--first", "6", "--context-scale", "0.05",
                    "--output-scale", "0.05", "--time-scale", "0.0001", "-o", str(tmp_path / "s.h5")],
                   env=EVERY_UPDATE)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "requests served 6/6 (100%)" in done.stderr and "serving 6 requests" in done.stderr


def test_progress_lines_and_bar():
    out = io.StringIO()
    with Progress(3, "things", stream=out, bar=False) as p:
        p.interval = 0.0
        for _ in range(3):
            p.advance()
    lines = out.getvalue().splitlines()
    assert lines[0] == "helix-mpi: things 1/3 (33%)" and lines[-1].startswith("helix-mpi: things 3/3 (100%)")
    assert len(lines) == 3 and "ETA" in lines[1]
    bar = io.StringIO()
    with Progress(3, "things", stream=bar, bar=True) as p:
        p.update(3)
    assert "things" in bar.getvalue() and "[#" in bar.getvalue() and "100%" in bar.getvalue()
    silent = io.StringIO()
    with Progress(3, "things", stream=silent, enabled=False) as p:
        p.advance()
        p.phase("nothing")
    assert silent.getvalue() == ""


def test_launcher_tells_ranks_about_the_terminal(monkeypatch):
    from helix_mpi import progress

    monkeypatch.setenv(progress.TTY_ENV, "1")
    assert progress.stderr_is_terminal(io.StringIO())
    monkeypatch.delenv(progress.TTY_ENV)
    assert not progress.stderr_is_terminal(io.StringIO())
