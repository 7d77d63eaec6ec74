"""Land points are reproducible and on land; the spatial split keeps test points away from training."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.downstream.sampling import (
    DROPPED,
    TEST,
    TRAIN,
    VAL,
    SplitConfig,
    block_ids,
    sample_land_points,
    spatial_split,
)
from geoalign.downstream.sources import country_polygons
from geoalign.geo.distance import pairwise_haversine_km


def test_land_points_reproducible_and_on_land():
    a = sample_land_points(400, seed=1)
    b = sample_land_points(400, seed=1)
    c = sample_land_points(400, seed=2)
    np.testing.assert_array_equal(a.latlon, b.latlon)
    assert not np.array_equal(a.latlon, c.latlon)
    assert a.latlon.shape == (400, 2)
    codes = country_polygons().codes_at(a.latlon)
    np.testing.assert_array_equal(codes, a.country)
    assert (codes != "").all() and "AQ" not in set(codes)


def test_land_points_are_area_uniform():
    # Russia (~11% of the non-Antarctic land area) vs Japan (~0.3%): sampling follows area.
    pts = sample_land_points(4000, seed=0)
    share = {c: float(np.mean(pts.country == c)) for c in ("RU", "JP")}
    assert 0.08 < share["RU"] < 0.15
    assert share["JP"] < 0.01


def _check_buffer(latlon, split, buffer_km):
    test, val, train = (latlon[split == s] for s in (TEST, VAL, TRAIN))
    if len(test) and len(train):
        assert pairwise_haversine_km(test, train).min() > buffer_km
    if len(test) and len(val):
        assert pairwise_haversine_km(test, val).min() > buffer_km
    if len(val) and len(train):
        assert pairwise_haversine_km(val, train).min() > buffer_km


def test_spatial_split_on_land_points():
    pts = sample_land_points(3000, seed=0)
    cfg = SplitConfig(block_km=500.0, buffer_km=100.0, seed=0)
    split = spatial_split(pts.latlon, cfg)
    _check_buffer(pts.latlon, split, cfg.buffer_km)
    counts = {s: int((split == s).sum()) for s in (TRAIN, VAL, TEST, DROPPED)}
    kept = counts[TRAIN] + counts[VAL] + counts[TEST]
    assert counts[TRAIN] / kept > 0.45 and counts[TEST] / kept > 0.12 and counts[VAL] / kept > 0.12
    np.testing.assert_array_equal(split, spatial_split(pts.latlon, cfg))  # deterministic


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    block_km=st.sampled_from([200.0, 500.0, 1500.0]),
    buffer_km=st.sampled_from([0.0, 50.0, 300.0]),
)
def test_spatial_split_buffer_holds_anywhere(seed, block_km, buffer_km):
    rng = np.random.default_rng(seed)
    n = 400
    latlon = np.stack(
        [np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], axis=1
    )
    split = spatial_split(latlon, SplitConfig(block_km=block_km, buffer_km=buffer_km, seed=seed))
    if buffer_km > 0:
        _check_buffer(latlon, split, buffer_km)
    # Blocks are never split between train, val and test.
    ids = block_ids(latlon, block_km)
    for b in np.unique(ids):
        labels = set(split[(ids == b) & (split != DROPPED)].tolist())
        assert len(labels) <= 1


def test_bad_fractions_rejected():
    with pytest.raises(ValueError, match="fractions"):
        spatial_split(np.zeros((3, 2)), SplitConfig(fractions=(0.5, 0.5, 0.5)))
