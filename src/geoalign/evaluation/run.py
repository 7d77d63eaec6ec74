"""One evaluation run: a trained model x queries x a gallery, beside baselines, written as a report.

Shared by `geoalign evaluate` and by the evaluation `geoalign train` runs when training ends, so
both give the same numbers for the same model and data. The registry
(`geoalign.models.registry.load_model`) loads each checkpoint as the class of its method, and the
harness ranks every method through the same `Geolocator` code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoalign.errors import DataError

if TYPE_CHECKING:  # the CLI imports this module at start-up: torch only when evaluating
    from geoalign.evaluation.harness import Evaluation
    from geoalign.evaluation.queries import Queries

BASELINE_ROWS = 200_000  # training rows the baselines see at most (kNN memory and time)
SCENE_LABEL_BENCHMARK = "im2gps3k"  # test scene labels when a scene-label run names none
GALLERY_FILE = "gallery.csv"  # a train:N gallery, saved beside the exported weights


@dataclass
class EvaluationRun:
    evaluation: Evaluation
    paths: dict[str, Path]


def reads_own_image_side(model: str | Path) -> bool:
    """True when the checkpoint trains part of its image side (GeoSURGE `visual: backbone` or
    `fusion`): no frozen backbone's features can stand in for it, so it is evaluated on photos
    through its own image side (`evaluate_checkpoint_photos`)."""
    from geoalign.models.registry import checkpoint_config, checkpoint_reads

    return checkpoint_reads(checkpoint_config(model)) != "features"


def evaluate_checkpoint(
    model: str | Path,
    queries: Queries,
    *,
    benchmark: str,
    out: str | Path,
    gallery: str = "geoclip-100k",
    train: Queries | None = None,
    modes: list[str] | tuple[str, ...] = ("top1", "mode"),
    radius_km: float = 750.0,
    baselines: bool = True,
    probabilistic: bool = True,
    prior_radii_km: tuple[float, ...] = (),
    retrieval_k: int = 0,
    seed: int = 0,
    device: str = "cpu",
    label: str | None = None,
    progress: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> EvaluationRun:
    """Evaluate `model` on `queries`, add the baselines (on `train`), write the report to `out`.

    `probabilistic`: also measure the model's distributions (region coverage, verify false
    alarms and power, recall vs area, risk-coverage; `evaluation.probabilistic`).
    `prior_radii_km`: GeoCLIP's Table 5 rows, the gallery restricted per query to each radius
    around the true location (the published rows are added for Im2GPS3k). `retrieval_k`: also
    the rows of the same model with each query's k nearest training photos (`train`) added to
    its candidates (`Geolocator.with_training_neighbours`), beside the plain rows."""
    from geoalign.evaluation.harness import (
        Evaluation,
        evaluate_baselines,
        evaluate_model,
        make_gallery,
    )
    from geoalign.evaluation.report import write_report
    from geoalign.inference.calibration import stored_calibration
    from geoalign.models.registry import checkpoint_reads, load_checkpoint, load_model

    say = say or (lambda message: None)
    label = label or (Path(str(model)).name if str(model) != "geoclip" else "GeoCLIP (official)")
    ckpt = load_checkpoint(model)
    visual = checkpoint_reads(ckpt.config)
    if visual != "features":
        raise DataError(
            f"{ckpt.path}: this {ckpt.method} model (visual {visual!r}) trains a backbone block, "
            "so precomputed features cannot stand in for its input: evaluate it on the photos "
            "(--images/--manifest)"
        )
    net = load_model(ckpt, device=device)
    method = ckpt.method
    calibration = stored_calibration(ckpt.config)  # as predict applies it: same probabilities
    g, g_name = None, "the model's geocells"
    if net.ranks == "gallery" or getattr(net.config, "coordinates", "") == "gallery":
        g, g_name = make_gallery(gallery, None if train is None else train.truth, seed=seed)
    rows = evaluate_model(
        net,
        queries.features,
        queries.truth,
        g,
        name=label,
        modes=list(modes),
        radius_km=radius_km,
        cache_gallery=True,
        progress=progress,
        probabilistic=probabilistic,
        seed=seed,
        calibration=calibration,
    )
    for radius in prior_radii_km:
        rows += evaluate_model(
            net,
            queries.features,
            queries.truth,
            g,
            name=label,
            modes=[m for m in modes if m in ("top1", "mode")] or ["top1"],
            radius_km=radius_km,
            cache_gallery=True,
            prior_radius_km=float(radius),
            calibration=calibration,
        )
    if retrieval_k:
        rows += _retrieval_augmented_rows(
            net, g, queries, train, retrieval_k, label=label, modes=modes, radius_km=radius_km
        )
    n_candidates = len(g) if net.ranks == "gallery" else len(net.cell_latlon)
    ev = Evaluation(benchmark, queries.ids, queries.truth, g_name, n_candidates)
    ev.results += rows
    ev.meta.update(model=f"{model} ({method})", features=queries.description)
    if retrieval_k:
        ev.meta["retrieval_k"] = int(retrieval_k)
    if prior_radii_km:
        ev.meta["prior_radius_km"] = [float(r) for r in prior_radii_km]
    ev.meta["ten_crop"] = queries.features.dim() == 3
    if baselines and train is not None:
        from geoalign.baselines import default_baselines

        ev.results += evaluate_baselines(
            default_baselines(radius_km),
            train.features,
            train.truth,
            queries.features,
            queries.truth,
            progress=lambda name: say(f"baseline: {name}"),
        )
    elif baselines:
        say("no training features: baselines skipped")
    return EvaluationRun(ev, write_report(ev, out))


def _retrieval_augmented_rows(
    net: Any,
    gallery: Any,
    queries: Queries,
    train: Queries | None,
    k: int,
    *,
    label: str,
    modes: Any,
    radius_km: float,
) -> list[Any]:
    """The model's rows with each query's k nearest training photos among its candidates."""
    from geoalign.evaluation.harness import evaluate_model
    from geoalign.inference.locator import Geolocator

    if train is None:
        raise DataError("retrieval-augmented candidates need the training photos' features")
    if net.ranks != "gallery":
        raise DataError(
            f"retrieval-augmented candidates join a GPS gallery; this {net.method} model ranks "
            "its own geocells"
        )
    geo = Geolocator(net, gallery=gallery, cache=True)
    geo = geo.with_training_neighbours(train.features, train.truth, k=k)
    return evaluate_model(
        geo,
        queries.features,
        queries.truth,
        name=f"{label} + {geo.neighbours.k} training neighbours",
        modes=list(modes),
        radius_km=radius_km,
    )


def evaluate_checkpoint_photos(
    model: str | Path,
    images: list[Any],
    truth: Any,
    ids: Any,
    *,
    benchmark: str,
    out: str | Path,
    gallery: str = "auto",
    modes: list[str] | tuple[str, ...] = ("top1", "mode"),
    radius_km: float = 750.0,
    ten_crop: bool = False,
    prior_radii_km: tuple[float, ...] = (),
    backbone: str = "auto",
    segmenter: str = "auto",
    device: str = "cpu",
    batch_size: int = 16,
    probabilistic: bool = True,
    seed: int = 0,
    label: str | None = None,
    progress: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> EvaluationRun:
    """Evaluate any checkpoint on photos, through its own image side: what GeoSURGE's
    trainable-backbone and fusion variants need (their block trains, so no precomputed features
    stand in for it), and the same for every other method. Ten-crop averages the crops' queries.
    Fusion models segment each photo (crop) on the fly with `segmenter` ("auto": the segmenter
    the checkpoint records, the one its training maps came from). `prior_radii_km`: GeoCLIP's
    Table 5 rows, as `evaluate_checkpoint`.
    `images` are photo paths, or the photos of webdataset shards (`shard_photos`), streamed.
    Unreadable photos are left out and listed in the report's notes."""
    import numpy as np

    from geoalign.data.wds_images import ShardPhotos
    from geoalign.evaluation.harness import Evaluation, evaluate_photos
    from geoalign.evaluation.report import write_report
    from geoalign.inference.locator import Geolocator

    say = say or (lambda message: None)
    label = label or (Path(str(model)).name if str(model) != "geoclip" else "GeoCLIP (official)")
    geo = Geolocator.from_pretrained(
        str(model), backbone=backbone, gallery=gallery, segmenter=segmenter, device=device
    )
    truth = np.asarray(truth, dtype=np.float64)
    rows, kept, failed = evaluate_photos(
        geo,
        images if isinstance(images, ShardPhotos) else list(images),
        truth,
        ten_crop=ten_crop,
        batch_size=batch_size,
        on_batch=progress,
        prior_radii_km=prior_radii_km,
        name=label,
        modes=list(modes),
        radius_km=radius_km,
        probabilistic=probabilistic,
        seed=seed,
    )
    what = "the model's geocells" if geo.candidates.kind == "cells" else geo.candidates.description
    ev = Evaluation(benchmark, np.asarray(ids)[kept], truth[kept], what, len(geo.candidates))
    ev.results += rows
    ev.meta.update(
        model=f"{model} ({geo.model.method}, reads {geo.model.reads})",
        features=f"{len(kept):,} photos through the model's image side"
        + (", ten-crop" if ten_crop else ""),
        ten_crop=ten_crop,
    )
    if prior_radii_km:
        ev.meta["prior_radius_km"] = [float(r) for r in prior_radii_km]
    notes = []
    if failed:
        notes.append(f"{len(failed)} unreadable photos left out (first: {failed[0][0]})")
    if isinstance(images, ShardPhotos) and images.bad:
        notes.append(f"{len(images.bad)} unusable shard samples left out (first: {images.bad[0]})")
    if notes:
        ev.meta["notes"] = "; ".join(notes)
        say(ev.meta["notes"])
    return EvaluationRun(ev, write_report(ev, out))


