"""`helix-mpi advise` and SLO-aware admission: the answer is the best configuration of the sweep
under the target (checked against the sweep itself), the JSON has the promised keys, and the
served-trace search finds the fewest GPUs (checked by simulating the smaller counts)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli
from helix_mpi import advise as adv
from helix_mpi import pareto, sweep
from helix_mpi.cli import cli
from helix_mpi.config import MODEL_PRESETS, Layout, make_layout
from helix_mpi.serving import ServingSetup, serve, simulate
from helix_mpi.topology import load_topology
from helix_mpi.workload import load_workload

TOPO = load_topology("gb200-nvl72")
SAMPLE = str(Path(__file__).resolve().parent.parent / "traces" / "mooncake_conversation_sample.jsonl")
ARGS = ["advise", "--model", "llama-3.1-8b", "--context", "128K", "--gpus-max", "8", "--max-batch", "64", "-q"]


def _json(args):
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def configs():
    spec = sweep.SweepSpec(MODEL_PRESETS["llama-3.1-8b"], TOPO, 128_000, max_gpus=8, max_batch=64,
                           strategies=adv.ADVISE_SERIES)
    return sweep.run_sweep(spec).configs


def test_best_is_the_most_throughput_within_the_ttl_budget(configs):
    budget = float(np.median(configs["ttl_s"]))
    data = _json([*ARGS, "--ttl-max", str(budget)])
    assert list(data["best"]) == list(adv.BEST_KEYS) and list(data["best_baseline"]) == list(adv.BEST_KEYS)
    meets = configs[configs["ttl_s"] <= budget]
    assert data["best"]["ttl_s"] <= budget
    assert data["best"]["tokens_per_s_per_gpu"] == pytest.approx(meets["tokens_per_s_per_gpu"].max(), rel=1e-12)
    baselines = meets[np.isin(meets["strategy"], [s.encode() for s in sweep.BASELINES])]
    assert data["best_baseline"]["strategy"] in sweep.BASELINES
    assert data["best_baseline"]["tokens_per_s_per_gpu"] == pytest.approx(baselines["tokens_per_s_per_gpu"].max())
    helix = meets[meets["strategy"] == b"helix"]
    assert data["helix_gain"] == pytest.approx(helix["tokens_per_s_per_gpu"].max()
                                               / baselines["tokens_per_s_per_gpu"].max())
    assert data["configs_meeting_target"] == len(meets)
    for rows in data["strategies"].values():  # each strategy's layouts: meeting the target, best first
        tput = [r["tokens_per_s_per_gpu"] for r in rows["ranked"]]
        assert tput == sorted(tput, reverse=True) and all(r["ttl_s"] <= budget for r in rows["ranked"])


def test_first_line_names_the_best_and_the_comparison(configs):
    budget = float(np.median(configs["ttl_s"]))
    result = CliRunner().invoke(cli, [*ARGS, "--ttl-max", str(budget)])
    first = result.stdout.splitlines()[0]
    data = _json([*ARGS, "--ttl-max", str(budget)])
    best = data["best"]
    assert first.startswith(f"best: {best['strategy']} on {best['gpus']} GPUs")
    assert f"batch {best['batch']}" in first and "tokens/s/user" in first and "GB/GPU" in first
    assert ("non-Helix" in first) if best["strategy"] == "helix" else ("best Helix" in first)
    assert "Pareto frontier" in result.stdout and "best layouts per strategy" in result.stdout
    marked = [line for line in result.stdout.splitlines() if line.lstrip().startswith(">*")]
    assert len(marked) == 1 and f" {best['batch']} " in marked[0]  # the answer, shown on the frontier


def test_other_objectives_and_the_throughput_floor(configs):
    floor = float(np.percentile(configs["tokens_per_s_per_gpu"], 75))
    data = _json([*ARGS, "--min-throughput", str(floor)])  # objective: lowest TTL
    meets = configs[configs["tokens_per_s_per_gpu"] >= floor]
    assert data["objective"] == "ttl" and data["best"]["ttl_s"] == pytest.approx(meets["ttl_s"].min())
    budget = float(np.percentile(configs["ttl_s"], 30))
    fewest = _json([*ARGS, "--ttl-max", str(budget), "--objective", "gpus"])
    assert fewest["best"]["gpus"] == configs[configs["ttl_s"] <= budget]["gpus"].min()


def test_no_configuration_meets_an_impossible_target():
    result = CliRunner().invoke(cli, [*ARGS, "--ttl-max", "1e-6"])
    assert result.exit_code == 0
    assert result.stdout.startswith("no configuration meets the target (most tokens/s/GPU with TTL <= 0.001 ms)")
    assert "misses the target: its lowest TTL is" in result.stdout


def test_frontier_csv_is_the_pareto_frontier(tmp_path, configs):
    path = tmp_path / "frontier.csv"
    data = _json([*ARGS, "--ttl-max", "0.01", "--csv", str(path)])
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    expected = pareto.frontier(configs)
    assert len(rows) == len(expected) == len(data["frontier"])
    assert [float(r["tokens_per_s_per_gpu"]) for r in rows] == pytest.approx(expected["tokens_per_s_per_gpu"].tolist())
    assert all((r["meets_target"] == "True") == (float(r["ttl_s"]) <= 0.01) for r in rows)


def test_context_distribution_sizes_for_the_tail():
    data = _json(["advise", "--model", "llama-3.1-8b", "--context", "p50:32K,p99:128K", "--gpus-max", "8",
                  "--max-batch", "64", "--ttl-max", "0.01", "-q"])
    assert data["context"] == 128_000 and data["context_points"] == {"p50": 32_000, "p99": 128_000}
    ttl = data["ttl_by_context"]["best"]
    assert ttl["p99"] == pytest.approx(data["best"]["ttl_s"], rel=1e-12) and ttl["p50"] < ttl["p99"]


def test_context_from_a_trace_file():
    spec = adv.parse_context(SAMPLE, context_scale=8)
    w = load_workload(SAMPLE, context_scale=8)
    lengths = [r.input_tokens + r.output_tokens for r in w.requests]
    assert [label for label, _ in spec.points] == ["p50", "p90", "p99"]
    assert spec.design == int(np.percentile(lengths, 99, method="higher"))


@pytest.mark.parametrize("args, fragment", [
    (["--context", "p50:1M,p99:64K"], "must not decrease"),
    (["--context", "median:1M"], "QUANTILE:TOKENS"),
    (["--ttl-max", "-1"], "--ttl-max must be > 0"),
    (["--strategies", "helix,foo"], "unknown strategy 'foo'"),
    (["--workload", SAMPLE], "--workload needs --ttl-slo"),
    (["--ttl-slo", "0.01"], "--ttl-slo goes with --workload"),
])
def test_bad_advise_input_is_one_line(args, fragment):
    done = run_cli([*ARGS, *args], timeout=60)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("helix-mpi: error:") and fragment in lines[0], done.stderr


# --- SLO-aware admission -----------------------------------------------------------------------
LLAMA = MODEL_PRESETS["llama-3.1-8b"]


def _workload(n=30):
    return load_workload(SAMPLE, first=n, context_scale=4.0, time_scale=0.02, output_scale=0.2)


def test_slo_admission_keeps_p99_within_the_slo():
    w, layout = _workload(), make_layout(LLAMA, 2, 2, 1)
    free = serve(w, LLAMA, layout, TOPO)
    alone = serve(w, LLAMA, layout, TOPO, max_batch=1)
    slo = 0.5 * (alone["ttl_p99"] + free["ttl_p99"])
    assert alone["ttl_p99"] < slo < free["ttl_p99"]  # batching costs latency here; the SLO is between
    held = serve(w, LLAMA, layout, TOPO, ttl_slo=slo)
    assert held["ttl_p99"] <= slo and held["ttl_slo_met"] and held["slo_held_steps"] > 0
    assert held["max_batch"] < free["max_batch"] and held["admission_wait_p99_s"] > free["admission_wait_p99_s"]
    assert free["ttl_slo_s"] is None and free["slo_held_steps"] == 0


def test_slo_admission_is_in_model_json_and_text():
    args = ["model", "--model", "llama-3.1-8b", "--gpus", "2", "--kvp", "2", "--tpa", "1", "--workload", SAMPLE,
            "--first", "30", "--context-scale", "4", "--time-scale", "0.02", "--output-scale", "0.2", "--ttl-slo", "0.004"]
    data = _json(args)
    assert {"ttl_p99", "tokens_per_s_per_gpu", "queue_mean_s", "queue_p99_s", "admission_wait_p99_s",
            "ttl_slo_s", "ttl_slo_met", "slo_held_steps"} <= set(data)
    assert data["ttl_slo_s"] == 0.004
    text = CliRunner().invoke(cli, args).stdout
    assert "TTL SLO 4 ms" in text


def test_emulated_serving_admits_as_the_analytic_one(tmp_path):
    options = ["--model", "tiny", "--kvp", "2", "--tpa", "1", "--workload", SAMPLE, "--first", "12",
               "--context-scale", "0.01", "--output-scale", "0.02", "--time-scale", "0.0002",
               "--tokens-per-block", "4", "--kv-transfer", "none", "--json"]
    free = _json(["model", "--gpus", "2", *options])
    slo = str(0.995 * free["ttl_p50"])  # binds: held requests wait
    analytic = _json(["model", "--gpus", "2", *options, "--ttl-slo", slo])
    done = run_cli(["run", "-n", "2", *options, "--ttl-slo", slo, "-o", str(tmp_path / "s.h5")])
    assert done.returncode == 0, done.stderr[-2000:]
    emulated = json.loads(done.stdout.strip().splitlines()[-1])
    assert emulated["slo_held_steps"] == analytic["slo_held_steps"] > 0
    assert emulated["ttl_slo_s"] == float(slo) and emulated["max_batch"] == analytic["max_batch"]
    assert emulated["ttl_p99"] == pytest.approx(analytic["ttl_p99"], rel=1e-9)


# --- the served-trace search -------------------------------------------------------------------
def test_fewest_gpus_for_a_trace_is_the_fewest():
    w = _workload(20)
    free1 = serve(w, LLAMA, make_layout(LLAMA, 1, None, None, "tp"), TOPO)
    slo = 0.7 * free1["ttl_p50"]  # one GPU cannot keep this TTL for a batch: more GPUs are needed
    result = adv.advise_workload(w, LLAMA, TOPO, slo, gpus_max=8, queue_max=5.0)
    best = result.best
    assert best is not None and best.ok and best.metrics["ttl_p99"] <= slo
    assert best.metrics["admission_wait_p99_s"] <= 5.0
    data = result.to_dict()
    assert list(data["best"]) == list(adv.BEST_KEYS) and data["best"]["gpus"] == best.gpus
    # every layout on fewer GPUs fails (brute force over all of them, not only those the search tried)
    for n in range(1, best.gpus):
        for strategy in ("helix", "tp", "kvp"):
            for layout in _layouts(n, strategy):
                setup = ServingSetup(LLAMA, layout, TOPO, ttl_slo=slo)
                sched = simulate(w, setup, give_up=adv._give_up(5.0, len(w) - int(np.ceil(0.99 * len(w)))))
                if sched.done:
                    m = sched.metrics()
                    assert m["ttl_p99"] > slo or m["admission_wait_p99_s"] > 5.0, (n, layout)


def _layouts(n, strategy):
    series = {"helix": sweep.HELIX, "tp": sweep.TP, "kvp": sweep.KVP}[strategy]
    return [lay for lay, _ in sweep._layouts(series, LLAMA, n) if sweep._valid(LLAMA, lay)]


def test_advise_workload_cli(tmp_path):
    done = run_cli(["advise", "--model", "llama-3.1-8b", "--workload", SAMPLE, "--first", "20", "--context-scale",
                    "4", "--time-scale", "0.02", "--output-scale", "0.2", "--ttl-slo", "0.005", "--gpus-max", "4",
                    "--json"], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["best"]["ttl_s"] <= 0.005 and data["ttl_slo_s"] == 0.005 and data["tried"]
    assert "simulating" in done.stderr  # progress while it searches


def test_layout_keys_round_trip():
    row = np.zeros(1, sweep.CONFIG_DTYPE)[0]
    row["strategy"], row["gpus"], row["kvp"], row["tpa"], row["tpf"], row["ep"], row["pp"] = b"dp-ep", 8, 1, 1, 1, 8, 1
    row["batch"] = 16
    cand, per_unit = adv._candidate(row)
    assert cand.layout == Layout(1, 1, 1, 8, cand.layout.strategy) and per_unit == 2
