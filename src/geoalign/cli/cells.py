"""`geoalign cells`: build, inspect, import and apply S2 partition hierarchies (GeoSURGE geocells)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result, progress_bar

cells_app = typer.Typer(
    help="S2 geocell partition hierarchies (GeoSURGE): build, show, assign, import.",
    no_args_is_help=True,
)

_DEFAULT_TAUS = "25000,10000,5000,2000,1000,750,500"


def _parse_taus(text: str) -> list[int]:
    try:
        taus = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        fail(f"--tau-max must be comma-separated integers, got {text!r}")
    if not taus or min(taus) < 1:
        fail(f"--tau-max needs positive integers, got {text!r}")
    if len(set(taus)) != len(taus):
        fail(f"--tau-max values must be distinct, got {text!r}")
    return taus


def _read_coordinates(path: Path, lat_col: str | None, lon_col: str | None, skip_bad: bool):
    """(lat, lon, data row numbers) from a CSV/TSV/Parquet table (only the two columns are read).

    Bad rows are named by 1-based data row (header not counted), as in `geoalign data check`.
    """
    import numpy as np

    from geoalign.data.tables import read_table, resolve_columns, table_columns
    from geoalign.errors import DataError
    from geoalign.geo.coords import check_coordinates, format_row_errors

    given = {k: v for k, v in {"lat": lat_col, "lon": lon_col}.items() if v}
    cols = resolve_columns(table_columns(path), given, source=str(path), require_image=False)
    table = read_table(path, string_columns=(), columns=[cols["lat"], cols["lon"]])
    check = check_coordinates(table[cols["lat"]], table[cols["lon"]])
    errors = check.errors()
    rows = np.arange(1, len(table) + 1)
    if errors:
        message = format_row_errors(str(path), errors)
        if not skip_bad:
            raise DataError(message + " (--skip-bad-rows leaves them out)")
        console.print(f"[yellow]warning:[/] {message}; left out")
    good = check.good
    return check.lat[good], check.lon[good], rows[good]


class _Steps:
    """Adapts the library's progress(step, done, total) callbacks to one rich bar per step."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if step not in self.tasks:
            self.tasks[step] = self.progress.add_task(step, total=total)
        self.progress.update(self.tasks[step], completed=done)


def _write_labels(path: Path, rows, labels, hierarchy) -> None:
    import pandas as pd

    from geoalign.io_atomic import atomic_output

    frame = pd.DataFrame({"row": rows})
    for k in range(len(hierarchy)):
        frame[f"cell_{k}"] = labels[:, k]
    with atomic_output(path) as tmp:
        if path.suffix.lower() in {".parquet", ".pq"}:
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def _levels(hierarchy) -> list[dict]:
    """One row per level (coarse to fine): the numbers behind `cells show`, table or JSON."""
    import numpy as np

    reports = {(r.fine, r.coarse): r for r in hierarchy.nesting()}
    rows = []
    for k, part in enumerate(hierarchy.partitions):
        counts, lv = part.counts, part.levels
        coarser = [reports[(part.name, c.name)] for c in hierarchy.partitions[:k]]
        empty = not len(part)
        rows.append(
            {
                "level": k,
                "tau_max": part.tau_max,
                "cells": len(part),
                "samples": int(counts.sum()),
                "min": None if empty else int(counts.min()),
                "median": None if empty else float(np.median(counts)),
                "max": None if empty else int(counts.max()),
                "s2_levels": None if empty else [int(lv.min()), int(lv.max())],
                "not_nested": None if k == 0 else sum(r.fine_cells - r.inside_one for r in coarser),
            }
        )
    return rows


