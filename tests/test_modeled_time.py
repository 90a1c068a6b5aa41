"""Modeled time: emulator == analytic model, independence from host load, HOP-B, traces."""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import run_cli
from helix_mpi.analytic import simulate
from helix_mpi.timing import TimeModel
from helix_mpi.config import MODEL_PRESETS, Implementation, Layout, RunConfig
from helix_mpi.plan import OpName, all_to_all_index, attention_index, layer_plan
from helix_mpi.topology import load_topology
from helix_mpi.trace import EVENT_DTYPE, SCHEMA_VERSION

RUN_ARGS = ["--model", "tiny-gqa3", "--kvp", "4", "--tpa", "2", "--batch", "3", "--context", "50", "--steps", "3",
            "--layers", "2", "--tokens-per-block", "4", "--precision", "fp8", "--topology", "dgx-b200"]


def _run_trace(path, extra_env_busy: bool = False):
    busy = []
    if extra_env_busy:  # two spinning processes keep both cores busy during the run
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        done = run_cli(["run", "-n", "8", *RUN_ARGS, "-o", str(path), "--json"])
    finally:
        for p in busy:
            p.kill()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("traces")
    quiet = _run_trace(root / "quiet.h5")
    busy = _run_trace(root / "busy.h5", extra_env_busy=True)
    return root / "quiet.h5", quiet, root / "busy.h5", busy


def _events(path):
    with h5py.File(path, "r") as f:
        return f["events"][...]


def _by_rank_layer(events):
    order = np.lexsort((events["layer"], events["rank"], events["step"]))  # stable: keeps op order
    return events[order]


def test_emulated_time_equals_analytic_model(traces):
    path, summary, _, _ = traces
    emulated = _by_rank_layer(_events(path))
    run = RunConfig(batch=3, context=50, steps=3, layers=2, tokens_per_block=4, precision="fp8")
    analytic = _by_rank_layer(simulate(MODEL_PRESETS["tiny-gqa3"], Layout(4, 2, 8), run, load_topology("dgx-b200")))
    assert len(emulated) == len(analytic)
    np.testing.assert_array_equal(emulated["op"], analytic["op"])
    np.testing.assert_array_equal(emulated["start_s"], analytic["start_s"])  # exactly, by construction
    np.testing.assert_array_equal(emulated["end_s"], analytic["end_s"])
    model = run_cli(["model", "--gpus", "8", "--json", *[a for a in RUN_ARGS]])
    assert model.returncode == 0, model.stderr
    model_json = json.loads(model.stdout)
    assert model_json["ttl_s"] == summary["ttl_s"]
    assert model_json["tokens_per_s_per_gpu"] == summary["tokens_per_s_per_gpu"]


def test_modeled_times_do_not_depend_on_host_load(traces):
    quiet_path, quiet, busy_path, busy = traces
    a, b = _events(quiet_path), _events(busy_path)
    np.testing.assert_array_equal(a["start_s"], b["start_s"])
    np.testing.assert_array_equal(a["end_s"], b["end_s"])
    assert quiet["ttl_s"] == busy["ttl_s"]
    assert not np.array_equal(a["host_end_s"], b["host_end_s"])  # the host did differ


