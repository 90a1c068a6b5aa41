"""MLA (absorbed == naive), MoE routing, memory accounting and MLA/MoE saved tensors."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from conftest import run_cli
from helix_mpi.config import MODEL_PRESETS, PRECISION_BYTES, load_model, make_layout
from helix_mpi.memory import memory_report
from helix_mpi.model import route
from helix_mpi.reference import (mla_attention as _mla, load_saved_tensors, reference_decode, reference_route, reference_tensors,
                                 relative_error)
from helix_mpi.config import RunConfig
from helix_mpi.sharding import full_layer_weights
from helix_mpi.topology import load_topology


@pytest.mark.parametrize("name", ["tiny-mla-moe", "tiny-mla-moe-sigmoid"])
def test_absorbed_mla_equals_naive_mla(name):
    model = MODEL_PRESETS[name]
    w = full_layer_weights(model, seed=3, layer=0).attn
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, model.hidden_size))
    cache = rng.standard_normal((3, 1, 17, model.mla.cache_dim))
    absorbed, _, _ = _mla(x, w, cache, 17, model, absorbed=True)
    naive, _, _ = _mla(x, w, cache, 17, model, absorbed=False)
    # both in float64: only summation order differs
    np.testing.assert_allclose(absorbed, naive, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny-mla-moe", "tiny-mla-moe-sigmoid", "deepseek-r1"])
def test_router_picks_top_k_and_renormalises(name):
    model = MODEL_PRESETS[name]
    moe = model.moe
    rng = np.random.default_rng(1)
    g = rng.standard_normal((5, 16)).astype(np.float32)
    router = rng.standard_normal((16, moe.n_routed_experts)).astype(np.float32)
    experts, weights = route(g, router, moe)
    assert experts.shape == (5, moe.experts_per_token)
    assert all(len(set(row)) == moe.experts_per_token for row in experts)
    np.testing.assert_allclose(weights.sum(axis=1), moe.routed_scaling, rtol=1e-5)
    ref_experts, ref_weights = reference_route(g.astype(np.float64), type("W", (), {"router": router})(), model)
    np.testing.assert_array_equal(experts, ref_experts)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5)


def test_tp_duplicates_kv_and_helix_removes_it():
    topo = load_topology("gb200-nvl72")
    for name in ("llama-3.1-405b", "deepseek-r1"):
        model = MODEL_PRESETS[name]
        kv = {}
        for strategy, gpus in (("tp", 8), ("tp", 64), ("helix", 64)):
            layout = make_layout(model, gpus, None, None, strategy)
            kv[strategy, gpus] = memory_report(model, layout, 1, 1_000_000, "fp4", topo)["max_kv_bytes"]
        per_token_layer = (2 * model.head_dim) if model.mla is None else model.mla.cache_dim  # one KV head
        # TP beyond K: every GPU keeps a whole KV head (or the whole latent) for the whole context
        assert kv["tp", 8] == kv["tp", 64] == 1_000_000 * per_token_layer * model.num_layers * PRECISION_BYTES["fp4"]
        kvp = make_layout(model, 64, None, None, "helix").kvp
        assert kv["helix", 64] == pytest.approx(kv["tp", 64] / kvp, rel=1e-5)


def test_model_reports_configurations_that_do_not_fit():
    done = run_cli(["model", "--model", "deepseek-r1", "--strategy", "tp", "--gpus", "8", "--context", "1000000",
                    "--batch", "64", "--json"])
    assert done.returncode == 3, done.stderr  # said loudly: exit code 3 (README "Does not fit")
    data = json.loads(done.stdout)
    assert data["fits"] is False and data["memory"]["max_total_bytes"] > data["memory"]["hbm_bytes"]
    done = run_cli(["model", "--model", "deepseek-r1", "--gpus", "64", "--context", "1000000", "--json"])
    assert json.loads(done.stdout)["fits"] is True


@pytest.mark.parametrize("name, layers", [("tiny-mla-moe", 3), ("tiny", 2)])
def test_saved_tensors_recompute_the_run(tmp_path, name, layers):
    path = tmp_path / "saved.h5"
    done = run_cli(["run", "-n", "4", "--model", name, "--layers", str(layers), "--batch", "3", "--steps", "3",
                    "--context", "21", "--save-tensors", "-o", str(path)])
    assert done.returncode == 0, done.stderr
    with h5py.File(path, "r") as f:
        model = load_model(name)
        assert json.loads(f["tensors"].attrs["model"]) == model.to_dict()
        tensors = load_saved_tensors(f, model)
        outputs = f["tensors/outputs"][...]
        if model.moe is not None:
            assert f["tensors/routing/layer_1/experts"].shape == (3, 3, 2)
    _, expected = reference_decode(model, tensors, steps=3, context=21)
    assert relative_error(outputs, expected) < 1e-4
    # and the saved tensors are the seed's tensors
    regenerated = reference_tensors(model, RunConfig(batch=3, context=21, steps=3, layers=layers))
    np.testing.assert_array_equal(tensors.k_init[-1], regenerated.k_init[-1])
