"""The calibrated time model: measured grids, fitted physics, kernel and collective times, nccl-tests
logs, `helix-mpi calibrate` and `helix-mpi fidelity`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helix_mpi.calibration.fits import relative_nnls
from helix_mpi.calibration.grid import Grid
from helix_mpi.calibration.nccltests import NcclTestsError, read_nccl_tests
from helix_mpi.cli import cli
from helix_mpi.config import Implementation
from helix_mpi.costmodel import FITTED, SPEC, TABLE, collective_seconds, kernel_seconds
from helix_mpi.fidelity import E2ERow, predict_tpot
from helix_mpi.gpuops import Attention, Elementwise, Gemm, MlaAttention, MoeExperts, expected_hits
from helix_mpi.timing import TimeModel
from helix_mpi.topology import load_topology

GB200 = load_topology("gb200-nvl72")
B200 = load_topology("dgx-b200")


# --- grids ----------------------------------------------------------------------------------------------------
def power_law_grid() -> Grid:
    """t = 1e-6 * x^0.5 * y^1.5: exact in log-log interpolation."""
    x, y = np.array([1.0, 4.0, 16.0]), np.array([2.0, 8.0])
    return Grid([x, y], 1e-6 * x[:, None] ** 0.5 * y[None, :] ** 1.5)


def test_grid_is_exact_on_points_and_on_power_laws_between_them():
    grid = power_law_grid()
    seconds, inside = grid(np.array([1.0, 2.0, 10.0, 16.0]), 4.0)
    np.testing.assert_allclose(seconds, 1e-6 * np.array([1.0, 2.0, 10.0, 16.0]) ** 0.5 * 8.0, rtol=1e-12)
    assert inside.all()
    seconds, _ = grid(4.0, 2.0)
    assert seconds == pytest.approx(1e-6 * 2 * 2 ** 1.5, rel=1e-12)


def test_grid_refuses_outside_its_range_and_unmeasured_cells():
    grid = power_law_grid()
    _, inside = grid(np.array([0.5, 17.0, 4.0]), np.array([4.0, 4.0, 9.0]))
    assert not inside.any()  # below, above, and y beyond 8: the caller uses its fitted physics
    values = np.array([[1.0, 2.0], [np.nan, 3.0], [4.0, 5.0]]) * 1e-6
    holey = Grid([[1.0, 4.0, 16.0], [2.0, 8.0]], values)
    _, inside = holey(np.array([2.0, 8.0, 1.0]), 2.0)
    assert inside.tolist() == [False, False, True]  # cells touching the missing point are not measured


def test_grid_one_dimensional_cut_equals_the_full_interpolation():
    grid = GB200.calibration.tables.gemm["fp4"]
    m = np.array([0.5, 1, 3, 7.5, 100, 4000, 8192, 9000])
    for n, k in ((10240, 8192), (3000, 7000), (100000, 8192)):
        fast, fast_inside = grid(m, n, k)
        slow, slow_inside = grid._interpolate(m, n, k)
        assert (fast_inside == slow_inside).all()
        np.testing.assert_allclose(fast[fast_inside], slow[slow_inside], rtol=1e-12)


# --- fits -----------------------------------------------------------------------------------------------------
def test_relative_nnls_recovers_known_physics_and_keeps_coefficients_non_negative():
    rng = np.random.default_rng(1)
    nbytes, flops = rng.uniform(1e6, 1e9, 200), rng.uniform(1e9, 1e12, 200)
    seconds = 5e-6 + nbytes / 4e12 + flops / 1e15
    features = np.stack([np.ones(200), nbytes, flops], axis=1)
    np.testing.assert_allclose(relative_nnls(features, seconds), [5e-6, 1 / 4e12, 1 / 1e15], rtol=1e-6)
    negative = relative_nnls(np.stack([np.ones(200), nbytes], axis=1), 5e-6 - nbytes * 1e-18 + 0 * nbytes)
    assert (negative >= 0).all()


@pytest.mark.parametrize("system", ["gb200", "b200", "h200"])
def test_fitted_physics_is_physical(system):
    topo = {"gb200": GB200, "b200": B200, "h200": load_topology("dgx-h200")}[system]
    fits = topo.calibration.fits
    gemm = fits.gemm["bf16"]
    t0, per_byte = gemm.coefficients[0], gemm.coefficients[1]
    assert 0.5e-6 < t0 < 20e-6  # a kernel's fixed latency: microseconds
    assert 0.3 * topo.gpu.hbm_bytes_per_s < 1 / per_byte < 1.2 * topo.gpu.hbm_bytes_per_s  # achieved HBM bandwidth
    assert gemm.median_error < 0.25 and fits.attention["fp8"].median_error < 0.35
    ring = fits.collectives.nccl["all_reduce"]
    assert 1e-6 < ring.coefficients[0] < 30e-6 and 0 < ring.coefficients[1] < 5e-6  # base and per-step latency
    attention_bw = 1 / fits.attention["fp8"].coefficients[1]  # decode attention streams the KV cache from HBM
    assert 0.5 * topo.gpu.hbm_bytes_per_s < attention_bw < 1.1 * topo.gpu.hbm_bytes_per_s


@pytest.mark.parametrize("kernel", [Gemm(4, 1_000_000, 8192, "fp4"), Gemm(1, 500_000, 16384, "bf16"),
                                    Attention(64, 64, 8, 128, 2_000_000, "fp8")])
def test_no_fitted_kernel_reads_faster_than_the_hbm(kernel):
    seconds, source = kernel_seconds(kernel, GB200)
    assert source == FITTED and kernel.hbm_bytes / seconds <= GB200.gpu.hbm_bytes_per_s * (1 + 1e-12)


def test_one_long_request_fills_the_gpu_through_split_kv():
    """Flash-decoding splits a long cache into chunks: batch 1 at 1M tokens reaches most of the HBM
    bandwidth, while batch 1 at 1K tokens is latency-bound."""
    def achieved(tokens):
        kernel = Attention(1, 16, 1, 128, tokens, "fp8")
        return kernel.hbm_bytes / kernel_seconds(kernel, GB200)[0]

    assert achieved(1_000_000) > 0.6 * GB200.gpu.hbm_bytes_per_s
    assert achieved(1_024) < 0.2 * GB200.gpu.hbm_bytes_per_s


def test_topologies_fits_prints_every_fitted_model_in_physical_units():
    done = CliRunner().invoke(cli, ["topologies", "--fits", "gb200-nvl72", "--json"])
    assert done.exit_code == 0, done.output
    fits = {row["model"]: row for row in json.loads(done.output)["fits"]}
    assert {"gemm fp4", "decode attention, fp8 KV", "MoE experts", "NCCL all_reduce",
            "TensorRT-LLM all_reduce"} <= set(fits)
    assert fits["NCCL all_reduce"]["terms"]["base"].endswith(" us")
    text = CliRunner().invoke(cli, ["topologies", "--fits", "dgx-h100"]).output
    assert "kv byte bandwidth" in text and "TFLOP/s" in text


# --- kernels --------------------------------------------------------------------------------------------------
def test_kernel_inside_a_table_is_the_measurement():
    data = json.loads((GB200.calibration.directory / "gemm.json").read_text())["dtypes"]["fp4"]
    i, j, l = data["m"].index(4), data["n"].index(10240), data["k"].index(8192)
    seconds, source = kernel_seconds(Gemm(4, 10240, 8192, "fp4"), GB200)
    assert source == TABLE and seconds == pytest.approx(data["latency_us"][i][j][l] * 1e-6, rel=1e-12)


def test_kernel_outside_its_table_uses_fitted_physics_that_grows_with_the_work():
    small, src_small = kernel_seconds(Gemm(4, 8192, 100_000, "fp4"), GB200)
    large, src_large = kernel_seconds(Gemm(4, 8192, 400_000, "fp4"), GB200)
    assert src_small == src_large == FITTED and 0 < small < large
    long = kernel_seconds(Attention(8, 16, 1, 128, 4_000_000, "fp8"), GB200)
    longer = kernel_seconds(Attention(8, 16, 1, 128, 8_000_000, "fp8"), GB200)
    assert long[1] == FITTED and longer[0] == pytest.approx(2 * long[0], rel=0.1)  # bandwidth-bound: linear
    mla = kernel_seconds(MlaAttention(1, 128, 1_000_000, kv_dtype="fp8"), GB200)
    assert mla[1] == FITTED and mla[0] > kernel_seconds(MlaAttention(1, 128, 100_000, kv_dtype="fp8"), GB200)[0]


def test_every_kind_of_kernel_has_a_time_on_every_machine():
    hit, pairs = expected_hits(32, 256, 8, 16)
    kernels = [Gemm(16, 4096, 4096, "bf16"), Gemm(16, 4096, 4096, "fp8"), Gemm(16, 4096, 4096, "fp4"),
               Attention(16, 8, 1, 128, 10_000, "bf16"), MlaAttention(16, 16, 10_000, kv_dtype="fp8"),
               MoeExperts(16, 7168, 256, 8, 256, 8, 8, hit, pairs, "fp4"), Elementwise(1e6, 2)]
    for name in ("gb200-nvl72", "gb300-nvl72", "dgx-b200", "dgx-b300", "dgx-h200", "dgx-h100"):
        topo = load_topology(name)
        for kernel in kernels:
            seconds, source = kernel_seconds(kernel, topo)
            assert np.isfinite(seconds) and seconds > 0 and source in (TABLE, FITTED), (name, kernel)


def test_without_tables_a_kernel_is_the_roofline():
    bare = load_topology("gb200-nvl72")
    bare = type(bare)(bare.name, bare.description, bare.gpu, bare.fabric, bare.scale_out, bare.source)
    kernel = Gemm(4, 8192, 8192, "bf16")
    seconds, source = kernel_seconds(kernel, bare)
    expected = max(kernel.flops / bare.gpu.flops_per_s["bf16"], kernel.hbm_bytes / bare.gpu.hbm_bytes_per_s)
    assert source == SPEC and seconds == pytest.approx(expected + bare.gpu.launch_overhead_s)


def test_without_cuda_graphs_short_kernels_wait_for_the_host():
    tiny = Elementwise(1e3)
    graphs, _ = kernel_seconds(tiny, GB200, cuda_graphs=True)
    host, _ = kernel_seconds(tiny, GB200, cuda_graphs=False)
    assert graphs < GB200.gpu.host_launch_s == host


def test_trtllm_quantised_gemms_do_not_pay_a_quantisation_kernel():
    plain, _ = kernel_seconds(Gemm(4, 4096, 4096, "fp8"), GB200)
    fused, _ = kernel_seconds(Gemm(4, 4096, 4096, "fp8", fused_quant=True), GB200)
    bf16, _ = kernel_seconds(Gemm(4, 4096, 4096, "bf16"), GB200)
    assert fused < plain and fused >= GB200.calibration.fits.gemm["bf16"].coefficients[0]
    assert plain > bf16  # the measured FP8 GEMM includes quantising its bf16 input


# --- collectives ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"])
def test_collective_is_free_on_one_rank_and_the_table_where_measured(op):
    assert collective_seconds(op, 1 << 20, 1, GB200)[0] == 0.0
    grid = GB200.calibration.tables.nccl[op][4]
    size = float(np.exp(grid.axes[0][5]))
    seconds, source = collective_seconds(op, size, 4, GB200, "nccl")
    assert source == TABLE and seconds == pytest.approx(float(np.exp(grid.log_seconds[5])), rel=1e-12)


def test_rack_scale_collectives_are_fitted_and_grow_with_the_group():
    sizes = np.array([16e3, 1e6, 4 * 2**30])
    four, _ = collective_seconds("all_reduce", sizes, 4, GB200, "nccl")
    full, source = collective_seconds("all_reduce", sizes, 72, GB200, "nccl")
    assert (source == FITTED).all() and (full >= four).all()
    busbw = 2 * 71 / 72 * sizes[-1] / full[-1]
    assert 0.5e12 < busbw < 1.0e12  # public 72-GPU measurements: 0.59-0.84 TB/s at 0.5-4 GiB


def test_trtllm_all_reduce_never_slower_than_nccl_and_the_all_to_all_is_one_kernel():
    sizes = np.array([8e3, 64e3, 1e6])
    for n in (2, 4, 8):
        trt, _ = collective_seconds("all_reduce", sizes, n, GB200, "trtllm")
        nccl, _ = collective_seconds("all_reduce", sizes, n, GB200, "nccl")
        assert (trt <= nccl).all()
    one_kernel, _ = collective_seconds("all_to_all", 1e5, 64, GB200, "trtllm")
    grouped, _ = collective_seconds("all_to_all", 1e5, 64, GB200, "nccl")
    assert one_kernel < grouped


def test_trtllm_beyond_eight_gpus_is_nccl_symmetric_multicast_whatever_the_group():
    """TensorRT-LLM's AUTO all-reduce over more than 8 GPUs is NCCL's symmetric-memory kernel: one
    multicast reduce through the switch, so its latency does not grow with the group, and it is
    never slower than NCCL's classic algorithms."""
    sizes = np.array([16e3, 57344.0, 1e6])
    sixteen, _ = collective_seconds("all_reduce", sizes, 16, GB200, "trtllm")
    rack, source = collective_seconds("all_reduce", sizes, 72, GB200, "trtllm")
    classic, _ = collective_seconds("all_reduce", sizes, 72, GB200, "nccl")
    assert (source == FITTED).all() and rack == pytest.approx(sixteen) and (rack < classic).all()
    eight, _ = collective_seconds("all_reduce", sizes, 8, GB200, "trtllm")
    assert rack[1] == pytest.approx(eight[1], rel=0.05)  # the one-shot kernel's latency at 8 GPUs


