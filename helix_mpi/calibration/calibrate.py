"""`helix-mpi calibrate`: a new topology from a user's own measurements, in one command.

Inputs: standard nccl-tests logs (calibration.nccltests) and, optionally, kernel CSVs in the
columns of NVIDIA AIConfigurator's tables (calibration.derive.UserSource). Output: NEW.toml, a
copy of the base topology's file naming the new machine and its tables folder, and the folder
NEW.tables/ holding the base topology's tables with the user's measurements in place of the
matching ones: a measured (collective, rank count) replaces the base's; a kernel table derived
from the user's CSVs replaces the base's table of that kind. Every table records its sources.
The fits of `calibration.fits` are then computed from the new tables on first use, exactly as for
the shipped ones.

Everything is written to temporary names first and renamed when complete: on any error nothing
is left behind.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .derive import SCHEMA, TABLES, UserSource
from .nccltests import NcclTestsLog

MICRO = 1e-6


class CalibrationError(ValueError):
    """A calibration that cannot be done; the message is one line."""


def nccl_table(logs: list[NcclTestsLog], base: dict | None) -> dict:
    """The base nccl.json with every (op, rank count) the logs measured replaced by their rows."""
    table = json.loads(json.dumps(base)) if base else {"ops": {}}
    table.update(schema=SCHEMA, table="nccl", system="user", derived_by="helix-mpi calibrate",
                 units="latency_us in microseconds; bytes in bytes",
                 note="nccl-tests size and out-of-place time (us) of each row of the logs")
    sources = list(table.get("source_files", []))
    for log in logs:
        entry = {"nccl_version": "user", "bytes": [int(b) for b in log.sizes],
                 "latency_us": [float(f"{s / MICRO:.4g}") for s in log.seconds]}
        table["ops"].setdefault(log.op, {})[str(log.ranks)] = entry
        sources.append(f"nccl-tests log {log.path} ({log.op}, {log.ranks} ranks)")
    table["source"] = "the user's nccl-tests logs (see source_files), over the base topology's table"
    table["source_files"] = sources
    return table


def kernel_tables(paths: list[str]) -> dict[str, dict]:
    """{table name: JSON document} derived from the user's kernel CSVs with the shipped derivation."""
    if not paths:
        return {}
    try:
        source = UserSource(paths)
        out = {}
        for name, derive in TABLES.items():
            built = derive(source) if _has_rows(source, name) else {}
            if "user" in built:
                bucket, body = built["user"]
                out[name] = {"schema": SCHEMA, "table": name, "system": "user", "derived_by": "helix-mpi calibrate",
                             "source": "the user's kernel CSVs", "source_files": sorted({p.split(":")[0] for p in
                                                                                         bucket.paths}),
                             "rows_in": bucket.rows_in, "units": "latency_us in microseconds", **body}
    except (ValueError, KeyError) as exc:
        raise CalibrationError(str(exc).strip("'\"")) from None
    return out


_TABLE_FILES = {"gemm": "gemm_trtllm", "attention": "attention_decode_trtllm", "mla": "mla_decode_trtllm",
                "moe": "moe_trtllm"}


def _has_rows(source: UserSource, name: str) -> bool:
    return bool(source.files.get(_TABLE_FILES.get(name, "")))


def new_toml(base_text: str, name: str, tables: str) -> str:
    """The base topology's TOML renamed, pointing at the new tables folder."""
    text = re.sub(r'(?m)^name\s*=\s*".*"', f'name = "{name}"', base_text, count=1)
    text = re.sub(r'(?m)^description\s*=\s*"(.*)"', lambda m: f'description = "{m.group(1)}, calibrated with '
                  f'helix-mpi calibrate"', text, count=1)
    line = f'tables = "{tables}"   # written by helix-mpi calibrate: the base tables with the user\'s measurements'
    if re.search(r"(?m)^\[calibration\]", text):
        return re.sub(r"(?m)^tables\s*=.*$", line, text, count=1)
    return text.rstrip("\n") + f"\n\n[calibration]\n{line}\n"


def calibrate(base_path: Path, base_tables: Path | None, logs: list[NcclTestsLog], kernel_csvs: list[str],
              output: Path) -> dict:
    """Write output (a .toml) and its tables folder; returns what was written."""
    if output.suffix != ".toml":
        raise CalibrationError(f"-o {output}: the new topology must be a .toml file")
    if not logs and not kernel_csvs:
        raise CalibrationError("nothing to calibrate from: give --nccl-tests LOG and/or --kernels CSV")
    if not output.parent.is_dir():
        raise CalibrationError(f"-o {output}: folder {output.parent} does not exist")
    kernels = kernel_tables(kernel_csvs)
    base_nccl = _read_json(base_tables / "nccl.json") if base_tables else None
    tables_dir = output.with_name(output.stem + ".tables")
    staging = Path(tempfile.mkdtemp(prefix=f".{output.stem}.", dir=output.parent))
    try:
        if base_tables:
            for path in base_tables.glob("*.json"):
                shutil.copy2(path, staging / path.name)
        documents = {**kernels, **({"nccl": nccl_table(logs, base_nccl)} if logs else {})}
        for name, document in documents.items():
            (staging / f"{name}.json").write_text(json.dumps(document, separators=(",", ":")) + "\n")
        toml_tmp = output.with_name(f".{output.name}.partial")
        toml_tmp.write_text(new_toml(base_path.read_text(), output.stem, tables_dir.name))
        if tables_dir.exists():
            shutil.rmtree(tables_dir)
        os.replace(staging, tables_dir)
        os.replace(toml_tmp, output)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        output.with_name(f".{output.name}.partial").unlink(missing_ok=True)
        raise CalibrationError(f"cannot write {output} ({exc.strerror or exc})") from None
    return {"topology": str(output), "tables": str(tables_dir), "replaced": sorted(documents),
            "logs": [{"path": log.path, "op": log.op, "ranks": log.ranks, "rows": len(log.sizes)} for log in logs]}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None

