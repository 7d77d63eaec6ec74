"""`geoalign data`: check manifests and benchmark folders before spending hours on them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli._options import check_output_file, write_json_file
from geoalign.cli.common import console, fail, print_result

data_app = typer.Typer(
    help="Check image manifests and benchmark folders.",
    no_args_is_help=True,
)


def _columns(image_col: str | None, lat_col: str | None, lon_col: str | None) -> dict[str, str]:
    given = {"image": image_col, "lat": lat_col, "lon": lon_col}
    return {k: v for k, v in given.items() if v}


@data_app.command("check")
def check(
    manifest: Path = typer.Argument(..., help="CSV, TSV or Parquet manifest: image, lat, lon."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder image paths are relative to (default: the manifest's)."
    ),
    no_files: bool = typer.Option(False, "--no-files", help="Do not check that images exist."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write the full report here (-: to stdout)."
    ),
    max_rows: int = typer.Option(20, "--max-rows", help="How many bad rows to list."),
    image_col: str | None = typer.Option(None, "--image-col", help="Image path/id column."),
    lat_col: str | None = typer.Option(None, "--lat-col", help="Latitude column."),
    lon_col: str | None = typer.Option(None, "--lon-col", help="Longitude column."),
) -> None:
    """Report every bad row of a manifest. Exit code 0 when clean, 1 when rows have errors."""
    from rich.table import Table

    from geoalign.data.manifest import ROW_CONVENTION, check_manifest
    from geoalign.errors import GeoalignError

    if json_out is not None and str(json_out) != "-":
        check_output_file(json_out, option="--json")
    try:
        with console.status(f"checking {manifest} ..."):
            report = check_manifest(
                manifest,
                image_root=image_root,
                check_files=not no_files,
                columns=_columns(image_col, lat_col, lon_col),
            )
    except GeoalignError as err:
        fail(str(err))
    if json_out is not None:
        write_json_file(json_out, report.to_dict())
    if report.n_rows == 0:
        fail(f"{manifest}: no data rows (a header only?); a manifest lists one image per row")
    # The report is the result (stdout), unless JSON already goes there.
    show = console.print if json_out is not None and str(json_out) == "-" else print_result
    cols = ", ".join(f"{k}={v!r}" for k, v in report.columns.items())
    show(f"[bold]{manifest}[/]: {report.n_rows} rows; columns {cols}")
    if report.checked_files:
        show(f"image files checked under {report.image_root}")
    else:
        show("image files not checked (--no-files)")
    if report.issues:
        counts = Table(title="problems by reason")
        counts.add_column("reason")
        counts.add_column("severity")
        counts.add_column("rows", justify="right")
        for severity in ("error", "warning"):
            for reason, n in report.counts(severity).items():
                style = "red" if severity == "error" else "yellow"
                counts.add_row(reason, f"[{style}]{severity}[/]", str(n))
        show(counts)
        rows = Table(title=f"first {min(max_rows, len(report.issues))} problems ({ROW_CONVENTION})")
        rows.add_column("row", justify="right")
        rows.add_column("reason")
        rows.add_column("detail", overflow="fold")
        for issue in report.issues[:max_rows]:
            rows.add_row(str(issue.row), issue.reason, issue.message)
        show(rows)
        if len(report.issues) > max_rows:
            more = len(report.issues) - max_rows
            hint = f" (all in {json_out})" if json_out else " (--json FILE lists all)"
            show(f"... {more} more{hint}")
    if report.ok:
        show(f"[green]OK[/]: no errors in {report.n_rows} rows")
        raise typer.Exit(0)
    show(
        f"[red]{len(report.bad_rows)} of {report.n_rows} rows have errors[/]; training refuses "
        "this manifest unless bad rows are skipped (they are then written to a .skipped.csv)"
    )
    raise typer.Exit(1)


@data_app.command("benchmarks")
def benchmarks(
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
) -> None:
    """List the known benchmarks, their label files and image naming."""
    from rich.table import Table

    from geoalign.data.benchmarks import list_benchmarks

    if as_json:
        for b in list_benchmarks():
            record = {
                "name": b.name,
                "rows": b.expected_rows,
                "label_files": list(b.label_files),
                "images": b.naming,
            }
            typer.echo(json.dumps(record))
        return
    table = Table(title="benchmarks")
    for col in ("name", "rows", "label files", "images"):
        table.add_column(col, overflow="fold")
    for b in list_benchmarks():
        table.add_row(b.name, f"{b.expected_rows:,}", ", ".join(b.label_files), b.naming)
    print_result(table)


@data_app.command("benchmark")
def benchmark(
    name: str = typer.Argument(..., help="Benchmark name, e.g. im2gps3k (see `data benchmarks`)."),
    folder: Path = typer.Argument(..., help="Folder with the photos (labels next to it or in it)."),
    labels: Path | None = typer.Option(None, "--labels", help="The label file, if not found."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of text."),
) -> None:
    """Say what is present and what is missing for a benchmark. Exit 0 when complete, else 1."""
    from geoalign.data.benchmarks import get_benchmark
    from geoalign.errors import GeoalignError

    try:
        bench = get_benchmark(name)
        with console.status(f"looking for {bench.title} under {folder} ..."):
            status = bench.verify(folder, labels)
    except GeoalignError as err:
        fail(str(err))
    if as_json:
        record = {
            "name": status.name,
            "ok": status.ok,
            "images_dir": str(status.images_dir),
            "labels": None if status.labels is None else str(status.labels),
            "labels_tried": [str(p) for p in status.labels_tried],
            "rows": status.n_rows,
            "expected_rows": status.expected_rows,
            "found": status.n_found,
            "missing": status.missing,
            "notes": status.notes,
            "label_format": bench.label_format,
        }
        typer.echo(json.dumps(record))
    else:
        print_result(status.describe())
        print_result(f"label format: {bench.label_format}")
    raise typer.Exit(0 if status.ok else 1)


@data_app.command("to-wds")
def to_wds(
    manifest: Path = typer.Argument(..., help="CSV, TSV or Parquet manifest: image, lat, lon."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the shards (000000.tar, ...)."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder image paths are relative to (default: the manifest's)."
    ),
    shard_size: int = typer.Option(10_000, "--shard-size", min=1, help="Samples per shard."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Leave out rows with errors (listed in a .skipped.csv)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace shards written from another manifest or shard size."
    ),
    image_col: str | None = typer.Option(None, "--image-col", help="Image path/id column."),
    lat_col: str | None = typer.Option(None, "--lat-col", help="Latitude column."),
    lon_col: str | None = typer.Option(None, "--lon-col", help="Longitude column."),
) -> None:
    """Write a manifest's images as webdataset shards (image bytes as stored + a lat/lon json).

    Each shard is written whole or not at all; rerun after a kill to write the rest. Exit 1 when
    rows were skipped.
    """
    import warnings

    from geoalign.data.manifest import load_manifest
    from geoalign.data.wds import write_shards
    from geoalign.errors import GeoalignError

    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for the shards")
    try:
        table = load_manifest(
            manifest,
            image_root=image_root,
            columns=_columns(image_col, lat_col, lon_col),
            check_files=True,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            n_rows = len(table)
            table = table.clean(on_error="skip" if skip_bad_rows else "raise")
        if len(table) == 0:
            fail(f"{manifest}: no usable rows ({n_rows:,} rows in the file); nothing written")
        result = write_shards(table, out, shard_size=shard_size, overwrite=overwrite, progress=True)
    except GeoalignError as err:
        fail(str(err))
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    typer.echo(
        f"{out}: {len(result.shards)} shards, {result.rows} samples "
        f"({result.written} shards written, {result.kept} kept from an earlier run)"
    )
    raise typer.Exit(1 if result.rows < n_rows else 0)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
