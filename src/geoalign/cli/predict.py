"""`geoalign predict`: where were these photos taken?"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result, progress_bar


def _done_sources(jsonl: Path) -> set[str]:
    """Inputs already written by an earlier, interrupted run (a torn last line is ignored)."""
    done: set[str] = set()
    if not jsonl.is_file():
        return done
    for line in jsonl.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "predictions" in record:  # failed inputs are retried
            done.add(record["source"])
    return done


def _print_prediction(prediction) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not prediction.ok:
        console.print(f"[red]✗ {escape(prediction.source)}[/]: {escape(prediction.error)}")
        return
    table = Table(title=escape(prediction.source), title_justify="left", show_edge=False)
    for column in ("#", "lat", "lon", "prob", "place"):
        table.add_column(column, justify="right" if column != "place" else "left")
    for rank, c in enumerate(prediction.candidates, 1):
        place = ""
        if c.place:
            place = ", ".join(
                p for p in (c.place["city"], c.place["region"], c.place["country_name"]) if p
            )
        table.add_row(str(rank), f"{c.lat:.4f}", f"{c.lon:.4f}", f"{c.prob:.4f}", place)
    print_result(table)


def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1),
    model: str = typer.Option("geoclip", help="Checkpoint name or folder."),
    backbone: str = typer.Option(
        "auto",
        help="Backbone spec (clip-vit-l14, hf:<dir>, torchvision:..., ...); auto = the model's.",
    ),
    gallery: str = typer.Option("geoclip-100k", help="Gallery name or CSV/Parquet file."),
    within: str | None = typer.Option(None, help="Countries/regions, e.g. FR or US-CA,MX."),
    near: str | None = typer.Option(None, help="lat,lon centre of a radius prior."),
    radius_km: float | None = typer.Option(None, help="Radius for --near, in km."),
    bbox: str | None = typer.Option(None, help="min_lat,min_lon,max_lat,max_lon."),
    land_only: bool = typer.Option(False, help="Only gallery points on land."),
    ten_crop: bool = typer.Option(False, help="Average the logits of 10 crops (official rule)."),
    batch_size: int = typer.Option(16, min=1),
    json_out: Path | None = typer.Option(
        None, "--json", help="JSON Lines output, appended as it goes; rerun to resume."
    ),
    map_out: Path | None = typer.Option(None, "--map", help="Interactive HTML map of the top-k."),
    png_out: Path | None = typer.Option(None, "--png", help="Static PNG map of the top-k."),
    places: bool = typer.Option(True, help="Add nearest city, region and country."),
    device: str = typer.Option("cpu"),
    bf16: bool = typer.Option(False, help="Run the backbone in bfloat16."),
    half_gallery: bool = typer.Option(
        False,
        help="Also keep the gallery in float16 for single photos: ~3x faster gallery stage on a "
        "CPU, same top-k, probabilities within ~1e-4 (relative).",
    ),
    workers: int = typer.Option(0, help="Image decoding worker processes."),
    recursive: bool = typer.Option(False, help="Also look for images in sub-folders."),
    quiet: bool = typer.Option(False, help="No per-image tables (with --json)."),
) -> None:
    """Predict where each photo was taken: top-k coordinates, probabilities and places."""
    import torch

    from geoalign.data.images import expand_inputs
    from geoalign.geo.priors import parse_prior
    from geoalign.geolocator import Geolocator

    prior = parse_prior(within, near, radius_km, bbox, land_only)
    sources = [str(p) for p in inputs]
    n_inputs = len(expand_inputs(sources, recursive=recursive))
    if n_inputs == 0:
        fail(f"no images found in {', '.join(map(str, inputs))}")
    skip = _done_sources(json_out) if json_out else set()
    if skip:
        console.print(f"resuming: {len(skip)} inputs already in {json_out}")
    dtype = torch.bfloat16 if bf16 else torch.float32
    with console.status("loading model and gallery (embedded once, then cached)"):
        kwargs = {"gallery_precision": "float16"} if half_gallery else {}
        geolocator = Geolocator.from_pretrained(
            model, backbone=backbone, gallery=gallery, device=device, dtype=dtype, **kwargs
        )
    failed, written = 0, []
    sink = json_out.open("a") if json_out else None
    try:
        with progress_bar(transient=True) as progress:
            task = progress.add_task("predicting", total=n_inputs - len(skip))
            for prediction in geolocator.iter_predict(
                sources,
                recursive=recursive,
                top_k=top_k,
                prior=prior,
                ten_crop=ten_crop,
                batch_size=batch_size,
                places=places,
                skip=skip,
                num_workers=workers,
                on_batch=lambda n: progress.advance(task, n),
            ):
                failed += not prediction.ok
                if sink:
                    sink.write(json.dumps(prediction.to_dict()) + "\n")
                    sink.flush()
                if not quiet or not prediction.ok:
                    _print_prediction(prediction)
                if prediction.ok:
                    written.append(prediction)
    finally:
        if sink:
            sink.close()
    _write_maps(written, map_out, png_out)
    if failed:
        console.print(f"[yellow]{failed} of {n_inputs - len(skip)} inputs could not be read[/]")
        raise typer.Exit(1)


def _map_paths(base: Path, n: int) -> list[Path]:
    if n == 1:
        return [base]
    return [base.with_name(f"{base.stem}-{i + 1}{base.suffix}") for i in range(n)]


def _write_maps(predictions, map_out: Path | None, png_out: Path | None) -> None:
    if not predictions or (map_out is None and png_out is None):
        return
    from geoalign.geo.maps import save_interactive_map, save_static_map

    for out, save in ((map_out, save_interactive_map), (png_out, save_static_map)):
        if out is None:
            continue
        for path, p in zip(_map_paths(out, len(predictions)), predictions, strict=True):
            coords = [(c.lat, c.lon) for c in p.candidates]
            probs = [c.prob for c in p.candidates]
            kwargs = {"title": p.source}
            save(path, coords, probs, **kwargs)
            console.print(f"[green]map[/] {path}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
