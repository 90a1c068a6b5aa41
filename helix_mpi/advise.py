"""`helix-mpi advise`: which layout to deploy, from the analytic sweep (sweep.run_sweep) and its
Pareto frontiers (pareto.frontier), or from serving simulations of a request trace.

Fixed context (the sweep's question):
- every configuration of every strategy on 1..gpus_max GPUs is timed and kept if it fits in HBM;
- a configuration *meets the target* when TTL <= ttl_max and tokens/s/GPU >= min_throughput
  (each when given);
- the objective ranks the configurations that meet it: `throughput` (most tokens/s/GPU; the
  default with --ttl-max), `ttl` (lowest TTL; the default otherwise) or `gpus` (fewest GPUs);
  ties go to the lower TTL, then fewer GPUs;
- `best` is the first of all, `best_baseline` the first of the non-Helix strategies (TP, PP x TP,
  KVP-only, DP + EP), `best_helix` Helix's; `helix_gain` = best Helix / best baseline under the
  objective (tokens/s/GPU ratio; for `ttl` the baseline's TTL over Helix's; for `gpus` the
  baseline's GPUs over Helix's), > 1 when Helix wins.

Context distribution (`p50:64K,p99:1M`, or a trace file's p50/p90/p99 of input + output tokens):
configurations are sized for the largest quantile (every request of the batch at that length:
memory and TTL are then upper bounds for a batch of mixed lengths), and the recommended
configurations are also timed at every quantile (`ttl_by_context`).

Request trace (`--workload FILE --ttl-slo S`): the fewest GPUs that serve the trace (serving.serve
semantics, analytic, full model, SLO-aware admission) with p99 TTL <= S and bounded queueing
(p99 admission wait <= queue_max). GPU counts are searched coarse to fine (1, 2, 4, ..., then
every count between the last failing and the first passing coarse count), and on each count only
the layouts the analytic sweep ranks best at the trace's median context (most tokens/s/GPU with
TTL <= S; `layouts_per_count` of them) are simulated; a simulation stops as soon as more than 1%
of the requests have waited longer than queue_max. The search assumes more GPUs never serve worse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import ConfigError, Implementation, Layout, ModelConfig, Strategy
from .pareto import CONFIG_FIELDS, GPU, config_dict, frontier
from .sweep import (BASELINES, DP_EP, HELIX, KVP, PP_TP, SERIES, TP, Candidate, SweepSpec, WhatIf, candidate_ttl,
                    run_sweep, shard_classes)
from .topology import Topology
from .units import parse_count

ADVISE_SERIES = (HELIX, TP, PP_TP, KVP, DP_EP)  # helix-no-hopb is an ablation, not a deployment
OBJECTIVES = ("throughput", "ttl", "gpus")
BEST_KEYS = ("strategy", "gpus", "kvp", "tpa", "tpf", "ep", "pp", "batch", "ttl_s", "tokens_per_s_per_user",
             "tokens_per_s_per_gpu")
SERVABLE = (HELIX, TP, KVP, DP_EP)  # serving has no pipeline stages
COARSE_GPUS = (1, 2, 4, 8, 16, 32, 64)
QUANTILES = (50, 90, 99)


class AdviseError(ValueError):
    """Bad advise input; one line."""


# --- the context ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContextSpec:
    """Request lengths to size for: one value, or named quantiles (the largest is the design point)."""

    points: tuple[tuple[str, int], ...]  # (label, tokens), ascending
    source: str

    @property
    def design(self) -> int:
        return self.points[-1][1]

    @property
    def is_distribution(self) -> bool:
        return len(self.points) > 1

    def describe(self) -> str:
        if not self.is_distribution:
            return f"{self.design:,} tokens"
        return ", ".join(f"{label} {tokens:,}" for label, tokens in self.points) + f" tokens ({self.source})"


def parse_context(text: str | int, context_scale: float = 1.0) -> ContextSpec:
    """'1M' | 'p50:64K,p99:1M' | a trace file (Mooncake .jsonl/.json, Azure .csv): its p50, p90
    and p99 of input + output tokens, after `context_scale`."""
    if isinstance(text, int):
        return ContextSpec((("", text),), str(text))
    raw = str(text).strip()
    path = Path(raw)
    if path.suffix.lower() in (".jsonl", ".json", ".csv") or path.is_file():
        from .workload import load_workload

        workload = load_workload(path, context_scale=context_scale)
        lengths = np.array([r.input_tokens + r.output_tokens for r in workload.requests])
        points = tuple((f"p{q}", int(np.percentile(lengths, q, method="higher"))) for q in QUANTILES)
        return ContextSpec(points, f"{workload.source}: {len(workload)} requests")
    if ":" in raw:
        points = []
        for part in raw.split(","):
            label, _, value = part.strip().partition(":")
            label = label.strip().lower()
            if not (label.startswith("p") and label[1:].replace(".", "", 1).isdigit() and 0 < float(label[1:]) <= 100):
                raise AdviseError(f"--context: {part.strip()!r} is not QUANTILE:TOKENS such as p99:1M")
            points.append((label, parse_count(value.strip(), "context")))
        points.sort(key=lambda p: float(p[0][1:]))
        if any(b[1] < a[1] for a, b in zip(points, points[1:])):
            raise AdviseError(f"--context {raw}: lengths must not decrease with the quantile")
        return ContextSpec(tuple(points), raw)
    value = parse_count(raw, "context")
    return ContextSpec((("", value),), raw)


# --- targets and ranking ---------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    ttl_max: float | None = None  # seconds
    min_throughput: float | None = None  # tokens/s/GPU
    objective: str | None = None  # None: throughput with ttl_max, else ttl

    def __post_init__(self) -> None:
        for name in ("ttl_max", "min_throughput"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise AdviseError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise AdviseError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")

    @property
    def goal(self) -> str:
        return self.objective or ("throughput" if self.ttl_max is not None else "ttl")

    def mask(self, rows: np.ndarray) -> np.ndarray:
        ok = np.ones(len(rows), dtype=bool)
        if self.ttl_max is not None:
            ok &= rows["ttl_s"] <= self.ttl_max
        if self.min_throughput is not None:
            ok &= rows[GPU] >= self.min_throughput
        return ok

    def order(self, rows: np.ndarray) -> np.ndarray:
        """Indices of rows, best first under the objective."""
        keys = {"throughput": (rows["gpus"], rows["ttl_s"], -rows[GPU]),
                "ttl": (rows["gpus"], -rows[GPU], rows["ttl_s"]),
                "gpus": (rows["ttl_s"], -rows[GPU], rows["gpus"])}[self.goal]
        return np.lexsort(keys)  # the last key is the primary one

    def describe(self) -> str:
        parts = []
        if self.ttl_max is not None:
            parts.append(f"TTL <= {self.ttl_max * 1e3:.4g} ms")
        if self.min_throughput is not None:
            parts.append(f"tokens/s/GPU >= {self.min_throughput:.4g}")
        goal = {"throughput": "most tokens/s/GPU", "ttl": "lowest TTL", "gpus": "fewest GPUs"}[self.goal]
        return f"{goal}" + (f" with {' and '.join(parts)}" if parts else " (no target given)")

    def gain(self, helix: dict[str, Any], baseline: dict[str, Any]) -> float:
        if self.goal == "throughput":
            return helix["tokens_per_s_per_gpu"] / baseline["tokens_per_s_per_gpu"]
        if self.goal == "ttl":
            return baseline["ttl_s"] / helix["ttl_s"]
        return baseline["gpus"] / helix["gpus"]


def row_dict(row: np.void) -> dict[str, Any]:
    """A sweep row as the keys `advise --json` promises (BEST_KEYS, in that order)."""
    return config_dict(row, BEST_KEYS)


def _layout_key(row: np.void) -> tuple:
    return tuple(int(row[k]) for k in ("gpus", "kvp", "tpa", "tpf", "ep", "pp")) + (row["strategy"],)


def _candidate(row: np.void) -> tuple[Candidate, int]:
    """(sweep candidate, batch per grid unit) of a row: per GPU under dp-ep, per micro-batch under pp-tp."""
    series = row["strategy"].decode()
    strategy = {HELIX: Strategy.HELIX, TP: Strategy.TP, PP_TP: Strategy.TP, KVP: Strategy.KVP,
                DP_EP: Strategy.DP_EP}.get(series, Strategy.HELIX)
    layout = Layout(int(row["kvp"]), int(row["tpa"]), int(row["tpf"]), int(row["ep"]), strategy)
    cand = Candidate(series, layout, int(row["pp"]))
    unit = layout.world_size if cand.per_gpu_batch else cand.pp
    return cand, int(row["batch"]) // unit


def ttl_at(spec: SweepSpec, row: np.void, context: int) -> float:
    """The row's configuration timed at another context (same closed forms as the sweep)."""
    import dataclasses

    cand, per_unit = _candidate(row)
    at = dataclasses.replace(spec, context=context)
    classes = shard_classes(spec.model, cand.layout, at.tokens, spec.tokens_per_block)
    return float(candidate_ttl(at, cand, classes, np.array([per_unit], dtype=np.int64))[0])


