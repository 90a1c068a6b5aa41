"""Pareto frontiers of a sweep (tokens/s/GPU against tokens/s/user) and Helix's key ratios.

A configuration is on its strategy's frontier when no configuration of that strategy is at least
as interactive (tokens/s/user = 1/TTL) with more throughput per GPU. The frontier as a function,
f(x) = max throughput per GPU over the configurations with interactivity >= x, is the best a
strategy can do under a TTL budget of 1/x; the best baseline is the same over the union of the
baselines' configurations (= the pointwise best of TP, PP x TP, KVP-only, DP-attention + EP).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .sweep import BASELINES, HELIX, HELIX_NO_HOPB, SERIES

USER, GPU = "tokens_per_s_per_user", "tokens_per_s_per_gpu"
CONFIG_FIELDS = ("strategy", "gpus", "kvp", "tpa", "tpf", "ep", "pp", "batch", "hopb", "ttl_s", USER, GPU)


def frontier(rows: np.ndarray) -> np.ndarray:
    """The Pareto-optimal rows (max tokens/s/GPU for each achievable tokens/s/user), sorted by
    tokens/s/user ascending (so tokens/s/GPU descending)."""
    if len(rows) == 0:
        return rows
    order = np.lexsort((-rows[GPU], -rows[USER]))  # most interactive first, best throughput first on ties
    ordered = rows[order]
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], ordered[GPU][:-1]]))
    return ordered[ordered[GPU] > best_before][::-1]


def frontiers(configs: np.ndarray) -> dict[str, np.ndarray]:
    """Frontier of every series present in the sweep."""
    names = [s for s in SERIES if np.any(configs["strategy"] == s.encode())]
    return {s: frontier(configs[configs["strategy"] == s.encode()]) for s in names}


def best_at(rows: np.ndarray, value: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max of `value` over rows with tokens/s/user >= x, index of that row) for each x [n];
    (-inf, -1) where no row reaches x."""
    order = np.argsort(rows[USER], kind="stable")
    user, vals = rows[USER][order], rows[value][order].astype(float)
    # suffix argmax: best row among positions >= i
    best = np.empty(len(vals), dtype=np.int64)
    running = -1
    for i in range(len(vals) - 1, -1, -1):
        if running < 0 or vals[i] > vals[running]:
            running = i
        best[i] = running
    pos = np.searchsorted(user, x, side="left")
    found = pos < len(user)
    index = np.where(found, order[best[np.minimum(pos, len(user) - 1)]], -1)
    return np.where(found, rows[value][np.maximum(index, 0)].astype(float), -np.inf), index


def config_dict(row: np.void, names: tuple[str, ...] = CONFIG_FIELDS) -> dict[str, Any]:
    """A sweep row's fields `names` as plain Python values (strategy as text)."""
    out = {}
    for name in names:
        value = row[name]
        out[name] = value.decode() if isinstance(value, bytes) else value.item()
    return out


def _gain_over_x(helix: np.ndarray, base: np.ndarray, value: str) -> dict[str, Any]:
    """max over x of helix's best `value` / the baseline's at interactivity >= x, for every x up to
    the smaller of the two maximum interactivities (the TTL range both reach)."""
    reach = min(helix[USER].max(), base[USER].max())
    xs = np.unique(np.concatenate([helix[USER], base[USER]]))
    xs = xs[xs <= reach]
    h, hi = best_at(helix, value, xs)
    b, bi = best_at(base, value, xs)
    ratio = h / b
    k = int(np.argmax(ratio))
    return {"gain": float(ratio[k]), "ttl_s": float(1.0 / xs[k]), "helix": config_dict(helix[hi[k]]),
            "baseline": config_dict(base[bi[k]])}


