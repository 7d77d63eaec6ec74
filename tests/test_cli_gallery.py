import numpy as np
import pandas as pd
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.galleries import load_gallery
from geoalign.geo.gallery import sample_gallery

runner = CliRunner()


def test_sample_gallery_dedupes_and_subsamples():
    pts = np.array([[1.0, 2.0], [1.00001, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    assert len(sample_gallery(pts, 10)) == 4  # the first two are the same 4-decimal point
    assert len(sample_gallery(pts, 10, dedupe_decimals=None)) == 5
    a, b = sample_gallery(pts, 2, seed=1), sample_gallery(pts, 2, seed=1)
    np.testing.assert_array_equal(a, b)
    assert all(any(np.allclose(p, q) for q in pts) for p in a)


def test_gallery_build_cli(tmp_path):
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {
            "IMG_ID": [f"{i}.jpg" for i in range(500)],
            "LAT": rng.uniform(-60, 70, 500),
            "LON": rng.uniform(-180, 180, 500),
        }
    )
    src = tmp_path / "train.csv"
    train.to_csv(src, index=False)
    out = tmp_path / "g.parquet"
    res = runner.invoke(
        app, ["gallery", "build", "--from", str(src), "--size", "100", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    g = load_gallery(out)
    assert len(g) == 100
    merged = g.merge(train, left_on=["lat", "lon"], right_on=["LAT", "LON"])
    assert len(merged) == 100  # every gallery point is a training coordinate

    bad = tmp_path / "bad.csv"
    bad.write_text("lat,lon\n1,2\n100,3\n4,5\n")
    res = runner.invoke(
        app, ["gallery", "build", "--from", str(bad), "--size", "5", "--out", str(out)]
    )
    assert res.exit_code == 2 and "row 2" in res.output
    res = runner.invoke(
        app,
        [
            "gallery",
            "build",
            "--from",
            str(bad),
            "--size",
            "5",
            "--out",
            str(out),
            "--skip-bad-rows",
        ],
    )
    assert res.exit_code == 0 and len(load_gallery(out)) == 2
    res = runner.invoke(app, ["gallery", "info", str(out)])
    assert res.exit_code == 0 and "2 points" in res.output


def test_gallery_build_with_no_usable_rows_writes_nothing(tmp_path):
    """An empty gallery used to be written; predict and gallery info then crashed on it."""
    out = tmp_path / "g.csv"
    all_bad = tmp_path / "bad.csv"
    all_bad.write_text("lat,lon\n100,3\nabc,5\n")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("lat,lon\n")
    for src, why in [(all_bad, "all 2 rows have bad coordinates"), (header_only, "no rows")]:
        args = ["gallery", "build", "--from", str(src), "--out", str(out), "--skip-bad-rows"]
        res = runner.invoke(app, args)
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "no usable coordinates" in text and why in text, text
        assert not out.exists()


def test_gallery_build_upper_case_suffix_and_folder_out(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("lat,lon\n1,2\n3,4\n")
    out = tmp_path / "G.CSV"
    res = runner.invoke(app, ["gallery", "build", "--from", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(load_gallery(out)) == 2 and sorted(p.name for p in tmp_path.iterdir()) == [
        "G.CSV",
        "t.csv",
    ]
    res = runner.invoke(app, ["gallery", "build", "--from", str(src), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is a folder" in " ".join(res.output.split())


def test_gallery_info_prints_on_stdout_and_as_json(tmp_path):
    import json

    src = tmp_path / "g.csv"
    src.write_text("lat,lon\n48.85,2.35\n48.86,2.34\n-33.9,151.2\n")
    res = runner.invoke(app, ["gallery", "info", str(src)])
    assert res.exit_code == 0 and "3 points" in res.stdout and "FR 2" in res.stdout
    res = runner.invoke(app, ["gallery", "info", str(src), "--json"])
    summary = json.loads(res.stdout)
    assert summary["points"] == 3 and summary["countries"] == {"FR": 2, "AU": 1}
    assert summary["lat"] == [-33.9, 48.86]


def test_gallery_info_on_an_empty_gallery_is_an_error(tmp_path):
    src = tmp_path / "g.csv"
    src.write_text("lat,lon\n")
    res = runner.invoke(app, ["gallery", "info", str(src)])
    assert res.exit_code == 2 and "has no points" in " ".join(res.output.split())
