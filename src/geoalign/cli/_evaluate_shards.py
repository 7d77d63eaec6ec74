"""`geoalign evaluate` on photos read through the model's own image side: `--photos SHARDS`
(webdataset shards, truth from each sample's json/txt lat/lon; every method), and `--images` /
`--manifest` for GeoSURGE checkpoints whose backbone block trains (`visual: backbone` or
`fusion`), which no frozen backbone's features can stand in for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoalign.cli.common import console, fail, progress_bar


def check_photos(
    photos: str,
    queries: str | None,
    images: Path | None,
    manifest: Path | None,
    gallery: str,
    train: str | None,
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
    from geoalign.data.wds_specs import expand_shards
    from geoalign.errors import DataError

    try:
        expand_shards(photos)  # a missing shard is a usage error before the model is read
    except DataError as err:
        fail(f"--photos: {err}")


def evaluate_shards(model: str, photos: str, benchmark: str | None, **options: Any) -> None:
    """`geoalign evaluate --photos SHARDS`: the shards' photos through the model's image side
    (unusable samples are listed in the report's notes)."""
    from geoalign.evaluation.run import shard_photos

    found = shard_photos(photos)
    _evaluate_photos(model, found, found.coords, found.keys, benchmark or photos, **options)


def evaluate_own_image_side(
    model: str,
    manifest: Any,
    name: str,
    train: str | None,
    retrieval_k: int,
    **options: Any,
) -> None:
    """`--images/--manifest` for a model that trains its image side (GeoSURGE backbone or
    fusion): its photos through the trained block (+ segmenter), ten-crop as the paper."""
    if train is not None or options["gallery"].startswith("train:") or retrieval_k:
        fail(
            f"--model {model}: its backbone block trains, so it is evaluated on the photos through "
            "its own image side; baselines, --retrieval-k and train:N galleries read training "
            "features: leave out --train/--retrieval-k (or give --gallery a name or file)"
        )
    paths = [str(p) for p in manifest.paths()]
    _evaluate_photos(model, paths, manifest.coords(), list(manifest.images), name, **options)


def _evaluate_photos(
    model: str,
    photos: Any,
    coords: Any,
    keys: list[str],
    name: str,
    *,
    gallery: str,
    modes: list[str],
    radius_km: float,
    ten_crop: bool,
    prior_radius_km: list[float],
    backbone: str | None,
    segmenter: str | None,
    device: str,
    batch_size: int,
    out: Path,
    seed: int,
    json_out: str | None,
) -> None:
    """One evaluation of photos through the model's own image side, with a progress bar."""
    from geoalign.cli._evaluate_report import show_report
    from geoalign.evaluation.run import evaluate_checkpoint_photos

    with progress_bar() as bar:
        task = bar.add_task("photos", total=len(keys))
        run = evaluate_checkpoint_photos(
            model,
            photos,
            coords,
            keys,
            benchmark=name,
            out=out,
            gallery=gallery,
            modes=modes,
            radius_km=radius_km,
            ten_crop=ten_crop,
            prior_radii_km=tuple(prior_radius_km),
            backbone=backbone or "auto",
            segmenter=segmenter or "auto",
            device=device,
            batch_size=batch_size,
            seed=seed,
            progress=lambda n: bar.advance(task, n),
            say=lambda m: console.print(f"[cyan]•[/] {m}"),
        )
    show_report(run, name, json_out)
