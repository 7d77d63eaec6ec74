"""Manifests: column spellings, every bad row reported by its row number, clean/skip, CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from _shared import reference_file  # noqa: E402
from geoalign.cli.data import register
from geoalign.data.manifest import (
    DUPLICATE_IMAGE,
    DUPLICATE_ROW,
    EMPTY_PATH,
    MISSING_FILE,
    Manifest,
    check_manifest,
    load_manifest,
)
from geoalign.errors import DataError
from geoalign.geo.coords import (
    LATITUDE_OUT_OF_RANGE,
    LONGITUDE_OUT_OF_RANGE,
    LONGITUDE_WRAPPED,
    MISSING_COORDINATE,
    NONFINITE_COORDINATE,
    UNPARSEABLE_COORDINATE,
)

BAD_CSV = """IMG_ID,LAT,LON,note
a.jpg,10,20,ok
b.jpg,abc,20,unparseable
c.jpg,,20,missing
d.jpg,95,20,lat range
e.jpg,10,200,wrapped
f.jpg,10,400,lon range
a.jpg,10,20,ok
a.jpg,11,20,dup image
,1,1,empty
g.jpg,inf,1,inf
h.jpg,NaN,-1e999,nan and -inf
"""

EXPECTED = {
    (2, UNPARSEABLE_COORDINATE),
    (3, MISSING_COORDINATE),
    (4, LATITUDE_OUT_OF_RANGE),
    (6, LONGITUDE_OUT_OF_RANGE),
    (7, DUPLICATE_ROW),
    (8, DUPLICATE_IMAGE),
    (9, EMPTY_PATH),
    (10, NONFINITE_COORDINATE),
    (11, MISSING_COORDINATE),
    (11, NONFINITE_COORDINATE),
}


@pytest.fixture
def bad_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text(BAD_CSV)
    for name in "abcdefgh":
        (tmp_path / f"{name}.jpg").write_bytes(b"x")
    return path


def test_every_bad_row_is_reported_with_its_row_number(bad_manifest: Path) -> None:
    report = check_manifest(bad_manifest)
    errors = {(i.row, i.reason) for i in report.errors}
    assert errors == EXPECTED
    assert {(i.row, i.reason) for i in report.warnings} == {(5, LONGITUDE_WRAPPED)}
    assert report.bad_rows == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert not report.ok
    # row N is the N-th data row: line N + 1 of the file (the header is line 1)
    lines = bad_manifest.read_text().splitlines()
    for issue in report.errors:
        assert lines[issue.row].endswith(
            {
                2: "unparseable",
                3: "missing",
                4: "lat range",
                6: "lon range",
                7: "ok",
                8: "dup image",
                9: "empty",
                10: "inf",
                11: "nan and -inf",
            }[issue.row]
        )
    assert "row 2: latitude 'abc' is not a number" in report.describe(max_rows=50)
    assert "duplicate of row 1" in report.describe(max_rows=50)
    assert "header is not counted" in report.describe()


def test_missing_files_are_checked_against_image_root(bad_manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "c.jpg").unlink()
    report = check_manifest(bad_manifest)
    missing = [i for i in report.errors if i.reason == MISSING_FILE]
    assert [i.row for i in missing] == [3]
    assert str(tmp_path / "c.jpg") in missing[0].message
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = check_manifest(bad_manifest, image_root=elsewhere)
    assert {i.row for i in report.errors if i.reason == MISSING_FILE} == {
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        10,
        11,
    }
    report = check_manifest(bad_manifest, check_files=False)
    assert not [i for i in report.errors if i.reason == MISSING_FILE]


def test_wrapped_longitudes_are_read_in_range_with_a_warning(bad_manifest: Path) -> None:
    with pytest.warns(UserWarning, match="wrapped"):
        manifest = load_manifest(bad_manifest)
    row5 = manifest.frame.set_index("row").loc[5]
    assert row5["lon"] == pytest.approx(-160.0)
    assert np.isnan(manifest.frame.set_index("row").loc[6, "lon"])  # 400 is an error, not wrapped


def test_clean_refuses_or_skips_and_writes_skipped_rows(bad_manifest: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = load_manifest(bad_manifest)
    with pytest.raises(DataError, match=r"9 of 11 rows have errors") as err:
        manifest.clean()
    assert "row 2" in str(err.value) and "on_error='skip'" in str(err.value)
    skipped = tmp_path / "skipped.csv"
    with pytest.warns(UserWarning, match="skipped 9 of 11"):
        clean = manifest.clean(on_error="skip", skipped_path=skipped)
    assert clean.rows.tolist() == [1, 5]
    assert clean.report is not None and clean.report.ok
    assert clean.coords().tolist() == [[10.0, 20.0], [10.0, -160.0]]
    table = pd.read_csv(skipped, keep_default_na=False)
    assert table["row"].tolist() == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert (
        table.set_index("row").loc[11, "reasons"] == f"{MISSING_COORDINATE};{NONFINITE_COORDINATE}"
    )
    assert table.set_index("row").loc[2, "note"] == "unparseable"
    # default location: next to the manifest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest.clean(on_error="skip")
    assert (tmp_path / "train.csv.skipped.csv").is_file()
    assert clean.clean() is clean  # a clean manifest passes through
    sub = manifest.subset(np.array([0, 4]))  # rows 1 and 5: the report's bad rows are gone
    assert sub.clean() is sub


@pytest.mark.parametrize(
    ("image", "lat", "lon"),
    [
        ("IMG_ID", "LAT", "LON"),
        ("image", "latitude", "longitude"),
        ("FilePath", "Lat", "Lng"),
        ("path", "LATITUDE", "long"),
        ("file_name", "gps_lat", "gps_lon"),
        ("id", "lat", "lon"),
    ],
)
def test_common_column_spellings(tmp_path: Path, image: str, lat: str, lon: str) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame(
        {image: ["x.jpg", "y.jpg"], lat: [1.5, -2.5], lon: [3.0, 179.0], "k": [1, 2]}
    ).to_csv(path, index=False)
    manifest = load_manifest(path)
    assert manifest.columns == {"image": image, "lat": lat, "lon": lon}
    assert manifest.images.tolist() == ["x.jpg", "y.jpg"]
    assert manifest.coords().tolist() == [[1.5, 3.0], [-2.5, 179.0]]
    assert manifest.frame["k"].tolist() == [1, 2]  # extras keep their type


def test_path_column_beats_id_and_split_group_are_found(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "id": [7, 8],
            "path": ["a/x.jpg", "b/y.jpg"],
            "lat": [0, 1],
            "lon": [0, 1],
            "Split": ["train", "val"],
            "group": ["u1", "u2"],
        }
    ).to_csv(path, index=False)
    manifest = load_manifest(path)
    assert manifest.columns["image"] == "path"
    assert manifest.split("val").images.tolist() == ["b/y.jpg"]
    assert manifest.frame["group"].tolist() == ["u1", "u2"]
    assert manifest.paths()[0] == tmp_path / "a" / "x.jpg"


def test_ambiguous_and_missing_columns_need_an_override(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame({"img": ["x.jpg"], "lat": [1.0], "latitude": [2.0], "lon": [3.0]}).to_csv(
        path, index=False
    )
    with pytest.raises(DataError, match="several columns look like lat"):
        load_manifest(path)
    manifest = load_manifest(path, columns={"lat": "LATITUDE"})  # case-insensitive override
    assert manifest.coords().tolist() == [[2.0, 3.0]]
    with pytest.raises(DataError, match="column 'nope'"):
        load_manifest(path, columns={"lat": "nope"})
    other = tmp_path / "o.csv"
    pd.DataFrame({"where": ["x.jpg"], "y": [1.0], "x": [2.0]}).to_csv(other, index=False)
    with pytest.raises(DataError, match="cannot find the image, lat, lon column"):
        load_manifest(other)
    assert load_manifest(
        other, columns={"image": "where", "lat": "y", "lon": "x"}
    ).coords().tolist() == [[1.0, 2.0]]


def test_parquet_manifest_with_typed_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pd.DataFrame(
        {
            "image": ["a", "b", "c", "d"],
            "lat": [1.0, np.nan, np.inf, 3.0],
            "lon": [2.0, 2.0, 2.0, -181.0],
        }
    ).to_parquet(path)
    report = check_manifest(path, check_files=False)
    assert {(i.row, i.reason) for i in report.errors} == {
        (2, MISSING_COORDINATE),
        (3, NONFINITE_COORDINATE),
        (4, LONGITUDE_OUT_OF_RANGE),
    }


def test_real_label_file_loads_clean() -> None:
    manifest = load_manifest(reference_file("im2gps3k_places365.csv"))
    raw = pd.read_csv(reference_file("im2gps3k_places365.csv"))
    assert len(manifest) == 2997
    assert manifest.report is not None and manifest.report.ok
    np.testing.assert_array_equal(manifest.coords(), raw[["LAT", "LON"]].to_numpy())
    assert manifest.images.tolist() == raw["IMG_ID"].tolist()
    assert manifest.frame["S365_Label"].tolist() == raw["S365_Label"].tolist()


def test_content_hash_tracks_images_and_coordinates() -> None:
    frame = pd.DataFrame({"image": ["a", "b"], "lat": [1.0, 2.0], "lon": [3.0, 4.0]})
    h = Manifest.from_frame(frame).content_hash()
    assert Manifest.from_frame(frame.assign(extra=[1, 2])).content_hash() == h
    assert Manifest.from_frame(frame.assign(lat=[1.0, 2.0000001])).content_hash() != h
    assert Manifest.from_frame(frame.assign(image=["a", "c"])).content_hash() != h


coordinate = st.one_of(
    st.floats(-90, 90, allow_nan=False).map(lambda v: ("ok", repr(v))),
    st.sampled_from(["", "abc", "1,5", "inf", "-inf", "nan", "91", "-90.5"]).map(
        lambda v: ("bad", v)
    ),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(coordinate, st.floats(-180, 180, allow_nan=False)), min_size=1, max_size=30)
)
def test_bad_latitudes_are_found_exactly_where_they_are(rows: list) -> None:
    frame = pd.DataFrame(
        {
            "image": [f"{i}.jpg" for i in range(len(rows))],
            "lat": [v for (_, v), _ in rows],
            "lon": [lon for _, lon in rows],
        }
    ).astype({"lat": str})
    manifest = Manifest.from_frame(frame)
    assert manifest.report is not None
    expected_bad = [i + 1 for i, ((kind, _), _) in enumerate(rows) if kind == "bad"]
    assert manifest.report.bad_rows == expected_bad
    good = [i for i, ((kind, _), _) in enumerate(rows) if kind == "ok"]
    np.testing.assert_array_equal(manifest.coords()[good, 0], [float(rows[i][0][1]) for i in good])
    lon = manifest.coords()[good, 1]
    assert ((lon >= -180) & (lon < 180)).all()


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # makes `data` a sub-command group
        pass

    return app


def test_cli_check_exit_codes_and_json(bad_manifest: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "report.json"
    result = runner.invoke(_cli(), ["data", "check", str(bad_manifest), "--json", str(out)])
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    assert report["n_bad_rows"] == 9 and report["error_counts"][MISSING_COORDINATE] == 2
    assert {
        (i["row"], i["reason"]) for i in report["issues"] if i["severity"] == "error"
    } == EXPECTED
    good = tmp_path / "good.csv"
    good.write_text("image,lat,lon\na.jpg,1,2\n")
    result = runner.invoke(_cli(), ["data", "check", str(good)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(_cli(), ["data", "check", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "not found" in " ".join(result.output.split())
