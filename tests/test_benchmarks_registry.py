"""Benchmark registry: real published label files, fake image folders, exact missing reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from _shared import (  # noqa: E402
    content_sha256,
    published_sha256,
    reference_file,
    shared_file,
)
from geoalign.cli.data import register
from geoalign.data.benchmarks import (
    BENCHMARKS,
    get_benchmark,
    list_benchmarks,
    reference_columns,
    reference_labels,
)
from geoalign.data.manifest import Manifest
from geoalign.errors import DataError


def _touch(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8fake")


def test_registry_sizes_and_aliases() -> None:
    sizes = {b.name: b.expected_rows for b in list_benchmarks()}
    assert sizes == {
        "im2gps": 237,
        "im2gps3k": 2997,
        "yfcc4k": 4536,
        "yfcc26k": 25600,
        "gws15k": 15000,
        "osv5m-test": 210122,
    }
    assert get_benchmark("IM2GPS3K") is BENCHMARKS["im2gps3k"]
    assert get_benchmark("yfcc25600") is BENCHMARKS["yfcc26k"]
    assert get_benchmark("OSV-5M") is BENCHMARKS["osv5m-test"]
    with pytest.raises(DataError, match="unknown benchmark 'mp16'.*im2gps3k"):
        get_benchmark("mp16")


def test_im2gps3k_reports_exactly_what_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "im2gps3k"
    shutil.copy(reference_file("im2gps3k_places365.csv"), root.parent / "im2gps3k_places365.csv")
    labels = pd.read_csv(reference_file("im2gps3k_places365.csv"))
    present = [0, 5, 2996]
    _touch(root / "im2gps3ktest", labels["IMG_ID"].iloc[present].tolist())
    bench = get_benchmark("im2gps3k")
    status = bench.verify(root)
    assert status.labels == (tmp_path / "im2gps3k_places365.csv")
    assert status.image_root == (root / "im2gps3ktest").resolve()
    assert (status.n_rows, status.n_found, len(status.missing)) == (2997, 3, 2994)
    assert status.missing[0] == labels["IMG_ID"].iloc[1]
    assert "2994 of 2997 images missing" in status.describe()
    assert not status.ok
    with pytest.raises(DataError, match="2994 of 2997 images missing"):
        bench.load(root)
    manifest = bench.load(root, on_missing="skip")
    assert manifest.rows.tolist() == [1, 6, 2997]
    np.testing.assert_array_equal(
        manifest.coords(), labels[["LAT", "LON"]].iloc[present].to_numpy()
    )
    assert all(p.is_file() for p in manifest.paths())
    assert manifest.report is not None and manifest.report.ok
    kept = bench.load(root, on_missing="keep")
    assert len(kept) == 2997 and len(kept.report.bad_rows) == 2994


def test_label_file_not_found_names_every_place_looked(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    status = get_benchmark("yfcc4k").verify(folder)
    assert status.labels is None
    text = status.describe()
    for name in ("yfcc4k.txt", "yfcc4k_places365.csv", "yfcc4k.csv"):
        assert str(folder.resolve() / name) in text
        assert str(tmp_path.resolve() / name) in text
    with pytest.raises(DataError, match="label file not found"):
        get_benchmark("yfcc4k").load(folder)
    with pytest.raises(DataError, match="not found"):
        get_benchmark("im2gps").load(folder, labels=folder / "missing.csv")


def test_im2gps_complete_with_explicit_labels(tmp_path: Path) -> None:
    labels = pd.read_csv(reference_file("im2gps_places365.csv"))
    _touch(tmp_path, labels["IMG_ID"].tolist())
    manifest = get_benchmark("im2gps").load(tmp_path, labels=reference_file("im2gps_places365.csv"))
    assert len(manifest) == 237
    assert manifest.report is not None and manifest.report.ok
    assert manifest.frame["AUTHOR"].tolist() == labels["AUTHOR"].tolist()
    assert get_benchmark("im2gps").verify(tmp_path, reference_file("im2gps_places365.csv")).ok


def test_yfcc26k_nested_paths_and_flat_fallback(tmp_path: Path) -> None:
    labels = pd.read_csv(reference_file("yfcc25600_places365.csv"))
    ids = labels["IMG_ID"].tolist()
    assert ids[0] == "45/77/3228511372.jpg"
    _touch(tmp_path, ids[:3])  # as published: two-level folders
    _touch(tmp_path / "flat", [Path(i).name for i in ids[3:5]])  # flattened copies elsewhere below
    status = get_benchmark("yfcc26k").verify(tmp_path, reference_file("yfcc25600_places365.csv"))
    assert (status.n_found, len(status.missing)) == (5, 25595)
    manifest = get_benchmark("yfcc26k").load(
        tmp_path, reference_file("yfcc25600_places365.csv"), on_missing="skip"
    )
    assert manifest.images.tolist() == ids[:3] + [f"flat/{Path(i).name}" for i in ids[3:5]]
    assert all(p.is_file() for p in manifest.paths())


def _yfcc100m_line(photo_id: str, lon: float, lat: float, with_line: bool) -> str:
    fields = [
        photo_id,
        "12345678@N00",
        "nick",
        "2010-01-01 00:00:00.0",
        "1262304000",
        "Canon",
        "title",
        "description+with+words",
        "tag1,tag2",
        "",
        str(lon),
        str(lat),
        "16",
        "http://flickr/x",
        "http://farm/x.jpg",
        "CC BY",
        "http://cc",
        "1",
        "2",
        "s",
        "so",
        "jpg",
        "0",
    ]
    if with_line:
        fields = ["7", photo_id, "abcdef", *fields[1:]]
    return "\t".join(fields)


@pytest.mark.parametrize("with_line", [True, False])
def test_yfcc4k_published_tsv(tmp_path: Path, with_line: bool) -> None:
    rows = [("10201275523", -122.4, 37.8), ("299876543", 2.35, 48.85), ("55555", 139.7, 35.7)]
    (tmp_path / "yfcc4k.txt").write_text(
        "\n".join(_yfcc100m_line(i, lon, lat, with_line) for i, lon, lat in rows) + "\n"
    )
    _touch(tmp_path / "yfcc4k", ["10201275523.jpg", "299876543.jpg"])
    bench = get_benchmark("yfcc4k")
    status = bench.verify(tmp_path)
    assert status.missing == ["55555.jpg"]
    assert any("4536" in n for n in status.notes)
    manifest = bench.load(tmp_path, on_missing="skip")
    assert manifest.images.tolist() == ["10201275523.jpg", "299876543.jpg"]
    np.testing.assert_array_equal(manifest.coords(), [[37.8, -122.4], [48.85, 2.35]])


def test_yfcc4k_csv_form_and_malformed_tsv(tmp_path: Path) -> None:
    pd.DataFrame(
        {"IMG_ID": ["1", "2.jpg"], "OwnerNSID": ["a", "b"], "LAT": [1.0, 2.0], "LON": [3.0, 4.0]}
    ).to_csv(tmp_path / "yfcc4k.csv", index=False)
    _touch(tmp_path / "images", ["1.jpg", "2.jpg"])
    manifest = get_benchmark("yfcc4k").load(tmp_path)
    assert manifest.images.tolist() == ["1.jpg", "2.jpg"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "yfcc4k.txt").write_text("1\t2\t3\n")
    with pytest.raises(DataError, match="23 or 25 tab-separated columns"):
        get_benchmark("yfcc4k").verify(tmp_path / "bad")


def test_osv5m_ids_keep_all_digits_and_are_found_in_subfolders(tmp_path: Path) -> None:
    ids = ["3859149887465501", "1000000000000001", "999"]
    pd.DataFrame(
        {
            "id": ids,
            "latitude": [-43.80, 10.0, 20.0],
            "longitude": [-176.61, 5.0, 6.0],
            "country": ["NZ", "FR", "US"],
            "lat_bin": [1, 2, 3],
        }
    ).to_csv(tmp_path / "test.csv", index=False)
    _touch(tmp_path / "images" / "test" / "00", [f"{ids[0]}.jpg"])
    _touch(tmp_path / "images" / "test" / "01", [f"{ids[1]}.jpg"])
    bench = get_benchmark("osv5m")
    status = bench.verify(tmp_path / "images" / "test")  # labels two levels up
    assert status.labels == (tmp_path / "test.csv").resolve()
    assert status.missing == ["999.jpg"]
    manifest = bench.load(tmp_path, on_missing="skip")
    assert manifest.frame["id"].tolist() == ids[:2]  # not rounded through float64
    assert manifest.images.tolist() == [f"00/{ids[0]}.jpg", f"01/{ids[1]}.jpg"]
    assert manifest.coords()[0].tolist() == [-43.8, -176.61]


def test_gws15k_generic_id_csv_probes_extensions(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "image_id": ["image_0", "image_1"],
            "city": ["Cobija", "Rawasari"],
            "lat": [-11.0264039, -7.5648521],
            "lon": [-68.7511483, 108.8731069],
        }
    ).to_csv(tmp_path / "metadata.csv", index=False)
    _touch(tmp_path / "images", ["image_0.jpg", "image_1.png"])
    manifest = get_benchmark("gws15k").load(tmp_path)
    assert manifest.images.tolist() == ["image_0.jpg", "image_1.png"]
    assert any("never released" in n for n in get_benchmark("gws15k").verify(tmp_path).notes)


@pytest.mark.parametrize(
    ("name", "file", "rows"),
    [
        ("im2gps", "im2gps_places365.csv", 237),
        ("im2gps3k", "im2gps3k_places365.csv", 2997),
        ("yfcc26k", "yfcc25600_places365.csv", 25600),
    ],
)
def test_packaged_reference_labels_match_the_published_files(
    name: str, file: str, rows: int
) -> None:
    packaged = reference_labels(name)
    assert len(packaged) == rows
    assert content_sha256(reference_file(file)) == published_sha256()[file]
    manifest = Manifest.from_frame(packaged, columns=reference_columns())
    assert manifest.report is not None and manifest.report.ok


@pytest.mark.parametrize(
    "file", ["im2gps_places365.csv", "im2gps3k_places365.csv", "yfcc25600_places365.csv"]
)
def test_recorded_hashes_are_those_of_the_shared_copies(file: str) -> None:
    """tests/data/published.sha256 was taken from the shared copy of each published file."""
    path = shared_file(file)
    assert content_sha256(path) == published_sha256()[file]
    pd.testing.assert_frame_equal(pd.read_csv(reference_file(file)), pd.read_csv(path))


def test_no_packaged_labels_for_other_benchmarks() -> None:
    with pytest.raises(DataError, match="no packaged labels for YFCC4k"):
        reference_labels("yfcc4k")


def test_cli_benchmark_exit_codes(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    labels = pd.read_csv(reference_file("im2gps_places365.csv"))
    _touch(tmp_path, labels["IMG_ID"].tolist()[:-1])
    shutil.copy(reference_file("im2gps_places365.csv"), tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "benchmark", "im2gps", str(tmp_path)])
    assert result.exit_code == 1 and "1 of 237 images missing" in " ".join(result.output.split())
    _touch(tmp_path, labels["IMG_ID"].tolist()[-1:])
    result = runner.invoke(app, ["data", "benchmark", "im2gps", str(tmp_path)])
    assert result.exit_code == 0 and "all 237 images found" in " ".join(result.output.split())
    result = runner.invoke(app, ["data", "benchmarks"])
    assert result.exit_code == 0 and "osv5m-test" in result.output
