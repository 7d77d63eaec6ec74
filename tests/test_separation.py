"""Near-duplicate suppression: mass is merged, never dropped; kept candidates are apart."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.errors import DataError
from geoalign.geo.distance import pairwise_haversine_km
from geoalign.geo.separation import suppress_near_duplicates

_point = st.tuples(st.floats(-89.9, 89.9), st.floats(-180, 179.999))
_cands = st.lists(
    st.tuples(_point, st.floats(0.0, 1.0, allow_subnormal=False)), min_size=1, max_size=40
)


def _arrays(cands):
    latlon = np.array([c[0] for c in cands])
    probs = np.array([c[1] for c in cands])
    return latlon, probs


@settings(max_examples=200, deadline=None)
@given(_cands, st.floats(0.0, 3000.0), st.integers(0, 10))
def test_mass_preserved_and_kept_points_apart(cands, min_km, copies):
    latlon, probs = _arrays(cands)
    # near-duplicates: copies of some points jittered by ~2 km
    rng = np.random.default_rng(copies)
    extra = latlon[rng.integers(0, len(latlon), copies)] + rng.normal(0, 0.02, (copies, 2))
    latlon = np.vstack([latlon, np.clip(extra, [-89.9, -180], [89.9, 179.999])])
    probs = np.concatenate([probs, rng.uniform(0, 1, copies)])

    kept, merged = suppress_near_duplicates(latlon, probs, min_km)
    assert merged.sum() == pytest.approx(probs.sum(), rel=1e-12, abs=1e-12)
    assert len(set(kept.tolist())) == len(kept) and len(merged) == len(kept)
    d = pairwise_haversine_km(latlon[kept], latlon[kept])
    np.fill_diagonal(d, np.inf)
    assert (d >= min_km - 1e-9).all()
    # kept in rank order, each with at least its own probability
    assert (np.diff(probs[kept]) <= 0).all() and (merged >= probs[kept] - 1e-15).all()
    # every dropped candidate lies within the separation of a kept one ranked above it
    dropped = np.setdiff1d(np.arange(len(probs)), kept)
    if dropped.size:
        to_kept = pairwise_haversine_km(latlon[dropped], latlon[kept])
        assert (to_kept.min(axis=1) < min_km).all()


def test_merges_into_the_first_kept_candidate():
    paris, paris2, lyon, paris3 = (48.8566, 2.3522), (48.86, 2.36), (45.764, 4.8357), (48.85, 2.34)
    latlon = np.array([paris2, paris, lyon, paris3])
    probs = np.array([0.2, 0.4, 0.3, 0.1])
    kept, merged = suppress_near_duplicates(latlon, probs, 5.0)
    assert kept.tolist() == [1, 2] and merged.tolist() == pytest.approx([0.7, 0.3])
    kept, merged = suppress_near_duplicates(latlon, probs, 0.0)
    assert kept.tolist() == [1, 2, 0, 3] and merged.tolist() == [0.4, 0.3, 0.2, 0.1]
    kept, merged = suppress_near_duplicates(latlon, probs, 20_000.0)
    assert kept.tolist() == [1] and merged.tolist() == pytest.approx([1.0])


@pytest.mark.parametrize(
    ("latlon", "probs", "km", "message"),
    [
        (np.zeros((3, 3)), np.ones(3), 5.0, r"\[k, 2\]"),
        (np.zeros((3, 2)), np.ones(2), 5.0, "2 probabilities for 3"),
        (np.zeros((3, 2)), np.ones(3), -1.0, ">= 0"),
        (np.zeros((3, 2)), np.ones(3), float("nan"), ">= 0"),
        (np.zeros((3, 2)), np.array([1.0, np.nan, 0.0]), 5.0, "finite"),
    ],
)
def test_bad_input_is_a_clear_error(latlon, probs, km, message):
    with pytest.raises(DataError, match=message):
        suppress_near_duplicates(latlon, probs, km)
