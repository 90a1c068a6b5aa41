"""Helix: attention over KVP x TPA (TPA <= K, the KV cache split along the sequence over KVP, an
all-to-all of the partial outputs per chunk of requests, HOP-B overlap), the FFN re-provisioned
over all N = TPF x EP ranks (docs/design.md section 1)."""
from __future__ import annotations

from ..config import ConfigError, Layout, ModelConfig, Strategy
from .base import StrategyRules, check_flags, divisors, largest_common_divisor_at_most


def default_ep(model: ModelConfig, world_size: int) -> int:
    """Helix MoE default: as many EP groups as divide both N and E (TPF = N / EP)."""
    return largest_common_divisor_at_most(model.moe.n_routed_experts, world_size) if model.moe else 1


def attention_grid(model: ModelConfig, world_size: int, kvp: int | None, tpa: int | None) -> tuple[int, int]:
    """(KVP, TPA) from the optional flags: TPA the largest divisor of K dividing N when neither is given."""
    if kvp is None and tpa is None:
        tpa = largest_common_divisor_at_most(model.num_kv_heads, world_size)
    for flag, value in (("--kvp", kvp), ("--tpa", tpa)):
        if value is not None and world_size % value:
            raise ConfigError(f"{flag} {value} does not divide the {world_size} ranks: choose KVP*TPA = {world_size}")
    kvp = kvp if kvp is not None else world_size // tpa
    tpa = tpa if tpa is not None else world_size // kvp
    return kvp, tpa


def validate_kv_heads_whole(model: ModelConfig, layout: Layout, n: int, ffn_over_all: bool) -> None:
    """Helix and KVP-only: TPA divides K (no duplicated KV heads), the FFN over all N ranks (Helix:
    `ffn_over_all`), FFN widths and query heads suffice."""
    if layout.tpa > model.num_kv_heads or model.num_kv_heads % layout.tpa:
        raise ConfigError(
            f"TPA={layout.tpa} must divide the {model.num_kv_heads} KV heads of {model.name} "
            f"({layout.strategy.value} never duplicates KV heads): lower --tpa and raise --kvp"
        )
    if ffn_over_all and layout.tpf * layout.ep != n:
        raise ConfigError(f"FFN layout TPF={layout.tpf} x EP={layout.ep} must use all {n} ranks")
    if layout.ep != 1 and model.moe is None:
        raise ConfigError(f"EP={layout.ep}: expert parallelism needs an MoE model; {model.name} is dense")
    if model.ffn_size < n or (model.moe and model.moe.expert_ffn_size < layout.tpf):
        raise ConfigError(f"FFN widths of {model.name} are too small for {n} ranks: use fewer ranks")
    heads_per_tpa = model.num_heads // layout.tpa
    if heads_per_tpa < layout.kvp:
        raise ConfigError(
            f"after the all-to-all each of the KVP={layout.kvp} ranks needs at least one of the "
            f"{heads_per_tpa} query heads of its TPA group: use at most {model.num_heads} ranks"
        )


class Helix(StrategyRules):
    strategy = Strategy.HELIX
    overlaps = True

    def make_layout(self, model, world_size, kvp, tpa, ep):
        check_flags(kvp, tpa, ep)
        kvp, tpa = attention_grid(model, world_size, kvp, tpa)
        ep = ep if ep is not None else default_ep(model, kvp * tpa)
        if (kvp * tpa) % ep:
            raise ConfigError(f"--ep {ep} does not divide the {kvp * tpa} ranks: choose TPF*EP = N")
        return Layout(kvp=kvp, tpa=tpa, tpf=(kvp * tpa) // ep, ep=ep, strategy=self.strategy)

    def validate(self, model, layout, n):
        validate_kv_heads_whole(model, layout, n, ffn_over_all=True)

    def sweep_layouts(self, model, n):
        """KVP >= 2 (KVP = 1 is TP); on MoE models every EP dividing N and the experts."""
        K, moe = model.num_kv_heads, model.moe
        eps = [e for e in divisors(n) if moe.n_routed_experts % e == 0] if moe else [1]
        return [Layout(n // tpa, tpa, n // ep, ep, self.strategy)
                for tpa in divisors(n) if K % tpa == 0 and n // tpa >= 2 for ep in eps]


RULES = Helix()
