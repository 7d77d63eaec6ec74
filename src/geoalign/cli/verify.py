"""`geoalign verify`: does the image support the location it claims (EXIF GPS or --claimed)?"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result

SCHEMA = "geoalign.verification/v1"


def _parse_claim(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        fail(f"--claimed {text}: expected LAT,LON in degrees, e.g. --claimed 48.85,2.35")
    return lat, lon


def verify(
    photos: list[Path] = typer.Argument(..., help="Photos to check."),
    claimed: str | None = typer.Option(
        None, metavar="LAT,LON", help="The claimed location (default: each photo's EXIF GPS)."
    ),
    alpha: float = typer.Option(
        0.05, help="Flag claims outside the (1 - alpha) region: ~alpha of true claims are flagged."
    ),
    model: str = typer.Option("geoclip", help="Checkpoint name or folder."),
    backbone: str = typer.Option("auto", help="Backbone spec; auto = the model's."),
    gallery: str = typer.Option("auto", help="Gallery; auto = the model's."),
    device: str = typer.Option("cpu"),
    json_out: str | None = typer.Option(
        None, "--json", metavar="-", help="- prints one JSON record per photo on stdout."
    ),
) -> None:
    """Check each photo's claimed location against where the model says it was taken.

    The claim's level is the smallest p whose p-region contains it; the claim is inconsistent at
    alpha when it lies outside the (1 - alpha)-region. Exit 0: every photo checked (whatever the
    verdicts); 1: some photos could not be checked (unreadable, no claim); 2: usage."""
    from geoalign.cli._options import check_device
    from geoalign.errors import GeoalignError
    from geoalign.inference.locator import Geolocator
    from geoalign.inference.verify import check_alpha, read_exif_gps, verify_claim

    if json_out not in (None, "-"):
        fail(f"--json {json_out}: only - (stdout) is supported; redirect it to a file")
    try:
        check_alpha(alpha)
    except GeoalignError as err:
        fail(str(err))
    check_device(device)
    claim = _parse_claim(claimed)
    with console.status("loading model and gallery"):
        geo = Geolocator.from_pretrained(model, backbone=backbone, gallery=gallery, device=device)
    failed = 0
    rows = []
    for photo in photos:
        try:
            point, where = (claim, "given") if claim is not None else (read_exif_gps(photo), "exif")
        except GeoalignError as err:
            console.print(f"[red]✗ {photo}[/]: {err}")
            rows.append({"schema": SCHEMA, "source": str(photo), "error": str(err)})
            failed += 1
            continue
        (pred,) = geo.predict([photo], top_k=1, estimate="median")
        if not pred.ok:
            console.print(f"[red]✗ {photo}[/]: {pred.error}")
            rows.append({"schema": SCHEMA, "source": str(photo), "error": pred.error})
            failed += 1
            continue
        verdict = verify_claim(pred.distribution, point, alpha=alpha, claim_source=where)
        rows.append({"schema": SCHEMA, "source": str(photo), **verdict.to_dict()})
    if json_out == "-":
        for row in rows:
            print_result(json.dumps(row))
    else:
        _print_table(rows)
    if failed:
        raise typer.Exit(1)


def _print_table(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("photo", "claim", "level", "verdict", "km to estimate"):
        table.add_column(col, justify="left" if col in ("photo", "verdict") else "right")
    for r in rows:
        if "error" in r:
            continue
        claim = f"{r['claimed_lat']:.4f}, {r['claimed_lon']:.4f} ({r['claim_source']})"
        verdict = f"{r['verdict']} at alpha {r['alpha']:g}"
        table.add_row(
            Path(r["source"]).name, claim, f"{r['level']:.3f}", verdict, f"{r['distance_km']:,.0f}"
        )
    print_result(table)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
