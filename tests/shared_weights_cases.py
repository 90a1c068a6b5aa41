"""Weights shared within a machine (blockshare.py) equal privately generated ones: one test body,
run on COMM_SELF in pytest and on COMM_WORLD under mpiexec. Run directly: `mpiexec -n 4 python -m
mpi4py tests/shared_weights_cases.py` checks every case of 4 ranks and prints rank 0's JSON;
with `--fail-fill RANK`, that rank raises while filling its part of the window (the others must
not hang at the barrier)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helix_mpi import synth  # noqa: E402
from helix_mpi.blockshare import share_blocks  # noqa: E402
from helix_mpi.config import load_model, make_layout  # noqa: E402
from helix_mpi.sharding import layer_weights, rank_shard, weight_blocks  # noqa: E402
from helix_mpi.strategies import rules_for  # noqa: E402


@dataclass(frozen=True)
class SharingCase:
    name: str
    model: str
    ranks: int
    kvp: int | None
    tpa: int | None
    strategy: str = "helix"
    ep: int | None = None
    storage: str = "fp32"
    layers: int = 2


SHARING_CASES = [
    SharingCase("single", "tiny", 1, 1, 1),
    SharingCase("helix-kvp2-tpa2", "tiny", 4, 2, 2),
    SharingCase("helix-kvp2-tpa2-gqa3-bf16", "tiny-gqa3", 4, 2, 2, storage="bf16"),
    SharingCase("mla-moe-helix-ep2-bf16", "tiny-mla-moe", 4, 4, 1, ep=2, storage="bf16", layers=3),
    SharingCase("tp4-duplicated-kv", "tiny", 4, 1, 4, strategy="tp"),
]


def _arrays(weights, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array of a (nested) weights dataclass or dict, by dotted name."""
    if isinstance(weights, np.ndarray):
        return {prefix: weights}
    items = weights.items() if isinstance(weights, dict) else (
        (name, getattr(weights, name)) for name in getattr(weights, "__dataclass_fields__", {}))
    found = {}
    for name, value in items:
        found.update(_arrays(value, f"{prefix}.{name}" if prefix else str(name)))
    return found


def check_sharing(comm, case: SharingCase) -> dict:
    """Every rank's weights from the machine's shared window equal its privately generated ones
    bit for bit and are read-only; rank 0 returns every rank's shared and private bytes."""
    model = load_model(case.model)
    layout = make_layout(model, case.ranks, case.kvp, case.tpa, case.strategy, case.ep)
    rank = comm.Get_rank()
    shard, layers = rank_shard(model, layout, rank), rules_for(layout).rank_layers(layout, rank, case.layers)
    source = share_blocks(comm, weight_blocks(model, 0, layers, shard, case.storage))
    try:
        for layer in layers:
            shared = _arrays(layer_weights(model, 0, layer, shard, case.storage, source))
            private = _arrays(layer_weights(model, 0, layer, shard, case.storage))
            assert shared.keys() == private.keys()
            for name, array in shared.items():
                expected = private[name]
                assert array.dtype == expected.dtype and array.shape == expected.shape, (case.name, name)
                assert array.tobytes() == expected.tobytes(), f"{case.name}: {name} differs on rank {rank}"
                assert not array.flags.writeable, (case.name, name)
        figures = {"shared_bytes": source.shared_bytes, "private_bytes": source.private_bytes,
                   "window_bytes": source.plan.window_bytes}
    finally:
        source.free()
    every = comm.gather(figures, root=0)
    return {"case": case.name, "ranks": every} if rank == 0 else {}


def compare_runs(comm) -> dict:
    """A 4-rank Helix run with shared weights and with private ones: the same outputs bit for bit
    and the same modeled step times (rank 0 returns both step times)."""
    import tempfile

    from helix_mpi.config import RunConfig
    from helix_mpi.runner import run_emulation
    from helix_mpi.topology import load_topology

    model = load_model("tiny-gqa3")
    layout = make_layout(model, comm.Get_size(), 2, comm.Get_size() // 2)
    run = RunConfig(batch=3, context=37, steps=3, layers=2, tokens_per_block=4)
    outcomes = {}
    for shared in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            outcomes[shared] = run_emulation(comm, model, layout, run, load_topology("gb200-nvl72"),
                                             Path(tmp) / "t.h5" if comm.Get_rank() == 0 else None, check=True,
                                             share_weights=shared)
    if comm.Get_rank() != 0:
        return {}
    on, off = outcomes[True].result, outcomes[False].result
    assert on.outputs.tobytes() == off.outputs.tobytes(), "outputs differ with shared weights"
    assert outcomes[True].summary["ops"] == outcomes[False].summary["ops"]
    return {"step_times": [on.step_times.tolist(), off.step_times.tolist()],
            "reference_error": outcomes[True].reference_error}


def fail_while_filling(failing_rank: int) -> None:
    """Make `failing_rank` raise in its first fill of a shared block (the others fill and wait)."""
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() != failing_rank:
        return

    def failing_fill(*args, **kwargs):
        raise RuntimeError(f"injected failure while filling shared weights on rank {failing_rank}")
    synth.fill_block_rows = failing_fill


def main() -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if "--fail-fill" in sys.argv:
        fail_while_filling(int(sys.argv[sys.argv.index("--fail-fill") + 1]))
    results = [check_sharing(comm, case) for case in SHARING_CASES if case.ranks == comm.Get_size()]
    runs = compare_runs(comm) if comm.Get_size() == 4 else {}
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "results": results, "runs": runs}))


if __name__ == "__main__":
    main()
