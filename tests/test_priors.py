"""Geographic priors: known answers, brute-force references, date-line boxes, parsing, errors."""

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.errors import CoordinateError, GeoalignError
from geoalign.geo.distance import EARTH_RADIUS_KM
from geoalign.geo.priors import (
    AllOf,
    AnyOf,
    BBox,
    Country,
    LandOnly,
    Radius,
    Region,
    parse_prior,
)
from geoalign.geo.regions import load_countries

PARIS = (48.8566, 2.3522)
TOKYO = (35.68, 139.69)
MID_ATLANTIC = (45.0, -30.0)
BAY_OF_BISCAY = (45.5, -5.0)
ALASKA = [
    (64.84, -147.72),
    (61.22, -149.90),
    (52.90, 172.90),
]  # Fairbanks, Anchorage, Attu (E of 180)


def _random_points(n, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))  # uniform on the sphere
    lon = rng.uniform(-180, 180, n)
    return np.stack([lat, lon], axis=1)


def _sphere_km(lat1, lon1, lat2, lon2):
    """Great-circle distance by the atan2 vector formula (independent of haversine)."""

    def xyz(lat, lon):
        p, lam = np.radians(lat), np.radians(lon)
        return np.stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)], axis=-1)

    a, b = xyz(lat1, lon1), xyz(lat2, lon2)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return EARTH_RADIUS_KM * np.arctan2(cross, np.sum(a * b, axis=-1))


# ------------------------------------------------------------------ countries
def test_country_known_answers():
    fr = Country("FR")
    assert fr.mask([PARIS, MID_ATLANTIC, BAY_OF_BISCAY, TOKYO]).tolist() == [
        True,
        False,
        False,
        False,
    ]
    assert Country("JP").mask([TOKYO, PARIS]).tolist() == [True, False]
    assert Country("US").mask(ALASKA).all()
    assert not Country("RU").mask(ALASKA).any()


def test_country_aliases_agree():
    pts = np.array([PARIS, TOKYO, MID_ATLANTIC, (43.3, 5.37), (-21.1, 55.5)])
    ref = Country("FR").mask(pts)
    for alias in ("FRA", "France", "france", "Frankreich", "French Republic"):
        assert (Country(alias).mask(pts) == ref).all(), alias
    assert (Country("Deutschland").mask(pts) == Country("DE").mask(pts)).all()


def test_unknown_country_lists_close_matches():
    with pytest.raises(GeoalignError, match=r"FR \(France\)"):
        Country("Frnace")
    with pytest.raises(GeoalignError, match="unknown country"):
        Country("Atlantis-on-Sea")


def test_country_mask_matches_polygon_containment_without_coast():
    """With no coastal tolerance the mask is exact point-in-polygon on the Natural Earth shapes."""
    atlas = load_countries()
    pts = np.vstack(
        [_random_points(3000, seed=1), _random_points(2000, seed=2) * [0.3, 0.2] + [47, 5]]
    )
    for code in ("FR", "US", "RU", "FJ", "ZA", "LS", "NZ"):
        union = shapely.union_all(atlas.geometries[atlas.resolve(code)])
        expected = shapely.contains_xy(union, pts[:, 1], pts[:, 0])
        got = Country(code, coast_km=0).mask(pts)
        assert (got == expected).all(), code


def test_country_subset_path_matches_full_assignment():
    """Country.mask pre-selects points near the country; it must agree with assigning every point."""
    atlas = load_countries()
    pts = _random_points(20000, seed=3)
    pts = np.vstack([pts, pts[:4000] * [0.05, 0.05] + [43.5, 5]])  # plus a dense Provence coast
    full = atlas.assign(pts)
    for code in ("FR", "US", "CA", "JP", "FJ", "KI"):
        expected = np.isin(full, atlas.resolve(code))
        assert (Country(code).mask(pts) == expected).all(), code


def test_coast_tolerance_takes_offshore_points():
    """A point ~2 km off the Breton coast is outside the polygon but within the 5 km tolerance."""
    atlas = load_countries()
    fr = shapely.union_all(atlas.geometries[atlas.resolve("FR")])
    offshore = (48.383, -4.80)  # west of Brest, in the Iroise sea
    assert not shapely.contains_xy(fr, offshore[1], offshore[0])
    p_on, p_off = shapely.shortest_line(shapely.Point(offshore[1], offshore[0]), fr).coords
    km = _sphere_km(p_on[1], p_on[0], p_off[1], p_off[0])
    assert 0.5 < km < 4.0
    assert Country("FR", coast_km=5).mask([offshore])[0]
    assert not Country("FR", coast_km=0).mask([offshore])[0]
    assert LandOnly(coast_km=5).mask([offshore])[0]
    assert not LandOnly(coast_km=0).mask([offshore])[0]