# --- the fixed-context advice --------------------------------------------------------------------
@dataclass
class Advice:
    spec: SweepSpec
    context: ContextSpec
    target: Target
    summary: dict[str, Any]  # the sweep's
    meeting: int  # configurations meeting the target
    best: np.void | None
    best_helix: np.void | None
    best_baseline: np.void | None
    per_strategy: dict[str, list[np.void]]  # top layouts per series, best first
    why_none: dict[str, str]  # series without a configuration meeting the target -> why
    frontier: np.ndarray  # Pareto frontier of every fitting configuration (all strategies)
    ttl_by_context: dict[str, dict[str, float]] = field(default_factory=dict)  # which -> label -> TTL

    def to_dict(self) -> dict[str, Any]:
        def best(row):
            return None if row is None else row_dict(row)

        gain = None
        if self.best_helix is not None and self.best_baseline is not None:
            gain = self.target.gain(row_dict(self.best_helix), row_dict(self.best_baseline))
        memory = {name: float(row["memory_bytes"]) for name, row in
                  (("best", self.best), ("best_baseline", self.best_baseline), ("best_helix", self.best_helix))
                  if row is not None}
        return {
            "best": best(self.best), "best_baseline": best(self.best_baseline), "helix_gain": gain,
            "best_helix": best(self.best_helix), "memory_bytes_per_gpu": memory,
            "objective": self.target.goal, "target": {"ttl_max_s": self.target.ttl_max,
                                                      "min_tokens_per_s_per_gpu": self.target.min_throughput},
            "model": self.spec.model.name, "topology": self.spec.machine_name, "precision": self.spec.precision,
            "kv_precision": self.spec.kv_precision, "context": self.spec.context,
            "context_points": dict(self.context.points) if self.context.is_distribution else None,
            "ttl_by_context": self.ttl_by_context or None, "gpus_max": self.spec.max_gpus,
            "configs_timed": self.summary["configs"], "configs_fitting": self.summary["fitting"],
            "configs_meeting_target": self.meeting,
            "strategies": {s: {"ranked": [row_dict(r) for r in rows], "why_none": self.why_none.get(s)}
                           for s, rows in self.per_strategy.items()},
            "frontier": [row_dict(r) for r in self.frontier],
        }


