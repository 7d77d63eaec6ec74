"""Training (GeoCLIP, GeoSURGE, concept bottleneck, calibration after training), evaluation and
`geoalign calibrate` read labelled feature rows through the one loader, and get the same rows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geoalign.data import feature_rows as loader
from geoalign.data.feature_store import store_arrays
from test_architecture import tiny_geoclip
from test_cli_predict import small_gallery  # noqa: F401  (fixture)

N, D = 80, 12


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, D)).astype(np.float32)
    coords = rng.uniform([-60, -170], [60, 170], (N, 2))
    store_arrays(x, coords, tmp_path / "store", shard_size=16)
    return str(tmp_path / "store")


@pytest.fixture
def opened(monkeypatch):
    """Every spec the loader opens, in order."""
    specs: list[str] = []
    real = loader.open_feature_rows

    def spy(spec, **kw):
        specs.append(spec)
        return real(spec, **kw)

    monkeypatch.setattr(loader, "open_feature_rows", spy)
    return specs


def _train_config(store: str, tmp_path):
    from geoalign.training.config import config_from_dict

    return config_from_dict(
        {
            "name": "rows",
            "model": {"init": "scratch"},
            "data": {"source": "store", "path": store, "fraction": 0.5},
            "trainer": {"out_dir": str(tmp_path / "run"), "seed": 3},
        }
    )


def test_every_reader_opens_the_spec_through_the_one_loader(store, opened, tmp_path):
    from geoalign.evaluation.queries import resolve
    from geoalign.training.calibrate_after import validation_split
    from geoalign.training.concept import _training_rows
    from geoalign.training.data import fraction_mask
    from geoalign.training.geosurge import geosurge_config_from_dict
    from geoalign.training.geosurge.batches import split_rows
    from geoalign.training.geosurge.data import build_data
    from geoalign.training.run import build_source

    whole = loader.load_feature_rows(store)
    assert opened == [store]
    cfg = _train_config(store, tmp_path)

    source, dim, backbone = build_source(cfg)  # streamed: the store itself, not its rows
    assert dim == D and backbone is None and source.store.path == Path(store)
    feats, latlon, _ = validation_split(cfg)
    held = np.flatnonzero(~fraction_mask(N, 0.5, cfg.data.fraction_seed))
    np.testing.assert_array_equal(feats, whole.features[held])
    np.testing.assert_array_equal(latlon, whole.latlon[held])

    gs = geosurge_config_from_dict(
        {
            "method": "geosurge",
            "name": "t",
            "model": {"visual": "features", "feature_head": "linear", "embed_dim": 8},
            "cells": {"tau_max": [300, 100], "tau_min": 10},
            "data": {"source": "store", "path": store, "val_fraction": 0.25},
            "trainer": {"out_dir": str(tmp_path / "gs"), "progress": False},
        }
    )
    data = build_data(gs)
    train_rows, val_rows = split_rows(N, gs)
    val = next(data.val.iter_all(1000, 0, 1))
    np.testing.assert_array_equal(val["features"].numpy(), whole.features[val_rows])
    np.testing.assert_array_equal(data.train_coords, whole.latlon[train_rows])

    run = SimpleNamespace(train=cfg, cbm=SimpleNamespace(rows=25))  # the concept bottleneck's
    bottleneck = _training_rows(run, None)
    picked = loader.load_feature_rows(store, max_rows=25, seed=cfg.trainer.seed)
    np.testing.assert_array_equal(bottleneck[0], picked.features)
    np.testing.assert_array_equal(bottleneck[1], picked.latlon)

    queries = resolve(store, max_rows=30, seed=2)
    sample = loader.load_feature_rows(store, max_rows=30, seed=2)
    assert torch.equal(queries.features, torch.from_numpy(sample.features))
    assert list(queries.ids) == list(sample.ids)
    # load; build_source, validation_split, build_data, the bottleneck, load; resolve, load
    assert opened == [store] * 8


def test_calibrate_and_evaluation_fit_and_score_the_same_rows(
    store,
    opened,
    tmp_path,
    monkeypatch,
    small_gallery,  # noqa: F811
):
    from geoalign.cli import app
    from geoalign.evaluation.queries import resolve

    path = tiny_geoclip(in_dim=D).save(tmp_path / "model")
    fitted: list[np.ndarray] = []

    class Stop(Exception):
        pass

    def capture(geo, features, latlon, **kw):
        fitted.append(np.asarray(features))
        raise Stop

    monkeypatch.setattr("geoalign.inference.calibration.fit_calibration", capture)
    args = ["calibrate", "-m", str(path), "--queries", store, "--gallery", str(small_gallery)]
    res = CliRunner().invoke(app, [*args, "--max-rows", "40", "--seed", "5"])
    assert isinstance(res.exception, Stop), res.output
    queries = resolve(store, max_rows=40, seed=5)
    np.testing.assert_array_equal(fitted[0], queries.features.numpy())
    assert opened == [store, store]
