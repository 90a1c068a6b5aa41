"""Summaries of trace files: `summarize_trace` (the run's figures streamed chunk by chunk with
bounded memory, plus its configuration, served figures, KV cache and memory), and
`compare_summaries` (two summaries side by side)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..trace import TraceError, json_attribute, marked_complete, open_trace
from .events import US, EventStats
from .tracemeta import SUMMARY_CHUNK, TraceMeta, iter_event_chunks, layout_from_dict, read_kv_tokens, read_meta


def summarize_trace(path: str | Path, by: str = "op", chunk: int = SUMMARY_CHUNK,
                    progress: Any = None, allow_interrupted: bool = False) -> dict[str, Any]:
    """summarize() of a whole trace file, streamed in chunks, plus its configuration, the KV
    cache per rank and the memory figures when the trace has them. With `allow_interrupted`, a
    trace whose run was interrupted (`complete = False`, as a killed run leaves it) is read too
    and the summary says `"complete": false`; a file without the attribute is still refused."""
    stats = EventStats(by)
    with open_trace(path, allow_incomplete=allow_interrupted) as file:
        if "complete" not in file.attrs:
            raise TraceError(f"{path}: root attribute 'complete' is missing: an incomplete or foreign file, not a helix_mpi trace")
        complete = marked_complete(file)
        meta = read_meta(file, path)
        for rows in iter_event_chunks(file, path, chunk, meta):
            stats.add(rows)
            if progress is not None:
                progress(len(rows))
        kv_tokens = read_kv_tokens(file, path)
        served = served_figures(file, path, meta) if "serving" in file else None
    if stats.events == 0:
        raise TraceError(f"{path}: trace has no events")
    summary = stats.summary(meta.shape)
    if served is not None:  # what `run --workload` printed, from the same records and the same code
        for key in ("ttl_s", "tokens_per_s_per_user", "batch"):  # a fixed batch's figures: not a served trace's
            summary.pop(key, None)
        summary.update(served)
        summary["serving"] = served
    summary["complete"] = complete
    summary.update(describe_run(meta))
    summary.update(kv_figures(meta, kv_tokens))
    if summary.get("by", {}).get("key") == "rank" and "kv" in summary:
        for row in summary["by"]["rows"]:
            row["kv_tokens"] = summary["kv"]["tokens_per_rank"][row["rank"]]
    if meta.memory is not None:
        summary["memory"] = memory_figures(meta.memory)
    if meta.replayed_from is not None:
        summary["replayed_from"] = meta.replayed_from
    return summary


def served_figures(file, path: str | Path, meta: TraceMeta) -> dict[str, Any]:
    """The serving figures of a served trace (`/serving/requests`, `/serving/steps`), computed by
    serving.serving_figures as `run --workload` computed them; scalars only (JSON)."""
    from ..serving import LONG_CONTEXT_TOKENS, serving_figures

    try:
        requests = {name: file["serving/requests"][name][...] for name in file["serving/requests"]}
        steps = {name: file["serving/steps"][name][...] for name in file["serving/steps"]}
    except (OSError, KeyError) as exc:
        raise TraceError(f"{path}: /serving is unreadable ({str(exc).splitlines()[0]})") from None
    stored = json_attribute(file, str(path), "serving", False) or {}
    old = "mean_context" not in steps  # traces written before it was recorded
    if old:
        steps["mean_context"] = np.zeros(len(steps["start_s"]))
    capacity = {k: stored[k] for k in ("hbm_weight_bytes_per_gpu", "kv_capacity_tokens_per_gpu", "kv_tokens_at_end")
                if k in stored}
    figures = serving_figures(requests, steps, meta.world_size, LONG_CONTEXT_TOKENS, capacity,
                              stored.get("ttl_slo_s"), stored.get("slo_held_steps", 0))
    if old:
        for key in ("kv_imbalance", "kv_imbalance_max", "long_context_steps"):
            figures[key] = stored.get(key, figures[key])
    scalars = {k: v for k, v in figures.items() if not isinstance(v, np.ndarray)}
    workload = json_attribute(file, str(path), "workload", False) or {}
    scalars["workload"] = workload.get("source", "?")
    return scalars


def describe_run(meta: TraceMeta) -> dict[str, Any]:
    """The configuration facts a reader wants next to the figures."""
    return {"trace": meta.path, "strategy": meta.strategy, "model": meta.model.get("name", "?"),
            "layout": {k: v for k, v in meta.layout.items() if k != "strategy"},
            "topology": meta.topology.get("name", "?"), "precision": meta.run["precision"],
            "kv_precision": meta.run.get("kv_precision", meta.run["precision"]), "comm": meta.run.get("comm"),
            "hopb": meta.run.get("hopb"), "a2a_chunk": meta.run.get("a2a_chunk"), "context": meta.run.get("context")}


def kv_bytes_per_token_per_layer(model: dict[str, Any], layout: dict[str, Any], precision: str) -> float:
    """Cache bytes one rank stores per token per layer at the modeled precision (the plan's count:
    K and V of its KV heads, duplicated ones included, or MLA's latent)."""
    from ..config import PRECISION_BYTES, ModelConfig
    from ..plan import kv_elements_per_token
    from ..sharding import rank_shard

    config = ModelConfig.from_dict(model)
    return kv_elements_per_token(config, rank_shard(config, layout_from_dict(layout), 0)) * PRECISION_BYTES[precision]


def kv_figures(meta: TraceMeta, kv_tokens: np.ndarray) -> dict[str, Any]:
    """KV tokens and bytes per rank at the last step (all layers of the full model)."""
    if kv_tokens.size == 0:
        return {}
    last = kv_tokens[-1].astype(float)
    try:
        per_token = kv_bytes_per_token_per_layer(meta.model, meta.layout,
                                                 meta.run.get("kv_precision", meta.run["precision"]))
    except (KeyError, TypeError):
        per_token = math.nan
    per_rank = last * per_token * meta.shape.model_layers
    mean = float(last.mean())
    imbalance = float(last.max() / mean) if mean > 0 else 1.0
    return {
        "kv": {"tokens_per_rank": kv_tokens[-1].tolist(), "bytes_per_rank": per_rank.tolist(),
               "bytes_per_token_per_layer": per_token, "max_bytes": float(per_rank.max()),
               "mean_bytes": float(per_rank.mean()), "imbalance_max_over_mean": imbalance},
        "kv_tokens_per_rank": kv_tokens[-1].tolist(),  # kept for scripts of earlier versions
        "kv_imbalance_max_over_mean": imbalance,
    }


def memory_figures(memory: dict[str, Any]) -> dict[str, Any]:
    """The trace's `memory` attribute plus the largest per-rank totals."""
    per_rank = memory.get("per_rank") or []
    totals = [r.get("weights_bytes", 0.0) + r.get("kv_bytes", 0.0) for r in per_rank]
    out = dict(memory)
    if per_rank:
        out.update(max_weights_bytes=max(r.get("weights_bytes", 0.0) for r in per_rank),
                   max_kv_bytes=max(r.get("kv_bytes", 0.0) for r in per_rank), max_total_bytes=max(totals))
    return out


COMPARED = (  # key, label, unit scale, unit
    ("ttl_s", "token-to-token latency", 1e3, "ms"),
    ("tokens_per_s_per_user", "tokens/s/user", 1.0, ""),
    ("tokens_per_s_per_gpu", "tokens/s/GPU", 1.0, ""),
    ("step_time_s", "step time (emulated layers)", US, "us"),
    ("compute_busy_s", "compute per rank per step", US, "us"),
    ("comm_busy_s", "comm per rank per step", US, "us"),
    ("exposed_comm_s", "exposed comm", US, "us"),
    ("hidden_comm_s", "hidden comm", US, "us"),
    ("kv_max_bytes", "KV cache, largest rank", 1e-6, "MB"),
    ("modeled_seconds", "modeled time", 1e3, "ms"),
    ("host_seconds", "host wall time", 1.0, "s"),
)
COMPARED_CONFIG = ("strategy", "model", "world_size", "layout", "topology", "precision", "hopb", "batch",
                   "context", "steps", "layers_emulated")


def compare_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Side by side: metrics of A and B, ratios B/A, per-op seconds per step, config differences."""
    for s in (a, b):
        s["kv_max_bytes"] = s.get("kv", {}).get("max_bytes", math.nan)
    metrics = {key: {"a": a.get(key), "b": b.get(key), "ratio": _ratio(a.get(key), b.get(key))}
               for key, *_ in COMPARED}
    ops_a = {r.get("name", r["op"]): r["seconds_per_step"] for r in a["ops"]}
    ops_b = {r.get("name", r["op"]): r["seconds_per_step"] for r in b["ops"]}
    ops = {op: {"a": ops_a.get(op), "b": ops_b.get(op), "ratio": _ratio(ops_a.get(op), ops_b.get(op))}
           for op in list(ops_a) + [o for o in ops_b if o not in ops_a]}
    config = {key: {"a": a.get(key), "b": b.get(key), "same": a.get(key) == b.get(key)} for key in COMPARED_CONFIG}
    return {"a": a["trace"], "b": b["trace"], "config": config, "metrics": metrics, "ops_seconds_per_step": ops,
            "ratios": {key: value["ratio"] for key, value in metrics.items()}}


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0 or math.isnan(a):
        return None
    return b / a
