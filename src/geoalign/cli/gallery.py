"""`geoalign gallery`: build GPS galleries from training coordinates and inspect them."""

from __future__ import annotations

from pathlib import Path

import typer

from geoalign.cli._options import check_output_file
from geoalign.cli.common import console, fail

gallery_app = typer.Typer(
    help="GPS galleries: build one from training data, inspect one.", no_args_is_help=True
)


@gallery_app.command("build")
def build(
    source: Path = typer.Option(..., "--from", help="Training manifest or coordinate table."),
    size: int | None = typer.Option(
        None,
        help="Number of gallery points (default 100,000, or the --name gallery's size).",
        min=1,
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output .parquet or .csv (written atomically)."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Build a named gallery instead of --out (mp16-500k: GeoCLIP's GWS15k gallery); "
        "then --gallery NAME finds it.",
    ),
    seed: int = typer.Option(0),
    dedupe_decimals: int = typer.Option(
        4, help="Merge coordinates equal to this many decimals first (-1: keep duplicates)."
    ),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Ignore rows with bad coordinates."
    ),
) -> None:
    """Sample a gallery from training coordinates (GeoCLIP's 100K gallery was built this way)."""
    import pandas as pd

    from geoalign.data.galleries import read_coordinate_table
    from geoalign.geo.gallery import sample_gallery
    from geoalign.io_atomic import atomic_write, remove_stale_temps

    out, size = _target(out, name, size)
    suffix = check_output_file(out, (".parquet", ".csv"))
    coords = read_coordinate_table(source, skip_bad_rows=skip_bad_rows)
    good, errors = coords.good, coords.errors
    if not good.any():
        # An empty gallery would only fail later, in predict and gallery info.
        why = f"all {len(good):,} rows have bad coordinates" if len(good) else "it has no rows"
        fail(f"{source}: no usable coordinates ({why}); nothing written to {out}")
    points = sample_gallery(
        coords.latlon,
        size,
        seed=seed,
        dedupe_decimals=None if dedupe_decimals < 0 else dedupe_decimals,
    )
    frame = pd.DataFrame({"lat": points[:, 0], "lon": points[:, 1]})
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    if suffix == ".parquet":
        atomic_write(out, lambda fh: frame.to_parquet(fh, index=False))
    else:
        atomic_write(out, lambda fh: fh.write(frame.to_csv(index=False).encode()))
    note = f" (only {len(frame):,} distinct coordinates available)" if len(frame) < size else ""
    console.print(
        f"[green]gallery[/] {out}: {len(frame):,} points from {int(good.sum()):,} training rows{note}"
    )
    if errors:
        console.print(f"[yellow]{len(errors)} rows with bad coordinates were ignored[/]")


def _target(out: Path | None, name: str | None, size: int | None) -> tuple[Path, int]:
    """(output file, size) of --out, or of the named gallery --name (usage errors otherwise)."""
    from geoalign.data.galleries import BUILT_GALLERIES, built_gallery_path

    if (out is None) == (name is None):
        fail("give --out FILE or --name NAME (a named gallery), not both and not neither")
    if name is None:
        return out, size or 100_000
    if name not in BUILT_GALLERIES:
        fail(f"--name {name!r} is not a named gallery; known: {', '.join(BUILT_GALLERIES)}")
    want = BUILT_GALLERIES[name].size
    if size is not None and size != want:
        fail(
            f"--name {name} is a gallery of {want:,} points, not {size:,}: drop --size or use --out"
        )
    return built_gallery_path(name), want


@gallery_app.command("info")
def info(
    gallery: str = typer.Argument(..., help="Gallery name (geoclip-100k) or file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Size, extent and the countries a gallery covers (on stdout)."""
    import json

    import numpy as np

    from geoalign.data.galleries import load_gallery
    from geoalign.geo.places import default as places

    g = load_gallery(gallery)
    if len(g) == 0:
        fail(f"{gallery}: the gallery has no points; build one with `geoalign gallery build`")
    latlon = g[["lat", "lon"]].to_numpy()
    codes = places().columns(latlon)["country_code"]
    values, counts = np.unique(codes.astype(str), return_counts=True)
    top = sorted(zip(counts.tolist(), values.tolist(), strict=True), reverse=True)[:10]
    summary = {
        "gallery": gallery,
        "points": len(g),
        "lat": [float(latlon[:, 0].min()), float(latlon[:, 0].max())],
        "lon": [float(latlon[:, 1].min()), float(latlon[:, 1].max())],
        "countries": {c or "sea": n for n, c in top},
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    lat, lon = summary["lat"], summary["lon"]
    typer.echo(
        f"{gallery}: {len(g):,} points; lat {lat[0]:.2f}…{lat[1]:.2f}, lon {lon[0]:.2f}…{lon[1]:.2f}"
    )
    typer.echo("most common countries: " + ", ".join(f"{c or 'sea'} {n:,}" for n, c in top))


def register(app: typer.Typer) -> None:
    app.add_typer(gallery_app, name="gallery")
