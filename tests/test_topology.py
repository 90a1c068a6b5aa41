"""Topology files load with sane values; bad files fail with one clear line."""

import json
from pathlib import Path

import pytest

from helix_mpi.topology import (
    BUILTIN_TOPOLOGY_DIR,
    DEFAULT_TOPOLOGY,
    TopologyError,
    list_topologies,
    load_topology,
)

SHIPPED = ["dgx-b200", "dgx-h100", "dgx-h200", "gb200-nvl72", "gb300-nvl72"]
GB200_TEXT = (BUILTIN_TOPOLOGY_DIR / "gb200-nvl72.toml").read_text()


def test_all_shipped_topologies_are_listed_and_load():
    assert set(SHIPPED) <= set(list_topologies())
    assert DEFAULT_TOPOLOGY == "gb200-nvl72"
    for name in SHIPPED:
        topo = load_topology(name)
        assert topo.name == name
        json.dumps(topo.to_dict())  # serialisable


def test_gb200_values_in_si_units():
    topo = load_topology("gb200-nvl72")
    assert topo.gpu.hbm_bytes == pytest.approx(186e9)
    assert topo.gpu.hbm_bytes_per_s == pytest.approx(8e12)
    assert topo.gpu.flops_per_s["fp4"] == pytest.approx(1440e15 / 72 / 2)
    assert topo.gpu.flops_per_s["fp8"] == pytest.approx(720e15 / 72 / 2)
    assert topo.gpu.flops_per_s["bf16"] == pytest.approx(360e15 / 72 / 2)
    assert topo.fabric.domain_size == 72
    assert topo.fabric.link_bytes_per_s == pytest.approx(900e9)
    assert topo.fabric.nvls_available
    assert 0 < topo.fabric.nvls_efficiency <= 1
    assert 1e-6 < topo.fabric.ring_base_s < 1e-4  # microseconds, not seconds


def test_flops_mapping_is_read_only():
    topo = load_topology("gb200-nvl72")
    with pytest.raises(TypeError):
        topo.gpu.flops_per_s["fp8"] = 1.0


@pytest.mark.parametrize("name", SHIPPED)
def test_every_topology_is_physically_sane(name):
    topo = load_topology(name)
    gpu, fabric, net = topo.gpu, topo.fabric, topo.scale_out
    assert 50e9 <= gpu.hbm_bytes <= 300e9
    assert 1e12 <= gpu.hbm_bytes_per_s <= 10e12
    assert gpu.flops_per_s["bf16"] <= gpu.flops_per_s["fp8"] <= gpu.flops_per_s["fp4"]
    assert fabric.domain_size in (8, 72)
    assert net.bytes_per_s < fabric.link_bytes_per_s  # scale-out is slower than NVLink
    assert 0 <= gpu.launch_overhead_s < 1e-4


def test_hopper_fp4_is_modeled_at_fp8_rate():
    topo = load_topology("dgx-h100")
    assert topo.gpu.flops_per_s["fp4"] == topo.gpu.flops_per_s["fp8"]
    assert topo.gpu.hbm_bytes == pytest.approx(80e9)


def test_every_constant_line_cites_a_source():
    for name in SHIPPED:
        for line in (BUILTIN_TOPOLOGY_DIR / f"{name}.toml").read_text().splitlines():
            stripped = line.strip()
            if "=" in stripped and not stripped.startswith("#") and not stripped.startswith(("name", "description")):
                assert "#" in stripped, f"{name}: no source comment on: {stripped}"


def test_load_by_path_and_env_dir(tmp_path, monkeypatch):
    custom = tmp_path / "my-cluster.toml"
    custom.write_text(GB200_TEXT.replace('name = "gb200-nvl72"', 'name = "my-cluster"'))
    assert load_topology(str(custom)).name == "my-cluster"
    monkeypatch.setenv("HELIX_MPI_TOPOLOGIES", str(tmp_path))
    assert "my-cluster" in list_topologies()
    topo = load_topology("my-cluster")
    assert Path(topo.source) == custom


# --- errors: one line naming the problem ------------------------------------------------
def _error_for(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TopologyError) as info:
        load_topology(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_toml_syntax_error_names_the_line(tmp_path):
    message = _error_for(tmp_path, GB200_TEXT.replace("domain_size = 72", "domain_size = = 72"))
    assert "TOML syntax error" in message
    line = next(i for i, l in enumerate(GB200_TEXT.splitlines(), 1) if l.startswith("domain_size"))
    assert f"line {line}" in message


def test_missing_key_names_table_and_key(tmp_path):
    text = "\n".join(l for l in GB200_TEXT.splitlines() if not l.startswith("hbm_gb_per_s"))
    message = _error_for(tmp_path, text)
    assert "missing" in message and "gpu.hbm_gb_per_s" in message


def test_missing_table_is_reported(tmp_path):
    text = GB200_TEXT.split("[scale_out]")[0]
    assert "scale_out" in _error_for(tmp_path, text)


def test_negative_bandwidth_is_rejected(tmp_path):
    message = _error_for(tmp_path, GB200_TEXT.replace("link_gb_per_s = 900", "link_gb_per_s = -900"))
    assert "fabric.link_gb_per_s" in message and "> 0" in message


def test_zero_capacity_is_rejected(tmp_path):
    message = _error_for(tmp_path, GB200_TEXT.replace("hbm_gb = 186", "hbm_gb = 0"))
    assert "gpu.hbm_gb" in message


def test_wrong_type_is_rejected(tmp_path):
    message = _error_for(tmp_path, GB200_TEXT.replace("domain_size = 72", 'domain_size = "72"'))
    assert "fabric.domain_size" in message and "integer" in message
    message = _error_for(tmp_path, GB200_TEXT.replace("nvls_available = true", "nvls_available = 1"))
    assert "fabric.nvls_available" in message


def test_efficiency_above_one_is_rejected(tmp_path):
    message = _error_for(tmp_path, GB200_TEXT.replace("nvls_efficiency = 0.74", "nvls_efficiency = 1.5"))
    assert "fabric.nvls_efficiency" in message


def test_unknown_field_suggests_the_closest(tmp_path):
    message = _error_for(tmp_path, GB200_TEXT.replace("ring_step_us", "ring_stp_us"))
    assert "unknown field 'fabric.ring_stp_us'" in message
    assert "did you mean 'ring_step_us'" in message


def test_unknown_name_lists_known_ones():
    with pytest.raises(TopologyError) as info:
        load_topology("gb200-nvl7")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown topology 'gb200-nvl7'" in message
    for name in SHIPPED:
        assert name in message


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(TopologyError, match="not found"):
        load_topology(str(tmp_path / "nope.toml"))
