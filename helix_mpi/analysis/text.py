"""Text for the terminal: the tables `summarize`, `compare`, `run` and `model` print."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .events import US
from .summary import COMPARED


def human_bytes(value: float) -> str:
    """Decimal units (as NVIDIA spec sheets): 1.5 GB = 1.5e9 bytes."""
    if value is None or math.isnan(value):
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def format_summary(summary: dict[str, Any], served: bool = False) -> str:
    """A readable table for the terminal (`served`: the per-op part only; the serving figures,
    serving.format_serving, replace the fixed-batch TTL of a served trace)."""
    if served:
        return "\n".join([_busy_text(summary, "per rank per decode step (mean)"), "", *_format_ops(summary)])
    head = [
        f"ranks {summary['world_size']}  batch {summary['batch']}  steps {summary['steps']}  "
        f"layers {summary['layers_emulated']} of {summary['model_layers']}",
        f"{step_time_label(summary['layers_emulated'], summary['model_layers']):35s} "
        f"{summary['step_time_s'] * US:10.2f} us",
        f"token-to-token latency (full model) {summary['ttl_s'] * 1e3:10.3f} ms",
        f"tokens/s/user {summary['tokens_per_s_per_user']:10.2f}    tokens/s/GPU {summary['tokens_per_s_per_gpu']:10.2f}",
        _busy_text(summary),
        "",
    ]
    return "\n".join(head + _format_ops(summary))


def _format_ops(summary: dict[str, Any]) -> list[str]:
    """The per-op table, the share of each timing source, the collectives and the host time."""
    lines = [
        f"{'op':22s} {'stream':7s} {'us/step':>10s} {'mean us':>9s} {'bytes':>12s} {'algbw GB/s':>11s} "
        f"{'busbw GB/s':>11s}  timed by",
    ]
    for row in summary["ops"]:
        bw = (f"{row['algbw_gbps']:11.3f} {row['busbw_gbps']:11.3f}" if "algbw_gbps" in row else f"{'':11s} {'':11s}")
        lines.append(f"{row.get('name', row['op']):22s} {row['stream']:7s} {row['seconds_per_step'] * US:10.2f} "
                     f"{row['mean_s'] * US:9.2f} {row['bytes']:12.0f} {bw}  {_sources_text(row.get('time_sources'))}")
    if summary.get("time_sources"):
        lines += ["", f"modeled op time timed by: {_sources_text(summary['time_sources'], full=True)} "
                      "(table: measured tables; fitted: physics fitted to them; spec: roofline of spec sheets)"]
    if summary.get("collectives"):
        lines += ["", _format_collectives(summary["collectives"])]
    if summary.get("host_seconds"):
        modeled = summary["modeled_seconds"]
        slowdown = f" (x{summary['host_seconds'] / modeled:,.0f})" if modeled > 0 else ""
        lines += ["", f"host wall time {summary['host_seconds']:.3f} s for {modeled * 1e3:.3f} ms "
                      f"of modeled time{slowdown}"]
    return lines


def step_time_label(layers: int, model_layers: int) -> str:
    """'modeled step time (all 61 layers)', or '(2 of 4 layers)' when a run emulates fewer."""
    which = f"all {model_layers} layers" if layers == model_layers else f"{layers} of {model_layers} layers"
    return f"modeled step time ({which})"


def _busy_text(summary: dict[str, Any], label: str = "per rank per step") -> str:
    text = (f"{label}: compute {summary['compute_busy_s'] * US:.2f} us, comm {summary['comm_busy_s'] * US:.2f}"
            f" us (exposed {summary['exposed_comm_s'] * US:.2f} us, hidden {summary['hidden_comm_s'] * US:.2f} us)")
    if summary.get("waiting_s", 0.0) > 1e-3 * summary["step_time_s"]:
        text += f", waiting for busier ranks {summary['waiting_s'] * US:.2f} us"
    return text


def exchange_label(strategy: str, kvp: int, hopb: bool | None, a2a_chunk: int | None) -> str:
    """How the KVP all-to-all is issued, only where there is one (Helix with KVP > 1): HOP-B means
    nothing for TP or DP+EP (no all-to-all of partials), nor for KVP-only (nothing overlapped)."""
    if strategy != "helix" or kvp <= 1:
        return ""
    if not a2a_chunk:
        return "one all-to-all per layer for the batch"
    per = "one all-to-all per request" if a2a_chunk == 1 else f"one all-to-all per {a2a_chunk} requests"
    return f"{per}, HOP-B {'on' if hopb else 'off'}" if hopb is not None else per


def _sources_text(shares: dict[str, float] | None, full: bool = False) -> str:
    """'table 61 %, fitted 39 %' (dominant first), or the one source when an op has one."""
    if not shares:
        return ""
    ordered = sorted(shares.items(), key=lambda item: -item[1])
    if len(ordered) == 1 and not full:
        return ordered[0][0]
    return ", ".join(f"{source} {share * 100:.{1 if full else 0}f} %" for source, share in ordered)


def _format_collectives(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'collective':12s} {'group':9s} {'ranks':>5s} {'count':>7s} {'size B':>10s} {'mean us':>9s} "
             f"{'B/rank/step':>11s} {'algbw GB/s':>11s} {'busbw GB/s':>11s}"]
    for r in rows:
        lines.append(f"{r['collective']:12s} {r['group']:9s} {r['group_size']:5d} {r['count']:7d} "
                     f"{r['mean_bytes']:10.0f} {r['mean_s'] * US:9.2f} {r['bytes_per_step']:11.0f} "
                     f"{r['algbw_gbps']:11.3f} {r['busbw_gbps']:11.3f}")
    return "\n".join(lines)


def format_trace_summary(summary: dict[str, Any]) -> str:
    """format_summary plus the run description, KV cache, memory and the --by table."""
    layout = " ".join(f"{k.upper()}={v}" for k, v in summary["layout"].items())
    exchange = exchange_label(summary["strategy"], int(summary["layout"].get("kvp", 1)), summary.get("hopb"),
                              summary.get("a2a_chunk"))
    where = (f"context {summary.get('context')}" if not summary.get("serving")
             else f"served trace {summary['serving'].get('workload', '?')}")
    lines = [f"{summary['trace']}: {summary['strategy']} on {summary['world_size']} ranks ({layout}), "
             f"model {summary['model']}, {summary['topology']}, {summary['precision']}"
             + (f", {exchange}" if exchange else "") + f", {where}, {summary['events']:,} events"]
    if summary.get("serving"):
        from ..serving import format_serving

        lines += [format_serving(summary["serving"]), format_summary(summary, served=True)]
    else:
        lines.append(format_summary(summary))
    if summary.get("kv"):
        lines += ["", _format_kv(summary["kv"], summary.get("kv_precision", summary["precision"]), summary["model_layers"])]
    if summary.get("memory"):
        lines.append(_format_memory(summary["memory"]))
    if summary.get("by"):
        lines += ["", format_by_table(summary["by"])]
    if summary.get("replayed_from"):
        lines.append(f"replayed from {json.dumps(summary['replayed_from'])}")
    return "\n".join(lines)


def _format_kv(kv: dict[str, Any], precision: str, layers: int) -> str:
    tokens = np.asarray(kv["tokens_per_rank"])
    return (f"KV cache per rank at the last step ({human_bytes(kv['bytes_per_token_per_layer'])} per token per layer "
            f"at {precision}, {layers} layers): tokens min {tokens.min()} max {tokens.max()}, bytes max "
            f"{human_bytes(kv['max_bytes'])} mean {human_bytes(kv['mean_bytes'])}, "
            f"imbalance max/mean {kv['imbalance_max_over_mean']:.3f}")


def _format_memory(memory: dict[str, Any]) -> str:
    fits = {True: "fits", False: "DOES NOT FIT"}.get(memory.get("fits"), "?")
    if "max_total_bytes" not in memory:
        return f"memory: HBM {human_bytes(memory.get('hbm_bytes', math.nan))} per GPU: {fits}"
    return (f"memory per rank (largest): weights {human_bytes(memory.get('max_weights_bytes', math.nan))} + KV "
            f"{human_bytes(memory.get('max_kv_bytes', math.nan))} = {human_bytes(memory['max_total_bytes'])} of "
            f"{human_bytes(memory.get('hbm_bytes', math.nan))} HBM: {fits}")


def format_by_table(by: dict[str, Any]) -> str:
    key = by["key"]
    extra = {"step": ("step_time_s", "step us"), "layer": ("layer_time_s", "layer us"),
             "rank": ("kv_tokens", "KV tokens")}[key]
    lines = [f"{key:>6s} {'events':>9s} {'compute us':>11s} {'comm us':>10s} {'comm B':>10s} {extra[1]:>10s}"
             f"   (per rank per step)"]
    for row in by["rows"]:
        value = row.get(extra[0], math.nan)
        shown = f"{value * US:10.2f}" if extra[0].endswith("_s") else f"{value:10d}"
        lines.append(f"{row[key]:6d} {row['events']:9d} {row['compute_s'] * US:11.2f} {row['comm_s'] * US:10.2f} "
                     f"{row['comm_bytes']:10.0f} {shown}")
    return "\n".join(lines)


def format_compare(result: dict[str, Any]) -> str:
    lines = [f"A: {result['a']}", f"B: {result['b']}", "",
             f"{'':28s} {'A':>22s} {'B':>22s}"]
    for key, value in result["config"].items():
        mark = "" if value["same"] else "   <- differs"
        lines.append(f"{key:28s} {_cell(value['a']):>22s} {_cell(value['b']):>22s}{mark}")
    lines += ["", f"{'metric':28s} {'A':>14s} {'B':>14s} {'B/A':>8s}"]
    for key, label, scale, unit in COMPARED:
        m = result["metrics"][key]
        lines.append(f"{(label + (f' ({unit})' if unit else '')):28s} {_number(m['a'], scale):>14s} "
                     f"{_number(m['b'], scale):>14s} {_ratio_text(m['ratio']):>8s}")
    lines += ["", f"{'op (us per rank per step)':28s} {'A':>14s} {'B':>14s} {'B/A':>8s}"]
    for op, m in result["ops_seconds_per_step"].items():
        lines.append(f"{op:28s} {_number(m['a'], US):>14s} {_number(m['b'], US):>14s} {_ratio_text(m['ratio']):>8s}")
    ttl = result["metrics"]["ttl_s"]["ratio"]
    if ttl:
        lines += ["", f"B's token-to-token latency is {ttl:.3f}x A's "
                      f"({'B faster' if ttl < 1 else 'A faster' if ttl > 1 else 'equal'})"]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "-" if value is None else str(value)


def _number(value: Any, scale: float) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return f"{value * scale:,.3f}" if abs(value * scale) < 1e6 else f"{value * scale:.4g}"


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"