def advise(model: ModelConfig, topo: Topology, context: ContextSpec, target: Target, gpus_max: int = 72,
           impl: Implementation = Implementation(), strategies: tuple[str, ...] = ADVISE_SERIES, top: int = 3,
           max_batch: int = 4096, tokens_per_block: int = 16, a2a_chunk: int = 0,
           progress: Callable[[int], None] | None = None) -> Advice:
    """Sweep at the design context and answer (module docstring). `progress(k)`: k more layouts timed."""
    spec = SweepSpec(model, topo, context.design, impl.precision, gpus_max, max_batch, strategies, tokens_per_block,
                     WhatIf(a2a_chunk=a2a_chunk), impl.kv_precision, impl.comm, impl.cuda_graphs)
    result = run_sweep(spec, progress)
    rows = result.configs
    summary = result.summary()
    ok = rows[target.mask(rows)]
    ranked = ok[target.order(ok)]
    names = np.array([s.decode() for s in ranked["strategy"]]) if len(ranked) else np.array([], dtype=str)

    def first(which: tuple[str, ...]) -> np.void | None:
        hits = np.flatnonzero(np.isin(names, which))
        return ranked[hits[0]] if len(hits) else None

    per_strategy: dict[str, list[np.void]] = {}
    why: dict[str, str] = {}
    for series in strategies:
        chosen, seen = [], set()
        for i in np.flatnonzero(names == series):
            key = _layout_key(ranked[i])
            if key not in seen:
                seen.add(key)
                chosen.append(ranked[i])
            if len(chosen) >= top:
                break
        per_strategy[series] = chosen
        if not chosen:
            why[series] = summary["series"][series].get("why_none") or _why_missed(rows, series, target)
    advice = Advice(spec, context, target, summary, int(len(ok)), first(tuple(strategies)), first((HELIX,)),
                    first(tuple(s for s in strategies if s in BASELINES)), per_strategy, why, frontier(rows))
    if context.is_distribution:
        for name, row in (("best", advice.best), ("best_baseline", advice.best_baseline),
                          ("best_helix", advice.best_helix)):
            if row is not None:
                advice.ttl_by_context[name] = {label: ttl_at(spec, row, tokens) for label, tokens in context.points}
    return advice


