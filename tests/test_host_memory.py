"""The host memory guard of `run`: the estimate matches what the ranks allocate, and a run that
needs more than the machine has is refused in one line before any rank starts (unless --force)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import helix_mpi.cli as cli
from conftest import call_cli, run_cli, run_mpi
from helix_mpi.config import RunConfig, load_model, make_layout
from helix_mpi.emulator import Emulator
from helix_mpi.hostmem import estimate_run
from helix_mpi.launcher import JobEnd
from helix_mpi.mesh import RankMesh
from helix_mpi.sharding import layer_weights, rank_shard
from helix_mpi.topology import load_topology


def _array_bytes(value) -> int:
    """Bytes of every array in a (nested) weights dataclass, dict or list."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if dataclasses.is_dataclass(value):
        return sum(_array_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(_array_bytes(v) for v in value.values())
    return 0


@pytest.mark.parametrize("name, ranks, strategy", [("tiny-gqa3", 8, "helix"), ("tiny-mla-moe", 8, "helix"),
                                                    ("tiny-mla-moe", 4, "dp-ep"), ("tiny", 8, "tp")])
@pytest.mark.parametrize("storage", ["fp32", "bf16"])
def test_estimated_weights_are_the_shards_the_ranks_generate(name, ranks, strategy, storage):
    model = load_model(name)
    layout = make_layout(model, ranks, None, None, strategy)
    run = RunConfig(layers=model.num_layers, storage=storage)
    estimate = estimate_run(model, layout, run, with_reference=False, share_weights=False)
    for rank in range(ranks):
        held = sum(_array_bytes(layer_weights(model, 0, layer, rank_shard(model, layout, rank), storage))
                   for layer in range(run.layers))
        assert estimate.weights[rank] == held
    assert estimate.shared_weights == 0


def test_weights_several_ranks_hold_alike_are_counted_once_per_machine():
    """Helix KVP=2 x TPA=2 on `tiny`: the two KVP ranks of a TPA shard hold the same W_Q, W_K, W_V
    (and every rank the same norms), kept once per machine; each holds its own rows of W_O (the
    heads it combines) and its own columns of the FFN (split over all 4)."""
    model = load_model("tiny")
    layout = make_layout(model, 4, 2, 2)
    run = RunConfig(layers=2)
    weights = [[layer_weights(model, 0, layer, rank_shard(model, layout, rank)) for layer in range(2)]
               for rank in range(4)]
    own = [sum(_array_bytes(w.ffn.mlp) + w.attn.wo.nbytes for w in held) for held in weights]
    qkv = [sum(w.attn.wq.nbytes + w.attn.wk.nbytes + w.attn.wv.nbytes for w in held) for held in weights]
    norms = sum(w.attn.attn_norm.nbytes + w.ffn.ffn_norm.nbytes for w in weights[0])
    assert qkv[0] == qkv[1] != 0 and qkv[2] == qkv[3]  # ranks 2t, 2t+1: TPA shard t

    shared = estimate_run(model, layout, run, with_reference=False)
    assert list(shared.weights) == own
    assert shared.shared_weights == qkv[0] + qkv[2] + norms  # every block a multiple of 64 B here
    private = estimate_run(model, layout, run, with_reference=False, share_weights=False)
    assert shared.total == private.total - qkv[0] - qkv[2] - 3 * norms
    alone = estimate_run(model, layout, run, with_reference=False, machine_ranks=[0, 2])  # one KVP rank per shard
    assert alone.shared_weights == norms and list(alone.weights) == [own[0] + qkv[0], own[2] + qkv[2]]


@pytest.mark.parametrize("name, kvp, pp", [("tiny", None, 2), ("tiny-mla-moe", 2, 2), ("tiny", None, 4)])
def test_pipeline_ranks_are_estimated_for_their_stage_layers_only(name, kvp, pp):
    """Under pipeline stages a rank generates the weights, and holds the KV, of its stage's layers."""
    from helix_mpi.strategies import rules_for

    model = load_model(name)
    layout = make_layout(model, 8, kvp, None, "pp", pp=pp)
    run = RunConfig(batch=2, context=300, layers=model.num_layers)
    estimate = estimate_run(model, layout, run, with_reference=False, share_weights=False)
    flat = estimate_run(model, rules_for(layout).stage_layout(layout), run, with_reference=False)  # every layer
    for rank in range(8):
        layers = rules_for(layout).rank_layers(layout, rank, run.layers)
        held = sum(_array_bytes(layer_weights(model, 0, layer, rank_shard(model, layout, rank), "fp32"))
                   for layer in layers)
        assert held == estimate.weights[rank]
        assert estimate.kv[rank] == flat.kv[rank % (8 // pp)] * len(layers) / run.layers


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
def test_estimated_kv_is_the_cache_the_emulator_allocates(storage):
    model = load_model("tiny-gqa3")
    layout = make_layout(model, 1, None, None)
    run = RunConfig(batch=3, context=1000, steps=5, layers=2, storage=storage)
    mesh = RankMesh.build(MPI.COMM_SELF, layout)
    try:
        emulator = Emulator(model, layout, run, load_topology("gb200-nvl72"), mesh)
        allocated = sum(c.k.nbytes + c.v.nbytes for c in emulator.caches)
    finally:
        mesh.free()
    assert estimate_run(model, layout, run, with_reference=False).kv[0] == allocated


def test_a_run_larger_than_the_machine_is_refused_before_any_rank_starts(tmp_path):
    output = tmp_path / "huge.h5"
    done = run_cli(["run", "-n", "8", "--context", "100000000", "-o", str(output)], timeout=60)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("helix-mpi: error: this run needs about "), done.stderr
    for flag in ("--storage bf16", "fewer --layers", "a smaller --context", "--force"):
        assert flag in lines[0]
    assert not output.exists() and not Path(f"{output}.partial").exists()


def test_the_guard_refuses_under_a_users_own_mpiexec_too(tmp_path):
    done = run_mpi(2, ["helix_mpi", "run", "--context", "1000000000", "--allow-overflow", "-o", str(tmp_path / "t.h5")], timeout=60,
                   module=True)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("helix-mpi:")] == \
        [line for line in done.stderr.splitlines() if "this run needs about" in line]
    assert "this run needs about" in done.stderr


def test_force_runs_what_the_guard_would_refuse(monkeypatch, tmp_path):
    """With 2 GB 'available', 4M tokens on 2 ranks (6.4 GB) is refused; --force launches it."""
    launched = []
    monkeypatch.setattr("helix_mpi.hostmem.available_bytes", lambda: 2e9)
    monkeypatch.setattr(cli, "relaunch", lambda ranks, args, **kw: launched.append(args) or JobEnd(code=0))
    args = ["run", "-n", "2", "--context", "4000000", "--no-check", "-o", str(tmp_path / "t.h5")]
    refused = call_cli(args)
    assert refused.returncode == 2 and not launched
    assert "this run needs about 6.4 GB" in refused.stderr and "has 2.0 GB available" in refused.stderr
    assert call_cli(args + ["--force"]).returncode == 0 and len(launched) == 1
    assert call_cli(args[:3] + ["--context", "400000"] + args[5:]).returncode == 0  # 10x smaller fits
    assert len(launched) == 2
