"""Property tests for the one coordinate validator (geo.coords) and the one table reader
(data.tables): every bad value is found and named by its 1-based row, good values pass through
unchanged, and a table reads back the coordinates written into it whatever its format or spelling."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoalign.data.galleries import load_gallery
from geoalign.data.tables import ALIASES, read_table, resolve_columns
from geoalign.errors import CoordinateError, DataError
from geoalign.geo.coords import (
    LONGITUDE_WRAPPED,
    UNPARSEABLE_COORDINATE,
    check_coordinates,
    format_row_errors,
    validate_latlon,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
good_lat = st.floats(-90, 90, allow_nan=False)
good_lon = st.floats(-180, 360, allow_nan=False)


def _expected_bad(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (
            ~np.isfinite(lat) | ~np.isfinite(lon) | (np.abs(lat) > 90) | (lon < -180) | (lon > 360)
        )


@FAST
@given(st.lists(st.tuples(any_float, any_float), min_size=1, max_size=40))
def test_exactly_the_bad_rows_are_reported_by_one_based_row(pairs):
    lat = np.array([p[0] for p in pairs])
    lon = np.array([p[1] for p in pairs])
    check = check_coordinates(lat, lon)
    bad = _expected_bad(lat, lon)
    assert sorted(check.errors()) == [int(i) + 1 for i in np.flatnonzero(bad)]
    np.testing.assert_array_equal(check.good, ~bad)
    assert np.all(check.lon[check.good] >= -180) and np.all(check.lon[check.good] < 180)


@FAST
@given(st.lists(st.tuples(good_lat, good_lon), min_size=1, max_size=40))
def test_good_coordinates_pass_unchanged_and_0_360_longitudes_wrap_with_a_warning(pairs):
    lat = np.array([p[0] for p in pairs])
    lon = np.array([p[1] for p in pairs])
    check = check_coordinates(lat, lon)
    assert check.errors() == {}
    np.testing.assert_array_equal(check.lat, lat)
    in_range = lon < 180
    np.testing.assert_array_equal(check.lon[in_range], lon[in_range])  # not a bit perturbed
    np.testing.assert_allclose(np.cos(np.radians(check.lon)), np.cos(np.radians(lon)), atol=1e-9)
    warned = {i.index for i in check.issues if i.reason == LONGITUDE_WRAPPED}
    assert warned == set(np.flatnonzero(lon > 180).tolist())
    # arrays from code follow the same rules: they pass validate_latlon, wrapped the same way
    _, wrapped = validate_latlon(lat, lon)
    np.testing.assert_array_equal(wrapped, check.lon)


@FAST
@given(
    st.lists(good_lat, min_size=1, max_size=20),
    st.integers(0, 19),
    st.text(alphabet="abcxyz-_ !?", min_size=1, max_size=6),
)
def test_text_columns_parse_like_numbers_and_name_the_unparseable_value(lats, where, junk):
    where = where % len(lats)
    text = pd.Series([repr(x) for x in lats], dtype=object)
    check = check_coordinates(text, pd.Series(["0"] * len(lats), dtype=object))
    np.testing.assert_array_equal(check.lat, np.array(lats))
    text.iloc[where] = junk
    check = check_coordinates(text, pd.Series(["0"] * len(lats), dtype=object))
    errors = check.errors()
    assert list(errors) == [where + 1]
    if junk.strip().lower() not in {"", "nan", "na", "n/a", "null", "none", "<na>"}:
        assert repr(junk.strip()) in errors[where + 1]
        assert [i.reason for i in check.issues] == [UNPARSEABLE_COORDINATE]
    message = format_row_errors("gallery.csv", errors)
    assert message.startswith("gallery.csv: 1 bad rows") and f"row {where + 1}: " in message


@FAST
@given(st.lists(st.tuples(any_float, st.floats(-180, 360)), min_size=1, max_size=20))
def test_array_validator_raises_exactly_when_the_table_check_finds_an_error(pairs):
    lat = np.array([p[0] for p in pairs])
    lon = np.array([p[1] for p in pairs])
    errors = check_coordinates(lat, lon).errors()
    if errors:
        with pytest.raises(CoordinateError, match=r"src: index \d+"):
            validate_latlon(lat, lon, source="src")
    else:
        validate_latlon(lat, lon, source="src")


def test_wrong_shapes_are_refused():
    with pytest.raises(CoordinateError, match="2 latitudes but 3 longitudes"):
        check_coordinates([1.0, 2.0], [1.0, 2.0, 3.0])


spellings = st.sampled_from([(a, b) for a in ALIASES["lat"] for b in ALIASES["lon"]])


@FAST
@given(
    st.lists(st.tuples(good_lat, st.floats(-180, 179.99)), min_size=1, max_size=30),
    spellings,
    st.sampled_from([".csv", ".tsv", ".csv.gz", ".parquet"]),
    st.booleans(),
)
def test_table_reader_reads_back_what_was_written(pairs, names, suffix, upper):
    lat_name, lon_name = (n.upper() if upper else n for n in names)
    frame = pd.DataFrame(
        {
            "name": [f"p{i}" for i in range(len(pairs))],
            lat_name: [p[0] for p in pairs],
            lon_name: [p[1] for p in pairs],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"g{suffix}"
        if suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
        table = read_table(path, string_columns=())
        cols = resolve_columns(table.columns, source=str(path), require_image=False)
        assert (cols["lat"], cols["lon"]) == (lat_name, lon_name)
        only = read_table(path, string_columns=(), columns=[lat_name])
        assert list(only.columns) == [lat_name]
        gallery = load_gallery(path, dedupe=False)  # every row back, repeats included
    np.testing.assert_allclose(gallery["lat"], frame[lat_name], rtol=1e-15, atol=0)
    np.testing.assert_allclose(gallery["lon"], frame[lon_name], rtol=1e-15, atol=0)
    assert gallery["name"].tolist() == frame["name"].tolist()


@FAST
@given(st.integers(1, 25), st.integers(0, 24), st.sampled_from(["95", "abc", "", "inf", "400"]))
def test_gallery_errors_name_the_file_and_the_planted_row(n, where, bad):
    where = where % n
    lines = ["lat,lon"] + [f"{i % 80},{i}" for i in range(n)]
    lat, lon = lines[where + 1].split(",")
    lines[where + 1] = f"{lat},{bad}" if bad == "400" else f"{bad},{lon}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gallery.csv"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError) as info:
            load_gallery(path)
    assert str(info.value).startswith(f"{path}: 1 bad rows")
    assert f"row {where + 1}: " in str(info.value)


def test_missing_table_and_missing_column_say_which():
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(DataError, match="nope.csv: file not found"):
            read_table(Path(tmp) / "nope.csv")
        path = Path(tmp) / "t.csv"
        path.write_text("x,lon\n1,2\n")
        with pytest.raises(DataError, match=r"t.csv: cannot find the lat column"):
            load_gallery(path)
