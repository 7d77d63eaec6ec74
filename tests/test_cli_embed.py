import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.models.registry import load_location_encoder

runner = CliRunner()


def test_embed_locations_npy_matches_library(tmp_path):
    src = tmp_path / "c.csv"
    pd.DataFrame({"Latitude": [48.85, -33.9], "Longitude": [2.35, 151.2]}).to_csv(src, index=False)
    out = tmp_path / "e.npy"
    res = runner.invoke(app, ["embed-locations", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    emb = np.load(out)
    ref = load_location_encoder("geoclip")(torch.tensor([[48.85, 2.35], [-33.9, 151.2]]))
    np.testing.assert_allclose(emb, ref.detach().numpy(), atol=1e-6)


def test_bad_rows_are_named_and_not_dropped(tmp_path):
    src = tmp_path / "c.csv"
    src.write_text("lat,lon\n48.85,2.35\nabc,3\n95,1\n-33.9,151.2\n")
    out = tmp_path / "e.parquet"
    res = runner.invoke(app, ["embed-locations", str(src), "--out", str(out)])
    assert res.exit_code == 2
    assert "row 2" in res.output and "row 3" in res.output and not out.exists()
    res = runner.invoke(app, ["embed-locations", str(src), "--out", str(out), "--skip-bad-rows"])
    assert res.exit_code == 1  # partial success is not success
    table = pd.read_parquet(out)
    assert len(table) == 4
    assert table["embedding"].isna().tolist() == [False, True, True, False]
    assert "outside" in table["error"][2]


def test_unknown_columns_and_suffix(tmp_path):
    src = tmp_path / "c.csv"
    src.write_text("a,b\n1,2\n")
    res = runner.invoke(app, ["embed-locations", str(src), "--out", str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and "cannot find the lat, lon column" in res.output
    res = runner.invoke(app, ["embed-locations", str(src), "--out", str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and ".npy or .parquet" in res.output
