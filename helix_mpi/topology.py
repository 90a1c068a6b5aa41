"""Hardware topologies: the GPU, its NVLink domain and the scale-out network.

Hardware is data. Every constant lives in a TOML file under ``topologies/``
with its public source written beside it; this module only loads, validates
and converts those files to SI units (bytes, seconds, FLOP/s).

File layout (units are in the key names; see ``topologies/README.md``)::

    name, description                  # top-level strings
    [gpu]        name, hbm_gb, hbm_gb_per_s, launch_overhead_us
    [gpu.dense_tflops]  bf16, fp8, fp4
    [fabric]     domain_size, link_gb_per_s, ring_base_us, ring_step_us,
                 a2a_base_us, a2a_step_us, nvls_available, nvls_base_us,
                 nvls_step_us, nvls_efficiency
    [scale_out]  gb_per_s, latency_us
"""

from __future__ import annotations

import dataclasses

import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

DEFAULT_TOPOLOGY = "gb200-nvl72"
PRECISIONS = ("bf16", "fp8", "fp4")
TOPOLOGY_PATH_ENV = "HELIX_MPI_TOPOLOGIES"
BUILTIN_TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"

GIGA = 1e9  # GB and GB/s are decimal, as on NVIDIA spec sheets
TERA = 1e12
MICRO = 1e-6


class TopologyError(ValueError):
    """A topology file or name is unusable; the message is one line."""


@dataclass(frozen=True)
class GpuSpec:
    name: str
    hbm_bytes: float  # HBM capacity, bytes
    hbm_bytes_per_s: float  # HBM bandwidth, bytes/s
    flops_per_s: Mapping[str, float]  # dense peak FLOP/s per precision (read-only)
    launch_overhead_s: float  # uncalibrated roofline: fixed cost added to every kernel, s
    host_launch_s: float = 5e-6  # without CUDA graphs: the host's time to issue one kernel, s


@dataclass(frozen=True)
class FabricSpec:
    domain_size: int  # GPUs sharing one NVLink/NVSwitch domain
    link_bytes_per_s: float  # NVLink bandwidth per GPU per direction, bytes/s
    ring_base_s: float  # ring collective fixed latency, s
    ring_step_s: float  # ring latency per step (one NVLink hop), s
    a2a_base_s: float  # direct all-to-all fixed latency, s
    a2a_step_s: float  # all-to-all latency per peer, s
    nvls_available: bool  # NVSwitch in-switch reduction (NVLink SHARP)
    nvls_base_s: float  # NVLS all-reduce fixed latency, s
    nvls_step_s: float  # NVLS latency per rank, s
    nvls_efficiency: float  # fraction of link bandwidth NVLS achieves


