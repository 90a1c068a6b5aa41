"""Parallel strategies, one module each (helix, tp, kvp, dp_ep, pp); `Strategy` (config) stays the
vocabulary of the CLI and of configuration files, and `rules_for` maps it to the strategy's rules
(`base.StrategyRules`: layouts, validation, sweep enumeration, slices, per-layer plan)."""
from __future__ import annotations

from ..config import Layout, Strategy
from . import dp_ep, helix, kvp, pp, tp
from .base import StrategyRules

RULES: dict[Strategy, StrategyRules] = {rules.strategy: rules for rules in
                                        (helix.RULES, tp.RULES, kvp.RULES, dp_ep.RULES,
                                                          pp.RULES)}


def rules_of(strategy: Strategy | str) -> StrategyRules:
    return RULES[Strategy(strategy)]


def rules_for(layout: Layout) -> StrategyRules:
    return RULES[layout.strategy]


def check_stage_layers(layout: Layout, layers: int) -> None:
    """Refuse, in one line, fewer layers than pipeline stages (every stage runs at least one)."""
    from ..config import ConfigError

    if layers < layout.pp:
        raise ConfigError(f"--layers {layers} is fewer than the {layout.pp} pipeline stages (--pp): each stage runs "
                          f"at least one layer")


__all__ = ["RULES", "StrategyRules", "check_stage_layers", "rules_for", "rules_of"]