def test_groups_across_nvlink_domains_pay_the_network():
    inside, _ = collective_seconds("all_reduce", 1e6, 8, B200, "nccl")
    across, _ = collective_seconds("all_reduce", 1e6, 16, B200, "nccl")  # two 8-GPU nodes
    net = B200.scale_out
    assert across >= inside + 2 * net.latency_s and across < inside + 2 * net.latency_s + 2 * 1e6 / 8 / net.bytes_per_s \
        + 1e-9


def test_what_if_scales_act_beyond_the_fixed_latency():
    impl = Implementation()
    plain, faster = TimeModel(GB200, impl), TimeModel(GB200, impl, hbm_scale=2.0, nvlink_scale=4.0)
    kernel = Gemm(4, 16384, 16384, "fp4")
    latency = GB200.calibration.fits.gemm["fp4"].coefficients[0]
    t, t2 = plain.kernels_seconds([kernel]), faster.kernels_seconds([kernel])
    assert float(t2) == pytest.approx(latency + (float(t) - latency) / 2)
    base = plain.collective_seconds("all_reduce", 0.0, 8)
    big = plain.collective_seconds("all_reduce", 1e8, 8)
    assert float(faster.collective_seconds("all_reduce", 1e8, 8)) == pytest.approx(base + (big - base) / 4)