def test_land_only():
    pts = np.array([PARIS, TOKYO, MID_ATLANTIC, (0.0, -140.0), (-75.0, 0.0)])  # last: Antarctica
    assert LandOnly().mask(pts).tolist() == [True, True, False, False, True]
    rnd = _random_points(4000, seed=4)
    atlas = load_countries()
    inside = [shapely.contains_xy(g, rnd[:, 1], rnd[:, 0]) for g in atlas.geometries]
    assert (LandOnly(coast_km=0).mask(rnd) == np.any(inside, axis=0)).all()
    # about 29% of the Earth's surface is land
    assert 0.25 < LandOnly(coast_km=0).mask(rnd).mean() < 0.33


# ------------------------------------------------------------------ regions
def test_region_known_answers():
    la, sf, vegas, reno, fresno = (
        (34.05, -118.24),
        (37.77, -122.42),
        (36.17, -115.14),
        (39.53, -119.81),
        (36.74, -119.79),
    )
    ca = Region("US-CA")
    assert ca.mask([la, sf, fresno, vegas, reno, TOKYO]).tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert (Region("US/California").mask([la, vegas]) == ca.mask([la, vegas])).all()
    assert Region("FR-IDF").mask([PARIS, (45.76, 4.83)]).tolist() == [True, False]
    assert Region("Bavaria").mask([(48.14, 11.58), (52.52, 13.40)]).tolist() == [True, False]


def test_region_errors_name_the_choices():
    with pytest.raises(GeoalignError, match="Bavaria"):  # ISO name "Bayern" differs from GeoNames
        Region("DE-BY")
    with pytest.raises(GeoalignError, match="unknown region"):
        Region("Middle-earth")


# ------------------------------------------------------------------ radius and boxes
@settings(max_examples=60, deadline=None)
@given(
    lat=st.floats(-89, 89),
    lon=st.floats(-180, 179.999),
    km=st.floats(1, 5000),
    seed=st.integers(0, 2**16),
)
def test_radius_matches_brute_force(lat, lon, km, seed):
    pts = _random_points(500, seed)
    # include points near the centre so that small radii are exercised
    rng = np.random.default_rng(seed)
    near = np.stack([np.clip(lat + rng.normal(0, 3, 200), -90, 90), lon + rng.normal(0, 3, 200)], 1)
    pts = np.vstack([pts, near])
    pts[:, 1] = (pts[:, 1] + 180) % 360 - 180
    dist = _sphere_km(pts[:, 0], pts[:, 1], lat, lon)
    clear = np.abs(dist - km) > 1e-6  # skip points on the circle itself
    got = Radius(lat, lon, km).mask(pts)
    assert (got[clear] == (dist[clear] <= km)).all()


def _bbox_reference(pts, min_lat, min_lon, max_lat, max_lon):
    width = max_lon - min_lon if min_lon <= max_lon else max_lon - min_lon + 360
    east_of_min = np.mod(pts[:, 1] - min_lon, 360.0)
    return (pts[:, 0] >= min_lat) & (pts[:, 0] <= max_lat) & (east_of_min <= width)


coord = st.integers(-180_000, 180_000).map(lambda v: v / 1000)


@settings(max_examples=200, deadline=None)
@given(
    lat_a=st.integers(-90_000, 90_000).map(lambda v: v / 1000),
    lat_b=st.integers(-90_000, 90_000).map(lambda v: v / 1000),
    min_lon=coord,
    max_lon=coord,
    seed=st.integers(0, 2**16),
)
def test_bbox_matches_reference_including_date_line(lat_a, lat_b, min_lon, max_lon, seed):
    min_lat, max_lat = sorted((lat_a, lat_b))
    rng = np.random.default_rng(seed)
    pts = np.stack(
        [rng.integers(-90_000, 90_001, 800) / 1000, rng.integers(-180_000, 180_000, 800) / 1000], 1
    )
    edges = np.array(
        [[min_lat, min_lon], [max_lat, max_lon], [min_lat, -180.0], [max_lat, 179.999]]
    )
    pts = np.vstack([pts, edges])
    box = BBox(min_lat, min_lon, max_lat, max_lon)
    assert (box.mask(pts) == _bbox_reference(pts, min_lat, min_lon, max_lat, max_lon)).all()


