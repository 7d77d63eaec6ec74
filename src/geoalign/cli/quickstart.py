"""`geoalign quickstart`: train and evaluate GeoCLIP's alignment on real data, offline, on a CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result


def print_table(frame, title: str) -> None:
    """The report's accuracy table, a result: on stdout (model rows bold), wide in a pipe so
    `geoalign train ... > t.txt` holds it with unwrapped method names."""
    from geoalign.cli._evaluate_report import accuracy_table

    print_result(accuracy_table(frame, title))


def quickstart(
    out: Path = typer.Option(Path("geoalign-quickstart"), "--out", "-o", help="Output folder."),
    epochs: int = typer.Option(6, help="Training epochs over YFCC26k (about 50 steps each)."),
    seed: int = typer.Option(0, help="Seed for model, data order and gallery."),
    progress: bool = typer.Option(
        None,
        "--progress/--no-progress",
        help="Show training progress bars (default: when the output is a terminal).",
    ),
    concept: bool = typer.Option(
        True, help="Also train the concept-aware model (same settings + concept module)."
    ),
    geosurge: bool = typer.Option(
        True, help="Also train GeoSURGE (S2 geocell hierarchy) on the same descriptors."
    ),
) -> None:
    """Train GeoCLIP's alignment on YFCC26k scene labels, test on Im2GPS3k, write a report.

    Downloads nothing: the label files ship with geoalign and the official location encoder with
    the geoclip package. Takes a few minutes on a 2-core CPU.
    """
    if epochs < 1:
        fail(f"--epochs {epochs}: train at least one epoch (the default is 6)")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: is a file; give a folder for the run and its report")
    try:
        import lightning  # noqa: F401
    except ImportError:
        fail("the quickstart trains a model: pip install 'geoalign[train]' (adds lightning)")
    from geoalign.evaluation.report import table
    from geoalign.training.quickstart import quickstart_config, run_quickstart
    from geoalign.training.trainer import quiet_lightning

    if progress is None:
        progress = sys.stdout.isatty()
    quiet_lightning()
    cfg = quickstart_config(out, **{"optim.epochs": epochs, "trainer.seed": seed})
    result = run_quickstart(
        out,
        config=cfg,
        progress=progress,
        status=lambda m: console.print(f"[cyan]•[/] {m}"),
        concept=concept,
        geosurge=geosurge,
    )
    ev = result.evaluation
    print_table(
        table(ev),
        f"{ev.benchmark}: {len(ev.truth):,} photos, gallery {ev.gallery} "
        f"(accuracy %, within each distance)",
    )
    if result.first_loss is not None and result.last_loss is not None:
        console.print(f"training loss {result.first_loss:.3f} -> {result.last_loss:.3f}")
    console.print(
        f"trained in {result.train_seconds:.0f} s; whole run {result.total_seconds:.0f} s; "
        f"report: [bold]{result.report['markdown']}[/]"
    )


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
