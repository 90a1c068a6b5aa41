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


def rank_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", RANK_PATTERN], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