# --- nccl-tests logs ------------------------------------------------------------------------------------------
def nccl_log(path: Path, op: str = "all_reduce", ranks: int = 4, rows=None, root: bool = True) -> Path:
    rows = rows or [(1024, 10.0), (1 << 20, 20.0), (1 << 26, 300.0)]
    lines = ["# nThread 1 nGpus 1 minBytes 8 maxBytes 1G step: 2(factor) warmup iters: 5 iters: 20",
             "#", "# Using devices"]
    lines += [f"#  Rank {r:2d} Group  0 Pid {100 + r} on host device {r} [0x{r}] NVIDIA GB200" for r in range(ranks)]
    columns = "size count type redop root time algbw busbw #wrong time algbw busbw #wrong" if root else \
        "size count type redop time algbw busbw #wrong time algbw busbw #wrong"
    lines += ["#", f"# {columns}", "#  (B) (elements) (us) (GB/s) (GB/s) (us) (GB/s) (GB/s)"]
    for size, us in rows:
        algbw = size / us / 1e3
        fields = [str(size), str(size // 2), "half", "sum"] + (["-1"] if root else [])
        lines.append("   ".join(fields + [f"{us}", f"{algbw:.2f}", f"{algbw:.2f}", "0", f"{us}", f"{algbw:.2f}",
                                          f"{algbw:.2f}", "0"]))
    lines += ["# Out of bounds values : 0 OK", "# Avg bus bandwidth    : 1.0"]
    path = path.with_name(f"{op}_perf.log") if path.suffix == "" else path
    path.write_text("\n".join(lines) + "\n")
    return path


def test_nccl_tests_log_is_read_with_or_without_the_root_column(tmp_path):
    for root in (True, False):
        log = read_nccl_tests(nccl_log(tmp_path / f"all_gather_perf_{root}.log", root=root))
        assert log.op == "all_gather" and log.ranks == 4
        assert log.sizes.tolist() == [1024, 1 << 20, 1 << 26] and log.seconds[1] == pytest.approx(20e-6)


@pytest.mark.parametrize("rows, claimed, message", [
    ([(1024, 10.0), (512, 12.0)], None, "does not increase"),
    ([(1024, float("nan"))], None, "not a positive number"),
    ([(1024, -3.0)], None, "not a positive number"),
    ([(1024, 10.0)], "all_gather", "the log is all_reduce but all_gather was claimed"),
])
def test_bad_nccl_tests_logs_are_refused_in_one_line(tmp_path, rows, claimed, message):
    path = nccl_log(tmp_path / "all_reduce_perf.log", rows=rows)
    with pytest.raises(NcclTestsError, match=message):
        read_nccl_tests(path, claimed)


def test_a_log_without_rank_lines_needs_the_rank_count(tmp_path):
    path = nccl_log(tmp_path / "alltoall_perf.log", ranks=0)
    with pytest.raises(NcclTestsError, match="--ranks"):
        read_nccl_tests(path)
    assert read_nccl_tests(path, ranks=8).ranks == 8
    path.write_text("\n".join(line for line in path.read_text().splitlines() if "size" not in line or "#" not in line))
    with pytest.raises(NcclTestsError, match="no nccl-tests perf table"):
        read_nccl_tests(path, ranks=8)


# --- helix-mpi calibrate -----------------------------------------------------------------------------------------
def test_calibrate_writes_a_topology_that_times_with_the_logs(tmp_path):
    logs = [nccl_log(tmp_path / "all_reduce_perf.log", ranks=8, rows=[(1024, 9.0), (1 << 20, 15.0), (1 << 26, 250.0)]),
            nccl_log(tmp_path / "alltoall_perf.log", op="alltoall", ranks=8)]
    out = tmp_path / "my-rack.toml"
    done = CliRunner().invoke(cli, ["calibrate", "--topology", "dgx-b200", *sum((["--nccl-tests", str(p)] for p in logs), []),
                                    "-o", str(out), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["fit_check"]["median_abs_error"] < 1e-9  # the logs themselves are now the table
    topo = load_topology(str(out))
    assert topo.name == "my-rack" and topo.calibration.directory.name == "my-rack.tables"
    seconds, source = collective_seconds("all_reduce", float(1 << 20), 8, topo, "nccl")
    assert source == TABLE and seconds == pytest.approx(15e-6)
    assert (topo.calibration.directory / "gemm.json").is_file()  # the base's kernel tables are kept
    done = CliRunner().invoke(cli, ["model", "--model", "llama-3.1-8b", "--gpus", "8", "--topology", str(out), "--json"])
    assert done.exit_code == 0 and json.loads(done.output)["ttl_s"] > 0


def test_calibrate_with_a_bad_log_writes_nothing(tmp_path):
    bad = nccl_log(tmp_path / "all_reduce_perf.log", rows=[(2048, 10.0), (1024, 12.0)])
    out = tmp_path / "broken.toml"
    done = CliRunner().invoke(cli, ["calibrate", "--topology", "dgx-b200", "--nccl-tests", str(bad), "-o", str(out)])
    assert done.exit_code == 2
    lines = [line for line in done.output.splitlines() if line.startswith("helix-mpi: error:")]
    assert len(lines) == 1 and "does not increase" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all_reduce_perf.log"]


def test_calibrate_with_kernel_csvs_replaces_that_table(tmp_path):
    csv_path = tmp_path / "gemm.csv"
    csv_path.write_text("system,gemm_dtype,m,n,k,latency\n" + "\n".join(
        f"mine,bfloat16,{m},{n},{k},{0.001 * m * n * k / 2 ** 30 + 0.002}"
        for m in (1, 8, 64) for n in (1024, 4096) for k in (1024, 4096)) + "\n")
    out = tmp_path / "mine.toml"
    done = CliRunner().invoke(cli, ["calibrate", "--topology", "dgx-h100", "--kernels", str(csv_path), "-o", str(out)])
    assert done.exit_code == 0, done.output
    topo = load_topology(str(out))
    seconds, source = kernel_seconds(Gemm(8, 4096, 1024, "bf16"), topo)
    assert source == TABLE and seconds == pytest.approx((0.001 * 8 * 4096 * 1024 / 2 ** 30 + 0.002) * 1e-3, rel=1e-3)


# --- end to end ------------------------------------------------------------------------------------------------
def e2e_row(**kw) -> E2ERow:
    fields = dict(id="x", model="meta-llama/Llama-3.1-70B-Instruct", system="b200_sxm", backend="trtllm", mode="agg",
                  isl=1024, osl=1024, batch=8, tp=4, pp=1, dp=1, moe_tp=1, moe_ep=1, precision="fp8",
                  moe_precision="fp8", tpot_s=0.01)
    fields.update(kw)
    return E2ERow(**fields)


def test_tpot_is_a_decode_step_plus_the_prefill_share_of_aggregated_serving():
    agg, disagg = predict_tpot(e2e_row()), predict_tpot(e2e_row(mode="disagg"))
    assert agg.decode_s == pytest.approx(disagg.decode_s) and disagg.prefill_share_s == 0.0
    assert agg.tpot_s == pytest.approx(agg.decode_s + agg.prefill_share_s) and agg.prefill_share_s > 0
    longer = predict_tpot(e2e_row(osl=4096))
    assert longer.prefill_share_s < agg.prefill_share_s  # the same prefill spread over 4x the tokens
    assert predict_tpot(e2e_row(tp=8)).decode_s < agg.decode_s
    assert predict_tpot(e2e_row(model="acme/Unknown-7B")).skipped.startswith("unknown model")


def test_attention_dp_ranks_prefill_in_lock_step():
    """batch is per attention-DP rank; any of the DP ranks' prefills stalls all of them."""
    deepseek = dict(model="deepseek-ai/DeepSeek-V3", system="b200_sxm", tp=1, dp=8, moe_tp=1, moe_ep=8,
                    precision="fp4", moe_precision="fp4", batch=16)
    agg, disagg = predict_tpot(e2e_row(**deepseek)), predict_tpot(e2e_row(**deepseek, mode="disagg"))
    assert agg.decode_s == pytest.approx(disagg.decode_s) and agg.prefill_share_s > 0
    more_ranks = predict_tpot(e2e_row(**{**deepseek, "dp": 4, "moe_ep": 4}))
    assert agg.prefill_share_s > 1.5 * more_ranks.prefill_share_s  # 8 ranks stall each other, not 4


def test_engines_run_their_own_kernels_and_collectives():
    from helix_mpi.fidelity import implementation_for, model_for

    deepseek = model_for("deepseek-ai/DeepSeek-V3")
    row = e2e_row(model="deepseek-ai/DeepSeek-V3", precision="fp8", moe_precision="fp8")
    impl = implementation_for(row, deepseek)
    assert (impl.precision, impl.moe_precision) == ("fp8_block", "fp8_block")  # its checkpoint is block-scaled
    assert implementation_for(row, model_for("Qwen/Qwen3-32B")).precision == "fp8"
    assert implementation_for(e2e_row(backend="sglang")).comm == "trtllm"  # FlashInfer's port of the kernel
    assert implementation_for(e2e_row(backend="vllm")).comm == "nccl"


def test_fidelity_command_on_e2e_rows_and_on_nccl_tests_logs(tmp_path):
    csv_path = tmp_path / "rows.csv"
    shipped = Path(__file__).resolve().parent.parent / "topologies" / "calibration" / "e2e_tpot.csv"
    lines = shipped.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0]] + [l for l in lines[1:] if "Llama-3.1-8B" in l and "trtllm" in l][:6]))
    done = CliRunner().invoke(cli, ["fidelity", str(csv_path), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["all"]["rows"] == 6 and report["all"]["median_abs_error"] < 0.5
    log = nccl_log(tmp_path / "all_reduce_perf.log", ranks=4)
    done = CliRunner().invoke(cli, ["fidelity", str(log), "--topology", "gb200-nvl72", "--json",
                                    "--plot", str(tmp_path / "f.png")])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.output)["rows"]
    assert len(rows) == 3 and all(r["source"] in ("table", "fitted") for r in rows)
    assert (tmp_path / "f.png").stat().st_size > 5000


def test_implementation_choices_change_the_modeled_time():
    common = ["model", "--model", "llama-3.1-70b", "--gpus", "8", "--batch", "16", "--context", "8192", "--json"]
    runner = CliRunner()
    ttl = {flags: json.loads(runner.invoke(cli, common + list(flags)).output)["ttl_s"]
           for flags in ((), ("--comm", "nccl"), ("--no-cuda-graphs",))}
    assert ttl[("--comm", "nccl")] > ttl[()] and ttl[("--no-cuda-graphs",)] > ttl[()]
    memory = {kv: json.loads(runner.invoke(cli, common + ["--kv-precision", kv]).output)["kv_bytes_per_gpu"]
              for kv in ("fp8", "bf16")}
    assert memory["bf16"] == pytest.approx(2 * memory["fp8"])


def test_every_op_of_a_model_run_says_what_timed_it():
    data = json.loads(CliRunner().invoke(cli, ["model", "--model", "deepseek-r1", "--gpus", "16", "--batch", "4",
                                               "--context", "100000", "--json"]).output)
    shares = data["time_sources"]
    assert set(shares) <= {"table", "fitted", "spec"} and sum(shares.values()) == pytest.approx(1.0)
    assert all(row["time_sources"] for row in data["ops"] if row["seconds_per_step"] > 0)
