"""Private memory of running helix-mpi ranks (Linux /proc), shared by the long-run and scale scripts."""
import subprocess
from pathlib import Path

RANK_PATTERN = "mpi4py -m helix_mpi run"  # the command line of ranks started by `helix-mpi run -n N`


def private_mb(pid: int) -> float:
    """Private_Clean + Private_Dirty of a process in MB, 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("Private_Clean", "Private_Dirty"))) / 1024


def proportional_mb(pid: int) -> float:
    """Pss of a process in MB (its private pages, and each shared page divided among the processes
    mapping it: summed over the ranks, memory they share, such as a shared-memory window, counts
    once), 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")) / 1024


def rank_pids(parent: int | None = None) -> list[int]:
    """PIDs of helix-mpi ranks: all of this machine's, or only those descending from `parent`
    (the `helix-mpi run -n N` this script started: other users' runs are left out)."""
    out = subprocess.run(["pgrep", "-f", RANK_PATTERN], capture_output=True, text=True).stdout
    pids = sorted(int(p) for p in out.split() if _is_python(int(p)))  # not mpiexec, whose command line matches too
    return pids if parent is None else [pid for pid in pids if _descends_from(pid, parent)]


def _is_python(pid: int) -> bool:
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return b"python" in Path(program.decode(errors="replace")).name.encode()


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the command name in parentheses
        if pid == ancestor:
            return True
    return False
