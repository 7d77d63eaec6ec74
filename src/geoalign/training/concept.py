"""Train concept-aware GeoCLIP through the GeoCLIP harness (same data, queue, noise, temperature,
checkpoints and resume), with the concept module's λ·L_concept added to each step.

A config is a GeoCLIP training config (`geoalign.training.config`) plus `method: concept` and a
`concept:` section (`geoalign.models.concept.ConceptConfig` fields), e.g.

    method: concept
    concept: {concept_set: geography, text_encoder: clip-vit-l14, lambda_concept: 1.0, sigma: 1.0}

`base: other.yaml` inherits another config file. After training, the country concept bottleneck
(`geoalign.interpret.cbm`) is fitted on (up to `cbm_rows` of) the training features and stored
next to the exported model, so `geoalign explain` has contributions right away.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from geoalign.errors import DataError
from geoalign.io_atomic import atomic_output
from geoalign.models.concept import ConceptAwareGeoCLIP, ConceptConfig
from geoalign.training.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    read_config_yaml,  # `base:` inheritance, shared with GeoSURGE
)

METHOD = "concept"
_OWN_KEYS = ("method", "concept", "cbm")


@dataclass
class CbmSection:
    fit: bool = True  # fit the country bottleneck after training (feature sources only)
    rows: int = 20000  # at most this many training rows
    target_nonzero: int = 30
    min_per_class: int = 20


@dataclass
class ConceptRun:
    train: TrainConfig
    concept: ConceptConfig
    cbm: CbmSection
    raw: dict[str, Any]  # the whole config as read, for the run folder


def concept_run_from_dict(
    data: dict[str, Any], *, source: str = "config", overrides: list[str] | None = None
) -> ConceptRun:
    raw = apply_overrides(copy.deepcopy(data or {}), overrides)
    if raw.get("method", METHOD) != METHOD:
        raise DataError(f"{source}: method is {raw.get('method')!r}, expected {METHOD!r}")
    concept_raw = raw.get("concept") or {}
    cbm_raw = raw.get("cbm") or {}
    if not isinstance(concept_raw, dict) or not isinstance(cbm_raw, dict):
        raise DataError(f"{source}: `concept` and `cbm` must be mappings")
    try:
        concept = ConceptConfig.from_dict(concept_raw)
    except (TypeError, ValueError) as err:
        raise DataError(f"{source}: concept: {err}") from err
    unknown = set(cbm_raw) - set(CbmSection.__dataclass_fields__)
    if unknown:
        raise DataError(f"{source}: cbm: unknown key(s) {sorted(unknown)}")
    rest = {k: v for k, v in raw.items() if k not in _OWN_KEYS}
    train = config_from_dict(rest, source=source)
    return ConceptRun(train, concept, CbmSection(**cbm_raw), raw)


def load_concept_config(path: str | Path, overrides: list[str] | None = None) -> ConceptRun:
    """Read a concept-aware config (see configs/concept/) and apply key.path=value overrides."""
    return concept_run_from_dict(read_config_yaml(path), source=str(path), overrides=overrides)


def check_training_data(run: ConceptRun) -> None:
    """Fail in one line, before anything is built, when the features the config trains on are
    not there (the MP-16 configs name a feature store the user extracts first)."""
    from geoalign.data.shards import INDEX_NAME

    d = run.train.data
    if d.source != "store" or (d.path and (Path(d.path) / INDEX_NAME).is_file()):
        return
    backbone = run.train.model.features or "clip-vit-l14"
    where = f"no feature store at {d.path}" if d.path else "data.path is not set"
    views = " --views 8 --augment simclr" if d.views > 1 else ""  # P = data.views of K = 8
    raise DataError(
        f"{run.train.name}: training features missing: {where} (data.path). Extract the training "
        f"images' {backbone} features first (for MP-16: its manifest and photos): `geoalign "
        f"features extract MANIFEST.csv --backbone {backbone}{views} --out "
        f"{d.path or 'FEATURES'}`, or use a store you have: --set data.path=DIR"
    )


def build_concept_model(run: ConceptRun, feature_dim: int | None) -> ConceptAwareGeoCLIP:
    """GeoCLIP as the config asks (official, checkpoint or scratch) wrapped with the module."""
    from geoalign.training.run import build_model

    return ConceptAwareGeoCLIP.build(build_model(run.train, feature_dim), run.concept)


def _training_rows(run: ConceptRun, arrays: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(features, coords) of up to cbm.rows training rows (a fixed sample, seeded by the run; a
    row of K views or crops is their mean), or None for photo sources."""
    from geoalign.training.data import feature_rows

    d = run.train.data
    if (d.source == "arrays" and arrays is None) or (d.source == "store" and not d.path):
        return None
    rows = feature_rows(d, arrays)
    if rows is None:
        return None
    sample = rows.sample(run.cbm.rows, run.train.trainer.seed).mean_crops()
    return sample.features, sample.latlon


