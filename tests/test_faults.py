"""Real faults under real `mpiexec`: a rank killed by SIGKILL, Ctrl-C, a disk that fills, two runs
racing for the same output. Each ends the job with one line and leaves a consistent `.partial`
trace (complete = False) or none, never a file that looks complete."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import run_cli
from helix_mpi.launcher import rank_environment
from helix_mpi.outputs import OutputError, OutputLock, lock_path
from helix_mpi.trace import partial_state

HELIX_MPI = str(Path(sys.executable).parent / "helix-mpi")
END_TIMEOUT_S = 30  # the bound for a job to end after a fault (a hang guard, not a timing)
START_TIMEOUT_S = 180


def _start(args: list[str], **popen) -> subprocess.Popen:
    """`helix-mpi ARGS` in its own session, as from a terminal (Ctrl-C goes to its process group)."""
    return subprocess.Popen([HELIX_MPI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=popen.pop("env", rank_environment()), start_new_session=True, **popen)


def _steps_on_disk(partial: Path) -> int:
    try:
        with h5py.File(partial, "r") as f:
            return int(f["kv_tokens"].shape[0])
    except (OSError, KeyError):
        return 0


def _wait_for_steps(process: subprocess.Popen, partial: Path, steps: int = 3) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while _steps_on_disk(partial) < steps:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run wrote no steps"
        time.sleep(0.3)


def _rank_pids(output: Path) -> dict[int, int]:
    """rank -> PID of the ranks of the run writing `output` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if str(output).encode() not in (entry / "cmdline").read_bytes():
                continue
            for item in (entry / "environ").read_bytes().split(b"\0"):
                if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                    found[int(item.split(b"=")[1])] = int(entry.name)
        except (OSError, ValueError):
            continue
    return found


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _assert_partial_or_none(output: Path) -> None:
    """What a stopped run leaves: a consistent .partial with complete = False, or nothing."""
    assert not output.exists()
    partial = Path(f"{output}.partial")
    assert not partial.exists() or partial_state(partial) == "partial"
    assert not lock_path(output).exists()


@pytest.mark.parametrize("victim", [0, 5])
def test_a_rank_killed_by_sigkill_ends_the_job_with_one_line(tmp_path, victim):
    output = tmp_path / "killed.h5"
    process = _start(["run", "-q", "-n", "8", "--steps", "100000", "-o", str(output)])
    _wait_for_steps(process, Path(f"{output}.partial"))
    ranks = _rank_pids(output)
    assert sorted(ranks) == list(range(8))
    os.kill(ranks[victim], signal.SIGKILL)
    _, stderr = process.communicate(timeout=END_TIMEOUT_S)
    assert process.returncode != 0
    lines = _lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"helix-mpi: rank {victim} was lost: killed by signal 9 (SIGKILL)"), lines[0]
    _assert_partial_or_none(output)
    if Path(f"{output}.partial").exists():
        assert "partial trace is kept" in lines[0]
    assert not _rank_pids(output)  # nothing left running


def test_ctrl_c_ends_with_one_line_and_exit_130(tmp_path):
    output = tmp_path / "interrupted.h5"
    process = _start(["run", "-q", "-n", "8", "--steps", "100000", "-o", str(output)])
    _wait_for_steps(process, Path(f"{output}.partial"))
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, stderr = process.communicate(timeout=END_TIMEOUT_S)
    assert process.returncode == 130
    assert _lines(stderr) == [f"helix-mpi: interrupted; the partial trace is kept as {output}.partial "
                              "(complete = False)"]
    _assert_partial_or_none(output)
    assert Path(f"{output}.partial").exists()
    assert not _rank_pids(output)


def test_ctrl_c_before_the_first_step_says_no_trace_was_written(tmp_path):
    output = tmp_path / "early.h5"
    process = _start(["run", "-q", "-n", "2", "--steps", "100000", "-o", str(output)])
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(_rank_pids(output)) < 2:  # the ranks exist, the trace does not yet
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=END_TIMEOUT_S)
    assert process.returncode == 130
    assert len(_lines(stderr)) == 1, stderr
    [line] = _lines(stderr)
    partial = Path(f"{output}.partial")
    assert line.startswith("helix-mpi: interrupted; ")
    assert ("partial trace is kept" in line) == partial.exists()  # the line says what is on disk
    _assert_partial_or_none(output)


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


