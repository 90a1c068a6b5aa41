"""The analytic sweep and its Pareto frontiers: correct frontiers, nothing that overflows HBM, and
the same TTL as `helix-mpi model` / analytic.step_time on every strategy (relative 1e-9)."""
from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from helix_mpi import pareto, sweep
from helix_mpi.analytic import local_kv_lengths, step_time
from helix_mpi.cli import cli
from helix_mpi.config import MODEL_PRESETS, Layout, RunConfig, Strategy
from helix_mpi.gpuops import ACTIVATION_BYTES
from helix_mpi.costmodel import Collective
from helix_mpi.memory import memory_report
from helix_mpi.timing import BatchLayerTime
from helix_mpi.timing.schedule import uniform_chain_end
from helix_mpi.topology import load_topology

TOPO = load_topology("gb200-nvl72")
REL = 1e-9


def _spec(model="tiny-mla-moe", context=300, **kw) -> sweep.SweepSpec:
    kw.setdefault("max_gpus", 8)
    kw.setdefault("max_batch", 40)
    return sweep.SweepSpec(MODEL_PRESETS[model], kw.pop("topo", TOPO), context, **kw)


@pytest.fixture(scope="module")
def tiny_sweep():
    return sweep.run_sweep(_spec())


def _rows(configs, series):
    return configs[configs["strategy"] == series.encode()]


def _layout(row) -> Layout:
    strategy = {b"helix": Strategy.HELIX, b"helix-no-hopb": Strategy.HELIX, b"tp": Strategy.TP, b"pp-tp": Strategy.TP,
                b"kvp": Strategy.KVP, b"dp-ep": Strategy.DP_EP}[row["strategy"]]
    return Layout(int(row["kvp"]), int(row["tpa"]), int(row["tpf"]), int(row["ep"]), strategy)


def _reference_ttl(spec: sweep.SweepSpec, row) -> float:
    """analytic.step_time of the row's layout (pp-tp: of its TP stage layout at the micro-batch, plus
    the PP - 1 stage sends)."""
    layout, pp = _layout(row), int(row["pp"])
    batch = int(row["batch"]) // pp
    run = RunConfig(batch=batch, context=spec.context, steps=1, layers=1, tokens_per_block=spec.tokens_per_block,
                    precision=spec.precision, hopb=bool(row["hopb"]))
    kv = [local_kv_lengths(layout, run, r, 0) for r in range(layout.world_size)]
    ttl = step_time(spec.model, layout, kv, spec.implementation(), bool(row["hopb"]), spec.topo)
    send = spec.time_model.send_seconds(batch * spec.model.hidden_size * ACTIVATION_BYTES)
    return ttl + (pp - 1) * float(send)


def _brute_force_frontier(rows):
    """Rows that no other row dominates (>= interactivity with > throughput, or equal interactivity
    and equal throughput earlier in the array), sorted by interactivity."""
    keep = []
    for i, r in enumerate(rows):
        dominated = any((o[pareto.USER] >= r[pareto.USER] and o[pareto.GPU] > r[pareto.GPU])
                        or (o[pareto.USER] == r[pareto.USER] and o[pareto.GPU] == r[pareto.GPU] and j < i)
                        for j, o in enumerate(rows) if j != i)
        if not dominated:
            keep.append(r)
    return sorted(keep, key=lambda r: r[pareto.USER])


# --- frontiers --------------------------------------------------------------------------------
def _synthetic(points, series="helix"):
    rows = np.zeros(len(points), sweep.CONFIG_DTYPE)
    rows["strategy"] = series
    rows[pareto.USER] = [p[0] for p in points]
    rows[pareto.GPU] = [p[1] for p in points]
    rows["batch"] = [p[2] if len(p) > 2 else 1 for p in points]
    rows["ttl_s"] = 1.0 / rows[pareto.USER]
    return rows