@dataclass(frozen=True)
class ScaleOutSpec:
    bytes_per_s: float  # network bandwidth per GPU per direction, bytes/s
    latency_s: float  # added latency per inter-domain hop, s


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    gpu: GpuSpec
    fabric: FabricSpec
    scale_out: ScaleOutSpec
    source: str  # file it was loaded from (citations are comments in that file)
    # measured tables of the GPU system and the physics fitted to them (None: spec constants only)
    calibration: Any = field(default=None, compare=False, repr=False)
    # NVLink domains (racks, or nodes of a DGX) joined by the scale-out network; None: as many as a
    # layout needs. Set by the file's `racks` key or --racks; it bounds the GPUs of a layout.
    racks: int | None = None

    @property
    def cluster_gpus(self) -> int | None:
        """GPUs in the modeled cluster (racks x domain size), None when unbounded."""
        return None if self.racks is None else self.racks * self.fabric.domain_size

    def check_gpus(self, gpus: int, flag: str = "GPUs") -> None:
        """One line when `gpus` do not fit in the cluster's racks."""
        if self.cluster_gpus is not None and gpus > self.cluster_gpus:
            needed = -(-gpus // self.fabric.domain_size)
            raise TopologyError(f"{gpus} {flag} exceed {self.racks} rack(s) of {self.fabric.domain_size} GPUs of "
                                f"{self.name}: use --racks {needed} or fewer GPUs")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view in SI units."""
        gpu = _fields_dict(self.gpu)
        gpu["flops_per_s"] = dict(self.gpu.flops_per_s)
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "gpu": gpu,
            "fabric": _fields_dict(self.fabric),
            "scale_out": _fields_dict(self.scale_out),
            "racks": self.racks,
            "calibration": None if self.calibration is None else str(self.calibration.directory),
        }


def _fields_dict(spec: Any) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


# --- schema -----------------------------------------------------------------
# key -> (kind, rule); kinds: "str", "bool", "int", "num"; rules: "positive"
# (> 0), "nonneg" (>= 0), "fraction" (0 < x <= 1), None.
_TOP_SCHEMA = {"name": ("str", None), "description": ("str", None)}
_TABLE_SCHEMAS: dict[str, dict[str, tuple[str, str | None]]] = {
    "gpu": {
        "name": ("str", None),
        "hbm_gb": ("num", "positive"),
        "hbm_gb_per_s": ("num", "positive"),
        "launch_overhead_us": ("num", "nonneg"),
        "host_launch_us": ("num", "nonneg"),
    },
    "gpu.dense_tflops": {p: ("num", "positive") for p in PRECISIONS},
    "fabric": {
        "domain_size": ("int", "positive"),
        "link_gb_per_s": ("num", "positive"),
        "ring_base_us": ("num", "nonneg"),
        "ring_step_us": ("num", "nonneg"),
        "a2a_base_us": ("num", "nonneg"),
        "a2a_step_us": ("num", "nonneg"),
        "nvls_available": ("bool", None),
        "nvls_base_us": ("num", "nonneg"),
        "nvls_step_us": ("num", "nonneg"),
        "nvls_efficiency": ("num", "fraction"),
    },
    "scale_out": {
        "gb_per_s": ("num", "positive"),
        "latency_us": ("num", "nonneg"),
    },
}
_SUBTABLES = {"": ("gpu", "fabric", "scale_out"), "gpu": ("dense_tflops",)}
_OPTIONAL_TABLES = {"calibration": {"tables": ("str", None)}}  # [calibration] tables = "dir of measured tables"
_OPTIONAL_TOP = {"racks": ("int", "positive")}  # racks = R: NVLink domains of the cluster (default: unbounded)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(choices)}"


def _check_keys(where: str, table: dict, origin: str) -> None:
    schema = _TOP_SCHEMA if where == "" else _TABLE_SCHEMAS.get(where) or _OPTIONAL_TABLES[where]
    subtables = _SUBTABLES.get(where, ())
    optional = list(_OPTIONAL_TABLES) if where == "" else []
    known = list(schema) + list(subtables) + optional + (list(_OPTIONAL_TOP) if where == "" else [])
    for key in table:
        if key not in known:
            label = f"{where}.{key}" if where else key
            raise TopologyError(f"{origin}: unknown field '{label}'{_suggest(key, known)}")
    for key in [k for k in known if k not in optional and k not in _OPTIONAL_TOP]:
        if key not in table:
            label = f"{where}.{key}" if where else key
            kind = "table" if key in subtables else "key"
            raise TopologyError(f"{origin}: missing {kind} '{label}'; add it (see topologies/README.md)")
    for key in subtables:
        label = f"{where}.{key}" if where else key
        if not isinstance(table[key], dict):
            raise TopologyError(f"{origin}: '{label}' must be a table like [{label}]")
        _check_keys(label, table[key], origin)
    for key in optional:
        if key in table and key not in _OPTIONAL_TOP:
            if not isinstance(table[key], dict):
                raise TopologyError(f"{origin}: '{key}' must be a table like [{key}]")
            _check_keys(key, table[key], origin)


def _check_value(label: str, value: Any, kind: str, rule: str | None, origin: str) -> Any:
    if kind == "str" and not isinstance(value, str):
        raise TopologyError(f"{origin}: '{label}' must be a string, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise TopologyError(f"{origin}: '{label}' must be true or false, got {value!r}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise TopologyError(f"{origin}: '{label}' must be an integer, got {value!r}")
    if kind == "num" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TopologyError(f"{origin}: '{label}' must be a number, got {value!r}")
    if kind == "num" and not math.isfinite(value):
        raise TopologyError(f"{origin}: '{label}' must be a finite number, got {value!r}")
    if rule == "positive" and not value > 0:
        raise TopologyError(f"{origin}: '{label}' must be > 0 (a bandwidth, capacity or count), got {value!r}")
    if rule == "nonneg" and not value >= 0:
        raise TopologyError(f"{origin}: '{label}' must be >= 0, got {value!r}")
    if rule == "fraction" and not 0 < value <= 1:
        raise TopologyError(f"{origin}: '{label}' must be in (0, 1], got {value!r}")
    return value


def _typed(raw: dict, origin: str) -> dict[str, dict[str, Any]]:
    """Validate every value; return {table: {key: value}} (table "" is top level)."""
    out: dict[str, dict[str, Any]] = {"": {}}
    for key, (kind, rule) in _TOP_SCHEMA.items():
        out[""][key] = _check_value(key, raw[key], kind, rule, origin)
    for where, schema in _TABLE_SCHEMAS.items():
        table = raw
        for part in where.split("."):
            table = table[part]
        out[where] = {
            key: _check_value(f"{where}.{key}", table[key], kind, rule, origin)
            for key, (kind, rule) in schema.items()
        }
    return out


def topology_from_toml(raw: dict, origin: str = "topology", base: Path | None = None) -> Topology:
    """Build a Topology from its parsed TOML table (file units), validating everything; a
    [calibration] tables path is relative to `base` (the file's folder). The inverse of
    Topology.to_dict() (SI units, as traces record it) is replay.topology_from_dict."""
    _check_keys("", raw, origin)
    values = _typed(raw, origin)
    calibration = None
    if "calibration" in raw:
        tables = _check_value("calibration.tables", raw["calibration"]["tables"], "str", None, origin)
        calibration = load_calibration(_tables_dir(tables, base), origin)
    gpu, tflops, fabric, net = (values[k] for k in ("gpu", "gpu.dense_tflops", "fabric", "scale_out"))
    return Topology(
        name=values[""]["name"],
        description=values[""]["description"],
        source=origin,
        gpu=GpuSpec(
            name=gpu["name"],
            hbm_bytes=gpu["hbm_gb"] * GIGA,
            hbm_bytes_per_s=gpu["hbm_gb_per_s"] * GIGA,
            flops_per_s=MappingProxyType({p: tflops[p] * TERA for p in PRECISIONS}),
            launch_overhead_s=gpu["launch_overhead_us"] * MICRO,
            host_launch_s=gpu["host_launch_us"] * MICRO,
        ),
        fabric=FabricSpec(
            domain_size=fabric["domain_size"],
            link_bytes_per_s=fabric["link_gb_per_s"] * GIGA,
            ring_base_s=fabric["ring_base_us"] * MICRO,
            ring_step_s=fabric["ring_step_us"] * MICRO,
            a2a_base_s=fabric["a2a_base_us"] * MICRO,
            a2a_step_s=fabric["a2a_step_us"] * MICRO,
            nvls_available=fabric["nvls_available"],
            nvls_base_s=fabric["nvls_base_us"] * MICRO,
            nvls_step_s=fabric["nvls_step_us"] * MICRO,
            nvls_efficiency=float(fabric["nvls_efficiency"]),
        ),
        scale_out=ScaleOutSpec(
            bytes_per_s=net["gb_per_s"] * GIGA,
            latency_s=net["latency_us"] * MICRO,
        ),
        calibration=calibration,
        racks=_check_value("racks", raw["racks"], *_OPTIONAL_TOP["racks"], origin) if "racks" in raw else None,
    )


def _tables_dir(tables: str, base: Path | None) -> Path:
    """A [calibration] tables folder: relative to the topology file, else to the built-in
    topologies/ (so a copy of a built-in file keeps its tables)."""
    path = (base or Path(".")) / tables
    builtin = BUILTIN_TOPOLOGY_DIR / tables
    return path if path.is_dir() or not builtin.is_dir() else builtin


def load_calibration(directory: str | Path, origin: str = "topology"):
    """The measured tables in `directory` and the physics fitted to them (cached per folder)."""
    from .calibration import SystemCalibration, TableError

    try:
        return SystemCalibration.load(Path(directory).resolve())
    except TableError as exc:
        raise TopologyError(f"{origin}: {exc}") from None


# --- lookup -----------------------------------------------------------------
def _search_dirs() -> list[Path]:
    extra = os.environ.get(TOPOLOGY_PATH_ENV, "")
    dirs = [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs + [BUILTIN_TOPOLOGY_DIR]


def list_topologies() -> list[str]:
    """Names of all topology files found in the search directories."""
    names = {path.stem for d in _search_dirs() if d.is_dir() for path in d.glob("*.toml")}
    return sorted(names)


def _looks_like_path(text: str) -> bool:
    return text.endswith(".toml") or "/" in text or os.sep in text


def _resolve(name_or_path: str) -> Path:
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise TopologyError(f"topology file not found: {path}; check the path")
        return path
    for directory in _search_dirs():
        candidate = directory / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = list_topologies()
    hint = difflib.get_close_matches(name_or_path, known, n=1)
    maybe = f"did you mean '{hint[0]}'? " if hint else ""
    raise TopologyError(
        f"unknown topology '{name_or_path}'; {maybe}known: {', '.join(known)} "
        f"(or pass a path to a .toml file)"
    )


def load_topology(name_or_path: str = DEFAULT_TOPOLOGY, racks: int | None = None) -> Topology:
    """Load a topology by bare name (searched in $HELIX_MPI_TOPOLOGIES, then
    the package's ``topologies/`` folder) or by path to a TOML file; `racks` (--racks) replaces
    the file's number of NVLink domains."""
    if racks is not None and racks < 1:
        raise TopologyError(f"--racks must be >= 1, got {racks}")
    topo = _load_topology_file(name_or_path)
    return topo if racks is None else dataclasses.replace(topo, racks=racks)


def _load_topology_file(name_or_path: str) -> Topology:
    path = _resolve(str(name_or_path))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        detail = " ".join(str(exc).split())
        raise TopologyError(f"{path}: TOML syntax error: {detail}") from None
    except RecursionError:
        raise TopologyError(f"{path}: TOML syntax error: values nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise TopologyError(f"{path}: cannot read it ({reason})") from None
    return topology_from_toml(raw, origin=str(path), base=path.parent)