def shard_photos(spec: str | list[str]) -> Any:
    """The photos of webdataset shards with their truth, the lat/lon of each sample's json/txt
    (`geoalign.data.wds_images.photos_with_truth`); samples without both are left out, listed
    in `.bad`. Refuses shards with no usable sample."""
    from geoalign.data.wds_images import photos_with_truth

    photos = photos_with_truth(spec)
    if len(photos) == 0:
        first = f" (first: {photos.bad[0]})" if photos.bad else ""
        raise DataError(f"{spec}: no sample with an image and lat/lon{first}")
    return photos


def missing_eval_photos(images: str, benchmark: str | None) -> str | None:
    """What keeps `eval.images` from being evaluated, in one line (None: ready), found before
    any training: a missing folder or manifest, a folder without eval.benchmark, the
    benchmark's label file or photos absent. Shards are checked when read."""
    from geoalign.data.wds import is_shard_spec

    if is_shard_spec(images):
        return None
    path = Path(images)
    if path.is_file():
        return None
    if not path.is_dir():
        return "not found"
    if not benchmark:
        return "a folder needs eval.benchmark to read its labels"
    from geoalign.data.benchmarks import get_benchmark

    try:
        status = get_benchmark(benchmark).verify(path)
    except DataError as err:
        return str(err)
    if status.labels is None:
        tried = ", ".join(str(p) for p in status.labels_tried)
        return f"no {status.name} label file (looked for {tried})"
    if status.missing:
        return (
            f"{len(status.missing):,} of {status.n_rows:,} {status.name} photos missing "
            f"(e.g. {status.missing[0]})"
        )
    return None