def fit_cbm_after_training(
    model: ConceptAwareGeoCLIP, run: ConceptRun, export_dir: Path, arrays: Any = None
):
    """Fit and save the country concept bottleneck next to the exported model; None if skipped."""
    from geoalign.interpret.cbm import cbm_dir, fit_country_cbm

    if not run.cbm.fit:
        return None
    data = _training_rows(run, arrays)
    if data is None:
        return None
    try:
        cbm = fit_country_cbm(
            model.eval(),
            data[0],
            data[1],
            target_nonzero=run.cbm.target_nonzero,
            min_per_class=run.cbm.min_per_class,
            seed=run.train.trainer.seed,
        )
    except DataError:  # too few countries in a small training set: explanations go without
        return None
    return cbm.save(cbm_dir(export_dir))


def _bottleneck_done(run: ConceptRun, export_dir: Path) -> bool:
    from geoalign.interpret.cbm import cbm_dir

    return not run.cbm.fit or cbm_dir(export_dir).is_dir()


def train_concept(
    run: ConceptRun,
    *,
    arrays: tuple[Any, Any] | None = None,
    progress: bool | None = None,
    extra_callbacks: list[Any] | None = None,
):
    """Train (or resume) the run; returns the harness' TrainResult (its model is concept-aware)."""
    import lightning as L

    from geoalign.training.run import build_source, train

    check_training_data(run)
    # seed before building: the concept head's initialisation must not depend on what ran before
    L.seed_everything(run.train.trainer.seed, workers=True, verbose=False)
    source = build_source(run.train, arrays)  # built once: the harness trains on it
    model = build_concept_model(run, source[1])
    result = train(
        run.train,
        source=source,
        model=model,
        progress=progress,
        extra_callbacks=extra_callbacks,
        run_config={**run.train.to_dict(), "concept": run.concept.to_dict()},
    )
    if result.trained_steps == 0 and _bottleneck_done(run, result.export_dir):
        return result  # already complete, bottleneck included
    if int(os.environ.get("RANK", "0")) == 0:  # one process writes (torchrun sets RANK)
        out = Path(run.train.trainer.out_dir)
        with atomic_output(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(run.raw, sort_keys=False))
        fit_cbm_after_training(result.model, run, result.export_dir, arrays)
    return result


# --- the quickstart row ---------------------------------------------------------------------------------

QUICKSTART_CONFIG = "concept/quickstart.yaml"  # under the packaged configs (geoalign/configs/)


def quickstart_run(geoclip_cfg: TrainConfig, out_dir: str | Path, **concept: Any) -> ConceptRun:
    """The quickstart's GeoCLIP settings plus the concept module and name of the packaged
    concept/quickstart.yaml (which inherits the GeoCLIP quickstart's file)."""
    from geoalign.training.config import packaged_configs

    path = packaged_configs() / QUICKSTART_CONFIG
    shipped = read_config_yaml(path)
    raw = geoclip_cfg.to_dict()
    raw["trainer"]["out_dir"] = str(Path(out_dir))
    raw.update(
        method=METHOD,
        name=shipped["name"],
        concept={**shipped["concept"], **concept},
        cbm=dict(shipped["cbm"]),
    )
    return concept_run_from_dict(raw, source=str(path))


def quickstart_rows(
    geoclip_cfg: TrainConfig,
    out_dir: str | Path,
    test_x: np.ndarray,
    test_y: np.ndarray,
    gallery: np.ndarray,
    *,
    progress: bool | None = None,
    validation: tuple[Any, Any] | None = None,
) -> tuple[list[Any], Any]:
    """Train the concept-aware model with the quickstart's settings and evaluate it like GeoCLIP
    (calibrated on `validation` rows when given): (report rows named "Concept-aware alignment",
    the TrainResult)."""
    from geoalign.evaluation.model_rows import model_rows

    run = quickstart_run(geoclip_cfg, Path(out_dir) / "concept-run")
    result = train_concept(run, progress=progress)
    e = run.train.eval
    rows = model_rows(
        result.model,
        test_x,
        test_y,
        gallery,
        "Concept-aware alignment",
        e.modes,
        e.radius_km,
        validation,
    )
    return rows, result
