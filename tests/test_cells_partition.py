"""The partition builder against a per-point port of the GeoEstimation script, the tau rules,
nesting, assignment and the Parquet round trip."""

import functools
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import s2geometry as s2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoalign.errors import CoordinateError, DataError
from geoalign.geo.cells import CellHierarchy, PartitionRules, latlon_to_cell_ids
from geoalign.geo.distance import haversine_km
from geoalign.geo.s2 import ids as s2ids


def reference_partition(lat, lon, tau_min, tau_max, min_level, min_inclusive, max_level=30):
    """Straight port of GeoEstimation's create_cells.py loop, one point at a time, on s2geometry."""
    leaves = _reference_leaves(tuple(lat), tuple(lon))
    cur = [leaf.parent(min_level).id() for leaf in leaves]
    too_few = (lambda n: n < tau_min) if min_inclusive else (lambda n: n <= tau_min)
    h = Counter(cur)
    alive = [i for i in range(len(cur)) if not too_few(h[cur[i]])]
    h = Counter(cur[i] for i in alive)
    level = min_level
    while any(v > tau_max for v in h.values()) and level < max_level:
        level += 1
        for i in alive:
            if h[cur[i]] > tau_max:
                cur[i] = leaves[i].parent(level).id()
        h = Counter(cur[i] for i in alive)
    return {s2.S2CellId(c).ToToken(): n for c, n in h.items() if not too_few(n)}


@functools.lru_cache(maxsize=4)
def _reference_leaves(lat, lon):
    return [s2.S2CellId(s2.S2LatLng.FromDegrees(a, b)) for a, b in zip(lat, lon, strict=True)]


def clustered(seed, n_clusters=6, n=1200, dup_fraction=0.1):
    """Clusters of very different spreads, some exact duplicates (many photos, one coordinate)."""
    rng = np.random.default_rng(seed)
    centre = np.c_[rng.uniform(-80, 80, n_clusters), rng.uniform(-180, 180, n_clusters)]
    spread = 10.0 ** rng.uniform(-5, 1.3, n_clusters)
    k = rng.integers(0, n_clusters, n)
    lat = np.clip(centre[k, 0] + rng.normal(size=n) * spread[k], -90, 90)
    lon = (centre[k, 1] + rng.normal(size=n) * spread[k] + 180) % 360 - 180
    dup = rng.random(n) < dup_fraction
    lat[dup], lon[dup] = centre[k[dup], 0], centre[k[dup], 1]
    return lat, lon


def as_dict(partition):
    return dict(zip(partition.tokens, partition.counts.tolist(), strict=True))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    tau_min=st.integers(1, 30),
    taus=st.lists(st.integers(31, 400), min_size=1, max_size=3, unique=True),
    min_level=st.sampled_from([0, 2, 5]),
    min_inclusive=st.booleans(),
)
def test_builder_equals_reference_script(seed, tau_min, taus, min_level, min_inclusive):
    lat, lon = clustered(seed)
    rules = PartitionRules(tau_min=tau_min, min_level=min_level, min_inclusive=min_inclusive)
    h = CellHierarchy.build(lat, lon, taus, rules)
    assert [p.tau_max for p in h.partitions] == sorted(taus, reverse=True)
    for part in h.partitions:
        want = reference_partition(lat, lon, tau_min, part.tau_max, min_level, min_inclusive)
        assert as_dict(part) == want


def test_tau_rules_and_cell_means():
    lat, lon = clustered(1, n=5000)
    h = CellHierarchy.build(lat, lon, (800, 300, 100), PartitionRules(tau_min=20))
    leaf = latlon_to_cell_ids(lat, lon)
    for part in h.partitions:
        assert (part.counts >= 20).all()
        above = part.counts > part.tau_max
        assert (part.levels[above] == 30).all()  # only unsplittable leaf cells exceed tau_max
        assert part.overlaps().size == 0
        # counts and means are those of the points each cell contains
        idx = part.locate(leaf)
        np.testing.assert_array_equal(np.bincount(idx[idx >= 0], minlength=len(part)), part.counts)
        for k in range(0, len(part), max(1, len(part) // 10)):
            sel = idx == k
            v = np.c_[
                np.cos(np.radians(lat[sel])) * np.cos(np.radians(lon[sel])),
                np.cos(np.radians(lat[sel])) * np.sin(np.radians(lon[sel])),
                np.sin(np.radians(lat[sel])),
            ].mean(0)
            assert part.lat_mean[k] == pytest.approx(
                np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1])))
            )
            # the sample mean lies in the cell's neighbourhood (inside for small cells)
            if part.levels[k] >= 6:
                assert (
                    latlon_to_cell_ids([part.lat_mean[k]], [part.lon_mean[k]], part.levels[k])[0]
                    == part.cell_ids[k]
                )
    assert h.params["n_assigned"] == [int(p.counts.sum()) for p in h.partitions]


