import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from geoalign.geo.projection import GEOCLIP_SF, UNIT_SPHERE_SF, equal_earth, equal_earth_inverse

_EQEARTH = Transformer.from_crs("+proj=lonlat +R=1", "+proj=eqearth +R=1", always_xy=True)


def _grid():
    rng = np.random.default_rng(1)
    lat = np.r_[rng.uniform(-90, 90, 2000), [90, -90, 0, 89.999, -89.999]]
    lon = np.r_[rng.uniform(-180, 180, 2000), [180, -180, 179.999, -179.999, 0]]
    return lat, lon


def test_forward_matches_pyproj_unit_sphere():
    lat, lon = _grid()
    x, y = _EQEARTH.transform(lon, lat)
    got = equal_earth(torch.tensor(np.c_[lat, lon]), sf=UNIT_SPHERE_SF).numpy()
    ref = np.c_[x, y]
    scale = np.maximum(np.abs(ref), 1e-12)
    assert np.max(np.abs(got - ref) / np.maximum(scale, 1.0)) < 1e-9
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_geoclip_scaling_maps_dateline_to_unit_x():
    xy = equal_earth(torch.tensor([[0.0, 180.0], [0.0, -180.0], [0.0, 0.0]], dtype=torch.float64))
    np.testing.assert_allclose(xy[:, 0].numpy(), [1.0, -1.0, 0.0], atol=1e-6)
    lat90 = equal_earth(torch.tensor([[90.0, 0.0]], dtype=torch.float64))[0, 1].item()
    x, y = _EQEARTH.transform(0.0, 90.0)
    assert lat90 == pytest.approx(y * GEOCLIP_SF / 180.0, rel=1e-12)


@settings(max_examples=200)
@given(st.floats(-89.9, 89.9), st.floats(-179.9, 179.9))
def test_inverse_round_trip(lat, lon):
    ll = torch.tensor([[lat, lon]], dtype=torch.float64)
    back = equal_earth_inverse(equal_earth(ll))
    np.testing.assert_allclose(back.numpy(), ll.numpy(), atol=1e-9)


def test_inverse_matches_pyproj():
    lat, lon = _grid()
    inv = Transformer.from_crs("+proj=eqearth +R=1", "+proj=lonlat +R=1", always_xy=True)
    x, y = _EQEARTH.transform(lon, lat)
    rlon, rlat = inv.transform(x, y)
    got = equal_earth_inverse(torch.tensor(np.c_[x, y]), sf=UNIT_SPHERE_SF).numpy()
    inner = np.abs(lat) < 89.99  # longitude is undefined at the poles
    np.testing.assert_allclose(got[inner, 0], rlat[inner], atol=1e-8)
    np.testing.assert_allclose(got[inner, 1], rlon[inner], atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    ll = torch.tensor([[48.85, 2.35]], dtype=dtype)
    assert equal_earth(ll).dtype == torch.float32
