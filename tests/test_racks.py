"""Several NVLink domains: where a group's ranks sit changes what its collectives cost
(placement from the mesh's rank order), pipeline sends that leave a domain take the network, and
--racks bounds the GPUs of a layout and sets the sweep's range."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import call_cli
from helix_mpi.axes import Axis
from helix_mpi.config import Implementation, Layout, Strategy
from helix_mpi.costmodel import collective_seconds, ranks_per_domain
from helix_mpi.mesh import group_stride, stage_crossings
from helix_mpi.timing import TimeModel
from helix_mpi.topology import TopologyError, load_topology
from test_costmodel import DOMAIN, NET, TOY, US

B200 = load_topology("dgx-b200")  # 8-GPU NVLink domains, measured tables


def test_group_stride_follows_the_rank_order():
    layout = Layout(kvp=4, tpa=2, tpf=4, ep=2, strategy=Strategy.HELIX)  # r = tpa*KVP + kvp = ep*TPF + tpf
    assert group_stride(layout, (Axis.KVP,)) == 1
    assert group_stride(layout, (Axis.TPA,)) == 4  # KVP apart
    assert group_stride(layout, (Axis.KVP, Axis.TPA)) == 1
    assert group_stride(layout, (Axis.TPF,)) == 1
    assert group_stride(layout, (Axis.EP,)) == 4  # TPF apart
    assert group_stride(layout, ()) == 1


def test_ranks_per_domain():
    assert ranks_per_domain(4, 1, 72) == 4  # packed
    assert ranks_per_domain(8, 18, 72) == 4  # 4 per rack, 2 racks
    assert ranks_per_domain(4, 72, 72) == 1  # one per rack
    assert ranks_per_domain(4, 200, 72) == 1
    assert ranks_per_domain(144, 1, 72) == 72


def test_a_spread_group_pays_the_network_hand_computed():
    """4 ranks one per domain (stride = D) on the toy topology (spec formulas): no NVLink part, an
    all-reduce across 4 domains as the faster of a ring and NCCL's tree on the scale-out network."""
    size, m, latency = 4e6, 4, 3 * US
    ring = 2 * (m - 1) * latency + 2 * (m - 1) / m * size / NET
    tree = 2 * np.ceil(np.log2(m)) * latency + 2 * size / NET
    spread, _ = collective_seconds("all_reduce", size, 4, TOY, stride=DOMAIN)
    assert float(spread) == pytest.approx(min(ring, tree))
    packed, _ = collective_seconds("all_reduce", size, 4, TOY, stride=1)
    assert float(packed) < float(spread) / 5  # NVLink is 10x the network here
    gather, _ = collective_seconds("all_gather", size, 4, TOY, stride=DOMAIN)
    assert float(gather) == pytest.approx((m - 1) * latency + (m - 1) / m * size / NET)


def test_placement_changes_the_calibrated_cost_and_one_rank_costs_nothing():
    for op in ("all_reduce", "all_gather", "all_to_all"):
        packed, _ = collective_seconds(op, 65536, 4, B200, "nccl", stride=1)
        half, _ = collective_seconds(op, 65536, 4, B200, "nccl", stride=4)  # 2 per node, 2 nodes
        spread, _ = collective_seconds(op, 65536, 4, B200, "nccl", stride=8)  # one per node
        assert float(packed) < float(half) and float(packed) < float(spread), op
        assert collective_seconds(op, 65536, 1, B200, "nccl", stride=8)[0] == 0.0


def test_pipeline_sends_that_leave_a_domain_use_the_network():
    assert stage_crossings(4, 8, 8) == 3 and stage_crossings(4, 2, 8) == 0 and stage_crossings(8, 2, 8) == 1
    timer = TimeModel(B200, Implementation())
    nvlink, network = float(timer.send_seconds(1 << 20)), float(timer.send_seconds(1 << 20, across_domains=True))
    assert network > nvlink
    assert float(timer.pipeline_sends_seconds(8, 2, 1 << 20)) == pytest.approx(6 * nvlink + network)


def test_a_strided_group_of_a_plan_pays_the_network(tmp_path):
    """KVP-only (Medha-style) on 8 GPUs, KVP=4 TPA=2: the FFN all-reduce runs over the TPA pair,
    ranks 4 apart. In GB200's 72-GPU domain the pair shares NVLink; with 4-GPU domains each member
    sits in another domain and the same all-reduce crosses the network."""
    gb200 = load_topology("gb200-nvl72")
    small = tmp_path / "small.toml"
    small.write_text(open(gb200.source).read().replace("domain_size = 72", "domain_size = 4"))

    def ffn_reduce(topology: str) -> float:
        done = call_cli(["model", "--model", "llama-3.1-8b", "--strategy", "kvp", "--gpus", "8", "--kvp", "4",
                         "--tpa", "2", "--context", "64K", "--topology", topology, "--json"])
        assert done.returncode == 0, done.stderr
        return next(row["mean_s"] for row in json.loads(done.stdout)["ops"] if row["op"] == "all_reduce_ffn")
    assert ffn_reduce(str(small)) > 1.5 * ffn_reduce("gb200-nvl72")


