"""Data-parallel attention + expert parallelism: every rank decodes whole requests of its own (all
heads, its requests' whole KV), dense layers and shared experts replicated, the routed experts
over all N ranks with an all-to-all dispatch and combine."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..axes import FFN_AXES, Axis
from ..config import ConfigError, Layout, Strategy
from .base import StrategyRules, check_flags, even_splits, moe_sizes, piece


class DataParallelExperts(StrategyRules):
    strategy = Strategy.DP_EP
    layout_choices = False  # one layout per GPU count
    data_parallel = True

    def world_size(self, layout):
        return layout.tpf * layout.ep

    def make_layout(self, model, world_size, kvp, tpa, ep):
        check_flags(kvp, tpa, ep)
        return Layout(kvp=1, tpa=1, tpf=1, ep=world_size, strategy=self.strategy)

    def validate(self, model, layout, n):
        if model.moe is None:
            raise ConfigError(f"dp-ep needs an MoE model (expert-parallel FFN); {model.name} is dense: use helix or tp")

    def sweep_layouts(self, model, n):
        return [Layout(1, 1, 1, n, self.strategy)]

    def head_pieces(self, model, layout, c):
        """Every rank runs whole requests: all heads, all KV heads."""
        Q, K = model.num_heads, model.num_kv_heads
        return range(Q), range(K), np.array([0, Q]), 0

    def ffn_pieces(self, model, layout, c):
        """Dense layers and shared experts replicated, experts over N."""
        n_experts, expert_width, shared_width = moe_sizes(model)
        return (range(model.ffn_size), piece(n_experts, layout.ep, c[Axis.EP]), range(expert_width),
                range(shared_width))

    def requests(self, batch, layout, rank):
        """An even split of the batch, first ranks taking the remainder."""
        bounds = even_splits(batch, layout.world_size)
        return range(int(bounds[rank]), int(bounds[rank + 1]))

    def kv_tokens(self, tokens, layout, rank, tokens_per_block):
        return tokens  # whole requests

    def kv_tokens_of_ranks(self, tokens, layout, tokens_per_block):
        return np.full(layout.world_size, tokens, dtype=np.int64)

    def vocab_axes(self, layout):
        return ()  # each rank its own requests' logits

    def layer_plan(self, model, layout, rank, shard, layer, kv_lengths, impl, hopb, a2a_chunk, layers):
        """Data-parallel attention over the rank's own requests (its output added to the residual
        at once), then expert parallelism over N: norm, router and shared expert, the dispatch
        all-to-all, the held experts on the tokens received, the combine all-to-all. Nothing is
        all-reduced: every norm is a kernel of its own."""
        from .. import plan as P
        from ..costmodel import Collective
        from ..gpuops import ACTIVATION_BYTES, Gemm

        batch, H, wdt = len(kv_lengths), model.hidden_size, P.gemm_dtype(model, impl)
        ops = P.attention_ops(model, layout, shard, kv_lengths, impl, hopb=False)
        ops[-1] = dataclasses.replace(ops[-1], residual=True)  # whole heads: nothing to sum over ranks
        if not model.is_moe_layer(layer):  # dense layers replicated: each rank its own tokens
            kernels = [P.norm_kernel(batch, H)] + P.swiglu_kernels(batch, H, len(shard.ffn_cols), wdt, impl)
            return ops + [P.compute_op(P.OpName.FFN, kernels, residual=True)]
        moe = model.moe
        kernels = [P.norm_kernel(batch, H), Gemm(batch, moe.n_routed_experts, H, "bf16")]
        # the routed experts run after the dispatch: this op launches no MoE kernel
        ops.append(P.compute_op(P.OpName.MOE, kernels + P.swiglu_kernels(batch, H, len(shard.shared_cols), wdt, impl)))
        send = batch * moe.experts_per_token * H * ACTIVATION_BYTES  # each token to the ranks of its k experts
        ops.append(P.collective_op(P.OpName.DISPATCH, Collective.ALL_TO_ALL, layout, FFN_AXES, send, (len(ops) - 1,)))
        # the expected load of the held experts, from every rank's tokens (batch is per rank)
        tokens = batch * layout.world_size
        hit, pairs = P.expected_moe_load(model, len(shard.experts), tokens)
        ops.append(P.compute_op(P.OpName.EXPERTS, [P.moe_experts_kernel(model, shard, layout, tokens, hit, pairs, impl)],
                                (len(ops) - 1,)))
        ops.append(P.collective_op(P.OpName.COMBINE, Collective.ALL_TO_ALL, layout, FFN_AXES, send, (len(ops) - 1,),
                                   residual=True))
        return ops


RULES = DataParallelExperts()
