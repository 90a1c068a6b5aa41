"""What every strategy provides (one module each: helix, tp, kvp, dp_ep, pp).

A strategy owns its layouts (how --kvp/--tpa/--ep complete them, their validation with one-line
messages, and the layouts the sweep enumerates), which slice of every tensor each rank holds, and
its per-layer plan. Everything else (the emulator, the timing engine, memory, the sweep) asks the
strategy of a layout through `strategies.rules_for(layout)` and never tests which one it is.
"""
from __future__ import annotations

import numpy as np

from ..axes import ATTENTION_AXES, FFN_AXES, Axis
from ..config import ConfigError, Layout, ModelConfig, Strategy


def piece(total: int, parts: int, index: int) -> range:
    """Piece `index` of `total` items split as even_splits does (first pieces larger), in O(1)."""
    size, extra = divmod(total, parts)
    start = index * size + min(index, extra)
    return range(start, start + size + (index < extra))


def even_splits(total: int, parts: int) -> np.ndarray:
    """Boundaries [parts+1] of `total` items split as evenly as possible (first parts larger)."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_common_divisor_at_most(value: int, world_size: int) -> int:
    return max(d for d in range(1, value + 1) if value % d == 0 and world_size % d == 0)


def moe_sizes(model: ModelConfig) -> tuple[int, int, int]:
    """(routed experts, one expert's width, the shared experts' total width); zeros when dense."""
    moe = model.moe
    if moe is None:
        return 0, 0, 0
    return moe.n_routed_experts, moe.expert_ffn_size, moe.n_shared_experts * moe.expert_ffn_size


def check_flags(kvp: int | None, tpa: int | None, ep: int | None) -> None:
    for flag, value in (("--kvp", kvp), ("--tpa", tpa), ("--ep", ep)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")


class StrategyRules:
    """The rules of one strategy; subclasses override what differs from tensor-parallel attention
    over KVP x TPA with the FFN over TPF x EP."""

    strategy: Strategy
    data_parallel = False  # each rank decodes whole requests of its own (the batch is split over ranks)
    pipelined = False  # stages of consecutive layers (pp)
    layout_choices = True  # several layouts per GPU count (`run` and `model` choose the fastest)
    overlaps = False  # HOP-B: the all-to-all of one chunk overlaps the next chunk's attention

    # --- layouts ---------------------------------------------------------------------------------
    def world_size(self, layout: Layout) -> int:
        return layout.kvp * layout.tpa

    def make_layout(self, model: ModelConfig, world_size: int, kvp: int | None, tpa: int | None,
                    ep: int | None) -> Layout:
        raise NotImplementedError

    def validate(self, model: ModelConfig, layout: Layout, n: int) -> None:
        raise NotImplementedError

    def sweep_layouts(self, model: ModelConfig, n: int) -> list[Layout]:
        """The layouts the sweep tries on n GPUs (before validation)."""
        raise NotImplementedError

    def stage_layout(self, layout: Layout) -> Layout:
        """The layout of one pipeline stage's ranks: the layout itself without stages."""
        return layout

    # --- slices ------------------------------------------------------------------------------------
    def head_pieces(self, model: ModelConfig, layout: Layout, c: dict) -> tuple[range, range, np.ndarray, int]:
        """(query heads, KV heads, all-to-all splits of the query heads over KVP, KVP index) of the
        rank at mesh coordinates `c`: heads over TPA (KV heads duplicated when TPA > K)."""
        Q, K = model.num_heads, model.num_kv_heads
        q_heads = piece(Q, layout.tpa, c[Axis.TPA])
        if layout.tpa <= K:
            kv_heads = piece(K, layout.tpa, c[Axis.TPA])
        else:  # TP beyond K: this rank's heads share one KV head, duplicated N/K times
            first = q_heads.start // model.group_size
            kv_heads = range(first, first + 1)
        return q_heads, kv_heads, even_splits(len(q_heads), layout.kvp), c[Axis.KVP]

    def ffn_pieces(self, model: ModelConfig, layout: Layout, c: dict) -> tuple[range, range, range, range]:
        """(dense FFN columns, experts, expert columns, shared-expert columns): dense FFN and shared
        experts over all N = TPF x EP ranks; experts over EP, each expert's width over TPF."""
        n_experts, expert_width, shared_width = moe_sizes(model)
        n = layout.tpf * layout.ep
        flat = c[Axis.EP] * layout.tpf + c[Axis.TPF]
        return (piece(model.ffn_size, n, flat), piece(n_experts, layout.ep, c[Axis.EP]),
                piece(expert_width, layout.tpf, c[Axis.TPF]), piece(shared_width, n, flat))

    def requests(self, batch: int, layout: Layout, rank: int) -> range:
        """Requests of the batch that `rank` decodes (all of them unless data parallel)."""
        return range(batch)

    def kv_tokens(self, tokens: int, layout: Layout, rank: int, tokens_per_block: int) -> int:
        """KV tokens of one request of `tokens` tokens held by `rank` (the KVP round robin)."""
        from ..kvcache import tokens_held
        from ..mesh import coordinates

        return int(tokens_held(tokens, layout.kvp, tokens_per_block)[coordinates(layout, rank)[Axis.KVP]])

    def kv_tokens_of_ranks(self, tokens: int, layout: Layout, tokens_per_block: int) -> np.ndarray:
        """`kv_tokens` of every rank [N]."""
        from ..kvcache import tokens_held
        from ..mesh import coordinates

        per_kvp = tokens_held(tokens, layout.kvp, tokens_per_block)
        return np.array([per_kvp[coordinates(layout, r)[Axis.KVP]] for r in range(layout.world_size)])

    # --- groups ------------------------------------------------------------------------------------
    def ffn_axes(self, layout: Layout) -> tuple[Axis, ...]:
        """Ranks that sum their dense FFN shards."""
        return FFN_AXES

    def expert_tp_axes(self, layout: Layout) -> tuple[Axis, ...]:
        """Ranks that sum their shards of the same experts (an EP group's tensor parallelism)."""
        return (Axis.TPF,)

    def vocab_axes(self, layout: Layout) -> tuple[Axis, ...]:
        """Ranks sharing the LM head's vocabulary rows."""
        return ATTENTION_AXES

    # --- the plan -----------------------------------------------------------------------------------
    def rank_layers(self, layout: Layout, rank: int, layers: int) -> range:
        """The layers of a step of `layers` layers that `rank` runs (all of them unless pipelined)."""
        return range(layers)

    def runs_tail(self, layout: Layout, rank: int) -> bool:
        """Whether `rank` runs the step's tail (LM head, sampling)."""
        return True

    def layer_plan(self, model: ModelConfig, layout: Layout, rank: int, shard, layer: int, kv_lengths: np.ndarray,
                   impl, hopb: bool, a2a_chunk: int, layers: int) -> list:
        """Ops of one layer: attention (KVP exchange, combine), all-reduce, FFN or MoE (plan.py)."""
        from .. import plan

        hopb = hopb and self.overlaps
        ops = plan.attention_ops(model, layout, shard, kv_lengths, impl, hopb, a2a_chunk,
                                 plan.ends_reduced(model, layout, layer))
        ops.append(plan.attention_all_reduce(model, layout, len(kv_lengths), len(ops) - 1))
        return ops + plan.ffn_ops(model, layout, shard, layer, len(kv_lengths), impl, len(ops))
