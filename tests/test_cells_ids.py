"""Vectorised S2 ids against the reference library (s2geometry's SWIG bindings)."""

import numpy as np
import pytest
import s2geometry as s2
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.errors import DataError
from geoalign.geo.s2 import ids as s2ids

# Poles, the antimeridian, the prime meridian, cube-face edges (|lon| = 45, 135; lat = +-45 and the
# cube corners at +-35.26 degrees) and points a hair either side of them.
_EDGE_LATS = [-90.0, -45.0, -35.264389682754654, 0.0, 35.264389682754654, 45.0, 90.0]
_EDGE_LONS = [-180.0, -135.0, -90.0, -45.0, 0.0, 45.0, 90.0, 135.0, 180.0]
_EPS = [0.0, 1e-12, -1e-12, 1e-7, -1e-7]
SPECIAL = np.array(
    [
        (a + e, b + f)
        for a in _EDGE_LATS
        for b in _EDGE_LONS
        for e in _EPS
        for f in _EPS
        if abs(a + e) <= 90
    ]
)

lats = st.one_of(
    st.floats(-90, 90, allow_nan=False),
    st.sampled_from(_EDGE_LATS),
    st.builds(
        lambda a, e: float(np.clip(a + e, -90, 90)),
        st.sampled_from(_EDGE_LATS),
        st.sampled_from(_EPS),
    ),
)
lons = st.one_of(
    st.floats(-180, 180, allow_nan=False),
    st.sampled_from(_EDGE_LONS),
    st.builds(lambda a, e: a + e, st.sampled_from(_EDGE_LONS), st.sampled_from(_EPS)),
)
points = st.lists(st.tuples(lats, lons), min_size=1, max_size=50)


def _ref_ids(lat, lon):
    return np.array(
        [
            s2.S2CellId(s2.S2LatLng.FromDegrees(float(a), float(b))).id()
            for a, b in zip(lat, lon, strict=True)
        ],
        dtype=np.uint64,
    )


def test_special_points_match_reference():
    ours = s2ids.latlon_to_cell_ids(SPECIAL[:, 0], SPECIAL[:, 1])
    ref = _ref_ids(SPECIAL[:, 0], SPECIAL[:, 1])
    np.testing.assert_array_equal(ours, ref)
    # every face occurs among the edge points, so all six face branches are exercised
    assert set(s2ids.cell_faces(ours).tolist()) == set(range(6))


def test_random_points_match_reference_at_every_level():
    rng = np.random.default_rng(7)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 20000)))
    lon = rng.uniform(-180, 180, 20000)
    ref = _ref_ids(lat, lon)
    leaf = s2ids.latlon_to_cell_ids(lat, lon, chunk_size=4096)  # several chunks
    np.testing.assert_array_equal(leaf, ref)
    for level in (0, 1, 2, 7, 13, 22, 29, 30):
        want = np.array(
            [s2.S2CellId(int(c)).parent(level).id() for c in ref[:500]], dtype=np.uint64
        )
        np.testing.assert_array_equal(s2ids.parent_ids(leaf[:500], level), want)
        np.testing.assert_array_equal(s2ids.latlon_to_cell_ids(lat[:500], lon[:500], level), want)
        assert (s2ids.cell_levels(want) == level).all()


@settings(max_examples=150, deadline=None)
@given(points, st.integers(0, 30))
def test_ids_parent_token_level_against_s2geometry(pts, level):
    lat, lon = np.array(pts).T
    ours = s2ids.latlon_to_cell_ids(lat, lon)
    np.testing.assert_array_equal(ours, _ref_ids(lat, lon))
    parents = s2ids.parent_ids(ours, level)
    for leaf_id, parent in zip(ours, parents, strict=True):
        ref = s2.S2CellId(int(leaf_id)).parent(level)
        assert int(parent) == ref.id()
        assert s2ids.ids_to_tokens([parent])[0] == ref.ToToken()
        assert ref.level() == s2ids.cell_levels([parent])[0]
        assert int(s2ids.range_min([parent])[0]) == ref.range_min().id()
        assert int(s2ids.range_max([parent])[0]) == ref.range_max().id()
    tokens = s2ids.ids_to_tokens(parents)
    np.testing.assert_array_equal(s2ids.tokens_to_ids(tokens), parents)
    assert [s2.S2CellId.FromToken(t).id() for t in tokens] == [int(p) for p in parents]
    assert s2ids.contains(parents, ours).all()
    assert s2ids.is_valid_id(parents).all()


