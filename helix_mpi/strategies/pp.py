"""Pipeline parallelism: `pp` stages of consecutive layers (`even_splits` of the layers a step
runs), stage s on the world ranks [s * n, (s + 1) * n). Inside a stage the n ranks are laid out as
the other flags say: tensor parallel (no --kvp), or Helix KVP x TPA with the FFN over TPF x EP
(--kvp >= 2). A stage receives the activations [B, H] from the same-position rank of the previous
stage before its first layer and sends them on after its last; the last stage runs the step's
tail. One token per step without micro-batching: TTL = the stages' layers + the stage sends."""
from __future__ import annotations

import dataclasses

from ..config import ConfigError, Layout, Strategy
from .base import StrategyRules, divisors, even_splits
from .helix import RULES as HELIX
from .tp import RULES as TP


class Pipeline(StrategyRules):
    strategy = Strategy.PP
    pipelined = True
    layout_choices = False  # the stage layout follows the flags

    # --- the stage's own layout ------------------------------------------------------------------
    @staticmethod
    def stage_rules(layout: Layout) -> StrategyRules:
        return HELIX if layout.kvp > 1 else TP

    def stage_layout(self, layout: Layout) -> Layout:
        """The layout of one stage's ranks (TP, or Helix when KVP >= 2)."""
        return dataclasses.replace(layout, strategy=self.stage_rules(layout).strategy, pp=1)

    def world_size(self, layout):
        return layout.pp * layout.kvp * layout.tpa

    def make_layout(self, model, world_size, kvp, tpa, ep, pp=None):
        if pp is None:
            raise ConfigError("--strategy pp needs --pp STAGES (stages of consecutive layers)")
        if pp < 1 or world_size % pp:
            raise ConfigError(f"--pp {pp} must be >= 1 and divide the {world_size} ranks: each stage gets N / PP ranks")
        inner = HELIX if kvp is not None and kvp > 1 else TP
        stage = inner.make_layout(model, world_size // pp, kvp, tpa, ep)
        return dataclasses.replace(stage, strategy=self.strategy, pp=pp)

    def validate(self, model, layout, n):
        if layout.pp < 1 or layout.pp > model.num_layers:
            raise ConfigError(f"--pp {layout.pp} must be in 1..{model.num_layers} (the layers of {model.name})")
        self.stage_rules(layout).validate(model, self.stage_layout(layout), n // layout.pp)

    def sweep_layouts(self, model, n):
        """Stages of a TP layout of t ranks, 2 <= n / t <= the model's layers."""
        return [Layout(1, t, t, 1, self.strategy, pp=n // t) for t in divisors(n) if 2 <= n // t <= model.num_layers]

    # --- slices: the stage layout's, at the rank's coordinates within its stage ------------------
    def head_pieces(self, model, layout, c):
        return self.stage_rules(layout).head_pieces(model, self.stage_layout(layout), c)

    def ffn_pieces(self, model, layout, c):
        return self.stage_rules(layout).ffn_pieces(model, self.stage_layout(layout), c)

    def ffn_axes(self, layout):
        return self.stage_rules(layout).ffn_axes(layout)

    def expert_tp_axes(self, layout):
        return self.stage_rules(layout).expert_tp_axes(layout)

    # --- stages ----------------------------------------------------------------------------------
    @staticmethod
    def stage_of(layout: Layout, rank: int) -> int:
        return rank // (layout.kvp * layout.tpa)

    @staticmethod
    def stage_layers(layout: Layout, stage: int, layers: int) -> range:
        """The consecutive layers of a step of `layers` layers that `stage` runs."""
        bounds = even_splits(layers, layout.pp)
        return range(int(bounds[stage]), int(bounds[stage + 1]))

    def rank_layers(self, layout, rank, layers):
        return self.stage_layers(layout, self.stage_of(layout, rank), layers)

    def runs_tail(self, layout, rank):
        return self.stage_of(layout, rank) == layout.pp - 1

    def layer_plan(self, model, layout, rank, shard, layer, kv_lengths, impl, hopb, a2a_chunk, layers):
        """The stage layout's plan of the layer on the ranks of the stage that runs it (nothing on
        the others), after a receive from the previous stage on its first layer and before a send
        to the next on its last."""
        from .. import plan as P

        stage, n = self.stage_of(layout, rank), layout.kvp * layout.tpa
        owned = self.stage_layers(layout, stage, layers)
        if layer not in owned:
            return []
        ops = self.stage_rules(layout).layer_plan(model, layout, rank, shard, layer, kv_lengths, impl, hopb,
                                                  a2a_chunk, layers)
        batch, hidden = len(kv_lengths), model.hidden_size
        if layer == owned.start and stage > 0:
            receive = P.stage_transfer(P.OpName.STAGE_RECV, layout, rank - n, stage, batch, hidden)
            ops = [receive] + [_shifted(op, first=index == 0) for index, op in enumerate(ops)]
        if layer == owned.stop - 1 and stage < layout.pp - 1:
            ops.append(P.stage_transfer(P.OpName.STAGE_SEND, layout, rank + n, stage + 1, batch, hidden,
                                        (len(ops) - 1,)))
        return ops


def _shifted(op, first: bool):
    """The op one place later in its plan (a receive went first): its dependencies follow, and the
    layer's first op waits for the receive."""
    deps = tuple(d + 1 for d in op.deps) + ((0,) if first else ())
    return dataclasses.replace(op, deps=deps)


RULES = Pipeline()
