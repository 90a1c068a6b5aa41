"""The parallel axes of a Helix layout, named once for the whole package.

"axis" always means a mesh axis; "dim" means an array dimension.
Attention phase: N = KVP x TPA.  FFN phase: N = TPF x EP (the same N ranks re-provisioned).
"""
from __future__ import annotations

from enum import Enum


class Axis(str, Enum):
    KVP = "kvp"  # KV parallelism: the KV cache is split along the sequence dim
    TPA = "tpa"  # tensor parallelism of attention: KV heads split over ranks (TPA <= K)
    TPF = "tpf"  # tensor parallelism of the FFN: F (or each expert's width) split over ranks
    EP = "ep"  # expert parallelism: routed experts split over ranks (MoE only)


ATTENTION_AXES = (Axis.KVP, Axis.TPA)
FFN_AXES = (Axis.TPF, Axis.EP)


class Stream(str, Enum):
    """The two streams of a modeled GPU: kernels and collectives overlap only across streams."""

    COMPUTE = "compute"
    COMM = "comm"


def group_name(axes: tuple[Axis, ...]) -> str:
    """Stable text name of a communicator group, e.g. (KVP,) -> 'kvp', (KVP, TPA) -> 'kvp*tpa'."""
    return "*".join(axis.value for axis in axes) if axes else "self"
