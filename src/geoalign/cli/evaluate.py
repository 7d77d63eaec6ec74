"""`geoalign evaluate`: any model x any benchmark or manifest x any gallery, with baselines.

Options are checked before any model or feature is loaded; the accuracy table is the result
(stdout, or the report's JSON with `--json -`), progress and notes go to stderr.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from geoalign.cli._evaluate_report import STDOUT, show_report
from geoalign.cli.common import check_gallery_file, console, fail, progress_bar
from geoalign.evaluation.run import BASELINE_ROWS

MODES = ("top1", "mode", "mean", "median")  # geoalign.inference.distribution.ESTIMATES
DEFAULT_MODES = ("top1", "mode", "median", "mean")


def evaluate(
    model: str = typer.Option(
        "geoclip", "--model", "-m", help="Checkpoint folder, or 'geoclip' (official weights)."
    ),
    queries: str = typer.Option(
        None,
        "--queries",
        help="Query features: a feature store folder, or scene-labels:<benchmark or CSV>.",
    ),
    benchmark: str = typer.Option(
        None,
        "--benchmark",
        "-b",
        help="Benchmark name (im2gps3k, yfcc4k, ...): names the report "
        "and, with --images, where the photos are.",
    ),
    images: Path = typer.Option(
        None,
        help="Folder with the benchmark's photos (and labels); with --manifest, the folder its "
        "relative image paths are read from (default: the manifest's folder).",
    ),
    labels: Path = typer.Option(None, help="The benchmark's label file, if not found by itself."),
    manifest: Path = typer.Option(
        None,
        help="A manifest of photos with lat/lon to evaluate on; bad rows are skipped and listed "
        "in <out>/<manifest name>.skipped.csv.",
    ),
    photos: str = typer.Option(
        None,
        "--photos",
        help="Webdataset shards of photos with lat/lon in each sample's json/txt (a .tar, a brace "
        "pattern, a folder of .tar files, a URL), read through the model's own image side; "
        "sample keys are the report's ids, samples without both are left out and listed.",
    ),
    gallery: str = typer.Option(
        "auto",
        help="Gallery: a name, a CSV/Parquet of lat/lon, or train:N; auto = the model's (the "
        "one its training evaluated with, else geoclip-100k).",
    ),
    train_features: str = typer.Option(
        None,
        "--train",
        help="Training features for the baselines and train:N galleries (feature store folder "
        "or scene-labels:<name>).",
    ),
    train_sample: int = typer.Option(
        BASELINE_ROWS, help="At most this many training rows for the baselines."
    ),
    mode: list[str] = typer.Option(
        list(DEFAULT_MODES), help="Prediction rows: top1, mode, mean, median (repeatable)."
    ),
    prior_radius_km: list[str] = typer.Option(
        [],
        "--prior-radius-km",
        help="GeoCLIP Table 5: also rank each query's gallery within this radius of its truth "
        "(repeatable or comma-separated: 2500,750,200,25 are continent, country, state, city).",
    ),
    radius_km: float = typer.Option(750.0, help="Radius of the mode-seeking prediction."),
    retrieval_k: int = typer.Option(
        0,
        "--retrieval-k",
        help="Also evaluate with retrieval-augmented candidates: each query's K nearest training "
        "photos (--train) add their locations to the gallery (G3/Img2Loc); 0: off.",
    ),
    ten_crop: bool = typer.Option(False, help="Average logits over ten crops (photos only)."),
    baselines: bool = typer.Option(True, help="Also run the baselines (needs --train)."),
    backbone: str = typer.Option(None, help="Backbone for photos (default: the model's)."),
    segmenter: str = typer.Option(
        None,
        help="GeoSURGE fusion models: the segmenter that maps each photo (crop) on the fly "
        "(default: the one the checkpoint records, which made its training maps).",
    ),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(32, help="Photos per backbone batch."),
    out: Path = typer.Option(Path("geoalign-eval"), "--out", "-o", help="Report folder."),
    seed: int = typer.Option(0, help="Seed for sampled galleries and baselines."),
    json_out: str = typer.Option(
        None,
        "--json",
        help="Also write the report's JSON here; '-' prints it on stdout instead of the table.",
    ),
) -> None:
    """Evaluate a model (top-1 and mode-seeking) and baselines; write a report with figures.

    Works for GeoCLIP, concept-aware and GeoSURGE checkpoints (the checkpoint says which)."""
    from geoalign.evaluation import queries as Q
    from geoalign.evaluation.run import evaluate_checkpoint, reads_own_image_side
    from geoalign.models.registry import model_features

    if retrieval_k < 0:
        fail(f"--retrieval-k {retrieval_k}: give K >= 1 training neighbours, or 0 for none")
    if retrieval_k and not train_features:
        fail("--retrieval-k adds the training photos' locations: give their features with --train")
    prior_radius_km = parse_radii(prior_radius_km)
    _check_options(
        gallery=gallery,
        train=train_features,
        mode=mode,
        radius_km=radius_km,
        batch_size=batch_size,
        train_sample=train_sample,
        device=device,
        out=out,
        json_out=json_out,
        manifest=manifest,
        images=images,
    )
    if photos is not None:  # usage errors first, before the model is read
        from geoalign.cli._evaluate_shards import check_photos

        check_photos(photos, queries, images, manifest, gallery, train_features)
    if gallery == "auto":
        gallery = _model_gallery(model)
    photo_options = {  # evaluations of photos through the model's own image side
        "gallery": gallery,
        "modes": mode,
        "radius_km": radius_km,
        "ten_crop": ten_crop,
        "prior_radius_km": prior_radius_km,
        "backbone": backbone,
        "segmenter": segmenter,
        "device": device,
        "batch_size": batch_size,
        "out": out,
        "seed": seed,
        "json_out": json_out,
    }
    if photos is not None:
        from geoalign.cli._evaluate_shards import evaluate_shards

        return evaluate_shards(model, photos, benchmark, **photo_options)
    features_spec = model_features(model)
    if queries is not None:
        q = Q.resolve(queries, seed=seed)
    elif images is not None or manifest is not None:
        from geoalign.data.benchmarks import get_benchmark
        from geoalign.data.manifest import load_manifest

        if manifest is not None:
            out.mkdir(parents=True, exist_ok=True)
            man = load_manifest(manifest, image_root=images, check_files=True).clean(
                on_error="skip", skipped_path=out / f"{manifest.name}.skipped.csv"
            )
            if len(man) == 0:
                fail(
                    f"--manifest {manifest}: no usable rows (see {out / manifest.name}.skipped.csv)"
                )
        elif benchmark is None:
            fail("--images needs --benchmark NAME (or pass --manifest)")
        else:
            man = get_benchmark(benchmark).load(images, labels)
        if reads_own_image_side(model):  # a trained block (+ fusion): photos through the model
            from geoalign.cli._evaluate_shards import evaluate_own_image_side

            name = benchmark or str(manifest)
            return evaluate_own_image_side(
                model, man, name, train_features, retrieval_k, **photo_options
            )
        spec = backbone or features_spec or "clip-vit-l14"
        with progress_bar() as bar:
            task = bar.add_task("image features", total=len(man))
            q = Q.from_images(
                man,
                spec,
                ten_crop=ten_crop,
                batch_size=batch_size,
                device=device,
                progress=lambda n: bar.advance(task, n),
            )
    elif benchmark is not None and features_spec == "places365-scene-labels":
        q = Q.from_scene_labels(benchmark)
    else:
        fail("give the queries: --queries, --benchmark with --images, --manifest or --photos")
    if len(q.truth) == 0:
        fail("no queries to evaluate: the queries given hold no rows")
    train = Q.resolve(train_features, max_rows=train_sample, seed=seed) if train_features else None
    name = benchmark or (str(manifest) if manifest else queries)
    with progress_bar() as bar:
        task = bar.add_task("retrieval", total=len(q.truth))
        run = evaluate_checkpoint(
            model,
            q,
            benchmark=name,
            out=out,
            gallery=gallery,
            train=train,
            modes=mode,
            radius_km=radius_km,
            baselines=baselines,
            prior_radii_km=tuple(prior_radius_km),
            retrieval_k=retrieval_k,
            seed=seed,
            device=device,
            progress=lambda n: bar.advance(task, n),
            say=lambda m: console.print(f"[cyan]•[/] {m}"),
        )
    show_report(run, name, json_out)


def parse_radii(given: list[str]) -> list[float]:
    """--prior-radius-km values, repeated and/or comma-separated, as km (positive, finite)."""
    radii = []
    for part in (p.strip() for g in given for p in g.split(",")):
        try:
            km = float(part)
        except ValueError:
            km = math.nan
        if not (math.isfinite(km) and km > 0):
            fail(
                f"--prior-radius-km {part!r}: each radius must be a positive number of km, "
                "e.g. --prior-radius-km 2500,750,200,25"
            )
        radii.append(km)
    return radii


def _check_options(
    *,
    gallery: str,
    train: str | None,
    mode: list[str],
    radius_km: float,
    batch_size: int,
    train_sample: int,
    device: str,
    out: Path,
    json_out: str | None,
    manifest: Path | None,
    images: Path | None,
) -> None:
    """Usage errors (exit 2) found from the options alone, before any model is read."""
    unknown = [m for m in mode if m not in MODES]
    if unknown:
        fail(f"--mode {unknown[0]}: expected one of {', '.join(MODES)}")
    if not (math.isfinite(radius_km) and radius_km > 0):
        fail(f"--radius-km {radius_km:g}: give a positive distance in km, e.g. 750")
    if batch_size < 1:
        fail(f"--batch-size {batch_size}: give at least 1 photo per batch")
    if train_sample < 1:
        fail(f"--train-sample {train_sample}: give at least 1 training row")
    if gallery.startswith("train:"):
        n = gallery.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            fail(f"--gallery {gallery}: expected train:N with N >= 1 (e.g. train:10000)")
        if train is None:
            fail(f"--gallery {gallery} samples training coordinates: give them with --train")
    elif Path(gallery).suffix or Path(gallery).exists():
        check_gallery_file(gallery, "a name or train:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: is a file; give a folder for the report")
    if json_out not in (None, STDOUT) and Path(json_out).is_dir():
        fail(
            f"--json {json_out}: is a folder; give a file name, e.g. {Path(json_out) / 'report.json'}"
        )
    if manifest is not None and not manifest.is_file():
        what = "is a folder" if manifest.is_dir() else "not found"
        fail(f"--manifest {manifest}: {what}; give a CSV/TSV/Parquet file of image,lat,lon rows")
    if images is not None and not images.is_dir():
        fail(f"--images {images}: not a folder")


def _model_gallery(model: str) -> str:
    """The gallery the checkpoint records (as `Geolocator.from_pretrained` picks it)."""
    from geoalign.errors import GeoalignError
    from geoalign.models.registry import checkpoint_gallery

    try:
        return checkpoint_gallery(model)
    except GeoalignError as err:
        fail(f"--model {model}: {err}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