def after_training_queries(cfg: Any) -> str | None:
    """The test queries the after-training evaluation reads: eval.queries, or the scene labels
    of eval.benchmark (Im2GPS3k when unset, GeoCLIP's test set) for a run trained on them."""
    e = cfg.eval
    if e.queries is None and cfg.data.source == "scene-labels":
        return f"scene-labels:{e.benchmark or SCENE_LABEL_BENCHMARK}"
    return e.queries


def queries_benchmark(spec: str, benchmark: str | None) -> str:
    """The name a report gives queries: eval.benchmark when the config names one, else the
    data set itself (the scene-label benchmark, or the feature store's folder name). Published
    rows are matched on this name, so the user's own store never sits beside a paper's table."""
    if benchmark:
        return benchmark
    if spec.startswith("scene-labels:"):
        return Path(spec.split(":", 1)[1]).stem
    return Path(spec.rstrip("/")).name or spec


def remember_evaluation(
    model_dir: str | Path, gallery: str, train: Queries | None, benchmark: str, seed: int
) -> str:
    """Record in the exported model's config.json the gallery and benchmark its evaluation
    uses, so `evaluate`, `predict`, serve and `Geolocator.from_pretrained` default to them.

    A `train:N` gallery is drawn once here and saved beside the weights (gallery.csv): the
    evaluation and every later command read that same file. "auto" (photo evaluations) records
    the benchmark only. A GeoSURGE run's other export (best/ beside last/) gets the same record,
    since `--model RUN` may pick either. Returns the gallery to evaluate."""
    from geoalign.models.checkpoint import is_checkpoint_dir, record_in_config
    from geoalign.models.registry import resolve_checkpoint_dir

    folder = resolve_checkpoint_dir(model_dir)
    folders = [folder] + [
        folder.parent / other
        for other in ("last", "best")
        if folder.name in ("last", "best") and other != folder.name
        and is_checkpoint_dir(folder.parent / other)
    ]  # fmt: skip
    entries: dict[str, Any] = {"benchmark": benchmark}
    if gallery.startswith("train:") and train is not None:
        import pandas as pd

        from geoalign.evaluation.harness import make_gallery
        from geoalign.io_atomic import atomic_write

        latlon, _ = make_gallery(gallery, train.truth, seed=seed)
        csv = pd.DataFrame({"lat": latlon[:, 0], "lon": latlon[:, 1]}).to_csv(index=False)
        for f in folders:
            atomic_write(f / GALLERY_FILE, lambda fh: fh.write(csv.encode()))
        entries["gallery"], gallery = GALLERY_FILE, str(folder / GALLERY_FILE)
    elif Path(gallery).is_file():
        entries["gallery"] = gallery = str(Path(gallery).resolve())
    elif gallery != "auto" and not gallery.startswith("train:"):
        entries["gallery"] = gallery  # a named gallery
    for f in folders:
        record_in_config(f, entries)
    return gallery


