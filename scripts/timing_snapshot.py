#!/usr/bin/env python
"""Record a fixed grid of modeled times, or compare it with an earlier record.

Used to show that a refactor leaves every modeled time unchanged (bit for bit) and, after a change
of the time model, to list what moved. The grid goes through the user-facing surfaces only, so it
survives refactors: `helix-mpi model --json` (analytic, every strategy, dense and MLA+MoE, HOP-B on
and off, exchange granularity 1 and 0), `helix-mpi model --workload` (analytic serving), `helix-mpi
sweep` (every strategy's fitting configurations) and `helix-mpi run -n 4 --json` (emulated on real
ranks).

    python scripts/timing_snapshot.py record before.json
    python scripts/timing_snapshot.py compare before.json [after.json]   # default: record now

Prints one line per differing figure (or none) and a final JSON line {"figures", "different"}.
Exit code 1 when something differs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "helix_mpi"]

# Layouts are explicit (the rule `config.make_layout` applies), so that `run` and `model` choosing the
# fastest layout by default (issue 14) leaves the recorded figures comparable.
MODEL_CASES = [  # (model, gpus, extra flags)
    ("llama-3.1-70b", 8, "--batch 4 --context 4096 --kvp 1 --tpa 8"),
    ("llama-3.1-70b", 8, "--batch 4 --context 4096 --strategy tp"),
    ("llama-3.1-405b", 64, "--batch 8 --context 1000000 --kvp 8 --tpa 8"),
    ("llama-3.1-405b", 64, "--batch 8 --context 1000000 --kvp 8 --tpa 8 --no-hopb"),
    ("llama-3.1-405b", 64, "--batch 8 --context 1000000 --kvp 8 --tpa 8 --a2a-chunk 0"),
    ("llama-3.1-405b", 16, "--batch 3 --context 200000 --strategy kvp --kvp 4 --tpa 4"),
    ("deepseek-r1", 64, "--batch 16 --context 1000000 --kvp 64 --tpa 1 --ep 64"),
    ("deepseek-r1", 64, "--batch 16 --context 1000000 --a2a-chunk 4 --kvp 64 --tpa 1 --ep 64"),
    ("deepseek-r1", 8, "--batch 8 --context 100000 --strategy tp"),
    ("deepseek-r1", 8, "--batch 24 --context 100000 --strategy dp-ep"),
    ("deepseek-r1", 72, "--batch 5 --context 50000 --ep 8"),
    ("tiny-gqa3", 8, "--batch 3 --context 300 --kvp 4 --tpa 2 --precision bf16"),
    ("tiny-mla-moe", 4, "--batch 5 --context 100 --topology dgx-h100 --steps 3 --kvp 4 --tpa 1 --ep 4"),
]
SERVING_CASES = [
    ("llama-3.1-70b", 8, "--kvp 2 --tpa 4 --first 40"),
    ("deepseek-r1", 16, "--first 40 --context-scale 8 --kvp 16 --tpa 1 --ep 16"),
    ("deepseek-r1", 8, "--first 30 --strategy dp-ep"),
]
SWEEP_CASES = [
    ("llama-3.1-70b", "--context 200000 --max-gpus 16 --max-batch 64"),
    ("deepseek-r1", "--context 1000000 --max-gpus 24 --max-batch 128"),
]
RUN_CASES = [
    ("tiny", 4, "--kvp 2 --tpa 2 --batch 3 --context 40 --steps 3"),
    ("tiny-mla-moe", 4, "--batch 4 --context 30 --steps 2 --layers 3 --kvp 4 --tpa 1 --ep 4"),
    ("tiny-mla-moe", 4, "--strategy dp-ep --batch 4 --context 30 --steps 2 --layers 3"),
]
WORKLOAD = str(ROOT / "traces" / "mooncake_conversation_sample.jsonl")


def _cli(args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(CLI + args, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"helix-mpi {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _figures(prefix: str, data: dict, keys: tuple[str, ...]) -> dict[str, float]:
    out = {f"{prefix} {k}": data[k] for k in keys if k in data}
    for row in data.get("ops", []):  # `name` tells apart one op over several groups (op[group])
        out[f"{prefix} op {row.get('name', row['op'])}"] = row["seconds_per_step"]
    return out


def record() -> dict[str, float]:
    figures: dict[str, float] = {}
    for model, gpus, flags in MODEL_CASES:
        data = json.loads(_cli(["model", "--model", model, "--gpus", str(gpus), "--json", "--allow-overflow",
                                *flags.split()]))
        figures.update(_figures(f"model {model} -g {gpus} {flags}:", data, ("ttl_s", "step_time_s")))
    for model, gpus, flags in SERVING_CASES:
        data = json.loads(_cli(["model", "--model", model, "--gpus", str(gpus), "--workload", WORKLOAD, "--json",
                                *flags.split()]))
        figures.update(_figures(f"serve {model} -g {gpus} {flags}:", data,
                                ("ttl_p50", "ttl_p99", "makespan_s", "tokens_per_s_per_gpu")))
    with tempfile.TemporaryDirectory() as tmp:
        for model, flags in SWEEP_CASES:
            out = Path(tmp) / "sweep.h5"
            _cli(["sweep", "--model", model, "-o", str(out), "--json", *flags.split()])
            import h5py

            with h5py.File(out) as f:
                rows = f["configs"][...]
            for row in rows:
                key = (f"sweep {model} {flags}: {row['strategy'].decode()} N={row['gpus']} kvp={row['kvp']} "
                       f"tpa={row['tpa']} ep={row['ep']} pp={row['pp']} b={row['batch']}")
                figures[key] = float(row["ttl_s"])
        for model, ranks, flags in RUN_CASES:
            out = Path(tmp) / "run.h5"
            data = json.loads(_cli(["run", "-n", str(ranks), "--model", model, "-o", str(out), "--json",
                                    *flags.split()]))
            figures.update(_figures(f"run {model} -n {ranks} {flags}:", data, ("ttl_s", "step_time_s")))
    return figures


def compare(before: dict[str, float], after: dict[str, float]) -> int:
    different = 0
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            different += 1
            ratio = f" ({new / old:.4f}x)" if isinstance(old, float) and isinstance(new, float) and old else ""
            print(f"{key}: {old!r} -> {new!r}{ratio}")
    print(json.dumps({"figures": len(set(before) | set(after)), "different": different}))
    return 1 if different else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("output")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before")
    cmp_.add_argument("after", nargs="?")
    args = parser.parse_args()
    if args.command == "record":
        figures = record()
        Path(args.output).write_text(json.dumps(figures, indent=0, sort_keys=True))
        print(json.dumps({"figures": len(figures), "output": args.output}))
        return
    before = json.loads(Path(args.before).read_text())
    after = json.loads(Path(args.after).read_text()) if args.after else record()
    sys.exit(compare(before, after))


if __name__ == "__main__":
    main()
