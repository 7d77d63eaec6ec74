import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from geoalign.errors import CoordinateError
from geoalign.geo.coords import as_latlon_array, as_latlon_tensor, validate_latlon, wrap_longitude


def test_wrap_longitude_known_values():
    got = wrap_longitude(np.array([180.0, -180.0, 190.0, -190.0, 360.0, 0.0, 539.0]))
    np.testing.assert_allclose(got, [-180.0, -180.0, -170.0, 170.0, 0.0, 0.0, 179.0])


@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_wrap_longitude_range_and_same_meridian(lon):
    w = wrap_longitude(np.array([lon]))[0]
    assert -180.0 <= w < 180.0
    assert np.isclose(np.cos(np.radians(w)), np.cos(np.radians(lon)), atol=1e-6)
    assert np.isclose(np.sin(np.radians(w)), np.sin(np.radians(lon)), atol=1e-6)


@pytest.mark.parametrize(
    "lat,lon,index,reason",
    [
        ([0, 91, 0], [0, 0, 0], 1, "outside"),
        ([0, 0, np.nan], [0, 0, 0], 2, "latitude is not a finite"),
        ([0, 0], [np.inf, 0], 0, "longitude is not a finite"),
        ([-90.5], [0], 0, "outside"),
    ],
)
def test_validate_names_offending_index(lat, lon, index, reason):
    with pytest.raises(CoordinateError, match=rf"index {index}: .*{reason}"):
        validate_latlon(lat, lon)


def test_validate_counts_other_bad_values():
    with pytest.raises(CoordinateError, match=r"2 more bad values"):
        validate_latlon([100, 100, 100], [0, 0, 0])


def test_validate_accepts_poles_and_wraps():
    lat, lon = validate_latlon([90, -90], [180, -200])
    np.testing.assert_array_equal(lat, [90, -90])
    np.testing.assert_array_equal(lon, [-180, 160])


def test_array_and_tensor_forms():
    arr = as_latlon_array(torch.tensor([[10.0, 200.0]]))
    np.testing.assert_allclose(arr, [[10.0, -160.0]])
    assert as_latlon_array([48.0, 2.0]).shape == (1, 2)
    t = as_latlon_tensor(np.array([[1.0, 2.0]]), dtype=torch.float64)
    assert t.dtype == torch.float64 and t.shape == (1, 2)
    with pytest.raises(CoordinateError, match="shape"):
        as_latlon_array(np.zeros((3, 3)))
    with pytest.raises(CoordinateError, match="2 latitudes but 3 longitudes"):
        validate_latlon([1, 2], [1, 2, 3])


@given(st.floats(-180, 180, allow_nan=False, exclude_max=True))
def test_in_range_longitudes_are_untouched(lon):
    assert wrap_longitude(np.array([lon]))[0] == lon