def _why_missed(rows: np.ndarray, series: str, target: Target) -> str:
    """Why a series that fits has no configuration meeting the target."""
    mine = rows[rows["strategy"] == series.encode()]
    parts = []
    if target.ttl_max is not None:
        parts.append(f"its lowest TTL is {mine['ttl_s'].min() * 1e3:.4g} ms")
    if target.min_throughput is not None:
        fast = mine[mine["ttl_s"] <= target.ttl_max] if target.ttl_max is not None else mine
        best = fast[GPU].max() if len(fast) else mine[GPU].max()
        parts.append(f"its most tokens/s/GPU{' within the TTL' if target.ttl_max else ''} is {best:.4g}")
    return "misses the target: " + ", ".join(parts) if parts else "no configuration"


# --- text ---------------------------------------------------------------------------------------
def _layout_text(r: dict[str, Any]) -> str:
    text = f"KVP={r['kvp']} TPA={r['tpa']} TPF={r['tpf']} EP={r['ep']}"
    return text + (f" PP={r['pp']}" if r["pp"] > 1 else "")


def config_text(r: dict[str, Any], memory: float | None = None) -> str:
    text = (f"{r['strategy']} on {r['gpus']} GPUs ({_layout_text(r)}), batch {r['batch']}: TTL "
            f"{r['ttl_s'] * 1e3:.4g} ms, {r['tokens_per_s_per_user']:.4g} tokens/s/user, "
            f"{r['tokens_per_s_per_gpu']:.4g} tokens/s/GPU")
    return text + (f", {memory / 1e9:.1f} GB/GPU" if memory is not None else "")


