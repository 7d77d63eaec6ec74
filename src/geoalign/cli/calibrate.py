"""`geoalign calibrate`: fit a model's temperature, smoothing level and conformal region masses on
validation rows, and store them in the checkpoint (every later command then uses them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result


def calibrate(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint folder (or run folder)."),
    queries: str = typer.Option(
        ...,
        "--queries",
        help="Validation rows with known locations: a feature store, an .npz or "
        "scene-labels:<benchmark or CSV>. Never the test set.",
    ),
    gallery: str = typer.Option("auto", help="Gallery (auto = the model's, else geoclip-100k)."),
    max_rows: int = typer.Option(5000, min=20, help="At most this many validation rows."),
    seed: int = typer.Option(0, help="Seed of the row sample."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write a calibrated copy of the checkpoint here instead of updating it in place "
        "(required for named weights such as 'geoclip').",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the calibration as JSON."),
) -> None:
    """Calibrate a model's probabilities and confidence regions on validation rows.

    Fits the logit factor and the S2 smoothing level by the negative log-likelihood of the true
    locations, then split-conformal region masses, so that p-regions contain the truth for a
    fraction p of photos like these. Stored in config.json; predict, evaluate, verify and serve
    apply it."""
    from geoalign.data.feature_rows import load_feature_rows
    from geoalign.inference.calibration import fit_calibration, save_calibration
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import checkpoint_config, checkpoint_reads, resolve_checkpoint_dir
    from geoalign.models.weights import NAMED_WEIGHTS

    if model in NAMED_WEIGHTS and out is None:
        fail(f"--model {model} is a named checkpoint: give --out DIR for a calibrated copy")
    if out is not None and out.exists() and any(out.iterdir()):
        fail(f"--out {out}: exists and is not empty; choose a new folder")
    source = resolve_checkpoint_dir(model)
    visual = checkpoint_reads(checkpoint_config(source))
    if visual != "features":
        fail(f"{source}: this model reads photos (visual {visual!r}); calibrate from features")
    rows = load_feature_rows(queries, max_rows=max_rows, seed=seed)
    console.print(f"[cyan]•[/] {rows.description}")
    with console.status("loading the model and its gallery"):
        geo = Geolocator.from_pretrained(str(source), backbone=None, gallery=gallery)
    geo.set_calibration(None)  # fit from the raw model, not on top of an earlier calibration
    with console.status(f"fitting on {len(rows):,} rows"):
        cal = fit_calibration(
            geo, rows.features, rows.latlon, fitted_on=f"{rows.description}; gallery {gallery}"
        )
    target = source
    if out is None:
        save_calibration(target, cal)
    else:  # the copy appears whole, calibration included, or not at all
        from geoalign.io_atomic import atomic_directory

        with atomic_directory(out) as tmp:
            shutil.copytree(source, tmp)
            save_calibration(tmp, cal)
        target = out
    summary = {
        "checkpoint": str(target),
        **cal.to_dict(),
        "mass_for_p": {"0.5": cal(0.5), "0.9": cal(0.9)},
    }
    if json_out:
        print_result(json.dumps(summary))
        return
    from rich.table import Table

    table = Table(show_edge=False)
    table.add_column("setting")
    table.add_column("value", justify="right")
    table.add_row("logit factor", f"{cal.scale:.3g}")
    table.add_row("S2 level of the smoothing", str(cal.level))
    table.add_row("NLL before (per km², level 6)", f"{cal.nll_before:.3f}")
    table.add_row("NLL after", f"{cal.nll_after:.3f}")
    table.add_row("mass of a 50% region", f"{cal(0.5):.3f}")
    table.add_row("mass of a 90% region", f"{cal(0.9):.3f}")
    table.add_row("validation rows", f"{cal.n:,}")
    print_result(table)
    console.print(f"calibration stored in [bold]{target / 'config.json'}[/]")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
