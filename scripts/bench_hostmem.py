#!/usr/bin/env python
"""The host-memory guard's estimate (helix_mpi.hostmem) against the memory ranks really take.

Runs `helix-mpi run -n 8` of `tiny`: once short at 256 tokens (each rank's private runtime: Python,
NumPy, Numba, MPI and compiled kernels), then at 4M tokens with fp32 and bf16 storage; samples the
ranks' private memory (Private_Clean + Private_Dirty, Linux /proc, scripts/procmem.py) every 0.3 s
and compares its peak with the guard's estimate for the same run. Last line: JSON.

    python scripts/bench_hostmem.py [--context 4000000]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from helix_mpi.config import RunConfig, load_model, make_layout  # noqa: E402
from helix_mpi.hostmem import estimate_run  # noqa: E402
from procmem import private_mb, rank_pids  # noqa: E402

RANKS, LAYERS = 8, 2  # `run -n 8` of tiny emulates 2 of its 4 layers by default


def peak_private(args: list[str]) -> tuple[float, list[float]]:
    """(peak of the ranks' summed private MB, each rank's private MB at that moment) of one run."""
    out = ROOT / "hostmem-bench.h5"
    process = subprocess.Popen([str(Path(sys.executable).parent / "helix-mpi"), "run", "-n", str(RANKS), "-q",
                                "--no-check", "--force", "-o", str(out), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, ranks = 0.0, []
    while process.poll() is None:
        sizes = [private_mb(pid) for pid in rank_pids(process.pid)]
        if sum(sizes) > peak:
            peak, ranks = sum(sizes), sizes
        time.sleep(0.3)
    if process.returncode != 0:
        sys.exit(f"run {' '.join(args)} failed: {process.stderr.read().strip()}")
    out.unlink(missing_ok=True)
    return peak, ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=4_000_000)
    args = parser.parse_args()
    model = load_model("tiny")
    layout = make_layout(model, RANKS, None, None)
    _, runtime = peak_private(["--steps", "400", "--kvp", str(layout.kvp), "--tpa", str(layout.tpa)])
    print(f"runtime: {min(runtime):.0f}-{max(runtime):.0f} MB private per rank (tiny, 256 tokens, {RANKS} ranks)")
    results = {"runtime_private_mb": runtime}
    for storage in ("fp32", "bf16"):
        run = RunConfig(context=args.context, steps=2, layers=LAYERS, storage=storage)
        estimate = estimate_run(model, layout, run, with_reference=False).total / 1e6
        measured, _ = peak_private(["--context", str(args.context), "--steps", "2", "--storage", storage,
                                    "--kvp", str(layout.kvp), "--tpa", str(layout.tpa)])
        measured *= 1.048576  # MiB -> MB
        print(f"{storage}: estimated {estimate / 1e3:.1f} GB, measured peak private {measured / 1e3:.1f} GB "
              f"(ratio {estimate / measured:.2f})")
        results[storage] = {"estimated_mb": estimate, "measured_private_mb": measured}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
