"""Tensor parallelism: query heads over all N ranks (KV heads duplicated whole when N > K), the
FFN over the same N ranks, an all-reduce after attention and after the FFN."""
from __future__ import annotations

from ..config import ConfigError, Layout, Strategy
from .base import StrategyRules, check_flags


class TensorParallel(StrategyRules):
    strategy = Strategy.TP
    layout_choices = False  # one layout per GPU count

    def make_layout(self, model, world_size, kvp, tpa, ep):
        check_flags(kvp, tpa, ep)
        return Layout(kvp=1, tpa=world_size, tpf=world_size, ep=1, strategy=self.strategy)

    def validate(self, model, layout, n):
        K = model.num_kv_heads
        if model.num_heads % n:
            raise ConfigError(f"TP={n} must divide the {model.num_heads} query heads of {model.name}")
        if K % n and n % K:
            raise ConfigError(f"TP={n} must divide or be a multiple of the {K} KV heads (to duplicate them whole)")
        if model.ffn_size < n:
            raise ConfigError(f"FFN width {model.ffn_size} of {model.name} is smaller than TP={n}")

    def sweep_layouts(self, model, n):
        return [Layout(1, n, n, 1, self.strategy)]


RULES = TensorParallel()
