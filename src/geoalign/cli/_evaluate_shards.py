"""`geoalign evaluate --photos SHARDS`: photos of webdataset shards, truth from each sample's
json/txt lat/lon, read through the model's own image side (every method, GeoSURGE included)."""

from __future__ import annotations

from pathlib import Path

from geoalign.cli.common import console, fail, progress_bar


def check_photos(
    photos: str,
    queries: str | None,
    images: Path | None,
    manifest: Path | None,
    gallery: str,
    train: str | None,
    prior_radius_km: list[float],
) -> None:
    """--photos is its own query source, read through the model: what it cannot combine with."""
    given = [
        o for o, v in (("--queries", queries), ("--images", images), ("--manifest", manifest)) if v
    ]
    if given:
        fail(f"--photos {photos}: give it or {' / '.join(given)}, not both")
    if gallery.startswith("train:") or train is not None:
        fail(
            "--photos: baselines and train:N galleries read training features; give --gallery a "
            "name or file and leave out --train (or extract features and use --queries)"
        )
    if prior_radius_km:
        fail("--prior-radius-km: not with --photos yet; extract features and use --queries")


def evaluate_shards(
    model: str,
    photos: str,
    benchmark: str | None,
    gallery: str,
    modes: list[str],
    radius_km: float,
    ten_crop: bool,
    backbone: str | None,
    device: str,
    batch_size: int,
    out: Path,
    seed: int,
    json_out: str | None,
) -> None:
    """`geoalign evaluate --photos SHARDS`: the shards' photos through the model's image side."""
    from geoalign.cli._evaluate_report import show_report
    from geoalign.evaluation.run import evaluate_checkpoint_photos, shard_photos

    found = shard_photos(photos)  # unusable samples: listed in the report's notes
    name = benchmark or photos
    with progress_bar() as bar:
        task = bar.add_task("photos", total=len(found))
        run = evaluate_checkpoint_photos(
            model,
            found,
            found.coords,
            found.keys,
            benchmark=name,
            out=out,
            gallery=gallery,
            modes=modes,
            radius_km=radius_km,
            ten_crop=ten_crop,
            backbone=backbone or "auto",
            device=device,
            batch_size=batch_size,
            seed=seed,
            progress=lambda n: bar.advance(task, n),
            say=lambda m: console.print(f"[cyan]•[/] {m}"),
        )
    show_report(run, name, json_out)