def test_racks_bound_the_gpus_in_one_line():
    done = call_cli(["model", "--gpus", "144", "--racks", "1"])
    assert done.returncode == 2
    assert done.stderr.strip() == ("helix-mpi: error: 144 GPUs (--gpus) exceed 1 rack(s) of 72 GPUs of gb200-nvl72: "
                                   "use --racks 2 or fewer GPUs")
    done = call_cli(["sweep", "--racks", "0", "-o", "unused.h5"])
    assert done.returncode == 2 and "--racks must be >= 1" in done.stderr
    with pytest.raises(TopologyError, match="rack"):
        load_topology("gb200-nvl72", 2).check_gpus(145)


def test_a_sweep_over_racks_puts_multi_rack_layouts_on_the_frontier(tmp_path):
    """4M-token DeepSeek-R1 on 2 GB200 racks: the sweep covers 1..144 GPUs by default and a frontier
    configuration uses more than one rack (PP x TP: TP=64 inside a rack, the stages across racks)."""
    out = tmp_path / "s.h5"
    done = call_cli(["sweep", "--racks", "2", "--context", "4M", "--strategies", "helix,tp,pp-tp", "--max-batch", "64",
                     "-q", "-o", str(out), "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["max_gpus"] == 144 and summary["racks"] == 2
    import h5py

    with h5py.File(out, "r") as f:
        gpus = np.concatenate([f["frontier"][name][...]["gpus"] for name in f["frontier"]])
    assert gpus.max() > 72


@pytest.mark.mpich
@pytest.mark.parametrize("args", [
    ["--model", "tiny", "--kvp", "4", "--tpa", "2"],  # Helix: the whole-group all-reduces span both domains
    ["--model", "tiny", "--strategy", "kvp", "--kvp", "4", "--tpa", "2"],  # FFN over the TPA pair, 4 apart
    ["--model", "tiny-mla-moe", "--kvp", "8", "--tpa", "1", "--ep", "4"],  # EP group TPF = 2 apart
])
def test_emulated_across_small_domains_matches_the_reference_and_the_analytic_model(tmp_path, args):
    """8 real ranks on a topology of 4-GPU domains (2 domains): the sharded result equals the
    reference and the emulated TTL equals `model`'s, cross-domain collectives included."""
    from conftest import run_cli

    topology = tmp_path / "two-domains.toml"
    topology.write_text(open(load_topology("gb200-nvl72").source).read().replace("domain_size = 72", "domain_size = 4"))
    common = [*args, "--context", "300", "--batch", "2", "--topology", str(topology), "--racks", "2"]
    done = run_cli(["run", "-q", "-n", "8", *common, "--steps", "2", "--layers", "2", "-o", str(tmp_path / "t.h5"),
                    "--json"], timeout=240)
    assert done.returncode == 0, done.stderr
    emulated = json.loads(done.stdout)
    assert emulated["reference_error"] <= 1e-4  # fp32 kernels against the float64 reference
    analytic = json.loads(call_cli(["model", "--gpus", "8", *common, "--steps", "2", "--layers", "2", "--json"]).stdout)
    # exact for dense models; MoE: the analytic model's uniform routing vs the emulator's real router
    assert analytic["ttl_s"] == pytest.approx(emulated["ttl_s"], rel=1e-3 if "moe" in args[1] else 1e-12)
    one_domain = json.loads(call_cli(["model", "--gpus", "8", *common[:-4], "--steps", "2", "--layers", "2",
                                  "--json"]).stdout)  # the same layout on GB200's one 72-GPU domain
    assert analytic["comm_busy_s"] > one_domain["comm_busy_s"]


def test_a_hostfile_launch_runs_and_writes_its_trace(tmp_path):
    """The multi-host path of the README (`mpiexec --hostfile HOSTS -n N ...`, ranks packed by
    node) on this machine: one host with 2 slots."""
    import subprocess
    import sys

    from helix_mpi.launcher import mpiexec_path, rank_environment

    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")  # Open MPI's hostfile syntax (MPICH's Hydra: `localhost:2`, -f)
    trace = tmp_path / "t.h5"
    done = subprocess.run([mpiexec_path(), "--hostfile", str(hosts), "-n", "2", sys.executable, "-m", "mpi4py", "-m",
                           "helix_mpi", "run", "-q", "--steps", "2", "-o", str(trace), "--json"],
                          capture_output=True, text=True, timeout=240, env=rank_environment())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reference_error"] <= 1e-4 and trace.exists()


def test_advise_returns_a_layout_across_racks_when_one_rack_cannot_hold_a_request():
    """Llama-3.1-405B at 64M tokens: one request's FP8 KV cache (16.5 TB) does not fit in 72 GPUs
    of 186 GB; on 2 racks advise answers with a Helix layout over 128 GPUs."""
    done = call_cli(["advise", "--model", "llama-3.1-405b", "--racks", "2", "--context", "64M", "--strategies",
                     "helix,tp", "-q", "--json"])
    assert done.returncode == 0, done.stderr
    best = json.loads(done.stdout)["best"]
    assert best["strategy"] == "helix" and best["gpus"] > 72