def _photo_queries(images: str, benchmark: str | None) -> tuple[Any, Any, Any, str]:
    """(photos, truth [N, 2], ids, name) of a benchmark's photo folder, a manifest, or
    webdataset shards (photos named by sample key, truth from each sample's json/txt)."""
    from geoalign.data.manifest import load_manifest
    from geoalign.data.wds import is_shard_spec

    path = Path(images)
    if is_shard_spec(images):
        photos = shard_photos(images)
        return photos, photos.coords, photos.keys, benchmark or path.name
    if path.is_dir():
        if not benchmark:
            raise DataError(
                f"eval.images {images}: a folder needs eval.benchmark to read its labels"
            )
        from geoalign.data.benchmarks import get_benchmark

        man = get_benchmark(benchmark).load(path)
        name = benchmark
    else:
        man = load_manifest(path, check_files=True).clean(on_error="skip")
        name = benchmark or path.name
    return [str(p) for p in man.paths()], man.coords(), list(man.images), name


def training_queries(source: str, path: str | None, seed: int = 0) -> Queries | None:
    """The training rows as features, for the baselines and `train:N` galleries (None for a
    run from photos or in-memory arrays, whose features are not kept)."""
    from geoalign.data.feature_rows import data_source_spec
    from geoalign.evaluation import queries as Q

    spec = data_source_spec(source, path)
    if spec is None:
        return None
    return Q.resolve(spec, max_rows=BASELINE_ROWS if source == "store" else None, seed=seed)


def evaluate_after_training(
    cfg: Any, model_dir: str | Path, *, say: Callable[[str], None] | None = None
) -> EvaluationRun | None:
    """The evaluation a training config asks for (its `eval` section), on the exported model.

    Runs when `eval.after_training` is on and the test queries are known: `eval.images` (the
    benchmark's photos, or a manifest: evaluated from photos through the model's own image side,
    ten-crop when `eval.ten_crop`; what photo-trained GeoSURGE runs need), `eval.queries`, or
    the benchmark's scene labels for a run trained on scene labels. Writes to <out_dir>/eval.
    """
    from geoalign.evaluation import queries as Q

    say = say or (lambda message: None)
    e = cfg.eval
    if not e.after_training:
        return None
    if getattr(e, "images", None):
        paths, truth, ids, name = _photo_queries(e.images, e.benchmark)
        photo_gallery = e.gallery if not e.gallery.startswith("train:") else "auto"
        photo_gallery = remember_evaluation(model_dir, photo_gallery, None, name, cfg.trainer.seed)
        say(
            f"evaluating on {len(paths):,} photos of {name}" + (" (ten-crop)" if e.ten_crop else "")
        )
        return evaluate_checkpoint_photos(
            model_dir,
            paths,
            truth,
            ids,
            benchmark=name,
            out=Path(cfg.trainer.out_dir) / "eval",
            gallery=photo_gallery,
            modes=e.modes,
            radius_km=e.radius_km,
            ten_crop=e.ten_crop,
            seed=cfg.trainer.seed,
            label=cfg.name,
            say=say,
        )
    spec = after_training_queries(cfg)
    if spec is None:
        say(
            "no evaluation after training: set eval.queries (a feature store of the test photos "
            "or scene-labels:<benchmark>), or run `geoalign evaluate` on the photos"
        )
        return None
    seed = cfg.trainer.seed
    queries = Q.resolve(spec, seed=seed)
    needs_train = e.baselines or e.gallery.startswith("train:")
    train = training_queries(cfg.data.source, cfg.data.path, seed) if needs_train else None
    benchmark = queries_benchmark(spec, e.benchmark)
    gallery = remember_evaluation(model_dir, e.gallery, train, benchmark, seed)
    say(f"evaluating on {queries.description}, gallery {e.gallery}")
    return evaluate_checkpoint(
        model_dir,
        queries,
        benchmark=benchmark,
        out=Path(cfg.trainer.out_dir) / "eval",
        gallery=gallery,
        train=train,
        modes=e.modes,
        radius_km=e.radius_km,
        baselines=e.baselines,
        seed=seed,
        label=cfg.name,
        say=say,
    )