def test_exactly_tau_min_and_tau_max():
    # 7 points at one coordinate, 5 at another far away: tau_min 5 keeps both (paper) or only
    # the first (GeoEstimation's "<= tau_min" drop); tau_max 7 keeps a 7-point cell whole.
    lat = np.r_[np.full(7, 10.0), np.full(5, -40.0)]
    lon = np.r_[np.full(7, 20.0), np.full(5, 100.0)]
    paper = CellHierarchy.build(lat, lon, (7,), PartitionRules(tau_min=5)).partitions[0]
    assert sorted(paper.counts.tolist()) == [5, 7]
    assert (paper.levels == 0).all()  # faces hold <= tau_max samples: never split
    strict = CellHierarchy.build(lat, lon, (7,), PartitionRules.geoestimation(5)).partitions[0]
    assert strict.counts.tolist() == [7] and strict.levels.tolist() == [2]
    split = CellHierarchy.build(lat, lon, (6,), PartitionRules(tau_min=5)).partitions[0]
    assert sorted(split.counts.tolist()) == [5, 7] and 30 in split.levels  # 7 > 6: split to a leaf


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    taus=st.lists(st.integers(20, 600), min_size=2, max_size=5, unique=True),
)
def test_partitions_nest(seed, taus):
    lat, lon = clustered(seed, n=3000)
    h = CellHierarchy.build(lat, lon, taus, PartitionRules(tau_min=10))
    for report in h.nesting():
        assert report.nested and report.straddling == 0 and report.outside == 0
    for k in range(1, len(h)):
        parents = h.parents[k]
        assert (parents >= 0).all()
        for j in range(k):
            coarse = h.partitions[j]
            assert s2ids.contains(coarse.cell_ids[parents[:, j]], h.partitions[k].cell_ids).all()
            # a cell kept whole at a coarse level whose count fits the finer tau stays identical
            whole = coarse.counts <= h.partitions[k].tau_max
            assert np.isin(coarse.cell_ids[whole], h.partitions[k].cell_ids).all()
    # assignments are consistent with the parent links wherever the fine level has a cell
    labels = h.assign(lat, lon)
    fine = labels[:, -1] >= 0
    np.testing.assert_array_equal(h.chain(labels[fine, -1]), labels[fine])
    # kept area only shrinks from coarse to fine
    for k in range(1, len(h)):
        assert ((labels[:, k] >= 0) <= (labels[:, k - 1] >= 0)).all()


def test_assign_missing_none_and_nearest():
    lat, lon = clustered(5, n=4000)
    h = CellHierarchy.build(lat, lon, (500, 100), PartitionRules(tau_min=30))
    # two grid points far (> 1500 km) from every sample must fall in dropped regions
    glat, glon = (
        g.ravel() for g in np.meshgrid(np.arange(-80, 81, 10.0), np.arange(-180, 180, 10.0))
    )
    far = (
        np.array([haversine_km(a, b, lat, lon).min() for a, b in zip(glat, glon, strict=True)])
        > 1500
    )
    queries_lat = np.r_[lat[:50], glat[far][:2]]
    queries_lon = np.r_[lon[:50], glon[far][:2]]
    none = h.assign(queries_lat, queries_lon)
    near = h.assign(queries_lat, queries_lon, missing="nearest")
    assert (near >= 0).all()
    kept = none >= 0
    np.testing.assert_array_equal(near[kept], none[kept])
    assert (none[-2:] == -1).all()
    for k in range(len(h)):
        part = h.partitions[k]
        for q in np.flatnonzero(~kept[:, k]):
            # nearest on the sphere: compare with brute-force haversine distances
            dist = haversine_km(queries_lat[q], queries_lon[q], part.lat_mean, part.lon_mean)
            assert near[q, k] == int(np.argmin(dist))
    with pytest.raises(ValueError, match="missing"):
        h.assign(lat[:3], lon[:3], missing="drop")
    with pytest.raises(CoordinateError, match="index 1"):
        h.assign([1.0, 91.0], [0.0, 0.0])


def test_parquet_round_trip_and_checks(tmp_path):
    lat, lon = clustered(9, n=3000)
    h = CellHierarchy.build(lat, lon, (600, 200, 80), PartitionRules(tau_min=15))
    h.save(tmp_path / "cells")
    back = CellHierarchy.load(tmp_path / "cells")
    assert back.params == h.params
    for a, b in zip(h.partitions, back.partitions, strict=True):
        np.testing.assert_array_equal(a.cell_ids, b.cell_ids)
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.lat_mean, b.lat_mean)
        assert a.tau_max == b.tau_max
    for a, b in zip(h.parents, back.parents, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.assign(lat, lon), h.assign(lat, lon))
    frame = pd.read_parquet(tmp_path / "cells" / "partition_2.parquet")
    assert list(frame.columns[:8]) == [
        "class_index",
        "label",
        "token",
        "cell_id",
        "s2_level",
        "count",
        "lat_mean",
        "lon_mean",
    ]
    assert {"parent_0", "parent_1"} <= set(frame.columns)
    assert [s2.S2CellId.FromToken(t).id() for t in frame["token"]] == frame["cell_id"].astype(
        "uint64"
    ).tolist()

    # a corrupted parent link or token is caught and named
    frame.loc[3, "parent_1"] = frame.loc[3, "parent_1"] + 1
    frame.to_parquet(tmp_path / "cells" / "partition_2.parquet", index=False)
    with pytest.raises(DataError, match="partition_2.parquet: parent columns"):
        CellHierarchy.load(tmp_path / "cells")
    frame = h.frame(1)
    frame.loc[4, "token"] = "89c"
    frame.to_parquet(tmp_path / "cells" / "partition_1.parquet", index=False)
    with pytest.raises(DataError, match="row 4: token '89c'"):
        CellHierarchy.load(tmp_path / "cells")
    with pytest.raises(DataError, match="hierarchy.json"):
        CellHierarchy.load(tmp_path)


def test_bad_parameters():
    with pytest.raises(ValueError, match="tau_min"):
        PartitionRules(tau_min=0)
    with pytest.raises(ValueError, match="min_level"):
        PartitionRules(min_level=5, max_level=3)
    with pytest.raises(ValueError, match="distinct"):
        CellHierarchy.build([0.0], [0.0], (100, 100))
    with pytest.raises(ValueError, match=">= tau_min"):
        CellHierarchy.build([0.0], [0.0], (100, 10), PartitionRules(tau_min=50))
