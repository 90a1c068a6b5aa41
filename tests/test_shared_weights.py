"""Weight blocks that several ranks of one machine hold alike are generated once into MPI shared
memory (helix_mpi/blockshare.py): the same values bit for bit as private generation, read-only,
counted once by the host-memory guard, no result or modeled time changed, and a rank failing
while filling its part stops the job instead of leaving the others at the barrier."""
from __future__ import annotations

import json
import time

import pytest
from mpi4py import MPI

from conftest import TESTS, run_mpi
from helix_mpi.blockshare import plan_sharing
from helix_mpi.config import RunConfig, load_model, make_layout
from helix_mpi.hostmem import estimate_run
from helix_mpi.sharding import layer_weights, rank_shard
from shared_weights_cases import SHARING_CASES, check_sharing

CASES = {case.name: case for case in SHARING_CASES}


def test_one_rank_shares_nothing_on_comm_self():
    """The same test body as under mpiexec, on COMM_SELF in this process: no window is made."""
    result = check_sharing(MPI.COMM_SELF, CASES["single"])
    (figures,) = result["ranks"]
    assert figures["shared_bytes"] == figures["window_bytes"] == 0 and figures["private_bytes"] > 0


def test_a_plan_splits_every_shared_block_among_its_holders():
    model = load_model("tiny-gqa3")
    layout = make_layout(model, 4, 2, 2)
    from helix_mpi.sharding import weight_blocks

    plan = plan_sharing([weight_blocks(model, 0, [0], rank_shard(model, layout, r)) for r in range(4)])
    assert plan.blocks and plan.window_bytes % 64 == 0
    for block in plan.blocks.values():
        filled = [block.rows_filled_by(r) for r in range(4)]
        assert sum(len(rows) for rows in filled) == block.spec.block_shape[0]  # every row once
        assert all(len(filled[r]) == 0 for r in range(4) if r not in block.holders)
        assert block.offset % 64 == 0


@pytest.fixture(scope="module")
def four_ranks():
    done = run_mpi(4, [str(TESTS / "shared_weights_cases.py")])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.mpich
def test_shared_weights_equal_private_ones_under_mpiexec(four_ranks):
    """check_sharing asserted bit equality and read-only views on every rank; here the bytes:
    what each rank maps and generates is what the host-memory guard estimates for the machine."""
    results = {r["case"]: r["ranks"] for r in four_ranks["results"]}
    assert set(results) == {c.name for c in SHARING_CASES if c.ranks == 4}
    for name, ranks in results.items():
        case = CASES[name]
        model = load_model(case.model)
        layout = make_layout(model, 4, case.kvp, case.tpa, case.strategy, case.ep)
        estimate = estimate_run(model, layout, RunConfig(layers=case.layers, storage=case.storage), False)
        assert [r["private_bytes"] for r in ranks] == list(estimate.weights), name
        assert ranks[0]["window_bytes"] == estimate.shared_weights > 0, name
        assert all(r["shared_bytes"] > 0 for r in ranks), name


@pytest.mark.mpich
def test_kvp_ranks_of_a_tpa_shard_share_its_qkv_weights(four_ranks):
    """Helix KVP=2 x TPA=2: each rank maps its W_Q, W_K, W_V and the norms from the window and
    generates only its W_O rows and FFN columns; the window holds the two TPA shards once."""
    (ranks,) = [r["ranks"] for r in four_ranks["results"] if r["case"] == "helix-kvp2-tpa2"]
    model = load_model("tiny")
    layout = make_layout(model, 4, 2, 2)
    held = [[layer_weights(model, 0, layer, rank_shard(model, layout, r)) for layer in range(2)] for r in range(4)]
    qkv = [sum(w.attn.wq.nbytes + w.attn.wk.nbytes + w.attn.wv.nbytes for w in h) for h in held]
    norms = sum(w.attn.attn_norm.nbytes + w.ffn.ffn_norm.nbytes for w in held[0])
    own = [sum(w.attn.wo.nbytes + w.ffn.mlp.w_gate.nbytes + w.ffn.mlp.w_up.nbytes + w.ffn.mlp.w_down.nbytes
               for w in h) for h in held]
    assert [r["shared_bytes"] for r in ranks] == [q + norms for q in qkv]
    assert [r["private_bytes"] for r in ranks] == own
    assert ranks[0]["window_bytes"] == qkv[0] + qkv[2] + norms


@pytest.mark.mpich
def test_sharing_changes_no_result_or_modeled_time(four_ranks):
    runs = four_ranks["runs"]
    shared, private = runs["step_times"]
    assert shared == private and runs["reference_error"] <= 1e-4


@pytest.mark.mpich
def test_a_rank_failing_while_filling_stops_every_rank():
    started = time.monotonic()
    done = run_mpi(4, [str(TESTS / "shared_weights_cases.py"), "--fail-fill", "1"], timeout=120)
    assert done.returncode != 0
    assert "injected failure while filling shared weights on rank 1" in done.stderr
    assert time.monotonic() - started < 90  # the three ranks at the barrier were stopped, not left waiting


@pytest.mark.mpich
def test_run_private_weights_is_the_same_run(tmp_path):
    """`run --private-weights` (every rank generates all of its weights) and the default shared
    weights give the same modeled times and the same reference error, bit for bit."""
    from conftest import run_cli

    common = ["run", "-n", "4", "--kvp", "2", "--tpa", "2", "--steps", "2", "--json", "-q"]
    runs = {}
    for flag in ("--shared-weights", "--private-weights"):
        done = run_cli([*common, flag, "-o", str(tmp_path / f"{flag[2:]}.h5")])
        assert done.returncode == 0, done.stderr[-2000:]
        runs[flag] = json.loads(done.stdout.strip().splitlines()[-1])
    shared, private = runs["--shared-weights"], runs["--private-weights"]
    assert shared["reference_error"] == private["reference_error"] < shared["reference_tolerance"]
    assert shared["ttl_s"] == private["ttl_s"] and shared["ops"] == private["ops"]
