#!/usr/bin/env python
"""Beyond one NVL72 rack: which layout to deploy on 1, 2, 4 and 8 racks.

For DeepSeek-R1 and Llama-3.1-405B at 1M and 4M tokens (FP4 weights, FP8 KV, TensorRT-LLM
collectives) on GB200 and GB300 NVL72 racks joined by their scale-out NICs (topologies/*.toml:
ConnectX-7 400 Gb/s per GB200 GPU, ConnectX-8 800 Gb/s per GB300 GPU), sweeps every layout up to
racks x 72 GPUs with placement-aware collectives (a group whose ranks sit in several racks pays the
network: costmodel.ranks_per_domain, mesh.group_stride) and reports, per TTL budget, the
configuration with the most tokens/s/GPU, its strategy and how many racks it spans, plus the
lowest TTL reachable. Prints a Markdown table (for docs/multi-rack.md with --write) and, last, one
JSON line with every figure and the sweep speed at 8 racks (configurations per second).

    python scripts/multi_rack.py [--racks 1,2,4,8] [--write]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from helix_mpi.config import load_model  # noqa: E402
from helix_mpi.sweep import SweepSpec, run_sweep  # noqa: E402
from helix_mpi.topology import load_topology  # noqa: E402

MODELS = ("deepseek-r1", "llama-3.1-405b")
CONTEXTS = (1_000_000, 4_000_000)
TOPOLOGIES = ("gb200-nvl72", "gb300-nvl72")
BUDGETS_S = (0.015, 0.03, 0.06)  # TTL budgets: interactive, typical, relaxed
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def describe(row) -> str:
    strategy = row["strategy"].decode()
    layout = {"helix": f"KVP={row['kvp']} TPA={row['tpa']} TPF={row['tpf']} EP={row['ep']}",
              "dp-ep": f"DP={row['gpus']} EP={row['ep']}", "pp-tp": f"PP={row['pp']} TP={row['tpa']}",
              "tp": f"TP={row['tpa']}", "kvp": f"KVP={row['kvp']} TPA={row['tpa']}"}.get(strategy, "")
    return f"{strategy} {row['gpus']} GPUs ({layout}) B={row['batch']}"


def study(model_name: str, context: int, topology: str, racks: int) -> dict:
    topo = load_topology(topology, racks)
    spec = SweepSpec(load_model(model_name), topo, context, "fp4", topo.cluster_gpus, 4096,
                     ("helix", "tp", "pp-tp", "kvp", "dp-ep"))
    result = run_sweep(spec)
    configs, out = result.configs, {"configs": result.timed, "seconds": result.seconds, "fitting": len(result.configs)}
    if len(configs) == 0:
        return {**out, "min_ttl_s": None, "budgets": {}}
    fastest = configs[np.argmin(configs["ttl_s"])]
    out.update(min_ttl_s=float(fastest["ttl_s"]), fastest=describe(fastest),
               fastest_racks=int(-(-fastest["gpus"] // 72)), budgets={})
    spanning = configs[configs["gpus"] > topo.fabric.domain_size]
    if len(spanning):
        best = spanning[np.argmin(spanning["ttl_s"])]
        out.update(min_ttl_spanning_s=float(best["ttl_s"]), fastest_spanning=describe(best))
    for budget in BUDGETS_S:
        meeting = configs[configs["ttl_s"] <= budget]
        if len(meeting):
            best = meeting[np.argmax(meeting["tokens_per_s_per_gpu"])]
            out["budgets"][f"{budget * 1e3:g}ms"] = {
                "config": describe(best), "tokens_per_s_per_gpu": float(best["tokens_per_s_per_gpu"]),
                "tokens_per_s_per_user": float(best["tokens_per_s_per_user"]), "racks_used": int(-(-best["gpus"] // 72))}
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | context | topology | racks | lowest TTL (layout) | lowest TTL spanning racks | " +
             " | ".join(f"best tok/s/GPU at TTL <= {b * 1e3:g} ms" for b in BUDGETS_S) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(BUDGETS_S)]
    for r in results:
        cells = []
        for budget in BUDGETS_S:
            hit = r["budgets"].get(f"{budget * 1e3:g}ms")
            cells.append(f"{hit['tokens_per_s_per_gpu']:.1f}: {hit['config']}" if hit else "none")
        lowest = f"{r['min_ttl_s'] * 1e3:.2f} ms: {r['fastest']}" if r["min_ttl_s"] else "nothing fits"
        spans = (f"{r['min_ttl_spanning_s'] * 1e3:.2f} ms: {r['fastest_spanning']}" if r.get("min_ttl_spanning_s")
                 else "-")
        lines.append(f"| {r['model']} | {r['context'] // 1_000_000}M | {r['topology']} | {r['racks']} | {lowest} | {spans} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--racks", default="1,2,4,8")
    parser.add_argument("--write", action="store_true", help="put the table between the markers of docs/multi-rack.md")
    args = parser.parse_args()
    racks_list = [int(r) for r in args.racks.split(",")]
    results, start = [], time.perf_counter()
    for topology in TOPOLOGIES:
        for model_name in MODELS:
            for context in CONTEXTS:
                for racks in racks_list:
                    r = study(model_name, context, topology, racks)
                    r.update(model=model_name, context=context, topology=topology, racks=racks)
                    results.append(r)
                    print(f"{model_name} {context:,} {topology} x{racks}: {r['configs']:,} configs in "
                          f"{r['seconds']:.1f} s", file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    eight = [r for r in results if r["racks"] == max(racks_list)]
    speed = sum(r["configs"] for r in eight) / sum(r["seconds"] for r in eight)
    if args.write:
        path = os.path.join(ROOT, "docs", "multi-rack.md")
        doc = open(path).read()
        head, rest = doc.split(BEGIN)
        _, tail = rest.split(END)
        stamp = (f"Generated by `scripts/multi_rack.py` ({time.perf_counter() - start:.0f} s here; sweep speed at "
                 f"{max(racks_list)} racks {speed:,.0f} configurations/s).\n\n")
        open(path + ".partial", "w").write(head + BEGIN + "\n" + stamp + text + "\n" + END + tail)
        os.replace(path + ".partial", path)
    print(json.dumps({"results": results, "configs_per_s_at_max_racks": speed,
                      "max_racks": max(racks_list), "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
