"""Calibration: temperature and smoothing level by NLL, conformal region masses; regions of an
overconfident model reach their nominal coverage on held-out rows after it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geoalign.errors import DataError
from geoalign.geo.distance import pairwise_haversine_km
from geoalign.inference.calibration import Calibration, fit_calibration, save_calibration
from geoalign.inference.locator import Geolocator
from geoalign.models.base import Candidates


class NoisyObservation:
    """A Locator whose 'features' are a noisy observation (lat, lon) of the truth and whose
    logits assume a 100 km noise: overconfident when the real noise is larger."""

    method, ranks, reads, feature_dim, backbone_spec, training = (
        "test",
        "gallery",
        "features",
        2,
        None,
        False,
    )

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def encode_features(self, features):
        return features.double()

    def encode_pixels(self, pixels, segmentation=None):
        raise TypeError("features only")

    def candidates(self, gallery=None, keys=None):
        return Candidates(gallery, "gallery", torch.zeros(len(gallery), 2), "grid")

    def temperature(self) -> float:
        return 1.0

    def similarities(self, queries, candidates):
        d = pairwise_haversine_km(queries.numpy(), candidates.latlon)
        return torch.from_numpy(-0.5 * (d / 100.0) ** 2)


def _rows(n: int, seed: int, noise_km: float = 400.0):
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(-40, 50, n), rng.uniform(-100, 120, n)], 1)
    step = noise_km / 111.0
    obs = truth + rng.normal(0, step, (n, 2)) * np.array([1, 1])[None]
    return torch.from_numpy(obs), truth


@pytest.fixture(scope="module")
def geo():
    lat, lon = np.meshgrid(np.arange(-60, 70, 1.5), np.arange(-150, 170, 1.5), indexing="ij")
    return Geolocator(NoisyObservation(), gallery=np.stack([lat.ravel(), lon.ravel()], 1))


def _coverage(geo, feats, truth, p):
    dists = geo.distributions(geo.embed_features(feats))
    return float(np.mean([d.level_of(truth[i : i + 1])[0] <= p for i, d in enumerate(dists)]))


def test_calibration_fixes_region_coverage_on_held_out_rows(geo, tmp_path):
    val_x, val_y = _rows(300, seed=0)
    test_x, test_y = _rows(400, seed=1)
    raw90 = _coverage(geo, test_x, test_y, 0.9)
    cal = fit_calibration(geo, val_x, val_y, fitted_on="val rows", levels=(4, 5, 6))
    assert cal.nll_after < cal.nll_before and cal.scale < 0.5 and cal.n == 300
    assert all(np.diff(cal.masses) >= 0)
    from geoalign.inference.calibration import SUPPORT
    from geoalign.inference.distribution import CellGrid

    # the chosen level's cells hold nearly every validation truth, so its regions can cover them
    assert (CellGrid(geo.candidates.latlon, cal.level).cell_index(val_y) >= 0).mean() >= SUPPORT
    finest = CellGrid(geo.candidates.latlon, 12)
    assert (finest.cell_index(val_y) >= 0).mean() < SUPPORT  # (level 12 would not qualify)
    with pytest.raises(AssertionError):
        assert fit_calibration(geo, val_x, val_y, fitted_on="v", levels=(12,)).level != 12
    geo.set_calibration(cal)
    try:
        for p in (0.5, 0.9):
            assert abs(_coverage(geo, test_x, test_y, p) - p) < 0.07
        assert raw90 < 0.75  # the overconfident model's 90% regions missed often
    finally:
        geo.set_calibration(None)
    # stored with the checkpoint and read back equal
    (tmp_path / "config.json").write_text(json.dumps({"format": "geoalign-checkpoint"}))
    save_calibration(tmp_path, cal)
    again = Calibration.from_dict(json.loads((tmp_path / "config.json").read_text())["calibration"])
    assert again == cal
    assert again.nominal(np.array([again(0.3)]))[0] == pytest.approx(0.3, abs=0.011)


def test_bad_calibration_input(geo):
    x, y = _rows(10, seed=2)
    with pytest.raises(DataError, match="at least 20"):
        fit_calibration(geo, x, y, fitted_on="tiny")
    with pytest.raises(DataError, match="bad calibration record"):
        Calibration.from_dict({"scale": -1.0})
