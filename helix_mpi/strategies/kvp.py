"""KVP-only (Medha-style): the KV cache over KVP x TPA as Helix, but the FFN stays tensor
parallel over the TPA ranks (replicated over KVP), and nothing is overlapped."""
from __future__ import annotations

from ..axes import Axis
from ..config import Layout, Strategy
from .base import StrategyRules, check_flags, divisors, moe_sizes, piece
from .helix import attention_grid, validate_kv_heads_whole


class KVPOnly(StrategyRules):
    strategy = Strategy.KVP

    def make_layout(self, model, world_size, kvp, tpa, ep):
        check_flags(kvp, tpa, ep)
        kvp, tpa = attention_grid(model, world_size, kvp, tpa)
        return Layout(kvp=kvp, tpa=tpa, tpf=tpa, ep=1, strategy=self.strategy)

    def validate(self, model, layout, n):
        validate_kv_heads_whole(model, layout, n, ffn_over_all=False)

    def sweep_layouts(self, model, n):
        K = model.num_kv_heads
        return [Layout(n // tpa, tpa, tpa, 1, self.strategy) for tpa in divisors(n) if K % tpa == 0 and n // tpa >= 2]

    def ffn_pieces(self, model, layout, c):
        """The FFN stays TP over the TPA ranks, replicated over KVP."""
        n_experts, expert_width, shared_width = moe_sizes(model)
        t, parts = c[Axis.TPA], layout.tpa
        return (piece(model.ffn_size, parts, t), range(n_experts), piece(expert_width, parts, t),
                piece(shared_width, parts, t))

    def ffn_axes(self, layout):
        return (Axis.TPA,)

    def expert_tp_axes(self, layout):
        return (Axis.TPA,)


RULES = KVPOnly()
