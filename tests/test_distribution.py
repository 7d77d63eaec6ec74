"""Distributions on the sphere: estimates against brute force, regions against direct sums,
levels and densities consistent with the regions, GeoJSON that maps can read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.errors import DataError
from geoalign.geo.distance import EARTH_RADIUS_KM, haversine_km
from geoalign.inference.distribution import (
    EARTH_AREA_KM2,
    UNIFORM_WEIGHT,
    CellGrid,
    Distribution,
    cell_areas_km2,
    solve_together,
    unit,
)
from geoalign.inference.median import angles, geometric_median_batch, geometric_median_lbfgs


def _world(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    pts = np.concatenate(
        [rng.normal([48, 2], [2, 3], (n // 2, 2)), rng.normal([-30, 140], [4, 8], (n // 2, 2))]
    )
    pts[:, 0] = pts[:, 0].clip(-89, 89)
    return pts, rng.random(len(pts)) ** 3


def _brute_median(pts: np.ndarray, w: np.ndarray, centre: np.ndarray, span: float = 6.0):
    """Minimise the expected distance over a fine grid around `centre`."""
    lat = np.linspace(centre[0] - span, centre[0] + span, 241).clip(-90, 90)
    lon = np.linspace(centre[1] - span, centre[1] + span, 241)
    grid = np.stack(np.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2)
    cost = np.arccos(np.clip(unit(grid) @ unit(pts).T, -1, 1)) @ (w / w.sum())  # fine at 0.05 deg
    return grid[cost.argmin()], cost.min() * EARTH_RADIUS_KM


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_median_minimises_expected_distance(seed):
    pts, w = _world(seed)
    dist = Distribution(CellGrid(pts), w)
    est = dist.estimate("median")
    _, best = _brute_median(pts, w, est)
    got = dist.expected_distance_km(est)
    assert got <= best + 0.01  # the grid's step is 0.05 degrees: ours is at least as good
    for other in ("top1", "mean"):
        assert got <= dist.expected_distance_km(dist.estimate(other)) + 1e-6


def test_mean_and_top1():
    pts = np.array([[0.0, 10.0], [0.0, 20.0], [10.0, 15.0]])
    dist = Distribution(CellGrid(pts), np.array([0.2, 0.2, 0.6]))
    assert dist.estimate("top1").tolist() == [10.0, 15.0]
    mean = dist.estimate("mean")
    xyz = (np.array([0.2, 0.2, 0.6])[:, None] * unit(pts)).sum(0)
    assert (
        haversine_km(
            *mean,
            *np.degrees([np.arcsin(xyz[2] / np.linalg.norm(xyz)), np.arctan2(xyz[1], xyz[0])]),
        )
        < 1e-6
    )
    with pytest.raises(DataError, match="unknown estimate"):
        dist.estimate("centroid")


def test_regions_mass_area_and_levels_agree_with_direct_sums():
    pts, w = _world()
    grid = CellGrid(pts, level=5)
    dist = Distribution(grid, w)
    probs = w / w.sum()
    prev = 0.0
    for p in (0.1, 0.5, 0.9, 0.99):
        r = dist.region(p)
        inside = np.isin(grid.cell_ids[grid.cell_of], r.cell_ids)
        assert r.mass == pytest.approx(probs[inside].sum()) and r.mass >= p - 1e-9
        assert r.area_km2 == pytest.approx(cell_areas_km2(r.cell_ids).sum())
        assert r.area_km2 >= prev
        prev = r.area_km2
        # a candidate is in the p-region exactly when its level is <= the region's mass
        levels = dist.level_of(pts)
        assert np.array_equal(levels <= r.mass + 1e-12, inside)
        # the region holds the densest cells: none outside is denser than any inside
        dens = dist.cell_mass / grid.area_km2
        chosen = np.isin(grid.cell_ids, r.cell_ids)
        assert dens[~chosen].max(initial=0) <= dens[chosen].min() + 1e-15
    assert dist.level_of(np.array([[0.0, -60.0]]))[0] == 1.0  # no candidate anywhere near
    region = dist.region(0.9)
    shares = dict(region.country_mass)
    assert sum(shares.values()) == pytest.approx(1.0)
    inside = np.isin(grid.cell_ids[grid.cell_of], region.cell_ids)  # direct sums by country
    names = grid.country_names[grid.country_codes()]
    for code, share in shares.items():
        direct = dist.probs[inside & (names == code)].sum() / dist.probs[inside].sum()
        assert share == pytest.approx(direct)
    assert set(shares) <= {
        "FR",
        "AU",
        "sea",
        "GB",
        "BE",
        "ES",
        "CH",
        "IT",
        "DE",
        "LU",
        "NL",
        "AD",
        "MC",
        "JE",
        "GG",
        "PG",
        "ID",
        "TL",
        "NZ",
    }
    assert shares.get("FR", 0) > 0.1 and shares.get("AU", 0) > 0.1  # the two clusters' countries


def test_cell_areas_sum_to_the_sphere():
    from geoalign.geo.s2.ids import latlon_to_cell_ids, parent_ids

    faces = np.unique(
        parent_ids(
            latlon_to_cell_ids(
                np.array([0, 0, 0, 0, 90, -90.0]), np.array([0, 90, 180, -90, 0, 0.0])
            ),
            0,
        )
    )
    assert len(faces) == 6
    assert cell_areas_km2(faces).sum() == pytest.approx(EARTH_AREA_KM2, rel=1e-9)


def test_density_is_the_smoothed_mass_with_a_uniform_floor():
    pts, w = _world()
    grid = CellGrid(pts)
    dist = Distribution(grid, w)
    lat, lon = 48.0, 2.0
    cell = grid.cell_index(np.array([[lat, lon]]))[0]
    want = dist.cell_mass[cell] / grid.area_km2[cell]
    got = dist.density(np.array([[lat, lon]]))[0]
    assert got == pytest.approx((1 - UNIFORM_WEIGHT) * want + UNIFORM_WEIGHT / EARTH_AREA_KM2)
    # integrating the box part over its cells gives back all the mass
    assert (dist.cell_mass / grid.area_km2 * grid.area_km2).sum() == pytest.approx(1.0)
    assert dist.density(np.array([[0.0, -60.0]]))[0] == pytest.approx(
        UNIFORM_WEIGHT / EARTH_AREA_KM2
    )


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_p_outside_the_open_interval_is_an_error(p):
    pts, w = _world()
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        Distribution(CellGrid(pts), w).region(p)


def test_zero_or_nan_mass_is_an_error():
    pts = np.zeros((3, 2))
    with pytest.raises(DataError, match="no finite positive mass"):
        Distribution(CellGrid(pts), np.zeros(3))
    with pytest.raises(DataError, match="no finite positive mass"):
        Distribution(CellGrid(pts), np.array([np.nan, 1, 1]))


def test_one_point_and_antimeridian_and_pole_regions_make_valid_geojson():
    import shapely
    from shapely.geometry import shape

    one = Distribution(CellGrid(np.array([[10.0, 20.0]])), np.array([1.0]))
    assert one.estimate("median").tolist() == pytest.approx([10.0, 20.0])
    assert len(one.region(0.9).cell_ids) == 1
    pts = np.array([[0.0, 179.9], [0.0, -179.9], [89.9, 0.0], [-89.9, 45.0]])
    dist = Distribution(CellGrid(pts, level=3), np.ones(4))
    gj = dist.to_geojson(regions=(0.99,))
    text = json.dumps(gj)
    assert len(text) < 100_000
    for feature in gj["features"]:
        geom = shape(feature["geometry"])
        assert geom.is_valid
        if feature["properties"]["kind"] == "region":
            minx, miny, maxx, maxy = geom.bounds
            assert -180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90
            # the outline's spherical area is about the cells' area (projection aside)
            assert shapely.area(geom) > 0


def test_geojson_heat_cells_are_the_densest_cells_with_their_density():
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(-60, 60, 400), rng.uniform(-180, 180, 400)])
    dist = Distribution(CellGrid(pts, level=4), rng.gamma(0.3, size=400))
    assert [f["properties"]["kind"] for f in dist.to_geojson()["features"]].count("heat") == 0
    gj = dist.to_geojson(heatmap_cells=50)
    heat = [
        f["properties"]["density_km2"] for f in gj["features"] if f["properties"]["kind"] == "heat"
    ]
    direct = np.sort(dist.cell_mass / dist.grid.area_km2)[::-1]
    assert len(heat) == 50
    assert heat == pytest.approx(direct[:50].tolist(), rel=1e-3)
    assert len(json.dumps(gj)) < 100_000


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-80, 80), st.floats(-179.9, 179.9), st.floats(0.01, 1.0)),
        min_size=1,
        max_size=30,
    )
)
def test_median_is_never_worse_than_any_support_point(rows):
    arr = np.array(rows, dtype=np.float64)
    dist = Distribution(CellGrid(arr[:, :2]), arr[:, 2])
    got = dist.expected_distance_km(dist.estimate("median"))
    best_point = min(dist.expected_distance_km(p) for p in arr[:, :2])
    assert got <= best_point + 1e-3  # 1 m: the solver stops at a gradient of 1e-7


def _random_problem(rng: np.random.Generator, n: int):
    """Support in 1-4 clusters of random spread and weights from flat to peaked."""
    k = int(rng.integers(1, 5))
    centres = np.c_[rng.uniform(-70, 70, k), rng.uniform(-180, 180, k)]
    pts = centres[rng.integers(0, k, n)] + rng.normal(0, rng.choice([0.5, 5.0, 20.0]), (n, 2))
    pts[:, 0] = pts[:, 0].clip(-89, 89)
    w = rng.random(n) ** rng.choice([1, 3, 8])
    return unit(pts), w / w.sum()


def test_fast_median_equals_the_reference_solver():
    """The batched Newton solver against the previous one (Weiszfeld + scipy L-BFGS) on random
    distributions, solved together in one batch: its expected distance is never more than 1 m
    above the reference's, and where both reach the same minimum (within 1 m) their points are
    within 0.5 km (the objective is flat there: 0.1 km apart is typical)."""
    rng = np.random.default_rng(7)
    n = 600
    problems = [_random_problem(rng, int(rng.choice([3, 5, 40, n]))) for _ in range(80)]
    xyz = np.zeros((len(problems), n, 3))
    xyz[..., 2] = 1.0
    w = np.zeros((len(problems), n))
    for i, (x, wi) in enumerate(problems):
        xyz[i, : len(x)], w[i, : len(x)] = x, wi
    fast = geometric_median_batch(xyz, w)
    for (x, wi), got in zip(problems, fast, strict=True):
        ref = geometric_median_lbfgs(x, wi)
        cost_fast = (wi * angles(x, got)).sum() * EARTH_RADIUS_KM
        cost_ref = (wi * angles(x, ref)).sum() * EARTH_RADIUS_KM
        assert cost_fast <= cost_ref + 1e-3
        if cost_fast > cost_ref - 1e-3:  # the same minimum (not one the reference stopped short of)
            assert angles(ref[None], got)[0] * EARTH_RADIUS_KM < 0.5


def test_medians_solved_together_equal_one_at_a_time():
    rng = np.random.default_rng(3)
    pts = np.c_[rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)]
    grid = CellGrid(pts)
    rows = [rng.random(300) ** 6 for _ in range(5)]
    together = solve_together([Distribution(grid, r) for r in rows])
    for r, d in zip(rows, together, strict=True):
        alone = Distribution(grid, r).estimate("median")
        assert haversine_km(*d.estimate("median"), *alone) < 1e-3  # 1 m: the solver tolerance
    assert all(d._median is not None for d in together)  # the first call solved them all


def test_medians_on_threads_equal_one_thread(monkeypatch):
    """A batch larger than one chunk is solved on torch's threads; the answers are the same."""
    import geoalign.inference.distribution as distribution

    rng = np.random.default_rng(5)
    pts = np.c_[rng.uniform(-60, 60, 5000), rng.uniform(-180, 180, 5000)]
    grid = CellGrid(pts)
    rows = [rng.random(5000) ** 8 for _ in range(2 * distribution.MEDIAN_CHUNK + 3)]
    threads = []
    real = distribution._solve_chunk
    monkeypatch.setattr(distribution, "_threads", lambda: 2)
    monkeypatch.setattr(
        distribution, "_solve_chunk", lambda c: (threads.append(len(c)), real(c))[1]
    )
    many = [d.estimate("median") for d in solve_together([Distribution(grid, r) for r in rows])]
    assert sorted(threads) == [3, distribution.MEDIAN_CHUNK, distribution.MEDIAN_CHUNK]
    monkeypatch.setattr(distribution, "_threads", lambda: 1)
    one = [d.estimate("median") for d in solve_together([Distribution(grid, r) for r in rows])]
    assert np.array_equal(np.array(many), np.array(one))