def _table(rows: list[tuple[str, dict[str, Any], float]], first: str) -> list[str]:
    lines = [f"{first:>6s} {'strategy':8s} {'GPUs':>4s} {'KVP':>4s} {'TPA':>4s} {'TPF':>4s} {'EP':>4s} {'PP':>3s} "
             f"{'batch':>6s} {'TTL ms':>9s} {'tok/s/user':>10s} {'tok/s/GPU':>10s} {'GB/GPU':>7s}"]
    for mark, r, memory in rows:
        lines.append(f"{mark:>6s} {r['strategy']:8s} {r['gpus']:4d} {r['kvp']:4d} {r['tpa']:4d} {r['tpf']:4d} "
                     f"{r['ep']:4d} {r['pp']:3d} {r['batch']:6d} {r['ttl_s'] * 1e3:9.4g} "
                     f"{r['tokens_per_s_per_user']:10.4g} {r['tokens_per_s_per_gpu']:10.4g} {memory / 1e9:7.1f}")
    return lines


def advice_text(advice: Advice, frontier_rows: int = 20) -> str:
    data = advice.to_dict()
    best, base, helix = data["best"], data["best_baseline"], data["best_helix"]
    memory = data["memory_bytes_per_gpu"]
    target = advice.target
    if best is None:
        first = f"no configuration meets the target ({target.describe()}) on 1..{advice.spec.max_gpus} GPUs"
    else:
        first = "best: " + config_text(best, memory.get("best"))
        if best["strategy"] == HELIX and base is not None:
            first += f"; {_gain_text(data['helix_gain'], target.goal)} the best non-Helix, " + config_text(base)
        elif best["strategy"] != HELIX and helix is not None:
            first += f"; best Helix: {config_text(helix)} ({_gain_text(data['helix_gain'], target.goal)} this one)"
        elif base is None:
            first += "; no non-Helix configuration meets the target"
        else:
            first += "; no Helix configuration meets the target"
    lines = [first,
             f"{advice.spec.model.name} at {advice.context.describe()} on {advice.spec.machine_name}, "
             f"{advice.spec.precision} (KV {advice.spec.kv_precision}), 1..{advice.spec.max_gpus} GPUs; objective: "
             f"{target.describe()}",
             f"{advice.summary['configs']:,} configurations timed, {advice.summary['fitting']:,} fit in HBM, "
             f"{advice.meeting:,} meet the target"]
    if data["ttl_by_context"]:
        for name, ttls in data["ttl_by_context"].items():
            lines.append(f"{name} at each context: " + ", ".join(f"{label} {t * 1e3:.4g} ms" for label, t in ttls.items()))
    lines += ["", "best layouts per strategy (ranked by the objective):"]
    table: list[tuple[str, dict[str, Any], float]] = []
    order = sorted(advice.per_strategy, key=lambda s: _rank_of(advice, s))
    for series in order:
        rows = advice.per_strategy[series]
        for i, row in enumerate(rows):
            table.append((f"{_rank_of(advice, series) + 1}.{i + 1}" if i else f"{_rank_of(advice, series) + 1}",
                          row_dict(row), float(row["memory_bytes"])))
    lines += _table(table, "rank") if table else ["  (none)"]
    for series in order:
        if series in advice.why_none:
            lines.append(f"  {series}: none: {advice.why_none[series]}")
    fr = advice.frontier
    if len(fr):
        keep = np.linspace(0, len(fr) - 1, min(frontier_rows, len(fr))).round().astype(int)
        if advice.best is not None:  # the answer is on the frontier: always show it
            keep = np.append(keep, np.array([i for i, row in enumerate(fr) if _same(row, advice.best)], dtype=int))
        keep = np.unique(keep)
        meets = target.mask(fr)
        lines += ["", f"Pareto frontier, all strategies (tokens/s/GPU vs tokens/s/user; {len(keep)} of {len(fr)} "
                      "points, * meets the target, > the best; --csv FILE writes all):"]
        marks = [(">" if advice.best is not None and _same(fr[i], advice.best) else "") + ("*" if meets[i] else "")
                 for i in keep]
        lines += _table([(mark, row_dict(fr[i]), float(fr[i]["memory_bytes"])) for mark, i in zip(marks, keep)], "")
    return "\n".join(lines)


