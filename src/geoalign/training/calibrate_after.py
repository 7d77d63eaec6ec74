"""Calibration at the end of `geoalign train`, when the config has a validation split.

The validation split is the rows `data.fraction` leaves out of training (as in the quickstart):
never trained on, and never the test set. The logit factor, smoothing level and conformal region
masses are fitted on them (`inference.calibration.fit_calibration`, as `geoalign calibrate`
does) against the gallery the after-training evaluation uses, and stored in the exported
checkpoint's config.json with what they were fitted on; predict, verify and serve then apply it.
Runs from photos (`images`, `wds`) keep no features of the held-out rows: `geoalign calibrate`
on extracted features does it for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.errors import GeoalignError

MAX_ROWS = 5000  # held-out rows used at most (as `geoalign calibrate --max-rows`)
MIN_ROWS = 20  # fit_calibration's minimum


def validation_split(
    cfg: Any, arrays: tuple[Any, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(features, lat/lon, description) of the held-out rows, at most MAX_ROWS of them (a fixed
    sample); None when the config trains on every row or its rows are photos."""
    from geoalign.data.feature_rows import StoreRows, sample_rows
    from geoalign.training.data import feature_rows, fraction_mask

    d = cfg.data
    if d.fraction >= 1 or (d.source == "arrays" and arrays is None):
        return None
    if d.source == "store" and not d.path:
        return None
    rows = feature_rows(d, arrays)
    if rows is None:
        return None
    if isinstance(rows, StoreRows) and rows.store.view_kind is not None:
        return None  # training views, not one feature per photo
    held = np.flatnonzero(~fraction_mask(len(rows), d.fraction, d.fraction_seed))
    held = held[sample_rows(len(held), MAX_ROWS, cfg.trainer.seed)]
    if isinstance(rows, StoreRows):
        what = f"{len(held):,} held-out rows of feature store {d.path}"
    else:
        where = "the training arrays" if d.source == "arrays" else rows.description
        n_out = int(round(len(rows) * (1 - d.fraction)))
        what = (
            f"{len(held):,} of the {n_out:,} rows data.fraction={d.fraction:g} holds out of {where}"
        )
    part = rows.take(held)
    return part.features, part.latlon, what


def calibrate_after_training(
    cfg: Any,
    export_dir: Path,
    *,
    arrays: tuple[Any, Any] | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> Any:
    """Fit and store the calibration of the exported model on the config's validation split;
    the Calibration, or None (no split, too few rows, or a model without a GPS gallery)."""
    from geoalign.inference.calibration import fit_calibration, save_calibration

    split = validation_split(cfg, arrays)
    if split is None:
        say("no calibration: the config has no validation split of features (data.fraction 1)")
        return None
    feats, latlon, what = split
    if len(latlon) < MIN_ROWS:
        say(f"no calibration: {what} (fewer than {MIN_ROWS})")
        return None
    gallery = cfg.eval.gallery
    try:
        geo = _locator(export_dir, gallery, cfg)
    except GeoalignError as err:
        say(f"no calibration: {err}")
        return None
    say(f"calibrating on {what}, gallery {gallery}")
    cal = fit_calibration(geo, feats, latlon, fitted_on=f"{what}; gallery {gallery}")
    save_calibration(export_dir, cal)
    say(
        f"calibration stored in {Path(export_dir) / 'config.json'}: logit factor "
        f"{cal.scale:.3g}, smoothing level {cal.level}, mass of the 50%/90% regions "
        f"{cal(0.5):.3f}/{cal(0.9):.3f}"
    )
    return cal


def _locator(export_dir: Path, gallery: str, cfg: Any) -> Any:
    """The exported model over the evaluation's gallery (a train:N gallery sampled as there)."""
    from geoalign.evaluation.harness import make_gallery
    from geoalign.evaluation.run import training_queries
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import load_model

    model = load_model(str(export_dir))
    if model.ranks != "gallery":
        raise GeoalignError(f"this {model.method} model ranks geocells, not a GPS gallery")
    train = None
    if gallery.startswith("train:"):
        train = training_queries(cfg.data.source, cfg.data.path, cfg.trainer.seed)
        if train is None:
            raise GeoalignError(f"gallery {gallery} needs the training rows, not kept for this run")
    coords, _ = make_gallery(gallery, None if train is None else train.truth, seed=cfg.trainer.seed)
    return Geolocator(model, gallery=coords, cache=False)


def has_calibration(export_dir: Path) -> bool:
    path = Path(export_dir) / "config.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("calibration"))