def test_trace_layout_and_summarize(traces):
    path, summary, _, _ = traces
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and bool(f.attrs["complete"])
        config = json.loads(f.attrs["config"])
        assert config["layout"] == {"kvp": 4, "tpa": 2, "tpf": 8, "ep": 1, "strategy": "helix"}
        assert json.loads(f.attrs["topology"])["name"] == "dgx-b200"
        assert "numpy" in json.loads(f.attrs["versions"])
        assert f["events"].dtype == EVENT_DTYPE
        assert set(np.unique(f["events"]["rank"])) == set(range(8))
        kv = f["kv_tokens"][...]
    assert kv.shape == (3, 8)
    # 50 + 3 tokens over KVP=4 in blocks of 4, batch 3: every TPA replica holds the same tokens
    assert kv[-1].sum() == 3 * 53 * 2
    done = run_cli(["summarize", str(path), "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ttl_s"] == summary["ttl_s"]


def _layer_times(run: RunConfig, layout: Layout):
    events = simulate(MODEL_PRESETS["tiny"], layout, run, load_topology("gb200-nvl72"))
    return events[(events["rank"] == 0) & (events["layer"] == 0) & (events["step"] == 0)]


@pytest.mark.parametrize("hopb", [True, False])
def test_hopb_exposes_one_all_to_all(hopb):
    # Long contexts make attention (compute) longer than the all-to-all: HOP-B hides all but one.
    batch, layout = 4, Layout(4, 1, 4)
    run = RunConfig(batch=batch, context=4_000_000, steps=1, layers=1, hopb=hopb, a2a_chunk=1)  # HOP-B: one exchange per request
    events = _layer_times(run, layout)
    topo = load_topology("gb200-nvl72")
    impl = run.implementation()
    plan = layer_plan(MODEL_PRESETS["tiny"], layout, 0, 0, np.full(batch, 1_000_001), impl, hopb, a2a_chunk=1)
    t_attn = TimeModel(topo, impl).op_seconds(plan[attention_index(0)])
    t_a2a = TimeModel(topo, impl).op_seconds(plan[all_to_all_index(0)])
    assert t_a2a < t_attn
    ops = events["op"]
    qkv_end = events["end_s"][ops == OpName.QKV.value.encode()][0]
    last_a2a_end = events["end_s"][ops == OpName.ALL_TO_ALL.value.encode()].max()
    expected = batch * t_attn + t_a2a if hopb else batch * (t_attn + t_a2a)
    assert last_a2a_end - qkv_end == pytest.approx(expected, rel=1e-12)


def test_one_rank_plan_has_free_collectives():
    topo = load_topology("gb200-nvl72")
    impl = Implementation("bf16", "bf16")
    plan = layer_plan(MODEL_PRESETS["tiny"], Layout(1, 1, 1), 0, 0, np.array([10, 10]), impl, True)
    collectives = [op for op in plan if op.is_collective]
    assert collectives and all(TimeModel(topo, impl).op_seconds(op) == 0.0 for op in collectives)


@pytest.mark.parametrize("chunk", [2, 0])
def test_chunked_exchange_emulated_equals_analytic(tmp_path, chunk):
    path = tmp_path / "chunk.h5"
    args = ["--model", "tiny-gqa3", "--kvp", "4", "--tpa", "2", "--batch", "5", "--context", "40", "--steps", "2",
            "--a2a-chunk", str(chunk)]
    done = run_cli(["run", "-n", "8", *args, "-o", str(path), "--json"])
    assert done.returncode == 0, done.stderr[-2000:]
    emulated = _by_rank_layer(_events(path))
    run = RunConfig(batch=5, context=40, steps=2, layers=2, a2a_chunk=chunk)
    analytic = _by_rank_layer(simulate(MODEL_PRESETS["tiny-gqa3"], Layout(4, 2, 8), run, load_topology("gb200-nvl72")))
    np.testing.assert_array_equal(emulated["end_s"], analytic["end_s"])
    a2a = emulated[emulated["op"] == b"all_to_all"]
    per_layer = 3 if chunk == 2 else 1  # chunks of 2, 2 and 1 requests, or one exchange
    assert len(a2a) == 8 * 2 * 2 * per_layer


@pytest.mark.parametrize("stage_flags", [["--pp", "2", "--kvp", "2", "--tpa", "2"], ["--pp", "4"]])
def test_pipeline_emulated_equals_analytic(tmp_path, stage_flags):
    """Pipeline stages (Helix or TP inside a stage): every event of the emulated run equals the
    analytic model's, ranks skip the layers of other stages, and `model` gives the same TTL: the
    stages' layers plus PP - 1 stage sends."""
    from helix_mpi.config import make_layout

    path = tmp_path / "pp.h5"
    args = ["--model", "tiny", "--strategy", "pp", *stage_flags, "--batch", "3", "--context", "40", "--steps", "2"]
    done = run_cli(["run", "-n", "8", *args, "-o", str(path), "--json"])
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    emulated = _by_rank_layer(_events(path))
    model = MODEL_PRESETS["tiny"]
    kvp = int(stage_flags[3]) if "--kvp" in stage_flags else None
    layout = make_layout(model, 8, kvp, int(stage_flags[5]) if kvp else None, "pp", pp=int(stage_flags[1]))
    run = RunConfig(batch=3, context=40, steps=2, layers=4)
    analytic = _by_rank_layer(simulate(model, layout, run, load_topology("gb200-nvl72")))
    np.testing.assert_array_equal(emulated["op"], analytic["op"])
    np.testing.assert_array_equal(emulated["start_s"], analytic["start_s"])
    np.testing.assert_array_equal(emulated["end_s"], analytic["end_s"])
    stage_ranks = 8 // layout.pp
    per_stage = 4 // layout.pp
    for stage in range(layout.pp):  # a stage's ranks record only its layers (and the last stage the tail)
        layers = set(emulated["layer"][emulated["rank"] // stage_ranks == stage].tolist())
        own = set(range(stage * per_stage, (stage + 1) * per_stage))
        assert layers == (own | {4} if stage == layout.pp - 1 else own)
    assert (emulated["op"] == b"stage_send").sum() == 2 * (layout.pp - 1) * stage_ranks
    replayed = tmp_path / "replayed.h5"  # replay re-times each layer on the stage that ran it
    done = run_cli(["replay", str(path), "-o", str(replayed)])
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(_by_rank_layer(_events(replayed))["end_s"], emulated["end_s"])
    checked = run_cli(["validate", str(path)])  # event counts agree within each stage, not across stages
    assert checked.returncode == 0, checked.stdout + checked.stderr
    analytic_cli = run_cli(["model", "--gpus", "8", "--json", *args])
    assert analytic_cli.returncode == 0, analytic_cli.stderr
    assert json.loads(analytic_cli.stdout)["ttl_s"] == summary["ttl_s"]
    stage = run_cli(["model", "--gpus", str(stage_ranks), "--json", "--model", "tiny", "--batch", "3", "--context",
                     "40", "--steps", "2", *(["--kvp", "2", "--tpa", "2"] if kvp else ["--strategy", "tp"])])
    send = TimeModel(load_topology("gb200-nvl72"), Implementation()).send_seconds(3 * 64 * 2)
    assert summary["ttl_s"] == pytest.approx(json.loads(stage.stdout)["ttl_s"] + (layout.pp - 1) * send, rel=1e-12)
