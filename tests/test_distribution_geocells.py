"""Geocell candidates (GeoSURGE) spread their mass over their whole cell, not a point: the
spread's pieces are the cell's descendants with area shares, regions and levels follow the
geocell's extent, country shares follow the pieces, and calibration sees the same masses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.geo.distance import haversine_km
from geoalign.geo.s2.ids import cell_centers, cell_levels, latlon_to_cell_ids, parent_ids
from geoalign.inference.distribution import CellGrid, Distribution, _spread, cell_areas_km2


def _cell(lat: float, lon: float, level: int) -> np.ndarray:
    return parent_ids(latlon_to_cell_ids(np.array([lat]), np.array([lon])), level)


@settings(max_examples=30, deadline=None)
@given(
    lat=st.floats(-89.9, 89.9),
    lon=st.floats(-180, 179.999),
    coarse=st.integers(0, 5),
    extra=st.integers(1, 3),
)
def test_spread_pieces_are_the_descendants_with_area_shares(lat, lon, coarse, extra):
    # any place (date line, poles, every cube face), any pair of levels
    cell = _cell(lat, lon, coarse)
    level = min(coarse + extra, 7)
    rows, ids, share = _spread(np.array([7]), cell, level)
    assert len(ids) == 4 ** (level - coarse) == len(np.unique(ids))
    assert (rows == 7).all()
    assert (cell_levels(ids) == level).all()
    assert (parent_ids(ids, coarse) == cell[0]).all()
    assert share.sum() == pytest.approx(1.0)
    assert cell_areas_km2(ids).sum() == pytest.approx(cell_areas_km2(cell)[0], rel=1e-6)


def test_a_geocell_spreads_its_mass_over_its_area():
    # one coarse geocell (level 3, ~1,000 km) holding 90% of the mass, one fine one the rest
    coarse, fine = _cell(48.0, 2.0, 3), _cell(-33.9, 151.2, 9)
    latlon = np.array([[48.0, 2.0], [-33.9, 151.2]])
    grid = CellGrid(latlon, 6, np.concatenate([coarse, fine]))
    points = CellGrid(latlon, 6)  # the same candidates as points
    dist = Distribution(grid, np.array([0.9, 0.1]))
    assert dist.cell_mass.sum() == pytest.approx(1.0)
    assert len(grid.cell_ids) == 4**3 + 1 and len(points.cell_ids) == 2
    # the 95% region: the fine cell (densest) and 0.85 / 0.9 of the geocell, whose density is
    # uniform over it -- not one level-6 cell at its mean location
    region = dist.region(0.95, countries=False)
    area, fine_area = cell_areas_km2(coarse)[0], cell_areas_km2(parent_ids(fine, 6))[0]
    assert 0.85 / 0.9 * area <= region.area_km2 - fine_area <= area * 1.01
    assert Distribution(points, np.array([0.9, 0.1])).region(0.95).area_km2 < 0.05 * area
    # a point in the geocell far from its mean location is inside the region
    inside = grid.cell_ids[parent_ids(grid.cell_ids, 3) == coarse[0]]
    centres = np.column_stack(cell_centers(inside))
    corner = centres[[np.argmax(haversine_km(48.0, 2.0, centres[:, 0], centres[:, 1]))]]
    assert parent_ids(latlon_to_cell_ids(corner[:, 0], corner[:, 1]), 3)[0] == coarse[0]
    assert haversine_km(48.0, 2.0, corner[0, 0], corner[0, 1]) > 500
    assert dist.level_of(corner)[0] <= 0.9 + 1e-9
    assert Distribution(points, np.array([0.9, 0.1])).level_of(corner)[0] == 1.0
    # members and weights add up to each cell's mass
    for c in range(len(grid.cell_ids)):
        idx, w = grid.members(c)
        assert (w * dist.probs[idx]).sum() == pytest.approx(dist.cell_mass[c])


def test_country_shares_follow_the_pieces():
    # a level-2 geocell over western Europe: its mass goes to several countries, not only the
    # country of its mean point
    cell = _cell(47.0, 3.0, 2)
    grid = CellGrid(np.array([[47.0, 3.0]]), 5, cell)
    region = Distribution(grid, np.array([1.0])).region(0.99)
    names = [name for name, _ in region.country_mass]
    assert len(names) >= 4 and "FR" in names
    assert sum(share for _, share in region.country_mass) == pytest.approx(1.0)


def test_cells_finer_than_the_level_change_nothing():
    rng = np.random.default_rng(0)
    latlon = np.column_stack([rng.uniform(-60, 60, 50), rng.uniform(-180, 180, 50)])
    cells = parent_ids(latlon_to_cell_ids(latlon[:, 0], latlon[:, 1]), 10)
    probs = rng.random(50)
    a = Distribution(CellGrid(latlon, 6, cells), probs)
    b = Distribution(CellGrid(latlon, 6), probs)
    assert a.grid.spread is None
    np.testing.assert_array_equal(a.cell_mass, b.cell_mass)
    with pytest.raises(ValueError, match="3 cells for 50 candidates"):
        CellGrid(latlon, 6, cells[:3])
