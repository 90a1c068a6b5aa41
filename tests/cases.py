"""Sharded-vs-reference cases: one test body, run on COMM_SELF in pytest and on COMM_WORLD under
mpiexec (as mpi4py's own test suite does). Run directly: `mpiexec -n 8 python -m mpi4py
tests/cases.py` runs every case whose layout uses exactly the world's ranks."""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helix_mpi.config import RunConfig, load_model, make_layout, validate_layout  # noqa: E402
from helix_mpi.runner import REFERENCE_TOLERANCE, run_emulation  # noqa: E402
from helix_mpi.topology import load_topology  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    kvp: int
    tpa: int
    batch: int = 2
    strategy: str = "helix"
    ep: int | None = None
    a2a_chunk: int = 1
    storage: str = "fp32"
    context: int = 37  # not divisible by KVP * tokens_per_block
    steps: int = 3
    layers: int = 2
    tokens_per_block: int = 4
    key_scale: float = 1.0
    pp: int | None = None  # pipeline stages (strategy pp): kvp x tpa ranks each

    @property
    def ranks(self) -> int:
        return self.kvp * self.tpa * (self.pp or 1)


MLA_MOE_4_LAYERS = str(Path(__file__).resolve().parent / "models" / "tiny-mla-moe-4l.toml")


CASES = [
    Case("single", "tiny", 1, 1, batch=1),
    Case("kvp2-uneven-context", "tiny", 2, 1, context=37),
    Case("tpa2-odd-batch", "tiny", 1, 2, batch=3),
    Case("kvp2-tpa2-large-logits", "tiny", 2, 2, key_scale=300.0),
    Case("kvp4-empty-shards", "tiny", 4, 1, context=10, tokens_per_block=16, batch=1),
    Case("kvp4-tpa2-gqa3", "tiny-gqa3", 4, 2, batch=3, steps=4, tokens_per_block=2),
    Case("kvp2-tpa4-gqa3", "tiny-gqa3", 2, 4, batch=1, context=64),
    Case("kvp8-empty-odd-batch", "tiny-gqa3", 8, 1, context=5, batch=5, tokens_per_block=2, steps=5),
    # MLA + MoE under Helix (TPA = 1, KVP = N, TPF x EP = N) and every baseline, both families.
    # (kvp, tpa) below is the world split: N = kvp * tpa ranks whatever the strategy.
    Case("mla-moe-helix-ep2", "tiny-mla-moe", 2, 1, ep=2, layers=3),
    Case("gqa-tp2", "tiny", 1, 2, strategy="tp", batch=3),
    Case("mla-moe-dp-ep2", "tiny-mla-moe", 2, 1, strategy="dp-ep", batch=3, layers=3),
    # one request and top-2 of 8 experts: most experts get no token; KVP=4 with 10 tokens in
    # blocks of 4 leaves the last shard empty
    Case("mla-moe-helix-tpf2-ep2-empty", "tiny-mla-moe", 4, 1, ep=2, batch=1, context=10, layers=3),
    Case("gqa-kvp-baseline", "tiny", 2, 2, strategy="kvp", batch=3),
    Case("gqa3-tp4", "tiny-gqa3", 1, 4, strategy="tp"),
    Case("mla-moe-tp4", "tiny-mla-moe", 1, 4, strategy="tp", layers=3),
    Case("mla-moe-sigmoid-kvp4", "tiny-mla-moe-sigmoid", 4, 1, strategy="kvp", batch=3),
    Case("mla-moe-helix8", "tiny-mla-moe", 8, 1, batch=5, layers=3, tokens_per_block=2),
    Case("gqa-tp8-duplicated-kv", "tiny", 1, 8, strategy="tp", batch=3),
    Case("mla-moe-dp-ep8-idle-ranks", "tiny-mla-moe", 8, 1, strategy="dp-ep", batch=5, layers=3),
    Case("mla-moe-sigmoid-helix8", "tiny-mla-moe-sigmoid", 8, 1, ep=4, batch=2),
    # requests exchanged in chunks: 5 requests in chunks of 2 (the last one short), and all at once
    Case("gqa3-chunks-of-2", "tiny-gqa3", 4, 2, batch=5, a2a_chunk=2),
    Case("mla-moe-one-exchange", "tiny-mla-moe", 4, 1, batch=3, a2a_chunk=0, layers=3),
    # weights and KV kept in bf16 (uint16, upcast in the kernels); the reference holds the same values
    Case("gqa-bf16-storage", "tiny-gqa3", 2, 2, batch=3, storage="bf16"),
    Case("mla-moe-bf16-storage", "tiny-mla-moe", 2, 1, ep=2, layers=3, storage="bf16"),
    # pipeline stages of consecutive layers, each stage TP (no --kvp) or Helix (KVP >= 2); (kvp, tpa) is a stage
    Case("pp2-tp2", "tiny", 1, 2, strategy="pp", pp=2, batch=3, layers=4),
    Case("pp2-tp2-mla-moe", "tiny-mla-moe", 1, 2, strategy="pp", pp=2, layers=3),
    Case("pp2-helix-kvp2-tpa2", "tiny", 2, 2, strategy="pp", pp=2, layers=4, a2a_chunk=0),
    Case("pp4-tp2", "tiny", 1, 2, strategy="pp", pp=4, batch=3, layers=4),
    Case("pp4-helix-kvp2-mla-moe", MLA_MOE_4_LAYERS, 2, 1, strategy="pp", pp=4, ep=2, layers=4),
    Case("pp2-helix-kvp4-mla-moe", "tiny-mla-moe", 4, 1, strategy="pp", pp=2, ep=2, layers=3),
]


def check_case(comm, case: Case) -> dict:
    """Run one case on `comm`; return rank 0's measured error (and assert it is within tolerance)."""
    model = load_model(case.model)
    layout = make_layout(model, case.ranks, case.kvp, case.tpa, case.strategy, case.ep, case.pp)
    validate_layout(model, layout, case.ranks)
    run = RunConfig(batch=case.batch, context=case.context, steps=case.steps, layers=case.layers,
                    tokens_per_block=case.tokens_per_block, key_scale=case.key_scale, a2a_chunk=case.a2a_chunk,
                    storage=case.storage)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_emulation(comm, model, layout, run, load_topology("gb200-nvl72"),
                                Path(tmp) / "trace.h5" if comm.Get_rank() == 0 else None, check=True)
    if comm.Get_rank() != 0:
        return {}
    error = outcome.reference_error
    assert error is not None and error <= REFERENCE_TOLERANCE, f"{case.name}: error {error:.3e}"
    return {"case": case.name, "ranks": case.ranks, "error": error}


def main() -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    selected = [c for c in CASES if c.ranks == comm.Get_size()]
    results = [check_case(comm, case) for case in selected]
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "results": results}))


if __name__ == "__main__":
    main()
