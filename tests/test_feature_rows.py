"""The one loader of labelled feature rows: stores, .npz files and scene labels read alike."""

from __future__ import annotations

import numpy as np
import pytest

from geoalign.data.feature_rows import load_feature_rows, sample_rows
from geoalign.data.feature_store import store_arrays
from geoalign.data.scene_labels import SCENE_DIM, SCENE_LABELS
from geoalign.errors import CoordinateError, DataError


def _arrays(n: int = 50, d: int = 6):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), rng.uniform([-60, -170], [60, 170], (n, 2))


def test_store_and_npz_give_the_same_rows(tmp_path):
    x, coords = _arrays()
    store_arrays(x, coords, tmp_path / "store", shard_size=16)
    np.savez(tmp_path / "rows.npz", features=x, coords=coords)
    store = load_feature_rows(str(tmp_path / "store"))
    npz = load_feature_rows(str(tmp_path / "rows.npz"))
    for rows in (store, npz):
        np.testing.assert_allclose(rows.features, x)
        np.testing.assert_allclose(rows.latlon, coords)
        assert len(rows) == 50 and rows.dim == 6
    sub = load_feature_rows(str(tmp_path / "store"), max_rows=10, seed=3)
    picked = sample_rows(50, 10, seed=3)
    assert list(picked) == sorted(picked) and len(set(picked)) == 10
    np.testing.assert_allclose(sub.features, x[picked])
    assert "10 of 50 rows" in sub.description


def test_scene_labels_rows():
    rows = load_feature_rows("scene-labels:im2gps3k", max_rows=100)
    assert rows.features.shape == (100, SCENE_DIM) and rows.backbone == SCENE_LABELS
    assert np.isfinite(rows.latlon).all()


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="expected a feature store folder"):
        load_feature_rows(str(tmp_path / "nothing.csv"))
    x, coords = _arrays()
    np.savez(tmp_path / "a.npz", features=x)
    with pytest.raises(DataError, match=r"arrays \['coords'\] missing"):
        load_feature_rows(str(tmp_path / "a.npz"))
    coords[3, 0] = 95.0
    np.savez(tmp_path / "b.npz", features=x, coords=coords)
    with pytest.raises(CoordinateError, match="b.npz coords"):
        load_feature_rows(str(tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", features=x[:10], coords=_arrays()[1])
    with pytest.raises(DataError, match="10 feature rows but 50 coordinates"):
        load_feature_rows(str(tmp_path / "c.npz"))
