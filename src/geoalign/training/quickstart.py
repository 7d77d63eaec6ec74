"""The quickstart: train GeoCLIP's alignment on real data in minutes on a CPU, downloading nothing.

Data: the packaged YFCC26k label file (25,600 Flickr photos) for training and Im2GPS3k (2,997) for
testing. Their Places365 scene labels are real per-photo descriptors (one-hot S3/S16/S365 plus the
indoor/natural/urban probabilities, 387 numbers per photo; see `evaluation.descriptors`).

Model: the official GeoCLIP location encoder and temperature (from the installed `geoclip` wheel),
a new image head 387 -> 512 -> 512, trained with GeoCLIP's loss and its 4,096-coordinate GPS queue.
The location encoder stays frozen and the GPS noise is off: 387 scene numbers cannot teach a
location encoder that 4.7M photos shaped, the noise (150 m / 1 km) is far below what scene labels
resolve, and together they make the location embeddings exact constants that are computed once.

Evaluation: retrieval against 10,000 coordinates sampled from the training set, top-1 (the papers'
protocol) and mode seeking, beside 1-NN, [L]kNN, the densest-location prior and geocell
classification on the same descriptors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoalign.evaluation.harness import Evaluation
from geoalign.evaluation.model_rows import model_rows
from geoalign.training.config import TrainConfig, config_from_dict, read_config_yaml

QUICKSTART_CONFIG = "geoclip/quickstart.yaml"  # under the packaged configs (geoalign/configs/)


def quickstart_config(out_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The packaged geoclip/quickstart.yaml, training into `<out_dir>/run`, always from scratch
    (a quickstart never resumes an old run); `overrides`: {"optim.epochs": 3, ...}."""
    from geoalign.training import config

    path = config.packaged_configs() / QUICKSTART_CONFIG
    data = read_config_yaml(path)
    data.setdefault("trainer", {}).update(out_dir=str(Path(out_dir) / "run"), resume=None)
    items = [f"{k}={v}" for k, v in overrides.items()]
    return config_from_dict(data, source=str(path), overrides=items)


def validation_rows(cfg: TrainConfig, x: Any, y: Any) -> tuple[Any, Any] | None:
    """The training rows `data.fraction` leaves out (never trained on, never the test set): the
    quickstart's validation split for calibration. None when the config trains on every row."""
    from geoalign.training.data import fraction_mask

    if cfg.data.fraction >= 1:
        return None
    held_out = ~fraction_mask(len(y), cfg.data.fraction, cfg.data.fraction_seed)
    return x[held_out], y[held_out]


@dataclass
class QuickstartResult:
    evaluation: Evaluation
    report: dict[str, Path]
    train_seconds: float
    total_seconds: float
    first_loss: float | None
    last_loss: float | None


def _losses(log_dir: Path) -> tuple[float | None, float | None]:
    import pandas as pd

    path = log_dir / "metrics.csv"
    if not path.is_file():
        return None, None
    frame = pd.read_csv(path)
    if "train/loss" not in frame:
        return None, None
    loss = frame["train/loss"].dropna()
    return (float(loss.iloc[0]), float(loss.iloc[-1])) if len(loss) else (None, None)


def run_quickstart(
    out_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    baselines: list[Any] | None = None,
    progress: bool = True,
    status=None,
    concept: bool = True,
    geosurge: bool = True,
) -> QuickstartResult:
    """Train, evaluate and write the report under `out_dir` (report/ and run/; with `concept`, the
    concept-aware model too, in concept-run/; with `geosurge`, GeoSURGE in geosurge-run/)."""
    import numpy as np

    from geoalign.baselines import default_baselines
    from geoalign.data.scene_labels import load_scene_label_set
    from geoalign.evaluation.harness import evaluate_baselines, make_gallery
    from geoalign.evaluation.report import write_report
    from geoalign.training.run import train

    say = status or (lambda msg: None)
    out = Path(out_dir)
    cfg = config or quickstart_config(out)
    start = time.perf_counter()
    all_x, all_y, _ = load_scene_label_set(cfg.data.path or "yfcc26k")
    test_x, test_y, test_ids = load_scene_label_set(cfg.eval.benchmark or "im2gps3k")
    validation = validation_rows(cfg, all_x, all_y)  # calibration rows, held out of training
    from geoalign.training.data import fraction_mask

    trained = fraction_mask(len(all_y), cfg.data.fraction, cfg.data.fraction_seed)
    train_x, train_y = all_x[trained], all_y[trained]  # what GeoCLIP trains on (data.fraction)

    say(f"training the alignment on {len(train_x):,} photos' scene labels")
    result = train(cfg, progress=progress)
    first, last = _losses(Path(cfg.trainer.out_dir) / "logs")

    say("evaluating against the gallery and the baselines")
    gallery, gallery_name = make_gallery(cfg.eval.gallery, train_y, seed=cfg.trainer.seed)
    ev = Evaluation(
        benchmark=cfg.eval.benchmark or "im2gps3k",
        ids=np.asarray(test_ids),
        truth=test_y,
        gallery=gallery_name,
        gallery_size=len(gallery),
    )
    ev.results += model_rows(
        result.model,
        test_x,
        test_y,
        gallery,
        "GeoCLIP alignment",
        cfg.eval.modes,
        cfg.eval.radius_km,
        validation,
    )
    if concept:  # the same settings plus the concept-aware alignment module
        from geoalign.training.concept import quickstart_rows

        say("training the concept-aware alignment (same settings + concept module)")
        rows, _ = quickstart_rows(
            cfg, out, test_x, test_y, gallery, progress=progress, validation=validation
        )
        ev.results += rows
    geosurge_training = None
    if geosurge:  # ranks its own geocells (built from the training coordinates), no GPS gallery
        from geoalign.training.geosurge import geosurge_quickstart_rows

        say("training GeoSURGE (S2 geocell hierarchy, learned cell embeddings)")
        rows, info = geosurge_quickstart_rows(
            train_x,
            train_y,
            test_x,
            test_y,
            out / "geosurge-run",
            seed=cfg.trainer.seed,
            modes=cfg.eval.modes,
            radius_km=cfg.eval.radius_km,
            progress=progress,
            validation=validation,
        )
        ev.results += rows
        geosurge_training = info.get("training")
    chosen = (
        default_baselines(cfg.eval.radius_km, classifier_epochs=3)
        if baselines is None
        else baselines
    )
    ev.results += evaluate_baselines(
        chosen, train_x, train_y, test_x, test_y, progress=lambda n: say(f"baseline: {n}")
    )
    total = time.perf_counter() - start
    ev.meta.update(
        model=f"{result.export_dir} (official location encoder, frozen; image head trained)",
        features="Places365 scene labels (387-d: one-hot S3/S16/S365 + 3 probabilities)",
        training=(
            f"YFCC26k, {result.n_rows:,} photos, {result.global_step} steps of batch "
            f"{cfg.optim.batch_size} + queue {cfg.model.queue_size}, {result.seconds:.0f} s; "
            f"loss {first:.3f} -> {last:.3f}"
            if first is not None and last is not None
            else f"YFCC26k, {result.n_rows:,} photos, {result.global_step} steps"
        ),
        **({"geosurge": geosurge_training} if geosurge_training else {}),
        notes=(
            "scene labels are a weak signal: expect tens of percent at 750/2,500 km, not CLIP "
            f"numbers. Wall time of the whole quickstart: {total:.0f} s."
        ),
    )
    paths = write_report(ev, out / "report")
    return QuickstartResult(ev, paths, result.seconds, time.perf_counter() - start, first, last)