def test_the_median_over_a_large_gallery_counts_the_tail(monkeypatch):
    """Beyond MEDIAN_SUPPORT candidates the median still sees all the mass (the tail merged per
    coarse cell): on diffuse distributions its expected distance stays within 1 km of the
    median of every candidate, where dropping the tail costs far more."""
    import geoalign.inference.distribution as distribution
    from geoalign.inference.distribution import median_problem, to_latlon

    monkeypatch.setattr(distribution, "MEDIAN_SUPPORT", 256)
    rng = np.random.default_rng(11)
    pts = np.c_[rng.uniform(-60, 70, 4000), rng.uniform(-180, 180, 4000)]
    grid = CellGrid(pts)
    worst_ours, worst_dropped = 0.0, 0.0
    for _ in range(6):
        d = Distribution(grid, rng.random(4000) ** 2)
        whole = d.expected_distance_km(
            to_latlon(geometric_median_batch(grid.xyz[None], d.probs[None])[0])
        )
        xyz, w = median_problem(grid, d.probs[None])
        assert xyz.shape[1] > 256 and w.sum() == pytest.approx(1.0)  # all the mass
        worst_ours = max(worst_ours, d.expected_distance_km(d.estimate("median")) - whole)
        top = np.argsort(-d.probs)[:256]
        dropped = to_latlon(geometric_median_batch(grid.xyz[top][None], d.probs[top][None])[0])
        worst_dropped = max(worst_dropped, d.expected_distance_km(dropped) - whole)
    assert worst_ours < 1.0
    assert worst_dropped > 20 * max(worst_ours, 0.05)
