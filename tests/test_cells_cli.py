"""`geoalign cells build/show/assign/import` on small files."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.geo.cells import CellHierarchy, PartitionRules

runner = CliRunner()


def _text(res) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(res.output.split())


from _shared import mp16_cells  # noqa: E402


def _points(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    centre = np.array([[48.85, 2.35], [40.7, -74.0], [-33.9, 151.2], [35.7, 139.7]])
    k = rng.integers(0, len(centre), n)
    spread = np.array([0.05, 0.5, 2.0])[rng.integers(0, 3, n)]
    return centre[k, 0] + rng.normal(size=n) * spread, centre[k, 1] + rng.normal(size=n) * spread


@pytest.mark.parametrize(
    ("lat_name", "lon_name"), [("LAT", "LON"), ("Latitude", "Longitude"), ("lat", "lng")]
)
def test_build_show_assign(tmp_path, lat_name, lon_name):
    lat, lon = _points()
    src = tmp_path / "train.csv"
    pd.DataFrame({"IMG_ID": np.arange(lat.size), lat_name: lat, lon_name: lon}).to_csv(
        src, index=False
    )
    out = tmp_path / "cells"
    labels = tmp_path / "labels.parquet"
    res = runner.invoke(
        app,
        [
            "cells",
            "build",
            str(src),
            "--tau-min",
            "10",
            "--tau-max",
            "100,400,1500",
            "--out",
            str(out),
            "--labels",
            str(labels),
        ],
    )
    assert res.exit_code == 0, res.output
    h = CellHierarchy.load(out)
    want = CellHierarchy.build(lat, lon, (1500, 400, 100), PartitionRules(tau_min=10))
    assert h.sizes == want.sizes and [p.tau_max for p in h.partitions] == [1500, 400, 100]
    for a, b in zip(h.partitions, want.partitions, strict=True):
        np.testing.assert_array_equal(a.cell_ids, b.cell_ids)
    assert h.params["tau_min"] == 10 and h.params["source"] == str(src)
    table = pd.read_parquet(labels)
    assert table["row"].tolist() == list(range(1, lat.size + 1))
    np.testing.assert_array_equal(
        table[["cell_0", "cell_1", "cell_2"]].to_numpy(), want.assign(lat, lon)
    )

    res = runner.invoke(
        app,
        [
            "cells",
            "show",
            str(out),
            "--map",
            str(tmp_path / "m.html"),
            "--level",
            "1",
            "--no-tiles",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "1500" in res.stdout and str(h.sizes[2]) in res.stdout  # the table is the result
    assert "m.html" in res.stderr and "m.html" not in res.stdout  # "wrote ..." is a message
    html = (tmp_path / "m.html").read_text()
    res = runner.invoke(app, ["cells", "show", str(out), "--json"])
    assert res.exit_code == 0, res.output
    import json

    shown = json.loads(res.stdout)
    assert [lv["cells"] for lv in shown["levels"]] == h.sizes
    assert [lv["tau_max"] for lv in shown["levels"]] == [1500, 400, 100]
    assert shown["levels"][0]["not_nested"] is None and shown["levels"][2]["not_nested"] == 0
    assert "FeatureCollection" in html and h.partitions[1].tokens[0] in html

    queries = tmp_path / "q.parquet"
    pd.DataFrame({"latitude": [48.85, 0.0], "longitude": [2.35, -150.0]}).to_parquet(queries)
    res = runner.invoke(
        app,
        [
            "cells",
            "assign",
            str(out),
            str(queries),
            "--out",
            str(tmp_path / "a.csv"),
            "--missing",
            "nearest",
        ],
    )
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "a.csv")
    np.testing.assert_array_equal(
        got.filter(like="cell_").to_numpy(),
        h.assign([48.85, 0.0], [2.35, -150.0], missing="nearest"),
    )


def test_build_geoestimation_rules(tmp_path):
    lat, lon = _points(2000, seed=3)
    src = tmp_path / "t.parquet"
    pd.DataFrame({"lat": lat, "lon": lon}).to_parquet(src)
    res = runner.invoke(
        app,
        [
            "cells",
            "build",
            str(src),
            "--tau-min",
            "5",
            "--tau-max",
            "300",
            "--rules",
            "geoestimation",
            "-o",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 0, res.output
    h = CellHierarchy.load(tmp_path / "c")
    assert h.partitions[0].levels.min() >= 2 and h.partitions[0].counts.min() > 5
    assert h.params["min_level"] == 2 and h.params["min_inclusive"] is False


def test_bad_rows_are_reported_by_row_number(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("lat,lon\n48.85,2.35\nabc,3\n95,1\n-33.9,151.2\n48.86,2.36\n")
    res = runner.invoke(
        app,
        ["cells", "build", str(src), "--tau-min", "1", "--tau-max", "2", "-o", str(tmp_path / "c")],
    )
    assert res.exit_code == 2
    assert (
        "row 2: latitude 'abc'" in _text(res)
        and "row 3: latitude 95" in _text(res)
        and not (tmp_path / "c").exists()
    )
    res = runner.invoke(
        app,
        [
            "cells",
            "build",
            str(src),
            "--tau-min",
            "1",
            "--tau-max",
            "2",
            "-o",
            str(tmp_path / "c"),
            "--skip-bad-rows",
        ],
    )
    assert res.exit_code == 0, res.output
    assert int(CellHierarchy.load(tmp_path / "c").partitions[0].counts.sum()) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tau-max", "100,abc"], "comma-separated"),
        (["--tau-max", "100,100"], "distinct"),
        (["--rules", "planet"], "--rules"),
        (["--tau-min", "500", "--tau-max", "100"], "tau_min"),
    ],
)
def test_bad_options(tmp_path, args, message):
    src = tmp_path / "p.csv"
    src.write_text("lat,lon\n1,2\n")
    res = runner.invoke(app, ["cells", "build", str(src), "-o", str(tmp_path / "c"), *args])
    assert res.exit_code == 2 and message in _text(res)


def test_missing_columns_and_folder(tmp_path):
    src = tmp_path / "p.csv"
    src.write_text("x,y\n1,2\n")
    res = runner.invoke(app, ["cells", "build", str(src), "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "cannot find the lat" in _text(res)
    res = runner.invoke(app, ["cells", "show", str(tmp_path)])
    assert res.exit_code == 2 and "no hierarchy.json" in _text(res)


def test_import_mp16(tmp_path):
    files = [str(mp16_cells(t)) for t in (1000, 5000)]
    res = runner.invoke(app, ["cells", "import", *files, "-o", str(tmp_path / "mp16")])
    assert res.exit_code == 0, res.output
    assert "repaired 121 tokens" in _text(res)
    h = CellHierarchy.load(tmp_path / "mp16")
    assert [p.tau_max for p in h.partitions] == [5000, 1000]
    assert all(r.nested for r in h.nesting())