def _summary(hierarchy, *, result: bool = False) -> None:
    """The per-level table: a result for `show` (stdout), a log line for the writers (stderr)."""
    from rich.table import Table

    table = Table(title="partition hierarchy (coarse to fine)")
    for col in ("#", "tau_max", "cells", "samples", "min", "median", "max", "S2 lvl"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("nested", no_wrap=True)
    for row in _levels(hierarchy):
        bad = row["not_nested"]
        nested = "-" if bad is None else ("yes" if bad == 0 else f"[red]{bad} cells not[/]")
        stats = (
            ["-"] * 4
            if row["min"] is None
            else [
                str(row["min"]),
                f"{row['median']:g}",
                str(row["max"]),
                "{}-{}".format(*row["s2_levels"]),
            ]
        )
        tau = "?" if row["tau_max"] is None else str(row["tau_max"])
        table.add_row(
            str(row["level"]), tau, str(row["cells"]), str(row["samples"]), *stats, nested
        )
    if result:
        print_result(table)
    else:
        console.print(table)


@cells_app.command("build")
def build(
    table: Path = typer.Argument(..., help="CSV/TSV/Parquet with latitude and longitude columns."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the hierarchy (created)."),
    tau_min: int = typer.Option(50, "--tau-min", help="Drop cells with fewer samples."),
    tau_max: str = typer.Option(
        _DEFAULT_TAUS, "--tau-max", help="Comma-separated split thresholds, one partition each."
    ),
    rules: str = typer.Option(
        "paper",
        "--rules",
        help="paper: start at the 6 faces, keep cells with >= tau-min samples (GeoSURGE). "
        "geoestimation: start at level 2, keep > tau-min (the script behind the MP-16 files).",
    ),
    min_level: int | None = typer.Option(None, "--min-level", help="Override the start level."),
    max_level: int = typer.Option(30, "--max-level", help="Never split below this S2 level."),
    lat_col: str | None = typer.Option(None, "--lat-col", help="Latitude column name."),
    lon_col: str | None = typer.Option(None, "--lon-col", help="Longitude column name."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Leave out rows with bad coordinates instead of failing."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Also write each input row's class index per level (CSV/Parquet)."
    ),
) -> None:
    """Partition training coordinates into nested S2 cells, one partition per tau-max."""
    from geoalign.errors import GeoalignError
    from geoalign.geo.s2.hierarchy import CellHierarchy
    from geoalign.geo.s2.partition import PartitionRules

    taus = _parse_taus(tau_max)
    if rules not in {"paper", "geoestimation"}:
        fail(f"--rules must be 'paper' or 'geoestimation', got {rules!r}")
    try:
        base = PartitionRules() if rules == "paper" else PartitionRules.geoestimation()
        part_rules = PartitionRules(
            tau_min=tau_min,
            min_level=base.min_level if min_level is None else min_level,
            max_level=max_level,
            min_inclusive=base.min_inclusive,
        )
    except ValueError as err:
        fail(str(err))
    try:
        with console.status(f"reading {table} ..."):
            lat, lon, rows = _read_coordinates(table, lat_col, lon_col, skip_bad_rows)
        if lat.size == 0:
            fail(f"{table}: no rows with coordinates")
        with progress_bar() as progress:
            hierarchy = CellHierarchy.build(lat, lon, taus, part_rules, progress=_Steps(progress))
            hierarchy.params["source"] = str(table)
            hierarchy.save(out)
            if labels is not None:
                steps = _Steps(progress)
                assigned = hierarchy.assign(
                    lat, lon, progress=lambda d: steps("assign", d, lat.size)
                )
                _write_labels(labels, rows, assigned, hierarchy)
    except (GeoalignError, ValueError) as err:
        fail(str(err))
    _summary(hierarchy)
    console.print(f"wrote {out}/ ({len(hierarchy)} partitions)")
    if labels is not None:
        console.print(f"wrote {labels} (class index per level; -1 = dropped region)")


@cells_app.command("show")
def show(
    folder: Path = typer.Argument(..., help="Hierarchy folder written by `cells build/import`."),
    map_html: Path | None = typer.Option(None, "--map", help="Write an HTML map of one level."),
    level: int = typer.Option(-1, "--level", help="Level index for --map (default: finest)."),
    tiles: str | None = typer.Option(
        None,
        "--tiles",
        help="Tile URL template ({z}/{x}/{y}) drawn under the map; default: offline country "
        "outlines, no network needed.",
    ),
    no_tiles: bool = typer.Option(
        False, "--no-tiles", hidden=True, help="Kept for old scripts: no tiles is the default."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per-level table of cell and sample counts; optionally an offline HTML map of one level."""
    from geoalign.errors import GeoalignError
    from geoalign.geo.s2.hierarchy import CellHierarchy

    try:
        hierarchy = CellHierarchy.load(folder)
    except GeoalignError as err:
        fail(str(err))
    params = hierarchy.params
    shown = {
        k: params[k]
        for k in ("tau_min", "min_level", "max_level", "min_inclusive", "n_samples")
        if k in params
    }
    if as_json:
        record = {"folder": str(folder), "params": shown, "levels": _levels(hierarchy)}
        typer.echo(json.dumps(record))
    else:
        print_result(f"[bold]{folder}[/]: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        _summary(hierarchy, result=True)
    if map_html is not None:
        from geoalign.geo.s2.cellmap import cell_features, save_cell_map
        from geoalign.geo.webmap import check_tile_url

        if tiles is not None and no_tiles:
            fail("--tiles and --no-tiles contradict each other; give one")
        try:
            tile_url = None if tiles is None else check_tile_url(tiles)
        except GeoalignError as err:
            fail(f"--tiles: {err}")
        if not -len(hierarchy) <= level < len(hierarchy):
            fail(
                f"--level must be in [0, {len(hierarchy) - 1}] (or negative from the end), got {level}"
            )
        part = hierarchy.partitions[level]
        with console.status(f"drawing {len(part):,} cells ..."):
            save_cell_map(map_html, cell_features(part), tiles=tile_url, title=part.name)
        console.print(f"wrote {map_html} ({part.name}, {len(part):,} cells)")


@cells_app.command("assign")
def assign(
    folder: Path = typer.Argument(..., help="Hierarchy folder."),
    table: Path = typer.Argument(..., help="CSV/TSV/Parquet with latitude and longitude columns."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV or Parquet: row, cell_0..cell_K."),
    missing: str = typer.Option(
        "none", "--missing", help="Points in dropped regions: none (-1) or nearest (nearest cell)."
    ),
    lat_col: str | None = typer.Option(None, "--lat-col", help="Latitude column name."),
    lon_col: str | None = typer.Option(None, "--lon-col", help="Longitude column name."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Leave out bad rows."),
) -> None:
    """Class index of every point at every level of a hierarchy."""
    from geoalign.errors import GeoalignError
    from geoalign.geo.s2.hierarchy import CellHierarchy

    if missing not in {"none", "nearest"}:
        fail(f"--missing must be 'none' or 'nearest', got {missing!r}")
    try:
        hierarchy = CellHierarchy.load(folder)
        with console.status(f"reading {table} ..."):
            lat, lon, rows = _read_coordinates(table, lat_col, lon_col, skip_bad_rows)
        with progress_bar() as progress:
            steps = _Steps(progress)
            labels = hierarchy.assign(
                lat, lon, missing=missing, progress=lambda d: steps("assign", d, lat.size)
            )
        _write_labels(out, rows, labels, hierarchy)
    except GeoalignError as err:
        fail(str(err))
    outside = (labels < 0).sum(axis=0).tolist()
    console.print(f"wrote {out}: {len(rows):,} rows; unassigned per level: {outside}")


@cells_app.command("import")
def import_csv(
    files: list[Path] = typer.Argument(
        ..., help="GeoEstimation cell CSVs (cells_50_5000.csv ...)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the hierarchy."),
    no_repair: bool = typer.Option(
        False, "--no-repair", help="Fail on spreadsheet-mangled tokens instead of repairing them."
    ),
) -> None:
    """Turn published partition CSVs (class_label, hex_id, imgs_per_cell, ...) into a hierarchy."""
    from geoalign.errors import GeoalignError
    from geoalign.geo.s2.reference import read_cell_csvs

    try:
        hierarchy, repairs = read_cell_csvs(files, repair=not no_repair)
        hierarchy.save(out)
    except GeoalignError as err:
        fail(str(err))
    for name, fixes in repairs.items():
        fixed = [r for r in fixes if r.token]
        lost = [r for r in fixes if not r.token]
        if fixes:
            console.print(
                f"{name}: repaired {len(fixed)} tokens (e.g. {fixed[0].raw!r} -> {fixed[0].token!r})"
                if fixed
                else f"{name}:"
            )
        for r in lost:
            console.print(
                f"[yellow]warning:[/] {name}: row {r.row}: token {r.raw!r} left out "
                f"({len(r.candidates)} candidate cells: {', '.join(r.candidates[:6])})"
            )
    _summary(hierarchy)
    console.print(f"wrote {out}/")


def register(app: typer.Typer) -> None:
    app.add_typer(cells_app, name="cells")