def _same(a: np.void, b: np.void) -> bool:
    return _layout_key(a) == _layout_key(b) and int(a["batch"]) == int(b["batch"])


def _rank_of(advice: Advice, series: str) -> int:
    """Strategies ranked by their best configuration; those without one last."""
    firsts = {s: rows[0] for s, rows in advice.per_strategy.items() if rows}
    if series not in firsts:
        return len(advice.per_strategy) + list(advice.per_strategy).index(series)
    stacked = np.array([firsts[s] for s in firsts], dtype=advice.frontier.dtype)
    order = list(np.array(list(firsts))[advice.target.order(stacked)])
    return order.index(series)


def _gain_text(gain: float | None, goal: str) -> str:
    if gain is None:
        return "compared with"
    what = {"throughput": "the tokens/s/GPU of", "ttl": "lower TTL than", "gpus": "fewer GPUs than"}[goal]
    return f"{gain:.2f}x {what}"


def frontier_csv(advice: Advice, path: str | Path) -> int:
    """The frontier as CSV (CONFIG_FIELDS + memory_bytes + meets_target); returns its rows."""
    import csv

    meets = advice.target.mask(advice.frontier)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CONFIG_FIELDS, "memory_bytes", "meets_target"])
        for row, ok in zip(advice.frontier, meets):
            values = [row[name].decode() if isinstance(row[name], bytes) else row[name].item() for name in CONFIG_FIELDS]
            writer.writerow([*values, float(row["memory_bytes"]), bool(ok)])
    return len(advice.frontier)


# --- the served-trace advice -----------------------------------------------------------------
@dataclass
class Trial:
    gpus: int
    series: str
    layout: Layout
    verdict: str  # "ok", or why not
    metrics: dict[str, Any] | None = None  # serving scalars when simulated to the end

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics or {}
        return {"gpus": self.gpus, "strategy": self.series, "layout": self.layout.to_dict(), "verdict": self.verdict,
                **{k: m.get(k) for k in ("ttl_p50", "ttl_p99", "admission_wait_p99_s", "queue_p99_s",
                                         "tokens_per_s_per_gpu", "max_batch")}}


@dataclass
class WorkloadAdvice:
    slo: float
    queue_max: float
    source: str
    best: Trial | None
    best_helix: Trial | None
    best_baseline: Trial | None
    trials: list[Trial]

    def best_dict(self, trial: Trial | None) -> dict[str, Any] | None:
        if trial is None:
            return None
        m, lay = trial.metrics, trial.layout
        return {"strategy": trial.series, "gpus": trial.gpus, "kvp": lay.kvp, "tpa": lay.tpa, "tpf": lay.tpf,
                "ep": lay.ep, "pp": 1, "batch": m["max_batch"], "ttl_s": m["ttl_p99"],
                "tokens_per_s_per_user": 1.0 / m["ttl_p50"], "tokens_per_s_per_gpu": m["tokens_per_s_per_gpu"]}

    def to_dict(self) -> dict[str, Any]:
        gain = None
        if self.best_helix is not None and self.best_baseline is not None:
            gain = self.best_baseline.gpus / self.best_helix.gpus
        return {"best": self.best_dict(self.best), "best_baseline": self.best_dict(self.best_baseline),
                "helix_gain": gain, "best_helix": self.best_dict(self.best_helix), "objective": "gpus",
                "ttl_slo_s": self.slo, "queue_max_s": self.queue_max, "workload": self.source,
                "serving": None if self.best is None else self.best.metrics,
                "tried": [t.to_dict() for t in self.trials]}


def _give_up(queue_max: float, allowed: int) -> Callable:
    """Stop a simulation once more than `allowed` requests have waited longer than queue_max."""
    def check(scheduler, now: float) -> bool:
        admitted = scheduler.admitted[:scheduler.head] - scheduler.arrival[:scheduler.head]
        late = int(np.sum(admitted > queue_max))
        waiting = scheduler.arrival[scheduler.head:]
        late += int(np.sum(now - waiting[waiting <= now] > queue_max))
        return late > allowed
    return check


