"""`helix-mpi fidelity` and `helix-mpi calibrate`, registered on the group by cli.py. Only click
lives here: the work is in fidelity.py and calibration/ (nccltests, calibrate)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .cliutil import one_line_errors


def _one_line_errors():
    """Bad logs, CSVs, topology or options: one line `helix-mpi: error: ...`, exit 2."""
    from .calibration.calibrate import CalibrationError
    from .calibration.nccltests import NcclTestsError
    from .fidelity import FidelityError

    return one_line_errors(NcclTestsError, FidelityError, CalibrationError)


def _is_e2e(path: str) -> bool:
    try:
        with open(path, newline="") as handle:
            return "silicon_tpot_ms" in handle.readline()
    except (OSError, UnicodeDecodeError):
        return False


def _e2e_report(paths: list[str], decode_dominated: bool, backend: str | None) -> dict[str, Any]:
    from .fidelity import error_stats, predict_tpot, read_e2e

    topologies: dict = {}
    rows = [row for path in paths for row in read_e2e(path)
            if (not decode_dominated or row.decode_dominated) and (backend is None or row.backend == backend)]
    predictions = [predict_tpot(row, topologies) for row in rows]
    groups: dict[tuple, list] = {}
    for p in predictions:
        groups.setdefault((p.row.model.split("/")[-1], p.row.system, p.row.backend, p.row.mode), []).append(p.error)
    return {
        "rows": [{"id": p.row.id, "model": p.row.model, "system": p.row.system, "backend": p.row.backend,
                  "mode": p.row.mode, "isl": p.row.isl, "osl": p.row.osl, "batch": p.row.batch, "layout": p.layout,
                  "measured_tpot_s": p.row.tpot_s, "predicted_tpot_s": p.tpot_s, "decode_s": p.decode_s,
                  "prefill_share_s": p.prefill_share_s, "error": p.error, "skipped": p.skipped or None,
                  "decode_dominated": p.row.decode_dominated} for p in predictions],
        "all": error_stats([p.error for p in predictions]),
        "decode_dominated": error_stats([p.error for p in predictions if p.row.decode_dominated]),
        "groups": [{"model": k[0], "system": k[1], "backend": k[2], "mode": k[3], **error_stats(v)}
                   for k, v in sorted(groups.items())],
        "skipped": sum(1 for p in predictions if p.skipped),
    }


def _collective_report(paths: list[str], topology: str, comm: str, ranks: int | None, op: str | None
                       ) -> dict[str, Any]:
    from .calibration.nccltests import read_nccl_tests
    from .fidelity import error_stats, predict_collectives
    from .topology import load_topology

    topo = load_topology(topology)
    predictions = [p for path in paths for p in predict_collectives(read_nccl_tests(path, op, ranks), topo, comm)]
    return {"topology": topo.name, "comm": comm,
            "rows": [{"path": p.path, "op": p.op, "ranks": p.ranks, "bytes": p.size, "measured_s": p.measured_s,
                      "predicted_s": p.predicted_s, "source": p.source, "error": p.error} for p in predictions],
            "all": error_stats([p.error for p in predictions])}


def _stats_line(label: str, stats: dict[str, Any]) -> str:
    if not stats.get("rows"):
        return f"{label:<34} no rows"
    return (f"{label:<34} rows {stats['rows']:4d}  median |error| {stats['median_abs_error'] * 100:5.1f} %  "
            f"median error {stats['median_error'] * 100:+6.1f} %  geomean predicted/measured "
            f"{stats['geomean_ratio']:.3f}  p90 |error| {stats['p90_abs_error'] * 100:5.1f} %")


def _print_report(report: dict[str, Any], show_rows: bool) -> None:
    if show_rows:
        for row in report["rows"]:
            if "measured_tpot_s" in row:
                value = ("skipped: " + row["skipped"]) if row["skipped"] else (
                    f"predicted {row['predicted_tpot_s'] * 1e3:8.3f} ms  error {row['error'] * 100:+6.1f} %")
                click.echo(f"{row['model'].split('/')[-1]:>16} {row['system']:>9} {row['backend']:>7} {row['mode']:>6} "
                           f"{row['isl']:>5}/{row['osl']:<5} B={row['batch']:<4} {row['layout']:<40} measured "
                           f"{row['measured_tpot_s'] * 1e3:8.3f} ms  {value}")
            else:
                click.echo(f"{row['op']:>14} {row['ranks']:>3} ranks {row['bytes']:>12.0f} B  measured "
                           f"{row['measured_s'] * 1e6:10.2f} us  predicted {row['predicted_s'] * 1e6:10.2f} us "
                           f"({row['source']})  error {row['error'] * 100:+6.1f} %")
    for group in report.get("groups", []):
        label = f"{group['model']} {group['system']} {group['backend']} {group['mode']}"
        click.echo(_stats_line(label, group))
    if "decode_dominated" in report:
        click.echo(_stats_line("decode-dominated (ISL <= OSL/4)", report["decode_dominated"]))
    click.echo(_stats_line("all rows", report["all"]))
    if report.get("skipped"):
        click.echo(f"{report['skipped']} rows could not be predicted (see --rows)")


def _plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("error") is not None]
    e2e = "measured_tpot_s" in rows[0] if rows else True
    measured = [r["measured_tpot_s"] * 1e3 if e2e else r["measured_s"] * 1e6 for r in rows]
    predicted = [r["predicted_tpot_s"] * 1e3 if e2e else r["predicted_s"] * 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 6))
    if e2e:
        for backend in sorted({r["backend"] for r in rows}):
            pick = [i for i, r in enumerate(rows) if r["backend"] == backend]
            ax.scatter([measured[i] for i in pick], [predicted[i] for i in pick], s=10, label=backend, alpha=0.7)
    else:
        ax.scatter(measured, predicted, s=10, alpha=0.7)
    low, high = min(measured + predicted), max(measured + predicted)
    ax.plot([low, high], [low, high], "k-", lw=1, label="predicted = measured")
    ax.plot([low, high], [low * 1.1, high * 1.1], "k:", lw=0.8, label="+/-10 %")
    ax.plot([low, high], [low / 1.1, high / 1.1], "k:", lw=0.8)
    unit = "ms per output token" if e2e else "us"
    ax.set(xscale="log", yscale="log", xlabel=f"measured ({unit})", ylabel=f"modeled ({unit})",
           title=f"helix-mpi fidelity: median |error| {report['all'].get('median_abs_error', float('nan')) * 100:.1f} %")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".partial.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("files", nargs=-1, required=True)
    @click.option("--topology", default="gb200-nvl72", show_default=True,
                  help="machine the nccl-tests logs were measured on (e2e rows name their own system)")
    @click.option("--comm", type=click.Choice(["nccl", "trtllm"]), default="nccl", show_default=True,
                  help="collectives implementation to predict nccl-tests logs with")
    @click.option("--ranks", type=int, help="rank count of logs without '# Rank' lines")
    @click.option("--op", help="the collective a log measures, if neither its text nor its name says")
    @click.option("--decode-dominated", is_flag=True, help="only end-to-end rows with ISL <= OSL / 4")
    @click.option("--backend", help="only end-to-end rows of this backend (trtllm, sglang, vllm)")
    @click.option("--rows", "show_rows", is_flag=True, help="print every row, not only the summary")
    @click.option("--plot", type=click.Path(dir_okay=False), help="draw predicted vs measured to this PNG")
    @click.option("--json", "as_json", is_flag=True, help="print one JSON object")
    def fidelity(files, topology, comm, ranks, op, decode_dominated, backend, show_rows, plot, as_json) -> None:
        """Predict every row of measured files and report the errors: end-to-end TPOT files (the
        e2e_tpot CSV columns, e.g. topologies/calibration/e2e_tpot.csv) or nccl-tests logs."""
        with _one_line_errors():
            missing = [f for f in files if not Path(f).is_file()]
            if missing:
                raise click.ClickException(f"{missing[0]}: no such file")
            kinds = {_is_e2e(f) for f in files}
            if len(kinds) > 1:
                raise click.ClickException("give either end-to-end CSV files or nccl-tests logs, not both at once")
            report = (_e2e_report(list(files), decode_dominated, backend) if kinds.pop()
                      else _collective_report(list(files), topology, comm, ranks, op))
            if plot:
                _plot(report, plot)
        if as_json:
            click.echo(json.dumps(report, default=float))
        else:
            _print_report(report, show_rows)

    @cli.command()
    @click.option("--topology", "base", required=True, help="the topology to start from (name or TOML path)")
    @click.option("--nccl-tests", "logs", multiple=True, help="an nccl-tests log (repeat for several)")
    @click.option("--ranks", type=int, help="rank count of logs without '# Rank' lines")
    @click.option("--op", help="the collective every log measures, if neither its text nor its name says")
    @click.option("--kernels", multiple=True,
                  help="a kernel CSV in AIConfigurator's columns (gemm, attention, MLA, MoE tables; repeatable)")
    @click.option("-o", "--output", required=True, help="the new topology file (NEW.toml; tables go to NEW.tables/)")
    @click.option("--json", "as_json", is_flag=True, help="print one JSON object")
    def calibrate(base, logs, ranks, op, kernels, output, as_json) -> None:
        """Fit a topology to your own cluster: nccl-tests logs (and kernel tables) replace the base
        topology's measurements; use the result at once with --topology NEW.toml."""
        from .calibration.calibrate import calibrate as write_calibration
        from .calibration.nccltests import read_nccl_tests
        from .fidelity import error_stats, predict_collectives
        from .topology import load_topology

        with _one_line_errors():
            topo = load_topology(base)
            parsed = [read_nccl_tests(path, op, ranks) for path in logs]
            base_tables = topo.calibration.directory if topo.calibration is not None else None
            written = write_calibration(Path(topo.source), base_tables, parsed, list(kernels), Path(output))
            new = load_topology(str(Path(output)))
            errors = [p.error for log in parsed for p in predict_collectives(log, new, "nccl")]
            written["fit_check"] = error_stats(errors)
            written["collective_fits"] = {op_name: fit.describe() for op_name, fit in
                                          new.calibration.fits.collectives.nccl.items()}
        if as_json:
            click.echo(json.dumps(written, default=float))
            return
        click.echo(f"wrote {written['topology']} and {written['tables']} (replaced: {', '.join(written['replaced'])})")
        for op_name, fit in written["collective_fits"].items():
            terms = fit["terms"]
            latency = terms.get("step_s", terms.get("peer_s", 0.0))
            click.echo(f"  {op_name:<15} base {terms['base_s'] * 1e6:6.2f} us, {latency * 1e6:5.2f} us per step, "
                       f"bus bandwidth {1 / terms['s_per_bus_byte'] / 1e9 if terms['s_per_bus_byte'] else float('inf'):7.1f}"
                       f" GB/s (median fit error {fit['median_error'] * 100:.1f} %)")
        if errors:
            click.echo(_stats_line("your logs, as now modeled", written["fit_check"]))
        click.echo(f"use it: helix-mpi model --topology {output} ...")


def print_fits(topo, as_json: bool) -> None:
    """`helix-mpi topologies --fits NAME`: the fitted models of a calibrated topology."""
    from .calibration.fits import describe_fits

    if topo.calibration is None:
        click.echo(f"{topo.name} has no measured tables ([calibration] tables = ...): it is timed by the spec "
                   "rooflines of its TOML file")
        return
    rows = describe_fits(topo.calibration.fits)
    if as_json:
        click.echo(json.dumps({"topology": topo.name, "tables": str(topo.calibration.directory), "fits": rows}))
        return
    click.echo(f"{topo.name}: physics fitted to {topo.calibration.directory}")
    for row in rows:
        terms = ", ".join(f"{k} {v}" for k, v in row["terms"].items())
        click.echo(f"  {row['model']:<38} {terms}  ({row['points']} points, median |error| "
                   f"{row['median_error'] * 100:.1f} %)")