# Above one append of buffered steps (runner._StepBuffer: at most 65,536 events of 180 B, 11.25 MiB
# before compression), so some steps reach the disk before it fills, however fast the steps run.
FULL_DISK_BYTES = 16 << 20


def test_a_full_disk_while_the_trace_is_written_gives_one_line_and_exit_2(tmp_path):
    """RLIMIT_FSIZE (`ulimit -f`) makes the trace write fail as a full disk does. Open MPI's shared
    memory transport sizes its segment with ftruncate, which the limit would refuse too, so the
    ranks talk over TCP here."""
    output = tmp_path / "full.h5"
    env = rank_environment({**os.environ, "OMPI_MCA_btl": "self,tcp"})
    process = _start(["run", "-q", "-n", "2", "--steps", "100000", "--layers", "4", "-o", str(output)], env=env,
                     preexec_fn=_file_size_limit(FULL_DISK_BYTES))
    _, stderr = process.communicate(timeout=START_TIMEOUT_S)
    assert process.returncode == 2
    [line] = _lines(stderr)
    assert line.startswith(f"helix-mpi: error: cannot write {output}: file too large (a file-size limit such "
                           "as `ulimit -f`): free space, or choose another -o/--output"), line
    _assert_partial_or_none(output)
    partial = Path(f"{output}.partial")
    assert ("partial trace is kept" in line) == partial.exists()
    assert _steps_on_disk(partial) > 0  # the disk filled while steps were being written


def test_a_full_disk_under_sweep_gives_one_line_and_exit_2(tmp_path):
    output = tmp_path / "sweep.h5"
    done = subprocess.run([HELIX_MPI, "sweep", "-q", "--model", "llama-3.1-70b", "--max-gpus", "16", "--context", "100000",
                           "-o", str(output)], capture_output=True, text=True, timeout=START_TIMEOUT_S,
                          preexec_fn=_file_size_limit(64 << 10))
    assert done.returncode == 2
    assert _lines(done.stderr)[-1].startswith(f"helix-mpi: error: cannot write {output}: file too large")
    assert [line for line in _lines(done.stderr) if line.startswith("helix-mpi:")] == _lines(done.stderr)[-1:]
    assert not output.exists() and not Path(f"{output}.partial").exists()


def test_an_unwritable_output_is_refused_before_any_rank_starts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli(["run", "-n", "8", "-o", str(blocker / "run.h5")], timeout=60)
    assert done.returncode == 2
    assert _lines(done.stderr) == [f"helix-mpi: error: cannot write {blocker / 'run.h5'}: a part of the path is a "
                                   "file, not a folder: choose another -o/--output"]


def test_two_runs_with_the_same_output_one_refuses_the_other_is_not_interleaved(tmp_path):
    output = tmp_path / "shared.h5"
    args = ["run", "-q", "-n", "2", "--steps", "100000", "-o", str(output)]
    first, second = _start(args), _start(args)
    deadline = time.monotonic() + START_TIMEOUT_S
    while first.poll() is None and second.poll() is None:  # the loser stops, the winner runs on
        assert time.monotonic() < deadline, "neither run refused"
        time.sleep(0.2)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    _, stderr = loser.communicate(timeout=END_TIMEOUT_S)
    assert loser.returncode == 2
    assert _lines(stderr) == [f"helix-mpi: error: {output}: another run is writing it now ({output}.lock is "
                              "locked): wait for it to finish or choose another -o/--output"]
    _wait_for_steps(winner, Path(f"{output}.partial"))
    winner.terminate()
    winner.communicate(timeout=END_TIMEOUT_S)
    assert partial_state(f"{output}.partial") == "partial"  # one writer's steps, in order
    with h5py.File(f"{output}.partial", "r") as f:
        assert set(f["events"]["rank"]) == {0, 1}


def test_the_output_lock_is_exclusive_and_survives_a_stale_lock_file(tmp_path):
    output = tmp_path / "x.h5"
    held = OutputLock(output)
    with pytest.raises(OutputError, match="another run is writing it now"):
        OutputLock(output)
    held.release()
    assert not lock_path(output).exists()
    lock_path(output).write_text("")  # left by a writer killed with SIGKILL: not locked
    OutputLock(output).release()
