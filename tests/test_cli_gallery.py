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
