"""Offline place names: known answers, brute-force nearest neighbours, borders, regions, CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from geoalign.errors import CoordinateError, GeoalignError
from geoalign.geo.distance import haversine_km
from geoalign.geo.places import GEONAMES_CITIES1000, Place, cover_km, default, nearest_places
from geoalign.geo.regions import NATURAL_EARTH_ADMIN0


@pytest.fixture(scope="module")
def finder():
    return default()


def test_known_places(finder):
    paris, tokyo, fairbanks = finder.nearest([(48.8566, 2.3522), (35.68, 139.69), (64.84, -147.72)])
    assert (paris.city, paris.region, paris.country_code, paris.country_name) == (
        "Paris",
        "Île-de-France",
        "FR",
        "France",
    )
    assert paris.distance_km < 2 and not paris.at_sea
    assert str(paris) == "Paris, Île-de-France, France"
    assert (tokyo.country_code, tokyo.region) == ("JP", "Tokyo")
    assert (fairbanks.city, fairbanks.region, fairbanks.country_code) == (
        "Fairbanks",
        "Alaska",
        "US",
    )


def test_point_at_sea(finder):
    (place,) = finder.nearest([(45.0, -30.0)])  # mid-Atlantic; the Azores are the nearest land
    # far out at sea no country is claimed (it used to be Portugal, 600 km away)
    assert place.at_sea and place.country_code == "" and place.country_name == ""
    assert place.region == "Azores" and 500 < place.distance_km < 800
    assert 500 < place.coast_km < 700
    assert str(place).startswith("at sea, ") and place.short().startswith("at sea (")


def test_offshore_point_names_the_nearest_coast(finder):
    (place,) = finder.nearest([(50.9, 1.5)])  # the Channel, off Cap Gris-Nez
    assert place.at_sea and (place.country_code, place.country_name) == ("FR", "France")
    assert 3 < place.coast_km < 15
    assert place.short() == f"{place.coast_km:.0f} km off France"
    (land,) = finder.nearest([(48.8566, 2.3522)])
    assert land.coast_km == 0.0


@pytest.mark.parametrize(
    ("point", "city", "nearest"),
    [
        ((35.68, 139.76), "Tokyo", "Ginza"),  # Tokyo station
        ((35.6586, 139.7454), "Tokyo", "Shibakōen"),  # Tokyo Tower
        ((40.758, -73.9855), "New York City", "Times Square"),
        ((40.6782, -73.9442), "New York City", "Bushwick"),  # Brooklyn
        ((35.5308, 139.7029), "Kawasaki", "Kawasaki"),  # own radius; 18 km from Tokyo's point
    ],
)
def test_populous_place_covering_the_point_names_it(finder, point, city, nearest):
    dist = haversine_km(point[0], point[1], finder.lat, finder.lon)
    assert finder.city[int(np.argmin(dist))] == nearest  # the old answer
    (place,) = finder.nearest([point])
    assert place.city == city
    assert place.distance_km == pytest.approx(
        float(haversine_km(*point, place.city_lat, place.city_lon)), rel=1e-7
    )


def test_border_point_takes_its_own_country(finder):
    """(46.135, 6.0) lies in France; the nearest GeoNames place overall is Chancy, Switzerland."""
    point = (46.135, 6.0)
    dist_all = haversine_km(point[0], point[1], finder.lat, finder.lon)
    assert finder.cc[int(np.argmin(dist_all))] == "CH"
    (place,) = finder.nearest([point])
    assert place.country_code == "FR" and place.city_country_code == "FR"
    fr = finder.cc == "FR"
    assert place.distance_km == pytest.approx(dist_all[fr].min(), rel=1e-9, abs=1e-6)


def test_remote_island_keeps_polygon_country(finder):
    """Attu Island (US, east of 180): nearest place is in Kamchatka; the country stays US."""
    (place,) = finder.nearest([(52.9, 172.9)])
    assert place.country_code == "US" and place.city_country_code == "RU"
    assert "United States" in str(place) and "(RU)" in str(place)


def test_nearest_matches_brute_force(finder):
    rng = np.random.default_rng(0)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 300)))
    lon = rng.uniform(-180, 180, 300)
    places = finder.nearest(np.stack([lat, lon], 1))
    for la, lo, place in zip(lat, lon, places, strict=True):
        dist = haversine_km(la, lo, finder.lat, finder.lon)
        # reported distance is the true distance to the reported place ...
        assert place.distance_km == pytest.approx(
            float(haversine_km(la, lo, place.city_lat, place.city_lon)), rel=1e-7, abs=1e-6
        )
        # ... never closer than the nearest place overall; farther only for a more populous
        # place whose radius covers the point, or for a place in the point's own country
        nearest = int(np.argmin(dist))
        assert place.distance_km >= dist.min() - 1e-6
        covered = place.distance_km <= cover_km(place.population) + 1e-6
        if covered and place.population > finder.population[nearest]:
            continue
        if place.at_sea or place.city_country_code == finder.cc[nearest]:
            assert place.distance_km == pytest.approx(dist.min(), rel=1e-7, abs=1e-6)


def test_date_line_neighbours(finder):
    """Nearest neighbours are found across the antimeridian (a lat/lon KD-tree would miss them)."""
    (place,) = finder.nearest([(-16.8, 179.999)])  # Taveuni, Fiji, right on the 180th meridian
    dist = haversine_km(-16.8, 179.999, finder.lat, finder.lon)
    assert place.distance_km == pytest.approx(dist.min(), abs=1e-6)
    assert place.country_code == "FJ"


def test_columns_table_and_nearest_agree(finder):
    pts = np.array([(48.8566, 2.3522), (45.0, -30.0), (-33.87, 151.21)])
    cols = finder.columns(pts)
    table = finder.table(pts)
    places = finder.nearest(pts)
    assert list(table.columns) == list(Place._fields)
    assert table["city"].tolist() == [p.city for p in places] == cols["city"].tolist()
    assert table["at_sea"].tolist() == [False, True, False]
    assert nearest_places(pts) == places


def test_invalid_points_are_reported(finder):
    with pytest.raises(CoordinateError, match="index 1"):
        finder.nearest([(0.0, 0.0), (95.0, 0.0)])


def test_region_resolution(finder):
    assert finder.resolve_region("US-CA") == ("US", "California")
    assert finder.resolve_region("us/california") == ("US", "California")
    assert finder.resolve_region("FR-IDF") == ("FR", "Île-de-France")
    assert finder.resolve_region("Bavaria") == ("DE", "Bavaria")
    assert finder.resolve_region("Germany/Bavaria") == ("DE", "Bavaria")
    assert finder.resolve_region("JP-13") == ("JP", "Tokyo")
    with pytest.raises(GeoalignError, match="DE/Bavaria|Bavaria"):
        finder.resolve_region("DE-BY")
    with pytest.raises(GeoalignError, match="unknown ISO 3166-2"):
        finder.resolve_region("US-ZZ")
    assert "California" in finder.region_names("US") and len(finder.region_names("US")) >= 50


def test_dataset_metadata_is_recorded():
    for meta in (GEONAMES_CITIES1000, NATURAL_EARTH_ADMIN0):
        assert {"name", "version", "licence", "package"} <= set(meta)
    assert "CC BY" in GEONAMES_CITIES1000["licence"]
    assert "public domain" in NATURAL_EARTH_ADMIN0["licence"]


# ------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli():
    from geoalign.cli.app import app

    return lambda *args: CliRunner().invoke(app, list(args))


def test_cli_lookup_json(cli):
    result = cli("places", "lookup", "--json", "48.8566", "2.3522", "-33.87,151.21")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["city"] for r in rows] == ["Paris", "Sydney"]
    assert rows[1]["lat"] == -33.87 and rows[1]["country_code"] == "AU"


def test_cli_lookup_table_is_on_stdout(cli):
    result = cli("places", "lookup", "48.8566", "2.3522")
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout and result.stderr == ""


def test_cli_lookup_errors(cli):
    result = cli("places", "lookup", "48.8")
    assert result.exit_code == 2 and "pairs" in result.output
    result = cli("places", "lookup", "95", "0")
    assert result.exit_code == 2 and "latitude" in result.output


def test_cli_countries_and_regions(cli):
    result = cli("places", "countries", "korea")
    assert result.exit_code == 0 and "KR" in result.output and "KP" in result.output
    result = cli("places", "regions", "Germany")
    assert result.exit_code == 0 and "DE/Bavaria" in result.stdout


def test_cli_prior(cli):
    result = cli("places", "prior", "--within", "FR")
    assert result.exit_code == 0, result.output
    assert "of 94,123 gallery points" in result.output
    result = cli("places", "prior", "--within", "Frnace")
    assert result.exit_code == 2 and "France" in result.output
    result = cli("places", "prior", "--near", "0,-30", "--radius-km", "10")
    assert result.exit_code == 2 and "leaves none" in result.output
