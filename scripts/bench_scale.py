#!/usr/bin/env python
"""Scale: one Llama-3.1-405B-shaped layer at a long context on many oversubscribed ranks.

Runs `helix-mpi run -n 72 --model llama-3.1-405b --layers 1 --kvp 9 --tpa 8 --context 131072 --storage bf16`
twice: first with an empty Numba cache (cold start), then again with the cache it filled (warm
start). For each: wall time, decode time (so start-up = wall - decode), time per step, and the
ranks' peak private memory (Private_Clean + Private_Dirty, Linux), in all and per rank, against
the rank's share of the data (its bf16 weights + KV). Last line: JSON.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procmem import private_mb, rank_pids  # noqa: E402


class MemorySampler(threading.Thread):
    """Peak total and per-rank private memory of the ranks, sampled every `period` seconds."""

    def __init__(self, period: float = 1.0):
        super().__init__(daemon=True)
        self.period, self.stop = period, threading.Event()
        self.peak_total, self.peak_rank = 0.0, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            memory = [private_mb(pid) for pid in rank_pids()]
            if memory:
                self.peak_total = max(self.peak_total, sum(memory))
                self.peak_rank = max(self.peak_rank, max(memory))
            self.stop.wait(self.period)


def one_start(args: argparse.Namespace, cache: Path, out: Path) -> dict:
    # the layout is pinned (KVP x TPA = 72 with TPA = 8, as measured before run chose the fastest
    # modeled layout by default, KVP=18 TPA=4 here, which holds twice the attention weights in all)
    command = [str(BIN / "helix-mpi"), "run", "-n", str(args.ranks), "--model", args.model, "--layers", "1",
               "--kvp", str(args.ranks // args.tpa), "--tpa", str(args.tpa),
               "--context", str(args.context), "--steps", str(args.steps), "--batch", "1", "--storage", "bf16",
               "--no-check", "--json", "-o", str(out)]
    env = dict(__import__("os").environ, NUMBA_CACHE_DIR=str(cache))
    sampler = MemorySampler()
    sampler.start()
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    if done.returncode != 0:
        raise SystemExit(f"run failed: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    decode = summary["host_seconds"]
    return {"wall_s": wall, "decode_s": decode, "startup_s": wall - decode, "step_s": decode / args.steps,
            "peak_private_total_mb": sampler.peak_total, "peak_private_rank_mb": sampler.peak_rank}


def compile_seconds(cache: Path) -> float:
    """One process compiling every kernel (fp32 and bf16) into an empty Numba cache."""
    code = ("import time; t = time.perf_counter(); from mpi4py import MPI; from helix_mpi.emulator import warm_up_kernels; "
            "warm_up_kernels(MPI.COMM_SELF, 'fp32'); warm_up_kernels(MPI.COMM_SELF, 'bf16'); "
            "print(time.perf_counter() - t)")
    env = dict(__import__("os").environ, NUMBA_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def data_share_mb(args: argparse.Namespace) -> float:
    """The largest rank's bf16 weights + KV of the emulated layer."""
    from helix_mpi.config import load_model, make_layout
    from helix_mpi.memory import rank_memory

    model = load_model(args.model)
    layout = make_layout(model, args.ranks, None, None)
    shares = [rank_memory(model, layout, r, 1, args.context + args.steps, "bf16") for r in range(args.ranks)]
    return max(s["weights_bytes"] + s["kv_bytes"] for s in shares) / model.num_layers / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=72)
    parser.add_argument("--model", default="llama-3.1-405b")
    parser.add_argument("--context", type=int, default=131072)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tpa", type=int, default=8, help="attention TP (KVP = ranks / TPA)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        compile_cold = compile_seconds(Path(tmp) / "solo")
        compile_warm = compile_seconds(Path(tmp) / "solo")
        cache = Path(tmp) / "numba"
        cold = one_start(args, cache, Path(tmp) / "cold.h5")
        warm = one_start(args, cache, Path(tmp) / "warm.h5")
    share = data_share_mb(args)
    for name, r in (("cold cache", cold), ("warm cache", warm)):
        print(f"{name}: start-up {r['startup_s']:.1f} s, {r['step_s']:.2f} s per step, peak private "
              f"{r['peak_private_total_mb'] / 1024:.1f} GB in all, {r['peak_private_rank_mb']:.0f} MB max per rank")
    print(f"largest rank's data share (bf16 weights + KV of the layer): {share:.0f} MB; "
          f"beyond it: {warm['peak_private_rank_mb'] - share:.0f} MB per rank")
    print(f"warm start is {cold['startup_s'] / warm['startup_s']:.2f}x faster than cold; one process importing "
          f"and compiling every kernel: {compile_cold:.1f} s cold, {compile_warm:.1f} s from the cache")
    print(json.dumps({"ranks": args.ranks, "context": args.context, "cold": cold, "warm": warm,
                      "data_share_mb": share, "startup_speedup": cold["startup_s"] / warm["startup_s"],
                      "solo_compile_cold_s": compile_cold, "solo_compile_warm_s": compile_warm}))


if __name__ == "__main__":
    main()
