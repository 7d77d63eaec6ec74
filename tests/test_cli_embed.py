import numpy as np
import pandas as pd
import pytest
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


def _text(res) -> str:
    return " ".join(res.output.split())


def _coords(tmp_path):
    src = tmp_path / "c.csv"
    pd.DataFrame({"lat": [48.85, -33.9], "lon": [2.35, 151.2]}).to_csv(src, index=False)
    return src


@pytest.mark.parametrize("size", ["0", "-1"])
def test_batch_size_must_be_positive(tmp_path, size):
    """-1 used to write all-zero embeddings and exit 0; 0 gave a traceback."""
    out = tmp_path / "e.npy"
    res = runner.invoke(
        app, ["embed-locations", str(_coords(tmp_path)), "--out", str(out), "--batch-size", size]
    )
    assert res.exit_code == 2 and "--batch-size" in _text(res) and not out.exists()


def test_upper_case_suffix_writes_the_named_file(tmp_path):
    out = tmp_path / "E.NPY"
    res = runner.invoke(app, ["embed-locations", str(_coords(tmp_path)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E.NPY", "c.csv"]  # not E.NPY.npy
    assert np.load(out).shape == (2, 512)


def test_output_that_is_a_folder_or_below_a_file_is_refused(tmp_path):
    folder = tmp_path / "x.npy"
    folder.mkdir()
    res = runner.invoke(app, ["embed-locations", str(_coords(tmp_path)), "--out", str(folder)])
    assert res.exit_code == 2 and "is a folder" in _text(res)
    below = tmp_path / "c.csv" / "e.npy"
    res = runner.invoke(app, ["embed-locations", str(_coords(tmp_path)), "--out", str(below)])
    assert res.exit_code == 2 and "is a file, not a folder" in _text(res)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_names_the_option(tmp_path):
    out = tmp_path / "e.npy"
    args = ["embed-locations", str(_coords(tmp_path)), "--out", str(out), "--device", "cuda"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--device cuda: no CUDA GPU" in _text(res)
    res = runner.invoke(app, [*args[:-1], "warp-drive"])
    assert res.exit_code == 2 and "--device 'warp-drive' is not a device" in _text(res)


@pytest.mark.parametrize(
    ("text", "why"), [("lat,lon\n", "no rows"), ("lat,lon\n95,1\n", "all 1 rows have bad")]
)
def test_no_usable_rows_is_an_error_not_a_traceback(tmp_path, text, why):
    src = tmp_path / "c.csv"
    src.write_text(text)
    out = tmp_path / "e.npy"
    res = runner.invoke(app, ["embed-locations", str(src), "--out", str(out), "--skip-bad-rows"])
    assert res.exit_code == 2 and "no usable coordinates" in _text(res) and why in _text(res)
    assert not out.exists()