def advise_workload(workload: Any, model: ModelConfig, topo: Topology, slo: float, gpus_max: int = 72,
                    impl: Implementation = Implementation(), strategies: tuple[str, ...] = SERVABLE,
                    queue_max: float = 5.0, layouts_per_count: int = 2, tokens_per_block: int = 16,
                    a2a_chunk: int = 0, kv_transfer: str = "scale_out", max_batch: int | None = None,
                    progress: Callable[[str], None] | None = None) -> WorkloadAdvice:
    """The fewest GPUs serving the trace within the SLO (module docstring)."""
    from .serving import ServingError, ServingSetup, scalar_metrics, simulate

    if not (math.isfinite(slo) and slo > 0):
        raise AdviseError(f"--ttl-slo must be > 0, got {slo}")
    if not queue_max > 0:
        raise AdviseError(f"--queue-max must be > 0, got {queue_max}")
    series_ok = tuple(s for s in strategies if s in SERVABLE)
    if not series_ok:
        raise AdviseError(f"--strategies: none of {', '.join(strategies)} can serve a trace ({', '.join(SERVABLE)})")
    lengths = np.array([r.input_tokens + r.output_tokens for r in workload.requests])
    median = int(np.median(lengths))
    spec = SweepSpec(model, topo, median, impl.precision, gpus_max, 1024, series_ok, tokens_per_block,
                     WhatIf(a2a_chunk=a2a_chunk), impl.kv_precision, impl.comm, impl.cuda_graphs)
    rows = run_sweep(spec).configs
    rows = rows[rows["ttl_s"] <= slo]
    allowed = len(workload) - math.ceil(0.99 * len(workload))
    trials: list[Trial] = []
    tried: dict[tuple, Trial] = {}

    def layouts_on(n: int, which: tuple[str, ...]) -> list[tuple[str, Layout]]:
        """The `layouts_per_count` layouts on n GPUs with the most tokens/s/GPU within the SLO."""
        mine = rows[(rows["gpus"] == n) & np.isin(rows["strategy"], [s.encode() for s in which])]
        best: dict[tuple, tuple[float, np.void]] = {}
        for row in mine:
            key = _layout_key(row)
            if key not in best or row[GPU] > best[key][0]:
                best[key] = (float(row[GPU]), row)
        ranked = sorted(best.values(), key=lambda item: -item[0])[:layouts_per_count]
        return [(row["strategy"].decode(), _candidate(row)[0].layout) for _, row in ranked]

    def trial(n: int, series: str, layout: Layout) -> Trial:
        key = (series, layout)
        if key in tried:
            return tried[key]
        if progress is not None:
            progress(f"simulating {series} on {n} GPUs ({_short(layout)}) with the SLO")
        hopb = True
        setup = ServingSetup(model, layout, topo, impl, hopb, tokens_per_block, max_batch, kv_transfer,
                             kv_capacity_tokens=None, ttl_slo=slo, a2a_chunk=a2a_chunk)
        try:
            scheduler = simulate(workload, setup, give_up=_give_up(queue_max, allowed))
        except ServingError as exc:
            result = Trial(n, series, layout, f"does not fit: {exc}")
        else:
            if not scheduler.done:
                result = Trial(n, series, layout, f"queue unbounded: more than 1% of requests waited > {queue_max:g} s")
            else:
                metrics = {k: v for k, v in scalar_metrics(scheduler.metrics()).items()
                           if k not in ("per_request", "series")}
                verdict = "ok"
                if metrics["ttl_p99"] > slo:
                    verdict = f"TTL p99 {metrics['ttl_p99'] * 1e3:.4g} ms > SLO"
                elif metrics["admission_wait_p99_s"] > queue_max:
                    verdict = f"admission wait p99 {metrics['admission_wait_p99_s']:.3g} s > {queue_max:g} s"
                result = Trial(n, series, layout, verdict, metrics)
        tried[key] = result
        trials.append(result)
        return result

    def passing(n: int, which: tuple[str, ...]) -> Trial | None:
        for series, layout in layouts_on(n, which):
            t = trial(n, series, layout)
            if t.ok:
                return t
        return None

    def search(which: tuple[str, ...], start: int = 1) -> Trial | None:
        coarse = sorted({n for n in (*COARSE_GPUS, gpus_max) if start <= n <= gpus_max})
        previous = start - 1
        for n in coarse:
            found = passing(n, which)
            if found is not None:
                for m in range(previous + 1, n):  # fine: the counts skipped since the last failing one
                    finer = passing(m, which)
                    if finer is not None:
                        return finer
                return found
            previous = n
        return None

    best = search(series_ok)
    best_helix = best_baseline = None
    if best is not None:
        if best.series == HELIX:
            best_helix = best
            baselines = tuple(s for s in series_ok if s in BASELINES)
            best_baseline = search(baselines, best.gpus) if baselines else None
        else:
            best_baseline = best
            best_helix = search((HELIX,), best.gpus) if HELIX in series_ok else None
    return WorkloadAdvice(slo, queue_max, workload.source, best, best_helix, best_baseline, trials)