def test_frontier_of_hand_checked_points():
    # (user, gpu): A(10,100) C(20,90) D(30,50) are optimal; E(5,90) < A, B(20,80) < C, F(30,50) = D twice
    rows = _synthetic([(10, 100), (20, 80), (20, 90), (30, 50), (5, 90), (30, 50)])
    front = pareto.frontier(rows)
    assert [(r[pareto.USER], r[pareto.GPU]) for r in front] == [(10, 100), (20, 90), (30, 50)]
    value, index = pareto.best_at(rows, pareto.GPU, np.array([1.0, 10.0, 10.5, 20.0, 30.0, 31.0]))
    np.testing.assert_array_equal(value, [100, 100, 90, 90, 50, -np.inf])
    assert index[-1] == -1


def test_gains_of_hand_checked_frontiers():
    helix = _synthetic([(10, 400, 40), (40, 100, 4), (60, 30, 1)], "helix")
    tp = _synthetic([(10, 100, 10), (30, 50, 2)], "tp")
    dp = _synthetic([(5, 300, 60), (20, 80, 1)], "dp-ep")
    result = pareto.compare(np.concatenate([helix, tp, dp]))
    # x <= 30 (the baselines' reach), breakpoints 5, 10, 20, 30; throughput helix / best baseline:
    # 400/300, 400/100, 100/80, 100/50 -> 4x at x = 10 (TTL 0.1 s) against tp's (10, 100)
    assert result["throughput_gain"] == pytest.approx(4.0)
    assert result["details"]["throughput"]["ttl_s"] == pytest.approx(0.1)
    assert result["details"]["throughput"]["baseline"]["strategy"] == "tp"
    # users (max batch) at interactivity >= x: 40/60, 40/10, 4/2, 4/2 -> 4x at x = 10
    assert result["batch_gain"] == pytest.approx(4.0)
    assert result["min_ttl_gain"] == pytest.approx(60 / 30)


def test_frontier_of_a_small_sweep_is_the_brute_force_one():
    spec = _spec("tiny", 200, max_gpus=2, max_batch=3, strategies=("tp", "helix"))
    configs = sweep.run_sweep(spec).configs
    assert len(_rows(configs, "tp")) == 6  # TP=1 and TP=2, batches 1..3: small enough to check by hand
    for series, front in pareto.frontiers(configs).items():
        expected = _brute_force_frontier(list(_rows(configs, series)))
        assert [tuple(r) for r in front] == [tuple(r) for r in expected], series
        assert np.all(np.diff(front[pareto.GPU]) < 0)  # more interactive -> less throughput


def test_frontiers_of_a_real_sweep_match_brute_force(tiny_sweep):
    for series, front in pareto.frontiers(tiny_sweep.configs).items():
        rows = _rows(tiny_sweep.configs, series)
        sample = rows[np.random.default_rng(0).choice(len(rows), min(len(rows), 300), replace=False)]
        expected = _brute_force_frontier(list(sample))
        assert [tuple(r) for r in pareto.frontier(sample)] == [tuple(r) for r in expected], series
        assert len(front) >= 1


