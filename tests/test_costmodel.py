"""Closed-form checks of helix_mpi.costmodel on a small hand-made topology."""

from types import MappingProxyType

import numpy as np
import pytest

from helix_mpi.costmodel import (
    Collective,
    algbw,
    busbw,
    collective_table,
    collective_time,
    compute_time,
    parse_size,
)
from helix_mpi.topology import FabricSpec, GpuSpec, ScaleOutSpec, Topology, load_topology

US = 1e-6
LINK = 100e9  # bytes/s per direction
NET = 10e9  # scale-out bytes/s
DOMAIN = 4


def make_topology(nvls_available=True, nvls_efficiency=0.5) -> Topology:
    gpu = GpuSpec(
        name="toy",
        hbm_bytes=1e9,
        hbm_bytes_per_s=1e12,
        flops_per_s=MappingProxyType({"bf16": 1e15, "fp8": 2e15, "fp4": 4e15}),
        launch_overhead_s=1 * US,
    )
    fabric = FabricSpec(
        domain_size=DOMAIN,
        link_bytes_per_s=LINK,
        ring_base_s=10 * US,
        ring_step_s=1 * US,
        a2a_base_s=5 * US,
        a2a_step_s=2 * US,
        nvls_available=nvls_available,
        nvls_base_s=20 * US,
        nvls_step_s=0.5 * US,
        nvls_efficiency=nvls_efficiency,
    )
    return Topology("toy", "hand-made", gpu, fabric, ScaleOutSpec(NET, 3 * US), "constructed")


TOY = make_topology()


# --- compute ------------------------------------------------------------------
def test_compute_time_is_math_bound_when_flops_dominate():
    # 1e12 FLOP at 2e15 FLOP/s = 500 us; 1e6 bytes at 1e12 B/s = 1 us
    assert compute_time(1e12, 1e6, TOY, "fp8") == pytest.approx(500 * US + 1 * US)


def test_compute_time_is_memory_bound_when_bytes_dominate():
    # 1e9 FLOP at 1e15 = 1 us; 1e9 bytes at 1e12 B/s = 1000 us
    assert compute_time(1e9, 1e9, TOY, "bf16") == pytest.approx(1000 * US + 1 * US)


def test_compute_time_uses_the_requested_precision():
    assert compute_time(4e12, 0, TOY, "fp4") == pytest.approx(1000 * US + 1 * US)
    assert compute_time(4e12, 0, TOY, "bf16") == pytest.approx(4000 * US + 1 * US)


def test_compute_time_broadcasts_and_rejects_unknown_precision():
    out = compute_time(np.array([0.0, 1e12]), 0.0, TOY, "fp8")
    assert out == pytest.approx([1 * US, 501 * US])
    with pytest.raises(ValueError, match="fp16"):
        compute_time(1, 1, TOY, "fp16")


# --- exactly zero on one rank ---------------------------------------------------------
@pytest.mark.parametrize("op", list(Collective))
@pytest.mark.parametrize("size", [0, 8, 1 << 30])
def test_any_collective_over_one_rank_is_exactly_zero(op, size):
    assert collective_time(op, size, 1, TOY) == 0.0
    assert collective_time(op, size, 1, load_topology("gb200-nvl72")) == 0.0


def test_forced_nvls_over_one_rank_is_zero_even_without_nvls():
    assert collective_time("all_reduce", 1024, 1, make_topology(nvls_available=False), "nvls") == 0.0


# --- ring ---------------------------------------------------------------------------
def test_ring_all_reduce_closed_form():
    n, size = 4, 1e6
    expected = 10 * US + 2 * (n - 1) * 1 * US + 2 * (n - 1) / n * size / LINK
    assert collective_time("all_reduce", size, n, TOY, "ring") == pytest.approx(expected)


@pytest.mark.parametrize("op", [Collective.ALL_GATHER, Collective.REDUCE_SCATTER])
def test_ring_all_gather_and_reduce_scatter_closed_form(op):
    n, size = 3, 3e6
    expected = 10 * US + (n - 1) * 1 * US + (n - 1) / n * size / LINK
    assert collective_time(op, size, n, TOY) == pytest.approx(expected)
    assert collective_time(op, size, n, TOY, "ring") == pytest.approx(expected)


def test_nvls_all_reduce_closed_form():
    n, size = 4, 1e6
    expected = 20 * US + (n - 1) * 0.5 * US + size / (LINK * 0.5)
    assert collective_time("all_reduce", size, n, TOY, "nvls") == pytest.approx(expected)


def test_all_to_all_closed_form_inside_domain():
    n, size = 4, 4e6
    expected = 5 * US + (n - 1) * 2 * US + (n - 1) / n * size / LINK
    assert collective_time("all_to_all", size, n, TOY) == pytest.approx(expected)


# --- algorithm choice ------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 4096, 1e5, 1e6, 1e8])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_auto_all_reduce_picks_the_faster_algorithm(size, n):
    ring = collective_time("all_reduce", size, n, TOY, "ring")
    nvls = collective_time("all_reduce", size, n, TOY, "nvls")
    assert collective_time("all_reduce", size, n, TOY) == pytest.approx(min(ring, nvls))


def test_ring_wins_small_and_nvls_wins_large_on_toy():
    # small: ring latency 16 us < NVLS 21.5 us; large: NVLS moves ~S bytes vs the ring's 1.5 S
    small_ring = collective_time("all_reduce", 8, 4, TOY, "ring")
    small_nvls = collective_time("all_reduce", 8, 4, TOY, "nvls")
    assert small_ring < small_nvls
    efficient = make_topology(nvls_efficiency=0.9)
    big_ring = collective_time("all_reduce", 1e8, 4, efficient, "ring")
    big_nvls = collective_time("all_reduce", 1e8, 4, efficient, "nvls")
    assert big_nvls < big_ring
    assert collective_time("all_reduce", 1e8, 4, efficient) == pytest.approx(big_nvls)