def _short(layout: Layout) -> str:
    return f"KVP={layout.kvp} TPA={layout.tpa} TPF={layout.tpf} EP={layout.ep}"


def workload_advice_text(advice: WorkloadAdvice) -> str:
    data = advice.to_dict()
    slo = f"p99 TTL <= {advice.slo * 1e3:.4g} ms, admission wait p99 <= {advice.queue_max:g} s"
    if advice.best is None:
        lines = [f"no layout on the GPU counts tried serves {advice.source} with {slo}"]
    else:
        b, m = advice.best, advice.best.metrics
        lines = [f"fewest GPUs: {b.gpus} ({b.series} {_short(b.layout)}) serve it with {slo}: TTL p99 {m['ttl_p99'] * 1e3:.4g} ms, admission wait p99 "
                 f"{m['admission_wait_p99_s'] * 1e3:.4g} ms, {m['tokens_per_s_per_gpu']:.4g} tokens/s/GPU, "
                 f"batch max {m['max_batch']}"]
        other = advice.best_baseline if b.series == HELIX else advice.best_helix
        if other is not None:
            lines[0] += (f"; {'the best non-Helix' if b.series == HELIX else 'Helix'} needs {other.gpus} GPUs "
                         f"({other.series} {_short(other.layout)}): helix_gain {data['helix_gain']:.3g} "
                         "(non-Helix GPUs / Helix GPUs)")
        else:
            lines[0] += f"; no {'non-Helix' if b.series == HELIX else 'Helix'} layout passed on the counts tried"
    lines += [f"workload: {advice.source}", "", f"{'GPUs':>4s} {'strategy':8s} {'layout':28s} {'TTL p99 ms':>10s} "
                                              f"{'wait p99 s':>10s} {'tok/s/GPU':>9s}  verdict"]
    for t in advice.trials:
        m = t.metrics or {}
        ttl = f"{m['ttl_p99'] * 1e3:10.4g}" if m else f"{'-':>10s}"
        wait = f"{m['admission_wait_p99_s']:10.3g}" if m else f"{'-':>10s}"
        tput = f"{m['tokens_per_s_per_gpu']:9.4g}" if m else f"{'-':>9s}"
        layout = _short(t.layout)
        lines.append(f"{t.gpus:4d} {t.series:8s} {layout:28s} {ttl} {wait} {tput}  {t.verdict}")
    return "\n".join(lines)


def check_strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SERIES]
    if unknown or not names:
        raise ConfigError(f"unknown strategy {unknown[0] if unknown else '(none)'!r}: choose among "
                          f"{', '.join(ADVISE_SERIES)}")
    return names

