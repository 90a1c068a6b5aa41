"""The layout `run` and `model` use when no layout flag (--kvp, --tpa, --ep) is given: the fastest
valid layout of the chosen strategy on the given GPUs, by the analytic model.

Candidates are the sweep's (`sweep.candidates` rules: Helix and KVP-only need KVP >= 2, since
KVP = 1 is plain TP; Helix on MoE models also tries every EP dividing N and the experts). Each is
timed with the sweep's closed forms (`sweep.candidate_ttl`, the same TTL as `helix-mpi model` to
1e-9) at the run's batch and context, and its busiest GPU's memory is checked against HBM; the
fastest layout that fits wins (the fastest of all when none fits, so the caller can say so).
TP and DP+EP have one layout per GPU count; a strategy with no candidate (Helix on 1 GPU) keeps
`config.make_layout`'s rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ConfigError, Implementation, Layout, ModelConfig, Strategy, make_layout
from .topology import Topology


@dataclass(frozen=True)
class LayoutChoice:
    layout: Layout
    reason: str  # one line: which and why
    ranked: tuple[tuple[Layout, float, bool], ...] = ()  # (layout, TTL s, fits) fastest first

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout.to_dict(), "reason": self.reason,
                "candidates": [{"layout": layout.to_dict(), "ttl_s": ttl, "fits": fits}
                               for layout, ttl, fits in self.ranked]}


def layout_text(layout: Layout) -> str:
    return f"KVP={layout.kvp} TPA={layout.tpa} TPF={layout.tpf} EP={layout.ep}"


def _series(strategy: Strategy, hopb: bool) -> str | None:
    """The sweep series whose layouts are chosen among: the strategies with more than one layout
    per GPU count (`StrategyRules.overlaps` tells Helix's two series apart)."""
    from .strategies import rules_of
    from .sweep import HELIX_NO_HOPB

    rules = rules_of(strategy)
    if not rules.layout_choices:
        return None
    return HELIX_NO_HOPB if rules.overlaps and not hopb else strategy.value


def choose_layout(model: ModelConfig, gpus: int, strategy: Strategy | str, batch: int, context: int,
                  topo: Topology, impl: Implementation = Implementation(), hopb: bool = True, a2a_chunk: int = 0,
                  tokens_per_block: int = 16, basis: str | None = None, pp: int | None = None) -> LayoutChoice:
    """The fastest valid layout (module docstring). `basis` describes the batch and context in the
    reason (default: 'batch B, context S')."""
    from .sweep import Candidate, SweepSpec, WhatIf, _layouts, _valid, candidate_ttl, peak_memory, shard_classes

    strategy = Strategy(strategy)
    series = _series(strategy, hopb)
    layouts = [] if series is None else [lay for lay, _ in _layouts(series, model, gpus) if _valid(model, lay)]
    if len(layouts) <= 1:
        layout = layouts[0] if layouts else make_layout(model, gpus, None, None, strategy, pp=pp)
        why = "the only valid layout" if layouts or series is None else (
            f"as no layout with KVP >= 2 is valid on {gpus} GPU{'s' if gpus > 1 else ''}: the fallback layout")
        return LayoutChoice(layout, f"{layout_text(layout)}, {why} of {strategy.value}")
    spec = SweepSpec(model, topo, context, impl.precision, max_gpus=gpus, max_batch=max(batch, 1),
                     strategies=(series,), tokens_per_block=tokens_per_block, whatif=WhatIf(a2a_chunk=a2a_chunk),
                     kv_precision=impl.kv_precision, comm=impl.comm, cuda_graphs=impl.cuda_graphs)
    batches = np.array([batch], dtype=np.int64)
    scored = []
    for layout in layouts:
        cand = Candidate(series, layout)
        classes = shard_classes(model, layout, spec.tokens, tokens_per_block)
        ttl = float(candidate_ttl(spec, cand, classes, batches)[0])
        memory = float(peak_memory(model, classes, batches.astype(np.float64), impl.precision, 1,
                                   impl.kv_precision)[0])
        scored.append((layout, ttl, memory <= topo.gpu.hbm_bytes))
    scored.sort(key=lambda item: (not item[2], item[1]))  # fitting first, then fastest
    best, ttl, fits = scored[0]
    basis = basis or f"batch {batch}, context {context:,}"
    reason = (f"{layout_text(best)}, the fastest of {len(scored)} valid {strategy.value} layouts on {gpus} GPUs by the "
              f"analytic model ({basis}): TTL {ttl * 1e3:.4g} ms")
    if len(scored) > 1:
        nxt, nxt_ttl, _ = scored[1]
        reason += f"; next {layout_text(nxt)} at {nxt_ttl * 1e3:.4g} ms"
    reason += "; none fits in HBM" if not fits else ""
    reason += " (--kvp/--tpa/--ep choose another)"
    return LayoutChoice(best, reason, tuple(scored))


def resolve_layout(model: ModelConfig, gpus: int, kvp: int | None, tpa: int | None, ep: int | None,
                   strategy: Strategy | str, batch: int, context: int, topo: Topology,
                   impl: Implementation = Implementation(), hopb: bool = True, a2a_chunk: int = 0,
                   tokens_per_block: int = 16, basis: str | None = None,
                   pp: int | None = None) -> tuple[Layout, LayoutChoice | None]:
    """(layout, the choice when no layout flag was given): the flags as `make_layout` completes
    them, else `choose_layout` (`pp`: the pipeline stages of --strategy pp)."""
    if kvp is not None or tpa is not None or ep is not None or pp is not None:
        return make_layout(model, gpus, kvp, tpa, strategy, ep, pp), None
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    choice = choose_layout(model, gpus, strategy, batch, context, topo, impl, hopb, a2a_chunk, tokens_per_block,
                           basis, pp)
    return choice.layout, choice
