"""Parallel strategies, one module each (helix, tp, kvp, dp_ep); `Strategy` (config) stays the
vocabulary of the CLI and of configuration files, and `rules_for` maps it to the strategy's rules
(`base.StrategyRules`: layouts, validation, sweep enumeration, slices, per-layer plan)."""
from __future__ import annotations

from ..config import Layout, Strategy
from . import dp_ep, helix, kvp, tp
from .base import StrategyRules

RULES: dict[Strategy, StrategyRules] = {rules.strategy: rules for rules in
                                        (helix.RULES, tp.RULES, kvp.RULES, dp_ep.RULES)}


def rules_of(strategy: Strategy | str) -> StrategyRules:
    return RULES[Strategy(strategy)]


def rules_for(layout: Layout) -> StrategyRules:
    return RULES[layout.strategy]


__all__ = ["RULES", "StrategyRules", "rules_for", "rules_of"]
