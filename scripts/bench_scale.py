#!/usr/bin/env python
"""Scale: one Llama-3.1-405B-shaped layer at a long context on many oversubscribed ranks.

Runs `helix-mpi run -n 72 --model llama-3.1-405b --layers 1 --kvp 9 --tpa 8 --context 131072 --storage bf16`
twice: first with an empty cache (cold start: ranks 0 and 1 build the precompiled kernel library,
helix_mpi/kernels/aot.py, while the others wait), then again with the library they built (warm
start: no rank imports Numba). For each: time to the first decode step (from the launcher starting mpiexec to every rank
ready for step 0) and to its end, each start-up phase as the ranks report it (`startup` in the
run's JSON: wall seconds of the slowest and the median rank, CPU seconds of all ranks), the time
per step, and the ranks' peak private memory (Private_Clean + Private_Dirty, Linux) in all and per
rank, against the rank's share of the data (its bf16 weights + KV), and their peak Pss in all (the
weights they share in MPI shared memory counted once).

Then the floor on this machine: the same number of ranks under the same mpiexec and settings
doing nothing but `import numpy` and MPI_Init (what every rank must do); a start-up can not beat
it. Also that floor with `import numba` added (what every rank paid before the precompiled
library). Last line: JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procmem import private_mb, proportional_mb, rank_pids  # noqa: E402

FLOOR_CODE = "import numpy; from mpi4py import MPI"
FLOOR_WITH_NUMBA = "import numpy, numba; from mpi4py import MPI"
# start-up phases whose CPU is all work: no MPI waits, or (data: the shared weights' few collectives,
# helix_mpi/blockshare.py) waits that sleep instead of spinning
NO_COLLECTIVE = ("python", "imports", "data")


class MemorySampler(threading.Thread):
    """Peak total and per-rank private memory, and peak total Pss, of the ranks under `parent`,
    every `period` seconds."""

    def __init__(self, parent: int, period: float = 1.0):
        super().__init__(daemon=True)
        self.parent, self.period, self.stop = parent, period, threading.Event()
        self.peak_total, self.peak_rank, self.peak_pss = 0.0, 0.0, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            pids = rank_pids(self.parent)
            memory = [private_mb(pid) for pid in pids]
            if memory:
                self.peak_total = max(self.peak_total, sum(memory))
                self.peak_rank = max(self.peak_rank, max(memory))
                self.peak_pss = max(self.peak_pss, sum(proportional_mb(pid) for pid in pids))
            self.stop.wait(self.period)


def one_start(args: argparse.Namespace, cache: Path, out: Path) -> dict:
    # the layout is pinned (KVP x TPA = 72 with TPA = 8, as measured before run chose the fastest
    # modeled layout by default, KVP=18 TPA=4 here, which holds twice the attention weights in all)
    command = [str(BIN / "helix-mpi"), "run", "-n", str(args.ranks), "--model", args.model, "--layers", "1",
               "--kvp", str(args.ranks // args.tpa), "--tpa", str(args.tpa),
               "--context", str(args.context), "--steps", str(args.steps), "--batch", "1", "--storage", "bf16",
               "--no-check", "--json", "-q", "-o", str(out)]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    started, started_at = time.monotonic(), time.time()
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = MemorySampler(job.pid)
    sampler.start()
    stdout, stderr = job.communicate()
    wall = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    if job.returncode != 0:
        raise SystemExit(f"run failed: {stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    startup = summary["startup"]
    before_launch = startup["clock_start"] - started_at  # the parent checks the flags and the memory first
    return {"wall_s": wall, "before_launch_s": before_launch,
            "command_to_first_step_s": before_launch + startup["time_to_first_step_s"],
            "time_to_first_step_s": startup["time_to_first_step_s"],
            "first_step_done_s": startup["first_step_done_s"], "step_s": summary["host_seconds"] / args.steps,
            "startup_cpu_s": startup["cpu_s"], "phases": startup["phases"],
            "no_collective_cpu_s": sum(p["cpu_sum_s"] for p in startup["phases"] if p["phase"] in NO_COLLECTIVE),
            "peak_private_total_mb": sampler.peak_total, "peak_private_rank_mb": sampler.peak_rank,
            "peak_pss_total_mb": sampler.peak_pss}


def floor_seconds(ranks: int, code: str) -> float:
    """Wall seconds of `ranks` ranks running `python -c code` under helix-mpi's mpiexec and settings."""
    from helix_mpi.launcher import mpiexec_path, rank_environment

    started = time.monotonic()
    subprocess.run([mpiexec_path(), "-n", str(ranks), sys.executable, "-c", code], env=rank_environment(),
                   check=True, capture_output=True)
    return time.monotonic() - started


