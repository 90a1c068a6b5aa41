"""Trace-driven serving on the emulator equals the float64 reference, under real mpiexec.

Requests join mid-run (arrivals on the modeled clock), queue when the KV capacity or the batch cap
is reached, decode a ragged batch (each request its own context, position and round-robin
placement) and leave, freeing their KV slots for later requests. Each request is checked against
the reference decoding it alone (runner.reference_serving, teacher-forced; tolerance
REFERENCE_TOLERANCE). Run directly: `mpiexec -n 4 python -m mpi4py tests/test_serving_mpi.py`.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helix_mpi.config import RunConfig, load_model, make_layout  # noqa: E402
from helix_mpi.runner import REFERENCE_TOLERANCE, run_serving  # noqa: E402
from helix_mpi.serving import ServingSetup, serve  # noqa: E402
from helix_mpi.topology import load_topology  # noqa: E402
from helix_mpi.workload import Request, Workload  # noqa: E402

TOPO = load_topology("gb200-nvl72")
# (arrival s, prompt tokens, output tokens): a tiny model's step takes ~0.1-0.3 ms, so requests
# arrive while others decode; prompts are ragged (0, not multiples of KVP x block) and the KV
# capacity below makes some wait for others to leave.
REQUESTS = [(0.0, 37, 5), (0.0, 10, 3), (1e-4, 64, 4), (2e-4, 0, 6), (3e-4, 21, 2), (3.5e-4, 50, 5),
            (9e-4, 13, 3), (2e-3, 5, 2)]
WORKLOAD = Workload(tuple(Request(3 * i + 1, *r) for i, r in enumerate(REQUESTS)), "test_serving_mpi")


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    strategy: str
    kvp: int | None = None
    tpa: int | None = None
    ep: int | None = None


CASES = [
    Case("gqa-helix-kvp2-tpa2", "tiny", "helix", 2, 2),
    Case("mla-moe-helix-kvp4-ep2", "tiny-mla-moe", "helix", 4, 1, 2),
    Case("gqa-tp4", "tiny", "tp"),
    Case("mla-moe-dp-ep4", "tiny-mla-moe", "dp-ep"),
    Case("gqa-kvp-baseline-2x2", "tiny", "kvp", 2, 2),
]


def serve_case(comm, case: Case) -> dict:
    """Serve WORKLOAD on `comm`; rank 0 returns its checks (and asserts them)."""
    model = load_model(case.model)
    n = comm.Get_size()
    layout = make_layout(model, n, case.kvp if n > 1 else None, case.tpa if n > 1 else None, case.strategy,
                         case.ep if n > 1 else None)
    run = RunConfig(layers=model.num_layers, tokens_per_block=4)
    options = dict(tokens_per_block=4, max_batch=4, kv_transfer="nvlink", kv_capacity_tokens=80)
    setup = ServingSetup(model, layout, TOPO, **options)
    outcome = run_serving(comm, model, layout, run, TOPO, WORKLOAD, setup, check=True)
    if comm.Get_rank() != 0:
        return {}
    m, result = outcome.metrics, outcome.result
    assert outcome.reference_error <= REFERENCE_TOLERANCE, (case.name, outcome.reference_error)
    assert m["generated_tokens"] == sum(r[2] for r in REQUESTS) and m["kv_tokens_at_end"] == 0
    assert result.kv_tokens_left == 0  # every slot freed
    assert m["queue_s"].max() > 0 and len(set(m["batch_size"].tolist())) > 1  # joined and left mid-run
    analytic = serve(WORKLOAD, model, layout, TOPO, **options)
    return {"case": case.name, "error": outcome.reference_error, "slots": result.slots,
            "served": result.requests_served, "steps": m["steps"],
            "ttl_vs_analytic": float(np.max(np.abs(m["ttl_s"] / analytic["ttl_s"] - 1))),
            "dense": model.moe is None}


def check_results(results: list[dict]) -> None:
    for r in results:
        assert r["error"] <= REFERENCE_TOLERANCE, r
        if r["dense"]:  # same scheduler and plans: the emulated clock is the analytic one
            assert r["ttl_vs_analytic"] < 1e-9, r
    # slots are reused: fewer slots than requests served on rank 0 (helix/tp: it serves all 8)
    assert any(r["slots"] < r["served"] for r in results), results


def test_one_rank_on_comm_self():
    from mpi4py import MPI

    result = serve_case(MPI.COMM_SELF, CASES[0])
    check_results([result])
    assert result["slots"] < result["served"] == len(REQUESTS)


@pytest.mark.mpich
def test_served_workload_matches_reference_on_4_ranks():
    from conftest import run_mpi

    done = run_mpi(4, [str(Path(__file__).resolve())])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert [r["case"] for r in results] == [c.name for c in CASES]
    check_results(results)


def test_run_workload_cli_writes_serving_trace(tmp_path):
    import h5py

    from conftest import run_cli

    path = tmp_path / "served.h5"
    sample = str(Path(__file__).resolve().parent.parent / "traces" / "mooncake_conversation_sample.jsonl")
    done = run_cli(["run", "-n", "4", "--kvp", "4", "--tpa", "1", "--workload", sample,
                    "--first", "10", "--context-scale", "0.01", "--output-scale", "0.02", "--time-scale", "0.0002",
                    "--tokens-per-block", "4", "--max-batch", "6", "--kv-transfer", "none", "-o", str(path), "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"ttl_p50", "ttl_p90", "ttl_p99", "tokens_per_s_per_gpu", "max_batch", "steps_per_host_s"} <= set(data)
    assert data["reference_error"] <= REFERENCE_TOLERANCE and data["requests"] == 10 and data["max_batch"] <= 6
    assert len(data["per_request"]["ttl_s"]) == 10
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"]) and json.loads(f.attrs["serving"])["ttl_p99"] == data["ttl_p99"]
        served = f["serving/requests"]
        assert served["ttl_s"].shape == (10,) and (served["last_token_s"][...] >= served["first_token_s"][...]).all()
        # the ranks' real caches (/kv_tokens) hold what the scheduler accounted for at every step
        np.testing.assert_array_equal(f["kv_tokens"][...], f["serving/steps/kv_tokens"][...])
        assert f["kv_tokens"].shape == (data["steps"], 4)


def test_served_requests_exchanged_in_one_all_to_all(tmp_path):
    """--a2a-chunk 0 with --workload: one exchange per layer for the whole ragged batch, on the
    emulator (checked against the reference) and in the analytic model."""
    from conftest import run_cli

    sample = str(Path(__file__).resolve().parent.parent / "traces" / "mooncake_conversation_sample.jsonl")
    options = ["--workload", sample, "--first", "8", "--context-scale", "0.01", "--output-scale", "0.02",
               "--time-scale", "0.0002", "--tokens-per-block", "4", "--kv-transfer", "none", "--json"]
    emulated = {}
    for chunk in ("1", "0"):
        done = run_cli(["run", "-n", "4", "--kvp", "4", "--tpa", "1", "--a2a-chunk", chunk, *options,
                        "-o", str(tmp_path / f"c{chunk}.h5")])
        assert done.returncode == 0, done.stderr[-3000:]
        emulated[chunk] = json.loads(done.stdout.strip().splitlines()[-1])
        assert emulated[chunk]["reference_error"] <= REFERENCE_TOLERANCE
    assert emulated["0"]["ttl_p50"] < emulated["1"]["ttl_p50"]  # fewer all-to-all latencies per step
    analytic = run_cli(["model", "--gpus", "4", "--kvp", "4", "--tpa", "1", "--a2a-chunk", "0", *options])
    assert analytic.returncode == 0, analytic.stderr
    assert json.loads(analytic.stdout)["max_batch"] >= 1


def main() -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    results = [serve_case(comm, case) for case in CASES]
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "results": results}))


if __name__ == "__main__":
    main()


def test_summarize_of_a_served_trace_shows_what_run_printed(tmp_path):
    """One definition of every figure: `summarize` recomputes the serving figures from the trace's
    records with the code `run` used, and prints the same lines."""
    import h5py

    from conftest import run_cli

    path = tmp_path / "served.h5"
    sample = str(Path(__file__).resolve().parent.parent / "traces" / "mooncake_conversation_sample.jsonl")
    done = run_cli(["run", "-n", "4", "--kvp", "2", "--tpa", "2", "--workload", sample, "--first", "10",
                    "--context-scale", "0.01", "--output-scale", "0.03", "--time-scale", "0.0002",
                    "--tokens-per-block", "4", "--max-batch", "5", "--ttl-slo", "1", "-o", str(path)])
    assert done.returncode == 0, done.stderr[-3000:]
    shown = run_cli(["summarize", str(path)])
    assert shown.returncode == 0, shown.stderr

    def serving_lines(text: str) -> list[str]:
        heads = ("served ", "TTL p50", "queue mean", "tokens/s/GPU ", "KV imbalance", "TTL SLO")
        return [line for line in text.splitlines() if line.startswith(heads)]

    assert len(serving_lines(done.stdout)) == 6
    assert serving_lines(shown.stdout) == serving_lines(done.stdout)
    data = json.loads(run_cli(["summarize", str(path), "--json"]).stdout)
    with h5py.File(path, "r") as f:
        printed = json.loads(f["summary"].attrs["json"])  # the JSON `run` printed
    for key in ("ttl_p50", "ttl_p90", "ttl_p99", "queue_mean_s", "queue_p99_s", "admission_wait_p99_s",
                "tokens_per_s_per_gpu", "max_batch", "mean_batch", "makespan_s", "steps", "generated_tokens",
                "kv_capacity_tokens_per_gpu", "ttl_slo_s", "slo_held_steps"):
        assert data[key] == printed[key], key
    assert "ttl_s" not in data and "tokens_per_s_per_user" not in data  # a fixed batch's figures: not shown
