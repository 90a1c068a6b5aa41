#!/usr/bin/env python
"""How well the calibrated time model predicts measurements it was not given.

1. End to end: every row of topologies/calibration/e2e_tpot.csv (measured TensorRT-LLM, SGLang and
   vLLM serving runs, AIConfigurator) predicted by `helix_mpi.fidelity.predict_tpot`; medians over
   the decode-dominated rows (ISL <= OSL / 4), over all rows and per backend.
2. Microbenchmarks, rows held out:
   - interpolation: every interior grid point of every table (GEMM m, n, k; attention and MLA
     tokens; MoE tokens; NCCL sizes) removed in turn and predicted from its neighbours;
   - extrapolation (the fitted physics): GEMMs fitted without the n or k >= 32768 shapes and
     predicting them; decode attention fitted on <= 16K tokens, predicting 32K-131K; MLA fitted
     on <= 4K tokens, predicting 8K and more; MoE fitted on EP <= 8, predicting EP 16-256; NCCL fitted on 2 and 4 GPUs, predicting 8 (the
     systems measured on 8);
   - the rack: public nccl-tests all-reduce on 72 GB200 GPUs (coreweave/nccl-tests PR 43: busbw
     586-839 GB/s at 0.5-8 GiB) predicted from the 2-4 GPU tables.
Prints a line per table and a final JSON line with every median. Nothing here feeds back into the
model: these are the numbers quoted in the README and docs/calibration.md.

    python scripts/fidelity.py [--systems gb200,b200,h200,h100,gb300] [--skip-e2e]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.calibration import SystemTables  # noqa: E402
from helix_mpi.calibration.fits import (ATTENTION_TERMS, GEMM_TERMS, MOE_DTYPE_BYTES, MOE_TERMS,  # noqa: E402
                                        _fit, _grid_points, expected_load, moe_features,
                                        attention_features, decode_work_units, gemm_features, gemm_work_units,
                                        mla_features)
from helix_mpi.calibration.grid import Grid  # noqa: E402
from helix_mpi.collective_algorithms import Direct, Ring, fit_terms  # noqa: E402
from helix_mpi.costmodel import collective_seconds  # noqa: E402
from helix_mpi.fidelity import error_stats, predict_tpot, read_e2e  # noqa: E402
from helix_mpi.topology import load_topology  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "topologies" / "calibration"
# coreweave/nccl-tests PR 43 (github.com/coreweave/nccl-tests/pull/43): all_reduce on a full GB200 NVL72
# rack (72 GPUs), out-of-place busbw in GB/s by size; time = size / algbw, algbw = busbw * 72 / (2 * 71)
RACK_ALL_REDUCE_BUSBW = {512 * 2**20: 586.06, 2**30: 681.17, 2 * 2**30: 757.78, 4 * 2**30: 839.16, 8 * 2**30: 834.57}


def median_abs(errors) -> float:
    errors = np.asarray(errors, dtype=float)
    errors = errors[np.isfinite(errors)]
    return float(np.median(np.abs(errors))) if len(errors) else float("nan")


# --- interpolation held out -------------------------------------------------------------------------------------
def held_out_errors(grid: Grid) -> list[float]:
    """Every interior point of every axis removed in turn and predicted from the rest."""
    errors = []
    values = np.exp(grid.log_seconds)
    axes = [np.exp(a) for a in grid.axes]
    for axis, points in enumerate(axes):
        for i in range(1, len(points) - 1):
            kept = Grid([np.delete(a, i) if d == axis else a for d, a in enumerate(axes)],
                        np.delete(values, i, axis=axis))
            index = [slice(None)] * len(axes)
            index[axis] = i
            truth = values[tuple(index)]
            mesh = np.meshgrid(*[points[i:i + 1] if d == axis else a for d, a in enumerate(axes)], indexing="ij")
            predicted, inside = kept(*[m.reshape(truth.shape) for m in mesh])
            ok = inside & np.isfinite(truth)
            errors.extend((predicted[ok] / truth[ok] - 1).tolist())
    return errors


def interpolation_report(tables: SystemTables) -> dict[str, float]:
    report = {}
    grids = {"gemm": list(tables.gemm.values()),
             "attention": [g for shapes in tables.attention.values() for g in shapes.values()],
             "mla": [g for shapes in tables.mla.values() for g in shapes.values()],
             "moe": [g for shapes in tables.moe.values() for g in shapes.values()],
             "nccl": [g for by_n in tables.nccl.values() for g in by_n.values()],
             "trtllm_allreduce": list(tables.trtllm_allreduce.values())}
    for name, items in grids.items():
        errors = [e for grid in items for e in held_out_errors(grid)]
        if errors:
            report[name] = median_abs(errors)
    return report


# --- extrapolation: physics fitted without the points predicted -------------------------------------------------
def gemm_extrapolation(tables: SystemTables) -> float:
    errors = []
    for dtype, grid in tables.gemm.items():
        (m, n, k), seconds = _grid_points(grid)
        train = (n < 32768) & (k < 32768)
        units = gemm_work_units(n, k, dtype)
        fit = _fit(GEMM_TERMS, lambda e: gemm_features(m[train], n[train], k[train], dtype, e), seconds[train],
                   parallel=units[train])
        test = ~train & (m <= 256)  # decode sizes
        predicted = fit(gemm_features(m[test], n[test], k[test], dtype, fit.efficiency(units[test])))
        errors.extend((predicted / seconds[test] - 1).tolist())
    return median_abs(errors)


def attention_extrapolation(tables: SystemTables) -> float:
    errors = []
    for dtype, shapes in tables.attention.items():
        rows = []
        for (q, kv, d), grid in shapes.items():
            (b, t), s = _grid_points(grid)
            rows.append(np.stack([b, np.full_like(b, q), np.full_like(b, kv), np.full_like(b, d), t, s], axis=1))
        b, q, kv, d, t, s = np.concatenate(rows).T
        train = t <= 16384
        fit = _fit(ATTENTION_TERMS, lambda e: attention_features(b[train], q[train], kv[train], d[train], t[train],
                                                                 dtype, e), s[train],
                   parallel=decode_work_units(b[train], kv[train], t[train]))
        test = t >= 32768
        predicted = fit(attention_features(b[test], q[test], kv[test], d[test], t[test], dtype,
                                           fit.efficiency(decode_work_units(b[test], kv[test], t[test]))))
        errors.extend((predicted / s[test] - 1).tolist())
    return median_abs(errors)


def mla_extrapolation(tables: SystemTables) -> float:
    errors = []
    for dtype, shapes in tables.mla.items():
        rows = []
        for heads, grid in shapes.items():
            (b, t), s = _grid_points(grid)
            rows.append(np.stack([b, np.full_like(b, heads), t, s], axis=1))
        b, h, t, s = np.concatenate(rows).T
        train, test = t <= 4096, t >= 8192
        fit = _fit(ATTENTION_TERMS, lambda e: mla_features(b[train], h[train], t[train], dtype, efficiency=e), s[train],
                   parallel=decode_work_units(b[train], 1.0, t[train]))
        predicted = fit(mla_features(b[test], h[test], t[test], dtype,
                                     efficiency=fit.efficiency(decode_work_units(b[test], 1.0, t[test]))))
        errors.extend((predicted / s[test] - 1).tolist())
    return median_abs(errors)


def moe_extrapolation(tables: SystemTables) -> float:
    """Fitted on expert parallelism <= 8, predicting EP 16-256 (the wide-EP layouts of a rack)."""
    rows = []
    for dtype, shapes in tables.moe.items():
        for (hidden, inter, topk, experts, tp, ep), grid in shapes.items():
            (tokens,), seconds = _grid_points(grid)
            hit, pairs = expected_load(tokens, topk, experts, experts / ep)
            full = lambda v: np.full_like(hit, v)  # noqa: E731
            rows.append(np.stack([hit, pairs, full(hidden), full(inter / tp), full(MOE_DTYPE_BYTES.get(dtype, 1.0)),
                                  tokens, full(topk), full(ep), seconds], axis=1))
    if not rows:
        return float("nan")
    hit, pairs, hidden, width, element_bytes, tokens, topk, ep, seconds = np.concatenate(rows).T
    train, test = ep <= 8, ep > 8
    if not test.any():
        return float("nan")
    features = lambda m: moe_features(hit[m], pairs[m], hidden[m], width[m], element_bytes[m], tokens[m], topk[m])  # noqa
    fit = _fit(MOE_TERMS, lambda e: features(train), seconds[train])
    return median_abs(fit(features(test)) / seconds[test] - 1)


def nccl_extrapolation(tables: SystemTables) -> dict[str, float]:
    """Fit on the smaller rank counts, predict the largest one (needs two rank counts to fit: one
    alone cannot separate the fixed cost from the per-step latency)."""
    report = {}
    for op, by_n in tables.nccl.items():
        ranks = sorted(by_n)
        if len(ranks) < 3:
            continue
        rows = {n: _grid_points(by_n[n]) for n in ranks}
        train_n, test_n = ranks[:-1], ranks[-1]
        sizes = np.concatenate([rows[n][0][0] for n in train_n])
        counts = np.concatenate([np.full(len(rows[n][1]), n, dtype=float) for n in train_n])
        seconds = np.concatenate([rows[n][1] for n in train_n])
        algorithm = "direct" if op == "all_to_all" else "ring"
        features, terms = fit_terms(op, algorithm, sizes, counts)
        fit = _fit(terms, lambda e: features, seconds)
        base, latency, per_byte = fit.coefficients
        model = (Direct if algorithm == "direct" else Ring)(base, latency, 1 / per_byte if per_byte else np.inf)
        (test_sizes,), test_seconds = rows[test_n]
        report[f"{op} {'+'.join(map(str, train_n))}->{test_n}"] = median_abs(
            model.seconds(op, test_sizes, test_n) / test_seconds - 1)
    return report


def rack_all_reduce(topology: str = "gb200-nvl72") -> dict[str, float]:
    topo = load_topology(topology)
    sizes = np.array(list(RACK_ALL_REDUCE_BUSBW), dtype=float)
    measured = sizes / (np.array(list(RACK_ALL_REDUCE_BUSBW.values())) * 1e9 * 72 / 142)
    predicted, _ = collective_seconds("all_reduce", sizes, 72, topo, "nccl")
    errors = predicted / measured - 1
    return {f"{int(s / 2**20)} MiB": float(e) for s, e in zip(sizes, errors)} | {"median_abs": median_abs(errors)}


# --- end to end -------------------------------------------------------------------------------------------------
def e2e_report() -> dict:
    rows = read_e2e(TABLES / "e2e_tpot.csv")
    topologies: dict = {}
    predictions = [predict_tpot(row, topologies) for row in rows]
    pick = lambda keep: [p.error for p in predictions if p.error is not None and keep(p.row)]  # noqa: E731
    report = {"decode_dominated": error_stats(pick(lambda r: r.decode_dominated)),
              "decode_dominated_trtllm": error_stats(pick(lambda r: r.decode_dominated and r.backend == "trtllm")),
              "all": error_stats(pick(lambda r: True))}
    for backend in sorted({r.backend for r in rows}):
        report[f"backend {backend}"] = error_stats(pick(lambda r, b=backend: r.backend == b))
    for model in sorted({r.model for r in rows}):
        report[f"trtllm {model.split('/')[-1]}"] = error_stats(pick(lambda r, m=model: r.model == m
                                                                      and r.backend == "trtllm"))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="gb200,b200,h200,h100,gb300")
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    out: dict = {}
    if not args.skip_e2e:
        out["e2e"] = e2e_report()
        print("end to end (measured TPOT, AIConfigurator e2e rows):")
        for name, stats in out["e2e"].items():
            if stats.get("rows"):
                print(f"  {name:<38} rows {stats['rows']:4d}  median |error| {stats['median_abs_error'] * 100:5.1f} %"
                      f"  median error {stats['median_error'] * 100:+6.1f} %")
    print("microbenchmarks, rows held out (median |error|):")
    for system in args.systems.split(","):
        tables = SystemTables(TABLES / system)
        interp = interpolation_report(tables)
        extrap = {"gemm (n or k >= 32768)": gemm_extrapolation(tables),
                  "attention (>= 32K tokens)": attention_extrapolation(tables),
                  "mla (>= 8K tokens)": mla_extrapolation(tables), "moe (EP > 8)": moe_extrapolation(tables),
                  **nccl_extrapolation(tables)}
        out[system] = {"interpolation": interp, "extrapolation": extrap}
        print(f"  {system}: interpolation " + ", ".join(f"{k} {v * 100:.1f} %" for k, v in interp.items()))
        print(f"  {' ' * len(system)}  extrapolation " + ", ".join(f"{k} {v * 100:.1f} %" for k, v in extrap.items()))
    out["rack_all_reduce_72"] = rack_all_reduce()
    print("72-GPU GB200 NVL72 all-reduce (public nccl-tests), error by size: " + ", ".join(
        f"{k} {v * 100:+.1f} %" for k, v in out["rack_all_reduce_72"].items() if k != "median_abs"))
    out["seconds"] = round(time.perf_counter() - start, 1)
    summary = {"e2e_decode_dominated_median": out.get("e2e", {}).get("decode_dominated", {}).get("median_abs_error"),
               "e2e_decode_dominated_trtllm_median": out.get("e2e", {}).get("decode_dominated_trtllm", {}).get(
                   "median_abs_error"),
               "e2e_all_median": out.get("e2e", {}).get("all", {}).get("median_abs_error"),
               "interpolation_median": median_abs([v for s in args.systems.split(",")
                                                   for v in out[s]["interpolation"].values()]),
               "extrapolation_median": median_abs([v for s in args.systems.split(",")
                                                   for v in out[s]["extrapolation"].values()]),
               "rack_all_reduce_72_median": out["rack_all_reduce_72"]["median_abs"], "seconds": out["seconds"]}
    print(json.dumps({"summary": summary, "detail": out}, default=float))


if __name__ == "__main__":
    main()