@settings(max_examples=60, deadline=None)
@given(points, st.integers(0, 30))
def test_centres_and_vertices_against_s2geometry(pts, level):
    lat, lon = np.array(pts).T
    cells = s2ids.parent_ids(s2ids.latlon_to_cell_ids(lat, lon), level)
    clat, clon = s2ids.cell_centers(cells)
    verts = s2ids.cell_vertices(cells)
    for k, cell in enumerate(cells):
        ref = s2.S2CellId(int(cell))
        ll = ref.ToLatLng()
        assert clat[k] == pytest.approx(ll.lat().degrees(), abs=1e-9)
        if abs(clat[k]) < 89.9:  # longitude is arbitrary at the pole
            assert (clon[k] - ll.lng().degrees() + 180) % 360 - 180 == pytest.approx(0, abs=1e-9)
        # the centre is inside its cell, and maps back to it
        assert s2ids.latlon_to_cell_ids([clat[k]], [clon[k]], level)[0] == cell
        cell_ref = s2.S2Cell(ref)
        for v in range(4):
            vll = s2.S2LatLng(cell_ref.GetVertex(v))
            assert verts[k, v, 0] == pytest.approx(vll.lat().degrees(), abs=1e-9)
            if abs(verts[k, v, 0]) < 89.9:
                dlon = (verts[k, v, 1] - vll.lng().degrees() + 180) % 360 - 180
                assert dlon == pytest.approx(0, abs=1e-9)


def test_polygons_are_closed_rings_through_the_corners():
    cells = s2ids.latlon_to_cell_ids([48.85, -33.9, 0.0, 10.0], [2.35, 151.2, 179.99, -179.99], 3)
    rings = s2ids.cell_polygons(cells, points_per_edge=5)
    assert rings.shape == (4, 21, 2)
    np.testing.assert_array_equal(rings[:, 0], rings[:, -1])
    verts = s2ids.cell_vertices(cells)
    np.testing.assert_allclose(rings[:, [0, 5, 10, 15], 0], verts[..., 0], atol=1e-9)
    # longitudes are unwrapped: a cell across the antimeridian has no 360-degree jump inside it
    assert (np.abs(np.diff(rings[..., 1], axis=1)) < 90).all()


def test_face_cells_and_tokens():
    faces = np.array(
        [s2.S2CellId.FromFacePosLevel(f, 0, 0).id() for f in range(6)], dtype=np.uint64
    )
    assert s2ids.ids_to_tokens(faces) == ["1", "3", "5", "7", "9", "b"]
    assert (s2ids.cell_levels(faces) == 0).all()
    assert s2ids.ids_to_tokens([0]) == ["X"]


@pytest.mark.parametrize(
    "token", ["zz", "", "12345678901234567", "8080", "c", "4780000", "477000000000", "4.7E+064"]
)
def test_bad_tokens_raise_data_error_naming_index(token):
    assert s2ids.tokens_to_ids(["47e671"])[0] == s2.S2CellId.FromToken("47e671").id()
    with pytest.raises(DataError, match="index 1"):
        s2ids.tokens_to_ids(["47e671", token])


def test_validity_matches_reference():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, np.iinfo(np.int64).max, 5000, dtype=np.int64).astype(
        np.uint64
    ) * np.uint64(2)
    ids[::7] |= np.uint64(1)
    want = [s2.S2CellId(int(i)).is_valid() for i in ids]
    assert s2ids.is_valid_id(ids).tolist() == want


def test_bad_level_and_shapes():
    with pytest.raises(ValueError, match="level"):
        s2ids.parent_ids([1], 31)
    with pytest.raises(ValueError, match="latitudes"):
        s2ids.latlon_to_cell_ids([1.0, 2.0], [1.0])