# --- memory ----------------------------------------------------------------------------------
def test_configurations_that_do_not_fit_never_appear():
    small_hbm = dataclasses.replace(TOPO, gpu=dataclasses.replace(TOPO.gpu, hbm_bytes=2.0e6))
    spec = _spec("tiny-mla-moe", 3000, max_gpus=4, max_batch=24, topo=small_hbm)
    result = sweep.run_sweep(spec)
    present = {(r["strategy"], r["gpus"], r["kvp"], r["tpa"], r["tpf"], r["ep"], r["pp"], r["batch"]): r
               for r in result.configs}
    fits_count = misses = 0
    for cand in sweep.candidates(spec):
        if cand.pp > 1:
            continue  # pp-tp memory is checked against the stage formula below
        unit = cand.layout.world_size if cand.per_gpu_batch else 1
        for b in range(1, spec.max_batch // unit + 1):
            report = memory_report(spec.model, cand.layout, b * unit, spec.tokens, spec.precision, small_hbm,
                                   spec.tokens_per_block, spec.kv_precision)
            key = (cand.series.encode(), cand.gpus, cand.layout.kvp, cand.layout.tpa, cand.layout.tpf,
                   cand.layout.ep, 1, b * unit)
            assert (key in present) == report["fits"], key
            if report["fits"]:
                fits_count += 1
                assert present[key]["memory_bytes"] == pytest.approx(report["max_total_bytes"], rel=1e-12)
            else:
                misses += 1
    assert fits_count > 20 and misses > 20  # the test exercises both sides
    assert np.all(result.configs["memory_bytes"] <= small_hbm.gpu.hbm_bytes)


def test_pp_stage_memory_is_the_busiest_stage():
    model = MODEL_PRESETS["deepseek-r1"]
    layout = Layout(1, 8, 8, 1, Strategy.TP)
    classes = sweep.shard_classes(model, layout, 1_000_001, 16)
    full = sweep.peak_memory(model, classes, np.array([3.0]), "fp4", pp=1, kv_precision="fp4")[0]
    assert full == pytest.approx(memory_report(model, layout, 3, 1_000_001, "fp4", TOPO, 16)["max_total_bytes"])
    # 61 layers over 4 stages: 16, 15, 15, 15; stage 0 holds the 3 dense layers + 13 MoE layers
    stage0 = max(w + 12 * kv for w, kv in (sweep.class_memory(model, c, range(16), "fp4") for c in classes))
    assert sweep.peak_memory(model, classes, np.array([12.0]), "fp4", pp=4)[0] == pytest.approx(stage0)


# --- agreement with the emulator's analytic model ---------------------------------------------------
def test_sweep_ttl_equals_step_time_on_every_strategy(tiny_sweep):
    rng = random.Random(0)
    spec = tiny_sweep.spec
    for series in sweep.SERIES:
        rows = _rows(tiny_sweep.configs, series)
        assert len(rows) > 0, series
        for row in rng.sample(list(rows), min(8, len(rows))):
            assert row["ttl_s"] == pytest.approx(_reference_ttl(spec, row), rel=REL), (series, row)
            assert row[pareto.GPU] == pytest.approx(row["batch"] / row["ttl_s"] / row["gpus"], rel=1e-12)


@pytest.mark.parametrize("model, strategies", [
    ("deepseek-r1", ("helix", "helix-no-hopb", "tp", "pp-tp", "dp-ep")),
    ("llama-3.1-405b", ("helix", "helix-no-hopb", "tp", "pp-tp", "kvp")),
])
def test_real_models_at_1m_tokens_agree_with_step_time(model, strategies):
    spec = _spec(model, 1_000_000, max_gpus=72, max_batch=48, strategies=strategies)
    rng, configs = random.Random(1), sweep.run_sweep(spec).configs
    for series in strategies:
        rows = [r for r in _rows(configs, series) if r["batch"] <= 24 and r["gpus"] <= 64]
        assert rows, series
        for row in rng.sample(rows, min(3, len(rows))):
            assert row["ttl_s"] == pytest.approx(_reference_ttl(spec, row), rel=REL), (series, row)


def _model_cli(model, row, context, tokens_per_block=16):
    layout = _layout(row)
    args = ["model", "--model", model, "--gpus", str(layout.world_size), "--batch", str(int(row["batch"])),
            "--context", str(context), "--strategy", layout.strategy.value, "--kvp", str(layout.kvp),
            "--tpa", str(layout.tpa), "--ep", str(layout.ep), "--tokens-per-block", str(tokens_per_block), "--json"]
    args.append("--hopb" if row["hopb"] else "--no-hopb")
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    return json.loads(done.output)


def test_sweep_agrees_with_the_model_command(tiny_sweep):
    rng = random.Random(2)
    for series in ("helix", "helix-no-hopb", "tp", "kvp", "dp-ep"):
        row = rng.choice(list(_rows(tiny_sweep.configs, series)))
        out = _model_cli("tiny-mla-moe", row, tiny_sweep.spec.context)
        assert out["ttl_s"] == pytest.approx(row["ttl_s"], rel=REL), series
        assert out["tokens_per_s_per_gpu"] == pytest.approx(row[pareto.GPU], rel=REL)
        assert out["fits"] and out["memory"]["max_total_bytes"] == pytest.approx(row["memory_bytes"], rel=1e-12)


def test_deepseek_helix_point_agrees_with_the_model_command():
    spec = _spec("deepseek-r1", 1_000_000, max_gpus=16, max_batch=6, strategies=("helix",))
    rows = _rows(sweep.run_sweep(spec).configs, "helix")
    row = rows[(rows["gpus"] == 16) & (rows["ep"] == 16) & (rows["batch"] == 5)][0]
    assert _model_cli("deepseek-r1", row, 1_000_000)["ttl_s"] == pytest.approx(row["ttl_s"], rel=REL)


# --- PP and what-ifs ----------------------------------------------------------------------------
def test_pp_tp_is_tp_stages_in_sequence_plus_sends():
    model = MODEL_PRESETS["llama-3.1-405b"]
    spec = _spec("llama-3.1-405b", 1_000_000, max_gpus=72, max_batch=64, strategies=("pp-tp",), kv_precision="fp4")
    pp = _rows(sweep.run_sweep(spec).configs, "pp-tp")
    pp3 = pp[(pp["pp"] == 3) & (pp["tpa"] == 8)]
    assert len(pp3) > 5 and pp3["batch"].max() > 3 * 8  # TP=8 alone holds at most 8 requests' KV
    tp8 = Layout(1, 8, 8, 1, Strategy.TP)
    for row in pp3[::4]:
        micro = int(row["batch"]) // 3
        run = RunConfig(batch=micro, context=spec.context, steps=1, layers=1, precision="fp4")
        kv = [local_kv_lengths(tp8, run, r, 0) for r in range(8)]
        send = spec.time_model.send_seconds(micro * model.hidden_size * ACTIVATION_BYTES)  # one peer
        ttl = step_time(model, tp8, kv, spec.implementation(), False, TOPO) + 2 * send
        assert row["ttl_s"] == pytest.approx(ttl, rel=REL)
        assert row[pareto.GPU] == pytest.approx(3 * micro / row["ttl_s"] / 24, rel=1e-12)  # 3 micro-batches in flight


def test_chunked_chain_reduces_to_the_plan_and_to_one_exchange():
    model, spec = MODEL_PRESETS["deepseek-r1"], _spec("deepseek-r1", 1_000_000)
    layout = Layout(64, 1, 64, 1, Strategy.HELIX)
    classes, timer = sweep.shard_classes(model, layout, spec.tokens, 16), spec.time_model
    per_request, whole_batch = (BatchLayerTime(model, layout, classes, 5, hopb, timer, chunk)
                                for hopb, chunk in ((True, 1), (False, 0)))
    one_chunk = BatchLayerTime(model, layout, classes, 5, True, timer, 2 ** 40)  # a chunk larger than any batch
    attn, a2a = [plan[1] for plan in per_request.plans[0]], per_request.plans[0][0][2]
    t0 = np.zeros((len(classes), 4))
    b = np.array([1.0, 2.0, 7.0, 40.0])
    ta = np.array([timer.op_seconds(op) for op in attn])
    tc = timer.op_seconds(a2a)
    for hopb in (True, False):
        per_request.hopb = hopb
        np.testing.assert_allclose(per_request._chain(t0, 1, b), uniform_chain_end(t0, ta, tc, b, hopb), rtol=1e-12)
    # whole batch at once: one attention kernel over B requests, then one all-to-all of B partials
    whole = whole_batch._chain(t0, 1, b)
    slowest = max(attn, key=lambda op: op.hbm_bytes)
    expected = [timer.kernels_seconds([dataclasses.replace(slowest.kernels[0], batch=k)])
                + timer.collective_seconds(Collective.ALL_TO_ALL, k * a2a.nbytes, 64) for k in b]
    np.testing.assert_allclose(whole, expected, rtol=1e-12)
    np.testing.assert_allclose(one_chunk._chain(t0, 1, b), whole, rtol=1e-12)  # one chunk: HOP-B has nothing to hide
    assert whole[-1] < uniform_chain_end(t0, ta, tc, b, True)[-1] / 5  # per-request latency dominates at B = 40


def test_latency_what_ifs_scale_only_their_terms():
    whatif = sweep.WhatIf(a2a_latency_scale=0.0, reduce_latency_scale=0.5)
    plain, scaled = _spec().time_model, _spec(whatif=whatif).time_model
    size, latency = 9000.0, plain.collective_seconds(Collective.ALL_TO_ALL, 0.0, 10)
    assert scaled.collective_seconds(Collective.ALL_TO_ALL, size, 10) == pytest.approx(
        plain.collective_seconds(Collective.ALL_TO_ALL, size, 10) - latency)  # only the latency is gone
    reduce_latency = plain.collective_seconds(Collective.ALL_REDUCE, 0.0, 8)
    assert scaled.collective_seconds(Collective.ALL_REDUCE, 1e6, 8) == pytest.approx(
        plain.collective_seconds(Collective.ALL_REDUCE, 1e6, 8) - reduce_latency / 2)
    plan = sweep.run_sweep(_spec(strategies=("helix",), max_batch=8)).configs
    faster = sweep.run_sweep(_spec(strategies=("helix",), max_batch=8, whatif=whatif)).configs
    assert len(plan) == len(faster) and np.all(faster["ttl_s"] < plan["ttl_s"])
    with pytest.raises(ValueError, match="a2a-chunk"):
        sweep.WhatIf(a2a_chunk=-1)


# --- command line ----------------------------------------------------------------------------
def test_sweep_and_pareto_commands(tmp_path):
    out, png = tmp_path / "s.h5", tmp_path / "p.png"
    runner = CliRunner()
    done = runner.invoke(cli, ["sweep", "--model", "tiny-mla-moe", "--context", "300", "--max-gpus", "8",
                               "--max-batch", "40", "-o", str(out), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary["configs"] >= summary["fitting"] > 0 and out.exists()
    data = sweep.read_sweep(out)
    for series, front in data.frontiers.items():  # the saved frontier is the frontier of the saved configs
        np.testing.assert_array_equal(front, pareto.frontier(_rows(data.configs, series)))
    done = runner.invoke(cli, ["pareto", str(out), "-o", str(png), "--json"])
    assert done.exit_code == 0, done.output
    ratios = json.loads(done.output)
    for key in ("throughput_gain", "batch_gain", "min_ttl_gain"):
        assert ratios[key] > 0 and ratios[key + "_no_hopb"] > 0
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["sweep", "--model", "tiny", "--strategies", "helix,tpp"], "unknown strategy 'tpp'"),
    (["sweep", "--model", "tiny", "--max-gpus", "0"], "--max-gpus must be >= 1"),
    (["sweep", "--model", "tiny", "--a2a-latency-scale", "-1"], "--a2a-latency-scale must be >= 0"),
    (["sweep", "--model", "nope"], "unknown model 'nope'"),
    (["pareto", "missing.h5"], "missing.h5: no such file"),
    (["sweep", "--model", "tiny", "-o", "/no/such/folder/s.h5"], "cannot write /no/such/folder/s.h5"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    done = CliRunner().invoke(cli, [*args] if "-o" in args else [*args, "-o", str(tmp_path / "x")])
    assert done.exit_code == 2
    lines = [line for line in done.output.splitlines() if line.startswith("helix-mpi: error:")]
    assert len(lines) == 1 and message in lines[0], done.output


@pytest.mark.parametrize("chunk", [0, 3])
def test_sweep_a2a_chunk_equals_the_plan(chunk):
    """The sweep's --a2a-chunk what-if is the plan's a2a_chunk, timed by the analytic model."""
    spec = dataclasses.replace(_spec("deepseek-r1", 1_000_000, max_gpus=16, max_batch=8, strategies=("helix",)),
                               whatif=sweep.WhatIf(a2a_chunk=chunk))
    rows = _rows(sweep.run_sweep(spec).configs, "helix")
    model = MODEL_PRESETS["deepseek-r1"]
    for row in rows[(rows["gpus"] == 16) & (rows["batch"] >= 5)][:3]:
        layout = _layout(row)
        run = RunConfig(batch=int(row["batch"]), context=spec.context, steps=1, layers=1, precision="fp4")
        kv = [local_kv_lengths(layout, run, r, 0) for r in range(layout.world_size)]
        expected = step_time(model, layout, kv, spec.implementation(), bool(row["hopb"]), TOPO, a2a_chunk=chunk)
        assert row["ttl_s"] == pytest.approx(expected, rel=REL)