def test_auto_falls_back_to_ring_without_nvls():
    topo = make_topology(nvls_available=False)
    ring = collective_time("all_reduce", 1e8, 4, topo, "ring")
    assert collective_time("all_reduce", 1e8, 4, topo) == pytest.approx(ring)
    with pytest.raises(ValueError, match="NVLS"):
        collective_time("all_reduce", 1e8, 4, topo, "nvls")


def test_unknown_algorithm_is_rejected():
    with pytest.raises(ValueError, match="tree"):
        collective_time("all_reduce", 8, 4, TOY, "tree")
    with pytest.raises(ValueError, match="nvls"):
        collective_time("all_gather", 8, 4, TOY, "nvls")


# --- scale-out ---------------------------------------------------------------------
def test_ring_beyond_domain_uses_scale_out_bandwidth_and_latency():
    n, size = 8, 8e6  # 2 domains of 4
    steps, net_steps = 2 * (n - 1), 2 * (2 - 1)
    expected = 10 * US + (steps - net_steps) * 1 * US + net_steps * 3 * US + 2 * (n - 1) / n * size / NET
    assert collective_time("all_reduce", size, n, TOY) == pytest.approx(expected)


def test_all_gather_beyond_domain_closed_form():
    n, size = 12, 12e6  # 3 domains
    expected = 10 * US + (n - 1 - 2) * 1 * US + 2 * 3 * US + (n - 1) / n * size / NET
    assert collective_time("all_gather", size, n, TOY) == pytest.approx(expected)


def test_all_to_all_beyond_domain_closed_form():
    n, size = 8, 8e6
    local = (DOMAIN - 1) / n * size / LINK
    remote = (n - DOMAIN) / n * size / NET
    expected = 5 * US + (n - 1) * 2 * US + 3 * US + max(local, remote)
    assert collective_time("all_to_all", size, n, TOY) == pytest.approx(expected)


@pytest.mark.parametrize("op", list(Collective))
def test_crossing_the_domain_is_slower_per_byte(op):
    inside = collective_time(op, 1e8, DOMAIN, TOY)
    outside = collective_time(op, 1e8, DOMAIN + 1, TOY)
    assert outside > 2 * inside  # scale-out is 10x slower than NVLink here


def test_nvls_is_not_used_across_domains():
    ring = collective_time("all_reduce", 1e6, 8, TOY, "ring")
    assert collective_time("all_reduce", 1e6, 8, TOY) == pytest.approx(ring)
    with pytest.raises(ValueError, match="domain_size"):
        collective_time("all_reduce", 1e6, 8, TOY, "nvls")


# --- shape, monotonicity, validation -----------------------------------------------------
@pytest.mark.parametrize("op", list(Collective))
@pytest.mark.parametrize("n", [2, 4, 8, 72, 144])
def test_time_is_monotonic_in_size(op, n):
    topo = load_topology("gb200-nvl72")
    sizes = 2.0 ** np.arange(0, 34)
    times = collective_time(op, sizes, n, topo)
    assert np.all(np.diff(times) >= 0)
    assert np.all(times > 0)


def test_broadcasts_over_sizes_and_ranks():
    sizes = np.array([1e3, 1e6])
    ranks = np.array([[1], [2], [8]])
    out = collective_time("all_gather", sizes, ranks, TOY)
    assert out.shape == (3, 2)
    assert np.all(out[0] == 0.0)
    assert out[1, 1] == pytest.approx(collective_time("all_gather", 1e6, 2, TOY))
    assert out[2, 0] == pytest.approx(collective_time("all_gather", 1e3, 8, TOY))


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError):
        collective_time("all_reduce", 8, 0, TOY)
    with pytest.raises(ValueError):
        collective_time("all_reduce", -1, 4, TOY)
    with pytest.raises(ValueError):
        collective_time("broadcast", 8, 4, TOY)


# --- bandwidth reporting -----------------------------------------------------------------
def test_algbw_and_busbw_factors():
    assert algbw(1e9, 0.5) == pytest.approx(2e9)
    assert busbw("all_reduce", 1e9, 0.5, 4) == pytest.approx(2e9 * 2 * 3 / 4)
    for op in ("all_gather", "reduce_scatter", "all_to_all"):
        assert busbw(op, 1e9, 0.5, 4) == pytest.approx(2e9 * 3 / 4)
    assert algbw(1e9, 0.0) == 0.0


def test_busbw_of_large_ring_approaches_link_bandwidth():
    t = collective_time("all_gather", 1e12, 4, TOY)
    assert busbw("all_gather", 1e12, t, 4) == pytest.approx(LINK, rel=1e-5)


def test_collective_table_rows():
    rows = collective_table("all_reduce", ["8K", 1 << 20], 4, TOY, "ring")
    assert [r["bytes"] for r in rows] == [8192, 1 << 20]
    assert set(rows[0]) == {"bytes", "time_s", "algbw", "busbw"}
    t = collective_time("all_reduce", 1 << 20, 4, TOY, "ring")
    assert rows[1]["time_s"] == pytest.approx(t)
    assert rows[1]["algbw"] == pytest.approx((1 << 20) / t / 1e9)
    assert rows[1]["busbw"] == pytest.approx(rows[1]["algbw"] * 1.5)


@pytest.mark.parametrize(
    "text,value",
    [("4096", 4096), ("8K", 8192), ("8k", 8192), ("1M", 1 << 20), ("1G", 1 << 30), ("2KB", 2048), (64, 64)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "1.5K", "K", "-8", "8Q"])
def test_parse_size_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_size(bad)
