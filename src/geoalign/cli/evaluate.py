"""`geoalign evaluate`: any model x any benchmark or manifest x any gallery, with baselines."""

from __future__ import annotations

from pathlib import Path

import typer

from geoalign.cli.common import console, fail, progress_bar
from geoalign.evaluation.run import BASELINE_ROWS


def evaluate(
    model: str = typer.Option(
        "geoclip", "--model", "-m", help="Checkpoint folder, or 'geoclip' (official weights)."
    ),
    queries: str = typer.Option(
        None,
        "--queries",
        "-q",
        help="Query features: a feature store folder, or scene-labels:<benchmark or CSV>.",
    ),
    benchmark: str = typer.Option(
        None,
        "--benchmark",
        "-b",
        help="Benchmark name (im2gps3k, yfcc4k, ...): names the report "
        "and, with --images, where the photos are.",
    ),
    images: Path = typer.Option(None, help="Folder with the benchmark's photos (and labels)."),
    labels: Path = typer.Option(None, help="The benchmark's label file, if not found by itself."),
    manifest: Path = typer.Option(None, help="A manifest of photos with lat/lon to evaluate on."),
    gallery: str = typer.Option(
        "geoclip-100k", help="Gallery: a name, a CSV/Parquet of lat/lon, or train:N."
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
    mode: list[str] = typer.Option(["top1", "mode"], help="Prediction modes: top1, mode."),
    radius_km: float = typer.Option(750.0, help="Radius of the mode-seeking prediction."),
    ten_crop: bool = typer.Option(False, help="Average logits over ten crops (photos only)."),
    baselines: bool = typer.Option(True, help="Also run the baselines (needs --train)."),
    backbone: str = typer.Option(None, help="Backbone for photos (default: the model's)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(32, help="Photos per backbone batch."),
    out: Path = typer.Option(Path("geoalign-eval"), "--out", "-o", help="Report folder."),
    seed: int = typer.Option(0, help="Seed for sampled galleries and baselines."),
) -> None:
    """Evaluate a model (top-1 and mode-seeking) and baselines; write a report with figures.

    Works for GeoCLIP, concept-aware and GeoSURGE checkpoints (the checkpoint says which)."""
    from geoalign.evaluation import queries as Q
    from geoalign.evaluation.report import table
    from geoalign.evaluation.run import evaluate_checkpoint, model_features

    features_spec = model_features(model)
    if queries is not None:
        q = Q.resolve(queries, seed=seed)
    elif images is not None or manifest is not None:
        from geoalign.data.benchmarks import get_benchmark
        from geoalign.data.manifest import load_manifest

        if manifest is not None:
            man = load_manifest(manifest, check_files=True).clean(on_error="skip")
        elif benchmark is None:
            fail("--images needs --benchmark NAME (or pass --manifest)")
        else:
            man = get_benchmark(benchmark).load(images, labels)
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
        fail("give the queries: --queries, --benchmark with --images, or --manifest")
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
            seed=seed,
            device=device,
            progress=lambda n: bar.advance(task, n),
            say=lambda m: console.print(f"[cyan]•[/] {m}"),
        )
    from geoalign.cli.quickstart import print_table

    ev = run.evaluation
    print_table(table(ev), f"{name}: {len(q.truth):,} queries, gallery {ev.gallery}")
    console.print(f"report: [bold]{run.paths['markdown']}[/]")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
