"""The command line as users type it: bad input gets one line and exit 2, never a hang."""
from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from conftest import run_cli, run_mpi
from helix_mpi.cli import cli


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("helix-mpi: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["-n", "4", "--kvp", "3"], "--kvp 3 does not divide the 4 ranks"),
    (["-n", "4", "--kvp", "2", "--tpa", "1"], "= 2 ranks but the job has 4"),
    (["-n", "8", "--tpa", "8"], "TPA=8 must divide the 4 KV heads"),
    (["-n", "2", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["-n", "2", "--topology", "no-such-topology"], "no-such-topology"),
    (["-n", "2", "--layers", "99"], "exceeds the 4 layers"),
    (["-n", "0"], "-n/--np must be >= 1"),
])
def test_bad_run_input_is_refused_before_any_rank_starts(args, message, tmp_path):
    start = time.monotonic()
    done = run_cli(["run", *args, "-o", str(tmp_path / "t.h5")], timeout=60)
    assert done.returncode == 2
    assert message in _one_error_line(done.stderr)
    assert time.monotonic() - start < 30
    assert not (tmp_path / "t.h5").exists()


@pytest.mark.parametrize("ranks, args, message", [
    (4, ["--kvp", "3", "--tpa", "1"], "--kvp 3 does not divide the 4 ranks"),
    (2, ["-n", "4"], "-n 4 but mpiexec started 2 ranks"),
])
@pytest.mark.mpich
def test_bad_layout_under_user_mpiexec_stops_every_rank(ranks, args, message, tmp_path):
    start = time.monotonic()
    done = run_mpi(ranks, ["helix_mpi", "run", *args, "-o", str(tmp_path / "t.h5")], timeout=60, module=True)
    assert done.returncode != 0
    assert message in _one_error_line(done.stderr)
    assert time.monotonic() - start < 30


@pytest.mark.mpich
def test_default_run_prints_result_and_writes_trace(tmp_path):
    done = run_cli(["run", "-n", "2", "-o", str(tmp_path / "t.h5"), "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["reference_error"] <= summary["reference_tolerance"]
    assert summary["ttl_s"] > 0 and (tmp_path / "t.h5").exists()
    assert not (tmp_path / "t.h5.partial").exists()


def test_model_command_reports_keys_used_by_scripts():
    result = CliRunner().invoke(cli, ["model", "--model", "llama-3.1-405b", "--gpus", "64", "--context", "1000000",
                                      "--batch", "8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"ttl_s", "tokens_per_s_per_user", "tokens_per_s_per_gpu", "layout_choice"} <= set(data)
    assert data["layout"]["kvp"] >= 2 and data["layout"]["kvp"] * data["layout"]["tpa"] == 64  # chosen: Helix
    assert data["tokens_per_s_per_gpu"] == pytest.approx(8 / data["ttl_s"] / 64)
    explicit = CliRunner().invoke(cli, ["model", "--model", "llama-3.1-405b", "--gpus", "64", "--context", "1000000",
                                        "--batch", "8", "--kvp", "8", "--tpa", "8", "--json"])
    assert json.loads(explicit.output)["layout"] == {"kvp": 8, "tpa": 8, "tpf": 64, "ep": 1, "strategy": "helix"}


def test_model_command_refuses_bad_layout():
    result = CliRunner().invoke(cli, ["model", "--gpus", "8", "--kvp", "3"])
    assert result.exit_code == 2
    assert "does not divide the 8 ranks" in result.output


def test_collectives_table_json():
    result = CliRunner().invoke(cli, ["collectives", "--op", "all_reduce", "--ranks", "8", "--sizes", "8K,1M,1G",
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["bytes"] for r in rows] == [8192, 1 << 20, 1 << 30]
    assert all({"bytes", "time_s", "algbw", "busbw"} <= set(r) for r in rows)
    assert rows[-1]["busbw"] > rows[0]["busbw"]  # latency dominates small messages


@pytest.mark.mpich
def test_collectives_measure_under_mpiexec():
    done = run_mpi(4, ["helix_mpi", "collectives", "--op", "all_reduce", "--ranks", "4", "--sizes", "8K,1M",
                       "--measure", "--json"], module=True)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 and all(r["measured_s"] > 0 for r in rows)


def test_topologies_lists_all_five():
    result = CliRunner().invoke(cli, ["topologies"])
    assert result.exit_code == 0
    for name in ("gb200-nvl72", "gb300-nvl72", "dgx-h100", "dgx-h200", "dgx-b200"):
        assert name in result.output


@pytest.mark.parametrize("content, message", [
    (b"not an hdf5 file at all", "not an HDF5 file"),
    (None, "no such file"),
])
def test_summarize_refuses_non_traces(tmp_path, content, message):
    path = tmp_path / "bad.h5"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["summarize", str(path)])
    assert result.exit_code == 2
    assert message in result.output