def compile_seconds(cache: Path) -> float:
    """One process readying every kernel (fp32 and bf16): building the precompiled library into an
    empty cache, or loading it."""
    code = ("import time; t = time.perf_counter(); from mpi4py import MPI; from helix_mpi.emulator import warm_up_kernels; "
            "warm_up_kernels(MPI.COMM_SELF, 'fp32'); warm_up_kernels(MPI.COMM_SELF, 'bf16'); "
            "print(time.perf_counter() - t)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def data_share_mb(args: argparse.Namespace) -> tuple[float, float]:
    """The largest rank's private data (the bf16 weights it generates for itself + its KV of the
    emulated layer) and the weights the machine's ranks share (hostmem's estimate: the same plan)."""
    from helix_mpi.config import RunConfig, load_model, make_layout
    from helix_mpi.hostmem import estimate_run

    model = load_model(args.model)
    layout = make_layout(model, args.ranks, args.ranks // args.tpa, args.tpa)
    run = RunConfig(batch=1, context=args.context, steps=args.steps, layers=1, storage="bf16")
    memory = estimate_run(model, layout, run, with_reference=False)
    return float((memory.weights + memory.kv).max()) / 1e6, memory.shared_weights / 1e6


def print_phases(name: str, r: dict, cores: int) -> None:
    print(f"{name}: first decode step {r['time_to_first_step_s']:.1f} s after mpiexec started "
          f"({r['command_to_first_step_s']:.1f} s after the command; done after {r['first_step_done_s']:.1f} s), "
          f"{r['step_s']:.2f} s per step; ranks' start-up CPU {r['startup_cpu_s']:.1f} s (spinning in MPI waits "
          f"included), {r['no_collective_cpu_s']:.1f} s in phases without collectives "
          f"({r['no_collective_cpu_s'] / cores:.1f} s on {cores} cores); peak private "
          f"{r['peak_private_total_mb'] / 1024:.1f} GB in all, {r['peak_private_rank_mb']:.0f} MB max per rank; "
          f"peak Pss {r['peak_pss_total_mb'] / 1024:.1f} GB in all (shared memory counted once)")
    print(f"  {'phase':10s} {'wall max s':>10s} {'median s':>9s} {'CPU all s':>10s} {'CPU max s':>10s}")
    for p in r["phases"]:
        cpu = "-" if p["cpu_sum_s"] is None else f"{p['cpu_sum_s']:.2f}"
        top = "-" if p["cpu_max_s"] is None else f"{p['cpu_max_s']:.3f}"
        print(f"  {p['phase']:10s} {p['wall_max_s']:10.2f} {p['wall_median_s']:9.2f} {cpu:>10s} {top:>10s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=72)
    parser.add_argument("--model", default="llama-3.1-405b")
    parser.add_argument("--context", type=int, default=131072)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tpa", type=int, default=8, help="attention TP (KVP = ranks / TPA)")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare-import floor")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        compile_cold = compile_seconds(Path(tmp) / "solo")
        compile_warm = compile_seconds(Path(tmp) / "solo")
        cache = Path(tmp) / "numba"
        cold = one_start(args, cache, Path(tmp) / "cold.h5")
        warm = one_start(args, cache, Path(tmp) / "warm.h5")
    floor = {} if args.no_floor else {"nothing_s": floor_seconds(args.ranks, "pass"),
                                      "imports_s": floor_seconds(args.ranks, FLOOR_CODE),
                                      "imports_with_numba_s": floor_seconds(args.ranks, FLOOR_WITH_NUMBA)}
    share, shared = data_share_mb(args)
    for name, r in (("cold cache", cold), ("warm cache", warm)):
        print_phases(name, r, cores)
    print(f"largest rank's private data (bf16 weights + KV of the layer): {share:.0f} MB; "
          f"beyond it: {warm['peak_private_rank_mb'] - share:.0f} MB per rank; weights shared by the ranks: "
          f"{shared:.0f} MB")
    print(f"one process readying every kernel: {compile_cold:.1f} s building the precompiled library, "
          f"{compile_warm:.1f} s loading it")
    if floor:
        print(f"floor, {args.ranks} ranks under the same mpiexec: `python -c pass` {floor['nothing_s']:.1f} s, "
              f"`{FLOOR_CODE}` {floor['imports_s']:.1f} s, `{FLOOR_WITH_NUMBA}` {floor['imports_with_numba_s']:.1f} s")
    print(json.dumps({"ranks": args.ranks, "context": args.context, "cores": cores, "cold": cold, "warm": warm,
                      "floor": floor, "data_share_mb": share, "shared_weights_mb": shared,
                      "solo_compile_cold_s": compile_cold, "solo_compile_warm_s": compile_warm}))


if __name__ == "__main__":
    main()