def compare(configs: np.ndarray, helix_series: str = HELIX, baselines: tuple[str, ...] = BASELINES) -> dict[str, Any]:
    """Helix (one series) against the best baseline: throughput per GPU and concurrent users
    (batch) at equal TTL, maximised over the TTL range both reach, and minimum TTL."""
    helix = configs[configs["strategy"] == helix_series.encode()]
    base = configs[np.isin(configs["strategy"], [b.encode() for b in baselines])]
    if len(helix) == 0 or len(base) == 0:
        missing = helix_series if len(helix) == 0 else "any baseline"
        raise ValueError(f"no configuration of {missing} fits in memory: nothing to compare")
    throughput = _gain_over_x(helix, base, GPU)
    batch = _gain_over_x(helix, base, "batch")
    hmin, bmin = helix[np.argmin(helix["ttl_s"])], base[np.argmin(base["ttl_s"])]
    return {"throughput_gain": throughput["gain"], "batch_gain": batch["gain"],
            "min_ttl_gain": float(bmin["ttl_s"] / hmin["ttl_s"]),
            "details": {"throughput": throughput, "batch": batch,
                        "min_ttl": {"helix": config_dict(hmin), "baseline": config_dict(bmin)}}}


def key_ratios(configs: np.ndarray) -> dict[str, Any]:
    """The JSON of `helix-mpi pareto`: throughput_gain, batch_gain, min_ttl_gain (Helix with HOP-B)
    and the same with a _no_hopb suffix, plus the configurations behind each."""
    keys = ("throughput_gain", "batch_gain", "min_ttl_gain")
    out: dict[str, Any] = {key + suffix: None for suffix in ("", "_no_hopb") for key in keys}
    for series, suffix in ((HELIX, ""), (HELIX_NO_HOPB, "_no_hopb")):
        if not np.any(configs["strategy"] == series.encode()):
            continue
        try:
            result = compare(configs, series)
        except ValueError as exc:  # e.g. no baseline fits: the frontiers are still worth a plot
            result = {"throughput_gain": None, "batch_gain": None, "min_ttl_gain": None, "details": {"note": str(exc)}}
        for key in keys:
            out[key + suffix] = result[key]
        out["details" + suffix] = result["details"]
    return out


# --- plot ----------------------------------------------------------------------------------------
STYLE = {HELIX: ("tab:red", "-", 2.2), HELIX_NO_HOPB: ("tab:red", "--", 1.4), "tp": ("tab:blue", "-", 1.4),
         "pp-tp": ("tab:purple", "-", 1.4), "kvp": ("tab:green", "-", 1.4), "dp-ep": ("tab:orange", "-", 1.4)}


def plot_frontiers(fronts: dict[str, np.ndarray], path: str | Path, title: str,
                   ratios: dict[str, Any] | None = None) -> None:
    """Frontier staircases of every series, log-log (Agg canvas, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for series, rows in fronts.items():
        if len(rows) == 0:
            continue
        color, style, width = STYLE.get(series, ("black", "-", 1.0))
        ax.step(rows[USER], rows[GPU], where="pre", color=color, linestyle=style, linewidth=width,
                label=f"{series} ({len(rows)} points)")
        ax.plot(rows[USER], rows[GPU], ".", color=color, markersize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactivity: tokens/s/user (= 1 / TTL)")
    ax.set_ylabel("throughput: tokens/s/GPU")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    if ratios:
        ax.text(0.99, 0.99, ratio_text(ratios), transform=ax.transAxes, ha="right", va="top", fontsize=8,
                family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
    fig.tight_layout()
    fig.savefig(str(path))


def ratio_text(ratios: dict[str, Any]) -> str:
    def fmt(key: str) -> str:
        value = ratios.get(key)
        return "   -  " if value is None else f"{value:6.2f}x"

    lines = ["Helix vs best baseline   HOP-B   no HOP-B"]
    for label, key in (("throughput/GPU @ TTL", "throughput_gain"), ("batch @ TTL", "batch_gain"),
                       ("min TTL (lower)", "min_ttl_gain")):
        lines.append(f"{label:22s} {fmt(key)}  {fmt(key + '_no_hopb')}")
    return "\n".join(lines)