def test_bbox_date_line_known_answers():
    fiji_box = BBox(-25, 170, -10, -170)  # crosses 180
    pts = [
        (-17.7, 178.0),
        (-17.7, -179.5),
        (-17.7, 180.0),
        (-17.7, 0.0),
        (-17.7, 169.0),
        (0.0, 178.0),
    ]
    assert fiji_box.mask(pts).tolist() == [True, True, True, False, False, False]
    assert BBox(-90, -180, 90, 180).mask(_random_points(100)).all()
    assert BBox(0, 170, 10, 180).mask([(5, 180.0), (5, -180.0)]).all()  # one meridian


def test_bbox_and_radius_validation():
    with pytest.raises(CoordinateError, match="min_lat <= max_lat"):
        BBox(10, 0, 5, 1)
    with pytest.raises(CoordinateError, match="longitudes"):
        BBox(0, -190, 5, 1)
    with pytest.raises(CoordinateError, match="positive"):
        Radius(0, 0, -5)
    with pytest.raises(CoordinateError, match="latitude"):
        Radius(95, 0, 5)


# ------------------------------------------------------------------ combinators, parsing, errors
def test_combinators_follow_boolean_algebra():
    pts = _random_points(3000, seed=5)
    a, b = BBox(-10, -30, 60, 60), Radius(40, 10, 2500)
    ma, mb = a.mask(pts), b.mask(pts)
    assert ((a & b).mask(pts) == (ma & mb)).all()
    assert ((a | b).mask(pts) == (ma | mb)).all()
    assert ((~a).mask(pts) == ~ma).all()
    assert ((a & ~b) | (~a & b)).mask(pts).tolist() == (ma ^ mb).tolist()
    assert isinstance(a & b & LandOnly(), AllOf) and len((a & b & LandOnly()).priors) == 3


def test_mask_accepts_torch_and_lists():
    import torch

    pts = [PARIS, TOKYO]
    ref = Country("FR").mask(np.array(pts))
    assert (Country("FR").mask(torch.tensor(pts, dtype=torch.float32)) == ref).all()
    assert (Country("FR").mask(pts) == ref).all()


def test_empty_result_is_a_clear_error():
    with pytest.raises(GeoalignError, match="leaves none of the 2 gallery points"):
        Radius(0.0, -30.0, 10).indices([PARIS, TOKYO])
    assert Radius(*PARIS, 10).indices([TOKYO, PARIS]).tolist() == [1]


def test_parse_prior():
    assert parse_prior() is None
    pts = np.array([PARIS, (40.42, -3.70), TOKYO, MID_ATLANTIC, (34.05, -118.24)])
    within = parse_prior(within="FR,ES")
    assert isinstance(within, AnyOf)
    assert within.mask(pts).tolist() == [True, True, False, False, False]
    assert parse_prior(within=["US-CA", "JP"]).mask(pts).tolist() == [
        False,
        False,
        True,
        False,
        True,
    ]
    assert parse_prior(within="California").mask(pts).tolist() == [False, False, False, False, True]
    near = parse_prior(near="48.8,2.3", radius_km=200)
    assert near.mask(pts).tolist() == [True, False, False, False, False]
    combo = parse_prior(within="FR,ES", bbox="41,-10,52,10", land_only=True)
    assert combo.mask(pts).tolist() == [True, False, False, False, False]
    assert parse_prior(bbox=(-25, 170, -10, -170)).mask([(-17.7, 179.9)]).all()
    with pytest.raises(GeoalignError, match="go together"):
        parse_prior(near="48.8,2.3")
    with pytest.raises(GeoalignError, match="4 comma-separated numbers"):
        parse_prior(bbox="1,2,3")
    with pytest.raises(GeoalignError, match="2 comma-separated numbers"):
        parse_prior(near="north", radius_km=5)
    with pytest.raises(GeoalignError, match=r"FR \(France\)"):
        parse_prior(within="Frnace")


def test_gallery_country_mask(geoclip_gallery):
    """The 100K GeoCLIP gallery: country masks agree with a full assignment; counts are plausible."""
    atlas = load_countries()
    full = atlas.assign(geoclip_gallery)
    for code, low, high in (("FR", 3500, 6000), ("US", 25000, 36000), ("JP", 1500, 4000)):
        mask = Country(code).mask(geoclip_gallery)
        assert (mask == np.isin(full, atlas.resolve(code))).all()
        assert low < mask.sum() < high, (code, mask.sum())
    assert 0.98 < LandOnly().mask(geoclip_gallery).mean() <= 1.0


@pytest.fixture(scope="module")
def geoclip_gallery():
    from geoalign.data.galleries import load_gallery

    try:
        table = load_gallery("geoclip-100k")
    except Exception as err:  # the geoclip wheel is a dependency; say so if it is missing
        pytest.fail(f"GeoCLIP gallery unavailable: {err}")
    return table[["lat", "lon"]].to_numpy()
