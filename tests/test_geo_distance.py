import numpy as np
import pytest
import torch
from geographiclib.geodesic import Geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.geo.distance import (
    EARTH_RADIUS_KM,
    haversine_km,
    haversine_km_torch,
    pairwise_haversine_km,
)
from geoalign.geo.metrics import accuracy_at_km, geoscore, summarize_errors

lat_st = st.floats(-90, 90, allow_nan=False)
lon_st = st.floats(-180, 180, allow_nan=False)


def _sphere_reference(lat1, lon1, lat2, lon2):
    """Great-circle distance by the vector formula (independent of the haversine form)."""

    def xyz(lat, lon):
        p, lam = np.radians(lat), np.radians(lon)
        return np.array([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)])

    a, b = xyz(lat1, lon1), xyz(lat2, lon2)
    return EARTH_RADIUS_KM * np.arctan2(np.linalg.norm(np.cross(a, b)), np.dot(a, b))


@settings(max_examples=300)
@given(lat_st, lon_st, lat_st, lon_st)
def test_haversine_is_the_sphere_formula_and_close_to_ellipsoid(lat1, lon1, lat2, lon2):
    d = float(haversine_km(lat1, lon1, lat2, lon2))
    assert d == pytest.approx(_sphere_reference(lat1, lon1, lat2, lon2), rel=1e-9, abs=1e-6)
    ell = Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)["s12"] / 1000.0
    # A mean-radius sphere departs from WGS84 by at most ~0.56% (short north-south arcs at the
    # equator: 111.195 vs 110.574 km per degree); plus a metre for coincident points.
    assert abs(d - ell) <= 0.0057 * ell + 1e-3


def test_within_half_percent_of_ellipsoid_for_typical_pairs():
    rng = np.random.default_rng(0)
    n = 3000
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, (n, 2))))
    lon = rng.uniform(-180, 180, (n, 2))
    d = haversine_km(lat[:, 0], lon[:, 0], lat[:, 1], lon[:, 1])
    ell = np.array(
        [
            Geodesic.WGS84.Inverse(a, b, c, e)["s12"] / 1000
            for a, b, c, e in zip(lat[:, 0], lon[:, 0], lat[:, 1], lon[:, 1], strict=True)
        ]
    )
    rel = np.abs(d - ell) / ell
    assert np.mean(rel <= 0.005) >= 0.99 and rel.max() < 0.0057


@pytest.mark.parametrize(
    "a,b",
    [
        ((0, 0), (0, 180)),  # antipodes on the equator
        ((90, 0), (-90, 0)),  # pole to pole
        ((10, 179.9), (10, -179.9)),  # across the date line
        ((89.99, 0), (89.99, 180)),  # over the pole
        ((51.5, -0.12), (48.85, 2.35)),  # London–Paris ~ 344 km
    ],
)
def test_special_pairs_vs_geographiclib(a, b):
    d = float(haversine_km(a[0], a[1], b[0], b[1]))
    ell = Geodesic.WGS84.Inverse(a[0], a[1], b[0], b[1])["s12"] / 1000.0
    assert abs(d - ell) <= 0.0057 * ell + 1e-3
    assert d == pytest.approx(_sphere_reference(a[0], a[1], b[0], b[1]), rel=1e-9, abs=1e-6)


def test_antipodes_are_half_circumference():
    assert float(haversine_km(0, 0, 0, 180)) == pytest.approx(np.pi * EARTH_RADIUS_KM, rel=1e-12)


def test_torch_matches_numpy_batched_and_pairwise():
    rng = np.random.default_rng(0)
    a = np.c_[rng.uniform(-90, 90, 50), rng.uniform(-180, 180, 50)]
    b = np.c_[rng.uniform(-90, 90, 40), rng.uniform(-180, 180, 40)]
    ref = pairwise_haversine_km(a, b)
    assert ref.shape == (50, 40)
    np.testing.assert_allclose(ref[3, 7], haversine_km(a[3, 0], a[3, 1], b[7, 0], b[7, 1]))
    got = pairwise_haversine_km(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-6)
    got32 = haversine_km_torch(torch.tensor(a[:40], dtype=torch.bfloat16), torch.tensor(b))
    assert got32.dtype == torch.float64  # promoted, never computed in bf16
    diag = haversine_km(a[:40, 0], a[:40, 1], b[:, 0], b[:, 1])
    np.testing.assert_allclose(got32.numpy(), diag, rtol=0.02, atol=5.0)  # bf16 input rounding


def test_accuracy_and_geoscore():
    d = np.array([0.5, 10, 100, 500, 1000, 3000])
    acc = accuracy_at_km(d)
    assert acc == {1: 1 / 6, 25: 2 / 6, 200: 3 / 6, 750: 4 / 6, 2500: 5 / 6}
    assert accuracy_at_km([25.0])[25] == 1.0  # inclusive threshold
    assert geoscore(0.0) == 5000.0
    assert geoscore(1492.7) == pytest.approx(5000 / np.e)
    s = summarize_errors(d)
    assert s["acc@1km"] == pytest.approx(100 / 6)
    assert s["median_km"] == 300.0 and s["n"] == 6
    with pytest.raises(ValueError):
        accuracy_at_km([])
