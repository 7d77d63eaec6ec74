"""GWS15k's 500K gallery as a name: `gallery build --from MANIFEST --name mp16-500k` samples
500,000 training coordinates once; `--gallery mp16-500k` then finds it everywhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.galleries import load_gallery
from geoalign.errors import DataError

runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOALIGN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_mp16_500k_is_built_from_a_training_manifest_and_found_by_name(home, tmp_path):
    with pytest.raises(DataError, match="not built yet: geoalign gallery build .*--size 500000"):
        load_gallery("mp16-500k")
    rng = np.random.default_rng(0)
    n = 520_000
    train = pd.DataFrame(
        {
            "image": [f"{i}.jpg" for i in range(n)],
            "lat": np.round(rng.uniform(-60, 70, n), 6),
            "lon": np.round(rng.uniform(-180, 180, n), 6),
        }
    )
    manifest = tmp_path / "mp16.parquet"
    train.to_parquet(manifest, index=False)
    args = ["gallery", "build", "--from", str(manifest), "--name", "mp16-500k"]
    res = runner.invoke(app, [*args, "--size", "500000"])
    assert res.exit_code == 0, res.output
    assert (home / "galleries" / "mp16-500k.parquet").is_file()
    g = load_gallery("mp16-500k")
    assert len(g) == 500_000
    seen = pd.MultiIndex.from_frame(train[["lat", "lon"]])
    assert pd.MultiIndex.from_frame(g[["lat", "lon"]]).isin(seen).all()  # training coordinates


def test_an_unbuilt_named_gallery_is_a_usage_error_naming_the_command(home):
    res = runner.invoke(app, ["gallery", "info", "mp16-500k"])
    assert res.exit_code == 2, res.output
    assert "gallery build --from <MP-16 training manifest> --size 500000 --name mp16-500k" in (
        " ".join(res.output.split())
    )


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--name", "mp16-1m"], "is not a named gallery; known: mp16-500k"),
        (["--name", "mp16-500k", "--size", "100"], "a gallery of 500,000 points, not 100"),
        (["--name", "mp16-500k", "--out", "g.csv"], "give --out FILE or --name NAME"),
        ([], "give --out FILE or --name NAME"),
    ],
)
def test_bad_name_options_are_usage_errors(home, tmp_path, extra, needle):
    src = tmp_path / "train.csv"
    src.write_text("lat,lon\n1,2\n3,4\n")
    res = runner.invoke(app, ["gallery", "build", "--from", str(src), *extra])
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not (home / "galleries").exists()
